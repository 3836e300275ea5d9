"""Known-answer tests of the Grid LSTM core (memory_cores/grid_lstm.py).

The contract tests (tests/test_core_contract.py) cover the rest: reset semantics per step, unroll == step loop,
pack/unpack, save/load, extreme inputs, 1000-step unrolls, float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memory_cores import make_core
from memory_cores.grid_lstm import GridLSTMCore, GridLSTMState

torch.set_num_threads(1)

I, H = 5, 6


def core64(seed: int = 0, **kw) -> GridLSTMCore:
    torch.manual_seed(seed)
    return GridLSTMCore(I, **{"hidden_size": H, "num_layers": 3, **kw}).double()


def sig(z):
    return 1.0 / (1.0 + torch.exp(-z))


def reference_step(core: GridLSTMCore, x, h_time, m_time):
    """The block equations written out per dimension with separate matrices (no fused gates), float64."""
    h_depth = x @ core.input_proj.weight.t() + core.input_proj.bias
    m_depth = torch.zeros_like(h_depth)
    new_h, new_m = [], []
    for l in range(core.num_layers):
        W, b = core.block_weights(l)
        W_time, W_depth = W[: 4 * H], W[4 * H :]  # W^time_l, W^depth_l: [4H, 2H]
        b_time, b_depth = b[: 4 * H], b[4 * H :]
        Hcat = torch.cat([h_time[:, l], h_depth], -1)  # H = [h_1 ; h_2]
        outs = []
        for Wd, bd, m in ((W_time, b_time, m_time[:, l]), (W_depth, b_depth, m_depth)):
            g = Hcat @ Wd.t() + bd
            g_u, g_f, g_c, g_o = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :]
            m_new = sig(g_f) * m + sig(g_u) * torch.tanh(g_c)
            outs.append((sig(g_o) * torch.tanh(m_new), m_new))
        (ht, mt), (h_depth, m_depth) = outs
        new_h.append(ht)
        new_m.append(mt)
    return h_depth, torch.stack(new_h, 1), torch.stack(new_m, 1)


@pytest.mark.parametrize("tied", [False, True])
def test_step_matches_the_block_equations_written_out(tied):
    core = core64(tied=tied)
    B, T = 3, 5
    xs = torch.randn(T, B, I, dtype=torch.float64)
    state = GridLSTMState(torch.randn(B, 3, H, dtype=torch.float64), torch.randn(B, 3, H, dtype=torch.float64))
    h, m = state
    ys, s = core.unroll(xs, state)
    for t in range(T):
        y, h, m = reference_step(core, xs[t], h, m)
        torch.testing.assert_close(ys[t], y, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s.h, h, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s.m, m, atol=1e-12, rtol=1e-12)


def test_depth_one_is_a_plain_lstm_of_the_same_weights_along_time():
    """L = 1: (h^time_t, m^time_t) is torch.nn.LSTM over p_t = W_x x_t + b_x, with W_ih = the h^depth columns of
    W^time and W_hh = its h^time columns."""
    core = core64(num_layers=1)
    W, b = core.block_weights(0)
    lstm = nn.LSTM(H, H).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(W[: 4 * H, H:])
        lstm.weight_hh_l0.copy_(W[: 4 * H, :H])
        lstm.bias_ih_l0.copy_(b[: 4 * H])
        lstm.bias_hh_l0.zero_()
    B, T = 4, 9
    xs = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)
    ref_out, (ref_h, ref_c) = lstm(core.input_proj(xs), (h0, c0))
    state = GridLSTMState(h0.transpose(0, 1), c0.transpose(0, 1))
    hs = []
    for t in range(T):
        _, state = core(xs[t], state)
        hs.append(state.h[:, 0])
    torch.testing.assert_close(torch.stack(hs), ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(state.m[:, 0], ref_c[0], atol=1e-12, rtol=1e-12)


def test_depth_memory_carries_through_layers_as_the_equations_say():
    """Layer 1 writes its depth memory, layers 2..L only carry it (forget gate open, input gate shut): the top
    memory is layer 1's, so y = sigma(o_L) tanh(m^depth_1) = tanh(m^depth_1) with the output gate open."""
    L = 4
    core = core64(num_layers=L)
    big = 40.0
    with torch.no_grad():
        for l in range(1, L):
            core.weight[l, 4 * H : 6 * H].zero_()  # depth u, f gates ignore H: set by their biases alone
            core.bias[l, 4 * H : 5 * H] = -big  # depth input gate g^u shut
            core.bias[l, 5 * H : 6 * H] = big  # depth forget gate g^f open
        core.weight[L - 1, 7 * H :].zero_()
        core.bias[L - 1, 7 * H :] = big  # top depth output gate g^o open
    B = 3
    x = torch.randn(B, I, dtype=torch.float64)
    state = GridLSTMState(torch.randn(B, L, H, dtype=torch.float64), torch.randn(B, L, H, dtype=torch.float64))
    y, _ = core(x, state)
    # m^depth_1 by hand: m^depth_0 = 0, so m^depth_1 = sigma(u) tanh(c) of layer 1's depth gates
    W, b = core.block_weights(0)
    g = torch.cat([state.h[:, 0], core.input_proj(x)], -1) @ W[4 * H :].t() + b[4 * H :]
    m_depth_1 = sig(g[:, :H]) * torch.tanh(g[:, 2 * H : 3 * H])
    torch.testing.assert_close(y, torch.tanh(m_depth_1), atol=1e-12, rtol=1e-12)


