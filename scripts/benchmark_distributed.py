#!/usr/bin/env python3
"""Training throughput of one agent over 1, 2, ... processes (torchrun, agents/distributed.py) and the scaling
efficiency.

    python3 scripts/benchmark_distributed.py --procs 1 2 --threads 1
    python3 scripts/benchmark_distributed.py --procs 1 2 4 8 --device cuda     # K GPUs on one machine

Each configuration is a real `scripts/train.py` run (K = 1: a plain single process; K > 1: `python -m
torch.distributed.run --standalone --nproc-per-node K`), each process with --num-envs envs and --threads torch
threads (weak scaling: the global batch grows with K, as it does when a user adds processes). Steps/s are env steps
of all processes per second of training, from the run's metrics.jsonl (time_elapsed), skipping the first
--warmup updates; efficiency = steps/s(K) / (K x steps/s(1)). The load average before and after each run is printed
beside it (this benchmark means little on a machine whose cores are busy). `--compare-norm-reward` measures every K
with --no-norm-reward and with --norm-reward, which adds one small all-reduce per env step (the running return
statistics are global), to show what a collective per step costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Args:
    procs: list[int] = field(default_factory=lambda: [1, 2])
    """Numbers of processes K to measure (1 first: the baseline of the efficiency)."""
    env: str = "MemoryCores/TMaze-v0"
    """Env id (its preset applies, as in scripts/train.py)."""
    core: str = "lstm"
    """Memory core of the policy."""
    hidden_size: int = 128
    """Core hidden size."""
    num_envs: int = 64
    """Envs per process."""
    num_steps: int = 128
    """Rollout length per update."""
    updates: int = 12
    """Updates per run (the first --warmup are not timed)."""
    warmup: int = 2
    """Updates left out of the timing (start-up, first allocations)."""
    threads: int = 1
    """torch threads per process."""
    device: Literal["cpu", "cuda"] = "cpu"
    """cpu (gloo) or cuda (one GPU per process, nccl)."""
    compare_norm_reward: bool = False
    """Measure each K with --no-norm-reward and with --norm-reward (one all-reduce per env step); default: the
    env's preset decides."""
    json_out: str = ""
    """Write the rows as JSON here."""


def run_one(a: Args, k: int, extra: list[str], tmp: Path) -> dict:
    run_dir = tmp / f"k{k}{'_'.join(extra).replace('-', '')}"
    cmd = ["scripts/train.py", "--env", a.env, "--core", a.core, "--hidden-size", str(a.hidden_size),
           "--num-envs", str(a.num_envs), "--num-steps", str(a.num_steps), "--seq-len", str(a.num_steps),
           "--total-steps", str(a.updates * k * a.num_envs * a.num_steps), "--torch-threads", str(a.threads),
           "--device", a.device, "--run-dir", str(run_dir), "--no-progress", "--no-tensorboard",
           "--checkpoint-every", str(10 * a.updates), *extra]
    if k == 1:
        cmd = [sys.executable, *cmd]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(k),
               "--max-restarts", "0", *cmd]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    load0 = os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), env=env)
    load1 = os.getloadavg()[0]
    if p.returncode != 0:
        raise SystemExit(f"error: the run with {k} process(es) failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    if len(rows) <= a.warmup + 1:
        raise SystemExit(f"error: --updates {a.updates} leaves too few timed updates after --warmup {a.warmup}")
    r0, r1 = rows[a.warmup - 1] if a.warmup > 0 else {"global_step": 0, "time_elapsed": 0.0}, rows[-1]
    sps = (r1["global_step"] - r0["global_step"]) / (r1["time_elapsed"] - r0["time_elapsed"])
    return dict(procs=k, extra=" ".join(extra), steps_per_s=sps, load_before=load0, load_after=load1,
                timed_steps=r1["global_step"] - r0["global_step"])


def main(argv: list[str] | None = None) -> int:
    import tyro

    a = tyro.cli(Args, args=argv, description=__doc__)
    if not a.procs or a.procs[0] != 1 or any(k < 1 for k in a.procs):
        print(f"error: --procs {a.procs}: expected positive counts starting with 1 (the baseline)", file=sys.stderr)
        return 2
    if not 0 <= a.warmup < a.updates - 1:
        print(f"error: --warmup {a.warmup} must be >= 0 and leave at least 2 of --updates {a.updates}",
              file=sys.stderr)
        return 2
    print(f"{a.core}-{a.hidden_size} on {a.env}, {a.num_envs} envs x {a.num_steps} steps per process and update, "
          f"{a.updates} updates ({a.warmup} untimed), torch threads per process {a.threads}, device {a.device}, "
          f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in a.procs:
            variants = [["--no-norm-reward"], ["--norm-reward"]] if a.compare_norm_reward else [[]]
            for extra in variants:
                row = run_one(a, k, extra, Path(tmp))
                base = next((r for r in rows if r["procs"] == 1 and r["extra"] == row["extra"]), None)
                if base is None and k == 1:
                    base = row
                row["efficiency"] = row["steps_per_s"] / (k * base["steps_per_s"]) if base else float("nan")
                rows.append(row)
                print(f"{k} process{'es' if k > 1 else '  '} {row['extra']:<17} {row['steps_per_s']:>10,.0f} steps/s"
                      f"  efficiency {row['efficiency']:.2f}  (load average {row['load_before']:.1f} -> "
                      f"{row['load_after']:.1f})", flush=True)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(dict(args=a.__dict__, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
