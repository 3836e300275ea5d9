"""Recurrent PPO: GAE, exact re-evaluation of the rollout in the update, end-to-end runs, checkpoints, errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch.utils._python_dispatch import TorchDispatchMode

import memory_cores
from agents.checkpoint import CheckpointError, load_checkpoint
from agents.env_adapter import EnvError, TorchVecEnv
from agents.policy import ActorCritic
from agents.ppo import PPO, TrainConfig, compute_gae
from agents.runner import TrainingStopped, evaluate_policy, load_policy, train

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMAZE = "MemoryCores/TMaze-v0"


# ------------------------------------------------------------------------------------------------------------ GAE
def test_gae_hand_computed_truncation_vs_termination():
    """One env, 4 steps, gamma 0.5, lambda 0.5.

    t=0: r=1, continues           V=1
    t=1: r=0, TRUNCATED (V(final obs)=4 is bootstrapped)   V=2
    t=2: r=2, TERMINATED (no bootstrap)                     V=3
    t=3: r=1, continues; last value (after the rollout) 8   V=1
    """
    g, lam = 0.5, 0.5
    r = torch.tensor([[1.0], [0.0], [2.0], [1.0]])
    v = torch.tensor([[1.0], [2.0], [3.0], [1.0]])
    term = torch.tensor([[False], [False], [True], [False]])
    trunc = torch.tensor([[False], [True], [False], [False]])
    final_v = torch.tensor([[0.0], [4.0], [99.0], [0.0]])  # 99 must be ignored: terminated
    last_v = torch.tensor([8.0])
    adv, ret = compute_gae(r, v, term, trunc, final_v, last_v, g, lam)
    d3 = 1 + g * 8 - 1  # 4
    d2 = 2 + 0 - 3  # -1 (terminal)
    d1 = 0 + g * 4 - 2  # 0 (truncated: bootstrap from the final obs)
    d0 = 1 + g * 2 - 1  # 1
    a3, a2, a1 = d3, d2, d1  # advantages do not cross episode ends
    a0 = d0 + g * lam * a1
    expected = torch.tensor([[a0], [a1], [a2], [a3]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + v)
    # truncated AND terminated on the same step counts as terminal
    adv2, _ = compute_gae(r, v, term | trunc, trunc, final_v, last_v, g, lam)
    assert float(adv2[1, 0]) == pytest.approx(0 - 2)


# ------------------------------------------------------------------------------------- exact re-evaluation (ratio 1)
def small_cfg(**kw) -> TrainConfig:
    base = dict(
        env=TMAZE, env_kwargs='{"length": 3, "max_steps": 6}', num_envs=4, num_steps=16, seq_len=8,
        num_minibatches=2, update_epochs=1, total_steps=4 * 16 * 2, hidden_size=8, embed_size=8,
        progress=False, tensorboard=False, device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def make_ppo(cfg: TrainConfig, core_kwargs: dict | None = None) -> PPO:
    torch.manual_seed(0)
    env = TorchVecEnv(cfg.env, cfg.num_envs, "cpu", cfg.env_kwargs_dict())
    kw = cfg.core_kwargs_dict()
    kw.update(core_kwargs or {})
    pol = ActorCritic(env.single_observation_space, env.single_action_space, cfg.core, kw, cfg.embed_size,
                      cfg.shared_core, cfg.normalize_obs)
    return PPO(pol, env, cfg, seed=0)


REEVAL_CORES = [c for c in ("lstm", "ntm", "rl_access", "none") if c == "none" or c in memory_cores.CORES]
MEM_KW = {"ntm": dict(num_slots=4, slot_size=3), "rl_access": dict(num_slots=4, slot_size=3)}


@pytest.mark.parametrize("core", REEVAL_CORES)
def test_update_reevaluates_rollout_exactly(core):
    """Before any gradient step the update's log-probs, values and core-choice log-probs at the stored sequence
    states equal the rollout's (ratio == 1), with episode starts inside the sequences."""
    ppo = make_ppo(small_cfg(core=core, normalize_obs=True), MEM_KW.get(core))
    ppo.collect()
    r = ppo.collect()  # second rollout: the stored state at t=0 is not the initial state
    L = ppo.cfg.seq_len
    inner = r.starts.reshape(-1, L, r.starts.shape[1])[:, 1:]
    assert inner.any(), "the test needs resets inside sequences"
    assert r.truncated.any() and r.terminated.any(), "the test needs both kinds of episode end"
    data = ppo.sequences(r)
    with torch.no_grad():
        out = ppo.policy.evaluate_sequence(data["obs"], data["states"], data["starts"], data["actions"],
                                           data["choices"])
    ratio = (out.log_prob - data["log_probs"]).exp()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.value, data["values"], atol=1e-5, rtol=1e-5)
    if ppo.policy.segment_unroll:  # the update's fused path over episode segments scores the same
        with torch.no_grad():
            seg = ppo.policy.evaluate_sequence(data["obs"], data["states"], data["starts"], data["actions"],
                                               segmented=True)
        torch.testing.assert_close(seg.log_prob, data["log_probs"], atol=1e-5, rtol=0)
        torch.testing.assert_close(seg.value, data["values"], atol=1e-5, rtol=1e-5)
    if ppo.policy.has_choices:
        torch.testing.assert_close(out.choice_log_prob, data["choice_log_probs"], atol=1e-5, rtol=0)
        assert data["choice_log_probs"].abs().sum() > 0
    # and the first minibatch step reports a zero KL / no clipping
    m = ppo._minibatch_step(data, torch.arange(data["starts"].shape[1] // 2))
    assert float(m["approx_kl"]) < 1e-6 and float(m["clip_fraction"]) == 0.0


def test_rl_access_choices_stored_and_replayed():
    if "rl_access" not in memory_cores.CORES:
        pytest.skip("rl_access not registered")
    ppo = make_ppo(small_cfg(core="rl_access"), MEM_KW["rl_access"])
    r = ppo.collect()
    choices = r.choices[0]
    assert choices.shape == (16, 4) and choices.dtype == torch.long
    assert len(torch.unique(choices)) > 1  # sampled, not greedy
    m = ppo.update(r)
    assert torch.isfinite(m["choice_entropy"]) and torch.isfinite(m["choice_approx_kl"])
    assert float(m["choice_entropy"]) > 0


def test_rl_access_ratio_is_the_joint_ratio_of_action_and_choice():
    """PPO clips one ratio per step, pi(action, choice) / pi_old(action, choice), as the SB3 adapter does.

    Old log-probabilities are set so that the action's ratio is 1.1 and the choice's 1.2 at every step, with
    advantage +1 and clip 0.2: the joint ratio 1.32 is clipped to 1.2, so the surrogate is -1.2 (clipping each
    ratio separately would give -1.1 - 1.2 = -2.3), no parameter gets a policy gradient (separately, the action's
    1.1 would still pass one), and approx_kl = 0.32 - log 1.32 and clip_fraction = 1 count the choice. With
    choice_coef 0 the ratio is the action's alone."""
    ppo = make_ppo(small_cfg(core="rl_access", norm_adv=False, ent_coef=0.0, choice_ent_coef=0.0, vf_coef=0.0),
                   MEM_KW["rl_access"])
    data = ppo.sequences(ppo.collect())
    N = data["starts"].shape[1]
    with torch.no_grad():
        out = ppo.policy.evaluate_sequence(data["obs"], data["states"], data["starts"], data["actions"],
                                           data["choices"])
    data.update(log_probs=out.log_prob - math.log(1.1), choice_log_probs=out.choice_log_prob - math.log(1.2),
                advantages=torch.ones_like(out.log_prob))
    idx = torch.arange(N)
    loss, m = ppo.loss(data, idx)
    assert float(m["policy_gradient_loss"]) == pytest.approx(-1.2, abs=1e-5)
    assert float(m["approx_kl"]) == pytest.approx(0.32 - math.log(1.32), abs=1e-5)
    assert float(m["clip_fraction"]) == 1.0
    assert float(m["choice_approx_kl"]) == pytest.approx(0.2 - math.log(1.2), abs=1e-5)
    grads = torch.autograd.grad(loss, [p for p in ppo.policy.parameters()], allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in grads)

    ppo.cfg = replace(ppo.cfg, choice_coef=0.0)
    loss, m = ppo.loss(data, idx)
    assert float(m["policy_gradient_loss"]) == pytest.approx(-1.1, abs=1e-5)
    assert float(m["approx_kl"]) == pytest.approx(0.1 - math.log(1.1), abs=1e-5)
    assert float(m["clip_fraction"]) == 0.0
    loss.backward()
    P = ppo.policy.core.num_choices
    assert float(ppo.policy.actor_head.linear.weight.grad.abs().sum()) > 0  # the action is trained
    z_grad = ppo.policy.core.interface.weight.grad
    assert z_grad is None or float(z_grad[:P].abs().sum()) == 0.0  # the choices are not


# ------------------------------------------------------------------------------------ no host sync in the rollout
class RecordHostReads(TorchDispatchMode):
    """Records the aten ops that make the host wait for device values (.item(), nonzero, boolean-mask indexing,
    multinomial sampling, copies off the device): the CPU stand-in for ``torch.cuda.set_sync_debug_mode("error")``."""

    FORBIDDEN = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item", "aten.multinomial",
                 "aten.unique_dim", "aten._unique2"}

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device, self.bad, self.paused = device, [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:  # work on host data only (see host_only)
            return func(*args, **kwargs)
        name = str(func.overloadpacket)
        if name in self.FORBIDDEN:
            self.bad.append(name)
        if name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
                i is not None and i.dtype == torch.bool for i in args[1]):
            self.bad.append(name + " with a bool mask")
        if name == "aten._to_copy" and kwargs.get("device") not in (None, self.device):
            self.bad.append(f"copy to {kwargs['device']}")
        return func(*args, **kwargs)


def warm_ppo(core: str, device: str) -> PPO:
    """A PPO on the batched T-maze on ``device`` (observations normalised, rewards scaled), one rollout collected
    (buffers allocated, episodes under way)."""
    cfg = small_cfg(core=core, device=device, normalize_obs=True, num_steps=24)
    torch.manual_seed(0)
    env = TorchVecEnv(cfg.env, cfg.num_envs, device, cfg.env_kwargs_dict())
    pol = ActorCritic(env.single_observation_space, env.single_action_space, core, {**cfg.core_kwargs_dict(),
                      **MEM_KW.get(core, {})}, cfg.embed_size, cfg.shared_core, cfg.normalize_obs).to(device)
    ppo = PPO(pol, env, cfg, seed=0)
    ppo.collect()
    return ppo


@pytest.mark.parametrize("core", ["lstm", "rl_access"])
def test_collect_reads_nothing_back_to_the_host(core):
    """CPU sibling of test_collect_has_no_host_sync_on_cuda: the same collect(), on the accelerator path (final
    values computed every step instead of checking for truncations, the one host read the CPU path allows), runs
    no op that would make the host wait for the device; the rollout it returns is complete."""
    ppo = warm_ppo(core, "cpu")
    ppo._any_truncated = lambda truncated: True  # what collect() does on an accelerator
    with RecordHostReads(ppo.device) as rec:
        r = ppo.collect()
    assert rec.bad == []
    assert r.starts[1:].any() and (r.truncated | r.terminated).any()
    assert torch.isfinite(r.advantages).all() and torch.isfinite(r.values).all()
    if core == "rl_access":
        assert len(torch.unique(r.choices[0])) > 1 and (r.choice_log_probs < 0).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("core", ["lstm", "rl_access"])
def test_collect_has_no_host_sync_on_cuda(core):
    """A whole rollout on CUDA (policy, core choices, env, reward scaling, GAE) never synchronises with the host."""
    ppo = warm_ppo(core, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        r = ppo.collect()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert r.values.is_cuda and torch.isfinite(r.advantages).all()
    if core == "rl_access":
        assert r.choices[0].is_cuda and len(torch.unique(r.choices[0])) > 1


# ------------------------------------------------------------------------------------ no host sync in the update
def strict_epochs(ppo: PPO, guard) -> list:
    """Wraps ``ppo._epochs`` (the update's epochs and minibatches) in the context ``guard()``; returns the list that
    collects the guards' records."""
    inner, records = ppo._epochs, []

    def wrapped(*a, **k):
        with guard() as g:
            records.append(g)
            return inner(*a, **k)

    ppo._epochs = wrapped
    return records


def host_only(fn, records: list):
    """``fn`` run with the recorders of ``records`` paused: for work that reads host data only (on the CPU the
    recorder cannot tell host tensors from device tensors)."""
    def wrapped(*a, **k):
        for r in records:
            r.paused = True
        try:
            return fn(*a, **k)
        finally:
            for r in records:
                r.paused = False
    return wrapped


@pytest.mark.parametrize("core,slots", [("lstm", 0), ("rl_access", 0), ("ntm", 0), ("ntm", 3)])
def test_update_inner_loop_reads_nothing_back_to_the_host(core, slots, monkeypatch):
    """CPU sibling of test_update_has_no_host_sync_on_cuda: on the accelerator path (``sync_free``) the update's
    epochs and minibatches (segmented LSTM unroll, REINFORCE choices, the NTM, memory-efficient BPTT) run no op that
    makes the host wait for the device; the update still trains (parameters move, metrics finite). Exempt, as host
    work: the segment plan of the LSTM's segmented unroll (computed from the reset flags' host copy) and Adam's step
    counter (a host tensor unless ``capturable``); the CUDA test runs them unexempted."""
    import agents.policy

    ppo = warm_ppo(core, "cpu")
    ppo.cfg = replace(ppo.cfg, bptt_memory_slots=slots, bptt_segment_steps=2 if slots else 1)
    ppo.sync_free, ppo._any_truncated = True, lambda truncated: True
    r = ppo.collect()
    before = [p.detach().clone() for p in ppo.policy.parameters()]
    records = strict_epochs(ppo, lambda: RecordHostReads(ppo.device))
    monkeypatch.setattr(agents.policy, "segment_plan", host_only(agents.policy.segment_plan, records))
    monkeypatch.setattr(ppo.optimizer, "step", host_only(ppo.optimizer.step, records))
    out = ppo.update(r)
    assert len(records) == 1 and records[0].bad == []
    assert all(math.isfinite(float(v)) for v in out.values())
    assert any(not torch.equal(p, q) for p, q in zip(ppo.policy.parameters(), before))


def test_sync_free_update_restores_parameters_after_a_non_finite_loss():
    """A NaN loss in the second of four minibatches: the accelerator path (which checks once per update) raises and leaves the
    parameters and the optimiser state exactly as before the update; the CPU path stops at that minibatch."""
    from agents.ppo import NonFiniteLossError

    for sync_free in (True, False):
        ppo = warm_ppo("lstm", "cpu")
        ppo.sync_free, ppo.cfg = sync_free, replace(ppo.cfg, update_epochs=2)
        r = ppo.collect()
        ppo.update(r)  # optimiser state exists
        params = [p.detach().clone() for p in ppo.policy.parameters()]
        opt = {k: v.clone() for k, v in ppo.optimizer.state_dict()["state"][0].items()}
        inner, calls = ppo.loss, []

        def poisoned(*a, **k):
            loss, m = inner(*a, **k)
            calls.append(1)
            return (loss * float("nan") if len(calls) == 2 else loss), m

        ppo.loss = poisoned
        with pytest.raises(NonFiniteLossError, match="non-finite PPO loss"):
            ppo.update(ppo.collect())
        n_mb = ppo.cfg.update_epochs * ppo.cfg.num_minibatches
        assert n_mb == 4 and len(calls) == (n_mb if sync_free else 2)
        if sync_free:
            assert all(torch.equal(p, q) for p, q in zip(ppo.policy.parameters(), params))
            now = ppo.optimizer.state_dict()["state"][0]
            assert all(torch.equal(now[k], v) for k, v in opt.items())
        assert all(torch.isfinite(p).all() for p in ppo.policy.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("core,slots", [("lstm", 0), ("rl_access", 0), ("ntm", 0), ("ntm", 3)])
def test_update_has_no_host_sync_on_cuda(core, slots):
    """The update's epochs and minibatches on CUDA never synchronise with the host
    (``torch.cuda.set_sync_debug_mode("error")`` around them); the update trains."""
    import contextlib

    @contextlib.contextmanager
    def strict():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield None
        finally:
            torch.cuda.set_sync_debug_mode(0)

    ppo = warm_ppo(core, "cuda")
    ppo.cfg = replace(ppo.cfg, bptt_memory_slots=slots, bptt_segment_steps=2 if slots else 1)
    assert ppo.sync_free
    r = ppo.collect()
    before = [p.detach().clone() for p in ppo.policy.parameters()]
    records = strict_epochs(ppo, strict)
    out = ppo.update(r)
    assert len(records) == 1 and all(math.isfinite(float(v)) for v in out.values())
    assert any(not torch.equal(p, q) for p, q in zip(ppo.policy.parameters(), before))


def test_truncated_episodes_bootstrap_from_final_obs():
    ppo = make_ppo(small_cfg(env_kwargs='{"length": 20, "max_steps": 21}', num_steps=32))
    r = ppo.collect()
    assert r.truncated.any() and not r.terminated.any()
    assert (r.final_values[r.truncated] != 0).all()
    assert (r.final_values[~r.truncated] == 0).all()


# ------------------------------------------------------------------------------------------------- end to end
def test_ppo_runs_on_batched_env(tmp_path):
    cfg = small_cfg(core="lstm", run_dir=str(tmp_path / "run"), total_steps=4 * 16 * 3, checkpoint_every=2,
                    tensorboard=True)
    out = train(cfg)
    assert out["updates"] == 3 and out["global_step"] == 3 * 64
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == 3 and "train/entropy_loss" not in rows[0] and "entropy_loss" in rows[0]
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "run" / "tb"))
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["update"] == 3


@pytest.mark.parametrize("seed", [0, 1])
def test_ppo_learns_the_short_tmaze_with_an_lstm(seed):
    """The project's PPO learns to remember: on a T-maze with a corridor of 2 (cue at the start, reward +1 for the
    cued arm, 0 for the other, -0.01 per bump into a wall), an LSTM policy goes from never reaching an arm
    (greedy success 0) to taking the cued arm (greedy success >= 0.9), where a memoryless policy can succeed only
    half the time. 60 updates of 16 x 32 steps, about 2 s on one CPU thread; settings chosen so that seeds 0-11
    all reach a greedy success of 1.0."""
    from agents.evaluation import evaluate_policy

    kw = dict(length=2, max_steps=8, wrong_arm_reward=0.0, wall_reward=-0.01)
    cfg = small_cfg(env_kwargs=json.dumps(kw), core="lstm", hidden_size=16, embed_size=16, num_envs=16,
                    num_steps=32, seq_len=32, num_minibatches=2, update_epochs=4, learning_rate=3e-3, anneal_lr=False,
                    gamma=0.9, norm_reward=False, seed=seed)
    torch.manual_seed(seed)
    env = TorchVecEnv(cfg.env, cfg.num_envs, "cpu", cfg.env_kwargs_dict())
    pol = ActorCritic(env.single_observation_space, env.single_action_space, "lstm", cfg.core_kwargs_dict(),
                      cfg.embed_size)
    ppo = PPO(pol, env, cfg, seed=seed)
    before = evaluate_policy(pol, TMAZE, 200, env_kwargs=kw, seed=123)
    for _ in range(60):
        ppo.update(ppo.collect())
    after = evaluate_policy(pol, TMAZE, 200, env_kwargs=kw, seed=123)
    assert before["success_rate"] < 0.5 and before["mean_return"] < 0.5
    assert after["success_rate"] >= 0.9 and after["mean_return"] >= 0.85, (before, after)


@pytest.mark.parametrize("env_id,core", [("CartPole-v1", "gru"), ("Pendulum-v1", "none")])
def test_ppo_runs_on_gymnasium_single_env_id(tmp_path, env_id, core):
    cfg = small_cfg(env=env_id, env_kwargs="{}", core=core, run_dir=str(tmp_path / "run"), normalize_obs=True)
    out = train(cfg)
    assert out["updates"] == 2 and np.isfinite(out["metrics"]["loss"])


def test_evaluate_policy_counts_first_episodes(tmp_path):
    cfg = small_cfg(core="lstm", run_dir=str(tmp_path / "run"))
    train(cfg)
    policy, cfg2, _ = load_policy(tmp_path / "run")
    res = evaluate_policy(policy, TMAZE, episodes=7, env_kwargs=cfg2.env_kwargs_dict())
    assert res["episodes"] == 7 and 0.0 <= res["success_rate"] <= 1.0 and res["mean_length"] <= 6


# ------------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_resume_round_trip(tmp_path):
    run = str(tmp_path / "run")
    cfg = small_cfg(core="lstm", run_dir=run, total_steps=64 * 2, checkpoint_every=1)
    train(cfg)
    before = load_checkpoint(run)
    # a fresh run in the same directory is refused without --resume
    with pytest.raises(CheckpointError, match="--resume"):
        train(cfg)
    # rows logged after the last checkpoint by a killed run are dropped on resume
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"global_step": 999, "iterations": 3}) + "\n" + '{"global_st')
    # resume and extend to 4 updates: continues from update 2 with the saved weights and optimizer
    out = train(replace(cfg, total_steps=64 * 4, resume=True))
    assert out["updates"] == 4 and out["global_step"] == 4 * 64
    after = load_checkpoint(run)
    assert after["update"] == 4
    assert any(not torch.equal(before["policy"][k], after["policy"][k]) for k in before["policy"])
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["iterations"] for r in rows] == [1, 2, 3, 4]
    # loaded policy equals the saved weights
    policy, _, _ = load_policy(run)
    for k, v in policy.state_dict().items():
        assert torch.equal(v, after["policy"][k])


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    run = str(tmp_path / "run")
    cfg = small_cfg(core="lstm", run_dir=run, total_steps=64)
    train(cfg)
    data = open(os.path.join(run, "checkpoint.pt"), "rb").read()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="--hidden-size"):
        train(replace(cfg, hidden_size=16, resume=True))
    with pytest.raises(CheckpointError, match="--core"):
        train(replace(cfg, core="gru", resume=True))


