"""Known-answer tests of the ``rl_access`` core: each access process on a hand-set state, the choice API
(log-probability and entropy, greedy mode, sampling reproducibility) and exact re-evaluation of a rollout.

The exact gradient check of the REINFORCE estimator through this core is in ``tests/test_reinforce.py``.
"""

from __future__ import annotations

import pytest
import torch

from memory_cores import tree_leaves
from memory_cores.reinforce import reinforce_loss, reward_to_go
from memory_cores.rl_access import (
    ACCESS_PROCESSES,
    DEFAULT_PROCESSES,
    ChoiceInfo,
    DiscreteChoiceCore,
    RLAccessCore,
    RLAccessState,
    has_discrete_choices,
)

torch.set_num_threads(1)

I, H, N, W = 5, 8, 6, 4
MOVE_AND_ACT = ("write_move_right", "write_move_left", "read_move_right", "read_move_left")


def make(seed: int = 0, **kwargs) -> RLAccessCore:
    torch.manual_seed(seed)
    kw = dict(hidden_size=H, num_slots=N, slot_size=W)
    kw.update(kwargs)
    return RLAccessCore(I, **kw)


def hand_state(core: RLAccessCore, head_slot: int = 2, B: int = 2) -> RLAccessState:
    """A state with distinct memory rows, the head at ``head_slot``, distinct usages and a known last read."""
    s = core.initial_state(B)
    memory = torch.arange(B * N * W, dtype=torch.float32).reshape(B, N, W) / 10.0 + 1.0
    head = torch.zeros(B, N)
    head[:, head_slot] = 1.0
    usage = torch.tensor([0.9, 0.5, 0.7, 0.2, 0.95, 0.6]).repeat(B, 1)  # least used: slot 3
    read = torch.full((B, W), -3.0)
    return s._replace(memory=memory, head=head, usage=usage, read=read)


def apply(core: RLAccessCore, state: RLAccessState, name: str):
    B = state.memory.shape[0]
    choice = torch.full((B,), core.processes.index(name), dtype=torch.long)
    with torch.no_grad():
        y, new, info = core.step_with_choice(torch.randn(B, I), state, choice=choice)
    assert torch.equal(info.choice, choice)
    return y, new


