"""A tiny third-party env package for the tests: the project never imports it, only ``gymnasium.make`` does,
through Gymnasium's ``"tiny_env_pkg:TinyCue-v0"`` form (``PYTHONPATH=tests``), or ``--env-factory
tiny_env_pkg:make_one_hot``.

``TinyCue-v0``: observation ``Discrete(3)``; at ``t = 0`` a cue ``c`` in {1, 2}, then ``delay`` blank steps (0);
at the last step the action (``Discrete(2)``) is scored: reward 1 for ``c - 1``, else 0; ``info["is_success"]``.
A memoryless policy succeeds half of the time.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class TinyCueEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, delay: int = 2) -> None:
        if not isinstance(delay, int) or delay < 0:
            raise ValueError(f"delay must be an integer >= 0, got {delay!r}")
        self.delay = delay
        self.observation_space = spaces.Discrete(3)
        self.action_space = spaces.Discrete(2)
        self.cue, self.t = 1, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(1, 3)), 0
        return self.cue, {}

    def step(self, action):
        self.t += 1
        if self.t <= self.delay:
            return 0, 0.0, False, False, {}
        success = int(action) == self.cue - 1
        return 0, float(success), True, False, {"is_success": success}


class OneHot(gym.ObservationWrapper):
    """``Discrete(n)`` observations as one-hot ``Box(0, 1, (n,))`` vectors."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.n = int(env.observation_space.n)
        self.observation_space = spaces.Box(0.0, 1.0, (self.n,), np.float32)

    def observation(self, observation):
        out = np.zeros(self.n, np.float32)
        out[int(observation)] = 1.0
        return out


def make_one_hot(**kwargs) -> gym.Env:
    """An env factory (``--env-factory tiny_env_pkg:make_one_hot``): TinyCue with one-hot observations."""
    return OneHot(TinyCueEnv(**kwargs))


gym.register("TinyCue-v0", entry_point=TinyCueEnv, max_episode_steps=100)
