"""Known-answer tests of the NTM core (``memory_cores.ntm``), beyond the shared contract.

The contract checks of ``tests/test_core_contract.py`` are re-run here on NTM variants the registry entry does not
cover (feed-forward controller, several write heads with a wider shift, no shift, a fixed memory init).
"""

from __future__ import annotations

import pytest
import torch

import memory_cores
import test_core_contract as contract
from memory_cores.addressing import shift_offsets
from memory_cores.base import tree_leaves
from memory_cores.ntm import LSTMControllerState, NTMCore, NTMState

torch.set_num_threads(1)

SMALL = dict(hidden_size=16, num_slots=8, slot_size=6, num_read_heads=2, num_write_heads=1)


def make(seed: int = 0, **kwargs) -> NTMCore:
    torch.manual_seed(seed)
    return NTMCore(5, **{**SMALL, **kwargs})


# ---------------------------------------------------------------------------------------------- contract variants
VARIANTS = {
    "ntm_feedforward": dict(controller="feedforward"),
    "ntm_2write_k2": dict(num_write_heads=2, max_shift=2, num_slots=9),
    "ntm_no_shift": dict(max_shift=0, num_read_heads=1),
    "ntm_fixed_memory_init": dict(learn_memory_init=False, clip_value=None),
}
CONTRACT_CHECKS = [
    contract.test_initial_state_is_batch_first_namedtuple,
    contract.test_step_loop_equals_unroll,
    contract.test_reset_equals_fresh_start_and_leaves_other_rows,
    contract.test_reset_uses_learned_initial_state_with_inf_rows,
    contract.test_gradients_reach_every_parameter_through_time,
    contract.test_pack_unpack_round_trip,
    contract.test_save_load_gives_identical_outputs,
    contract.test_numerically_safe,
    contract.test_state_on_input_device_and_dtype,
]


@pytest.mark.parametrize("check", CONTRACT_CHECKS, ids=lambda f: f.__name__.removeprefix("test_"))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_contract_on_variants(monkeypatch, variant, check):
    monkeypatch.setitem(memory_cores.CORES, variant, NTMCore)
    monkeypatch.setitem(contract.SMALL, variant, {**contract.SMALL["ntm"], **VARIANTS[variant]})
    check(variant)


def test_long_unroll_feedforward_stays_finite(monkeypatch):
    monkeypatch.setitem(memory_cores.CORES, "ntm_feedforward", NTMCore)
    monkeypatch.setitem(contract.SMALL, "ntm_feedforward", {**contract.SMALL["ntm"], "controller": "feedforward"})
    contract.test_long_unroll_stays_finite("ntm_feedforward")


# ---------------------------------------------------------------------------------------------- construction
def test_defaults_follow_the_paper_and_output_size():
    core = NTMCore(8)
    assert (core.hidden_size, core.num_slots, core.slot_size) == (100, 128, 20)
    assert (core.num_read_heads, core.num_write_heads, core.max_shift) == (1, 1, 1)
    assert core.controller_type == "lstm"
    core = make(num_read_heads=3)
    assert core.output_size == 16 + 3 * 6


