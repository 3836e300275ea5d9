"""The NTM's Triton memory access (``NTMCore(kernel="triton")``, :mod:`memory_cores.ntm_triton`) against the plain step.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here before the kernel
module is first imported), which executes the same kernel code on CPU tensors; with CUDA they run compiled. Every
comparison is in float64 (exact up to rounding) over several steps with resets inside the sequence, values and the
gradients of every parameter and of the inputs, in configurations that cover padding (N and W not powers of two), no
shift and wide shifts, one and several read heads, both controllers, an active clamp and no clamp.
"""

from __future__ import annotations

import pytest
import torch

import triton_helpers  # noqa: E402,F401  (before the kernel modules: TRITON_INTERPRET=1 without CUDA)

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from memory_cores.base import tree_leaves  # noqa: E402
from memory_cores.ntm import NTMCore  # noqa: E402

torch.set_num_threads(1)
DEVICE = triton_helpers.DEVICE
# float64 agreement: the interpreter computes in float64 throughout; compiled kernels take float scalars (eps) as
# float32, which moves log(w~ + eps) by ~1e-9 relative at empty slots
TOL64 = 1e-11 if DEVICE == "cpu" else 1e-8

CONFIGS = {
    "default": dict(num_slots=10, slot_size=6, num_read_heads=2, max_shift=1),
    "pow2_one_read": dict(num_slots=8, slot_size=4, num_read_heads=1, max_shift=1),
    "no_shift": dict(num_slots=7, slot_size=5, num_read_heads=1, max_shift=0),
    "wide_shift_3_reads": dict(num_slots=5, slot_size=3, num_read_heads=3, max_shift=2),
    "feedforward_no_clip": dict(num_slots=6, slot_size=5, num_read_heads=2, controller="feedforward", clip_value=None),
    "fixed_memory_init": dict(num_slots=9, slot_size=7, num_read_heads=2, learn_memory_init=False, max_shift=3),
}


def pair(seed: int = 0, dtype=torch.float64, weight_scale: float = 0.3, **kwargs) -> tuple[NTMCore, NTMCore]:
    """A plain core and a Triton core with the same (perturbed) parameters."""
    torch.manual_seed(seed)
    kwargs = {"hidden_size": 12, **kwargs}
    plain = NTMCore(5, **kwargs).to(DEVICE, dtype)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(weight_scale * torch.randn_like(p))
    fast = NTMCore(5, kernel="triton", **kwargs).to(DEVICE, dtype)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def run(core: NTMCore, xs: torch.Tensor, resets: torch.Tensor, loss_on: str = "all"):
    """Unroll with resets, a loss on every output (or on ``y`` only), and the gradients of parameters and ``xs``."""
    xs = xs.detach().requires_grad_(True)
    ys, final = core.unroll(xs, core.initial_state(xs.shape[1], xs.device), resets)
    weights = torch.linspace(-1.0, 1.0, ys.shape[-1], device=xs.device, dtype=xs.dtype)
    loss = (ys * weights).sum()
    if loss_on == "all":
        loss = loss + final.memory.sin().sum() + (3 * final.read_weights).sin().sum() + final.write_weights.square().sum()
        loss = loss + final.reads.cos().sum()
    grads = torch.autograd.grad(loss, [xs, *core.parameters()])
    return ys, final, grads