# ---------------------------------------------------------------------- construction and protocol
def test_protocol_and_sizes():
    core = make()
    assert has_discrete_choices(core) and isinstance(core, DiscreteChoiceCore)
    # the default set and its order never change (results and checkpoints refer to the indices)
    assert DEFAULT_PROCESSES == (
        "no_op", "read_head", "write_head", "move_left", "move_right", "content_read", "write_least_used"
    )
    assert core.num_choices == len(DEFAULT_PROCESSES) and core.choice_names == DEFAULT_PROCESSES
    assert ACCESS_PROCESSES[: len(DEFAULT_PROCESSES)] == DEFAULT_PROCESSES
    assert set(MOVE_AND_ACT) <= set(ACCESS_PROCESSES) and not set(MOVE_AND_ACT) & set(DEFAULT_PROCESSES)
    everything = make(processes=ACCESS_PROCESSES)
    assert everything.num_choices == len(ACCESS_PROCESSES) == 11
    assert core.output_size == H + W and core.pre_choice_size == H
    assert not has_discrete_choices(torch.nn.LSTM(3, 3))
    sub = make(processes=("move_right", "write_head"))
    assert sub.num_choices == 2 and sub.interface.out_features == 2 + 3 * W + 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_slots=0), "num_slots"),
        (dict(slot_size=-1), "slot_size"),
        (dict(hidden_size=2.5), "hidden_size"),
        (dict(processes=()), "processes"),
        (dict(processes=("no_op", "jump")), "jump"),
        (dict(processes=("no_op", "no_op")), "distinct"),
        (dict(processes="no_op"), "processes"),
        (dict(usage_decay=1.0), "usage_decay"),
        (dict(usage_decay=0.0), "usage_decay"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_bad_choice_raises():
    core = make()
    s = core.initial_state(3)
    with pytest.raises(ValueError, match="choice"):
        core.step_with_choice(torch.randn(3, I), s, choice=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="choice"):
        core.step_with_choice(torch.randn(3, I), s, choice=torch.zeros(3))
    with pytest.raises(ValueError, match="choices"):
        core.unroll_with_choices(torch.randn(4, 3, I), s, choices=torch.zeros(3, 3, dtype=torch.long))


# ---------------------------------------------------------------------- each access process does what it says
def test_no_op_changes_nothing_but_usage_decay():
    core = make()
    s = hand_state(core)
    y, new = apply(core, s, "no_op")
    assert torch.equal(new.memory, s.memory) and torch.equal(new.head, s.head)
    assert torch.equal(new.read, s.read) and torch.equal(y[:, H:], s.read)
    torch.testing.assert_close(new.usage, core.usage_decay * s.usage)


def test_read_head_reads_the_slot_under_the_head():
    core = make()
    s = hand_state(core, head_slot=4)
    y, new = apply(core, s, "read_head")
    assert torch.equal(new.read, s.memory[:, 4]) and torch.equal(y[:, H:], s.memory[:, 4])
    assert torch.equal(new.memory, s.memory) and torch.equal(new.head, s.head)


@pytest.mark.parametrize("name, delta", [("move_right", 1), ("move_left", -1)])
def test_moves_rotate_the_head_by_one_slot_and_read_there(name, delta):
    core = make()
    for slot in (0, 2, N - 1):  # includes both wrap-arounds
        s = hand_state(core, head_slot=slot)
        y, new = apply(core, s, name)
        target = (slot + delta) % N
        expected = torch.zeros(2, N)
        expected[:, target] = 1.0
        assert torch.equal(new.head, expected)
        assert torch.equal(new.read, s.memory[:, target]) and torch.equal(y[:, H:], s.memory[:, target])
        assert torch.equal(new.memory, s.memory)


def _interface_parts(core, x, state):
    """The controller's e_t and v_t for this input/state (recomputed independently of the core's step)."""
    ctrl_in = torch.cat([x, state.read, state.prev_choice], -1)
    h, _ = core.controller(ctrl_in, (state.h, state.c))
    P = core.num_choices
    xi = core.interface(h)
    e = torch.sigmoid(xi[:, P + W + 1 : P + 2 * W + 1])
    v = xi[:, P + 2 * W + 1 :]
    return e, v


@pytest.mark.parametrize("name, slot", [("write_head", 2), ("write_least_used", 3)])
def test_writes_change_only_the_target_slot(name, slot):
    """write_head writes at the head (slot 2); write_least_used at argmin usage (slot 3), head unchanged."""
    core = make()
    s = hand_state(core, head_slot=2)
    x = torch.randn(2, I)
    choice = torch.full((2,), core.processes.index(name), dtype=torch.long)
    with torch.no_grad():
        _, new, _ = core.step_with_choice(x, s, choice=choice)
        e, v = _interface_parts(core, x, s)
    others = [i for i in range(N) if i != slot]
    assert torch.equal(new.memory[:, others], s.memory[:, others])
    # NTM eqs. 3-4 with a one-hot weighting: M(slot) (1 - e) + v
    torch.testing.assert_close(new.memory[:, slot], s.memory[:, slot] * (1 - e) + v)
    assert not torch.allclose(new.memory[:, slot], s.memory[:, slot])
    assert torch.equal(new.head, s.head) and torch.equal(new.read, s.read)
    expected_usage = core.usage_decay * s.usage
    expected_usage[:, slot] = 1.0
    torch.testing.assert_close(new.usage, expected_usage)


@pytest.mark.parametrize(
    "name, delta, writes",
    [("write_move_right", 1, True), ("write_move_left", -1, True), ("read_move_right", 1, False),
     ("read_move_left", -1, False)],
)
def test_move_and_act_processes_on_a_hand_set_state(name, delta, writes):
    """One step acts at the head p (write: NTM eqs. 3-4 at p; read: r_t = M[p], the slot *before* the move) and then
    moves the head by ``delta`` (circular), whatever else is in the subset."""
    core = make(processes=("no_op",) + MOVE_AND_ACT + ("write_least_used",))
    for slot in (0, 2, N - 1):  # includes both wrap-arounds
        s = hand_state(core, head_slot=slot)
        x = torch.randn(2, I)
        choice = torch.full((2,), core.processes.index(name), dtype=torch.long)
        with torch.no_grad():
            y, new, _ = core.step_with_choice(x, s, choice=choice)
            e, v = _interface_parts(core, x, s)
        moved = torch.zeros(2, N)
        moved[:, (slot + delta) % N] = 1.0
        assert torch.equal(new.head, moved)  # the head after
        others = [i for i in range(N) if i != slot]
        assert torch.equal(new.memory[:, others], s.memory[:, others])
        expected_usage = core.usage_decay * s.usage
        if writes:  # the slot written is the one under the head before the move; the read is kept
            torch.testing.assert_close(new.memory[:, slot], s.memory[:, slot] * (1 - e) + v)
            assert not torch.allclose(new.memory[:, slot], s.memory[:, slot])
            assert torch.equal(new.read, s.read) and torch.equal(y[:, H:], s.read)
            expected_usage[:, slot] = 1.0
        else:  # nothing written; the read value is M(slot) before the move
            assert torch.equal(new.memory, s.memory)
            assert torch.equal(new.read, s.memory[:, slot]) and torch.equal(y[:, H:], s.memory[:, slot])
        torch.testing.assert_close(new.usage, expected_usage)


def test_write_move_right_then_read_move_left_reverses_a_sequence():
    """A hand-checked timeline: write_move_right x 3 fills slots 0, 1, 2 (head ends at 3); move_left once (head 2,
    reads slot 2); then read_move_left reads slots 2, 1, 0: the last item first."""
    core = make(processes=("move_left", "write_move_right", "read_move_left"))
    s = core.initial_state(1)
    written = []
    with torch.no_grad():
        for t in range(3):
            before = s.memory.clone()
            _, s = apply(core, s, "write_move_right")
            written.append((s.memory != before).any(-1)[0].nonzero().flatten().tolist())
            assert s.head[0].argmax() == t + 1
        assert written == [[0], [1], [2]]
        _, s = apply(core, s, "move_left")
        reads = []
        for _ in range(3):
            y, s = apply(core, s, "read_move_left")
            reads.append(y[0, H:])
    for slot, r in zip((2, 1, 0), reads):
        assert torch.equal(r, s.memory[0, slot])
    assert s.head[0].argmax() == N - 1


def test_least_used_writes_fill_slots_in_order_then_overwrite_the_oldest():
    core = make()
    s = core.initial_state(1)
    order = []
    for _ in range(N + 2):
        before = s.memory.clone()
        _, s = apply(core, s, "write_least_used")
        changed = (s.memory != before).any(-1)[0].nonzero().flatten().tolist()
        order.append(changed)
    assert order == [[i] for i in range(N)] + [[0], [1]]


def test_content_read_with_a_sharp_key_reads_that_slot():
    core = make()
    P = core.num_choices
    B = 2
    s = core.initial_state(B)
    # distinct directions (cosine similarity between different slots at most 0.71), different lengths
    directions = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.float32
    )
    memory = (directions * torch.arange(1.0, N + 1).unsqueeze(1)).expand(B, N, W).clone()
    s = s._replace(memory=memory)
    target = 4
    with torch.no_grad():  # interface output does not depend on h: k = M(target) direction, beta ~ 60
        core.interface.weight.zero_()
        core.interface.bias.zero_()
        core.interface.bias[P : P + W] = memory[0, target]
        core.interface.bias[P + W] = 60.0
    y, new = apply(core, s, "content_read")
    torch.testing.assert_close(new.read, memory[:, target], atol=1e-6, rtol=0)
    assert torch.equal(new.memory, s.memory) and torch.equal(new.head, s.head)


