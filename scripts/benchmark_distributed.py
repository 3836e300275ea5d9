#!/usr/bin/env python3
"""Training throughput of one agent over 1, 2, ... processes (torchrun, agents/distributed.py) and the scaling
efficiency.

    python3 scripts/benchmark_distributed.py --procs 1 2 --threads 1
    python3 scripts/benchmark_distributed.py --procs 1 2 4 8 --device cuda     # K GPUs on one machine

For each K this script starts itself as K workers (K = 1: one plain process; K > 1: `python -m
torch.distributed.run --standalone --nproc-per-node K`). Each worker builds what scripts/train.py builds (the env's
preset, TorchVecEnv, ActorCritic, PPO with the process group; parameters broadcast from rank 0) with --num-envs envs
and --threads torch threads, runs --warmup untimed updates and then --updates timed ones (collect + update), and
reports its wall-clock and CPU seconds. Weak scaling: the global batch grows with K, as it does when a user adds
processes to the same command.

Reported per K: steps/s = env steps of all processes / wall seconds of the slowest rank; wall efficiency =
steps/s(K) / (K x steps/s(1)); steps per CPU-second = env steps / CPU seconds of all ranks and its ratio to K = 1
(CPU efficiency: what distribution costs in work, whatever else runs on the machine); the load average around the
run. `--compare-norm-reward` measures every K with --no-norm-reward and --norm-reward (the latter adds one small
all-reduce per env step: the running return statistics are global).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
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
    """Rollout length per update (also the BPTT length)."""
    updates: int = 8
    """Timed updates per run."""
    warmup: int = 2
    """Untimed updates before them (first allocations, caches)."""
    threads: int = 1
    """torch threads per process."""
    device: Literal["cpu", "cuda"] = "cpu"
    """cpu (gloo) or cuda (one GPU per process, nccl)."""
    compare_norm_reward: bool = False
    """Measure each K with --no-norm-reward and with --norm-reward (one all-reduce per env step); default: the
    env's preset decides."""
    json_out: str = ""
    """Write the rows (and the arguments) as JSON here."""
    worker_out: str = ""
    """Internal: run as one worker of a measurement and write rank 0's result here."""
    norm_reward: str = ""
    """Internal: 'on' or 'off' to override the preset's --norm-reward in a worker."""


# ================================================================================================= one worker
def worker(a: Args) -> None:
    """One rank: build the trainer as scripts/train.py does, time ``updates`` updates, rank 0 writes the result."""
    import torch

    torch.set_num_threads(a.threads)
    from agents import distributed
    from agents.env_adapter import TorchVecEnv
    from agents.evaluation import build_policy
    from agents.ppo import PPO, TrainConfig
    from agents.presets import env_kwargs_for, task_defaults

    ctx = distributed.init_from_env()
    device = distributed.rank_device(a.device, ctx)
    d = asdict(TrainConfig())
    d.update(task_defaults(a.env))
    d.update(env=a.env, core=a.core, hidden_size=a.hidden_size, num_envs=a.num_envs, num_steps=a.num_steps,
             seq_len=a.num_steps, device=a.device, torch_threads=a.threads, world_size=ctx.world_size,
             progress=False, env_kwargs=json.dumps(env_kwargs_for(a.env, json.loads(d.get("env_kwargs", "{}")))))
    if a.norm_reward:
        d["norm_reward"] = a.norm_reward == "on"
    cfg = TrainConfig(**d)
    cfg.validate()
    torch.manual_seed(cfg.seed)
    venv = TorchVecEnv(cfg.env, cfg.num_envs, device, cfg.env_kwargs_dict())
    policy = build_policy(cfg, venv.single_observation_space, venv.single_action_space).to(device)
    if ctx.enabled:
        distributed.broadcast_module(policy)
        torch.manual_seed(cfg.seed + distributed.RANK_SEED_STRIDE * ctx.rank)
    ppo = PPO(policy, venv, cfg, seed=cfg.seed + distributed.RANK_SEED_STRIDE * ctx.rank, dist=ctx)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if ctx.enabled:
            distributed.cpu_barrier()

    collect_s = update_s = 0.0
    for i in range(a.warmup + a.updates):
        if i == a.warmup:
            sync()
            t0, c0, collect_s, update_s = time.perf_counter(), time.process_time(), 0.0, 0.0
        t = time.perf_counter()
        r = ppo.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        ppo.update(r)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        collect_s, update_s = collect_s + t1 - t, update_s + time.perf_counter() - t1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sync()
    mine = torch.tensor([wall, cpu, collect_s, update_s], dtype=torch.float64)
    rows = [mine]
    if ctx.enabled:
        rows = [torch.empty_like(mine) for _ in range(ctx.world_size)]
        torch.distributed.all_gather(rows, mine)
    if ctx.is_main:
        per_rank = [r.tolist() for r in rows]
        Path(a.worker_out).write_text(json.dumps(dict(
            steps=a.updates * ctx.world_size * a.num_envs * a.num_steps, norm_reward=cfg.norm_reward,
            wall=max(r[0] for r in per_rank), cpu=sum(r[1] for r in per_rank),
            collect=max(r[2] for r in per_rank), update=max(r[3] for r in per_rank), per_rank=per_rank,
            torch_threads=torch.get_num_threads(), device=str(device), torch=torch.__version__)))
    distributed.shutdown()


