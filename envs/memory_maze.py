"""MemoryMaze: a random gridworld maze per episode, an egocentric partial view and one goal to find again and again.

Rules:
- A ``maze_size x maze_size`` grid (odd size, 7 to 31; outer walls). Rooms ("cells") sit at odd coordinates
  ``(2 cx + 1, 2 cy + 1)``, ``k = (maze_size - 1) // 2`` per side; the walls between neighbouring cells are open
  along the edges of a random spanning tree of the ``k x k`` cell graph, so the maze is *perfect*: every cell is
  reachable by exactly one path.
- A goal cell and a start cell (distinct, uniform over the ``k * k`` cells) and a random start direction.
- Actions: 0 turn left, 1 turn right, 2 move forward (into a non-wall cell), as in MiniGrid.
- Entering the goal gives reward 1; the agent is then moved to a uniformly random other cell with a random
  direction, and must find the goal again. The maze and the goal stay for the whole episode.
- The episode lasts exactly ``max_steps`` steps (default ``4 * maze_size**2``): it is always truncated, never
  terminated. An agent that remembers the maze and the goal reaches it more often, so scores more.
- Observation: the ``view_size x view_size`` cells centred on the agent, rotated so that the agent faces "up"
  (row 0 is farthest ahead, column 0 is to the agent's left), no occlusion; uint8 codes 0 floor, 1 wall, 2 goal,
  flattened in C order to ``view_size ** 2`` values.

Maze generation (batched, on the env device, no bank): every env holds two mazes, the played one and the next one.
A maze is a spanning tree of the cell graph stored as parent pointers towards an "origin" cell. The next maze is
re-randomised while the current episode runs by "origin shift" moves, ``shuffle_moves`` (default 2) per step: the
origin walks to a random neighbour cell ``nb``; the old origin's parent becomes ``nb`` (the wall between them
opens) and ``nb``'s old link to its parent is dropped (that wall closes). The maze stays perfect after every move.
After the origin's walk has visited every cell, each cell's parent is the cell the walk went to after its last
visit there, so the maze no longer depends on the maze it started from; the chain's stationary law is the uniform
distribution over spanning trees (checked in the tests on the 3x3 cell graph: all 192 trees, equally often). With
the defaults an episode applies ``2 * 4 * maze_size ** 2`` moves; the walk covers the cells within that budget
in 100 % (9x9, 11x11), 99.9 % (15x15), 99.3 % (21x21) and 97 % (31x31) of episodes (simulated), so each episode
plays a fresh maze. At episode end (all rows together) the two mazes swap roles. A seeded (or first) ``reset``
starts every maze from a random "binary tree" maze followed by the same number of warm-up moves, so the first
episode's maze is drawn like the later ones (this takes 0.3 s for 4096 9x9 envs, 1 s for 15x15, 6 s for 31x31 on
one CPU thread). Everything is tensor ops on the device; per-env randomness is counter-based (hashes of the env's
seed, episode and step), so row i's episodes do not depend on ``num_envs`` or on the device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from .base import GOLDEN32, BatchedEnv, SingleEnv, check_int, hash32

__all__ = ["MemoryMaze", "MemoryMazeEnv"]
# cell codes of the stored grids
FLOOR, WALL, GOAL = 0, 1, 2  # GOAL is written into the played maze only
MIN_MAZE, MAX_MAZE = 7, 31
NUM_ACTIONS = 3
# DIR_TO_VEC[d] = (dx, dy): 0 right (+x), 1 down (+y), 2 left (-x), 3 up (-y)  (MiniGrid's convention)
DIR_TO_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))


def cell_graph(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k x k`` cell graph (cell ``c = cy * k + cx``).

    Returns:
        edge_u, edge_v: long ``[E]`` endpoints of the ``E = 2 k (k - 1)`` edges (``u < v``).
        neighbours: long ``[k * k, 4]``, neighbour of a cell in direction ``d`` (DIR_TO_VEC), -1 outside.
    """
    us, vs = [], []
    nb = torch.full((k * k, 4), -1, dtype=torch.long)
    for cy in range(k):
        for cx in range(k):
            c = cy * k + cx
            if cx + 1 < k:
                us.append(c), vs.append(c + 1)
            if cy + 1 < k:
                us.append(c), vs.append(c + k)
            for d, (dx, dy) in enumerate(DIR_TO_VEC):
                x, y = cx + dx, cy + dy
                if 0 <= x < k and 0 <= y < k:
                    nb[c, d] = y * k + x
    return torch.tensor(us, dtype=torch.long), torch.tensor(vs, dtype=torch.long), nb


