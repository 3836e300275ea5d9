"""Associative LSTM (Danihelka, Wayne, Uria, Kalchbrenner, Graves 2016, arXiv:1602.03032).

An LSTM whose cell is a *holographic* associative memory: complex-valued key/value pairs are bound by element-wise
complex multiplication and summed into the cell, and read back by multiplying the cell with a read key. Redundant
copies of the cell, each seeing the keys through its own fixed random permutation, make the read-out noise average
out.

Notation (paper -> code):

* ``N_h`` real hidden units = ``N_h / 2`` complex units; a complex vector ``z`` of ``K = N_h / 2`` units is stored as
  ``N_h`` reals, real parts first: ``z = [Re z_1 .. Re z_K, Im z_1 .. Im z_K]`` ("real half, imaginary half").
* ``(*)`` element-wise complex multiplication (the paper's circled asterisk); ``conj`` complex conjugate.
* ``bound(z) = z / max(1, |z|)`` with ``|z|`` the complex modulus per unit: identity inside the unit disk, radial
  projection onto the unit circle outside (paper, section "Associative LSTM").
* ``N_copies`` copies ``c_s`` of the cell, ``P_s`` a constant random permutation of the ``K`` complex units for copy
  ``s`` (the same permutation moves a unit's real and imaginary part together) (paper, "Redundant Associative
  Memory").

One step of the core (paper, section "Associative LSTM"; ``[x_t, h_{t-1}]`` through one fused linear map)::

    g_f, g_i, g_o           = sigmoid(W_g [x_t, h_{t-1}] + b_g)       # one gate per complex unit, [B, K] each
    r_i, r_o, u             = bound(W_r [x_t, h_{t-1}] + b_r)         # input key, output key, update, [B, N_h] each
    c_{s,t} = g_f * c_{s,t-1} + (P_s r_i) (*) (g_i * u)               # write, every copy s
    h_t     = g_o * bound( 1/N_copies sum_s (P_s r_o) (*) c_{s,t} )   # read: mean over copies

Retrieval rule (paper, "Holographic Reduced Representations"): an item ``x_k`` stored as ``c = sum_k r_k (*) x_k``
is read back with the inverse key, ``r_k^{-1} (*) c = x_k + noise``; for a key of unit modulus the inverse is the
complex conjugate, ``conj(r_k)``. In the Associative LSTM the output key ``r_o`` is a second learned key, not an
explicit conjugate of ``r_i``: to read what was written the network learns ``r_o ~ conj(r_i)`` (conjugation is a
linear map, negating the imaginary half, so it is absorbed by the linear layer). :func:`associative_read` with
``conj(P_s r)`` keys is the textbook retrieval and is what ``tests/test_alstm.py`` checks.

Permutations: the paper describes ``P_s`` as a constant random permutation specific to each copy, and singles out
no copy as the identity (a public Theano port also draws every copy at random); this core does the same: every copy
random, from a private generator seeded by ``seed_permutations``, distinct across copies whenever
``K! >= N_copies``. With one copy the permutation changes nothing a model can express (it is absorbed by the rows
of the linear layer). The permutations are a persistent buffer: they are saved in the ``state_dict``, restored by
``load_state_dict`` (a reload into a module built with another seed gives identical outputs) and follow the
module through ``.to()``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Core, LearnedInit


# ---------------------------------------------------------------------------------------------- complex helpers
def complex_mul(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise complex product ``a (*) b`` of vectors stored as [real half, imaginary half].

    ``(ar + i ai)(br + i bi) = (ar br - ai bi) + i (ar bi + ai br)``.

    Args:
        a, b: ``[..., 2K]`` (broadcastable), ``K`` complex units each.
    Returns:
        ``[..., 2K]``.
    """
    ar, ai = a.chunk(2, dim=-1)
    br, bi = b.chunk(2, dim=-1)
    return torch.cat([ar * br - ai * bi, ar * bi + ai * br], dim=-1)


def complex_conj(a: Tensor) -> Tensor:
    """Complex conjugate of ``[..., 2K]`` stored as [real half, imaginary half]: the imaginary half negated."""
    ar, ai = a.chunk(2, dim=-1)
    return torch.cat([ar, -ai], dim=-1)


