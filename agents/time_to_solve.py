"""Time to solve: wall seconds of PPO training until a memory task is solved, per seed, on any device; behind
``scripts/time_to_solve.py`` (issue 12's table: T-maze L = 50 and 200, MiniGrid-MemoryS13 and S17Random with the
3x3 view, Copy, AssociativeRecall, MemoryMaze).

A task (:class:`SolveTask`) is one or more stages (:class:`Stage`): an env with its keywords, a step budget, a
target on a rollout metric (``--stop-at``, e.g. ``success_rate>=0.95`` held for ``patience`` updates in a row, then
confirmed on evaluation episodes of the policy itself) and training options over the env's preset; a stage after the first starts from the previous stage's weights
(``--init-from``: a curriculum). Training stops at the target (:class:`agents.ppo.TrainConfig` ``stop_at``), so a
task that is solved early costs no more device time. A task is **solved** when its last stage reaches its target;
its **time to solve** is the training seconds of the earlier stages (to the end of their last update) plus those of
the last stage up to the update whose policy the evaluation confirmed (training seconds: rollouts, updates and the
confirming evaluations, without building the env and policy or writing checkpoints; each stage's wall time in
this call, set-up included, is stored beside it: a stage resumed at its target, such as a shared one, costs only
its loading there).
Every finished task is then evaluated (greedy and sampled, ``episodes`` first episodes of parallel envs, seeded).

``preset="gpu"`` (default) applies :func:`agents.presets.gpu_batch` to every stage whose options do not set
``num_envs``: 16 times the preset's envs and minibatches, the preset's gradient steps per env step (docs/gpu.md
measured that this learns the T-maze and Copy). ``preset="cpu"`` keeps the task presets' own batch (what a CPU run
uses). One JSON file per task and seed (``results/<task>__s<seed>.json``, written when the task is done); stage
runs live in ``runs/`` and resume from their checkpoints, so a killed command continues where it stopped and a
finished task is skipped (results of other devices belong in another ``out``). Stages that two tasks share (the MiniGrid curriculum up to S13) are trained once per seed.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .ppo import TrainConfig
from .presets import preset_config

PRESETS = ("gpu", "cpu")


@dataclass(frozen=True)
class Stage:
    """One training run of a task.

    Args:
        key: the run's name, shared by tasks that train the same stage (``"minigrid-S7"``).
        env: env id; ``env_kwargs`` its keywords (over the env's preset keywords, as ``train.py`` merges them).
        stop_at: the target (``METRIC>=VALUE`` on a metrics.jsonl column), held for ``patience`` updates in a row,
            each judged on the episodes that ended in it when at least ``min_episodes`` did (an episode statistic),
            then confirmed on ``eval_episodes`` evaluation episodes of the policy the stage ends with (sampled
            actions; ``--stop-eval-episodes``): a policy whose last update undid what the rollouts showed trains on.
        steps: the stage's budget of env steps (its learning rate anneals over it).
        train: TrainConfig fields over the env's preset (and over ``--preset gpu``'s batch).
    """

    key: str
    env: str
    stop_at: str
    steps: int
    env_kwargs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    patience: int = 2
    min_episodes: int = 64
    eval_episodes: int = 256


@dataclass(frozen=True)
class SolveTask:
    """A task of the table: its stages (the last one decides), the core, what its score is, and a note (what the
    settings were validated with)."""

    name: str
    stages: tuple[Stage, ...]
    core: str = "lstm"
    score: str = "success_rate"
    note: str = ""

    @property
    def env(self) -> str:
        return self.stages[-1].env


MINIGRID = "MemoryCores/MiniGridMemory-v0"
# The 3x3-view MiniGrid recipe that solved S13 and S17Random on the CPU (docs/agents.md, issue 4): ReLU heads,
# GAE lambda 0.5, entropy 0.03, 256 envs x 32 steps in 8 minibatches; each stage from the previous one's weights.
MINIGRID_TRAIN = dict(num_envs=256, num_steps=32, seq_len=32, num_minibatches=8, learning_rate=3e-4, chrono_init=64,
                      head_hidden=128, obs_skip=True, head_activation="relu", gae_lambda=0.5, ent_coef=0.03)


def _minigrid(size: int, steps: int, random_length: bool = False) -> Stage:
    kw = {"size": size, "view_size": 3, "one_hot": True, "num_actions": 3}
    if random_length:
        kw["random_length"] = True
    return Stage(f"minigrid-S{size}{'Random' if random_length else ''}", MINIGRID, "success_rate>=0.95", steps, kw,
                 dict(MINIGRID_TRAIN))


_MINIGRID_TO_S13 = (_minigrid(7, 12_000_000), _minigrid(9, 2_000_000), _minigrid(11, 2_000_000),
                    _minigrid(13, 2_000_000))

_TMAZE_L50 = Stage("tmaze-L50", "MemoryCores/TMaze-v0", "success_rate>=0.95", 8_000_000, {"length": 50})

TASKS: dict[str, SolveTask] = {t.name: t for t in (
    SolveTask("tmaze-L50", (_TMAZE_L50,), note="--preset gpu learnt it in 3 of 3 seeds on the CPU (docs/gpu.md)"),
    # From scratch, L = 200 was not learnt in 12M steps (corridor learnt, cue not; chrono init 128 and 512). From the
    # L = 50 policy (which holds the cue at L = 200 when it is not trained further) training at L = 200 with the
    # preset's learning rate, or 1e-4, lost the cue within 1 to 3 updates (success 1.0 -> 0.5); 1e-5 keeps it
    # (docs/gpu.md). 512-step sequences hold a whole 201-step episode.
    SolveTask("tmaze-L200", (_TMAZE_L50, Stage("tmaze-L200", "MemoryCores/TMaze-v0", "success_rate>=0.95", 4_000_000,
                                               {"length": 200}, dict(num_steps=512, seq_len=512, learning_rate=1e-5))),
              note="curriculum: L = 50, then 200 at learning rate 1e-5"),
    SolveTask("minigrid-S13", _MINIGRID_TO_S13,
              note="curriculum S7, S9, S11, S13 with the 3x3 view (docs/agents.md); 256 envs in either preset"),
    SolveTask("minigrid-S17Random", (*_MINIGRID_TO_S13, _minigrid(17, 2_000_000, random_length=True)),
              note="the S13 curriculum, then S17Random with the 3x3 view"),
    SolveTask("copy-L6", (Stage("copy-L6", "MemoryCores/Copy-v0", "success_rate>=0.9", 8_000_000,
                                {"min_length": 6, "max_length": 6}),),
              core="lru", note="lru, the core that solves Copy in the study (docs/study.md); --preset gpu learnt it "
                               "in 3 of 3 seeds on the CPU (docs/gpu.md)"),
    SolveTask("recall-3", (Stage("recall-3", "MemoryCores/AssociativeRecall-v0", "success_rate>=0.9", 16_000_000,
                                 {"min_items": 3, "max_items": 3}, {"learning_rate": 2e-3, "ent_coef": 0.0}),),
              core="lru", note="lru, the study's best core on recall with 3 items (docs/study.md)"),
    SolveTask("memorymaze", (Stage("memorymaze", "MemoryCores/MemoryMaze-v0", "ep_rew_mean>=17", 12_000_000),),
              score="mean_return", note="target: 17 goals per episode, above the feed-forward agent's 15"),
)}


def stage_config(stage: Stage, core: str, seed: int, preset: str, run_dir: Path, device: str,
                 init_from: str = "") -> TrainConfig:
    """The TrainConfig of one stage: TrainConfig's defaults, the env's preset, ``--preset gpu``'s batch (unless the
    stage sets ``num_envs``), the stage's options, its target, budget and run directory."""
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is not valid: expected one of {', '.join(PRESETS)}")
    return preset_config(
        stage.env, stage.env_kwargs, stage.train, gpu=preset == "gpu" and "num_envs" not in stage.train, core=core,
        seed=seed, device=device, progress=False, tensorboard=False, torch_threads=torch.get_num_threads(),
        total_steps=stage.steps, stop_at=stage.stop_at, stop_patience=stage.patience,
        stop_min_episodes=stage.min_episodes, stop_eval_episodes=stage.eval_episodes, run_dir=str(run_dir),
        init_from=init_from, checkpoint_every=10)


