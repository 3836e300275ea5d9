"""MemoryMaze, the batched MiniGrid MemoryEnv port and the MiniGrid wrappers.

Fast CPU tests (torch threads = 1). The port is checked against the ``minigrid`` package step by step: the layout of
seeded MiniGrid episodes is copied into the port, the same actions are applied to both, and observations, rewards,
terminations and truncations must agree exactly.
"""

from __future__ import annotations

import collections
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch.utils._python_dispatch import TorchDispatchMode

import envs  # noqa: F401  (registers the tasks)
from envs.base import hash32
from envs.memory_maze import ShuffleTables, binary_tree_mazes, cell_graph, origin_shift_, trees_to_grids, wall_table
from envs.minigrid_wrappers import MINIGRID_MEMORY_IDS
from envs.minigrid_memory import (
    BALL, CODE_TO_ENCODING, EMPTY, KEY, ONE_HOT_BITS, UNSEEN, WALL, MiniGridMemory, one_hot_encode, pad_grids,
    view_offsets, visibility_mask, visibility_table,
)

torch.set_num_threads(1)

minigrid = pytest.importorskip("minigrid")
from minigrid.core.grid import Grid  # noqa: E402
from minigrid.core.world_object import Ball, Key, Wall  # noqa: E402
from minigrid.envs import MemoryEnv  # noqa: E402
from minigrid.wrappers import OneHotPartialObsWrapper  # noqa: E402


