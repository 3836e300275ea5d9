"""The ``rl_access`` core's Triton memory access (``RLAccessCore(kernel="triton")``, :mod:`memory_cores.rl_access_triton`)
against the plain step.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here before the kernel
module is first imported), which executes the same kernel code on CPU tensors; with CUDA they run compiled. The
comparisons are in float64 (equal up to rounding) over unrolls with resets inside the sequence: outputs, the final
state, the choice information and the gradients of every parameter, of the inputs and of a hand-set state (memory,
head, usage, last read), for the default process set, every process, a shuffled subset, a subset without
``content_read``, N and W not powers of two, stored choices (replay) that exercise every process, least-used writes
with and without ties and head moves across the wrap-around, and sampled and greedy choices.
"""

from __future__ import annotations

import pytest
import torch

import triton_helpers  # noqa: E402,F401  (before the kernel modules: TRITON_INTERPRET=1 without CUDA)

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from memory_cores.base import tree_leaves  # noqa: E402
from memory_cores.rl_access import ACCESS_PROCESSES, DEFAULT_PROCESSES, RLAccessCore  # noqa: E402

torch.set_num_threads(1)
DEVICE = triton_helpers.DEVICE
# float64 agreement: the interpreter computes in float64 throughout; compiled kernels take float scalars (the usage
# decay lambda, eps) as float32, which moves the usage and the cosine by ~1e-8 relative
TOL64 = 1e-11 if DEVICE == "cpu" else 1e-7
I = 4

SHUFFLED = ("read_move_left", "write_least_used", "content_read", "no_op", "move_right", "write_move_right")
NO_CONTENT = ("write_move_left", "read_head", "move_left", "write_least_used", "read_move_right")
CONFIGS = {
    "default": dict(num_slots=6, slot_size=4),
    "all_processes": dict(num_slots=5, slot_size=3, processes=ACCESS_PROCESSES),
    "shuffled_subset_not_pow2": dict(num_slots=7, slot_size=5, processes=SHUFFLED),
    "no_content_read": dict(num_slots=4, slot_size=6, processes=NO_CONTENT, usage_decay=0.7),
}


def pair(seed: int = 0, dtype=torch.float64, **kwargs) -> tuple[RLAccessCore, RLAccessCore]:
    """A plain core and a Triton core with the same (perturbed) parameters."""
    torch.manual_seed(seed)
    kwargs = {"hidden_size": 8, **kwargs}
    plain = RLAccessCore(I, **kwargs).to(DEVICE, dtype)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fast = RLAccessCore(I, kernel="triton", **kwargs).to(DEVICE, dtype)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def schedule(core: RLAccessCore, T: int, B: int) -> torch.Tensor:
    """Stored choices ``[T, B]`` that cycle through every process of the set, each row with its own offset and stride
    (so every process occurs several times, in different contexts)."""
    P = core.num_choices
    t = torch.arange(T).unsqueeze(1)
    b = torch.arange(B).unsqueeze(0)
    return ((t * (1 + b % 2) + 3 * b) % P).to(DEVICE)


