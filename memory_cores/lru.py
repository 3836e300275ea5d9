"""Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long Sequences", ICML).

The recurrence of one LRU layer, in the paper's notation (diagonal, complex, per unit ``i = 1..N``)::

    x_t = Lambda x_{t-1} + gamma o (B u_t)          x_t in C^N, u_t in R^H
    y_t = Re(C x_t) + D o u_t                       y_t in R^H
    Lambda = diag(lambda),  lambda_i = exp(-exp(nu_i) + i exp(theta_i))     (stable exponential parameterisation:
                                                                             |lambda_i| = exp(-exp(nu_i)) < 1)
    gamma_i = exp(gamma_log_i),  initialised to sqrt(1 - |lambda_i|^2)       (normalisation; trained, as in the
                                                                             paper's code)

Initialisation (paper, section 3): ``|lambda|`` uniform on the ring ``[r_min, r_max]`` of the complex plane
(``|lambda| = sqrt(U(r_min^2, r_max^2))``), phase ``exp(theta)`` uniform in ``[0, max_phase]``; ``B`` and ``C`` complex
Gaussian with variances ``1/(2H)`` and ``1/N`` per part, ``D`` standard normal.

The core (one block per layer, the paper's Figure 1 without dropout, pre-norm as in its code)::

    h^0_t = W_enc z_t                                        linear encoder of the core input z_t
    for each layer l = 1..num_layers:
        u_t   = LayerNorm(h^{l-1}_t)
        x^l_t = Lambda x^l_{t-1} + gamma o (B u_t)          the LRU above (state x^l: the core state)
        v_t   = GELU(Re(C x^l_t) + D o u_t)
        h^l_t = h^{l-1}_t + GLU(v_t)                         GLU(v) = (W_1 v) o sigmoid(W_2 v), residual
    y_t = LayerNorm(h^L_t)                                   output_size = hidden_size

Why this block: it is the paper's (its ablations find the LRU needs the nonlinearity/GLU after the linear
recurrence: the recurrence alone is linear in its inputs) with the three things an RL core needs changed or added:
LayerNorm instead of BatchNorm (per-step, no batch statistics that differ between rollout and update), no dropout,
and a final LayerNorm so the policy/value heads see unit-scale features whatever the depth (the residual stream
grows with the number of layers and with the inputs).

Defaults: ``r_min = 0.9``, ``r_max = 0.999``, ``max_phase = 2 pi`` (paper: ``r_min`` 0 or 0.9 depending on the
task; 0.9 here because memory tasks need every unit to keep its input for >= 10 steps, while ``D o u_t`` already
passes the present input through), ``recurrent_size N = hidden_size``, one layer.

Fast path: :meth:`LRUCore.step` is the recurrence as written; :meth:`LRUCore.unroll` computes all ``x^l_t`` of a
layer at once with the resettable parallel scan of :mod:`memory_cores.scan` (depth O(log T)), with episode starts
inside the sequence folded into the scan operator (a row that resets restarts from the initial state, exactly as
:meth:`Core.forward` does). ``Core.unroll(core, xs, state, resets)`` is the plain step loop it equals
(tests/test_lru.py: values and gradients, float64, resets inside, learned initial state).

Complex arithmetic in complex64 (complex128 when the module is double). The state is stored real, as
``[..., 2]`` (real, imaginary) pairs, so that packing, ``torch.where`` resets and dtype checks treat it like any
other state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Core, LearnedInit
from .scan import resettable_scan


class LRUState(NamedTuple):
    """``x``: ``[B, num_layers, recurrent_size, 2]``: each layer's complex state ``x_t`` as (real, imag) pairs."""

    x: Tensor


def as_complex(pairs: Tensor) -> Tensor:
    """``[..., 2]`` real (real, imag) pairs -> ``[...]`` complex (any strides)."""
    return torch.complex(pairs[..., 0], pairs[..., 1])


