#!/usr/bin/env python3
"""Time per step of the window-memory cores against their window length: ``perceiver_ar`` (context_length K) and
``memnet`` (num_slots N), with ``lstm`` as the reference.

Two measurements per size, CPU time and wall time (the machine may be shared: compare CPU time):

* ``act``: one acting step ``core(x, state)`` without gradients from a full window (the rollout's cost);
* ``train``: the fused ``unroll`` of ``--steps`` steps from a full window, forward + backward, per step (the
  update's cost).

Median over ``--repeats`` interleaved rounds after one warm-up round. Example::

    python3 scripts/benchmark_window_cores.py --sizes 16 64 256 1024 --json docs/results/perceiver_ar/timing_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from memory_cores import make_core  # noqa: E402

WINDOW_ARG = {"perceiver_ar": "context_length", "memnet": "num_slots"}


def timed(fn, device) -> tuple[float, float]:
    """(wall s, CPU s) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - w0, time.process_time() - c0


def full_state(core, name: str, batch: int, device: torch.device):
    """A state whose window is full (random contents, every slot valid); the LSTM's initial state."""
    state = core.initial_state(batch, device=device)
    if name == "perceiver_ar":
        return type(state)(torch.randn_like(state.context), torch.full_like(state.count, core.context_length))
    if name == "memnet":
        return type(state)(torch.randn_like(state.memory), state.pointer, torch.full_like(state.count, core.num_slots))
    return state


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", nargs="*", default=["perceiver_ar", "memnet"])
    p.add_argument("--sizes", type=int, nargs="*", default=[16, 64, 256, 1024], help="K (perceiver_ar) / N (memnet)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--input", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--steps", type=int, default=32, help="T of the timed training unroll")
    p.add_argument("--act-steps", type=int, default=20, help="acting steps per timed round")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = [("lstm", None)] + [(c, k) for c in args.cores for k in args.sizes]
    built = {}
    for name, size in cases:
        torch.manual_seed(0)
        kw = {"hidden_size": args.hidden}
        if size is not None:
            kw[WINDOW_ARG[name]] = size
        core = make_core(name, args.input, **kw).to(device)
        built[(name, size)] = (core, full_state(core, name, args.batch, device))

    def act(core, state):
        x = torch.randn(args.batch, args.input, device=device)
        with torch.no_grad():
            s = state
            for _ in range(args.act_steps):
                _, s = core(x, s)

    def train(core, state):
        xs = torch.randn(args.steps, args.batch, args.input, device=device)
        ys, _ = core.unroll(xs, state)
        ys.square().mean().backward()

    samples = {key: {"act": [], "train": []} for key in built}
    for r in range(args.repeats + 1):  # round 0 warms up
        for key, (core, state) in built.items():
            a = timed(lambda: act(core, state), device)
            t = timed(lambda: train(core, state), device)
            if r:
                samples[key]["act"].append((a[0] / args.act_steps, a[1] / args.act_steps))
                samples[key]["train"].append((t[0] / args.steps, t[1] / args.steps))
    rows = []
    for (name, size), s in samples.items():
        row = {"core": name, "window": size}
        for kind in ("act", "train"):
            row[f"{kind}_wall_ms"] = round(1e3 * statistics.median(w for w, _ in s[kind]), 4)
            row[f"{kind}_cpu_ms"] = round(1e3 * statistics.median(c for _, c in s[kind]), 4)
        rows.append(row)
        print(f"{name:>13} {WINDOW_ARG.get(name, '-'):>14}={size!s:>5}  act {row['act_cpu_ms']:8.3f} ms CPU "
              f"({row['act_wall_ms']:8.3f} wall)  train fwd+bwd {row['train_cpu_ms']:8.3f} ms CPU "
              f"({row['train_wall_ms']:8.3f} wall) per step", flush=True)
    result = {
        "command": "python3 scripts/benchmark_window_cores.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": vars(args),
        "rows": rows,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs".strip(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "load_average": os.getloadavg(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