def hand_state(core: RLAccessCore, B: int, seed: int = 5):
    """A state whose memory, head (a perturbed one-hot), usage and read are leaves that require a gradient."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(core.parameters()).dtype
    N, W = core.num_slots, core.slot_size
    head = torch.zeros(B, N, dtype=dtype)
    head[torch.arange(B), torch.arange(B) % N] = 1.0
    leaves = dict(
        memory=torch.randn(B, N, W, generator=g, dtype=dtype),
        head=head + 0.1 * torch.randn(B, N, generator=g, dtype=dtype),
        usage=torch.rand(B, N, generator=g, dtype=dtype),
        read=torch.randn(B, W, generator=g, dtype=dtype),
    )
    leaves = {k: v.to(DEVICE).requires_grad_(True) for k, v in leaves.items()}
    return core.initial_state(B, DEVICE)._replace(**leaves), list(leaves.values())


def run(core, xs, resets, choices=None, state=None, leaves=(), generator=None):
    """Unroll with choices (stored, or sampled with ``generator``), a loss on every output, the final state and the
    log-probabilities and entropies, and the gradients of ``xs``, the state ``leaves`` and every parameter."""
    xs = xs.detach().requires_grad_(True)
    if state is None:
        state = core.initial_state(xs.shape[1], DEVICE)
    ys, final, info = core.unroll_with_choices(xs, state, resets, choices=choices, generator=generator)
    weights = torch.linspace(-1.0, 1.0, ys.shape[-1], device=DEVICE, dtype=xs.dtype)
    loss = (ys * weights).sum() + final.memory.sin().sum() + final.read.cos().sum() + (2 * final.head).sin().sum()
    loss = loss + (3 * final.usage).cos().sum() + final.h.sum() + info.log_prob.sum() + 0.5 * info.entropy.sum()
    grads = torch.autograd.grad(loss, [xs, *leaves, *core.parameters()])
    return ys, final, info, grads


def assert_same(plain, fast, T=6, B=4, choices=None, state_grads=False, sampled=False, tol=TOL64):
    dtype = next(plain.parameters()).dtype
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(T, B, I, generator=g, dtype=dtype).to(DEVICE)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[2, 1] = resets[T - 2, 0] = True  # episode starts inside the sequence
    resets = resets.to(DEVICE)
    results = []
    for core in (plain, fast):
        state, leaves = hand_state(core, B) if state_grads else (None, [])
        gen = torch.Generator(device=DEVICE).manual_seed(7) if sampled else None
        results.append(run(core, xs, resets, choices, state, leaves, gen))
    (ys_a, final_a, info_a, grads_a), (ys_b, final_b, info_b, grads_b) = results
    assert torch.equal(info_b.choice, info_a.choice)
    torch.testing.assert_close(ys_b, ys_a, atol=tol, rtol=tol)
    for name, a, b in zip(final_a._fields, final_a, final_b):
        torch.testing.assert_close(b, a, atol=tol, rtol=tol, msg=lambda m, name=name: f"final.{name}: {m}")
        assert b.requires_grad == a.requires_grad, name  # the head and usage carry a gradient only where plain's do
    for name in ("log_prob", "entropy", "logits"):
        torch.testing.assert_close(getattr(info_b, name), getattr(info_a, name), atol=tol, rtol=tol)
    names = ["xs"] + (["memory", "head", "usage", "read"] if state_grads else [])
    names += [n for n, _ in plain.named_parameters()]
    for name, a, b in zip(names, grads_a, grads_b):
        assert a.abs().max() > 0, name  # a gradient that can tell them apart
        torch.testing.assert_close(b, a, atol=tol, rtol=tol, msg=lambda m, name=name: f"d/d{name}: {m}")
    return info_a


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_triton_access_equals_plain_float64_with_stored_choices(config):
    plain, fast = pair(**CONFIGS[config])
    assert_same(plain, fast, T=8, choices=schedule(plain, 8, 4))


@pytest.mark.parametrize("config", ["all_processes", "no_content_read"])
def test_gradients_of_the_state_equal_plain(config):
    # memory, head, usage and last read as leaves: the head gets its gradient through the reads and writes at the
    # head, the moves and the usage update; the usage through its update
    plain, fast = pair(**CONFIGS[config])
    assert_same(plain, fast, T=5, choices=schedule(plain, 5, 4), state_grads=True)


def test_sampled_choices_are_identical_with_the_same_generator_seed():
    plain, fast = pair(**CONFIGS["all_processes"])
    plain.train(), fast.train()
    info = assert_same(plain, fast, T=6, sampled=True)
    assert len(set(info.choice.flatten().tolist())) >= 5  # a real mix of processes was sampled


def test_greedy_unroll_equals_plain():
    plain, fast = pair(**CONFIGS["shuffled_subset_not_pow2"])
    plain.eval(), fast.eval()
    xs = torch.randn(5, 3, I, dtype=torch.float64, device=DEVICE)
    resets = torch.zeros(5, 3, dtype=torch.bool, device=DEVICE)
    resets[3, 2] = True
    ys_a, s_a = plain.unroll(xs, plain.initial_state(3, DEVICE), resets)
    ys_b, s_b = fast.unroll(xs, fast.initial_state(3, DEVICE), resets)
    torch.testing.assert_close(ys_b, ys_a, atol=TOL64, rtol=TOL64)
    for a, b in zip(tree_leaves(s_a), tree_leaves(s_b)):
        torch.testing.assert_close(b, a, atol=TOL64, rtol=TOL64)


def test_replay_covers_every_process_ties_and_wrap_arounds():
    """A replay from the initial state (head at slot 0, usage 0) whose choices exercise everything the kernel selects
    between: every process several times, least-used writes on tied usages (never-written slots) and on distinct ones,
    moves across the wrap-around in both directions; then compared with the plain step, step by step and unrolled,
    including gradients."""
    plain, fast = pair(num_slots=4, slot_size=3, processes=ACCESS_PROCESSES, hidden_size=6)
    T, B = 12, 4
    idx = {name: i for i, name in enumerate(plain.processes)}
    rows = [
        # left from slot 0 wraps to 3; write there; read_move_right wraps 3 -> 0; least-used: slots 0..2 tie at 0
        ["move_left", "write_head", "read_move_right", "write_least_used", "write_least_used", "content_read",
         "write_move_left", "read_head", "move_right", "write_least_used", "no_op", "read_move_left"],
        # fills every slot, then least-used overwrites the oldest (no tie)
        ["write_least_used"] * 4 + ["write_least_used", "move_right", "write_move_right", "write_least_used",
                                    "read_move_left", "move_left", "move_left", "content_read"],
        ["write_move_right", "write_move_right", "write_move_right", "write_move_right", "read_move_right",
         "write_least_used", "read_move_left", "read_move_left", "write_move_left", "read_head", "content_read",
         "no_op"],
        ["write_move_left", "write_move_left", "read_move_right", "move_right", "write_head", "move_right",
         "content_read", "read_move_left", "write_least_used", "write_head", "move_left", "read_move_right"],
    ]
    choices = torch.tensor([[idx[n] for n in row] for row in rows], device=DEVICE).T.contiguous()  # [T, B]
    counts = torch.bincount(choices.flatten().cpu(), minlength=plain.num_choices)
    assert (counts >= 2).all(), counts
    # coverage, read off the plain step
    xs = torch.randn(T, B, I, dtype=torch.float64, device=DEVICE)
    s = plain.initial_state(B, DEVICE)
    ties = non_ties = wraps_left = wraps_right = 0
    with torch.no_grad():
        for t in range(T):
            head_before = s.head.argmax(-1)
            u = s.usage
            tied = (u == u.min(-1, keepdim=True).values).sum(-1) > 1
            lu = choices[t] == idx["write_least_used"]
            ties += int((lu & tied).sum())
            non_ties += int((lu & ~tied).sum())
            _, s, _ = plain.step_with_choice(xs[t], s, choice=choices[t])
            head_after = s.head.argmax(-1)
            wraps_left += int(((head_before == 0) & (head_after == plain.num_slots - 1)).sum())
            wraps_right += int(((head_before == plain.num_slots - 1) & (head_after == 0)).sum())
    assert ties >= 2 and non_ties >= 2 and wraps_left >= 2 and wraps_right >= 2, (ties, non_ties, wraps_left, wraps_right)
    # step by step with given choices (as an agent's rollout stores them), then the unrolled replay
    sa, sb = plain.initial_state(B, DEVICE), fast.initial_state(B, DEVICE)
    with torch.no_grad():
        for t in range(T):
            ya, sa, _ = plain.step_with_choice(xs[t], sa, choice=choices[t])
            yb, sb, _ = fast.step_with_choice(xs[t], sb, choice=choices[t])
            torch.testing.assert_close(yb, ya, atol=TOL64, rtol=TOL64)
            assert torch.equal(sb.head, sa.head)  # the head is one-hot: moved exactly
            for a, b in zip(sa, sb):
                torch.testing.assert_close(b, a, atol=TOL64, rtol=TOL64)
    assert_same(plain, fast, T=T, B=B, choices=choices)


def test_float32_close_to_plain():
    plain, fast = pair(dtype=torch.float32, **CONFIGS["all_processes"])
    assert_same(plain, fast, T=6, choices=schedule(plain, 6, 4), tol=2e-5)


def test_autocast_and_bfloat16_state_keep_the_memory_math_in_fp32():
    plain, fast = pair(dtype=torch.float32, **CONFIGS["default"])
    xs = torch.randn(4, 3, I, device=DEVICE)
    choices = schedule(plain, 4, 3)
    outs = []
    for core in (plain, fast):
        with torch.autocast(device_type=DEVICE, dtype=torch.bfloat16):
            ys, s, info = core.unroll_with_choices(xs, core.initial_state(3, DEVICE), choices=choices)
        assert s.memory.dtype == torch.float32 and ys.dtype == torch.float32
        outs.append((ys, s))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # a bfloat16 core: bf16 state, memory math in fp32 on both paths
    plain, fast = plain.to(torch.bfloat16), fast.to(torch.bfloat16)
    res = [core.unroll_with_choices(xs.bfloat16(), core.initial_state(3, DEVICE), choices=choices) for core in
           (plain, fast)]
    assert res[1][1].memory.dtype == torch.bfloat16
    torch.testing.assert_close(res[1][0], res[0][0], atol=2e-2, rtol=2e-2)


def test_known_answers_through_the_kernel():
    """Write at the head then read_head there returns the written vector M(p) (1 - e) + v; a sharp content key reads
    its slot; write_least_used writes at the first never-written slot; a move shifts the one-hot head circularly."""
    from memory_cores.rl_access_triton import rl_access

    procs = ("write_head", "read_head", "content_read", "write_least_used", "move_left", "read_move_right")
    B, N, W, P = 2, 5, 3, len(procs)
    f64 = dict(dtype=torch.float64, device=DEVICE)
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(B, N, W, generator=g, dtype=torch.float64).to(DEVICE)
    head = torch.zeros(B, N, **f64)
    head[0, 2] = head[1, 0] = 1.0
    usage = torch.tensor([[0.5, 0.0, 0.9, 0.0, 0.3], [0.2, 0.4, 0.1, 0.6, 0.1]], **f64)  # ties: slots 1, 3 / 2, 4
    read = torch.zeros(B, W, **f64)
    xi = torch.randn(B, P + 3 * W + 1, generator=g, dtype=torch.float64).to(DEVICE)
    e = torch.sigmoid(xi[:, P + W + 1 : P + 2 * W + 1])
    v = xi[:, P + 2 * W + 1 :]

    def step(name, M, p=head, xi=xi):
        choice = torch.full((B,), procs.index(name), dtype=torch.long, device=DEVICE)
        return rl_access(xi, choice, M, p, usage, read, processes=procs, usage_decay=0.9)

    rows = torch.arange(B, device=DEVICE)
    at = head.argmax(-1)
    M1, p1, u1, r1 = step("write_head", memory)
    torch.testing.assert_close(M1[rows, at], memory[rows, at] * (1 - e) + v, atol=1e-14, rtol=0)
    assert torch.equal(p1, head) and torch.equal(r1, read)
    torch.testing.assert_close(u1[rows, at], torch.ones(B, **f64))
    _, _, _, r2 = step("read_head", M1)
    torch.testing.assert_close(r2, memory[rows, at] * (1 - e) + v, atol=1e-14, rtol=0)
    M3, _, u3, _ = step("write_least_used", memory)
    written = (M3 != memory).any(-1)
    assert written[0].nonzero().flatten().tolist() == [1] and written[1].nonzero().flatten().tolist() == [2]
    expected_u = 0.9 * usage
    expected_u[0, 1] = expected_u[1, 2] = 1.0
    torch.testing.assert_close(u3, expected_u)
    _, p4, _, r4 = step("move_left", memory)  # slot 2 -> 1; slot 0 -> N - 1 (wrap)
    assert p4[0].argmax() == 1 and p4[1].argmax() == N - 1
    torch.testing.assert_close(r4, memory[rows, torch.tensor([1, N - 1], device=DEVICE)], atol=1e-15, rtol=0)
    _, p5, _, r5 = step("read_move_right", memory)  # reads at the head, then moves
    assert p5[0].argmax() == 3 and p5[1].argmax() == 1
    torch.testing.assert_close(r5, memory[rows, at], atol=1e-15, rtol=0)
    target = torch.tensor([3, 1], device=DEVICE)
    sharp = xi.clone()
    sharp[:, P : P + W] = memory[rows, target]
    sharp[:, P + W] = 60.0  # beta ~ 61
    _, _, _, r6 = step("content_read", memory, xi=sharp)
    torch.testing.assert_close(r6, memory[rows, target], atol=1e-3, rtol=0)


def test_auto_is_the_plain_step_on_the_cpu_and_the_kernel_on_cuda():
    torch.manual_seed(3)
    kwargs = dict(hidden_size=8, num_slots=6, slot_size=4)
    auto = RLAccessCore(I, kernel="auto", **kwargs).to(DEVICE)
    expected = RLAccessCore(I, kernel="triton" if DEVICE == "cuda" else "plain", **kwargs).to(DEVICE)
    expected.load_state_dict(auto.state_dict())
    auto.eval(), expected.eval()
    xs = torch.randn(4, 3, I, device=DEVICE)
    ys_auto, s_auto = auto.unroll(xs, auto.initial_state(3, DEVICE))
    ys_exp, s_exp = expected.unroll(xs, expected.initial_state(3, DEVICE))
    assert torch.equal(ys_auto, ys_exp)  # the same code ran, bit for bit
    for a, b in zip(tree_leaves(s_auto), tree_leaves(s_exp)):
        assert torch.equal(a, b)


test_contract_with_the_triton_kernel = triton_helpers.contract_test("rl_access", RLAccessCore)


def test_bad_kernel_options_raise_one_line_errors(monkeypatch):
    with pytest.raises(ValueError, match="kernel must be one of") as err:
        RLAccessCore(I, kernel="cuda")
    assert "\n" not in str(err.value)
    core = RLAccessCore(I, hidden_size=8, num_slots=6, slot_size=4, kernel="triton")
    assert "kernel='triton'" in repr(core) and "kernel=" not in repr(RLAccessCore(I))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="Triton kernels run on CUDA tensors") as err:
        core.step(torch.randn(2, I), core.initial_state(2, "cpu"))
    assert "\n" not in str(err.value)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from memory_cores.rl_access_triton import rl_access

    x = torch.zeros(1, 1, dtype=torch.float16, device=DEVICE)
    with pytest.raises(TypeError, match="float32 or float64"):
        rl_access(x, x.long(), x.view(1, 1, 1), x, x, x, processes=DEFAULT_PROCESSES, usage_decay=0.9)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_replay_in_a_cuda_graph_equals_eager():
    # the kernels launch inside a captured replay (forward and backward) like any other op
    _, fast = pair(dtype=torch.float32, **CONFIGS["all_processes"])
    T, B = 6, 32
    xs = torch.randn(T, B, I, device="cuda")
    choices = schedule(fast, T, B)
    state = fast.initial_state(B, "cuda")
    params = list(fast.parameters())

    def fwd_bwd():
        ys, _, info = fast.unroll_with_choices(xs, state, choices=choices)
        return torch.autograd.grad(ys.square().sum() + info.log_prob.sum(), params)

    triton_helpers.assert_graph_replay_equals_eager(fwd_bwd)