def test_process_subset_fixes_the_meaning_of_the_index():
    core = make(processes=("move_right", "write_head"))
    s = hand_state(core, head_slot=1)
    _, new, _ = core.step_with_choice(torch.randn(2, I), s, choice=torch.tensor([0, 1]))
    assert new.head[0].argmax() == 2 and new.head[1].argmax() == 1  # row 0 moved, row 1 wrote
    assert torch.equal(new.memory[0], s.memory[0]) and not torch.equal(new.memory[1], s.memory[1])
    assert torch.equal(new.prev_choice, torch.eye(2))


# ---------------------------------------------------------------------- choice API
def test_log_prob_and_entropy_match_torch_categorical():
    core = make()
    core.train()
    xs = torch.randn(5, 4, I)
    ys, _, info = core.unroll_with_choices(xs, core.initial_state(4))
    assert isinstance(info, ChoiceInfo)
    assert info.choice.shape == (5, 4) and info.choice.dtype == torch.long
    assert info.log_prob.shape == (5, 4) and info.entropy.shape == (5, 4) and info.logits.shape == (5, 4, 7)
    dist = torch.distributions.Categorical(logits=info.logits)
    torch.testing.assert_close(info.log_prob, dist.log_prob(info.choice))
    torch.testing.assert_close(info.entropy, dist.entropy())
    # log_prob is differentiable w.r.t. the RL portion of the interface
    info.log_prob.sum().backward()
    assert core.interface.weight.grad[: core.num_choices].abs().sum() > 0


def test_sampling_frequencies_follow_the_policy():
    core = make()
    B = 20000
    x = torch.randn(1, I).expand(B, I)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        _, _, info = core.step_with_choice(x, core.initial_state(B), generator=g)
    freq = torch.bincount(info.choice, minlength=core.num_choices).float() / B
    probs = info.logits[0].softmax(-1)
    assert (freq - probs).abs().max() < 4 * (probs * (1 - probs) / B).sqrt().max() + 1e-3


