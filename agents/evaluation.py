"""Evaluation of trained PPO policies (behind ``scripts/evaluate.py``): load a checkpoint, run episodes.

A checkpoint holds its policy's observation and action spaces as plain data (:mod:`agents.spaces_io`), so
:func:`load_policy` rebuilds the policy from the checkpoint alone, whatever made the env (an id, ``module:EnvId``,
an ``--env-factory`` or an env instance with wrappers given to :func:`agents.runner.train`).
:func:`evaluate_policy` runs it on an env id, an env factory or a ``VectorEnv`` instance; :func:`env_for_checkpoint`
gives what the run was trained on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import torch

from .checkpoint import CheckpointError, load_checkpoint
from .env_adapter import EnvError, TorchVecEnv, load_env_factory
from .policy import ActorCritic
from .ppo import TrainConfig
from .spaces_io import SpaceSpecError, space_from_dict, spaces_match


def build_policy(cfg: TrainConfig, observation_space: gym.Space, action_space: gym.Space) -> ActorCritic:
    """The :class:`ActorCritic` that ``cfg`` describes, for the given spaces (its cores' steps compiled with
    ``cfg.compile_core``)."""
    policy = ActorCritic(
        observation_space,
        action_space,
        core=cfg.core,
        core_kwargs=cfg.core_kwargs_dict(),
        embed_size=cfg.embed_size,
        shared_core=cfg.shared_core,
        normalize_obs=cfg.normalize_obs,
        chrono_init=cfg.chrono_init,
        head_hidden=cfg.head_hidden,
        obs_skip=cfg.obs_skip,
        head_activation=cfg.head_activation,
    )
    if cfg.compile_core:
        for core in (policy.core, policy.critic_core):
            if core is not None:
                core.compile_step(cfg.compile_core)
    return policy


def env_for_checkpoint(cfg: TrainConfig) -> str | Callable[..., gym.Env]:
    """What the run of ``cfg`` was trained on: its ``--env-factory`` (imported) if it had one, else its ``--env``
    id. (A run trained on an env instance through the Python API has neither: pass the env to
    :func:`evaluate_policy` yourself.)"""
    return load_env_factory(cfg.env_factory) if cfg.env_factory else cfg.env


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> tuple[ActorCritic, TrainConfig, dict]:
    """The policy of a checkpoint (file or run directory; in eval mode), its training config and the checkpoint.

    Built from the spaces stored in the checkpoint; checkpoints written before the spaces were stored are rebuilt
    from the spaces of the env their config names. Raises :class:`CheckpointError` for a missing, damaged or
    incompatible checkpoint."""
    ckpt = load_checkpoint(path, map_location=device)
    cfg = _config_from(ckpt, path)
    if "observation_space_spec" in ckpt:
        try:
            obs_space = space_from_dict(ckpt["observation_space_spec"])
            act_space = space_from_dict(ckpt["action_space_spec"])
        except SpaceSpecError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
    else:
        venv = TorchVecEnv(env_for_checkpoint(cfg), 1, "cpu", cfg.env_kwargs_dict(), need_final_obs=False)
        obs_space, act_space = venv.single_observation_space, venv.single_action_space
        venv.close()
    policy = build_policy(cfg, obs_space, act_space)
    try:
        policy.load_state_dict(ckpt["policy"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {str(e).splitlines()[0]}") from None
    return policy.to(device).eval(), cfg, ckpt


def _config_from(ckpt: dict, path: str | Path) -> TrainConfig:
    from .checkpoint import config_from_dict

    try:
        return config_from_dict(TrainConfig, ckpt["config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has no valid config ({type(e).__name__}: {e})") from None


def _check_spaces(venv: TorchVecEnv, policy: ActorCritic) -> None:
    if not (spaces_match(venv.single_observation_space, policy.observation_space)
            and spaces_match(venv.single_action_space, policy.action_space)):
        raise EnvError(
            f"env {venv.env_id!r} has spaces {venv.single_observation_space} / {venv.single_action_space} but the "
            f"policy was trained on {policy.observation_space} / {policy.action_space} (an env made with wrappers "
            "or a factory: evaluate on the same, e.g. --env-factory module:function)"
        )


@torch.no_grad()
def evaluate_policy(
    policy: ActorCritic,
    env: str | Callable[..., gym.Env] | gym.vector.VectorEnv,
    episodes: int = 100,
    deterministic: bool = True,
    env_kwargs: dict | None = None,
    seed: int | None = 12345,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Run ``episodes`` episodes of ``policy``; returns ``episodes``, ``mean_return``, ``mean_length`` and
    ``success_rate`` (when the env reports success: a ``success``/``is_success`` flag, or MiniGrid's positive
    reward).

    ``env``: an env id (``"module:EnvId"`` too) or an env factory (called with ``env_kwargs``): ``episodes``
    parallel copies each play their first episode, so short episodes are not over-represented; or a
    ``VectorEnv`` instance with SAME_STEP autoreset (for an env made with wrappers through the Python API): each of
    its ``n`` envs plays ``ceil(episodes / n)`` episodes and all ``n * ceil(episodes / n)`` count. The instance is
    reset with ``seed`` and not closed. ``deterministic``: the mode of the action distribution and greedy core
    choices; else sampled.
    """
    device = torch.device(device)
    instance = isinstance(env, gym.vector.VectorEnv)
    venv = TorchVecEnv(env, episodes, device, env_kwargs, need_final_obs=False)
    try:
        _check_spaces(venv, policy)
        return _run_episodes(policy, venv, math.ceil(episodes / venv.num_envs), deterministic, seed, device)
    finally:
        if not instance:
            venv.close()


