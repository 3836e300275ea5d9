"""A batched tensor port of MiniGrid's MemoryEnv (``MiniGrid-MemoryS7`` ... ``S17Random``).

The rules are those of ``minigrid.envs.MemoryEnv`` (minigrid 3.x), rewritten as tensor operations so that
thousands of episodes step at once on any torch device:

- Layout: a ``size x size`` grid (``size`` odd, >= 7) with outer walls; a start room on the left holding a green
  key or ball at ``(1, size // 2 - 1)``; a horizontal hallway of length ``hallway_end - 5`` (``hallway_end =
  size - 3``, or uniform in ``[4, size - 3]`` with ``random_length``); a vertical hallway at column
  ``hallway_end + 1`` with a green key at one end and a green ball at the other, in random order.
- The agent starts at ``(x, size // 2)`` with ``x`` uniform in ``[1, hallway_end]``, facing right (dir 0).
- Seven actions: 0 left, 1 right, 2 forward, 3 pickup (MemoryEnv turns it into toggle), 4 drop, 5 toggle, 6 done.
  Keys, balls and walls cannot be entered, toggled or (since pickup becomes toggle) picked up, so actions 3 to 6
  never change the state; they still use up a step.
- Stepping onto the cell next to the matching object ends the episode with reward ``1 - 0.9 * step_count /
  max_steps``; the cell next to the other object ends it with reward 0. ``step_count >= max_steps`` (default
  ``5 * size**2``) truncates; both flags can be set on the same step, as in MiniGrid.
- Observation: the agent's egocentric ``view_size x view_size`` view encoded exactly as MiniGrid's
  ``Grid.encode(vis_mask)``: each cell is ``(OBJECT_IDX, COLOR_IDX, STATE)``, cells hidden behind walls (MiniGrid's
  ``process_vis``) are ``(0, 0, 0)``, out-of-grid cells are walls, and the agent's own cell shows what it carries
  (nothing, i.e. ``empty``). Image axes are MiniGrid's ``[x, y, channel]`` of the view; the agent sits at
  ``(view_size // 2, view_size - 1)`` facing "up" (towards y = 0).

Implementation: the static part of an episode (walls and objects) is one of a few layouts (``hallway_end`` x start
object x object order), all kept in a small table of padded grids on the device. The per-env state is a layout
id, the agent's flat position in the padded grid, its direction and the step count. The view is a gather with
precomputed per-direction index offsets; MiniGrid's row-by-row visibility scan is one lookup per view row in a
precomputed table indexed by (incoming visibility bits, transparent bits). Since nothing in MemoryEnv moves, the
observation is a function of (layout, cell, direction): by default all of them are rendered once at construction
and a step reads its observation with one row gather (``obs_cache=False`` renders every step; same values).
Episode starts are drawn from counter-based keys (hashes of the env's seed and episode number).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from .base import GOLDEN32, BatchedEnv, SingleEnv, check_int, hash32

__all__ = ["MiniGridMemory", "MiniGridMemoryEnv", "MemoryCore", "CODE_TO_ENCODING", "EMPTY", "WALL", "KEY", "BALL",
           "ONE_HOT_BITS", "one_hot_encode"]

# --- MiniGrid's constants (minigrid/core/constants.py), repeated so that this module does not need minigrid ------
OBJECT_TO_IDX = {
    "unseen": 0, "empty": 1, "wall": 2, "floor": 3, "door": 4, "key": 5, "ball": 6, "box": 7, "goal": 8,
    "lava": 9, "agent": 10,
}
COLOR_TO_IDX = {"red": 0, "green": 1, "blue": 2, "purple": 3, "yellow": 4, "grey": 5}
# DIR_TO_VEC[d] = (dx, dy): 0 right (+x), 1 down (+y), 2 left (-x), 3 up (-y)
DIR_TO_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))

# --- cell codes of the port (indices into CODE_TO_ENCODING) -------------------------------------------------------
EMPTY, WALL, KEY, BALL, UNSEEN = 0, 1, 2, 3, 4
# (OBJECT_IDX, COLOR_IDX, STATE) per code; walls are grey, the memory objects green, as MemoryEnv builds them
CODE_TO_ENCODING = (
    (OBJECT_TO_IDX["empty"], 0, 0),
    (OBJECT_TO_IDX["wall"], COLOR_TO_IDX["grey"], 0),
    (OBJECT_TO_IDX["key"], COLOR_TO_IDX["green"], 0),
    (OBJECT_TO_IDX["ball"], COLOR_TO_IDX["green"], 0),
    (OBJECT_TO_IDX["unseen"], 0, 0),
)

NUM_ACTIONS = 7
# bits per cell of MiniGrid's OneHotPartialObsWrapper: object, colour and state one-hots side by side
ONE_HOT_BITS = len(OBJECT_TO_IDX) + len(COLOR_TO_IDX) + 3
MIN_SIZE, MAX_SIZE = 7, 31
MAX_TABLE_VIEW = 7  # row-visibility lookup table up to this view size (2 ** 14 entries); beyond, computed directly


def one_hot_encode(obs: torch.Tensor) -> torch.Tensor:
    """MiniGrid's ``OneHotPartialObsWrapper`` encoding of flat views: uint8 ``[*, C * 3]`` -> uint8 ``[*, C * 20]``.

    Each cell ``(OBJECT_IDX, COLOR_IDX, STATE)`` becomes 20 bits: ``[object one-hot (11) | colour one-hot (6) |
    state one-hot (3)]``, cells in the view's C order, as the wrapper lays out its ``[V, V, 20]`` image.
    """
    lead, n = obs.shape[:-1], obs.shape[-1] // 3
    offsets = torch.tensor([0, len(OBJECT_TO_IDX), len(OBJECT_TO_IDX) + len(COLOR_TO_IDX)], device=obs.device)
    idx = obs.reshape(lead + (n, 3)).long() + offsets  # [*, C, 3] bit positions
    out = torch.zeros(lead + (n, ONE_HOT_BITS), dtype=torch.uint8, device=obs.device)
    return out.scatter_(-1, idx, 1).reshape(lead + (n * ONE_HOT_BITS,))


# ======================================= egocentric view: index offsets ============================================
def view_offsets(view_size: int, padded_width: int) -> torch.Tensor:
    """Flat index offsets of MiniGrid's egocentric view cells relative to the agent, per direction.

    View cell ``(vx, vy)`` (MiniGrid's ``get_view_coords``: the agent at ``(V // 2, V - 1)`` looking towards
    ``vy = 0``) lies at world cell ``agent + f * (V - 1 - vy) + r * (vx - V // 2)`` with ``f`` the forward and
    ``r = (-f_y, f_x)`` the right vector.

    Returns:
        long tensor ``[4, V * V]``; entry ``[d, vx * V + vy]`` is ``dy * padded_width + dx`` of that cell.
    """
    V, hs = view_size, view_size // 2
    out = torch.empty(4, V * V, dtype=torch.long)
    for d, (fx, fy) in enumerate(DIR_TO_VEC):
        rx, ry = -fy, fx
        for vx in range(V):
            for vy in range(V):
                dx = fx * (V - 1 - vy) + rx * (vx - hs)
                dy = fy * (V - 1 - vy) + ry * (vx - hs)
                out[d, vx * V + vy] = dy * padded_width + dx
    return out


# ======================================= MiniGrid's visibility scan ================================================
def row_visibility(
    incoming: torch.Tensor, transparent: torch.Tensor, view_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of MiniGrid's ``Grid.process_vis`` on bit masks (bit ``i`` = view column ``i``).

    ``process_vis`` walks the view rows from the agent's row (``j = V - 1``) upwards. In a row, a visible cell
    that one can see through makes its right neighbour visible (left-to-right pass), then its left neighbour
    (right-to-left pass); each visible see-through cell ``i`` also marks ``i - 1, i, i + 1`` of the row above.

    Args:
        incoming: int tensor, the row's cells already marked visible (from the row below / the agent).
        transparent: int tensor, the row's cells that do not block sight (everything but walls here).
    Returns:
        ``(visible, marks_above)``: int tensors of bit masks.
    """
    full = (1 << view_size) - 1
    m = incoming
    for _ in range(view_size - 1):  # left-to-right pass: fill towards higher bits through see-through cells
        m = m | (((m & transparent) << 1) & full)
    for _ in range(view_size - 1):  # right-to-left pass
        m = m | ((m & transparent) >> 1)
    x = m & transparent
    above = (x | (x << 1) | (x >> 1)) & full
    return m, above


def visibility_table(view_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Lookup table of :func:`row_visibility`: entry ``incoming | transparent << V`` is ``visible | above << V``.

    Returns:
        int32 tensor ``[2 ** (2 V)]``.
    """
    V = view_size
    idx = torch.arange(1 << (2 * V), dtype=torch.int64)
    vis, above = row_visibility(idx & ((1 << V) - 1), idx >> V, V)
    return (vis | (above << V)).to(torch.int32).to(device)


def visibility_mask(transparent: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """MiniGrid's visibility mask of an egocentric view (``see_through_walls=False``).

    Args:
        transparent: bool ``[B, V, V]`` indexed ``[vx, vy]``; True where the cell does not block sight.
        table: :func:`visibility_table` for this view size, or None to compute the rows directly.
    Returns:
        bool ``[B, V, V]`` indexed ``[vx, vy]``.
    """
    B, V, _ = transparent.shape
    dev = transparent.device
    pow2 = (1 << torch.arange(V, device=dev, dtype=torch.int32)).view(1, V, 1)
    # bits[b, vy] = sum_vx transparent[b, vx, vy] << vx
    bits = (transparent.to(torch.int32) * pow2).sum(dim=1, dtype=torch.int32)  # [B, V]
    incoming = torch.full((B,), 1 << (V // 2), dtype=torch.int32, device=dev)  # the agent's own cell
    rows = [None] * V
    full = (1 << V) - 1
    for j in range(V - 1, -1, -1):
        if table is not None:
            out = table[(incoming | (bits[:, j] << V)).long()]
            rows[j], incoming = out & full, out >> V
        else:
            rows[j], incoming = row_visibility(incoming, bits[:, j], V)
    vis_bits = torch.stack(rows, dim=1)  # [B, V(vy)]
    return ((vis_bits.unsqueeze(1) >> pow2.new_tensor(range(V)).view(1, V, 1)) & 1).bool()  # [B, V(vx), V(vy)]


# ======================================= layouts ===================================================================
class Layouts(NamedTuple):
    """Static part of the episodes, one row per layout.

    grids: uint8 ``[L, Hp * Wp]`` cell codes of the padded grid (``pad`` wall cells on every side).
    success: long ``[L]`` flat padded index of the cell next to the matching object.
    failure: long ``[L]`` flat padded index of the cell next to the other object.
    hallway_end: long ``[L]``.
    """

    grids: torch.Tensor
    success: torch.Tensor
    failure: torch.Tensor
    hallway_end: torch.Tensor


def memory_grid(size: int, hallway_end: int, start_obj: int, top_obj: int) -> list[list[int]]:
    """The MemoryEnv grid as a ``[y][x]`` list of cell codes (``EMPTY, WALL, KEY, BALL``).

    ``start_obj``/``top_obj``: KEY or BALL, the object in the start room and the one at the top end of the
    vertical hallway (the bottom end holds the other one).
    """
    W = H = size
    g = [[EMPTY] * W for _ in range(H)]
    for x in range(W):
        g[0][x] = g[H - 1][x] = WALL
    for y in range(H):
        g[y][0] = g[y][W - 1] = WALL
    upper, lower = H // 2 - 2, H // 2 + 2
    for i in range(1, 5):  # start room
        g[upper][i] = g[lower][i] = WALL
    g[upper + 1][4] = g[lower - 1][4] = WALL
    for i in range(5, hallway_end):  # horizontal hallway
        g[upper + 1][i] = g[lower - 1][i] = WALL
    for j in range(H):  # vertical hallway
        if j != H // 2:
            g[j][hallway_end] = WALL
        g[j][hallway_end + 2] = WALL
    g[H // 2 - 1][1] = start_obj
    g[H // 2 - 2][hallway_end + 1] = top_obj
    g[H // 2 + 2][hallway_end + 1] = BALL if top_obj == KEY else KEY
    return g


def pad_grids(grids: torch.Tensor, pad: int) -> torch.Tensor:
    """``[L, H, W]`` codes -> ``[L, (H + 2 pad) * (W + 2 pad)]`` with walls outside the grid (MiniGrid's slice)."""
    L, H, W = grids.shape
    out = torch.full((L, H + 2 * pad, W + 2 * pad), WALL, dtype=torch.uint8, device=grids.device)
    out[:, pad:pad + H, pad:pad + W] = grids
    return out.view(L, -1)


# ======================================= the batched env's core ===================================================
def standard_layouts(size: int, random_length: bool, pad: int, device: torch.device) -> Layouts:
    """All MemoryEnv layouts of a size: row ``(he_index * 2 + start_is_ball) * 2 + top_is_ball``."""
    ends = list(range(4, size - 2)) if random_length else [size - 3]
    Wp = size + 2 * pad
    grids, succ, fail, he = [], [], [], []
    mid = size // 2
    for e in ends:
        for start in (KEY, BALL):
            for top in (KEY, BALL):
                grids.append(memory_grid(size, e, start, top))
                up, down = (e + 1, mid - 1), (e + 1, mid + 1)  # cells next to the top / bottom object
                s, f = (up, down) if start == top else (down, up)
                succ.append((s[1] + pad) * Wp + s[0] + pad)
                fail.append((f[1] + pad) * Wp + f[0] + pad)
                he.append(e)
    g = pad_grids(torch.tensor(grids, dtype=torch.uint8), pad)
    t = lambda v: torch.tensor(v, dtype=torch.long, device=device)
    return Layouts(g.to(device), t(succ), t(fail), t(he))


class MemoryCore:
    """The batched MemoryEnv state and its tensor rules (no Gymnasium API here; see :class:`MiniGridMemory`).

    Args:
        num_envs: B.  size: grid size (odd, 7 to 31).  random_length: MemoryEnv's ``random_length``.
        view_size: V (odd, >= 3).  max_steps: None for ``5 * size ** 2``.  device: torch device.
        obs_cache: precompute all observations (see :meth:`build_cache`); False computes them every step.
    """

    def __init__(self, num_envs: int, size: int, random_length: bool, view_size: int, max_steps: int,
                 device: torch.device, obs_cache: bool = True, one_hot: bool = False):
        self.num_envs, self.size, self.random_length, self.one_hot = num_envs, size, random_length, one_hot
        self.view_size, self.max_steps, self.device = view_size, max_steps, device
        V = view_size
        self.pad = V - 1  # the view reaches V - 1 cells ahead of the agent
        self.Wp = size + 2 * self.pad
        self.Np = self.Wp * self.Wp
        self.layouts = standard_layouts(size, random_length, self.pad, device)
        self.num_standard = self.layouts.grids.shape[0]
        self.num_ends = self.num_standard // 4
        self.offsets = view_offsets(V, self.Wp).to(device)  # [4, V * V]
        self.delta = torch.tensor([1, self.Wp, -1, -self.Wp], dtype=torch.long, device=device)  # DIR_TO_VEC, flat
        self.turn = torch.tensor([3, 1, 0, 0, 0, 0, 0], dtype=torch.long, device=device)  # left = -1 mod 4
        self.encoding = torch.tensor(CODE_TO_ENCODING, dtype=torch.uint8, device=device)
        self.vis_table = visibility_table(V, device) if V <= MAX_TABLE_VIEW else None
        self.agent_cell = (V // 2) * V + (V - 1)  # view index of the agent, (V // 2, V - 1)
        self.start_base = (size // 2 + self.pad) * self.Wp + 1 + self.pad  # flat index of (1, size // 2)
        # MiniGridEnv._reward: 1 - 0.9 * (step_count / max_steps), computed in float64 as MiniGrid does, per count
        self.rewards = torch.tensor([1 - 0.9 * (t / max_steps) for t in range(max_steps + 1)],
                                    dtype=torch.float64).to(device, torch.float32)
        B = num_envs
        z = torch.zeros(B, dtype=torch.long, device=device)
        self.layout, self.pos, self.dir, self.steps = z.clone(), z.clone(), z.clone(), z.clone()
        # a start cell of each layout for the reachability flood fill: the start room's (1, size // 2)
        self._seed_cells = [(size // 2 + self.pad) * self.Wp + 1 + self.pad] * self.num_standard
        self.cache: torch.Tensor | None = None
        self.compact: torch.Tensor | None = None
        if obs_cache:
            self.build_cache()

    # --- episode starts -------------------------------------------------------------------------------------
    def reset_rows(self, mask: torch.Tensor, keys: torch.Tensor) -> None:
        """Start new episodes in the envs where ``mask`` (bool ``[B]``) is True.

        ``keys``: int64 ``[B]`` 32-bit random keys, one per (env, episode); the layout (hallway end, start object,
        object order: uniform and independent, as MemoryEnv draws them) comes from the key's low 16 bits, the start
        column (uniform in ``[1, hallway_end]``) from its high 16 bits, so an env's episodes depend on its keys only.
        """
        layout = (keys & 0xFFFF) % (4 * self.num_ends)
        he = self.layouts.hallway_end.gather(0, layout)
        pos = self.start_base + (((keys >> 16) * he) >> 16)  # (x, size // 2), x = 1 + floor(u16 * he / 2^16)
        self.layout = torch.where(mask, layout, self.layout)
        self.pos = torch.where(mask, pos, self.pos)
        self.dir = self.dir.masked_fill(mask, 0)
        self.steps = self.steps.masked_fill(mask, 0)

    # --- one step -------------------------------------------------------------------------------------------
    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """MemoryEnv.step for every env. ``action``: long ``[B]`` in [0, 7).

        Returns:
            reward float32 ``[B]``, terminated bool, truncated bool, success bool (the matching object reached).
        """
        self.steps = self.steps + 1
        self.dir = (self.dir + self.turn.gather(0, action)) & 3  # left/right turn, other actions keep it
        fwd = self.pos + self.delta.gather(0, self.dir)
        cell = self.layouts.grids.view(-1).gather(0, self.layout * self.Np + fwd)
        move = (action == 2) & (cell == EMPTY)  # forward into an empty cell (keys, balls, walls block)
        self.pos = torch.where(move, fwd, self.pos)
        success = self.pos == self.layouts.success.gather(0, self.layout)
        failure = self.pos == self.layouts.failure.gather(0, self.layout)
        terminated = success | failure
        # MiniGridEnv._reward: 1 - 0.9 * (step_count / max_steps)
        reward = torch.where(success, self.rewards.gather(0, self.steps), 0.0)
        truncated = self.steps >= self.max_steps
        return reward, terminated, truncated, success

    # --- observation ----------------------------------------------------------------------------------------
    def observe_at(self, layout: torch.Tensor, pos: torch.Tensor, dir: torch.Tensor) -> torch.Tensor:
        """The observation at given (layout, cell, direction): :meth:`render`, one-hot encoded with ``one_hot``."""
        obs = self.render(layout, pos, dir)
        return one_hot_encode(obs) if self.one_hot else obs

    def render(self, layout: torch.Tensor, pos: torch.Tensor, dir: torch.Tensor) -> torch.Tensor:
        """MiniGrid's image observation computed directly: uint8 ``[N, V * V * 3]`` (``[V, V, 3]`` flattened).

        Args: layout, pos, dir: long ``[N]``.
        """
        N, V = layout.shape[0], self.view_size
        idx = (layout * self.Np + pos).unsqueeze(1) + self.offsets[dir]  # [N, V * V]
        codes = self.layouts.grids.view(-1)[idx]  # [N, V * V], view index vx * V + vy
        vis = visibility_mask((codes != WALL).view(N, V, V), self.vis_table).view(N, V * V)
        codes = torch.where(vis, codes, UNSEEN)
        codes[:, self.agent_cell] = EMPTY  # the agent's cell shows what it carries: nothing
        return self.encoding[codes.long()].view(N, V * V * 3)

    def build_cache(self) -> None:
        """Precompute the observation of every (layout, reachable cell, direction).

        The layouts are static (nothing in MemoryEnv can be moved), so the observation is a function of these
        three; a step then reads its observation with two gathers. Reachable cells: the empty cells connected to
        the start hallway (standard layouts) or to the agent (loaded layouts).
        """
        L = self.layouts.grids.shape[0]
        Wp, Np = self.Wp, self.Np
        grids = self.layouts.grids.cpu()
        compact = torch.full((L, Np), -1, dtype=torch.long)
        lay, cells = [], []
        for l in range(L):
            g = grids[l].tolist()
            start = self._seed_cells[l]
            seen, stack = {start}, [start]
            while stack:  # flood fill over empty cells
                c = stack.pop()
                for d in (1, Wp, -1, -Wp):
                    nb = c + d
                    if nb not in seen and g[nb] == EMPTY:
                        seen.add(nb)
                        stack.append(nb)
            cs = sorted(seen)
            compact[l, cs] = torch.arange(len(cells), len(cells) + len(cs))
            lay += [l] * len(cs)
            cells += cs
        n = len(cells)
        lay_t = torch.tensor(lay, dtype=torch.long, device=self.device).repeat_interleave(4)
        pos_t = torch.tensor(cells, dtype=torch.long, device=self.device).repeat_interleave(4)
        dir_t = torch.arange(4, device=self.device).repeat(n)
        chunks = [self.observe_at(lay_t[i:i + 65536], pos_t[i:i + 65536], dir_t[i:i + 65536])
                  for i in range(0, 4 * n, 65536)]
        self.cache = torch.cat(chunks)  # [4 n, V * V * 3] (or V * V * 20 one-hot), row 4 * compact + dir
        self.compact = compact.view(-1).to(self.device)  # [L * Np]

    def observe(self) -> torch.Tensor:
        """The current observation of every env, uint8 ``[B, V * V * 3]`` (``[B, V * V * 20]`` with one_hot)."""
        if self.cache is None:
            return self.observe_at(self.layout, self.pos, self.dir)
        row = self.compact.gather(0, self.layout * self.Np + self.pos) * 4 + self.dir
        return self.cache.index_select(0, row)

    # --- verification hook ----------------------------------------------------------------------------------
    def load_layouts(self, grids: torch.Tensor, agent_pos: torch.Tensor, agent_dir: torch.Tensor,
                     success_pos: torch.Tensor, failure_pos: torch.Tensor, steps: torch.Tensor | None = None) -> None:
        """Put given episodes into the envs (e.g. copied from ``minigrid``'s MemoryEnv, see the tests).

        Args:
            grids: ``[B, size, size]`` cell codes indexed ``[y, x]`` (EMPTY, WALL, KEY, BALL).
            agent_pos, success_pos, failure_pos: long ``[B, 2]`` as ``(x, y)``.  agent_dir: long ``[B]``.
        The loaded layouts are kept after the standard ones; later resets draw standard layouts only.
        """
        B, dev, P, Wp = self.num_envs, self.device, self.pad, self.Wp
        flat = lambda p: (p[:, 1].to(dev) + P) * Wp + p[:, 0].to(dev) + P
        n0 = self.num_standard
        L = self.layouts
        self.layouts = Layouts(
            torch.cat([L.grids[:n0], pad_grids(grids.to(dev, torch.uint8), P)]),
            torch.cat([L.success[:n0], flat(success_pos)]),
            torch.cat([L.failure[:n0], flat(failure_pos)]),
            torch.cat([L.hallway_end[:n0], torch.full((B,), -1, dtype=torch.long, device=dev)]),
        )
        self.layout = n0 + torch.arange(B, device=dev)
        self.pos = flat(agent_pos)
        self.dir = agent_dir.to(dev, torch.long)
        self.steps = torch.zeros(B, dtype=torch.long, device=dev) if steps is None else steps.to(dev, torch.long)
        self._seed_cells = self._seed_cells[:n0] + self.pos.tolist()
        if self.cache is not None:
            self.build_cache()


# ======================================= Gymnasium API ============================================================
def check_odd(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an odd int in ``[low, high]``, else ``ValueError`` naming the option, the value and the range."""
    valid = f"an odd integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} is not valid: expected {valid}")
    if value % 2 == 0 or not low <= value <= high:
        raise ValueError(f"{name}={value} is not valid: expected {valid}")
    return int(value)


class MiniGridMemory(BatchedEnv):
    """MiniGrid's MemoryEnv, ``num_envs`` episodes at once on ``device`` (see the module docstring for the rules).

    ``MiniGridMemory(n, size=7, view_size=7)`` plays like ``n`` copies of ``MiniGrid-MemoryS7-v0`` behind
    ``ImgObsWrapper`` with the image flattened; ``size=13, random_length=True`` is ``MiniGrid-MemoryS13Random-v0``.

    Args:
        num_envs: N, episodes stepped together.
        size: grid side (MemoryEnv's ``size``), odd, in [7, 31].
        random_length: draw the hallway end uniformly in ``[4, size - 3]`` per episode (the ``...Random`` envs).
        view_size: side of the egocentric view (MiniGrid's ``agent_view_size``), odd, in [3, size]; 3 makes memory
            necessary.
        max_steps: episode step limit (truncation); None for MemoryEnv's ``5 * size ** 2``.
        obs_cache: precompute the observations of all (layout, cell, direction) once (fast steps); False renders
            them every step (same values).
        device: torch device of the state and of every input/output tensor.
        one_hot: give MiniGrid's ``OneHotPartialObsWrapper`` encoding instead (20 bits per cell: object, colour and
            state one-hots), which a linear encoder separates better than the raw indices (key 5 vs ball 6).
        num_actions: 7 (MiniGrid's action set) or 3 (only left, right, forward: the four others never change the
            state in MemoryEnv, so this removes no strategy, only wasted steps from exploration).
        return_final_obs: also give the last observation of ending episodes (``info["final_obs"]``).

    Observation: uint8 ``[N, view_size * view_size * 3]``, MiniGrid's ``[view_size, view_size, 3]`` image
    (``(OBJECT_IDX, COLOR_IDX, STATE)`` per cell) flattened in C order; with ``one_hot`` uint8 (0/1)
    ``[N, view_size * view_size * 20]``. Actions: ``Discrete(7)`` (``Discrete(3)`` with ``num_actions=3``, same ids).
    ``info["episode"]["success"]``: the matching object was reached.
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        size: int = 7,
        random_length: bool = False,
        view_size: int = 7,
        max_steps: int | None = None,
        obs_cache: bool = True,
        one_hot: bool = False,
        num_actions: int = NUM_ACTIONS,
        device: torch.device | str | None = "cpu",
        return_final_obs: bool = False,
    ) -> None:
        size = check_odd("size", size, MIN_SIZE, MAX_SIZE)
        view_size = check_odd("view_size", view_size, 3, size)
        max_steps = 5 * size * size if max_steps is None else check_int("max_steps", max_steps, 1)
        if not isinstance(random_length, (bool, np.bool_)):
            raise ValueError(f"random_length={random_length!r} is not valid: expected True or False")
        if not isinstance(one_hot, (bool, np.bool_)):
            raise ValueError(f"one_hot={one_hot!r} is not valid: expected True or False")
        obs_space = (gym.spaces.Box(0, 1, (view_size * view_size * ONE_HOT_BITS,), dtype=np.uint8) if one_hot
                     else gym.spaces.Box(0, 255, (view_size * view_size * 3,), dtype=np.uint8))
        if isinstance(num_actions, bool) or num_actions not in (3, NUM_ACTIONS):
            raise ValueError(f"num_actions={num_actions!r} is not valid: expected 3 (left, right, forward) or 7 (all)")
        super().__init__(num_envs, obs_space, gym.spaces.Discrete(int(num_actions)), device=device,
                         return_final_obs=return_final_obs)
        self.size, self.random_length, self.view_size, self.max_steps = size, bool(random_length), view_size, max_steps
        self.core = MemoryCore(self.num_envs, size, self.random_length, view_size, max_steps, self.device,
                               obs_cache=bool(obs_cache), one_hot=bool(one_hot))

    def _reset_rows(self, mask: torch.Tensor) -> None:
        # one key per (row, episode): a single hash of (row seed, episode id), cheaper than episode_keys() (two)
        self.core.reset_rows(mask, hash32(self.row_seed + self.episode_id * GOLDEN32))

    def _step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        reward, terminated, truncated, success = self.core.step(actions)
        return reward, terminated, truncated, {"success": success}

    def _observe(self) -> torch.Tensor:
        return self.core.observe()

    def load_layouts(self, grids: torch.Tensor, agent_pos: torch.Tensor, agent_dir: torch.Tensor,
                     success_pos: torch.Tensor, failure_pos: torch.Tensor) -> torch.Tensor:
        """Replace the current episodes by given ones (e.g. copied from ``minigrid``); returns their observations.

        See :meth:`MemoryCore.load_layouts` for the arguments. Call after ``reset``; episode statistics restart.
        """
        self.core.load_layouts(grids, agent_pos, agent_dir, success_pos, failure_pos)
        self._ep_return = torch.zeros_like(self._ep_return)
        self._ep_length = torch.zeros_like(self._ep_length)
        return self._observe()

    def __repr__(self) -> str:
        return (f"MiniGridMemory(num_envs={self.num_envs}, size={self.size}, random_length={self.random_length}, "
                f"view_size={self.view_size}, max_steps={self.max_steps}, device={self.device})")


class MiniGridMemoryEnv(SingleEnv):
    """The single Gymnasium env of :class:`MiniGridMemory` (numpy in and out; same options, no ``num_envs``)."""

    batched_cls = MiniGridMemory
