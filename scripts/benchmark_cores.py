#!/usr/bin/env python3
"""Speed of every core in ``memory_cores.CORES`` at the same sizes, per time step.

For each core: median milliseconds per step of a forward unroll (no grad) and of forward+backward (unroll with grad,
then ``backward`` of a scalar), over ``--repeats`` timed unrolls of ``--steps`` steps after ``--warmup`` untimed
ones. Cores that take ``num_slots`` are also timed at each size of ``--slots-sweep`` (forward+backward). When the
PyPI package ``dnc`` (ixaxaar's PyTorch DNC; install with ``pip install --no-deps dnc``) is importable, it is timed
side by side at the same sizes; otherwise it is skipped with a message.

Example::

    python3 scripts/benchmark_cores.py --threads 1 --json docs/results/benchmark_cpu.json
    python3 scripts/benchmark_cores.py --devices cuda --cores ntm dnc alstm rl_access lstm --graph   # + CUDA graphs
    python3 scripts/benchmark_cores.py --devices cuda --cores ntm dnc alstm rl_access --triton --graph   # + Triton kernels

``--graph`` (CUDA) also replays each core's unroll as one CUDA graph (forward, and forward+backward with the
gradients in the graph's pool: how ``--capture-update graph`` runs the update).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from memory_cores import CORES, KERNEL_CORES, make_core  # noqa: E402
from memory_cores.triton_common import available  # noqa: E402


def core_kwargs(name: str, args: argparse.Namespace, num_slots: int) -> dict:
    """The shared sizes, restricted to the keywords this core's constructor takes."""
    wanted = {
        "hidden_size": args.hidden,
        "num_slots": num_slots,
        "slot_size": args.slot_size,
        "num_read_heads": args.read_heads,
    }
    params = inspect.signature(CORES[name].__init__).parameters
    return {k: v for k, v in wanted.items() if k in params}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


BUDGET_S = 20.0  # per timed case; --budget overrides


