"""Memory-efficient BPTT (Gruslys et al. 2016, BPTT-HSM/ISM/MSM): the policy's cost and exact gradients for every
core."""

from __future__ import annotations

import functools

import pytest
import torch

from memory_cores import CORES, bptt_policy, memory_efficient_unroll, tree_leaves
from memory_cores.base import tree_unflatten
from test_core_contract import INPUT, build

torch.set_num_threads(1)

B = 3


# ---------------------------------------------------------------------------------------------- the policy
def test_closed_forms():
    for t in range(1, 30):
        assert bptt_policy(t, 1).cost == t * (t + 1) // 2  # C(t, 1)
        assert bptt_policy(t, 1).forward_stores == ()
        # m >= t: every hidden state stored; each step but the last is run a second time for its internals
        for m in (t, t + 3):
            p = bptt_policy(t, m)
            assert p.cost == 2 * t - 1
            assert p.backward_steps == t  # the backward pass runs each step once, with grad
            assert len(p.forward_stores) == t - 1
    assert bptt_policy(1, 1).cost == 1
    assert bptt_policy(0, 3).cost == 0
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="memory_slots"):
            bptt_policy(5, bad)


def _leaf_steps(t, S):
    """Forward steps of a leaf: the stretches [t - S, t), [t - 2S, t - S), ... each rerun from the start."""
    return sum(range(t, 0, -S))


def _simulate(t, m, tree, S=1, stored_before=0):
    """Run a policy tree abstractly: (forward steps, most hidden states held at once). A tree is ``None`` (a leaf:
    recompute each stretch of S steps from the start, the last one first) or ``(y, right_tree, left_tree)``."""
    if t == 0:
        return 0, stored_before
    if tree is None:
        return _leaf_steps(t, S), stored_before + 1
    y, right, left = tree
    steps_r, peak_r = _simulate(t - y, m - 1, right, S, stored_before + 1)
    steps_l, peak_l = _simulate(y, m, left, S, stored_before)
    return y + steps_r + steps_l, max(peak_r, peak_l)


def _all_trees(t, m):
    """Every recursive store/recompute policy for t steps with m slots."""
    trees = [None]
    if t >= 2 and m >= 2:
        for y in range(1, t):
            for r in _all_trees(t - y, m - 1):
                for left in _all_trees(y, m):
                    trees.append((y, r, left))
    return trees


@pytest.mark.parametrize("S", [1, 2, 3])
def test_dp_against_brute_force(S):
    for t in range(1, 9):
        for m in range(1, 5):
            best = None
            for tree in _all_trees(t, m):
                steps, peak = _simulate(t, m, tree, S)
                assert peak <= m
                best = steps if best is None else min(best, steps)
            assert bptt_policy(t, m, S).cost == best, (t, m, S)


def _simulate_kinds(t, m, tree, S, alpha, stored_before=0):
    """Like :func:`_simulate` with internal-state nodes: a tree is ``None``, ``("h", y, right, left)`` (hidden state
    after y steps: 1 slot) or ``("i", y, right, left)`` (internal state of step y: alpha slots, the right part's
    start state inside them; step y is not rerun, the left part is [0, y - 1))."""
    if t == 0:
        return 0, stored_before
    if tree is None:
        return _leaf_steps(t, S), stored_before + 1
    kind, y, right, left = tree
    if kind == "h":
        steps_r, peak_r = _simulate_kinds(t - y, m - 1, right, S, alpha, stored_before + 1)
        steps_l, peak_l = _simulate_kinds(y, m, left, S, alpha, stored_before)
    else:
        steps_r, peak_r = _simulate_kinds(t - y, m - alpha, right, S, alpha, stored_before + alpha)
        steps_l, peak_l = _simulate_kinds(y - 1, m, left, S, alpha, stored_before)
        peak_r = max(peak_r, stored_before + 1 + alpha)  # the start state and the stored step, right part empty
    return y + steps_r + steps_l, max(peak_r, peak_l)


