"""The memory study: every core on memory tasks at equal parameters, equal env steps and equal wall time, with
interquartile means and stratified-bootstrap confidence intervals (rliable), behind ``scripts/study.py``.

A study is a grid ``task x core x seed x protocol`` (:class:`StudySpec`; named grids in :data:`GRIDS`):

* **Equal parameters.** For each task, every core's width (``hidden_size``: the controller of the memory cores, the
  layer of the feed-forward agent) is chosen so that the whole policy (encoder, core, heads) has the parameter
  count closest to the grid's target (:func:`match_hidden_size`; widths in multiples of 8). The memory sizes of
  the memory cores stay as the grid gives them.
* **Equal env steps.** Every run trains for ``steps`` env steps (rounded to whole updates).
* **Equal wall time.** Every run trains for the steps it makes in ``seconds`` at its own training throughput,
  measured side by side for all cores of a task in one process, interleaved, on the machine that runs the study
  (:func:`calibrate`; stored in ``calibration.json``). Turning a time budget into steps this way keeps the
  comparison fair on a shared, noisy machine and makes each run reproducible from its seed; the seconds each run
  actually took are stored beside it.

Each finished run is evaluated (``episodes`` first episodes of parallel envs, greedy and sampled) and written as
one JSON file under ``results/``; a run killed half way resumes from its checkpoint, and finished runs are skipped,
so the study command can be re-run until the grid is complete. Runs whose budgets coincide (the same task, core,
seed and steps) are shared between the protocols.

Scores: a task's ``score`` is the evaluation's ``success_rate`` or ``mean_return``, of the sampled policy (the
policy as PPO trains it) by default or of the greedy one (a greedy policy of a partly trained agent can loop at a
wall forever in a partially observable task, so greedy scores can fall below the feed-forward agent's); the
**normalised score**
is ``(score - ff) / (max_score - ff)`` with ``ff`` the mean score of the feed-forward agent (``core="none"``) over
its seeds on the same task and protocol: 0 is "no better than no memory", 1 the task's maximum.
:func:`aggregate` gives per core the interquartile mean over seeds with a 95 % stratified-bootstrap confidence
interval (``rliable.library.get_interval_estimates``) and the per-seed values.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .evaluation import build_policy, evaluate_both
from .env_adapter import TorchVecEnv
from .ppo import PPO, TrainConfig
from .presets import env_kwargs_for, preset_config

PROTOCOLS = ("steps", "time")


@dataclass(frozen=True)
class Task:
    """One task of a study.

    Args:
        name: short name for tables and files (``"tmaze-L100"``).
        env: Gymnasium env id.
        env_kwargs: env keywords (merged over the env's preset keywords, as ``train.py`` does).
        score: ``"success_rate"`` or ``"mean_return"`` of the greedy evaluation.
        max_score: the task's best score (1 for a success rate; the number of answer steps for Copy's return).
        train: TrainConfig overrides for this task on top of the env's preset (e.g. ``learning_rate``).
        episodes: evaluation episodes per mode.
        variants: evaluation-only variants of the env (length generalisation): ``(name, keywords)`` pairs whose
            keywords are merged over ``env_kwargs``; every trained policy is also evaluated on each, and reports
            show each as the task ``"<name of the task>@<name of the variant>"``, normalised by the feed-forward
            agent's score on that variant.
    """

    name: str
    env: str
    env_kwargs: dict = field(default_factory=dict)
    score: str = "success_rate"
    max_score: float = 1.0
    train: dict = field(default_factory=dict)
    episodes: int = 200
    variants: tuple[tuple[str, dict], ...] = ()

    def variant_kwargs(self, name: str) -> dict:
        """The env keywords (preset included) of variant ``name``."""
        return env_kwargs_for(self.env, {**self.env_kwargs, **dict(self.variants)[name]})


@dataclass(frozen=True)
class StudySpec:
    """A grid: ``tasks x cores x seeds x protocols``.

    Args:
        name: grid name.
        tasks: the tasks.
        cores: core names (``"none"``: the feed-forward agent, the normalisation's 0; it must be included).
        seeds: seeds (at least 5 for a reported comparison).
        params: target parameter count of every policy.
        steps: env steps of the equal-steps protocol.
        seconds: training seconds of the equal-wall-time protocol (turned into steps per core by calibration).
        core_kwargs: per-core keywords other than ``hidden_size`` (memory sizes).
        where: where the grid is meant to run and why it is sized as it is (printed in reports).
    """

    name: str
    tasks: tuple[Task, ...]
    cores: tuple[str, ...]
    seeds: tuple[int, ...]
    params: int
    steps: int
    seconds: float
    core_kwargs: dict = field(default_factory=dict)
    where: str = ""


RECALL_TRAIN = {"learning_rate": 2e-3, "ent_coef": 0.0}  # overrides of the copy and recall tasks' presets

MEMORY_KWARGS = {
    "ntm": {"num_slots": 32, "slot_size": 16},
    "dnc": {"num_slots": 32, "slot_size": 16, "num_read_heads": 2},
    "rl_access": {"num_slots": 32, "slot_size": 16},
}

def copy_task(length: int) -> Task:
    """Copy with exactly ``length`` vectors (score: mean return, at most ``length``), the study's learning rate."""
    return Task(f"copy-L{length}", "MemoryCores/Copy-v0", {"min_length": length, "max_length": length},
                "mean_return", float(length), train=dict(RECALL_TRAIN))


def recall_task(items: int) -> Task:
    """AssociativeRecall with exactly ``items`` items (score: mean return, at most 3 = the item's vectors)."""
    return Task(f"recall-{items}", "MemoryCores/AssociativeRecall-v0", {"min_items": items, "max_items": items},
                "mean_return", 3.0, train=dict(RECALL_TRAIN))


ALL_CORES = ("none", "lstm", "gru", "lru", "ffm", "gtrxl", "alstm", "ntm", "dnc", "rl_access")

GRIDS: dict[str, StudySpec] = {
    # A few hours of one core of the 2-core CPU: two tasks where every core can learn something in the budget.
    "cpu": StudySpec(
        name="cpu",
        tasks=(
            Task("tmaze-L10", "MemoryCores/TMaze-v0", {"length": 10}, "success_rate", 1.0, episodes=200,
                 variants=(("L20", {"length": 20}), ("L40", {"length": 40}), ("L100", {"length": 100}))),
            copy_task(6),
        ),
        cores=ALL_CORES,
        seeds=(1, 2, 3, 4, 5),
        params=100_000,
        steps=400_000,
        seconds=90.0,
        core_kwargs=MEMORY_KWARGS,
        where="2-core shared CPU, 1 torch thread, one run at a time: two short tasks, 0.4M steps or 90 s per run "
              "(about 6 hours for the grid)",
    ),
    # Capacity on the CPU: Copy past the lengths the cpu grid uses and AssociativeRecall with a growing number of
    # items, equal env steps, the fast cores and the two differentiable external memories (the equal-wall-time
    # protocol and the other cores are the gpu grid's).
    "cpu-capacity": StudySpec(
        name="cpu-capacity",
        tasks=tuple(
            [copy_task(L) for L in (12, 24)] + [recall_task(n) for n in (3, 6)]
        ),
        cores=("none", "lstm", "gru", "lru", "ffm", "ntm", "dnc"),
        seeds=(1, 2, 3, 4, 5),
        params=100_000,
        steps=400_000,
        seconds=90.0,
        core_kwargs=MEMORY_KWARGS,
        where="2-core shared CPU, 1 torch thread: Copy L = 12 and 24, AssociativeRecall with 3 and 6 items, at 0.4M "
              "env steps (equal-steps protocol only)",
    ),
    # Does a longer budget let external memory store what the LSTM cannot? Copy L = 12 at 4 times the steps of
    # cpu-capacity (where only lru learnt it), for the LSTM, lru and the two differentiable external memories.
    "cpu-long": StudySpec(
        name="cpu-long",
        tasks=(copy_task(12),),
        cores=("none", "lstm", "lru", "ntm", "dnc"),
        seeds=(1, 2, 3, 4, 5),
        params=100_000,
        steps=1_600_000,
        seconds=360.0,
        core_kwargs=MEMORY_KWARGS,
        where="2-core shared CPU, 1 torch thread: Copy L = 12 at 1.6M env steps (equal-steps protocol only)",
    ),
    # The full grid for a GPU session: more lengths, longer budgets.
    "gpu": StudySpec(
        name="gpu",
        tasks=tuple(
            [Task(f"tmaze-L{L}", "MemoryCores/TMaze-v0", {"length": L}, "success_rate", 1.0,
                  # evaluation episodes truncated at the env's default 4 (L + 1) steps, not the preset's L^2
                  variants=tuple((f"L{k * L}", {"length": k * L, "max_steps": 4 * (k * L + 1)}) for k in (2, 4)))
               for L in (100, 400)]
            + [copy_task(L) for L in (6, 12, 24)]
            + [Task(f"repeatcopy-L{L}x{R}", "MemoryCores/RepeatCopy-v0",
                    {"min_length": L, "max_length": L, "min_repeats": R, "max_repeats": R}, "mean_return",
                    float(R * L + 1), train=dict(RECALL_TRAIN)) for L, R in ((6, 3), (12, 3))]
            + [recall_task(n) for n in (3, 6)]
        ),
        cores=ALL_CORES,
        seeds=(1, 2, 3, 4, 5),
        params=150_000,
        steps=5_000_000,
        seconds=600.0,
        core_kwargs=MEMORY_KWARGS,
        where="one GPU: the full grid (T-maze policies also evaluated on corridors 2 and 4 times as long)",
    ),
    # For tests and a first look: tiny budgets.
    "smoke": StudySpec(
        name="smoke",
        tasks=(Task("tmaze-L3", "MemoryCores/TMaze-v0", {"length": 3}, "success_rate", 1.0,
                    train={"num_envs": 8, "num_steps": 32, "seq_len": 32, "num_minibatches": 1,
                           "update_epochs": 1}, episodes=20),),
        cores=("none", "lstm", "gru"),
        seeds=(1, 2),
        params=20_000,
        steps=512,
        seconds=0.5,
        where="tests",
    ),
}


# ================================================================================================ configuration
def base_config(spec: StudySpec, task: Task, core: str, seed: int) -> TrainConfig:
    """The TrainConfig of one run before sizing and budget: TrainConfig's defaults, the env's preset, the task's
    overrides, the core and its memory keywords, the seed; no progress bar."""
    return preset_config(task.env, task.env_kwargs, task.train, core=core, seed=seed, progress=False,
                         torch_threads=torch.get_num_threads(), core_kwargs=json.dumps(spec.core_kwargs.get(core, {})))


def count_params(cfg: TrainConfig, observation_space, action_space) -> int:
    return sum(p.numel() for p in build_policy(cfg, observation_space, action_space).parameters())


def match_hidden_size(cfg: TrainConfig, observation_space, action_space, target: int, step: int = 8,
                      low: int = 8, high: int = 2048) -> tuple[int, int]:
    """The ``hidden_size`` (a multiple of ``step`` in ``[low, high]``) whose policy has the parameter count closest
    to ``target``, and that count. The count grows with the width, so a binary search finds it."""

    def params(h: int) -> int:
        return count_params(replace(cfg, hidden_size=h), observation_space, action_space)

    lo, hi = low // step, high // step
    while lo < hi:  # smallest width with params >= target
        mid = (lo + hi) // 2
        if params(mid * step) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(low // step, lo - 1), lo}, key=lambda k: (abs(params(k * step) - target), k))
    return best * step, params(best * step)


def task_spaces(task: Task) -> tuple[Any, Any]:
    """The observation and action spaces of ``task``'s env (with its keywords)."""
    venv = TorchVecEnv(task.env, 1, "cpu", env_kwargs_for(task.env, dict(task.env_kwargs)), need_final_obs=False)
    spaces = venv.single_observation_space, venv.single_action_space
    venv.close()
    return spaces


def sized_config(spec: StudySpec, task: Task, core: str, seed: int = 0, spaces: tuple | None = None
                 ) -> tuple[TrainConfig, int]:
    """The TrainConfig of ``core`` on ``task`` at the parameter-matched width, and its parameter count."""
    obs_space, act_space = spaces or task_spaces(task)
    cfg = base_config(spec, task, core, seed)
    h, n = match_hidden_size(cfg, obs_space, act_space, spec.params)
    return replace(cfg, hidden_size=h), n


def sized_configs(spec: StudySpec, task: Task, seed: int = 0) -> dict[str, tuple[TrainConfig, int]]:
    """:func:`sized_config` for every core of the grid."""
    spaces = task_spaces(task)
    return {core: sized_config(spec, task, core, seed, spaces) for core in spec.cores}


# ================================================================================================== calibration
def measure_throughput(cfg: TrainConfig, updates: int = 2, warmup: int = 1) -> float:
    """Training env steps per second of ``cfg`` (rollout + update) over ``updates`` updates after ``warmup``."""
    venv = TorchVecEnv(cfg.env, cfg.num_envs, "cpu", cfg.env_kwargs_dict())
    policy = build_policy(cfg, venv.single_observation_space, venv.single_action_space)
    ppo = PPO(policy, venv, cfg, seed=cfg.seed)
    for _ in range(warmup):
        ppo.update(ppo.collect())
    t0 = time.perf_counter()
    for _ in range(updates):
        ppo.update(ppo.collect())
    dt = time.perf_counter() - t0
    venv.close()
    return updates * cfg.num_envs * cfg.num_steps / dt


def calibrate(spec: StudySpec, rounds: int = 3, updates: int = 2, log=print) -> dict[str, Any]:
    """Throughput of every (task, core) at its matched size, measured interleaved (core after core, ``rounds``
    times; the median kept), so every core sees the same machine load. Returns a JSON-able dict."""
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "rounds": rounds, "updates": updates, "tasks": {},
    }
    for task in spec.tasks:
        sized = sized_configs(spec, task)
        rates: dict[str, list[float]] = {core: [] for core in spec.cores}
        for r in range(rounds):
            for core in spec.cores:
                rates[core].append(measure_throughput(sized[core][0], updates=updates))
                log(f"calibrate {task.name} {core} round {r + 1}: {rates[core][-1]:,.0f} steps/s")
        out["tasks"][task.name] = {core: sorted(v)[len(v) // 2] for core, v in rates.items()}
    return out


# ============================================================================================================ runs
@dataclass(frozen=True)
class Cell:
    """One run: ``task``, ``core``, ``seed``, the protocols it serves and its step budget."""

    task: Task
    core: str
    seed: int
    steps: int
    protocols: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.task.name}__{self.core}__s{self.seed}__{self.steps}"


def whole_updates(cfg: TrainConfig, steps: float) -> int:
    """``steps`` rounded to whole updates (at least one)."""
    per = cfg.num_envs * cfg.num_steps
    return max(1, int(round(steps / per))) * per


def plan(spec: StudySpec, calibration: dict[str, Any] | None) -> list[Cell]:
    """Every run of the grid, task by task, the equal-steps runs first, seed by seed (all cores of seed 1, then
    seed 2, ...); equal-time runs need ``calibration`` (skipped without). Runs with equal budgets are merged (their
    ``protocols`` list both)."""
    cells: dict[str, Cell] = {}
    for task in spec.tasks:
        sized = sized_configs(spec, task)
        for protocol in PROTOCOLS:
            budgets = {}
            for core in spec.cores:
                cfg = sized[core][0]
                if protocol == "steps":
                    budgets[core] = whole_updates(cfg, spec.steps)
                elif calibration is not None and task.name in calibration.get("tasks", {}):
                    budgets[core] = whole_updates(cfg, spec.seconds * calibration["tasks"][task.name][core])
            for seed in spec.seeds:  # seed-major: a partly run grid has whole seeds of every core
                for core, steps in budgets.items():
                    cell = Cell(task, core, seed, steps, (protocol,))
                    old = cells.get(cell.key)
                    cells[cell.key] = cell if old is None else replace(old, protocols=old.protocols + (protocol,))
    return list(cells.values())


def run_cell(spec: StudySpec, cell: Cell, study_dir: Path) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; writes and returns its result dict (``results/<key>.json``)."""
    from .checkpoint import has_checkpoint
    from .evaluation import load_policy
    from .runner import train

    cfg, n_params = sized_config(spec, cell.task, cell.core, cell.seed)
    run_dir = study_dir / "runs" / cell.key
    cfg = replace(cfg, seed=cell.seed, total_steps=cell.steps, run_dir=str(run_dir), checkpoint_every=10,
                  resume=has_checkpoint(run_dir))
    t0 = time.perf_counter()
    summary = train(cfg)
    policy, _, ckpt = load_policy(run_dir)
    evals = _evaluate_both(policy, cell.task, cfg.env_kwargs_dict())
    result = {
        "key": cell.key, "task": cell.task.name, "core": cell.core, "seed": cell.seed, "protocols": list(cell.protocols),
        "steps": int(ckpt["global_step"]), "params": n_params, "hidden_size": cfg.hidden_size,
        "train_seconds": summary.get("train_seconds", summary["seconds"]), "session_seconds": time.perf_counter() - t0,
        "score": evals["greedy"][cell.task.score], "score_name": cell.task.score, "max_score": cell.task.max_score,
        "eval": evals, "config": asdict(cfg),
        "variants": {name: _evaluate_both(policy, cell.task, cell.task.variant_kwargs(name))
                     for name, _ in cell.task.variants},
    }
    _write_result(study_dir, result)
    return result


def _evaluate_both(policy, task: Task, env_kwargs: dict) -> dict[str, dict[str, float]]:
    """Greedy and sampled evaluation of ``policy`` on ``task``'s env with ``env_kwargs``, seeded (a variant filled
    in later gives what it would have given at once)."""
    return evaluate_both(policy, task.env, task.episodes, env_kwargs)


def _write_result(study_dir: Path, result: dict[str, Any]) -> None:
    path = Path(study_dir) / "results" / f"{result['key']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def missing_variants(spec: StudySpec, result: dict[str, Any]) -> list[str]:
    """The variants of ``result``'s task that its JSON does not hold yet."""
    task = next((t for t in spec.tasks if t.name == result["task"]), None)
    have = result.get("variants", {})
    return [] if task is None else [name for name, _ in task.variants if name not in have]


def complete_variants(spec: StudySpec, study_dir: Path, only: str = "", log=print) -> int:
    """Evaluate finished runs (results whose key contains ``only``) on the variants of their task that they lack,
    from their checkpoints under ``study_dir/runs``; the results JSON are rewritten. Returns how many were
    completed. (Variants added to a grid after its runs finished are filled in this way, without training.)"""
    from .evaluation import load_policy

    tasks = {t.name: t for t in spec.tasks}
    n = 0
    for result in load_results(study_dir):
        names = missing_variants(spec, result) if only in result["key"] else []
        run_dir = Path(study_dir) / "runs" / result["key"]
        if not names:
            continue
        if not run_dir.exists():
            log(f"variants: {result['key']} lacks {', '.join(names)} and has no run folder {run_dir}; skipped")
            continue
        policy, _, _ = load_policy(run_dir)
        task = tasks[result["task"]]
        result.setdefault("variants", {})
        for name in names:
            result["variants"][name] = _evaluate_both(policy, task, task.variant_kwargs(name))
        _write_result(study_dir, result)
        log(f"variants: {result['key']}: " + ", ".join(
            f"{name} {result['variants'][name]['sampled'][result['score_name']]:.3f}" for name in names))
        n += 1
    return n


def with_variants(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results`` and, for each variant a result was evaluated on, a derived result of the task
    ``"<task>@<variant>"`` holding that evaluation (same run, same steps and seconds)."""
    out = list(results)
    for r in results:
        for name, evals in r.get("variants", {}).items():
            out.append({**r, "task": f"{r['task']}@{name}", "eval": evals, "score": evals["greedy"][r["score_name"]],
                         "variants": {}})
    return out


def load_results(study_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((Path(study_dir) / "results").glob("*.json"))]


# ====================================================================================================== aggregate
def run_score(result: dict[str, Any], mode: str | None = None) -> float:
    """A run's score: its task's metric in evaluation ``mode`` (``"sampled"``: the policy as trained, the study's
    default; ``"greedy"``: the mode of each action distribution), or the stored ``score`` when ``mode`` is None."""
    return result["score"] if mode is None else result["eval"][mode][result["score_name"]]


def normalised_scores(results: list[dict[str, Any]], mode: str | None = None
                      ) -> dict[tuple[str, str], dict[str, list[tuple[int, float, float]]]]:
    """``{(task, protocol): {core: [(seed, raw score, normalised score), ...]}}`` (scores of :func:`run_score`);
    normalised against the mean of the feed-forward agent's seeds of the same task and protocol (cells without a
    feed-forward result are left out). A task where the feed-forward agent already reaches the maximum normalises
    to NaN."""
    by: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = {}
    maxima: dict[str, float] = {}
    for r in results:
        maxima[r["task"]] = r["max_score"]
        for protocol in r["protocols"]:
            by.setdefault((r["task"], protocol), {}).setdefault(r["core"], []).append((r["seed"], run_score(r, mode)))
    out = {}
    for (task, protocol), cores in by.items():
        if "none" not in cores:
            continue
        ff = sum(s for _, s in cores["none"]) / len(cores["none"])
        span = maxima[task] - ff
        out[(task, protocol)] = {
            core: sorted((seed, s, (s - ff) / span if span > 1e-9 else math.nan) for seed, s in v)
            for core, v in cores.items()
        }
    return out


def aggregate(results: list[dict[str, Any]], reps: int = 2000, seed: int = 0, mode: str | None = None
              ) -> list[dict[str, Any]]:
    """Per (task, protocol, core): the interquartile mean of the normalised scores over seeds with its 95 %
    stratified-bootstrap confidence interval (rliable), the per-seed raw and normalised scores, and the mean
    parameters, steps and seconds. Evaluations on a task's variants count as the tasks ``"<task>@<variant>"``
    (:func:`with_variants`)."""
    import numpy as np
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    results = with_variants(results)
    meta: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        for protocol in r["protocols"]:
            meta.setdefault((r["task"], protocol, r["core"]), []).append(r)
    rows = []
    for (task, protocol), cores in sorted(normalised_scores(results, mode).items()):
        scores = {core: np.array([[n] for _, _, n in v], dtype=float) for core, v in cores.items()}
        finite = {c: s for c, s in scores.items() if np.isfinite(s).all()}
        point, interval = ({}, {})
        if finite:
            point, interval = rly.get_interval_estimates(
                finite, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
        for core, v in cores.items():
            runs = meta[(task, protocol, core)]
            rows.append({
                "task": task, "protocol": protocol, "core": core, "seeds": [s for s, _, _ in v],
                "raw": [raw for _, raw, _ in v], "normalised": [n for _, _, n in v],
                "iqm": float(point[core][0]) if core in point else math.nan,
                "ci": [float(interval[core][0][0]), float(interval[core][1][0])] if core in interval else [math.nan] * 2,
                "params": int(np.mean([r["params"] for r in runs])), "steps": int(np.mean([r["steps"] for r in runs])),
                "seconds": float(np.mean([r["train_seconds"] for r in runs])),
            })
    return rows
