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
from . import distributed
from .env_adapter import TorchVecEnv, load_env_factory
from .evaluation import build_policy, evaluate_policy, load_policy  # noqa: F401  (re-exported: agents.runner API)
from .ppo import EVAL_METRICS, PPO, NonFiniteLossError, TrainConfig, resolve_device
from .run_logging import NullLogger, Progress, RunLogger
from .spaces_io import space_to_dict


class TrainingStopped(RuntimeError):
    """Training stopped early (e.g. a non-finite loss); the message says what was kept."""


class PeerLost(TrainingStopped):
    """Under torchrun: another process of the run died or stopped answering (:mod:`agents.distributed`)."""


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


def continue_command(run_dir: str | Path, world_size: int = 1) -> str:
    """The command that continues the run in ``run_dir`` (under torchrun with ``world_size`` processes: the same
    torchrun launch; any other world size works too, docs/distributed.md)."""
    if world_size > 1:
        return f"torchrun --nproc-per-node {world_size} scripts/train.py --resume --run-dir {run_dir}"
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

    def __init__(self, on_second, quiet: bool = False) -> None:
        self.signum: int | None = None
        self.on_second = on_second
        self.quiet = quiet  # under torchrun: rank 0 alone says it
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
        if self.quiet:
            return
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


def _confirm(cfg: TrainConfig, ppo: PPO, source: Any, device: torch.device) -> dict[str, float]:
    """--stop-eval-episodes: the current policy on ``cfg.stop_eval_episodes`` first episodes of fresh envs, sampled
    actions from a seed of their own (the training's random streams are left as they were)."""
    seed = cfg.seed + 7919 * ppo.update_count
    was_training = ppo.policy.training
    ppo.policy.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return evaluate_policy(ppo.policy, source, cfg.stop_eval_episodes, deterministic=False,
                                   env_kwargs=cfg.env_kwargs_dict(), seed=seed, device=device)
    finally:
        ppo.policy.train(was_training)


