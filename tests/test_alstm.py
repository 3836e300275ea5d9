"""Known-answer tests for the associative LSTM core (Danihelka et al. 2016).

The contract (reset, unroll == step loop, save/load, ...) is checked in ``test_core_contract.py``; this file checks
the meaning: the complex algebra, the bound, holographic storage and retrieval, the redundant copies and their
permutations, and the parameter-count helpers used by the benchmarks.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from memory_cores.alstm import (
    AssociativeLSTMCore,
    alstm_param_count,
    associative_read,
    associative_write,
    bound,
    complex_conj,
    complex_modulus,
    complex_mul,
    hidden_size_for_param_count,
    lstm_param_count,
    matching_hidden_size,
    permute_keys,
    to_complex,
    to_halves,
)
from memory_cores.base import Core
from memory_cores.rnn import LSTMCore

torch.set_num_threads(1)


def unit_keys(batch: int, K: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Random keys of unit modulus in every complex unit: ``[batch, 2K]`` = [cos phi, sin phi]."""
    phi = torch.rand(batch, K, generator=gen, dtype=dtype) * 2 * math.pi
    return torch.cat([phi.cos(), phi.sin()], dim=-1)


# ---------------------------------------------------------------------------------------------- complex algebra
def test_complex_mul_equals_torch_complex():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 10, generator=g), torch.randn(4, 3, 10, generator=g)
    ref = torch.complex(a[..., :5], a[..., 5:]) * torch.complex(b[..., :5], b[..., 5:])
    out = complex_mul(a, b)
    torch.testing.assert_close(out, torch.cat([ref.real, ref.imag], dim=-1))
    torch.testing.assert_close(to_complex(out), ref)
    torch.testing.assert_close(complex_conj(a), to_halves(to_complex(a).conj()))
    torch.testing.assert_close(complex_modulus(a), to_complex(a).abs())
    # conversion is exact both ways
    assert torch.equal(to_halves(to_complex(a)), a)


def test_bound_keeps_modulus_at_most_one_and_is_identity_inside_unit_disk():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(64, 40, generator=g) * 3.0  # many units outside the unit disk
    out = bound(h)
    mod_in, mod_out = complex_modulus(h), complex_modulus(out)
    assert (mod_out <= 1 + 1e-6).all()
    outside = mod_in > 1
    assert outside.any() and (~outside).any()
    # inside: unchanged; outside: moved onto the unit circle with the phase kept
    inside2 = torch.cat([~outside, ~outside], dim=-1)
    assert torch.equal(out[inside2], h[inside2])
    torch.testing.assert_close(mod_out[outside], torch.ones_like(mod_out[outside]))
    phase_in, phase_out = to_complex(h).angle(), to_complex(out).angle()
    torch.testing.assert_close(phase_out[outside], phase_in[outside])


def test_bound_has_finite_gradient_at_zero():
    h = torch.zeros(2, 6, requires_grad=True)
    bound(h).sum().backward()
    assert torch.isfinite(h.grad).all()


# ---------------------------------------------------------------------------------------------- holographic memory
def test_retrieval_with_conjugate_key_is_exact_for_one_item():
    """Paper, HRR: store c = r (*) u, read r^-1 (*) c = u; for |r| = 1 the inverse is conj(r).

    One copy with the identity permutation (the plain holographic memory), then the same with random copies:
    every copy holds the item exactly, so their mean does too.
    """
    g = torch.Generator().manual_seed(2)
    B, K = 5, 16
    r = unit_keys(B, K, g)
    u = bound(torch.randn(B, 2 * K, generator=g, dtype=torch.float64))  # a bounded update, as in the cell
    ones = torch.ones(B, 2 * K, dtype=torch.float64)
    for perms in (torch.arange(K).unsqueeze(0), torch.stack([torch.randperm(K, generator=g) for _ in range(4)])):
        N = perms.shape[0]
        c0 = torch.zeros(B, N, 2 * K, dtype=torch.float64)
        c = associative_write(c0, permute_keys(r, perms), forget=ones, write=u)
        read = associative_read(c, permute_keys(complex_conj(r), perms))
        torch.testing.assert_close(read, u, atol=1e-12, rtol=0)
        # reading with the key itself (not its conjugate) gives r^2 (*) u, not u
        wrong = associative_read(c, permute_keys(r, perms))
        assert (wrong - u).abs().max() > 0.1


