"""End-to-end memory network with a key-value slot memory (Sukhbaatar, Szlam, Weston, Fergus 2015, "End-To-End
Memory Networks"; Miller et al. 2016, "Key-Value Memory Networks") as an episodic memory core.

Every step writes its input as one memory entry (a key and a value per hop) into a ring buffer of ``N`` slots, the
oldest slot overwritten, and reads the entries of the previous ``N`` steps by soft attention in ``K`` hops. One
step at time ``t``, in the paper's notation (``x_t`` the input, ``x_i`` the input written in slot ``i``,
``a(i)`` the age of slot ``i``: 0 for the previous step, ``N - 1`` for the oldest)::

    u^1     = B x_t                                          query (B = A^1, adjacent tying)
    for k = 1..K:
      m_i^k = A^k x_i + T_A^k(a(i))                          keys: input memory with temporal encoding
      c_i^k = C^k x_i + T_C^k(a(i))                          values: output memory with temporal encoding
      p_i^k = softmax_i((u^k)^T m_i^k / sqrt(D))             soft address over the valid slots
      o^k   = sum_i p_i^k c_i^k                              read
      u^{k+1} = u^k + o^k                                    next query
    y_t     = u^{K+1}                                        output (the paper's W (o^K + u^K) is the agent's head)

then ``x_t`` is written into the slot at the write pointer (the oldest when the memory is full).

Adjacent weight tying (the paper, Sec. 2.2): ``A^{k+1} = C^k`` and ``B = A^1``, and the temporal encodings the same
way (``T_A^{k+1} = T_C^k``). So ``K`` hops need ``K + 1`` embeddings ``E^0 = A^1 = B``, ``E^k = C^k = A^{k+1}``
(``k = 1..K``), held as one ``Linear(input_size, (K + 1) D)``, and ``K + 1`` temporal tables ``[N, D]``. Hop ``k``
reads keys ``E^{k-1}`` and values ``E^k``: a key-value memory in Miller et al.'s sense (separate key and value
transforms of each entry) whose hops chain through the tying.

What is stored. A slot holds the ``K + 1`` embeddings ``E^j x_i`` of its entry (``[K + 1, D]``), computed once
when written (the input itself is not kept): a step costs one ``Linear`` and ``K`` attentions over ``N`` slots. The
temporal encoding depends on the age, which changes every step, so it is added at read time. Within one
``unroll`` gradients flow into the embeddings of every entry written there; entries of an incoming state are what
an earlier call wrote (in PPO, the rollout), constants to the update as a Transformer-XL memory is.

Departures from the paper, for dense agent inputs rather than bag-of-words sentences: scores are divided by
``sqrt(D)`` (Vaswani et al. 2017) so that the softmax does not saturate at initialisation for D = 128 dense
features; each step is one vector, so there is no position encoding inside a sentence (the paper's PE); the
training tricks "linear start" and random empty memories are not part of the core. The current step reads the
previous ``N`` steps, not itself (it enters the output through ``u^1``); the first step of an episode reads an
empty memory (``o = 0``).

Memory and episodes. ``MemNetState`` is a ring buffer with a per-row write pointer and fill count. ``initial_state``
is the empty memory (zeros, pointer 0, count 0; nothing learned), so a reset row (through :meth:`Core.reset_state`,
the package's one reset mechanism) is exactly a fresh start. Slots that are not filled (count) are masked before
the softmax and zeroed before use, so ``nan``/``inf`` there are never read, and every returned state holds zeros
there (one canonical form).

Fast path. :meth:`MemNetCore.unroll` reads a chunk of ``T`` steps at once: the incoming ring buffer is put in time
order, ``[memory (N) ; sequence (T)]`` is embedded once, and each hop is one ``[T, N + T]`` score matmul cut to the
band of the ``N`` previous positions of each step (Transformer-XL's relative shift, ``gtrxl._band``), with a mask
from the resets (``torch.cummax`` over reset positions). The final ring buffer is gathered back into slot order.
That equals the step loop (tests/test_memnet.py, float64 values and gradients, resets inside the sequence).
:meth:`MemNetCore.step` is the plain reading of the equations above.

Shapes: ``B`` batch, ``T`` time, ``N`` slots, ``K`` hops, ``D`` = ``hidden_size``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .base import Core
from .gtrxl import _band, _unband


class MemNetState(NamedTuple):
    """``memory``: ``[B, N, K + 1, D]``: slot ``i`` holds ``E^j x_i`` (``j = 0..K``) of the entry written there,
    zeros when empty. ``pointer``: ``[B]``, the slot the next step writes (``0..N-1``). ``count``: ``[B]``, the
    number of filled slots (``0..N``); the filled slots are the ``count`` slots before ``pointer`` (cyclically).
    ``pointer`` and ``count`` are floats holding small integers (every state leaf is floating)."""

    memory: Tensor
    pointer: Tensor
    count: Tensor


def masked_softmax(scores: Tensor, valid: Tensor) -> Tensor:
    """Softmax over the last axis restricted to ``valid`` entries; rows with no valid entry give all zeros (an empty
    memory reads nothing). Masked entries are exactly 0 whatever their score (``nan``/``inf`` included)."""
    any_valid = valid.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~valid, float("-inf"))
    scores = torch.where(any_valid, scores, torch.zeros_like(scores))  # no all -inf row: no nan, forward or backward
    p = torch.softmax(scores, dim=-1)
    return torch.where(valid, p, torch.zeros_like(p))


class MemNetCore(Core):
    """End-to-end memory network (Sukhbaatar et al. 2015) with a key-value ring-buffer memory, as a core.

    Args:
        input_size: width of ``x``.
        hidden_size: D, the embedding width (``d`` in the paper) and the output width ``y = u^{K+1}``. Default 128
            (the trainer passes ``hidden_size``).
        num_slots: N, memory slots: the last N steps are readable (the paper: the 50 most recent sentences).
            Default 64.
        num_hops: K, reads per step (the paper: 3), with adjacent weight tying ``A^{k+1} = C^k``.
        temporal_encoding: add the learned ``T_A(a)``, ``T_C(a)`` by slot age ``a`` to keys and values (the paper's
            temporal encoding, "TE"); without it the memory is an unordered bag. Default True.
        init_std: standard deviation of the normal initialisation of the embeddings and temporal tables (the paper:
            0.1). Default ``None``: ``1 / sqrt(input_size)`` for the embeddings (unit-variance embeddings of
            unit-variance inputs) and 0.1 for the tables.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        num_slots: int = 64,
        num_hops: int = 3,
        temporal_encoding: bool = True,
        init_std: float | None = None,
    ) -> None:
        super().__init__(input_size)
        for name, value in (("hidden_size", hidden_size), ("num_slots", num_slots), ("num_hops", num_hops)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(temporal_encoding, bool):
            raise ValueError(f"temporal_encoding must be True or False, got {temporal_encoding!r}")
        if init_std is not None and (
            isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not init_std > 0
            or not math.isfinite(init_std)
        ):
            raise ValueError(f"init_std must be a positive number or None (1 / sqrt(input_size)), got {init_std!r}")
        self.hidden_size, self.num_slots, self.num_hops = hidden_size, num_slots, num_hops
        self.temporal_encoding, self.init_std = temporal_encoding, init_std
        self.output_size = hidden_size
        D, N, K = hidden_size, num_slots, num_hops
        # E^0 = B = A^1, E^k = C^k = A^{k+1}: one Linear for all K + 1 embeddings, no bias (the paper's A x_i)
        self.embed = nn.Linear(input_size, (K + 1) * D, bias=False)
        nn.init.normal_(self.embed.weight, std=init_std if init_std is not None else 1.0 / math.sqrt(input_size))
        if temporal_encoding:
            # T^0 = T_A^1, T^k = T_C^k = T_A^{k+1}; row a = age a (0: the previous step)
            self.temporal = nn.Parameter(torch.randn(K + 1, N, D) * (init_std if init_std is not None else 0.1))
        else:
            self.register_parameter("temporal", None)

    def initial_state(self, batch_size: int, device=None) -> MemNetState:
        """The empty memory: zeros, pointer 0, count 0 (nothing learned, so a reset is exactly a fresh start)."""
        device, dtype = self._device(device), self._param_dtype()
        N, K, D = self.num_slots, self.num_hops, self.hidden_size
        return MemNetState(
            torch.zeros(batch_size, N, K + 1, D, device=device, dtype=dtype),
            torch.zeros(batch_size, device=device, dtype=dtype),
            torch.zeros(batch_size, device=device, dtype=dtype),
        )

    def _embed(self, x: Tensor) -> Tensor:
        """``[..., input_size]`` -> ``E^j x`` for ``j = 0..K``: ``[..., K + 1, D]``."""
        return self.embed(x).unflatten(-1, (self.num_hops + 1, self.hidden_size))

    # ---------------------------------------------------------------- plain step (reads against the paper)
    def step(self, x: Tensor, state: MemNetState) -> tuple[Tensor, MemNetState]:
        N, K, D = self.num_slots, self.num_hops, self.hidden_size
        B = x.shape[0]
        pointer, count = state.pointer, state.count.clamp(0, N)  # [B]
        slots = torch.arange(N, device=x.device, dtype=pointer.dtype)
        age = torch.remainder(pointer[:, None] - 1 - slots[None, :], N)  # a(i): [B, N], 0 = the previous step
        valid = age < count[:, None]  # [B, N]: filled slots
        memory = torch.where(valid[:, :, None, None], state.memory, torch.zeros_like(state.memory))  # empty: 0
        e = self._embed(x)  # E^j x_t: [B, K+1, D]
        u = e[:, 0]  # u^1 = B x_t
        # the temporal terms are taken per age and moved to the slots by a gather of [B, N] (cheaper than gathering
        # the [B, N, D] rows T(a(i))): u^T T_A(a(i)) = (u^T T_A)[a(i)];  sum_i p_i T_C(a(i)) = sum_a p_{slot(a)} T_C(a)
        age_l = age.long()
        slot_of_age = torch.remainder(pointer.long()[:, None] - 1 - slots.long()[None, :], N)  # [B, N]: a -> slot
        for k in range(1, K + 1):
            m = memory[:, :, k - 1]  # m_i = A^k x_i (+ T_A^k(a(i)) below): [B, N, D]
            c = memory[:, :, k]  # c_i = C^k x_i (+ T_C^k(a(i)) below)
            scores = torch.einsum("bd,bnd->bn", u, m)  # u^T A^k x_i
            if self.temporal is not None:
                scores = scores + torch.gather(u @ self.temporal[k - 1].T, 1, age_l)  # + u^T T_A^k(a(i))
            p = masked_softmax(scores / math.sqrt(D), valid)  # p_i = softmax(u^T m_i)
            o = torch.einsum("bn,bnd->bd", p, c)  # o = sum_i p_i c_i
            if self.temporal is not None:
                o = o + torch.gather(p, 1, slot_of_age) @ self.temporal[k]  # + sum_i p_i T_C^k(a(i))
            u = u + o  # u^{k+1} = u^k + o^k
        # write x_t at the pointer (the oldest slot once the memory is full); empty slots stay zero
        write = (slots[None, :] == pointer[:, None])[:, :, None, None]  # [B, N, 1, 1]
        memory = torch.where(write, e[:, None], memory)
        new_state = MemNetState(memory, torch.remainder(pointer + 1, N), (count + 1).clamp(max=N))
        return u, new_state

    # ---------------------------------------------------------------- fused unroll
    def unroll(self, xs: Tensor, state: MemNetState, resets: Tensor | None = None) -> tuple[Tensor, MemNetState]:
        """Time-major unroll equal to the step loop (see the module docstring); ``xs``: ``[T, B, input_size]``,
        ``resets``: ``[T, B]`` bool or None. Runs in chunks of ``max(N, 32)`` steps with no host sync."""
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None and resets.shape != xs.shape[:2]:
            raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
        chunk = max(self.num_slots, 32)
        ys = []
        for t0 in range(0, xs.shape[0], chunk):
            r = None if resets is None else resets[t0 : t0 + chunk]
            y, state = self._unroll_chunk(xs[t0 : t0 + chunk], state, r)
            ys.append(y)
        if not ys:
            return xs.new_zeros(0, xs.shape[1], self.output_size), state
        return torch.cat(ys), state

    def _unroll_chunk(self, xs: Tensor, state: MemNetState, resets: Tensor | None) -> tuple[Tensor, MemNetState]:
        T, B, _ = xs.shape
        N, K, D, dev = self.num_slots, self.num_hops, self.hidden_size, xs.device
        if resets is not None:
            state = self.reset_state(state, resets[0])  # t = 0 through the base class; later resets become masks
        pointer, count = state.pointer, state.count.clamp(0, N)
        n_idx = torch.arange(N, device=dev)
        t_idx = torch.arange(T, device=dev)
        # the ring buffer in time order: position q (0..N-1) has age N-1-q and sits in slot (pointer + q) mod N
        slot_of = torch.remainder(pointer.long()[:, None] + n_idx[None, :], N)  # [B, N]
        ordered = torch.gather(state.memory, 1, slot_of[:, :, None, None].expand(B, N, K + 1, D))
        start0 = (N - count).long()  # [B]: first filled position in [memory ; sequence]
        ordered = torch.where((n_idx[None, :] >= start0[:, None])[:, :, None, None], ordered, torch.zeros_like(ordered))
        cat = torch.cat([ordered, self._embed(xs).transpose(0, 1)], dim=1)  # [B, N+T, K+1, D]
        # start[t, b]: first position of row b's episode at step t (the last reset <= t, else the filled memory)
        start = start0[None, :].expand(T, B)
        last_reset = torch.full((B,), -1, device=dev, dtype=torch.long)
        if resets is not None:
            last = torch.where(resets, t_idx[:, None], torch.full_like(resets, -1, dtype=torch.long))  # [T, B]
            last = torch.cummax(last, dim=0).values
            start = torch.where(last >= 0, N + last, start)
            last_reset = last[-1]
        # step t reads positions t..t+N-1 (the N before it, ages N-1..0): window index k, valid from start[t]
        valid = (t_idx[:, None, None] + n_idx[None, None, :]) >= start[:, :, None]  # [T, B, N]
        valid = valid.transpose(0, 1)  # [B, T, N]
        u = cat[:, N:, 0]  # u^1 = B x_t: [B, T, D]
        if self.temporal is not None:
            t_enc = self.temporal.flip(1)  # window index k has age N-1-k: [K+1, N, D]
        for k in range(1, K + 1):
            m, c = cat[:, :, k - 1], cat[:, :, k]  # A^k x, C^k x: [B, N+T, D]
            scores = _band(u @ m.transpose(1, 2), N)  # u_t^T m at positions t..t+N-1: [B, T, N]
            if self.temporal is not None:
                scores = scores + u @ t_enc[k - 1].transpose(0, 1)  # + u_t^T T_A^k(a)
            p = masked_softmax(scores / math.sqrt(D), valid)  # [B, T, N]
            o = _unband(p, N + T) @ c  # sum_i p_i C^k x_i: [B, T, D]
            if self.temporal is not None:
                o = o + p @ t_enc[k]  # + sum_i p_i T_C^k(a(i))
            u = u + o
        # final ring buffer: the last count_f positions, slot s holds age (pointer_f - 1 - s) mod N
        count_f = (N + T - start[-1]).clamp(max=N)  # [B] long
        pointer_f = torch.where(last_reset >= 0, T - last_reset, pointer.long() + T)
        pointer_f = torch.remainder(pointer_f, N)  # [B]
        age_f = torch.remainder(pointer_f[:, None] - 1 - n_idx[None, :], N)  # [B, N]
        pos = (N + T - 1 - age_f)[:, :, None, None].expand(B, N, K + 1, D)
        memory = torch.gather(cat, 1, pos)
        memory = torch.where((age_f < count_f[:, None])[:, :, None, None], memory, torch.zeros_like(memory))
        dtype = state.count.dtype
        return u.transpose(0, 1), MemNetState(memory, pointer_f.to(dtype), count_f.to(dtype))

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_slots={self.num_slots}, "
            f"num_hops={self.num_hops}, temporal_encoding={self.temporal_encoding}"
        )