def make_vec(task: str, num_envs: int, **options) -> gym.vector.VectorEnv:
    options.setdefault("device", "cpu")
    return gym.make_vec(f"MemoryCores/{task}-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        **options)


# ================================================ Gymnasium API =====================================================
@pytest.mark.parametrize("task,options", [
    ("MemoryMaze", {}),
    ("MemoryMaze", {"maze_size": 15, "view_size": 3, "max_steps": 50}),
    ("MiniGridMemory", {}),
    ("MiniGridMemory", {"size": 9, "view_size": 3}),
    ("MiniGridMemory", {"size": 13, "random_length": True, "view_size": 5, "obs_cache": False}),
])
def test_check_env_single(task, options):
    env = gym.make(f"MemoryCores/{task}-v0", **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("env_id", MINIGRID_MEMORY_IDS)
def test_check_env_wrapped_minigrid(env_id):
    env = gym.make("MemoryCores/MiniGridMemoryWrapped-v0", env_id=env_id, view_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (27,) and obs.dtype == np.uint8
    # the wrapper's view is MiniGrid's ViewSizeWrapper view
    ref = minigrid.wrappers.ViewSizeWrapper(gym.make(env_id), agent_view_size=3)
    ref_obs, _ = ref.reset(seed=1)
    np.testing.assert_array_equal(obs, ref_obs["image"].reshape(-1))


def test_vector_env_types():
    env = make_vec("MemoryMaze", 8, maze_size=11, view_size=3)
    assert isinstance(env.unwrapped, gym.vector.VectorEnv)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8, 9) and obs.dtype == torch.uint8
    env = make_vec("MiniGridMemory", 8, size=9, view_size=3)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8, 27) and obs.dtype == torch.uint8
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP


@pytest.mark.parametrize("task,options,match", [
    ("MemoryMaze", {"maze_size": 9, "view_size": 11}, r"view_size=11.*\[3, 9\]"),
    ("MemoryMaze", {"view_size": 4}, r"view_size=4.*odd"),
    ("MemoryMaze", {"maze_size": 5}, r"maze_size=5.*\[7, 31\]"),
    ("MemoryMaze", {"maze_size": 33}, r"maze_size=33.*\[7, 31\]"),
    ("MemoryMaze", {"maze_size": 10}, r"maze_size=10.*odd"),
    ("MemoryMaze", {"max_steps": 0}, r"max_steps=0"),
    ("MemoryMaze", {"shuffle_moves": 9}, r"shuffle_moves=9.*\[0, 7\]"),
    ("MemoryMaze", {"device": "tpu"}, r"device='tpu'"),
    ("MiniGridMemory", {"size": 7, "view_size": 9}, r"view_size=9.*\[3, 7\]"),
    ("MiniGridMemory", {"view_size": 2}, r"view_size=2.*odd"),
    ("MiniGridMemory", {"size": 8}, r"size=8.*odd"),
    ("MiniGridMemory", {"size": 5}, r"size=5.*\[7, 31\]"),
    ("MiniGridMemory", {"device": "nodevice"}, r"device='nodevice'"),
    ("MiniGridMemoryWrapped", {"view_size": 4}, r"view_size=4.*odd"),
    ("MiniGridMemoryWrapped", {"env_id": "MiniGrid-Empty-5x5-v0"}, r"env_id='MiniGrid-Empty-5x5-v0'"),
])
def test_bad_options(task, options, match):
    with pytest.raises(ValueError, match=match):
        if task == "MiniGridMemoryWrapped":
            gym.make(f"MemoryCores/{task}-v0", **options)
        else:
            make_vec(task, 2, **options)


@pytest.mark.parametrize("task", ["MemoryMaze", "MiniGridMemory"])
def test_bad_action_shape(task):
    env = make_vec(task, 4, max_steps=5)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(3,\).*\(4,\)"):
        env.step(torch.zeros(3, dtype=torch.long))
    # a rejected step is no step: the episode still lasts max_steps
    for t in range(5):
        _, _, te, tr, info = env.step(torch.zeros(4, dtype=torch.long))  # turning in place: never terminates
    assert tr.all() and not te.any() and info["episode"]["l"].tolist() == [5] * 4
    single = gym.make(f"MemoryCores/{task}-v0").unwrapped
    single.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        single.step(np.zeros(2, dtype=np.int64))


# ================================================ batched == single, determinism ===================================
def rollout(env, actions: torch.Tensor) -> list[tuple]:
    out = []
    for a in actions:
        obs, r, te, tr, info = env.step(a)
        out.append((obs.clone(), r.clone(), te.clone(), tr.clone()))
    return out


@pytest.mark.parametrize("task,options", [
    ("MemoryMaze", {"maze_size": 9, "view_size": 5, "max_steps": 40}),
    ("MiniGridMemory", {"size": 9, "view_size": 3, "max_steps": 30, "random_length": True}),
])
def test_batched_and_single_agree(task, options):
    """Row 0 of a batched env seeded s plays exactly the episodes of the single env seeded s (final obs included)."""
    batched = make_vec(task, 5, return_final_obs=True, **options)
    single = gym.make(f"MemoryCores/{task}-v0", **options).unwrapped
    obs_b, _ = batched.reset(seed=7)
    obs_s, _ = single.reset(seed=7)
    np.testing.assert_array_equal(obs_b[0].numpy(), obs_s)
    rng = np.random.default_rng(0)
    n = batched.single_action_space.n
    ends = 0
    for t in range(150):
        a = torch.as_tensor(rng.integers(0, n, 5))
        obs_b, r_b, te_b, tr_b, info = batched.step(a)
        obs_s, r_s, te_s, tr_s, info_s = single.step(int(a[0]))
        assert (r_s, te_s, tr_s) == (float(r_b[0]), bool(te_b[0]), bool(tr_b[0]))
        if te_s or tr_s:
            ends += 1
            np.testing.assert_array_equal(info["final_obs"][0].numpy(), obs_s)
            assert info_s["success"] == bool(info["episode"]["success"][0])
            obs_s, _ = single.reset()
        np.testing.assert_array_equal(obs_b[0].numpy(), obs_s)
    assert ends >= 3


@pytest.mark.parametrize("task,options", [
    ("MemoryMaze", {"maze_size": 11, "max_steps": 25}),
    ("MiniGridMemory", {"size": 11, "view_size": 3, "max_steps": 25}),
])
def test_determinism(task, options):
    actions = torch.randint(0, 3, (80, 16), generator=torch.Generator().manual_seed(3))
    runs = []
    for seed in (5, 5, 6):
        env = make_vec(task, 16, **options)
        obs0, _ = env.reset(seed=seed)
        runs.append([(obs0, None, None, None)] + rollout(env, actions))
    for x, y in zip(runs[0], runs[1]):  # same seed: bit-identical
        for u, v in zip(x, y):
            assert u is None or torch.equal(u, v)
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(runs[0], runs[2]))  # another seed: other episodes
    # row i does not depend on the number of envs (counter-based randomness)
    env = make_vec(task, 3, **options)
    obs0, _ = env.reset(seed=5)
    small = [(obs0, None, None, None)] + rollout(env, actions[:, :3])
    for x, y in zip(runs[0], small):
        assert torch.equal(x[0][:3], y[0])