def result_path(out: Path, task: SolveTask, seed: int, preset: str) -> Path:
    return Path(out) / "results" / f"{task.name}__{preset}__s{seed}.json"


def run_task(task: SolveTask, seed: int, out: Path, *, preset: str = "gpu", device: str = "cpu",
             episodes: int = 500, log=print) -> dict[str, Any]:
    """Train ``task``'s stages for ``seed`` (each resumed from its checkpoint if one exists), evaluate the last one,
    write and return the result (see the module's docstring). Stage runs:
    ``out/runs/<stage key>__<core>__<preset>__s<seed>``."""
    from .checkpoint import has_checkpoint
    from .evaluation import evaluate_both, load_policy
    from .runner import train

    stages, init_from, solved = [], "", False
    for stage in task.stages:
        run_dir = Path(out) / "runs" / f"{stage.key}__{task.core}__{preset}__s{seed}"
        cfg = stage_config(stage, task.core, seed, preset, run_dir, device, init_from)
        cfg = replace(cfg, resume=has_checkpoint(run_dir))
        log(f"{task.name} seed {seed}: stage {stage.key} ({'resumed' if cfg.resume else 'new'}), {cfg.num_envs} envs "
            f"x {cfg.num_steps} steps, until {stage.stop_at} or {stage.steps:,} steps, device {device}")
        t0 = time.perf_counter()
        summary = train(cfg)
        target = summary["target"]
        last_row = _last_row(run_dir)  # the same on a resumed stage that trains nothing more
        # a stage that reached its target ended at the confirming update (its evaluation included)
        seconds = target["seconds"] if target["reached"] and stage.eval_episodes else last_row["time_elapsed"]
        stages.append(dict(key=stage.key, run_dir=str(run_dir), steps=summary["global_step"],
                           train_seconds=seconds, wall_seconds=time.perf_counter() - t0,
                           stop_at=target["stop_at"], patience=target["patience"], reached=target["reached"],
                           reached_step=target["step"], reached_seconds=target["seconds"],
                           fps=last_row.get("fps"), config=asdict(cfg)))
        log(f"  {'reached' if target['reached'] else 'NOT reached'} after {summary['global_step']:,} steps, "
            f"{seconds:.1f} s of training")
        init_from, solved = str(run_dir), target["reached"]
    last = stages[-1]
    before = sum(s["train_seconds"] for s in stages[:-1])
    policy, cfg, _ = load_policy(last["run_dir"], device=device)
    evals = evaluate_both(policy, task.env, episodes, cfg.env_kwargs_dict(), device)
    result = dict(
        task=task.name, core=task.core, seed=seed, preset=preset, device=device, device_name=device_name(device),
        torch=torch.__version__, solved=solved,
        seconds_to_solve=before + last["reached_seconds"] if solved else None,
        steps_to_solve=sum(s["steps"] for s in stages[:-1]) + last["reached_step"] if solved else None,
        train_seconds=sum(s["train_seconds"] for s in stages), steps=sum(s["steps"] for s in stages),
        wall_seconds=sum(s["wall_seconds"] for s in stages), eval=evals, stages=stages, note=task.note,
    )
    path = result_path(out, task, seed, preset)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


