"""The core contract, checked for every core in ``memory_cores.CORES``.

Small sizes so the whole file runs in seconds on a 2-core CPU. Each core may add its own
known-answer tests in ``tests/test_<core>.py``.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import memory_cores
from memory_cores import CORES, make_core, tree_leaves, tree_map

torch.set_num_threads(1)

INPUT = 5
B = 3

# Small but representative sizes per core (keys must be valid constructor keywords).
SMALL = {
    "lstm": dict(hidden_size=16),
    "gru": dict(hidden_size=16),
    "alstm": dict(hidden_size=16, num_copies=3),
    "ntm": dict(hidden_size=16, num_slots=8, slot_size=6, num_read_heads=2, num_write_heads=1),
    "dnc": dict(hidden_size=16, num_slots=8, slot_size=6, num_read_heads=2),
    "rl_access": dict(hidden_size=16, num_slots=8, slot_size=6),
    "gtrxl": dict(hidden_size=16, num_layers=2, num_heads=2, memory_length=6),
    "lru": dict(hidden_size=16, num_layers=2),
    "ffm": dict(hidden_size=16, memory_size=6, context_size=2),
    "grid_lstm": dict(hidden_size=8, num_layers=3),
    "ebmm": dict(hidden_size=8, pattern_size=6, write_steps=2, read_steps=2),
    "memnet": dict(hidden_size=16, num_slots=6, num_hops=2),
    "perceiver_ar": dict(hidden_size=16, context_length=6, num_latents=3, num_layers=1, num_heads=2),
}


def build(name: str, seed: int = 0, **extra) -> memory_cores.Core:
    torch.manual_seed(seed)
    kwargs = dict(SMALL.get(name, {}))
    kwargs.update(extra)
    core = make_core(name, INPUT, **kwargs)
    # Perturb learned initial values so "reset to the initial state" differs from "reset to zeros".
    with torch.no_grad():
        for p in core.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return core


def assert_state_equal(a, b, exact: bool = True, atol: float = 1e-6):
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


names = sorted(CORES)


def eval_mode(core):
    """Cores with stochastic parts (rl_access sampling) must be deterministic in eval mode for these checks."""
    return core.eval()


@pytest.mark.parametrize("name", names)
def test_registry_and_errors(name):
    core = build(name)
    assert isinstance(core, memory_cores.Core)
    assert isinstance(core.output_size, int) and core.output_size > 0
    with pytest.raises(ValueError, match="valid"):
        make_core(name, INPUT, not_an_option=1)


def test_unknown_core_lists_names():
    with pytest.raises(ValueError) as err:
        make_core("tape", INPUT)
    for name in CORES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", names)
def test_initial_state_is_batch_first_namedtuple(name):
    core = build(name)
    state = core.initial_state(B)
    assert isinstance(state, tuple) and hasattr(state, "_fields")
    for leaf in tree_leaves(state):
        assert leaf.shape[0] == B
        assert leaf.is_floating_point()


@pytest.mark.parametrize("name", names)
def test_step_loop_equals_unroll(name):
    core = eval_mode(build(name))
    T = 6
    xs = torch.randn(T, B, INPUT)
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[3, 1] = True
    resets[0, 2] = True
    for r in (None, resets):
        state = core.initial_state(B)
        ys_loop, s = [], state
        for t in range(T):
            y, s = core(xs[t], s, None if r is None else r[t])
            ys_loop.append(y)
        ys_unroll, s_unroll = core.unroll(xs, state, r)
        torch.testing.assert_close(torch.stack(ys_loop), ys_unroll, atol=1e-5, rtol=1e-5)
        assert_state_equal(s, s_unroll, exact=False, atol=1e-5)


@pytest.mark.parametrize("name", names)
def test_reset_equals_fresh_start_and_leaves_other_rows(name):
    core = eval_mode(build(name))
    T = 5
    xs = torch.randn(T, B, INPUT)
    # run some steps so the state is not initial
    _, state = core.unroll(torch.randn(4, B, INPUT), core.initial_state(B))
    reset = torch.tensor([False, True, False])
    y_reset, s_reset = core(xs[0], state, reset)
    # row 1 equals a fresh start
    y_fresh, s_fresh = core(xs[0, 1:2], core.initial_state(1))
    torch.testing.assert_close(y_reset[1:2], y_fresh, atol=1e-6, rtol=1e-6)
    for a, b in zip(tree_leaves(s_reset), tree_leaves(s_fresh)):
        torch.testing.assert_close(a[1:2], b, atol=1e-6, rtol=1e-6)
    # other rows are bit-identical to a step without reset
    y_plain, s_plain = core(xs[0], state, torch.zeros(B, dtype=torch.bool))
    y_none, s_none = core(xs[0], state)
    assert torch.equal(y_plain, y_none)
    for i in (0, 2):
        assert torch.equal(y_reset[i], y_plain[i])
        for a, b in zip(tree_leaves(s_reset), tree_leaves(s_plain)):
            assert torch.equal(a[i], b[i])


@pytest.mark.parametrize("name", names)
def test_reset_uses_learned_initial_state_with_inf_rows(name):
    """A reset row whose old state is inf/nan must come out clean (torch.where, not mask multiply)."""
    core = eval_mode(build(name))
    state = tree_map(lambda t: torch.full_like(t, float("inf")), core.initial_state(B))
    y, s = core(torch.randn(B, INPUT), state, torch.ones(B, dtype=torch.bool))
    assert torch.isfinite(y).all()
    for leaf in tree_leaves(s):
        assert torch.isfinite(leaf).all()


@pytest.mark.parametrize("name", names)
def test_gradients_reach_every_parameter_through_time(name):
    core = build(name)
    core.train()
    T = 6
    xs = torch.randn(T, B, INPUT, requires_grad=True)
    ys, _ = core.unroll(xs, core.initial_state(B))
    ys[-1].pow(2).sum().backward()
    for pname, p in core.named_parameters():
        assert p.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {pname}"
        assert p.grad.abs().sum() > 0, f"zero gradient in {pname}"
    # the last output depends on the first input: gradient flows through the state across steps
    assert xs.grad[0].abs().sum() > 0


@pytest.mark.parametrize("name", names)
def test_pack_unpack_round_trip(name):
    core = eval_mode(build(name))
    _, state = core.unroll(torch.randn(3, B, INPUT), core.initial_state(B))
    packed = core.pack_state(state)
    assert packed.shape == (B, core.state_size)
    back = core.unpack_state(packed)
    assert type(back) is type(state)
    assert_state_equal(back, state)
    with pytest.raises(ValueError):
        core.unpack_state(packed[:, :-1])


@pytest.mark.parametrize("name", names)
def test_save_load_gives_identical_outputs(name):
    core = eval_mode(build(name, seed=1))
    other = eval_mode(build(name, seed=2))
    buf = io.BytesIO()
    torch.save(core.state_dict(), buf)
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    xs = torch.randn(4, B, INPUT)
    ys_a, _ = core.unroll(xs, core.initial_state(B))
    ys_b, _ = other.unroll(xs, other.initial_state(B))
    assert torch.equal(ys_a, ys_b)
    clone = copy.deepcopy(core)
    assert torch.equal(clone.unroll(xs, clone.initial_state(B))[0], ys_a)


@pytest.mark.parametrize("name", names)
def test_numerically_safe(name):
    core = build(name)
    core.train()
    # zero / constant memory at the start is covered by the initial state; extreme inputs:
    xs = torch.tensor([1e4, -1e4]).repeat(INPUT * 3)[: INPUT * 3].reshape(3, 1, INPUT).expand(3, B, INPUT)
    xs = xs * torch.tensor([1.0, -1.0, 0.0]).reshape(1, B, 1)
    xs = xs.clone().requires_grad_(True)
    ys, state = core.unroll(xs, core.initial_state(B))
    assert torch.isfinite(ys).all()
    ys.sum().backward()
    for pname, p in core.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), pname
    assert torch.isfinite(xs.grad).all()


@pytest.mark.parametrize("name", names)
def test_long_unroll_stays_finite(name):
    core = build(name)
    core.train()
    T = 1000
    xs = torch.randn(T, 2, INPUT)
    ys, state = core.unroll(xs, core.initial_state(2))
    assert torch.isfinite(ys).all()
    ys[-1].sum().backward()
    for pname, p in core.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", names)
def test_state_on_input_device_and_dtype(name):
    core = build(name).double()
    state = core.initial_state(B)
    for leaf in tree_leaves(state):
        assert leaf.dtype == torch.float64
    y, s = core(torch.randn(B, INPUT, dtype=torch.float64), state)
    assert y.dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", names)
def test_everything_on_cuda(name):
    core = build(name).cuda()
    state = core.initial_state(B)
    for leaf in tree_leaves(state):
        assert leaf.is_cuda
    xs = torch.randn(4, B, INPUT, device="cuda")
    resets = torch.zeros(4, B, dtype=torch.bool, device="cuda")
    resets[2, 0] = True
    ys, s = core.unroll(xs, state, resets)
    assert ys.is_cuda and all(leaf.is_cuda for leaf in tree_leaves(s))
