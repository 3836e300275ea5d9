"""The DNC's memory access as two Triton kernels: one forward, one backward (a fast path of :mod:`memory_cores.dnc`).

:func:`access_forward` and :func:`access_backward` have the signatures of the fused path's
``memory_cores.dnc._access_forward`` / ``_access_backward`` and compute the same equations (the access step of the
paper's Methods section, after the interface Linear; no masked content or link sharpness), in one launch each with
one program per batch row. That row's ``[N, W]`` memory and ``[N, N]`` link matrix stay in registers, so
``N <= 128`` (:data:`MAX_SLOTS`). The single step (:class:`TritonAccess`) and the fused LSTM unroll of
:class:`memory_cores.dnc.DNCCore` use them when it is built with ``kernel="triton"`` (or ``"auto"`` on CUDA).

    interface   k^r, k^w, v raw; beta = oneplus; e, f, g^a, g^w = sigmoid; pi = softmax per read head
    usage       psi = prod_r (1 - f^r w^{r}_{t-1});  u_t = (u + w^w_{t-1} - u w^w_{t-1}) psi
    allocation  s = eps + (1 - eps) u_t;  a(i) = (1 - s_i) prod_{j before i} s_j
    write       w^w = g^w (c^w + g^a (a - c^w)),  c^w = C(M_{t-1}, k^w, beta^w)
                M_t = M - w^w (M e - v)      (erase_freed: M_t = psi (M - w^w M e) + w^w v)
    links       L_t[i,j] = (1 - w[i] - w[j]) L[i,j] + w[i] p[j], zero diagonal;  p_t = (1 - sum w) p + w
    reads       f^r = L_t w^r_{t-1}, b^r = L_t^T w^r_{t-1}, c^r = C(M_t, k^r, beta^r);  w^r = pi_b b + pi_c c + pi_f f
                r^r = M_t^T w^r

Allocation without a sort: "j before i" is the free list's order (usage ascending, ties by slot index, the order of
a stable sort), evaluated for every pair in an ``[N, N]`` tile, and the exclusive product over the slots before i
is ``exp(sum log s_j)`` (every ``s_j >= eps > 0``); the backward uses the same tile for
``dL/ds_j = -g_j P_j + (1 / s_j) sum_{k after j} g_k a_k``. No permutation, no scatter, no cumulative product.

Equal to the fused torch path up to rounding: tests/test_dnc_triton.py (float64, values and gradients, single steps
and the fused unroll with resets; in Triton's interpreter on a CPU, compiled on CUDA). Once-differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .addressing import EPS
from .triton_common import available, check_inputs, tl, triton

if triton is not None:
    from .triton_common import content_bwd, content_fwd, memory_tile, row_inv_norms, sigmoid, softplus, softplus_grad

__all__ = ["MAX_SLOTS", "available", "access_forward", "access_backward", "TritonAccess"]

MAX_SLOTS = 128
"""The largest N the kernels take: a program holds its row's ``[N, N]`` link matrix (and, in the backward, three
such tiles) in registers."""

# per-row work vectors kept by the forward for the backward, each [N]: s, P (exclusive product), a, c^w, K^w, then
# per read head c^r, K^r, f^r, b^r
_WORK_FIXED = 5


if triton is not None:

    @triton.jit
    def _before(s, rows, rmask):
        """``[BN, BN]`` mask: slot j (axis 0) comes before slot i (axis 1) in the free list (usage ascending, ties by
        index); padding slots come before nothing."""
        s_j = s[:, None]
        s_i = s[None, :]
        first = (s_j < s_i) | ((s_j == s_i) & (rows[:, None] < rows[None, :]))
        return first & rmask[:, None]

    @triton.jit
    def _dnc_access_fwd(
        raw_ptr, mem_ptr, u_ptr, link_ptr, p_ptr, rw_ptr, ww_ptr,  # inputs (state at t-1)
        mem1_ptr, u1_ptr, link1_ptr, p1_ptr, rw1_ptr, ww1_ptr, reads_ptr, work_ptr,  # outputs
        eps,
        ERASE_FREED: tl.constexpr, N: tl.constexpr, W: tl.constexpr, R: tl.constexpr, I: tl.constexpr,
        BN: tl.constexpr, BW: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rows, cols, rmask, cmask, tile, tmask = memory_tile(N, W, BN, BW)
        ltile = rows[:, None] * N + rows[None, :]
        lmask = rmask[:, None] & rmask[None, :]
        # interface offsets: [k^r (R W) | k^w (W) | v (W) | beta^r (R), beta^w | e (W), f (R), g^a, g^w | pi (3R)]
        o_plus = R * W + 2 * W
        o_sig = o_plus + R + 1
        o_modes = o_sig + W + R + 2
        x = raw_ptr + b * I
        work = work_ptr + b * (5 + 4 * R) * N
        # ---- usage: psi = prod_r (1 - f^r w^r_{t-1});  u_t = (u + w - u w) psi
        u = tl.load(u_ptr + b * N + rows, mask=rmask, other=0.0)
        psi = tl.zeros_like(u) + 1.0
        for r in tl.static_range(R):
            f_r = sigmoid(tl.load(x + o_sig + W + r))
            psi = psi * (1.0 - f_r * tl.load(rw_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0))
        ww0 = tl.load(ww_ptr + b * N + rows, mask=rmask, other=0.0)
        u1 = (u + ww0 - u * ww0) * psi
        tl.store(u1_ptr + b * N + rows, u1, mask=rmask)
        # ---- allocation over the free list (see the module docstring)
        s = eps + (1.0 - eps) * u1
        before = _before(s, rows, rmask)
        P = tl.exp(tl.sum(tl.where(before, tl.log(tl.where(rmask, s, 1.0))[:, None], 0.0), 0))
        alloc = (1.0 - s) * P
        # ---- write weighting w^w = g^w (c^w + g^a (a - c^w))
        M = tl.load(mem_ptr + b * N * W + tile, mask=tmask, other=0.0)
        m_inv = row_inv_norms(M, eps)
        kw = tl.load(x + R * W + cols, mask=cmask, other=0.0)
        beta_w = 1.0 + softplus(tl.load(x + o_plus + R))
        cw, sim_w = content_fwd(M, m_inv, kw, beta_w, rmask, eps)
        g_a = sigmoid(tl.load(x + o_sig + W + R))
        g_w = sigmoid(tl.load(x + o_sig + W + R + 1))
        ww1 = tl.where(rmask, g_w * (cw + g_a * (alloc - cw)), 0.0)
        tl.store(ww1_ptr + b * N + rows, ww1, mask=rmask)
        # ---- write the memory
        e = sigmoid(tl.load(x + o_sig + cols, mask=cmask, other=0.0))
        v = tl.load(x + R * W + W + cols, mask=cmask, other=0.0)
        if ERASE_FREED:
            M1 = psi[:, None] * (M - ww1[:, None] * M * e[None, :]) + ww1[:, None] * v[None, :]
        else:
            M1 = M - ww1[:, None] * (M * e[None, :] - v[None, :])
        tl.store(mem1_ptr + b * N * W + tile, M1, mask=tmask)
        # ---- links and precedence
        L = tl.load(link_ptr + b * N * N + ltile, mask=lmask, other=0.0)
        p = tl.load(p_ptr + b * N + rows, mask=rmask, other=0.0)
        L1 = (1.0 - ww1[:, None] - ww1[None, :]) * L + ww1[:, None] * p[None, :]
        L1 = tl.where(rows[:, None] == rows[None, :], 0.0, L1)
        tl.store(link1_ptr + b * N * N + ltile, L1, mask=lmask)
        tl.store(p1_ptr + b * N + rows, (1.0 - tl.sum(ww1, 0)) * p + ww1, mask=rmask)
        # ---- read heads on M_t
        m1_inv = row_inv_norms(M1, eps)
        for r in tl.static_range(R):
            wr0 = tl.load(rw_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0)
            fwd = tl.sum(L1 * wr0[None, :], 1)  # f(i) = sum_j L_t[i, j] w(j)
            bwd = tl.sum(wr0[:, None] * L1, 0)  # b(j) = sum_i w(i) L_t[i, j]
            kr = tl.load(x + r * W + cols, mask=cmask, other=0.0)
            beta_r = 1.0 + softplus(tl.load(x + o_plus + r))
            cr, sim_r = content_fwd(M1, m1_inv, kr, beta_r, rmask, eps)
            m0 = tl.load(x + o_modes + 3 * r)
            m1 = tl.load(x + o_modes + 3 * r + 1)
            m2 = tl.load(x + o_modes + 3 * r + 2)
            mx = tl.maximum(tl.maximum(m0, m1), m2)
            e0, e1, e2 = tl.exp(m0 - mx), tl.exp(m1 - mx), tl.exp(m2 - mx)
            tot = e0 + e1 + e2
            wr1 = (e0 / tot) * bwd + (e1 / tot) * cr + (e2 / tot) * fwd  # pi = (backward, content, forward)
            tl.store(rw1_ptr + (b * R + r) * N + rows, wr1, mask=rmask)
            tl.store(reads_ptr + (b * R + r) * W + cols, tl.sum(wr1[:, None] * M1, 0), mask=cmask)
            o = (5 + 4 * r) * N
            tl.store(work + o + rows, cr, mask=rmask)
            tl.store(work + o + N + rows, sim_r, mask=rmask)
            tl.store(work + o + 2 * N + rows, fwd, mask=rmask)
            tl.store(work + o + 3 * N + rows, bwd, mask=rmask)
        tl.store(work + rows, s, mask=rmask)
        tl.store(work + N + rows, P, mask=rmask)
        tl.store(work + 2 * N + rows, alloc, mask=rmask)
        tl.store(work + 3 * N + rows, cw, mask=rmask)
        tl.store(work + 4 * N + rows, sim_w, mask=rmask)

    @triton.jit
    def _dnc_access_bwd(
        raw_ptr, mem_ptr, u_ptr, link_ptr, p_ptr, rw_ptr, ww_ptr, mem1_ptr, link1_ptr, rw1_ptr, ww1_ptr, work_ptr,
        g_mem1_ptr, g_u1_ptr, g_link1_ptr, g_p1_ptr, g_rw1_ptr, g_ww1_ptr, g_reads_ptr,  # incoming gradients
        g_raw_ptr, g_mem_ptr, g_u_ptr, g_link_ptr, g_p_ptr, g_rw_ptr,  # outputs
        eps,
        ERASE_FREED: tl.constexpr, N: tl.constexpr, W: tl.constexpr, R: tl.constexpr, I: tl.constexpr,
        BN: tl.constexpr, BW: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rows, cols, rmask, cmask, tile, tmask = memory_tile(N, W, BN, BW)
        ltile = rows[:, None] * N + rows[None, :]
        lmask = rmask[:, None] & rmask[None, :]
        o_plus = R * W + 2 * W
        o_sig = o_plus + R + 1
        o_modes = o_sig + W + R + 2
        x = raw_ptr + b * I
        gx = g_raw_ptr + b * I
        work = work_ptr + b * (5 + 4 * R) * N
        M1 = tl.load(mem1_ptr + b * N * W + tile, mask=tmask, other=0.0)
        gM1 = tl.load(g_mem1_ptr + b * N * W + tile, mask=tmask, other=0.0)
        L1 = tl.load(link1_ptr + b * N * N + ltile, mask=lmask, other=0.0)
        G = tl.load(g_link1_ptr + b * N * N + ltile, mask=lmask, other=0.0)
        ww1 = tl.load(ww1_ptr + b * N + rows, mask=rmask, other=0.0)
        m1_inv = row_inv_norms(M1, eps)
        # ---- read heads: r = w^r M_t, the mode mix, content reads on M_t, temporal reads through L_t
        for r in tl.static_range(R):
            wr1 = tl.load(rw1_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0)
            gr = tl.load(g_reads_ptr + (b * R + r) * W + cols, mask=cmask, other=0.0)
            gwr = tl.load(g_rw1_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0) + tl.sum(gr[None, :] * M1, 1)
            gM1 += wr1[:, None] * gr[None, :]
            o = (5 + 4 * r) * N
            cr = tl.load(work + o + rows, mask=rmask, other=0.0)
            sim_r = tl.load(work + o + N + rows, mask=rmask, other=0.0)
            fwd = tl.load(work + o + 2 * N + rows, mask=rmask, other=0.0)
            bwd = tl.load(work + o + 3 * N + rows, mask=rmask, other=0.0)
            m0 = tl.load(x + o_modes + 3 * r)
            m1 = tl.load(x + o_modes + 3 * r + 1)
            m2 = tl.load(x + o_modes + 3 * r + 2)
            mx = tl.maximum(tl.maximum(m0, m1), m2)
            e0, e1, e2 = tl.exp(m0 - mx), tl.exp(m1 - mx), tl.exp(m2 - mx)
            tot = e0 + e1 + e2
            pi0, pi1, pi2 = e0 / tot, e1 / tot, e2 / tot
            gp0 = tl.sum(bwd * gwr, 0)
            gp1 = tl.sum(cr * gwr, 0)
            gp2 = tl.sum(fwd * gwr, 0)
            dot = gp0 * pi0 + gp1 * pi1 + gp2 * pi2
            tl.store(gx + o_modes + 3 * r, pi0 * (gp0 - dot))
            tl.store(gx + o_modes + 3 * r + 1, pi1 * (gp1 - dot))
            tl.store(gx + o_modes + 3 * r + 2, pi2 * (gp2 - dot))
            g_bwd = pi0 * gwr
            g_fwd = pi2 * gwr
            kr = tl.load(x + r * W + cols, mask=cmask, other=0.0)
            beta_x = tl.load(x + o_plus + r)
            g_kr, g_beta, gM_c = content_bwd(pi1 * gwr, cr, sim_r, M1, m1_inv, kr, 1.0 + softplus(beta_x), eps)
            gM1 += gM_c
            tl.store(gx + r * W + cols, g_kr, mask=cmask)
            tl.store(gx + o_plus + r, g_beta * softplus_grad(beta_x))
            wr0 = tl.load(rw_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0)
            G += g_fwd[:, None] * wr0[None, :] + wr0[:, None] * g_bwd[None, :]
            # dL/dw^r_{t-1} from the temporal reads (the free gate's part is added below)
            g_rw0 = tl.sum(g_fwd[:, None] * L1, 0) + tl.sum(L1 * g_bwd[None, :], 1)
            tl.store(g_rw_ptr + (b * R + r) * N + rows, g_rw0, mask=rmask)
        G = tl.where(rows[:, None] == rows[None, :], 0.0, G)
        # ---- precedence p_t = (1 - sum w) p + w
        p = tl.load(p_ptr + b * N + rows, mask=rmask, other=0.0)
        g_p1 = tl.load(g_p1_ptr + b * N + rows, mask=rmask, other=0.0)
        g_p = (1.0 - tl.sum(ww1, 0)) * g_p1
        g_ww = g_p1 - tl.sum(g_p1 * p, 0)
        # ---- links L_t = (1 - w_i - w_j) L + w_i p_j
        L = tl.load(link_ptr + b * N * N + ltile, mask=lmask, other=0.0)
        gl = G * L
        g_ww += tl.sum(G * p[None, :], 1) - tl.sum(gl, 1) - tl.sum(gl, 0)
        g_p += tl.sum(ww1[:, None] * G, 0)
        tl.store(g_link_ptr + b * N * N + ltile, (1.0 - ww1[:, None] - ww1[None, :]) * G, mask=lmask)
        tl.store(g_p_ptr + b * N + rows, g_p, mask=rmask)
        # ---- psi (recomputed) and the memory write
        psi = tl.zeros_like(p) + 1.0
        for r in tl.static_range(R):
            f_r = sigmoid(tl.load(x + o_sig + W + r))
            psi = psi * (1.0 - f_r * tl.load(rw_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0))
        M = tl.load(mem_ptr + b * N * W + tile, mask=tmask, other=0.0)
        e = sigmoid(tl.load(x + o_sig + cols, mask=cmask, other=0.0))
        v = tl.load(x + R * W + W + cols, mask=cmask, other=0.0)
        gmm = gM1 * M
        gmm_e = tl.sum(gmm * e[None, :], 1)
        if ERASE_FREED:
            g_ww += tl.sum(v[None, :] * gM1, 1) - psi * gmm_e
            g_e = -tl.sum((ww1 * psi)[:, None] * gmm, 0)
            g_psi = tl.sum(gmm, 1) - ww1 * gmm_e
            gM = psi[:, None] * (gM1 - ww1[:, None] * (gM1 * e[None, :]))
        else:
            g_ww += tl.sum(v[None, :] * gM1, 1) - gmm_e
            g_e = -tl.sum(ww1[:, None] * gmm, 0)
            g_psi = tl.zeros_like(psi)
            gM = gM1 - ww1[:, None] * (gM1 * e[None, :])
        tl.store(gx + R * W + W + cols, tl.sum(ww1[:, None] * gM1, 0), mask=cmask)  # dL/dv
        tl.store(gx + o_sig + cols, g_e * e * (1.0 - e), mask=cmask)
        g_ww += tl.load(g_ww1_ptr + b * N + rows, mask=rmask, other=0.0)
        # ---- write weighting w = g^w (c + g^a (a - c))
        s = tl.load(work + rows, mask=rmask, other=1.0)
        P = tl.load(work + N + rows, mask=rmask, other=0.0)
        alloc = tl.load(work + 2 * N + rows, mask=rmask, other=0.0)
        cw = tl.load(work + 3 * N + rows, mask=rmask, other=0.0)
        sim_w = tl.load(work + 4 * N + rows, mask=rmask, other=0.0)
        g_a = sigmoid(tl.load(x + o_sig + W + R))
        g_w = sigmoid(tl.load(x + o_sig + W + R + 1))
        g_ww = tl.where(rmask, g_ww, 0.0)
        mix = cw + g_a * (alloc - cw)
        g_gw = tl.sum(g_ww * mix, 0)
        g_mix = g_ww * g_w
        g_ga = tl.sum(g_mix * (alloc - cw), 0)
        g_alloc = g_mix * g_a
        tl.store(gx + o_sig + W + R, g_ga * g_a * (1.0 - g_a))
        tl.store(gx + o_sig + W + R + 1, g_gw * g_w * (1.0 - g_w))
        kw = tl.load(x + R * W + cols, mask=cmask, other=0.0)
        beta_x = tl.load(x + o_plus + R)
        m_inv = row_inv_norms(M, eps)
        g_kw, g_beta, gM_c = content_bwd(g_mix - g_alloc, cw, sim_w, M, m_inv, kw, 1.0 + softplus(beta_x), eps)
        tl.store(g_mem_ptr + b * N * W + tile, gM + gM_c, mask=tmask)
        tl.store(gx + R * W + cols, g_kw, mask=cmask)
        tl.store(gx + o_plus + R, g_beta * softplus_grad(beta_x))
        # ---- allocation: dL/ds_j = -g_j P_j + (1/s_j) sum_{k after j} g_k a_k
        ga_a = g_alloc * alloc
        tail = tl.sum(tl.where(_before(s, rows, rmask), ga_a[None, :], 0.0), 1)
        g_u1 = (tail / s - g_alloc * P) * (1.0 - eps) + tl.load(g_u1_ptr + b * N + rows, mask=rmask, other=0.0)
        # ---- usage u_t = (u + w - u w) psi (w = w^w_{t-1}, a constant)
        u = tl.load(u_ptr + b * N + rows, mask=rmask, other=0.0)
        ww0 = tl.load(ww_ptr + b * N + rows, mask=rmask, other=0.0)
        g_psi += g_u1 * (u + ww0 - u * ww0)
        tl.store(g_u_ptr + b * N + rows, g_u1 * psi * (1.0 - ww0), mask=rmask)
        # ---- psi = prod_r q_r, q_r = 1 - f^r w^r_{t-1}: dpsi/dq_r = prod_{k != r} q_k
        tl.debug_barrier()  # the temporal part of dL/dw^r_{t-1} is in g_rw before it is read back
        for r in tl.static_range(R):
            others = tl.zeros_like(psi) + 1.0
            for k in tl.static_range(R):
                if k != r:
                    f_k = sigmoid(tl.load(x + o_sig + W + k))
                    others = others * (1.0 - f_k * tl.load(rw_ptr + (b * R + k) * N + rows, mask=rmask, other=0.0))
            g_q = g_psi * others
            f_r = sigmoid(tl.load(x + o_sig + W + r))
            wr0 = tl.load(rw_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0)
            tl.store(gx + o_sig + W + r, -tl.sum(g_q * wr0, 0) * f_r * (1.0 - f_r))
            g_rw0 = tl.load(g_rw_ptr + (b * R + r) * N + rows, mask=rmask, other=0.0) - g_q * f_r
            tl.store(g_rw_ptr + (b * R + r) * N + rows, g_rw0, mask=rmask)


def _meta(N: int, W: int) -> dict:
    BN, BW = triton.next_power_of_2(N), triton.next_power_of_2(W)
    # warps by the elements a program holds (the [N, N] link tile and the [N, W] memory), chosen so that the float32
    # kernels spill least when compiled for sm_90 (scripts/triton_compile_check.py, docs/gpu.md)
    held = BN * max(BN, BW) + BN * BW
    return dict(BN=BN, BW=BW, num_warps=4 if held <= 6144 else 8 if held <= 12288 else 16)


def access_forward(raw, memory, usage, link, precedence, read_w, write_w, erase_freed: bool, R: int, W: int):
    """Triton counterpart of ``memory_cores.dnc._access_forward``: the access state at t (``(M_t, u_t, L_t, p_t,
    w^r_t, w^w_t [B, 1, N], r_t)``) and what :func:`access_backward` needs. Shapes: ``raw`` ``[B, I]``, memory
    ``[B, N, W]``, usage and precedence ``[B, N]``, link ``[B, N, N]``, read_w ``[B, R, N]``, write_w ``[B, 1, N]``;
    float32 or float64, ``N <= MAX_SLOTS``."""
    check_inputs(memory.device, memory.dtype)
    B, N, _ = memory.shape
    if N > MAX_SLOTS:
        raise ValueError(f"the Triton DNC kernels take num_slots <= {MAX_SLOTS}, got {N}")
    raw, memory, usage, link, precedence, read_w, write_w = (
        t.contiguous() for t in (raw, memory, usage, link, precedence, read_w, write_w)
    )
    mem1, link1 = torch.empty_like(memory), torch.empty_like(link)
    u1, p1 = torch.empty_like(usage), torch.empty_like(precedence)
    wr1, ww1 = torch.empty_like(read_w), torch.empty_like(write_w)
    reads = memory.new_empty(B, R, W)
    work = memory.new_empty(B, _WORK_FIXED + 4 * R, N)
    if B:
        _dnc_access_fwd[(B,)](
            raw, memory, usage, link, precedence, read_w, write_w, mem1, u1, link1, p1, wr1, ww1, reads, work, EPS,
            ERASE_FREED=bool(erase_freed), N=N, W=W, R=R, I=raw.shape[1], **_meta(N, W),
        )
    saved = (raw, memory, usage, link, precedence, read_w, write_w, mem1, link1, wr1, ww1, work)
    return (mem1, u1, link1, p1, wr1, ww1, reads), saved


def access_backward(saved, erase_freed: bool, R: int, W: int, g_mem1, g_u1, g_link1, g_p1, g_wr1, g_ww1, g_reads,
                    scratch=None):
    """Triton counterpart of ``memory_cores.dnc._access_backward``: gradients w.r.t. the access step's outputs
    (None for none) -> ``(dL/draw, dL/dM, dL/du, dL/dL, dL/dp, dL/dw^r)`` at t-1 (w^w_{t-1} gets none: the usage
    update treats it as a constant). ``scratch`` is accepted for the signature and not used (fresh outputs)."""
    raw, memory, usage, link, precedence, read_w, write_w, mem1, link1, wr1, ww1, work = saved
    B, N, _ = memory.shape
    refs = (mem1, usage, link1, precedence, wr1, ww1, memory.new_empty(B, R, W))
    grads = [
        torch.zeros_like(ref) if g is None else g.contiguous()
        for g, ref in zip((g_mem1, g_u1, g_link1, g_p1, g_wr1, g_ww1, g_reads), refs)
    ]
    g_raw = torch.empty_like(raw)
    g_mem, g_u, g_link = torch.empty_like(memory), torch.empty_like(usage), torch.empty_like(link)
    g_p, g_rw = torch.empty_like(precedence), torch.empty_like(read_w)
    if B:
        meta = _meta(N, W)
        held = meta["BN"] * max(meta["BN"], meta["BW"]) + meta["BN"] * meta["BW"]
        meta["num_warps"] = 4 if held <= 1536 else 8 if held <= 6144 else 16
        _dnc_access_bwd[(B,)](
            raw, memory, usage, link, precedence, read_w, write_w, mem1, link1, wr1, ww1, work, *grads,
            g_raw, g_mem, g_u, g_link, g_p, g_rw, EPS,
            ERASE_FREED=bool(erase_freed), N=N, W=W, R=R, I=raw.shape[1], **meta,
        )
    return g_raw, g_mem, g_u, g_link, g_p, g_rw


class TritonAccess(torch.autograd.Function):
    """One DNC access step through the kernels: ``apply(raw, M, u, L, p, w^r, w^w, erase_freed, R, W)`` -> the
    seven access-state tensors at t (:class:`memory_cores.dnc.DNCAccessState` order)."""

    @staticmethod
    def forward(ctx, raw, memory, usage, link, precedence, read_w, write_w, erase_freed, R, W):  # type: ignore[override]
        outputs, saved = access_forward(raw, memory, usage, link, precedence, read_w, write_w, erase_freed, R, W)
        ctx.set_materialize_grads(False)
        ctx.meta = (erase_freed, R, W)
        ctx.save_for_backward(*saved)
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mem1, g_u1, g_link1, g_p1, g_wr1, g_ww1, g_reads):  # type: ignore[override]
        erase_freed, R, W = ctx.meta
        grads = access_backward(ctx.saved_tensors, erase_freed, R, W, g_mem1, g_u1, g_link1, g_p1, g_wr1, g_ww1,
                                g_reads)
        return (*grads, None, None, None, None)


def access_step(raw: Tensor, state, read_heads: int, erase_freed: bool = False):
    """``memory_cores.dnc.fused_access_step`` through the kernels: ``raw`` ``[B, I]`` and the access state at t-1
    -> the access state at t (a :class:`memory_cores.dnc.DNCAccessState`)."""
    W = state.memory.shape[-1]
    return type(state)(*TritonAccess.apply(raw, *state[:6], erase_freed, read_heads, W))
