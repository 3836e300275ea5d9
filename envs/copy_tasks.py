"""The NTM algorithmic tasks as RL environments: Copy, RepeatCopy and AssociativeRecall.

Formats follow Graves, Wayne and Danihelka 2014 ("Neural Turing Machines", arXiv:1410.5401): random binary vectors
plus control channels in, the answer out. In the RL form the agent's action at each step is the network's output
vector (``MultiBinary``); each answer step pays the fraction of correct output bits, so a perfect episode's return
is the number of answer steps. The observation is the paper's input vector at that step (float32, 0/1 except the
repeat count) and all zeros while the answer is due.

Episode statistics (``info["episode"]`` of the batched env, masked by ``info["_episode"]``; ``info`` at the last
step of the single env): ``bit_errors`` (int32, wrong output bits over the answer steps) and ``success`` (bool, no
wrong bit).

Implementation (why a step is ~35 small tensor ops whatever the episode length): all rows advance in lock step,
so the env keeps a global step counter ``G`` (a Python int; its ring slot ``G mod B`` as a device tensor once
:meth:`prepare_static` has run, for CUDA graphs) and a ring buffer ``buf [B, N]`` of the vectors shown (as
``W``-bit integer codes): at each step every row draws one fresh random code from ``self.generator``
(``torch.randint``, one call for all rows) and it is written to ``buf[G % B]`` (one slice copy); a row that must
recall a vector reads it back with one ``take`` (or ``gather``) at ``G - offset``, where ``offset`` follows from the
task's timeline (RepeatCopy also re-stores each emitted vector, so a later copy finds it ``L`` steps back and the
buffer only has to span ``L + 2`` steps). Observations and targets come from small tables indexed by the codes (``obs_table``: every bit vector
plus the control rows). Per-episode numbers (lengths, repeat count, query position) are decoded from spare bits of
the row's random draw at its reset (bits 16..61; bits 0..W-1 are the first vector), and the per-episode constants the step needs are copied from a table of episode
types (one ``index_select`` and one ``where``).

Randomness: the same seed, number of envs and device give the same episodes (bit-identical on CPU). The episodes
come from one generator stream shared by the rows, so row 0 of a batched env does not replay the single env's
episodes; the tests check every row against an independent implementation of the rules instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from envs.base import BatchedEnv, SingleEnv, check_int

__all__ = [
    "CopyVecEnv",
    "CopyEnv",
    "RepeatCopyVecEnv",
    "RepeatCopyEnv",
    "AssociativeRecallVecEnv",
    "AssociativeRecallEnv",
]

MAX_WIDTH = 16  # vectors are table rows: 2^W of them
MAX_SEQ = 1 << 12  # longest sequence / most repeats


def _check_range(lo_name: str, lo: Any, hi_name: str, hi: Any, low: int, high: int) -> tuple[int, int]:
    lo = check_int(lo_name, lo, low, high)
    hi = check_int(hi_name, hi, lo, high)
    return lo, hi


def _bit_rows(width: int) -> np.ndarray:
    """``[2^W, W]`` 0/1: row ``c`` holds the bits of ``c`` (bit ``i`` in column ``i``)."""
    codes = np.arange(1 << width)[:, None]
    return ((codes >> np.arange(width)) & 1).astype(np.float32)


class _RecallTask(BatchedEnv):
    """Shared machinery: the lock-step ring buffer of shown vectors, the random draw, the episode-type table.

    Subclasses call :meth:`_setup` from ``__init__`` and use :meth:`_draw`, :meth:`_recall`, :meth:`_score`;
    ``self.cols[k]`` is the ``[N]`` tensor of per-episode constant ``k``.
    """

    counter_based = False  # draws come from self.generator

    def _setup(self, width: int, buffer_len: int, obs_rows: np.ndarray, target_rows: np.ndarray,
               episode_types: np.ndarray) -> None:
        """``obs_rows [R, obs_dim]``, ``target_rows [T, act_dim]``, ``episode_types [E, P]`` int (per-episode
        constants per type)."""
        N, dev = self.num_envs, self.device
        self.width = width
        self._content_mask = (1 << width) - 1
        self._buffer_len = 1 << max(1, int(np.ceil(np.log2(buffer_len))))  # a power of two: index & (B - 1)
        self._buffer_mask = self._buffer_len - 1
        self.buf = torch.zeros(self._buffer_len, N, dtype=torch.int64, device=dev)  # [B, N] shown vector codes
        self._flat_buf = self.buf.view(-1)  # [B * N]
        # _slot_base[g, j] = g N + j: flat index of row j's slot g
        self._slot_base = torch.arange(self._buffer_len * N, dtype=torch.int64, device=dev).view(-1, N)
        self.G: int | torch.Tensor = 0  # global step counter (same for all rows); after prepare_static: [1] G mod B
        self._obs_table = torch.as_tensor(obs_rows, dtype=torch.float32, device=dev)  # [R, obs_dim]
        self._target_table = torch.as_tensor(target_rows, dtype=torch.bool, device=dev)  # [T, act_dim]
        self._types = torch.as_tensor(episode_types, dtype=torch.int64, device=dev)  # [E, P]
        self.params = self._types[:1].expand(N, -1).clone()  # [N, P] per-row constants
        self.cols = self.params.unbind(1)  # P tensors [N]
        self.t = torch.zeros(N, dtype=torch.int64, device=dev)  # [N] step within the episode
        self.errors = torch.zeros(N, dtype=torch.int32, device=dev)  # [N] wrong output bits so far
        self.content = torch.zeros(N, dtype=torch.int64, device=dev)  # [N] fresh vector code of this step
        self._zero = torch.zeros((), dtype=torch.int64, device=dev)
        self._zero32 = torch.zeros((), dtype=torch.int32, device=dev)
        self._zero_code_t = torch.tensor(self._zero_code, dtype=torch.int64, device=dev)
        self._end_code_t = torch.tensor(getattr(self, "_end_code", 0), dtype=torch.int64, device=dev)
        self._outputs = int(target_rows.shape[1])  # outputs per answer step
        self._inv_outputs = 1.0 / self._outputs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if isinstance(self.G, torch.Tensor):
            self.G.zero_()
        else:
            self.G = 0
        return super().reset(seed=seed, options=options)

    def prepare_static(self) -> None:
        """Keep ``G`` as its ring slot ``G mod B`` in a ``[1]`` device tensor updated in place, so that a step reads
        no Python counter and can be replayed by a CUDA graph (:class:`envs.capture.StaticStep` calls this; the
        plain path keeps a Python int, a few ops a step cheaper on a CPU). Same episodes either way."""
        if not isinstance(self.G, torch.Tensor):
            self.G = torch.full((1,), self.G & self._buffer_mask, dtype=torch.int64, device=self.device)

    def _advance(self) -> None:
        """G += 1."""
        if isinstance(self.G, torch.Tensor):
            self.G.add_(1).bitwise_and_(self._buffer_mask)
        else:
            self.G += 1

    def _slot(self) -> int | torch.Tensor:
        """The ring slot of ``G``: an int, or a ``[1]`` tensor after :meth:`prepare_static`."""
        return self.G if isinstance(self.G, torch.Tensor) else self.G & self._buffer_mask

    def _draw(self) -> torch.Tensor:
        """One 62-bit random draw per row; its low ``W`` bits become this step's fresh vector, stored at ``G``."""
        w = torch.randint(0, 1 << 62, (self.num_envs,), generator=self.generator, device=self.device)  # [N]
        self.content = w & self._content_mask
        self.buf[self._slot()] = self.content
        return w

    def _reset_common(self, mask: torch.Tensor, etype: torch.Tensor) -> None:
        """Rows in ``mask`` start an episode of type ``etype [N]``."""
        self.params = torch.where(mask[:, None], self._types.index_select(0, etype), self.params)  # [N, P]
        self.cols = self.params.unbind(1)
        self.t = torch.where(mask, self._zero, self.t)
        self.errors = torch.where(mask, self._zero32, self.errors)

    def _recall_scaled(self, back_n: torch.Tensor) -> torch.Tensor:
        """As :meth:`_recall` with ``back_n = back * N`` (a per-episode constant column): one ``take`` of the
        flat buffer, whose negative indices wrap around the ring."""
        return self._flat_buf.take(self._slot_base[self._slot()].view(-1) - back_n)

    def _recall(self, back: torch.Tensor) -> torch.Tensor:
        """``[N]`` codes stored ``back [N]`` steps ago (``0 <= back < buffer length``), at global step ``G - back``."""
        idx = (self.G - back) & self._buffer_mask  # [N]
        return self.buf.gather(0, idx[None])[0]

    def _score(self, target_code: torch.Tensor, actions: torch.Tensor, answering: torch.Tensor,
               ep_steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Reward of the answer steps, error count, step count; the ``_step`` return value."""
        target = self._target_table.index_select(0, target_code)  # [N, act_dim]
        wrong = torch.where(answering, (target != actions).sum(-1, dtype=torch.int32), self._zero32)  # [N] 0 if no answer
        reward = answering.float() - wrong * self._inv_outputs  # [N] float32 fraction correct
        self.errors = errors = self.errors + wrong
        self.t = t = self.t + 1
        self._advance()
        return reward, t == ep_steps, None, {"bit_errors": errors, "success": errors == 0}


# --------------------------------------------------------------------------------------------------------------------
# Copy and RepeatCopy
# --------------------------------------------------------------------------------------------------------------------

# columns of RepeatCopy's per-episode constants
# L, 2 L + 1, L + 1 + R L, episode length, delimiter obs code, L + 1
_L, _FIRST, _CEND, _T, _DCODE, _L1N = range(6)  # _L1N: (L + 1) N


class RepeatCopyVecEnv(_RecallTask):
    """RepeatCopy (NTM paper, section 4.3), batched: see L random vectors, then a repeat count R; emit them R times.

    One episode (L = 3, R = 2, end marker on)::

        t          0    1    2    3       4    5    6    7    8    9    10
        obs bits   x0   x1   x2   .       .    .    .    .    .    .    .
        obs delim  .    .    .    1       .    .    .    .    .    .    .
        obs count  .    .    .    c(R)    .    .    .    .    .    .    .
        target     -    -    -    -       x0   x1   x2   x0   x1   x2   end
        reward     0    0    0    0       f    f    f    f    f    f    f     (f: fraction of correct outputs)

    Observation ``[W + 2]`` float32: ``W`` bits, a delimiter flag at the step after the sequence, and at that step
    the repeat count normalised as in the paper to mean 0 and variance 1 over the repeat distribution,
    ``(R - mean) / std`` (0 when ``min_repeats == max_repeats``). Action ``MultiBinary(W + 1)``: ``W`` bits plus the
    end marker, which must be 0 during the copies and 1 (with all bits 0) at the final step; with
    ``end_marker=False`` the action is ``MultiBinary(W)`` and the final step is dropped. Episode length
    ``L + 2 + R L`` (``L + 1 + R L`` without end marker), terminated at the last step; return in ``[0, R L + 1]``
    (``[0, R L]``).

    Args:
        num_envs: N.
        width: W, bits per vector (1..16; paper 8).
        min_length, max_length: L uniform in this range per episode (1..4096; paper 1..10).
        min_repeats, max_repeats: R uniform in this range per episode (1..4096; paper 1..10).
        end_marker: ask for the end-of-output marker (paper: yes).
        device, return_final_obs: see :class:`envs.base.BatchedEnv`.
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        width: int = 8,
        min_length: int = 1,
        max_length: int = 10,
        min_repeats: int = 1,
        max_repeats: int = 10,
        end_marker: bool = True,
        device: torch.device | str | None = "cpu",
        return_final_obs: bool = False,
    ) -> None:
        self._init(num_envs, width, min_length, max_length, min_repeats, max_repeats, end_marker, device,
                   return_final_obs, count_channel=True)

    def _init(self, num_envs, width, min_length, max_length, min_repeats, max_repeats, end_marker, device,
              return_final_obs, count_channel: bool) -> None:
        W = check_int("width", width, 1, MAX_WIDTH)
        self.min_length, self.max_length = _check_range("min_length", min_length, "max_length", max_length, 1,
                                                        MAX_SEQ)
        self.min_repeats, self.max_repeats = _check_range("min_repeats", min_repeats, "max_repeats", max_repeats,
                                                          1, MAX_SEQ)
        if not isinstance(end_marker, (bool, np.bool_)):
            raise ValueError(f"end_marker={end_marker!r} is not valid: expected True or False")
        self.end_marker = bool(end_marker)
        self._count_channel = count_channel
        self._refresh = self.max_repeats > 1  # re-store each emitted vector so the next copy finds it L steps back
        nV, nL, nR = 1 << W, self.max_length - self.min_length + 1, self.max_repeats - self.min_repeats + 1
        # repeat count normalisation: mean and std of the uniform integer distribution of R
        self._count_mean = (self.min_repeats + self.max_repeats) / 2.0
        self._count_std = float(np.sqrt((nR * nR - 1) / 12.0)) or 1.0

        # obs table rows: 0..nV-1 the bit vectors; ZERO; DELIM + r for repeat count min_repeats + r
        obs_dim = W + 1 + int(count_channel)
        self._zero_code, self._delim_code = nV, nV + 1
        obs_rows = np.zeros((nV + 1 + nR, obs_dim), np.float32)
        obs_rows[:nV, :W] = _bit_rows(W)
        obs_rows[nV + 1:, W] = 1.0
        if count_channel:
            obs_rows[nV + 1:, W + 1] = (np.arange(self.min_repeats, self.max_repeats + 1) - self._count_mean) / (
                self._count_std)
        low, high = obs_rows.min(0), obs_rows.max(0)
        # target table rows: 0..nV-1 the bit vectors (end marker 0); END: zero bits, end marker 1
        act_dim = W + int(self.end_marker)
        self._end_code = nV
        target_rows = np.zeros((nV + 1, act_dim), np.float32)
        target_rows[:nV, :W] = _bit_rows(W)
        if self.end_marker:
            target_rows[nV, W] = 1.0
        # episode types: (L, R) -> L, end of the first copy, end of the copies, episode length, delim code
        L = np.repeat(np.arange(self.min_length, self.max_length + 1), nR)
        R = np.tile(np.arange(self.min_repeats, self.max_repeats + 1), nL)
        copy_end = L + 1 + R * L
        types = np.stack(
            [L, 2 * L + 1, copy_end, copy_end + int(self.end_marker), nV + 1 + R - self.min_repeats, L + 1], 1
        )
        self._n_types = nL * nR
        if self._n_types > 1 << 20:
            raise ValueError(
                f"max_repeats={max_repeats}: (max_length - min_length + 1) * (max_repeats - min_repeats + 1) = "
                f"{self._n_types} is over the limit of {1 << 20} (length, repeats) combinations"
            )

        super().__init__(num_envs, spaces.Box(low, high, (obs_dim,), np.float32), spaces.MultiBinary(act_dim),
                         device=device, return_final_obs=return_final_obs)
        # a vector is read back at most L + 1 steps after it was stored
        types[:, _L1N] *= self.num_envs
        self._setup(W, self.max_length + 2, obs_rows, target_rows, types)

    def _reset_rows(self, mask: torch.Tensor) -> None:
        w = self._draw()  # [N]
        # the type table is the product (L, R): a uniform row is a uniform L and an independent uniform R
        self._reset_common(mask, (w >> 16) % self._n_types)  # bits 16..61: modulo bias < 2^-26

    def _step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        t, p = self.t, self.cols
        L, copy_end = p[_L], p[_CEND]
        if self._refresh:
            in_copy = (t > L) & (t < copy_end)  # [N]
            # first copy (t < 2 L + 1): the vector was shown L + 1 steps ago; later copies: re-stored L steps ago
            code = self._recall((t < p[_FIRST]) + L)
            g = self._slot()
            self.buf[g] = torch.where(in_copy, code, self.buf[g].view(-1))
        else:  # a single copy: the episode ends at (or one step after, with end marker) copy_end = 2 L + 1
            in_copy = (t > L) if not self.end_marker else (t > L) & (t < copy_end)
            code = self._recall_scaled(p[_L1N])  # L + 1 steps back
        if self.end_marker:
            answering = in_copy | (t == copy_end)
            code = torch.where(in_copy, code, self._end_code_t)  # [N] END at the last step
        else:
            answering = in_copy
        return self._score(code, actions, answering, p[_T])

    def _observe(self) -> torch.Tensor:
        t, p = self.t, self.cols
        L = p[_L]
        code = torch.where(t < L, self.content, torch.where(t == L, p[_DCODE], self._zero_code_t))  # [N]
        return self._obs_table.index_select(0, code)


