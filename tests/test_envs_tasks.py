"""Tests of the batched memory tasks (Copy, RepeatCopy, AssociativeRecall, TMaze) and their single envs.

Every batched row is checked step by step against an independent implementation of the task's rules written from
the task's description (the checkers below): the checker reads the episode from the observations alone, predicts
each reward, termination and episode statistic, and can act as the scripted policy that remembers what it saw.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registration)
import gymnasium as gym
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from envs.base import BatchedEnv, NumpyVectorEnv

torch.set_num_threads(1)

TASKS = ["Copy", "RepeatCopy", "AssociativeRecall", "TMaze"]
# small, fast configurations used by most tests (the defaults are checked by check_env and the shape tests)
SMALL = {
    "Copy": dict(width=4, min_length=1, max_length=5),
    "RepeatCopy": dict(width=3, min_length=1, max_length=3, min_repeats=1, max_repeats=3),
    "AssociativeRecall": dict(width=4, item_size=2, min_items=2, max_items=4),
    "TMaze": dict(length=3, max_steps=12),
}


def make_vec(task: str, n: int, **opts) -> BatchedEnv:
    return gym.make_vec(f"MemoryCores/{task}-v0", num_envs=n, vectorization_mode="vector_entry_point", **opts)


# ------------------------------------------------------------------------------------------------------------------
# independent checkers: the rules, read from the observations
# ------------------------------------------------------------------------------------------------------------------


class CopyChecker:
    """Copy / RepeatCopy: bits + delimiter (+ normalised repeat count); answer = the sequence R times (+ end)."""

    def __init__(self, env):
        u = env.unwrapped
        self.W = u.width
        self.repeat = u._count_channel
        self.end = u.end_marker
        self.mean, self.std = u._count_mean, u._count_std
        self.min_r, self.max_r = u.min_repeats, u.max_repeats
        self.min_l, self.max_l = u.min_length, u.max_length

    def start(self, obs):
        self.seq, self.targets, self.k, self.ret, self.errors, self.len = [], None, None, 0.0, 0, 0
        self.feed(obs)

    def feed(self, obs):
        W = self.W
        bits, delim = obs[:W], obs[W]
        if self.targets is None:  # presentation
            assert delim in (0.0, 1.0)
            if delim == 1.0:
                assert not bits.any()
                L = len(self.seq)
                assert self.min_l <= L <= self.max_l
                R = 1
                if self.repeat:
                    r = obs[W + 1] * self.std + self.mean
                    R = int(round(r))
                    assert abs(r - R) < 1e-4 and self.min_r <= R <= self.max_r
                self.L, self.R = L, R
                tail = [0] if self.end else []
                self.targets = [list(self.seq[j % L]) + tail for j in range(R * L)]
                if self.end:
                    self.targets.append([0] * W + [1])
                self.k = -1  # the delimiter step is not an answer step
            else:
                if self.repeat:
                    assert obs[W + 1] == 0.0
                assert set(np.unique(bits)) <= {0.0, 1.0}
                self.seq.append(bits.astype(int))
        else:
            assert not obs.any(), "observations must be zero during the answer"
            self.k += 1

    def answering(self):
        return self.targets is not None and self.k >= 0

    def oracle(self, act_dim):
        return np.array(self.targets[self.k], dtype=bool) if self.answering() else np.zeros(act_dim, bool)

    def expect(self, action):
        """Expected (reward, terminated, truncated) for ``action`` at the current step; advances the length."""
        self.len += 1
        if not self.answering():
            return 0.0, False, False
        target = np.array(self.targets[self.k])
        wrong = int((action.astype(int) != target).sum())
        self.errors += wrong
        r = 1.0 - wrong / len(target)
        self.ret += r
        return r, self.k == len(self.targets) - 1, False

    def max_return(self):
        return float(len(self.targets))

    def stats(self):
        return {"bit_errors": self.errors, "success": self.errors == 0}


class RecallChecker:
    """AssociativeRecall: item delimiter, items of S vectors, query delimiter, query item, query delimiter, answer."""

    def __init__(self, env):
        u = env.unwrapped
        self.W, self.S, self.min_k, self.max_k = u.width, u.item_size, u.min_items, u.max_items

    def start(self, obs):
        self.items, self.query, self.phase, self.candidates, self.k = [], None, "items", None, None
        self.ambiguous = False
        self.ret, self.errors, self.len = 0.0, 0, 0
        self.feed(obs)

    def feed(self, obs):
        W = self.W
        bits, item_d, query_d = obs[:W].astype(int), obs[W], obs[W + 1]
        if self.phase == "items":
            if item_d == 1:
                assert not bits.any() and query_d == 0
                assert not self.items or len(self.items[-1]) == self.S
                self.items.append([])
            elif query_d == 1:
                assert not bits.any() and len(self.items[-1]) == self.S
                assert self.min_k <= len(self.items) <= self.max_k
                self.phase, self.query = "query", []
            else:
                assert self.items, "the episode must start with an item delimiter"
                self.items[-1].append(bits)
                assert len(self.items[-1]) <= self.S
        elif self.phase == "query":
            if query_d == 1:
                assert not bits.any() and item_d == 0 and len(self.query) == self.S
                matches = [i for i, it in enumerate(self.items) if all((a == b).all() for a, b in zip(it, self.query))]
                matches = [i for i in matches if i <= len(self.items) - 2]
                assert matches, "the query is one of the first K - 1 items"
                # random items can coincide; then every item that follows a copy of the query is a valid answer
                # until the rewards tell them apart
                self.candidates = [self.items[i + 1] for i in matches]
                self.ambiguous = len(self.candidates) > 1
                self.phase, self.k = "answer", -1
            else:
                assert item_d == 0
                self.query.append(bits)
        else:
            assert not obs.any()
            self.k += 1

    def answering(self):
        return self.phase == "answer" and self.k >= 0

    def oracle(self, act_dim):
        return self.candidates[0][self.k].astype(bool) if self.answering() else np.zeros(act_dim, bool)

    def expect(self, action):
        self.len += 1
        if not self.answering():
            return 0.0, False, False
        rewards = [1.0 - int((action.astype(int) != c[self.k]).sum()) / self.W for c in self.candidates]
        return (rewards if self.ambiguous else rewards[0]), self.k == self.S - 1, False

    def observed(self, reward):
        """Keep the candidate answers that pay ``reward``; count the errors."""
        if self.answering():
            action_ok = [c for c in self.candidates
                         if abs(1.0 - int((self._last_action != c[self.k]).sum()) / self.W - reward) < 1e-6]
            assert action_ok
            self.candidates = action_ok
            self.errors += int(round((1.0 - reward) * self.W))
            self.ret += reward

    def max_return(self):
        return float(self.S)

    def stats(self):
        return {"bit_errors": self.errors, "success": self.errors == 0}


class TMazeChecker:
    """Bakker's T-maze: tracks the position from the actions; the cue is read from the first observation."""

    OBS = {"north": (0, 1, 1), "south": (1, 1, 0), "corridor": (1, 0, 1), "junction": (0, 1, 0)}

    def __init__(self, env):
        u = env.unwrapped
        self.L, self.max_steps = u.length, u.max_steps
        self.rc, self.rw, self.rwall = u.correct_reward, u.wrong_arm_reward, u.wall_reward

    def start(self, obs):
        self.x, self.len, self.ret, self.success = 0, 0, 0.0, False
        o = tuple(int(v) for v in obs)
        assert o in (self.OBS["north"], self.OBS["south"])
        self.cue = "north" if o == self.OBS["north"] else "south"

    def feed(self, obs):
        want = self.OBS[self.cue] if self.x == 0 else self.OBS["junction" if self.x == self.L else "corridor"]
        assert tuple(int(v) for v in obs) == want

    def oracle(self, act_dim=None):
        if self.x < self.L:
            return 1
        return 0 if self.cue == "north" else 2

    def expect(self, action):
        a = int(action)
        self.len += 1
        if self.x == self.L and a in (0, 2):
            self.success = (a == 0) == (self.cue == "north")
            r = self.rc if self.success else self.rw
            self.ret += r
            return r, True, False
        nx = min(max(self.x + {0: 0, 1: 1, 2: 0, 3: -1}[a], 0), self.L)
        r = self.rwall if nx == self.x else 0.0
        self.x = nx
        self.ret += r
        return r, False, self.len >= self.max_steps

    def max_return(self):
        return self.rc

    def stats(self):
        return {"success": self.success}


