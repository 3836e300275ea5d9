#!/usr/bin/env python3
"""Train a recurrent PPO agent with any memory core on any supported Gymnasium env.

    python scripts/train.py --env MemoryCores/TMaze-v0 --core lstm
    python scripts/train.py --env MemoryCores/TMaze-v0 --env-kwargs '{"length": 50}' --core none --seed 2
    python scripts/train.py --env MemoryCores/TMaze-v0 --core lstm --resume     # continue that run after a kill

Per-task defaults (agents/presets.py) fill every option not given; `--env ID --help` shows them for that task.
Writes run_dir/metrics.jsonl, TensorBoard scalars (run_dir/tb) and run_dir/checkpoint.pt (the one before it is kept
as checkpoint.prev.pt). Ctrl-C or SIGTERM finishes the update in progress, writes its checkpoint and prints the
command that continues the run (a second Ctrl-C stops at once). Without --run-dir, --resume continues the run of
the given --env, --core and --seed.

One agent over several processes (each steps its own batch of envs, num_envs per process; gradients are averaged
every minibatch; rank 0 writes logs and checkpoints; docs/distributed.md):

    torchrun --nproc-per-node 2 scripts/train.py --env MemoryCores/TMaze-v0 --core lstm --device cpu
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 scripts/train.py ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _defaults_line(env: str, has_preset: bool, resume_dir: str | None) -> str:
    """The --help line that says which defaults the option list shows."""
    if resume_dir is not None:
        return f"Defaults below: the saved config of the run in {resume_dir} (--resume); options given must fit it."
    if has_preset:
        return (f"Defaults below: the preset of {env} (agents/presets.py); another --env shows its own "
                "(`--env ID --help`); envs without a preset use the generic defaults.")
    return (f"Defaults below: the generic defaults ({env} has no preset in agents/presets.py); "
            "`--env ID --help` shows another env's.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(1)
    import tyro

    from agents import distributed
    from agents.checkpoint import CheckpointError, has_checkpoint, load_run_checkpoint
    from agents.presets import env_kwargs_for, gpu_batch, task_defaults
    from agents.ppo import TrainConfig
    from agents.runner import PeerLost, TrainingInterrupted, TrainingStopped, check_run_dir, continue_command, \
        default_run_dir, train

    # pre-parse the options that decide the defaults: the env (per-task defaults) and a run to resume
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--env", default=None)
    pre.add_argument("--env-factory", "--env_factory", default="")
    pre.add_argument("--core", default=TrainConfig.core)
    pre.add_argument("--seed", default=str(TrainConfig.seed))
    pre.add_argument("--run-dir", "--run_dir", default="")
    pre.add_argument("--resume", action="store_true")
    pre.add_argument("--env-kwargs", "--env_kwargs", default=None)
    pre.add_argument("--dist-timeout", "--dist_timeout", default=str(TrainConfig.dist_timeout))
    pre.add_argument("--preset", default="")
    known, _ = pre.parse_known_args(argv)
    # the env's name: --env, else the factory (which then names the run), else TrainConfig's default env
    known.env = known.env or known.env_factory or TrainConfig.env
    run_dir = known.run_dir or None
    ctx = distributed.Dist()
    try:
        try:
            timeout = float(known.dist_timeout)
        except ValueError:
            raise ValueError(f"--dist-timeout {known.dist_timeout!r} is not valid: expected seconds > 0") from None
        ctx = distributed.init_from_env(timeout)  # under torchrun: join the run's process group (a no-op otherwise)
        defaults = dataclasses.asdict(TrainConfig())
        if known.resume:
            # resuming: the saved run's config is the default; options given now must still fit it

            def read_saved(run_dir: str | None = run_dir) -> tuple[str, dict]:
                """The run directory and its saved config (under torchrun: on rank 0, which owns the directory)."""
                if run_dir is None:  # the run directory a new run of this --env, --core and --seed got
                    try:
                        seed = int(known.seed)
                    except ValueError:
                        raise ValueError(f"--seed {known.seed!r} is not valid: expected an integer") from None
                    run_dir = default_run_dir(TrainConfig(env=known.env, core=known.core, seed=seed))
                    if not has_checkpoint(run_dir):
                        raise CheckpointError(
                            f"--resume: no checkpoint in {run_dir}, the run directory of --env {known.env} --core "
                            f"{known.core} --seed {seed}; pass --run-dir of the run to continue"
                        )
                check_run_dir(Path(run_dir))
                return run_dir, load_run_checkpoint(run_dir)[0]["config"]  # a fallback's warning: printed by train()

            run_dir, saved = distributed.on_rank0(ctx, read_saved)
            defaults.update({k: v for k, v in saved.items() if k in defaults})
            defaults.update(resume=True, run_dir=run_dir)
            has_preset = True
        else:
            preset = task_defaults(known.env)
            defaults.update(preset)
            defaults["env"] = known.env
            has_preset = bool(preset)
            if known.preset == "gpu":  # the task's preset at GPU batch sizes (agents.presets.gpu_batch)
                defaults.update(gpu_batch(defaults))
            elif known.preset:
                raise ValueError(f"--preset {known.preset!r} is not valid: expected gpu or '' (the task's preset)")
        description = f"{__doc__}\n{_defaults_line(known.env, has_preset, run_dir if known.resume else None)}"
        if known.preset == "gpu" and not known.resume:
            description += " With --preset gpu: num_envs and num_minibatches x16 (agents.presets.gpu_batch)."
        cfg = tyro.cli(TrainConfig, args=argv, default=TrainConfig(**defaults), description=description)
        if not known.resume or known.env_kwargs is not None:
            # env keywords of the task defaults that the command line did not set are kept (on --resume only when
            # --env-kwargs is given again, as in the original command: the merged keywords must fit the saved ones)
            given = cfg.env_kwargs_dict()
            try:
                merged = env_kwargs_for(cfg.env, given)
            except (TypeError, ValueError):
                # a given value the derived keys cannot be computed from: the env itself names the key
                merged = {**json.loads(task_defaults(cfg.env).get("env_kwargs", "{}")), **given}
            cfg = dataclasses.replace(cfg, env_kwargs=json.dumps(merged))
        if not cfg.run_dir:
            cfg = dataclasses.replace(cfg, run_dir=default_run_dir(cfg))
        run_dir = cfg.run_dir
        summary = train(cfg)
    except TrainingStopped as e:
        # the same on every rank (a non-finite loss, ...): printed once; a lost peer: by each rank that saw it
        if ctx.is_main or isinstance(e, PeerLost):
            print(f"error: {e}", file=sys.stderr)
        return 1
    except distributed.PeerLostError as e:  # before training (handing rank 0's saved config to the others)
        print(f"error: rank {ctx.rank}: another process of the run stopped or stopped answering ({e})", file=sys.stderr)
        return 1
    except (ValueError, CheckpointError) as e:
        # under torchrun an error that rank 0 found and handed to the others is printed once, by rank 0
        if ctx.is_main or not getattr(e, "from_rank0", False):
            print(f"error: {e}" if ctx.is_main else f"error (rank {ctx.rank}): {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        if ctx.is_main:
            print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # before training began (building the env, ...)
        if run_dir is not None and has_checkpoint(run_dir):
            print(f"interrupted; continue from the last checkpoint with: {continue_command(run_dir, ctx.world_size)}",
                  file=sys.stderr)
        else:
            print("interrupted before any checkpoint was written: start again with the same command", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    if not ctx.is_main:
        return 0
    m = summary["metrics"]
    parts = [f"{k}={m[k]:.3f}" for k in ("ep_rew_mean", "success_rate", "fps") if k in m]
    why = f" (time budget of {cfg.time_budget:g} s reached)" if summary["stopped"] == "time budget" else ""
    t = summary.get("target")
    if t is not None:
        why += (f" (target {t['stop_at']} reached at step {t['step']:,}, {t['seconds']:.1f} s)" if t["reached"]
                else f" (target {t['stop_at']} not reached)")
    print(f"done: {summary['global_step']} steps in {summary['seconds']:.0f} s{why}; {' '.join(parts)}; "
          f"checkpoint {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    code = main()
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):  # torchrun: skip a teardown that can abort
        from agents.distributed import exit_now

        exit_now(code)
    sys.exit(code)
