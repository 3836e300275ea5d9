"""Neural Turing Machine core (Graves, Wayne and Danihelka 2014, arXiv:1410.5401).

Notation follows the paper: ``M_t`` the ``N x W`` memory (the paper calls the word width ``M``; here ``W``), ``w_t``
a head's weighting over the ``N`` slots, ``k_t`` key, ``beta_t`` key strength, ``g_t`` interpolation gate, ``s_t``
shift distribution, ``gamma_t`` sharpening exponent, ``e_t`` erase vector, ``a_t`` add vector, ``r_t`` read vector.
Equation numbers refer to section 3 of the paper.

One step, in this order (the order is part of the definition; ``unroll`` is exactly this loop)::

    h_t, ctrl_t   = controller([x_t, r_{t-1}^1 .. r_{t-1}^R], ctrl_{t-1})       # previous reads fed back
    head params   = ONE Linear(h_t), split per head                             # key, beta, g, s, gamma (+ e, a)
    w_t^{write}   = address(M_{t-1}, w_{t-1}^{write})                           # eqs. 5-9
    M_t           = M_{t-1} * prod_h (1 - w_t^h e_t^h) + sum_h w_t^h a_t^h      # eqs. 3-4: erase, then add
    w_t^{read}    = address(M_t, w_{t-1}^{read})                                # eqs. 5-9 on the updated memory
    r_t           = w_t^{read} M_t                                              # eq. 2
    y_t           = [h_t, r_t^1 .. r_t^R]                                       # output_size = hidden + R W

Writing before reading in the same step lets the read heads see what was just written (as in the DNC and most
NTM ports); the reads of step ``t`` reach the controller at step ``t + 1``.

At an episode start (paper section 4) the controller state, the previous reads, the previous head weightings and the
memory are all reset to *learned* bias values (:meth:`NTMCore.initial_state`). The memory bias is initialised to a
small constant (1e-6), which Collier and Beel (2018, arXiv:1807.08518) found to converge faster than random or zero
initialisation; all slots start equal, so the first writes are placed by the (learned) initial weightings and by
the shift, and content addressing takes over once slots differ. The initial weightings start peaked on slot 0
(``initial_weight_peak``): with equal slots *and* uniform weightings every slot would stay identical forever.

Speed: one matmul for the controller (LSTM gates from ``[x_t, r_{t-1}, h_{t-1}]``), one for all head parameters,
activations applied per contiguous group, and no Python loop over the batch or the heads; the cosine similarity and
the one-head erase/add in :mod:`memory_cores.addressing` have hand-written backwards. ``kernel="triton"`` runs the
whole memory access (activations, both addressings, erase/add, reads) as one Triton kernel forward and one backward
(:mod:`memory_cores.ntm_triton`), tested equal to this plain step.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .addressing import EPS, circular_shift, content_weighting, erase_and_add, interpolate, read_memory, sharpen
from .base import Core, LearnedInit, check_kernel, use_triton

CONTROLLERS = ("lstm", "feedforward")


class LSTMControllerState(NamedTuple):
    """``h``: ``[B, hidden_size]`` controller output; ``c``: ``[B, hidden_size]`` LSTM cell."""

    h: Tensor
    c: Tensor


class FeedForwardControllerState(NamedTuple):
    """A feed-forward controller keeps no state of its own (an empty NamedTuple: no tensors)."""


class NTMState(NamedTuple):
    """State of :class:`NTMCore`, batch first.

    Attributes:
        controller: :class:`LSTMControllerState` or :class:`FeedForwardControllerState`.
        memory: ``[B, N, W]`` M_{t-1}.
        read_weights: ``[B, R, N]`` w_{t-1} of the R read heads.
        write_weights: ``[B, H_w, N]`` w_{t-1} of the H_w write heads.
        reads: ``[B, R, W]`` r_{t-1}, fed to the controller at the next step.
    """

    controller: LSTMControllerState | FeedForwardControllerState
    memory: Tensor
    read_weights: Tensor
    write_weights: Tensor
    reads: Tensor


def _check_int(name: str, value: object, low: int, what: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{what}, got {value!r}")


class NTMCore(Core):
    """Neural Turing Machine with an LSTM or feed-forward controller, R read heads and H_w write heads.

    Args:
        input_size: width of ``x``.
        hidden_size: controller units (the paper uses 100).
        num_slots: N, memory locations (paper: 128).
        slot_size: W, width of a memory word (the paper's M; paper: 20).
        num_read_heads: R >= 1.
        num_write_heads: H_w >= 1. Several write heads write in the same step: their erases multiply and their adds
            sum (:func:`memory_cores.addressing.erase_and_add`).
        max_shift: K, allowed circular shifts ``-K..K`` (the shift distribution s_t has ``2K + 1`` entries;
            ``2K + 1 <= N``). Paper: K = 1.
        controller: ``"lstm"`` (one LSTM layer whose output ``h_t`` drives the heads) or ``"feedforward"``
            (``h_t = tanh(Linear([x_t, r_{t-1}]))``, no recurrent state besides the memory and the reads).
        memory_init: initial value of every memory cell (default 1e-6, Collier and Beel 2018). Must be finite.
        learn_memory_init: learn the initial memory M_0 (a parameter initialised to ``memory_init``, default) or keep
            it fixed (a buffer).
        clip_value: the fused head projection is clamped to ``[-clip_value, clip_value]`` before its activations
            (Collier and Beel 2018 clip controller outputs to 20 for stable training); ``None`` disables it.
        initial_weight_peak: the learned initial weighting w_0 of every head starts with this much mass on slot 0
            and the rest spread evenly (``1 / num_slots`` is uniform; valid: ``[1/N, 1)``). A constant initial
            memory with *uniform* w_0 is a fixed point: content weighting of equal rows is uniform, interpolation,
            shift and sharpening keep a uniform weighting uniform, a uniform write keeps the rows equal, and the
            gradient with respect to the w_0 logits is zero, so the slots would never differ. The peak breaks that
            symmetry (and starts the heads like a tape head on slot 0); the values remain learned.
        kernel: ``"plain"`` (default): the memory access as the torch ops below, the readable reference.
            ``"triton"``: the same access from the raw head projection to the new memory, weightings and reads as
            one Triton kernel forward and one backward (:mod:`memory_cores.ntm_triton`; one write head; float32 or
            float64 memory; CUDA tensors, or the CPU under ``TRITON_INTERPRET=1`` for tests; elsewhere a one-line
            error). Same values up to rounding; once-differentiable. ``"auto"``: the Triton kernels where they can
            run (one write head, Triton importable, CUDA inputs) and the plain step elsewhere, so that a checkpoint
            trained on a GPU evaluates on a CPU.

    Output: ``y_t = [h_t, r_t^1, ..., r_t^R]``, ``[B, hidden_size + R * slot_size]``: the controller output
    concatenated with the read vectors of this step, so a readout layer on ``y`` sees both, as in the paper's
    architecture where the reads feed the output.

    State: :class:`NTMState`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 100,
        num_slots: int = 128,
        slot_size: int = 20,
        num_read_heads: int = 1,
        num_write_heads: int = 1,
        max_shift: int = 1,
        controller: str = "lstm",
        memory_init: float = 1e-6,
        learn_memory_init: bool = True,
        clip_value: float | None = 20.0,
        initial_weight_peak: float = 0.9,
        kernel: str = "plain",
    ) -> None:
        super().__init__(input_size)
        _check_int("hidden_size", hidden_size, 1)
        _check_int("num_slots", num_slots, 1, " (N, memory locations)")
        _check_int("slot_size", slot_size, 1, " (W, word width)")
        _check_int("num_read_heads", num_read_heads, 1, " (R)")
        _check_int("num_write_heads", num_write_heads, 1, " (H_w)")
        _check_int("max_shift", max_shift, 0, " (K, shifts -K..K)")
        if 2 * max_shift + 1 > num_slots:
            raise ValueError(
                f"max_shift={max_shift} allows 2K+1={2 * max_shift + 1} shifts, more than num_slots={num_slots}; "
                f"valid: 0 <= max_shift <= {(num_slots - 1) // 2}"
            )
        if controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {CONTROLLERS}, got {controller!r}")
        check_kernel(kernel)
        if kernel == "triton" and num_write_heads != 1:  # "auto" takes the plain step instead
            raise ValueError(
                f"kernel='triton' supports one write head, got num_write_heads={num_write_heads}; use kernel='plain'"
            )
        if not isinstance(memory_init, (int, float)) or not torch.isfinite(torch.tensor(float(memory_init))):
            raise ValueError(f"memory_init must be a finite float (e.g. 1e-6), got {memory_init!r}")
        if not isinstance(initial_weight_peak, (int, float)) or (
            num_slots > 1 and not 1.0 / num_slots <= initial_weight_peak < 1.0
        ):
            raise ValueError(
                f"initial_weight_peak must be in [1/num_slots, 1) = [{1.0 / num_slots:.4g}, 1), "
                f"got {initial_weight_peak!r}"
            )
        if clip_value is not None and (not isinstance(clip_value, (int, float)) or not clip_value > 0):
            raise ValueError(f"clip_value must be a positive float or None (no clipping), got {clip_value!r}")

        self.hidden_size = hidden_size
        self.num_slots = N = num_slots
        self.slot_size = W = slot_size
        self.num_read_heads = R = num_read_heads
        self.num_write_heads = Hw = num_write_heads
        self.max_shift = max_shift
        self.controller_type = controller
        self.kernel = kernel
        self.clip_value = None if clip_value is None else float(clip_value)
        self.output_size = hidden_size + R * W

        # ---- controller: input [x_t, r_{t-1}] (and h_{t-1} for the LSTM), ONE matmul per step
        ctrl_in = input_size + R * W
        if controller == "lstm":
            # gates [i, f, o, c~] = Linear([x_t, r_{t-1}, h_{t-1}])
            self.controller = nn.Linear(ctrl_in + hidden_size, 4 * hidden_size)
            with torch.no_grad():  # forget-gate bias 1 (Gers et al. 2000): remember by default
                self.controller.bias[hidden_size : 2 * hidden_size].fill_(1.0)
        else:
            self.controller = nn.Linear(ctrl_in, hidden_size)

        # ---- ONE fused projection from h_t to every head parameter. H = H_w + R heads, write heads first.
        # Layout of the projection (chosen so that each activation is one op over a contiguous slice):
        #   [ k (H W) | a (H_w W) | beta, gamma (2 H) | g (H) , e (H_w W) | s (H (2K+1)) ]
        #     identity   identity   softplus            sigmoid               softmax per head
        H, S = Hw + R, 2 * max_shift + 1
        self._sizes = dict(key=H * W, add=Hw * W, softplus=2 * H, sigmoid=H + Hw * W, shift=H * S)
        self.heads = nn.Linear(hidden_size, sum(self._sizes.values()))

        # ---- learned initial state (paper section 4: reset to learned bias values)
        if learn_memory_init:
            self.memory_init = LearnedInit(N, W, init=float(memory_init))
        else:
            self.register_buffer("memory_init_value", torch.full((N, W), float(memory_init)))
        self.learn_memory_init = learn_memory_init
        self.reads_init = LearnedInit(R, W, init=0.0)  # r_0
        # w_0 = softmax(logits): a distribution for every head, initial_weight_peak of it on slot 0:
        # e^l / (e^l + N - 1) = peak  <=>  l = log(peak (N - 1) / (1 - peak))
        logits = torch.zeros(N)
        if N > 1:
            logits[0] = math.log(initial_weight_peak * (N - 1) / (1.0 - initial_weight_peak))
        self.read_weights_init = LearnedInit(R, N, init=logits.expand(R, N))
        self.write_weights_init = LearnedInit(Hw, N, init=logits.expand(Hw, N))
        if controller == "lstm":
            self.h_init = LearnedInit(hidden_size, init=0.0)
            self.c_init = LearnedInit(hidden_size, init=0.0)

    # ------------------------------------------------------------------ state
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> NTMState:
        """The learned episode-start state (see :class:`NTMState` for shapes), on ``device``."""
        device = self._device(device)
        B = batch_size
        if self.learn_memory_init:
            memory = self.memory_init.expand(B, device)
        else:
            memory = self.memory_init_value.to(device=device, dtype=self._param_dtype())
            memory = memory.unsqueeze(0).expand((B,) + tuple(memory.shape))
        if self.controller_type == "lstm":
            ctrl = LSTMControllerState(self.h_init.expand(B, device), self.c_init.expand(B, device))
        else:
            ctrl = FeedForwardControllerState()
        return NTMState(
            controller=ctrl,
            memory=memory,
            read_weights=torch.softmax(self.read_weights_init.expand(B, device), dim=-1),
            write_weights=torch.softmax(self.write_weights_init.expand(B, device), dim=-1),
            reads=self.reads_init.expand(B, device),
        )

    # ------------------------------------------------------------------ one step
    def _controller(self, x: Tensor, reads: Tensor, ctrl):
        """``x``: ``[B, I]``, ``reads``: ``[B, R, W]`` -> ``h_t``: ``[B, hidden]`` and the new controller state."""
        B = x.shape[0]
        if self.controller_type == "lstm":
            inp = torch.cat([x, reads.reshape(B, -1).to(x.dtype), ctrl.h.to(x.dtype)], dim=1)
            gates = self.controller(inp)  # [B, 4 hidden]: i, f, o, c~
            Hd = self.hidden_size
            ifo, c_hat = gates.split([3 * Hd, Hd], dim=1)
            i, f, o = torch.sigmoid(ifo).chunk(3, dim=1)
            c = torch.addcmul(f * ctrl.c, i, torch.tanh(c_hat))  # c_t = f c_{t-1} + i c~
            h = o * torch.tanh(c)
            return h, LSTMControllerState(h.to(ctrl.h.dtype), c.to(ctrl.c.dtype))
        inp = torch.cat([x, reads.reshape(B, -1).to(x.dtype)], dim=1)
        return torch.tanh(self.controller(inp)), ctrl

    def _address(self, memory: Tensor, w_prev: Tensor, key, beta, gate, shift, gamma) -> Tensor:
        """NTM addressing (eqs. 5-9) for a group of heads: ``[B, H, N]`` weightings.

        memory ``[B, N, W]``; w_prev ``[B, H, N]``; key ``[B, H, W]``; beta, gate, gamma ``[B, H]``; shift
        ``[B, H, 2K+1]``.
        """
        w_c = content_weighting(memory, key, beta)  # eq. 5: softmax_i(beta K[k, M(i)])
        w_g = interpolate(w_c, w_prev, gate)  # eq. 7: g w^c + (1 - g) w_{t-1}
        w_s = circular_shift(w_g, shift) if self.max_shift > 0 else w_g  # eq. 8: circular convolution with s
        return sharpen(w_s, gamma)  # eq. 9: w~^gamma / sum_j w~(j)^gamma

    def step(self, x: Tensor, state: NTMState) -> tuple[Tensor, NTMState]:
        """One NTM step. ``x``: ``[B, input_size]`` -> ``y``: ``[B, hidden_size + R W]`` and the new state."""
        B = x.shape[0]
        R, Hw, W = self.num_read_heads, self.num_write_heads, self.slot_size
        H = R + Hw

        h, ctrl = self._controller(x, state.reads, state.controller)  # h_t: [B, hidden]
        params = self.heads(h)  # [B, P]: every head parameter from ONE matmul

        # Memory math in fp32 (or fp64) even under autocast / half-precision parameters.
        mem_dtype = torch.promote_types(state.memory.dtype, torch.float32)
        guard = (
            torch.autocast(device_type=x.device.type, enabled=False)
            if torch.is_autocast_enabled(x.device.type)
            else contextlib.nullcontext()
        )
        with guard:
            params = params.to(mem_dtype)
            if use_triton(self.kernel, x.device, applies=self.num_write_heads == 1):
                return self._step_triton(h, ctrl, params, state, mem_dtype)
            if self.clip_value is not None:
                params = params.clamp(-self.clip_value, self.clip_value)
            sz = self._sizes
            key_flat, add_flat, sp_flat, sg_flat, shift_flat = torch.split(
                params, [sz["key"], sz["add"], sz["softplus"], sz["sigmoid"], sz["shift"]], dim=1
            )
            # Activations on contiguous groups, then one split per group into write heads (first H_w) and read
            # heads (split/unbind: one autograd node for all pieces, unlike per-piece slicing).
            k_w, k_r = key_flat.view(B, H, W).split([Hw, R], dim=1)  # k_t, [B, H_w | R, W]
            add = add_flat.view(B, Hw, W)  # a_t, [B, H_w, W]
            sp_w, sp_r = F.softplus(sp_flat).view(B, 2, H).split([Hw, R], dim=2)  # [B, 2, H_w | R]
            beta_w, gamma_w = sp_w.unbind(1)  # beta_t = softplus >= 0
            beta_r, gamma_r = sp_r.unbind(1)
            gamma_w, gamma_r = 1.0 + gamma_w, 1.0 + gamma_r  # gamma_t = 1 + softplus >= 1
            gate, erase = torch.sigmoid(sg_flat).split([H, Hw * W], dim=1)  # g_t in (0, 1); e_t in (0, 1)^W
            gate_w, gate_r = gate.split([Hw, R], dim=1)
            erase = erase.view(B, Hw, W)
            # s_t: softmax over the shifts -K..K, [B, H_w | R, 2K+1]
            shift_w, shift_r = torch.softmax(shift_flat.view(B, H, -1), dim=-1).split([Hw, R], dim=1)

            memory = state.memory.to(mem_dtype)  # M_{t-1}, [B, N, W]
            # ---- write heads address M_{t-1}, then erase and add
            w_prev = state.write_weights.to(mem_dtype)
            w_write = self._address(memory, w_prev, k_w, beta_w, gate_w, shift_w, gamma_w)  # [B, H_w, N]
            memory = erase_and_add(memory, w_write, erase, add)  # M_t, eqs. 3-4
            # ---- read heads address the updated memory M_t
            w_prev = state.read_weights.to(mem_dtype)
            w_read = self._address(memory, w_prev, k_r, beta_r, gate_r, shift_r, gamma_r)  # [B, R, N]
            reads = read_memory(memory, w_read)  # r_t = sum_i w_t(i) M_t(i), [B, R, W]
        return self._output(h, ctrl, memory, w_read, w_write, reads, state)

    @staticmethod
    def _output(h: Tensor, ctrl, memory: Tensor, w_read: Tensor, w_write: Tensor, reads: Tensor, state: NTMState):
        """``y_t = [h_t, r_t]`` ``[B, hidden + R W]`` and the new state in the dtypes of ``state``."""
        y = torch.cat([h, reads.flatten(1).to(h.dtype)], dim=1)  # [B, hidden + R W]
        new_state = NTMState(
            controller=ctrl,
            memory=memory.to(state.memory.dtype),
            read_weights=w_read.to(state.read_weights.dtype),
            write_weights=w_write.to(state.write_weights.dtype),
            reads=reads.to(state.reads.dtype),
        )
        return y, new_state

    def _step_triton(self, h: Tensor, ctrl, params: Tensor, state: NTMState, mem_dtype: torch.dtype):
        """The memory access of :meth:`step` through :func:`memory_cores.ntm_triton.ntm_access` (same equations)."""
        from .ntm_triton import ntm_access  # imports Triton only where the kernel is asked for

        R = self.num_read_heads
        memory, w_read, w_write, reads = ntm_access(
            params,
            state.memory.to(mem_dtype),
            state.read_weights.to(mem_dtype),
            state.write_weights.to(mem_dtype),
            clip=self.clip_value,
            eps=EPS,
            num_read_heads=R,
            num_shifts=2 * self.max_shift + 1,
        )
        return self._output(h, ctrl, memory, w_read, w_write, reads, state)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, controller={self.controller_type!r}, hidden_size={self.hidden_size}, "
            f"num_slots={self.num_slots}, slot_size={self.slot_size}, num_read_heads={self.num_read_heads}, "
            f"num_write_heads={self.num_write_heads}, max_shift={self.max_shift}, output_size={self.output_size}"
            + (f", kernel={self.kernel!r}" if self.kernel != "plain" else "")
        )
