"""Known-answer tests of the end-to-end memory network core (memory_cores/memnet.py).

The contract tests (tests/test_core_contract.py) run on ``memnet`` too; these check what is particular to it: a sharp
key reads its slot, the ring buffer overwrites the oldest slot, temporal encoding makes order matter, the hops are
tied as in the paper (``A^{k+1} = C^k``, ``B = A^1``), empty slots are never read, and the fused unroll is the step
loop (float64, values and gradients, resets inside the sequence, wrap-around, several chunks).
"""

from __future__ import annotations

import math

import pytest
import torch

from memory_cores import make_core
from memory_cores.memnet import MemNetCore, MemNetState, masked_softmax

torch.set_num_threads(1)

IN, B = 5, 3


def small(seed: int = 0, dtype=torch.float32, **kw) -> MemNetCore:
    torch.manual_seed(seed)
    args = dict(hidden_size=8, num_slots=4, num_hops=3)
    args.update(kw)
    return MemNetCore(IN, **args).to(dtype).eval()


def step_loop(core, xs, state, resets=None):
    ys = []
    for t in range(xs.shape[0]):
        y, state = core(xs[t], state, None if resets is None else resets[t])
        ys.append(y)
    return torch.stack(ys), state


def test_registered_with_plain_args_and_errors():
    core = make_core("memnet", IN, hidden_size=16, num_slots=7, num_hops=2, temporal_encoding=False, init_std=0.1)
    assert core.output_size == 16
    s = core.initial_state(B)
    assert s.memory.shape == (B, 7, 3, 16) and s.pointer.shape == (B,) and s.count.shape == (B,)
    assert all(torch.equal(t, torch.zeros_like(t)) for t in s)
    # K + 1 embeddings (adjacent tying), K + 1 temporal tables: (K + 1) (I D + N D) parameters
    with_te = MemNetCore(IN, hidden_size=16, num_slots=7, num_hops=2)
    assert sum(p.numel() for p in with_te.parameters()) == 3 * (IN * 16 + 7 * 16)
    assert sum(p.numel() for p in core.parameters()) == 3 * IN * 16
    for kw, name in ((dict(num_slots=0), "num_slots"), (dict(num_hops=-1), "num_hops"),
                     (dict(hidden_size=2.5), "hidden_size"), (dict(init_std=0.0), "init_std"),
                     (dict(temporal_encoding=1), "temporal_encoding")):
        with pytest.raises(ValueError, match=name):
            MemNetCore(IN, **kw)


def test_masked_softmax_rows_without_valid_entries_read_nothing():
    scores = torch.tensor([[1.0, float("nan"), 2.0], [float("inf"), 0.0, 3.0]], requires_grad=True)
    valid = torch.tensor([[True, False, True], [False, False, False]])
    p = masked_softmax(scores, valid)
    torch.testing.assert_close(p[0], torch.softmax(torch.tensor([1.0, float("-inf"), 2.0]), 0))
    assert torch.equal(p[1], torch.zeros(3))
    p.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_first_step_reads_an_empty_memory():
    """o = 0 on every hop: y = u^1 = B x = E^0 x."""
    core = small()
    x = torch.randn(B, IN)
    y, s = core(x, core.initial_state(B))
    torch.testing.assert_close(y, x @ core.embed.weight[: core.hidden_size].T)
    assert torch.equal(s.count, torch.ones(B)) and torch.equal(s.pointer, torch.ones(B))


def test_sharp_key_reads_its_slot():
    """One-hot inputs, keys E^0 = 10 I, values E^1 = V, no temporal encoding, one hop: querying with x = e_j after
    writing e_0..e_{N-1} gives p = (nearly) one-hot on the slot of e_j and o = V e_j."""
    N = D = IN
    core = MemNetCore(IN, hidden_size=D, num_slots=N, num_hops=1, temporal_encoding=False).double()
    V = torch.randn(D, IN, dtype=torch.float64)
    with torch.no_grad():
        core.embed.weight.copy_(torch.cat([20.0 * torch.eye(D, dtype=torch.float64), V]))
    eye = torch.eye(IN, dtype=torch.float64)
    _, s = core.unroll(eye[:, None].expand(N, B, IN).contiguous(), core.initial_state(B))
    assert torch.equal(s.count, torch.full((B,), float(N))) and torch.equal(s.pointer, torch.zeros(B))
    for j in range(IN):
        x = eye[j].expand(B, IN)
        y, _ = core(x, s)
        u1 = 20.0 * x
        torch.testing.assert_close(y - u1, (V @ eye[j]).expand(B, D), atol=1e-6, rtol=0)  # o = V e_j
    # the address itself: scores 400 / sqrt(D) on slot j, 0 elsewhere
    p = masked_softmax(torch.tensor([[0.0, 400.0 / math.sqrt(D), 0.0]], dtype=torch.float64), torch.ones(1, 3).bool())
    assert p[0, 1] > 1 - 1e-12


