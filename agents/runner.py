"""The training loop behind ``scripts/train.py`` (evaluation: :mod:`agents.evaluation`, re-exported here)."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_NAME,
    CheckpointError,
    NETWORK,
    NonFiniteStateError,
    check_compatible,
    config_to_dict,
    has_checkpoint,
    load_checkpoint,
    load_run_checkpoint,
    save_checkpoint,
)
from .env_adapter import TorchVecEnv, load_env_factory
from .evaluation import build_policy, evaluate_policy, load_policy  # noqa: F401  (re-exported: agents.runner API)
from .ppo import PPO, NonFiniteLossError, TrainConfig, resolve_device
from .run_logging import Progress, RunLogger
from .spaces_io import space_to_dict


class TrainingStopped(RuntimeError):
    """Training stopped early (e.g. a non-finite loss); the message says what was kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped training.

    After the first signal the update in progress is finished, logged and checkpointed; a second one stops at
    once, keeping the last checkpoint written. ``str(e)`` is the one line to print (where it stopped, the
    checkpoint, the command that continues the run); ``exit_code`` is ``128 + signum`` (130 for SIGINT, 143 for
    SIGTERM); ``summary`` is what :func:`train` returns (None after an immediate stop). A ``KeyboardInterrupt``,
    so a loop over runs stops too.
    """

    def __init__(self, message: str, signum: int, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.signum, self.summary = signum, summary

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def default_run_dir(cfg: TrainConfig) -> str:
    """``runs/<env with / replaced by _>__<core>__<seed>``: where a run goes without ``--run-dir``."""
    return str(Path("runs") / f"{cfg.env.replace('/', '_')}__{cfg.core}__{cfg.seed}")


def continue_command(run_dir: str | Path) -> str:
    """The command that continues the run in ``run_dir``."""
    return f"python3 scripts/train.py --resume --run-dir {run_dir}"


def check_run_dir(run_dir: Path) -> list[Path]:
    """The directories to create for ``run_dir`` (missing ones, leaf first); ``ValueError`` in one line when it is a
    file or lies under one."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run-dir {run_dir} is a file, not a directory")
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    top = (missing[-1].parent if missing else run_dir)
    if top.exists() and not top.is_dir():
        raise ValueError(f"--run-dir {run_dir} cannot be created: {top} is a file, not a directory")
    return missing


def _make_run_dir(run_dir: Path) -> list[Path]:
    """Create ``run_dir``; returns the directories created (leaf first). ``ValueError`` in one line when it cannot."""
    missing = check_run_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--run-dir {run_dir} cannot be created ({e.strerror or e})") from None
    return missing


class _StopOnSignal:
    """Within ``with``: the first SIGINT or SIGTERM sets :attr:`signum` (the training loop finishes the update in
    progress, checkpoints and stops); a second one calls ``on_second(signum)``, which raises. The previous handlers
    are restored on exit. Outside the main thread (where Python cannot install handlers) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_second) -> None:
        self.signum: int | None = None
        self.on_second = on_second
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.on_second(signum)
            return
        self.signum = signum
        # os.write: safe inside a handler, even while a progress bar is printing
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after the update in progress to write a checkpoint "
                    f"(press Ctrl-C again to stop at once)\n".encode())

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def env_source(cfg: TrainConfig, env: Any = None) -> Any:
    """What :class:`TorchVecEnv` is built from: ``env`` when given (a ``VectorEnv`` or a factory), else the
    config's ``--env-factory`` (imported), else its ``--env`` id."""
    if env is not None:
        return env
    return load_env_factory(cfg.env_factory) if cfg.env_factory else cfg.env


def _payload(cfg: TrainConfig, ppo: PPO, env: TorchVecEnv, train_seconds: float) -> dict[str, Any]:
    """The checkpoint of the run so far (see :mod:`agents.checkpoint`); ``train_seconds``: the run's training seconds,
    earlier sessions included (what ``--time-budget`` counts)."""
    return dict(
        config=config_to_dict(cfg),
        policy=ppo.policy.state_dict(),
        optimizer=ppo.optimizer.state_dict(),
        update=ppo.update_count,
        global_step=ppo.global_step,
        train_seconds=float(train_seconds),
        torch_rng=torch.get_rng_state(),
        observation_space=str(env.single_observation_space),
        action_space=str(env.single_action_space),
        ppo_state=ppo.extra_state(),
        # the spaces as plain data: load_policy rebuilds the policy from the checkpoint alone
        observation_space_spec=space_to_dict(env.single_observation_space),
        action_space_spec=space_to_dict(env.single_action_space),
    )


