"""Known-answer tests of the FFM core (the scan itself is tested in tests/test_lru.py).

The contract tests (tests/test_core_contract.py) cover the rest: reset semantics per step, pack/unpack, save/load,
extreme inputs, 1000-step unrolls, float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from memory_cores import make_core
from memory_cores.base import Core
from memory_cores.ffm import FFMCore
from memory_cores.lru import as_complex

torch.set_num_threads(1)


def double_core(seed: int = 0, **kw) -> FFMCore:
    torch.manual_seed(seed)
    kw = {"hidden_size": 6, "memory_size": 3, "context_size": 2, "learn_initial_state": True, **kw}
    core = FFMCore(4, **kw).double()
    if core.learn_initial_state:
        with torch.no_grad():
            core.S0.value.normal_()  # a learned initial state that differs from zeros
    return core


def test_unroll_scan_equals_step_loop_values_and_gradients_float64():
    core = double_core()
    T, B = 11, 3
    xs = torch.randn(T, B, 4, dtype=torch.float64)
    resets = torch.rand(T, B, generator=torch.Generator().manual_seed(0)) < 0.25
    resets[0, 0] = resets[3, 1] = True  # at t = 0 (the base class's reset) and inside the sequence
    _, state0 = Core.unroll(core, torch.randn(3, B, 4, dtype=torch.float64), core.initial_state(B))
    state0 = state0._replace(S=state0.S.detach().requires_grad_(True))

    def run(unroll):
        core.zero_grad()
        xs_ = xs.clone().requires_grad_(True)
        ys, s = unroll(xs_, state0, resets)
        loss = (ys * torch.linspace(-1, 1, ys.numel(), dtype=torch.float64).reshape(ys.shape)).sum()
        loss = loss + (s.S**2).sum()
        gx, gs = torch.autograd.grad(loss, (xs_, state0.S), retain_graph=True)
        loss.backward()
        return ys, s, gx, gs, {n: p.grad.clone() for n, p in core.named_parameters()}

    ys_s, s_s, gx_s, gs_s, gp_s = run(core.unroll)  # parallel scan
    ys_l, s_l, gx_l, gs_l, gp_l = run(lambda *a: Core.unroll(core, *a))  # the step loop
    torch.testing.assert_close(ys_s, ys_l, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_s.S, s_l.S, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(gx_s, gx_l, atol=1e-11, rtol=1e-9)
    torch.testing.assert_close(gs_s, gs_l, atol=1e-11, rtol=1e-9)
    assert gp_s.keys() == gp_l.keys()
    for name in gp_l:
        torch.testing.assert_close(gp_s[name], gp_l[name], atol=1e-11, rtol=1e-9, msg=name)
    assert gp_s["S0.value"].abs().sum() > 0  # the resets reach the learned initial state


def test_hand_set_decay_and_oscillation_give_closed_form_state():
    """S_{T-1} = sum_k gamma^{T-1-k} x~_k 1^T + gamma^T S_{-1}, with gamma_{jk} = exp(-|alpha_j| + i omega_k)."""
    core = double_core(seed=1, learn_initial_state=False)
    with torch.no_grad():
        core.alpha.copy_(torch.tensor([0.1, -0.5, 0.02]))  # a negative alpha decays too: -|alpha|
        core.omega.copy_(torch.tensor([math.pi / 3, 0.7]))
    gamma = torch.exp(torch.complex(-core.alpha.detach().abs().unsqueeze(1).expand(3, 2),
                                    core.omega.detach().unsqueeze(0).expand(3, 2)))  # [m, c]
    torch.testing.assert_close(core.gamma().detach(), gamma)
    T, B = 9, 2
    xs = torch.randn(T, B, 4, dtype=torch.float64)
    S_prev = torch.randn(B, 3, 2, 2, dtype=torch.float64)
    x_in = core.gates(xs)[0].detach()  # x~_t: [T, B, m]
    expected = gamma**T * as_complex(S_prev)
    for k in range(T):
        expected = expected + gamma ** (T - 1 - k) * x_in[k].unsqueeze(-1)
    for unroll in (core.unroll, lambda *a: Core.unroll(core, *a)):
        _, s = unroll(xs, core.initial_state(B)._replace(S=S_prev))
        torch.testing.assert_close(as_complex(s.S).detach(), expected, atol=1e-12, rtol=1e-10)


def test_reset_inside_unroll_equals_fresh_start():
    core = double_core(seed=2)
    T, B, t0 = 10, 3, 4
    xs = torch.randn(T, B, 4, dtype=torch.float64)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[t0, 1] = True
    _, state = core.unroll(torch.randn(5, B, 4, dtype=torch.float64), core.initial_state(B))
    ys, s = core.unroll(xs, state, resets)
    ys_fresh, s_fresh = core.unroll(xs[t0:, 1:2], core.initial_state(1))
    torch.testing.assert_close(ys[t0:, 1:2], ys_fresh, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s.S[1:2], s_fresh.S, atol=1e-12, rtol=1e-10)
    # the other rows do not see row 1's reset (equal to rounding: with resets the scan's tensors are per row)
    ys_plain, _ = core.unroll(xs, state)
    torch.testing.assert_close(ys[:, [0, 2]], ys_plain[:, [0, 2]], atol=1e-14, rtol=1e-12)


def test_initialisation_spans_the_periods():
    core = FFMCore(3, hidden_size=8, memory_size=5, context_size=4, min_period=2, max_period=100, forgotten_at=0.05)
    periods = 2 * math.pi / core.omega.detach()
    torch.testing.assert_close(periods, torch.linspace(2, 100, 4))
    decay = core.gamma().detach().abs()[:, 0]  # |gamma_j| per memory channel
    assert float(decay[0]) == pytest.approx(0.5, rel=1e-5)  # the fastest memory halves every step
    # the slowest falls to forgotten_at after max_period steps
    assert float(decay[-1]) ** 100 == pytest.approx(0.05, rel=1e-4)
    assert (decay.diff() > 0).all()


def test_make_core_is_a_drop_in_gru_and_errors():
    core = make_core("ffm", 7, hidden_size=12)
    assert isinstance(core, FFMCore) and core.output_size == 12
    assert core.initial_state(3).S.shape == (3, 32, 4, 2)
    assert core.state_size == 256  # as an LSTM(128)'s h and c
    y, _ = core(torch.randn(3, 7), core.initial_state(3))
    assert y.shape == (3, 12)
    with pytest.raises(ValueError, match="memory_size"):
        make_core("ffm", 7, memory_size=0)
    with pytest.raises(ValueError, match="min_period"):
        make_core("ffm", 7, min_period=10, max_period=5)
