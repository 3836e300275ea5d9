"""Perceiver AR (Hawthorne et al. 2022, "General-purpose, long-context autoregressive modeling with Perceiver AR",
ICML) as a long-context memory core.

The state holds the embeddings of the last ``K`` steps. At step ``t`` the context is those ``K`` embeddings and the
current one (``K + 1`` positions); the ``N`` latents are the last ``N`` positions of the context (the current step
and the ``N - 1`` before it), as in the paper, where the latents are the queries of the last positions of the
input. Each latent cross-attends causally to the context (a latent sees the positions up to its own), then the
latents go through a stack of causal self-attention layers, and the current step's latent is the output. In the
paper's notation, with pre-layer-norm residual blocks (Perceiver's)::

    X     = [E x_{t-K} .. E x_t]                                   context embeddings, positions 0..K   [K+1, D]
    Z^0   = X[K+1-N .. K]                                          latents: the last N positions        [N, D]
    Z^1   = Z^0 + CrossAttn(LN(Z^0), LN(X), causal)                one cross-attention over the context
    Z^1   = Z^1 + MLP(LN(Z^1))
    Z^l   = Z^{l-1} + SelfAttn(LN(Z^{l-1}), causal);  Z^l = Z^l + MLP(LN(Z^l))      l = 2..L+1
    y_t   = LN(Z^{L+1}[N - 1])                                     the current step's latent

    Attn(Q, KV) = softmax(rot(Q W_q) rot(KV W_k)^T / sqrt(d_head)) KV W_v W_o       per head, H heads

``rot`` is the rotary position encoding (Su et al. 2021; Perceiver AR uses rotary encodings) applied to queries and
keys at their positions, so every score depends on the distance between query and key only. Cost per step:
``O(K D^2)`` to project the context and ``O(N K D)`` for the cross-attention, linear in ``K``, plus
``O(L (N^2 D + N D^2))`` for the latent stack, independent of ``K``: the paper's point is that the deep part works
on ``N << K`` latents (tests/test_perceiver_ar.py counts the FLOPs of a step against ``K``).

Memory and episodes. ``PerceiverARState.context`` is a sliding window of the last ``K`` step embeddings ``E x``,
oldest first (slot ``K - 1`` is the previous step), with a per-row count of valid slots, as the gtrxl core keeps
its memory: slots ``i < K - count`` are empty (before the episode start, or never filled). Empty positions are
masked as keys (``-inf`` before the softmax, zeroed before use, so ``nan``/``inf`` there are never read) and a
latent at an empty position is masked as a key of the self-attention and zeroed, so it never reaches the output;
every returned state holds zeros there. ``initial_state`` is the empty window (``count = 0``; nothing learned), so
a reset row (through :meth:`Core.reset_state`, the package's one reset mechanism) is exactly a fresh start. The
first step of an episode attends only to itself. As in gtrxl, the core detaches nothing: within one ``unroll``
gradients flow into the embeddings of every earlier step of the sequence; an incoming state is a constant of the
caller's choosing.

Fast path. :meth:`PerceiverARCore.unroll` processes a chunk of ``T`` steps at once: ``[context (K) ; sequence (T)]``
is normalised and projected to keys and values once (the step path re-projects the ``K`` context embeddings every
step), the queries of all ``T + N - 1`` latent positions in one matmul, and for latent ``i`` the scores of the
``T`` steps are the band of a ``[T, K + T]`` score matrix (``gtrxl._band``: step ``t`` sees positions ``t..t+K``),
masked by the causal limit and the episode start of each step (``torch.cummax`` over reset positions); the latent
stack then runs on all ``T x N`` latents at once. Rotary positions there are absolute in ``[context ; sequence]``;
only differences enter a score, so this is the step loop up to rounding (tested in float64, values and gradients,
resets inside the sequence). Long sequences go in chunks of ``max(K, 32)`` steps. One caveat shared with gtrxl: an
incoming state whose *valid* slots hold ``nan``/``inf``, with a reset of that row inside the chunk, gives ``nan``
after the reset in the fused path (a zero weight times ``nan``) where the step loop restarts clean; a reset at the
chunk's first step is exact in both.

Shapes: ``B`` batch, ``T`` time, ``K`` context length, ``N`` latents, ``L`` latent layers, ``D`` = ``hidden_size``,
``H`` heads, ``d_head = D / H``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Core
from .gtrxl import _band, _unband
from .memnet import masked_softmax


class PerceiverARState(NamedTuple):
    """``context``: ``[B, K, D]``, slot ``K - 1`` the newest: slot ``i`` holds ``E x`` of the step ``K - i`` steps
    ago, zero when empty. ``count``: ``[B]``, the number of valid (newest) slots, ``0..K`` (a float)."""

    context: Tensor
    count: Tensor


def rotary(x: Tensor, pos: Tensor) -> Tensor:
    """Rotary position encoding (Su et al. 2021): ``x`` ``[..., P, d]`` (``d`` even) at positions ``pos`` ``[P]``.

    Channel pairs ``(i, i + d/2)`` rotate by the angle ``pos * 10000^(-2i/d)``, so that
    ``rotary(q, p) . rotary(k, s)`` depends on ``p - s`` only."""
    d = x.shape[-1]
    half = d // 2
    inv_freq = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float64) / half)  # [d/2]
    angles = pos.to(torch.float64)[:, None] * inv_freq[None, :]  # [P, d/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head attention with rotary positions and a boolean mask; queries and keys/values from separate inputs.

    ``forward(q_in [..., Q, D], kv_in [..., P, D], q_pos [Q], k_pos [P], valid [..., Q, P]) -> [..., Q, D]``."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_size = num_heads, hidden_size // num_heads
        self.q = nn.Linear(hidden_size, hidden_size, bias=False)  # W_q
        self.kv = nn.Linear(hidden_size, 2 * hidden_size, bias=False)  # W_k, W_v
        self.o = nn.Linear(hidden_size, hidden_size)  # W_o

    def split(self, x: Tensor) -> Tensor:
        """``[..., P, D]`` -> ``[..., H, P, d_head]``."""
        return x.unflatten(-1, (self.num_heads, self.head_size)).transpose(-2, -3)

    def keys_values(self, kv_in: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(kv_in).chunk(2, dim=-1)
        return rotary(self.split(k), k_pos), self.split(v)

    def queries(self, q_in: Tensor, q_pos: Tensor) -> Tensor:
        return rotary(self.split(self.q(q_in)), q_pos) / math.sqrt(self.head_size)

    def merge(self, att: Tensor) -> Tensor:
        """``[..., H, Q, d_head]`` -> ``W_o`` of the merged heads ``[..., Q, D]``."""
        return self.o(att.transpose(-2, -3).flatten(-2))

    def forward(self, q_in: Tensor, kv_in: Tensor, q_pos: Tensor, k_pos: Tensor, valid: Tensor) -> Tensor:
        q = self.queries(q_in, q_pos)  # [..., H, Q, dh]
        k, v = self.keys_values(kv_in, k_pos)  # [..., H, P, dh]
        a = masked_softmax(q @ k.transpose(-1, -2), valid.unsqueeze(-3))  # [..., H, Q, P]
        return self.merge(a @ v)


class MLP(nn.Module):
    def __init__(self, hidden_size: int, mlp_size: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(hidden_size)
        self.fc1, self.fc2 = nn.Linear(hidden_size, mlp_size), nn.Linear(mlp_size, hidden_size)

    def forward(self, z: Tensor) -> Tensor:
        return z + self.fc2(F.gelu(self.fc1(self.ln(z))))  # Z + MLP(LN(Z))


class LatentLayer(nn.Module):
    """One self-attention layer of the latent stack: ``Z + SelfAttn(LN(Z))``, then ``Z + MLP(LN(Z))``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_size: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads)
        self.mlp = MLP(hidden_size, mlp_size)

    def forward(self, z: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        n = self.ln(z)
        return self.mlp(z + self.attn(n, n, pos, pos, valid))


class PerceiverARCore(Core):
    """Perceiver AR (Hawthorne et al. 2022) as a core: latents cross-attend to a window of past embeddings.

    Args:
        input_size: width of ``x``; embedded to ``hidden_size`` (``E x + b``).
        hidden_size: D, the width of the embeddings, latents and the output ``y``. Default 128 (the trainer passes
            ``hidden_size``).
        context_length: K, past steps kept in the state; each step attends to them and itself. Default 64 (the
            acting step's cost grows linearly with K; the paper's contexts run to tens of thousands of positions).
        num_latents: N, latents: the last N positions of the context, the current step included (the paper: 1024
            latents over up to 65k positions). Default 4; at most ``context_length + 1``.
        num_layers: L, causal self-attention layers on the latents after the cross-attention. Default 2.
        num_heads: H, attention heads; must divide ``hidden_size``, with ``hidden_size / num_heads`` even (rotary
            encoding rotates channel pairs). Default 4.
        mlp_size: width of every MLP (default ``None``: ``4 * hidden_size``, the Transformer's; only the N latents
            go through it).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        context_length: int = 64,
        num_latents: int = 4,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_size: int | None = None,
    ) -> None:
        super().__init__(input_size)
        for name, value in (("hidden_size", hidden_size), ("context_length", context_length),
                            ("num_latents", num_latents), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"num_layers must be an int >= 0 (self-attention layers on the latents), got {num_layers!r}")
        if num_latents > context_length + 1:
            raise ValueError(f"num_latents={num_latents} must be at most context_length + 1 = {context_length + 1} "
                             f"(the latents are the last positions of the context)")
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(f"hidden_size={hidden_size} / num_heads={num_heads} must be an even integer (d_head; "
                             f"rotary encoding rotates channel pairs); choose num_heads dividing {hidden_size // 2}")
        if mlp_size is None:
            mlp_size = 4 * hidden_size
        if isinstance(mlp_size, bool) or not isinstance(mlp_size, int) or mlp_size <= 0:
            raise ValueError(f"mlp_size must be a positive int or None (4 * hidden_size), got {mlp_size!r}")
        self.hidden_size, self.context_length, self.num_latents = hidden_size, context_length, num_latents
        self.num_layers, self.num_heads, self.mlp_size = num_layers, num_heads, mlp_size
        self.output_size = hidden_size
        D = hidden_size
        self.embed = nn.Linear(input_size, D)  # E
        self.ln_q, self.ln_kv = nn.LayerNorm(D), nn.LayerNorm(D)
        self.cross = Attention(D, num_heads)
        self.cross_mlp = MLP(D, mlp_size)
        self.layers = nn.ModuleList(LatentLayer(D, num_heads, mlp_size) for _ in range(num_layers))
        self.ln_out = nn.LayerNorm(D)

    def initial_state(self, batch_size: int, device=None) -> PerceiverARState:
        """The empty window: zeros and ``count = 0`` (nothing learned, so a reset is exactly a fresh start)."""
        device, dtype = self._device(device), self._param_dtype()
        return PerceiverARState(
            torch.zeros(batch_size, self.context_length, self.hidden_size, device=device, dtype=dtype),
            torch.zeros(batch_size, device=device, dtype=dtype),
        )

    def _latent_stack(self, z: Tensor, lat_valid: Tensor) -> Tensor:
        """``Z^1`` ``[..., N, D]`` (after the cross-attention) -> ``LN(Z^{L+1})`` of the last latent ``[..., D]``.
        ``lat_valid`` ``[..., N]``: latents at empty positions are masked as keys and zeroed."""
        N = self.num_latents
        pos = torch.arange(N, device=z.device)
        causal = torch.ones(N, N, dtype=torch.bool, device=z.device).tril()  # latent i sees latents j <= i
        valid = causal & lat_valid.unsqueeze(-2)  # [..., N, N]
        keep = lat_valid.unsqueeze(-1)
        for layer in self.layers:
            z = torch.where(keep, layer(z, pos, valid), torch.zeros_like(z))  # Z^l
        return self.ln_out(z[..., -1, :])  # y_t

    # ---------------------------------------------------------------- plain step (reads against the paper)
    def step(self, x: Tensor, state: PerceiverARState) -> tuple[Tensor, PerceiverARState]:
        K, N = self.context_length, self.num_latents
        count = state.count.clamp(0, K)  # [B]
        pos = torch.arange(K + 1, device=x.device)
        valid = pos[None, :] >= (K - count)[:, None]  # [B, K+1]: empty slots are before K - count
        window = torch.cat([state.context, self.embed(x)[:, None]], dim=1)  # X = [E x_{t-K} .. E x_t]: [B, K+1, D]
        window = torch.where(valid[..., None], window, torch.zeros_like(window))  # empty slots never read
        z0 = window[:, K + 1 - N :]  # Z^0: the last N positions [B, N, D]
        lat_pos = pos[K + 1 - N :]
        lat_valid = valid[:, K + 1 - N :]  # [B, N]
        causal = pos[None, :] <= lat_pos[:, None]  # [N, K+1]: latent i sees positions <= its own
        cross_valid = causal[None] & valid[:, None, :]  # [B, N, K+1]
        z = z0 + self.cross(self.ln_q(z0), self.ln_kv(window), lat_pos, pos, cross_valid)  # Z^1
        z = torch.where(lat_valid[..., None], self.cross_mlp(z), torch.zeros_like(z))
        y = self._latent_stack(z, lat_valid)
        # the window slides: the oldest drops out (empty slots are already zero)
        return y, PerceiverARState(window[:, 1:], (count + 1).clamp(max=K))

    # ---------------------------------------------------------------- fused unroll
    def unroll(self, xs: Tensor, state: PerceiverARState, resets: Tensor | None = None
               ) -> tuple[Tensor, PerceiverARState]:
        """Time-major unroll equal to the step loop (see the module docstring); ``xs``: ``[T, B, input_size]``,
        ``resets``: ``[T, B]`` bool or None. Runs in chunks of ``max(K, 32)`` steps with no host sync."""
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None and resets.shape != xs.shape[:2]:
            raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
        chunk = max(self.context_length, 32)
        ys = []
        for t0 in range(0, xs.shape[0], chunk):
            r = None if resets is None else resets[t0 : t0 + chunk]
            y, state = self._unroll_chunk(xs[t0 : t0 + chunk], state, r)
            ys.append(y)
        if not ys:
            return xs.new_zeros(0, xs.shape[1], self.output_size), state
        return torch.cat(ys), state

    def _unroll_chunk(self, xs: Tensor, state: PerceiverARState, resets: Tensor | None
                      ) -> tuple[Tensor, PerceiverARState]:
        T, B, _ = xs.shape
        K, N, dev = self.context_length, self.num_latents, xs.device
        if resets is not None:
            state = self.reset_state(state, resets[0])  # t = 0 through the base class; later resets become masks
        count = state.count.clamp(0, K)
        t_idx = torch.arange(T, device=dev)
        # start[t, b]: first position of row b's episode at step t in [context (0..K-1) ; sequence (K..K+T-1)]
        start = (K - count).long()[None, :].expand(T, B)
        if resets is not None and T > 1:  # (a reset at t = 0 gives K, as count = 0 does)
            last = torch.where(resets, K + t_idx[:, None], torch.full_like(resets, -1, dtype=torch.long))
            start = torch.maximum(start, torch.cummax(last, dim=0).values)  # [T, B]
        start = start.transpose(0, 1)  # [B, T]
        pos = torch.arange(K + T, device=dev)
        ctx_valid = (pos[None, :K] >= start[:, :1])[..., None]  # [B, K, 1]: the incoming window's valid slots
        ctx = torch.where(ctx_valid, state.context, torch.zeros_like(state.context))
        cat = torch.cat([ctx, self.embed(xs).transpose(0, 1)], dim=1)  # [B, K+T, D]
        # latent i of step t sits at position K+1-N+t+i; all latent positions: K+1-N .. K+T-1
        lat_all = cat[:, K + 1 - N :]  # [B, T+N-1, D]
        q = self.cross.queries(self.ln_q(lat_all), pos[K + 1 - N :])  # [B, H, T+N-1, dh]
        k, v = self.cross.keys_values(self.ln_kv(cat), pos)  # [B, H, K+T, dh]
        scores = q @ k.transpose(-1, -2)  # [B, H, T+N-1, K+T]
        k_idx = torch.arange(K + 1, device=dev)
        in_episode = (t_idx[None, :, None] + k_idx[None, None, :]) >= start[:, :, None]  # [B, T, K+1]
        outs = []
        for i in range(N):  # step t's window is positions t..t+K; latent i sees window index k <= K+1-N+i
            band = _band(scores[:, :, i : i + T], K + 1)  # [B, H, T, K+1]: score of latent i of step t, slot k
            valid = in_episode & (k_idx <= K + 1 - N + i)  # [B, T, K+1]
            a = masked_softmax(band, valid[:, None])
            outs.append(_unband(a, K + T) @ v)  # [B, H, T, dh]
        att = self.cross.merge(torch.stack(outs, dim=-2).transpose(1, 2))  # [B, T, H, N, dh] -> [B, T, N, D]
        z0 = lat_all.unfold(1, N, 1).transpose(-1, -2)  # Z^0 of every step: [B, T, N, D]
        lat_valid = (K + 1 - N + t_idx[None, :, None] + torch.arange(N, device=dev)) >= start[:, :, None]  # [B,T,N]
        z = torch.where(lat_valid[..., None], self.cross_mlp(z0 + att), torch.zeros_like(z0))  # Z^1
        y = self._latent_stack(z, lat_valid)  # [B, T, D]
        final_count = (K + T - start[:, -1]).clamp(max=K).to(count.dtype)  # [B]
        final_keep = (k_idx[None, :K] >= (K - final_count)[:, None])[..., None]  # [B, K, 1]
        new_ctx = cat[:, T:]
        return y.transpose(0, 1), PerceiverARState(torch.where(final_keep, new_ctx, torch.zeros_like(new_ctx)),
                                                   final_count)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, context_length={self.context_length}, "
            f"num_latents={self.num_latents}, num_layers={self.num_layers}, num_heads={self.num_heads}, "
            f"mlp_size={self.mlp_size}"
        )
