#!/usr/bin/env python3
"""The memory study: every core on memory tasks at equal parameters, equal env steps and equal wall time.

    python3 scripts/study.py plan --grid cpu                  # the runs, widths, parameters and step budgets
    python3 scripts/study.py run --grid cpu                   # calibrate (once), then train + evaluate every run
    python3 scripts/study.py run --grid cpu --max-runs 10     # ... at most 10 runs this time (resumable)
    python3 scripts/study.py report --grid cpu --out docs/study_cpu   # tables (Markdown) and plots from the JSON

One command runs the whole grid and can be re-run until it is complete: finished runs are skipped, a killed run
resumes from its checkpoint. Results: STUDY_DIR/results/*.json (one per run), STUDY_DIR/calibration.json (the
training throughput of every core, measured side by side, that turns the wall-time budget into steps). `report`
regenerates tables and plots from the JSON alone: interquartile mean of the normalised score over seeds with 95 %
stratified-bootstrap confidence intervals (rliable), per-seed values beside them. Method: agents/study.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Literal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tyro  # noqa: E402


@dataclasses.dataclass
class StudyArgs:
    """The memory study (see the description above)."""

    command: tyro.conf.Positional[Literal["plan", "calibrate", "run", "report"]]
    """plan: list the runs; calibrate: measure every core's training throughput; run: calibrate if needed, then
    train and evaluate the runs not done yet (and evaluate finished runs on task variants they lack, such as the
    T-maze's longer corridors); report: tables and plots from the results."""
    grid: str = "cpu"
    """Named grid of agents/study.py GRIDS: cpu (a few hours of one CPU core), cpu-capacity (Copy L12 and L24,
    AssociativeRecall with 3 and 6 items, at equal steps), cpu-long (Copy L12 at 1.6M steps), gpu (the full grid),
    smoke (tests)."""
    study_dir: str = ""
    """Where runs, results and the calibration live (default runs/study_<grid>)."""
    max_runs: int = 0
    """run: stop after this many runs (0: all)."""
    only: str = ""
    """run/plan: only runs whose key contains this text (e.g. a task name or '__ntm__')."""
    protocol: Literal["both", "steps", "time"] = "both"
    """run/plan: which protocol's runs (steps: equal env steps; time: equal wall time)."""
    out: str = ""
    """report: folder for report.md, report.json, the plots and a copy of the per-run JSON (default
    STUDY_DIR/report); a report folder is itself a valid --study-dir for report (docs/study_cpu is one)."""
    threads: int = 1
    """torch threads (set explicitly; 1 is fastest for these small models on a shared CPU)."""
    rounds: int = 3
    """calibrate: interleaved rounds per core (the median is kept)."""
    reps: int = 2000
    """report: bootstrap repetitions."""
    mode: Literal["sampled", "greedy"] = "sampled"
    """report: which evaluation gives the score: sampled (the policy as trained) or greedy (each action's mode)."""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(StudyArgs, args=argv, description=__doc__)
    import torch

    torch.set_num_threads(args.threads)
    from agents import study

    if args.grid not in study.GRIDS:
        print(f"error: --grid {args.grid!r} is not valid: expected one of {', '.join(study.GRIDS)}", file=sys.stderr)
        return 2
    spec = study.GRIDS[args.grid]
    sdir = Path(args.study_dir or f"runs/study_{spec.name}")
    cal_path = sdir / "calibration.json"
    print(f"study {spec.name} ({spec.where}); torch threads {torch.get_num_threads()}; dir {sdir}", flush=True)
    try:
        if args.command == "calibrate" or (args.command == "run" and args.protocol != "steps"
                                           and not cal_path.exists()):
            cal = study.calibrate(spec, rounds=args.rounds)
            sdir.mkdir(parents=True, exist_ok=True)
            cal_path.write_text(json.dumps(cal, indent=1))
            print(f"wrote {cal_path}")
            if args.command == "calibrate":
                return 0
        if args.command == "report":  # (the per-run JSON hold both evaluations: --mode picks one)
            return report(spec, sdir, Path(args.out or sdir / "report"), args.reps, args.mode)
        cal = json.loads(cal_path.read_text()) if cal_path.exists() else None
        cells = [c for c in study.plan(spec, cal) if args.only in c.key
                 and (args.protocol == "both" or args.protocol in c.protocols)]
        done = {r["key"] for r in study.load_results(sdir)} if sdir.exists() else set()
        todo = [c for c in cells if c.key not in done]
        if args.command == "plan":
            lacking = {r["key"]: study.missing_variants(spec, r) for r in study.load_results(sdir)} \
                if sdir.exists() else {}
            for c in cells:
                mark = "done" if c.key in done else "todo"
                more = f"  (lacks variants {', '.join(lacking[c.key])})" if lacking.get(c.key) else ""
                print(f"{mark}  {c.key:<45} {'+'.join(c.protocols):<10} {c.steps:>10,} steps{more}")
            print(f"{len(cells)} runs, {len(cells) - len(todo)} done" + ("" if cal else
                  "; equal-time runs appear after calibration (scripts/study.py calibrate)"))
            return 0
        if done:  # finished runs evaluated on variants added to the grid since (no training)
            study.complete_variants(spec, sdir, only=args.only)
        if args.max_runs:
            todo = todo[: args.max_runs]
        for i, cell in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {cell.key} ({'+'.join(cell.protocols)})", flush=True)
            r = study.run_cell(spec, cell, sdir)
            print(f"  {r['score_name']} {r['score']:.3f} greedy, {r['eval']['sampled'][r['score_name']]:.3f} sampled; "
                  f"{r['steps']:,} steps in {r['train_seconds']:.0f} s", flush=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def report(spec, sdir: Path, out: Path, reps: int, mode: str = "sampled") -> int:
    """Markdown tables and one plot per task, from the results JSON."""
    from agents import study

    results = study.load_results(sdir)
    if not results:
        print(f"error: no results in {sdir / 'results'}: run the study first", file=sys.stderr)
        return 2
    rows = study.aggregate(results, reps=reps, mode=mode)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "results").resolve() != (sdir / "results").resolve():  # the per-run JSON travel with the report
        (out / "results").mkdir(exist_ok=True)
        for r in results:
            (out / "results" / f"{r['key']}.json").write_text(json.dumps(r, indent=1))
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    lines = [f"# Study `{spec.name}`", "", f"{spec.where}. Regenerate: `python3 scripts/study.py report --grid "
             f"{spec.name} --mode {mode}`. Score: {mode} evaluation, normalised between the feed-forward agent (0) and the task's "
             f"maximum (1); IQM over seeds with a 95 % stratified-bootstrap CI (rliable, {reps} repetitions); "
             f"raw per-seed scores beside it.", ""]
    for task in sorted({r["task"] for r in rows}):
        for protocol in study.PROTOCOLS:
            sub = [r for r in rows if r["task"] == task and r["protocol"] == protocol]
            if not sub:
                continue
            title = "equal env steps" if protocol == "steps" else "equal wall time"
            lines += [f"## {task}, {title}", "",
                      "| core | params | steps | train s | IQM normalised [95 % CI] | raw score per seed |",
                      "|---|---:|---:|---:|---|---|"]
            for r in sorted(sub, key=lambda r: -r["iqm"] if r["iqm"] == r["iqm"] else 1e9):
                raw = ", ".join(f"s{s} {v:.3f}" for s, v in zip(r["seeds"], r["raw"]))
                lines.append(f"| {r['core']} | {r['params']:,} | {r['steps']:,} | {r['seconds']:.0f} | "
                             f"{r['iqm']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {raw} |")
            lines.append("")
        plot_task(task, [r for r in rows if r["task"] == task], out / f"{task}.png")
        lines += [f"![{task}]({task}.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out / 'report.md'}, {out / 'report.json'} and the plots")
    return 0


def plot_task(task: str, rows: list[dict], path: Path) -> None:
    """IQM with CI bars per core, per-seed normalised scores as dots; one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [p for p in ("steps", "time") if any(r["protocol"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 3.6), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        sub = sorted((r for r in rows if r["protocol"] == protocol), key=lambda r: r["core"])
        xs = range(len(sub))
        for x, r in zip(xs, sub):
            lo, hi = r["ci"]
            ax.bar(x, r["iqm"], color="C0" if r["core"] != "none" else "grey", alpha=0.7)
            ax.errorbar(x, r["iqm"], yerr=[[r["iqm"] - lo], [hi - r["iqm"]]], color="k", capsize=3)
            ax.plot([x] * len(r["normalised"]), r["normalised"], "o", color="C3", ms=3)
        ax.set_xticks(list(xs), [r["core"] for r in sub], rotation=30)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{task}: equal {'env steps' if protocol == 'steps' else 'wall time'}", fontsize=9)
        ax.set_ylabel("normalised score (IQM, 95 % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
