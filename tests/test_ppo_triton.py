"""PPO with the memory cores' Triton kernels (``--core-kwargs '{"kernel": "triton"}'``) against the plain cores.

The kernel tests compare each core alone; here the kernels run where training runs them: the rollout's single steps,
the update's unrolls over sequences with episode starts inside, and both in the fixed buffers of ``--capture-rollout
static --capture-update static`` (the code a CUDA graph records on a GPU). On a machine without CUDA the kernels run
in Triton's interpreter. The trainer with kernels takes the plain trainer's actions and ends with its parameters up to
float32 rounding.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import triton_helpers  # noqa: E402,F401  (before the kernel modules: TRITON_INTERPRET=1 without CUDA)

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

import memory_cores  # noqa: E402
from agents.ppo import _tensors  # noqa: E402
from test_ppo_capture import TMAZE, cfg_for, make_ppo  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize("capture", ["", "static"])
@pytest.mark.parametrize("core", memory_cores.KERNEL_CORES)
def test_ppo_with_the_triton_kernels_follows_the_plain_trainer(core, capture):
    cfg = cfg_for(TMAZE, core=core, num_envs=2, num_steps=8, seq_len=4, num_minibatches=2, update_epochs=1)
    plain = make_ppo(cfg)
    fast = make_ppo(replace(cfg, core_kwargs=json.dumps({"kernel": "triton"}), capture_rollout=capture,
                            capture_update=capture))
    assert fast.policy.core.kernel == "triton"
    fast.policy.load_state_dict(plain.policy.state_dict())
    if capture:
        plain._any_truncated = lambda truncated: True  # the static step computes final values every step
    starts = 0
    for it in range(2):
        torch.manual_seed(10 + it)
        rp = plain.collect()
        torch.manual_seed(10 + it)
        rf = fast.collect()
        assert torch.equal(rp.actions, rf.actions), f"rollout {it}: the kernels' trainer acted otherwise"
        for name in ("values", "log_probs", "returns", "advantages"):
            torch.testing.assert_close(getattr(rf, name), getattr(rp, name), atol=1e-5, rtol=1e-5)
        for a, b in zip(_tensors(rp.seq_states), _tensors(rf.seq_states)):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        if core == "rl_access":
            assert all(torch.equal(a, b) for a, b in zip(_tensors(rp.choices), _tensors(rf.choices)))  # access too
        starts += int(rp.starts[1:].sum())
        torch.manual_seed(20 + it)
        plain.update(rp)
        torch.manual_seed(20 + it)
        fast.update(rf)
        for (name, p), q in zip(plain.policy.named_parameters(), fast.policy.parameters()):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
    assert starts > 0  # episodes started inside the sequences the update unrolls