# ================================================ auto-reset =======================================================
def test_autoreset_memory_maze():
    T = 30
    env = make_vec("MemoryMaze", 6, maze_size=9, view_size=3, max_steps=T, return_final_obs=True)
    u = env.unwrapped
    env.reset(seed=1)
    mazes = [u.maze().clone()]
    rng = np.random.default_rng(1)
    ret = torch.zeros(6)
    for t in range(3 * T):
        obs, r, te, tr, info = env.step(torch.as_tensor(rng.integers(0, 3, 6)))
        ret += r
        assert not te.any()
        assert bool(tr.all()) == ((t + 1) % T == 0) and bool(info["_episode"].all()) == ((t + 1) % T == 0)
        if (t + 1) % T == 0:
            ep = info["episode"]
            torch.testing.assert_close(ep["r"], ret)
            assert torch.equal(ep["l"], torch.full((6,), T, dtype=torch.int32))
            assert torch.equal(ep["goals"], ret.to(torch.int32))
            assert torch.equal(ep["success"], ret > 0)
            ret.zero_()
            mazes.append(u.maze().clone())
            assert u._host_steps == 0
            # the returned obs is the new episode's first one, the final obs the old one's last
            assert torch.equal(obs, u._observe())
    # every episode plays a new maze (the next maze was re-randomised during the episode)
    for a, b in zip(mazes, mazes[1:]):
        assert all(not torch.equal(a[i], b[i]) for i in range(6))


def test_autoreset_minigrid_memory():
    env = make_vec("MiniGridMemory", 4, size=7, view_size=3, max_steps=12)
    u = env.unwrapped
    obs0, _ = env.reset(seed=2)
    forward = torch.full((4,), 2)
    # walking forward from any start reaches the vertical hallway's opening, never an object cell: truncation
    for t in range(12):
        obs, r, te, tr, info = env.step(forward)
        assert bool(tr.all()) == (t == 11)
    assert not te.any() and torch.equal(info["episode"]["l"], torch.full((4,), 12, dtype=torch.int32))
    assert torch.equal(info["episode"]["r"], torch.zeros(4)) and not info["episode"]["success"].any()
    assert torch.equal(u.core.steps, torch.zeros(4, dtype=torch.long))
    assert torch.equal(u.core.dir, torch.zeros(4, dtype=torch.long))
    assert torch.equal(obs, u.core.render(u.core.layout, u.core.pos, u.core.dir))  # the new episodes' first obs
    # a success ends the episode with the reward of its step, and only that row restarts
    u.core.pos[0] = u.core.layouts.success[u.core.layout[0]] + u.core.Wp  # below the success cell, facing up
    u.core.dir[0] = 3
    pos1 = u.core.pos[1:].clone()
    obs, r, te, tr, info = env.step(torch.tensor([2, 0, 0, 0]))
    assert te.tolist() == [True, False, False, False] and bool(info["episode"]["success"][0])
    assert abs(float(r[0]) - (1 - 0.9 * 1 / 12)) < 1e-6 and float(info["episode"]["r"][0]) == float(r[0])
    assert int(u.core.steps[0]) == 0 and u.core.steps[1:].tolist() == [1, 1, 1]
    assert torch.equal(u.core.pos[1:], pos1)


# ================================================ the MiniGrid port against minigrid ==============================
CODE = {"wall": WALL, "key": KEY, "ball": BALL}


def copy_minigrid_episode(env: MemoryEnv) -> tuple:
    """The layout of a reset MiniGrid MemoryEnv: grid codes ``[y, x]``, agent pos/dir, success/failure cells."""
    g = np.zeros((env.height, env.width), dtype=np.uint8)
    for y in range(env.height):
        for x in range(env.width):
            cell = env.grid.get(x, y)
            g[y, x] = EMPTY if cell is None else CODE[cell.type]
            if cell is not None:
                assert cell.color == ("grey" if cell.type == "wall" else "green")
    return g, tuple(int(v) for v in env.agent_pos), int(env.agent_dir), env.success_pos, env.failure_pos


