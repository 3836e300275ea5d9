"""Differentiable Neural Computer (Graves et al. 2016, "Hybrid computing using a neural network with dynamic
external memory", Nature 538:471), with the Csordas and Schmidhuber 2019 fixes as options.

One step, in the order of the paper's Methods section (notation of the paper; ``t-1`` is the incoming state)::

    controller  h_t = LSTM([x_t; r_{t-1}^1..r_{t-1}^R], h_{t-1})          (previous reads fed back)
    interface   xi_t = W_xi h_t  -> k^r, beta^r, k^w, beta^w, e, v, f, g^a, g^w, pi   (+ masks, sharpness)
    usage       psi_t = prod_i (1 - f^i w^{r,i}_{t-1})
                u_t   = (u_{t-1} + w^w_{t-1} - u_{t-1} o w^w_{t-1}) o psi_t      (w^w_{t-1} a constant)
    allocation  a_t[phi_j] = (1 - u_t[phi_j]) prod_{i<j} u_t[phi_i],  phi = usage sorted ascending
    write       c^w_t = C(M_{t-1}, k^w, beta^w);  w^w_t = g^w (g^a a_t + (1 - g^a) c^w_t)
                M_t = M_{t-1} o (E - w^w_t e^T) + w^w_t v^T
    links       L_t[i,j] = (1 - w^w_t[i] - w^w_t[j]) L_{t-1}[i,j] + w^w_t[i] p_{t-1}[j],  L_t[i,i] = 0
                p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t
    read        f^i_t = L_t w^{r,i}_{t-1};  b^i_t = L_t^T w^{r,i}_{t-1};  c^{r,i}_t = C(M_t, k^{r,i}, beta^{r,i})
                w^{r,i}_t = pi^i[1] b^i_t + pi^i[2] c^{r,i}_t + pi^i[3] f^i_t
                r^i_t = M_t^T w^{r,i}_t
    output      y_t = [h_t; r_t^1..r_t^R]   (or W_y [h_t; r_t] with ``output_size``)

Options from Csordas and Schmidhuber 2019 ("Improving Differentiable Neural Computers Through Memory Masking,
De-allocation, and Link Distribution Sharpness Control", ICLR), all off by default (= the paper):

* ``erase_freed``: de-allocation erases content: ``M_t = M_{t-1} o psi_t 1^T o (E - w^w e^T) + w^w v^T``, so a
  freed cell is zeroed and content look-up no longer finds stale data.
* ``masked_content``: every head emits a mask ``m`` in [0, 1]^W (sigmoid) and content look-up compares
  ``k o m`` with ``M(i) o m`` (key/value separation).
* ``link_sharpness``: forward and backward weightings are sharpened per head before mixing:
  ``S(d, s)_i = d_i^s / sum_j d_j^s`` with ``s = oneplus(.)`` in [1, inf) (a separate ``s`` for f and b).

Shapes: ``B`` batch, ``N`` slots, ``W`` word width, ``R`` read heads, ``H`` controller units. One write head.

Speed. On a CPU the step is bound by passes through memory over the ``[B, N, N]`` link matrix and the
``[B, N, W]`` memory, by the controller's matmuls, and by per-op overhead. With ``fused=True`` (default; without
the masked-content and link-sharpness options) everything after the interface Linear is one autograd node
(:class:`_FusedAccess`) whose hand-written backward keeps no temporaries but small ``[B, R, N]`` tensors and
touches the big tensors a few times. With the LSTM controller, :meth:`DNCCore.unroll` goes further: the whole
unroll is one autograd node (:class:`_FusedUnroll`) that computes the controller's input projection for all steps
in one matmul, runs the access step's forward/backward functions per step, carries the memory and link gradients
back through time in place, and computes the weight gradients once for all steps. ``compile=True`` also runs
the per-step functions through ``torch.compile`` (opt-in: compiling takes a while, see :class:`DNCCore`).
The plain functions below (:func:`update_link`, :func:`write_weighting`, :func:`read_weighting`, ...) are the
readable reference; ``fused=False`` runs them under autograd, and tests/test_dnc.py checks that the paths agree
(values and gradients, float64, fused unroll against the step loop with resets) and gradchecks the fused functions.

Measured (forward+backward ms per step, B=32, input 8, H=128, 64x32 memory, 4 read heads, T=20, 1 thread, one
process, interleaved medians; loaded 2-core AMD EPYC VM, torch 2.13): this core 2.55 (3.07 before the fused
unroll), with ``compile=True`` 1.83; the PyPI ``dnc`` package (ixaxaar) 6.44 with its default 2 hidden layers
and 5.50 with one, i.e. 2.5x / 2.2x faster eager and 3.5x / 3.0x with ``compile=True``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .addressing import EPS, allocation_weighting, content_weighting, oneplus, sharpen
from .base import Core, LearnedInit, check_kernel, tree_leaves, use_triton

_LOW_PRECISION = (torch.float16, torch.bfloat16)
TRITON_MAX_SLOTS = 128  # memory_cores.dnc_triton.MAX_SLOTS (not imported here: that module imports Triton)


class DNCControllerState(NamedTuple):
    """LSTM controller state: ``h``: ``[B, H]`` output, ``c``: ``[B, H]`` cell."""

    h: Tensor
    c: Tensor


class NoControllerState(NamedTuple):
    """The feed-forward controller keeps no state."""


class DNCAccessState(NamedTuple):
    """Memory access state (all batch first).

    memory:        ``[B, N, W]`` M_t.
    usage:         ``[B, N]`` u_t in [0, 1].
    link:          ``[B, N, N]`` L_t temporal link matrix, ``L[i, j]``: degree to which slot i was written right
                   after slot j; zero diagonal, entries in [0, 1].
    precedence:    ``[B, N]`` p_t, degree to which each slot was the last written; sums to at most one.
    read_weights:  ``[B, R, N]`` w^r_t.
    write_weights: ``[B, 1, N]`` w^w_t.
    read_vectors:  ``[B, R, W]`` r_t (fed to the controller at the next step).
    """

    memory: Tensor
    usage: Tensor
    link: Tensor
    precedence: Tensor
    read_weights: Tensor
    write_weights: Tensor
    read_vectors: Tensor


class DNCState(NamedTuple):
    """``controller``: :class:`DNCControllerState` (LSTM) or :class:`NoControllerState` (feed-forward);
    ``access``: :class:`DNCAccessState`."""

    controller: DNCControllerState | NoControllerState
    access: DNCAccessState


class DNCInterface(NamedTuple):
    """The controller's interface vector xi_t split and squashed (paper, Methods "Interface parameters").

    read_keys:        ``[B, R, W]`` k^{r,i}.
    read_strengths:   ``[B, R]`` beta^{r,i} in [1, inf) (oneplus).
    write_key:        ``[B, 1, W]`` k^w.
    write_strength:   ``[B, 1]`` beta^w in [1, inf).
    erase:            ``[B, 1, W]`` e in [0, 1].
    write_vector:     ``[B, 1, W]`` v.
    free_gates:       ``[B, R]`` f^i in [0, 1].
    allocation_gate:  ``[B, 1]`` g^a in [0, 1].
    write_gate:       ``[B, 1]`` g^w in [0, 1].
    read_modes:       ``[B, R, 3]`` pi^i, softmax over (backward, content, forward).
    read_masks:       ``[B, R, W]`` in [0, 1] or None (masked content addressing).
    write_mask:       ``[B, 1, W]`` in [0, 1] or None.
    forward_sharpness:  ``[B, R]`` in [1, inf) or None (link sharpness).
    backward_sharpness: ``[B, R]`` in [1, inf) or None.
    """

    read_keys: Tensor
    read_strengths: Tensor
    write_key: Tensor
    write_strength: Tensor
    erase: Tensor
    write_vector: Tensor
    free_gates: Tensor
    allocation_gate: Tensor
    write_gate: Tensor
    read_modes: Tensor
    read_masks: Tensor | None = None
    write_mask: Tensor | None = None
    forward_sharpness: Tensor | None = None
    backward_sharpness: Tensor | None = None


# ---------------------------------------------------------------------------------------------- DNC addressing
# Pure functions, batched over B and heads, used by DNCCore and tested one by one in tests/test_dnc.py.


def retention(free_gates: Tensor, prev_read_weights: Tensor) -> Tensor:
    """Memory retention vector psi_t = prod_i (1 - f^i_t w^{r,i}_{t-1}).

    Args:
        free_gates: ``[B, R]`` f^i in [0, 1].
        prev_read_weights: ``[B, R, N]`` w^{r,i}_{t-1}.
    Returns:
        ``[B, N]`` psi_t in [0, 1].
    """
    return torch.prod(1.0 - free_gates.unsqueeze(-1) * prev_read_weights, dim=1)


def update_usage(prev_usage: Tensor, prev_write_weights: Tensor, psi: Tensor) -> Tensor:
    """u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} o w^w_{t-1}) o psi_t.

    The previous write weights are treated as constants (no gradient through them), as in the paper's reference
    implementation.

    Args:
        prev_usage: ``[B, N]`` u_{t-1}; prev_write_weights: ``[B, 1, N]`` w^w_{t-1}; psi: ``[B, N]``.
    Returns:
        ``[B, N]`` u_t in [0, 1].
    """
    w = prev_write_weights.detach().squeeze(1)  # [B, N]
    return (prev_usage + w - prev_usage * w) * psi


def write_weighting(
    memory: Tensor,
    usage: Tensor,
    write_key: Tensor,
    write_strength: Tensor,
    allocation_gate: Tensor,
    write_gate: Tensor,
    write_mask: Tensor | None = None,
    fused: bool = False,
) -> Tensor:
    """w^w_t = g^w (g^a a_t + (1 - g^a) c^w_t), c^w_t = C(M_{t-1}, k^w, beta^w), a_t = allocation(u_t).

    Args:
        memory: ``[B, N, W]`` M_{t-1}; usage: ``[B, N]`` u_t; write_key: ``[B, 1, W]``; write_strength: ``[B, 1]``;
        allocation_gate, write_gate: ``[B, 1]``; write_mask: ``[B, 1, W]`` or None; fused: use the fused
        content weighting (same values).
    Returns:
        ``[B, 1, N]`` w^w_t, summing to at most one.
    """
    content = content_weighting_fast if fused else content_weighting
    c_w = content(memory, write_key, write_strength, mask=write_mask)  # [B, 1, N]
    a = allocation_weighting(usage).unsqueeze(1)  # [B, 1, N]
    g_a = allocation_gate.unsqueeze(-1)  # [B, 1, 1]
    g_w = write_gate.unsqueeze(-1)
    return g_w * (c_w + g_a * (a - c_w))  # = g^w (g^a a + (1 - g^a) c^w)


def write_memory(
    memory: Tensor,
    write_weights: Tensor,
    erase: Tensor,
    write_vector: Tensor,
    psi: Tensor | None = None,
    fused: bool = False,
) -> Tensor:
    """M_t = M_{t-1} o (E - w^w e^T) + w^w v^T; with ``psi`` (erase_freed) the kept part is also scaled by psi_t.

    Args:
        memory: ``[B, N, W]``; write_weights: ``[B, 1, N]``; erase: ``[B, 1, W]`` in [0, 1];
        write_vector: ``[B, 1, W]``; psi: ``[B, N]`` or None; fused: the same with a hand-written backward.
    Returns:
        ``[B, N, W]``.
    """
    if fused:
        return _WriteMemory.apply(memory, write_weights, erase, write_vector, psi)
    w_col = write_weights.transpose(1, 2)  # [B, N, 1]
    keep = 1.0 - w_col * erase  # E - w e^T: [B, N, W]
    if psi is not None:
        keep = keep * psi.unsqueeze(-1)  # Csordas & Schmidhuber 2019: psi_t 1^T o (E - w e^T)
    return torch.addcmul(memory * keep, w_col, write_vector)  # + w v^T


class _ContentWeighting(torch.autograd.Function):
    """C(M, k, beta) = softmax_i(beta K[k, M(i)]) with a hand-written backward (no mask; same math as
    :func:`memory_cores.addressing.content_weighting`, epsilon inside the square roots).

    Saves M (the state, alive anyway) and ``[B, H, N]`` / ``[B, H]`` sized tensors; autograd on the plain formula
    keeps the normalised memory ``M / |M|`` (``[B, N, W]``) per call and records about a dozen nodes.
    """

    @staticmethod
    def forward(ctx, memory: Tensor, keys: Tensor, strengths: Tensor, eps: float):
        m_norm = torch.sqrt(memory.square().sum(-1) + eps)  # |M(i)|: [B, N]
        k_norm = torch.sqrt(keys.square().sum(-1) + eps)  # |k|: [B, H]
        sim = torch.bmm(keys, memory.transpose(1, 2))  # k . M(i): [B, H, N]
        sim.div_(k_norm.unsqueeze(-1)).div_(m_norm.unsqueeze(1))  # K[k, M(i)]
        w = torch.softmax(strengths.unsqueeze(-1) * sim, dim=-1)
        ctx.save_for_backward(memory, keys, strengths, m_norm, k_norm, sim, w)
        return w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_w: Tensor):
        memory, keys, beta, m_norm, k_norm, sim, w = ctx.saved_tensors
        need_m, need_k, need_b, _ = ctx.needs_input_grad
        g_w = g_w.contiguous()
        g_z = w * (g_w - (g_w * w).sum(-1, keepdim=True))  # softmax backward: [B, H, N]
        g_beta = (g_z * sim).sum(-1) if need_b else None
        g_sim = g_z * beta.unsqueeze(-1)
        g_sim_sim = g_sim * sim
        # K = dot / (|k| |M|);  dK/dk = M / (|k||M|) - K k / |k|^2;  dK/dM = k / (|k||M|) - K M / |M|^2
        g_dot = g_sim / k_norm.unsqueeze(-1) / m_norm.unsqueeze(1)
        g_k = g_m = None
        if need_k:
            g_k = torch.bmm(g_dot, memory) - keys * (g_sim_sim.sum(-1) / k_norm.square()).unsqueeze(-1)
        if need_m:
            g_m = memory * (-(g_sim_sim.sum(1) / m_norm.square())).unsqueeze(-1)
            if keys.shape[1] == 1:  # an outer product: broadcasting beats a bmm with an inner size of 1
                g_m.addcmul_(g_dot.transpose(1, 2), keys)
            else:
                g_m.baddbmm_(g_dot.transpose(1, 2), keys)
        return g_m, g_k, g_beta, None


def content_weighting_fast(memory: Tensor, keys: Tensor, strengths: Tensor, mask: Tensor | None = None) -> Tensor:
    """:func:`memory_cores.addressing.content_weighting` (``[B, N, W]``, ``[B, H, W]``, ``[B, H]`` -> ``[B, H, N]``)
    with a fused backward when there is no mask; the masked form uses the shared autograd version."""
    if mask is not None:
        return content_weighting(memory, keys, strengths, mask=mask)
    return _ContentWeighting.apply(memory, keys, strengths, EPS)


class _WriteMemory(torch.autograd.Function):
    """M_t = M_{t-1} o psi 1^T o (E - w e^T) + w v^T (``psi`` = 1 without erase_freed), hand-written backward.

    Saves nothing of size ``[B, N, W]`` but M_{t-1} (the state); the erase matrix is recomputed in the backward.
    """

    @staticmethod
    def forward(ctx, memory: Tensor, write_weights: Tensor, erase: Tensor, write_vector: Tensor, psi: Tensor | None):
        w_col = write_weights.transpose(1, 2)  # [B, N, 1]
        keep = torch.mul(w_col, erase).neg_().add_(1.0)  # E - w e^T: [B, N, W]
        if psi is not None:
            keep.mul_(psi.unsqueeze(-1))
        out = keep.mul_(memory).addcmul_(w_col, write_vector)  # ... o M + w v^T
        ctx.save_for_backward(memory, write_weights, erase, write_vector, psi)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        memory, w_row, e, v, psi = ctx.saved_tensors
        g = g.contiguous()
        need_m, need_w, need_e, need_v, need_psi = ctx.needs_input_grad
        w_col = w_row.transpose(1, 2)  # [B, N, 1]
        gm = g * memory  # G o M: [B, N, W]
        gm_e = torch.bmm(e, gm.transpose(1, 2)).transpose(1, 2)  # sum_j G[i,j] M[i,j] e[j]: [B, N, 1]
        g_mem = g_w = g_e = g_v = g_psi = None
        if need_m:
            keep = torch.mul(w_col, e).neg_().add_(1.0)
            if psi is not None:
                keep.mul_(psi.unsqueeze(-1))
            g_mem = keep.mul_(g)
        psi_col = psi.unsqueeze(-1) if psi is not None else None
        if need_w:
            # dM_t[i, j] / dw[i] = v[j] - psi[i] M[i, j] e[j]
            g_w = torch.bmm(v, g.transpose(1, 2)).transpose(1, 2) - (gm_e * psi_col if psi is not None else gm_e)
            g_w = g_w.transpose(1, 2)
        if need_e:
            # dM_t[i, j] / de[j] = -psi[i] w[i] M[i, j]
            wp = w_row * psi.unsqueeze(1) if psi is not None else w_row  # [B, 1, N]
            g_e = torch.bmm(wp, gm).neg_()
        if need_v:
            g_v = torch.bmm(w_row, g)  # sum_i w[i] G[i, j]
        if need_psi:
            # dM_t[i, j] / dpsi[i] = (1 - w[i] e[j]) M[i, j]
            g_psi = gm.sum(-1) - w_row.squeeze(1) * gm_e.squeeze(-1)
        return g_mem, g_w, g_e, g_v, g_psi


def update_link(prev_link: Tensor, write_weights: Tensor, prev_precedence: Tensor) -> Tensor:
    """L_t[i, j] = (1 - w[i] - w[j]) L_{t-1}[i, j] + w[i] p_{t-1}[j] for i != j, and L_t[i, i] = 0.

    The plain autograd version (the reference for :func:`link_update_and_read`, which the core uses).

    Args:
        prev_link: ``[B, N, N]``; write_weights: ``[B, 1, N]`` w^w_t; prev_precedence: ``[B, N]`` p_{t-1}.
    Returns:
        ``[B, N, N]`` with entries in [0, 1] and a zero diagonal.
    """
    N = prev_link.shape[-1]
    off_diagonal = 1.0 - torch.eye(N, device=prev_link.device, dtype=prev_link.dtype)  # 1 - I
    w_row = write_weights  # [B, 1, N]: w[j]
    w_col = write_weights.transpose(1, 2)  # [B, N, 1]: w[i]
    scale = (1.0 - w_col) - w_row  # [B, N, N]: 1 - w[i] - w[j]
    outer = w_col * prev_precedence.unsqueeze(1)  # [B, N, N]: w[i] p[j]
    return (scale * prev_link + outer) * off_diagonal


class _LinkUpdateAndRead(torch.autograd.Function):
    """Fused link update and temporal reads, with a hand-written backward.

    Forward: L_t = (1 - I) o ((1 - w 1^T - 1 w^T) o L_{t-1} + w p_{t-1}^T);  F = W_r L_t^T;  Bk = W_r L_t.

    Why fused: on a CPU the ``[B, N, N]`` link matrix is the largest tensor of the step and every elementwise op
    on it is a pass through memory. Autograd on the plain formula keeps an extra ``[B, N, N]`` tensor per step
    (the scale) and spends about three times as many passes in the backward as this function, which saves only
    L_{t-1} (the previous state, alive anyway), L_t (the output) and the small vectors. Checked against
    :func:`update_link` / :func:`temporal_weightings` and with ``gradcheck`` in tests/test_dnc.py.
    """

    @staticmethod
    def forward(ctx, prev_link: Tensor, write_weights: Tensor, prev_precedence: Tensor, prev_read_weights: Tensor):
        w_row = write_weights  # [B, 1, N]
        w_col = write_weights.transpose(1, 2)  # [B, N, 1]
        p_row = prev_precedence.unsqueeze(1)  # [B, 1, N]
        link = torch.sub(1.0 - w_col, w_row)  # 1 - w[i] - w[j]: [B, N, N]
        link.mul_(prev_link).addcmul_(w_col, p_row)  # ... * L[i, j] + w[i] p[j]
        link.diagonal(dim1=1, dim2=2).zero_()  # L[i, i] = 0
        forward = torch.bmm(prev_read_weights, link.transpose(1, 2))  # f^i = L w^i: [B, R, N]
        backward = torch.bmm(prev_read_weights, link)  # b^i = L^T w^i: [B, R, N]
        ctx.save_for_backward(prev_link, write_weights, prev_precedence, prev_read_weights, link)
        ctx.set_materialize_grads(False)
        return link, forward, backward

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_link: Tensor | None, g_forward: Tensor | None, g_backward: Tensor | None):
        prev_link, w_row, p, w_r, link = ctx.saved_tensors
        # expanded / strided incoming gradients make bmm loop over rows: make the small ones contiguous
        g_forward = g_forward.contiguous() if g_forward is not None else None
        g_backward = g_backward.contiguous() if g_backward is not None else None
        need_l, need_w, need_p, need_r = ctx.needs_input_grad
        B, N = p.shape
        # dL_t = G_L + G_f^T W_r + W_r^T G_b: [B, N, N]
        g = torch.zeros_like(link)  # (bmm into fresh tensors: baddbmm on an expanded gradient is a per-row loop)
        if g_forward is not None:
            g.baddbmm_(g_forward.transpose(1, 2), w_r)
        if g_backward is not None:
            g.baddbmm_(w_r.transpose(1, 2), g_backward)
        if g_link is not None:
            g += g_link
        g.diagonal(dim1=1, dim2=2).zero_()  # the (1 - I) mask
        d_link = d_w = d_p = d_r = None
        if need_r:
            d_r = torch.zeros_like(w_r)
            if g_forward is not None:
                d_r.baddbmm_(g_forward, link)  # F = W_r L^T -> dW_r = G_f L
            if g_backward is not None:
                d_r.baddbmm_(g_backward, link.transpose(1, 2))  # Bk = W_r L -> dW_r = G_b L^T
        w_col = w_row.transpose(1, 2)
        if need_l:
            d_link = torch.sub(1.0 - w_col, w_row).mul_(g)  # (1 - w[i] - w[j]) G[i, j]
        if need_w:
            gl = g * prev_link  # G[i, j] L[i, j]
            # dw[k] = sum_j G[k, j] (p[j] - L[k, j]) - sum_i G[i, k] L[i, k]
            d_w = torch.bmm(p.unsqueeze(1), g.transpose(1, 2)).squeeze(1) - gl.sum(2) - gl.sum(1)
            d_w = d_w.unsqueeze(1)
        if need_p:
            d_p = torch.bmm(w_row, g).squeeze(1)  # dp[j] = sum_i w[i] G[i, j]
        return d_link, d_w, d_p, d_r


def link_update_and_read(
    prev_link: Tensor, write_weights: Tensor, prev_precedence: Tensor, prev_read_weights: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """L_t (as :func:`update_link`) and the temporal weightings f = L_t w^r_{t-1}, b = L_t^T w^r_{t-1} (as
    :func:`temporal_weightings`), fused with a hand-written backward.

    Args:
        prev_link: ``[B, N, N]`` L_{t-1} (zero diagonal); write_weights: ``[B, 1, N]`` w^w_t;
        prev_precedence: ``[B, N]`` p_{t-1}; prev_read_weights: ``[B, R, N]`` w^r_{t-1}.
    Returns:
        ``(link [B, N, N], forward [B, R, N], backward [B, R, N])``.
    """
    return _LinkUpdateAndRead.apply(prev_link, write_weights, prev_precedence, prev_read_weights)


def update_precedence(prev_precedence: Tensor, write_weights: Tensor) -> Tensor:
    """p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t. ``prev_precedence``: ``[B, N]``; ``write_weights``: ``[B, 1, N]``."""
    w = write_weights.squeeze(1)
    return (1.0 - w.sum(-1, keepdim=True)) * prev_precedence + w


def temporal_weightings(link: Tensor, prev_read_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Forward f^i_t = L_t w^{r,i}_{t-1} and backward b^i_t = L_t^T w^{r,i}_{t-1}, all heads with one bmm each.

    Args:
        link: ``[B, N, N]``; prev_read_weights: ``[B, R, N]``.
    Returns:
        ``(forward, backward)``, each ``[B, R, N]``.
    """
    # row form: f^i[k] = sum_j L[k, j] w^i[j]  ->  F = W_r L^T;  b^i[k] = sum_j L[j, k] w^i[j]  ->  B = W_r L
    forward = torch.bmm(prev_read_weights, link.transpose(1, 2))
    backward = torch.bmm(prev_read_weights, link)
    return forward, backward


