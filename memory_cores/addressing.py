"""Addressing math shared by the NTM and the DNC, in the papers' notation.

Shapes: ``B`` batch, ``H`` heads, ``N`` memory slots, ``W`` word width. Every function is batched over ``B`` and
``H`` (no Python loop over either) and safe at the numerical traps listed in REFERENCE.md: epsilon inside square
roots, clamps before fractional powers, epsilons in normalising denominators.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


def _cosine_forward(memory: Tensor, keys: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(sim [B, H, N], 1/|k| [B, H], 1/|M(i)| [B, N])`` with |x| = sqrt(sum x^2 + eps)."""
    k_inv = torch.rsqrt(keys.pow(2).sum(-1) + eps)  # 1/|k|: [B, H]
    m_inv = torch.rsqrt(memory.pow(2).sum(-1) + eps)  # 1/|M(i)|: [B, N]
    # normalise the small [B, H, N] product instead of the [B, N, W] memory
    sim = torch.bmm(keys, memory.transpose(1, 2)) * k_inv.unsqueeze(-1) * m_inv.unsqueeze(1)
    return sim, k_inv, m_inv


class _CosineSimilarity(torch.autograd.Function):
    """Cosine similarity with a hand-written backward: two ``baddbmm`` instead of about ten autograd nodes.

    With K = k.M(i) a(k) b(i), a = (|k|^2 + eps)^(-1/2), b = (|M(i)|^2 + eps)^(-1/2), and g = dL/dK:
    dL/dM(i) = sum_h g_hi a_h b_i k_h - (sum_h g_hi K_hi) b_i^2 M(i), and symmetrically for k.
    """

    @staticmethod
    def forward(ctx, memory: Tensor, keys: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        sim, k_inv, m_inv = _cosine_forward(memory, keys, eps)
        ctx.save_for_backward(memory, keys, k_inv, m_inv, sim)
        return sim

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        memory, keys, k_inv, m_inv, sim = ctx.saved_tensors
        g_sim = grad * sim  # [B, H, N]
        g_dot = grad * k_inv.unsqueeze(-1) * m_inv.unsqueeze(1)  # dL/d(k.M(i)): [B, H, N]
        grad_memory = grad_keys = None
        if ctx.needs_input_grad[0]:
            c = g_sim.sum(1) * m_inv.square()  # [B, N]
            grad_memory = torch.baddbmm(memory * (-c).unsqueeze(-1), g_dot.transpose(1, 2), keys)  # [B, N, W]
        if ctx.needs_input_grad[1]:
            c = g_sim.sum(-1) * k_inv.square()  # [B, H]
            grad_keys = torch.baddbmm(keys * (-c).unsqueeze(-1), g_dot, memory)  # [B, H, W]
        return grad_memory, grad_keys, None


def cosine_similarity(memory: Tensor, keys: Tensor, eps: float = EPS) -> Tensor:
    """K[k, M(i)] = k . M(i) / (|k| |M(i)|) with |x| = sqrt(sum x^2 + eps).

    The epsilon sits inside the square root: a plain sqrt has an infinite derivative at a zero row (zero memory),
    and ``dot / (|a||b| + eps)`` gives gradients around 1e6 there.

    The backward is hand-written (about twice as fast as autograd's on CPU) and supports first derivatives only
    (``create_graph=True`` through it raises).

    Args:
        memory: ``[B, N, W]``.
        keys: ``[B, H, W]``.
    Returns:
        ``[B, H, N]`` similarities in [-1, 1].
    """
    if keys.dtype != memory.dtype:
        dtype = torch.promote_types(keys.dtype, memory.dtype)
        memory, keys = memory.to(dtype), keys.to(dtype)
    if torch.is_grad_enabled() and (memory.requires_grad or keys.requires_grad):
        return _CosineSimilarity.apply(memory, keys, eps)
    return _cosine_forward(memory, keys, eps)[0]


def content_weighting(
    memory: Tensor, keys: Tensor, strengths: Tensor, mask: Tensor | None = None, eps: float = EPS
) -> Tensor:
    """Content addressing: w^c(i) = softmax_i(beta * K[k, M(i)]) (NTM eq. 5, DNC "content-based addressing").

    Args:
        memory: ``[B, N, W]``.
        keys: ``[B, H, W]`` k.
        strengths: ``[B, H]`` beta >= 0 (the caller applies e.g. softplus / oneplus).
        mask: optional ``[B, H, W]`` in [0, 1]: masked content addressing (Csordas and Schmidhuber 2019), the
            similarity compares ``k * mask`` with ``M(i) * mask``.
    Returns:
        ``[B, H, N]`` weightings, each row summing to one.
    """
    if mask is not None:
        keys = keys * mask
        # M(i) * mask_h for every head: [B, H, N, W]; compared row by row
        masked_mem = memory.unsqueeze(1) * mask.unsqueeze(2)
        k_norm = torch.sqrt(keys.pow(2).sum(-1, keepdim=True) + eps)  # [B, H, 1]
        m_norm = torch.sqrt(masked_mem.pow(2).sum(-1) + eps)  # [B, H, N]
        sim = (masked_mem * (keys / k_norm).unsqueeze(2)).sum(-1) / m_norm
    else:
        sim = cosine_similarity(memory, keys, eps)
    return torch.softmax(strengths.unsqueeze(-1) * sim, dim=-1)


def interpolate(w_content: Tensor, w_prev: Tensor, gate: Tensor) -> Tensor:
    """NTM eq. 7: w^g = g w^c + (1 - g) w_{t-1}. ``gate``: ``[B, H]`` in (0, 1); weights ``[B, H, N]``."""
    # lerp(start, end, g) = start + g (end - start): one fused op instead of three
    return torch.lerp(w_prev, w_content, gate.unsqueeze(-1))


def shift_offsets(max_shift: int) -> list[int]:
    """The allowed integer shifts ``-max_shift .. +max_shift`` in the order of the shift distribution's entries."""
    return list(range(-max_shift, max_shift + 1))


def circular_shift(w: Tensor, shift: Tensor) -> Tensor:
    """NTM eq. 8: w~(i) = sum_j w^g(j) s(i - j), circular over the N slots, batched.

    Args:
        w: ``[B, H, N]`` weightings.
        shift: ``[B, H, 2K+1]`` distribution over shifts ``-K..K`` (entry ``j`` is shift ``j - K``).
    Returns:
        ``[B, H, N]``.
    """
    B, H, N = w.shape
    K2 = shift.shape[-1]
    K = K2 // 2
    if K2 % 2 != 1:
        raise ValueError(f"the shift distribution must have an odd size 2K+1, got {K2}")
    if K2 > N:
        raise ValueError(f"shift range 2K+1={K2} exceeds the number of slots N={N}")
    # w~(i) = sum_d s(d) w(i - d) for d = -K..K; roll(w, d)[i] = w(i - d). 2K+1 rolls and fused multiply-adds over
    # the whole batch (cheaper forward and backward than a padded unfold, and linear in N).
    s = shift.unsqueeze(-2).unbind(-1)  # 2K+1 tensors [B, H, 1]; entry j is shift d = j - K
    out = w * s[K]  # d = 0
    for j in range(K2):
        if j != K:
            out = torch.addcmul(out, torch.roll(w, j - K, dims=-1), s[j])
    return out


def sharpen(w: Tensor, gamma: Tensor, eps: float = EPS) -> Tensor:
    """NTM eq. 9: w(i) = w~(i)^gamma / sum_j w~(j)^gamma, gamma >= 1.

    Computed in log space as ``softmax_i(gamma log(w~(i) + eps))``, which is the same ratio but never underflows:
    a plain ``w^gamma / (sum w^gamma + eps)`` loses its normalisation once every ``w~(i)^gamma`` is below eps (a
    uniform weighting over 64 slots with gamma = 5 summed to 0.06). The clamp keeps tiny negative rounding errors
    from the shift out of the log, and the epsilon keeps ``log`` and its gradient finite at zero.

    Args:
        w: ``[B, H, N]``; gamma: ``[B, H]``.
    Returns:
        ``[B, H, N]``, each row summing to one.
    """
    return torch.softmax(gamma.unsqueeze(-1) * torch.log(w.clamp(min=0.0) + eps), dim=-1)


def allocation_weighting(usage: Tensor, eps: float = EPS) -> Tensor:
    """DNC allocation: sort usage ascending (free list phi, ties by slot index), a[phi_j] = (1 - u[phi_j])
    prod_{i<j} u[phi_i].

    Usage is first mapped to ``eps + (1 - eps) u`` so that the product never collapses to exactly zero. Gradients
    flow through the sorted values, not through the permutation.

    Args:
        usage: ``[B, N]`` in [0, 1].
    Returns:
        ``[B, N]`` allocation weighting, summing to at most one.
    """
    u = eps + (1.0 - eps) * usage
    # ascending: the least used slot first; stable, so that equal usages (every slot at the start) are taken in slot
    # order on every device (torch's default sort leaves ties in an order that differs by size and device)
    sorted_u, phi = torch.sort(u, dim=-1, stable=True)
    # exclusive cumulative product prod_{i<j} u[phi_i]
    excl = torch.cumprod(F.pad(sorted_u[..., :-1], (1, 0), value=1.0), dim=-1)
    sorted_a = (1.0 - sorted_u) * excl
    return torch.zeros_like(sorted_a).scatter(-1, phi, sorted_a)  # back to slot order (inverse permutation)


def read_memory(memory: Tensor, weights: Tensor) -> Tensor:
    """r = sum_i w(i) M(i). ``memory``: ``[B, N, W]``, ``weights``: ``[B, R, N]`` -> ``[B, R, W]``."""
    return torch.bmm(weights, memory)


def _erase_add_forward(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> tuple[Tensor, Tensor]:
    update = torch.addcmul(add, memory, erase, value=-1.0)  # a - M(i) e: [B, N, W]
    return torch.addcmul(memory, weights.transpose(1, 2), update), update  # M(i) + w(i) (a - M(i) e)


class _EraseAdd(torch.autograd.Function):
    """One-head erase and add, M' = M + w (a - M e), with a hand-written backward: five passes over ``[B, N, W]``
    instead of about ten (autograd's addcmul backward multiplies by the -1 separately and keeps every piece)."""

    @staticmethod
    def forward(ctx, memory, weights, erase, add):  # type: ignore[override]
        out, update = _erase_add_forward(memory, weights, erase, add)
        ctx.save_for_backward(memory, weights, erase, update)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        memory, weights, erase, update = ctx.saved_tensors
        w_col = weights.transpose(1, 2)  # [B, N, 1]
        grad_update = grad * w_col  # dL/d(a - M e) = w(i) G(i): [B, N, W]
        need = ctx.needs_input_grad
        grad_memory = torch.addcmul(grad, grad_update, erase, value=-1.0) if need[0] else None  # G (1 - w e)
        grad_weights = (grad * update).sum(-1).unsqueeze(1) if need[1] else None  # [B, 1, N]
        grad_erase = -torch.bmm(weights, grad * memory) if need[2] else None  # -sum_i w(i) G(i) M(i): [B, 1, W]
        grad_add = grad_update.sum(1, keepdim=True) if need[3] else None  # [B, 1, W]
        return grad_memory, grad_weights, grad_erase, grad_add


def erase_and_add(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """NTM eqs. 3-4 / DNC write, for H write heads applied together:
    M(i) <- M(i) * prod_h (1 - w_h(i) e_h) + sum_h w_h(i) a_h.

    With one head the backward is hand-written (first derivatives only: ``create_graph=True`` through it raises).

    Args:
        memory: ``[B, N, W]``; weights: ``[B, H, N]``; erase: ``[B, H, W]`` in [0, 1]; add: ``[B, H, W]``.
    """
    if weights.shape[1] == 1:
        # one head: M(i) (1 - w(i) e) + w(i) a = M(i) + w(i) (a - M(i) e); two passes over [B, N, W]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (memory, weights, erase, add)):
            return _EraseAdd.apply(memory, weights, erase, add)
        return _erase_add_forward(memory, weights, erase, add)[0]
    keep = torch.prod(1.0 - weights.unsqueeze(-1) * erase.unsqueeze(2), dim=1)  # [B, N, W]
    return memory * keep + torch.bmm(weights.transpose(1, 2), add)


def oneplus(x: Tensor) -> Tensor:
    """1 + softplus(x): the DNC's map to [1, inf) (key strengths, sharpening exponents)."""
    return 1.0 + F.softplus(x)
