"""Memory cores as sb3-contrib RecurrentPPO policies (``agents/sb3.py``).

Small cores and short runs: the file runs in well under a minute on one CPU thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sb3_contrib")
gym = pytest.importorskip("gymnasium")

import envs  # noqa: E402,F401  (registers MemoryCores/*)
import memory_cores  # noqa: E402
from sb3_contrib import RecurrentPPO  # noqa: E402
from stable_baselines3.common.env_checker import check_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

import agents.sb3 as sb3  # noqa: E402

torch.set_num_threads(1)

from test_core_contract import SMALL  # noqa: E402  (small sizes of every core, one table for all tests)
NAMES = sorted(memory_cores.CORES)
NET = dict(pi=[16], vf=[16])


def tmaze(core: str, length: int = 3):
    return sb3.wrap_env_for_core(gym.make("MemoryCores/TMaze-v0", length=length), core, SMALL.get(core))


def make_model(core: str, env, **kw):
    kwargs = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0)
    kwargs.update(kw)
    policy_kwargs = dict(core=core, core_kwargs=SMALL.get(core, {}), net_arch=NET)
    policy_kwargs.update(kwargs.pop("policy_kwargs", {}))
    return RecurrentPPO("MemoryCorePolicy", env, policy_kwargs=policy_kwargs, **kwargs)


def params(model):
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


# ------------------------------------------------------------------------------------------------ training runs
# Smoke tests: learn() runs on every policy and its updates reach the core with finite results. They do not show
# learning; that PPO on a memory core learns is tested on the project's trainer
# (tests/test_ppo.py::test_ppo_learns_the_short_tmaze_with_an_lstm), whose objective is the adapter's.
@pytest.mark.parametrize("core", NAMES)
def test_learn_updates_the_core_on_project_task(core):
    model = make_model(core, tmaze(core))
    before = params(model)
    model.learn(256)
    after = model.policy.state_dict()
    assert model.num_timesteps >= 256
    core_keys = [k for k in before if k.startswith("lstm_actor.core.") and before[k].is_floating_point()]
    assert core_keys and any(not torch.equal(before[k], after[k]) for k in core_keys), "the core was not trained"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


@pytest.mark.parametrize("core", NAMES)
def test_learn_updates_the_core_on_minigrid_memory(core):
    pytest.importorskip("minigrid")
    env = gym.make("MemoryCores/MiniGridMemoryWrapped-v0", env_id="MiniGrid-MemoryS7-v0", view_size=3)
    env = sb3.wrap_env_for_core(env, core, SMALL.get(core))
    model = make_model(core, env)
    before = params(model)
    model.learn(256)
    after = model.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("lstm_actor.core."))
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------ buffer replay
@pytest.mark.parametrize("core", NAMES)
def test_buffer_replay_reproduces_rollout_log_probs(core):
    """States packed into RecurrentPPO's numpy buffers, sequences cut at episode starts and minibatch borders,
    replayed by evaluate_actions: the log-probabilities (joint with rl_access's access choices) and values of the
    rollout come back."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([lambda: tmaze(core, length=2)] * 2)
    model = make_model(core, venv, n_steps=24, batch_size=10)
    total, callback = model._setup_learn(48, None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    assert model.rollout_buffer.episode_starts[1:].any(), "the rollout should contain episode starts"
    model.policy.set_training_mode(True)
    n = 0
    with torch.no_grad():
        for batch in model.rollout_buffer.get(10):
            actions = batch.actions.long().flatten() if not core == "rl_access" else batch.actions
            values, log_prob, entropy = model.policy.evaluate_actions(
                batch.observations, actions, batch.lstm_states, batch.episode_starts
            )
            mask = batch.mask > 0.5
            torch.testing.assert_close(log_prob[mask], batch.old_log_prob[mask], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(values.flatten()[mask], batch.old_values[mask], atol=1e-5, rtol=1e-5)
            assert torch.isfinite(entropy[mask]).all()
            n += int(mask.sum())
    assert n == 48


# ---------------------------------------------------------------------------------------------- predict / reset
def _features(policy, obs):
    obs_t, _ = policy.obs_to_tensor(obs)
    return policy.extract_features(obs_t, policy.pi_features_extractor)


@pytest.mark.parametrize("core", NAMES)
def test_predict_state_round_trip(core):
    """predict() with the returned state, step by step, equals the core unrolled over the same observations."""
    env = tmaze(core)
    model = make_model(core, env)
    policy = model.policy
    obs_seq, state, start = [], None, np.array([True])
    obs, _ = env.reset(seed=1)
    for _ in range(5):
        obs_seq.append(obs)
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        start = np.array([False])
        obs, *_ = env.step(action)
    assert state[0].shape == (1, 1, policy.lstm_actor.hidden_size) and state[1].shape == state[0].shape
    with torch.no_grad():
        xs = _features(policy, np.stack(obs_seq)).unsqueeze(1)  # [T, 1, F]
        c = policy.core
        init = c.initial_state(1)
        if core == "rl_access":
            _, final, _ = c.unroll_with_choices(xs, init, greedy=True)
        else:
            _, final = c.unroll(xs, init)
        expected = c.pack_state(final)
    got = torch.cat([torch.as_tensor(state[0][0]), torch.as_tensor(state[1][0])], 1)[:, : c.state_size]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # a stored state resumes exactly
    a1, s1 = model.predict(obs, state=state, episode_start=start, deterministic=True)
    a2, s2 = model.predict(obs, state=tuple(x.copy() for x in state), episode_start=start, deterministic=True)
    assert np.array_equal(a1, a2) and all(np.array_equal(x, y) for x, y in zip(s1, s2))


def test_learned_initial_state_reset_at_episode_start():
    """A learned non-zero initial state: episode_start gives the core's initial state (not zeros), for predict and
    for the rollout/update path (forward, evaluate_actions)."""
    env = tmaze("lstm")
    model = make_model("lstm", env, policy_kwargs=dict(core_kwargs=dict(hidden_size=16, learn_initial_state=True)))
    policy = model.policy
    with torch.no_grad():
        policy.core.h0.value.fill_(0.7)
        policy.core.c0.value.fill_(-1.3)
    obs, _ = env.reset(seed=0)
    garbage = tuple(np.full((1, 1, policy.lstm_actor.hidden_size), 5.0, dtype=np.float32) for _ in range(2))
    zeros = tuple(np.zeros_like(g) for g in garbage)
    _, s_reset = model.predict(obs, state=garbage, episode_start=np.array([True]), deterministic=True)
    _, s_none = model.predict(obs, state=None, episode_start=np.array([False]), deterministic=True)
    _, s_zero = model.predict(obs, state=zeros, episode_start=np.array([False]), deterministic=True)
    assert all(np.array_equal(a, b) for a, b in zip(s_reset, s_none))
    assert not np.allclose(s_reset[0], s_zero[0]), "reset must give the learned initial state, not zeros"
    init_h, init_c = policy.lstm_actor.initial(1)
    assert torch.equal(init_h[0, 0, :16], torch.full((16,), 0.7))  # h0 packed first, then c0
    # rollout path: rows flagged as episode starts ignore the stored state
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    obs_t, _ = policy.obs_to_tensor(np.stack([obs, obs]))
    g = tuple(torch.full((1, 2, policy.lstm_actor.hidden_size), 5.0) for _ in range(2))
    i, iv = policy.lstm_actor.initial(2), policy.lstm_critic.initial(2)  # the critic core has its own init
    starts = torch.tensor([1.0, 1.0])
    with torch.no_grad():
        out_g = policy.evaluate_actions(obs_t, torch.tensor([0, 1]), RNNStates(g, g), starts)
        out_i = policy.evaluate_actions(obs_t, torch.tensor([0, 1]), RNNStates(i, iv), torch.zeros(2))
    for a, b in zip(out_g, out_i):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("core", NAMES)
def test_save_load_same_actions(core, tmp_path):
    env = tmaze(core)
    model = make_model(core, env)
    model.learn(64)
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip", env=env)
    assert type(loaded.policy) is type(model.policy) and loaded.policy.core_name == core

    def actions(m):
        out, state, start = [], None, np.array([True])
        obs, _ = env.reset(seed=3)
        for _ in range(12):
            a, state = m.predict(obs, state=state, episode_start=start, deterministic=True)
            obs, _, term, trunc, _ = env.step(a)
            start = np.array([term or trunc])
            if term or trunc:
                obs, _ = env.reset()
            out.append(np.asarray(a).copy())
        return np.stack(out), state

    a1, s1 = actions(model)
    a2, s2 = actions(loaded)
    assert np.array_equal(a1, a2)
    assert all(np.array_equal(x, y) for x, y in zip(s1, s2))


# ------------------------------------------------------------------------------------------------ rl_access
def test_rl_access_choices_get_ppo_gradient():
    """The access choices are scored in evaluate_actions: their logits get gradient from the PPO loss."""
    env = tmaze("rl_access")
    model = make_model("rl_access", env)
    core = model.policy.core
    P = core.num_choices
    total, callback = model._setup_learn(32, None)
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    choices = model.rollout_buffer.actions[..., -1]
    assert len(np.unique(choices)) > 1, "choices are sampled in the rollout"
    batch = next(model.rollout_buffer.get(32))
    model.policy.set_training_mode(True)
    _, log_prob, entropy = model.policy.evaluate_actions(
        batch.observations, batch.actions, batch.lstm_states, batch.episode_starts
    )
    ratio = torch.exp(log_prob - batch.old_log_prob)
    adv = (batch.advantages - batch.advantages.mean()) / (batch.advantages.std() + 1e-8)
    loss = -torch.min(adv * ratio, adv * ratio.clamp(0.8, 1.2)).mean() - 0.01 * entropy.mean()
    model.policy.optimizer.zero_grad()
    loss.backward()
    grad_z = core.interface.weight.grad[:P]  # rows of the choice logits z_t
    assert grad_z.abs().sum() > 0
    # these rows get no gradient through the core's output: only the choices' log-probabilities train them
    model.policy.optimizer.zero_grad()
    values, _, _ = model.policy.evaluate_actions(batch.observations, batch.actions, batch.lstm_states, batch.episode_starts)
    values.sum().backward()  # value loss alone: the shared core's output is detached for the critic
    assert core.interface.weight.grad is None or core.interface.weight.grad[:P].abs().sum() == 0


def test_rl_access_needs_the_choice_wrapper():
    with pytest.raises(ValueError, match="MemoryChoiceWrapper"):
        RecurrentPPO("RLAccessPolicy", gym.make("MemoryCores/TMaze-v0"), policy_kwargs=dict(core_kwargs=SMALL["rl_access"]))
    wrong = sb3.MemoryChoiceWrapper(gym.make("MemoryCores/TMaze-v0"), 3)  # default rl_access has 7 processes
    with pytest.raises(ValueError, match="7 values"):
        make_model("rl_access", wrong)
    with pytest.raises(ValueError, match="shared"):
        make_model("rl_access", tmaze("rl_access"), policy_kwargs=dict(enable_critic_lstm=True))


# ------------------------------------------------------------------------------------------------ SB3 API
def test_aliases_and_errors():
    for alias, core in [("NTMPolicy", "ntm"), ("DNCPolicy", "dnc"), ("AssociativeLSTMPolicy", "alstm"),
                        ("GRUPolicy", "gru"), ("LSTMPolicy", "lstm")]:
        assert alias in RecurrentPPO.policy_aliases
        model = RecurrentPPO(alias, tmaze(core), n_steps=8, batch_size=8,
                             policy_kwargs=dict(core_kwargs=SMALL[core], net_arch=NET))
        assert model.policy.core_name == core
        assert isinstance(model.policy.core, memory_cores.CORES[core])
    assert RecurrentPPO.policy_aliases["RLAccessPolicy"].default_core == "rl_access"
    with pytest.raises(ValueError, match="valid"):
        RecurrentPPO("MemoryCorePolicy", tmaze("lstm"), policy_kwargs=dict(core="tape"))


def test_sb3_api_tensorboard_progress_bar_eval_callback(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("rich")
    from stable_baselines3.common.callbacks import EvalCallback

    env = tmaze("gru")
    model = make_model("gru", env, tensorboard_log=str(tmp_path / "tb"))
    cb = EvalCallback(tmaze("gru"), n_eval_episodes=2, eval_freq=32, log_path=str(tmp_path / "eval"), verbose=0)
    model.learn(64, callback=cb, progress_bar=True)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").rglob("*"))
    assert (tmp_path / "eval" / "evaluations.npz").exists()
    mean, std = evaluate_policy(model, env, n_eval_episodes=3)
    assert np.isfinite(mean)
    # the learned-init contract also holds for evaluate_policy's use of predict (state=None, episode_start=1)
    rewards, lengths = evaluate_policy(model, env, n_eval_episodes=2, return_episode_rewards=True)
    assert len(rewards) == 2 and all(length >= 1 for length in lengths)


@pytest.mark.parametrize(
    "env_id,kwargs",
    [
        ("MemoryCores/Copy-v0", dict(max_length=5)),
        ("MemoryCores/RepeatCopy-v0", {}),
        ("MemoryCores/AssociativeRecall-v0", {}),
        ("MemoryCores/TMaze-v0", {}),
        ("MemoryCores/MemoryMaze-v0", {}),
        ("MemoryCores/MiniGridMemory-v0", {}),
        ("MemoryCores/MiniGridMemoryWrapped-v0", dict(view_size=3)),
    ],
)
def test_project_envs_pass_sb3_check_env(env_id, kwargs):
    if "Wrapped" in env_id:
        pytest.importorskip("minigrid")
    env = gym.make(env_id, **kwargs)
    check_env(env, warn=True, skip_render_check=True)
    if isinstance(env.action_space, gym.spaces.Discrete):  # and with the rl_access choice appended to the action
        check_env(sb3.MemoryChoiceWrapper(env, 3), warn=True, skip_render_check=True)


def test_buffer_bytes_per_step():
    for name in NAMES:
        S = memory_cores.make_core(name, 64).state_size
        assert sb3.buffer_bytes_per_step(name) == 16 * ((S + 1) // 2)


def test_rl_access_value_does_not_depend_on_the_choice():
    """The critic of a shared rl_access core reads h_t only (computed before the access choice a_t)."""
    env = tmaze("rl_access")
    model = make_model("rl_access", env)
    policy = model.policy
    obs_t, _ = policy.obs_to_tensor(np.stack([env.reset(seed=0)[0]] * 2))
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    hc = policy.lstm_actor.initial(2)
    starts = torch.ones(2)
    P = policy.core.num_choices
    with torch.no_grad():
        values = []
        for c in range(P):
            acts = torch.tensor([[0, c], [1, c]])
            v, _, _ = policy.evaluate_actions(obs_t, acts, RNNStates(hc, hc), starts)
            values.append(v)
    for v in values[1:]:
        assert torch.equal(v, values[0])