def test_retrieval_rule_is_the_inverse_key_which_is_the_conjugate_at_unit_modulus():
    """Paper, HRR: r^-1 = (a^-1 e^{-i phi}); conj(r) = (a e^{-i phi}) equals it only when |r| = 1. A key of modulus
    1/2 read with its conjugate returns |r|^2 u = u / 4; with its inverse, u."""
    g = torch.Generator().manual_seed(5)
    B, K = 3, 8
    r = 0.5 * unit_keys(B, K, g)
    u = bound(torch.randn(B, 2 * K, generator=g, dtype=torch.float64))
    c = complex_mul(r, u)
    torch.testing.assert_close(complex_mul(complex_conj(r), c), 0.25 * u)
    r_inv = to_halves(1.0 / to_complex(r))
    torch.testing.assert_close(complex_mul(r_inv, c), u)


def test_core_cell_retrieves_with_conjugate_output_key():
    """The core's own cell, one copy, identity permutation: gates open (g_f = 0 clears, g_i = g_o = 1), r_o =
    conj(r_i) of unit modulus: h equals the stored update u (paper's Associative LSTM, one copy)."""
    torch.manual_seed(0)
    K = 8
    core = AssociativeLSTMCore(3, hidden_size=2 * K, num_copies=1).double()
    core.permutations.copy_(torch.arange(K).unsqueeze(0))
    g = torch.Generator().manual_seed(3)
    B = 4
    r = unit_keys(B, K, g)
    u = 0.5 * bound(torch.randn(B, 2 * K, generator=g, dtype=torch.float64))
    big = 60.0  # sigmoid(+-60) is 1 / 0 to double precision
    gates = torch.cat([-big * torch.ones(B, K), big * torch.ones(B, K), big * torch.ones(B, K)], dim=-1)
    pre = torch.cat([gates.double(), r, complex_conj(r), u], dim=-1)
    c_prev = torch.randn(B, 1, 2 * K, dtype=torch.float64)  # forgotten: g_f = 0
    h, c = core._cell(pre, c_prev)
    torch.testing.assert_close(h, u, atol=1e-12, rtol=0)
    torch.testing.assert_close(c[:, 0], complex_mul(r, u), atol=1e-12, rtol=0)