def test_sampling_is_gumbel_max_without_host_sync(monkeypatch):
    """The choice is sampled as the policy heads sample actions: argmax(log pi + Gumbel noise) from uniforms drawn
    with the given generator, no ``torch.multinomial`` (which synchronises with the host on CUDA)."""

    def no_multinomial(*args, **kwargs):
        raise AssertionError("torch.multinomial synchronises with the host on CUDA")

    monkeypatch.setattr(torch, "multinomial", no_multinomial)
    core = make()
    x, s = torch.randn(6, I), core.initial_state(6)
    with torch.no_grad():
        _, _, info = core.step_with_choice(x, s, generator=torch.Generator().manual_seed(4))
    u = torch.rand(6, core.num_choices, generator=torch.Generator().manual_seed(4))
    expected = (torch.log_softmax(info.logits, -1) - torch.log(-torch.log(u))).argmax(-1)
    assert torch.equal(info.choice, expected)


def test_greedy_is_deterministic_and_seed_independent():
    core = make()
    xs = torch.randn(8, 3, I)
    resets = torch.zeros(8, 3, dtype=torch.bool)
    resets[4, 0] = True
    core.eval()
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outs.append(core.unroll(xs, core.initial_state(3), resets))
    assert torch.equal(outs[0][0], outs[1][0])
    # greedy=True in train mode gives the same, with choices = argmax of the logits
    core.train()
    ys, _, info = core.unroll_with_choices(xs, core.initial_state(3), resets, greedy=True)
    assert torch.equal(ys, outs[0][0])
    assert torch.equal(info.choice, info.logits.argmax(-1))