def compare_with_minigrid(size, random_length, view_size, max_steps, policy, seed, num=4, obs_cache=True,
                          one_hot=False):
    refs = [MemoryEnv(size=size, random_length=random_length, agent_view_size=view_size, max_steps=max_steps)
            for _ in range(num)]
    # with one_hot the reference image is minigrid's own OneHotPartialObsWrapper encoding
    image = (lambda o: OneHotPartialObsWrapper(refs[0]).observation(o)["image"]) if one_hot else (lambda o: o["image"])
    first = [image(e.reset(seed=seed * 100 + i)[0]) for i, e in enumerate(refs)]
    lay = [copy_minigrid_episode(e) for e in refs]
    port = MiniGridMemory(num, size=size, random_length=random_length, view_size=view_size, max_steps=max_steps,
                          obs_cache=obs_cache, one_hot=one_hot, return_final_obs=True)
    port.reset(seed=0)
    obs = port.load_layouts(torch.tensor(np.stack([l[0] for l in lay])), torch.tensor([l[1] for l in lay]),
                            torch.tensor([l[2] for l in lay]), torch.tensor([l[3] for l in lay]),
                            torch.tensor([l[4] for l in lay]))
    V, C = view_size, first[0].shape[-1]
    np.testing.assert_array_equal(obs.view(num, V, V, C).numpy(), np.stack(first))
    alive = np.ones(num, dtype=bool)
    rng = np.random.default_rng(seed)
    compared = terminations = 0
    for t in range(max_steps + 1):
        a = policy(t, rng, num)
        obs, r, te, tr, info = port.step(torch.as_tensor(a))
        obs = torch.where((te | tr).unsqueeze(1), info["final_obs"], obs)  # an ended episode's last obs
        for i in np.flatnonzero(alive):
            o, rr, tte, ttr, _ = refs[i].step(int(a[i]))
            np.testing.assert_array_equal(obs[i].view(V, V, C).numpy(), image(o), err_msg=f"env {i} step {t}")
            assert abs(float(r[i]) - rr) < 1e-6 and (bool(te[i]), bool(tr[i])) == (tte, ttr), (i, t)
            compared += 1
            terminations += tte
            if tte or ttr:
                alive[i] = False
        if not alive.any():
            break
    return compared, terminations


FIXED = [2, 2, 1, 2, 0, 0, 2, 2, 2, 2, 3, 4, 5, 6, 1, 2, 2, 2, 0, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 0, 2, 2]


@pytest.mark.parametrize("size,random_length,view_size", [
    (7, False, 7), (9, False, 3), (11, False, 5), (13, True, 3), (17, True, 7), (13, False, 9),
])
def test_port_matches_minigrid_fixed_actions(size, random_length, view_size):
    policy = lambda t, rng, n: np.full(n, FIXED[t % len(FIXED)])  # noqa: E731
    compared, terminations = compare_with_minigrid(size, random_length, view_size, 60, policy, seed=size, num=8)
    assert terminations >= 4


@pytest.mark.parametrize("size,random_length,view_size,obs_cache", [
    (7, False, 3, True), (9, False, 7, True), (13, True, 5, False), (17, True, 3, True),
])
def test_port_matches_minigrid_random_actions(size, random_length, view_size, obs_cache):
    # mostly forward and turns (to reach the objects), sometimes the no-op actions; 100-step episodes
    policy = lambda t, rng, n: rng.choice([0, 1, 2, 2, 2, 3, 4, 5, 6], n)  # noqa: E731
    compared = terminations = 0
    for seed in range(2):
        c, t = compare_with_minigrid(size, random_length, view_size, 100, policy, seed, obs_cache=obs_cache)
        compared, terminations = compared + c, terminations + t
    assert compared > 100
    assert terminations > 0  # some episodes reach an object


@pytest.mark.parametrize("size,random_length,view_size,obs_cache", [(13, False, 3, True), (9, True, 5, False)])
def test_port_one_hot_matches_minigrid_wrapper(size, random_length, view_size, obs_cache):
    policy = lambda t, rng, n: rng.choice([0, 1, 2, 2, 2, 3], n)  # noqa: E731
    compared, _ = compare_with_minigrid(size, random_length, view_size, 60, policy, seed=3, obs_cache=obs_cache,
                                        one_hot=True)
    assert compared > 50


