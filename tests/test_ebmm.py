"""Known-answer tests of the energy-based memory core (memory_cores/ebmm.py) and its Hopfield baseline.

The contract tests (tests/test_core_contract.py) cover the rest: reset semantics per step, unroll == step loop,
pack/unpack, save/load, extreme inputs, 1000-step unrolls, float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memory_cores import make_core
from memory_cores.base import Core
from memory_cores.ebmm import EBMMCore, EBMMState, HopfieldCore, rbm_energy, rbm_energy_grad_x, rbm_write_grads

torch.set_num_threads(1)

I, D, M = 5, 6, 8


def core64(seed: int = 0, **kw) -> EBMMCore:
    torch.manual_seed(seed)
    core = EBMMCore(I, **{"hidden_size": M, "pattern_size": D, "write_steps": 2, "read_steps": 2, **kw}).double()
    with torch.no_grad():  # learned constants away from their initial values
        for p in (core.b_bar, core.c_bar, core.eta_raw, core.gamma_raw, core.alpha_raw, core.beta_raw):
            p.add_(0.1 * torch.randn_like(p))
    return core


def random_theta(B: int, d: int = D, m: int = M) -> EBMMState:
    return EBMMState(torch.randn(B, m, d, dtype=torch.float64), torch.randn(B, d, dtype=torch.float64),
                     torch.randn(B, m, dtype=torch.float64))


def cos(a, b):
    return F.cosine_similarity(a, b, dim=-1)


def test_closed_form_gradients_equal_autograd():
    B = 4
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    theta = EBMMState(*(t.requires_grad_(True) for t in random_theta(B)))
    (gx,) = torch.autograd.grad(rbm_energy(x, theta).sum(), x, create_graph=True)
    torch.testing.assert_close(gx, rbm_energy_grad_x(x, theta), atol=1e-12, rtol=1e-12)
    alpha = torch.tensor(0.3, dtype=torch.float64)
    loss = rbm_energy(x, theta) + alpha * (gx * gx).sum(-1)
    for auto, closed in zip(torch.autograd.grad(loss.sum(), tuple(theta)), rbm_write_grads(x, theta, alpha)):
        torch.testing.assert_close(auto, closed, atol=1e-12, rtol=1e-12)


def test_fast_path_equals_autograd_path_values_and_gradients_float64():
    """closed_form=True (the default) against the torch.autograd.grad(create_graph=True) reading: outputs, states
    and the meta-gradients of every parameter, through an unroll with resets inside."""
    T, B = 6, 3
    xs = torch.randn(T, B, I, dtype=torch.float64)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[0, 2] = resets[3, 1] = True

    def run(closed_form: bool):
        core = core64(closed_form=closed_form)
        xs_ = xs.clone().requires_grad_(True)
        ys, s = core.unroll(xs_, core.initial_state(B), resets)
        loss = (ys * torch.linspace(-1, 1, ys.numel(), dtype=torch.float64).reshape(ys.shape)).sum()
        loss = loss + sum((t**2).sum() for t in s)
        loss.backward()
        return ys, s, xs_.grad, {n: p.grad for n, p in core.named_parameters()}

    ys_f, s_f, gx_f, gp_f = run(True)
    ys_a, s_a, gx_a, gp_a = run(False)
    # softplus's backward is linear above 20 (torch's threshold), the closed form is exact: agree to ~1e-9
    torch.testing.assert_close(ys_f, ys_a, atol=1e-8, rtol=1e-8)
    for a, b in zip(s_f, s_a):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(gx_f, gx_a, atol=1e-7, rtol=1e-7)
    for name in gp_a:
        torch.testing.assert_close(gp_f[name], gp_a[name], atol=1e-7, rtol=1e-7, msg=name)
        assert gp_a[name].abs().sum() > 0, name  # the outer loss reaches every meta-learned parameter


@pytest.mark.parametrize("closed_form", [True, False])
def test_no_grad_rollout_gives_the_same_values_and_no_graph(closed_form):
    core = core64(closed_form=closed_form)
    xs = torch.randn(5, 3, I, dtype=torch.float64)
    ys, s = core.unroll(xs, core.initial_state(3))
    with torch.no_grad():
        ys_ng, s_ng = core.unroll(xs, core.initial_state(3))
    assert not ys_ng.requires_grad and not any(t.requires_grad for t in s_ng)
    torch.testing.assert_close(ys_ng, ys.detach(), atol=1e-12, rtol=1e-12)
    for a, b in zip(s_ng, s):
        torch.testing.assert_close(a, b.detach(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("closed_form", [True, False])
def test_written_pattern_is_read_back_exactly_from_a_zero_prior(closed_form):
    """theta_bar = 0, one write step: W_j = eta_W (sigmoid(0) p + ...) is a multiple of p for every hidden unit and
    b a multiple of p, so a read step of size 1 from any query q with p . q > 0 gives b + W^T sigmoid(W q + c), a
    positive multiple of p: the corrupted query comes back as the stored pattern (cosine 1, every sign right)."""
    d, m, B = 16, 32, 8
    core = EBMMCore(d, hidden_size=m, pattern_size=d, write_steps=1, read_steps=1, read_step_init=1.0,
                    alpha_init=1e-6, beta_init=1e-6, closed_form=closed_form).double()
    with torch.no_grad():
        core.W_bar.zero_()
        core.c_bar.zero_()
        core.b_bar.zero_()
    torch.testing.assert_close(core.gamma, torch.ones(1, dtype=torch.float64))  # gamma = 1
    gen = torch.Generator().manual_seed(0)
    p = 2.0 * torch.randint(0, 2, (B, d), generator=gen).double() - 1.0
    flip = torch.rand(B, d, generator=gen).argsort(-1).argsort(-1) < d // 4  # 4 of the 16 bits flipped
    q = torch.where(flip, -p, p)
    assert ((p * q).sum(-1) > 0).all()
    theta = core.write_closed_form(p, torch.ones(B, dtype=torch.float64), core.initial_state(B))
    x = core.read_closed_form(q, theta) if closed_form else core.read_autograd(q, theta)
    torch.testing.assert_close(cos(x, p), torch.ones(B, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(x.sign(), p)


def test_written_pattern_is_a_low_energy_point_and_attracts_corrupted_queries():
    """Random theta_bar, one pattern written with 3 steps (no meta-training): the energy at the pattern drops far
    below that of random points, and reading from a 20%-corrupted query moves towards the pattern."""
    d, m, B = 32, 64, 256
    torch.manual_seed(0)
    core = EBMMCore(d, hidden_size=m, pattern_size=d, write_steps=3, read_steps=3, alpha_init=1e-6,
                    beta_init=1e-6).double()
    gen = torch.Generator().manual_seed(1)
    p = 2.0 * torch.randint(0, 2, (B, d), generator=gen).double() - 1.0
    other = 2.0 * torch.randint(0, 2, (B, d), generator=gen).double() - 1.0
    flip = torch.rand(B, d, generator=gen).argsort(-1).argsort(-1) < int(0.2 * d)
    q = torch.where(flip, -p, p)
    with torch.no_grad():
        theta0 = core.initial_state(B)
        theta = core.write_closed_form(p, torch.ones(B, dtype=torch.float64), theta0)
        E_before, E_after = core.energy(p, theta0), core.energy(p, theta)
        E_other = core.energy(other, theta)
        x = core.read_closed_form(q, theta)
        x0 = core.read_closed_form(q, theta0)  # the same read without the write
    assert (E_after < E_before).all()
    assert (E_after < E_other).float().mean() > 0.99
    assert E_after.mean() < E_other.mean() - 20.0
    assert cos(x, p).mean() > cos(q, p).mean() + 0.1  # the read moves the query towards the stored pattern
    assert cos(x, p).mean() > cos(x0, p).mean() + 0.1  # ... because of the write
    # the write left the pattern nearly stationary: |grad_x E| there is smaller than at random points
    assert rbm_energy_grad_x(p, theta).norm(dim=-1).mean() < rbm_energy_grad_x(other, theta).norm(dim=-1).mean()


@pytest.mark.parametrize("closed_form", [True, False])
def test_zero_write_steps_read_the_initial_model(closed_form):
    core = core64(write_steps=0, closed_form=closed_form)
    B, T = 3, 5
    xs = torch.randn(T, B, I, dtype=torch.float64)
    ys, s = core.unroll(xs, core.initial_state(B))
    theta_bar = core.initial_state(B)
    for a, b in zip(s, theta_bar):
        assert torch.equal(a, b)  # the memory never moves from theta_bar
    p = torch.tanh(core.project(xs))  # [T, B, d]
    for t in range(T):
        torch.testing.assert_close(ys[t, :, :D], core.read_closed_form(p[t], theta_bar), atol=1e-12, rtol=0)
        torch.testing.assert_close(ys[t, :, D:], p[t], atol=0, rtol=0)


def test_zero_read_steps_return_the_query():
    core = core64(read_steps=0)
    x = torch.randn(4, I, dtype=torch.float64)
    y, _ = core(x, core.initial_state(4))
    p = torch.tanh(core.project(x))
    assert torch.equal(y[:, :D], p) and torch.equal(y[:, D:], p)


def test_closed_gate_leaves_the_memory_unchanged():
    core = core64()
    with torch.no_grad():
        core.gate.weight.zero_()
        core.gate.bias.fill_(-200.0)  # g_t = sigmoid(-200) ~ 1e-87
    theta = random_theta(3)
    _, s = core(torch.randn(3, I, dtype=torch.float64), theta)
    for a, b in zip(s, theta):
        torch.testing.assert_close(a, b, atol=1e-60, rtol=0)


def test_reset_restores_the_meta_learned_initial_parameters():
    core = core64()
    with torch.no_grad():
        core.W_bar.add_(torch.randn_like(core.W_bar))
    B = 3
    _, s = core.unroll(torch.randn(4, B, I, dtype=torch.float64), core.initial_state(B))
    assert not torch.allclose(s.W[1], core.W_bar)
    reset = torch.tensor([False, True, False])
    s_reset = core.reset_state(s, reset)
    assert torch.equal(s_reset.W[1], core.W_bar) and torch.equal(s_reset.b[1], core.b_bar)
    assert torch.equal(s_reset.c[1], core.c_bar)
    assert torch.equal(s_reset.W[0], s.W[0]) and torch.equal(s_reset.W[2], s.W[2])
    # a reset inside the unroll starts that row's memory again from theta_bar
    xs = torch.randn(3, B, I, dtype=torch.float64)
    resets = torch.zeros(3, B, dtype=torch.bool)
    resets[1, 1] = True
    ys, _ = core.unroll(xs, s, resets)
    ys_fresh, _ = core.unroll(xs[1:, 1:2], core.initial_state(1))
    torch.testing.assert_close(ys[1:, 1:2], ys_fresh, atol=1e-12, rtol=0)


def test_step_sizes_are_positive_and_sized_as_documented():
    core = make_core("ebmm", I, hidden_size=M, pattern_size=D, write_steps=4, read_steps=3)
    assert core.eta.shape == (4, 3) and (core.eta > 0).all()
    assert core.gamma.shape == (3,) and (core.gamma > 0).all()
    torch.testing.assert_close(core.eta[0, 0], torch.tensor(1.0 / M))
    torch.testing.assert_close(core.gamma, torch.ones(3))
    assert core.output_size == 2 * D
    assert core.state_size == M * D + D + M
    for bad in (dict(hidden_size=0), dict(write_steps=-1), dict(pattern_size=1.5), dict(alpha_init=0.0)):
        with pytest.raises(ValueError):
            EBMMCore(I, **bad)


def test_hopfield_baseline_stores_hebbian_outer_products():
    d, B = 12, 2
    core = HopfieldCore(d, pattern_size=d, read_steps=2).double()
    with torch.no_grad():
        core.gate.weight.zero_()
        core.gate.bias.fill_(50.0)  # g = 1
        core.project.weight.copy_(20.0 * torch.eye(d))  # p = tanh(20 x): the +-1 pattern
        core.project.bias.zero_()
    gen = torch.Generator().manual_seed(0)
    pats = 2.0 * torch.randint(0, 2, (2, B, d), generator=gen).double() - 1.0
    ys, s = Core.unroll(core, pats, core.initial_state(B))
    p = torch.tanh(20.0 * pats)
    expected = sum(torch.einsum("bi,bj->bij", p[k], p[k]) - torch.diag_embed(p[k] * p[k]) for k in range(2)) / d
    torch.testing.assert_close(s.M, expected, atol=1e-12, rtol=0)
    # with one stored pattern, a query with one flipped bit is read back as the pattern
    q = pats[0].clone()
    q[:, 0] *= -1
    y, _ = core(q, HopfieldState_of(core, p[0]))
    assert torch.equal(y[:, :d].sign(), pats[0].sign())


def HopfieldState_of(core: HopfieldCore, p):  # noqa: N802  (a state holding one stored pattern)
    from memory_cores.ebmm import HopfieldState

    d = core.pattern_size
    return HopfieldState((torch.einsum("bi,bj->bij", p, p) - torch.diag_embed(p * p)) / d)