class CopyVecEnv(RepeatCopyVecEnv):
    """Copy (NTM paper, section 4.1), batched: see L random vectors and a delimiter, then emit them in order.

    One episode (L = 3)::

        t          0    1    2    3      4    5    6
        obs bits   x0   x1   x2   .      .    .    .
        obs delim  .    .    .    1      .    .    .
        target     -    -    -    -      x0   x1   x2
        reward     0    0    0    0      f    f    f      (f: fraction of correct bits of the action)

    Observation ``[W + 1]`` float32 in {0, 1}: ``W`` bits and the delimiter channel; all zeros during the answer.
    Action ``MultiBinary(W)``: the output vector (ignored, reward 0, before the answer). Episode length ``2 L + 1``,
    terminated at the last step; return in ``[0, L]`` (``L`` for a perfect copy).

    Args:
        num_envs: N.
        width: W, bits per vector (1..16; paper 8).
        min_length, max_length: L uniform in this range per episode (1..4096; paper 1..20).
        device, return_final_obs: see :class:`envs.base.BatchedEnv`.
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        width: int = 8,
        min_length: int = 1,
        max_length: int = 20,
        device: torch.device | str | None = "cpu",
        return_final_obs: bool = False,
    ) -> None:
        self._init(num_envs, width, min_length, max_length, 1, 1, False, device, return_final_obs,
                   count_channel=False)


class CopyEnv(SingleEnv):
    """Copy as a single Gymnasium env (numpy); options as :class:`CopyVecEnv`."""

    batched_cls = CopyVecEnv


class RepeatCopyEnv(SingleEnv):
    """RepeatCopy as a single Gymnasium env (numpy); options as :class:`RepeatCopyVecEnv`."""

    batched_cls = RepeatCopyVecEnv


# --------------------------------------------------------------------------------------------------------------------
# AssociativeRecall
# --------------------------------------------------------------------------------------------------------------------

# columns of AssociativeRecall's per-episode constants
_A0, _AOFF, _QOFF, _PBASE, _AT = range(5)  # AOFF, QOFF: steps back to the answer / query vector, times N
_FRESH, _QUERY = -1, -2  # phase-table markers: show the fresh vector / the recalled query vector


class AssociativeRecallVecEnv(_RecallTask):
    """AssociativeRecall (NTM paper, section 4.4), batched: see K items, then one of them; emit the item after it.

    An item is ``S`` vectors of ``W`` bits. One episode (K = 3 items, query item 1, S = 2)::

        t        0  1   2    3  4   5    6  7   8    9   10  11   12   13  14
        bits     .  a0  a1   .  b0  b1   .  c0  c1   .   b0  b1   .    .   .
        item |   1  .   .    1  .   .    1  .   .    .   .   .    .    .   .
        query |  .  .   .    .  .   .    .  .   .    1   .   .    1    .   .
        target   -  -   -    -  -   -    -  -   -    -   -   -    -    c0  c1
        reward   0  ...                                                f   f

    Observation ``[W + 2]`` float32 in {0, 1}: ``W`` bits, the item delimiter channel (one step before each item) and
    the query delimiter channel (one step before and one after the query item); all zeros during the answer. The
    query is item ``q``, uniform in ``0..K-2``; the answer is item ``q + 1``. Action ``MultiBinary(W)``. Episode
    length ``K (S + 1) + 2 S + 2``, terminated at the last step; return in ``[0, S]``. Items are independent random
    vectors, so two items can coincide (chance ``~K^2 / 2^(S W + 1)``, 2e-4 with the defaults).

    Args:
        num_envs: N.
        width: W, bits per vector (1..16; paper 6).
        item_size: S, vectors per item (1..16; paper 3).
        min_items, max_items: K uniform in this range per episode (2..256; paper 2..6).
        device, return_final_obs: see :class:`envs.base.BatchedEnv`.
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        width: int = 6,
        item_size: int = 3,
        min_items: int = 2,
        max_items: int = 6,
        device: torch.device | str | None = "cpu",
        return_final_obs: bool = False,
    ) -> None:
        W = check_int("width", width, 1, MAX_WIDTH)
        S = self.item_size = check_int("item_size", item_size, 1, 16)
        self.min_items, self.max_items = _check_range("min_items", min_items, "max_items", max_items, 2, 256)
        P, nV = S + 1, 1 << W
        # obs table rows: 0..nV-1 bit vectors; ZERO; ITEM delimiter; QUERY delimiter
        self._zero_code, item_code, query_code = nV, nV + 1, nV + 2
        obs_rows = np.zeros((nV + 3, W + 2), np.float32)
        obs_rows[:nV, :W] = _bit_rows(W)
        obs_rows[item_code, W] = 1.0
        obs_rows[query_code, W + 1] = 1.0
        # phase table: for each K, the obs code at step t (or _FRESH / _QUERY)
        t_max = self.max_items * P + 2 * S + 2
        phase = np.full((self.max_items - self.min_items + 1, t_max + 1), self._zero_code, np.int64)
        types = []
        for i, K in enumerate(range(self.min_items, self.max_items + 1)):
            for k in range(K):
                phase[i, k * P] = item_code
                phase[i, k * P + 1:(k + 1) * P] = _FRESH
            Q0 = K * P
            phase[i, Q0] = phase[i, Q0 + S + 1] = query_code
            phase[i, Q0 + 1:Q0 + S + 1] = _QUERY
            A0 = Q0 + S + 2
            for q in range(K - 1):
                # answer step t = A0 + s reads item q + 1's vector s, shown at step (q + 1) P + 1 + s, i.e.
                # A0 - (q + 1) P - 1 steps back; query step t = Q0 + 1 + s shows item q's vector s, shown at
                # step q P + 1 + s, Q0 - q P steps back
                types.append((A0, A0 - (q + 1) * P - 1, Q0 - q * P, i * (t_max + 1), A0 + S))
            for q in range(K - 1, self.max_items - 1):
                types.append(types[-1])  # padding: type index = K index * (max_items - 1) + q
        self._phase = torch.as_tensor(phase.reshape(-1))  # moved to the device below
        self._nK, self._nQ = self.max_items - self.min_items + 1, self.max_items - 1
        # K uniform, then q uniform in 0..K-2: when small enough, a table where each (K, q) is repeated
        # lcm / (K - 1) times makes one uniform draw over its rows do both (fewer ops per reset)
        lcm = int(np.lcm.reduce(np.arange(max(1, self.min_items - 1), self.max_items)))
        self._flat_types = self._nK * lcm <= 1 << 16
        if self._flat_types:
            types = [types[i * self._nQ + q] for i, K in enumerate(range(self.min_items, self.max_items + 1))
                     for q in range(K - 1) for _ in range(lcm // (K - 1))]
            self._n_types = len(types)
        target_rows = _bit_rows(W)
        super().__init__(num_envs, spaces.Box(0.0, 1.0, (W + 2,), np.float32), spaces.MultiBinary(W),
                         device=device, return_final_obs=return_final_obs)
        self._phase = self._phase.to(self.device)
        types = np.array(types, np.int64)
        types[:, [_AOFF, _QOFF]] *= self.num_envs
        self._setup(W, t_max + 1, obs_rows, target_rows, types)

    def _reset_rows(self, mask: torch.Tensor) -> None:
        w = self._draw()  # [N]
        if self._flat_types:
            self._reset_common(mask, (w >> 16) % self._n_types)
            return
        k_idx = ((w >> 16) & 0xFFFFFF) % self._nK  # [N] K - min_items
        q = (w >> 40) % (k_idx + (self.min_items - 1))  # [N] query item, uniform in 0..K-2
        self._reset_common(mask, k_idx * self._nQ + q)

    def _step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        t, p = self.t, self.cols
        answering = t >= p[_A0]  # [N]
        code = self._recall_scaled(p[_AOFF])  # [N] item q + 1's vector t - A0 (meaningful when answering)
        return self._score(code, actions, answering, p[_AT])

    def _observe(self) -> torch.Tensor:
        t, p = self.t, self.cols
        ph = self._phase.take(p[_PBASE] + t)  # [N] obs code or marker
        query = self._recall_scaled(p[_QOFF])  # [N] item q's vector t - Q0 - 1 (used in the query phase)
        code = torch.where(ph == _FRESH, self.content, torch.where(ph == _QUERY, query, ph))
        return self._obs_table.index_select(0, code)


class AssociativeRecallEnv(SingleEnv):
    """AssociativeRecall as a single Gymnasium env (numpy); options as :class:`AssociativeRecallVecEnv`."""

    batched_cls = AssociativeRecallVecEnv
