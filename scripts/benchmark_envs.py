"""Steps per second of the batched memory-task envs with random actions.

Example::

    python3 scripts/benchmark_envs.py                       # every task, 1 / 64 / 4096 envs, CPU, 1 thread
    python3 scripts/benchmark_envs.py --tasks Copy TMaze --num-envs 4096 --seconds 2
    python3 scripts/benchmark_envs.py --device cuda --num-envs 1 4096 65536
    python3 scripts/benchmark_envs.py --tasks CartPole-v1 my_envs:MyEnv-v0 --num-envs 1 64   # any Gymnasium id

A task is a project task name (the keys of TASKS) or any Gymnasium env id, ``module:EnvId`` included (Gymnasium's
form: ``module`` is imported first so that it registers the env): ids are stepped through the trainer's env adapter
(``agents.env_adapter.TorchVecEnv``: the project's batched tensor envs on the device, any other env in a
``SyncVectorEnv`` with torch actions in and tensors out, as in training).

Random actions come from a pool generated before timing (``--action-pool`` batches, cycled), so the figure is the
env's own step rate, autoresets included. A step of N envs counts as N steps. Two rates are printed: by the wall
clock, and by this process's CPU time (on a shared machine the wall-clock rate drops with the other processes'
load; the CPU-time rate is closer to what an idle machine gives). On CUDA the clock is read after
``torch.cuda.synchronize()`` and only the wall-clock rate is meaningful.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

import envs  # noqa: E402,F401  (registers the tasks)

# task name -> keyword options for gymnasium.make_vec; add entries for new tasks here.
TASKS: dict[str, dict] = {
    "Copy": {},
    "RepeatCopy": {},
    "AssociativeRecall": {},
    "TMaze": {},
    "MemoryMaze": {},  # 9x9 maze, 5x5 view, 324-step episodes
    "MiniGridMemory": {},  # the batched port at MiniGrid-MemoryS7-v0's settings (size 7, 7x7 view)
}

# ---- MiniGrid's own MemoryEnv through Gymnasium's SyncVectorEnv, timed beside the port (needs minigrid) -----------
# env id -> the MiniGridMemory options with the same rules; printed after "MiniGridMemory" when it is timed.
MINIGRID_SYNC: dict[str, dict] = {"MiniGrid-MemoryS7-v0": {"size": 7, "view_size": 7}}


def bench_minigrid_sync(env_id: str, num_envs: int, seconds: float) -> tuple[float, float]:
    """Steps per second (wall clock, process CPU time) of ``num_envs`` MiniGrid envs in a ``SyncVectorEnv`` with
    random actions (numpy)."""
    import numpy as np

    import minigrid  # noqa: F401  (registers MiniGrid-*)

    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    pool = [rng.integers(0, 7, num_envs) for _ in range(16)]
    for i in range(5):
        env.step(pool[i])
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            env.step(pool[calls % 16])
            calls += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    env.close()
    return calls * num_envs / elapsed, calls * num_envs / cpu


def random_actions(env, pool: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``pool`` random action batches ``[N, *action_shape]`` on the env device."""
    space = env.single_action_space
    N, dev = env.num_envs, env.device
    out = []
    for _ in range(pool):
        if isinstance(space, gym.spaces.Discrete):
            a = torch.randint(int(space.start), int(space.start + space.n), (N,), generator=generator)
        elif isinstance(space, gym.spaces.MultiBinary):
            a = torch.randint(0, 2, (N, *space.shape), generator=generator).bool()
        elif isinstance(space, gym.spaces.MultiDiscrete):
            nvec = torch.as_tensor(space.nvec)
            a = (torch.rand((N, *space.shape), generator=generator) * nvec).long()
        else:
            low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
            a = low + (high - low) * torch.rand((N, *space.shape), generator=generator)
        out.append(a.to(dev))
    return out