def complex_modulus(a: Tensor) -> Tensor:
    """``|a_k| = sqrt(Re a_k^2 + Im a_k^2)`` per complex unit: ``[..., 2K]`` -> ``[..., K]``."""
    ar, ai = a.chunk(2, dim=-1)
    return torch.sqrt(ar * ar + ai * ai)


def to_complex(a: Tensor) -> Tensor:
    """[real half, imaginary half] ``[..., 2K]`` -> complex ``[..., K]`` (exact; one copy, no per-half selects)."""
    K = a.shape[-1] // 2
    return torch.view_as_complex(a.unflatten(-1, (2, K)).transpose(-1, -2).contiguous())


def to_halves(z: Tensor) -> Tensor:
    """Complex ``[..., K]`` -> [real half, imaginary half] ``[..., 2K]`` (exact)."""
    return torch.view_as_real(z.resolve_conj()).transpose(-1, -2).flatten(-2)


def scale_complex(z: Tensor, g: Tensor) -> Tensor:
    """``g * z`` for complex ``z`` and real ``g`` (broadcastable to ``z``'s shape), without promoting ``g`` to a
    complex tensor (a plain ``g * z`` copies ``g`` to complex first)."""
    return torch.view_as_complex(torch.view_as_real(z.resolve_conj()) * g.unsqueeze(-1))


def bound(h: Tensor) -> Tensor:
    """``bound(h) = h / max(1, |h|)`` per complex unit (paper, "Associative LSTM").

    The identity for units inside the unit disk; units outside are scaled onto the unit circle (phase kept).
    Gradients are finite everywhere, ``h = 0`` included (``max(1, .)`` passes no gradient below 1).

    Args:
        h: ``[..., 2K]`` real [real half, imaginary half], or a complex tensor ``[..., K]``.
    Returns:
        Same shape and layout, every unit's modulus ``<= 1``.
    """
    if h.is_complex():  # real arithmetic on the modulus: cheaper than abs() and a complex division
        mod2 = torch.view_as_real(h.resolve_conj()).pow(2).sum(-1)  # |h|^2, [..., K]
        return scale_complex(h, torch.rsqrt(torch.clamp(mod2, min=1.0)))
    hr, hi = h.chunk(2, dim=-1)
    d = torch.sqrt(torch.clamp(hr * hr + hi * hi, min=1.0))  # max(1, |h|), [..., K]
    return h / torch.cat([d, d], dim=-1)


def _cmul(a: Tensor, b: Tensor) -> Tensor:
    """``a (*) b`` for complex tensors or real [real half, imaginary half] tensors."""
    return a * b if a.is_complex() else complex_mul(a, b)


def permute_keys(r: Tensor, permutations: Tensor) -> Tensor:
    """``P_s r`` for every copy ``s``: ``(P_s r)_k = r_{perm_s(k)}``, real and imaginary part moving together.

    Args:
        r: ``[B, 2K]`` real [real half, imaginary half], or complex ``[B, K]``.
        permutations: ``[N_copies, K]`` long, row ``s`` a permutation of ``0..K-1``.
    Returns:
        ``[B, N_copies, 2K]`` (or complex ``[B, N_copies, K]``).
    """
    if r.is_complex():
        return r[:, permutations]
    K = permutations.shape[-1]
    return r[:, torch.cat([permutations, permutations + K], dim=-1)]


def associative_write(c: Tensor, r_in: Tensor, forget: Tensor, write: Tensor) -> Tensor:
    """``c_s <- g_f * c_s + (P_s r_i) (*) (g_i * u)`` for every copy s.

    Real [real half, imaginary half] layout (shapes below) or complex tensors with ``K`` in place of ``2K``.

    Args:
        c: ``[B, N_copies, 2K]`` cell copies c_s.
        r_in: ``[B, N_copies, 2K]`` permuted input keys P_s r_i.
        forget: ``[B, 2K]`` forget gate g_f (each complex unit's gate on both halves; real ``[B, K]`` for complex).
        write: ``[B, 2K]`` gated update g_i * u.
    Returns:
        ``[B, N_copies, 2K]`` new cell copies.
    """
    if c.is_complex():
        return scale_complex(c, forget.unsqueeze(1)) + r_in * write.unsqueeze(1)
    return forget.unsqueeze(1) * c + complex_mul(r_in, write.unsqueeze(1))


