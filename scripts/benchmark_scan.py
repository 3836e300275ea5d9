#!/usr/bin/env python3
"""Speed of the scan cores (lru, ffm) against their own step loops and against lstm/gru, per time step, vs T.

For each sequence length T of ``--lengths`` and each entry, the median milliseconds per step of forward+backward
(``unroll`` with grad, then ``backward`` of a scalar) over ``--repeats`` timed unrolls after ``--warmup`` untimed
ones, as wall clock and as this process's CPU time (two tables; on a shared machine the CPU time does not count
waiting for a core). All entries of one T are timed in interleaved rounds (entry 1, entry 2, ..., entry 1, ...),
so a change of load hits them alike. Entries:

* ``lru``, ``ffm``: the core's ``unroll`` (resettable parallel scan, O(log T) depth);
* ``lru-loop``, ``ffm-loop``: the same core through the base class's step loop, ``Core.unroll(core, ...)``;
* ``scan``, ``scan-loop``: the bare recurrence ``h_t = a h_{t-1} + b_t`` on ``[T, B, hidden]`` complex tensors
  (``memory_cores.scan.resettable_scan`` against ``linear_scan_loop``), the scan without the layers around it;
* ``lstm``, ``gru``: the reference cores (torch's fused ``nn.LSTM``/``nn.GRU`` kernel when no row resets inside
  the sequence, the step loop otherwise: see ``--reset-prob``).

A last line gives one rollout step (``forward`` of one ``[B, input]`` step, no grad), what PPO's rollout runs.

Example::

    python3 scripts/benchmark_scan.py --threads 1 --json docs/results/benchmark_scan_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from memory_cores import make_core  # noqa: E402
from memory_cores.base import Core  # noqa: E402
from memory_cores.scan import linear_scan_loop, resettable_scan  # noqa: E402

ENTRIES = ["lru", "lru-loop", "ffm", "ffm-loop", "scan", "scan-loop", "lstm", "gru"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly and printed)")
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024], help="sequence lengths T")
    p.add_argument("--entries", nargs="+", default=ENTRIES, choices=ENTRIES, help="what to time (see above)")
    p.add_argument("--batch", type=int, default=32, help="batch size B")
    p.add_argument("--input", type=int, default=8, help="input width")
    p.add_argument("--hidden", type=int, default=128,
                   help="hidden_size of every core (lru: also its recurrent_size N; ffm: its output width, with the "
                        "default 32 x 4 memory) and the width of the bare scan")
    p.add_argument("--reset-prob", type=float, default=0.0,
                   help="probability that a row starts a new episode at a step (resets inside the sequence; "
                        "lstm/gru then run their step loop)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (the median is reported)")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds of timing per T at most: fewer rounds when a round is slow (at least one)")
    p.add_argument("--no-rollout", action="store_true", help="skip the one-step rollout table")
    p.add_argument("--seed", type=int, default=0, help="seed of inputs and weights")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...): timings synchronise it")
    p.add_argument("--json", default="", help="write the results here as JSON")
    return p


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_case(entry: str, T: int, args: argparse.Namespace) -> Callable[[], None]:
    """A function that runs one forward+backward of ``entry`` at length ``T`` (and waits for the device)."""
    torch.manual_seed(args.seed)
    B, dev = args.batch, torch.device(args.device)
    resets = (torch.rand(T, B) < args.reset_prob).to(dev) if args.reset_prob > 0 else None
    if entry.startswith("scan"):
        N = args.hidden
        lam = torch.polar(torch.rand(N) * 0.1 + 0.899, torch.rand(N) * 6.28).to(dev).requires_grad_(True)
        b = torch.randn(T, B, N, dtype=torch.complex64, device=dev, requires_grad=True)
        fn = resettable_scan if entry == "scan" else linear_scan_loop
        flags = None if resets is None else resets.unsqueeze(-1)

        def run_scan() -> None:
            h = fn(lam.expand(T, 1, N), b, flags)
            h.real.pow(2).mean().backward()
            lam.grad = b.grad = None
            sync(dev)

        return run_scan
    name = entry.split("-")[0]
    core = make_core(name, args.input, hidden_size=args.hidden).to(dev).train()
    xs = torch.randn(T, B, args.input, device=dev)
    unroll = (lambda *a: Core.unroll(core, *a)) if entry.endswith("-loop") else core.unroll

    def run_core() -> None:
        ys, _ = unroll(xs, core.initial_state(B), resets)
        ys.pow(2).mean().backward()
        core.zero_grad(set_to_none=True)
        sync(dev)

    return run_core


def time_round_robin(cases: dict[str, Callable[[], None]], warmup: int, repeats: int, budget: float) -> dict:
    """Median seconds per case over interleaved rounds: ``{case: (wall, process CPU time)}``. On a shared machine
    the CPU time (this process's, all threads) is the steadier of the two: it does not count time spent waiting
    for a core."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    start = time.perf_counter()
    for _ in range(repeats):
        for k, fn in cases.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
        if time.perf_counter() - start > budget:
            break
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in cases}


