"""T-maze (Bakker 2002, "Reinforcement Learning with Long Short-Term Memory"), batched and single.

A corridor of cells ``x = 0 .. L`` ends in a T junction at ``x = L``. The start cell ``x = 0`` shows a cue saying
which arm of the T (north or south) holds the reward; the corridor cells all look the same and carry no cue, so
the agent must carry the cue in memory for at least ``L`` steps. Observations are Bakker's 3 bits::

    start, cue north   0 1 1        corridor   1 0 1
    start, cue south   1 1 0        junction   0 1 0

One episode (L = 3, cue north, the shortest path)::

    t        0      1      2      3
    x        0      1      2      3 (junction)
    obs      011    101    101    010
    action   E      E      E      N
    reward   0      0      0      +1     (S at the junction: wrong_arm_reward, also ends the episode)

Actions ``Discrete(4)``: 0 north, 1 east, 2 south, 3 west. East/west move along the corridor; moving into a wall
(west at the start, east at the junction, north/south in the corridor) leaves the agent in place and pays
``wall_reward`` (Bakker: -0.1; default 0). North or south at the junction enters that arm and terminates the episode
with ``correct_reward`` (+1) or ``wrong_arm_reward`` (default -1, so guessing is worth 0 on average).
The episode is truncated after ``max_steps`` steps (default ``4 (L + 1)``); the shortest episode is ``L + 1``
steps. ``info`` episode statistics: ``success`` (bool, entered the cued arm).
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from envs.base import BatchedEnv, SingleEnv, check_float, check_int

__all__ = ["TMazeVecEnv", "TMazeEnv", "NORTH", "EAST", "SOUTH", "WEST"]

NORTH, EAST, SOUTH, WEST = 0, 1, 2, 3
# observation codes: rows of _OBS_TABLE
CUE_NORTH, CUE_SOUTH, CORRIDOR, JUNCTION = 0, 1, 2, 3
_OBS_TABLE = ((0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 0.0))


class TMazeVecEnv(BatchedEnv):
    """T-maze, batched (see the module docstring for the rules and an episode's timeline).

    Args:
        num_envs: N.
        length: L, corridor length: the junction is ``L`` moves east of the start (1..100000; Bakker used up to 70).
        max_steps: truncation (default ``4 (L + 1)``; at least ``L + 1``).
        correct_reward: reward for entering the cued arm (default 1.0).
        wrong_arm_reward: reward for entering the other arm (default -1.0).
        wall_reward: reward for a move into a wall (default 0.0; Bakker: -0.1).
        device, return_final_obs: see :class:`envs.base.BatchedEnv`.
    """

    counter_based = False  # the cue comes from self.generator

    def __init__(
        self,
        num_envs: int = 1,
        *,
        length: int = 10,
        max_steps: int | None = None,
        correct_reward: float = 1.0,
        wrong_arm_reward: float = -1.0,
        wall_reward: float = 0.0,
        device: torch.device | str | None = "cpu",
        return_final_obs: bool = False,
    ) -> None:
        self.length = check_int("length", length, 1, 100_000)
        self.max_steps = 4 * (self.length + 1) if max_steps is None else check_int(
            "max_steps", max_steps, self.length + 1, 2**30
        )
        self.correct_reward = check_float("correct_reward", correct_reward)
        self.wrong_arm_reward = check_float("wrong_arm_reward", wrong_arm_reward)
        self.wall_reward = check_float("wall_reward", wall_reward)
        super().__init__(
            num_envs,
            spaces.Box(0.0, 1.0, (3,), np.float32),
            spaces.Discrete(4),
            device=device,
            return_final_obs=return_final_obs,
        )
        N, dev = self.num_envs, self.device
        self._obs_table = torch.tensor(_OBS_TABLE, dtype=torch.float32, device=dev)  # [4, 3]
        self._rewards = torch.tensor([self.correct_reward, self.wrong_arm_reward, 0.0], device=dev)
        self._zero = torch.zeros((), dtype=torch.int64, device=dev)
        self.x = torch.zeros(N, dtype=torch.int64, device=dev)  # [N] position, 0 .. L
        self.cue = torch.zeros(N, dtype=torch.int64, device=dev)  # [N] rewarded arm: 0 north, 1 south
        self.t = torch.zeros(N, dtype=torch.int64, device=dev)  # [N] steps so far

    def _reset_rows(self, mask: torch.Tensor) -> None:
        cue = torch.randint(0, 2, (self.num_envs,), generator=self.generator, device=self.device)  # [N] fair bits
        self.cue = torch.where(mask, cue, self.cue)
        self.x = torch.where(mask, self._zero, self.x)
        self.t = torch.where(mask, self._zero, self.t)

    def _step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x = self.x
        odd = actions & 1  # [N] 1: east or west, 0: north or south
        choose = (odd == 0) & (x == self.length)  # [N] enters an arm
        correct = choose & ((actions >> 1) == self.cue)  # [N] north (0) >> 1 = 0, south (2) >> 1 = 1
        reward = torch.where(correct, self._rewards[0], torch.where(choose, self._rewards[1], self._rewards[2]))
        x_new = (x + odd * (2 - actions)).clamp_(0, self.length)  # [N] east +1, west -1
        if self.wall_reward != 0.0:
            bumped = (x_new == x) & ~choose
            reward = reward + bumped * self.wall_reward
        self.x = x_new
        self.t = t = self.t + 1
        truncated = (t >= self.max_steps) & ~choose
        return reward, choose, truncated, {"success": correct}

    def _observe(self) -> torch.Tensor:
        x = self.x
        code = torch.where(x == 0, self.cue, (x == self.length) + CORRIDOR)  # [N] row of _OBS_TABLE
        return self._obs_table.index_select(0, code)  # [N, 3]


class TMazeEnv(SingleEnv):
    """T-maze as a single Gymnasium env (numpy); options as :class:`TMazeVecEnv`."""

    batched_cls = TMazeVecEnv