def test_init_from_starts_from_the_checkpoint_weights(tmp_path):
    """--init-from: a new run (other env keywords, e.g. a longer corridor) starts from another run's weights, with a
    fresh optimizer and step count; a different network or different spaces are refused in one line."""
    src = str(tmp_path / "short")
    cfg = small_cfg(core="lstm", run_dir=src, head_hidden=4, head_activation="relu")
    train(cfg)
    saved = load_checkpoint(src)["policy"]
    longer = replace(cfg, env_kwargs='{"length": 5, "max_steps": 10}', init_from=src, learning_rate=1e-12,
                     run_dir=str(tmp_path / "long"))
    out = train(longer)
    assert out["updates"] == 2 and out["global_step"] == 2 * 64  # counted from 0, not continued
    after = load_checkpoint(tmp_path / "long")
    assert after["config"]["init_from"] == src
    for k, v in saved.items():  # learning rate 1e-12: the weights are still the source's (Adam moves them <= 1e-11)
        torch.testing.assert_close(after["policy"][k], v, atol=1e-9, rtol=0)
    fresh = train(replace(longer, init_from="", run_dir=str(tmp_path / "fresh")))
    assert fresh["updates"] == 2
    assert any(not torch.equal(load_checkpoint(tmp_path / "fresh")["policy"][k], v) for k, v in saved.items())
    with pytest.raises(CheckpointError, match="--head-activation is 'tanh'"):
        train(replace(longer, head_activation="tanh", run_dir=str(tmp_path / "b")))
    with pytest.raises(CheckpointError, match="--hidden-size"):
        train(replace(longer, hidden_size=16, run_dir=str(tmp_path / "c")))
    with pytest.raises(CheckpointError, match="does not fit this env's spaces"):
        train(replace(longer, env="MemoryCores/Copy-v0", env_kwargs="{}", run_dir=str(tmp_path / "d")))
    with pytest.raises(CheckpointError, match="not found"):
        train(replace(longer, init_from=str(tmp_path / "nope"), run_dir=str(tmp_path / "e")))