def associative_read(c: Tensor, r_out: Tensor) -> Tensor:
    """``1/N_copies sum_s (P_s r_o) (*) c_s``, before the ``bound`` and the output gate.

    Args:
        c: ``[B, N_copies, 2K]`` (or complex ``[B, N_copies, K]``).
        r_out: like ``c``, the permuted read keys P_s r_o (to retrieve an item stored under key ``r``, use
            ``conj(r)``: the inverse of a unit-modulus key).
    Returns:
        ``[B, 2K]`` (or complex ``[B, K]``).
    """
    return _cmul(r_out, c).mean(dim=1)


# ---------------------------------------------------------------------------------------------- fused cell
def _bound_scale(z: Tensor) -> tuple[Tensor, Tensor]:
    """``s = 1 / max(1, |z|)`` (real) and the mask ``|z|^2 >= 1`` where the radial part of the gradient is kept
    (the same boundary convention as ``torch.clamp``'s backward)."""
    m2 = torch.view_as_real(z).pow(2).sum(-1)
    return torch.rsqrt(torch.clamp(m2, min=1.0)), m2 >= 1.0


def _bound_backward(grad: Tensor, y: Tensor, s: Tensor, outside: Tensor) -> Tensor:
    """Gradient through ``y = z * s``, ``s = 1 / max(1, |z|)``: ``s (G - y Re(conj(y) G))`` where ``|z| >= 1``
    (the radial component removed), ``G`` inside the unit disk."""
    radial = torch.where(outside, (y.conj() * grad).real, torch.zeros_like(s))
    return scale_complex(grad - scale_complex(y, radial), s)


