"""The DNC's Triton access kernels (``DNCCore(kernel="triton")``, :mod:`memory_cores.dnc_triton`) against the plain path.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here before the kernel module is
first imported); with CUDA they run compiled. The reference is always the fused torch path on the CPU in float64 (its
allocation sorts with torch.sort, whose order for equal usages on a GPU is not specified; the kernels break ties by
slot index, as the CPU sort does). Compared: single steps (``forward``) and the fused LSTM unroll, with resets inside
the sequence, every output, the final state and the gradients of every parameter and of the inputs.
"""

from __future__ import annotations

import pytest
import torch

import triton_helpers  # noqa: E402,F401  (before the kernel modules: TRITON_INTERPRET=1 without CUDA)

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from memory_cores.addressing import EPS  # noqa: E402
from memory_cores.base import tree_leaves  # noqa: E402
from memory_cores.dnc import DNCAccessState, DNCCore  # noqa: E402

torch.set_num_threads(1)
DEVICE = triton_helpers.DEVICE
TOL64 = 1e-11 if DEVICE == "cpu" else 1e-8  # compiled kernels take eps as a float32 scalar

CONFIGS = {
    "small": dict(num_slots=6, slot_size=5, num_read_heads=2),
    "erase_freed": dict(num_slots=7, slot_size=4, num_read_heads=2, erase_freed=True),
    "pow2_one_read": dict(num_slots=8, slot_size=8, num_read_heads=1),
    "four_reads_learned_init": dict(num_slots=12, slot_size=3, num_read_heads=4, learn_initial_state=True),
    "feedforward": dict(num_slots=5, slot_size=6, num_read_heads=2, controller="feedforward"),
    "output_projection": dict(num_slots=9, slot_size=4, num_read_heads=3, output_size=7),
}


def pair(seed: int = 0, dtype=torch.float64, **kwargs) -> tuple[DNCCore, DNCCore]:
    """The plain core on the CPU and the Triton core on DEVICE, with the same (perturbed) parameters."""
    torch.manual_seed(seed)
    kwargs = {"hidden_size": 12, **kwargs}
    plain = DNCCore(5, **kwargs).to(dtype)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fast = DNCCore(5, kernel="triton", **kwargs).to(DEVICE, dtype)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def run(core: DNCCore, xs: torch.Tensor, resets: torch.Tensor, step_loop: bool):
    dev = next(core.parameters()).device
    xs = xs.to(dev).detach().requires_grad_(True)
    resets = resets.to(dev)
    state = core.initial_state(xs.shape[1], dev)
    if step_loop:
        ys = []
        for t in range(xs.shape[0]):
            y, state = core(xs[t], state, resets[t])
            ys.append(y)
        ys = torch.stack(ys)
    else:
        ys, state = core.unroll(xs, state, resets)
    a = state.access
    weights = torch.linspace(-1.0, 1.0, ys.shape[-1], device=dev, dtype=xs.dtype)
    loss = (ys * weights).sum() + a.memory.sin().sum() + (3 * a.read_weights).sin().sum() + a.link.square().sum()
    loss = loss + a.usage.cos().sum() + a.precedence.sin().sum() + a.read_vectors.cos().sum()
    grads = torch.autograd.grad(loss, [xs, *core.parameters()])
    return [t.cpu() for t in (ys, *tree_leaves(state), *grads)]


