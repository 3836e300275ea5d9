"""Gated Transformer-XL (Parisotto et al. 2020, "Stabilizing Transformers for Reinforcement Learning", ICML) as a core.

One step, layer ``l = 1..L``, in the paper's notation (``E^(0)`` the embedded input, ``M^(l-1)`` the memory of
the last ``M`` inputs of layer ``l``)::

    attention   Ybar^(l) = RelativeMultiHeadAttention(LayerNorm([StopGrad(M^(l-1)), E^(l-1)]))
                Y^(l)    = g_MHA^(l)(E^(l-1), ReLU(Ybar^(l)))
    MLP         Ebar^(l) = f^(l)(LayerNorm(Y^(l)))
                E^(l)    = g_MLP^(l)(Y^(l), ReLU(Ebar^(l)))
    gate        g(x, y): r = sigma(W_r y + U_r x);  z = sigma(W_z y + U_z x - b_g)
                         h = tanh(W_g y + U_g (r o x));  g = (1 - z) o x + z o h
    output      y_t = E^(L)

Layer norm sits at the input of each sub-block (the "identity map reordering") and the GRU-type gate replaces the
residual connection. ``b_g`` is a learned ``[D]`` bias initialised to ``gate_bias`` (paper: 2), so ``z`` starts
near ``sigma(-2) = 0.12`` and every block starts near the identity: the core first behaves like a feed-forward
embedding of the current input and learns to use its memory.

Relative positions: Transformer-XL's (Dai et al. 2019, Sec. 3.3). The score of query ``i`` on key ``j`` is::

    A_ij = (q_i + u)^T k_j + (q_i + v)^T W_R R_{i-j}        (then / sqrt(d_head), masked softmax over j)

with ``R`` the sinusoid table of distances ``0..M`` and ``u``, ``v`` learned ``[H, d_head]`` biases per layer.

Memory and episodes. The memory of layer ``l`` is a sliding window of its last ``M`` inputs ``E^(l-1)`` kept in
the state, oldest first (slot ``M - 1`` is the previous step), with a per-row count of valid slots: slots
``i < M - count`` are empty (before the episode start, or never filled) and attention masks them; they are held
at zero so the state has one canonical form. ``initial_state`` is the empty memory (``count = 0``), so a reset
row (through :meth:`Core.reset_state`, the package's one reset mechanism) is exactly a fresh start. Each query
attends to its ``M`` memory slots and itself, ``M + 1`` keys at distances ``M .. 0``. A shifting window rather
than a ring buffer with a write pointer: the functional state is copied each step either way, and keeping slots
in time order makes slot ``k`` of the window distance ``M - k`` for every row, so the relative positions are
shared by the batch and need no per-row gather.

Stop-gradient. Transformer-XL stops gradients into memory from *earlier segments*. Here a segment is one
``unroll`` (a PPO training sequence): the update re-runs each sequence from a state stored in the rollout, so
memory from before the sequence is a constant there, which is the paper's ``StopGrad(M)``. The core itself
detaches nothing: inside an unroll gradients flow through the memory of earlier steps of the same sequence, in
the step loop and in the fused path alike (they agree on values and gradients), as they flow within a
Transformer-XL segment. A caller that wants the memory of an incoming state cut off detaches the state.

Fast path. :meth:`GTrXLCore.unroll` processes a sequence of ``T`` steps as Transformer-XL processes a segment:
per layer one attention of the ``T`` queries over ``[memory (M) ; sequence (T)]``, with the relative scores taken
from the band of distances ``0..M`` and a mask built from the resets (``torch.cummax`` over reset positions: the
episode of step ``t`` starts at the last reset ``<= t``, or ``count`` slots back in the incoming memory). That is
the step loop exactly (each query sees the same ``M + 1`` keys), tested equal with resets inside the sequence
(float64, values and gradients). Long sequences go in chunks of ``max(M, 32)`` steps so the score matrices stay
``[chunk, M + chunk]``. ``GTrXLCore.step`` is the plain one-step reading of the equations above.

Shapes: ``B`` batch, ``T`` time, ``L`` layers, ``M`` memory length, ``D`` = ``hidden_size`` (d_model),
``H`` heads, ``d_head = D / H``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Core


class GTrXLState(NamedTuple):
    """``memory``: ``[B, L, M, D]``, slot ``M - 1`` the newest; slot ``i`` of layer ``l`` holds the input of layer
    ``l`` (``E^(l)`` in 0-based layers, the embedded input for ``l = 0``) ``M - i`` steps ago, zero when empty.
    ``count``: ``[B]``, the number of valid (newest) slots, ``0..M`` (a float: every state leaf is floating)."""

    memory: Tensor
    count: Tensor


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """``R``: ``[num_positions, dim]``, row ``d`` = ``[sin(d w_0..), cos(d w_0..)]`` with ``w_i = 10000^(-2i/dim)``
    (Vaswani et al. 2017; Transformer-XL's relative encoding uses it for distances ``d``)."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # [ceil(dim / 2)]
    d = torch.arange(num_positions, dtype=torch.float64)
    angles = d[:, None] * inv_freq[None, :]  # [P, ceil(dim / 2)]
    return torch.cat([angles.sin(), angles.cos()], dim=1)[:, :dim].float()


class GRUGate(nn.Module):
    """The GRU-type gating layer ``g(x, y)`` of GTrXL (Parisotto et al. 2020, eq. (6)-(9)); ``x`` the stream
    (skip input), ``y`` the sub-block output; ``b_g`` learned, initialised to ``gate_bias``."""

    def __init__(self, size: int, gate_bias: float) -> None:
        super().__init__()
        self.w = nn.Linear(size, 3 * size, bias=False)  # W_r, W_z, W_g (applied to y)
        self.u = nn.Linear(size, 2 * size, bias=False)  # U_r, U_z (applied to x)
        self.u_g = nn.Linear(size, size, bias=False)  # U_g (applied to r o x)
        self.b_g = nn.Parameter(torch.full((size,), float(gate_bias)))

    def gates(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(r, z, h)`` for ``x``, ``y``: ``[..., D]``."""
        w_r, w_z, w_g = self.w(y).chunk(3, dim=-1)
        u_r, u_z = self.u(x).chunk(2, dim=-1)
        r = torch.sigmoid(w_r + u_r)  # r = sigma(W_r y + U_r x)
        z = torch.sigmoid(w_z + u_z - self.b_g)  # z = sigma(W_z y + U_z x - b_g)
        h = torch.tanh(w_g + self.u_g(r * x))  # h = tanh(W_g y + U_g (r o x))
        return r, z, h

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _, z, h = self.gates(x, y)
        return x + z * (h - x)  # g = (1 - z) o x + z o h


class GTrXLBlock(nn.Module):
    """One GTrXL layer: gated relative multi-head attention over ``[memory ; current]``, then a gated MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_size: int, gate_bias: float) -> None:
        super().__init__()
        D, H = hidden_size, num_heads
        self.num_heads, self.head_size = H, D // H
        self.ln_attn = nn.LayerNorm(D)
        self.q = nn.Linear(D, D, bias=False)  # W_q
        self.kv = nn.Linear(D, 2 * D, bias=False)  # W_{k,E}, W_v
        self.r = nn.Linear(D, D, bias=False)  # W_{k,R}: projects the sinusoid table R
        self.u = nn.Parameter(torch.zeros(H, self.head_size))  # u: content bias
        self.v = nn.Parameter(torch.zeros(H, self.head_size))  # v: position bias
        self.o = nn.Linear(D, D, bias=False)  # W_o: merges the heads
        self.gate_attn = GRUGate(D, gate_bias)
        self.ln_mlp = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, mlp_size), nn.ReLU(), nn.Linear(mlp_size, D))  # f^(l)
        self.gate_mlp = GRUGate(D, gate_bias)

    def rel_keys(self, table: Tensor) -> Tensor:
        """``W_R R`` per head: ``table`` ``[P, D]`` (row ``k`` = distance ``M - k``) -> ``[H, P, d_head]``."""
        return self.r(table).view(table.shape[0], self.num_heads, self.head_size).transpose(0, 1)

    def mlp_part(self, y: Tensor) -> Tensor:
        """``E^(l) = g_MLP(Y, ReLU(f(LayerNorm(Y))))`` row-wise on ``[..., D]``."""
        return self.gate_mlp(y, F.relu(self.mlp(self.ln_mlp(y))))

    # ---------------------------------------------------------------- plain step (reads against the paper)
    def step(self, e: Tensor, window: Tensor, valid: Tensor, table: Tensor) -> Tensor:
        """``e``: ``[B, D]`` the layer input ``E^(l-1)``; ``window``: ``[B, M + 1, D]`` = ``[M^(l-1) ; E^(l-1)]``
        with empty slots zeroed; ``valid``: ``[B, M + 1]`` bool; ``table``: ``[M + 1, D]``. Returns ``E^(l)``."""
        B, K, D = window.shape
        H, dh = self.num_heads, self.head_size
        n = self.ln_attn(window)  # LayerNorm([M ; E]): [B, M+1, D]
        q = self.q(n[:, -1]).view(B, H, dh)  # the query of the current step
        k, v = self.kv(n).view(B, K, 2, H, dh).unbind(2)  # [B, M+1, H, dh] each
        p = self.rel_keys(table)  # W_R R_{i-j}: [H, M+1, dh]
        scores = torch.einsum("bhd,bkhd->bhk", q + self.u, k)  # (q + u)^T k_j
        scores = scores + torch.einsum("bhd,hkd->bhk", q + self.v, p)  # (q + v)^T W_R R_{i-j}
        scores = (scores / math.sqrt(dh)).masked_fill(~valid[:, None, :], float("-inf"))
        a = torch.softmax(scores, dim=-1)  # [B, H, M+1]
        att = torch.einsum("bhk,bkhd->bhd", a, v).reshape(B, D)
        y = self.gate_attn(e, F.relu(self.o(att)))  # Y = g_MHA(E, ReLU(Ybar))
        return self.mlp_part(y)

    # ---------------------------------------------------------------- fused: T steps at once
    def unroll(self, es: Tensor, memory: Tensor, valid: Tensor, table: Tensor) -> Tensor:
        """``es``: ``[B, T, D]`` the layer's inputs for ``T`` steps; ``memory``: ``[B, M, D]`` (empty slots
        zeroed); ``valid``: ``[B, T, M + 1]`` bool, window slot ``k`` of step ``t`` (= position ``t + k`` of
        ``[memory ; es]``) is in ``t``'s episode. Returns ``[B, T, D]``, equal to :meth:`step` for each ``t``."""
        B, T, D = es.shape
        M = memory.shape[1]
        H, dh = self.num_heads, self.head_size
        cat = torch.cat([memory, es], dim=1)  # [B, M+T, D]
        n = self.ln_attn(cat)
        q = self.q(n[:, M:]).view(B, T, H, dh).transpose(1, 2)  # [B, H, T, dh]
        k, v = self.kv(n).view(B, M + T, 2, H, dh).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, M+T, dh] each
        p = self.rel_keys(table)  # [H, M+1, dh]
        content = (q + self.u[:, None]) @ k.transpose(-1, -2)  # [B, H, T, M+T]
        scores = _band(content, M + 1) + (q + self.v[:, None]) @ p.transpose(-1, -2)  # [B, H, T, M+1]
        scores = (scores / math.sqrt(dh)).masked_fill(~valid[:, None], float("-inf"))
        a = torch.softmax(scores, dim=-1)  # [B, H, T, M+1]
        att = (_unband(a, M + T) @ v).transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        y = self.gate_attn(es, F.relu(self.o(att)))
        return self.mlp_part(y)