CHECKERS = {"Copy": CopyChecker, "RepeatCopy": CopyChecker, "AssociativeRecall": RecallChecker, "TMaze": TMazeChecker}


def random_actions(env, gen: torch.Generator) -> torch.Tensor:
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (env.num_envs,), generator=gen)
    return torch.randint(0, 2, (env.num_envs, *space.shape), generator=gen).bool()


def to_cpu(x):
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, dict):
        return {k: to_cpu(v) for k, v in x.items()}
    return type(x)(to_cpu(v) for v in x)


def run_checked(task: str, n: int, steps: int, policy: str, seed: int = 0, small: bool = True, **opts) -> list[dict]:
    """Step a batched env, checking every row against its checker; returns the finished episodes' records."""
    env = make_vec(task, n, **{**(SMALL[task] if small else {}), **opts})
    obs, info = env.reset(seed=seed)
    obs = obs.cpu()
    assert info == {}
    checkers = [CHECKERS[task](env) for _ in range(n)]
    for c, o in zip(checkers, obs.numpy()):
        c.start(o)
    gen = torch.Generator().manual_seed(seed + 1)
    act_dim = env.single_action_space.shape[0] if env.single_action_space.shape else None
    episodes = []
    for _ in range(steps):
        if policy == "oracle":
            a = torch.as_tensor(np.stack([np.asarray(c.oracle(act_dim)) for c in checkers]))
        else:
            a = random_actions(env, gen)
        obs, reward, term, trunc, info = to_cpu(env.step(a))
        assert obs.dtype == torch.float32 and reward.dtype == torch.float32
        assert term.dtype == torch.bool and trunc.dtype == torch.bool
        assert torch.equal(info["_episode"], term | trunc)
        for i, c in enumerate(checkers):
            c._last_action = a[i].numpy().astype(int)
            r, t, tr = c.expect(a[i].numpy())
            if isinstance(r, list):  # an ambiguous AssociativeRecall episode
                assert any(reward[i].item() == pytest.approx(x, abs=1e-6) for x in r)
            else:
                assert reward[i].item() == pytest.approx(r, abs=1e-6), (i, c.len)
            if hasattr(c, "observed"):
                c.observed(reward[i].item())
            assert bool(term[i]) == t and bool(trunc[i]) == tr, (i, c.len)
            if t or tr:
                ep = {k: v[i].item() for k, v in info["episode"].items()}
                assert ep["r"] == pytest.approx(c.ret, abs=1e-4) and ep["l"] == c.len
                for k, v in c.stats().items():
                    assert ep[k] == v, (k, ep[k], v)
                episodes.append({**ep, "max": c.max_return(), "ambiguous": getattr(c, "ambiguous", False)})
                c.start(obs[i].numpy())  # SAME_STEP: the returned obs is the next episode's first
            else:
                c.feed(obs[i].numpy())
    return episodes


