"""The Associative LSTM's Triton cell (``AssociativeLSTMCore(kernel="triton")``, :mod:`memory_cores.alstm_triton`)
against the plain cell.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here before the kernel
module is first imported); with CUDA they run compiled. Every comparison is in float64 over unrolls with resets inside
the sequence: outputs, final state and the gradients of every parameter, of the inputs and of the initial state, in
configurations that cover padding (K and N_copies not powers of two), one copy, many copies, and pre-activations large
enough that ``bound`` projects most units onto the unit circle (where its gradient changes form).
"""

from __future__ import annotations

import pytest
import torch

import triton_helpers  # noqa: E402,F401  (before the kernel modules: TRITON_INTERPRET=1 without CUDA)

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from memory_cores.alstm import AssociativeLSTMCore, complex_conj  # noqa: E402

torch.set_num_threads(1)
DEVICE = triton_helpers.DEVICE
TOL64 = 1e-11 if DEVICE == "cpu" else 1e-9  # compiled kernels may fuse multiply-adds (other rounding)

CONFIGS = {
    "default": dict(hidden_size=10, num_copies=3),  # K = 5, 3 copies: both padded
    "pow2": dict(hidden_size=8, num_copies=4),
    "one_copy": dict(hidden_size=6, num_copies=1),
    "many_copies": dict(hidden_size=14, num_copies=9, learn_initial_state=True),
}


def pair(seed: int = 0, dtype=torch.float64, weight_scale: float = 0.5, **kwargs):
    """A plain core and a Triton core with the same (perturbed) parameters and permutations."""
    torch.manual_seed(seed)
    plain = AssociativeLSTMCore(5, **kwargs).to(DEVICE, dtype)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(weight_scale * torch.randn_like(p))
    fast = AssociativeLSTMCore(5, kernel="triton", seed_permutations=None, **kwargs).to(DEVICE, dtype)
    fast.load_state_dict(plain.state_dict())  # the permutations are a buffer: the same P_s
    assert torch.equal(fast.permutations, plain.permutations)
    return plain, fast


def run(core, xs, resets, state, loss_on="all"):
    xs = xs.detach().requires_grad_(True)
    state = type(state)(*(s.detach().requires_grad_(True) for s in state))
    ys, final = core.unroll(xs, state, resets)
    weights = torch.linspace(-1.0, 1.0, ys.shape[-1], device=xs.device, dtype=xs.dtype)
    loss = (ys * weights).sum()
    if loss_on == "all":
        loss = loss + (2 * final.c).sin().sum() + final.h.square().sum()
    grads = torch.autograd.grad(loss, [xs, *state, *core.parameters()])
    return ys, final, grads


def assert_same(plain, fast, T=5, B=3, loss_on="all", tol=TOL64):
    dtype = next(plain.parameters()).dtype
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(T, B, 5, generator=g, dtype=dtype).to(DEVICE)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[2, 1] = resets[3, 0] = True  # episode starts inside the sequence
    resets = resets.to(DEVICE)
    init = plain.initial_state(B, DEVICE)
    state = type(init)(*(torch.randn(s.shape, generator=g, dtype=dtype).to(DEVICE) for s in init))
    ys_a, final_a, grads_a = run(plain, xs, resets, state, loss_on)
    ys_b, final_b, grads_b = run(fast, xs, resets, state, loss_on)
    torch.testing.assert_close(ys_b, ys_a, atol=tol, rtol=tol)
    for a, b in zip(final_a, final_b):
        torch.testing.assert_close(b, a, atol=tol, rtol=tol)
    names = ["xs", "h0", "c0"] + [n for n, _ in plain.named_parameters()]
    for name, a, b in zip(names, grads_a, grads_b):
        assert a.abs().max() > 0, name  # a gradient that can tell them apart
        torch.testing.assert_close(b, a, atol=tol, rtol=tol, msg=lambda m, name=name: f"d/d{name}: {m}")


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_triton_cell_equals_plain_float64(config):
    assert_same(*pair(**CONFIGS[config]))


def test_triton_cell_equals_plain_where_bound_projects():
    # large weights: most keys, updates and reads lie outside the unit disk, where bound(z) = z / |z|
    plain, fast = pair(weight_scale=3.0, **CONFIGS["default"])
    pre = plain._input_projection(torch.randn(64, 5, dtype=torch.float64, device=DEVICE))
    K = plain.num_units
    keys = pre[:, 3 * K :].unflatten(-1, (3, 2, K))
    assert (keys.square().sum(-2) > 1).float().mean() > 0.5
    assert_same(plain, fast)


def test_unused_outputs_get_no_gradient_and_it_still_matches():
    assert_same(*pair(**CONFIGS["default"]), loss_on="y")  # autograd hands the kernel None for the final c