class NaNAfter(gym.Env):
    """Box obs, Discrete actions; rewards become NaN after ``n`` steps."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)
    count = 0

    def __init__(self, n: int = 100) -> None:
        self.n = n

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        NaNAfter.count += 1
        r = float("nan") if NaNAfter.count > self.n else 1.0
        return np.zeros(2, np.float32), r, False, NaNAfter.count % 5 == 0, {}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    NaNAfter.count = 0
    venv = gym.vector.SyncVectorEnv([lambda: NaNAfter(100)] * 4, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    run = str(tmp_path / "run")
    cfg = small_cfg(env="nan-env", core="lstm", run_dir=run, total_steps=64 * 5, checkpoint_every=1)
    with pytest.raises(TrainingStopped, match=r"non-finite.*kept the last good checkpoint .*update 1\)"):
        train(cfg, env=venv)
    assert load_checkpoint(run)["update"] == 1
    for v in load_checkpoint(run)["policy"].values():
        assert torch.isfinite(v).all()


def test_env_errors():
    with pytest.raises(EnvError, match="unknown env id"):
        TorchVecEnv("NoSuchEnv-v0", 2)
    with pytest.raises(EnvError, match="SAME_STEP"):
        TorchVecEnv(gym.make_vec("CartPole-v1", 2, vectorization_mode="sync"), 2)
    with pytest.raises(ValueError, match="seq-len"):
        small_cfg(seq_len=5).validate()
    with pytest.raises(ValueError, match="env-kwargs"):
        small_cfg(env_kwargs="{oops").validate()


# --------------------------------------------------------------------------------------------- scripts (one line)
def script(name: str):
    """``scripts/<name>.py`` imported as a module (its ``main(argv)`` runs in-process: fast)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "scripts/train.py", "--env", "NoSuchEnv-v0", "--run-dir", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: unknown env id") and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_scripts_report_user_errors(tmp_path, capsys):
    train_main, eval_main = script("train").main, script("evaluate").main
    assert eval_main([str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: checkpoint not found")
    assert train_main(["--env", "MemoryCores/TMaze-v0", "--seq-len", "7",
                       "--run-dir", str(tmp_path / "y"), "--no-progress"]) == 2
    assert "--seq-len 7 must divide" in capsys.readouterr().err


def test_train_and_evaluate_scripts(tmp_path, capsys):
    train_main, eval_main = script("train").main, script("evaluate").main
    run = str(tmp_path / "run")
    assert train_main(["--env", TMAZE, "--env-kwargs", '{"length": 2}', "--total-steps", "256", "--num-envs", "4",
                       "--num-steps", "32", "--seq-len", "16", "--hidden-size", "8", "--no-progress",
                       "--no-tensorboard", "--run-dir", run]) == 0
    cfg = load_checkpoint(run)["config"]
    assert json.loads(cfg["env_kwargs"]) == {"wrong_arm_reward": 0.0, "wall_reward": -0.01, "length": 2,
                                             "max_steps": 12}  # merged
    assert cfg["chrono_init"] == 128  # a task default
    capsys.readouterr()
    assert eval_main([run, "--episodes", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["deterministic"]) >= {"mean_return", "success_rate"} and res["stochastic"]["episodes"] == 5
    assert train_main(["--resume", "--run-dir", run, "--hidden-size", "16", "--no-progress"]) == 2
    assert "does not fit checkpoint" in capsys.readouterr().err
    # length generalisation sweep: the trained length and 2x, 4x, 8x; the knob really changes the env
    assert eval_main([run, "--episodes", "6", "--sweep", "--json", "--plot", str(tmp_path / "g.png")]) == 0
    res = json.loads(capsys.readouterr().out)
    sweep = res["sweep"]
    assert sweep["knob"] == "length" and sweep["train_value"] == 2
    assert [p["length"] for p in sweep["points"]] == [2, 4, 8, 16]
    assert sweep["points"][0]["deterministic"] == res["deterministic"]  # same env and seed as the plain evaluation
    for p in sweep["points"]:
        assert p["env_kwargs"]["length"] == p["length"] and "max_steps" not in p["env_kwargs"]
        # a T-maze episode lasts at least L + 1 steps (the walk to the junction) and at most the 4 (L + 1) limit
        assert p["length"] + 1 <= p["stochastic"]["mean_length"] <= 4 * (p["length"] + 1)
    assert os.path.getsize(tmp_path / "g.png") > 1000
    assert eval_main([run, "--episodes", "4", "--sweep-values", "3,5"]) == 0
    out = capsys.readouterr().out
    assert "| 3 | " in out and "| 5 | " in out and "| length | success det." in out
    assert eval_main([run, "--sweep-values", "0"]) == 2
    assert "sweep value length=0 is not valid" in capsys.readouterr().err
    assert eval_main([run, "--sweep", "--env", "CartPole-v1"]) == 2
    assert "has no length knob" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("core", ["lstm", "rl_access"])
def test_ppo_on_cuda(tmp_path, core):
    if core not in memory_cores.CORES:
        pytest.skip(f"{core} not registered")
    cfg = small_cfg(core=core, device="cuda", run_dir=str(tmp_path / "run"), core_kwargs=json.dumps(MEM_KW.get(core, {})))
    out = train(cfg)
    assert out["updates"] == 2 and np.isfinite(out["metrics"]["loss"])
