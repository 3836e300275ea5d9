"""Known-answer tests of the Perceiver AR core (memory_cores/perceiver_ar.py).

The contract tests (tests/test_core_contract.py) run on ``perceiver_ar`` too; these check what is particular to it:
masked context slots (before an episode start, or never filled) never influence the output (nan/inf there change
nothing), the window slides and reaches exactly ``K`` steps back, latents are causal, rotary scores depend on
distance only, the FLOPs of a step grow linearly with ``K``, and the fused unroll is the step loop (float64, values
and gradients, resets inside the sequence, several chunks).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from memory_cores import make_core
from memory_cores.perceiver_ar import PerceiverARCore, PerceiverARState, rotary

torch.set_num_threads(1)

IN, B = 5, 3


def small(seed: int = 0, dtype=torch.float32, **kw) -> PerceiverARCore:
    torch.manual_seed(seed)
    args = dict(hidden_size=8, context_length=4, num_latents=3, num_layers=2, num_heads=2)
    args.update(kw)
    core = PerceiverARCore(IN, **args).to(dtype)
    with torch.no_grad():  # move the layer norms and biases off their init so every term matters
        for p in core.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return core.eval()


def step_loop(core, xs, state, resets=None):
    ys = []
    for t in range(xs.shape[0]):
        y, state = core(xs[t], state, None if resets is None else resets[t])
        ys.append(y)
    return torch.stack(ys), state


def test_registered_with_plain_args_and_errors():
    core = make_core("perceiver_ar", IN, hidden_size=16, context_length=9, num_latents=3, num_layers=1,
                     num_heads=2, mlp_size=20)
    assert core.output_size == 16
    s = core.initial_state(B)
    assert s.context.shape == (B, 9, 16) and s.count.shape == (B,)
    assert torch.equal(s.context, torch.zeros_like(s.context)) and torch.equal(s.count, torch.zeros(B))
    for kw, name in ((dict(context_length=0), "context_length"), (dict(num_latents=6, context_length=4), "num_latents"),
                     (dict(hidden_size=12, num_heads=4), "even"), (dict(num_layers=-1), "num_layers"),
                     (dict(mlp_size=0), "mlp_size")):
        with pytest.raises(ValueError, match=name):
            PerceiverARCore(IN, **kw)
    make_core("perceiver_ar", IN, hidden_size=8, context_length=4, num_latents=5, num_layers=0, num_heads=2)


def test_rotary_scores_depend_on_distance_only():
    q, k = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    p, s = torch.tensor([3.0, 10.0]), torch.tensor([1.0, 4.0])
    base = (rotary(q, p) * rotary(k, s)).sum(-1)
    shifted = (rotary(q, p + 17) * rotary(k, s + 17)).sum(-1)
    torch.testing.assert_close(base, shifted, atol=1e-12, rtol=0)
    assert torch.equal(rotary(q, torch.zeros(2)), q)  # position 0: no rotation


@pytest.mark.parametrize("fused", [False, True])
def test_window_slides_and_holds_the_last_K_embeddings(fused):
    K, T = 4, 7
    core = small(context_length=K)
    xs = torch.randn(T, B, IN)
    with torch.no_grad():
        e = core.embed(xs)
        for k in range(1, T + 1):
            _, s = core.unroll(xs[:k], core.initial_state(B)) if fused else step_loop(core, xs[:k], core.initial_state(B))
            n = min(k, K)
            assert torch.equal(s.count, torch.full((B,), float(n)))
            assert torch.equal(s.context[:, : K - n], torch.zeros(B, K - n, 8))
            torch.testing.assert_close(s.context[:, K - n :], e[k - n : k].transpose(0, 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_output_reaches_exactly_K_steps_back(fused):
    """y_t has a gradient from x_{t-K} .. x_t and none from x_{t-K-1}."""
    K, T = 4, 9
    core = small(context_length=K)
    xs = torch.randn(T, B, IN, requires_grad=True)
    ys, _ = core.unroll(xs, core.initial_state(B)) if fused else step_loop(core, xs, core.initial_state(B))
    (g,) = torch.autograd.grad(ys[-1].sum(), xs)
    reach = g.abs().sum(dim=(1, 2))
    assert (reach[T - 1 - K :] > 0).all() and (reach[: T - 1 - K] == 0).all()


@pytest.mark.parametrize("fused", [False, True])
def test_masked_context_slots_never_influence_the_output(fused):
    """nan / inf / 1e30 in the empty slots of a state change nothing: the same outputs and the same (canonical)
    next state, bit for bit; a row whose count is 0 behaves as a fresh start whatever its window holds."""
    K = 5
    core = small(context_length=K)
    _, s = core.unroll(torch.randn(2, B, IN), core.initial_state(B))  # count 2: slots 0..2 empty
    s = PerceiverARState(s.context, torch.tensor([2.0, 0.0, 2.0]))  # row 1: empty window with stale content
    dirty = s.context.clone()
    dirty[:, :3] = float("nan")
    dirty[0, 0] = float("inf")
    dirty[2, 2] = 1e30
    dirty[1] = float("-inf")
    clean = s.context.clone()
    clean[:, :3] = 0.0
    clean[1] = 0.0
    xs = torch.randn(4, B, IN)
    run = core.unroll if fused else (lambda *a: step_loop(core, *a))
    ys_clean, s_clean = run(xs, PerceiverARState(clean, s.count))
    ys_dirty, s_dirty = run(xs, PerceiverARState(dirty, s.count))
    assert torch.equal(ys_clean, ys_dirty)
    assert torch.equal(s_clean.context, s_dirty.context) and torch.equal(s_clean.count, s_dirty.count)
    assert torch.isfinite(s_dirty.context).all()
    ys_fresh, _ = run(xs[:, 1:2], core.initial_state(1))
    torch.testing.assert_close(ys_dirty[:, 1:2], ys_fresh, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_steps_before_an_episode_start_never_influence_the_output(fused):
    """Inside one sequence, after a reset at t = 3 the outputs do not depend on x_0..x_2 at all: changing them (to
    huge values, too) leaves the outputs from t = 3 on bit-identical, and their gradient is exactly zero."""
    K, T = 6, 8
    core = small(context_length=K)
    xs = torch.randn(T, B, IN)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[3] = True
    run = core.unroll if fused else (lambda *a: step_loop(core, *a))
    other = xs.clone()
    other[:3] = 1e6 * torch.randn(3, B, IN)
    ys_a, s_a = run(xs, core.initial_state(B), resets)
    ys_b, s_b = run(other, core.initial_state(B), resets)
    assert torch.equal(ys_a[3:], ys_b[3:]) and torch.equal(s_a.context, s_b.context)
    xg = xs.clone().requires_grad_(True)
    ys, _ = run(xg, core.initial_state(B), resets)
    (g,) = torch.autograd.grad(ys[3:].sum(), xg)
    assert torch.equal(g[:3], torch.zeros_like(g[:3])) and g[3:].abs().sum() > 0


def test_latents_are_causal():
    """The cross-attention output Z^1 of every latent, read by a hook on its MLP: latent i's Z^1 does not change
    when positions after it change."""
    K, N = 5, 3
    core = small(context_length=K, num_latents=N, num_layers=1)
    captured = {}
    core.cross_mlp.register_forward_hook(lambda m, inp, out: captured.__setitem__("z1", out.detach().clone()))
    _, s = core.unroll(torch.randn(K, B, IN), core.initial_state(B))
    x = torch.randn(B, IN)
    core(x, s)
    z_a = captured["z1"]  # [B, N, D]
    core(x + 1.0, s)  # the current step (the last latent's position) changes
    z_b = captured["z1"]
    assert torch.equal(z_a[:, : N - 1], z_b[:, : N - 1]) and not torch.equal(z_a[:, -1], z_b[:, -1])


def test_step_flops_grow_linearly_with_the_context_length():
    """FLOPs of one acting step at K = 16, 32, 64, 128: equal increments per doubling ratio, i.e. affine in K
    (a quadratic term would make the increments grow 4x per doubling)."""
    flops = {}
    for K in (16, 32, 64, 128):
        core = PerceiverARCore(IN, hidden_size=16, context_length=K, num_latents=4, num_layers=2, num_heads=2)
        _, s = core.unroll(torch.randn(K, 2, IN), core.initial_state(2))
        with FlopCounterMode(display=False) as counter:
            core(torch.randn(2, IN), s)
        flops[K] = counter.get_total_flops()
    d1, d2, d3 = flops[32] - flops[16], flops[64] - flops[32], flops[128] - flops[64]
    assert d1 > 0 and d2 == 2 * d1 and d3 == 2 * d2, flops


def test_fused_unroll_equals_step_loop_float64_values_and_gradients():
    """Resets at t = 0, inside both of two chunks (T > max(K, 32)) and within the last K steps; an incoming window
    that needs gradients (both paths pass it the same gradient)."""
    K, T = 5, 70
    core = small(context_length=K, dtype=torch.float64)
    _, s0 = core.unroll(torch.randn(4, B, IN, dtype=torch.float64), core.initial_state(B))
    s0 = PerceiverARState(s0.context.detach().requires_grad_(True), s0.count)
    xs = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[0, 0] = resets[2, 1] = resets[3, 1] = resets[33, 2] = resets[40, 0] = resets[64, 1] = resets[T - 2, 2] = True
    params = [s0.context, xs] + list(core.parameters())

    def run(unroll):
        ys, s = unroll(xs, s0, resets)
        loss = (ys * torch.linspace(-1, 1, T, dtype=torch.float64)[:, None, None]).pow(2).sum() + s.context.sin().sum()
        return ys, s, torch.autograd.grad(loss, params)

    ys_f, s_f, g_f = run(core.unroll)
    ys_l, s_l, g_l = run(lambda *a: step_loop(core, *a))
    torch.testing.assert_close(ys_f, ys_l, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_f.context, s_l.context, atol=1e-12, rtol=1e-10)
    assert torch.equal(s_f.count, s_l.count)
    for a, b in zip(g_f, g_l):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)
    assert g_f[0].abs().sum() > 0  # the incoming window gets gradient (row 2 keeps it until t = 33)


@pytest.mark.parametrize("num_latents", [1, 6])
def test_fused_unroll_equals_step_loop_at_the_latent_extremes(num_latents):
    """One latent (cross-attention only to the current step's query) and N = K + 1 (every position a latent)."""
    K = 5
    core = small(context_length=K, num_latents=num_latents, dtype=torch.float64)
    _, s0 = core.unroll(torch.randn(3, B, IN, dtype=torch.float64), core.initial_state(B))
    xs = torch.randn(9, B, IN, dtype=torch.float64)
    resets = torch.zeros(9, B, dtype=torch.bool)
    resets[4, 0] = resets[7, 2] = True
    ys_f, s_f = core.unroll(xs, s0, resets)
    ys_l, s_l = step_loop(core, xs, s0, resets)
    torch.testing.assert_close(ys_f, ys_l, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_f.context, s_l.context, atol=1e-12, rtol=1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_no_host_sync_and_fused_equals_step_loop():
    """On the device: a rollout step and the fused unroll with resets never sync with the host, and agree."""
    core = small(context_length=4).cuda()
    T = 9
    xs = torch.randn(T, B, IN, device="cuda")
    resets = torch.zeros(T, B, dtype=torch.bool, device="cuda")
    resets[0, 0] = resets[5, 1] = True
    state = core.initial_state(B)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ys_f, s_f = core.unroll(xs, state, resets)
        ys_l, s_l = step_loop(core, xs, state, resets)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(ys_f, ys_l, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_f.context, s_l.context, atol=1e-5, rtol=1e-5)
    assert torch.equal(s_f.count, s_l.count)
