"""Per-task default hyper-parameters for ``scripts/train.py`` (anything given on the command line wins).

Keys are env ids, or prefixes ending in ``*``; the first match wins (an id given as ``module:EnvId`` matches as
``EnvId``). Values are :class:`agents.ppo.TrainConfig` fields. An env without a preset (any other Gymnasium env, an
``--env-factory``) gets :class:`~agents.ppo.TrainConfig`'s own defaults, the generic ones: rewards scaled by the
running standard deviation of the return (``norm_reward``), so envs with returns in the hundreds train with the
same settings as envs with returns near one. The project's tasks have rewards near one and keep them unscaled.
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
    # A small wall penalty (-0.01; Bakker used -0.1) makes waiting at the junction cost something: with 0, bumping
    # east into the junction's wall was free but for the discount, the entropy bonus kept probability on that
    # "wait" as well as on the cued arm, and in 2 of 5 seeds the greedy policy waited forever for one of the cues
    # (deterministic success 0.504 while sampling gave 0.99). With -0.1 the corridor walk is learnt but the cue was
    # not within 500k steps (3 of 3 seeds at chance). docs/agents.md, "Greedy evaluation of the T-maze".
    "MemoryCores/TMaze-v0": dict(
        env_kwargs='{"wrong_arm_reward": 0.0, "wall_reward": -0.01}',
        num_envs=32, num_steps=256, seq_len=256, num_minibatches=4, update_epochs=4, total_steps=1_500_000,
        learning_rate=5e-4, gamma=0.99, ent_coef=0.001, chrono_init=128, norm_reward=False,
    ),
    "MemoryCores/Copy-v0": dict(num_envs=64, num_steps=64, seq_len=64, total_steps=2_000_000, gamma=0.9,
                                norm_reward=False),
    "MemoryCores/RepeatCopy-v0": dict(num_envs=64, num_steps=128, seq_len=128, total_steps=2_000_000, gamma=0.9,
                                      norm_reward=False),
    "MemoryCores/AssociativeRecall-v0": dict(num_envs=64, num_steps=64, seq_len=64, total_steps=2_000_000, gamma=0.9,
                                             norm_reward=False),
    "MemoryCores/MemoryMaze*": dict(num_envs=64, num_steps=128, seq_len=64, total_steps=5_000_000, gamma=0.99,
                                    norm_reward=False),
    "MemoryCores/MiniGridMemory*": dict(num_envs=64, num_steps=128, seq_len=64, total_steps=2_000_000, gamma=0.99,
                                        norm_reward=False),
    "MiniGrid-Memory*": dict(num_envs=16, num_steps=128, seq_len=64, total_steps=2_000_000, gamma=0.99,
                             norm_reward=False),
}


GPU_SCALE = 16
"""``--preset gpu``: the factor on the task preset's ``num_envs`` and ``num_minibatches``."""


def gpu_batch(defaults: dict) -> dict:
    """``--preset gpu``'s changes to a run's defaults (``defaults``: TrainConfig fields, the task's preset applied):
    ``num_envs`` and ``num_minibatches`` times :data:`GPU_SCALE`. Each minibatch keeps the preset's number of
    sequences and a run the preset's gradient steps per env step, so what is learnt per env step stays the preset's
    (at 16 times the envs with the preset's 8 minibatches, 8 times fewer gradient steps per env step: the T-maze of
    length 50 was then learnt in no seed on an H200; with 64 minibatches in 3 of 3 seeds, docs/gpu.md)."""
    return {"num_envs": defaults["num_envs"] * GPU_SCALE,
            "num_minibatches": defaults["num_minibatches"] * GPU_SCALE, "preset": "gpu"}


def preset_config(env: str, env_kwargs: dict | None = None, train: dict | None = None, gpu: bool = False, **fields):
    """A :class:`agents.ppo.TrainConfig` from the presets, as ``scripts/train.py`` fills its options: TrainConfig's
    defaults, ``env``'s task preset, ``--preset gpu``'s batch when ``gpu`` (:func:`gpu_batch`), then ``train`` and
    ``fields`` (TrainConfig fields over them), with ``env_kwargs`` merged over the preset's env keywords
    (:func:`env_kwargs_for`)."""
    from dataclasses import asdict

    from .ppo import TrainConfig

    d = asdict(TrainConfig())
    d.update(task_defaults(env))
    if gpu:
        d.update(gpu_batch(d))
    d.update(train or {})
    d.update(fields)
    d.update(env=env, env_kwargs=json.dumps(env_kwargs_for(env, dict(env_kwargs or {}))))
    return TrainConfig(**d)