class LRULayer(nn.Module):
    """One LRU: ``x_t = Lambda x_{t-1} + gamma o (B u_t)``, ``y_t = Re(C x_t) + D o u_t``.

    Args:
        hidden_size: H, width of ``u_t`` and ``y_t``.
        recurrent_size: N, complex units of ``x_t``.
        r_min, r_max: the ring ``|lambda|`` is initialised on.
        max_phase: ``arg(lambda)`` initialised uniform in ``[0, max_phase]``.
    """

    def __init__(self, hidden_size: int, recurrent_size: int, r_min: float, r_max: float, max_phase: float) -> None:
        super().__init__()
        H, N = hidden_size, recurrent_size
        # |lambda| uniform on the ring [r_min, r_max] (uniform in area: |lambda|^2 uniform)
        r = torch.sqrt(torch.empty(N).uniform_(r_min**2, r_max**2))
        # theta: max_phase * U(0, 1), kept away from 0 so that its log is finite
        phase = torch.empty(N).uniform_(0.0, 1.0).clamp_min(1e-4) * max_phase
        self.nu_log = nn.Parameter(torch.log(-torch.log(r)))  # nu: |lambda| = exp(-exp(nu))
        self.theta_log = nn.Parameter(torch.log(phase))  # theta: arg(lambda) = exp(theta)
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1.0 - r**2)))  # gamma = sqrt(1 - |lambda|^2)
        self.B_re = nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H))  # B in C^{N x H}
        self.B_im = nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H))
        self.C_re = nn.Parameter(torch.randn(H, N) / math.sqrt(N))  # C in C^{H x N}
        self.C_im = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.D = nn.Parameter(torch.randn(H))  # D: diagonal skip

    def lambda_(self) -> Tensor:
        """``lambda``: ``[N]`` complex, ``exp(-exp(nu) + i exp(theta))``."""
        return torch.polar(torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log))

    def drive(self, u: Tensor) -> Tensor:
        """``gamma o (B u)``: ``u`` ``[..., H]`` real -> ``[..., N]`` complex.

        As one real matmul: the rows of ``diag(gamma) B`` (as in the paper's code, gamma scales ``B``) are stacked
        as (Re, Im) pairs, so the product comes out as (real, imag) pairs that view as complex without a copy.
        """
        N, H = self.B_re.shape
        gamma = torch.exp(self.gamma_log)  # [N]
        W = (torch.stack([self.B_re, self.B_im], dim=1) * gamma.reshape(N, 1, 1)).reshape(2 * N, H)  # [2N, H]
        return torch.view_as_complex((u @ W.t()).unflatten(-1, (N, 2)))  # [..., N]

    def readout(self, x: Tensor, u: Tensor) -> Tensor:
        """``Re(C x) + D o u``: ``x`` ``[..., N]`` complex, ``u`` ``[..., H]`` -> ``[..., H]``.

        ``Re(C x) = C_re Re(x) - C_im Im(x)``, as one real matmul of ``x``'s (real, imag) pairs.
        """
        H, N = self.C_re.shape
        W = torch.stack([self.C_re, -self.C_im], dim=-1).reshape(H, 2 * N)  # [H, 2N]
        return torch.view_as_real(x).flatten(-2) @ W.t() + self.D * u


