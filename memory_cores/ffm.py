"""Fast and Forgetful Memory (Morad et al. 2023, "Reinforcement Learning with Fast and Forgetful Memory", NeurIPS).

One step, in the paper's notation (``m`` memory channels, ``c`` context channels; the state ``S`` is ``m x c``
complex)::

    x~_t = l_1(x_t) o sigmoid(l_2(x_t))                      input gate                  [m]
    S_t  = gamma o S_{t-1} + x~_t 1_c^T                      the aggregator (FFA)        [m, c] complex
           gamma_{jk} = exp(-|alpha_j| + i omega_k)          decay alpha per memory channel j,
                                                             oscillation omega per context channel k
    z_t  = l_3([Re S_t ; Im S_t])                            mix (flattened)             [H]
    y_t  = LN(z_t) o sigmoid(l_4(x_t)) + l_5(x_t) o (1 - sigmoid(l_4(x_t)))      output gate, LN without affine

Unrolled, ``S_t = sum_{k <= t} gamma^{t-k} o x~_k 1^T (+ gamma^{t+1} S_{-1})``: a decaying, oscillating sum over the
past whose every term is known in closed form, which is what makes FFM parallel over time. ``l_1, l_2, l_4, l_5``
are one Linear (``pre``), as in the authors' code. ``hidden_size`` is the output width (``y_t``), so the core is
a drop-in GRU replacement: ``make_core("ffm", input_size, hidden_size=H)``.

Initialisation (the authors' code): ``omega_k = 2 pi / p_k`` with periods ``p`` spread linearly over
``[min_period, max_period]``; ``|alpha_j|`` spread linearly from ``ln 2`` (the memory halves every step; the
authors use 0.673, a bound from their cumulative-sum form) down to ``-ln(forgotten_at) / max_period`` (an input
falls to ``forgotten_at`` of its size after ``max_period`` steps). ``gamma = exp(-|alpha| + i omega)`` keeps
``|gamma| <= 1`` for any learned ``alpha`` (the authors clamp ``alpha`` instead).

Defaults ``memory_size = 32``, ``context_size = 4``: a state of 32 x 4 complex = 256 reals, as an LSTM of 128
units (h and c).

Fast path: :meth:`FFMCore.step` is the recurrence as written; :meth:`FFMCore.unroll` computes every ``S_t`` with
the resettable parallel scan of :mod:`memory_cores.scan` (O(log T) depth, numerically safe at any length, unlike
the authors' ``gamma^{-t}`` cumulative sum which needs chunking to avoid overflow), with episode starts inside
the sequence folded into the scan operator so that a row that resets restarts from the initial state exactly as
:meth:`Core.forward` does. ``Core.unroll(core, ...)`` is the step loop it equals (tests/test_ffm.py).

Complex arithmetic in complex64 (complex128 when the module is double); the state is stored as real
``[..., 2]`` (real, imaginary) pairs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .base import Core, LearnedInit
from .lru import as_complex
from .scan import resettable_scan


class FFMState(NamedTuple):
    """``S``: ``[B, memory_size, context_size, 2]``: the complex aggregator state as (real, imag) pairs."""

    S: Tensor


class FFMCore(Core):
    """Fast and Forgetful Memory (Morad et al. 2023) as a memory core; see the module docstring.

    Args:
        input_size: width of ``x_t``.
        hidden_size: H, width of the output ``y_t`` (``output_size``), as a GRU's hidden size.
        memory_size: m in the paper: memory channels, one decay ``alpha_j`` each.
        context_size: c in the paper: context channels, one oscillation ``omega_k`` each (state ``m x c``).
        min_period, max_period: the periods ``2 pi / omega`` are initialised linearly over this range, and the
            slowest decay forgets an input (down to ``forgotten_at``) after ``max_period`` steps.
        forgotten_at: the fraction of an input at which it counts as forgotten (for the decay initialisation).
        learn_initial_state: learn ``S_0`` (default zeros, as the paper).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        memory_size: int = 32,
        context_size: int = 4,
        min_period: float = 1.0,
        max_period: float = 1024.0,
        forgotten_at: float = 0.01,
        learn_initial_state: bool = False,
    ) -> None:
        super().__init__(input_size)
        for name, v in (("hidden_size", hidden_size), ("memory_size", memory_size), ("context_size", context_size)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0 < min_period <= max_period:
            raise ValueError(f"need 0 < min_period <= max_period, got min_period={min_period!r}, "
                             f"max_period={max_period!r}")
        if not 0.0 < forgotten_at < 1.0:
            raise ValueError(f"forgotten_at must be in (0, 1), got {forgotten_at!r}")
        self.hidden_size = hidden_size
        self.memory_size = memory_size
        self.context_size = context_size
        self.output_size = hidden_size
        self.learn_initial_state = learn_initial_state
        m, c, H = memory_size, context_size, hidden_size
        self.pre = nn.Linear(input_size, 2 * m + 2 * H)  # l_1 [m], l_2 [m] (input gate), l_5 [H], l_4 [H]
        slowest = -math.log(forgotten_at) / max_period
        self.alpha = nn.Parameter(torch.linspace(math.log(2.0), slowest, m))  # alpha_j: decay
        self.omega = nn.Parameter(2 * math.pi / torch.linspace(min_period, max_period, c))  # omega_k: oscillation
        self.mix = nn.Linear(2 * m * c, H)  # l_3
        self.ln_out = nn.LayerNorm(H, elementwise_affine=False)
        if learn_initial_state:
            self.S0 = LearnedInit(m, c, 2)

    def initial_state(self, batch_size: int, device=None) -> FFMState:
        device = self._device(device)
        if self.learn_initial_state:
            return FFMState(self.S0.expand(batch_size, device))
        shape = (batch_size, self.memory_size, self.context_size, 2)
        return FFMState(torch.zeros(shape, device=device, dtype=self._param_dtype()))

    # ------------------------------------------------------------------ the pieces of one step
    def gamma(self) -> Tensor:
        """``gamma_{jk} = exp(-|alpha_j| + i omega_k)``: ``[m, c]`` complex."""
        m, c = self.memory_size, self.context_size
        return torch.polar(torch.exp(-self.alpha.abs()).unsqueeze(1).expand(m, c), self.omega.unsqueeze(0).expand(m, c))

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x``: ``[..., input_size]`` -> ``x~`` ``[..., m]`` (input-gated), ``l_5(x)`` ``[..., H]`` and the output
        gate ``sigmoid(l_4(x))`` ``[..., H]``."""
        m, H = self.memory_size, self.hidden_size
        value, in_gate, thru, out_gate = self.pre(x).split([m, m, H, H], dim=-1)
        return value * torch.sigmoid(in_gate), thru, torch.sigmoid(out_gate)

    def output(self, S: Tensor, thru: Tensor, out_gate: Tensor) -> Tensor:
        """``y = LN(l_3([Re S; Im S])) o g + l_5(x) o (1 - g)``: ``S`` ``[..., m, c]`` complex -> ``[..., H]``."""
        z = self.mix(torch.view_as_real(S).flatten(-3))  # [..., 2 m c] -> [..., H]
        return self.ln_out(z) * out_gate + thru * (1 - out_gate)

    # ------------------------------------------------------------------ the plain step (reads as the paper)
    def step(self, x: Tensor, state: FFMState) -> tuple[Tensor, FFMState]:
        """One step. ``x``: ``[B, input_size]``; ``state.S``: ``[B, m, c, 2]``. Returns ``y`` ``[B, H]``."""
        x_in, thru, out_gate = self.gates(x)  # x~_t: [B, m]
        S = self.gamma() * as_complex(state.S) + x_in.unsqueeze(-1)  # S_t = gamma o S_{t-1} + x~_t 1^T: [B, m, c]
        return self.output(S, thru, out_gate), FFMState(torch.view_as_real(S))

    # ------------------------------------------------------------------ fast path: resettable parallel scan
    def unroll(self, xs: Tensor, state: FFMState, resets: Tensor | None = None) -> tuple[Tensor, FFMState]:
        """Time-major unroll, equal to the step loop (``Core.unroll``), with ``S_t`` for all ``t`` from a resettable
        parallel scan (O(log T) depth). ``xs``: ``[T, B, input_size]``; ``resets``: ``[T, B]`` bool or None."""
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None and resets.shape != xs.shape[:2]:
            raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
        T, B, _ = xs.shape
        m, c = self.memory_size, self.context_size
        gamma = self.gamma()  # [m, c]
        x_in, thru, out_gate = self.gates(xs)  # [T, B, m], [T, B, H], [T, B, H]
        b = x_in.unsqueeze(-1).expand(T, B, m, c).to(gamma.dtype)  # x~_t 1^T: [T, B, m, c] complex
        flags = None
        if resets is not None:
            resets = resets.to(torch.bool)
            state = self.reset_state(state, resets[0])  # t = 0: the base class's reset, as forward does
            flags = torch.cat([torch.zeros_like(resets[:1]), resets[1:]]).reshape(T, B, 1, 1)
        # t = 0 continues from the carried state: b_0 = gamma o S_{-1} + x~_0 1^T
        b0, b_rest = torch.split(b, [1, T - 1])  # (split, not b[0] / b[1:]: its backward needs no zero fill)
        b = torch.cat([gamma * as_complex(state.S) + b0, b_rest])
        if flags is not None:
            # a row that resets at t restarts from S_init: b_t = gamma o S_init + x~_t 1^T, flag set
            S_init = as_complex(self.initial_state(B, device=xs.device).S)  # [B, m, c]
            b = torch.where(flags, gamma * S_init + b, b)
        S_all = resettable_scan(gamma.expand(T, 1, m, c), b, flags)  # S_t for all t: [T, B, m, c]
        return self.output(S_all, thru, out_gate), FFMState(torch.view_as_real(S_all[-1]))

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, memory_size={self.memory_size}, "
                f"context_size={self.context_size}")
