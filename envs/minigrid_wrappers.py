"""MiniGrid's memory envs (``MiniGrid-MemoryS7-v0`` ... ``MiniGrid-MemoryS17Random-v0``) with a flat observation and
a configurable agent view.

``minigrid`` is an optional dependency: it is imported only when one of these envs is made
(``pip install minigrid`` or ``pip install memory-cores[minigrid]``).

The observation is MiniGrid's egocentric image (``(OBJECT_IDX, COLOR_IDX, STATE)`` per cell, cells hidden behind
walls are ``(0, 0, 0)``) of ``view_size x view_size`` cells, flattened in C order to a uint8 vector of
``view_size * view_size * 3`` values; the mission string (constant in these envs) and the direction are dropped, as
with MiniGrid's ``ImgObsWrapper``. The view is MiniGrid's own ``agent_view_size`` (identical to its
``ViewSizeWrapper``). With the default 7x7 view the small memory envs can partly be solved without memory; a 3x3
view makes memory necessary. The batched port :class:`envs.minigrid_memory.MiniGridMemory` gives the same
observations (same layout, same encoding) at batched speed.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["MINIGRID_MEMORY_IDS", "FlatImageObs", "MoveActions", "make_minigrid_memory"]

MINIGRID_MEMORY_IDS = (
    "MiniGrid-MemoryS7-v0",
    "MiniGrid-MemoryS9-v0",
    "MiniGrid-MemoryS11-v0",
    "MiniGrid-MemoryS13-v0",
    "MiniGrid-MemoryS13Random-v0",
    "MiniGrid-MemoryS17Random-v0",
)


class FlatImageObs(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Keep only MiniGrid's ``obs["image"]`` (``[V, V, C]`` uint8), flattened to ``[V * V * C]``.

    ``high`` is the declared upper bound: 255 for MiniGrid's index encoding (as MiniGrid declares it), 1 for the
    one-hot encoding (MiniGrid declares 255 there too, but the values are bits), so that the space equals the
    batched port's :class:`envs.minigrid_memory.MiniGridMemory` space and a policy trained on one runs on the other.
    """

    def __init__(self, env: gym.Env, high: int = 255) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, high=high)
        gym.ObservationWrapper.__init__(self, env)
        image = env.observation_space["image"]
        self.observation_space = gym.spaces.Box(0, high, (int(np.prod(image.shape)),), dtype=np.uint8)

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        return observation["image"].reshape(-1)


class MoveActions(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Only MiniGrid's first three actions (0 left, 1 right, 2 forward): ``Discrete(3)``, ids unchanged.

    In the memory envs the other four (pickup, drop, toggle, done) never change the state, so no strategy is lost;
    exploration just stops wasting steps on them.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        self.action_space = gym.spaces.Discrete(3)

    def action(self, action: Any) -> int:
        return int(action)


def _import_minigrid() -> None:
    try:
        import minigrid  # noqa: F401  (registers the MiniGrid-* ids with Gymnasium)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the MiniGrid memory envs need the optional 'minigrid' package: pip install minigrid "
            "(or pip install memory-cores[minigrid])"
        ) from e


def make_minigrid_memory(
    env_id: str = "MiniGrid-MemoryS7-v0",
    view_size: int = 3,
    max_steps: int | None = None,
    one_hot: bool = False,
    num_actions: int = 7,
    render_mode: str | None = None,
) -> gym.Env:
    """One of MiniGrid's memory envs with a flat image observation and a ``view_size x view_size`` view.

    Args:
        env_id: one of :data:`MINIGRID_MEMORY_IDS`.
        view_size: MiniGrid's ``agent_view_size``, odd, in [3, 15] (3 makes memory necessary).
        max_steps: episode step limit; None keeps MiniGrid's ``5 * size ** 2``.
        one_hot: apply MiniGrid's ``OneHotPartialObsWrapper`` first (20 bits per cell instead of 3 indices), so the
            flat observation has ``view_size * view_size * 20`` values in {0, 1}.
        num_actions: 7 (MiniGrid's actions) or 3 (:class:`MoveActions`: left, right, forward only).
        render_mode: passed to MiniGrid (``None``, ``"rgb_array"`` or ``"human"``).

    Registered as ``MemoryCores/MiniGridMemoryWrapped-v0`` (options as keyword arguments of ``gymnasium.make``).
    """
    if env_id not in MINIGRID_MEMORY_IDS:
        raise ValueError(f"env_id={env_id!r} is not valid: expected one of {', '.join(MINIGRID_MEMORY_IDS)}")
    if isinstance(view_size, bool) or not isinstance(view_size, (int, np.integer)) or view_size % 2 == 0 \
            or not 3 <= view_size <= 15:
        raise ValueError(f"view_size={view_size!r} is not valid: expected an odd integer in [3, 15]")
    kwargs: dict[str, Any] = {"agent_view_size": int(view_size)}
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ValueError(f"max_steps={max_steps!r} is not valid: expected None or an integer >= 1")
        kwargs["max_steps"] = int(max_steps)
    if not isinstance(one_hot, (bool, np.bool_)):
        raise ValueError(f"one_hot={one_hot!r} is not valid: expected True or False")
    if isinstance(num_actions, bool) or num_actions not in (3, 7):
        raise ValueError(f"num_actions={num_actions!r} is not valid: expected 3 (left, right, forward) or 7 (all)")
    _import_minigrid()
    env = gym.make(env_id, render_mode=render_mode, disable_env_checker=True, **kwargs)
    if one_hot:
        from minigrid.wrappers import OneHotPartialObsWrapper

        env = OneHotPartialObsWrapper(env)
    env = FlatImageObs(env, high=1 if one_hot else 255)
    return MoveActions(env) if num_actions == 3 else env