# ------------------------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_check_env_single(task):
    check_env(gym.make(f"MemoryCores/{task}-v0").unwrapped)
    check_env(gym.make(f"MemoryCores/{task}-v0", **SMALL[task]).unwrapped)


@pytest.mark.parametrize("task", TASKS)
def test_batched_interface(task):
    env = make_vec(task, 5)
    assert isinstance(env, gym.vector.VectorEnv) and isinstance(env.unwrapped, BatchedEnv)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = env.reset(seed=3)
    assert obs.shape == (5, *env.single_observation_space.shape) and obs.dtype == torch.float32
    assert env.observation_space.contains(obs.numpy())
    obs, r, term, trunc, info = env.step(random_actions(env, torch.Generator().manual_seed(0)))
    assert r.shape == term.shape == trunc.shape == (5,)
    assert set(info) == {"episode", "_episode"}
    assert {"r", "l", "success"} <= set(info["episode"]) and all(v.shape == (5,) for v in info["episode"].values())


@pytest.mark.parametrize("task", TASKS)
def test_rows_follow_the_rules_random_policy(task):
    eps = run_checked(task, n=12, steps=150, policy="random")
    assert len(eps) >= 12
    frac = np.mean([e["r"] / e["max"] for e in eps])
    succ = np.mean([e["success"] for e in eps])
    # a memoryless random policy is far from the maximum
    assert frac < 0.8 and succ < 0.6, (frac, succ)