def _last_row(run_dir: Path) -> dict[str, Any]:
    """The last row of a run's metrics.jsonl: its training seconds (``time_elapsed``) at the end of its last update."""
    with open(Path(run_dir) / "metrics.jsonl") as f:
        last = f.readlines()[-1]
    return json.loads(last)


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{dev.type}, {torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}"


def load_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "results").glob("*.json"))]


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


def report(results: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per task, core, preset and device: seconds to solve per seed (steps beside them;
    'not solved in N steps' otherwise), the median over seeds (over every seed, an unsolved one counting as
    infinitely slow, so the median is only given when more than half of the seeds solved it), the solved count and
    the final evaluation's median score (greedy / sampled)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["core"], r["preset"], r["device_name"]), []).append(r)
    lines = ["| task | core | preset | device | seconds to solve per seed (env steps) | median seconds | solved | "
             "final score, greedy / sampled (median) |", "|---|---|---|---|---|---:|---:|---|"]
    order = {name: i for i, name in enumerate(TASKS)}  # the tasks' order, then preset and device
    for (name, core, preset, dev), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], len(order)),
                                                                                 kv[0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        per_seed = ", ".join(
            f"s{r['seed']}: {_fmt_s(r['seconds_to_solve'])} ({r['steps_to_solve'] / 1e6:.2f}M)" if r["solved"]
            else f"s{r['seed']}: not solved in {r['steps'] / 1e6:.2f}M" for r in rs)
        times = sorted(r["seconds_to_solve"] if r["solved"] else float("inf") for r in rs)
        med = statistics.median(times)
        score = TASKS[name].score if name in TASKS else "success_rate"
        g = statistics.median(r["eval"]["greedy"].get(score, float("nan")) for r in rs)
        s = statistics.median(r["eval"]["sampled"].get(score, float("nan")) for r in rs)
        lines.append(f"| {name} | {core} | {preset} | {dev} | {per_seed} | "
                     f"{_fmt_s(med) if med != float('inf') else '-'} | {sum(r['solved'] for r in rs)}/{len(rs)} | "
                     f"{score} {g:.3f} / {s:.3f} |")
    return "\n".join(lines) + "\n"