def test_wrapped_minigrid_one_hot():
    raw = gym.make("MemoryCores/MiniGridMemoryWrapped-v0", env_id="MiniGrid-MemoryS13-v0", view_size=3)
    hot = gym.make("MemoryCores/MiniGridMemoryWrapped-v0", env_id="MiniGrid-MemoryS13-v0", view_size=3, one_hot=True)
    assert hot.observation_space.shape == (3 * 3 * ONE_HOT_BITS,)
    # the same spaces as the batched port, so a policy trained on the port runs on MiniGrid's own env
    for one_hot, env in ((False, raw), (True, hot)):
        port = gym.make("MemoryCores/MiniGridMemory-v0", size=13, view_size=3, one_hot=one_hot)
        assert env.observation_space == port.observation_space
        assert hot.observation_space.contains(hot.reset(seed=1)[0])
    for o_raw, o_hot in [(raw.reset(seed=5)[0], hot.reset(seed=5)[0]), (raw.step(0)[0], hot.step(0)[0])]:
        np.testing.assert_array_equal(one_hot_encode(torch.from_numpy(o_raw)).numpy(), o_hot)
        assert o_hot.reshape(9, ONE_HOT_BITS).sum(-1).tolist() == [3] * 9  # one bit per field


def test_move_actions_only():
    """num_actions=3 plays exactly like the 7-action env restricted to left, right, forward (both envs)."""
    a, b = make_vec("MiniGridMemory", 32, size=9, view_size=3), make_vec("MiniGridMemory", 32, size=9, view_size=3,
                                                                          num_actions=3)
    assert b.single_action_space == gym.spaces.Discrete(3)
    oa, _ = a.reset(seed=4)
    ob, _ = b.reset(seed=4)
    g = torch.Generator().manual_seed(0)
    ends = 0
    for _ in range(80):
        act = torch.randint(0, 3, (32,), generator=g)
        ra, rb = a.step(act), b.step(act)
        for x, y in zip(ra[:4], rb[:4]):
            assert torch.equal(x, y)
        ends += int(ra[2].sum())
    assert ends > 0
    w = gym.make("MemoryCores/MiniGridMemoryWrapped-v0", env_id="MiniGrid-MemoryS7-v0", num_actions=3)
    assert w.action_space == gym.spaces.Discrete(3)
    w.reset(seed=0)
    assert w.step(2)[0].shape == (27,)
    with pytest.raises(ValueError, match="num_actions=5 is not valid"):
        make_vec("MiniGridMemory", 2, num_actions=5)
    with pytest.raises(ValueError, match="num_actions=4 is not valid"):
        gym.make("MemoryCores/MiniGridMemoryWrapped-v0", num_actions=4)


def test_port_truncation_matches_minigrid():
    policy = lambda t, rng, n: rng.choice([0, 1, 4], n)  # noqa: E731  (never moves: always truncated)
    assert compare_with_minigrid(9, False, 3, 15, policy, seed=1) == (4 * 15, 0)


def test_port_layouts_are_minigrids():
    """Every MiniGrid episode's layout is one of the port's layouts, with the same success/failure cells."""
    for size, rl in ((7, False), (11, False), (13, True)):
        port = MiniGridMemory(1, size=size, random_length=rl)
        c = port.core
        grids = c.layouts.grids.view(-1, c.Wp, c.Wp)[:, c.pad:c.pad + size, c.pad:c.pad + size]
        seen, starts = set(), collections.Counter()
        for seed in range(60):
            env = MemoryEnv(size=size, random_length=rl)
            env.reset(seed=seed)
            g, pos, d, succ, fail = copy_minigrid_episode(env)
            match = [i for i in range(c.num_standard) if np.array_equal(grids[i].numpy(), g)]
            assert len(match) == 1
            i = match[0]
            flat = lambda p: (p[1] + c.pad) * c.Wp + p[0] + c.pad  # noqa: E731
            assert (flat(succ), flat(fail)) == (int(c.layouts.success[i]), int(c.layouts.failure[i]))
            assert d == 0 and pos[1] == size // 2 and 1 <= pos[0] <= int(c.layouts.hallway_end[i])
            seen.add(i)
        assert len(seen) >= min(c.num_standard, 4)
        # the port's own episodes: same start rules
        env = make_vec("MiniGridMemory", 256, size=size, random_length=rl)
        env.reset(seed=0)
        x = c_x = env.unwrapped.core.pos % c.Wp - c.pad
        he = env.unwrapped.core.layouts.hallway_end[env.unwrapped.core.layout]
        assert bool(((x >= 1) & (x <= he)).all()) and bool((env.unwrapped.core.dir == 0).all())
        assert len(set(env.unwrapped.core.layout.tolist())) == c.num_standard
        del c_x, starts