def test_time_memory_carries_across_steps_when_the_gates_say_so():
    core = core64(num_layers=2)
    with torch.no_grad():
        core.weight[:, : 2 * H].zero_()
        core.bias[:, :H] = -40.0  # time input gate shut
        core.bias[:, H : 2 * H] = 40.0  # time forget gate open
    B = 2
    m0 = torch.randn(B, 2, H, dtype=torch.float64)
    _, s = core.unroll(torch.randn(7, B, I, dtype=torch.float64), GridLSTMState(torch.zeros_like(m0), m0))
    torch.testing.assert_close(s.m, m0, atol=1e-12, rtol=0)


def test_tied_weights_are_shared_along_depth():
    tied = core64(tied=True, num_layers=5)
    deep_tied = core64(tied=True, num_layers=9)
    untied = core64(tied=False, num_layers=5)
    n = lambda c: sum(p.numel() for p in c.parameters())  # noqa: E731
    assert n(tied) == n(deep_tied)  # the tied grid's size does not grow with depth
    assert n(untied) - n(tied) == 4 * (8 * H * 2 * H + 8 * H)  # 4 more blocks of [8H, 2H] weights + [8H] biases
    assert tied.weight.shape == (1, 8 * H, 2 * H) and untied.weight.shape == (5, 8 * H, 2 * H)
    # an untied grid whose layers all hold the tied block's weights computes the same function
    with torch.no_grad():
        untied.weight.copy_(tied.weight.expand_as(untied.weight))
        untied.bias.copy_(tied.bias.expand_as(untied.bias))
        untied.input_proj.load_state_dict(tied.input_proj.state_dict())
    xs = torch.randn(6, 3, I, dtype=torch.float64)
    ys_t, s_t = tied.unroll(xs, tied.initial_state(3))
    ys_u, s_u = untied.unroll(xs, untied.initial_state(3))
    torch.testing.assert_close(ys_t, ys_u, atol=0, rtol=0)
    # one gradient per shared block: every layer's use accumulates into weight[0]
    ys_t.sum().backward()
    ys_u.sum().backward()
    torch.testing.assert_close(tied.weight.grad[0], untied.weight.grad.sum(0), atol=1e-12, rtol=1e-10)


def test_gradient_reaches_the_input_through_deep_grids():
    core = GridLSTMCore(I, hidden_size=8, num_layers=24, tied=True)
    x = torch.randn(2, I, requires_grad=True)
    y, _ = core(x, core.initial_state(2))
    y.sum().backward()
    assert x.grad.abs().sum() > 1e-6


def test_learned_initial_state_and_errors():
    core = make_core("grid_lstm", I, hidden_size=H, num_layers=2, learn_initial_state=True)
    with torch.no_grad():
        core.h0.value.normal_()
    s = core.initial_state(3)
    assert s.h.shape == (3, 2, H) and torch.equal(s.h[0], core.h0.value)
    with pytest.raises(ValueError, match="num_layers"):
        GridLSTMCore(I, num_layers=0)
    with pytest.raises(ValueError, match="hidden_size"):
        GridLSTMCore(I, hidden_size=-1)
    with pytest.raises(TypeError, match="tied"):
        GridLSTMCore(I, tied="yes")


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("T,L", [(7, 3), (2, 5), (6, 1)])
def test_wavefront_unroll_equals_step_loop_values_and_gradients_float64(tied, T, L):
    from memory_cores.base import Core

    core = core64(seed=3, tied=tied, num_layers=L, learn_initial_state=True)
    with torch.no_grad():
        core.h0.value.normal_()
        core.m0.value.normal_()
    B = 4
    xs = torch.randn(T, B, I, dtype=torch.float64)
    resets = torch.rand(T, B, generator=torch.Generator().manual_seed(1)) < 0.3
    resets[0, 0] = resets[T - 1, 1] = True
    h0 = torch.randn(B, L, H, dtype=torch.float64, requires_grad=True)
    m0 = torch.randn(B, L, H, dtype=torch.float64, requires_grad=True)

    def run(unroll):
        core.zero_grad()
        xs_ = xs.clone().requires_grad_(True)
        ys, s = unroll(xs_, GridLSTMState(h0, m0), resets)
        w = torch.linspace(-1, 1, ys.numel(), dtype=torch.float64).reshape(ys.shape)
        loss = (ys * w).sum() + (s.h ** 2).sum() + s.m.sum()
        grads = torch.autograd.grad(loss, (xs_, h0, m0) + tuple(core.parameters()))
        return ys, s, grads

    ys_f, s_f, g_f = run(core.unroll)
    ys_l, s_l, g_l = run(lambda *a: Core.unroll(core, *a))
    torch.testing.assert_close(ys_f, ys_l, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_f.h, s_l.h, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_f.m, s_l.m, atol=1e-12, rtol=1e-10)
    for a, b in zip(g_f, g_l):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)
    assert g_f[-1].abs().sum() > 0  # the resets reach the learned initial state (m0 is the last parameter)