def _band(full: Tensor, K: int) -> Tensor:
    """``[..., T, N]`` -> ``[..., T, K]`` with ``out[t, k] = full[t, t + k]`` (needs ``N >= T - 1 + K``).

    Transformer-XL's relative shift, with pads and views only: flat index ``t N + t + k`` is row ``t`` of a
    ``[T, N + 1]`` view of the flat ``[T N]`` tensor padded by ``T``."""
    *lead, T, N = full.shape
    flat = F.pad(full.reshape(*lead, T * N), (0, T))  # [..., T (N + 1)]
    return flat.view(*lead, T, N + 1)[..., :K]


def _unband(band: Tensor, N: int) -> Tensor:
    """Inverse of :func:`_band`: ``[..., T, K]`` -> ``[..., T, N]`` with ``full[t, t + k] = band[t, k]`` and zeros
    elsewhere (needs ``N >= T - 1 + K``)."""
    *lead, T, K = band.shape
    flat = F.pad(band, (0, N + 1 - K)).reshape(*lead, T * (N + 1))  # rows of width N + 1
    return flat[..., : T * N].view(*lead, T, N)


class GTrXLCore(Core):
    """Gated Transformer-XL core (Parisotto et al. 2020) with a sliding-window memory in the state.

    Args:
        input_size: width of ``x``; projected to ``hidden_size`` (``E^(0) = W_e x + b_e``).
        hidden_size: D (d_model), the width of every layer and of the output ``y = E^(L)``. Default 128, like the
            other cores (the trainer passes ``hidden_size``).
        num_layers: L, GTrXL blocks. Default 2: each layer's memory holds the previous layer's outputs, so two
            layers already reach up to ``2 M`` steps back; more layers cost linearly on a CPU.
        num_heads: H, attention heads; must divide ``hidden_size`` (default 4, ``d_head = 32``).
        memory_length: M, past steps per layer each step attends to (plus itself). Default 64: longer than the
            project's memory tasks' horizons at their usual sizes (T-maze corridors up to 50, copy tasks up to 20
            bits, PPO sequences of 128 with two layers reaching ``2 M = 128``) while a step's attention over
            ``M + 1`` keys stays a few times an LSTM step on a CPU; raise it for longer recall.
        mlp_size: width of the position-wise MLP ``f^(l)`` (default ``None``: ``2 * hidden_size``; half the usual
            ``4 D`` because the two gates per block already add ``12 D^2`` weights).
        gate_bias: initial ``b_g`` of every gate (paper: 2). Larger starts the blocks closer to the identity.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        memory_length: int = 64,
        mlp_size: int | None = None,
        gate_bias: float = 2.0,
    ) -> None:
        super().__init__(input_size)
        for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers), ("num_heads", num_heads),
                            ("memory_length", memory_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size={hidden_size} must be divisible by num_heads={num_heads} (d_head = hidden_size / "
                f"num_heads); valid num_heads divide {hidden_size}"
            )
        if mlp_size is None:
            mlp_size = 2 * hidden_size
        if isinstance(mlp_size, bool) or not isinstance(mlp_size, int) or mlp_size <= 0:
            raise ValueError(f"mlp_size must be a positive int or None (2 * hidden_size), got {mlp_size!r}")
        if not isinstance(gate_bias, (int, float)) or isinstance(gate_bias, bool) or not math.isfinite(gate_bias):
            raise ValueError(f"gate_bias must be a finite number (paper: 2), got {gate_bias!r}")
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.memory_length, self.mlp_size, self.gate_bias = memory_length, mlp_size, float(gate_bias)
        self.output_size = hidden_size
        self.embed = nn.Linear(input_size, hidden_size)  # E^(0)
        self.layers = nn.ModuleList(GTrXLBlock(hidden_size, num_heads, mlp_size, gate_bias) for _ in range(num_layers))
        # R: row k of a window is distance M - k from the query (slot M is the current step)
        self.register_buffer("pos_table", sinusoid_table(memory_length + 1, hidden_size).flip(0), persistent=False)

    def initial_state(self, batch_size: int, device=None) -> GTrXLState:
        """The empty memory: zeros and ``count = 0`` (nothing learned, so a reset is exactly a fresh start)."""
        device, dtype = self._device(device), self._param_dtype()
        L, M, D = self.num_layers, self.memory_length, self.hidden_size
        return GTrXLState(
            torch.zeros(batch_size, L, M, D, device=device, dtype=dtype),
            torch.zeros(batch_size, device=device, dtype=dtype),
        )

    def _table(self, ref: Tensor) -> Tensor:
        return self.pos_table.to(device=ref.device, dtype=ref.dtype)

    # ---------------------------------------------------------------- plain step
    def step(self, x: Tensor, state: GTrXLState) -> tuple[Tensor, GTrXLState]:
        M = self.memory_length
        count = state.count.clamp(0, M)  # [B]
        slots = torch.arange(M + 1, device=x.device, dtype=count.dtype)
        valid = slots[None, :] >= (M - count)[:, None]  # [B, M+1]: empty slots are before M - count
        table = self._table(x)
        e = self.embed(x)  # E^(0): [B, D]
        windows = []
        for l, block in enumerate(self.layers):
            window = torch.cat([state.memory[:, l], e[:, None]], dim=1)  # [M^(l-1) ; E^(l-1)]: [B, M+1, D]
            window = torch.where(valid[..., None], window, torch.zeros_like(window))  # empty slots never read
            windows.append(window[:, 1:])  # the oldest slot drops out
            e = block.step(e, window, valid, table)  # E^(l)
        # the shifted windows: slot i valid iff i >= M - min(count + 1, M); empty slots are already zero
        return e, GTrXLState(torch.stack(windows, dim=1), (count + 1).clamp(max=M))

    # ---------------------------------------------------------------- fused unroll
    def unroll(self, xs: Tensor, state: GTrXLState, resets: Tensor | None = None) -> tuple[Tensor, GTrXLState]:
        """Time-major unroll equal to the step loop (see the module docstring); ``xs``: ``[T, B, input_size]``,
        ``resets``: ``[T, B]`` bool or None. Runs in chunks of ``max(M, 32)`` steps with no host sync."""
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None and resets.shape != xs.shape[:2]:
            raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
        chunk = max(self.memory_length, 32)
        ys = []
        for t0 in range(0, xs.shape[0], chunk):
            r = None if resets is None else resets[t0 : t0 + chunk]
            y, state = self._unroll_chunk(xs[t0 : t0 + chunk], state, r)
            ys.append(y)
        if not ys:
            return xs.new_zeros(0, xs.shape[1], self.output_size), state
        return torch.cat(ys), state

    def _unroll_chunk(self, xs: Tensor, state: GTrXLState, resets: Tensor | None) -> tuple[Tensor, GTrXLState]:
        T, B, _ = xs.shape
        M, dev = self.memory_length, xs.device
        if resets is not None:
            state = self.reset_state(state, resets[0])  # t = 0 through the base class; later resets become masks
        count = state.count.clamp(0, M)
        # start[t, b]: first position of row b's episode at step t in [memory (0..M-1) ; sequence (M..M+T-1)]
        t_idx = torch.arange(T, device=dev)
        start = (M - count).long()[None, :].expand(T, B)  # no reset inside: count slots back in the memory
        if resets is not None and T > 1:  # (a reset at t = 0 gives M, as count = 0 does)
            last = torch.where(resets, M + t_idx[:, None], torch.full_like(resets, -1, dtype=torch.long))
            start = torch.maximum(start, torch.cummax(last, dim=0).values)  # [T, B]
        k_idx = torch.arange(M + 1, device=dev)
        valid = (t_idx[:, None, None] + k_idx[None, None, :]) >= start[:, :, None]  # [T, B, M+1]
        valid = valid.transpose(0, 1)  # [B, T, M+1]
        mem_valid = (k_idx[None, :M] >= start[0][:, None])[..., None]  # [B, M, 1]; fixed for the chunk
        final_count = (M + T - start[-1]).clamp(max=M).to(count.dtype)  # [B]
        final_keep = (k_idx[None, :M] >= (M - final_count)[:, None])[..., None]  # [B, M, 1]
        table = self._table(xs)
        e = self.embed(xs).transpose(0, 1)  # E^(0): [B, T, D]
        memories = []
        for l, block in enumerate(self.layers):
            mem = state.memory[:, l]
            mem = torch.where(mem_valid, mem, torch.zeros_like(mem))  # empty slots never read
            cat = torch.cat([mem, e], dim=1)[:, T:]  # the last M inputs of this layer: next memory
            memories.append(torch.where(final_keep, cat, torch.zeros_like(cat)))
            e = block.unroll(e, mem, valid, table)
        return e.transpose(0, 1), GTrXLState(torch.stack(memories, dim=1), final_count)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
            f"num_heads={self.num_heads}, memory_length={self.memory_length}, mlp_size={self.mlp_size}, "
            f"gate_bias={self.gate_bias}"
        )