def time_it(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs; slow cases (the PyPI DNC at 1024
    slots takes seconds per step) get fewer repeats so that one case stays within ``BUDGET_S``."""
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
        sync(device)
        if time.perf_counter() - t0 > BUDGET_S / 4:
            break
    one = (time.perf_counter() - t0) / max(1, warmup)
    repeats = max(1, min(repeats, int(BUDGET_S / max(one, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_core(core: torch.nn.Module, args: argparse.Namespace, device: torch.device, fwd: bool = True) -> dict:
    """ms per step, forward (no grad) and forward+backward, for one of our cores."""
    core.to(device).train()
    T, B = args.steps, args.batch
    xs = torch.randn(T, B, args.input, device=device)

    def forward() -> None:
        with torch.no_grad():
            core.unroll(xs, core.initial_state(B, device=device))

    def forward_backward() -> None:
        ys, _ = core.unroll(xs, core.initial_state(B, device=device))
        ys.pow(2).mean().backward()
        core.zero_grad(set_to_none=True)

    out = {"fwd_bwd_ms": 1e3 * time_it(forward_backward, device, args.warmup, args.repeats) / T}
    if fwd:
        out["fwd_ms"] = 1e3 * time_it(forward, device, args.warmup, args.repeats) / T
    return out


def bench_core_graph(core: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict:
    """ms per step of the same unrolls replayed as CUDA graphs (CUDA only): the forward (no grad), and forward plus
    backward in one graph, gradients written into the graph's pool, as ``--capture-update graph`` runs a
    minibatch. The unroll is ``Core.unroll_sync_free`` (no host read, so it can be captured)."""
    core.to(device).train()
    T, B = args.steps, args.batch
    xs = torch.randn(T, B, args.input, device=device)

    def forward() -> None:
        with torch.no_grad():
            core.unroll_sync_free(xs, core.initial_state(B, device=device))

    def forward_backward() -> None:
        ys, _ = core.unroll_sync_free(xs, core.initial_state(B, device=device))
        ys.pow(2).mean().backward()

    def captured(fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
        main = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(main)
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
            for _ in range(3):
                core.zero_grad(set_to_none=True)
                fn()
        main.wait_stream(side)
        core.zero_grad(set_to_none=True)  # backward allocates the gradients in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph

    out = {"fwd_bwd_ms": 1e3 * time_it(captured(forward_backward).replay, device, args.warmup, args.repeats) / T,
           "fwd_ms": 1e3 * time_it(captured(forward).replay, device, args.warmup, args.repeats) / T}
    core.zero_grad(set_to_none=True)
    return out


def make_ixaxaar_dnc(args: argparse.Namespace, num_slots: int, device: torch.device, controller_layers: int = 1):
    """ixaxaar's ``dnc.DNC`` at our sizes (LSTM controller with ``controller_layers`` layers: 1 is like for like
    with our DNC, 2 is the package's default ``num_hidden_layers``), or None when the package is missing."""
    try:
        from dnc import DNC  # type: ignore
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        return None, f"{type(err).__name__}: {err}"
    net = DNC(
        input_size=args.input,
        hidden_size=args.hidden,
        rnn_type="lstm",
        num_layers=1,
        num_hidden_layers=controller_layers,
        nr_cells=num_slots,
        cell_size=args.slot_size,
        read_heads=args.read_heads,
        batch_first=False,
        gpu_id=device.index if device.type == "cuda" and device.index is not None else (0 if device.type == "cuda" else -1),
    )
    return net.to(device), ""


def bench_ixaxaar(net, args: argparse.Namespace, device: torch.device, fwd: bool = True) -> dict:
    T, B = args.steps, args.batch
    xs = torch.randn(T, B, args.input, device=device)

    def run():
        # (controller state, memory, read vectors) = None: fresh memory for the whole batch
        out, _ = net(xs, (None, None, None), reset_experience=True)
        return out

    def forward() -> None:
        with torch.no_grad():
            run()

    def forward_backward() -> None:
        run().pow(2).mean().backward()
        net.zero_grad(set_to_none=True)

    out = {"fwd_bwd_ms": 1e3 * time_it(forward_backward, device, args.warmup, args.repeats) / T}
    if fwd:
        out["fwd_ms"] = 1e3 * time_it(forward, device, args.warmup, args.repeats) / T
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly; printed)")
    p.add_argument("--cores", nargs="*", default=None, help="cores to time (default: every core in CORES)")
    p.add_argument("--batch", type=int, default=32, help="batch size B")
    p.add_argument("--input", type=int, default=8, help="input width")
    p.add_argument("--hidden", type=int, default=128, help="controller / LSTM hidden units")
    p.add_argument("--slots", type=int, default=64, help="memory slots N for the main table")
    p.add_argument("--slot-size", type=int, default=32, help="slot width W")
    p.add_argument("--read-heads", type=int, default=4, help="read heads R")
    p.add_argument("--slots-sweep", type=int, nargs="*", default=[64, 256, 1024],
                   help="slot counts for the scaling table (forward+backward); empty to skip")
    p.add_argument("--steps", type=int, default=16, help="time steps per timed unroll")
    p.add_argument("--warmup", type=int, default=2, help="untimed unrolls first")
    p.add_argument("--repeats", type=int, default=7, help="timed unrolls (the median is reported)")
    p.add_argument("--budget", type=float, default=BUDGET_S,
                   help="seconds per timed case: slow cases get fewer repeats (at least one)")
    p.add_argument("--devices", nargs="*", default=None, help="devices (default: cpu, and cuda when present)")
    p.add_argument("--no-ixaxaar", action="store_true",
                   help="do not time the PyPI 'dnc' package (timed with a 1-layer LSTM controller like ours, "
                        "'pypi_dnc', and with its default 2-layer controller, 'pypi_dnc_2layer'; the slot sweep "
                        "uses the 1-layer one)")
    p.add_argument("--compile-step", default="", choices=["", "default", "reduce-overhead", "max-autotune"],
                   help="also time every core with its step compiled (Core.compile_step(MODE)), in a row "
                        "'NAME+compiled' right after the eager one ('' : eager only); warm-up includes compiling")
    p.add_argument("--graph", action="store_true",
                   help="also time every core's unroll (Core.unroll_sync_free) replayed as one CUDA graph, forward "
                        "and forward+backward, in a row 'NAME+graph' (with --compile-step, of the compiled step); "
                        "CUDA only, skipped with a message on other devices")
    p.add_argument("--triton", action="store_true",
                   help=f"also time the cores that have a Triton kernel ({', '.join(KERNEL_CORES)}: "
                        "kernel='triton') in a row 'NAME+triton' (and 'NAME+triton+graph' with --graph); CUDA, or "
                        "the CPU under TRITON_INTERPRET=1 (the interpreter: correctness, not speed)")
    p.add_argument("--json", default="", help="write the results here as JSON")
    return p