def binary_tree_mazes(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random "binary tree" mazes on a batch: each cell links to its west or its north neighbour (where it has
    one; at random where it has both), so all paths lead to the north-west cell, the root. Fast (a few tensor ops)
    but biased; :class:`MemoryMaze` only uses them as the starting point of origin-shift moves.

    Args:
        keys: int64 ``[batch]`` 32-bit random keys; maze ``b`` is a function of ``keys[b]`` only (counter-based).
    Returns:
        parent: long ``[batch, k * k]``, each cell's neighbour towards the root; the root points to itself.
        root: long ``[batch]`` (all 0).
    """
    batch, device = keys.shape[0], keys.device
    n = k * k
    c = torch.arange(n, dtype=torch.long, device=device)
    cx, cy = c % k, c // k
    coin = hash32(keys.unsqueeze(1) + (c + 1) * GOLDEN32) & 1  # [batch, n]
    west, north = c - 1, c - k
    parent = torch.where(cy == 0, west, torch.where(cx == 0, north, torch.where(coin == 1, north, west)))
    parent = torch.where(c == 0, c, parent)  # [batch, n]
    return parent, torch.zeros(batch, dtype=torch.long, device=device)


def cell_positions(k: int, padded_size: int, pad: int) -> torch.Tensor:
    """Flat index of each cell's square in the padded grid: long ``[k * k]``."""
    c = torch.arange(k * k)
    x, y = 2 * (c % k) + 1 + pad, 2 * (c // k) + 1 + pad
    return y * padded_size + x


def wall_table(k: int, padded_size: int, pad: int, sink: int) -> torch.Tensor:
    """``W[a * n + b]``: flat index of the wall square between neighbouring cells a and b (their midpoint);
    ``sink`` for ``a == b`` (a write there is never seen) and for non-neighbours. long ``[n * n]``."""
    n = k * k
    cpos = cell_positions(k, padded_size, pad)
    _, _, nb = cell_graph(k)
    W = torch.full((n, n), sink, dtype=torch.long)
    for c in range(n):
        for d in range(4):
            if nb[c, d] >= 0:
                W[c, nb[c, d]] = (cpos[c] + cpos[nb[c, d]]) // 2
    return W.view(-1)


def trees_to_grids(parent: torch.Tensor, k: int, pad: int, extra: int = 0) -> torch.Tensor:
    """Parent pointers ``[B, k * k]`` -> padded grids uint8 ``[B, Sp * Sp + extra]`` (WALL / FLOOR), walls outside
    the maze and in the ``extra`` trailing squares."""
    B, n = parent.shape
    S = 2 * k + 1
    Sp = S + 2 * pad
    dev = parent.device
    grid = torch.full((B, Sp * Sp + extra), WALL, dtype=torch.uint8, device=dev)
    cpos = cell_positions(k, Sp, pad).to(dev)
    grid[:, cpos] = FLOOR
    # the wall square between two neighbouring cells is the midpoint of their squares (the root's: its own square)
    grid.scatter_(1, (cpos.expand(B, n) + cpos[parent]) // 2, FLOOR)
    return grid


def egocentric_offsets(view_size: int, padded_size: int) -> torch.Tensor:
    """Flat index offsets of the centred, rotated view, per direction: long ``[4, V * V]``.

    View cell ``(row, col)`` (row 0 farthest ahead, col 0 leftmost) is the world cell
    ``agent + f * (V // 2 - row) + r * (col - V // 2)``, ``f`` the forward and ``r = (-f_y, f_x)`` the right vector.
    """
    V, h = view_size, view_size // 2
    out = torch.empty(4, V * V, dtype=torch.long)
    for d, (fx, fy) in enumerate(DIR_TO_VEC):
        rx, ry = -fy, fx
        for row in range(V):
            for col in range(V):
                dx = fx * (h - row) + rx * (col - h)
                dy = fy * (h - row) + ry * (col - h)
                out[d, row * V + col] = dy * padded_size + dx
    return out


class ShuffleTables(NamedTuple):
    """Constant tables of :func:`origin_shift_` (on the env device).

    neighbours: long ``[n * 4]``, neighbour of cell c in direction d at ``c * 4 + d``; c itself outside the maze.
    walls: long ``[n * n]`` from :func:`wall_table`.
    parent_base: long ``[B]``, ``i * n``.  grid_base: long ``[B]``, ``i * Np``.
    wall_value, floor_value: uint8 ``[B]`` constants to scatter.
    """

    neighbours: torch.Tensor
    walls: torch.Tensor
    parent_base: torch.Tensor
    grid_base: torch.Tensor
    wall_value: torch.Tensor
    floor_value: torch.Tensor


def origin_shift_(parent: torch.Tensor, origin: torch.Tensor, grid: torch.Tensor, direction: torch.Tensor,
                  t: ShuffleTables) -> torch.Tensor:
    """One origin-shift move on each maze of a batch, in place; returns the new origins.

    Args:
        parent: long ``[B, n]`` parent pointers (the origin points to itself).
        origin: long ``[B]`` origin cells.
        grid: uint8 ``[B, Np]`` padded grids of the mazes (the sink square included).
        direction: long ``[B]`` in [0, 4), random: where the origin walks.
    The origin moves to its neighbour ``nb`` in ``direction``: the old origin's parent becomes ``nb`` (the wall
    between them opens), ``nb`` becomes the origin and its old link ``nb -> pp`` is dropped (that wall closes).
    The maze stays a spanning tree. Toward the outside ``nb`` is the origin itself and the move changes nothing
    (a lazy step): both wall writes go to the sink square.
    """
    n = parent.shape[1]
    pf, gf = parent.view(-1), grid.view(-1)
    o = origin
    nb = t.neighbours.gather(0, o * 4 + direction)
    pb = t.parent_base
    pp = pf.gather(0, pb + nb)  # nb's old parent (nb itself if nb is the origin)
    pf.scatter_(0, pb + o, nb)
    pf.scatter_(0, pb + nb, nb)
    # close nb -> pp, then open o -> nb (if pp == o this re-opens the same wall)
    gf.scatter_(0, t.grid_base + t.walls.gather(0, nb * n + pp), t.wall_value)
    gf.scatter_(0, t.grid_base + t.walls.gather(0, o * n + nb), t.floor_value)
    return nb


# ======================================= Gymnasium API ============================================================
def _check_odd(name: str, value: Any, low: int, high: int) -> int:
    valid = f"an odd integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} is not valid: expected {valid}")
    if value % 2 == 0 or not low <= value <= high:
        raise ValueError(f"{name}={value} is not valid: expected {valid}")
    return int(value)


class MemoryMaze(BatchedEnv):
    """Random mazes with a goal to find again and again, ``num_envs`` episodes at once on ``device``.

    See the module docstring for the rules and the maze generation.

    Args:
        num_envs: N, episodes stepped together.
        maze_size: side of the maze grid, odd, in [7, 31] (``(maze_size - 1) // 2`` cells per side).
        view_size: side of the egocentric view, odd, in [3, maze_size].
        max_steps: episode length (the horizon); None for ``4 * maze_size ** 2``.
        shuffle_moves: origin-shift moves per step applied to each env's next maze, in [0, 7]; 0 replays the
            ``reset``-time mazes (two per env, alternating), which is only useful for tests.
        device: torch device of the state and of every input/output tensor.
        return_final_obs: also give the last observation of ending episodes (``info["final_obs"]``).

    Observation: uint8 ``[N, view_size ** 2]``, the view's cells (row 0 farthest ahead, column 0 leftmost, C order)
    coded 0 floor, 1 wall, 2 goal. Actions: ``Discrete(3)`` (0 left, 1 right, 2 forward). ``info["episode"]``:
    ``"goals"`` int32 goals reached, ``"success"`` bool (at least one goal reached); the return equals ``goals``.

    All episodes have the same length and every ``reset`` restarts all rows, so the rows stay in lockstep: the env
    counts steps on the host too (host bookkeeping, not a device synchronisation), does the reset work only on the
    steps where the episodes end, and swaps the played and the next mazes of all rows at once.
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        maze_size: int = 9,
        view_size: int = 5,
        max_steps: int | None = None,
        shuffle_moves: int = 2,
        device: torch.device | str | None = "cpu",
        return_final_obs: bool = False,
    ) -> None:
        S = _check_odd("maze_size", maze_size, MIN_MAZE, MAX_MAZE)
        V = _check_odd("view_size", view_size, 3, S)
        max_steps = 4 * S * S if max_steps is None else check_int("max_steps", max_steps, 1)
        shuffle_moves = check_int("shuffle_moves", shuffle_moves, 0, 7)
        obs_space = gym.spaces.Box(0, 2, (V * V,), dtype=np.uint8)
        super().__init__(num_envs, obs_space, gym.spaces.Discrete(NUM_ACTIONS), device=device,
                         return_final_obs=return_final_obs)
        self.maze_size, self.view_size, self.max_steps, self.shuffle_moves = S, V, max_steps, shuffle_moves
        N, dev = self.num_envs, self.device
        self.k = k = (S - 1) // 2
        self.n = n = k * k
        self.pad = V // 2
        self.Sp = Sp = S + 2 * self.pad
        self.Np = Sp * Sp + 1  # the padded grid and one sink square (origin-shift no-op writes)
        self.cpos = cell_positions(k, Sp, self.pad).to(dev)  # [n] flat padded index of each cell
        _, _, nb = cell_graph(k)
        nb = torch.where(nb >= 0, nb, torch.arange(n).view(-1, 1))  # outside: the cell itself
        ar = torch.arange(N, dtype=torch.long, device=dev)
        self.tables = ShuffleTables(
            nb.view(-1).to(dev), wall_table(k, Sp, self.pad, sink=Sp * Sp).to(dev), ar * n, ar * self.Np,
            torch.full((N,), WALL, dtype=torch.uint8, device=dev),
            torch.full((N,), FLOOR, dtype=torch.uint8, device=dev))
        # teleport[g * (n - 1) + r]: position of the r-th cell other than g
        other = torch.arange(n - 1).view(1, -1) + (torch.arange(n - 1).view(1, -1) >= torch.arange(n).view(-1, 1))
        self.teleport = self.cpos[other.to(dev)].view(-1)  # [n * (n - 1)]
        # int32 view indices where they fit (faster [N, V * V] arithmetic)
        self._idx_dtype = torch.int32 if N * self.Np < 2 ** 31 else torch.int64
        self.offsets = egocentric_offsets(V, Sp).to(dev, self._idx_dtype)  # [4, V * V]
        # view_table[d * Np + p]: the view's square indices for direction d at square p (when it is small enough)
        self.view_table = None
        if 4 * self.Np * V * V * 8 <= 2 ** 25:
            vt = egocentric_offsets(V, Sp).view(4, 1, V * V) + torch.arange(self.Np).view(1, -1, 1)
            self.view_table = vt.clamp(0, self.Np - 1).view(4 * self.Np, V * V).to(dev)
        self.delta = torch.tensor([1, Sp, -1, -Sp], dtype=torch.long, device=dev)  # DIR_TO_VEC, flat
        self.turn = torch.tensor([3, 1, 0], dtype=torch.long, device=dev)  # left = -1 mod 4
        self.goal_value = torch.full((N,), GOAL, dtype=torch.uint8, device=dev)
        # two mazes per env: the played one and the next one (being shuffled); all rows swap together
        self.grid = torch.full((N, self.Np), WALL, dtype=torch.uint8, device=dev)  # [N, Np] played
        self.next_grid = self.grid.clone()  # [N, Np]
        self.parent = torch.zeros((N, n), dtype=torch.long, device=dev)  # [N, n] played maze's tree
        self.next_parent = self.parent.clone()
        z = torch.zeros(N, dtype=torch.long, device=dev)
        self.origin, self.next_origin = z.clone(), z.clone()  # [N]
        self.pos = z.clone()  # [N] flat index of the agent in its padded grid (row i starts at grid_base[i])
        self.dir, self.goal_pos, self.teleport_base = z.clone(), z.clone(), z.clone()
        self.goals, self.ep_key = z.clone(), z.clone()
        self._true = torch.ones(N, dtype=torch.bool, device=dev)  # constant flags (never written into)
        self._false = torch.zeros(N, dtype=torch.bool, device=dev)
        self.warmup_moves = 8 * S * S  # = shuffle_moves * max_steps at the defaults
        self._regenerate = False
        self._in_step = False  # host bookkeeping: inside step(), and whether this step ends the episodes
        self._episodes_end = False
        self._host_steps = 0
        self._t = 0

    # ---- reset -----------------------------------------------------------------------------------------------------
    def prepare_static(self) -> None:
        """Make the step replayable in fixed buffers (a CUDA graph; :class:`envs.capture.StaticStep` calls this): the
        step number becomes a ``[1]`` device tensor updated in place, and the episodes' end (every ``max_steps``-th
        step, in lockstep) is applied at every step with ``torch.where`` on a device flag instead of a host branch.
        The same episodes, observations and rewards as the plain env, bit for bit."""
        if not isinstance(self._t, torch.Tensor):
            self._t = torch.full((1,), self._host_steps, dtype=torch.long, device=self.device)  # steps done
            self._end = torch.zeros(1, dtype=torch.bool, device=self.device)  # this step ends the episodes

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """As :meth:`BatchedEnv.reset` (all rows restart); a seeded (or first) reset draws new mazes (warm-up)."""
        self._regenerate = seed is not None or not self._seeded
        self._host_steps = 0
        if isinstance(self._t, torch.Tensor):
            self._t.zero_()
        try:
            return super().reset(seed=seed, options=options)
        finally:
            self._regenerate = False

    def step(self, actions: torch.Tensor | np.ndarray):
        """As :meth:`BatchedEnv.step` (every row's episode ends on the same step, the ``max_steps``-th)."""
        self._in_step = True
        try:
            return super().step(actions)
        finally:
            self._in_step = False

    def _reset_rows(self, mask: torch.Tensor) -> None:
        # Lockstep: ``mask`` is all True whenever an episode ends (reset, or the max_steps-th step), else all False.
        if self._in_step and isinstance(self._t, torch.Tensor):
            self._end_episodes_where(self._end)  # fixed buffers: no host branch
            return
        if self._in_step and not self._episodes_end:
            return
        if not self._in_step and mask is not self._all_rows:
            raise NotImplementedError("MemoryMaze restarts all rows together (its episodes run in lockstep)")
        keys = self.episode_keys()  # [N] one 32-bit key per (env, episode)
        N, n, gb = self.num_envs, self.n, self.tables.grid_base
        if self._regenerate:  # two fresh mazes per env from its key
            both = torch.stack([hash32(keys + 0x3C6EF372), hash32(keys + 0x78DDE6E4)], dim=1).view(-1)  # [2N]
            parent, origin = binary_tree_mazes(both, self.k)
            grids = trees_to_grids(parent, self.k, self.pad, extra=1)
            # warm-up: as many origin-shift moves as an episode of default length applies, so that the first
            # mazes are drawn like all later ones (from the chain's stationary law: uniform spanning trees)
            ar2 = torch.arange(2 * N, dtype=torch.long, device=self.device)
            t2 = ShuffleTables(self.tables.neighbours, self.tables.walls, ar2 * n, ar2 * self.Np,
                               self.tables.wall_value.repeat(2), self.tables.floor_value.repeat(2))
            for m in range(self.warmup_moves):
                if m % 16 == 0:
                    h = hash32(both + (m // 16 + 1) * GOLDEN32)
                origin = origin_shift_(parent, origin, grids, (h >> (2 * (m % 16))) & 3, t2)
            self.parent, self.next_parent = parent[0::2].contiguous(), parent[1::2].contiguous()
            self.origin, self.next_origin = origin[0::2].contiguous(), origin[1::2].contiguous()
            self.grid, self.next_grid = grids[0::2].contiguous(), grids[1::2].contiguous()
        else:  # the ended episode's maze loses its goal mark and becomes the next maze; the shuffled one is played
            self.grid.view(-1).scatter_(0, gb + self.goal_pos, self.tables.floor_value)
            self.grid, self.next_grid = self.next_grid, self.grid
            self.parent, self.next_parent = self.next_parent, self.parent
            self.origin, self.next_origin = self.next_origin, self.origin
        goal = (keys >> 2 & 0xFFFF) % n  # the key's bits 2..17
        self.goal_pos = self.cpos.gather(0, goal)
        self.teleport_base = goal * (n - 1)
        self.grid.view(-1).scatter_(0, gb + self.goal_pos, self.goal_value)
        self.pos = self.teleport.gather(0, self.teleport_base + hash32(keys + 0x2F) % (n - 1))  # another cell
        self.dir = keys & 3  # the key's bits 0..1
        self.goals = torch.zeros_like(self.goals)
        self.ep_key = keys

    def _end_episodes_where(self, e: torch.Tensor) -> None:
        """The episodes' end of :meth:`_reset_rows` (the played maze's goal mark erased, the shuffled maze swapped in,
        a new goal, start cell and direction from the next episode's key) where the ``[1]`` flag ``e`` is True, and
        nothing where it is False, without a host branch (:meth:`prepare_static`)."""
        keys = self.episode_keys()  # [N] (episode_id was advanced where the episodes ended)
        n, gb = self.n, self.tables.grid_base
        self.grid.view(-1).scatter_(0, gb + self.goal_pos, torch.where(e, self.tables.floor_value, self.goal_value))
        e2 = e.view(1, 1)
        self.grid, self.next_grid = (torch.where(e2, self.next_grid, self.grid),
                                     torch.where(e2, self.grid, self.next_grid))
        self.parent, self.next_parent = (torch.where(e2, self.next_parent, self.parent),
                                         torch.where(e2, self.parent, self.next_parent))
        self.origin, self.next_origin = (torch.where(e, self.next_origin, self.origin),
                                         torch.where(e, self.origin, self.next_origin))
        goal = (keys >> 2 & 0xFFFF) % n
        self.goal_pos = torch.where(e, self.cpos.gather(0, goal), self.goal_pos)
        self.teleport_base = torch.where(e, goal * (n - 1), self.teleport_base)
        self.grid.view(-1).scatter_(0, gb + self.goal_pos, self.goal_value)  # (unchanged where e is False)
        self.pos = torch.where(e, self.teleport.gather(0, self.teleport_base + hash32(keys + 0x2F) % (n - 1)), self.pos)
        self.dir = torch.where(e, keys & 3, self.dir)
        self.goals = torch.where(e, 0, self.goals)
        self.ep_key = torch.where(e, keys, self.ep_key)
        self._t.masked_fill_(e, 0)

    # ---- step ------------------------------------------------------------------------------------------------------
    def _step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(self._t, torch.Tensor):  # fixed buffers (prepare_static): the count on the device
            self._t.add_(1)  # this step's number in the episode, 1..max_steps
            torch.ge(self._t, self.max_steps, out=self._end)
        else:  # host bookkeeping here, after the actions were checked (a rejected step must not advance the count)
            self._host_steps += 1
            self._t = self._host_steps  # this step's number in the episode, 1..max_steps
            self._episodes_end = self._host_steps >= self.max_steps
            if self._episodes_end:
                self._host_steps = 0
        gb = self.tables.grid_base
        h = hash32(self.ep_key + self._t * GOLDEN32)  # [N] this step's 32 random bits (t: step in the episode)
        self.dir = (self.dir + self.turn.gather(0, actions)) & 3
        fwd = self.pos + self.delta.gather(0, self.dir)
        cell = self.grid.view(-1).gather(0, gb + fwd)
        pos = torch.where((actions == 2) & (cell != WALL), fwd, self.pos)  # forward into floor or goal
        reach = pos == self.goal_pos  # [N] bool: the goal is entered
        # teleport to a uniformly random other cell (bits 0..15) with a random direction (bits 16..17)
        other = ((h & 0xFFFF) * (self.n - 1)) >> 16  # uniform in [0, n - 2] (multiply-shift, no division)
        self.pos = torch.where(reach, self.teleport.gather(0, self.teleport_base + other), pos)
        self.dir = torch.where(reach, (h >> 16) & 3, self.dir)
        self.goals = self.goals + reach
        if isinstance(self._t, torch.Tensor):
            truncated = self._end.expand(self.num_envs).clone()
        else:
            truncated = self._true if self._episodes_end else self._false  # lockstep: known on the host
        for m in range(self.shuffle_moves):  # re-randomise the next mazes (bits 18.. of h: two per move)
            self.next_origin = origin_shift_(self.next_parent, self.next_origin, self.next_grid,
                                             (h >> (18 + 2 * m)) & 3, self.tables)
        reward = reach.to(torch.float32)
        return reward, self._false, truncated, {"success": self.goals > 0, "goals": self.goals.to(torch.int32)}

    # ---- observation -----------------------------------------------------------------------------------------------
    def _observe(self) -> torch.Tensor:
        N, K = self.num_envs, self.view_size ** 2
        if self.view_table is not None:  # [N, K] indices of the view squares within each env's grid, one lookup
            return self.grid.gather(1, self.view_table.index_select(0, self.dir * self.Np + self.pos))
        base = (self.tables.grid_base + self.pos).to(self._idx_dtype)  # [N]
        idx = self.offsets.index_select(0, self.dir) + base.unsqueeze(1)  # [N, K] flat indices of the view cells
        return self.grid.view(-1).index_select(0, idx.view(-1)).view(N, K)  # [N, K] uint8 codes

    # ---- hidden information for scripted policies and tests ----------------------------------------------------
    def maze(self) -> torch.Tensor:
        """The played mazes, uint8 ``[N, maze_size, maze_size]`` (0 floor, 1 wall, 2 goal), indexed ``[y, x]``."""
        P, S, Sp = self.pad, self.maze_size, self.Sp
        return self.grid[:, :Sp * Sp].view(-1, Sp, Sp)[:, P:P + S, P:P + S].clone()

    def agent_state(self) -> dict[str, torch.Tensor]:
        """``{"x", "y", "dir", "goal_x", "goal_y"}``, long ``[N]`` each, in maze coordinates."""
        P, Sp = self.pad, self.Sp
        return {"x": self.pos % Sp - P, "y": self.pos // Sp - P, "dir": self.dir.clone(),
                "goal_x": self.goal_pos % Sp - P, "goal_y": self.goal_pos // Sp - P}

    def __repr__(self) -> str:
        return (f"MemoryMaze(num_envs={self.num_envs}, maze_size={self.maze_size}, view_size={self.view_size}, "
                f"max_steps={self.max_steps}, device={self.device})")


class MemoryMazeEnv(SingleEnv):
    """The single Gymnasium env of :class:`MemoryMaze` (numpy in and out; same options, no ``num_envs``)."""

    batched_cls = MemoryMaze

    def maze(self) -> np.ndarray:
        return self.batched.maze()[0].numpy()

    def agent_state(self) -> dict[str, int]:
        return {k: int(v[0]) for k, v in self.batched.agent_state().items()}