@pytest.mark.parametrize("fused", [False, True])
def test_ring_buffer_overwrites_the_oldest_slot(fused):
    """After k steps: count = min(k, N), pointer = k mod N, slot k mod N holds step k's embeddings; step N + j
    overwrites slot j (the oldest), the other slots keep theirs."""
    N, T = 4, 11
    core = small(num_slots=N)
    xs = torch.randn(T, B, IN)
    e = core._embed(xs).detach()  # [T, B, K+1, D]
    for k in range(1, T + 1):
        with torch.no_grad():
            _, s = core.unroll(xs[:k], core.initial_state(B)) if fused else step_loop(core, xs[:k], core.initial_state(B))
        assert torch.equal(s.count, torch.full((B,), float(min(k, N))))
        assert torch.equal(s.pointer, torch.full((B,), float(k % N)))
        for slot in range(N):
            written = [t for t in range(k) if t % N == slot]
            if written:  # the newest step written there
                torch.testing.assert_close(s.memory[:, slot], e[written[-1]], atol=1e-6, rtol=0)
            else:
                assert torch.equal(s.memory[:, slot], torch.zeros_like(s.memory[:, slot]))


@pytest.mark.parametrize("fused", [False, True])
def test_reads_only_the_last_N_steps(fused):
    """The output at t has a gradient from x_{t-N} .. x_t and none from x_{t-N-1}."""
    N, T = 4, 9
    core = small(num_slots=N)
    xs = torch.randn(T, B, IN, requires_grad=True)
    ys, _ = core.unroll(xs, core.initial_state(B)) if fused else step_loop(core, xs, core.initial_state(B))
    (g,) = torch.autograd.grad(ys[-1].sum(), xs)
    reach = g.abs().sum(dim=(1, 2))
    assert (reach[T - 1 - N :] > 0).all() and (reach[: T - 1 - N] == 0).all()


def test_temporal_encoding_distinguishes_order():
    """Without temporal encoding the memory is a bag: the query's output is the same for any order of the earlier
    steps (up to rounding); with it, the order changes the output."""
    N = 5
    xs = torch.randn(N, B, IN, dtype=torch.float64)
    q = torch.randn(B, IN, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 2, 1])
    for te, same in ((False, True), (True, False)):
        core = small(num_slots=N, temporal_encoding=te, dtype=torch.float64)
        outs = []
        for order in (torch.arange(N), perm):
            _, s = core.unroll(xs[order], core.initial_state(B))
            outs.append(core(q, s)[0])
        if same:
            torch.testing.assert_close(outs[0], outs[1], atol=1e-12, rtol=1e-12)
        else:
            assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_hops_are_tied_as_in_the_paper():
    """A reference written from the paper with separate A^k, C^k, B, T_A^k, T_C^k, then tied (A^{k+1} = C^k,
    B = A^1, T_A^{k+1} = T_C^k), gives the core's output: hop k reads keys from embedding k-1 and values from k."""
    N, K, D, T = 4, 3, 8, 6
    core = small(num_slots=N, num_hops=K, hidden_size=D, dtype=torch.float64)
    xs = torch.randn(T, B, IN, dtype=torch.float64)
    ys, _ = core.unroll(xs, core.initial_state(B))
    E = core.embed.weight.detach().view(K + 1, D, IN)
    TE = core.temporal.detach()
    A = {k: E[k - 1] for k in range(1, K + 1)}
    C = {k: E[k] for k in range(1, K + 1)}
    T_A = {k: TE[k - 1] for k in range(1, K + 1)}
    T_C = {k: TE[k] for k in range(1, K + 1)}
    Bm = A[1]
    for k in range(1, K):
        assert torch.equal(A[k + 1], C[k]) and torch.equal(T_A[k + 1], T_C[k])  # adjacent tying
    for t in range(T):
        past = list(range(max(0, t - N), t))  # the readable steps, oldest first
        u = xs[t] @ Bm.T  # u^1 = B x_t
        for k in range(1, K + 1):
            if not past:
                break
            ages = [t - 1 - i for i in past]
            m = torch.stack([xs[i] @ A[k].T + T_A[k][a] for i, a in zip(past, ages)], 1)  # [B, n, D]
            c = torch.stack([xs[i] @ C[k].T + T_C[k][a] for i, a in zip(past, ages)], 1)
            p = torch.softmax(torch.einsum("bd,bnd->bn", u, m) / math.sqrt(D), dim=1)
            u = u + torch.einsum("bn,bnd->bd", p, c)
        torch.testing.assert_close(ys[t], u, atol=1e-12, rtol=1e-10)