class LRUBlock(nn.Module):
    """Pre-norm residual block: ``h + GLU(GELU(LRU(LayerNorm(h))))`` (see the module docstring)."""

    def __init__(self, hidden_size: int, recurrent_size: int, r_min: float, r_max: float, max_phase: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.lru = LRULayer(hidden_size, recurrent_size, r_min, r_max, max_phase)
        self.glu = nn.Linear(hidden_size, 2 * hidden_size)  # W_1, W_2 of the GLU, stacked

    def output(self, h: Tensor, u: Tensor, x: Tensor) -> Tensor:
        """The block's output from its input ``h``, the normalised ``u`` and the new LRU state ``x``."""
        v = F.gelu(self.lru.readout(x, u))
        return h + F.glu(self.glu(v), dim=-1)


class LRUCore(Core):
    """Linear Recurrent Unit blocks as a memory core (Orvieto et al. 2023); see the module docstring.

    Args:
        input_size: width of the core input ``z_t``.
        hidden_size: H, the model width (the paper's ``d_model``): encoder output, residual stream and
            ``output_size``.
        recurrent_size: N, complex units of each layer's state ``x_t`` (paper: the state dimension); default
            ``hidden_size``.
        num_layers: stacked LRU blocks.
        r_min, r_max: ``|lambda|`` initialised uniformly on the ring ``[r_min, r_max]``, ``0 <= r_min < r_max < 1``.
        max_phase: phases ``arg(lambda)`` initialised uniformly in ``[0, max_phase]`` (paper: 2 pi; pi/10 for its
            longest tasks).
        learn_initial_state: learn ``x_0`` of every layer (default zeros).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        recurrent_size: int | None = None,
        num_layers: int = 1,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = 2 * math.pi,
        learn_initial_state: bool = False,
    ) -> None:
        super().__init__(input_size)
        recurrent_size = hidden_size if recurrent_size is None else recurrent_size
        for name, v in (("hidden_size", hidden_size), ("recurrent_size", recurrent_size), ("num_layers", num_layers)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"need 0 <= r_min < r_max < 1 (|lambda| on a ring inside the unit disc), got "
                             f"r_min={r_min!r}, r_max={r_max!r}")
        if not max_phase > 0:
            raise ValueError(f"max_phase must be > 0, got {max_phase!r}")
        self.hidden_size = hidden_size
        self.recurrent_size = recurrent_size
        self.num_layers = num_layers
        self.output_size = hidden_size
        self.learn_initial_state = learn_initial_state
        self.encoder = nn.Linear(input_size, hidden_size)
        self.blocks = nn.ModuleList(
            LRUBlock(hidden_size, recurrent_size, r_min, r_max, max_phase) for _ in range(num_layers)
        )
        self.out_norm = nn.LayerNorm(hidden_size)
        if learn_initial_state:
            self.x0 = LearnedInit(num_layers, recurrent_size, 2)

    def initial_state(self, batch_size: int, device=None) -> LRUState:
        device = self._device(device)
        if self.learn_initial_state:
            return LRUState(self.x0.expand(batch_size, device))
        shape = (batch_size, self.num_layers, self.recurrent_size, 2)
        return LRUState(torch.zeros(shape, device=device, dtype=self._param_dtype()))

    # ------------------------------------------------------------------ the plain step (reads as the paper)
    def step(self, x: Tensor, state: LRUState) -> tuple[Tensor, LRUState]:
        """One step. ``x``: ``[B, input_size]``; ``state.x``: ``[B, L, N, 2]``. Returns ``y`` ``[B, H]``."""
        h = self.encoder(x)  # h^0_t: [B, H]
        x_prev = as_complex(state.x)  # [B, L, N] complex
        new = []
        for l, block in enumerate(self.blocks):
            u = block.norm(h)  # u_t: [B, H]
            x_l = block.lru.lambda_() * x_prev[:, l] + block.lru.drive(u)  # x_t = Lambda x_{t-1} + gamma o B u_t
            h = block.output(h, u, x_l)  # h^l_t: [B, H]
            new.append(x_l)
        return self.out_norm(h), LRUState(torch.view_as_real(torch.stack(new, dim=1)))

    # ------------------------------------------------------------------ fast path: resettable parallel scan
    def unroll(self, xs: Tensor, state: LRUState, resets: Tensor | None = None) -> tuple[Tensor, LRUState]:
        """Time-major unroll, equal to the step loop (``Core.unroll``), with each layer's recurrence computed by a
        resettable parallel scan over time (O(log T) depth). ``xs``: ``[T, B, input_size]``; ``resets``:
        ``[T, B]`` bool or None. Returns ``ys`` ``[T, B, H]`` and the final state."""
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None and resets.shape != xs.shape[:2]:
            raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
        T, B, _ = xs.shape
        flags = x_init = None
        if resets is not None:
            resets = resets.to(torch.bool)
            state = self.reset_state(state, resets[0])  # t = 0: the base class's reset, as forward does
            # resets after t = 0 go into the scan operator: [T, B, 1], False at t = 0 (already applied)
            flags = torch.cat([torch.zeros_like(resets[:1]), resets[1:]]).unsqueeze(-1)
            x_init = as_complex(self.initial_state(B, device=xs.device).x)  # [B, L, N]
        x_prev = as_complex(state.x)  # x_{-1}: [B, L, N]
        h = self.encoder(xs)  # [T, B, H]
        finals = []
        for l, block in enumerate(self.blocks):
            u = block.norm(h)  # [T, B, H]
            lam = block.lru.lambda_()  # [N]
            b0, b_rest = torch.split(block.lru.drive(u), [1, T - 1])  # gamma o B u_t: [1 | T-1, B, N]
            # t = 0 continues from the carried state: b_0 = Lambda x_{-1} + gamma o B u_0
            b = torch.cat([lam * x_prev[:, l] + b0, b_rest])  # [T, B, N]
            if flags is not None:
                assert x_init is not None
                # a row that resets at t restarts from x_init: b_t = Lambda x_init + gamma o B u_t, flag set
                b = torch.where(flags, lam * x_init[:, l] + b, b)
            x_all = resettable_scan(lam.expand(T, 1, -1), b, flags)  # x^l_t for all t: [T, B, N]
            h = block.output(h, u, x_all)
            finals.append(x_all[-1])
        return self.out_norm(h), LRUState(torch.view_as_real(torch.stack(finals, dim=1)))

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"recurrent_size={self.recurrent_size}, num_layers={self.num_layers}")