def test_visibility_matches_minigrid_on_random_grids():
    """The view and MiniGrid's process_vis on random grids of walls, keys and balls, every view size and direction."""
    rng = np.random.default_rng(0)
    enc = torch.tensor(CODE_TO_ENCODING, dtype=torch.uint8)
    tables = {V: visibility_table(V) for V in (3, 5, 7)}
    env = MemoryEnv(size=9)
    env.reset(seed=0)
    for trial in range(120):
        V = int(rng.choice([3, 5, 7, 9]))
        size = int(rng.choice([7, 9, 11]))
        g = rng.choice([EMPTY, WALL, KEY, BALL], size=(size, size), p=[0.6, 0.3, 0.05, 0.05]).astype(np.uint8)
        ax, ay, d = int(rng.integers(size)), int(rng.integers(size)), int(rng.integers(4))
        g[ay, ax] = EMPTY
        grid = Grid(size, size)
        for y in range(size):
            for x in range(size):
                c = g[y, x]
                grid.set(x, y, None if c == EMPTY else Wall() if c == WALL else Key("green") if c == KEY
                         else Ball("green"))
        env.grid, env.width, env.height, env.agent_view_size = grid, size, size, V
        env.agent_pos, env.agent_dir = np.array((ax, ay)), d
        ref = env.gen_obs()["image"]
        P, Wp = V - 1, size + 2 * (V - 1)
        padded = pad_grids(torch.tensor(g[None]), P)[0]
        codes = padded[(ay + P) * Wp + ax + P + view_offsets(V, Wp)[d]].view(1, V, V)
        for table in (tables.get(V), None):
            vis = visibility_mask(codes != WALL, table)
            c = torch.where(vis, codes, UNSEEN)
            c[:, V // 2, V - 1] = EMPTY
            np.testing.assert_array_equal(enc[c.long()][0].numpy(), ref)


# ================================================ scripted policies ================================================
def test_minigrid_memory_scripted_policy_gets_max_return():
    """Going to the matching object (hidden information) scores the maximum; a random policy does not."""
    N, size = 64, 9
    env = make_vec("MiniGridMemory", N, size=size, view_size=3, random_length=False)
    env.reset(seed=0)
    c = env.unwrapped.core
    x = c.pos % c.Wp - c.pad
    he = c.layouts.hallway_end[c.layout]
    up = c.layouts.success[c.layout] < c.layouts.failure[c.layout]  # the matching object is at the top end
    steps = he + 1 - x + 2  # walk to the split, turn, step next to the object
    best = 1 - 0.9 * steps.float() / c.max_steps
    done = torch.zeros(N, dtype=torch.bool)
    ret = torch.zeros(N)
    for t in range(int(steps.max())):
        cx = c.pos % c.Wp - c.pad
        at_split = cx == he + 1
        turned = c.dir != 0
        a = torch.where(~at_split, 2, torch.where(turned, 2, torch.where(up, 0, 1)))
        _, r, te, tr, info = env.step(a)
        ret += torch.where(done, 0.0, r)
        assert not bool((te & ~done & ~info["episode"]["success"]).any())
        done |= te
    assert done.all()
    torch.testing.assert_close(ret, best)
    # random policy
    env.reset(seed=1)
    ends = succ = 0
    rets = []
    for t in range(800):
        _, r, te, tr, info = env.step(torch.randint(0, 7, (N,), generator=torch.Generator().manual_seed(t)))
        m = info["_episode"]
        ends += int(m.sum())
        succ += int((info["episode"]["success"] & m).sum())
        rets += info["episode"]["r"][m].tolist()
    assert ends > 50 and succ / ends < 0.6 and np.mean(rets) < 0.5 * float(best.mean())


def bfs_actions(maze: np.ndarray, x: int, y: int, d: int, gx: int, gy: int) -> list[int]:
    """Shortest action sequence (0 left, 1 right, 2 forward) from (x, y, d) into the goal cell."""
    dirs = ((1, 0), (0, 1), (-1, 0), (0, -1))
    start = (x, y, d)
    prev = {start: None}
    queue = collections.deque([start])
    while queue:
        s = queue.popleft()
        sx, sy, sd = s
        for a, nxt in ((0, (sx, sy, (sd - 1) % 4)), (1, (sx, sy, (sd + 1) % 4)),
                       (2, (sx + dirs[sd][0], sy + dirs[sd][1], sd))):
            if maze[nxt[1], nxt[0]] == 1:  # wall
                continue
            if nxt not in prev:
                prev[nxt] = (s, a)
                if (nxt[0], nxt[1]) == (gx, gy):
                    acts = []
                    while prev[nxt] is not None:
                        nxt, act = prev[nxt]
                        acts.append(act)
                    return acts[::-1]
                queue.append(nxt)
    raise AssertionError("goal unreachable")


def test_memory_maze_scripted_policy_gets_max_return():
    """BFS on the known maze reaches the goal in the fewest possible steps on every trip; random scores far less."""
    N, T = 4, 150
    env = make_vec("MemoryMaze", N, maze_size=9, view_size=3, max_steps=T)
    u = env.unwrapped
    obs, _ = env.reset(seed=3)
    V, h = 3, 1
    plans = [[] for _ in range(N)]
    trips = [[] for _ in range(N)]  # (planned length, steps taken)
    taken = [0] * N
    for t in range(T):
        s = {k: v.tolist() for k, v in u.agent_state().items()}
        mazes = u.maze().numpy()
        a = []
        for i in range(N):
            if not plans[i]:
                plans[i] = bfs_actions(mazes[i], s["x"][i], s["y"][i], s["dir"][i], s["goal_x"][i], s["goal_y"][i])
                trips[i].append([len(plans[i]), 0])
            if len(plans[i]) == 1:  # the goal is right ahead: the view shows it there (row h - 1, column h)
                assert int(obs[i].view(V, V)[h - 1, h]) == 2 and int((obs[i] == 2).sum()) == 1
            a.append(plans[i].pop(0))
            trips[i][-1][1] += 1
        obs, r, te, tr, info = env.step(torch.tensor(a))
        for i in range(N):
            assert bool(r[i]) == (not plans[i])  # the goal is reached exactly when the plan ends
            taken[i] += int(r[i])
    assert tr.all()
    scripted = info["episode"]["r"]
    assert scripted.tolist() == [float(v) for v in taken]
    for i in range(N):  # every completed trip took its shortest length
        assert all(p == k for p, k in trips[i][:-1])
    env.reset(seed=3)
    for t in range(T):
        _, r, te, tr, info = env.step(torch.randint(0, 3, (N,)))
    rand = info["episode"]["r"]
    assert float(scripted.mean()) >= 8 and float(scripted.mean()) > 3 * float(rand.mean())


# ================================================ maze generation =================================================
def test_mazes_stay_perfect_under_origin_shift():
    """Played and next mazes are spanning trees (all cells connected, k^2 - 1 open walls) at every step."""
    env = make_vec("MemoryMaze", 3, maze_size=11, view_size=3, max_steps=20, shuffle_moves=7)
    u = env.unwrapped
    env.reset(seed=0)
    k = u.k
    _, _, nb = cell_graph(k)
    for t in range(45):
        env.step(torch.randint(0, 3, (3,)))
        # one goal square, in the played maze; apart from it the grids are the trees' grids
        assert (u.grid == 2).sum(1).tolist() == [1, 1, 1] and not (u.next_grid == 2).any()
        # (the last square is the sink of no-op writes, never seen)
        assert torch.equal(u.grid.masked_fill(u.grid == 2, 0)[:, :-1], trees_to_grids(u.parent, k, u.pad))
        assert torch.equal(u.next_grid[:, :-1], trees_to_grids(u.next_parent, k, u.pad))
        for parent, origin in ((u.parent, u.origin), (u.next_parent, u.next_origin)):
            for row in range(3):
                p = parent[row].tolist()
                assert sum(v == c for c, v in enumerate(p)) == 1 and p[int(origin[row])] == int(origin[row])
                for c in range(k * k):  # following parents reaches the origin
                    seen = 0
                    while p[c] != c:
                        assert p[c] in nb[c].tolist()
                        c, seen = p[c], seen + 1
                        assert seen <= k * k
                    assert c == int(origin[row])


def test_mazes_differ_between_episodes():
    """No maze repeats across envs and episodes (fresh mazes, nothing to memorise). 13x13: 6x6 cells have about
    3e13 spanning trees (9x9 mazes have only 100352, so a repeat among 128 uniform draws has an 8 % chance)."""
    env = make_vec("MemoryMaze", 32, maze_size=13, view_size=3, max_steps=40)
    u = env.unwrapped
    env.reset(seed=4)
    seen = [u.maze().clone()]
    for t in range(3 * 40):
        env.step(torch.randint(0, 3, (32,)))
        if (t + 1) % 40 == 0:
            seen.append(u.maze().clone())
    walls = torch.cat(seen).eq(1).flatten(1)  # [4 * 32, S * S]
    assert torch.unique(walls, dim=0).shape[0] == walls.shape[0]


# ================================================ no host round trip in step ======================================
class _RecordOps(TorchDispatchMode):
    """Records the aten ops run under it, flagging the ones that need the host to read device values."""

    FORBIDDEN = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.item", "aten.unique_dim",
                 "aten._unique2"}

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device, self.bad = device, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if name in self.FORBIDDEN:
            self.bad.append(name)
        if name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
                i is not None and i.dtype == torch.bool for i in args[1]):
            self.bad.append(name + " with a bool mask")
        if name == "aten._to_copy" and kwargs.get("device") not in (None, self.device):
            self.bad.append(f"copy to {kwargs['device']}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("task,options", [
    ("MemoryMaze", {"max_steps": 3}), ("MiniGridMemory", {"max_steps": 3}),
    ("MiniGridMemory", {"max_steps": 3, "obs_cache": False}),
])
def test_step_has_no_host_round_trip(task, options):
    """step (auto-resets included) runs no op that makes the host read device values (.item, nonzero, masks)."""
    env = make_vec(task, 4, return_final_obs=True, **options)
    env.reset(seed=0)
    actions = torch.tensor([2, 2, 0, 1])
    with _RecordOps(env.unwrapped.device) as rec:
        for _ in range(7):
            env.step(actions)
    assert rec.bad == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", ["MemoryMaze", "MiniGridMemory"])