@pytest.mark.parametrize("task", TASKS)
def test_scripted_memory_policy_gets_max_return(task):
    eps = run_checked(task, n=12, steps=120, policy="oracle", seed=5)
    assert len(eps) >= 12
    for e in eps:
        if e["ambiguous"]:  # AssociativeRecall with two identical items: the oracle may guess wrong
            continue
        assert e["r"] == pytest.approx(e["max"], abs=1e-5) and e["success"]
        if "bit_errors" in e:
            assert e["bit_errors"] == 0


@pytest.mark.parametrize("task", ["Copy", "RepeatCopy", "AssociativeRecall"])
def test_default_config_rules(task):
    """The paper's formats (default options) pass the checker too."""
    eps = run_checked(task, n=4, steps=120, policy="oracle", seed=9, small=False)
    assert eps and all(e["success"] for e in eps)
    eps = run_checked(task, n=4, steps=100, policy="random", seed=9, small=False)
    assert eps and not any(e["success"] for e in eps)


def test_default_options_are_the_papers():
    c = make_vec("Copy", 1).unwrapped
    assert (c.width, c.min_length, c.max_length) == (8, 1, 20) and c.single_observation_space.shape == (9,)
    rc = make_vec("RepeatCopy", 1).unwrapped
    assert (rc.width, rc.min_length, rc.max_length, rc.min_repeats, rc.max_repeats) == (8, 1, 10, 1, 10)
    assert rc.single_observation_space.shape == (10,) and rc.single_action_space.shape == (9,)
    ar = make_vec("AssociativeRecall", 1).unwrapped
    assert (ar.width, ar.item_size, ar.min_items, ar.max_items) == (6, 3, 2, 6)


