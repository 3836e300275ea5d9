"""Helpers of tests/test_distributed.py that other processes import: the worker that two spawned ranks run (gloo on
the CPU) and a test-only env factory whose process dies mid-run on one rank of a torchrun launch.

Not a test module (pytest collects ``test_*.py`` only); importable as ``distributed_helpers`` with ``tests/`` on the
path (pytest puts it there; the torchrun test sets ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import envs  # noqa: E402,F401  registers MemoryCores/*
from memory_cores import tree_map  # noqa: E402
from agents.env_adapter import TorchVecEnv  # noqa: E402
from agents.evaluation import build_policy  # noqa: E402
from agents.policy import obs_map  # noqa: E402
from agents.ppo import PPO, Rollout, RewardScaler, TrainConfig  # noqa: E402

TMAZE = "MemoryCores/TMaze-v0"
B_RANK = 4  # envs per rank in the equivalence checks; one process holds 2 * B_RANK


# ===================================================================================== a rank that dies (torchrun)
_steps = 0


class _ExitAfter(gym.Wrapper):
    """Calls ``os._exit(3)`` (no cleanup, as a kill would) once this process has made ``DYING_ENV_AFTER`` env steps,
    when its ``RANK`` is ``DYING_ENV_RANK`` (with ``DYING_ENV_HANG`` set it sleeps for ever instead)."""

    def step(self, action: Any):
        global _steps
        _steps += 1
        die = "DYING_ENV_RANK" in os.environ and os.environ.get("RANK") == os.environ["DYING_ENV_RANK"]
        if die and _steps >= int(os.environ["DYING_ENV_AFTER"]):
            if os.environ.get("DYING_ENV_HANG"):  # stop answering instead of dying (--dist-timeout)
                import time

                while True:
                    time.sleep(1)
            os._exit(3)
        return self.env.step(action)


def dying_tmaze(**kwargs: Any) -> gym.Env:
    """``--env-factory distributed_helpers:dying_tmaze``: the T-maze, dying on one rank as configured above."""
    return _ExitAfter(gym.make(TMAZE, **kwargs))


# ========================================================================================= the PPO-level worker
def tiny_cfg(num_envs: int, **kw: Any) -> TrainConfig:
    base = dict(env=TMAZE, env_kwargs='{"length": 3}', num_envs=num_envs, num_steps=16, seq_len=8,
                num_minibatches=1, update_epochs=2, hidden_size=8, embed_size=8, progress=False, device="cpu",
                total_steps=10**6, learning_rate=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def make_ppo(cfg: TrainConfig, seed: int = 0, dist: Any = None) -> PPO:
    """A PPO on ``cfg.num_envs`` T-maze envs with the policy of ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    venv = TorchVecEnv(cfg.env, cfg.num_envs, torch.device("cpu"), cfg.env_kwargs_dict())
    policy = build_policy(cfg, venv.single_observation_space, venv.single_action_space)
    return PPO(policy, venv, cfg, seed=seed, dist=dist)


def full_rollout(cfg: TrainConfig) -> tuple[dict, Rollout]:
    """The initial policy weights and one rollout of ``2 * B_RANK`` envs, the same in every process."""
    ppo = make_ppo(replace(cfg, num_envs=2 * B_RANK, world_size=1))
    weights = {k: v.clone() for k, v in ppo.policy.state_dict().items()}
    torch.manual_seed(123)
    return weights, ppo.collect()


def split_rollout(r: Rollout, rank: int, world: int) -> Rollout:
    """Rank ``rank``'s share of a rollout: envs ``[rank B, (rank + 1) B)`` of every ``[T, B_total, ...]`` field."""
    B = r.starts.shape[1] // world
    cols = slice(rank * B, (rank + 1) * B)
    col = lambda x: None if x is None else x[:, cols].clone()  # noqa: E731  [T, B_total, ...] -> [T, B, ...]
    return Rollout(
        obs=obs_map(col, r.obs), starts=col(r.starts), actions=col(r.actions), log_probs=col(r.log_probs),
        values=col(r.values), rewards=col(r.rewards), terminated=col(r.terminated), truncated=col(r.truncated),
        final_values=col(r.final_values), choices=None if r.choices is None else tree_map(col, r.choices),
        choice_log_probs=col(r.choice_log_probs), seq_states=tree_map(col, r.seq_states),
        last_value=r.last_value[cols].clone(), advantages=col(r.advantages), returns=col(r.returns),
    )