def test_float32_close_to_plain():
    plain, fast = pair(dtype=torch.float32, **CONFIGS["pow2"])
    assert_same(plain, fast, tol=2e-5)


def test_bfloat16_state_runs_the_kernel_in_float32():
    plain, fast = pair(dtype=torch.float32, **CONFIGS["default"])
    xs = torch.randn(3, 2, 5, device=DEVICE)
    outs = []
    for core in (plain, fast):
        init = core.initial_state(2, DEVICE)
        state = type(init)(*(s.to(torch.bfloat16) for s in init))
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            ys, final = core.unroll(xs, state)
        assert ys.dtype == final.c.dtype == torch.bfloat16
        outs.append(ys.float())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-2, rtol=0)


def test_key_written_is_read_back_with_its_conjugate_through_the_kernel():
    # the holographic retrieval of the paper through the kernel: from an empty cell, write u under a unit-modulus key
    # r (g_i ~ 1), then read with r_o = conj(r) (g_o ~ 1): every copy s returns (P_s conj r)(*)(P_s r)(*)u = u
    from memory_cores.alstm_triton import alstm_cell

    core = AssociativeLSTMCore(3, hidden_size=12, num_copies=4).to(DEVICE, torch.float64)
    B, K = 2, 6
    phase = torch.rand(B, K, dtype=torch.float64, device=DEVICE) * 6.28
    r = torch.cat([phase.cos(), phase.sin()], dim=-1)  # |r_k| = 1
    u = 0.7 * torch.rand(B, 2 * K, dtype=torch.float64, device=DEVICE) - 0.35  # inside the unit disk
    pre = torch.cat([torch.full((B, K), -30.0), torch.full((B, 2 * K), 30.0)], dim=-1).to(DEVICE, torch.float64)
    pre = torch.cat([pre, r, complex_conj(r), u], dim=-1)  # g_f ~ 0, g_i = g_o ~ 1
    h, c = alstm_cell(pre, torch.zeros(B, 4, 2 * K, dtype=torch.float64, device=DEVICE), core.permutations)
    torch.testing.assert_close(h, u, atol=1e-10, rtol=0)
    # a wrong read key (r itself, not its conjugate) does not read u back
    pre_wrong = torch.cat([pre[:, : 5 * K], r, u], dim=-1)
    h_wrong, _ = alstm_cell(pre_wrong, torch.zeros_like(c), core.permutations)
    assert (h_wrong - u).abs().max() > 0.1


def test_auto_takes_the_kernel_on_cuda_and_the_plain_cell_elsewhere():
    torch.manual_seed(3)
    auto = AssociativeLSTMCore(5, hidden_size=8, num_copies=2, kernel="auto").to(DEVICE)
    expected = AssociativeLSTMCore(5, hidden_size=8, num_copies=2, kernel="triton" if DEVICE == "cuda" else "plain")
    expected = expected.to(DEVICE)
    expected.load_state_dict(auto.state_dict())
    xs = torch.randn(4, 3, 5, device=DEVICE)
    ys_auto, s_auto = auto.unroll(xs, auto.initial_state(3, DEVICE))
    ys_exp, s_exp = expected.unroll(xs, expected.initial_state(3, DEVICE))
    assert torch.equal(ys_auto, ys_exp) and torch.equal(s_auto.c, s_exp.c)  # the same code ran, bit for bit


test_contract_with_the_triton_kernel = triton_helpers.contract_test("alstm", AssociativeLSTMCore)


def test_bad_kernel_options_raise_one_line_errors(monkeypatch):
    from memory_cores.alstm_triton import alstm_cell

    with pytest.raises(ValueError, match="kernel must be one of"):
        AssociativeLSTMCore(5, kernel="cuda")
    core = AssociativeLSTMCore(5, hidden_size=8, num_copies=2, kernel="triton")
    assert "kernel='triton'" in repr(core)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="Triton kernels run on CUDA tensors"):
        core.step(torch.randn(2, 5), core.initial_state(2, "cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    c = torch.zeros(2, 2, 8, device=DEVICE)
    with pytest.raises(TypeError, match="float32 or float64"):
        alstm_cell(torch.zeros(2, 36, dtype=torch.float16, device=DEVICE), c.half(), core.permutations)
    with pytest.raises(ValueError, match="expected pre"):
        alstm_cell(torch.zeros(2, 35, device=DEVICE), c, core.permutations)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_cell_in_a_cuda_graph_equals_eager():
    # the kernels launch inside a captured unroll (forward and backward) like any other op
    _, fast = pair(dtype=torch.float32, **CONFIGS["default"])
    xs = torch.randn(6, 32, 5, device="cuda")
    triton_helpers.assert_graph_replay_equals_eager(triton_helpers.unroll_fwd_bwd(fast, xs))
