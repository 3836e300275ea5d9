"""Grid LSTM core (Kalchbrenner, Danihelka and Graves 2016, "Grid Long Short-Term Memory", ICLR, arXiv:1507.01526).

An N-dimensional Grid LSTM *block* receives one hidden vector ``h_i`` and one memory vector ``m_i`` per dimension
``i`` and returns new ones for every dimension. Paper, section 3.1 (``H`` is the concatenation of the hidden vectors,
``LSTM`` the standard cell with its own weights ``W_i`` per dimension)::

    H            = [h_1 ; ... ; h_N]
    (h'_1, m'_1) = LSTM(H, m_1, W_1)
    ...
    (h'_N, m'_N) = LSTM(H, m_N, W_N)

    LSTM(H, m, W):   [g^u, g^f, g^o, g^c] = W H + b           one matrix per dimension, gates in torch's order
                     m' = sigma(g^f) * m + sigma(g^u) * tanh(g^c)
                     h' = sigma(g^o) * tanh(m')

(The paper's eq. 2 prints ``h' = tanh(g^o * m')``; this core uses the usual ``sigma(g^o) * tanh(m')`` of
``torch.nn.LSTM``, so that a depth-1 grid is exactly a plain LSTM, see below.)

This core is the paper's 2-dimensional grid over (time, depth) used for sequences (paper, section 4.2, "2-LSTM"):
block ``(t, l)`` (time step ``t``, depth layer ``l = 1..L``) gets the *time* pair from block ``(t-1, l)`` and the
*depth* pair from block ``(t, l-1)``; the depth dimension is unrolled inside each time step::

    h^depth_{t,0} = W_x x_t + b_x,   m^depth_{t,0} = 0                  the input is projected into the first block
    for l = 1..L:
        H = [h^time_{t-1,l} ; h^depth_{t,l-1}]                                          [B, 2 hidden_size]
        (h^time_{t,l},  m^time_{t,l})  = LSTM(H, m^time_{t-1,l},  W^time_l)              along time: the memory
        (h^depth_{t,l}, m^depth_{t,l}) = LSTM(H, m^depth_{t,l-1}, W^depth_l)             along depth: LSTM cells in depth
    y_t = h^depth_{t,L}                                                                  output_size = hidden_size

The state carries the time pair ``(h^time_{t,l}, m^time_{t,l})`` of every depth layer (:class:`GridLSTMState`);
the depth pair lives inside one step. Weights along depth are untied (``W^time_l``, ``W^depth_l`` per layer) or
tied (``tied=True``: one ``W^time`` and one ``W^depth`` shared by every layer, the paper's "Tied 2-LSTM", whose
parameter count does not grow with depth). The two LSTMs of a block read the same ``H``, so their gate
pre-activations are one matmul ``[W^time_l ; W^depth_l] H``.

Fast path: :meth:`GridLSTMCore.unroll` runs the grid by anti-diagonals (a wavefront): block ``(t, l)`` depends only
on ``(t-1, l)`` and ``(t, l-1)``, so the blocks with ``t + l = w`` run together as one batched matmul, ``T + L - 1``
waves in place of ``T L`` blocks, resets applied per block. :meth:`GridLSTMCore.step` is the plain reading of the
equations; the tests check the wavefront equal to the step loop (float64 values and gradients, resets inside).

Depth 1, read along time, is a plain LSTM over the projected input ``W_x x_t + b_x``: its input weights are the
``h^depth`` columns of ``W^time_1`` and its recurrent weights the ``h^time`` columns (``tests/test_grid_lstm.py``
checks this against ``torch.nn.LSTM`` with those weights).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .base import Core, LearnedInit


class GridLSTMState(NamedTuple):
    """State of :class:`GridLSTMCore`, batch first.

    Attributes:
        h: ``[B, num_layers, hidden_size]`` h^time_{t-1,l}: the time-dimension hidden vector of every depth layer.
        m: ``[B, num_layers, hidden_size]`` m^time_{t-1,l}: the time-dimension memory vector of every depth layer.
    """

    h: Tensor
    m: Tensor


def lstm_cell(gates: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """The standard LSTM update from gate pre-activations ``gates`` ``[B, 4H]`` (torch order u, f, c, o) and the
    memory ``m`` ``[B, H]``: ``m' = sigma(f) m + sigma(u) tanh(c)``, ``h' = sigma(o) tanh(m')``. Returns
    ``(h', m')``."""
    g_u, g_f, g_c, g_o = gates.chunk(4, dim=-1)
    m_new = torch.sigmoid(g_f) * m + torch.sigmoid(g_u) * torch.tanh(g_c)
    return torch.sigmoid(g_o) * torch.tanh(m_new), m_new


class GridLSTMCore(Core):
    """2-d Grid LSTM over (time, depth): LSTM cells along time and along depth in every block.

    Args:
        input_size: width of ``x``.
        hidden_size: width of every hidden and memory vector, in both dimensions (the paper uses one size for all).
        num_layers: L, the depth of the grid (blocks per time step).
        tied: share one block's weights (``W^time``, ``W^depth``) across all ``L`` depth layers (the paper's "tied"
            grid); False gives each layer its own.
        forget_bias: initial bias of both forget gates (1.0, Jozefowicz et al. 2015, helps the depth cells carry
            their memory through many layers at the start); the other weights and biases start as
            ``torch.nn.LSTM``'s, uniform in ``+-1/sqrt(hidden_size)``.
        learn_initial_state: learn ``h^time_0``, ``m^time_0`` per layer (default: zeros, as torch's LSTM).
        fused: let :meth:`unroll` run the grid by anti-diagonals (:meth:`_unroll_wavefront`: ``T + L - 1`` batched
            matmuls instead of ``T L``), equal to the step loop; False: the step loop.

    Output: ``y_t = h^depth_{t,L}``, ``[B, hidden_size]``. State: :class:`GridLSTMState`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        tied: bool = False,
        forget_bias: float = 1.0,
        learn_initial_state: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__(input_size)
        for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(tied, bool):
            raise TypeError(f"tied must be a bool (True: one block's weights shared along depth), got {tied!r}")
        H = hidden_size
        self.hidden_size, self.num_layers, self.tied = H, num_layers, tied
        self.learn_initial_state = learn_initial_state
        self.fused = bool(fused)
        self.output_size = H
        # h^depth_{t,0} = W_x x_t + b_x
        self.input_proj = nn.Linear(input_size, H)
        # [W^time_l ; W^depth_l]: [L_w, 8H, 2H] with L_w = 1 when tied. Rows 0..4H-1 are the time LSTM's gates, rows
        # 4H..8H-1 the depth LSTM's; columns 0..H-1 read h^time_{t-1,l}, columns H..2H-1 read h^depth_{t,l-1}.
        n_w = 1 if tied else num_layers
        bound = 1.0 / math.sqrt(H)
        self.weight = nn.Parameter(torch.empty(n_w, 8 * H, 2 * H).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_w, 8 * H).uniform_(-bound, bound))
        with torch.no_grad():
            self.bias[:, H : 2 * H] = forget_bias  # time LSTM's forget gate
            self.bias[:, 5 * H : 6 * H] = forget_bias  # depth LSTM's forget gate
        if learn_initial_state:
            self.h0 = LearnedInit(num_layers, H)
            self.m0 = LearnedInit(num_layers, H)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> GridLSTMState:
        device = self._device(device)
        if self.learn_initial_state:
            return GridLSTMState(self.h0.expand(batch_size, device), self.m0.expand(batch_size, device))
        z = torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device, dtype=self._param_dtype())
        return GridLSTMState(z, z.clone())

    def block_weights(self, layer: int) -> tuple[Tensor, Tensor]:
        """``([W^time_l ; W^depth_l], [b^time_l ; b^depth_l])`` of depth layer ``layer`` (0-based): ``[8H, 2H]``,
        ``[8H]``."""
        i = 0 if self.tied else layer
        return self.weight[i], self.bias[i]

    def step(self, x: Tensor, state: GridLSTMState) -> tuple[Tensor, GridLSTMState]:
        H = self.hidden_size
        h_depth = self.input_proj(x)  # h^depth_{t,0}: [B, H]
        m_depth = torch.zeros_like(h_depth)  # m^depth_{t,0}
        hs, ms = [], []
        for l in range(self.num_layers):
            W, b = self.block_weights(l)
            grid_in = torch.cat([state.h[:, l], h_depth], dim=-1)  # H = [h^time_{t-1,l} ; h^depth_{t,l-1}]: [B, 2H]
            gates = torch.addmm(b, grid_in, W.t())  # [B, 8H]: time LSTM's 4H gates, then the depth LSTM's
            h_time, m_time = lstm_cell(gates[:, : 4 * H], state.m[:, l])  # along time
            h_depth, m_depth = lstm_cell(gates[:, 4 * H :], m_depth)  # along depth
            hs.append(h_time)
            ms.append(m_time)
        return h_depth, GridLSTMState(torch.stack(hs, dim=1), torch.stack(ms, dim=1))

    # ------------------------------------------------------------------ fast path: wavefront unroll
    def unroll(self, xs: Tensor, state: GridLSTMState, resets: Tensor | None = None) -> tuple[Tensor, GridLSTMState]:
        """Time-major unroll, equal to the step loop (``Core.unroll``); with ``fused`` (default) and ``T > 1`` it
        runs the grid by anti-diagonals (:meth:`_unroll_wavefront`), else the step loop."""
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None and resets.shape != xs.shape[:2]:
            raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
        if not self.fused or xs.shape[0] == 1 or self.num_layers == 1:
            return super().unroll(xs, state, resets)
        return self._unroll_wavefront(xs, state, resets)

    def _unroll_wavefront(
        self, xs: Tensor, state: GridLSTMState, resets: Tensor | None
    ) -> tuple[Tensor, GridLSTMState]:
        """The same grid computed by anti-diagonals: block ``(t, l)`` needs only ``(t-1, l)`` (time pair) and
        ``(t, l-1)`` (depth pair), so all blocks with ``t + l = w`` are independent and run as one batched matmul.
        ``T + L - 1`` waves instead of ``T L`` blocks; layer ``l`` handles step ``t = w - l`` in wave ``w``.

        A reset of row ``b`` at step ``t`` replaces that row's time pair of layer ``l`` with the initial one just
        before block ``(t, l)``, which is what the step loop's reset of the whole state before step ``t`` means
        for that block.
        """
        T, B, _ = xs.shape
        L, H = self.num_layers, self.hidden_size
        depth_in = self.input_proj(xs)  # h^depth_{t,0} for every t: [T, B, H]
        init = self.initial_state(B, device=xs.device) if resets is not None else None
        time_h, time_m = list(state.h.unbind(1)), list(state.m.unbind(1))  # per layer: [B, H]
        depth_h: list[Tensor | None] = [None] * L  # depth pair leaving layer l in the previous wave
        depth_m: list[Tensor | None] = [None] * L
        zeros = torch.zeros_like(depth_in[0])
        ys = []
        W_all, b_all = self.weight, self.bias  # [L_w, 8H, 2H], [L_w, 8H]
        for w in range(T + L - 1):
            lo, hi = max(0, w - T + 1), min(L - 1, w)  # active layers; layer l handles step t = w - l
            n = hi - lo + 1
            h_t = torch.stack(time_h[lo : hi + 1])  # [n, B, H]
            m_t = torch.stack(time_m[lo : hi + 1])
            if resets is not None:
                steps = torch.arange(w - lo, w - hi - 1, -1, device=xs.device)  # t of each active layer
                r = resets.index_select(0, steps).unsqueeze(-1)  # [n, B, 1]
                h_t = torch.where(r, init.h.transpose(0, 1)[lo : hi + 1], h_t)
                m_t = torch.where(r, init.m.transpose(0, 1)[lo : hi + 1], m_t)
            below_h = [depth_in[w] if l == 0 else depth_h[l - 1] for l in range(lo, hi + 1)]
            below_m = [zeros if l == 0 else depth_m[l - 1] for l in range(lo, hi + 1)]
            grid_in = torch.cat([h_t, torch.stack(below_h)], dim=-1)  # [n, B, 2H]
            if self.tied:
                W, b = W_all.expand(n, -1, -1), b_all.expand(n, -1)
            else:
                W, b = W_all[lo : hi + 1], b_all[lo : hi + 1]
            gates = torch.baddbmm(b.unsqueeze(1), grid_in, W.transpose(1, 2))  # [n, B, 8H]
            h_time, m_time = lstm_cell(gates[..., : 4 * H], m_t)
            h_depth, m_depth = lstm_cell(gates[..., 4 * H :], torch.stack(below_m))
            for i, l in enumerate(range(lo, hi + 1)):
                time_h[l], time_m[l] = h_time[i], m_time[i]
                depth_h[l], depth_m[l] = h_depth[i], m_depth[i]
            if hi == L - 1:
                ys.append(depth_h[L - 1])  # y_t for t = w - (L - 1)
        return torch.stack(ys), GridLSTMState(torch.stack(time_h, 1), torch.stack(time_m, 1))

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
            f"tied={self.tied}, fused={self.fused}"
        )