def sharpen_link_weights(weights: Tensor, sharpness: Tensor) -> Tensor:
    """Csordas and Schmidhuber 2019 link sharpness: S(d, s)_i = d_i^s / sum_j d_j^s per head.

    ``d`` is divided by its (detached) maximum first: S is scale invariant, so this changes neither the value nor
    the gradient, only keeps ``d^s`` from underflowing.

    Args:
        weights: ``[B, R, N]`` forward or backward weightings; sharpness: ``[B, R]`` s >= 1.
    Returns:
        ``[B, R, N]`` summing to one per head (a zero input gives the uniform distribution).
    """
    scale = weights.detach().amax(-1, keepdim=True).clamp(min=1e-6)
    return sharpen(weights / scale, sharpness)


def read_weighting(
    memory: Tensor,
    forward: Tensor,
    backward: Tensor,
    read_keys: Tensor,
    read_strengths: Tensor,
    read_modes: Tensor,
    read_masks: Tensor | None = None,
    forward_sharpness: Tensor | None = None,
    backward_sharpness: Tensor | None = None,
    fused: bool = False,
) -> Tensor:
    """w^{r,i}_t = pi^i[1] b^i_t + pi^i[2] c^{r,i}_t + pi^i[3] f^i_t, c^{r,i}_t = C(M_t, k^{r,i}, beta^{r,i}).

    Args:
        memory: ``[B, N, W]`` M_t; forward, backward: ``[B, R, N]`` f_t, b_t (:func:`temporal_weightings`);
        read_keys: ``[B, R, W]``; read_strengths: ``[B, R]``; read_modes: ``[B, R, 3]`` (backward, content,
        forward), rows summing to one; read_masks: ``[B, R, W]`` or None; forward/backward_sharpness: ``[B, R]``
        or None (link sharpness); fused: use the fused content weighting (same values).
    Returns:
        ``[B, R, N]``.
    """
    if forward_sharpness is not None:
        forward = sharpen_link_weights(forward, forward_sharpness)
    if backward_sharpness is not None:
        backward = sharpen_link_weights(backward, backward_sharpness)
    content_fn = content_weighting_fast if fused else content_weighting
    content = content_fn(memory, read_keys, read_strengths, mask=read_masks)  # [B, R, N]
    pi_b, pi_c, pi_f = read_modes.unsqueeze(-1).unbind(2)  # [B, R, 1] each
    return pi_b * backward + pi_c * content + pi_f * forward  # [B, R, N]