def test_one_fused_head_projection():
    """Every head parameter of every head comes from ONE Linear on the controller output."""
    core = make(num_write_heads=2, max_shift=2)
    H, Hw, W, S = 4, 2, 6, 5
    # keys H W, adds Hw W, beta and gamma 2 H, gates H, erases Hw W, shifts H S
    assert core.heads.out_features == H * W + Hw * W + 2 * H + H + Hw * W + H * S
    linears = [m for m in core.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2  # the controller and the heads


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(controller="gru"), "controller"),
        (dict(max_shift=4, num_slots=8), "max_shift"),
        (dict(max_shift=-1), "max_shift"),
        (dict(num_slots=0), "num_slots"),
        (dict(slot_size=0), "slot_size"),
        (dict(num_read_heads=0), "num_read_heads"),
        (dict(num_write_heads=0), "num_write_heads"),
        (dict(hidden_size=2.5), "hidden_size"),
        (dict(clip_value=-1.0), "clip_value"),
        (dict(memory_init=float("nan")), "memory_init"),
        (dict(initial_weight_peak=1.0), "initial_weight_peak"),
        (dict(initial_weight_peak=0.01), "initial_weight_peak"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


# ---------------------------------------------------------------------------------------------- initial state / reset
def test_initial_state_is_the_learned_bias():
    core = make()
    s = core.initial_state(3)
    assert isinstance(s, NTMState) and isinstance(s.controller, LSTMControllerState)
    assert s.memory.shape == (3, 8, 6) and s.read_weights.shape == (3, 2, 8) and s.write_weights.shape == (3, 1, 8)
    assert s.reads.shape == (3, 2, 6) and s.controller.h.shape == (3, 16)
    # default memory: a learned parameter initialised to the small constant 1e-6 (Collier and Beel 2018)
    assert torch.equal(s.memory, torch.full((3, 8, 6), 1e-6))
    assert any(p is core.memory_init.value for p in core.parameters())
    torch.testing.assert_close(s.read_weights.sum(-1), torch.ones(3, 2))
    torch.testing.assert_close(s.write_weights.sum(-1), torch.ones(3, 1))
    fixed = make(learn_memory_init=False, memory_init=0.5)
    assert torch.equal(fixed.initial_state(2).memory, torch.full((2, 8, 6), 0.5))
    assert all(p.shape != (8, 6) for p in fixed.parameters())


def test_initial_weightings_peak_on_slot_zero():
    core = make(initial_weight_peak=0.9)
    w0 = core.initial_state(2).write_weights
    torch.testing.assert_close(w0[:, 0, 0], torch.full((2,), 0.9))
    torch.testing.assert_close(w0[:, 0, 1:], torch.full((2, 7), 0.1 / 7))
    uniform = make(initial_weight_peak=1 / 8).initial_state(2).read_weights
    torch.testing.assert_close(uniform, torch.full((2, 2, 8), 1 / 8))


@torch.no_grad()
def test_default_init_escapes_the_symmetric_fixed_point():
    """Constant memory + uniform w_0 keeps every slot identical forever; the default peaked w_0 must not."""

    def slots_after_steps(core: NTMCore) -> NTMState:
        torch.manual_seed(0)
        _, state = core.unroll(torch.randint(0, 2, (8, 2, 5)).float(), core.initial_state(2))
        return state

    trapped = slots_after_steps(make(initial_weight_peak=1 / 8))
    assert torch.equal(trapped.memory, trapped.memory[:, :1].expand_as(trapped.memory))  # the trap is real
    state = slots_after_steps(make())
    assert not torch.equal(state.memory, state.memory[:, :1].expand_as(state.memory))
    for w in (state.read_weights, state.write_weights):
        assert not torch.equal(w, w[..., :1].expand_as(w))


def test_reset_restores_learned_memory_not_zeros():
    core = make().eval()
    with torch.no_grad():
        core.memory_init.value.copy_(torch.randn(8, 6))  # a learned M_0 far from zero
        core.reads_init.value.copy_(torch.randn(2, 6))
        core.h_init.value.copy_(torch.randn(16))
        core.read_weights_init.value.copy_(torch.randn(2, 8))
    B = 3
    _, state = core.unroll(torch.randn(5, B, 5), core.initial_state(B))
    reset = torch.tensor([False, True, False])
    restored = core.reset_state(state, reset)
    init = core.initial_state(B)
    for new, old, fresh in zip(tree_leaves(restored), tree_leaves(state), tree_leaves(init)):
        assert torch.equal(new[1], fresh[1])  # the reset row is the learned initial state ...
        assert torch.equal(new[0], old[0]) and torch.equal(new[2], old[2])  # ... the others untouched
    assert torch.equal(restored.memory[1], core.memory_init.value)
    assert restored.memory[1].abs().min() > 0  # not zeros
    torch.testing.assert_close(restored.read_weights[1], torch.softmax(core.read_weights_init.value, -1))


# ---------------------------------------------------------------------------------------------- one step, known answers
def scripted_core(write_slot_shift: int = 0, add=(1.0, -2.0, 3.0, 0.5, 0.0, 4.0)) -> NTMCore:
    """A core whose heads ignore the controller: the head projection is a constant bias.

    Write head: g = 0 (keep w_{t-1}), shift concentrated on ``write_slot_shift``, gamma ~ 1, erase ~ 1, add ``add``.
    Read heads: g = 0, no shift, gamma ~ 1. Logits of +-20 (the clip value) saturate the sigmoids/softmaxes.
    """
    core = make(max_shift=1, clip_value=20.0)
    H, Hw, W, S = 3, 1, 6, 3
    b = torch.zeros(core.heads.out_features)
    o = H * W  # keys: zero (beta is irrelevant with g = 0)
    b[o : o + Hw * W] = torch.tensor(add)
    o += Hw * W
    b[o : o + 2 * H] = -20.0  # beta ~ 0, gamma ~ 1
    o += 2 * H
    b[o : o + H] = -20.0  # g ~ 0: keep the previous weighting
    o += H
    b[o : o + Hw * W] = 20.0  # erase ~ 1
    o += Hw * W
    shifts = torch.full((H, S), -20.0)
    shifts[:Hw, shift_offsets(1).index(write_slot_shift)] = 20.0
    shifts[Hw:, shift_offsets(1).index(0)] = 20.0
    b[o : o + H * S] = shifts.reshape(-1)
    with torch.no_grad():
        core.heads.weight.zero_()
        core.heads.bias.copy_(b)
    return core


def state_with_heads_on(core: NTMCore, B: int, write_slot: int, read_slots: tuple[int, int], memory: torch.Tensor):
    s = core.initial_state(B)
    eye = torch.eye(core.num_slots)
    return s._replace(
        memory=memory,
        write_weights=eye[write_slot].expand(B, 1, -1).clone(),
        read_weights=eye[list(read_slots)].expand(B, 2, -1).clone(),
    )


def test_write_erases_then_adds_and_read_sees_it_in_the_same_step():
    core = scripted_core(write_slot_shift=0)
    B, add = 2, torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0, 4.0])
    memory = torch.randn(B, 8, 6)
    state = state_with_heads_on(core, B, write_slot=3, read_slots=(3, 5), memory=memory)
    y, new = core(torch.randn(B, 5), state)
    expected = memory.clone()
    expected[:, 3] = add  # erase ~ 1 wipes slot 3, then the add vector is written there
    torch.testing.assert_close(new.memory, expected, atol=1e-4, rtol=0)
    # read head 0 reads slot 3 of the UPDATED memory (write before read); read head 1 reads slot 5
    torch.testing.assert_close(new.reads[:, 0], add.expand(B, 6), atol=1e-4, rtol=0)
    torch.testing.assert_close(new.reads[:, 1], memory[:, 5], atol=1e-4, rtol=0)
    # y = [h_t, r_t^1, r_t^2]
    assert torch.equal(y[:, :16], new.controller.h)
    assert torch.equal(y[:, 16:], new.reads.reshape(B, 12))


