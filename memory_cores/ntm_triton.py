"""The NTM's memory access as two Triton kernels: one forward, one backward (the fast path of :mod:`memory_cores.ntm`).

The plain step (:meth:`memory_cores.ntm.NTMCore.step`) runs the head activations, the write head's addressing
(eqs. 5-9), erase and add (eqs. 3-4), the read heads' addressing on the updated memory and the reads (eq. 2) as
about 60 small torch ops forward and as many backward; at the batch sizes of RL (32 to a few thousand rows) each is
a kernel launch that does almost no work, so a step costs launches, not arithmetic. Here the whole access, from the
raw head projection to the new memory, weightings and reads, is ONE kernel launch with one program per batch row
(the row's ``N x W`` memory stays in registers), and the backward is one more. The controller (one matmul and the
LSTM gates) and the head projection stay in torch.

Same equations in the same order as the plain step, with one write head (``num_write_heads == 1``, the default):

    p         = clamp(params, -clip, clip)                           # [B, P], the fused head projection
    k, beta, g, s, gamma, e, a of every head from p                  # identity, softplus, sigmoid, softmax, 1+softplus
    w^c       = softmax_i(beta K[k, M(i)])                           # eq. 5, K the cosine with eps inside the sqrt
    w^g       = w_{t-1} + g (w^c - w_{t-1})                          # eq. 7
    w~(i)     = sum_{d=-K..K} s(d) w^g(i - d mod N)                  # eq. 8
    w(i)      = softmax_i(gamma log(max(w~(i), 0) + eps))            # eq. 9 in log space
    M_t       = M_{t-1} + w^{write} (a - M_{t-1} e)                  # eqs. 3-4 with one write head
    r^h       = sum_i w^{h}(i) M_t(i)                                # eq. 2, read heads addressing M_t

The backward recomputes the activations and reads what the forward kept of each head (``[B, H, 4, N]``: the cosine
similarities, w^c, w^g and w~), so it saves no more than the plain step's autograd graph. The circular shift needs a
row of other slots, which a program cannot take from another thread's registers: w^g (forward) and dL/dw~ (backward)
go through a small global buffer and a block barrier.

Values equal the plain step up to rounding (tests/test_ntm_triton.py compares them in float64, including gradients
of every input, on the CPU through Triton's interpreter, ``TRITON_INTERPRET=1``, and on CUDA). The backward is
once-differentiable. float32 and float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .triton_common import available, check_inputs, triton, tl

if triton is not None:
    from .triton_common import content_bwd, content_fwd, memory_tile, row_inv_norms, sigmoid, softplus, softplus_grad

__all__ = ["available", "ntm_access", "NTMAccess"]


if triton is not None:

    @triton.jit
    def _clamp(x, clip):
        return tl.minimum(tl.maximum(x, -clip), clip)

    @triton.jit
    def _in_clip(x, clip):
        # torch.clamp's gradient passes where -clip <= x <= clip
        return (x >= -clip) & (x <= clip)

    @triton.jit
    def _head_params(p_row, h, clip, H, W: tl.constexpr, S: tl.constexpr, cols, cmask, sidx, smask):
        """Head ``h``'s activated parameters from the raw projection row (layout of NTMCore._sizes with H_w = 1)."""
        o_sp = H * W + W  # after [k (H W) | a (W)]
        o_sg = o_sp + 2 * H  # after [beta (H), gamma (H)]
        o_sh = o_sg + H + W  # after [g (H) | e (W)]
        k = _clamp(tl.load(p_row + h * W + cols, mask=cmask, other=0.0), clip)
        beta = softplus(_clamp(tl.load(p_row + o_sp + h), clip))
        gamma = 1.0 + softplus(_clamp(tl.load(p_row + o_sp + H + h), clip))
        g = sigmoid(_clamp(tl.load(p_row + o_sg + h), clip))
        s_x = _clamp(tl.load(p_row + o_sh + h * S + sidx, mask=smask, other=0.0), clip)
        s_x = tl.where(smask, s_x, float("-inf"))
        s_e = tl.exp(s_x - tl.max(s_x, 0))
        s = s_e / tl.sum(s_e, 0)  # s_t: softmax over the 2K+1 shifts (0 on padding)
        return k, beta, gamma, g, s

    @triton.jit
    def _address_fwd(
        M, m_inv, p_row, h, wprev_row, work_row, clip, eps, H,
        N: tl.constexpr, W: tl.constexpr, S: tl.constexpr,
        rows, rmask, cols, cmask, sidx, smask,
    ):
        """Eqs. 5-9 for head ``h`` on the row's memory tile ``M`` ``[BN, BW]``; keeps sim, w^c, w^g, w~ in
        ``work_row`` ``[4, N]`` and returns w ``[BN]`` (0 on padding)."""
        k, beta, gamma, g, s = _head_params(p_row, h, clip, H, W, S, cols, cmask, sidx, smask)
        wc, sim = content_fwd(M, m_inv, k, beta, rmask, eps)  # eq. 5, and K[k, M(i)]
        wprev = tl.load(wprev_row + rows, mask=rmask, other=0.0)
        wg = wprev + g * (wc - wprev)  # eq. 7
        tl.store(work_row + 2 * N + rows, wg, mask=rmask)
        tl.debug_barrier()  # every thread's w^g is in the buffer before the shifted loads
        K: tl.constexpr = (S - 1) // 2
        ws = tl.zeros_like(wg)
        for j in tl.static_range(S):  # eq. 8: w~(i) = sum_d s(d) w^g(i - d), d = j - K
            s_d = tl.sum(tl.where(sidx == j, s, 0.0), 0)
            src = (rows - (j - K) + N) % N
            ws += s_d * tl.load(work_row + 2 * N + src, mask=rmask, other=0.0)
        log_w = tl.log(tl.maximum(ws, 0.0) + eps)
        z2 = tl.where(rmask, gamma * log_w, float("-inf"))
        e2 = tl.exp(z2 - tl.max(z2, 0))
        w = e2 / tl.sum(e2, 0)  # eq. 9
        tl.store(work_row + rows, sim, mask=rmask)
        tl.store(work_row + N + rows, wc, mask=rmask)
        tl.store(work_row + 3 * N + rows, ws, mask=rmask)
        return w

    @triton.jit
    def _ntm_access_fwd(
        p_ptr, mem_ptr, wr_prev_ptr, ww_prev_ptr,  # inputs
        mem_out_ptr, wr_ptr, ww_ptr, reads_ptr, work_ptr,  # outputs
        clip, eps,
        N: tl.constexpr, W: tl.constexpr, R: tl.constexpr, S: tl.constexpr, P: tl.constexpr,
        BN: tl.constexpr, BW: tl.constexpr, BS: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        H = R + 1
        rows, cols, rmask, cmask, tile, tmask = memory_tile(N, W, BN, BW)
        sidx = tl.arange(0, BS)
        smask = sidx < S
        p_row = p_ptr + b * P
        M = tl.load(mem_ptr + b * N * W + tile, mask=tmask, other=0.0)  # M_{t-1}
        m_inv = row_inv_norms(M, eps)
        # ---- the write head (head 0) addresses M_{t-1}
        ww = _address_fwd(
            M, m_inv, p_row, 0, ww_prev_ptr + b * N, work_ptr + b * H * 4 * N, clip, eps, H, N, W, S,
            rows, rmask, cols, cmask, sidx, smask,
        )
        tl.store(ww_ptr + b * N + rows, ww, mask=rmask)
        a = _clamp(tl.load(p_row + H * W + cols, mask=cmask, other=0.0), clip)
        e = sigmoid(_clamp(tl.load(p_row + H * W + W + 3 * H + cols, mask=cmask, other=0.0), clip))
        M2 = M + ww[:, None] * (a[None, :] - M * e[None, :])  # eqs. 3-4: M_t
        tl.store(mem_out_ptr + b * N * W + tile, M2, mask=tmask)
        m2_inv = row_inv_norms(M2, eps)
        # ---- the read heads address M_t and read it
        for r in tl.static_range(R):
            wr = _address_fwd(
                M2, m2_inv, p_row, 1 + r, wr_prev_ptr + (b * R + r) * N, work_ptr + (b * H + 1 + r) * 4 * N,
                clip, eps, H, N, W, S, rows, rmask, cols, cmask, sidx, smask,
            )
            tl.store(wr_ptr + (b * R + r) * N + rows, wr, mask=rmask)
            tl.store(reads_ptr + (b * R + r) * W + cols, tl.sum(wr[:, None] * M2, 0), mask=cmask)  # eq. 2

    @triton.jit
    def _address_bwd(
        M, m_inv, gw, w, p_row, gp_row, h, wprev_row, gwprev_row, work_row, scratch_row, clip, eps, H,
        N: tl.constexpr, W: tl.constexpr, S: tl.constexpr,
        rows, rmask, cols, cmask, sidx, smask,
    ):
        """Backward of :func:`_address_fwd` for head ``h`` given dL/dw ``gw``: writes the head's parameter gradients
        into ``gp_row`` and dL/dw_{t-1} into ``gwprev_row``; returns the cosine's dL/dM ``[BN, BW]``."""
        K: tl.constexpr = (S - 1) // 2
        o_sp = H * W + W
        o_sg = o_sp + 2 * H
        o_sh = o_sg + H + W
        k_x = tl.load(p_row + h * W + cols, mask=cmask, other=0.0)
        beta_x = tl.load(p_row + o_sp + h)
        gamma_x = tl.load(p_row + o_sp + H + h)
        g_x = tl.load(p_row + o_sg + h)
        s_x = tl.load(p_row + o_sh + h * S + sidx, mask=smask, other=0.0)
        k, beta, gamma, g, s = _head_params(p_row, h, clip, H, W, S, cols, cmask, sidx, smask)
        sim = tl.load(work_row + rows, mask=rmask, other=0.0)
        wc = tl.load(work_row + N + rows, mask=rmask, other=0.0)
        ws = tl.load(work_row + 3 * N + rows, mask=rmask, other=0.0)
        # eq. 9: w = softmax(gamma L), L = log(max(w~, 0) + eps)
        ws_c = tl.maximum(ws, 0.0) + eps
        log_w = tl.where(rmask, tl.log(ws_c), 0.0)
        gz2 = w * (gw - tl.sum(gw * w, 0))
        g_gamma = tl.sum(gz2 * log_w, 0)
        gws = tl.where(ws >= 0.0, gamma * gz2 / ws_c, 0.0)
        gws = tl.where(rmask, gws, 0.0)
        # eq. 8 transposed: dL/dw^g(j) = sum_d s(d) dL/dw~(j + d); dL/ds(d) = sum_i dL/dw~(i) w^g(i - d)
        tl.store(scratch_row + rows, gws, mask=rmask)
        tl.debug_barrier()
        gwg = tl.zeros_like(gws)
        gs = tl.zeros_like(s)
        for j in tl.static_range(S):
            s_d = tl.sum(tl.where(sidx == j, s, 0.0), 0)
            gwg += s_d * tl.load(scratch_row + (rows + (j - K) + N) % N, mask=rmask, other=0.0)
            wg_src = tl.load(work_row + 2 * N + (rows - (j - K) + N) % N, mask=rmask, other=0.0)
            gs += tl.where(sidx == j, tl.sum(gws * wg_src, 0), 0.0)
        # eq. 7: w^g = w_{t-1} + g (w^c - w_{t-1})
        wprev = tl.load(wprev_row + rows, mask=rmask, other=0.0)
        g_g = tl.sum(gwg * (wc - wprev), 0)
        tl.store(gwprev_row + rows, (1.0 - g) * gwg, mask=rmask)
        gwc = g * gwg
        # eq. 5: w^c = softmax(beta K[k, M(i)])
        gk, g_beta, gM = content_bwd(gwc, wc, sim, M, m_inv, k, beta, eps)
        # activations and the clamp, back to the raw projection
        tl.store(gp_row + h * W + cols, tl.where(_in_clip(k_x, clip), gk, 0.0), mask=cmask)
        beta_c = _clamp(beta_x, clip)
        tl.store(gp_row + o_sp + h, tl.where(_in_clip(beta_x, clip), g_beta * softplus_grad(beta_c), 0.0))
        gamma_c = _clamp(gamma_x, clip)
        tl.store(gp_row + o_sp + H + h, tl.where(_in_clip(gamma_x, clip), g_gamma * softplus_grad(gamma_c), 0.0))
        tl.store(gp_row + o_sg + h, tl.where(_in_clip(g_x, clip), g_g * g * (1.0 - g), 0.0))
        gs_x = s * (gs - tl.sum(gs * s, 0))
        tl.store(gp_row + o_sh + h * S + sidx, tl.where(_in_clip(s_x, clip), gs_x, 0.0), mask=smask)
        return gM

    @triton.jit
    def _ntm_access_bwd(
        p_ptr, mem_ptr, wr_prev_ptr, ww_prev_ptr, mem_out_ptr, wr_ptr, ww_ptr, work_ptr,  # saved
        g_mem_out_ptr, g_wr_ptr, g_ww_ptr, g_reads_ptr,  # incoming gradients
        g_p_ptr, g_mem_ptr, g_wr_prev_ptr, g_ww_prev_ptr, scratch_ptr,  # outputs (and scratch [B, N])
        clip, eps,
        N: tl.constexpr, W: tl.constexpr, R: tl.constexpr, S: tl.constexpr, P: tl.constexpr,
        BN: tl.constexpr, BW: tl.constexpr, BS: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        H = R + 1
        rows, cols, rmask, cmask, tile, tmask = memory_tile(N, W, BN, BW)
        sidx = tl.arange(0, BS)
        smask = sidx < S
        p_row = p_ptr + b * P
        gp_row = g_p_ptr + b * P
        M2 = tl.load(mem_out_ptr + b * N * W + tile, mask=tmask, other=0.0)  # M_t
        gM2 = tl.load(g_mem_out_ptr + b * N * W + tile, mask=tmask, other=0.0)
        m2_inv = row_inv_norms(M2, eps)
        # ---- read heads: r = w M_t, then their addressing of M_t
        for r in tl.static_range(R):
            wr = tl.load(wr_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0)
            gr = tl.load(g_reads_ptr + (b * R + r) * W + cols, mask=cmask, other=0.0)
            gwr = tl.load(g_wr_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0) + tl.sum(gr[None, :] * M2, 1)
            gM2 += wr[:, None] * gr[None, :]
            gM2 += _address_bwd(
                M2, m2_inv, gwr, wr, p_row, gp_row, 1 + r, wr_prev_ptr + (b * R + r) * N,
                g_wr_prev_ptr + (b * R + r) * N, work_ptr + (b * H + 1 + r) * 4 * N, scratch_ptr + b * N,
                clip, eps, H, N, W, S, rows, rmask, cols, cmask, sidx, smask,
            )
            tl.debug_barrier()  # the next head reuses the scratch row
        # ---- erase and add: M_t = M + w (a - M e)
        M = tl.load(mem_ptr + b * N * W + tile, mask=tmask, other=0.0)
        ww = tl.load(ww_ptr + b * N + rows, mask=rmask, other=0.0)
        a_x = tl.load(p_row + H * W + cols, mask=cmask, other=0.0)
        e_x = tl.load(p_row + H * W + W + 3 * H + cols, mask=cmask, other=0.0)
        a = _clamp(a_x, clip)
        e = sigmoid(_clamp(e_x, clip))
        gww = tl.load(g_ww_ptr + b * N + rows, mask=rmask, other=0.0) + tl.sum(gM2 * (a[None, :] - M * e[None, :]), 1)
        g_e = -tl.sum(gM2 * ww[:, None] * M, 0)
        g_a = tl.sum(gM2 * ww[:, None], 0)
        gM = gM2 * (1.0 - ww[:, None] * e[None, :])
        tl.store(gp_row + H * W + cols, tl.where(_in_clip(a_x, clip), g_a, 0.0), mask=cmask)
        tl.store(gp_row + H * W + W + 3 * H + cols, tl.where(_in_clip(e_x, clip), g_e * e * (1.0 - e), 0.0), mask=cmask)
        # ---- the write head's addressing of M_{t-1}
        m_inv = row_inv_norms(M, eps)
        gM += _address_bwd(
            M, m_inv, gww, ww, p_row, gp_row, 0, ww_prev_ptr + b * N, g_ww_prev_ptr + b * N,
            work_ptr + b * H * 4 * N, scratch_ptr + b * N, clip, eps, H, N, W, S,
            rows, rmask, cols, cmask, sidx, smask,
        )
        tl.store(g_mem_ptr + b * N * W + tile, gM, mask=tmask)


def _launch_meta(N: int, W: int, S: int) -> dict:
    BN, BW = triton.next_power_of_2(N), triton.next_power_of_2(W)
    return dict(BN=BN, BW=BW, BS=triton.next_power_of_2(S), num_warps=4 if BN * BW <= 4096 else 8)


class NTMAccess(torch.autograd.Function):
    """The NTM's memory access (one write head, R read heads) as one forward and one backward kernel.

    ``apply(params, memory, read_weights, write_weights, clip, eps, R, S)`` with ``params`` ``[B, P]`` the raw
    head projection (before the clamp), ``memory`` ``[B, N, W]`` M_{t-1}, ``read_weights`` ``[B, R, N]`` and
    ``write_weights`` ``[B, 1, N]`` the previous weightings; returns ``(M_t [B, N, W], w^read [B, R, N],
    w^write [B, 1, N], reads [B, R, W])``.
    """

    @staticmethod
    def forward(ctx, params, memory, read_weights, write_weights, clip, eps, R, S):  # type: ignore[override]
        params, memory = params.contiguous(), memory.contiguous()
        read_weights, write_weights = read_weights.contiguous(), write_weights.contiguous()
        B, N, W = memory.shape
        mem_out = torch.empty_like(memory)
        wr = torch.empty_like(read_weights)
        ww = torch.empty_like(write_weights)
        reads = memory.new_empty(B, R, W)
        work = memory.new_empty(B, R + 1, 4, N)
        if B:
            _ntm_access_fwd[(B,)](
                params, memory, read_weights, write_weights, mem_out, wr, ww, reads, work, clip, eps,
                N=N, W=W, R=R, S=S, P=params.shape[1], **_launch_meta(N, W, S),
            )
        ctx.save_for_backward(params, memory, read_weights, write_weights, mem_out, wr, ww, work)
        ctx.clip, ctx.eps, ctx.R, ctx.S = clip, eps, R, S
        return mem_out, wr, ww, reads

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mem, g_wr, g_ww, g_reads):  # type: ignore[override]
        params, memory, read_weights, write_weights, mem_out, wr, ww, work = ctx.saved_tensors
        B, N, W = memory.shape
        R, S = ctx.R, ctx.S
        grads = [
            torch.zeros_like(ref) if g is None else g.contiguous()
            for g, ref in ((g_mem, mem_out), (g_wr, wr), (g_ww, ww), (g_reads, memory.new_empty(B, R, W)))
        ]
        g_params = torch.empty_like(params)
        g_memory = torch.empty_like(memory)
        g_wr_prev = torch.empty_like(read_weights)
        g_ww_prev = torch.empty_like(write_weights)
        if B:
            meta = _launch_meta(N, W, S)
            meta["num_warps"] = max(meta["num_warps"], 8 if meta["BN"] * meta["BW"] >= 2048 else 4)  # 4 warps spill at 64 x 32 (scripts/triton_compile_check.py)
            _ntm_access_bwd[(B,)](
                params, memory, read_weights, write_weights, mem_out, wr, ww, work, *grads,
                g_params, g_memory, g_wr_prev, g_ww_prev, memory.new_empty(B, N), ctx.clip, ctx.eps,
                N=N, W=W, R=R, S=S, P=params.shape[1], **meta,
            )
        return g_params, g_memory, g_wr_prev, g_ww_prev, None, None, None, None


def ntm_access(
    params: Tensor, memory: Tensor, read_weights: Tensor, write_weights: Tensor, *, clip: float | None, eps: float,
    num_read_heads: int, num_shifts: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The NTM's memory access (see the module docstring) through the Triton kernels.

    Args:
        params: ``[B, P]`` the raw head projection (NTMCore's layout, one write head), float32 or float64.
        memory: ``[B, N, W]`` M_{t-1}; read_weights ``[B, R, N]``; write_weights ``[B, 1, N]``; all of
            ``params``'s dtype and device.
        clip: the clamp of the projection (``None``: none); eps: the addressing epsilon.
        num_read_heads: R; num_shifts: 2K + 1.
    Returns:
        ``(M_t [B, N, W], w^read [B, R, N], w^write [B, 1, N], reads [B, R, W])``.
    """
    check_inputs(memory.device, params.dtype)
    clip_value = float("inf") if clip is None else float(clip)
    return NTMAccess.apply(params, memory, read_weights, write_weights, clip_value, float(eps), num_read_heads,
                           num_shifts)