class _FusedCell(torch.autograd.Function):
    """One associative LSTM cell step with a hand-written backward (a handful of kernels instead of ~40 autograd
    nodes). Complex gradients follow torch's convention ``G = dL/dRe + i dL/dIm``.

    forward(pre ``[B, 9K]`` real, c ``[B, N, K]`` complex, perm ``[N, K]``, inv_perm ``[N, K]``) ->
    (h ``[B, K]`` complex, c_new ``[B, N, K]`` complex).
    """

    @staticmethod
    def forward(ctx, pre: Tensor, c: Tensor, perm: Tensor, inv_perm: Tensor) -> tuple[Tensor, Tensor]:
        B, N, K = c.shape
        g = torch.sigmoid(pre[:, : 3 * K]).view(B, 3, K)  # g_f, g_i, g_o
        kr = pre[:, 3 * K :].view(B, 3, 2, K)
        z = torch.view_as_complex(kr.transpose(-1, -2).contiguous())  # r_i, r_o, u before bound, [B, 3, K]
        s, out_k = _bound_scale(z)
        kb = scale_complex(z, s)  # bound(r_i), bound(r_o), bound(u)
        index = perm.reshape(1, 1, N * K).expand(B, 2, N * K)
        r_in, r_out = torch.gather(kb[:, :2], -1, index).view(B, 2, N, K).unbind(1)  # P_s r_i, P_s r_o
        u = kb[:, 2]
        w = scale_complex(u, g[:, 1])  # g_i * u
        c_new = scale_complex(c, g[:, 0].unsqueeze(1)) + r_in * w.unsqueeze(1)  # g_f c_s + (P_s r_i)(*)(g_i u)
        m = (r_out * c_new).mean(1)  # mean_s (P_s r_o) (*) c_s
        sm, out_m = _bound_scale(m)
        mb = scale_complex(m, sm)  # bound(m)
        h = scale_complex(mb, g[:, 2])  # g_o * bound(m)
        ctx.save_for_backward(g, s, out_k, kb, r_in, r_out, w, c, c_new, sm, out_m, mb, inv_perm)
        return h, c_new

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: Tensor | None, grad_c: Tensor | None):
        g, s, out_k, kb, r_in, r_out, w, c, c_new, sm, out_m, mb, inv_perm = ctx.saved_tensors
        B, N, K = c.shape
        if grad_h is None:
            grad_h = torch.zeros_like(mb)
        if grad_c is None:
            grad_c = torch.zeros_like(c_new)
        g_f, g_i, g_o = g.unbind(1)
        # h = g_o * mb
        d_go = (mb.conj() * grad_h).real
        d_mb = scale_complex(grad_h, g_o)
        # mb = bound(m)
        d_m = _bound_backward(d_mb, mb, sm, out_m) / N
        # m = mean_s r_out_s c_s
        d_c = grad_c + r_out.conj() * d_m.unsqueeze(1)
        d_rout = c_new.conj() * d_m.unsqueeze(1)
        # c_new = g_f c + r_in w
        d_cprev = scale_complex(d_c, g_f.unsqueeze(1))
        d_gf = (c.conj() * d_c).real.sum(1)
        d_rin = w.conj().unsqueeze(1) * d_c
        d_w = (r_in.conj() * d_c).sum(1)
        # w = g_i u
        d_gi = (kb[:, 2].conj() * d_w).real
        d_u = scale_complex(d_w, g_i)
        # undo the permutations: (P_s r)_j = r_{perm_s(j)}  =>  dr_k = sum_s d(P_s r)_{inv_s(k)}
        offset = torch.arange(N, device=inv_perm.device).unsqueeze(1) * K  # copy s lives at [s K, (s + 1) K)
        index = (inv_perm + offset).reshape(1, 1, N * K).expand(B, 2, N * K)
        d_keys = torch.gather(torch.stack([d_rin, d_rout], 1).view(B, 2, N * K), -1, index).view(B, 2, N, K).sum(2)
        d_kb = torch.cat([d_keys, d_u.unsqueeze(1)], 1)  # [B, 3, K]
        d_z = _bound_backward(d_kb, kb, s, out_k)
        d_g = torch.stack([d_gf, d_gi, d_go], 1) * g * (1 - g)  # sigmoid'
        d_kr = torch.view_as_real(d_z).transpose(-1, -2)  # [B, 3, 2, K]
        d_pre = torch.cat([d_g.reshape(B, 3 * K), d_kr.reshape(B, 6 * K)], dim=-1)
        return d_pre, d_cprev, None, None


