"""Per-task default hyper-parameters for ``scripts/train.py`` (anything given on the command line wins).

Keys are env ids, or prefixes ending in ``*``; the first match wins. Values are :class:`agents.ppo.TrainConfig`
fields.
"""

from __future__ import annotations

TASK_DEFAULTS: dict[str, dict] = {
    # T-maze: one reward at the junction; sequences long enough to carry the cue through the corridor.
    # wrong_arm_reward 0 keeps going to the junction worth +0.5 for a memoryless agent, so the corridor is learnt
    # first; then memory raises success from 0.5 to 1.
    "MemoryCores/TMaze-v0": dict(
        env_kwargs='{"wrong_arm_reward": 0.0}',
        num_envs=32, num_steps=128, seq_len=128, num_minibatches=4, update_epochs=4, total_steps=500_000,
        learning_rate=1e-3, gamma=0.99, ent_coef=0.01,
    ),
    "MemoryCores/Copy-v0": dict(num_envs=64, num_steps=64, seq_len=64, total_steps=2_000_000, gamma=0.9),
    "MemoryCores/RepeatCopy-v0": dict(num_envs=64, num_steps=128, seq_len=128, total_steps=2_000_000, gamma=0.9),
    "MemoryCores/AssociativeRecall-v0": dict(num_envs=64, num_steps=64, seq_len=64, total_steps=2_000_000, gamma=0.9),
    "MemoryCores/MemoryMaze*": dict(num_envs=64, num_steps=128, seq_len=64, total_steps=5_000_000, gamma=0.99),
    "MemoryCores/MiniGridMemory*": dict(num_envs=64, num_steps=128, seq_len=64, total_steps=2_000_000, gamma=0.99),
    "MiniGrid-Memory*": dict(num_envs=16, num_steps=128, seq_len=64, total_steps=2_000_000, gamma=0.99),
}


def task_defaults(env_id: str) -> dict:
    """The per-task defaults of ``env_id`` ({} when none)."""
    for key, value in TASK_DEFAULTS.items():
        if key == env_id or (key.endswith("*") and env_id.startswith(key[:-1])):
            return dict(value)
    return {}