def _stop_verdict(target: Any, metrics: dict, episodes: dict, last_episode: dict, min_episodes: int) -> bool | None:
    """Whether this update reaches ``--stop-at``'s target; None: no say. An episode statistic is judged on the
    episodes that ended in this update only (``episodes``; metrics repeat the last means while none end), and only
    when at least ``min_episodes`` did; any other metric on every update."""
    if target.metric not in last_episode:
        return target.reached(metrics)
    if episodes and episodes["episodes"] >= min_episodes:
        return target.reached(episodes)
    return None


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
    of this session, the run's training seconds and why it stopped: ``"total steps"``, ``"time budget"`` or
    ``"target reached"``; with ``--stop-at`` also ``target``: ``stop_at``, ``patience``, ``reached`` and the ``step``
    and training ``seconds`` at which the streak of updates that reached it began, the time to solve; with
    ``--stop-eval-episodes`` those of the update whose policy the evaluation confirmed, evaluation included).

    ``env``: optionally a ``VectorEnv`` instance to train on instead of ``cfg.env``. Raises ``ValueError`` (and
    subclasses such as :class:`CheckpointError`) for user errors, :class:`TrainingStopped` on a non-finite loss or
    state, and :class:`TrainingInterrupted` after SIGINT/SIGTERM (handled while training: the update in progress is
    finished and checkpointed; a second signal stops at once; the previous handlers are restored on return).

    Logs (:class:`RunLogger`): a fresh run replaces the logs an earlier attempt left in the run directory; a resumed
    one keeps them up to the checkpoint's step. ``--time-budget``: training stops at the first update that ends past
    it, counting the seconds of earlier sessions (stored in the checkpoint).

    Under ``torchrun`` (``WORLD_SIZE > 1``; :mod:`agents.distributed`) every process calls this with the same config:
    rank 0 alone checks and creates the run directory, reads checkpoints (handed to the other ranks), prints, logs
    and writes checkpoints (with ``world_size`` and every rank's RNG state); each rank steps its own
    ``cfg.num_envs`` envs, seeded ``seed + 10007 * rank``; the ranks stop together. When another rank dies or hangs
    past ``--dist-timeout``, :class:`TrainingStopped` says so and names the last checkpoint kept. A checkpoint of
    another world size resumes: its step count is re-expressed in updates of this world size.
    """
    cfg.validate()
    torch.set_num_threads(cfg.torch_threads)
    if cfg.stop_eval_episodes and env is not None and not callable(env):
        raise ValueError("--stop-eval-episodes builds evaluation envs of its own: give an env id or a factory, not an "
                         "env instance")
    ctx = distributed.init_from_env(cfg.dist_timeout)
    device = distributed.rank_device(cfg.device, ctx)
    if cfg.world_size != ctx.world_size:
        cfg = replace(cfg, world_size=ctx.world_size)
    try:
        return _train(cfg, env, ctx, device)
    except distributed.PeerLostError as e:  # during setup (the training loop says which checkpoint is kept)
        raise PeerLost(f"rank {ctx.rank}: another process of the run stopped or stopped answering ({e})") from None


def _train(cfg: TrainConfig, env: Any, ctx: distributed.Dist, device: torch.device) -> dict[str, Any]:
    """:func:`train` after the process group and the device are settled."""
    main = ctx.is_main
    run_dir = Path(cfg.run_dir or default_run_dir(cfg))
    ckpt_path = run_dir / CHECKPOINT_NAME
    # several processes: checkpoints are read on rank 0 to the host and handed to the others
    map_location = device if not ctx.enabled else "cpu"

    def prepare() -> tuple[Any, Any, Any, list[Path]]:
        """What touches the run directory (rank 0 alone): checks, the checkpoint to resume or start from, mkdir."""
        check_run_dir(run_dir)
        ckpt = loaded_from = None
        if cfg.resume:
            ckpt, loaded_from, warning = load_run_checkpoint(run_dir, map_location=map_location)
            check_compatible(config_to_dict(cfg), ckpt, loaded_from)
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        elif has_checkpoint(run_dir):
            found = ckpt_path if ckpt_path.exists() else run_dir / PREVIOUS_NAME
            raise CheckpointError(f"{found} exists: pass --resume to continue that run or choose another --run-dir")
        init = None  # --init-from: checked before the env is built (on --resume the run's own checkpoint has them)
        if cfg.init_from and ckpt is None:
            init = load_checkpoint(cfg.init_from, map_location=map_location)
            check_compatible(config_to_dict(cfg), init, cfg.init_from, names=NETWORK)
        return ckpt, loaded_from, init, _make_run_dir(run_dir)

    ckpt, loaded_from, init, created = distributed.on_rank0(ctx, prepare)
    if not main:
        created = []  # rank 0's directories
    venv = None
    try:  # setup: on a failure the directories made above are removed again (when still empty)
        torch.manual_seed(cfg.seed)
        venv = TorchVecEnv(env_source(cfg, env), cfg.num_envs, device, cfg.env_kwargs_dict())
        if venv.num_envs != cfg.num_envs:
            cfg = replace(cfg, num_envs=venv.num_envs)
            cfg.validate()
        if ctx.enabled and not distributed.same_on_all_ranks(venv.num_envs):
            raise ValueError(f"rank {ctx.rank} has {venv.num_envs} envs but another rank has a different number: "
                             "every process of a run must step the same --num-envs")
        saved_ws = int(ckpt.get("world_size", 1)) if ckpt is not None else ctx.world_size
        rounding = cfg.total_steps_rounding()
        if rounding and main:
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
        # --stop-at: updates in a row that reached the target, and the step and training second of the first of them
        streak: dict[str, Any] = {"count": 0, "step": None, "seconds": None}
        if ckpt is not None:
            try:
                policy.load_state_dict(ckpt["policy"])
            except RuntimeError as e:
                raise CheckpointError(
                    f"checkpoint {loaded_from} does not fit the policy: {str(e).splitlines()[0]}"
                ) from None
            start_update, seconds0 = int(ckpt["update"]), float(ckpt.get("train_seconds", 0.0))
            streak = dict(ckpt.get("stop_streak") or streak)  # --stop-at's streak goes on across a resume
            if saved_ws != ctx.world_size:
                # the weights, Adam's moments (of rank-averaged gradients) and the running statistics are the same on
                # every rank, so they carry over; the step count is re-expressed in updates of this world size
                start_update = int(ckpt["global_step"]) // cfg.steps_per_update
                if main:
                    print(f"resuming a run of {saved_ws} process{'es' if saved_ws > 1 else ''} with "
                          f"{ctx.world_size}: its {int(ckpt['global_step']):,} steps count as {start_update:,} "
                          f"updates of {cfg.steps_per_update:,} steps", flush=True)
        if ctx.enabled:
            distributed.broadcast_module(policy)  # every rank starts from rank 0's parameters and buffers
            # distinct action sampling per rank (and per session: a resume starts new streams)
            torch.manual_seed(cfg.seed + distributed.RANK_SEED_STRIDE * ctx.rank + 1_000_003 * start_update)
        env_seed = cfg.seed + 1_000_003 * start_update  # new episodes after a resume
        env_seed += distributed.RANK_SEED_STRIDE * ctx.rank  # distinct envs per rank
        ppo = PPO(policy, venv, cfg, seed=env_seed, dist=ctx)
        if ckpt is not None:
            ppo.load_optimizer_state(ckpt["optimizer"])
            ppo.update_count, ppo.global_step = start_update, int(ckpt["global_step"])
            ppo.load_extra_state(ckpt.get("ppo_state", {}))
            if not ctx.enabled:
                torch.set_rng_state(ckpt["torch_rng"].cpu())
            elif saved_ws == ctx.world_size and "torch_rng_per_rank" in ckpt:
                torch.set_rng_state(ckpt["torch_rng_per_rank"][ctx.rank].cpu())
        if main:
            try:
                logger = RunLogger(run_dir, cfg.tensorboard, start_step=ppo.global_step if ckpt is not None else None)
            except OSError as e:
                raise ValueError(f"--run-dir {run_dir}: cannot write the logs there ({e.strerror or e})") from None
        else:
            logger = NullLogger()
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
    if main:
        procs = f"{ctx.world_size} processes x " if ctx.enabled else ""
        print(f"{cfg.core} on {cfg.env}: {n_params:,} parameters, {procs}{cfg.num_envs} envs x {cfg.num_steps} steps per "
              f"update, {cfg.num_updates:,} updates, device {device}, torch threads {torch.get_num_threads()}; "
              f"run dir {run_dir}", flush=True)
    bar = Progress(cfg.num_updates * cfg.steps_per_update, ppo.global_step, cfg.progress and main,
                   desc=f"{cfg.core} on {cfg.env}")
    last_saved = start_update if ckpt is not None else None
    metrics: dict[str, Any] = {}
    last_episode: dict[str, float] = {}
    stopped = "total steps"
    target = cfg.stop_target()
    signalled = False  # a signal on any rank (agreed after each update)
    t0, steps0 = time.perf_counter(), ppo.global_step
    resume_cmd = continue_command(run_dir, ctx.world_size)

    def run_seconds() -> float:
        """The run's training seconds: earlier sessions' and this one's."""
        return seconds0 + time.perf_counter() - t0

    def kept() -> str:
        if last_saved is None:
            return "no checkpoint had been written yet"
        return f"kept the last good checkpoint {ckpt_path} (update {last_saved})"

    def stop_at_once(signum: int) -> None:
        done = (f"the last checkpoint {ckpt_path} (update {last_saved}) is kept; continue with: "
                f"{resume_cmd}") if last_saved is not None \
            else "no checkpoint had been written: start again with the same command"
        raise TrainingInterrupted(f"stopped at once ({signal.Signals(signum).name}) during update "
                                  f"{ppo.update_count + 1}: {done}", signum)

    def save() -> None:
        nonlocal last_saved
        logger.flush()  # every row up to this step is on disk before the checkpoint that a resume starts from
        payload = _payload(cfg, ppo, venv, run_seconds())
        payload["world_size"] = ctx.world_size
        payload["stop_streak"] = dict(streak)
        if not ctx.enabled:
            try:
                save_checkpoint(ckpt_path, payload)
            except NonFiniteStateError as e:
                raise TrainingStopped(f"training stopped at update {ppo.update_count}: {e}; {kept()}") from None
            last_saved = ppo.update_count
            return
        # several processes: every rank's RNG state, a check that the parameters are the same on every rank, the
        # file written by rank 0, and its success agreed by all (so every rank stops if it failed)
        payload["torch_rng_per_rank"] = distributed.rng_states(ctx)
        diff = distributed.max_param_difference(ppo.policy)
        if diff != 0.0:
            raise TrainingStopped(f"training stopped at update {ppo.update_count}: the parameters differ between the "
                                  f"ranks (by up to {diff:.3g}), which must not happen; {kept()}")
        error: BaseException | None = None
        if main:
            try:
                save_checkpoint(ckpt_path, payload)
            except NonFiniteStateError as e:
                error = TrainingStopped(f"training stopped at update {ppo.update_count}: {e}; {kept()}")
            except Exception as e:  # noqa: BLE001  re-raised below, after the other ranks know
                error = e
        (failed,) = distributed.any_rank(error is not None)
        if error is not None:
            raise error
        if failed:
            raise TrainingStopped(f"rank {ctx.rank}: rank 0 could not write checkpoint {ckpt_path} at update "
                                  f"{ppo.update_count} (its message says why); {kept()}")
        last_saved = ppo.update_count

    signals = _StopOnSignal(stop_at_once, quiet=not main)
    try:
        with signals:
            while ppo.update_count < cfg.num_updates:
                if cfg.time_budget > 0:
                    spent = run_seconds() >= cfg.time_budget
                    if ctx.enabled:
                        (spent,) = distributed.any_rank(spent)
                    if spent:
                        stopped = "time budget"  # a resumed run whose budget was already spent
                        break
                if target is not None and streak["count"] >= cfg.stop_patience:
                    stopped = "target reached"  # a resumed run that had already reached it
                    break
                t_up = time.perf_counter()
                rollout = ppo.collect()
                ppo.train_seconds = run_seconds()  # what the learning rate anneals over with --time-budget
                if ctx.enabled and cfg.time_budget > 0:
                    ppo.train_seconds = distributed.agree_max(ppo.train_seconds)  # the same rate on every rank
                try:
                    train_metrics = ppo.update(rollout)
                except NonFiniteLossError as e:
                    raise TrainingStopped(f"training stopped: {e} (step {ppo.global_step}); {kept()}") from None
                # one host sync per update: metrics and episode statistics
                metrics = {k: float(v) for k, v in train_metrics.items()}
                if ctx.enabled:
                    distributed.sum_episode_stats(ppo.stats)  # the episodes of every rank
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
                over_budget = cfg.time_budget > 0 and metrics["time_elapsed"] >= cfg.time_budget
                solved = False
                if target is not None:  # --stop-at: judged before the row is logged (a confirmation adds to it)
                    verdict = _stop_verdict(target, metrics, episodes, last_episode, cfg.stop_min_episodes)
                    if verdict:
                        if streak["count"] == 0:
                            streak.update(step=ppo.global_step, seconds=metrics["time_elapsed"])
                        streak["count"] += 1
                    elif verdict is not None:
                        streak.update(count=0, step=None, seconds=None)
                    solved = streak["count"] >= cfg.stop_patience
                    if solved and cfg.stop_eval_episodes:
                        ev = _confirm(cfg, ppo, env_source(cfg, env), device)
                        metrics[f"stop_eval_{target.metric}"] = ev[EVAL_METRICS[target.metric]]
                        solved = target.reached({target.metric: metrics[f"stop_eval_{target.metric}"]})
                        if solved:  # the confirmed policy's update, the evaluation's seconds included
                            streak.update(step=ppo.global_step, seconds=run_seconds())
                        else:
                            streak.update(count=0, step=None, seconds=None)
                logger.log(ppo.global_step, metrics)
                bar.update(
                    cfg.steps_per_update,
                    sps=f"{metrics['fps']:.0f}",
                    ret=f"{last_episode['ep_rew_mean']:.3f}" if "ep_rew_mean" in last_episode else None,
                    succ=f"{last_episode['success_rate']:.3f}" if "success_rate" in last_episode else None,
                )
                last = ppo.update_count == cfg.num_updates
                signalled = signals.signum is not None  # read once: a signal arriving later stops the next update
                if ctx.enabled:  # every rank stops at the same update
                    over_budget, signalled, solved = distributed.any_rank(over_budget, signalled, solved)
                if over_budget and not last:
                    stopped = "time budget"
                if solved:
                    stopped = "target reached"
                if ppo.update_count % cfg.checkpoint_every == 0 or last or over_budget or signalled or solved:
                    save()
                if over_budget or signalled or solved:
                    break
    except distributed.PeerLostError as e:
        raise PeerLost(f"rank {ctx.rank}: another process of the run stopped or stopped answering at update "
                              f"{ppo.update_count + 1} ({e}); {kept()}") from None
    finally:
        bar.close()
        logger.close()
        venv.close()
    summary = dict(
        run_dir=str(run_dir), checkpoint=str(ckpt_path), global_step=ppo.global_step, updates=ppo.update_count,
        seconds=time.perf_counter() - t0, train_seconds=run_seconds(), metrics=metrics, stopped=stopped,
    )
    if target is not None:  # time to solve: where the streak that reached --stop-at began (None: not reached)
        reached = stopped == "target reached"
        summary["target"] = dict(stop_at=str(target), patience=cfg.stop_patience, reached=reached,
                                 step=streak["step"] if reached else None,
                                 seconds=streak["seconds"] if reached else None)
    if last_saved == ppo.update_count < cfg.num_updates and stopped != "time budget" and (
        signals.signum is not None or (ctx.enabled and signalled)
    ):
        signum = signals.signum if signals.signum is not None else signal.SIGTERM  # another rank's signal
        name = "interrupted" if signum == signal.SIGINT else f"interrupted ({signal.Signals(signum).name})"
        raise TrainingInterrupted(
            f"{name} at update {ppo.update_count} ({ppo.global_step:,} steps): checkpoint written to {ckpt_path}; "
            f"continue with: {resume_cmd}", signum, dict(summary, stopped="signal"),
        )
    return summary
