#!/usr/bin/env python3
"""Memory against time of backpropagation through time: plain BPTT, fixed-stride checkpointing and the
memory-efficient BPTT of Gruslys et al. 2016 (``memory_cores.memory_efficient_unroll``), side by side.

    python3 scripts/benchmark_bptt.py --cores lstm ntm --lengths 100 1000 --threads 1
    python3 scripts/benchmark_bptt.py --cores lstm --lengths 1000 --slots 32 --segments 1 32   # stretch length S
    python3 scripts/benchmark_bptt.py --cores dnc --lengths 1000 --slots 8 32 --device cuda

For each core and sequence length T: one forward + backward of ``core.unroll`` over ``[T, B, input]`` with a sum of
the outputs as the loss. Stored forward information is the bytes of the tensors autograd saves during the forward
pass (``torch.autograd.graph.saved_tensors_hooks``; storage counted once per tensor); on CUDA the peak allocated
memory of the whole forward+backward is printed too. Time: the median wall time of ``--repeats`` runs after one
warm-up, with the variants interleaved so that machine load falls on all alike. Fixed-stride checkpointing:
``torch.utils.checkpoint`` over segments of ``round(sqrt(T))`` steps (store one state per segment, recompute the
segment in the backward). Memory-efficient BPTT: the paper's BPTT-HSM policy with ``--slots`` stored states and
recomputed stretches of at most ``--segments`` steps (``hsm-M`` is S = 1, the paper's step-by-step recomputation;
``hsm-M-S`` recomputes stretches of S steps in one run, holding their activations during the backward pass).
``--storage internal mixed`` adds the paper's BPTT-ISM (``ism-M[-S]``: internal states of steps stored, each taking
alpha slots, alpha measured per core by ``memory_cores.internal_state_cost`` and printed) and BPTT-MSM
(``msm-M[-S]``: the cheaper of a hidden or an internal state at every split) at the same slot budgets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

import memory_cores  # noqa: E402
from memory_cores import make_core, memory_efficient_unroll, tree_leaves, tree_map  # noqa: E402


def saved_bytes(fn) -> tuple[int, object]:
    """Bytes of the tensors autograd saves while ``fn()`` runs (each storage once), and ``fn``'s result."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def strided_unroll(core, xs, state, stride: int):
    """``core.unroll`` with ``torch.utils.checkpoint`` over segments of ``stride`` steps."""
    ys = []
    leaves_template = state
    for t0 in range(0, xs.shape[0], stride):
        seg = xs[t0 : t0 + stride]

        def run(seg, *leaves):
            st = memory_cores.base.tree_unflatten(leaves_template, list(leaves))
            y, new = core.unroll(seg, st)
            return (y, *tree_leaves(new))

        out = checkpoint(run, seg, *tree_leaves(state), use_reentrant=False)
        ys.append(out[0])
        state = memory_cores.base.tree_unflatten(leaves_template, list(out[1:]))
    return torch.cat(ys), state


class StretchMeter:
    """Wraps ``core.unroll`` during the backward pass: the largest saved bytes of one grad-enabled recomputation
    (a checkpointed segment or a BPTT-HSM stretch), the graph the backward pass holds besides the stored states."""

    def __init__(self, core) -> None:
        self.core, self.largest = core, 0

    def __enter__(self) -> "StretchMeter":
        plain = self.core.unroll

        def unroll(*args, **kwargs):
            if not torch.is_grad_enabled():
                return plain(*args, **kwargs)
            nbytes, out = saved_bytes(lambda: plain(*args, **kwargs))
            self.largest = max(self.largest, nbytes)
            return out

        self.core.unroll = unroll
        return self

    def __exit__(self, *exc) -> None:
        del self.core.unroll  # back to the class's method


STORAGE_OF = {"hsm": "hidden", "ism": "internal", "msm": "mixed"}