def assert_same(plain: NTMCore, fast: NTMCore, T: int = 5, B: int = 3, loss_on: str = "all", tol: float = TOL64):
    dtype = next(plain.parameters()).dtype
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(T, B, 5, generator=g, dtype=dtype).to(DEVICE)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[2, 1] = resets[3, 0] = True  # episode starts inside the sequence
    resets = resets.to(DEVICE)
    ys_a, final_a, grads_a = run(plain, xs, resets, loss_on)
    ys_b, final_b, grads_b = run(fast, xs, resets, loss_on)
    torch.testing.assert_close(ys_b, ys_a, atol=tol, rtol=tol)
    for a, b in zip(tree_leaves(final_a), tree_leaves(final_b)):
        torch.testing.assert_close(b, a, atol=tol, rtol=tol)
    names = ["xs"] + [n for n, _ in plain.named_parameters()]
    for name, a, b in zip(names, grads_a, grads_b):
        assert a.abs().max() > 0 or name.endswith("_init.value"), name  # a gradient that can tell them apart
        torch.testing.assert_close(b, a, atol=tol, rtol=tol, msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_triton_access_equals_plain_float64(config):
    assert_same(*pair(**CONFIGS[config]))


@pytest.mark.parametrize("clip", [2.0, None])
def test_triton_access_equals_plain_with_large_projections(clip):
    # large head weights push the projection past +-clip (the clamp's zero gradients must match) or, unclamped, past
    # softplus's threshold of 20 (where torch switches to the identity)
    plain, fast = pair(weight_scale=12.0, num_slots=6, slot_size=4, num_read_heads=1, clip_value=clip)
    h = torch.rand(64, 12, dtype=torch.float64, device=DEVICE) * 2 - 1
    bound = 2.0 if clip else 20.0
    assert (plain.heads(h).abs() > bound).float().mean() > 0.1  # a good share of entries beyond the bound
    assert_same(plain, fast)


def test_unused_outputs_get_no_gradient_and_it_still_matches():
    # a loss on y alone: autograd hands the kernel None for the final state's gradients
    assert_same(*pair(**CONFIGS["default"]), loss_on="y")


def test_float32_close_to_plain():
    plain, fast = pair(dtype=torch.float32, **CONFIGS["default"])
    assert_same(plain, fast, tol=2e-5)


def test_sharp_key_reads_its_slot_through_the_kernel():
    # the kernel's content addressing: a read key equal to one slot with a large beta and no shift reads that slot
    core = NTMCore(3, hidden_size=4, num_slots=6, slot_size=4, num_read_heads=1, max_shift=0, kernel="triton")
    core = core.to(DEVICE, torch.float64)
    B, N, W, H = 2, 6, 4, 2
    memory = torch.randn(B, N, W, dtype=torch.float64, device=DEVICE)
    target = torch.tensor([4, 1], device=DEVICE)
    params = torch.zeros(B, core.heads.out_features, dtype=torch.float64, device=DEVICE)
    params[:, W : 2 * W] = memory[torch.arange(B), target]  # head 1 (the read head)'s key = M(target)
    params[:, H * W + W + 1] = 19.0  # its beta = softplus(19) ~ 19
    params[:, H * W + W + 2 * H + 1] = 19.0  # its gate g ~ 1: content addressing only
    params[:, H * W + W + 2 * H + H : H * W + W + 2 * H + H + W] = -19.0  # erase ~ 0 and add 0: M_t = M_{t-1}
    from memory_cores.ntm_triton import ntm_access

    prev = torch.full((B, 1, N), 1.0 / N, dtype=torch.float64, device=DEVICE)
    mem_out, w_read, _, reads = ntm_access(
        params, memory, prev, prev, clip=20.0, eps=1e-6, num_read_heads=1, num_shifts=1
    )
    torch.testing.assert_close(mem_out, memory, atol=1e-6, rtol=0)
    assert (w_read[:, 0].argmax(-1) == target).all() and (w_read[:, 0].max(-1).values > 0.99).all()
    torch.testing.assert_close(reads[:, 0], memory[torch.arange(B), target], atol=0.05, rtol=0)


def test_auto_takes_the_kernel_on_cuda_and_the_plain_step_elsewhere():
    torch.manual_seed(3)
    kwargs = dict(hidden_size=8, num_slots=6, slot_size=4, num_read_heads=2)
    auto = NTMCore(5, kernel="auto", **kwargs).to(DEVICE)
    expected = NTMCore(5, kernel="triton" if DEVICE == "cuda" else "plain", **kwargs).to(DEVICE)
    expected.load_state_dict(auto.state_dict())
    xs = torch.randn(4, 3, 5, device=DEVICE)
    ys_auto, s_auto = auto.unroll(xs, auto.initial_state(3, DEVICE))
    ys_exp, s_exp = expected.unroll(xs, expected.initial_state(3, DEVICE))
    assert torch.equal(ys_auto, ys_exp)  # the same code ran, bit for bit
    for a, b in zip(tree_leaves(s_auto), tree_leaves(s_exp)):
        assert torch.equal(a, b)
    # several write heads: "auto" keeps the plain step (no error), "triton" refuses
    two_writes = NTMCore(5, kernel="auto", num_write_heads=2, **kwargs).to(DEVICE)
    ys, _ = two_writes.unroll(xs, two_writes.initial_state(3, DEVICE))
    assert torch.isfinite(ys).all()


test_contract_with_the_triton_kernel = triton_helpers.contract_test("ntm", NTMCore)


def test_bad_kernel_options_raise_one_line_errors(monkeypatch):
    with pytest.raises(ValueError, match="kernel must be one of"):
        NTMCore(5, kernel="cuda")
    with pytest.raises(ValueError, match="one write head"):
        NTMCore(5, kernel="triton", num_write_heads=2)
    core = NTMCore(5, hidden_size=8, num_slots=6, slot_size=4, kernel="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="Triton kernels run on CUDA tensors"):
        core.step(torch.randn(2, 5), core.initial_state(2, "cpu"))
    with pytest.raises(TypeError, match="float32 or float64"):
        from memory_cores.ntm_triton import ntm_access

        x = torch.zeros(1, 1, dtype=torch.float16, device=DEVICE)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        ntm_access(x, x, x, x, clip=None, eps=1e-6, num_read_heads=1, num_shifts=1)
    assert "kernel='triton'" in repr(NTMCore(5, kernel="triton"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_step_in_a_cuda_graph_equals_eager():
    # the kernels launch inside a captured unroll (forward and backward) like any other op
    _, fast = pair(dtype=torch.float32, **CONFIGS["default"])
    xs = torch.randn(6, 32, 5, device="cuda")
    triton_helpers.assert_graph_replay_equals_eager(triton_helpers.unroll_fwd_bwd(fast, xs))
