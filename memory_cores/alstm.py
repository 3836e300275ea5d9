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

Fast path: ``kernel="triton"`` (or ``"auto"`` on CUDA) runs the cell below, from the pre-activations to ``h_t`` and the
new copies, as one Triton kernel forward and one backward (:mod:`memory_cores.alstm_triton`), tested equal to the
plain cell in float64 (tests/test_alstm_triton.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Core, LearnedInit, check_kernel, use_triton


# ---------------------------------------------------------------------------------------------- complex helpers
# A complex vector of K units is stored as 2K reals, [real half, imaginary half]. Internally the same memory is
# viewed "planar", [..., 2, K] (a free view), so that every operation runs vectorised over the K units; torch's
# complex dtype is not used (on CPU its abs/division kernels and the reductions over an interleaved (re, im) pair
# made the cell 2-3x slower than this real arithmetic).


def _planar(a: Tensor) -> Tensor:
    """``[..., 2K]`` [real half, imaginary half] -> ``[..., 2, K]`` view."""
    return a.unflatten(-1, (2, a.shape[-1] // 2))


def _cmul_planar(a: Tensor, b: Tensor) -> Tensor:
    """``a (*) b`` on planar ``[..., 2, K]`` tensors (broadcastable):
    ``(ar + i ai)(br + i bi) = (ar br - ai bi) + i (ar bi + ai br)``."""
    ar, ai = a.unbind(-2)
    br, bi = b.unbind(-2)
    return torch.stack([ar * br - ai * bi, ar * bi + ai * br], dim=-2)


def _bound_planar(z: Tensor) -> Tensor:
    """``bound(z) = z / max(1, |z|)`` on planar ``[..., 2, K]``, as ``z / sqrt(max(1, Re^2 + Im^2))``."""
    return z / torch.sqrt(torch.clamp(z.pow(2).sum(-2, keepdim=True), min=1.0))


def complex_mul(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise complex product ``a (*) b`` (the paper's circled asterisk) of ``[..., 2K]`` tensors in the
    [real half, imaginary half] layout (broadcastable): ``(ar br - ai bi) + i (ar bi + ai br)``."""
    return _cmul_planar(_planar(a), _planar(b)).flatten(-2)


def complex_conj(a: Tensor) -> Tensor:
    """Complex conjugate of ``[..., 2K]`` stored as [real half, imaginary half]: the imaginary half negated."""
    ar, ai = a.chunk(2, dim=-1)
    return torch.cat([ar, -ai], dim=-1)


def complex_modulus(a: Tensor) -> Tensor:
    """``|a_k| = sqrt(Re a_k^2 + Im a_k^2)`` per complex unit: ``[..., 2K]`` -> ``[..., K]``."""
    return _planar(a).pow(2).sum(-2).sqrt()


def to_complex(a: Tensor) -> Tensor:
    """[real half, imaginary half] ``[..., 2K]`` -> torch complex ``[..., K]`` (exact; for tests and inspection)."""
    p = _planar(a)
    return torch.complex(p[..., 0, :], p[..., 1, :])


def to_halves(z: Tensor) -> Tensor:
    """Torch complex ``[..., K]`` -> [real half, imaginary half] ``[..., 2K]`` (exact)."""
    return torch.cat([z.real, z.imag], dim=-1)


def bound(h: Tensor) -> Tensor:
    """``bound(h) = h / max(1, |h|)`` per complex unit (paper, "Associative LSTM").

    The identity for units inside the unit disk; units outside are scaled onto the unit circle (phase kept).
    Computed as ``h / sqrt(max(1, Re^2 + Im^2))``, which has a finite gradient everywhere, ``h = 0`` included
    (``sqrt`` is never evaluated below 1, so there is no ``0/0`` in the backward pass).

    Args:
        h: ``[..., 2K]`` [real half, imaginary half].
    Returns:
        ``[..., 2K]``, every unit's modulus ``<= 1``.
    """
    return _bound_planar(_planar(h)).flatten(-2)


def permute_keys(r: Tensor, permutations: Tensor) -> Tensor:
    """``P_s r`` for every copy ``s``: ``(P_s r)_k = r_{perm_s(k)}``, real and imaginary part moving together.

    Args:
        r: ``[B, 2K]`` [real half, imaginary half].
        permutations: ``[N_copies, K]`` long, row ``s`` a permutation of ``0..K-1``.
    Returns:
        ``[B, N_copies, 2K]``.
    """
    B, (N, K) = r.shape[0], permutations.shape
    index = permutations.reshape(1, 1, N * K).expand(B, 2, N * K)
    return torch.gather(_planar(r), -1, index).view(B, 2, N, K).transpose(1, 2).flatten(-2)


def associative_write(c: Tensor, r_in: Tensor, forget: Tensor, write: Tensor) -> Tensor:
    """``c_s <- g_f * c_s + (P_s r_i) (*) (g_i * u)`` for every copy s.

    Args:
        c: ``[B, N_copies, 2K]`` cell copies c_s.
        r_in: ``[B, N_copies, 2K]`` permuted input keys P_s r_i.
        forget: ``[B, 2K]`` forget gate g_f (each complex unit's gate repeated on both halves).
        write: ``[B, 2K]`` gated update g_i * u.
    Returns:
        ``[B, N_copies, 2K]`` new cell copies.
    """
    return forget.unsqueeze(1) * c + complex_mul(r_in, write.unsqueeze(1))


def associative_read(c: Tensor, r_out: Tensor) -> Tensor:
    """``1/N_copies sum_s (P_s r_o) (*) c_s``, before the ``bound`` and the output gate.

    Args:
        c: ``[B, N_copies, 2K]``.
        r_out: ``[B, N_copies, 2K]``, the permuted read keys P_s r_o (to retrieve an item stored under key ``r``,
            use ``conj(r)``: the inverse of a unit-modulus key).
    Returns:
        ``[B, 2K]``.
    """
    return complex_mul(r_out, c).mean(dim=1)


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
        kernel: ``"plain"`` (default): the cell as the torch ops of :meth:`_cell`, the readable reference.
            ``"triton"``: the same cell, from the pre-activations to ``h_t`` and the new copies, as one Triton kernel
            forward and one backward (:mod:`memory_cores.alstm_triton`; float32 or float64 math; CUDA, or the CPU
            under ``TRITON_INTERPRET=1``, else a one-line error). Same values up to rounding; once-differentiable.
            ``"auto"``: the Triton kernels on CUDA when Triton imports, else the plain cell.

    State: :class:`ALSTMState` with ``h`` ``[B, N_h]`` and ``c`` ``[B, N_copies, N_h]``.

    The linear map from ``[x_t, h_{t-1}]`` is one ``nn.Linear`` (``self.proj``: ``input_size + N_h ->
    4.5 N_h``); its output rows are ``[g_f | g_i | g_o | r_i | r_o | u]`` of widths ``K, K, K, 2K, 2K, 2K``.
    :meth:`unroll` applies its ``x`` columns to all ``T`` inputs in one matmul and loops over the recurrent part.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        num_copies: int = 4,
        seed_permutations: int | None = 0,
        learn_initial_state: bool = False,
        forget_bias: float = 1.0,
        kernel: str = "plain",
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
        self.kernel = check_kernel(kernel)

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
            + (f", kernel={self.kernel!r}" if self.kernel != "plain" else "")
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
        and bounded keys ``[B, 3, 2, K]``: (r_i, r_o, u) x (real half, imaginary half)."""
        B, K = pre.shape[0], self.num_units
        g, k = pre.split([3 * K, 6 * K], dim=-1)  # split, not slicing: one backward node, no zero-filled grads
        return torch.sigmoid(g).view(B, 3, K), _bound_planar(k.view(B, 3, 2, K))

    def gates(self, pre: Tensor) -> ALSTMGates:
        """The activated gates and keys of pre-activations ``pre`` ``[B, 4.5 N_h]`` (for inspection): gates
        ``[B, N_h/2]`` per complex unit, keys and update ``[B, N_h]`` in the [real half, imaginary half] layout."""
        g, k = self._activate(pre)
        g_f, g_i, g_o = g.unbind(1)
        r_i, r_o, u = k.flatten(-2).unbind(1)
        return ALSTMGates(g_f, g_i, g_o, r_i, r_o, u)

    def _work_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Dtype of the cell math: fp32 for half/bfloat16 states, else the state's own."""
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def _cell(self, pre: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The holographic cell from the pre-activations (callers disable autocast and pass ``pre`` and ``c`` in
        the same real dtype); through :func:`memory_cores.alstm_triton.alstm_cell` where ``kernel`` says so.

        Args:
            pre: ``[B, 4.5 N_h]`` pre-activations.
            c: ``[B, N_copies, N_h]`` cell copies c_{s,t-1}.
        Returns:
            ``h_t`` ``[B, N_h]`` and ``c_{s,t}`` ``[B, N_copies, N_h]``.
        """
        if use_triton(self.kernel, pre.device):
            from .alstm_triton import alstm_cell  # imports Triton only where the kernel is asked for

            return alstm_cell(pre, c, self.permutations)
        B, K, N = pre.shape[0], self.num_units, self.num_copies
        g, k = self._activate(pre)  # [B, 3, K], [B, 3, 2, K]
        g_f, g_i, g_o = g.unsqueeze(2).unbind(1)  # [B, 1, K] each: one gate per complex unit, on both halves
        keys, u = k.split([2, 1], dim=1)  # (r_i, r_o) [B, 2, 2, K], u [B, 1, 2, K]
        # P_s r_i, P_s r_o for every copy s: gather the units (real and imaginary part alike)
        index = self.permutations.reshape(1, 1, 1, N * K).expand(B, 2, 2, N * K)
        r_in, r_out = torch.gather(keys, -1, index).view(B, 2, 2, N, K).transpose(2, 3).unbind(1)  # [B, N, 2, K]
        # c_{s,t} = g_f * c_{s,t-1} + (P_s r_i) (*) (g_i * u)
        c = g_f.unsqueeze(1) * _planar(c) + _cmul_planar(r_in, (g_i * u.squeeze(1)).unsqueeze(1))
        # h_t = g_o * bound(mean_s (P_s r_o) (*) c_{s,t})
        h = g_o * _bound_planar(_cmul_planar(r_out, c).mean(dim=1))
        return h.flatten(-2), c.flatten(-2)

    # ------------------------------------------------------------------ contract
    def step(self, x: Tensor, state: ALSTMState) -> tuple[Tensor, ALSTMState]:
        """One step. ``x``: ``[B, input_size]`` -> ``h_t``: ``[B, N_h]`` and the new state."""
        pre = self._input_projection(x) + self._recurrent_projection(state.h)  # [B, 4.5 N_h]
        dtype = state.c.dtype
        work = self._work_dtype(dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h, c = self._cell(pre.to(work), state.c.to(work))
        h = h.to(dtype)
        return h, ALSTMState(h, c.to(dtype))

    def unroll(self, xs: Tensor, state: ALSTMState, resets: Tensor | None = None) -> tuple[Tensor, ALSTMState]:
        """Time-major unroll, equal to the step loop::

            for t in range(T):
                ys[t], state = self(xs[t], state, resets[t])

        Why it is the same computation: the input half of the projection, ``W_x x_t + b``, does not depend on the
        state, so it is computed for all ``T`` steps in one matmul; the loop adds ``W_h h_{t-1}`` and runs the same
        :meth:`_cell` as :meth:`step`. Resets use the base class's rule inside the loop (``torch.where`` with the
        initial state, as :meth:`reset_state` / ``select_rows``), without a host sync.

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
        h, c = state
        ys = []
        # unbind, not pre_x[t]: its backward stacks the T gradients once (indexing would add T full-size zeros)
        for t, pre_x_t in enumerate(pre_x.unbind(0)):
            if init is not None:
                r = resets[t]
                h = torch.where(r[:, None], init.h, h)
                c = torch.where(r[:, None, None], init.c, c)
            pre = pre_x_t + self._recurrent_projection(h)
            with torch.autocast(device_type=xs.device.type, enabled=False):
                h, c = self._cell(pre.to(work), c.to(work))
            h, c = h.to(dtype), c.to(dtype)
            ys.append(h)
        return torch.stack(ys), ALSTMState(h, c)


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
    "to_complex",
    "to_halves",
]
