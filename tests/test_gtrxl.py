"""Known-answer tests of the Gated Transformer-XL core (memory_cores/gtrxl.py).

The contract tests (tests/test_core_contract.py) run on ``gtrxl`` too; these check what is particular to it: the
memory window slides, empty slots are never read, resets are per row, the gates start near the identity, the
window spans exactly ``M`` steps per layer, and the fused unroll is the step loop (float64, values and
gradients, resets inside the sequence, several chunks).
"""

from __future__ import annotations

import pytest
import torch

from memory_cores import make_core
from memory_cores.gtrxl import GTrXLCore, GTrXLState, _band, _unband

torch.set_num_threads(1)

IN, B = 5, 3


def small(seed: int = 0, dtype=torch.float32, **kw) -> GTrXLCore:
    torch.manual_seed(seed)
    args = dict(hidden_size=8, num_layers=2, num_heads=2, memory_length=3)
    args.update(kw)
    core = GTrXLCore(IN, **args).to(dtype)
    with torch.no_grad():  # move u, v and the gates off their init so every term matters
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
    core = make_core("gtrxl", IN, hidden_size=16, num_layers=1, num_heads=4, memory_length=7, mlp_size=24,
                     gate_bias=1.5)
    assert core.output_size == 16
    s = core.initial_state(B)
    assert s.memory.shape == (B, 1, 7, 16) and s.count.shape == (B,)
    assert torch.equal(s.memory, torch.zeros_like(s.memory)) and torch.equal(s.count, torch.zeros(B))
    with pytest.raises(ValueError, match="num_heads"):
        GTrXLCore(IN, hidden_size=10, num_heads=4)
    with pytest.raises(ValueError, match="memory_length"):
        GTrXLCore(IN, memory_length=0)
    with pytest.raises(ValueError, match="gate_bias"):
        GTrXLCore(IN, gate_bias=float("nan"))