def train(cfg: TrainConfig, env: Any = None) -> dict[str, Any]:
    """Train with PPO as configured; returns a summary (last metrics, run_dir, checkpoint, steps, updates, seconds
    of this session, the run's training seconds and why it stopped: ``"total steps"`` or ``"time budget"``).

    ``env``: optionally a ``VectorEnv`` instance to train on instead of ``cfg.env``. Raises ``ValueError`` (and
    subclasses such as :class:`CheckpointError`) for user errors, :class:`TrainingStopped` on a non-finite loss or
    state, and :class:`TrainingInterrupted` after SIGINT/SIGTERM (handled while training: the update in progress is
    finished and checkpointed; a second signal stops at once; the previous handlers are restored on return).

    Logs (:class:`RunLogger`): a fresh run replaces the logs an earlier attempt left in the run directory; a resumed
    one keeps them up to the checkpoint's step. ``--time-budget``: training stops at the first update that ends past
    it, counting the seconds of earlier sessions (stored in the checkpoint).
    """
    cfg.validate()
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.run_dir or default_run_dir(cfg))
    check_run_dir(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    ckpt = None
    if cfg.resume:
        ckpt, loaded_from, warning = load_run_checkpoint(run_dir, map_location=device)
        check_compatible(config_to_dict(cfg), ckpt, loaded_from)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    elif has_checkpoint(run_dir):
        found = ckpt_path if ckpt_path.exists() else run_dir / PREVIOUS_NAME
        raise CheckpointError(f"{found} exists: pass --resume to continue that run or choose another --run-dir")
    init = None  # --init-from: checked before the env is built (on --resume the run's own checkpoint has the weights)
    if cfg.init_from and ckpt is None:
        init = load_checkpoint(cfg.init_from, map_location=device)
        check_compatible(config_to_dict(cfg), init, cfg.init_from, names=NETWORK)

    created = _make_run_dir(run_dir)
    venv = None
    try:  # setup: on a failure the directories made above are removed again (when still empty)
        torch.manual_seed(cfg.seed)
        venv = TorchVecEnv(env_source(cfg, env), cfg.num_envs, device, cfg.env_kwargs_dict())
        if venv.num_envs != cfg.num_envs:
            cfg = replace(cfg, num_envs=venv.num_envs)
            cfg.validate()
        rounding = cfg.total_steps_rounding()
        if rounding:
            print(rounding, flush=True)
        policy = build_policy(cfg, venv.single_observation_space, venv.single_action_space).to(device)
        if init is not None:
            try:
                policy.load_state_dict(init["policy"])
            except RuntimeError:
                raise CheckpointError(
                    f"--init-from {cfg.init_from}: its policy does not fit this env's spaces "
                    f"({venv.single_observation_space} / {venv.single_action_space}; it was trained with "
                    f"{init.get('observation_space')} / {init.get('action_space')})"
                ) from None
        start_update, seconds0 = 0, 0.0
        if ckpt is not None:
            try:
                policy.load_state_dict(ckpt["policy"])
            except RuntimeError as e:
                raise CheckpointError(
                    f"checkpoint {loaded_from} does not fit the policy: {str(e).splitlines()[0]}"
                ) from None
            start_update, seconds0 = int(ckpt["update"]), float(ckpt.get("train_seconds", 0.0))
        env_seed = cfg.seed + 1_000_003 * start_update  # new episodes after a resume
        ppo = PPO(policy, venv, cfg, seed=env_seed)
        if ckpt is not None:
            ppo.optimizer.load_state_dict(ckpt["optimizer"])
            ppo.update_count, ppo.global_step = start_update, int(ckpt["global_step"])
            ppo.load_extra_state(ckpt.get("ppo_state", {}))
            torch.set_rng_state(ckpt["torch_rng"].cpu())
        try:
            logger = RunLogger(run_dir, cfg.tensorboard, start_step=ppo.global_step if ckpt is not None else None)
        except OSError as e:
            raise ValueError(f"--run-dir {run_dir}: cannot write the logs there ({e.strerror or e})") from None
    except BaseException:
        if venv is not None:
            venv.close()
        for d in created:  # leaf first; stops at the first that is not empty
            try:
                d.rmdir()
            except OSError:
                break
        raise

    n_params = sum(p.numel() for p in policy.parameters())
    print(f"{cfg.core} on {cfg.env}: {n_params:,} parameters, {cfg.num_envs} envs x {cfg.num_steps} steps per update, "
          f"{cfg.num_updates:,} updates, device {device}, torch threads {torch.get_num_threads()}; run dir {run_dir}",
          flush=True)
    bar = Progress(cfg.num_updates * cfg.steps_per_update, ppo.global_step, cfg.progress,
                   desc=f"{cfg.core} on {cfg.env}")
    last_saved = start_update if ckpt is not None else None
    metrics: dict[str, Any] = {}
    last_episode: dict[str, float] = {}
    stopped = "total steps"
    t0, steps0 = time.perf_counter(), ppo.global_step

    def run_seconds() -> float:
        """The run's training seconds: earlier sessions' and this one's."""
        return seconds0 + time.perf_counter() - t0

    def kept() -> str:
        if last_saved is None:
            return "no checkpoint had been written yet"
        return f"kept the last good checkpoint {ckpt_path} (update {last_saved})"

    def stop_at_once(signum: int) -> None:
        done = (f"the last checkpoint {ckpt_path} (update {last_saved}) is kept; continue with: "
                f"{continue_command(run_dir)}") if last_saved is not None \
            else "no checkpoint had been written: start again with the same command"
        raise TrainingInterrupted(f"stopped at once ({signal.Signals(signum).name}) during update "
                                  f"{ppo.update_count + 1}: {done}", signum)

    def save() -> None:
        nonlocal last_saved
        logger.flush()  # every row up to this step is on disk before the checkpoint that a resume starts from
        try:
            save_checkpoint(ckpt_path, _payload(cfg, ppo, venv, run_seconds()))
        except NonFiniteStateError as e:
            raise TrainingStopped(f"training stopped at update {ppo.update_count}: {e}; {kept()}") from None
        last_saved = ppo.update_count

    signals = _StopOnSignal(stop_at_once)
    try:
        with signals:
            while ppo.update_count < cfg.num_updates:
                if cfg.time_budget > 0 and run_seconds() >= cfg.time_budget:
                    stopped = "time budget"  # a resumed run whose budget was already spent
                    break
                t_up = time.perf_counter()
                rollout = ppo.collect()
                ppo.train_seconds = run_seconds()  # what the learning rate anneals over with --time-budget
                try:
                    train_metrics = ppo.update(rollout)
                except NonFiniteLossError as e:
                    raise TrainingStopped(f"training stopped: {e} (step {ppo.global_step}); {kept()}") from None
                # one host sync per update: metrics and episode statistics
                metrics = {k: float(v) for k, v in train_metrics.items()}
                episodes = ppo.stats.pop()
                if episodes:
                    last_episode = episodes
                metrics.update(last_episode)
                now = time.perf_counter()
                metrics["fps"] = (ppo.global_step - steps0) / max(now - t0, 1e-9)
                metrics["time_elapsed"] = seconds0 + now - t0
                metrics["iterations"] = ppo.update_count
                metrics["update_seconds"] = now - t_up
                if not all(math.isfinite(v) for k, v in metrics.items() if k in ("loss", "value_loss")):
                    raise TrainingStopped(f"training stopped: non-finite loss at update {ppo.update_count}; {kept()}")
                logger.log(ppo.global_step, metrics)
                bar.update(
                    cfg.steps_per_update,
                    sps=f"{metrics['fps']:.0f}",
                    ret=f"{last_episode['ep_rew_mean']:.3f}" if "ep_rew_mean" in last_episode else None,
                    succ=f"{last_episode['success_rate']:.3f}" if "success_rate" in last_episode else None,
                )
                over_budget = cfg.time_budget > 0 and metrics["time_elapsed"] >= cfg.time_budget
                last = ppo.update_count == cfg.num_updates
                signalled = signals.signum is not None  # read once: a signal arriving later stops the next update
                if over_budget and not last:
                    stopped = "time budget"
                if ppo.update_count % cfg.checkpoint_every == 0 or last or over_budget or signalled:
                    save()
                if over_budget or signalled:
                    break
    finally:
        bar.close()
        logger.close()
        venv.close()
    summary = dict(
        run_dir=str(run_dir), checkpoint=str(ckpt_path), global_step=ppo.global_step, updates=ppo.update_count,
        seconds=time.perf_counter() - t0, train_seconds=run_seconds(), metrics=metrics, stopped=stopped,
    )
    if signals.signum is not None and last_saved == ppo.update_count < cfg.num_updates and stopped != "time budget":
        name = "interrupted" if signals.signum == signal.SIGINT else f"interrupted ({signal.Signals(signals.signum).name})"
        raise TrainingInterrupted(
            f"{name} at update {ppo.update_count} ({ppo.global_step:,} steps): checkpoint written to {ckpt_path}; "
            f"continue with: {continue_command(run_dir)}", signals.signum, dict(summary, stopped="signal"),
        )
    return summary
