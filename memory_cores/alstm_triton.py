"""The Associative LSTM's holographic cell as two Triton kernels: one forward, one backward (the fast path of
:mod:`memory_cores.alstm`).

The plain cell (:meth:`memory_cores.alstm.AssociativeLSTMCore._cell`) runs the gate and key activations, the
permutation of the keys for every copy, the complex write into every copy and the complex read with its mean over the
copies as about 30 small torch ops forward and as many backward. At the batch sizes of RL each is a kernel launch that
does almost no work, so on a GPU a step costs launches, not arithmetic (2.5 ms forward+backward per step at batch 32 on
an H200, against the LSTM's 0.09 ms). Here the whole cell, from the pre-activations to ``h_t`` and the new copies, is
ONE kernel launch with one program per batch row (the row's ``N_copies x N_h`` cell stays in registers), and the
backward is one more. The linear map ``W [x_t, h_{t-1}] + b`` stays in torch (one matmul).

Same equations in the same order as the plain cell (notation of :mod:`memory_cores.alstm`; a complex unit k is
stored as (Re, Im) at columns (k, K + k) of its vector, ``K = N_h / 2``)::

    g_f, g_i, g_o = sigmoid(pre[:K]), sigmoid(pre[K:2K]), sigmoid(pre[2K:3K])     # [K] each
    r_i, r_o, u   = bound(pre[3K:5K]), bound(pre[5K:7K]), bound(pre[7K:9K])        # bound(z) = z / max(1, |z|)
    (P_s r)_k     = r_{perm_s(k)}                                                   # loaded at permuted columns
    c_{s,t}       = g_f * c_{s,t-1} + (P_s r_i) (*) (g_i * u)                      # every copy s
    h_t           = g_o * bound(1/N_copies sum_s (P_s r_o) (*) c_{s,t})

The forward loads the permuted keys straight from the row of pre-activations (a gather by column index). The
backward recomputes the forward from the inputs (nothing but ``pre`` and ``c_{t-1}`` is saved, less than the plain
cell's autograd graph) and must add the gradients of ``P_s r`` back into ``r``'s columns: a scatter that sums over the
copies, which a program cannot do across its threads' registers; the per-copy gradients go through a small global
buffer (each copy's permutation is a bijection, so the stores never collide) and a block barrier, then are summed
over the copies.

Values equal the plain cell up to rounding (tests/test_alstm_triton.py compares them in float64, values and gradients
of every input, on the CPU through Triton's interpreter, ``TRITON_INTERPRET=1``, and on CUDA). The backward is
once-differentiable. float32 and float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .triton_common import check_inputs, triton, tl

if triton is not None:
    from .triton_common import sigmoid

__all__ = ["ALSTMCell", "alstm_cell"]


if triton is not None:

    @triton.jit
    def _bound(re, im):
        """``bound(z) = z / sqrt(max(1, Re^2 + Im^2))`` per complex unit -> (Re, Im, the divisor n)."""
        n = tl.sqrt(tl.maximum(re * re + im * im, 1.0))
        return re / n, im / n, n

    @triton.jit
    def _bound_bwd(g_re, g_im, re, im, n):
        """Backward of :func:`_bound` at the raw ``(re, im)``: ``g / n - [|z|^2 >= 1] (g . z) z / n^3`` (torch's
        clamp passes its gradient at the bound itself, as here)."""
        active = (re * re + im * im) >= 1.0
        dot = tl.where(active, (g_re * re + g_im * im) / (n * n * n), 0.0)
        return g_re / n - dot * re, g_im / n - dot * im

    @triton.jit
    def _cell_tile(K: tl.constexpr, NC: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr):
        """Indices of one row's ``N_copies x K`` complex units in a ``[BC, BK]`` block: ``(kk [BK], ss [BC], kmask,
        tmask, ctile)``, ``ctile`` the offsets of the real halves (copy s, unit k at ``s 2K + k``; imaginary at + K)."""
        kk = tl.arange(0, BK)
        ss = tl.arange(0, BC)
        kmask = kk < K
        return kk, ss, kmask, (ss[:, None] < NC) & kmask[None, :], ss[:, None] * (2 * K) + kk[None, :]

    @triton.jit
    def _cell_fwd_row(pre_row, c_row, perm_ptr, K: tl.constexpr, NC: tl.constexpr, kk, kmask, ss, tmask, ctile):
        """The forward of one row, with what the backward needs (the permuted raw keys and their divisors)."""
        g_f = sigmoid(tl.load(pre_row + kk, mask=kmask, other=0.0))
        g_i = sigmoid(tl.load(pre_row + K + kk, mask=kmask, other=0.0))
        g_o = sigmoid(tl.load(pre_row + 2 * K + kk, mask=kmask, other=0.0))
        u_xr = tl.load(pre_row + 7 * K + kk, mask=kmask, other=0.0)
        u_xi = tl.load(pre_row + 8 * K + kk, mask=kmask, other=0.0)
        u_r, u_i, u_n = _bound(u_xr, u_xi)
        perm = tl.load(perm_ptr + ss[:, None] * K + kk[None, :], mask=tmask, other=0)  # [BC, BK]
        ri_xr = tl.load(pre_row + 3 * K + perm, mask=tmask, other=0.0)  # P_s r_i before the bound
        ri_xi = tl.load(pre_row + 4 * K + perm, mask=tmask, other=0.0)
        ro_xr = tl.load(pre_row + 5 * K + perm, mask=tmask, other=0.0)  # P_s r_o before the bound
        ro_xi = tl.load(pre_row + 6 * K + perm, mask=tmask, other=0.0)
        ri_r, ri_i, ri_n = _bound(ri_xr, ri_xi)
        ro_r, ro_i, ro_n = _bound(ro_xr, ro_xi)
        w_r, w_i = g_i * u_r, g_i * u_i  # g_i * u
        c_r = tl.load(c_row + ctile, mask=tmask, other=0.0)  # c_{s,t-1} [BC, BK]
        c_i = tl.load(c_row + K + ctile, mask=tmask, other=0.0)
        # c_{s,t} = g_f * c_{s,t-1} + (P_s r_i) (*) (g_i * u)
        n_r = g_f[None, :] * c_r + (ri_r * w_r[None, :] - ri_i * w_i[None, :])
        n_i = g_f[None, :] * c_i + (ri_r * w_i[None, :] + ri_i * w_r[None, :])
        # m = 1/N_copies sum_s (P_s r_o) (*) c_{s,t}  (padded copies hold zeros)
        m_r = tl.sum(tl.where(tmask, ro_r * n_r - ro_i * n_i, 0.0), 0) / NC
        m_i = tl.sum(tl.where(tmask, ro_r * n_i + ro_i * n_r, 0.0), 0) / NC
        bm_r, bm_i, m_n = _bound(m_r, m_i)
        return (g_f, g_i, g_o, u_xr, u_xi, u_r, u_i, u_n, perm, ri_xr, ri_xi, ri_r, ri_i, ri_n,
                ro_xr, ro_xi, ro_r, ro_i, ro_n, w_r, w_i, c_r, c_i, n_r, n_i, m_r, m_i, bm_r, bm_i, m_n)

    @triton.jit
    def _alstm_cell_fwd(
        pre_ptr, c_ptr, perm_ptr, h_ptr, c_out_ptr,
        K: tl.constexpr, NC: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        kk, ss, kmask, tmask, ctile = _cell_tile(K, NC, BK, BC)
        c_row = c_ptr + b * NC * 2 * K
        (g_f, g_i, g_o, u_xr, u_xi, u_r, u_i, u_n, perm, ri_xr, ri_xi, ri_r, ri_i, ri_n,
         ro_xr, ro_xi, ro_r, ro_i, ro_n, w_r, w_i, c_r, c_i, n_r, n_i, m_r, m_i, bm_r, bm_i, m_n) = _cell_fwd_row(
            pre_ptr + b * 9 * K, c_row, perm_ptr, K, NC, kk, kmask, ss, tmask, ctile)
        out_row = c_out_ptr + b * NC * 2 * K
        tl.store(out_row + ctile, n_r, mask=tmask)
        tl.store(out_row + K + ctile, n_i, mask=tmask)
        tl.store(h_ptr + b * 2 * K + kk, g_o * bm_r, mask=kmask)  # h_t = g_o * bound(m)
        tl.store(h_ptr + b * 2 * K + K + kk, g_o * bm_i, mask=kmask)

    @triton.jit
    def _alstm_cell_bwd(
        pre_ptr, c_ptr, perm_ptr, g_h_ptr, g_c_out_ptr, g_pre_ptr, g_c_ptr, scratch_ptr,
        K: tl.constexpr, NC: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        kk, ss, kmask, tmask, ctile = _cell_tile(K, NC, BK, BC)
        pre_row = pre_ptr + b * 9 * K
        c_row = c_ptr + b * NC * 2 * K
        (g_f, g_i, g_o, u_xr, u_xi, u_r, u_i, u_n, perm, ri_xr, ri_xi, ri_r, ri_i, ri_n,
         ro_xr, ro_xi, ro_r, ro_i, ro_n, w_r, w_i, c_r, c_i, n_r, n_i, m_r, m_i, bm_r, bm_i, m_n) = _cell_fwd_row(
            pre_row, c_row, perm_ptr, K, NC, kk, kmask, ss, tmask, ctile)
        # ---- h_t = g_o * bound(m)
        gh_r = tl.load(g_h_ptr + b * 2 * K + kk, mask=kmask, other=0.0)
        gh_i = tl.load(g_h_ptr + b * 2 * K + K + kk, mask=kmask, other=0.0)
        g_go = gh_r * bm_r + gh_i * bm_i
        gm_r, gm_i = _bound_bwd(gh_r * g_o, gh_i * g_o, m_r, m_i, m_n)
        gp_r, gp_i = gm_r / NC, gm_i / NC  # the mean over copies
        # ---- (P_s r_o) (*) c_{s,t}: d/da = g (*) conj(b), d/db = g (*) conj(a)
        gro_r = gp_r[None, :] * n_r + gp_i[None, :] * n_i
        gro_i = gp_i[None, :] * n_r - gp_r[None, :] * n_i
        gout_row = g_c_out_ptr + b * NC * 2 * K
        gn_r = tl.load(gout_row + ctile, mask=tmask, other=0.0) + gp_r[None, :] * ro_r + gp_i[None, :] * ro_i
        gn_i = tl.load(gout_row + K + ctile, mask=tmask, other=0.0) + gp_i[None, :] * ro_r - gp_r[None, :] * ro_i
        gn_r = tl.where(tmask, gn_r, 0.0)
        gn_i = tl.where(tmask, gn_i, 0.0)
        # ---- c_{s,t} = g_f * c_{s,t-1} + (P_s r_i) (*) w
        gc_row = g_c_ptr + b * NC * 2 * K
        tl.store(gc_row + ctile, g_f[None, :] * gn_r, mask=tmask)
        tl.store(gc_row + K + ctile, g_f[None, :] * gn_i, mask=tmask)
        g_gf = tl.sum(gn_r * c_r + gn_i * c_i, 0)
        gri_r = gn_r * w_r[None, :] + gn_i * w_i[None, :]
        gri_i = gn_i * w_r[None, :] - gn_r * w_i[None, :]
        gw_r = tl.sum(gn_r * ri_r + gn_i * ri_i, 0)
        gw_i = tl.sum(gn_i * ri_r - gn_r * ri_i, 0)
        # ---- w = g_i * u
        g_gi = gw_r * u_r + gw_i * u_i
        gu_r, gu_i = _bound_bwd(gw_r * g_i, gw_i * g_i, u_xr, u_xi, u_n)
        # ---- the permuted keys' gradients, bound undone per copy, then scattered back to their columns
        gri_r, gri_i = _bound_bwd(gri_r, gri_i, ri_xr, ri_xi, ri_n)
        gro_r, gro_i = _bound_bwd(gro_r, gro_i, ro_xr, ro_xi, ro_n)
        scr = scratch_ptr + b * 4 * NC * K  # [4, NC, K]: (r_i re, r_i im, r_o re, r_o im) per copy
        stile = ss[:, None] * K + perm
        tl.store(scr + stile, gri_r, mask=tmask)
        tl.store(scr + NC * K + stile, gri_i, mask=tmask)
        tl.store(scr + 2 * NC * K + stile, gro_r, mask=tmask)
        tl.store(scr + 3 * NC * K + stile, gro_i, mask=tmask)
        tl.debug_barrier()  # every thread's scattered gradients are in the buffer
        ltile = ss[:, None] * K + kk[None, :]
        gp_row = g_pre_ptr + b * 9 * K
        for j in tl.static_range(4):  # columns 3K.. of pre: r_i re, r_i im, r_o re, r_o im
            g = tl.sum(tl.load(scr + j * NC * K + ltile, mask=tmask, other=0.0), 0)
            tl.store(gp_row + (3 + j) * K + kk, g, mask=kmask)
        # ---- the gates (sigmoid' = y (1 - y)) and u
        tl.store(gp_row + kk, g_gf * g_f * (1.0 - g_f), mask=kmask)
        tl.store(gp_row + K + kk, g_gi * g_i * (1.0 - g_i), mask=kmask)
        tl.store(gp_row + 2 * K + kk, g_go * g_o * (1.0 - g_o), mask=kmask)
        tl.store(gp_row + 7 * K + kk, gu_r, mask=kmask)
        tl.store(gp_row + 8 * K + kk, gu_i, mask=kmask)


def _launch_meta(K: int, NC: int) -> dict:
    BK, BC = triton.next_power_of_2(K), triton.next_power_of_2(NC)
    return dict(BK=BK, BC=BC, num_warps=4 if BK * BC <= 2048 else 8)


class ALSTMCell(torch.autograd.Function):
    """The associative cell as one forward and one backward kernel.

    ``apply(pre, c, permutations)`` with ``pre`` ``[B, 4.5 N_h]`` the pre-activations ``[g_f | g_i | g_o | r_i |
    r_o | u]``, ``c`` ``[B, N_copies, N_h]`` the copies c_{s,t-1} and ``permutations`` ``[N_copies, N_h / 2]`` (int)
    the P_s; returns ``(h_t [B, N_h], c_{s,t} [B, N_copies, N_h])``.
    """

    @staticmethod
    def forward(ctx, pre, c, permutations):  # type: ignore[override]
        pre, c, permutations = pre.contiguous(), c.contiguous(), permutations.contiguous()
        B, NC, H = c.shape
        K = H // 2
        h = pre.new_empty(B, H)
        c_out = torch.empty_like(c)
        if B:
            _alstm_cell_fwd[(B,)](pre, c, permutations, h, c_out, K=K, NC=NC, **_launch_meta(K, NC))
        ctx.save_for_backward(pre, c, permutations)
        return h, c_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_h, g_c_out):  # type: ignore[override]
        pre, c, permutations = ctx.saved_tensors
        B, NC, H = c.shape
        K = H // 2
        g_h = torch.zeros(B, H, dtype=pre.dtype, device=pre.device) if g_h is None else g_h.contiguous()
        g_c_out = torch.zeros_like(c) if g_c_out is None else g_c_out.contiguous()
        g_pre = torch.empty_like(pre)
        g_c = torch.empty_like(c)
        if B:
            _alstm_cell_bwd[(B,)](
                pre, c, permutations, g_h, g_c_out, g_pre, g_c, pre.new_empty(B, 4, NC, K),
                K=K, NC=NC, **_launch_meta(K, NC),
            )
        return g_pre, g_c, None


def alstm_cell(pre: Tensor, c: Tensor, permutations: Tensor) -> tuple[Tensor, Tensor]:
    """The Associative LSTM's cell (see the module docstring) through the Triton kernels.

    Args:
        pre: ``[B, 4.5 N_h]`` pre-activations ``[g_f | g_i | g_o | r_i | r_o | u]`` (widths K, K, K, 2K, 2K, 2K with
            K = N_h / 2; keys and update as [real half, imaginary half]), float32 or float64.
        c: ``[B, N_copies, N_h]`` the cell copies c_{s,t-1}, of ``pre``'s dtype and device.
        permutations: ``[N_copies, K]`` integer, row s a permutation P_s of ``0..K-1``.
    Returns:
        ``(h_t [B, N_h], c_{s,t} [B, N_copies, N_h])``.
    """
    check_inputs(c.device, pre.dtype)
    if c.dtype != pre.dtype:
        raise TypeError(f"pre and c must share a dtype, got {pre.dtype} and {c.dtype}")
    B, NC, H = c.shape
    if pre.shape != (B, 9 * H // 2) or permutations.shape != (NC, H // 2):
        raise ValueError(
            f"expected pre [B, {9 * H // 2}] and permutations [{NC}, {H // 2}] for c {list(c.shape)}, got "
            f"{list(pre.shape)} and {list(permutations.shape)}"
        )
    return ALSTMCell.apply(pre, c, permutations)
