"""Per-task default hyper-parameters for ``scripts/train.py`` (anything given on the command line wins).

Keys are env ids, or prefixes ending in ``*``; the first match wins. Values are :class:`agents.ppo.TrainConfig`
fields.
"""

from __future__ import annotations

import json

TASK_DEFAULTS: dict[str, dict] = {
    # T-maze: one reward at the junction; sequences long enough to carry the cue through the corridor.
    # wrong_arm_reward 0 keeps going to the junction worth +0.5 for a memoryless agent, so the corridor is learnt
    # first; then memory raises success from 0.5 to 1. max_steps is derived from the length (tmaze_env_kwargs).
    # A small entropy bonus lets the corridor walk become deterministic (with 0.01 the bonus outweighs the small
    # discount gain of each step east at L = 50), so episodes fit into the 256-step BPTT sequences; chrono init
    # gives the LSTM memory time scales of ~100 steps (with torch's init the cue's gradient vanishes).
    "MemoryCores/TMaze-v0": dict(
        env_kwargs='{"wrong_arm_reward": 0.0}',
        num_envs=32, num_steps=256, seq_len=256, num_minibatches=4, update_epochs=4, total_steps=1_500_000,
        learning_rate=5e-4, gamma=0.99, ent_coef=0.001, chrono_init=128,
    ),
    "MemoryCores/Copy-v0": dict(num_envs=64, num_steps=64, seq_len=64, total_steps=2_000_000, gamma=0.9),
    "MemoryCores/RepeatCopy-v0": dict(num_envs=64, num_steps=128, seq_len=128, total_steps=2_000_000, gamma=0.9),
    "MemoryCores/AssociativeRecall-v0": dict(num_envs=64, num_steps=64, seq_len=64, total_steps=2_000_000, gamma=0.9),
    "MemoryCores/MemoryMaze*": dict(num_envs=64, num_steps=128, seq_len=64, total_steps=5_000_000, gamma=0.99),
    "MemoryCores/MiniGridMemory*": dict(num_envs=64, num_steps=128, seq_len=64, total_steps=2_000_000, gamma=0.99),
    "MiniGrid-Memory*": dict(num_envs=16, num_steps=128, seq_len=64, total_steps=2_000_000, gamma=0.99),
}


def tmaze_env_kwargs(given: dict) -> dict:
    """T-maze keywords derived from the given ones: ``max_steps = max(4 (L + 1), L^2)``.

    The first reward needs an undirected random walk to reach the junction: with 4 actions the walk moves +-1 with
    probability 1/4 each (variance 1/2 per step), so within ``L^2`` steps it gets ``L`` cells east with probability
    about ``2 (1 - Phi(sqrt 2)) = 0.16`` for every ``L``; with the env's default ``4 (L + 1)`` it is about
    ``1e-6`` at ``L = 50``. An agent that has learnt the corridor walks it in ``L + 1`` steps, so the longer limit
    only matters while exploring.
    """
    L = int(given.get("length", 10))
    return {"max_steps": max(4 * (L + 1), L * L)}


# Keyword functions per env id: called with the merged env keywords; fill keys the user did not give.
ENV_KWARGS_FNS = {"MemoryCores/TMaze-v0": tmaze_env_kwargs}


def env_kwargs_for(env_id: str, given: dict) -> dict:
    """The env keywords for ``env_id``: the task's defaults, overridden by ``given``, plus derived keys."""
    base = json.loads(task_defaults(env_id).get("env_kwargs", "{}"))
    merged = {**base, **given}
    fn = ENV_KWARGS_FNS.get(env_id)
    if fn is not None:
        merged = {**fn(merged), **merged}
    return merged


def task_defaults(env_id: str) -> dict:
    """The per-task defaults of ``env_id`` ({} when none)."""
    for key, value in TASK_DEFAULTS.items():
        if key == env_id or (key.endswith("*") and env_id.startswith(key[:-1])):
            return dict(value)
    return {}