def test_relative_position_table_row_k_is_distance_M_minus_k():
    """Window slot k (k = M: the current step) is scored with R_{M - k}, Transformer-XL's sinusoid of the distance."""
    M, D = 5, 8
    core = GTrXLCore(IN, hidden_size=D, num_heads=2, memory_length=M)
    w = 1.0 / 10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    for k in range(M + 1):
        d = float(M - k)
        expected = torch.cat([torch.sin(d * w), torch.cos(d * w)]).float()
        torch.testing.assert_close(core.pos_table[k], expected)
    assert torch.equal(core.pos_table[M], torch.tensor([0.0] * (D // 2) + [1.0] * (D // 2)))  # R_0


def test_band_and_unband_are_the_relative_shift():
    T, M = 4, 3
    full = torch.randn(2, T, M + T)
    band = _band(full, M + 1)
    for t in range(T):
        for k in range(M + 1):
            assert band[:, t, k].equal(full[:, t, t + k])
    back = _unband(band, M + T)
    expected = torch.zeros_like(full)
    for t in range(T):
        expected[:, t, t : t + M + 1] = full[:, t, t : t + M + 1]
    assert back.equal(expected)


@pytest.mark.parametrize("fused", [False, True])
def test_memory_slides_and_holds_the_last_layer_inputs(fused):
    """After k steps layer 0's window holds the last min(k, M) embedded inputs (oldest dropped, empty slots zero);
    layer 1's holds the last outputs of layer 0 (the outputs of a one-layer core with the same weights)."""
    M, T = 3, 6
    core = small(memory_length=M)
    one = GTrXLCore(IN, hidden_size=8, num_layers=1, num_heads=2, memory_length=M).eval()
    one.embed.load_state_dict(core.embed.state_dict())
    one.layers[0].load_state_dict(core.layers[0].state_dict())
    xs = torch.randn(T, B, IN)
    with torch.no_grad():
        e0 = core.embed(xs)  # E^(0): [T, B, D]
        e1, _ = one.unroll(xs, one.initial_state(B))  # E^(1)
        for k in range(1, T + 1):
            if fused:
                _, s = core.unroll(xs[:k], core.initial_state(B))
            else:
                _, s = step_loop(core, xs[:k], core.initial_state(B))
            n = min(k, M)
            assert torch.equal(s.count, torch.full((B,), float(n)))
            assert torch.equal(s.memory[:, :, : M - n], torch.zeros(B, 2, M - n, 8))
            torch.testing.assert_close(s.memory[:, 0, M - n :], e0[k - n : k].transpose(0, 1), atol=1e-6, rtol=0)
            torch.testing.assert_close(s.memory[:, 1, M - n :], e1[k - n : k].transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_fused_unroll_equals_step_loop_float64_values_and_gradients():
    """Resets inside the sequence (at t = 0, in both chunks (T > max(M, 32)), in the last M steps so the final
    memory holds empty slots), an incoming memory that needs gradients (the core detaches nothing: both paths pass
    the same gradient into the incoming state)."""
    M, T = 5, 70
    core = small(memory_length=M, dtype=torch.float64)
    _, s0 = core.unroll(torch.randn(4, B, IN, dtype=torch.float64), core.initial_state(B))
    s0 = GTrXLState(s0.memory.detach().requires_grad_(True), s0.count)
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
    assert torch.equal(s_f.count, s_l.count)
    for a, b in zip(g_f, g_l):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)
    assert g_f[0].abs().sum() > 0  # the incoming memory gets gradient (row 2 keeps it until t = 33)


@pytest.mark.parametrize("fused", [False, True])
def test_empty_slots_are_never_read(fused):
    """nan / inf / 1e30 in the empty slots of a state change nothing: same outputs, same (canonical) next state."""
    M = 4
    core = small(memory_length=M)
    _, s = core.unroll(torch.randn(2, B, IN), core.initial_state(B))  # count = 2: slots 0, 1 empty
    s = GTrXLState(s.memory, torch.tensor([2.0, 0.0, 2.0]))  # row 1: an empty memory with stale content
    dirty = s.memory.clone()
    dirty[:, :, :2] = float("nan")
    dirty[0, 0, 0] = float("inf")
    dirty[2, 1, 1] = 1e30
    dirty[1] = float("-inf")
    xs = torch.randn(3, B, IN)
    run = core.unroll if fused else (lambda *a: step_loop(core, *a))
    clean = GTrXLState(torch.where(torch.isfinite(dirty) & (dirty.abs() < 1e29), dirty, 0.0), s.count)
    ys_clean, s_clean = run(xs, clean)
    ys_dirty, s_dirty = run(xs, GTrXLState(dirty, s.count))
    assert torch.isfinite(ys_dirty).all() and torch.isfinite(s_dirty.memory).all()
    assert torch.equal(ys_dirty, ys_clean)
    assert torch.equal(s_dirty.memory, s_clean.memory) and torch.equal(s_dirty.count, s_clean.count)


@pytest.mark.parametrize("fused", [False, True])
def test_reset_row_is_a_fresh_start_other_rows_bit_identical(fused):
    core = small(memory_length=3)
    T = 7
    xs = torch.randn(T, B, IN)
    _, s0 = core.unroll(torch.randn(5, B, IN), core.initial_state(B))
    run = core.unroll if fused else (lambda *a: step_loop(core, *a))
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[4, 1] = True
    ys_r, s_r = run(xs, s0, resets)
    ys_n, s_n = run(xs, s0, torch.zeros(T, B, dtype=torch.bool))
    for b in (0, 2):  # untouched rows: bit-identical
        assert torch.equal(ys_r[:, b], ys_n[:, b])
        assert torch.equal(s_r.memory[b], s_n.memory[b]) and torch.equal(s_r.count[b], s_n.count[b])
    assert torch.equal(ys_r[:4, 1], ys_n[:4, 1])
    ys_f, s_f = run(xs[4:, 1:2], core.initial_state(1))  # the reset row = a fresh start from t = 4
    torch.testing.assert_close(ys_r[4:, 1:2], ys_f, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s_r.memory[1:2], s_f.memory, atol=1e-6, rtol=1e-6)
    assert s_r.count[1] == 3 and s_f.count[0] == 3


@pytest.mark.parametrize("num_layers", [1, 2])
def test_window_spans_exactly_M_steps_per_layer(num_layers):
    """Each layer reads its last M inputs and the current one, so the output at t depends on x_{t - L M} and not
    on x_{t - L M - 1} (L layers stack the windows)."""
    M, T = 3, 10
    core = small(memory_length=M, num_layers=num_layers, dtype=torch.float64)
    xs = torch.randn(T, B, IN, dtype=torch.float64, requires_grad=True)
    ys, _ = core.unroll(xs, core.initial_state(B))
    (g,) = torch.autograd.grad(ys[-1].sum(), xs)
    reach = num_layers * M
    assert g[T - 1 - reach].abs().sum() > 0
    assert torch.equal(g[: T - 1 - reach], torch.zeros_like(g[: T - 1 - reach]))


def test_blocks_start_near_the_identity():
    """Default init (no perturbation): z = sigma(. - b_g) is about sigma(-2) = 0.12, each block changes its input by
    well under half its norm (about 1 with b_g = 0), and as b_g grows every block becomes the identity."""
    torch.manual_seed(0)
    xs = torch.randn(10, 16, 8)

    def block_changes(gate_bias):
        torch.manual_seed(1)
        core = GTrXLCore(8, hidden_size=32, num_layers=2, num_heads=4, memory_length=8, gate_bias=gate_bias)
        with torch.no_grad():
            ys, _ = core.unroll(xs, core.initial_state(16))
            e0 = core.embed(xs)
            one = GTrXLCore(8, hidden_size=32, num_layers=1, num_heads=4, memory_length=8, gate_bias=gate_bias)
            one.load_state_dict({k: v for k, v in core.state_dict().items() if not k.startswith("layers.1")})
            e1, _ = one.unroll(xs, one.initial_state(16))
            _, z, _ = core.layers[0].gate_attn.gates(e0, torch.relu(torch.randn_like(e0)))
        rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
        return rel(e1, e0), rel(ys, e1), z.mean().item()

    c0 = block_changes(0.0)
    c2 = block_changes(2.0)
    c20 = block_changes(20.0)
    assert abs(c2[2] - torch.sigmoid(torch.tensor(-2.0)).item()) < 0.05
    assert c2[0] < 0.4 and c2[1] < 0.4
    assert c2[0] < 0.5 * c0[0] and c2[1] < 0.5 * c0[1]
    assert c20[0] < 1e-7 and c20[1] < 1e-7


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_no_host_sync_and_fused_equals_step_loop():
    """On the device: a rollout step and the fused unroll with resets never sync with the host, and agree."""
    core = small(memory_length=4).cuda()
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
    assert torch.equal(s_f.count, s_l.count)
