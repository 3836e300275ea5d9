"""The training loop behind ``scripts/train.py`` and the evaluation behind ``scripts/evaluate.py``."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    NETWORK,
    check_compatible,
    config_from_dict,
    config_to_dict,
    load_checkpoint,
    save_checkpoint,
)
from .env_adapter import TorchVecEnv, load_env_factory
from .policy import ActorCritic
from .ppo import PPO, NonFiniteLossError, TrainConfig, resolve_device
from .run_logging import Progress, RunLogger
from .spaces_io import SpaceSpecError, space_from_dict, space_to_dict


class TrainingStopped(RuntimeError):
    """Training stopped early (e.g. a non-finite loss); the message says what was kept."""


def default_run_dir(cfg: TrainConfig) -> str:
    return str(Path("runs") / f"{cfg.env.replace('/', '_')}__{cfg.core}__{cfg.seed}")


def env_source(cfg: TrainConfig, env: Any = None) -> Any:
    """What :class:`TorchVecEnv` is built from: ``env`` when given (a ``VectorEnv`` or a factory), else the
    config's ``--env-factory`` (imported), else its ``--env`` id."""
    if env is not None:
        return env
    return load_env_factory(cfg.env_factory) if cfg.env_factory else cfg.env


def build_policy(cfg: TrainConfig, observation_space, action_space) -> ActorCritic:
    return ActorCritic(
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


def _payload(cfg: TrainConfig, ppo: PPO, env: TorchVecEnv) -> dict[str, Any]:
    return dict(
        config=config_to_dict(cfg),
        policy=ppo.policy.state_dict(),
        optimizer=ppo.optimizer.state_dict(),
        update=ppo.update_count,
        global_step=ppo.global_step,
        torch_rng=torch.get_rng_state(),
        observation_space=str(env.single_observation_space),
        action_space=str(env.single_action_space),
        ppo_state=ppo.extra_state(),
        # the spaces as plain data: load_policy rebuilds the policy from the checkpoint alone
        observation_space_spec=space_to_dict(env.single_observation_space),
        action_space_spec=space_to_dict(env.single_action_space),
    )


def train(cfg: TrainConfig, env: Any = None) -> dict[str, Any]:
    """Train with PPO as configured; returns a summary (last metrics, run_dir, steps, seconds).

    ``env``: optionally a ``VectorEnv`` instance to train on instead of ``cfg.env``. Raises ``ValueError`` (and
    subclasses such as :class:`CheckpointError`) for user errors and :class:`TrainingStopped` on a non-finite loss.
    """
    cfg.validate()
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.run_dir or default_run_dir(cfg))
    ckpt_path = run_dir / CHECKPOINT_NAME
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        check_compatible(config_to_dict(cfg), ckpt, ckpt_path)
    elif ckpt_path.exists():
        raise CheckpointError(f"{ckpt_path} exists: pass --resume to continue that run or choose another --run-dir")
    init = None  # --init-from: checked before the env is built (on --resume the run's own checkpoint has the weights)
    if cfg.init_from and ckpt is None:
        init = load_checkpoint(cfg.init_from, map_location=device)
        check_compatible(config_to_dict(cfg), init, cfg.init_from, names=NETWORK)

    torch.manual_seed(cfg.seed)
    venv = TorchVecEnv(env_source(cfg, env), cfg.num_envs, device, cfg.env_kwargs_dict())
    if venv.num_envs != cfg.num_envs:
        cfg = replace(cfg, num_envs=venv.num_envs)
        cfg.validate()
    policy = build_policy(cfg, venv.single_observation_space, venv.single_action_space).to(device)
    if init is not None:
        try:
            policy.load_state_dict(init["policy"])
        except RuntimeError:
            venv.close()
            raise CheckpointError(
                f"--init-from {cfg.init_from}: its policy does not fit this env's spaces "
                f"({venv.single_observation_space} / {venv.single_action_space}; it was trained with "
                f"{init.get('observation_space')} / {init.get('action_space')})"
            ) from None
    start_update = 0
    if ckpt is not None:
        try:
            policy.load_state_dict(ckpt["policy"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit the policy: {str(e).splitlines()[0]}") from None
        start_update = int(ckpt["update"])
    env_seed = cfg.seed + 1_000_003 * start_update  # new episodes after a resume
    ppo = PPO(policy, venv, cfg, seed=env_seed)
    if ckpt is not None:
        ppo.optimizer.load_state_dict(ckpt["optimizer"])
        ppo.update_count, ppo.global_step = start_update, int(ckpt["global_step"])
        ppo.load_extra_state(ckpt.get("ppo_state", {}))
        torch.set_rng_state(ckpt["torch_rng"].cpu())

    logger = RunLogger(run_dir, cfg.tensorboard, start_step=ppo.global_step if ckpt is not None else None)
    bar = Progress(cfg.num_updates * cfg.num_envs * cfg.num_steps, ppo.global_step, cfg.progress,
                   desc=f"{cfg.core} on {cfg.env}")
    last_saved = start_update if ckpt is not None else None
    metrics: dict[str, Any] = {}
    last_episode: dict[str, float] = {}
    t0, steps0 = time.perf_counter(), ppo.global_step
    try:
        while ppo.update_count < cfg.num_updates:
            t_up = time.perf_counter()
            rollout = ppo.collect()
            try:
                train_metrics = ppo.update(rollout)
            except NonFiniteLossError as e:
                kept = f"kept the last good checkpoint {ckpt_path} (update {last_saved})" if last_saved is not None \
                    else "no checkpoint had been written yet"
                raise TrainingStopped(f"training stopped: {e} (step {ppo.global_step}); {kept}") from None
            # one host sync per update: metrics and episode statistics
            metrics = {k: float(v) for k, v in train_metrics.items()}
            episodes = ppo.stats.pop()
            if episodes:
                last_episode = episodes
            metrics.update(last_episode)
            elapsed = time.perf_counter() - t0
            metrics["fps"] = (ppo.global_step - steps0) / max(elapsed, 1e-9)
            metrics["time_elapsed"] = elapsed
            metrics["iterations"] = ppo.update_count
            metrics["update_seconds"] = time.perf_counter() - t_up
            if not all(math.isfinite(v) for k, v in metrics.items() if k in ("loss", "value_loss")):
                raise TrainingStopped(f"training stopped: non-finite loss at update {ppo.update_count}")
            logger.log(ppo.global_step, metrics)
            bar.update(
                cfg.num_envs * cfg.num_steps,
                sps=f"{metrics['fps']:.0f}",
                ret=f"{last_episode['ep_rew_mean']:.3f}" if "ep_rew_mean" in last_episode else None,
                succ=f"{last_episode['success_rate']:.3f}" if "success_rate" in last_episode else None,
            )
            if ppo.update_count % cfg.checkpoint_every == 0 or ppo.update_count == cfg.num_updates:
                save_checkpoint(ckpt_path, _payload(cfg, ppo, venv))
                last_saved = ppo.update_count
    finally:
        bar.close()
        logger.close()
        venv.close()
    return dict(
        run_dir=str(run_dir), checkpoint=str(ckpt_path), global_step=ppo.global_step, updates=ppo.update_count,
        seconds=time.perf_counter() - t0, metrics=metrics,
    )


# ======================================================================================================= evaluation
def load_policy(path: str | Path, device: str | torch.device = "cpu") -> tuple[ActorCritic, TrainConfig, dict]:
    """The policy of a checkpoint (in eval mode) and its training config."""
    ckpt = load_checkpoint(path, map_location=device)
    cfg = config_from_dict(TrainConfig, ckpt["config"])
    if "observation_space_spec" in ckpt:
        try:
            obs_space = space_from_dict(ckpt["observation_space_spec"])
            act_space = space_from_dict(ckpt["action_space_spec"])
        except SpaceSpecError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
    else:  # checkpoints written before the spaces were stored: the spaces of the env it names
        venv = TorchVecEnv(cfg.env, 1, "cpu", cfg.env_kwargs_dict(), need_final_obs=False)
        obs_space, act_space = venv.single_observation_space, venv.single_action_space
        venv.close()
    policy = build_policy(cfg, obs_space, act_space)
    try:
        policy.load_state_dict(ckpt["policy"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {str(e).splitlines()[0]}") from None
    return policy.to(device).eval(), cfg, ckpt


@torch.no_grad()
def evaluate_policy(
    policy: ActorCritic,
    env: str,
    episodes: int = 100,
    deterministic: bool = True,
    env_kwargs: dict | None = None,
    seed: int = 12345,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Run ``episodes`` episodes (the first episode of each of ``episodes`` parallel envs, so short episodes are
    not over-represented); returns mean return, success rate (when the env reports success) and mean length."""
    device = torch.device(device)
    venv = TorchVecEnv(env, episodes, device, env_kwargs, need_final_obs=False)
    if str(venv.single_observation_space) != str(policy.observation_space) or str(venv.single_action_space) != str(
        policy.action_space
    ):
        raise ValueError(
            f"env {env!r} has spaces {venv.single_observation_space} / {venv.single_action_space} but the policy was "
            f"trained on {policy.observation_space} / {policy.action_space}"
        )
    N = venv.num_envs
    obs = policy.normalize_obs(venv.reset(seed=seed))
    start = torch.ones(N, dtype=torch.bool, device=device)
    state = policy.initial_state(N, device)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    ret = torch.zeros(N, device=device)
    length = torch.zeros(N, device=device)
    success = torch.zeros(N, dtype=torch.bool, device=device)
    has_success = False
    steps = 0
    while True:
        out = policy.get_action_and_value(obs, state, start, deterministic=deterministic)
        step = venv.step(policy.env_action(out.action))
        live = ~finished
        ret += step.reward * live
        length += live.float()
        done = step.terminated | step.truncated
        if step.success is not None:
            has_success = True
            success |= step.success & done & live
        finished |= done
        obs, start, state = policy.normalize_obs(step.obs), done, out.state
        steps += 1
        if steps % 16 == 0 and bool(finished.all()):
            break
    venv.close()
    out = {"episodes": N, "mean_return": float(ret.mean()), "mean_length": float(length.mean())}
    if has_success:
        out["success_rate"] = float(success.float().mean())
    return out