def test_cuda_matches_cpu_without_sync(task):
    """On CUDA: bit-identical to CPU (integer rules and counter-based randomness), and no synchronisation in step."""
    out = {}
    actions = torch.randint(0, 3, (60, 64), generator=torch.Generator().manual_seed(0))
    for device in ("cpu", "cuda"):
        env = make_vec(task, 64, device=device, max_steps=20)
        obs, _ = env.reset(seed=1)
        seq = [obs.cpu()]
        a = actions.to(device)
        torch.cuda.set_sync_debug_mode("error" if device == "cuda" else "default")
        try:
            steps = [env.step(a[t]) for t in range(60)]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        seq += [torch.cat([s[0].float(), s[1].unsqueeze(1), s[2].unsqueeze(1), s[3].unsqueeze(1)], 1).cpu()
                for s in steps]
        out[device] = seq
    for x, y in zip(out["cpu"], out["cuda"]):
        assert torch.equal(x.float(), y.float())


def test_origin_shift_chain_is_uniform_over_spanning_trees():
    """On the 3x3 cell graph (192 spanning trees) the shuffled mazes visit every tree, equally often."""
    k, n, B, Sp = 3, 9, 1000, 7
    _, _, nb = cell_graph(k)
    nb = torch.where(nb >= 0, nb, torch.arange(n).view(-1, 1))
    parent, origin = binary_tree_mazes(hash32(torch.arange(B)), k)
    grid = trees_to_grids(parent, k, 0, extra=1)
    ar = torch.arange(B)
    tables = ShuffleTables(nb.view(-1), wall_table(k, Sp, 0, sink=Sp * Sp), ar * n, ar * (Sp * Sp + 1),
                           torch.ones(B, dtype=torch.uint8), torch.zeros(B, dtype=torch.uint8))
    g = torch.Generator().manual_seed(1)
    samples = []
    for step in range(1, 1201):
        origin = origin_shift_(parent, origin, grid, torch.randint(0, 4, (B,), generator=g), tables)
        if step >= 400 and step % 50 == 0:
            samples.append(grid[:, :Sp * Sp].clone())
    counts = torch.unique(torch.cat(samples), dim=0, return_counts=True)[1].float()
    assert counts.numel() == 192
    mean = counts.mean()
    assert float((counts - mean).abs().max()) < 5 * float(mean.sqrt())  # Poisson-like spread around the mean


def test_memory_maze_view_paths_agree():
    """The precomputed view-index table and the direct offsets path give the same observations."""
    env = make_vec("MemoryMaze", 16, maze_size=15, view_size=5, max_steps=30)
    u = env.unwrapped
    env.reset(seed=0)
    assert u.view_table is not None
    for t in range(40):
        env.step(torch.randint(0, 3, (16,)))
        table_obs = u._observe()
        vt, u.view_table = u.view_table, None
        assert torch.equal(table_obs, u._observe())
        u.view_table = vt
