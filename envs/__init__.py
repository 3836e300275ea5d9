"""Memory tasks as batched tensor environments, registered with Gymnasium on ``import envs``.

Single env (numpy in and out)::

    gymnasium.make("MemoryCores/Copy-v0", max_length=10)

Batched env (torch tensors on ``device``, SAME_STEP autoreset; see ``envs/base.py``)::

    gymnasium.make_vec("MemoryCores/Copy-v0", num_envs=4096, vectorization_mode="vector_entry_point", device="cuda")

The registrations below are a plain list: append one ``gymnasium.register`` call per new task.
"""

import gymnasium

from envs.base import BatchedEnv, NumpyVectorEnv, SingleEnv

__all__ = ["BatchedEnv", "SingleEnv", "NumpyVectorEnv"]

gymnasium.register(
    id="MemoryCores/Copy-v0",
    entry_point="envs.copy_tasks:CopyEnv",
    vector_entry_point="envs.copy_tasks:CopyVecEnv",
)
gymnasium.register(
    id="MemoryCores/RepeatCopy-v0",
    entry_point="envs.copy_tasks:RepeatCopyEnv",
    vector_entry_point="envs.copy_tasks:RepeatCopyVecEnv",
)
gymnasium.register(
    id="MemoryCores/AssociativeRecall-v0",
    entry_point="envs.copy_tasks:AssociativeRecallEnv",
    vector_entry_point="envs.copy_tasks:AssociativeRecallVecEnv",
)
gymnasium.register(
    id="MemoryCores/TMaze-v0",
    entry_point="envs.tmaze:TMazeEnv",
    vector_entry_point="envs.tmaze:TMazeVecEnv",
)
gymnasium.register(
    id="MemoryCores/MemoryMaze-v0",
    entry_point="envs.memory_maze:MemoryMazeEnv",
    vector_entry_point="envs.memory_maze:MemoryMaze",
)
gymnasium.register(
    id="MemoryCores/MiniGridMemory-v0",
    entry_point="envs.minigrid_memory:MiniGridMemoryEnv",
    vector_entry_point="envs.minigrid_memory:MiniGridMemory",
)
gymnasium.register(  # MiniGrid's own MemoryEnv (needs the optional minigrid package), flat obs, configurable view
    id="MemoryCores/MiniGridMemoryWrapped-v0",
    entry_point="envs.minigrid_wrappers:make_minigrid_memory",
)
