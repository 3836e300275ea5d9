"""--autocast bf16: the policy's forward passes (rollout steps, the update's loss) in bf16, the memory cores' memory
math, the stored rollout, GAE, the backward pass and the parameters in float32."""

from __future__ import annotations

import json
import os
from dataclasses import fields, replace

import pytest
import torch
import tyro

import memory_cores
from agents.checkpoint import config_from_dict, load_checkpoint, save_checkpoint
from agents.env_adapter import TorchVecEnv
from agents.policy import ActorCritic, tree_map_any
from agents.ppo import PPO, Rollout, TrainConfig
from agents.runner import load_policy, train
from memory_cores import tree_leaves

torch.set_num_threads(1)
TMAZE = "MemoryCores/TMaze-v0"
CORES = [c for c in ("lstm", "ntm", "dnc") if c in memory_cores.CORES]
MEMORY_CORES = [c for c in ("ntm", "dnc") if c in memory_cores.CORES]
CORE_KW = {"ntm": dict(num_slots=8, slot_size=6), "dnc": dict(num_slots=8, slot_size=6, num_read_heads=2)}


def tiny_cfg(**kw) -> TrainConfig:
    """T-maze of length 3, 8 envs x 16 steps, sequences of 8, one epoch of two minibatches."""
    base = dict(
        env=TMAZE, env_kwargs='{"length": 3, "max_steps": 6}', num_envs=8, num_steps=16, seq_len=8,
        num_minibatches=2, update_epochs=1, total_steps=8 * 16, hidden_size=16, embed_size=16, progress=False,
        tensorboard=False, device="cpu",
    )
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def make_ppo(cfg: TrainConfig) -> PPO:
    torch.manual_seed(0)
    env = TorchVecEnv(cfg.env, cfg.num_envs, "cpu", cfg.env_kwargs_dict())
    kw = cfg.core_kwargs_dict() | CORE_KW.get(cfg.core, {})
    policy = ActorCritic(env.single_observation_space, env.single_action_space, cfg.core, kw, cfg.embed_size,
                         cfg.shared_core, cfg.normalize_obs)
    return PPO(policy, env, cfg, seed=0)


def rollout_tensors(r: Rollout) -> dict[str, torch.Tensor]:
    """Every tensor the rollout stores, by field name (nested ones as ``field.i``)."""
    out = {}
    for f in fields(r):
        leaves: list[torch.Tensor] = []
        tree_map_any(leaves.append, getattr(r, f.name))
        for i, t in enumerate(leaves):
            out[f.name if len(leaves) == 1 else f"{f.name}.{i}"] = t
    return out


def memory_of(core: str, state) -> torch.Tensor:
    """The memory matrix ``[B, N, W]`` of the actor core's state."""
    return state.actor.memory if core == "ntm" else state.actor.access.memory


def not_bf16_values(t: torch.Tensor) -> bool:
    """Whether some value of the float32 ``t`` is not a bf16 value: it was not computed in bf16 and cast up."""
    return bool((t.to(torch.bfloat16).float() != t).any())


# ----------------------------------------------------------------------------------------- (a) a short run
@pytest.mark.parametrize("core", CORES)
def test_bf16_update_is_finite_and_keeps_parameters_and_rollout_float32(core):
    ppo = make_ppo(tiny_cfg(core=core, autocast="bf16"))
    before = [p.detach().clone() for p in ppo.policy.parameters()]
    r = ppo.collect()
    stored = rollout_tensors(r)
    assert {"obs", "log_probs", "values", "rewards", "final_values", "last_value", "advantages", "returns"} <= set(
        stored)
    assert any(k.startswith("seq_states") for k in stored)
    for name, t in stored.items():
        if t.is_floating_point():
            assert t.dtype == torch.float32, f"rollout.{name} is {t.dtype}"
        assert torch.isfinite(t.float()).all(), f"rollout.{name} is not finite"
    # the core state carried to the next rollout (the LSTM's h and c come out of autocast in bf16)
    assert all(t.dtype == torch.float32 for t in tree_leaves(ppo.next_state) if t.is_floating_point())
    metrics = ppo.update(r)
    for k, v in metrics.items():
        assert torch.isfinite(v).all(), f"{k} = {v}"
    assert float(metrics["grad_norm"]) > 0
    params = list(ppo.policy.parameters())
    assert all(p.dtype == torch.float32 for p in params)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in params)
    assert any(not torch.equal(p, q) for p, q in zip(params, before)), "the update changed nothing"
    # the optimiser's moments are float32 too
    moments = [t for s in ppo.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim]
    assert moments and all(t.dtype == torch.float32 for t in moments)