def _all_kind_trees(t, m, kinds, alpha):
    trees = [None]
    if t >= 2 and m >= 2:
        if "h" in kinds:
            for y in range(1, t):
                trees += [("h", y, r, left) for r in _all_kind_trees(t - y, m - 1, kinds, alpha)
                          for left in _all_kind_trees(y, m, kinds, alpha)]
        if "i" in kinds and m - alpha >= 1:
            for y in range(1, t + 1):
                trees += [("i", y, r, left) for r in _all_kind_trees(t - y, m - alpha, kinds, alpha)
                          for left in _all_kind_trees(y - 1, m, kinds, alpha)]
    return trees


@pytest.mark.parametrize("storage,kinds", [("internal", "i"), ("mixed", "hi")])
@pytest.mark.parametrize("alpha,S", [(1, 1), (2, 1), (3, 1), (2, 2)])
def test_internal_and_mixed_dp_against_brute_force(storage, kinds, alpha, S):
    """BPTT-ISM and BPTT-MSM: the programme's cost is the cheapest of every store/recompute tree (hidden and/or
    internal-state splits) that never holds more than m slots."""
    for t in range(1, 8):
        for m in range(1, 6):
            best = None
            for tree in _all_kind_trees(t, m, kinds, alpha):
                steps, peak = _simulate_kinds(t, m, tree, S, alpha)
                assert peak <= m, (tree, peak, m)
                best = steps if best is None else min(best, steps)
            assert bptt_policy(t, m, S, storage, alpha).cost == best, (t, m, S, storage, alpha)


def test_internal_states_avoid_recomputation():
    """With room for every step's internals (1 + alpha (t - 1) slots) BPTT-ISM runs each step once (cost t, the
    paper's point), where hidden states only need 2 t - 1; the mix is never worse than either."""
    for alpha in (1, 2, 5):
        for t in range(1, 30):
            assert bptt_policy(t, 1 + alpha * (t - 1), 1, "internal", alpha).cost == t
            if t > 1:
                assert bptt_policy(t, alpha * (t - 1), 1, "internal", alpha).cost > t
    for t, m, alpha in ((50, 4, 2), (100, 10, 3), (200, 20, 8), (64, 7, 1)):
        h, i = bptt_policy(t, m, 1, "hidden").cost, bptt_policy(t, m, 1, "internal", alpha).cost
        assert bptt_policy(t, m, 1, "mixed", alpha).cost <= min(h, i)
    with pytest.raises(ValueError, match="storage"):
        bptt_policy(5, 2, 1, "activations")
    with pytest.raises(ValueError, match="internal_cost"):
        bptt_policy(5, 2, 1, "mixed", 0)


def test_segment_closed_forms():
    """With stretches of S steps: a sequence of at most S steps is run once with grad; one slot reruns each
    stretch from the start; S = 1 is the paper's policy."""
    for t in range(1, 20):
        for S in (1, 2, 5, 40):
            assert bptt_policy(t, 1, S).cost == sum(range(t, 0, -S))
            if t <= S:
                p = bptt_policy(t, 4, S)
                assert (p.cost, p.forward_stores, p.backward_steps) == (t, (), t)
    assert bptt_policy(1000, 32, 1).cost > bptt_policy(1000, 32, 32).cost
    with pytest.raises(ValueError, match="segment_steps"):
        bptt_policy(5, 2, 0)


def test_cost_monotone_and_far_below_quadratic():
    p = bptt_policy(200, 10)
    assert bptt_policy(200, 9).cost >= p.cost >= bptt_policy(200, 11).cost
    assert p.cost < 4 * 200 < 200 * 201 // 20  # under 4 T forward steps, far below T (T + 1) / 2
    assert len(p.forward_stores) <= 9