# ---------------------------------------------------------------------------------------------- parameter counts
def alstm_param_count(input_size: int, hidden_size: int, num_copies: int = 4, learn_initial_state: bool = False) -> int:
    """Trainable parameters of :class:`AssociativeLSTMCore`.

    One linear map ``[x, h] -> (3 gates of N_h/2) + (r_i, r_o, u of N_h)`` = ``4.5 N_h`` outputs with bias:
    ``4.5 N_h (input_size + N_h + 1)``; plus ``N_h (1 + num_copies)`` for a learned initial state. The copies add
    memory, not weights (the paper's point).
    """
    n = (9 * hidden_size // 2) * (input_size + hidden_size + 1)
    if learn_initial_state:
        n += hidden_size * (1 + num_copies)
    return n


def lstm_param_count(input_size: int, hidden_size: int, num_layers: int = 1) -> int:
    """Trainable parameters of ``torch.nn.LSTM`` (two bias vectors per layer, as torch), i.e. of ``LSTMCore``."""
    n, width = 0, input_size
    for _ in range(num_layers):
        n += 4 * hidden_size * (width + hidden_size) + 8 * hidden_size
        width = hidden_size
    return n


def hidden_size_for_param_count(input_size: int, num_params: int) -> int:
    """The largest even ``hidden_size`` (N_h) whose :func:`alstm_param_count` is ``<= num_params``.

    For benchmarks at equal parameter count: ``hidden_size_for_param_count(I, lstm_param_count(I, 128))`` is the
    associative LSTM no larger than an LSTM with 128 units (about 0.94 x 128 for small inputs). Raises
    ``ValueError`` when even ``N_h = 2`` needs more parameters.
    """
    if alstm_param_count(input_size, 2) > num_params:
        raise ValueError(
            f"num_params={num_params} is below the smallest associative LSTM (hidden_size=2) for input_size="
            f"{input_size}: {alstm_param_count(input_size, 2)} parameters"
        )
    # 4.5 N^2 + 4.5 (I + 1) N - P = 0, then fix up rounding by stepping over even values.
    a, b = 4.5, 4.5 * (input_size + 1)
    n = int((-b + math.sqrt(b * b + 4 * a * num_params)) / (2 * a))
    n = max(2, n - n % 2)
    while alstm_param_count(input_size, n + 2) <= num_params:
        n += 2
    while n > 2 and alstm_param_count(input_size, n) > num_params:
        n -= 2
    return n


def matching_hidden_size(input_size: int, lstm_hidden_size: int = 128) -> int:
    """N_h of the associative LSTM with at most as many parameters as an ``LSTMCore(hidden_size=lstm_hidden_size)``."""
    return hidden_size_for_param_count(input_size, lstm_param_count(input_size, lstm_hidden_size))


# ---------------------------------------------------------------------------------------------- the core
class ALSTMState(NamedTuple):
    """``h``: ``[B, N_h]`` hidden output h_{t-1} (real half, imaginary half); ``c``: ``[B, N_copies, N_h]`` the cell
    copies c_s (same layout)."""

    h: Tensor
    c: Tensor


class ALSTMGates(NamedTuple):
    """Activated gates and keys of one step. Gates are per complex unit, ``[B, N_h/2]``; keys and the update are
    complex vectors of modulus <= 1 per unit, ``[B, N_h]``."""

    forget: Tensor  # g_f [B, K]
    input: Tensor  # g_i [B, K]
    output: Tensor  # g_o [B, K]
    key_in: Tensor  # r_i [B, 2K]
    key_out: Tensor  # r_o [B, 2K]
    update: Tensor  # u [B, 2K]


class AssociativeLSTMCore(Core):
    """Associative LSTM core (Danihelka et al. 2016): a holographic complex cell with redundant permuted copies.

    Args:
        input_size: width of ``x``.
        hidden_size: N_h, real hidden units, even: ``N_h / 2`` complex units. ``output_size == hidden_size``.
        num_copies: N_copies, redundant copies of the cell (each with its own key permutation P_s). More copies
            store the same items with less read-out noise, at no extra parameters.
        seed_permutations: seed of the private generator that draws the fixed permutations (so two modules built
            with the same seed agree regardless of the global RNG); ``None`` draws from torch's global RNG.
        learn_initial_state: learn ``h_0`` and the copies ``c_0`` (default: zeros).
        forget_bias: added to the forget gate's bias at initialisation (1.0, the usual LSTM practice).

    State: :class:`ALSTMState` with ``h`` ``[B, N_h]`` and ``c`` ``[B, N_copies, N_h]``.

    The linear map from ``[x_t, h_{t-1}]`` is one ``nn.Linear`` (``self.proj``: ``input_size + N_h ->
    4.5 N_h``); its output rows are ``[g_f | g_i | g_o | r_i | r_o | u]`` of widths ``K, K, K, 2K, 2K, 2K``.
    :meth:`unroll` applies its ``x`` columns to all ``T`` inputs in one matmul and loops over the recurrent part.

    The cell runs in complex arithmetic with a hand-written backward (``_FusedCell``; checked against the
    equations written with the public helpers and plain autograd, and by ``gradcheck``). It is differentiable
    once: second derivatives (e.g. gradient penalties) are not supported.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        num_copies: int = 4,
        seed_permutations: int | None = 0,
        learn_initial_state: bool = False,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__(input_size)
        if not isinstance(hidden_size, int) or hidden_size < 2 or hidden_size % 2:
            raise ValueError(
                f"hidden_size (N_h) must be an even int >= 2 (N_h/2 complex units), got {hidden_size!r}"
            )
        if not isinstance(num_copies, int) or num_copies < 1:
            raise ValueError(f"num_copies (N_copies) must be an int >= 1, got {num_copies!r}")
        if seed_permutations is not None and (
            not isinstance(seed_permutations, int) or isinstance(seed_permutations, bool)
        ):
            raise ValueError(f"seed_permutations must be an int or None, got {seed_permutations!r}")
        self.hidden_size = hidden_size
        self.num_units = hidden_size // 2  # K complex units
        self.num_copies = num_copies
        self.learn_initial_state = learn_initial_state
        self.output_size = hidden_size

        K = self.num_units
        self.proj = nn.Linear(input_size + hidden_size, 3 * K + 3 * hidden_size)
        with torch.no_grad():
            self.proj.bias[:K].add_(forget_bias)
        # P_s: [N_copies, K], persistent so that save/load restores the very same memory layout.
        self.register_buffer("permutations", self._draw_permutations(K, num_copies, seed_permutations))
        if learn_initial_state:
            self.h0 = LearnedInit(hidden_size)
            self.c0 = LearnedInit(num_copies, hidden_size)

    @staticmethod
    def _draw_permutations(K: int, n: int, seed: int | None) -> Tensor:
        """``n`` random permutations of ``0..K-1``, pairwise distinct whenever ``K! >= n``."""
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        can_be_distinct = K > 12 or math.factorial(K) >= n
        perms: list[Tensor] = []
        seen: set[tuple[int, ...]] = set()
        while len(perms) < n:
            p = torch.randperm(K, generator=gen)
            key = tuple(p.tolist())
            if can_be_distinct and key in seen:
                continue
            seen.add(key)
            perms.append(p)
        return torch.stack(perms)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_copies={self.num_copies}, "
            f"learn_initial_state={self.learn_initial_state}"
        )

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> ALSTMState:
        device = self._device(device)
        if self.learn_initial_state:
            return ALSTMState(self.h0.expand(batch_size, device), self.c0.expand(batch_size, device))
        dtype = self._param_dtype()
        return ALSTMState(
            torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),
            torch.zeros(batch_size, self.num_copies, self.hidden_size, device=device, dtype=dtype),
        )

    # ------------------------------------------------------------------ pieces
    def _input_projection(self, x: Tensor) -> Tensor:
        """``W_x x + b``: the ``x`` columns of ``self.proj``. ``[..., input_size]`` -> ``[..., 4.5 N_h]``."""
        return F.linear(x, self.proj.weight[:, : self.input_size], self.proj.bias)

    def _recurrent_projection(self, h: Tensor) -> Tensor:
        """``W_h h_{t-1}``: the ``h`` columns of ``self.proj``. ``[B, N_h]`` -> ``[B, 4.5 N_h]``."""
        return F.linear(h, self.proj.weight[:, self.input_size :])

    def _activate(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-activations ``[B, 4.5 N_h]`` -> gates ``[B, 3, K]`` (g_f, g_i, g_o: sigmoid, one per complex unit)
        and bounded keys ``[B, 3, 2, K]`` (r_i, r_o, u) x (real half, imaginary half), real."""
        B, K = pre.shape[0], self.num_units
        g, k = pre.split([3 * K, 6 * K], dim=-1)  # split, not slicing: one backward node, no zero-filled grads
        g = torch.sigmoid(g).view(B, 3, K)
        k = k.view(B, 3, 2, K)
        # bound(k) = k / max(1, |k|), in real arithmetic (cheaper than a complex division)
        k = k / torch.sqrt(torch.clamp(k.pow(2).sum(2, keepdim=True), min=1.0))
        return g, k

    def gates(self, pre: Tensor) -> ALSTMGates:
        """The activated gates and keys of pre-activations ``pre`` ``[B, 4.5 N_h]`` (for inspection): gates
        ``[B, N_h/2]`` per complex unit, keys and update ``[B, N_h]`` in the [real half, imaginary half] layout."""
        g, k = self._activate(pre)
        B = pre.shape[0]
        r_i, r_o, u = (k[:, j].reshape(B, -1) for j in range(3))  # [B, 2, K] -> [B, 2K] (real half, imag half)
        return ALSTMGates(g[:, 0], g[:, 1], g[:, 2], r_i, r_o, u)

    def _work_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Real dtype of the cell math: fp32 for half/bfloat16 states, else the state's own."""
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def _cell(self, pre: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The holographic cell, in complex arithmetic (callers disable autocast and pass ``pre`` in the real
        dtype of ``c``).

        Args:
            pre: ``[B, 4.5 N_h]`` pre-activations (real).
            c: complex ``[B, N_copies, K]`` cell copies c_{s,t-1}.
        Returns:
            complex ``h_t`` ``[B, K]`` and complex ``c_{s,t}`` ``[B, N_copies, K]``.
        """
        perm = self.permutations
        inv_perm = torch.argsort(perm, dim=-1)  # P_s^-1 (derived, so it always matches the loaded buffer)
        return _FusedCell.apply(pre, c, perm, inv_perm)
        return h, c

    # ------------------------------------------------------------------ contract
    def step(self, x: Tensor, state: ALSTMState) -> tuple[Tensor, ALSTMState]:
        """One step. ``x``: ``[B, input_size]`` -> ``h_t``: ``[B, N_h]`` and the new state."""
        pre = self._input_projection(x) + self._recurrent_projection(state.h)  # [B, 4.5 N_h]
        dtype = state.c.dtype
        work = self._work_dtype(dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h, c = self._cell(pre.to(work), to_complex(state.c.to(work)))
            h, c = to_halves(h).to(dtype), to_halves(c).to(dtype)
        return h, ALSTMState(h, c)

    def unroll(self, xs: Tensor, state: ALSTMState, resets: Tensor | None = None) -> tuple[Tensor, ALSTMState]:
        """Time-major unroll, equal to the step loop::

            for t in range(T):
                ys[t], state = self(xs[t], state, resets[t])

        Why it is the same computation: the input half of the projection, ``W_x x_t + b``, does not depend on the
        state, so it is computed for all ``T`` steps in one matmul; the loop adds ``W_h h_{t-1}`` and runs the same
        :meth:`_cell` as :meth:`step`. The cell copies stay complex between steps (the conversion to and from the
        [real half, imaginary half] layout is exact, so skipping it changes no value). Resets use the base class's
        rule inside the loop (``select_rows`` with the initial state, as :meth:`reset_state`), without a host sync.

        ``xs``: ``[T, B, input_size]``; ``resets``: ``[T, B]`` bool or None. Returns ``[T, B, N_h]`` and the state.
        """
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None and resets.shape != xs.shape[:2]:
            raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
        B = xs.shape[1]
        dtype = state.c.dtype
        work = self._work_dtype(dtype)
        pre_x = self._input_projection(xs)  # [T, B, 4.5 N_h], one matmul for all steps
        init = None
        if resets is not None:
            resets = resets.to(torch.bool)
            init = self.initial_state(B, device=xs.device)
            init_c = to_complex(init.c.to(work))
        h_real, c = state.h, to_complex(state.c.to(work))  # [B, N_h], complex [B, N_copies, K]
        ys = []
        # unbind, not pre_x[t]: its backward stacks the T gradients once (indexing would add T full-size zeros)
        for t, pre_x_t in enumerate(pre_x.unbind(0)):
            if init is not None:
                r = resets[t]
                h_real = torch.where(r[:, None], init.h, h_real)
                c = torch.where(r[:, None, None], init_c, c)
            pre = pre_x_t + self._recurrent_projection(h_real)
            with torch.autocast(device_type=xs.device.type, enabled=False):
                h, c = self._cell(pre.to(work), c)
                h_real = to_halves(h).to(dtype)
                if work != dtype:  # half/bfloat16 state: round the copies as the step loop's state does
                    c = to_complex(to_halves(c).to(dtype).to(work))
            ys.append(h_real)
        return torch.stack(ys), ALSTMState(h_real, to_halves(c).to(dtype))


__all__ = [
    "ALSTMGates",
    "ALSTMState",
    "AssociativeLSTMCore",
    "alstm_param_count",
    "associative_read",
    "associative_write",
    "bound",
    "complex_conj",
    "complex_modulus",
    "complex_mul",
    "hidden_size_for_param_count",
    "lstm_param_count",
    "matching_hidden_size",
    "permute_keys",
    "scale_complex",
    "to_complex",
    "to_halves",
]
