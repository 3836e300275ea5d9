"""What the Triton kernels of the memory cores share (:mod:`memory_cores.ntm_triton`, :mod:`memory_cores.dnc_triton`).

Triton is optional: it comes with torch's CUDA wheels; on a CPU-only install ``pip install triton`` gives its
interpreter, which runs the same kernel code on CPU tensors when ``TRITON_INTERPRET=1`` is set before the kernel
modules are imported (the tests do this). Elements shared here: :func:`available`, and ``@triton.jit`` helpers in the
papers' notation: the squashing functions with torch's exact conventions and content addressing (cosine similarity
with the epsilon inside the square roots, then a softmax with strength beta) forward and backward, for one row's
``[N, W]`` memory tile held by one program.
"""

from __future__ import annotations

import os

import torch

try:  # optional: see the module docstring
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None


def available(device: torch.device | str) -> str | None:
    """``None`` if Triton kernels can run on ``device``, else the reason in one line."""
    if triton is None:
        return "Triton is not installed (pip install triton; it comes with torch's CUDA wheels)"
    device = torch.device(device)
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device.type == "cuda" or (device.type == "cpu" and interpret):
        return None
    return (
        f"the Triton kernels run on CUDA tensors (or on the CPU under TRITON_INTERPRET=1, for tests), "
        f"got device {device.type!r}"
    )


def check_inputs(device: torch.device, dtype: torch.dtype) -> None:
    """Raise the one-line error of :func:`available`, or a TypeError for dtypes other than float32/float64."""
    reason = available(device)
    if reason is not None:
        raise RuntimeError(reason)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the Triton kernels take float32 or float64, got {dtype}")


if triton is not None:

    @triton.jit
    def softplus(x):
        """F.softplus(x) (beta 1, threshold 20): x above 20, else log(1 + e^x) in its stable form."""
        sp = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
        return tl.where(x > 20.0, x, sp)

    @triton.jit
    def softplus_grad(x):
        """d softplus / dx as torch computes it: 1 above the threshold, else sigmoid(x)."""
        return tl.where(x > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-x)))

    @triton.jit
    def sigmoid(x):
        """1 / (1 + e^-x) without overflow: e^-|x| is at most 1."""
        e = tl.exp(-tl.abs(x))
        return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    @triton.jit
    def memory_tile(N: tl.constexpr, W: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr):
        """Indices of one row's ``[N, W]`` memory held in a ``[BN, BW]`` block (powers of two): ``(rows [BN], cols [BW],
        rmask, cmask, tile, tmask)`` with ``tile`` the offsets ``i W + j`` and ``tmask`` the entries inside ``[N, W]``."""
        rows = tl.arange(0, BN)
        cols = tl.arange(0, BW)
        rmask = rows < N
        cmask = cols < W
        return rows, cols, rmask, cmask, rows[:, None] * W + cols[None, :], rmask[:, None] & cmask[None, :]

    @triton.jit
    def row_inv_norms(M, eps):
        """``1 / |M(i)|`` with ``|x| = sqrt(x.x + eps)`` for a tile ``[BN, BW]`` -> ``[BN]``."""
        return 1.0 / tl.sqrt(tl.sum(M * M, 1) + eps)

    @triton.jit
    def content_fwd(M, m_inv, k, beta, rmask, eps):
        """Content weighting ``w(i) = softmax_i(beta K[k, M(i)])`` of one head: ``M`` ``[BN, BW]``, ``m_inv``
        ``[BN]`` (:func:`row_inv_norms`), ``k`` ``[BW]``, scalar ``beta`` -> ``(w, K)``, both ``[BN]`` (w 0 on
        padding)."""
        k_inv = 1.0 / tl.sqrt(tl.sum(k * k, 0) + eps)
        sim = tl.sum(M * k[None, :], 1) * k_inv * m_inv
        z = tl.where(rmask, beta * sim, float("-inf"))
        e = tl.exp(z - tl.max(z, 0))
        return e / tl.sum(e, 0), sim

    @triton.jit
    def content_bwd(gw, w, sim, M, m_inv, k, beta, eps):
        """Backward of :func:`content_fwd` given ``dL/dw`` -> ``(dL/dk [BW], dL/dbeta, dL/dM [BN, BW])``.

        With K = k.M(i) a b, a = 1/|k|, b = 1/|M(i)|: dK/dk = a b M(i) - K a^2 k, dK/dM(i) = a b k - K b^2 M(i)."""
        gz = w * (gw - tl.sum(gw * w, 0))  # softmax backward
        g_beta = tl.sum(gz * sim, 0)
        gsim = beta * gz
        k_inv = 1.0 / tl.sqrt(tl.sum(k * k, 0) + eps)
        gdot = gsim * k_inv * m_inv
        gk = tl.sum(gdot[:, None] * M, 0) - tl.sum(gsim * sim, 0) * k_inv * k_inv * k
        gM = gdot[:, None] * k[None, :] - (gsim * sim * m_inv * m_inv)[:, None] * M
        return gk, g_beta, gM