@pytest.mark.parametrize("d", [1, -1])
def test_write_head_moves_by_the_shift(d):
    core = scripted_core(write_slot_shift=d)
    B = 1
    state = state_with_heads_on(core, B, write_slot=0, read_slots=(0, 1), memory=torch.zeros(B, 8, 6))
    _, new = core(torch.randn(B, 5), state)
    assert new.write_weights[0, 0].argmax().item() == d % 8  # slot 0 + d, wrapping around
    torch.testing.assert_close(new.write_weights[0, 0].max(), torch.tensor(1.0), atol=1e-4, rtol=0)
    # three steps walk three slots
    for _ in range(2):
        _, new = core(torch.randn(B, 5), new)
    assert new.write_weights[0, 0].argmax().item() == (3 * d) % 8


def test_previous_reads_feed_the_controller():
    core = make().eval()
    s = core.initial_state(2)
    x = torch.randn(2, 5)
    y1, _ = core(x, s)
    y2, _ = core(x, s._replace(reads=s.reads + 1.0))
    assert not torch.allclose(y1[:, :16], y2[:, :16])  # h_t depends on r_{t-1}


# ---------------------------------------------------------------------------------------------- batch independence
@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_rows_are_independent(controller):
    core = make(controller=controller)
    T, B = 4, 4
    xs = torch.randn(T, B, 5, requires_grad=True)
    ys, final = core.unroll(xs, core.initial_state(B))
    (ys[:, 1].sum() + final.memory[1].sum()).backward()
    assert xs.grad[:, 1].abs().sum() > 0
    assert torch.equal(xs.grad[:, [0, 2, 3]], torch.zeros(T, 3, 5))  # exactly no path from other rows
    # and the same numbers as running that row alone
    ys_alone, _ = core.unroll(xs[:, 1:2].detach(), core.initial_state(1))
    torch.testing.assert_close(ys[:, 1:2].detach(), ys_alone, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_gradcheck_one_full_step_float64(controller):
    torch.manual_seed(8)
    core = NTMCore(3, hidden_size=4, num_slots=5, slot_size=3, num_read_heads=2, controller=controller).double()
    B = 2
    s = core.initial_state(B)
    d = dict(dtype=torch.float64)
    x = torch.randn(B, 3, **d)
    memory = torch.randn(B, 5, 3, **d)
    rw = torch.softmax(torch.randn(B, 2, 5, **d), -1)
    ww = torch.softmax(torch.randn(B, 1, 5, **d), -1)
    reads = torch.randn(B, 2, 3, **d)
    ctrl = (torch.randn(B, 4, **d), torch.randn(B, 4, **d)) if controller == "lstm" else ()

    def one_step(x, memory, rw, ww, reads, *ctrl):
        c = LSTMControllerState(*ctrl) if controller == "lstm" else s.controller
        y, new = core.step(x, NTMState(c, memory, rw, ww, reads))
        return (y, *tree_leaves(new))

    inputs = tuple(t.requires_grad_(True) for t in (x, memory, rw, ww, reads, *ctrl))
    assert torch.autograd.gradcheck(one_step, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- precision
def test_memory_math_stays_fp32_under_bf16_autocast():
    core = make()
    B = 3
    state = core.initial_state(B)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        ys, final = core.unroll(torch.randn(4, B, 5), state)
    assert final.memory.dtype == torch.float32 and final.read_weights.dtype == torch.float32
    assert torch.isfinite(ys).all()
    torch.testing.assert_close(final.read_weights.sum(-1), torch.ones(B, 2), atol=1e-5, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    core = make().eval()
    xs = torch.randn(5, 3, 5)
    ys_cpu, _ = core.unroll(xs, core.initial_state(3))
    core = core.cuda()
    ys_gpu, s = core.unroll(xs.cuda(), core.initial_state(3))
    assert all(t.is_cuda for t in tree_leaves(s))
    torch.testing.assert_close(ys_gpu.cpu(), ys_cpu, atol=1e-4, rtol=1e-4)