# ---------------------------------------------------------------------------------------------- execution
def _inputs(core, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(T, B, INPUT, generator=g, dtype=torch.float64, requires_grad=True)
    resets = torch.rand(T, B, generator=g) < 0.25
    resets[0] = False
    resets[T // 2, 0] = True  # at least one reset inside the sequence
    state = core.initial_state(B)
    # perturbed, grad-requiring initial state (integer leaves such as fill counts stay as they are)
    new = [
        (s.detach() + 0.1 * torch.randn(s.shape, generator=g, dtype=s.dtype)).requires_grad_()
        if s.is_floating_point()
        else s
        for s in tree_leaves(state)
    ]
    return xs, tree_unflatten(state, new), resets


def _grads(core, xs, state, resets, fn):
    ys, final = fn(xs, state, resets)
    g = torch.Generator().manual_seed(7)
    loss = (ys * torch.randn(ys.shape, generator=g, dtype=ys.dtype)).sum()
    for leaf in tree_leaves(final):
        if leaf.is_floating_point():
            loss = loss + (leaf * torch.randn(leaf.shape, generator=g, dtype=leaf.dtype)).sum()
    inputs = [xs] + [l for l in tree_leaves(state) if l.requires_grad] + [p for p in core.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return ys.detach(), [l.detach() for l in tree_leaves(final)], grads


@pytest.mark.parametrize("name", sorted(CORES))
def test_gradients_equal_plain_bptt(name):
    core = build(name).double()
    if name == "rl_access":
        core.eval()  # greedy choices; train-mode sampling is covered by test_rng_replay
    T = 7
    xs, state, resets = _inputs(core, T)
    ref = _grads(core, xs, state, resets, core.unroll)
    cases = [(m, S, "hidden", 1) for m, S in ((1, 1), (3, 1), (T, 1), (T + 2, 1), (1, 3), (2, 2), (3, T))]
    cases += [(3, 1, "internal", 2), (4, 2, "internal", 1), (5, 1, "mixed", 2), (2 + 2 * T, 1, "internal", 2)]
    for m, S, storage, alpha in cases:
        fn = functools.partial(memory_efficient_unroll, core, memory_slots=m, segment_steps=S, storage=storage,
                               internal_cost=alpha)
        got = _grads(core, xs, state, resets, fn)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-12)
        for a, b in zip(got[1], ref[1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(got[2], ref[2]):
            if b is None:
                assert a is None or torch.count_nonzero(a) == 0
            else:
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=f"{name} m={m} S={S} {storage}")


def test_rng_replay():
    """rl_access samples in train mode; the recomputation restores the RNG state saved with each stored state."""
    core = build("rl_access").double().train()
    xs, state, resets = _inputs(core, 9)
    torch.manual_seed(3)
    ref = _grads(core, xs, state, resets, core.unroll)
    for m, S in ((1, 1), (3, 1), (2, 4)):
        torch.manual_seed(3)
        fn = functools.partial(memory_efficient_unroll, core, memory_slots=m, segment_steps=S)
        got = _grads(core, xs, state, resets, fn)
        torch.testing.assert_close(got[0], ref[0])
        for a, b in zip(got[2], ref[2]):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def _kinds_used(p, t, m):
    """The kinds of node in the policy's tree for t steps and m slots."""
    kind, y = p.node(t, m)
    if kind == 0:
        return {"leaf"} if t else set()
    if kind == 1:
        return {"hidden"} | _kinds_used(p, t - y, m - 1) | _kinds_used(p, y, m)
    return {"internal"} | _kinds_used(p, t - y, m - p.internal_cost) | _kinds_used(p, y - 1, m)


@pytest.mark.parametrize("T,m,S,storage,alpha", [
    (1, 1, 1, "hidden", 1), (6, 1, 1, "hidden", 1), (10, 3, 1, "hidden", 1), (12, 4, 1, "hidden", 1),
    (8, 8, 1, "hidden", 1), (5, 9, 1, "hidden", 1), (11, 1, 3, "hidden", 1), (20, 3, 4, "hidden", 1),
    (9, 4, 9, "hidden", 1), (10, 3, 1, "internal", 2), (12, 9, 1, "internal", 1), (20, 5, 2, "mixed", 2),
    (16, 6, 1, "mixed", 3),
])
def test_steps_executed(T, m, S, storage, alpha):
    core = build("lstm").double()
    counter = [0]
    grad_runs = []
    plain = core.unroll

    def counting_unroll(xs, state, resets=None):
        counter[0] += xs.shape[0]
        if torch.is_grad_enabled():
            grad_runs.append(xs.shape[0])
        return plain(xs, state, resets)

    core.unroll = counting_unroll
    xs, state, resets = _inputs(core, T)
    ys, final = memory_efficient_unroll(core, xs, state, resets, memory_slots=m, segment_steps=S, storage=storage,
                                        internal_cost=alpha)
    assert counter[0] == T
    (ys.sum() + final[0].sum()).backward()
    p = bptt_policy(T, m, S, storage, alpha)
    if storage != "hidden":
        assert "internal" in _kinds_used(p, T, min(m, T))  # the case exercises stored internal states
    assert counter[0] == T + p.backward_steps
    # the spine's forward runs (all but the last segment, t_last = T - last store) were done by the forward pass
    assert p.backward_steps == p.cost - (p.forward_stores[-1] if p.forward_stores else 0)
    # the graph of one recomputed stretch at a time, each at most S steps; together they cover every step once
    assert max(grad_runs) <= S and sum(grad_runs) == T


def test_stored_forward_information_far_below_plain():
    core = build("lstm")
    T = 200
    xs = torch.randn(T, B, INPUT, requires_grad=True)
    state = core.initial_state(B)

    def saved_bytes(fn):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ys, _ = fn(xs, state)
        return total[0], ys

    plain, ys_ref = saved_bytes(core.unroll)
    cheap, ys = saved_bytes(functools.partial(memory_efficient_unroll, core, memory_slots=10))
    torch.testing.assert_close(ys, ys_ref)
    assert 0 < cheap < 0.1 * plain, (cheap, plain)


def test_ppo_loss_with_memory_efficient_bptt_equals_plain_bptt():
    """PPO's loss and its gradients with --bptt-memory-slots equal plain BPTT's on the same minibatch (a GRU: its
    plain update would use the fused segmented unroll; resets inside the 16-step sequences). Memory-efficient BPTT
    runs over the episode segments too, so no recomputed stretch holds a reset after its first step (the GRU's
    fused kernel, not its step loop)."""
    from dataclasses import replace

    import torch

    from agents.env_adapter import TorchVecEnv
    from agents.evaluation import build_policy
    from agents.ppo import PPO, TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(env="MemoryCores/TMaze-v0", env_kwargs='{"length": 3, "max_steps": 6}', core="gru",
                      hidden_size=8, embed_size=8, num_envs=4, num_steps=16, seq_len=16, num_minibatches=1,
                      update_epochs=1, progress=False, tensorboard=False)
    venv = TorchVecEnv(cfg.env, cfg.num_envs, "cpu", cfg.env_kwargs_dict())
    policy = build_policy(cfg, venv.single_observation_space, venv.single_action_space)
    ppo = PPO(policy, venv, cfg, seed=0)
    data = ppo.sequences(ppo.collect())
    assert bool(data["starts"][1:].any())  # episodes start inside the sequences
    idx = torch.arange(data["starts"].shape[1])
    core, inside = policy.core, []
    plain_unroll = core.unroll

    def recording_unroll(xs, state, resets=None):
        inside.append(resets is not None and bool(resets[1:].any()))
        return plain_unroll(xs, state, resets)

    core.unroll = recording_unroll
    out = []
    for slots, seg, storage in ((0, 1, "hidden"), (3, 1, "hidden"), (3, 4, "hidden"), (12, 1, "internal"),
                                (6, 1, "mixed")):
        ppo.cfg = replace(cfg, bptt_memory_slots=slots, bptt_segment_steps=seg, bptt_storage=storage)
        policy.zero_grad()
        inside.clear()
        loss, _ = ppo.loss(data, idx)
        loss.backward()
        assert inside and not any(inside), (slots, seg, inside)  # every unroll reset-free after its first step
        out.append((loss.detach(), [p.grad.clone() for p in policy.parameters()]))
    venv.close()
    for other in out[1:]:
        torch.testing.assert_close(out[0][0], other[0], rtol=1e-5, atol=1e-6)
        for g0, g1 in zip(out[0][1], other[1]):
            torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)


def test_bptt_memory_slots_is_validated():
    import pytest

    from agents.ppo import TrainConfig

    with pytest.raises(ValueError, match="bptt-memory-slots"):
        TrainConfig(bptt_memory_slots=-1).validate()
    with pytest.raises(ValueError, match="bptt-segment-steps"):
        TrainConfig(bptt_memory_slots=4, bptt_segment_steps=0).validate()
    with pytest.raises(ValueError, match="bptt-storage"):
        TrainConfig(bptt_memory_slots=4, bptt_storage="activations").validate()
    with pytest.raises(ValueError, match="discrete choices"):
        TrainConfig(core="rl_access", bptt_memory_slots=4).validate()