def test_sampling_is_reproducible_with_a_generator_and_the_global_rng():
    core = make()
    core.train()
    xs = torch.randn(10, 4, I)
    runs = [
        core.unroll_with_choices(xs, core.initial_state(4), generator=torch.Generator().manual_seed(7))[2].choice
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(core.unroll(xs, core.initial_state(4))[0])
    assert torch.equal(outs[0], outs[1])
    # train-mode sampling does vary the choices across seeds
    other = core.unroll_with_choices(xs, core.initial_state(4), generator=torch.Generator().manual_seed(8))[2]
    assert not torch.equal(other.choice, runs[0])


@pytest.mark.parametrize("processes", [DEFAULT_PROCESSES, ACCESS_PROCESSES, ("no_op",) + MOVE_AND_ACT])
def test_reevaluating_stored_choices_is_exact(processes):
    """The update re-runs a rollout from its saved initial state with the stored choices: same memory contents,
    same outputs and same log-probabilities, bit for bit, while the log-probabilities now carry gradients."""
    core = make(processes=processes)
    core.train()
    T, B = 12, 5
    xs = torch.randn(T, B, I)
    resets = torch.rand(T, B) < 0.15
    init = core.initial_state(B)
    # rollout: step by step, sampling, no gradients (as in an agent's rollout)
    with torch.no_grad():
        s = init
        ys_roll, choices, logps, mems = [], [], [], []
        for t in range(T):
            y, s, info = core.step_with_choice(xs[t], s, resets[t])
            ys_roll.append(y)
            choices.append(info.choice)
            logps.append(info.log_prob)
            mems.append(s.memory)
        final_roll = s
    choices = torch.stack(choices)
    assert len(set(choices.flatten().tolist())) >= min(4, core.num_choices)  # a real mix of processes was exercised
    # update: replay with the stored choices, with gradients
    ys, final, info = core.unroll_with_choices(xs, init, resets, choices=choices)
    assert torch.equal(ys, torch.stack(ys_roll))
    assert torch.equal(info.choice, choices)
    assert torch.equal(info.log_prob, torch.stack(logps))
    for a, b in zip(tree_leaves(final), tree_leaves(final_roll)):
        assert torch.equal(a, b)
    info.log_prob.sum().backward()
    assert core.interface.weight.grad.abs().sum() > 0
    # replaying step by step also reproduces every intermediate memory
    s = init
    for t in range(T):
        _, s, _ = core.step_with_choice(xs[t], s, resets[t], choice=choices[t])
        assert torch.equal(s.memory, mems[t])


def test_reinforce_estimator_is_unbiased_with_move_and_act_processes():
    """The exact-gradient check of ``tests/test_reinforce.py`` with a subset that contains the move-and-act processes:
    every choice sequence of a tiny problem enumerated, J = sum_seq p(seq) R(seq) differentiated by autograd, and the
    mean of the REINFORCE + pathwise estimator within 5 standard errors of it on every coordinate; the pathwise part
    alone must miss it (the check has teeth)."""
    import itertools

    torch.manual_seed(0)
    procs = ("no_op",) + MOVE_AND_ACT
    core = RLAccessCore(2, hidden_size=4, num_slots=3, slot_size=2, processes=procs).double().train()
    with torch.no_grad():  # a policy far from uniform, memory not constant: every path matters
        core.interface.weight[: core.num_choices].mul_(4.0)
        core.interface.bias[: core.num_choices].copy_(torch.randn(core.num_choices))
        core.memory0.value.copy_(torch.randn(3, 2))
    T = 3
    xs = torch.randn(T, 1, 2, dtype=torch.float64)
    c = torch.randn(core.output_size, dtype=torch.float64)
    d = torch.randn(core.output_size, dtype=torch.float64)
    q = torch.randn(core.pre_choice_size, dtype=torch.float64)
    params = list(core.parameters())

    def rewards(ys):  # r_t = c . y_t + 0.5 (d . y_t)^2
        return ys @ c + 0.5 * (ys @ d) ** 2

    def grad(loss):
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, gs)])

    seqs = torch.tensor(list(itertools.product(range(core.num_choices), repeat=T))).T.contiguous()  # [T, P^T]
    ys, _, info = core.unroll_with_choices(xs.expand(T, seqs.shape[1], 2), core.initial_state(seqs.shape[1]),
                                           choices=seqs)
    p_seq = info.log_prob.sum(0).exp()
    torch.testing.assert_close(p_seq.sum(), torch.tensor(1.0, dtype=torch.float64))
    exact = -grad((p_seq * rewards(ys).sum(0)).sum())  # gradient of the loss -J

    def estimate(gen, score: bool, K: int = 3000):
        ys, _, info = core.unroll_with_choices(xs.expand(T, K, 2), core.initial_state(K), generator=gen)
        r = rewards(ys)
        loss = -r.sum(0).mean()  # pathwise part (choices held fixed)
        if score:  # + score-function part, baseline from h_t (before a_t)
            base = (ys[..., : core.pre_choice_size] @ q).detach()
            loss = loss + reinforce_loss(info.log_prob, reward_to_go(r), base, reduction="sequence_mean")
        return grad(loss)

    for score in (True, False):
        gen = torch.Generator().manual_seed(2)
        gs = torch.stack([estimate(gen, score) for _ in range(16)])
        mean, se = gs.mean(0), gs.std(0) / 16**0.5
        z = ((mean - exact).abs() / (se + 1e-9)).max()
        if score:
            assert z < 5.0, f"max z = {z:.1f}"
            assert se.norm() < 0.2 * exact.norm()
        else:
            assert z > 10.0, f"the pathwise part alone is not detected (max z = {z:.1f})"


def test_forward_in_train_mode_equals_step_with_choice_on_the_same_rng():
    core = make()
    core.train()
    x = torch.randn(4, I)
    s = core.initial_state(4)
    reset = torch.tensor([True, False, True, False])
    torch.manual_seed(11)
    y1, s1 = core(x, s, reset)
    torch.manual_seed(11)
    y2, s2, _ = core.step_with_choice(x, s, reset)
    assert torch.equal(y1, y2)


def test_autocast_keeps_memory_in_fp32():
    core = make()
    xs = torch.randn(4, 3, I)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        ys, s, info = core.unroll_with_choices(xs, core.initial_state(3))
    assert s.memory.dtype == torch.float32 and s.h.dtype == torch.float32
    assert ys.dtype == torch.float32 and info.log_prob.dtype == torch.float32
    assert all(torch.isfinite(leaf).all() for leaf in tree_leaves(s))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_and_reevaluation_on_cuda():
    core = make().cuda().train()
    T, B = 6, 4
    xs = torch.randn(T, B, I, device="cuda")
    resets = torch.zeros(T, B, dtype=torch.bool, device="cuda")
    resets[3, 1] = True
    init = core.initial_state(B)
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        ys, final, info = core.unroll_with_choices(xs, init, resets, generator=gen)
    assert info.choice.is_cuda and all(leaf.is_cuda for leaf in tree_leaves(final))
    ys2, final2, info2 = core.unroll_with_choices(xs, init, resets, choices=info.choice)
    assert torch.equal(ys, ys2) and torch.equal(final.memory, final2.memory)
    torch.testing.assert_close(info.log_prob, info2.log_prob)