def main(argv: list[str] | None = None) -> dict:
    global BUDGET_S
    args = build_parser().parse_args(argv)
    BUDGET_S = args.budget
    torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    names = args.cores or sorted(CORES)
    unknown = sorted(set(names) - set(CORES))
    if unknown:
        raise SystemExit(f"unknown core(s) {unknown}; valid: {', '.join(sorted(CORES))}")
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs",
        "sizes": dict(batch=args.batch, input=args.input, hidden=args.hidden, slots=args.slots,
                      slot_size=args.slot_size, read_heads=args.read_heads, steps=args.steps, repeats=args.repeats),
        "command": "python3 scripts/benchmark_cores.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": {},
        "sweep": {},
    }
    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, {info['machine']}")
    print(f"sizes: batch {args.batch}, input {args.input}, hidden {args.hidden}, {args.slots} slots x "
          f"{args.slot_size}, {args.read_heads} read heads; {args.steps}-step unrolls, median of {args.repeats}")
    for dev_name in devices:
        device = torch.device(dev_name)
        res: dict[str, dict] = {}
        if args.graph and device.type != "cuda":
            print(f"\n[{dev_name}] --graph skipped: CUDA graphs need a CUDA device")
        print(f"\n[{dev_name}] ms per step (median)")
        print(f"  {'core':<18}{'params':>9}{'forward':>10}{'fwd+bwd':>10}")
        def row(key: str, r: dict, params: int, base: dict | None = None, against: str = "") -> None:
            r["params"] = params
            res[key] = r
            tail = ""
            if base is not None:
                r["speedup_fwd_bwd"] = base["fwd_bwd_ms"] / r["fwd_bwd_ms"]
                tail = f"  ({r['speedup_fwd_bwd']:.2f}x{against})"
            print(f"  {key:<18}{params:>9d}{r['fwd_ms']:>10.3f}{r['fwd_bwd_ms']:>10.3f}{tail}", flush=True)

        def graph_row(key: str, core: torch.nn.Module, params: int, base: dict) -> None:
            try:
                rg = bench_core_graph(core, args, device)
            except RuntimeError as e:  # a core whose unroll cannot be captured: said, not fatal
                print(f"  {key:<18} failed to capture: {str(e).splitlines()[0][:200]}", flush=True)
                return
            row(key, rg, params, base, " against eager")

        for name in names:
            torch.manual_seed(0)
            core = make_core(name, args.input, **core_kwargs(name, args, args.slots))
            params = sum(p.numel() for p in core.parameters())
            r = bench_core(core, args, device)
            row(name, r, params)
            if args.compile_step:
                row(f"{name}+compiled", bench_core(core.compile_step(args.compile_step), args, device), params, r)
            if args.graph and device.type == "cuda":
                graph_row(f"{name}+compiled+graph" if args.compile_step else f"{name}+graph", core, params, r)
            if args.triton and name in KERNEL_CORES:
                torch.manual_seed(0)
                fast = make_core(name, args.input, kernel="triton", **core_kwargs(name, args, args.slots))
                why = available(device)
                if why:
                    print(f"  {name + '+triton':<18} skipped: {why}", flush=True)
                    continue
                row(f"{name}+triton", bench_core(fast, args, device), params, r,
                    against="; Triton's interpreter: correctness, not speed" if device.type == "cpu" else "")
                if args.graph and device.type == "cuda":
                    graph_row(f"{name}+triton+graph", fast, params, r)
        ix_net = None
        if not args.no_ixaxaar:
            torch.manual_seed(0)
            ix_net, why = make_ixaxaar_dnc(args, args.slots, device)
            if ix_net is None:
                print(f"  {'dnc (PyPI, ixaxaar)':<18} skipped: package not importable ({why}); "
                      "install with: pip install --no-deps dnc")
            else:
                # pypi_dnc: 1-layer LSTM controller like ours; pypi_dnc_2layer: the package's default 2 layers
                for key, layers in (("pypi_dnc", 1), ("pypi_dnc_2layer", 2)):
                    torch.manual_seed(0)
                    net, _ = make_ixaxaar_dnc(args, args.slots, device, layers)
                    r = bench_ixaxaar(net, args, device)
                    r["params"] = sum(p.numel() for p in net.parameters())
                    res[key] = r
                    print(f"  {key:<18}{r['params']:>9d}{r['fwd_ms']:>10.3f}{r['fwd_bwd_ms']:>10.3f}", flush=True)
                    if "dnc" in res:
                        ratio = r["fwd_bwd_ms"] / res["dnc"]["fwd_bwd_ms"]
                        res["dnc"][f"speedup_vs_{key}_fwd_bwd"] = ratio
                        print(f"  our dnc vs {key}, forward+backward: {ratio:.2f}x faster")
        info["results"][dev_name] = res
        if args.slots_sweep:
            sweep: dict[str, dict[int, float]] = {}
            mem_names = [n for n in names if "num_slots" in inspect.signature(CORES[n].__init__).parameters]
            if ix_net is not None:
                mem_names.append("pypi_dnc")
            if mem_names:
                print(f"\n[{dev_name}] forward+backward ms per step against the number of slots")
                print(f"  {'core':<18}" + "".join(f"{n:>10d}" for n in args.slots_sweep))
            for name in mem_names:
                sweep[name] = {}
                for n in args.slots_sweep:
                    torch.manual_seed(0)
                    if name == "pypi_dnc":
                        net, _ = make_ixaxaar_dnc(args, n, device)
                        sweep[name][n] = bench_ixaxaar(net, args, device, fwd=False)["fwd_bwd_ms"]
                    else:
                        core = make_core(name, args.input, **core_kwargs(name, args, n))
                        sweep[name][n] = bench_core(core, args, device, fwd=False)["fwd_bwd_ms"]
                print(f"  {name:<18}" + "".join(f"{sweep[name][n]:>10.2f}" for n in args.slots_sweep), flush=True)
            info["sweep"][dev_name] = sweep
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
        print(f"\nwrote {args.json}")
    return info


if __name__ == "__main__":
    main()