# ===================================================================================================== driver
def measure(a: Args, k: int, norm_reward: str, tmp: Path) -> dict:
    out = tmp / f"k{k}_{norm_reward or 'preset'}.json"
    me = [str(Path(__file__).resolve()), "--worker-out", str(out), "--env", a.env, "--core", a.core,
          "--hidden-size", str(a.hidden_size), "--num-envs", str(a.num_envs), "--num-steps", str(a.num_steps),
          "--updates", str(a.updates), "--warmup", str(a.warmup), "--threads", str(a.threads), "--device", a.device]
    if norm_reward:
        me += ["--norm-reward", norm_reward]
    if k == 1:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(k),
               "--max-restarts", "0", *me]
    load0 = os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT),
                       env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
    load1 = os.getloadavg()[0]
    if p.returncode != 0 or not out.exists():
        raise SystemExit(f"error: the run with {k} process(es) failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads(out.read_text())
    r.update(procs=k, steps_per_s=r["steps"] / r["wall"], steps_per_cpu_s=r["steps"] / r["cpu"],
             load_before=load0, load_after=load1)
    return r


def main(argv: list[str] | None = None) -> int:
    import tyro

    a = tyro.cli(Args, args=argv, description=__doc__)
    if a.worker_out:
        worker(a)
        if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):  # torchrun: skip a teardown that can abort
            from agents.distributed import exit_now

            exit_now(0)
        return 0
    if not a.procs or a.procs[0] != 1 or any(k < 1 for k in a.procs):
        print(f"error: --procs {a.procs}: expected positive counts starting with 1 (the baseline)", file=sys.stderr)
        return 2
    if a.updates < 1 or a.warmup < 0:
        print(f"error: --updates {a.updates} / --warmup {a.warmup}: expected >= 1 / >= 0", file=sys.stderr)
        return 2
    import torch

    print(f"{a.core}-{a.hidden_size} on {a.env}, {a.num_envs} envs x {a.num_steps} steps per process and update, "
          f"{a.updates} timed updates after {a.warmup}, torch threads per process {a.threads}, device {a.device}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    rows: list[dict] = []
    variants = ["off", "on"] if a.compare_norm_reward else [""]
    with tempfile.TemporaryDirectory() as tmp:
        for k in a.procs:
            for nr in variants:
                row = measure(a, k, nr, Path(tmp))
                base = next(r for r in rows + [row] if r["procs"] == 1 and r["norm_reward"] == row["norm_reward"])
                row["wall_efficiency"] = row["steps_per_s"] / (k * base["steps_per_s"])
                row["cpu_efficiency"] = row["steps_per_cpu_s"] / base["steps_per_cpu_s"]
                rows.append(row)
                print(f"K={k} norm_reward={'on ' if row['norm_reward'] else 'off'} {row['steps_per_s']:>9,.0f} steps/s"
                      f" (wall efficiency {row['wall_efficiency']:.2f})  {row['steps_per_cpu_s']:>8,.0f} steps per "
                      f"CPU-s (CPU efficiency {row['cpu_efficiency']:.2f})  collect {row['collect']:.2f} s, update "
                      f"{row['update']:.2f} s  load average {row['load_before']:.1f} -> {row['load_after']:.1f}",
                      flush=True)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(dict(args=asdict(a), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