def run_variant(variant: str, core, xs, state, slots: int, segment: int = 1,
                alpha: int = 1) -> tuple[int, int, float, float | None]:
    """Saved bytes of the forward pass, largest recomputed graph of the backward pass (bytes), seconds of
    forward + backward, CUDA peak MB (None on CPU) of one variant."""
    dev = xs.device
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    core.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    if variant == "plain":
        nbytes, (ys, _) = saved_bytes(lambda: core.unroll(xs, state))
    elif variant == "strided":
        nbytes, (ys, _) = saved_bytes(lambda: strided_unroll(core, xs, state, max(1, round(math.sqrt(len(xs))))))
    else:
        nbytes, (ys, _) = saved_bytes(lambda: memory_efficient_unroll(
            core, xs, state, memory_slots=slots, segment_steps=segment, storage=STORAGE_OF[variant],
            internal_cost=alpha))
    if variant in STORAGE_OF:
        with StretchMeter(core) as meter:
            ys.sum().backward()
        stretch = meter.largest
    else:
        ys.sum().backward()
        stretch = 0
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    if variant == "strided":  # one segment recomputed with grad (measured apart: checkpoint owns the hooks)
        stride = max(1, round(math.sqrt(len(xs))))
        stretch, _ = saved_bytes(lambda: core.unroll(xs[:stride], state))
    return nbytes, stretch, dt, peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", nargs="+", default=["lstm", "ntm"], help="core names (default: lstm ntm)")
    p.add_argument("--lengths", nargs="+", type=int, default=[100, 1000], help="sequence lengths T (default 100 1000)")
    p.add_argument("--slots", nargs="+", type=int, default=[8, 32],
                   help="memory slots of the memory-efficient variant (default: 8 32)")
    p.add_argument("--segments", nargs="+", type=int, default=[1],
                   help="longest recomputed stretch S of the memory-efficient variant (default: 1, the paper's)")
    p.add_argument("--storage", nargs="+", default=["hidden"], choices=["hidden", "internal", "mixed"],
                   help="what the memory-efficient variant stores: hidden states (BPTT-HSM, the default), internal "
                        "states (BPTT-ISM) or the mix (BPTT-MSM); several give one variant each")
    p.add_argument("--batch", type=int, default=8, help="batch size B (default 8)")
    p.add_argument("--input", type=int, default=8, help="input width (default 8)")
    p.add_argument("--hidden", type=int, default=128, help="hidden size of every core (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant, median reported (default 3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, set explicitly (default 1)")
    p.add_argument("--json", default="", help="write the rows here as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    unknown = [c for c in args.cores if c not in memory_cores.CORES]
    if min(args.slots + args.segments + args.lengths) < 1:
        p.error("--slots, --segments and --lengths must be >= 1")
    if unknown:
        p.error(f"unknown cores {unknown}; valid: {', '.join(sorted(memory_cores.CORES))}")
    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, device {dev}, torch threads {torch.get_num_threads()}, batch {args.batch}, "
          f"input {args.input}, hidden {args.hidden}, median of {args.repeats}")
    print("saved MB: forward information stored; +stretch: the largest graph recomputed at once in the backward pass; "
          "held %: both, relative to plain BPTT")
    print(f"{'core':<10}{'T':>7}  {'variant':<14}{'saved MB':>10}{'+stretch':>10}{'held %':>8}{'seconds':>9}{'time x':>8}"
          + ("  peak MB" if dev.type == "cuda" else ""))
    rows = []
    for name in args.cores:
        torch.manual_seed(0)
        core = make_core(name, args.input, hidden_size=args.hidden).to(dev)
        if name == "rl_access":
            core.eval()  # greedy choices: a deterministic unroll
        for T in args.lengths:
            xs = torch.randn(T, args.batch, args.input, device=dev, requires_grad=True)
            state = tree_map(lambda s: s.detach().requires_grad_(s.is_floating_point()),
                             core.initial_state(args.batch, dev))
            alpha = memory_cores.internal_state_cost(core, xs[:1], state)
            if set(args.storage) != {"hidden"}:
                print(f"{name}: one step's internal state = {alpha} hidden states (alpha)")
            prefix = {"hidden": "hsm", "internal": "ism", "mixed": "msm"}
            variants = ["plain", "strided"] + [f"{prefix[st]}-{m}" + (f"-{S}" if S > 1 else "") for st in args.storage
                                               for m in args.slots if m < T for S in args.segments if S < T]
            times: dict[str, list[float]] = {v: [] for v in variants}
            info: dict[str, tuple[int, float | None]] = {}
            for r in range(args.repeats + 1):  # the first round is a warm-up
                for v in variants:
                    parts = [int(n) for n in v.split("-")[1:]]
                    slots, segment = (parts + [1])[:2] if parts else (0, 1)
                    nbytes, stretch, dt, peak = run_variant(v.split("-")[0], core, xs, state, slots, segment, alpha)
                    info[v] = (nbytes, stretch, peak)
                    if r:
                        times[v].append(dt)
            base_b, base_t = info["plain"][0], statistics.median(times["plain"])
            for v in variants:
                nbytes, stretch, peak = info[v]
                held = (nbytes + stretch) / base_b
                t = statistics.median(times[v])
                row = {"core": name, "T": T, "variant": v, "alpha": alpha, "saved_bytes": nbytes,
                       "saved_fraction": nbytes / base_b,
                       "stretch_bytes": stretch, "held_fraction": held,
                       "seconds": t, "time_ratio": t / base_t, "cuda_peak_mb": peak}
                rows.append(row)
                print(f"{name:<10}{T:>7}  {v:<14}{nbytes / 2**20:>10.2f}{stretch / 2**20:>10.2f}{100 * held:>7.1f}%{t:>9.3f}"
                      f"{t / base_t:>8.2f}" + (f"{peak:>9.1f}" if peak is not None else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
