"""The memory study (agents/study.py, scripts/study.py): parameter matching, budgets, normalisation, IQM with
bootstrap CIs, and a resumable end-to-end run of the smoke grid."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agents import study
from agents.study import GRIDS, Task, aggregate, match_hidden_size, normalised_scores, plan

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import study as study_cli  # noqa: E402  (scripts/study.py)


def test_match_hidden_size_is_the_closest_width():
    spec, task = GRIDS["cpu"], GRIDS["cpu"].tasks[0]
    obs, act = study.task_spaces(task)
    for core in ("lstm", "none"):
        cfg = study.base_config(spec, task, core, 1)
        h, n = match_hidden_size(cfg, obs, act, 40_000)
        counts = {w: study.count_params(replace(cfg, hidden_size=w), obs, act) for w in range(8, 520, 8)}
        best = min(counts, key=lambda w: abs(counts[w] - 40_000))
        assert (h, n) == (best, counts[best])
        assert abs(n - 40_000) / 40_000 < 0.1


def test_plan_budgets_and_merged_runs():
    spec = GRIDS["smoke"]
    cells = plan(spec, None)
    assert {c.protocols for c in cells} == {("steps",)} and len(cells) == len(spec.cores) * len(spec.seeds)
    assert all(c.steps == 512 for c in cells)
    # equal wall time: steps proportional to each core's calibrated throughput (whole updates of 8 x 32)
    cal = {"tasks": {"tmaze-L3": {"none": 4096.0, "lstm": 2048.0, "gru": 1024.0}}}
    cells = plan(replace(spec, seconds=1.0), cal)
    steps = {c.core: c.steps for c in cells if "time" in c.protocols}
    assert steps == {"none": 4096, "lstm": 2048, "gru": 1024}
    # a core whose wall-time budget equals the steps budget runs once for both protocols
    cal["tasks"]["tmaze-L3"]["gru"] = 512.0
    merged = [c for c in plan(replace(spec, seconds=1.0), cal) if c.core == "gru"]
    assert len(merged) == len(spec.seeds) and all(c.protocols == ("steps", "time") for c in merged)


def _result(task, core, seed, score, protocols=("steps",), max_score=1.0):
    return dict(key=f"{task}__{core}__s{seed}", task=task, core=core, seed=seed, score=score, max_score=max_score,
                protocols=list(protocols), params=1000, steps=100, train_seconds=1.0)


def test_normalised_scores_between_feed_forward_and_maximum():
    results = [_result("t", "none", s, v) for s, v in ((1, 0.4), (2, 0.6))]
    results += [_result("t", "ntm", s, v) for s, v in ((1, 1.0), (2, 0.75), (3, 0.5))]
    norm = normalised_scores(results)[("t", "steps")]
    assert [n for _, _, n in norm["ntm"]] == pytest.approx([1.0, 0.5, 0.0])  # ff mean 0.5, max 1
    assert [n for _, _, n in norm["none"]] == pytest.approx([-0.2, 0.2])
    # without a feed-forward run a task is not normalised
    assert normalised_scores([_result("u", "lstm", 1, 0.9)]) == {}


def test_aggregate_iqm_and_bootstrap_interval():
    results = [_result("t", "none", s, 0.5) for s in range(1, 6)]
    # normalised 0, 0.2, 0.4, 0.6, 1.0: the IQM of 5 trims one from each end -> mean(0.2, 0.4, 0.6) = 0.4
    results += [_result("t", "dnc", s, 0.5 + 0.5 * v, max_score=1.0) for s, v in enumerate((0, .2, .4, .6, 1.), 1)]
    rows = {r["core"]: r for r in aggregate(results, reps=300)}
    assert rows["dnc"]["iqm"] == pytest.approx(0.4)
    lo, hi = rows["dnc"]["ci"]
    assert 0.0 <= lo < 0.4 < hi <= 1.0
    assert rows["none"]["iqm"] == 0.0 and rows["none"]["ci"] == [0.0, 0.0]
    assert rows["dnc"]["raw"] == pytest.approx([0.5, 0.6, 0.7, 0.8, 1.0]) and rows["dnc"]["seeds"] == [1, 2, 3, 4, 5]


def test_smoke_study_runs_resumes_and_reports(tmp_path, capsys):
    d = str(tmp_path / "study")
    common = ["--grid", "smoke", "--study-dir", d, "--protocol", "steps"]
    assert study_cli.main(["run", *common, "--max-runs", "2"]) == 0
    results = study.load_results(Path(d))
    assert len(results) == 2 and all(r["steps"] == 512 and r["protocols"] == ["steps"] for r in results)
    assert all(set(r["eval"]) == {"greedy", "sampled"} for r in results)
    # a second call runs only what is missing
    assert study_cli.main(["run", *common]) == 0
    assert len(study.load_results(Path(d))) == 6
    capsys.readouterr()
    assert study_cli.main(["run", *common]) == 0
    assert "[1/" not in capsys.readouterr().out  # nothing left to run
    out = tmp_path / "report"
    assert study_cli.main(["report", "--grid", "smoke", "--study-dir", d, "--out", str(out), "--reps", "200"]) == 0
    rows = json.loads((out / "report.json").read_text())
    assert {r["core"] for r in rows} == {"none", "lstm", "gru"} and (out / "tmaze-L3.png").stat().st_size > 1000
    assert "IQM normalised" in (out / "report.md").read_text()
    # the report folder carries the per-run JSON: it regenerates on its own
    assert study_cli.main(["report", "--grid", "smoke", "--study-dir", str(out), "--reps", "200"]) == 0


def test_unknown_grid_is_a_one_line_error(capsys):
    assert study_cli.main(["plan", "--grid", "nope"]) == 2
    assert "expected one of" in capsys.readouterr().err


def test_task_defaults_feed_the_configs():
    spec = replace(GRIDS["smoke"], tasks=(Task("copy", "MemoryCores/Copy-v0", {"min_length": 2, "max_length": 2},
                                                "mean_return", 2.0, train={"learning_rate": 1e-3}),))
    cfg = study.base_config(spec, spec.tasks[0], "lstm", 3)
    assert cfg.learning_rate == 1e-3 and cfg.gamma == 0.9 and cfg.norm_reward is False  # task + Copy preset
    assert json.loads(cfg.env_kwargs) == {"min_length": 2, "max_length": 2} and cfg.seed == 3


def test_scores_come_from_the_chosen_evaluation():
    def res(core, seed, greedy, sampled):
        r = _result("t", core, seed, greedy)
        r.update(score_name="success_rate", eval={"greedy": {"success_rate": greedy},
                                                  "sampled": {"success_rate": sampled}})
        return r

    results = [res("none", 1, 0.0, 0.5), res("ntm", 1, 0.0, 1.0)]
    assert normalised_scores(results, "sampled")[("t", "steps")]["ntm"] == [(1, 1.0, 1.0)]
    assert normalised_scores(results, "greedy")[("t", "steps")]["ntm"] == [(1, 0.0, 0.0)]
    assert normalised_scores(results)[("t", "steps")]["ntm"] == [(1, 0.0, 0.0)]  # the stored (greedy) score


def test_variants_are_normalised_by_the_feed_forward_agent_on_the_variant():
    def res(core, seed, score, variant_score):
        r = _result("t", core, seed, score)
        r.update(score_name="success_rate", eval={m: {"success_rate": score} for m in ("greedy", "sampled")},
                 variants={"long": {m: {"success_rate": variant_score} for m in ("greedy", "sampled")}})
        return r

    results = [res("none", 1, 0.5, 0.2), res("ntm", 1, 1.0, 0.6)]
    norm = normalised_scores(study.with_variants(results), "sampled")
    assert norm[("t", "steps")]["ntm"] == [(1, 1.0, 1.0)]
    assert norm[("t@long", "steps")]["ntm"] == [(1, 0.6, pytest.approx(0.5))]  # (0.6 - 0.2) / (1 - 0.2)
    rows = {(r["task"], r["core"]) for r in aggregate(results, reps=50)}
    assert ("t@long", "ntm") in rows and ("t", "ntm") in rows


def test_variants_added_later_are_evaluated_from_the_checkpoints(tmp_path, monkeypatch, capsys):
    from agents.evaluation import evaluate_policy, load_policy

    base = replace(GRIDS["smoke"], cores=("none", "lstm"), seeds=(1,))
    monkeypatch.setitem(GRIDS, "smoke", base)
    d = tmp_path / "study"
    common = ["--grid", "smoke", "--study-dir", str(d), "--protocol", "steps"]
    assert study_cli.main(["run", *common]) == 0
    assert all(r["variants"] == {} for r in study.load_results(d))
    task = replace(base.tasks[0], variants=(("same", {}), ("L6", {"length": 6})))
    monkeypatch.setitem(GRIDS, "smoke", replace(base, tasks=(task,)))
    assert study_cli.main(["plan", *common]) == 0
    assert "lacks variants same, L6" in capsys.readouterr().out
    assert study_cli.main(["run", *common]) == 0
    assert "[1/" not in capsys.readouterr().out  # evaluated, not trained again
    for r in study.load_results(d):
        assert r["variants"]["same"] == r["eval"]  # the variant without changes is the task itself
        policy, _, _ = load_policy(d / "runs" / r["key"])
        direct = evaluate_policy(policy, task.env, task.episodes, deterministic=True, env_kwargs=task.variant_kwargs("L6"))
        assert r["variants"]["L6"]["greedy"] == direct and direct["mean_length"] >= 7  # corridor of 6: >= 7 steps
    out = tmp_path / "report"
    assert study_cli.main(["report", "--grid", "smoke", "--study-dir", str(d), "--out", str(out), "--reps", "50"]) == 0
    assert "## tmaze-L3@L6, equal env steps" in (out / "report.md").read_text()