def bench(task: str, num_envs: int, device: str, seconds: float, pool: int, options: dict,
          capture: bool = False) -> tuple[float, float]:
    """Steps per second (num_envs * env.step calls / time) of one task, by the wall clock and by this process's CPU
    time (which leaves out the time other processes hold the cores; on CUDA only the wall clock means anything)."""
    if task in TASKS:
        env = gym.make_vec(
            f"MemoryCores/{task}-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", device=device,
            **options,
        )
    else:  # any Gymnasium id, through the trainer's adapter
        from agents.env_adapter import TorchVecEnv

        env = TorchVecEnv(task, num_envs, device, options, need_final_obs=False)
    if capture:  # fixed buffers; on CUDA each step is one CUDA graph replay
        from envs.capture import StaticStep

        env = StaticStep(env.unwrapped, graph=env.unwrapped.device.type == "cuda")
    env.reset(seed=0)
    actions = random_actions(env, pool, torch.Generator().manual_seed(1))
    sync = torch.cuda.synchronize if env.device.type == "cuda" else (lambda: None)
    for i in range(20):  # warm-up
        env.step(actions[i % pool])
    sync()
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        for _ in range(50):
            env.step(actions[calls % pool])
            calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    cpu = time.process_time() - cpu_start
    env.close()
    return calls * num_envs / elapsed, calls * num_envs / max(cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS),
                        help=f"project tasks or Gymnasium env ids (module:EnvId too) to time (default: all project "
                             f"tasks: {list(TASKS)})")
    parser.add_argument(
        "--num-envs", nargs="+", type=int, default=None,
        help="batch sizes (default: 1 64 4096 on CPU; 1 64 4096 65536 on CUDA)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, set explicitly (default: 1)")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per (task, num_envs) (default: 1)")
    parser.add_argument("--action-pool", type=int, default=16, help="pre-generated random action batches (default: 16)")
    parser.add_argument(
        "--minigrid-sync-num-envs", nargs="*", type=int, default=[1, 64],
        help="with MiniGridMemory: also time minigrid's MemoryS7 in a SyncVectorEnv of these sizes (default: 1 64; "
             "none to skip)",
    )
    parser.add_argument("--capture", action="store_true",
                        help="also time each project task through envs.capture.StaticStep (fixed buffers; one CUDA "
                             "graph replay per step on a GPU), side by side with the eager step")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from agents.env_adapter import EnvError, resolve_spec

    for t in args.tasks:
        if t not in TASKS:
            try:
                resolve_spec(t)
            except EnvError as e:
                parser.error(f"--tasks {t!r} is neither a project task ({', '.join(TASKS)}) nor a known env id: {e}")
    sizes = args.num_envs or ([1, 64, 4096, 65536] if args.device.startswith("cuda") else [1, 64, 4096])
    dev_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {args.device} ({dev_name}), torch threads {torch.get_num_threads()}, "
          f"os cpus {os.cpu_count()}, load average {load:.1f}")
    print(f"{'task':<20}{'num_envs':>10}{'steps/s (wall)':>17}{'us/call':>10}{'steps/s (cpu)':>17}")
    for task in args.tasks:
        for n in sizes:
            rate, cpu_rate = bench(task, n, args.device, args.seconds, args.action_pool, TASKS.get(task, {}))
            print(f"{task:<20}{n:>10}{rate:>17,.0f}{1e6 * n / rate:>10.1f}{cpu_rate:>17,.0f}", flush=True)
            if args.capture and task in TASKS:
                c_rate, c_cpu = bench(task, n, args.device, args.seconds, args.action_pool, TASKS[task], capture=True)
                print(f"{task + ' captured':<20}{n:>10}{c_rate:>17,.0f}{1e6 * n / c_rate:>10.1f}{c_cpu:>17,.0f}"
                      f"   x{c_rate / rate:.2f}", flush=True)
        if task == "MiniGridMemory" and args.minigrid_sync_num_envs:
            for env_id in MINIGRID_SYNC:
                for n in args.minigrid_sync_num_envs:
                    rate, cpu_rate = bench_minigrid_sync(env_id, n, args.seconds)
                    name = env_id.replace("-v0", "").replace("MiniGrid-", "") + " sync"
                    print(f"{name:<20}{n:>10}{rate:>17,.0f}{1e6 * n / rate:>10.1f}{cpu_rate:>17,.0f}", flush=True)


if __name__ == "__main__":
    main()