def evaluate_both(policy: ActorCritic, env: str | Callable[..., gym.Env], episodes: int,
                  env_kwargs: dict | None = None, device: str | torch.device = "cpu", seed: int = 12345
                  ) -> dict[str, dict[str, float]]:
    """:func:`evaluate_policy` greedy and sampled (``{"greedy": ..., "sampled": ...}``); the sampled actions come from
    a generator seeded with ``seed`` inside a forked random state, so an evaluation repeated later gives the same
    numbers and the caller's random streams are left as they were."""
    device = torch.device(device)
    out = {}
    for mode in ("greedy", "sampled"):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out[mode] = evaluate_policy(policy, env, episodes, deterministic=mode == "greedy",
                                        env_kwargs=env_kwargs, device=device)
    return out


def _run_episodes(policy: ActorCritic, venv: TorchVecEnv, per_env: int, deterministic: bool, seed: int | None,
                  device: torch.device) -> dict[str, Any]:
    """``per_env`` episodes in each of the ``N`` envs; means over all ``N * per_env`` episodes."""
    N = venv.num_envs
    obs = policy.normalize_obs(venv.reset(seed=seed))
    start = torch.ones(N, dtype=torch.bool, device=device)
    state = policy.initial_state(N, device)
    count = torch.zeros(N, dtype=torch.long, device=device)  # [N] episodes finished per env
    ret = torch.zeros(N, device=device)  # [N] running return of the current episode
    tot_ret, tot_len, tot_success = (torch.zeros((), device=device) for _ in range(3))
    length = torch.zeros(N, device=device)
    has_success = False
    steps = 0
    while True:
        out = policy.get_action_and_value(obs, state, start, deterministic=deterministic)
        step = venv.step(policy.env_action(out.action))
        live = (count < per_env).float()  # [N] envs still playing an episode that counts
        ret += step.reward * live
        length += live
        done = step.terminated | step.truncated
        counted = done & (count < per_env)
        tot_ret += (ret * counted).sum()
        tot_len += (length * counted).sum()
        if step.success is not None:
            has_success = True
            tot_success += (step.success & counted).sum()
        ret = torch.where(done, torch.zeros_like(ret), ret)
        length = torch.where(done, torch.zeros_like(length), length)
        count += done.long()
        obs, start, state = policy.normalize_obs(step.obs), done, out.state
        steps += 1
        if steps % 16 == 0 and bool((count >= per_env).all()):
            break
    n = N * per_env
    out = {"episodes": n, "mean_return": float(tot_ret) / n, "mean_length": float(tot_len) / n}
    if has_success:
        out["success_rate"] = float(tot_success) / n
    return out