def access_step(
    state: DNCAccessState, xi: DNCInterface, erase_freed: bool = False, fused: bool = True
) -> DNCAccessState:
    """One memory access step of the DNC (everything after the controller), in the paper's order: usage, write
    weights, write, links and precedence, read weights, read.

    Args:
        state: the access state at t-1; xi: the squashed interface at t.
        erase_freed: Csordas & Schmidhuber de-allocation (scale memory rows by psi_t).
        fused: use the fused functions with hand-written backwards (:func:`link_update_and_read`,
            :func:`content_weighting_fast`, ``write_memory(fused=True)``); False: the plain autograd formulas
            (same values up to rounding, slower). Both are checked against each other in tests/test_dnc.py.
    Returns:
        the access state at t (its ``read_vectors`` ``[B, R, W]`` are this step's reads).
    """
    psi = retention(xi.free_gates, state.read_weights)  # psi_t: [B, N]
    usage = update_usage(state.usage, state.write_weights, psi)  # u_t: [B, N]
    w_w = write_weighting(
        state.memory, usage, xi.write_key, xi.write_strength, xi.allocation_gate, xi.write_gate, xi.write_mask, fused
    )  # w^w_t: [B, 1, N]
    memory = write_memory(state.memory, w_w, xi.erase, xi.write_vector, psi if erase_freed else None, fused)  # M_t
    if fused:
        link, forward, backward = link_update_and_read(state.link, w_w, state.precedence, state.read_weights)
    else:
        link = update_link(state.link, w_w, state.precedence)  # L_t: [B, N, N]
        forward, backward = temporal_weightings(link, state.read_weights)  # f_t, b_t: [B, R, N]
    precedence = update_precedence(state.precedence, w_w)  # p_t: [B, N]
    w_r = read_weighting(
        memory,
        forward,
        backward,
        xi.read_keys,
        xi.read_strengths,
        xi.read_modes,
        xi.read_masks,
        xi.forward_sharpness,
        xi.backward_sharpness,
        fused,
    )  # w^r_t: [B, R, N]
    reads = torch.bmm(w_r, memory)  # r^i_t = M_t^T w^{r,i}_t: [B, R, W]
    return DNCAccessState(memory, usage, link, precedence, w_r, w_w, reads)


# ---------------------------------------------------------------------------------------------- fused access step


