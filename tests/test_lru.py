"""Known-answer tests of the LRU core and the resettable parallel scan (memory_cores/scan.py).

The contract tests (tests/test_core_contract.py) cover the rest: reset semantics per step, pack/unpack, save/load,
extreme inputs, 1000-step unrolls, float64.
"""

from __future__ import annotations

import math

import pytest
import torch

import memory_cores
from memory_cores import make_core, scan
from memory_cores.base import Core
from memory_cores.lru import LRUCore, as_complex
from memory_cores.scan import linear_scan_loop, resettable_scan

torch.set_num_threads(1)


def random_resets(T: int, B: int, p: float = 0.25, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(T, B, generator=g) < p
    r[0, 0] = True  # a reset at t = 0 (handled by the base class) and inside the sequence
    r[min(3, T - 1), min(1, B - 1)] = True
    return r


# ---------------------------------------------------------------------------------------------- the scan alone
@pytest.mark.parametrize("T", [1, 2, 3, 7, 16, 33])
@pytest.mark.parametrize("with_resets", [False, True])
def test_scan_equals_loop_values_and_gradients(T, with_resets):
    torch.manual_seed(T)
    B, N = 3, 4
    mod = torch.rand(N, dtype=torch.float64) * 0.99
    phase = torch.rand(N, dtype=torch.float64) * 6.0
    mod.requires_grad_(True)
    phase.requires_grad_(True)
    b = torch.randn(T, B, N, dtype=torch.complex128, requires_grad=True)
    reset = random_resets(T, B, seed=T).unsqueeze(-1) if with_resets else None

    def run(fn):
        a = torch.polar(mod, phase).expand(T, 1, N)
        h = fn(a, b, reset)
        w = torch.linspace(-1, 1, h.numel(), dtype=torch.float64).reshape(h.shape)
        loss = (h.real * w).sum() + (h.imag * w.flip(0)).sum()
        grads = torch.autograd.grad(loss, (mod, phase, b), materialize_grads=True)  # T = 1: a unused
        return h, grads

    h_scan, g_scan = run(resettable_scan)
    h_loop, g_loop = run(linear_scan_loop)
    torch.testing.assert_close(h_scan, h_loop, atol=1e-12, rtol=1e-10)
    for gs, gl in zip(g_scan, g_loop):
        torch.testing.assert_close(gs, gl, atol=1e-11, rtol=1e-9)


def test_scan_reset_drops_inf_without_nan():
    """``torch.where`` in the operator: an inf before a reset does not become nan after it."""
    T, B, N = 6, 2, 3
    a = torch.full((T, 1, N), 0.5)
    b = torch.ones(T, B, N)
    b[1, 0] = float("inf")
    reset = torch.zeros(T, B, 1, dtype=torch.bool)
    reset[3, 0] = True
    h = resettable_scan(a, b, reset)
    assert torch.isinf(h[1:3, 0]).all()
    torch.testing.assert_close(h[3:, 0], linear_scan_loop(a[3:], b[3:])[:, 0])


def test_scan_depth_is_logarithmic(monkeypatch):
    """The scan runs 2 log2(T) - 1 sequential combine steps (each a batched op over its level), not T."""
    calls = []
    original = scan._combine

    def counting(*args, **kwargs):
        calls.append(args[1].shape[0])  # elements combined in this step
        return original(*args, **kwargs)

    monkeypatch.setattr(scan, "_combine", counting)
    counts = {}
    for T in (16, 64, 256, 1024):
        calls.clear()
        a = torch.full((T, 1, 2), 0.9)
        b = torch.randn(T, 1, 2)
        reset = torch.zeros(T, 1, 1, dtype=torch.bool)
        resettable_scan(a, b, reset)
        counts[T] = len(calls)
        assert len(calls) == 2 * int(math.log2(T)) - 1, (T, len(calls))
        assert sum(calls) < 2 * T  # O(T) work in all
    assert counts[1024] - counts[16] == 12  # x64 longer: 6 doublings, 2 more steps each


# ---------------------------------------------------------------------------------------------- the LRU core
def double_core(seed: int = 0, **kw) -> LRUCore:
    torch.manual_seed(seed)
    kw = {"hidden_size": 6, "recurrent_size": 5, "num_layers": 2, "learn_initial_state": True, **kw}
    core = LRUCore(4, **kw).double()
    if core.learn_initial_state:
        with torch.no_grad():
            core.x0.value.normal_()  # a learned initial state that differs from zeros
    return core


def test_unroll_scan_equals_step_loop_values_and_gradients_float64():
    core = double_core()
    T, B = 11, 3
    xs = torch.randn(T, B, 4, dtype=torch.float64)
    resets = random_resets(T, B)
    _, state0 = Core.unroll(core, torch.randn(3, B, 4, dtype=torch.float64), core.initial_state(B))
    state0 = state0._replace(x=state0.x.detach().requires_grad_(True))

    def run(unroll):
        core.zero_grad()
        xs_ = xs.clone().requires_grad_(True)
        ys, s = unroll(xs_, state0, resets)
        loss = (ys * torch.linspace(-1, 1, ys.numel(), dtype=torch.float64).reshape(ys.shape)).sum()
        loss = loss + (s.x**2).sum()
        gx, gs = torch.autograd.grad(loss, (xs_, state0.x), retain_graph=True)
        loss.backward()
        return ys, s, gx, gs, {n: p.grad.clone() for n, p in core.named_parameters()}

    ys_s, s_s, gx_s, gs_s, gp_s = run(core.unroll)  # parallel scan
    ys_l, s_l, gx_l, gs_l, gp_l = run(lambda *a: Core.unroll(core, *a))  # the step loop
    torch.testing.assert_close(ys_s, ys_l, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_s.x, s_l.x, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(gx_s, gx_l, atol=1e-11, rtol=1e-9)
    torch.testing.assert_close(gs_s, gs_l, atol=1e-11, rtol=1e-9)
    assert gp_s.keys() == gp_l.keys()
    for name in gp_l:
        torch.testing.assert_close(gp_s[name], gp_l[name], atol=1e-11, rtol=1e-9, msg=name)
    assert gp_s["x0.value"].abs().sum() > 0  # the resets reach the learned initial state


def test_unroll_without_resets_equals_step_loop():
    core = double_core(seed=1, num_layers=1, learn_initial_state=False)
    xs = torch.randn(9, 2, 4, dtype=torch.float64)
    state = core.initial_state(2)
    ys_s, s_s = core.unroll(xs, state)
    ys_l, s_l = Core.unroll(core, xs, state)
    torch.testing.assert_close(ys_s, ys_l, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_s.x, s_l.x, atol=1e-12, rtol=1e-10)


def test_hand_set_lambda_gives_closed_form_state():
    """lambda = 0.9 e^{i pi/3}, B = I, gamma = 1, constant input u: x_{T-1} = u (1 - lambda^T) / (1 - lambda)."""
    torch.manual_seed(0)
    H = N = 3
    core = LRUCore(2, hidden_size=H, recurrent_size=N).double()
    lam = 0.9 * complex(math.cos(math.pi / 3), math.sin(math.pi / 3))
    lru = core.blocks[0].lru
    with torch.no_grad():
        lru.nu_log.fill_(math.log(-math.log(abs(lam))))  # |lambda| = exp(-exp(nu))
        lru.theta_log.fill_(math.log(math.pi / 3))  # arg(lambda) = exp(theta)
        lru.gamma_log.zero_()
        lru.B_re.copy_(torch.eye(N))
        lru.B_im.zero_()
    T, B = 8, 2
    z = torch.randn(1, B, 2, dtype=torch.float64).expand(T, B, 2)
    u = core.blocks[0].norm(core.encoder(z[0]))  # the layer's input u_t: [B, H] (constant over t)
    expected = u.to(torch.complex128) * (1 - lam**T) / (1 - lam)
    for unroll in (core.unroll, lambda *a: Core.unroll(core, *a)):
        _, s = unroll(z, core.initial_state(B))
        torch.testing.assert_close(as_complex(s.x[:, 0]), expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lru.lambda_(), torch.full((N,), lam, dtype=torch.complex128))


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
    torch.testing.assert_close(s.x[1:2], s_fresh.x, atol=1e-12, rtol=1e-10)
    # the other rows do not see row 1's reset (equal to rounding: with resets the scan's tensors are per row)
    ys_plain, _ = core.unroll(xs, state)
    torch.testing.assert_close(ys[:, [0, 2]], ys_plain[:, [0, 2]], atol=1e-14, rtol=1e-12)


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    core = LRUCore(3, hidden_size=16, recurrent_size=200, r_min=0.4, r_max=0.8, max_phase=math.pi / 10)
    lru = core.blocks[0].lru
    lam = lru.lambda_().detach()
    assert lam.abs().min() >= 0.4 - 1e-6 and lam.abs().max() <= 0.8 + 1e-6
    assert lam.angle().min() >= 0 and lam.angle().max() <= math.pi / 10 + 1e-6
    torch.testing.assert_close(torch.exp(lru.gamma_log).detach(), torch.sqrt(1 - lam.abs() ** 2))
    assert lam.abs().std() > 0.05  # spread over the ring, not a point


def test_make_core_options_and_errors():
    core = make_core("lru", 7, hidden_size=12, num_layers=2)
    assert isinstance(core, LRUCore) and core.output_size == 12 and core.recurrent_size == 12
    assert core.initial_state(3).x.shape == (3, 2, 12, 2)
    assert "lru" in memory_cores.CORES
    with pytest.raises(ValueError, match="r_min"):
        make_core("lru", 7, r_min=0.99, r_max=0.9)
    with pytest.raises(ValueError, match="recurrent_size"):
        make_core("lru", 7, recurrent_size=0)
