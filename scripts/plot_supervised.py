#!/usr/bin/env python3
"""Figures and tables from the JSON results of ``scripts/train_supervised.py``.

Reads every ``<task>_<label>_s<seed>.json`` in ``--results`` and writes, per task:

* ``learning_<task>.png``: training bit errors per sequence against sequences seen (one line per seed);
* ``generalisation_<task>.png``: test bit errors per sequence against size (median over seeds, bars min..max);
* ``weights_<task>_<label>_s<seed>.png`` for runs that stored a trace (``--trace``): inputs, outputs and the write
  and read weightings over one sequence, the NTM paper's classic picture;

and prints a Markdown table per task (median over seeds, the seeds' values, sequences seen, wall time).

Example::

    python3 scripts/plot_supervised.py --results docs/results --out docs/results
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SIZE_NAME = {"copy": "sequence length", "repeat_copy": "sequence length", "associative_recall": "number of items"}


def load(results_dir: str) -> dict[str, dict[str, list[dict]]]:
    """``{task: {label: [run, ...]}}`` from the result files (runs sorted by seed)."""
    runs: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        if not re.search(r"_s\d+\.json$", path):
            continue
        with open(path) as f:
            r = json.load(f)
        if "train" not in r or "eval" not in r:
            continue
        r["_path"] = path
        runs[r["task"]][r.get("label", r["core"])].append(r)
    for task in runs:
        for label in runs[task]:
            runs[task][label].sort(key=lambda r: r["seed"])
    return runs


def plot_learning(task: str, by_label: dict[str, list[dict]], out: str, suffix: str = "") -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, runs) in enumerate(sorted(by_label.items())):
        for j, r in enumerate(runs):
            h = r["train"]["history"]
            if not h:
                continue
            x = [p["sequences"] for p in h]
            y = [max(p["bit_errors_per_seq"], 1e-3) for p in h]
            ax.plot(x, y, color=colors[i % len(colors)], alpha=0.8, lw=1, label=label if j == 0 else None)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("training sequences")
    ax.set_ylabel("training bit errors per sequence")
    ax.set_title(f"{task}: learning curves (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(out, f"learning_{task}{suffix}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_generalisation(task: str, by_label: dict[str, list[dict]], out: str, suffix: str = "") -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, runs in sorted(by_label.items()):
        sizes = sorted({int(s) for r in runs for s in r["eval"]})
        med, lo, hi = [], [], []
        for s in sizes:
            vals = [r["eval"][str(s)]["mean"] for r in runs if str(s) in r["eval"]]
            med.append(statistics.median(vals))
            lo.append(min(vals))
            hi.append(max(vals))
        med_a = np.array(med)
        ax.errorbar(sizes, np.maximum(med_a, 1e-2), yerr=[med_a - np.array(lo), np.array(hi) - med_a],
                    marker="o", capsize=3, label=f"{label} ({len(runs)} seeds)")
    train_max = max((r["train"]["final_max_size"] for runs in by_label.values() for r in runs), default=None)
    if train_max:
        ax.axvline(train_max, color="grey", ls=":", lw=1)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel(SIZE_NAME.get(task, "size"))
    ax.set_ylabel("test bit errors per sequence")
    ax.set_title(f"{task}: errors against size (median over seeds, bars min..max; dotted: largest trained)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(out, f"generalisation_{task}{suffix}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(run: dict, out: str) -> str | None:
    """Inputs / outputs / write weights / read weights over one traced sequence."""
    tr = run.get("trace")
    if not tr or not tr.get("fields"):
        return None
    fields = tr["fields"]
    write = [k for k in fields if "write" in k]
    read = [k for k in fields if "read" in k]
    panels = [("inputs", np.array(tr["inputs"]).T), ("outputs (sigmoid)", np.array(tr["outputs"]).T)]
    weights = []
    for name in write + read:
        w = np.array(fields[name])  # [T, H, N]
        for h in range(w.shape[1]):
            short = name.split(".")[-1]
            weights.append((f"{short} head {h}" if w.shape[1] > 1 else short, w[:, h, :].T))  # [N, T]
    # crop the slot axis to the slots any head touches
    used = np.zeros(weights[0][1].shape[0], dtype=bool) if weights else None
    for _, w in weights:
        used |= w.max(axis=1) > 0.02
    if used is not None and used.any():
        idx = np.nonzero(used)[0]
        a, b = max(0, idx.min() - 2), min(len(used), idx.max() + 3)
        weights = [(n, w[a:b]) for n, w in weights]
        crop = f" (slots {a}..{b - 1})"
    else:
        crop = ""
    panels += [(n + "\n" + crop.strip(), w) for n, w in weights]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.2 + 1.6 * len(panels)), sharex=True)
    for ax, (name, img) in zip(np.atleast_1d(axes), panels):
        # weights, bits and probabilities all lie in [0, 1]
        ax.imshow(img, aspect="auto", cmap="gray_r", interpolation="nearest", vmin=0.0, vmax=1.0)
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("time step")
    fig.suptitle(f"{run['task']} {run.get('label', run['core'])} seed {run['seed']}: size {tr.get('size')}",
                 fontsize=10)
    tag = f"{run['task']}_{run.get('label', run['core'])}_s{run['seed']}"
    path = os.path.join(out, f"weights_{tag}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(task: str, by_label: dict[str, list[dict]]) -> str:
    sizes = sorted({int(s) for runs in by_label.values() for r in runs for s in r["eval"]})
    head = ("| model | params | seeds | " + " | ".join(f"{SIZE_NAME.get(task, 'size').split()[-1]} {s}" for s in sizes)
            + " | largest trained size | training sequences (median) | wall (median) |")
    lines = [head, "|" + "---|" * (6 + len(sizes))]
    for label, runs in sorted(by_label.items()):
        cells = []
        for s in sizes:
            vals = [r["eval"][str(s)]["mean"] for r in runs if str(s) in r["eval"]]
            cells.append(f"**{statistics.median(vals):.2f}** ({', '.join(f'{v:.2f}' for v in vals)})" if vals else "")
        seqs = statistics.median(r["train"]["sequences"] for r in runs)
        wall = statistics.median(r["train"]["wall_s"] for r in runs)
        stops = ",".join(sorted({r["train"]["stopped"] for r in runs}))
        largest = ", ".join(str(r["train"]["final_max_size"]) for r in runs)
        lines.append(f"| {label} | {runs[0]['parameters']} | {', '.join(str(r['seed']) for r in runs)} | "
                     + " | ".join(cells) + f" | {largest} | {seqs:,.0f} ({stops}) | {wall / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--results", default="docs/results", help="folder of result JSON files")
    p.add_argument("--out", default="docs/results", help="folder for the PNG files")
    p.add_argument("--tasks", nargs="*", default=None, help="only these tasks")
    p.add_argument("--labels", nargs="*", default=None, help="only these configurations (labels)")
    p.add_argument("--suffix", default="", help="appended to the learning/generalisation file names")
    p.add_argument("--no-weights", action="store_true", help="skip the weighting plots")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    runs = load(args.results)
    for task, by_label in sorted(runs.items()):
        if args.tasks and task not in args.tasks:
            continue
        if args.labels:
            by_label = {k: v for k, v in by_label.items() if k in args.labels}
            if not by_label:
                continue
        print(f"\n### {task}\n")
        print(table(task, by_label))
        print()
        print("wrote", plot_learning(task, by_label, args.out, args.suffix))
        print("wrote", plot_generalisation(task, by_label, args.out, args.suffix))
        for label_runs in [] if args.no_weights else by_label.values():
            for r in label_runs:
                path = plot_weights(r, args.out)
                if path:
                    print("wrote", path)


if __name__ == "__main__":
    main()