def _bmm_nt(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b^T`` for ``a``: ``[B, K, D]`` (K small), ``b``: ``[B, N, D]`` -> contiguous ``[B, K, N]``. (With torch
    2.13 on a CPU, the transposed right operand is faster than computing ``(b @ a^T)^T``: 37 vs 50 us for
    ``[32, 4, 64] x [32, 64, 64]^T``, and the result is contiguous for the elementwise ops that follow.)"""
    return torch.bmm(a, b.transpose(1, 2))


def _content_forward(memory: Tensor, keys: Tensor, beta: Tensor, eps: float = EPS):
    """C(M, k, beta) without autograd. Returns ``(w [B, H, N], sim, m_norm [B, N], k_norm [B, H])``."""
    m_norm = torch.sqrt(torch.linalg.vector_norm(memory, dim=-1).square_().add_(eps))  # |M(i)|: [B, N]
    k_norm = torch.sqrt(keys.square().sum(-1) + eps)  # |k|: [B, H]
    sim = _bmm_nt(keys, memory)  # k . M(i): [B, H, N]
    sim = sim / (k_norm.unsqueeze(-1) * m_norm.unsqueeze(1))  # K[k, M(i)]: [B, H, N]
    w = torch.softmax(beta.unsqueeze(-1) * sim, dim=-1)
    return w, sim, m_norm, k_norm


def _content_backward(g_w, memory, keys, beta, w, sim, m_norm, k_norm, g_memory: Tensor):
    """Gradients of :func:`_content_forward` w.r.t. ``(keys, beta)`` given ``g_w`` ``[B, H, N]``; the gradient
    w.r.t. ``memory`` is added in place to ``g_memory`` (contiguous ``[B, N, W]``)."""
    g_z = w * (g_w - (g_w * w).sum(-1, keepdim=True))  # softmax backward
    g_beta = (g_z * sim).sum(-1)
    g_sim = g_z * beta.unsqueeze(-1)
    g_sim_sim = g_sim * sim
    # K = dot / (|k| |M|):  dK/dk = M / (|k||M|) - K k / |k|^2;  dK/dM = k / (|k||M|) - K M / |M|^2
    g_dot = g_sim / k_norm.unsqueeze(-1) / m_norm.unsqueeze(1)
    g_k = torch.bmm(g_dot, memory) - keys * (g_sim_sim.sum(-1) / k_norm.square()).unsqueeze(-1)
    g_memory.addcmul_(memory, (g_sim_sim.sum(1) / m_norm.square()).unsqueeze(-1), value=-1.0)
    if keys.shape[1] == 1:  # an outer product: broadcasting beats a bmm with an inner size of 1
        g_memory.addcmul_(g_dot.transpose(1, 2), keys)
    else:
        g_memory.baddbmm_(g_dot.transpose(1, 2), keys)
    return g_k, g_beta


class _FusedAccess(torch.autograd.Function):
    """The whole access step (:func:`access_step` after :meth:`DNCCore.split_interface`, without the masked
    content and link sharpness options) as one autograd node with a hand-written backward.

    Inputs: the raw interface ``[B, I]`` (before squashing) and the seven access-state tensors at t-1; outputs:
    the seven tensors at t. Equal to the plain path up to rounding (tests/test_dnc.py compares values and
    gradients, and runs gradcheck). Why: on a CPU the plain autograd graph of one step has about 150 nodes and
    keeps extra ``[B, N, N]`` / ``[B, N, W]`` temporaries alive for the backward; this saves only the states
    (alive anyway) and small ``[B, R, N]`` tensors, and the backward makes few passes over the big ones.
    """

    @staticmethod
    def forward(ctx, raw, memory, usage, link, precedence, read_w, write_w, erase_freed: bool, sizes):
        outputs, saved = _access_forward(raw, memory, usage, link, precedence, read_w, write_w, erase_freed, *sizes)
        ctx.set_materialize_grads(False)
        ctx.erase_freed = erase_freed
        ctx.sizes = sizes
        ctx.save_for_backward(*saved)
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mem1, g_u1, g_link1, g_p1, g_wr1, g_ww1, g_reads):
        grads = _access_backward(ctx.saved_tensors, ctx.erase_freed, *ctx.sizes, g_mem1, g_u1, g_link1, g_p1, g_wr1,
                                 g_ww1, g_reads)  # fmt: skip
        return (*grads, None, None, None)


def _access_forward(raw, memory, usage, link, precedence, read_w, write_w, erase_freed: bool, R: int, W: int):
    """The forward of :class:`_FusedAccess` as a plain function (no autograd; also compiled by
    ``DNCCore(compile=True)``). Returns the seven access-state tensors at t and the tensors its backward needs."""
    B, N = usage.shape
    # ---- interface (paper, Methods): split and squash
    kr, kw, v, plus_raw, sig_raw, modes_raw = torch.split(raw, [R * W, W, W, R + 1, W + R + 2, 3 * R], dim=-1)
    kr = kr.reshape(B, R, W)  # k^{r,i}
    kw = kw.unsqueeze(1)  # k^w: [B, 1, W]
    plus = 1.0 + F.softplus(plus_raw)  # oneplus
    beta_r, beta_w = plus[:, :R], plus[:, R:]  # [B, R], [B, 1]
    sig = torch.sigmoid(sig_raw)
    e, f, g_a, g_w = sig[:, :W], sig[:, W : W + R], sig[:, W + R : W + R + 1], sig[:, W + R + 1 :]
    pi = torch.softmax(modes_raw.reshape(B, R, 3), dim=-1)  # (backward, content, forward)
    # ---- usage: psi = prod_i (1 - f^i w^{r,i}_{t-1});  u_t = (u + w^w - u w^w) psi  (w^w_{t-1} constant)
    q = 1.0 - f.unsqueeze(-1) * read_w  # [B, R, N]
    psi = q.prod(1)  # [B, N]
    ww0 = write_w.squeeze(1)
    u_pre = usage + ww0 - usage * ww0
    u1 = u_pre * psi
    # ---- allocation: sort eps + (1 - eps) u ascending; a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]
    s, phi = torch.sort(EPS + (1.0 - EPS) * u1, dim=-1, stable=True)  # ties in slot order (allocation_weighting)
    excl = torch.cumprod(F.pad(s[:, :-1], (1, 0), value=1.0), dim=-1)  # exclusive cumulative product
    a_sorted = (1.0 - s) * excl
    alloc = torch.empty_like(a_sorted).scatter_(-1, phi, a_sorted)  # [B, N]
    # ---- write weights: w^w = g^w (g^a a + (1 - g^a) c^w),  c^w = C(M_{t-1}, k^w, beta^w)
    cw3, sim_w, mn0, kn_w = _content_forward(memory, kw, beta_w)
    cw = cw3.squeeze(1)
    mix = cw + g_a * (alloc - cw)
    ww1 = g_w * mix  # [B, N]
    w_col = ww1.unsqueeze(-1)  # [B, N, 1]
    # ---- write: M_t = M_{t-1} o (E - w e^T) [o psi 1^T] + w v^T
    if erase_freed:
        mem1 = torch.addcmul(memory, memory * e.unsqueeze(1), w_col, value=-1.0)  # M - w (M e)
        mem1.mul_(psi.unsqueeze(-1)).addcmul_(w_col, v.unsqueeze(1))  # psi (...) + w v^T
    else:
        t = (memory * e.unsqueeze(1)).sub_(v.unsqueeze(1))  # M o e - v
        mem1 = torch.addcmul(memory, t, w_col, value=-1.0)  # M - w (M o e - v) = M o (1 - w e) + w v
    # ---- links: L_t = (1 - w[i] - w[j]) L_{t-1} + w[i] p_{t-1}[j], zero diagonal; precedence
    w_row = ww1.unsqueeze(1)  # [B, 1, N]
    link1 = torch.sub(1.0 - w_col, w_row).mul_(link).addcmul_(w_col, precedence.unsqueeze(1))
    link1.diagonal(dim1=1, dim2=2).zero_()
    p1 = (1.0 - ww1.sum(-1, keepdim=True)) * precedence + ww1
    # ---- reads: f = L w^r_{t-1}, b = L^T w^r_{t-1}, c^r = C(M_t, k^r, beta^r); w^r = pi_b b + pi_c c + pi_f f
    fwd = _bmm_nt(read_w, link1)  # [B, R, N]
    bwd = torch.bmm(read_w, link1)
    cr, sim_r, mn1, kn_r = _content_forward(mem1, kr, beta_r)
    modes = torch.stack((bwd, cr, fwd), dim=2)  # [B, R, 3, N] (saved for the backward)
    wr1 = (bwd * pi[..., 0:1]).addcmul_(cr, pi[..., 1:2]).addcmul_(fwd, pi[..., 2:3])  # [B, R, N]
    reads = torch.bmm(wr1, mem1)  # r^i = M_t^T w^{r,i}: [B, R, W]
    saved = (
        memory, usage, link, precedence, read_w, write_w, mem1, link1, wr1,
        plus, sig, pi, kr, kw, v, q, psi, u_pre, s, phi, excl, a_sorted, alloc,
        cw3, sim_w, mn0, kn_w, mix, modes, sim_r, mn1, kn_r,
    )  # fmt: skip
    return (mem1, u1, link1, p1, wr1, w_row, reads), saved


def _access_backward(
    saved, erase_freed: bool, R: int, W: int, g_mem1, g_u1, g_link1, g_p1, g_wr1, g_ww1, g_reads, scratch=None
):
    """The backward of :class:`_FusedAccess` as a plain function: ``saved`` from :func:`_access_forward` and the
    gradients w.r.t. its seven outputs (None for none) -> gradients w.r.t. the raw interface, M, u, L, p, w^r.

    ``scratch``: None, or work buffers ``([B, N, N], [B, N, W])``, which also say that ``g_link1`` and ``g_mem1``
    (contiguous, not None) are the caller's to overwrite: the gradients w.r.t. L_{t-1} and M_{t-1} are then
    computed in place in them, with no ``[B, N, N]`` or ``[B, N, W]`` allocation (:class:`_FusedUnroll` carries
    one buffer of each back through time; on a CPU every fresh big tensor costs page faults and cache misses)."""
    (
        memory, usage, link, precedence, read_w, write_w, mem1, link1, wr1,
        plus, sig, pi, kr, kw, v, q, psi, u_pre, s, phi, excl, a_sorted, alloc,
        cw3, sim_w, mn0, kn_w, mix, modes, sim_r, mn1, kn_r,
    ) = saved  # fmt: skip
    B, N = usage.shape
    beta_r, beta_w = plus[:, :R], plus[:, R:]
    e, f, g_a, g_w = sig[:, :W], sig[:, W : W + R], sig[:, W + R : W + R + 1], sig[:, W + R + 1 :]
    ww1 = g_w * mix
    w_col, w_row = ww1.unsqueeze(-1), ww1.unsqueeze(1)
    zeros = torch.zeros_like

    # ---- reads r = w^r M_t
    # Incoming gradients may be expanded or strided views (from sum / cat backward); bmm and baddbmm on those
    # fall back to a per-row loop on a CPU, so they are made contiguous (small tensors) or only added.
    g_reads = g_reads.contiguous() if g_reads is not None else zeros(mem1[:, : wr1.shape[1]])
    g_wr1_r = _bmm_nt(g_reads, mem1)  # [B, R, N]
    g_wr1 = g_wr1_r + g_wr1 if g_wr1 is not None else g_wr1_r
    link_scratch, mem_scratch = scratch if scratch is not None else (None, None)
    if scratch is not None:  # g_mem1 is ours: accumulate in place
        g_mem1 = g_mem1.baddbmm_(wr1.transpose(1, 2), g_reads)  # [B, N, W]
    else:
        g_mem1_r = torch.bmm(wr1.transpose(1, 2), g_reads)  # [B, N, W]
        g_mem1 = g_mem1_r.add_(g_mem1) if g_mem1 is not None else g_mem1_r
    # ---- mode mix w^r = sum_m pi_m mode_m
    g_pi = torch.linalg.vecdot(modes, g_wr1.unsqueeze(2))  # [B, R, 3]
    g_modes = pi.unsqueeze(-1) * g_wr1.unsqueeze(2)  # [B, R, 3, N]
    g_bwd, g_cr, g_fwd = g_modes.unbind(2)
    # ---- content read on M_t
    g_kr, g_beta_r = _content_backward(g_cr, mem1, kr, beta_r, modes[:, :, 1], sim_r, mn1, kn_r, g_mem1)
    # ---- precedence p_t = (1 - sum w) p + w
    g_ww = zeros(ww1)  # [B, N]
    g_p0 = zeros(precedence)
    if g_p1 is not None:
        g_p0 += (1.0 - ww1.sum(-1, keepdim=True)) * g_p1
        g_ww += g_p1 - (g_p1 * precedence).sum(-1, keepdim=True)
    # ---- links and temporal reads: G = dL_t + G_f^T W_r + W_r^T G_b, masked diagonal
    if scratch is not None:  # g_link1 is ours: accumulate in place
        g_l = g_link1.baddbmm_(g_fwd.transpose(1, 2), read_w)
    elif g_link1 is not None and g_link1.is_contiguous():
        g_l = torch.baddbmm(g_link1, g_fwd.transpose(1, 2), read_w)
    else:
        g_l = torch.bmm(g_fwd.transpose(1, 2), read_w)
        if g_link1 is not None:
            g_l += g_link1
    g_l.baddbmm_(read_w.transpose(1, 2), g_bwd)
    g_l.diagonal(dim1=1, dim2=2).zero_()
    g_rw0 = torch.bmm(g_fwd, link1) + _bmm_nt(g_bwd, link1)  # [B, R, N]
    gl = g_l * link if scratch is None else torch.mul(g_l, link, out=link_scratch)  # G o L_{t-1}
    # (matrix-vector products are written row-vector x matrix^T: bmm with a column vector is ~5x slower on CPU)
    g_ww += torch.bmm(precedence.unsqueeze(1), g_l.transpose(1, 2)).squeeze(1) - gl.sum(2) - gl.sum(1)
    g_p0 += torch.bmm(w_row, g_l).squeeze(1)
    # dL_t / dL_{t-1} = 1 - w[i] - w[j] (the diagonal of G is already zero)
    if scratch is None:
        g_link0 = torch.sub(1.0 - w_col, w_row).mul_(g_l)
    else:
        g_link0 = g_l.mul_(torch.sub(1.0 - w_col, w_row, out=link_scratch))
    # ---- write M_t = M o keep + w v^T, keep = (1 - w e^T) [psi]
    gmm = g_mem1 * memory if scratch is None else torch.mul(g_mem1, memory, out=mem_scratch)  # G o M_{t-1}
    gmm_e = torch.bmm(e.unsqueeze(1), gmm.transpose(1, 2)).squeeze(1)  # sum_j G M e_j: [B, N]
    g_psi = zeros(psi)
    if erase_freed:
        g_ww += torch.bmm(v.unsqueeze(1), g_mem1.transpose(1, 2)).squeeze(1) - psi * gmm_e
        g_e = -torch.bmm((ww1 * psi).unsqueeze(1), gmm).squeeze(1)
        g_psi += gmm.sum(-1) - ww1 * gmm_e
    else:
        g_ww += torch.bmm(v.unsqueeze(1), g_mem1.transpose(1, 2)).squeeze(1) - gmm_e
        g_e = -torch.bmm(w_row, gmm).squeeze(1)
    g_v = torch.bmm(w_row, g_mem1).squeeze(1)
    # dM_t / dM_{t-1} = (1 - w e^T) [psi]: G - w (G o e)
    if scratch is None:
        g_mem0 = torch.addcmul(g_mem1, g_mem1 * e.unsqueeze(1), w_col, value=-1.0)
    else:  # (gmm is used up: its buffer takes G o e)
        g_mem0 = g_mem1.addcmul_(torch.mul(g_mem1, e.unsqueeze(1), out=mem_scratch), w_col, value=-1.0)
    if erase_freed:
        g_mem0.mul_(psi.unsqueeze(-1))
    if g_ww1 is not None:  # only if the caller uses the state's write weights directly
        g_ww += g_ww1.squeeze(1)
    # ---- write weights w = g^w (c + g^a (a - c))
    g_gw = (g_ww * mix).sum(-1, keepdim=True)
    g_mix = g_ww * g_w
    cw = cw3.squeeze(1)
    g_ga = (g_mix * (alloc - cw)).sum(-1, keepdim=True)
    g_alloc = g_mix * g_a
    g_cw = g_mix - g_alloc
    g_kw, g_beta_w = _content_backward(g_cw.unsqueeze(1), memory, kw, beta_w, cw3, sim_w, mn0, kn_w, g_mem0)
    # ---- allocation: a_j = (1 - s_j) P_j, P_j = prod_{i<j} s_i  ->  dL/ds_j = -g_j P_j + sum_{k>j} g_k a_k / s_j
    g_as = torch.gather(g_alloc, -1, phi)
    ga_a = g_as * a_sorted
    tail = ga_a.flip(-1).cumsum(-1).flip(-1) - ga_a  # sum_{k>j} g_k a_k
    g_s = tail / s - g_as * excl
    g_u = torch.empty_like(g_s).scatter_(-1, phi, g_s).mul_(1.0 - EPS)  # back to slot order; d(eps+(1-eps)u)
    if g_u1 is not None:
        g_u += g_u1
    # ---- usage u_t = u_pre psi, u_pre = u + w - u w (w = w^w_{t-1}, constant)
    g_psi += g_u * u_pre
    g_u0 = g_u * psi * (1.0 - write_w.squeeze(1))
    # ---- psi = prod_i q_i, q_i = 1 - f^i w^{r,i}: dpsi/dq_i = prod_{k != i} q_k (exclusive products both ways)
    ones = torch.ones_like(q[:, :1])
    before = torch.cumprod(torch.cat((ones, q[:, :-1]), 1), 1)
    after = torch.cumprod(torch.cat((ones, q[:, 1:].flip(1)), 1), 1).flip(1)
    g_q = g_psi.unsqueeze(1) * before * after  # [B, R, N]
    g_f = -(g_q * read_w).sum(-1)  # [B, R]
    g_rw0 -= g_q * f.unsqueeze(-1)
    # ---- squashing backward: oneplus' = sigmoid(x) = 1 - exp(-(oneplus(x) - 1)); sigmoid' = s (1 - s)
    g_plus = torch.cat((g_beta_r, g_beta_w), -1) * (-torch.expm1(1.0 - plus))
    g_sig = torch.cat((g_e, g_f, g_ga, g_gw), -1) * sig * (1.0 - sig)
    g_modes_raw = pi * (g_pi - (g_pi * pi).sum(-1, keepdim=True))
    g_raw = torch.cat(
        (g_kr.reshape(B, R * W), g_kw.squeeze(1), g_v, g_plus, g_sig, g_modes_raw.reshape(B, 3 * R)), -1
    )
    return g_raw, g_mem0, g_u0, g_link0, g_p0, g_rw0


def fused_access_step(raw_interface: Tensor, state: DNCAccessState, read_heads: int, erase_freed: bool = False):
    """:func:`access_step` applied to ``DNCCore.split_interface(raw_interface)`` (no masks, no link sharpness),
    as one autograd node with a hand-written backward.

    Args:
        raw_interface: ``[B, I]`` the controller's interface output before squashing, laid out as in
            :class:`DNCCore` (read keys, write key, write vector, oneplus block, sigmoid block, read modes).
        state: access state at t-1; read_heads: R; erase_freed: Csordas & Schmidhuber de-allocation.
    Returns:
        the access state at t.
    """
    W = state.memory.shape[-1]
    out = _FusedAccess.apply(raw_interface, *state[:6], erase_freed, (read_heads, W))
    return DNCAccessState(*out)


# ---------------------------------------------------------------------------------------------- fused unroll


def _lstm_access_forward(xg, rh, w_rh_t, c, w_xi_t, b_xi, access, erase_freed: bool, R: int, W: int,
                         access_forward=None):
    """One step of :class:`_FusedUnroll`'s forward (no autograd): LSTM controller, interface, access step.

    Args:
        xg: ``[B, 4H]`` W_x x_t + b_ih + b_hh; rh: ``[B, R*W + H]`` [r_{t-1}; h_{t-1}]; w_rh_t: ``[R*W + H, 4H]``;
        c: ``[B, H]`` c_{t-1}; w_xi_t: ``[H, I_xi]``; b_xi: ``[I_xi]``; access: the six access tensors M, u, L, p,
        w^r, w^w at t-1. access_forward: the access step's forward (default :func:`_access_forward`; the Triton
        kernels' :func:`memory_cores.dnc_triton.access_forward` with ``kernel="triton"``).
    Returns:
        ``h_t, c_t``, the seven access tensors at t, and what :func:`_lstm_access_backward` needs.
    """
    H = c.shape[1]
    gates = torch.addmm(xg, rh, w_rh_t)  # [B, 4H]: i, f, g, o (PyTorch's LSTM gate order)
    sig = torch.sigmoid(gates)
    g = torch.tanh(gates[:, 2 * H : 3 * H])
    c1 = torch.addcmul(sig[:, H : 2 * H] * c, sig[:, :H], g)  # c_t = f c_{t-1} + i g
    tc = torch.tanh(c1)
    h = sig[:, 3 * H :] * tc  # h_t = o tanh(c_t)
    raw = torch.addmm(b_xi, h, w_xi_t)  # xi_t
    outputs, saved = (access_forward or _access_forward)(raw, *access, erase_freed, R, W)
    return h, c1, outputs, (sig, g, tc, c, saved)


def _lstm_access_backward(
    saved, w_rh, w_xi, erase_freed: bool, R: int, W: int, g_h, g_c, g_access, g_reads, scratch=None,
    access_backward=None,
):
    """One step of :class:`_FusedUnroll`'s backward: gradients w.r.t. ``h_t``, ``c_t`` (``g_h`` includes the
    output's), the six access tensors at t (None for none) and the reads r_t -> the gate gradient ``[B, 4H]``, the
    interface gradient, and the gradients w.r.t. h_{t-1}, c_{t-1}, the access tensors at t-1, r_{t-1}.
    ``scratch``: see :func:`_access_backward` (the link gradient in ``g_access`` is then overwritten)."""
    sig, g, tc, c_prev, saved_access = saved
    H = c_prev.shape[1]
    B = c_prev.shape[0]
    g_raw, *g_prev = (access_backward or _access_backward)(saved_access, erase_freed, R, W, *g_access, g_reads,
                                                           scratch)
    g_h = torch.addmm(g_h, g_raw, w_xi)  # xi = W_xi h + b:  dh += W_xi^T g_xi
    # LSTM cell: h = o tanh(c), c = f c_prev + i g
    i, f, o = sig[:, :H], sig[:, H : 2 * H], sig[:, 3 * H :]
    g_c = torch.addcmul(g_c, g_h * o, 1.0 - tc * tc)
    post = torch.cat((g_c * g, g_c * c_prev, g_c * i, g_h * tc), 1)  # d/d(i, f, g, o) after the squashing
    d_act = sig * (1.0 - sig)  # sigmoid' = s (1 - s); tanh' = 1 - g^2 on the g block
    d_act[:, 2 * H : 3 * H] = 1.0 - g * g
    g_gates = post * d_act  # [B, 4H]
    g_rh = g_gates @ w_rh  # [B, R*W + H]: gradients w.r.t. r_{t-1}, h_{t-1}
    g_r_prev = g_rh[:, : R * W].reshape(B, R, W).contiguous()
    return g_gates, g_raw, g_rh[:, R * W :].contiguous(), g_c * f, g_prev, g_r_prev


_COMPILED: dict[str, object] = {}


STEP_KINDS = ("eager", "compiled", "triton")


def _step_functions(kind: str):
    """``(forward, backward)`` step functions of :class:`_FusedUnroll`: ``"eager"`` the torch functions,
    ``"compiled"`` their ``torch.compile``d versions (made on first use, static shapes: one compilation per new set of
    sizes and dtype), ``"triton"`` with the access step through the Triton kernels (:mod:`memory_cores.dnc_triton`)."""
    if kind == "eager":
        return _lstm_access_forward, _lstm_access_backward
    if kind == "triton":
        from . import dnc_triton

        return (functools.partial(_lstm_access_forward, access_forward=dnc_triton.access_forward),
                functools.partial(_lstm_access_backward, access_backward=dnc_triton.access_backward))
    if not _COMPILED:
        _COMPILED["fwd"] = torch.compile(_lstm_access_forward, dynamic=False)
        _COMPILED["bwd"] = torch.compile(_lstm_access_backward, dynamic=False)
    return _COMPILED["fwd"], _COMPILED["bwd"]


class _FusedUnroll(torch.autograd.Function):
    """A whole LSTM-controller DNC unroll (:meth:`DNCCore.unroll` with ``fused=True``) as one autograd node with a
    hand-written backward through time. Per step it computes what :meth:`DNCCore.step` computes (after the base
    class's per-row reset with ``torch.where``), in the same order; only the controller's sums are grouped
    differently (same values up to rounding):

    * controller: ``gates_t = (W_x x_t + b_ih + b_hh) + W_rh [r_{t-1}; h_{t-1}]`` with ``W_ih = [W_x | W_r]`` and
      ``W_rh = [W_r | W_hh]``; the ``W_x x_t`` part is one matmul over all ``T`` steps before the loop;
      ``i, f, g, o = sigma, sigma, tanh, sigma(gates)`` (PyTorch's gate order), ``c_t = f c + i g``,
      ``h_t = o tanh(c_t)``;
    * interface ``xi_t = W_xi h_t + b_xi`` and the access step (:func:`_access_forward` / :func:`_access_backward`,
      the functions behind :class:`_FusedAccess`).

    The backward runs the steps in reverse, carrying the state gradients, and computes the weight gradients once
    at the end from all steps (``dW = sum_t g_t^T z_t`` as one ``[4H, T*B] x [T*B, K]`` matmul): no per-step graph
    and no per-step weight-gradient matmuls, which is what makes it cheaper than autograd over the step loop.

    Inputs: ``meta = (R, W, erase_freed, steps, every_step)`` (``steps``: a kind of :func:`_step_functions`;
    ``every_step``: apply the reset masks at every
    step instead of reading on the host which steps have one), ``xs`` ``[T, B, I]``, ``resets`` ``[T, B]`` bool or
    None, the nine incoming state tensors (h, c, then :class:`DNCAccessState` order), the nine initial-state tensors (or
    Nones without resets), and ``w_ih, w_hh, b_ih, b_hh, w_xi, b_xi``. Outputs: ``h`` for all steps ``[T, B, H]``,
    the reads ``[T, B, R, W]``, and the nine final state tensors.
    """

    @staticmethod
    def forward(ctx, meta, xs, resets, *tensors):
        R, W, erase_freed, steps_kind, every_step = meta
        step_forward, _ = _step_functions(steps_kind)
        state, init, (w_ih, w_hh, b_ih, b_hh, w_xi, b_xi) = tensors[:9], tensors[9:18], tensors[18:]
        T, B, I = xs.shape
        H = w_hh.shape[1]
        RW = R * W
        # W_x x_t + b_ih + b_hh for all steps at once: [T, B, 4H]
        xg = torch.addmm(b_ih + b_hh, xs.reshape(T * B, I), w_ih[:, :I].t()).view(T, B, 4 * H)
        w_rh_t = torch.cat((w_ih[:, I:], w_hh), 1).t()  # [R*W + H, 4H]
        w_xi_t = w_xi.t()
        rh = xs.new_empty(T, B, RW + H)  # [r_{t-1}; h_{t-1}] of every step (kept for the weight gradients)
        if resets is None:
            reset_steps = [False] * T
        else:  # the steps where a row restarts (a host read), or every step without reading (unroll_sync_free)
            reset_steps = [True] * T if every_step else resets.any(1).tolist()
        h, c, *access = (t.contiguous() for t in state)  # (compiled steps are specialised to strides)
        steps, hs, reads_all = [], [], []
        for t in range(T):
            if reset_steps[t]:  # base-class reset: rows flagged at t restart from the initial state
                m = resets[t]
                h, c, *access = (torch.where(m.view((B,) + (1,) * (a.dim() - 1)), i0, a)
                                 for i0, a in zip(init, (h, c, *access)))  # fmt: skip
            torch.cat((access[6].reshape(B, RW), h), 1, out=rh[t])
            h, c, access, saved = step_forward(
                xg[t], rh[t], w_rh_t, c, w_xi_t, b_xi, tuple(access[:6]), erase_freed, R, W
            )
            steps.append(saved)
            hs.append(h)
            reads_all.append(access[6])
        hs = torch.stack(hs)  # [T, B, H]
        reads_all = torch.stack(reads_all)  # [T, B, R, W]
        ctx.set_materialize_grads(False)
        ctx.meta = (R, W, I, H, erase_freed, steps_kind, reset_steps)
        ctx.steps = steps
        ctx.state_shapes = [x.shape for x in state]
        ctx.save_for_backward(xs, resets, rh, hs, w_ih, w_hh, w_xi)
        # the last step's saved tensors include M_T, L_T and w^r_T: return copies, so that no output is held by
        # the context (an output referenced from a ctx attribute would make a reference cycle)
        mem, u, link, p, rw, ww, reads = access
        return (hs, reads_all, h, c, mem.clone(), u, link.clone(), p, rw.clone(), ww, reads)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_hs, g_reads_all, g_h, g_c, *g_access):
        R, W, I, H, erase_freed, steps_kind, reset_steps = ctx.meta
        _, step_backward = _step_functions(steps_kind)
        xs, resets, rh, hs, w_ih, w_hh, w_xi = ctx.saved_tensors
        T, B, _ = xs.shape
        RW = R * W
        need = ctx.needs_input_grad  # meta, xs, resets, state (9), init (9), params (6)
        need_init = any(need[12:21])
        g_init: list[Tensor | None] = [None] * 9
        w_rh = torch.cat((w_ih[:, I:], w_hh), 1)  # [4H, R*W + H]
        g_gates_all = xs.new_empty(T, B, 4 * H)
        g_raw_all = xs.new_empty(T, B, w_xi.shape[0])
        # gradients w.r.t. the state after step t (h, c, M, u, L, p, w^r, w^w, r); None is zero
        g_state = [g_h, g_c, *g_access]
        scratch = None
        if steps_kind == "eager":  # the memory and link gradients are carried back in one buffer each, in place
            for k in (2, 4):
                gk = g_state[k]
                if gk is None:
                    g_state[k] = xs.new_zeros(ctx.state_shapes[k])
                else:
                    g_state[k] = gk.clone(memory_format=torch.contiguous_format)
            scratch = (torch.empty_like(g_state[4]), torch.empty_like(g_state[2]))  # (see _access_backward)
        zero_ww = None
        if steps_kind != "eager":  # one compiled graph (or kernel) for every step: no Nones, contiguous
            g_state = [xs.new_zeros(shape) if gx is None else gx.contiguous()
                       for gx, shape in zip(g_state, ctx.state_shapes)]  # fmt: skip
            zero_ww = xs.new_zeros(ctx.state_shapes[7])
        for t in range(T - 1, -1, -1):
            g_h_t = g_state[0]
            if g_hs is not None:
                g_h_t = g_hs[t] if g_h_t is None else g_h_t + g_hs[t]
            if g_h_t is None:
                g_h_t = hs.new_zeros(B, H)
            g_c_t = g_state[1] if g_state[1] is not None else hs.new_zeros(B, H)
            g_reads = g_state[8]
            if g_reads_all is not None:
                g_reads = g_reads_all[t] if g_reads is None else g_reads + g_reads_all[t]
            g_gates, g_raw, g_h_prev, g_c_prev, g_prev, g_r_prev = step_backward(
                ctx.steps[t], w_rh, w_xi, erase_freed, R, W, g_h_t, g_c_t, g_state[2:8], g_reads, scratch
            )
            g_gates_all[t] = g_gates
            g_raw_all[t] = g_raw
            # (w^w_{t-1} gets no gradient: the usage update treats it as a constant)
            g_state = [g_h_prev, g_c_prev, *g_prev, zero_ww, g_r_prev]
            if reset_steps[t]:  # rows that restarted at t took their state from the initial state
                m = resets[t]
                for k, gk in enumerate(g_state):
                    if gk is None:
                        continue
                    mk = m.view((B,) + (1,) * (gk.dim() - 1))
                    if need_init:
                        gi = torch.where(mk, gk, 0.0)
                        g_init[k] = gi if g_init[k] is None else g_init[k] + gi
                    g_state[k] = torch.where(mk, 0.0, gk)
        # weight gradients, once for all steps: [4H, T*B] x [T*B, K]
        gg = g_gates_all.view(T * B, 4 * H)
        g_xs = g_w_ih = g_w_hh = g_b_ih = g_b_hh = g_w_xi = g_b_xi = None
        if need[1]:
            g_xs = (gg @ w_ih[:, :I]).view(T, B, I)
        if need[21] or need[22]:
            g_w_rh = gg.t() @ rh.view(T * B, -1)  # [4H, R*W + H]
            if need[21]:
                g_w_ih = torch.cat((gg.t() @ xs.reshape(T * B, I), g_w_rh[:, :RW]), 1)
            if need[22]:
                g_w_hh = g_w_rh[:, RW:]
        if need[23] or need[24]:
            g_b = gg.sum(0)
            g_b_ih, g_b_hh = g_b, g_b.clone()
        g_raw_flat = g_raw_all.view(T * B, -1)
        if need[25]:
            g_w_xi = g_raw_flat.t() @ hs.view(T * B, H)
        if need[26]:
            g_b_xi = g_raw_flat.sum(0)
        g_in = [gs if need[3 + k] else None for k, gs in enumerate(g_state)]
        return (None, g_xs, None, *g_in, *g_init, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_xi, g_b_xi)


# ---------------------------------------------------------------------------------------------- the core


class DNCCore(Core):
    """Differentiable Neural Computer core: a controller (LSTM or feed-forward) with one write head and R read
    heads on an ``N x W`` memory with dynamic allocation and temporal links.

    Args:
        input_size: width of ``x``.
        hidden_size: H, controller units.
        num_slots: N, memory locations.
        slot_size: W, word width.
        num_read_heads: R, read heads.
        controller: ``"lstm"`` (the paper) or ``"feedforward"`` (``h = tanh(W [x; r_{t-1}] + b)``, stateless).
        erase_freed: Csordas & Schmidhuber 2019 de-allocation: freed cells are erased (scaled by psi_t).
        masked_content: Csordas & Schmidhuber 2019 masked content addressing (a learned mask per head).
        link_sharpness: Csordas & Schmidhuber 2019 sharpness control of the forward/backward weightings.
        output_size: None (default) gives ``y = [h_t; r_t]`` of width ``H + R*W``; an int gives the paper's
            ``y = W_y [h_t; r_t]`` (a learned linear map) of that width.
        learn_initial_state: learn the controller's initial ``h, c`` and the initial read vectors ``r_0``
            (default zeros). Memory, usage, links, precedence and weightings always start at zero.
        fused: run the memory access as one autograd node with a hand-written backward (:func:`fused_access_step`;
            without masked_content/link_sharpness) or fused pieces (with them), and, with the LSTM controller,
            :meth:`unroll` as one node over all steps (:class:`_FusedUnroll`). False: the plain autograd
            formulas and the base class's step loop, the readable reference (same values up to rounding, about
            1.5x slower on a CPU); use it for double backward (the fused backward is once-differentiable) or
            forward-mode AD.

        compile: ``torch.compile`` (inductor, static shapes) the per-step forward and backward functions of the
            fused unroll: the access step's ~350 small ops per step become a few generated loops, about 1.4x
            faster forward+backward on a CPU at the default sizes (see the module docstring), where per-op
            overhead dominates; not at large memories (256 slots: 18.0 vs 15.2 ms per step eager, the eager
            backward updates the big gradients in place). Measure before using it. Opt-in: the first
            unroll compiles (30 s on a 2-core VM; inductor caches on disk, so later processes take seconds), and
            every new batch size or dtype compiles again (20 s; past dynamo's recompile limit it runs eager).
            Same values up to rounding (tests/test_dnc.py, with MEMORY_CORES_COMPILE_TESTS=1). Applies where the
            fused unroll applies (``fused=True``, LSTM controller, no masked content or link sharpness,
            float32/float64, no autocast); single steps (``forward``) stay eager. Needs a C++ compiler on a CPU
            (Triton on CUDA).
        kernel: ``"plain"`` (default): the torch functions above (fused or not, as ``fused`` says). ``"triton"``: the
            access step (single steps and each step of the fused unroll) as one Triton kernel forward and one
            backward (:mod:`memory_cores.dnc_triton`), same values up to rounding; needs ``fused=True``, no masked
            content or link sharpness, ``num_slots <= 128``, not ``compile``; CUDA tensors (or the CPU under
            ``TRITON_INTERPRET=1``, for tests). ``"auto"``: the Triton kernels where they apply and can run (those
            conditions, Triton importable, CUDA inputs) and the plain path elsewhere, so that a checkpoint trained on
            a GPU evaluates on a CPU.

    ``output_size`` (attribute): ``H + R*W`` or the given ``output_size``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        num_slots: int = 64,
        slot_size: int = 32,
        num_read_heads: int = 4,
        controller: str = "lstm",
        erase_freed: bool = False,
        masked_content: bool = False,
        link_sharpness: bool = False,
        output_size: int | None = None,
        learn_initial_state: bool = False,
        fused: bool = True,
        compile: bool = False,
        kernel: str = "plain",
    ) -> None:
        super().__init__(input_size)
        for name, value, low in (
            ("hidden_size", hidden_size, 1),
            ("num_slots", num_slots, 1),
            ("slot_size", slot_size, 1),
            ("num_read_heads", num_read_heads, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if controller not in ("lstm", "feedforward"):
            raise ValueError(f"controller must be 'lstm' or 'feedforward', got {controller!r}")
        if output_size is not None and (not isinstance(output_size, int) or output_size < 1):
            raise ValueError(f"output_size must be None or an int >= 1, got {output_size!r}")
        self.hidden_size = H = hidden_size
        self.num_slots = N = num_slots
        self.slot_size = W = slot_size
        self.num_read_heads = R = num_read_heads
        self.controller_kind = controller
        self.erase_freed = bool(erase_freed)
        self.masked_content = bool(masked_content)
        self.link_sharpness = bool(link_sharpness)
        self.learn_initial_state = bool(learn_initial_state)
        self.fused = bool(fused)
        self.compile_steps = bool(compile)
        self.kernel = check_kernel(kernel)
        self._triton_applies = self.fused and not (masked_content or link_sharpness) and N <= TRITON_MAX_SLOTS
        if kernel == "triton" and (not self._triton_applies or compile):
            raise ValueError(
                f"kernel='triton' needs fused=True, no masked_content or link_sharpness, num_slots <= "
                f"{TRITON_MAX_SLOTS} and compile=False (got fused={fused}, masked_content={masked_content}, "
                f"link_sharpness={link_sharpness}, num_slots={N}, compile={compile}); use kernel='plain' or 'auto'"
            )

        # controller input [x_t; r_{t-1}]
        ctrl_in = input_size + R * W
        if controller == "lstm":
            self.controller = nn.LSTMCell(ctrl_in, H)
        else:
            self.controller = nn.Linear(ctrl_in, H)

        # Interface vector xi_t, one fused Linear. Layout (widths):
        #   read keys R*W | write key W | write vector W                         (no squashing)
        #   oneplus:  read strengths R | write strength 1 | [sharpness f R | b R]
        #   sigmoid:  erase W | free gates R | allocation gate 1 | write gate 1 | [read masks R*W | write mask W]
        #   read modes 3R                                                          (softmax per head)
        self._n_linear = [R * W, W, W]
        self._n_oneplus = [R, 1] + ([R, R] if self.link_sharpness else [])
        self._n_sigmoid = [W, R, 1, 1] + ([R * W, W] if self.masked_content else [])
        self._n_blocks = [sum(self._n_linear), sum(self._n_oneplus), sum(self._n_sigmoid), 3 * R]
        self.interface_size = sum(self._n_blocks)
        self.interface = nn.Linear(H, self.interface_size)

        if output_size is None:
            self.output_projection = None
            self.output_size = H + R * W
        else:
            self.output_projection = nn.Linear(H + R * W, output_size)
            self.output_size = output_size

        if self.learn_initial_state:
            if controller == "lstm":
                self.h0 = LearnedInit(H)
                self.c0 = LearnedInit(H)
            self.r0 = LearnedInit(R, W)

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> DNCState:
        """Zero memory, usage, links, precedence and weightings; zero (or learned) controller state and reads."""
        device = self._device(device)
        dtype = self._param_dtype()
        B, N, W, R, H = batch_size, self.num_slots, self.slot_size, self.num_read_heads, self.hidden_size

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, device=device, dtype=dtype)

        if self.controller_kind == "lstm":
            if self.learn_initial_state:
                ctrl = DNCControllerState(self.h0.expand(B, device), self.c0.expand(B, device))
            else:
                ctrl = DNCControllerState(zeros(B, H), zeros(B, H))
        else:
            ctrl = NoControllerState()
        reads = self.r0.expand(B, device) if self.learn_initial_state else zeros(B, R, W)
        access = DNCAccessState(
            memory=zeros(B, N, W),
            usage=zeros(B, N),
            link=zeros(B, N, N),
            precedence=zeros(B, N),
            read_weights=zeros(B, R, N),
            write_weights=zeros(B, 1, N),
            read_vectors=reads,
        )
        return DNCState(ctrl, access)

    # ------------------------------------------------------------------ step
    def split_interface(self, interface: Tensor) -> DNCInterface:
        """Split the raw interface vector ``[B, interface_size]`` into its squashed parts (:class:`DNCInterface`)."""
        B = interface.shape[0]
        R, W = self.num_read_heads, self.slot_size
        raw, plus, sig, modes = torch.split(interface, self._n_blocks, dim=-1)
        read_keys, write_key, write_vector = torch.split(raw, self._n_linear, dim=-1)
        plus = torch.split(oneplus(plus), self._n_oneplus, dim=-1)
        sig = torch.split(torch.sigmoid(sig), self._n_sigmoid, dim=-1)
        xi = DNCInterface(
            read_keys=read_keys.reshape(B, R, W),
            read_strengths=plus[0],
            write_key=write_key.unsqueeze(1),
            write_strength=plus[1],
            erase=sig[0].unsqueeze(1),
            write_vector=write_vector.unsqueeze(1),
            free_gates=sig[1],
            allocation_gate=sig[2],
            write_gate=sig[3],
            read_modes=torch.softmax(modes.reshape(B, R, 3), dim=-1),
            read_masks=sig[4].reshape(B, R, W) if self.masked_content else None,
            write_mask=sig[5].unsqueeze(1) if self.masked_content else None,
            forward_sharpness=plus[2] if self.link_sharpness else None,
            backward_sharpness=plus[3] if self.link_sharpness else None,
        )
        return xi

    def _use_triton(self, device: torch.device) -> bool:
        """Whether the access step runs through the Triton kernels on ``device`` (see ``kernel``)."""
        return use_triton(self.kernel, device, applies=self._triton_applies)

    def _access(self, interface: Tensor, access: DNCAccessState) -> DNCAccessState:
        if self._use_triton(interface.device):
            from . import dnc_triton

            return dnc_triton.access_step(interface, access, self.num_read_heads, self.erase_freed)
        if self.fused and not (self.masked_content or self.link_sharpness):
            return fused_access_step(interface, access, self.num_read_heads, self.erase_freed)
        return access_step(access, self.split_interface(interface), self.erase_freed, self.fused)

    def step(self, x: Tensor, state: DNCState) -> tuple[Tensor, DNCState]:
        """One DNC step. ``x``: ``[B, input_size]`` -> ``y``: ``[B, output_size]``, new :class:`DNCState`."""
        B = x.shape[0]
        ctrl_state, access = state
        # controller on [x_t; r_{t-1}]: [B, input_size + R*W]
        ctrl_in = torch.cat((x, access.read_vectors.reshape(B, -1).to(x.dtype)), dim=-1)
        if self.controller_kind == "lstm":
            h, c = self.controller(ctrl_in, (ctrl_state.h, ctrl_state.c))
            new_ctrl: DNCControllerState | NoControllerState = DNCControllerState(h, c)
        else:
            h = torch.tanh(self.controller(ctrl_in))
            new_ctrl = NoControllerState()
        interface = self.interface(h)  # xi_t: [B, interface_size]

        device_type = x.device.type
        low = interface.dtype in _LOW_PRECISION or access.memory.dtype in _LOW_PRECISION
        if low or torch.is_autocast_enabled(device_type):
            # memory math in fp32, outside autocast; the state keeps its dtype
            with torch.autocast(device_type=device_type, enabled=False):
                f32 = torch.float32 if low else access.memory.dtype
                new_access = self._access(interface.to(f32), DNCAccessState(*(t.to(f32) for t in access)))
                new_access = DNCAccessState(*(t.to(s.dtype) for t, s in zip(new_access, access)))
        else:
            new_access = self._access(interface, access)

        # y_t = [h_t; r_t] (or W_y [h_t; r_t])
        y = torch.cat((h, new_access.read_vectors.reshape(B, -1).to(h.dtype)), dim=-1)
        if self.output_projection is not None:
            y = self.output_projection(y)
        return y, DNCState(new_ctrl, new_access)

    def _fast_unroll_ok(self, xs: Tensor, state: DNCState) -> bool:
        """Whether :meth:`unroll` may take the fused path (:class:`_FusedUnroll`)."""
        if not (self.fused and self.controller_kind == "lstm") or self.masked_content or self.link_sharpness:
            return False
        if xs.shape[0] == 0 or torch.is_autocast_enabled(xs.device.type):
            return False
        dtype = self._param_dtype()
        return dtype in (torch.float32, torch.float64) and all(t.dtype == dtype for t in (xs, *tree_leaves(state)))

    def unroll_sync_free(self, xs: Tensor, state: DNCState, resets: Tensor | None = None
                         ) -> tuple[Tensor, DNCState]:
        """:meth:`unroll` without reading the reset flags on the host: the fused unroll applies every step's reset
        mask (``torch.where``, an identity for rows that do not restart), so the values are :meth:`unroll`'s."""
        return self._unroll(xs, state, resets, every_step=True)

    def unroll(self, xs: Tensor, state: DNCState, resets: Tensor | None = None) -> tuple[Tensor, DNCState]:
        """Time-major unroll, exactly the base class's step loop (``ys[t], state = self(xs[t], state, resets[t])``).

        With ``fused=True``, the LSTM controller, float32/float64 and no autocast, the whole unroll is one autograd
        node (:class:`_FusedUnroll`: the controller's input projection for all steps in one matmul, the access step's
        fused forward/backward per step, weight gradients once for all steps); the same values up to rounding
        (tests/test_dnc.py checks values and gradients against the step loop, with resets). Otherwise the loop.
        """
        return self._unroll(xs, state, resets, every_step=False)

    def _unroll(self, xs: Tensor, state: DNCState, resets: Tensor | None, every_step: bool
                ) -> tuple[Tensor, DNCState]:
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None and resets.shape != xs.shape[:2]:
            raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
        if not self._fast_unroll_ok(xs, state):
            return super().unroll(xs, state, resets)
        T, B, _ = xs.shape
        leaves = tree_leaves(state)
        if leaves[0].shape[0] != B:
            raise ValueError(f"state batch size {leaves[0].shape[0]} does not match xs batch size {B}")
        if resets is not None:
            resets = resets.to(device=xs.device, dtype=torch.bool)
            init = tree_leaves(self.initial_state(B, device=xs.device))
        else:
            init = [None] * 9
        lstm, xi = self.controller, self.interface
        params = (lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh, xi.weight, xi.bias)
        steps = "triton" if self._use_triton(xs.device) else "compiled" if self.compile_steps else "eager"
        meta = (self.num_read_heads, self.slot_size, self.erase_freed, steps, every_step)
        hs, reads, *final = _FusedUnroll.apply(meta, xs, resets, *leaves, *init, *params)
        # y_t = [h_t; r_t] (or W_y [h_t; r_t])
        ys = torch.cat((hs, reads.reshape(T, B, -1)), dim=-1)
        if self.output_projection is not None:
            ys = self.output_projection(ys)
        return ys, DNCState(DNCControllerState(*final[:2]), DNCAccessState(*final[2:]))

    def extra_repr(self) -> str:
        opts = [
            f"input_size={self.input_size}",
            f"hidden_size={self.hidden_size}",
            f"num_slots={self.num_slots}",
            f"slot_size={self.slot_size}",
            f"num_read_heads={self.num_read_heads}",
            f"controller={self.controller_kind!r}",
            f"output_size={self.output_size}",
        ]
        opts += [n for n in ("erase_freed", "masked_content", "link_sharpness") if getattr(self, n)]
        if self.kernel != "plain":
            opts.append(f"kernel={self.kernel!r}")
        return ", ".join(opts)