def local_to_global(idx: list[int], rank: int, B: int, world: int) -> list[int]:
    """Sequence indices of a rank's :meth:`PPO.sequences` (``n = k B + b``) as indices of the whole rollout's
    (``n = k W B + rank B + b``)."""
    return [(n // B) * (world * B) + rank * B + n % B for n in idx]


MINIBATCH = {0: [0, 3, 5], 1: [1, 2, 6]}
"""The sequences of one minibatch on each rank (equal counts: the mean of the ranks' means is the global mean)."""


def ppo_checks(rank: int, world: int, out_dir: str) -> dict[str, Any]:
    """Run on each rank after the gloo group is joined; returns what the test compares with one process."""
    from agents.distributed import Dist, global_moments, update_obs_normalizer  # noqa: F401
    from agents.policy import ObsNormalizer

    ctx = Dist(world, rank, rank)
    out: dict[str, Any] = {}

    # (1) one update on the same data split across the ranks == one update of one process on all of it
    cfg = tiny_cfg(B_RANK, world_size=world)
    weights, full = full_rollout(cfg)
    ppo = make_ppo(cfg, dist=ctx)
    ppo.policy.load_state_dict(weights)
    ppo.update(split_rollout(full, rank, world))
    out["update_params"] = {k: v.clone() for k, v in ppo.policy.state_dict().items()}

    # (2) one minibatch step of chosen sequences (2 minibatches per epoch) == the step on their union
    cfg2 = tiny_cfg(B_RANK, world_size=world, num_minibatches=2)
    ppo = make_ppo(cfg2, dist=ctx)
    ppo.policy.load_state_dict(weights)
    data = ppo.sequences(split_rollout(full, rank, world))
    idx = torch.tensor(MINIBATCH[rank])
    m = ppo._minibatch_step(data, idx, idx)
    out["mb_grads"] = {n: p.grad.clone() for n, p in ppo.policy.named_parameters() if p.grad is not None}
    out["mb_params"] = {k: v.clone() for k, v in ppo.policy.state_dict().items()}
    out["mb_grad_norm"] = m["grad_norm"].clone()

    # (3) observation and return statistics over every rank's envs == over one batch of all envs
    g = torch.Generator().manual_seed(7)
    space = gym.spaces.Box(-1e3, 1e3, (3,))
    norm = ObsNormalizer(space)
    scaler = RewardScaler(B_RANK, 0.9, torch.device("cpu"), distributed_moments=True)
    for t in range(5):
        obs = 50.0 + 3.0 * torch.randn(world * B_RANK, 3, generator=g) + t  # [W B, 3], far from zero mean
        rew = torch.randn(world * B_RANK, generator=g)
        done = torch.rand(world * B_RANK, generator=g) < 0.3
        mine = slice(rank * B_RANK, (rank + 1) * B_RANK)
        update_obs_normalizer(norm, obs[mine])
        out.setdefault("scaled", []).append(scaler(rew[mine], done[mine]))
    out["obs_stats"] = {k: v.clone() for k, v in norm.state_dict().items()}
    out["ret_stats"] = {k: v.clone() for k, v in scaler.state_dict().items() if k != "ret"}

    # (4) real collect + update cycles with both normalisers on: parameters, optimizer state and statistics stay
    # bit-identical on every rank although each steps its own envs
    cfg4 = tiny_cfg(B_RANK, world_size=world, normalize_obs=True, norm_reward=True, num_minibatches=2)
    torch.manual_seed(1)
    venv = TorchVecEnv(cfg4.env, B_RANK, torch.device("cpu"), cfg4.env_kwargs_dict())
    policy = build_policy(cfg4, venv.single_observation_space, venv.single_action_space)
    from agents.distributed import broadcast_module

    torch.manual_seed(100 + rank)  # different initial weights and sampling per rank: the broadcast must fix them
    for p in policy.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)
    broadcast_module(policy)
    ppo = PPO(policy, venv, cfg4, seed=10 + rank, dist=ctx)
    metrics = []
    for _ in range(3):
        metrics.append({k: float(v) for k, v in ppo.update(ppo.collect()).items()})
    out["trained"] = {k: v.clone() for k, v in policy.state_dict().items()}
    out["adam"] = [s["exp_avg_sq"].clone() for s in ppo.optimizer.state_dict()["state"].values()]
    out["trained_ret_stats"] = {k: v.clone() for k, v in ppo.reward_scaler.state_dict().items() if k != "ret"}
    out["first_obs"] = ppo.next_obs.clone()
    out["metrics"] = metrics
    out["global_step"] = ppo.global_step
    return out


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """``torch.multiprocessing.spawn`` target: join a gloo group through ``init_file``, run :func:`ppo_checks`, save
    its results to ``out_dir/rank{rank}.pt``."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(ppo_checks(rank, world, out_dir), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