def test_cell_equals_reference_built_from_the_paper_equations():
    """The core's cell (planar layout, one gather for all copies' permutations) against the equations written
    with the public helpers, one step at a time: same values, same gradients."""
    torch.manual_seed(0)
    B, K, N = 3, 5, 4
    core = AssociativeLSTMCore(2, hidden_size=2 * K, num_copies=N).double()
    pre = (2 * torch.randn(B, 9 * K, dtype=torch.float64)).requires_grad_(True)  # keys both in and out of the disk
    c = torch.randn(B, N, 2 * K, dtype=torch.float64, requires_grad=True)

    def reference(pre, c):
        gt = core.gates(pre)
        g_f, g_i, g_o = (torch.cat([x, x], dim=-1) for x in (gt.forget, gt.input, gt.output))
        c_new = associative_write(c, permute_keys(gt.key_in, core.permutations), g_f, g_i * gt.update)
        h = g_o * bound(associative_read(c_new, permute_keys(gt.key_out, core.permutations)))
        return h, c_new

    def fused(pre, c):
        return core._cell(pre, c)

    w_h, w_c = torch.randn(B, 2 * K, dtype=torch.float64), torch.randn(B, N, 2 * K, dtype=torch.float64)
    outs = []
    for fn in (reference, fused):
        h, c_new = fn(pre, c)
        loss = (h * w_h).sum() + (c_new * w_c).sum()
        outs.append((h, c_new) + torch.autograd.grad(loss, (pre, c)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_more_copies_reduce_retrieval_noise():
    """Paper, redundant associative memory: with several items stored, each read carries interference from the
    others; N copies with independent permutations average it down (variance ~ 1/N)."""
    g = torch.Generator().manual_seed(4)
    B, K, items = 64, 64, 8
    keys = [unit_keys(B, K, g) for _ in range(items)]
    values = [to_halves(torch.polar(torch.ones(B, K, dtype=torch.float64),
                                    2 * math.pi * torch.rand(B, K, generator=g, dtype=torch.float64)))
              for _ in range(items)]
    ones = torch.ones(B, 2 * K, dtype=torch.float64)

    def retrieval_mse(N: int) -> float:
        perms = torch.stack([torch.randperm(K, generator=g) for _ in range(N)])
        c = torch.zeros(B, N, 2 * K, dtype=torch.float64)
        for r, v in zip(keys, values):
            c = associative_write(c, permute_keys(r, perms), ones, v)
        errs = [
            (associative_read(c, permute_keys(complex_conj(r), perms)) - v).pow(2).sum(-1).mean()
            for r, v in zip(keys, values)
        ]
        return float(torch.stack(errs).mean()) / K  # per complex unit

    e1, e8 = retrieval_mse(1), retrieval_mse(8)
    # one copy: interference of (items - 1) unit-modulus items with random phases, variance items - 1 per unit
    assert abs(e1 - (items - 1)) < 0.15 * (items - 1)
    # eight copies: about 1/8 of it (a little more, as two copies may map a unit to the same key unit)
    assert e8 < e1 / 5, (e1, e8)


# ---------------------------------------------------------------------------------------------- permutations
def test_permutations_are_buffers_distinct_and_seeded():
    core = AssociativeLSTMCore(5, hidden_size=16, num_copies=6, seed_permutations=0)
    assert "permutations" in dict(core.named_buffers())
    assert "permutations" in core.state_dict()
    assert all(name != "permutations" for name, _ in core.named_parameters())
    P = core.permutations
    assert P.shape == (6, 8) and P.dtype == torch.long
    for row in P:
        assert torch.equal(row.sort().values, torch.arange(8))  # each row is a permutation
    assert len({tuple(row.tolist()) for row in P}) == 6  # distinct across copies
    # seeded: independent of the global RNG; another seed gives other permutations
    torch.manual_seed(123)
    assert torch.equal(AssociativeLSTMCore(5, hidden_size=16, num_copies=6, seed_permutations=0).permutations, P)
    assert not torch.equal(AssociativeLSTMCore(5, hidden_size=16, num_copies=6, seed_permutations=1).permutations, P)
    # even with few units the copies are made distinct when possible (2 units: 2 permutations)
    tiny = AssociativeLSTMCore(5, hidden_size=4, num_copies=2)
    assert not torch.equal(tiny.permutations[0], tiny.permutations[1])


def test_permute_keys_moves_real_and_imaginary_part_of_a_unit_together():
    g = torch.Generator().manual_seed(6)
    B, K, N = 3, 7, 4
    r = torch.randn(B, 2 * K, generator=g)
    perms = torch.stack([torch.randperm(K, generator=g) for _ in range(N)])
    out = permute_keys(r, perms)
    assert out.shape == (B, N, 2 * K)
    for s in range(N):
        expected = torch.cat([r[:, :K][:, perms[s]], r[:, K:][:, perms[s]]], dim=-1)  # (P_s r)_k = r_{perm_s(k)}
        assert torch.equal(out[:, s], expected)


def test_permutations_survive_save_load_into_module_with_other_seed():
    torch.manual_seed(0)
    core = AssociativeLSTMCore(5, hidden_size=16, num_copies=3, seed_permutations=7).eval()
    torch.manual_seed(1)
    other = AssociativeLSTMCore(5, hidden_size=16, num_copies=3, seed_permutations=8).eval()
    assert not torch.equal(core.permutations, other.permutations)
    xs = torch.randn(6, 2, 5)
    before = other.unroll(xs, other.initial_state(2))[0]
    buf = io.BytesIO()
    torch.save(core.state_dict(), buf)
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other.permutations, core.permutations)
    ys_a = core.unroll(xs, core.initial_state(2))[0]
    ys_b = other.unroll(xs, other.initial_state(2))[0]
    assert torch.equal(ys_a, ys_b)
    assert not torch.equal(before, ys_b)
    # the permutations matter: same weights, other permutations -> other outputs
    other.permutations.copy_(AssociativeLSTMCore(5, hidden_size=16, num_copies=3, seed_permutations=8).permutations)
    assert not torch.equal(other.unroll(xs, other.initial_state(2))[0], ys_a)
    assert torch.equal(copy.deepcopy(core).permutations, core.permutations)


def test_permutations_follow_the_module_device_and_keep_dtype():
    core = AssociativeLSTMCore(5, hidden_size=16, num_copies=3).double()
    assert core.permutations.dtype == torch.long  # .double() leaves integer buffers alone
    core = core.to("meta")
    assert core.permutations.device.type == "meta" and core.proj.weight.device.type == "meta"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_permutations_on_cuda():
    core = AssociativeLSTMCore(5, hidden_size=16, num_copies=3).cuda()
    assert core.permutations.is_cuda
    ys, s = core.unroll(torch.randn(3, 2, 5, device="cuda"), core.initial_state(2))
    assert ys.is_cuda and s.c.is_cuda


# ---------------------------------------------------------------------------------------------- the cell
def test_gates_are_per_complex_unit_and_keys_bounded():
    core = AssociativeLSTMCore(5, hidden_size=16, num_copies=3)
    B, K = 4, 8
    assert core.proj.out_features == 3 * K + 3 * 16  # 4.5 N_h
    pre = 10 * torch.randn(B, core.proj.out_features)
    gt = core.gates(pre)
    for gate in (gt.forget, gt.input, gt.output):
        assert gate.shape == (B, K)
        assert ((gate >= 0) & (gate <= 1)).all()
    for key in (gt.key_in, gt.key_out, gt.update):
        assert key.shape == (B, 16)
        assert (complex_modulus(key) <= 1 + 1e-6).all()
    # a gate multiplies a unit's real and imaginary part alike: scaling the output gate's pre-activation of unit 0
    # changes only h's real and imaginary entries of unit 0
    state = core.initial_state(B)
    state = state._replace(c=torch.randn_like(state.c))
    x = torch.randn(B, 5)
    with torch.no_grad():
        h1, _ = core(x, state)
        core.proj.bias[2 * K] += 3.0  # g_o of complex unit 0
        h2, _ = core(x, state)
    changed = (h1 - h2).abs().amax(0) > 0
    expected = torch.zeros(16, dtype=torch.bool)
    expected[[0, K]] = True
    assert torch.equal(changed, expected)
    ratio = h2[:, [0, K]] / h1[:, [0, K]]
    torch.testing.assert_close(ratio[:, 0], ratio[:, 1])


def test_state_shapes_and_output():
    core = AssociativeLSTMCore(5, hidden_size=12, num_copies=4)
    s = core.initial_state(3)
    assert s.h.shape == (3, 12) and s.c.shape == (3, 4, 12)
    assert core.output_size == 12 and core.state_size == 12 + 48
    y, s2 = core(torch.randn(3, 5), s)
    assert y.shape == (3, 12) and torch.equal(y, s2.h)
    assert (complex_modulus(y) <= 1 + 1e-6).all()  # h = g_o * bound(.)


def test_unroll_equals_step_loop_with_resets_and_learned_init():
    torch.manual_seed(0)
    core = AssociativeLSTMCore(5, hidden_size=16, num_copies=3, learn_initial_state=True)
    with torch.no_grad():
        for p in core.parameters():
            p.add_(0.1 * torch.randn_like(p))
    T, B = 7, 4
    xs = torch.randn(T, B, 5)
    resets = torch.rand(T, B) < 0.3
    s0 = core.initial_state(B)
    ys, s = core.unroll(xs, s0, resets)
    ys_ref, s_ref = Core.unroll(core, xs, s0, resets)  # the base class's plain step loop
    torch.testing.assert_close(ys, ys_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s.c, s_ref.c, atol=1e-6, rtol=1e-6)


def test_half_precision_state_and_autocast():
    core = AssociativeLSTMCore(5, hidden_size=16, num_copies=3)
    xs = torch.randn(4, 2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys, s = core.unroll(xs, core.initial_state(2))
    assert ys.dtype == torch.float32 and s.c.dtype == torch.float32 and torch.isfinite(ys).all()
    half = copy.deepcopy(core).to(torch.bfloat16)
    s0 = half.initial_state(2)
    ys_h, s_h = half.unroll(xs.to(torch.bfloat16), s0)
    ys_ref, s_ref = Core.unroll(half, xs.to(torch.bfloat16), s0)
    assert s_h.c.dtype == torch.bfloat16
    assert torch.equal(ys_h, ys_ref) and torch.equal(s_h.c, s_ref.c)


def test_bad_arguments_name_option_and_value():
    with pytest.raises(ValueError, match="hidden_size.*even.*15"):
        AssociativeLSTMCore(5, hidden_size=15)
    with pytest.raises(ValueError, match="num_copies.*0"):
        AssociativeLSTMCore(5, num_copies=0)
    with pytest.raises(ValueError, match="seed_permutations"):
        AssociativeLSTMCore(5, seed_permutations=1.5)


# ---------------------------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("learn", [False, True])
def test_param_count_matches_module(learn):
    core = AssociativeLSTMCore(7, hidden_size=20, num_copies=3, learn_initial_state=learn)
    assert sum(p.numel() for p in core.parameters()) == alstm_param_count(7, 20, 3, learn)
    lstm = LSTMCore(7, hidden_size=33)
    assert sum(p.numel() for p in lstm.parameters()) == lstm_param_count(7, 33)


@pytest.mark.parametrize("input_size,lstm_hidden", [(5, 128), (40, 64), (1, 16), (200, 256)])
def test_hidden_size_for_param_count_is_the_largest_that_fits(input_size, lstm_hidden):
    target = lstm_param_count(input_size, lstm_hidden)
    n = hidden_size_for_param_count(input_size, target)
    assert n % 2 == 0
    assert alstm_param_count(input_size, n) <= target < alstm_param_count(input_size, n + 2)
    assert matching_hidden_size(input_size, lstm_hidden) == n
    with pytest.raises(ValueError, match="num_params"):
        hidden_size_for_param_count(input_size, 10)


def test_gradcheck_through_time():
    """Numerical vs analytic gradients of a short unroll (double precision, two copies, a reset inside), with
    respect to the inputs and to every parameter (learned initial state included)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    core = AssociativeLSTMCore(3, hidden_size=6, num_copies=2, learn_initial_state=True).double()
    xs = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    resets = torch.tensor([[False, False], [True, False], [False, False]])

    class Unroll(torch.nn.Module):
        def __init__(self, core):
            super().__init__()
            self.core = core

        def forward(self, xs, resets):
            return self.core.unroll(xs, self.core.initial_state(xs.shape[1]), resets)[0]

    wrapper = Unroll(core)
    names = [n for n, _ in wrapper.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_(True) for _, p in wrapper.named_parameters())

    def fn(xs, *vals):
        return functional_call(wrapper, dict(zip(names, vals)), (xs, resets))

    assert torch.autograd.gradcheck(fn, (xs,) + values)