def test_fused_unroll_equals_step_loop_float64_values_and_gradients():
    """Resets at t = 0, inside both of two chunks (T > max(N, 32)) and in the last N steps; the buffer wraps many
    times; an incoming memory that needs gradients (both paths pass it the same gradient)."""
    N, T = 5, 70
    core = small(num_slots=N, dtype=torch.float64)
    _, s0 = core.unroll(torch.randn(7, B, IN, dtype=torch.float64), core.initial_state(B))  # pointer 2, full
    s0 = MemNetState(s0.memory.detach().requires_grad_(True), s0.pointer, torch.tensor([5.0, 5.0, 5.0]))
    xs = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[0, 0] = resets[2, 1] = resets[3, 1] = resets[33, 2] = resets[40, 0] = resets[64, 1] = resets[T - 2, 2] = True
    params = [s0.memory, xs] + list(core.parameters())

    def run(unroll):
        ys, s = unroll(xs, s0, resets)
        loss = (ys * torch.linspace(-1, 1, T, dtype=torch.float64)[:, None, None]).pow(2).sum() + s.memory.sin().sum()
        return ys, s, torch.autograd.grad(loss, params)

    ys_f, s_f, g_f = run(core.unroll)
    ys_l, s_l, g_l = run(lambda *a: step_loop(core, *a))
    torch.testing.assert_close(ys_f, ys_l, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_f.memory, s_l.memory, atol=1e-12, rtol=1e-10)
    assert torch.equal(s_f.pointer, s_l.pointer) and torch.equal(s_f.count, s_l.count)
    for a, b in zip(g_f, g_l):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)
    assert g_f[0].abs().sum() > 0  # the incoming memory gets gradient (row 2 keeps it until t = 33)


def test_fused_unroll_from_a_partly_filled_memory_and_without_resets():
    N = 6
    core = small(num_slots=N, dtype=torch.float64)
    for warm in (0, 2, 6, 9):
        _, s0 = core.unroll(torch.randn(warm, B, IN, dtype=torch.float64), core.initial_state(B))
        xs = torch.randn(8, B, IN, dtype=torch.float64)
        ys_f, s_f = core.unroll(xs, s0)
        ys_l, s_l = step_loop(core, xs, s0)
        torch.testing.assert_close(ys_f, ys_l, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(s_f.memory, s_l.memory, atol=1e-12, rtol=1e-10)
        assert torch.equal(s_f.pointer, s_l.pointer) and torch.equal(s_f.count, s_l.count)


@pytest.mark.parametrize("fused", [False, True])
def test_empty_slots_are_never_read(fused):
    """nan / inf / 1e30 in the empty slots of a state change nothing: same outputs, same (canonical) next state."""
    N = 5
    core = small(num_slots=N)
    _, s = core.unroll(torch.randn(2, B, IN), core.initial_state(B))  # count 2, pointer 2: slots 2, 3, 4 empty
    s = MemNetState(s.memory, s.pointer, torch.tensor([2.0, 0.0, 2.0]))  # row 1: an empty memory, stale content
    dirty = s.memory.clone()
    dirty[:, 2:] = float("nan")
    dirty[0, 3] = float("inf")
    dirty[2, 4] = 1e30
    dirty[1] = float("-inf")
    clean = s.memory.clone()
    clean[:, 2:] = 0.0
    clean[1] = 0.0
    xs = torch.randn(3, B, IN)
    run = core.unroll if fused else (lambda *a: step_loop(core, *a))
    ys_clean, s_clean = run(xs, MemNetState(clean, s.pointer, s.count))
    ys_dirty, s_dirty = run(xs, MemNetState(dirty, s.pointer, s.count))
    assert torch.equal(ys_clean, ys_dirty)
    assert all(torch.equal(a, b) for a, b in zip(s_clean, s_dirty))
    assert torch.isfinite(s_dirty.memory).all()


def test_per_row_reset_leaves_other_rows_bit_identical_in_the_fused_unroll():
    core = small()
    _, s0 = core.unroll(torch.randn(6, B, IN), core.initial_state(B))
    xs = torch.randn(7, B, IN)
    resets = torch.zeros(7, B, dtype=torch.bool)
    resets[4, 1] = True
    ys_r, _ = core.unroll(xs, s0, resets)
    ys_n, _ = core.unroll(xs, s0)
    assert torch.equal(ys_r[:, [0, 2]], ys_n[:, [0, 2]]) and torch.equal(ys_r[:4, 1], ys_n[:4, 1])
    ys_fresh, _ = core.unroll(xs[4:, 1:2], core.initial_state(1))
    torch.testing.assert_close(ys_r[4:, 1:2], ys_fresh, atol=1e-6, rtol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_no_host_sync_and_fused_equals_step_loop():
    """On the device: a rollout step and the fused unroll with resets never sync with the host, and agree."""
    core = small(num_slots=4).cuda()
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
    torch.testing.assert_close(s_f.memory, s_l.memory, atol=1e-5, rtol=1e-5)
    assert torch.equal(s_f.pointer, s_l.pointer) and torch.equal(s_f.count, s_l.count)
