#!/usr/bin/env python3
"""Associative retrieval of stored binary patterns from corrupted queries (the EBMM paper's check, sized to a CPU).

Trains one memory core on :class:`envs.paper_tasks.PatternRetrievalTask` with the supervised harness's public
functions (``agents.supervised``: ``SequenceModel``, ``train``, ``evaluate``) and writes a JSON result. It exists
beside ``scripts/train_supervised.py`` because the Hopfield baseline (:class:`memory_cores.ebmm.HopfieldCore`) is
not a registered core; registered cores (``ebmm``, ``memnet``, ``lstm``, ...) are built with ``make_core``.

Example (the configuration of docs/cores_grid_ebmm.md)::

    python3 scripts/paper_check_retrieval.py --core ebmm --core-kwargs '{"hidden_size": 14, "pattern_size": 16}' \\
        --seed 0 --max-minutes 1 --out docs/results/ebmm/retrieval_ebmm_s0.json

Besides the trained model's bit errors, the JSON holds the bit errors of a classical Hopfield network with no
training (Hebb rule on the raw +-1 patterns, synchronous sign updates) on the same test sequences, as a reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agents.supervised import SequenceModel, TrainConfig, count_parameters, evaluate, train  # noqa: E402
from envs.paper_tasks import PatternRetrievalTask  # noqa: E402
from memory_cores import CORES, make_core  # noqa: E402
from memory_cores.ebmm import HopfieldCore  # noqa: E402


def classical_hopfield_errors(task: PatternRetrievalTask, sizes, num_sequences: int, seed: int, steps: int = 5):
    """Bit errors per sequence of an untrained Hopfield network (W = sum_k p_k p_k^T, zero diagonal; x <- sign(W x)
    ``steps`` times from the query) on the test sequences of :func:`agents.supervised.evaluate` (same seed)."""
    gen = torch.Generator().manual_seed(seed)
    d = task.pattern_bits
    out = {}
    for size in sizes:
        K, errs, left = int(size), [], num_sequences
        while left > 0:  # the batches of evaluate(): the same sequences
            batch = task.sample(min(128, left), size=K, generator=gen)
            left -= batch.inputs.shape[1]
            p = batch.inputs[:K, :, :d]  # [K, B, d] stored patterns
            W = torch.einsum("kbi,kbj->bij", p, p) * (1 - torch.eye(d))
            x = batch.inputs[K : 2 * K, :, :d]  # [K, B, d] queries
            for _ in range(steps):
                x = torch.where(torch.einsum("bij,kbj->kbi", W, x) >= 0, 1.0, -1.0)
            errs.append(((x > 0).float() != batch.targets[K : 2 * K]).float().sum(dim=(0, 2)))  # [B]
        wrong = torch.cat(errs)
        out[str(size)] = {"mean": wrong.mean().item(), "perfect_fraction": (wrong == 0).float().mean().item()}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--core", default="ebmm", help=f"hopfield, or a registered core: {', '.join(sorted(CORES))}")
    p.add_argument("--core-kwargs", default="{}", help="constructor keywords as a JSON object")
    p.add_argument("--label", default="", help="name in the results (default: the core name)")
    p.add_argument("--pattern-bits", type=int, default=16, help="d, bits per pattern")
    p.add_argument("--min-patterns", type=int, default=1, help="fewest patterns stored per sequence")
    p.add_argument("--max-patterns", type=int, default=4, help="most patterns stored per sequence (training)")
    p.add_argument("--noise", default="flip", choices=["flip", "block"], help="corruption of the queries")
    p.add_argument("--noise-level", type=float, default=0.2, help="fraction of the bits corrupted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-minutes", type=float, default=1.0, help="training wall time")
    p.add_argument("--max-sequences", type=int, default=10_000_000)
    p.add_argument("--eval-sizes", type=int, nargs="*", default=[1, 2, 3, 4, 6], help="numbers of stored patterns")
    p.add_argument("--eval-sequences", type=int, default=512)
    p.add_argument("--out", required=True, help="JSON result path")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = PatternRetrievalTask(args.pattern_bits, args.min_patterns, args.max_patterns, args.noise, args.noise_level)
    kwargs = json.loads(args.core_kwargs)
    if args.core == "hopfield":
        core = HopfieldCore(task.input_size, **kwargs)
    else:
        core = make_core(args.core, task.input_size, **kwargs)
    model = SequenceModel(core, task.target_size)
    cfg = TrainConfig(batch_size=args.batch_size, max_sequences=args.max_sequences, max_minutes=args.max_minutes,
                      lr=args.lr, clip_value=None, clip_norm=1.0, log_every=100, early_stop_errors=None,
                      seed=args.seed)
    label = args.label or args.core
    result = {
        "label": label,
        "core": args.core,
        "core_kwargs": kwargs,
        "task": "pattern_retrieval",
        "task_kwargs": {"pattern_bits": args.pattern_bits, "min_patterns": args.min_patterns,
                        "max_patterns": args.max_patterns, "noise": args.noise, "noise_level": args.noise_level},
        "parameters": count_parameters(model),
        "memory_floats_per_row": core.state_size,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs",
        "command": "python3 scripts/paper_check_retrieval.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"{label} s{args.seed}: {result['parameters']} parameters, {core.state_size} memory floats per row",
          flush=True)
    result["train"] = train(model, task, cfg)
    ev = evaluate(model, task, args.eval_sizes, args.eval_sequences)
    d = args.pattern_bits
    result["eval"] = {str(k): {**v, "bit_error_rate": v["mean"] / (k * d)} for k, v in ev.items()}
    result["classical_hopfield"] = {
        k: {**v, "bit_error_rate": v["mean"] / (int(k) * d)}
        for k, v in classical_hopfield_errors(task, args.eval_sizes, args.eval_sequences, 12345).items()
    }
    print(f"{label} s{args.seed}: {result['train']['sequences']} sequences in {result['train']['wall_s']:.0f} s "
          f"({result['train']['stopped']})", flush=True)
    for k, v in result["eval"].items():
        print(f"  K={k}: bit error rate {v['bit_error_rate']:.4f}, all queries right {100 * v['perfect_fraction']:.0f}%"
              f"  (untrained Hopfield {result['classical_hopfield'][k]['bit_error_rate']:.4f})", flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
