#!/usr/bin/env python3
"""Train a recurrent PPO agent with any memory core on any supported Gymnasium env.

    python scripts/train.py --env MemoryCores/TMaze-v0 --core lstm
    python scripts/train.py --env MemoryCores/TMaze-v0 --env-kwargs '{"length": 50}' --core none --seed 2
    python scripts/train.py --resume --run-dir runs/MemoryCores_TMaze-v0__lstm__1     # continue a killed run

Per-task defaults (agents/presets.py) fill every option not given; `--env ID --help` shows them for that task.
Writes run_dir/metrics.jsonl, TensorBoard scalars (run_dir/tb) and run_dir/checkpoint.pt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(1)
    import tyro

    from agents.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
    from agents.presets import env_kwargs_for, task_defaults
    from agents.ppo import TrainConfig
    from agents.runner import TrainingStopped, default_run_dir, train

    # pre-parse the options that decide the defaults: the env (per-task defaults) and a run to resume
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env", default=TrainConfig.env)
    pre.add_argument("--run-dir", "--run_dir", default="")
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    try:
        defaults = dataclasses.asdict(TrainConfig())
        if known.resume and known.run_dir:
            # resuming: the saved run's config is the default; options given now must still fit it
            saved = load_checkpoint(os.path.join(known.run_dir, CHECKPOINT_NAME))["config"]
            defaults.update({k: v for k, v in saved.items() if k in defaults})
            defaults.update(resume=True)
        else:
            defaults.update(task_defaults(known.env))
            defaults["env"] = known.env
        cfg = tyro.cli(TrainConfig, args=argv, default=TrainConfig(**defaults), description=__doc__)
        if not known.resume:
            # env keywords of the task defaults that the command line did not set are kept
            cfg = dataclasses.replace(cfg, env_kwargs=json.dumps(env_kwargs_for(cfg.env, cfg.env_kwargs_dict())))
        if not cfg.run_dir:
            cfg = dataclasses.replace(cfg, run_dir=default_run_dir(cfg))
        summary = train(cfg)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume --run-dir <run_dir> from the last checkpoint", file=sys.stderr)
        return 130
    m = summary["metrics"]
    parts = [f"{k}={m[k]:.3f}" for k in ("ep_rew_mean", "success_rate", "fps") if k in m]
    print(f"done: {summary['global_step']} steps in {summary['seconds']:.0f} s; {' '.join(parts)}; "
          f"checkpoint {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