def test_lengths_cover_the_range():
    env = make_vec("Copy", 64, width=2, min_length=2, max_length=5)
    obs, _ = env.reset(seed=1)
    seen = set()
    zeros = torch.zeros(64, 2, dtype=torch.bool)
    for _ in range(40):
        obs, r, term, trunc, info = env.step(zeros)
        seen |= set(((info["episode"]["l"][term] - 1) // 2).tolist())
    assert seen == {2, 3, 4, 5}


@pytest.mark.parametrize("task", TASKS)
def test_single_env_matches_one_row_batched_env(task):
    single = gym.make(f"MemoryCores/{task}-v0", **SMALL[task])
    batched = make_vec(task, 1, **SMALL[task])
    o1, _ = single.reset(seed=11)
    o2, _ = batched.reset(seed=11)
    np.testing.assert_array_equal(o1, o2[0].numpy())
    gen = torch.Generator().manual_seed(0)
    episodes = 0
    for _ in range(60):
        a = random_actions(batched, gen)
        o1, r1, t1, tr1, i1 = single.step(a[0].numpy())
        o2, r2, t2, tr2, i2 = batched.step(a)
        assert r1 == r2[0].item() and t1 == bool(t2[0]) and tr1 == bool(tr2[0])
        if t1 or tr1:
            episodes += 1
            assert i1["success"] == bool(i2["episode"]["success"][0])
            o1, _ = single.reset()  # the single env continues with the row's next episode
        else:
            assert i1 == {}
        np.testing.assert_array_equal(o1, o2[0].numpy())
    assert episodes >= 2


def test_single_env_final_observation_and_info():
    env = gym.make("MemoryCores/Copy-v0", width=3, min_length=2, max_length=2)
    obs, _ = env.reset(seed=0)
    seq = []
    for t in range(5):
        if t < 2:
            seq.append(obs[:3].astype(bool))
        action = seq[t - 3] if t >= 3 else np.zeros(3, np.int8)
        obs, r, term, trunc, info = env.step(action)
    assert term and not trunc and r == 1.0
    assert not obs.any()  # the episode's last observation (answer phase), not the next episode's first
    assert info == {"bit_errors": 0, "success": True}


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_episodes(task):
    def roll(seed):
        env = make_vec(task, 8, **SMALL[task])
        out = [env.reset(seed=seed)[0]]
        gen = torch.Generator().manual_seed(0)
        for _ in range(30):
            o, r, t, tr, _ = env.step(random_actions(env, gen))
            out += [o, r, t, tr]
        return out

    a, b, c = roll(4), roll(4), roll(5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_reset_with_seed_restarts_the_same_episodes():
    env = make_vec("AssociativeRecall", 4)
    o1, _ = env.reset(seed=2)
    for _ in range(7):
        env.step(torch.zeros(4, 6, dtype=torch.bool))
    o2, _ = env.reset(seed=2)
    assert torch.equal(o1, o2)
    o3, _ = env.reset()  # no seed: new episodes
    assert env.observation_space.contains(o3.numpy())


def test_return_final_obs():
    env = make_vec("TMaze", 6, length=2, return_final_obs=True)
    env.reset(seed=0)
    east = torch.ones(6, dtype=torch.long)
    for _ in range(2):
        obs, r, term, trunc, info = env.step(east)
    assert torch.equal(info["_final_obs"], term | trunc)
    # everybody is at the junction now; north ends the episode there
    obs, r, term, trunc, info = env.step(torch.zeros(6, dtype=torch.long))
    assert term.all() and info["_final_obs"].all()
    assert torch.equal(info["final_obs"], torch.tensor([[0.0, 1.0, 0.0]]).expand(6, 3))  # the junction
    assert ((obs == torch.tensor([0.0, 1.0, 1.0])).all(1) | (obs == torch.tensor([1.0, 1.0, 0.0])).all(1)).all()
    assert torch.equal(info["episode"]["success"], r > 0) and torch.equal(info["episode"]["l"], torch.full((6,), 3,
                                                                                                              dtype=torch.int32))


def test_tmaze_truncation_and_wall_reward():
    env = make_vec("TMaze", 3, length=4, max_steps=6, wall_reward=-0.1)
    env.reset(seed=0)
    west = torch.full((3,), 3, dtype=torch.long)
    for k in range(6):
        obs, r, term, trunc, info = env.step(west)
        assert torch.allclose(r, torch.full((3,), -0.1))
    assert trunc.all() and not term.any()
    assert torch.allclose(info["episode"]["r"], torch.full((3,), -0.6)) and not info["episode"]["success"].any()


def test_memoryless_tmaze_policy_is_at_chance():
    """Go east, then always north: succeeds only when the cue says north (about half the time)."""
    env = make_vec("TMaze", 400, length=3)
    env.reset(seed=0)
    acts = [torch.ones(400, dtype=torch.long)] * 3 + [torch.zeros(400, dtype=torch.long)]
    for a in acts:
        obs, r, term, trunc, info = env.step(a)
    assert term.all()
    s = info["episode"]["success"].float().mean().item()
    assert 0.4 < s < 0.6


def test_numpy_view():
    env = NumpyVectorEnv(make_vec("Copy", 3, **SMALL["Copy"]))
    obs, info = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.shape == (3, 5)
    obs, r, term, trunc, info = env.step(np.zeros((3, 4), np.int8))
    assert isinstance(r, np.ndarray) and r.dtype == np.float32 and isinstance(info["episode"]["r"], np.ndarray)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP


@pytest.mark.parametrize(
    "task, opts, name",
    [
        ("Copy", dict(min_length=-1), "min_length"),
        ("Copy", dict(width=0), "width"),
        ("Copy", dict(width=17), "width"),
        ("Copy", dict(min_length=5, max_length=3), "max_length"),
        ("Copy", dict(device="nonsense"), "device"),
        ("RepeatCopy", dict(max_repeats=0), "max_repeats"),
        ("RepeatCopy", dict(end_marker="yes"), "end_marker"),
        ("AssociativeRecall", dict(min_items=1), "min_items"),
        ("AssociativeRecall", dict(item_size=0), "item_size"),
        ("TMaze", dict(length=0), "length"),
        ("TMaze", dict(length=5, max_steps=3), "max_steps"),
        ("TMaze", dict(wrong_arm_reward=float("nan")), "wrong_arm_reward"),
    ],
)
def test_bad_options_raise(task, opts, name):
    with pytest.raises(ValueError, match=name):
        make_vec(task, 2, **opts)
    with pytest.raises(ValueError, match=name):
        gym.make(f"MemoryCores/{task}-v0", **opts)


def test_bad_num_envs_and_action_shape():
    with pytest.raises(ValueError, match="num_envs"):
        make_vec("Copy", 0)
    env = make_vec("Copy", 2, **SMALL["Copy"])
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(3, 4, dtype=torch.bool))
    single = gym.make("MemoryCores/TMaze-v0")
    single.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        single.step(np.array([1, 2]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without CUDA")
def test_cuda_device_unavailable_raises():
    with pytest.raises(ValueError, match="device"):
        make_vec("TMaze", 2, device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", TASKS)
def test_cuda_step_has_no_host_sync(task):
    env = make_vec(task, 256, device="cuda")
    obs, _ = env.reset(seed=0)
    assert obs.device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    acts = [random_actions(env, gen).cuda() for _ in range(4)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in range(40):
            obs, r, term, trunc, info = env.step(acts[k % 4])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert r.device.type == "cuda" and info["episode"]["r"].device.type == "cuda"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", TASKS)
def test_cuda_rows_follow_the_rules(task):
    eps = run_checked(task, n=8, steps=80, policy="oracle", device="cuda")
    assert eps and all(e["success"] for e in eps)


def test_episode_parameters_are_uniform():
    """K uniform and the query item uniform in 0..K-2 (AssociativeRecall); L and R uniform and independent."""
    n = 6000
    ar = make_vec("AssociativeRecall", n).unwrapped  # K in 2..6, S = 3
    ar.reset(seed=0)
    P, S = ar.item_size + 1, ar.item_size
    a0 = ar.cols[0]  # first answer step K P + S + 2
    K = (a0 - S - 2) // P
    q = (a0 - ar.cols[1] // n - 1) // P - 1  # answer offset A0 - (q + 1) P - 1
    counts = torch.bincount(K - 2, minlength=5).float()
    assert (counts / n - 0.2).abs().max() < 0.03, counts
    for k in range(3, 7):
        qs = torch.bincount(q[K == k], minlength=k - 1)[: k - 1].float()
        assert (qs / qs.sum() - 1 / (k - 1)).abs().max() < 0.06 and ((q[K == k] >= 0) & (q[K == k] <= k - 2)).all()
    rc = make_vec("RepeatCopy", n, min_length=1, max_length=3, min_repeats=1, max_repeats=4).unwrapped
    rc.reset(seed=0)
    L = rc.cols[0]
    R = (rc.cols[2] - L - 1) // L  # copy_end = L + 1 + R L
    joint = torch.bincount((L - 1) * 4 + (R - 1), minlength=12).float() / n
    assert (joint - 1 / 12).abs().max() < 0.02, joint


@pytest.mark.parametrize(
    "task, opts",
    [
        ("RepeatCopy", dict(end_marker=False)),
        ("RepeatCopy", dict(min_repeats=2, max_repeats=2, min_length=4, max_length=4)),
        ("Copy", dict(width=16, min_length=7, max_length=7)),
        ("AssociativeRecall", dict(min_items=3, max_items=3, item_size=1)),
        ("AssociativeRecall", dict(width=8, min_items=2, max_items=12)),  # the general (K, q) draw
        ("TMaze", dict(length=1, wall_reward=-0.1, wrong_arm_reward=-0.5)),
    ],
)
def test_other_configurations_follow_the_rules(task, opts):
    eps = run_checked(task, n=6, steps=90, policy="oracle", seed=2, **opts)
    assert eps and all(e["success"] or e["ambiguous"] for e in eps)
    run_checked(task, n=6, steps=60, policy="random", seed=3, **opts)


@pytest.mark.parametrize("task", TASKS)
def test_returned_tensors_are_not_overwritten(task):
    env = make_vec(task, 16, **SMALL[task])
    obs, _ = env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    out = env.step(random_actions(env, gen))
    kept = [obs.clone()] + [x.clone() for x in out[:4]] + [v.clone() for v in out[4]["episode"].values()]
    for _ in range(25):
        env.step(random_actions(env, gen))
    now = [obs] + list(out[:4]) + list(out[4]["episode"].values())
    assert all(torch.equal(a, b) for a, b in zip(kept, now))


def test_sb3_make_vec_env_render_mode_is_accepted():
    """SB3's make_vec_env passes render_mode="rgb_array"; the single envs ignore it (no renderer) and still run."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("MemoryCores/TMaze-v0", n_envs=2)
    assert venv.reset().shape == (2, 3)