def assert_same(plain: DNCCore, fast: DNCCore, step_loop: bool, T: int = 5, B: int = 3, tol: float = TOL64):
    dtype = next(plain.parameters()).dtype
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(T, B, 5, generator=g, dtype=dtype)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[T // 2, 1] = resets[T - 1, 0] = True
    expected = run(plain, xs, resets, step_loop)
    got = run(fast, xs, resets, step_loop)
    n_state = len(tree_leaves(plain.initial_state(1)))
    names = ["ys"] + [f"state[{i}]" for i in range(n_state)] + ["d/dxs"] + [f"d/d{n}" for n, _ in plain.named_parameters()]
    for name, a, b in zip(names, expected, got):
        torch.testing.assert_close(b, a, atol=tol, rtol=tol, msg=lambda m, name=name: f"{name}: {m}")
    assert all(g.abs().max() > 0 for g in expected[1 + n_state :])  # gradients that can tell the paths apart


@pytest.mark.parametrize("step_loop", [True, False], ids=["steps", "fused_unroll"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_triton_access_equals_plain_float64(config, step_loop):
    if not step_loop and CONFIGS[config].get("controller") == "feedforward":
        pytest.skip("the fused unroll is the LSTM controller's (a feed-forward DNC unrolls by steps)")
    assert_same(*pair(**CONFIGS[config]), step_loop=step_loop)


def test_float32_close_to_plain():
    assert_same(*pair(dtype=torch.float32, **CONFIGS["small"]), step_loop=False, tol=3e-5)


def test_the_largest_memory_the_kernels_take():
    plain, fast = pair(num_slots=128, slot_size=4, num_read_heads=1, hidden_size=8)
    assert_same(plain, fast, step_loop=False, T=3, B=2)


def test_allocation_follows_the_free_list_with_ties_by_slot_index():
    # usage [0.5, 0, 0.5, 0, 0.25]: the free list is slots 1, 3 (ties: lower index first), 4, 0, 2, so with the
    # allocation and write gates open and no read heads freeing anything the write goes to slot 1, a (1 - eps) eps
    # share to slot 3, and so on: a(phi_j) = (1 - s_j) prod_{i<j} s_i with s = eps + (1 - eps) u
    from memory_cores.dnc_triton import access_forward

    B, N, W, R = 1, 5, 3, 1
    f64 = dict(dtype=torch.float64, device=DEVICE)
    usage = torch.tensor([[0.5, 0.0, 0.5, 0.0, 0.25]], **f64)
    state = DNCAccessState(
        memory=torch.randn(B, N, W, **f64), usage=usage, link=torch.zeros(B, N, N, **f64),
        precedence=torch.zeros(B, N, **f64), read_weights=torch.zeros(B, R, N, **f64),
        write_weights=torch.zeros(B, 1, N, **f64), read_vectors=torch.zeros(B, R, W, **f64),
    )
    raw = torch.zeros(B, R * W + 3 * W + 5 * R + 3, **f64)
    o_sig = R * W + 2 * W + R + 1
    raw[:, o_sig + W + R : o_sig + W + R + 2] = 40.0  # allocation gate and write gate ~1
    (mem1, u1, link1, p1, wr1, ww1, reads), _ = access_forward(raw, *state[:6], False, R, W)
    s = EPS + (1 - EPS) * usage[0]
    order = [1, 3, 4, 0, 2]
    expected = torch.zeros(N, **f64)
    prod = 1.0
    for j in order:
        expected[j] = (1 - s[j]) * prod
        prod = prod * s[j]
    torch.testing.assert_close(ww1[0, 0], expected, atol=1e-12, rtol=1e-9)
    w = ww1[0, 0]
    assert w.argmax() == 1 and w[1] > 0.999  # the first free slot by index takes the write
    assert 0.5e-6 < w[3] < 2e-6 and w[4] < 1e-11  # its tie (slot 3) comes next, then slot 4 (usage 0.25)
    torch.testing.assert_close(u1, usage)  # no free gate, no previous write: usage unchanged


def test_auto_takes_the_kernel_on_cuda_and_the_plain_path_elsewhere():
    torch.manual_seed(3)
    kwargs = dict(hidden_size=8, num_slots=6, slot_size=4, num_read_heads=2)
    auto = DNCCore(5, kernel="auto", **kwargs).to(DEVICE)
    expected = DNCCore(5, kernel="triton" if DEVICE == "cuda" else "plain", **kwargs).to(DEVICE)
    expected.load_state_dict(auto.state_dict())
    xs = torch.randn(4, 3, 5, device=DEVICE)
    for core_a, core_b in ((auto, expected),):
        ys_a, s_a = core_a.unroll(xs, core_a.initial_state(3, DEVICE))
        ys_b, s_b = core_b.unroll(xs, core_b.initial_state(3, DEVICE))
        assert torch.equal(ys_a, ys_b)
        assert all(torch.equal(a, b) for a, b in zip(tree_leaves(s_a), tree_leaves(s_b)))
    # where the kernels do not apply, "auto" keeps the plain path (no error) and "triton" refuses
    masked = DNCCore(5, kernel="auto", masked_content=True, **kwargs).to(DEVICE)
    assert torch.isfinite(masked.unroll(xs, masked.initial_state(3, DEVICE))[0]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel="cuda"), "kernel must be one of"),
        (dict(kernel="triton", masked_content=True), "no masked_content"),
        (dict(kernel="triton", link_sharpness=True), "no masked_content or link_sharpness"),
        (dict(kernel="triton", fused=False), "needs fused=True"),
        (dict(kernel="triton", num_slots=256), "num_slots <= 128"),
        (dict(kernel="triton", compile=True), "compile=False"),
    ],
)
def test_bad_kernel_options_raise_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DNCCore(5, **kwargs)


def test_kernel_on_the_cpu_without_the_interpreter_says_why(monkeypatch):
    core = DNCCore(5, hidden_size=8, num_slots=6, slot_size=4, num_read_heads=1, kernel="triton")
    assert "kernel='triton'" in repr(core)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="Triton kernels run on CUDA tensors"):
        core.unroll(torch.randn(2, 2, 5), core.initial_state(2, "cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_unroll_in_a_cuda_graph_equals_eager():
    _, fast = pair(dtype=torch.float32, **CONFIGS["small"])
    xs = torch.randn(6, 32, 5, device="cuda")
    resets = torch.zeros(6, 32, dtype=torch.bool, device="cuda")
    resets[3, ::4] = True
    triton_helpers.assert_graph_replay_equals_eager(triton_helpers.unroll_fwd_bwd(fast, xs, resets))
