"""Memory cores as Tianshou recurrent actor/critic networks (``agents/tianshou.py``), and what Tianshou feeds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tianshou")
gym = pytest.importorskip("gymnasium")

import envs  # noqa: E402,F401
import memory_cores  # noqa: E402
from agents.tianshou import CoreActor, CoreCritic, CoreNet, make_ppo  # noqa: E402

torch.set_num_threads(1)

from test_core_contract import SMALL  # noqa: E402  (small sizes of every core, one table for all tests)


def test_state_in_and_out_equals_unroll():
    env = gym.make("MemoryCores/TMaze-v0", length=3)
    torch.manual_seed(0)
    net = CoreActor(env.observation_space, 4, core="ntm", core_kwargs=SMALL["ntm"], embed_size=8)
    obs = torch.rand(2, 5, 3)  # [B, L, obs]
    with torch.no_grad():
        out_window, s_window = net(obs)  # window from the initial state
        state = None
        for t in range(5):
            out_t, state = net(obs[:, t], state)
    torch.testing.assert_close(out_t, out_window)
    torch.testing.assert_close(state["packed"], s_window["packed"])
    assert state["packed"].shape == (2, net.core.state_size)


def test_zeroed_rows_restart_from_the_learned_initial_state():
    env = gym.make("MemoryCores/TMaze-v0", length=3)
    net = CoreActor(env.observation_space, 4, core="lstm", core_kwargs=dict(hidden_size=8, learn_initial_state=True))
    with torch.no_grad():
        net.core.h0.value.fill_(0.5)
    obs = torch.rand(2, 3)
    with torch.no_grad():
        _, s = net(obs)
        s = {"packed": s["packed"].clone(), "live": s["live"].clone()}
        s["packed"][0] = 0.0  # what Tianshou's Collector does at an episode end: Batch.empty_ -> zeros
        s["live"][0] = 0.0
        out, _ = net(obs, s)
        fresh, _ = net(obs)
    torch.testing.assert_close(out[0], fresh[0])  # the row restarted from h0 = 0.5, not from zeros
    assert not torch.allclose(out[1], fresh[1])


@pytest.mark.parametrize("core", sorted(memory_cores.CORES))
def test_ppo_runs_a_few_updates(core):
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.env import DummyVectorEnv
    from tianshou.trainer import OnPolicyTrainerParams

    torch.manual_seed(0)

    def make():
        return gym.make("MemoryCores/TMaze-v0", length=3)

    env = make()
    kw = dict(core=core, core_kwargs=SMALL[core], embed_size=8)
    actor = CoreActor(env.observation_space, int(env.action_space.n), **kw)
    critic = CoreCritic(env.observation_space, **kw)
    algorithm = make_ppo(actor, critic, env.action_space, lr=1e-3)
    seen = []  # (obs shape, state given?) of every actor call
    orig = actor.forward

    def spy(obs, state=None, info=None):
        seen.append((tuple(np.shape(obs)), state is not None))
        return orig(obs, state, info)

    actor.forward = spy
    before = [p.detach().clone() for p in actor.parameters()]
    train_envs = DummyVectorEnv([make, make])
    buffer = VectorReplayBuffer(64, 2, stack_num=4)
    collector = Collector(algorithm, train_envs, buffer)
    collector.reset()
    result = algorithm.run_training(
        OnPolicyTrainerParams(
            training_collector=collector, max_epochs=1, epoch_num_steps=64, collection_step_num_env_steps=32,
            update_step_num_repetitions=1, batch_size=32, test_collector=None, verbose=False, show_progress=False,
        )
    )
    assert result.update_step >= 2
    assert any(not torch.equal(a, b) for a, b in zip(before, actor.parameters()))
    # collection: one step [B, 3] with the carried state; training: windows [N, stack_num, 3] with state None
    assert any(shape == (2, 3) and given for shape, given in seen)
    assert any(len(shape) == 3 and shape[1] == 4 and not given for shape, given in seen)
    assert not any(len(shape) == 3 and given for shape, given in seen)


def test_script_runs(capsys):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import train_tianshou

    out = train_tianshou.main(["--epochs", "1", "--epoch-steps", "64", "--collect-steps", "32", "--num-envs", "2",
                               "--test-episodes", "2", "--stack-num", "2", "--core", "gru",
                               "--core-kwargs", json.dumps(SMALL["gru"]), "--quiet"])
    assert out["core"] == "gru" and out["env_steps"] >= 64 and np.isfinite(out["test_return_mean"])


def test_errors():
    env = gym.make("MemoryCores/TMaze-v0")
    with pytest.raises(ValueError, match="valid"):
        CoreNet(env.observation_space, 4, core="tape")
    with pytest.raises(ValueError, match="Discrete"):
        make_ppo(CoreActor(env.observation_space, 4), CoreCritic(env.observation_space), gym.spaces.Box(-1, 1, (2,)))
