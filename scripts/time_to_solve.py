#!/usr/bin/env python3
"""Time to solve: wall seconds of PPO training until each memory task is solved, per seed, on one device.

    python3 scripts/time_to_solve.py --list                                   # the tasks, stages and targets
    python3 scripts/time_to_solve.py --device cuda --seeds 1 2 3              # every task, --preset gpu settings
    python3 scripts/time_to_solve.py --device cuda --tasks tmaze-L50 copy-L6 --out runs/tts_h200
    python3 scripts/time_to_solve.py --device cpu --preset cpu --tasks tmaze-L50   # the CPU presets' batch
    python3 scripts/time_to_solve.py --report-only --out runs/tts_h200        # the table from the results alone

Each task trains until its target (e.g. rollout success_rate >= 0.95 for 2 updates in a row; a curriculum of
stages for MiniGrid) or its step budget, then is evaluated (greedy and sampled); the table gives the training
seconds to the target per seed, the median and the solved count, and is written to OUT/report.md. Finished tasks
are skipped and a killed stage resumes from its checkpoint, so the command can be re-run until the table is complete
(keep one OUT per device). Method and task definitions: agents/time_to_solve.py.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Literal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tyro  # noqa: E402


@dataclasses.dataclass
class Args:
    """Time to solve (see the description above)."""

    tasks: tuple[str, ...] = ()
    """Tasks to run (default: all, in the order --list shows)."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """Seeds; each task is trained once per seed."""
    device: str = "cpu"
    """Device of training and evaluation (cpu, cuda, cuda:1, ...)."""
    preset: Literal["gpu", "cpu"] = "gpu"
    """gpu: every stage at --preset gpu's batch (16x the task preset's envs and minibatches, the same gradient steps
    per env step; stages that set their own envs keep them); cpu: the task presets' own batch."""
    out: str = ""
    """Folder of the stage runs, the per-task results and report.md (default runs/time_to_solve_<device>)."""
    episodes: int = 500
    """Evaluation episodes per mode (greedy and sampled) of each finished task."""
    max_steps: int = 0
    """Cap every stage's step budget at this many env steps (0: the tasks' own budgets); a smoke run or a device
    session with little time left."""
    threads: int = 1
    """torch threads (set explicitly and printed; 1 is fastest for these small models on a shared CPU)."""
    list: bool = False
    """Print the tasks (stages, targets, budgets, core) and exit."""
    report_only: bool = False
    """Write the table from the results in --out without training."""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__)
    import torch

    from agents.checkpoint import CheckpointError
    from agents.runner import TrainingInterrupted, TrainingStopped
    from agents.time_to_solve import TASKS, load_results, report, result_path, run_task

    torch.set_num_threads(args.threads)
    if args.list:
        for t in TASKS.values():
            print(f"{t.name}: core {t.core}; {t.note}")
            for i, s in enumerate(t.stages):
                opts = "as above" if i and s.train == t.stages[i - 1].train else (s.train or "the preset's")
                init = f", from {t.stages[i - 1].key}'s weights" if i else ""
                print(f"  {s.key}: {s.env} {s.env_kwargs or ''} until {s.stop_at} ({s.patience} updates in a row) "
                      f"or {s.steps:,} steps{init}; options {opts}")
        return 0
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        print(f"error: --tasks {' '.join(unknown)}: unknown; expected some of {', '.join(TASKS)}", file=sys.stderr)
        return 2
    if args.max_steps < 0 or args.episodes < 1 or args.threads < 1:
        print("error: --max-steps must be >= 0, --episodes and --threads >= 1", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/time_to_solve_{args.device.replace(':', '')}")
    if not args.report_only:
        print(f"torch threads {torch.get_num_threads()}, device {args.device}, preset {args.preset}, out {out}")
        for name in args.tasks or tuple(TASKS):
            task = TASKS[name]
            if args.max_steps:
                task = dataclasses.replace(task, stages=tuple(
                    dataclasses.replace(s, steps=min(s.steps, args.max_steps)) for s in task.stages))
            for seed in args.seeds:
                if result_path(out, task, seed, args.preset).exists():
                    print(f"{name} seed {seed}: done before (skipped)")
                    continue
                try:
                    r = run_task(task, seed, out, preset=args.preset, device=args.device, episodes=args.episodes)
                except TrainingInterrupted as e:  # Ctrl-C / SIGTERM: the stage's checkpoint is written
                    print(f"{e}\nrun the same command again to continue", file=sys.stderr)
                    return e.exit_code
                except TrainingStopped as e:  # a non-finite loss: no result, so a later command tries again
                    print(f"{name} seed {seed}: error: {e}", file=sys.stderr)
                    continue
                except (ValueError, CheckpointError) as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 2
                solved = (f"solved in {r['seconds_to_solve']:.1f} s ({r['steps_to_solve']:,} steps)" if r["solved"]
                          else f"not solved in {r['steps']:,} steps ({r['train_seconds']:.1f} s)")
                print(f"{name} seed {seed}: {solved}")
    results = load_results(out)
    if not results:
        print(f"no results in {out}/results yet")
        return 0
    table = report(results)
    (out / "report.md").write_text(table)
    print(table, end="")
    print(f"written to {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