@pytest.mark.parametrize("core", CORES)
def test_bf16_update_rescores_the_bf16_rollout_exactly(core):
    """The update's loss re-runs the same bf16 forward over the stored (float32) rollout, episode starts inside the
    sequences included: before a gradient step the ratio is 1 (on the CPU exactly)."""
    ppo = make_ppo(tiny_cfg(core=core, autocast="bf16"))
    ppo.collect()
    r = ppo.collect()  # the stored state at t = 0 is not the initial state
    assert r.starts.reshape(-1, ppo.cfg.seq_len, ppo.cfg.num_envs)[:, 1:].any(), "the test needs inner resets"
    data = ppo.sequences(r)
    data["starts_cpu"] = data["starts"].cpu() if ppo.policy.segment_unroll else None
    loss, m = ppo.loss(data, torch.arange(data["starts"].shape[1]))
    assert loss.dtype == torch.float32 and loss.requires_grad
    assert float(m["approx_kl"]) < 1e-6 and float(m["clip_fraction"]) == 0.0


def test_bf16_rollout_matches_fp32_up_to_bf16_rounding():
    """Same seed, same first step: the values and log-probs of the bf16 rollout are the fp32 rollout's up to bf16
    rounding of the network (and not equal to them: bf16 really ran)."""
    outs = {}
    for ac in ("", "bf16"):
        ppo = make_ppo(tiny_cfg(core="ntm", autocast=ac))
        with ppo.autocast():
            outs[ac] = ppo.policy.get_action_and_value(ppo.next_obs, ppo.next_state, ppo.next_start)
    a, b = outs[""], outs["bf16"]
    torch.testing.assert_close(b.value.float(), a.value, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(b.log_prob.float(), a.log_prob, atol=2e-2, rtol=2e-2)
    assert not torch.equal(b.value.float(), a.value)


def test_bf16_ppo_learns_the_short_tmaze():
    """The setting of tests/test_ppo.py's learning test (T-maze corridor 2, LSTM, 60 updates of 16 x 32 steps)
    under --autocast bf16: greedy success >= 0.9 (seeds 0-7 all reach 1.0 on this CPU, about 2 s each)."""
    from agents.evaluation import evaluate_policy

    kw = dict(length=2, max_steps=8, wrong_arm_reward=0.0, wall_reward=-0.01)
    cfg = tiny_cfg(env_kwargs=json.dumps(kw), core="lstm", num_envs=16, num_steps=32, seq_len=32, update_epochs=4,
                   learning_rate=3e-3, anneal_lr=False, gamma=0.9, norm_reward=False, seed=0, autocast="bf16")
    ppo = make_ppo(cfg)
    for _ in range(60):
        ppo.update(ppo.collect())
    after = evaluate_policy(ppo.policy, TMAZE, 200, env_kwargs=kw, seed=123)
    assert after["success_rate"] >= 0.9 and after["mean_return"] >= 0.85, after


# ---------------------------------------------------------------------------------- (b) memory stays float32
@pytest.mark.parametrize("core", MEMORY_CORES)
def test_memory_state_stays_float32_under_bf16(core):
    """The core's own step keeps the memory in float32 under autocast (computed in fp32: its values are not all bf16
    values), and the state the PPO object carries from one rollout to the next is float32 throughout."""
    ppo = make_ppo(tiny_cfg(core=core, autocast="bf16"))
    ppo.collect()
    carried = ppo.next_state
    for leaf in tree_leaves(carried):
        if leaf.is_floating_point():
            assert leaf.dtype == torch.float32
    mem = memory_of(core, carried)
    assert mem.abs().sum() > 0, "the test needs a written memory"
    assert not_bf16_values(mem), "the memory was computed in bf16"
    # one more step under autocast, straight from the policy (no cast by the PPO): the core's memory is float32
    with ppo.autocast():
        out = ppo.policy.get_action_and_value(ppo.next_obs, carried, ppo.next_start)
    assert out.value.dtype == torch.bfloat16  # the heads did run in bf16
    mem1 = memory_of(core, out.state)
    assert mem1.dtype == torch.float32 and not_bf16_values(mem1)
    assert not torch.equal(mem1, mem)
    # and a second rollout runs on from the carried state
    r = ppo.collect()
    assert all(t.dtype == torch.float32 for t in tree_leaves(r.seq_states) if t.is_floating_point())


# ----------------------------------------------------------------------------- (c) the controller runs in bf16
@pytest.mark.parametrize("core", ["lstm", "ntm"])
def test_linear_layers_run_in_bf16_only_under_the_option(core):
    """A forward hook on the actor head's Linear and on a Linear inside the core (the NTM's controller) records the
    output dtypes during the rollout and the update's loss: bf16 with --autocast bf16, float32 without."""
    for ac, want in (("", torch.float32), ("bf16", torch.bfloat16)):
        ppo = make_ppo(tiny_cfg(core=core, autocast=ac))
        pol = ppo.policy
        layers = {"actor_head": pol.actor_head.linear}
        if core == "ntm":
            layers["core.controller"] = pol.core.controller
            assert isinstance(pol.core.controller, torch.nn.Linear)
        seen: dict[str, set] = {k: set() for k in layers}
        hooks = [m.register_forward_hook(lambda _m, _i, o, k=k: seen[k].add(o.dtype)) for k, m in layers.items()]
        try:
            r = ppo.collect()
            assert seen == {k: {want} for k in layers}, (ac, seen)
            for s in seen.values():
                s.clear()
            m = ppo.update(r)
            assert seen == {k: {want} for k in layers}, (ac, seen)
        finally:
            for h in hooks:
                h.remove()
        assert m["loss"].dtype == torch.float32 and r.values.dtype == torch.float32


# ----------------------------------------------------------------------------------------- (d) validation, CLI
def test_invalid_autocast_is_a_one_line_value_error():
    for bad in ("fp16", "bfloat16", "BF16", "yes"):
        with pytest.raises(ValueError, match=r"--autocast .* is not valid: expected bf16") as e:
            TrainConfig(autocast=bad).validate()
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="--autocast bf16 does not support memory-efficient BPTT") as e:
        TrainConfig(autocast="bf16", bptt_memory_slots=4).validate()
    assert "\n" not in str(e.value)
    TrainConfig(autocast="bf16").validate()
    TrainConfig(autocast="").validate()


