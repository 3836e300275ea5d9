#!/usr/bin/env python3
"""Tables of the memnet / perceiver_ar paper checks from their stored JSON results (median over seeds).

Reads ``docs/results/memnet/*.json`` and ``docs/results/perceiver_ar/*.json`` written by
``scripts/train_supervised.py``, groups them by (task, label), and prints one markdown row per group: per test size
the median error (bAbI: answer error rate, ``1 - perfect_fraction``; copy / associative recall: bit errors per
sequence and the fraction of perfect sequences), the per-seed values, training sequences, wall time and how each
run stopped. ``--json`` writes the same as a summary file.

    python3 scripts/summarize_window_cores.py --json docs/results/memnet/summary.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dirs", nargs="*", default=["docs/results/memnet", "docs/results/perceiver_ar"])
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for d in args.dirs:
        for path in sorted(glob.glob(os.path.join(ROOT, d, "*.json"))):
            r = json.load(open(path))
            if "train" not in r or "eval" not in r:
                continue
            task = r["task"] + ("" if not r.get("task_kwargs") else
                                "(" + ",".join(f"{k}={v}" for k, v in sorted(r["task_kwargs"].items())) + ")")
            groups[(task, r["label"])].append(r)
    summary = []
    for (task, label), runs in sorted(groups.items()):
        runs.sort(key=lambda r: r["seed"])
        babi = task.startswith("babi")
        row = {"task": task, "label": label, "core": runs[0]["core"], "core_kwargs": runs[0]["core_kwargs"],
               "parameters": runs[0]["parameters"], "seeds": [r["seed"] for r in runs],
               "sequences": [r["train"]["sequences"] for r in runs],
               "wall_s": [r["train"]["wall_s"] for r in runs], "stopped": [r["train"]["stopped"] for r in runs],
               "eval": {}}
        for size in runs[0]["eval"]:
            if babi:
                per_seed = [round(100 * (1 - r["eval"][size]["perfect_fraction"]), 1) for r in runs]
                row["eval"][size] = {"answer_error_pct": per_seed, "median": statistics.median(per_seed)}
            else:
                errs = [round(r["eval"][size]["mean"], 2) for r in runs]
                perfect = [round(100 * r["eval"][size]["perfect_fraction"], 1) for r in runs]
                row["eval"][size] = {"bit_errors": errs, "median": statistics.median(errs),
                                     "perfect_pct": perfect, "median_perfect_pct": statistics.median(perfect)}
        summary.append(row)
        cells = []
        for size, e in row["eval"].items():
            if babi:
                cells.append(f"size {size}: **{e['median']:.1f}%** ({', '.join(f'{v:.1f}' for v in e['answer_error_pct'])})")
            else:
                cells.append(f"size {size}: **{e['median']:.2f}** bit errors ({', '.join(f'{v:.2f}' for v in e['bit_errors'])}), "
                             f"perfect {e['median_perfect_pct']:.0f}%")
        print(f"| {task} | {label} ({row['parameters']:,}) | {'; '.join(cells)} | "
              f"{', '.join(f'{s // 1000}k' for s in row['sequences'])} | {', '.join(f'{w:.0f}' for w in row['wall_s'])} | "
              f"{', '.join(row['stopped'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"wrote {args.json}")
    return {"rows": summary}


if __name__ == "__main__":
    main()
