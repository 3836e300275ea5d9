"""LSTM and GRU cores: thin wrappers over ``torch.nn.LSTM`` / ``torch.nn.GRU``, the baselines.

Both use torch's fused multi-step kernel in :meth:`unroll` when no row resets inside the sequence (then the
fused call is exactly the step loop), and the step loop otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .base import Core, LearnedInit


class LSTMState(NamedTuple):
    """``h``: ``[B, num_layers, hidden_size]`` hidden outputs; ``c``: ``[B, num_layers, hidden_size]`` cells."""

    h: Tensor
    c: Tensor


class GRUState(NamedTuple):
    """``h``: ``[B, num_layers, hidden_size]``."""

    h: Tensor


class _TorchRNNCore(Core):
    """Shared plumbing: state is batch first ``[B, L, H]``, torch wants ``[L, B, H]``."""

    rnn: nn.LSTM | nn.GRU

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, learn_initial_state: bool) -> None:
        super().__init__(input_size)
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(f"hidden_size and num_layers must be positive, got {hidden_size}, {num_layers}")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_size = hidden_size
        self.learn_initial_state = learn_initial_state

    def _unroll_fused(self, xs: Tensor, state):
        raise NotImplementedError

    def unroll(self, xs: Tensor, state, resets: Tensor | None = None):
        """Time-major unroll, equal to the step loop; fused cuDNN/MKL path when nothing resets after t=0."""
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None:
            if resets.shape != xs.shape[:2]:
                raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
            state = self.reset_state(state, resets[0])
            if bool(resets[1:].any()):  # one host sync per unroll, not per step
                return super().unroll(xs, state, torch.cat([torch.zeros_like(resets[:1]), resets[1:]]))
        return self._unroll_fused(xs, state)

    def unroll_sync_free(self, xs: Tensor, state, resets: Tensor | None = None):
        """The step loop: :meth:`unroll` reads the reset flags on the host to choose its fused path."""
        return Core.unroll(self, xs, state, resets)


class LSTMCore(_TorchRNNCore):
    """LSTM (Hochreiter and Schmidhuber 1997) over ``torch.nn.LSTM``.

    Args:
        input_size: width of ``x``.
        hidden_size: H, units per layer; ``output_size == hidden_size``.
        num_layers: stacked layers.
        learn_initial_state: learn ``h_0`` and ``c_0`` (default zeros, as torch).
    """

    def __init__(
        self, input_size: int, hidden_size: int = 128, num_layers: int = 1, learn_initial_state: bool = False
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, learn_initial_state)
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers)
        if learn_initial_state:
            self.h0 = LearnedInit(num_layers, hidden_size)
            self.c0 = LearnedInit(num_layers, hidden_size)

    def initial_state(self, batch_size: int, device=None) -> LSTMState:
        device = self._device(device)
        if self.learn_initial_state:
            return LSTMState(self.h0.expand(batch_size, device), self.c0.expand(batch_size, device))
        z = torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device, dtype=self._param_dtype())
        return LSTMState(z, z.clone())

    def step(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        ys, new = self._unroll_fused(x.unsqueeze(0), state)
        return ys[0], new

    def _unroll_fused(self, xs: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        # state [B, L, H] -> torch's [L, B, H]
        h0, c0 = state.h.transpose(0, 1).contiguous(), state.c.transpose(0, 1).contiguous()
        ys, (h, c) = self.rnn(xs, (h0, c0))
        return ys, LSTMState(h.transpose(0, 1), c.transpose(0, 1))


class GRUCore(_TorchRNNCore):
    """GRU (Cho et al. 2014) over ``torch.nn.GRU``.

    Args:
        input_size: width of ``x``.
        hidden_size: H, units per layer; ``output_size == hidden_size``.
        num_layers: stacked layers.
        learn_initial_state: learn ``h_0`` (default zeros, as torch).
    """

    def __init__(
        self, input_size: int, hidden_size: int = 128, num_layers: int = 1, learn_initial_state: bool = False
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, learn_initial_state)
        self.rnn = nn.GRU(input_size, hidden_size, num_layers)
        if learn_initial_state:
            self.h0 = LearnedInit(num_layers, hidden_size)

    def initial_state(self, batch_size: int, device=None) -> GRUState:
        device = self._device(device)
        if self.learn_initial_state:
            return GRUState(self.h0.expand(batch_size, device))
        return GRUState(
            torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device, dtype=self._param_dtype())
        )

    def step(self, x: Tensor, state: GRUState) -> tuple[Tensor, GRUState]:
        ys, new = self._unroll_fused(x.unsqueeze(0), state)
        return ys[0], new

    def _unroll_fused(self, xs: Tensor, state: GRUState) -> tuple[Tensor, GRUState]:
        ys, h = self.rnn(xs, state.h.transpose(0, 1).contiguous())
        return ys, GRUState(h.transpose(0, 1))