def test_cli_option_reaches_the_config():
    assert tyro.cli(TrainConfig, args=["--autocast", "bf16"]).autocast == "bf16"
    assert tyro.cli(TrainConfig, args=[]).autocast == ""


# --------------------------------------------------------------------------------------- checkpoints, resume
def test_older_checkpoint_without_the_field_loads_and_resumes_under_bf16(tmp_path):
    run = str(tmp_path / "run")
    cfg = tiny_cfg(core="lstm", run_dir=run, checkpoint_every=1)
    train(cfg)
    # a checkpoint written before --autocast existed: its config has no such key
    ckpt = load_checkpoint(run)
    ckpt["config"].pop("autocast")
    save_checkpoint(os.path.join(run, "checkpoint.pt"), ckpt)
    assert "autocast" not in load_checkpoint(run)["config"]
    assert config_from_dict(TrainConfig, load_checkpoint(run)["config"]).autocast == ""
    _, loaded_cfg, _ = load_policy(run)
    assert loaded_cfg.autocast == ""
    # resumed with --autocast bf16: one more update, saved with the option
    out = train(replace(cfg, autocast="bf16", total_steps=2 * 8 * 16, resume=True))
    assert out["updates"] == 2
    after = load_checkpoint(run)
    assert after["update"] == 2 and after["config"]["autocast"] == "bf16"
    assert all(v.dtype == torch.float32 for v in after["policy"].values() if v.is_floating_point())


def test_distributions_sample_and_score_in_float32_under_autocast():
    """Heads output bf16 under autocast; the distributions widen their parameters so that sampling noise,
    normalisation and log-probabilities are float32 (CPU autocast would keep log_softmax and rand_like in bf16),
    and leave float64 alone."""
    from agents.policy import Bernoulli, Categorical, DiagGaussian

    logits = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cat, ber = Categorical(logits), Bernoulli(logits)
        gau = DiagGaussian(logits, torch.zeros(3, dtype=torch.bfloat16))
        for d in (cat, ber, gau):
            a = d.sample()
            assert d.log_prob(a).dtype == torch.float32 and d.entropy().dtype == torch.float32
    assert torch.allclose(cat.log_p, torch.log_softmax(logits.float(), -1))
    assert Categorical(logits.double()).log_p.dtype == torch.float64
