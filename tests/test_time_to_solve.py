"""Time to solve (agents/time_to_solve.py, scripts/time_to_solve.py): stages stop at their target, a curriculum
starts from the previous stage, the seconds to solve add up the stages, re-runs resume instead of retraining, and
the table counts unsolved seeds honestly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.time_to_solve import TASKS, SolveTask, Stage, load_results, report, run_task, stage_config

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
TINY = dict(num_envs=8, num_steps=32, seq_len=32, num_minibatches=1, update_epochs=1, hidden_size=8, embed_size=8)
STEPS = 8 * 32


def tiny_stage(key: str, stop_at: str, updates: int, length: int = 3, patience: int = 1, eval_episodes: int = 0
               ) -> Stage:
    return Stage(key, "MemoryCores/TMaze-v0", stop_at, updates * STEPS, {"length": length}, dict(TINY), patience,
                 min_episodes=1, eval_episodes=eval_episodes)


def rows(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]


def test_curriculum_seconds_add_up_and_a_rerun_trains_nothing(tmp_path):
    task = SolveTask("tiny", (tiny_stage("a", "iterations>=3", 5), tiny_stage("b", "iterations>=2", 5, length=4)))
    r = run_task(task, 1, tmp_path, preset="cpu", episodes=4, log=lambda *_: None)
    a, b = r["stages"]
    assert a["reached"] and a["steps"] == 3 * STEPS and b["reached"] and b["steps"] == 2 * STEPS
    assert r["solved"] and r["steps_to_solve"] == 3 * STEPS + 2 * STEPS
    assert r["seconds_to_solve"] == pytest.approx(a["train_seconds"] + rows(b["run_dir"])[1]["time_elapsed"])
    assert b["config"]["init_from"] == a["run_dir"] and a["config"]["init_from"] == ""
    assert json.loads(b["config"]["env_kwargs"])["length"] == 4
    assert set(r["eval"]) == {"greedy", "sampled"} and r["eval"]["greedy"]["episodes"] == 4
    assert load_results(tmp_path) == [json.loads(json.dumps(r))]
    # run again: both stages resume at their target, nothing is trained, the same time to solve
    again = run_task(task, 1, tmp_path, preset="cpu", episodes=4, log=lambda *_: None)
    assert [len(rows(s["run_dir"])) for s in again["stages"]] == [3, 2]
    assert again["seconds_to_solve"] == pytest.approx(r["seconds_to_solve"])
    # another task that shares the first stage trains only its own
    other = SolveTask("tiny2", (task.stages[0], tiny_stage("c", "iterations>=1", 5)))
    r2 = run_task(other, 1, tmp_path, preset="cpu", episodes=4, log=lambda *_: None)
    assert r2["stages"][0]["run_dir"] == a["run_dir"] and len(rows(a["run_dir"])) == 3
    assert r2["steps_to_solve"] == 3 * STEPS + STEPS


def test_a_confirmed_stage_ends_at_its_confirming_evaluation(tmp_path):
    task = SolveTask("conf", (tiny_stage("e1", "ep_len_mean<=1e6", 5, eval_episodes=8),
                              tiny_stage("e2", "ep_len_mean<=1e6", 5, length=4, eval_episodes=8)))
    r = run_task(task, 1, tmp_path, preset="cpu", episodes=4, log=lambda *_: None)
    a, b = r["stages"]
    assert r["solved"] and a["steps"] == STEPS and b["steps"] == STEPS  # confirmed at the first update
    row_a, row_b = rows(a["run_dir"])[-1], rows(b["run_dir"])[-1]
    assert 4 <= row_a["stop_eval_ep_len_mean"] and 5 <= row_b["stop_eval_ep_len_mean"]
    assert a["train_seconds"] >= row_a["time_elapsed"]  # the evaluation's seconds count
    assert r["seconds_to_solve"] == pytest.approx(a["train_seconds"] + b["reached_seconds"])
    assert b["reached_seconds"] >= row_b["time_elapsed"]


def test_unsolved_task_and_the_table(tmp_path):
    task = SolveTask("never", (tiny_stage("n", "iterations>=99", 2),))
    r = run_task(task, 1, tmp_path, preset="cpu", episodes=4, log=lambda *_: None)
    assert not r["solved"] and r["seconds_to_solve"] is None and r["steps_to_solve"] is None
    assert r["steps"] == 2 * STEPS
    base = dict(task="t", core="lstm", preset="gpu", device_name="X", steps=10**6,
                eval={"greedy": {"success_rate": 1.0}, "sampled": {"success_rate": 0.5}})
    solved = [dict(base, seed=s, solved=True, seconds_to_solve=x, steps_to_solve=10**5) for s, x in ((1, 5.0), (2, 300.0))]
    unsolved = dict(base, seed=3, solved=False, seconds_to_solve=None, steps_to_solve=None)
    table = report([*solved, unsolved])
    assert "| t | lstm | gpu | X | s1: 5.0 (0.10M), s2: 300 (0.10M), s3: not solved in 1.00M | 300 | 2/3 |" in table
    table = report([solved[0], dict(unsolved, seed=2), unsolved])  # most seeds unsolved: no median
    assert "| - | 1/3 |" in table


def test_every_task_has_valid_configs_in_both_presets(tmp_path):
    for task in TASKS.values():
        for stage in task.stages:
            for preset in ("gpu", "cpu"):
                cfg = stage_config(stage, task.core, 1, preset, tmp_path, "cpu")
                cfg.validate()
                assert cfg.stop_target() is not None and cfg.total_steps == stage.steps
    t50 = TASKS["tmaze-L50"].stages[0]
    gpu, cpu = (stage_config(t50, "lstm", 1, p, tmp_path, "cpu") for p in ("gpu", "cpu"))
    assert (gpu.num_envs, gpu.num_minibatches, cpu.num_envs, cpu.num_minibatches) == (512, 64, 32, 4)
    assert json.loads(gpu.env_kwargs)["max_steps"] == 2500  # the T-maze's derived step limit, as train.py gives it
    s7 = TASKS["minigrid-S13"].stages[0]
    assert stage_config(s7, "lstm", 1, "gpu", tmp_path, "cpu").num_envs == 256  # the stage's own envs
    assert [s.key for s in TASKS["minigrid-S17Random"].stages[:4]] == [s.key for s in TASKS["minigrid-S13"].stages]
    assert TASKS["tmaze-L200"].stages[0] == t50  # the curriculum trains the tmaze-L50 task's stage (shared)
    with pytest.raises(ValueError, match="--preset 'tpu' is not valid"):
        stage_config(t50, "lstm", 1, "tpu", tmp_path, "cpu")


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/time_to_solve.py", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)


def test_script_lists_refuses_and_runs_a_capped_task(tmp_path):
    res = _script("--list")
    assert res.returncode == 0 and all(f"{name}: core" in res.stdout for name in TASKS)
    res = _script("--tasks", "tmaze-L5000")
    assert res.returncode == 2 and res.stderr.startswith("error: --tasks tmaze-L5000: unknown; expected some of")
    out = tmp_path / "tts"
    args = ("--tasks", "copy-L6", "--preset", "cpu", "--max-steps", str(2 * 64 * 64), "--seeds", "1",
            "--episodes", "8", "--out", str(out))
    res = _script(*args)
    assert res.returncode == 0, res.stderr
    assert "torch threads 1, device cpu, preset cpu" in res.stdout
    assert "copy-L6 seed 1: not solved in 8,192 steps" in res.stdout
    assert "| copy-L6 | lru | cpu | cpu, 1 torch thread | s1: not solved in 0.01M | - | 0/1 |" in \
        (out / "report.md").read_text()
    res = _script(*args)
    assert res.returncode == 0 and "copy-L6 seed 1: done before (skipped)" in res.stdout
    res = _script("--report-only", "--out", str(out))
    assert res.returncode == 0 and "| copy-L6 | lru | cpu |" in res.stdout
