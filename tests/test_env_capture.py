"""envs.capture.StaticStep: a batched env stepped with its state in fixed buffers (any device) equals the plain env
step for step (MemoryMaze too: its lockstep count moves to the device), keeps every state tensor at one address,
and refuses steps that cannot be replayed; on CUDA the CUDA-graph replay equals the eager env (counter-based tasks)
and reads nothing back to the host."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import envs  # noqa: F401  (registers the tasks)
from envs.base import BatchedEnv
from envs.capture import StaticStep

TASKS = {
    "MemoryCores/Copy-v0": {},
    "MemoryCores/RepeatCopy-v0": {"min_length": 1, "max_length": 4, "min_repeats": 1, "max_repeats": 3},
    "MemoryCores/AssociativeRecall-v0": {"min_items": 2, "max_items": 4},
    "MemoryCores/TMaze-v0": {"length": 4, "max_steps": 12},
    "MemoryCores/MemoryMaze-v0": {"maze_size": 7, "max_steps": 40},
    "MemoryCores/MiniGridMemory-v0": {"max_steps": 30},
}


def make(env_id: str, n: int = 16, device: str = "cpu") -> BatchedEnv:
    return gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", device=device,
                        **TASKS[env_id]).unwrapped


def actions_for(env: BatchedEnv, steps: int, seed: int = 0) -> list[torch.Tensor]:
    space = env.single_action_space
    g = torch.Generator().manual_seed(seed)
    shape = (steps, env.num_envs, *space.shape)
    if isinstance(space, gym.spaces.Discrete):
        a = torch.randint(0, int(space.n), shape, generator=g)
    elif isinstance(space, gym.spaces.MultiBinary):
        a = torch.rand(shape, generator=g) < 0.5
    else:
        a = torch.rand(shape, generator=g)
    return list(a.to(env.device))


def flat(out) -> list[torch.Tensor]:
    obs, reward, terminated, truncated, info = out
    return [obs, reward, terminated, truncated, info["_episode"], *[info["episode"][k] for k in sorted(info["episode"])]]


REPLAYABLE = list(TASKS)


def test_memory_maze_static_step_keeps_its_count_on_the_device():
    """MemoryMaze runs its episodes in lockstep; its plain step keeps a Python step counter (which picks each step's
    random bits and the episodes' end). In fixed buffers the count is a device tensor and the end is applied with
    torch.where: no Python attribute changes in a step (the plain env's would be refused) and episodes still end on
    the max_steps-th step."""
    s = StaticStep(make("MemoryCores/MemoryMaze-v0"))
    s.reset(seed=0)
    assert isinstance(s.env._t, torch.Tensor) and int(s.env._t) == 0
    ends = [bool(s.step(a)[3].all()) for a in actions_for(s.env, 80)]
    assert [t + 1 for t, e in enumerate(ends) if e] == [40, 80] and int(s.env._t) == 0
    plain = make("MemoryCores/MemoryMaze-v0")
    plain.reset(seed=0)
    before = plain._host_steps
    plain.step(actions_for(plain, 1)[0])
    assert plain._host_steps == before + 1  # what StaticStep would refuse, had prepare_static not moved it


@pytest.mark.parametrize("env_id", REPLAYABLE)
def test_fixed_buffers_equal_the_plain_env_and_keep_their_addresses(env_id):
    plain, static = make(env_id), StaticStep(make(env_id))
    p_obs, _ = plain.reset(seed=7)
    s_obs, _ = static.reset(seed=7)
    assert torch.equal(p_obs, s_obs)
    addresses = {k: [t.data_ptr() for t in (v if isinstance(v, (tuple, list)) else (v,))]
                 for k, v in static._state.items()}
    ended = 0
    for t, a in enumerate(actions_for(plain, 120)):
        if t == 60:  # a reset in the middle is written into the same buffers
            assert torch.equal(plain.reset(seed=3)[0], static.reset(seed=3)[0])
        p, s = flat(plain.step(a)), flat(static.step(a))
        assert all(torch.equal(x, y) for x, y in zip(p, s)), f"step {t} differs"
        ended += int(p[4].sum())
    assert ended > 0  # episodes ended (and rows were reset) inside the run
    for k, v in static._state.items():
        now = getattr(static.env, k)
        assert now is v, f"{k} was not bound back to its buffer"
        assert [t.data_ptr() for t in (now if isinstance(now, (tuple, list)) else (now,))] == addresses[k]


def test_a_step_that_changes_a_shape_or_a_python_attribute_is_refused():
    class Growing(type(make("MemoryCores/Copy-v0"))):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.extra = torch.zeros(self.num_envs)

        def _step(self, actions):
            self.extra = torch.zeros(self.extra.shape[0] + 1)  # the state grows: not replayable
            return super()._step(actions)

    env = Growing(num_envs=4)
    s = StaticStep(env)
    s.reset(seed=0)
    with pytest.raises(RuntimeError, match="shape, dtype or device of 'extra'"):
        s.step(actions_for(env, 1)[0])

    class Counting(type(make("MemoryCores/Copy-v0"))):
        calls = 0

        def _step(self, actions):
            self.calls = self.calls + 1  # a Python counter: a graph would replay its first value
            return super()._step(actions)

    env = Counting(num_envs=4)
    s = StaticStep(env)
    s.reset(seed=0)
    with pytest.raises(RuntimeError, match="Python attribute 'calls'"):
        s.step(actions_for(env, 1)[0])


def test_graph_needs_cuda_and_a_batched_env():
    with pytest.raises(ValueError, match="needs a CUDA env"):
        StaticStep(make("MemoryCores/Copy-v0"), graph=True)
    with pytest.raises(TypeError, match="BatchedEnv"):
        StaticStep(object())


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("env_id", [e for e in REPLAYABLE if e != "MemoryCores/TMaze-v0"])
def test_cuda_graph_replay_equals_the_eager_env(env_id):
    plain, graphed = make(env_id, 256, "cuda"), StaticStep(make(env_id, 256, "cuda"), graph=True)
    assert torch.equal(plain.reset(seed=5)[0], graphed.reset(seed=5)[0])
    for t, a in enumerate(actions_for(plain, 200)):
        p, s = flat(plain.step(a)), flat(graphed.step(a))
        assert all(torch.equal(x, y) for x, y in zip(p, s)), f"step {t} differs"
    assert graphed._cuda_graph is not None


@pytest.mark.cuda
@cuda
def test_cuda_graph_tmaze_draws_new_cues_and_syncs_nothing():
    env = StaticStep(make("MemoryCores/TMaze-v0", 4096, "cuda"), graph=True)
    env.reset(seed=1)
    acts = actions_for(env.env, 64)
    env.step(acts[0])  # capture
    cues, ends = [], 0
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for a in acts[1:]:
            out = env.step(a)
            ends = ends + out[4]["_episode"].sum()
            cues.append(env.env.cue.clone())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    cue = torch.stack(cues).float()
    assert int(ends) > 1000  # random walks in a corridor of 4 with 12-step episodes end often
    assert 0.45 < float(cue.mean()) < 0.55 and not torch.equal(cues[0], cues[-1])
