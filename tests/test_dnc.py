"""Known-answer tests of the DNC core (Graves et al. 2016) and its Csordas & Schmidhuber 2019 options.

The contract (reset, unroll, pack, save/load, ...) is checked for the registered ``dnc`` in test_core_contract.py;
here: the addressing math with hand-computed answers, gradient checks in float64, the fused path against the plain
autograd formulas, and what each option changes.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from memory_cores.addressing import allocation_weighting, content_weighting
from memory_cores.base import tree_leaves, tree_map
from memory_cores.dnc import (
    DNCAccessState,
    DNCCore,
    DNCInterface,
    access_step,
    content_weighting_fast,
    fused_access_step,
    link_update_and_read,
    read_weighting,
    retention,
    sharpen_link_weights,
    temporal_weightings,
    update_link,
    update_precedence,
    update_usage,
    write_memory,
)

torch.set_num_threads(1)

SMALL = dict(hidden_size=8, num_slots=6, slot_size=4, num_read_heads=2)
OPTIONS = [
    {},
    dict(erase_freed=True),
    dict(masked_content=True),
    dict(link_sharpness=True),
    dict(erase_freed=True, masked_content=True, link_sharpness=True),
    dict(controller="feedforward"),
]


def onehot(i: int, n: int, dtype=torch.float64) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), n).to(dtype)


def random_access_state(B: int, N: int, W: int, R: int, seed: int = 0, dtype=torch.float64) -> DNCAccessState:
    """A non-trivial access state: distinct usages (sort is differentiable there), zero-diagonal links."""
    g = torch.Generator().manual_seed(seed)
    link = torch.rand(B, N, N, generator=g, dtype=dtype) * 0.3
    link.diagonal(dim1=1, dim2=2).zero_()
    return DNCAccessState(
        memory=torch.randn(B, N, W, generator=g, dtype=dtype),
        usage=torch.rand(B, N, generator=g, dtype=dtype) * 0.9 + 0.05,
        link=link,
        precedence=torch.softmax(torch.randn(B, N, generator=g, dtype=dtype), -1) * 0.8,
        read_weights=torch.softmax(torch.randn(B, R, N, generator=g, dtype=dtype), -1),
        write_weights=torch.softmax(torch.randn(B, 1, N, generator=g, dtype=dtype), -1) * 0.7,
        read_vectors=torch.randn(B, R, W, generator=g, dtype=dtype),
    )


def interface(B: int, N: int, W: int, R: int, **overrides) -> DNCInterface:
    """A squashed interface with neutral defaults (no write, no free, content reads), fields overridable."""
    d = torch.float64
    fields = dict(
        read_keys=torch.zeros(B, R, W, dtype=d),
        read_strengths=torch.ones(B, R, dtype=d),
        write_key=torch.zeros(B, 1, W, dtype=d),
        write_strength=torch.ones(B, 1, dtype=d),
        erase=torch.zeros(B, 1, W, dtype=d),
        write_vector=torch.zeros(B, 1, W, dtype=d),
        free_gates=torch.zeros(B, R, dtype=d),
        allocation_gate=torch.ones(B, 1, dtype=d),
        write_gate=torch.zeros(B, 1, dtype=d),
        read_modes=torch.tensor([0.0, 1.0, 0.0], dtype=d).expand(B, R, 3),
    )
    fields.update(overrides)
    return DNCInterface(**fields)


# ------------------------------------------------------------------ allocation and usage


def test_allocation_known_values_and_least_used_slot():
    usage = torch.tensor([[0.5, 0.2, 0.8]], dtype=torch.float64)
    # free list phi = (1, 0, 2): a[1] = 1 - 0.2; a[0] = (1 - 0.5) * 0.2; a[2] = (1 - 0.8) * 0.2 * 0.5
    a = allocation_weighting(usage)
    torch.testing.assert_close(a, torch.tensor([[0.1, 0.8, 0.02]], dtype=torch.float64), atol=1e-5, rtol=0)
    # the allocations sum to 1 - prod(u)
    torch.testing.assert_close(a.sum(), 1 - usage.prod(), atol=1e-5, rtol=0)
    usage = torch.tensor([[0.9, 1.0, 0.05, 0.7], [0.0, 0.3, 0.3, 0.3]])
    a = allocation_weighting(usage)
    assert a.argmax(-1).tolist() == [2, 0]
    assert a[1, 0] > 0.999  # a completely free slot takes (almost) all of the allocation


def test_usage_rises_after_write_and_falls_with_free_gate():
    N = 5
    u0 = torch.zeros(1, N, dtype=torch.float64)
    write = onehot(1, N).reshape(1, 1, N)
    u1 = update_usage(u0, write, torch.ones(1, N, dtype=torch.float64))
    assert u1[0, 1] == 1 and u1[0].sum() == 1
    # head 0 read slot 1 last step; free gate 1 releases it: psi[1] = 0 and its usage drops to 0
    read = torch.stack([onehot(1, N), onehot(3, N)]).unsqueeze(0)  # [1, R=2, N]
    psi = retention(torch.tensor([[1.0, 0.0]], dtype=torch.float64), read)
    assert psi[0, 1] == 0 and psi[0, 3] == 1
    u2 = update_usage(u1, torch.zeros(1, 1, N, dtype=torch.float64), psi)
    assert u2[0, 1] == 0
    # free gate 0.5 halves it
    psi = retention(torch.tensor([[0.5, 0.0]], dtype=torch.float64), read)
    assert update_usage(u1, torch.zeros(1, 1, N, dtype=torch.float64), psi)[0, 1] == 0.5


def test_usage_treats_previous_write_weights_as_constant():
    u = torch.rand(2, 4, requires_grad=True)
    w = torch.rand(2, 1, 4, requires_grad=True)
    update_usage(u, w, torch.ones(2, 4)).sum().backward()
    assert w.grad is None and u.grad is not None


def test_access_step_writes_to_least_used_slot_then_usage_rises():
    B, N, W, R = 1, 4, 3, 1
    state = DNCAccessState(
        memory=torch.zeros(B, N, W, dtype=torch.float64),
        usage=torch.tensor([[0.9, 0.8, 0.1, 0.95]], dtype=torch.float64),
        link=torch.zeros(B, N, N, dtype=torch.float64),
        precedence=torch.zeros(B, N, dtype=torch.float64),
        read_weights=torch.zeros(B, R, N, dtype=torch.float64),
        write_weights=torch.zeros(B, 1, N, dtype=torch.float64),
        read_vectors=torch.zeros(B, R, W, dtype=torch.float64),
    )
    v = torch.tensor([[[1.0, -2.0, 3.0]]], dtype=torch.float64)
    xi = interface(B, N, W, R, write_gate=torch.ones(B, 1, dtype=torch.float64), write_vector=v)
    new = access_step(state, xi)
    assert new.write_weights[0, 0].argmax() == 2
    torch.testing.assert_close(new.memory[0, 2], v[0, 0] * new.write_weights[0, 0, 2])
    after = access_step(new, interface(B, N, W, R))  # usage is updated with the previous write
    assert after.usage[0, 2] > 0.9


# ------------------------------------------------------------------ temporal links


def test_link_follows_the_order_of_writes():
    N = 5
    link = torch.zeros(1, N, N, dtype=torch.float64)
    prec = torch.zeros(1, N, dtype=torch.float64)
    order = [0, 1, 2, 3]
    for slot in order:  # hand-set one-hot write weights, as if writing slots 0, 1, 2, 3 in turn
        w = onehot(slot, N).reshape(1, 1, N)
        link = update_link(link, w, prec)
        prec = update_precedence(prec, w)
    expected = torch.zeros(N, N, dtype=torch.float64)
    for a, b in zip(order[:-1], order[1:]):
        expected[b, a] = 1.0  # L[i, j] = 1: slot i was written right after slot j
    torch.testing.assert_close(link[0], expected)
    torch.testing.assert_close(prec[0], onehot(3, N))
    for i in range(3):
        reads = torch.stack([onehot(i, N), onehot(i + 1, N)]).unsqueeze(0)  # R = 2 heads
        fwd, bwd = temporal_weightings(link, reads)
        torch.testing.assert_close(fwd[0, 0], onehot(i + 1, N))  # forward: from slot i to i + 1
        torch.testing.assert_close(bwd[0, 1], onehot(i, N))  # backward: from slot i + 1 to i
    # the fused version gives the same link and weightings
    link_f = torch.zeros(1, N, N, dtype=torch.float64)
    prec = torch.zeros(1, N, dtype=torch.float64)
    reads = torch.stack([onehot(0, N), onehot(1, N)]).unsqueeze(0)
    for slot in order:
        w = onehot(slot, N).reshape(1, 1, N)
        link_f, fwd_f, bwd_f = link_update_and_read(link_f, w, prec, reads)
        prec = update_precedence(prec, w)
    torch.testing.assert_close(link_f, link)
    fwd, bwd = temporal_weightings(link, reads)
    torch.testing.assert_close(fwd_f, fwd)
    torch.testing.assert_close(bwd_f, bwd)


def test_core_states_stay_in_range():
    torch.manual_seed(0)
    core = DNCCore(5, **SMALL)
    state = core.initial_state(4)
    with torch.no_grad():
        for t in range(40):
            _, state = core(torch.randn(4, 5) * 3, state)
            a = state.access
            assert torch.all(a.link.diagonal(dim1=1, dim2=2) == 0)
            assert a.link.min() >= 0 and a.link.max() <= 1 + 1e-6
            assert torch.all(a.precedence.sum(-1) <= 1 + 1e-5) and a.precedence.min() >= 0
            assert a.usage.min() >= 0 and a.usage.max() <= 1 + 1e-6
            assert torch.all(a.write_weights.sum(-1) <= 1 + 1e-5)
            assert torch.all(a.read_weights.sum(-1) <= 1 + 1e-5) and a.read_weights.min() >= -1e-7


# ------------------------------------------------------------------ content reads


def test_sharp_key_reads_its_slot():
    torch.manual_seed(0)
    B, N, W, R = 2, 6, 5, 2
    memory = torch.randn(B, N, W, dtype=torch.float64)
    keys = memory[:, [3, 1]]  # head 0 looks for slot 3, head 1 for slot 1
    strengths = torch.full((B, R), 200.0, dtype=torch.float64)
    for fn in (content_weighting, content_weighting_fast):
        w = fn(memory, keys, strengths)
        assert w[:, 0].argmax(-1).tolist() == [3, 3] and w[:, 1].argmax(-1).tolist() == [1, 1]
    zeros = torch.zeros(B, R, N, dtype=torch.float64)
    modes = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(B, R, 3)
    w = read_weighting(memory, zeros, zeros, keys, strengths, modes, fused=True)
    reads = torch.bmm(w, memory)
    torch.testing.assert_close(reads, keys, atol=1e-3, rtol=0)


def test_read_modes_mix_backward_content_forward():
    B, N, W, R = 1, 4, 3, 1
    memory = torch.randn(B, N, W, dtype=torch.float64)
    fwd, bwd = onehot(2, N).reshape(1, 1, N), onehot(0, N).reshape(1, 1, N)
    keys = memory[:, [1]]
    strengths = torch.full((B, R), 1e3, dtype=torch.float64)
    for mode, slot in ((0, 0), (1, 1), (2, 2)):  # (backward, content, forward)
        pi = onehot(mode, 3).reshape(1, 1, 3)
        w = read_weighting(memory, fwd, bwd, keys, strengths, pi)
        assert w[0, 0].argmax() == slot


# ------------------------------------------------------------------ gradient checks (float64)


def test_gradcheck_addressing():
    """Content + allocation + link-based read weights, composed, against numerical derivatives."""
    B, N, W, R = 2, 5, 3, 2
    s = random_access_state(B, N, W, R)
    torch.manual_seed(1)
    keys = torch.randn(B, R, W, dtype=torch.float64)
    wkey = torch.randn(B, 1, W, dtype=torch.float64)
    beta = torch.rand(B, R, dtype=torch.float64) + 1
    modes = torch.softmax(torch.randn(B, R, 3, dtype=torch.float64), -1)

    def fn(memory, usage, link, prec, read_w, keys, wkey, beta, modes):
        a = allocation_weighting(usage)  # [B, N]
        c_w = content_weighting(memory, wkey, beta[:, :1])  # [B, 1, N]
        w_w = 0.5 * (a.unsqueeze(1) + c_w)
        new_link = update_link(link, w_w, prec)
        fwd, bwd = temporal_weightings(new_link, read_w)
        return read_weighting(memory, fwd, bwd, keys, beta, modes)

    inputs = [t.clone().requires_grad_(True) for t in (*s[:5], keys, wkey, beta, modes)]
    assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_fused_functions():
    B, N, W, R = 2, 5, 3, 2
    s = random_access_state(B, N, W, R)
    torch.manual_seed(2)
    keys = torch.randn(B, R, W, dtype=torch.float64, requires_grad=True)
    beta = (torch.rand(B, R, dtype=torch.float64) + 1).requires_grad_(True)
    mem = s.memory.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(content_weighting_fast, (mem, keys, beta))
    link, prec, rw = (t.clone().requires_grad_(True) for t in (s.link, s.precedence, s.read_weights))
    ww = s.write_weights.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(link_update_and_read, (link, ww, prec, rw))
    e = torch.rand(B, 1, W, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, 1, W, dtype=torch.float64, requires_grad=True)
    psi = torch.rand(B, N, dtype=torch.float64, requires_grad=True)
    for p in (None, psi):
        assert torch.autograd.gradcheck(lambda *a: write_memory(*a, psi=p, fused=True), (mem, ww, e, v))


@pytest.mark.parametrize("erase_freed", [False, True])
def test_gradcheck_fused_access_step(erase_freed):
    B, N, W, R = 2, 5, 3, 2
    core = DNCCore(4, hidden_size=6, num_slots=N, slot_size=W, num_read_heads=R).double()
    s = random_access_state(B, N, W, R)
    torch.manual_seed(3)
    raw = torch.randn(B, core.interface_size, dtype=torch.float64)
    inputs = [t.clone().requires_grad_(True) for t in (raw, *s[:5])]

    def fn(raw, *state):
        st = DNCAccessState(*state, s.write_weights, s.read_vectors)
        return tuple(fused_access_step(raw, st, R, erase_freed))

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "paper")
def test_gradcheck_one_full_step(opts):
    torch.manual_seed(0)
    core = DNCCore(3, hidden_size=4, num_slots=4, slot_size=3, num_read_heads=2, **opts).double()
    B = 2
    state = core.initial_state(B)
    for _ in range(3):  # leave the all-zero start (tied usages: sort is not differentiable at ties)
        _, state = core(torch.randn(B, 3, dtype=torch.float64), state)
    state = tree_map(lambda t: t.detach(), state)
    leaves = tree_leaves(state)
    x = torch.randn(B, 3, dtype=torch.float64, requires_grad=True)
    grads = [x] + [t.clone().requires_grad_(True) for t in leaves if t is not state.access.write_weights]

    def fn(x, *rest):
        it = iter(rest)
        st = tree_map(lambda t: t if t is state.access.write_weights else next(it), state)
        y, new = core(x, st)
        return (y, *tree_leaves(new))

    assert torch.autograd.gradcheck(fn, grads)


# ------------------------------------------------------------------ fused == plain


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "paper")
def test_fused_equals_plain_autograd(opts):
    torch.manual_seed(0)
    fused = DNCCore(5, **SMALL, **opts).double()
    plain = DNCCore(5, **SMALL, **opts, fused=False).double()
    plain.load_state_dict(fused.state_dict())
    xs = torch.randn(7, 3, 5, dtype=torch.float64)
    results = []
    for core in (fused, plain):
        ys, st = core.unroll(xs, core.initial_state(3))
        a = st.access
        loss = ys.pow(2).sum() + a.link.sum() + a.memory.pow(2).sum() + a.usage.sum() + a.precedence.sum()
        loss = loss + a.write_weights.sum() + a.read_weights.pow(2).sum()
        loss.backward()
        results.append((ys.detach(), tree_leaves(st), [p.grad for p in core.parameters()]))
    (ys_f, st_f, g_f), (ys_p, st_p, g_p) = results
    torch.testing.assert_close(ys_f, ys_p, atol=1e-12, rtol=1e-10)
    for a, b in zip(st_f, st_p):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    for a, b in zip(g_f, g_p):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


# ------------------------------------------------------------------ Csordas & Schmidhuber options


def test_erase_freed_zeroes_a_freed_cell():
    B, N, W, R = 1, 4, 3, 1
    s = random_access_state(B, N, W, R)
    s = s._replace(read_weights=onehot(2, N).reshape(1, 1, N))  # the head read slot 2 last step
    xi = interface(B, N, W, R, free_gates=torch.ones(B, R, dtype=torch.float64))  # ... and frees it; no write
    paper = access_step(s, xi, erase_freed=False)
    csordas = access_step(s, xi, erase_freed=True)
    torch.testing.assert_close(paper.memory, s.memory)  # the paper keeps the freed content
    assert torch.all(csordas.memory[0, 2] == 0)  # the option erases it
    torch.testing.assert_close(csordas.memory[0, [0, 1, 3]], s.memory[0, [0, 1, 3]])


def test_masked_content_ignores_masked_out_dimensions():
    N, W = 5, 6
    memory = torch.randn(1, N, W, dtype=torch.float64)
    key = torch.cat([memory[0, 1, :3], memory[0, 4, 3:]]).reshape(1, 1, W)  # slot 1's head, slot 4's tail
    beta = torch.full((1, 1), 100.0, dtype=torch.float64)
    first = torch.tensor([1.0, 1, 1, 0, 0, 0], dtype=torch.float64).reshape(1, 1, W)
    assert content_weighting(memory, key, beta, mask=first).argmax() == 1
    assert content_weighting(memory, key, beta, mask=1 - first).argmax() == 4
    # changing a masked-out dimension of memory changes nothing
    other = memory.clone()
    other[..., 3:] = torch.randn(1, N, 3, dtype=torch.float64)
    torch.testing.assert_close(
        content_weighting(memory, key, beta, mask=first), content_weighting(other, key, beta, mask=first)
    )


def test_link_sharpness():
    d = torch.tensor([[[0.6, 0.3, 0.1, 0.0]]], dtype=torch.float64)
    # s = 1: only renormalised
    s1 = sharpen_link_weights(d, torch.ones(1, 1, dtype=torch.float64))
    torch.testing.assert_close(s1, d / d.sum(), atol=1e-5, rtol=0)
    # s = 2: d^2 / sum d^2
    s2 = sharpen_link_weights(d, torch.full((1, 1), 2.0, dtype=torch.float64))
    torch.testing.assert_close(s2, d.pow(2) / d.pow(2).sum(), atol=1e-5, rtol=0)
    sharp = sharpen_link_weights(d, torch.full((1, 1), 30.0, dtype=torch.float64))
    assert sharp[0, 0, 0] > 0.999


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "paper")
def test_options_change_behaviour_and_keep_the_contract(opts):
    torch.manual_seed(0)
    core = DNCCore(5, **SMALL, **opts)
    base = DNCCore(5, **SMALL)
    if opts.get("masked_content") or opts.get("link_sharpness"):
        assert core.interface_size > base.interface_size  # the extra interface outputs
    xs = torch.randn(6, 3, 5)
    resets = torch.zeros(6, 3, dtype=torch.bool)
    resets[3, 1] = True
    # step loop == unroll with a reset inside
    ys_u, s_u = core.unroll(xs, core.initial_state(3), resets)
    s, ys = core.initial_state(3), []
    for t in range(6):
        y, s = core(xs[t], s, resets[t])
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys), ys_u)
    # gradients reach every parameter and are finite, also with extreme inputs and zero memory at the start
    big = torch.randn(4, 3, 5) * 1e4
    ys, _ = core.unroll(big, core.initial_state(3))
    assert torch.isfinite(ys).all()
    (ys_u.pow(2).sum() + ys.sum()).backward()
    for name, p in core.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_erase_freed_changes_a_core_rollout():
    torch.manual_seed(0)
    a = DNCCore(5, **SMALL)
    b = DNCCore(5, **SMALL, erase_freed=True)
    b.load_state_dict(a.state_dict())
    xs = torch.randn(5, 2, 5)
    assert not torch.allclose(a.unroll(xs, a.initial_state(2))[0], b.unroll(xs, b.initial_state(2))[0])


# ------------------------------------------------------------------ numerics, options, errors


def test_zero_memory_gives_finite_gradients():
    torch.manual_seed(0)
    for fused in (True, False):
        core = DNCCore(5, **SMALL, fused=fused)
        state = core.initial_state(2)  # zero memory: cosine similarity at 0/0 without the epsilon
        x = torch.randn(2, 5, requires_grad=True)
        y, new = core(x, state)
        (y.sum() + new.access.memory.sum()).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        for name, p in core.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_output_size_and_projection():
    core = DNCCore(5, **SMALL)
    assert core.output_size == SMALL["hidden_size"] + SMALL["num_read_heads"] * SMALL["slot_size"]
    y, _ = core(torch.randn(3, 5), core.initial_state(3))
    assert y.shape == (3, core.output_size)
    proj = DNCCore(5, **SMALL, output_size=7)
    y, _ = proj(torch.randn(3, 5), proj.initial_state(3))
    assert y.shape == (3, 7)


def test_learned_initial_state_is_used():
    core = DNCCore(5, **SMALL, learn_initial_state=True)
    with torch.no_grad():
        core.r0.value.fill_(0.5)
    s = core.initial_state(2)
    assert torch.all(s.access.read_vectors == 0.5)
    y, _ = core(torch.randn(2, 5), s)
    y.sum().backward()
    assert core.r0.value.grad.abs().sum() > 0 and core.h0.value.grad.abs().sum() > 0


def test_autocast_keeps_memory_math_in_float32():
    core = DNCCore(5, **SMALL)
    state = core.initial_state(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, new = core(torch.randn(2, 5), state)
        y2, new2 = core(torch.randn(2, 5), new)
    for leaf in tree_leaves(new2.access):
        assert leaf.dtype == torch.float32 and torch.isfinite(leaf).all()
    assert torch.isfinite(y2.float()).all()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(num_slots=0), "num_slots"),
        (dict(slot_size=-1), "slot_size"),
        (dict(num_read_heads=0), "num_read_heads"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(controller="gru"), "controller"),
        (dict(output_size=0), "output_size"),
    ],
)
def test_bad_arguments_name_the_option(kwargs, word):
    with pytest.raises(ValueError, match=word):
        DNCCore(5, **kwargs)


# ------------------------------------------------------------------ fused unroll == step loop


UNROLL_OPTIONS = [{}, dict(erase_freed=True), dict(learn_initial_state=True, output_size=5)]


@pytest.mark.parametrize("opts", UNROLL_OPTIONS, ids=lambda o: ",".join(o) or "paper")
def test_fused_unroll_equals_step_loop_values_and_gradients(opts):
    """DNCCore.unroll (one autograd node over all steps) against the base class's step loop, float64: outputs,
    final state and the gradients w.r.t. every parameter, the inputs and the incoming state, with and without
    per-row resets (a learned initial state gets gradient only through the reset rows)."""
    from memory_cores.base import Core

    torch.manual_seed(0)
    core = DNCCore(5, **SMALL, **opts).double()
    if core.learn_initial_state:
        for p in (core.h0, core.c0, core.r0):
            p.value.data.normal_()
    T, B = 7, 3
    xs = torch.randn(T, B, 5, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[0, 2] = resets[3, 1] = True
    resets[5] = True
    _, start = Core.unroll(core, torch.randn(3, B, 5, dtype=torch.float64), core.initial_state(B))
    start = tree_map(lambda t: t.detach().clone().requires_grad_(True), start)
    assert core._fast_unroll_ok(xs, start)
    for r in (None, resets):
        results = []
        for unroll in (lambda: Core.unroll(core, xs, start, r), lambda: core.unroll(xs, start, r)):
            core.zero_grad(set_to_none=True)
            for t in (xs, *tree_leaves(start)):
                t.grad = None
            ys, st = unroll()
            a, ctrl = st.access, st.controller
            loss = ys.pow(2).sum() + a.link.sum() + a.memory.pow(2).sum() + a.usage.sum() + a.precedence.sum()
            loss = loss + a.write_weights.sum() + a.read_weights.pow(2).sum() + a.read_vectors.sum()
            (loss + ctrl.h.sum() + ctrl.c.pow(2).sum()).backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in core.parameters()]
            grads += [t.grad if t.grad is not None else torch.zeros_like(t) for t in (xs, *tree_leaves(start))]
            results.append((ys.detach(), tree_leaves(st), grads))
        (ys_l, st_l, g_l), (ys_u, st_u, g_u) = results
        torch.testing.assert_close(ys_u, ys_l, atol=1e-12, rtol=1e-10)
        for x, y in zip(st_u, st_l):
            torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)
        for x, y in zip(g_u, g_l):
            torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-8)


def test_fused_unroll_only_where_it_applies():
    xs = torch.randn(4, 2, 5)
    core = DNCCore(5, **SMALL)
    assert core._fast_unroll_ok(xs, core.initial_state(2))
    assert not core._fast_unroll_ok(xs.double(), core.initial_state(2))  # mixed dtypes: the step loop
    others = (dict(fused=False), dict(masked_content=True), dict(link_sharpness=True), dict(controller="feedforward"))
    for opts in others:
        other = DNCCore(5, **SMALL, **opts)
        assert not other._fast_unroll_ok(xs, other.initial_state(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not core._fast_unroll_ok(xs, core.initial_state(2))
    with torch.no_grad():  # inference through the fused path equals the step loop
        from memory_cores.base import Core

        ys, st = core.unroll(xs, core.initial_state(2))
        ys_l, st_l = Core.unroll(core, xs, core.initial_state(2))
    torch.testing.assert_close(ys, ys_l, atol=1e-5, rtol=1e-5)
    for a, b in zip(tree_leaves(st), tree_leaves(st_l)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("MEMORY_CORES_COMPILE_TESTS"),
    reason="compiles with inductor (tens of seconds); set MEMORY_CORES_COMPILE_TESTS=1",
)
def test_compiled_unroll_equals_eager_unroll():
    """DNCCore(compile=True) (torch.compile of the fused unroll's step functions) against the eager fused unroll,
    float64, with resets: outputs, final state and gradients."""
    torch.manual_seed(0)
    eager = DNCCore(5, **SMALL, learn_initial_state=True).double()
    compiled = DNCCore(5, **SMALL, learn_initial_state=True, compile=True).double()
    compiled.load_state_dict(eager.state_dict())
    T, B = 6, 3
    xs = torch.randn(T, B, 5, dtype=torch.float64)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[2, 1] = resets[4, 0] = True
    results = []
    for core in (eager, compiled):
        ys, st = core.unroll(xs, core.initial_state(B), resets)
        (ys.pow(2).sum() + st.access.memory.sum() + st.controller.c.sum()).backward()
        results.append((ys.detach(), tree_leaves(st), [p.grad for p in core.parameters()]))
    (ys_e, st_e, g_e), (ys_c, st_c, g_c) = results
    torch.testing.assert_close(ys_c, ys_e, atol=1e-12, rtol=1e-10)
    for a, b in zip(st_c, st_e):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