def rollout_step_ms(entry: str, args: argparse.Namespace) -> float:
    """Median ms of one ``forward`` step without grad (what a rollout runs), over 200 steps."""
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    core = make_core(entry, args.input, hidden_size=args.hidden).to(dev).eval()
    x = torch.randn(args.batch, args.input, device=dev)
    reset = torch.zeros(args.batch, dtype=torch.bool, device=dev)
    times = []
    with torch.no_grad():
        state = core.initial_state(args.batch, device=dev)
        for i in range(220):
            t0 = time.perf_counter()
            _, state = core(x, state, reset)
            sync(dev)
            if i >= 20:
                times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "device": args.device if args.device == "cpu" else f"{args.device} ({torch.cuda.get_device_name(args.device)})",
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs",
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "sizes": dict(batch=args.batch, input=args.input, hidden=args.hidden, reset_prob=args.reset_prob,
                      repeats=args.repeats, warmup=args.warmup),
        "command": "python3 scripts/benchmark_scan.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "fwd_bwd_ms_per_step_wall": {},
        "fwd_bwd_ms_per_step_cpu": {},
        "rollout_step_ms": {},
    }
    print(f"{info['date']}; torch {torch.__version__}, device {info['device']}, "
          f"torch threads {torch.get_num_threads()}, {info['machine']}, load average {info['load_avg']}")
    print(f"batch {args.batch}, input {args.input}, hidden {args.hidden}, reset prob {args.reset_prob}")
    header = "| T | " + " | ".join(args.entries) + " |\n" + "|---" * (len(args.entries) + 1) + "|"
    rows = {"wall": [], "cpu": []}
    for T in args.lengths:
        cases = {e: make_case(e, T, args) for e in args.entries}
        med = time_round_robin(cases, args.warmup, args.repeats, args.budget)
        for i, kind in enumerate(("wall", "cpu")):
            per_step = {e: 1e3 * med[e][i] / T for e in args.entries}
            info[f"fwd_bwd_ms_per_step_{kind}"][str(T)] = per_step
            rows[kind].append(f"| {T} | " + " | ".join(f"{per_step[e]:.3f}" for e in args.entries) + " |")
        print(f"T = {T}: done", flush=True)
    for kind, title in (("wall", "wall clock"), ("cpu", "process CPU time")):
        print(f"\nforward+backward ms per step ({title}), median of {args.repeats} interleaved rounds")
        print(header)
        print("\n".join(rows[kind]))
    if not args.no_rollout:
        names = [e for e in args.entries if e in ("lru", "ffm", "lstm", "gru")]
        print("\none rollout step (forward, no grad), ms: "
              + ", ".join(f"{n} {info['rollout_step_ms'].setdefault(n, rollout_step_ms(n, args)):.3f}" for n in names))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
        print(f"wrote {args.json}")
    return info


if __name__ == "__main__":
    main()
