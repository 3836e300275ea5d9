"""Core.compile_step: torch.compile of a core's step, used by forward and the base unroll, equal to eager."""

from __future__ import annotations

import pytest
import torch

from memory_cores import make_core, tree_leaves

torch.set_num_threads(1)


def _run(core, xs, resets):
    """Outputs, final state leaves and gradients (inputs, parameters) of one unroll with a random loss."""
    xs = xs.detach().requires_grad_()
    ys, final = core.unroll(xs, core.initial_state(xs.shape[1]), resets)
    g = torch.Generator().manual_seed(5)
    loss = (ys * torch.randn(ys.shape, generator=g)).sum()
    loss = loss + sum((leaf * torch.randn(leaf.shape, generator=g)).sum() for leaf in tree_leaves(final))
    grads = torch.autograd.grad(loss, [xs] + list(core.parameters()), allow_unused=True)
    return ys.detach(), [leaf.detach() for leaf in tree_leaves(final)], grads


def test_compiled_ntm_step_equals_eager_and_is_used():
    torch.manual_seed(0)
    core = make_core("ntm", input_size=5, hidden_size=16, num_slots=8, slot_size=6, num_read_heads=2)
    xs = torch.randn(6, 3, 5)
    resets = torch.zeros(6, 3, dtype=torch.bool)
    resets[3, 1] = True  # an episode start inside: the reset stays outside the compiled step
    eager = _run(core, xs, resets)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    assert core.compile_step() is core and core.compiled_step_mode == "default"
    compiled = _run(core, xs, resets)
    assert counters["stats"]["unique_graphs"] >= 1  # the step really went through dynamo
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled[2], eager[2]):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    core.compile_step(None)  # back to eager: the same numbers as before, bit for bit
    again = _run(core, xs, resets)
    assert torch.equal(again[0], eager[0])


def test_compile_mode_is_validated():
    core = make_core("gru", input_size=3, hidden_size=4)
    with pytest.raises(ValueError, match="compile mode"):
        core.compile_step("fast")
    from agents.ppo import TrainConfig

    with pytest.raises(ValueError, match="compile-core"):
        TrainConfig(compile_core="fast").validate()