def tmaze_env_kwargs(given: dict) -> dict:
    """T-maze keywords derived from the given ones: ``max_steps = max(4 (L + 1), L^2)``.

    The first reward needs an undirected random walk to reach the junction: with 4 actions the walk moves +-1 with
    probability 1/4 each (variance 1/2 per step), so within ``L^2`` steps it gets ``L`` cells east with probability
    about ``2 (1 - Phi(sqrt 2)) = 0.16`` for every ``L``; with the env's default ``4 (L + 1)`` it is about
    ``1e-6`` at ``L = 50``. An agent that has learnt the corridor walks it in ``L + 1`` steps, so the longer limit
    only matters while exploring.
    """
    L = given.get("length", 10)
    if isinstance(L, bool) or not isinstance(L, int):
        return {}  # not a valid length: the env's own check names the key
    return {"max_steps": max(4 * (L + 1), L * L)}


# Keyword functions per env id: called with the merged env keywords; fill keys the user did not give.
ENV_KWARGS_FNS = {"MemoryCores/TMaze-v0": tmaze_env_kwargs}


def env_kwargs_for(env_id: str, given: dict) -> dict:
    """The env keywords for ``env_id``: the task's defaults, overridden by ``given``, plus derived keys."""
    base = json.loads(task_defaults(env_id).get("env_kwargs", "{}"))
    merged = {**base, **given}
    fn = ENV_KWARGS_FNS.get(env_id.rpartition(":")[2])
    if fn is not None:
        merged = {**fn(merged), **merged}
    return merged


def preset_key(env_id: str) -> str | None:
    """The key of :data:`TASK_DEFAULTS` that applies to ``env_id`` (None: the generic defaults apply)."""
    env_id = env_id.rpartition(":")[2]  # Gymnasium's module:EnvId form
    for key in TASK_DEFAULTS:
        if key == env_id or (key.endswith("*") and env_id.startswith(key[:-1])):
            return key
    return None


def task_defaults(env_id: str) -> dict:
    """The per-task defaults of ``env_id`` ({} when none: TrainConfig's generic defaults apply)."""
    key = preset_key(env_id)
    return dict(TASK_DEFAULTS[key]) if key is not None else {}


# ======================================= length knobs for generalisation sweeps ==================================
class LengthKnob:
    """A task's difficulty knob for ``scripts/evaluate.py --sweep``: evaluate at the training value and beyond.

    Args:
        name: what the knob measures (a table header, e.g. ``"length"``).
        keys: the env keywords that hold it (``("min_length", "max_length")``: both set to the swept value, so each
            sweep point is one fixed length); the training value is the last key's (the longest trained).
        default: the env's default when the training keywords do not give it.
        low, high: the env's valid range.  step: sweep values are ``train + k * step`` multiples (odd sizes: 2).
        drop: keywords removed at every sweep point (e.g. T-maze's ``max_steps``, derived from the length, so the
            env's own ``4 (L + 1)`` limit applies).
    """

    def __init__(self, name: str, keys: tuple[str, ...], default: int, low: int, high: int, step: int = 1,
                 drop: tuple[str, ...] = ()) -> None:
        self.name, self.keys, self.default, self.low, self.high = name, keys, default, low, high
        self.step, self.drop = step, drop

    def train_value(self, env_kwargs: dict) -> int:
        return int(env_kwargs.get(self.keys[-1], self.default))

    def default_values(self, env_kwargs: dict) -> list[int]:
        """The training value and 2x, 4x, 8x it (rounded to the knob's step, clipped to the valid range)."""
        v0 = self.train_value(env_kwargs)
        out = []
        for m in (1, 2, 4, 8):
            v = v0 + ((m - 1) * v0 // self.step) * self.step
            v = min(max(v, self.low), self.high)
            if v not in out:
                out.append(v)
        return out

    def kwargs_at(self, env_kwargs: dict, value: int) -> dict:
        """The training keywords with the knob set to ``value`` (``ValueError`` when outside the valid range)."""
        if not self.low <= value <= self.high or (value - self.train_value(env_kwargs)) % self.step:
            raise ValueError(f"sweep value {self.name}={value} is not valid: expected an integer in "
                             f"[{self.low}, {self.high}]" + (" with the training value's parity" if self.step == 2
                                                             else ""))
        out = {k: v for k, v in env_kwargs.items() if k not in self.drop}
        out.update({k: int(value) for k in self.keys})
        return out


LENGTH_KNOBS: dict[str, LengthKnob] = {
    "MemoryCores/TMaze-v0": LengthKnob("length", ("length",), 10, 1, 100_000, drop=("max_steps",)),
    "MemoryCores/Copy-v0": LengthKnob("length", ("min_length", "max_length"), 10, 1, 4096),
    "MemoryCores/RepeatCopy-v0": LengthKnob("length", ("min_length", "max_length"), 10, 1, 4096),
    "MemoryCores/AssociativeRecall-v0": LengthKnob("items", ("min_items", "max_items"), 6, 2, 256),
    "MemoryCores/MiniGridMemory-v0": LengthKnob("size", ("size",), 7, 7, 31, step=2),
}
