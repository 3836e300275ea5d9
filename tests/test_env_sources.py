"""Any Gymnasium env: ``module:EnvId`` ids, ``--env-factory`` factories, env instances with wrappers; evaluation of
what was trained on them; the generic defaults (reward scaling) for envs without a preset.

``tests/tiny_env_pkg`` is a third-party env package the project never imports: only Gymnasium's ``module:EnvId``
form (or ``--env-factory``) brings it in, with ``PYTHONPATH=tests``, in subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from agents.env_adapter import EnvError, TorchVecEnv, load_env_factory, split_env_id
from agents.evaluation import evaluate_policy, load_policy
from agents.ppo import RewardScaler, TrainConfig
from agents.presets import env_kwargs_for, preset_key, task_defaults
from agents.runner import train

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
TINY_ID = "tiny_env_pkg:TinyCue-v0"
TINY_FACTORY = "tiny_env_pkg:make_one_hot"
TINY = dict(num_envs=8, num_steps=12, seq_len=12, num_minibatches=1, update_epochs=1, embed_size=16, hidden_size=16,
            checkpoint_every=1)


def run_script(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(ROOT))


def cli_args(**kw) -> list[str]:
    out = []
    for k, v in kw.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


@pytest.fixture
def tiny_on_path(monkeypatch):
    """``tests/`` on sys.path (as PYTHONPATH=tests does for the scripts) for in-process tests."""
    monkeypatch.syspath_prepend(str(TESTS))
    yield


# --------------------------------------------------------------------------------------------- ids and factories
def test_split_env_id():
    assert split_env_id("tiny_env_pkg:TinyCue-v0") == ("tiny_env_pkg", "TinyCue-v0")
    assert split_env_id("a.b:MemoryCores/Copy-v0") == ("a.b", "MemoryCores/Copy-v0")
    assert split_env_id("CartPole-v1") == (None, "CartPole-v1")


def test_unknown_module_and_id_are_one_line_errors():
    with pytest.raises(EnvError, match="cannot import module 'no_such_module_xyz'"):
        TorchVecEnv("no_such_module_xyz:Foo-v0", 2)
    with pytest.raises(EnvError, match="unknown env id 'NoSuchEnv-v0' after importing 'gymnasium'"):
        TorchVecEnv("gymnasium:NoSuchEnv-v0", 2)
    for bad in ("nocolon", "os:", ":f", "os:no_such_function"):
        with pytest.raises(EnvError):
            load_env_factory(bad)
    with pytest.raises(EnvError, match="must return one gymnasium.Env"):
        TorchVecEnv(lambda **kw: gym.make_vec("CartPole-v1", 2), 2)


def test_presets_apply_to_module_ids():
    assert preset_key("envs:MemoryCores/TMaze-v0") == "MemoryCores/TMaze-v0"
    assert task_defaults("envs:MemoryCores/TMaze-v0") == task_defaults("MemoryCores/TMaze-v0") != {}
    assert env_kwargs_for("envs:MemoryCores/TMaze-v0", {"length": 20})["max_steps"] == 400  # derived keyword too
    # an env without a preset gets TrainConfig's generic defaults, which scale rewards
    assert preset_key("CartPole-v1") is None and task_defaults(TINY_ID) == {}
    assert TrainConfig().norm_reward is True
    assert all(d.get("norm_reward") is False for d in (task_defaults("MemoryCores/Copy-v0"),
                                                       task_defaults("MiniGrid-MemoryS7-v0")))


def test_module_id_trains_evaluates_and_resumes(tmp_path):
    run = tmp_path / "run"
    common = ["--env", TINY_ID, "--env-kwargs", '{"delay": 1}', "--core", "lstm", "--run-dir", str(run),
              "--no-progress", "--no-tensorboard", *cli_args(**TINY)]
    p = run_script("train.py", *common, "--total-steps", str(2 * 8 * 12))
    assert p.returncode == 0, p.stderr
    policy, cfg, ck = load_policy(run)
    assert cfg.env == TINY_ID and cfg.env_kwargs_dict() == {"delay": 1} and ck["global_step"] == 2 * 96
    assert "tiny_env_pkg" not in sys.modules  # the project (and this test process) never imported it
    # evaluate rebuilds the env from the id stored in the checkpoint (the module is imported by the id)
    p = run_script("evaluate.py", str(run), "--episodes", "20", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["env"] == TINY_ID and res["env_kwargs"] == {"delay": 1}
    for mode in ("deterministic", "stochastic"):
        assert res[mode]["episodes"] == 20 and 0.0 <= res[mode]["success_rate"] <= 1.0
        assert res[mode]["mean_length"] == 2.0  # delay 1: episodes of 2 steps
    # --resume rebuilds the same env and continues
    p = run_script("train.py", *common, "--total-steps", str(4 * 8 * 12), "--resume")
    assert p.returncode == 0, p.stderr
    assert load_policy(run)[2]["global_step"] == 4 * 96


def test_env_factory_trains_and_evaluates_with_its_wrappers(tmp_path):
    run = tmp_path / "run"
    p = run_script("train.py", "--env-factory", TINY_FACTORY, "--core", "gru", "--run-dir", str(run), "--no-progress",
                   "--no-tensorboard", "--total-steps", str(8 * 12), *cli_args(**TINY))
    assert p.returncode == 0, p.stderr
    policy, cfg, _ = load_policy(run)
    assert cfg.env_factory == TINY_FACTORY
    assert str(policy.observation_space) == "Box(0.0, 1.0, (3,), float32)"  # the wrapper's space, not Discrete(3)
    p = run_script("evaluate.py", str(run), "--episodes", "8", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["deterministic"]["episodes"] == 8
    # the bare id has the unwrapped spaces: refused with one line that says what to do
    p = run_script("evaluate.py", str(run), "--env", TINY_ID, "--episodes", "4")
    assert p.returncode == 2 and "--env-factory" in p.stderr and "Traceback" not in p.stderr


def test_python_api_env_instance_with_wrappers(tmp_path, tiny_on_path):
    import tiny_env_pkg

    def make_venv(n: int) -> gym.vector.VectorEnv:
        return gym.vector.SyncVectorEnv([lambda: tiny_env_pkg.make_one_hot(delay=2)] * n,
                                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    cfg = TrainConfig(env="tiny-onehot", core="lstm", total_steps=2 * 8 * 12, run_dir=str(tmp_path / "run"),
                      progress=False, tensorboard=False, **TINY)
    train(cfg, env=make_venv(8))
    # the policy comes back from the checkpoint alone, although no env id or factory can rebuild the env
    policy, cfg2, _ = load_policy(tmp_path / "run")
    assert cfg2.env == "tiny-onehot" and not cfg2.env_factory
    # evaluation on an instance: each of its 3 envs plays ceil(10 / 3) = 4 episodes of 3 steps
    venv = make_venv(3)
    res = evaluate_policy(policy, venv, episodes=10, deterministic=True)
    assert res["episodes"] == 12 and res["mean_length"] == 3.0 and 0 <= res["success_rate"] <= 1
    venv.close()
    # on a factory: one first episode per copy
    res = evaluate_policy(policy, tiny_env_pkg.make_one_hot, episodes=5, env_kwargs={"delay": 2})
    assert res["episodes"] == 5 and res["mean_length"] == 3.0
    with pytest.raises(EnvError, match="spaces"):
        evaluate_policy(policy, "tiny_env_pkg:TinyCue-v0", episodes=2)


def test_evaluation_counts_each_episode_once_per_env(tiny_on_path):
    """On a VectorEnv instance the returns are exact means over n * k episodes (a policy that always says 0)."""
    import tiny_env_pkg

    from agents.policy import ActorCritic

    venv = gym.vector.SyncVectorEnv([lambda: tiny_env_pkg.TinyCueEnv(delay=0)] * 4,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    policy = ActorCritic(venv.single_observation_space, venv.single_action_space, core="none", embed_size=8)
    with torch.no_grad():  # always action 0: success iff the cue is 1
        policy.actor_head.linear.weight.zero_()
        policy.actor_head.linear.bias.copy_(torch.tensor([5.0, -5.0]))
    res = evaluate_policy(policy, venv, episodes=400, deterministic=True, seed=0)
    assert res["episodes"] == 400 and res["mean_length"] == 1.0
    assert 0.4 < res["success_rate"] < 0.6 and res["mean_return"] == pytest.approx(res["success_rate"])


# ------------------------------------------------------------------------------------------------ reward scaling
def test_reward_scaler_is_invariant_to_the_reward_scale():
    torch.manual_seed(0)
    T, N = 300, 16
    rewards = torch.rand(T, N) * (torch.rand(T, N) < 0.3)
    done = torch.rand(T, N) < 0.05
    outs = []
    for scale in (1.0, 100.0):
        s = RewardScaler(N, gamma=0.99, device=torch.device("cpu"))
        outs.append(torch.stack([s(scale * rewards[t], done[t]) for t in range(T)]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    # sigma^2 is the variance of the discounted returns R_t = gamma R_{t-1} + r_t seen over all envs and steps
    s, R, Rs = RewardScaler(N, gamma=0.99, device=torch.device("cpu")), torch.zeros(N), []
    for t in range(T):
        R = 0.99 * R + rewards[t]
        Rs.append(R)
        s(rewards[t], done[t])
        R = torch.where(done[t], torch.zeros_like(R), R)
    assert float(s.var) == pytest.approx(float(torch.stack(Rs).var(unbiased=False)), rel=1e-3)


def test_reward_scaler_state_survives_resume(tmp_path):
    cfg = TrainConfig(env="CartPole-v1", core="none", total_steps=2 * 8 * 12, run_dir=str(tmp_path / "run"),
                      progress=False, tensorboard=False, norm_reward=True, **TINY)
    train(cfg)
    from agents.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "run")["ppo_state"]["reward_scaler"]
    assert float(state["count"]) > 100 and float(state["var"]) > 0
    s = RewardScaler(8, 0.99, torch.device("cpu"))
    s.load_state_dict(state)
    assert float(s.var) == float(state["var"]) and torch.equal(s.ret, state["ret"])


def test_minigrid_policy_from_its_checkpoint_evaluates_on_minigrid(tmp_path):
    """MiniGrid's observation holds a mission space (stored as Text, printed with a function address): the
    policy rebuilt from the checkpoint still fits MiniGrid's own env."""
    pytest.importorskip("minigrid")
    cfg = TrainConfig(env="MiniGrid-Empty-5x5-v0", core="gru", total_steps=4 * 16, run_dir=str(tmp_path / "run"),
                      progress=False, tensorboard=False, num_envs=4, num_steps=16, seq_len=16, num_minibatches=1,
                      update_epochs=1, embed_size=16, hidden_size=16)
    train(cfg)
    policy, cfg2, _ = load_policy(tmp_path / "run")
    res = evaluate_policy(policy, cfg2.env, episodes=2, deterministic=False)
    assert res["episodes"] == 2 and res["mean_length"] > 0
