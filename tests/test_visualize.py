"""scripts/visualize.py on tiny freshly trained checkpoints, and smoke runs of scripts/benchmark_training.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from agents.ppo import TrainConfig
from agents.runner import train

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"
# tiny memories so that training and plotting take well under a second
CORE_KWARGS = {
    "ntm": {"num_slots": 8, "slot_size": 4},
    "dnc": {"num_slots": 8, "slot_size": 4, "num_read_heads": 2},
    "rl_access": {"num_slots": 8, "slot_size": 4},
    "lstm": {},
}


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


visualize = _load_script("visualize")


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> dict[str, str]:
    """One tiny PPO run per core (2 updates of 8 envs x 32 steps on a T-maze of length 4)."""
    out = {}
    for core, kw in CORE_KWARGS.items():
        run_dir = str(tmp_path_factory.mktemp(core))
        cfg = TrainConfig(
            env="MemoryCores/TMaze-v0", env_kwargs='{"length": 4, "max_steps": 20}', core=core, hidden_size=16,
            embed_size=16, core_kwargs=json.dumps(kw), num_envs=8, num_steps=32, seq_len=16, num_minibatches=2,
            update_epochs=1, total_steps=8 * 32 * 2, run_dir=run_dir, progress=False, tensorboard=False,
            checkpoint_every=1,
        )
        train(cfg)
        out[core] = run_dir
    return out


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG


@pytest.mark.parametrize("core", ["ntm", "dnc", "rl_access", "lstm"])
def test_weights_png(run_dirs, core, tmp_path, capsys):
    out = tmp_path / f"{core}.png"
    assert visualize.main(["weights", run_dirs[core], "--out", str(out), "--seed", "3"]) == 0
    assert _is_png(out) and out.stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out


def test_weights_default_path_and_stochastic(run_dirs):
    assert visualize.main(["weights", os.path.join(run_dirs["ntm"], "checkpoint.pt"), "--stochastic"]) == 0
    assert _is_png(os.path.join(run_dirs["ntm"], "weights.png"))


def test_recorded_weightings_mean_what_they_say(run_dirs):
    """NTM weightings are distributions over the slots, DNC's sum to at most 1, usage in [0, 1];
    rl_access's head is one-hot and a written slot is one-hot."""
    ep = visualize.record_episode(run_dirs["ntm"], seed=1)
    panels = dict(ep["panels"])
    T = len(ep["actions"])
    assert set(panels) == {"read weighting", "write weighting"}
    for arr in panels.values():
        assert arr.shape == (T, 8)
        np.testing.assert_allclose(arr.sum(1), 1.0, atol=1e-5)

    ep = visualize.record_episode(run_dirs["dnc"], seed=1)
    panels = dict(ep["panels"])
    assert {"read weighting, head 0", "read weighting, head 1", "write weighting", "usage u"} == set(panels)
    for name in ("read weighting, head 0", "read weighting, head 1", "write weighting"):  # link reads: sum <= 1
        assert (panels[name] >= 0).all() and (panels[name].sum(1) <= 1 + 1e-5).all()
    assert ((panels["usage u"] >= 0) & (panels["usage u"] <= 1 + 1e-6)).all()

    ep = visualize.record_episode(run_dirs["rl_access"], seed=1, deterministic=False)
    panels = dict(ep["panels"])
    head, written = panels["head pointer p"], panels["slot written (from the chosen process)"]
    np.testing.assert_array_equal(head.sum(1), 1.0)
    assert set(np.unique(head)) <= {0.0, 1.0}
    assert set(written.sum(1)) <= {0.0, 1.0}
    assert len(ep["choices"]) == len(ep["actions"]) and ep["choice_names"]
    names = ep["choice_names"]
    for t, c in enumerate(ep["choices"]):  # a slot is written exactly at the steps that chose a writing process
        assert written[t].sum() == (1.0 if names[c] in ("write_head", "write_least_used") else 0.0)
        if names[c] == "write_least_used":  # usage becomes 1 there
            assert panels["usage u"][t][written[t].argmax()] == pytest.approx(1.0)


def test_curves_png(run_dirs, tmp_path):
    out = tmp_path / "curves.png"
    rc = visualize.main(["curves", run_dirs["ntm"], run_dirs["dnc"], "--out", str(out), "--smooth", "2"])
    assert rc == 0 and _is_png(out)
    assert visualize.main(["curves", run_dirs["lstm"], "--metrics", "value_loss"]) == 0
    assert _is_png(os.path.join(run_dirs["lstm"], "curves.png"))


def test_read_metrics_resumed_and_partial_rows(tmp_path):
    rows = [{"global_step": s, "ep_rew_mean": float(s)} for s in (10, 20, 30)]
    rows += [{"global_step": 20, "ep_rew_mean": -1.0}, {"global_step": 30, "ep_rew_mean": -2.0}]  # resumed at 10
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"global_step": 40, "ep_re'  # being written
    (tmp_path / "metrics.jsonl").write_text(text)
    got = visualize.read_metrics(tmp_path)
    assert [(r["global_step"], r["ep_rew_mean"]) for r in got] == [(10, 10.0), (20, -1.0), (30, -2.0)]
    np.testing.assert_allclose(visualize.smooth(np.array([1.0, 3.0, np.nan, 5.0]), 2), [1.0, 2.0, 3.0, 5.0])


def test_user_errors(tmp_path, capsys):
    assert visualize.main(["curves", str(tmp_path / "missing")]) == 2
    assert "no metrics file" in capsys.readouterr().err
    assert visualize.main(["weights", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"global_step": 1, "loss": 0.5}\n')
    assert visualize.main(["curves", str(tmp_path), "--metrics", "nope"]) == 2
    assert "present: loss" in capsys.readouterr().err


# ======================================================================================== benchmark_training.py
def test_benchmark_help():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_training.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--seconds" in r.stdout and "--threads" in r.stdout


def test_benchmark_smoke(tmp_path, capsys):
    bench = _load_script("benchmark_training")
    entries = ["tmaze:lstm", "tmaze:sb3-lstm", "minigrid-sync:env", "minigrid-sync:lstm"]
    try:
        import sb3_contrib  # noqa: F401
    except ImportError:
        entries.remove("tmaze:sb3-lstm")
    try:
        import minigrid  # noqa: F401
    except ImportError:
        entries = [e for e in entries if not e.startswith("minigrid")]
    out = tmp_path / "bench.json"
    argv = ["--seconds", "0.3", "--warmup-updates", "0", "--num-envs", "4", "--num-steps", "8", "--json", str(out),
            "--entries", *entries]
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(1)
    text = capsys.readouterr().out
    assert "torch threads 1" in text and "| 4 x 8 |" in text
    res = json.loads(out.read_text())
    assert [r["entry"] for r in res["results"]] == entries
    assert all(r["steps"] > 0 and r["sps"] > 0 for r in res["results"])
    if "tmaze:sb3-lstm" in entries:
        rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| ")}
        assert rows["tmaze:lstm"][2] == rows["tmaze:sb3-lstm"][2]  # same parameter count: the same network
        assert float(rows["tmaze:lstm"][8]) > 0  # ratio to sb3 with the same settings


def test_benchmark_capture_modes_side_by_side(tmp_path, capsys):
    """--capture-rollout / --capture-update: every combination timed, each tagged, the ratio tables printed."""
    bench = _load_script("benchmark_training")
    out = tmp_path / "bench.json"
    argv = ["--seconds", "0.2", "--warmup-updates", "0", "--num-envs", "4", "--num-steps", "8", "--json", str(out),
            "--entries", "tmaze:ntm", "--no-sb3", "--capture-rollout", "off", "static", "--capture-update", "off",
            "static"]
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(1)
    text = capsys.readouterr().out
    res = json.loads(out.read_text())["results"]
    assert [r["entry"] for r in res] == ["tmaze:ntm", "tmaze:ntm (update static)", "tmaze:ntm (capture static)",
                                         "tmaze:ntm (capture static, update static)"]
    assert "Captured rollout against the plain one" in text and "Captured update against the plain one" in text
    assert all(r["steps"] > 0 for r in res)


# ========================================================================================== benchmark_cores.py
def test_benchmark_cores_graph_skips_without_cuda(capsys):
    bench = _load_script("benchmark_cores")
    try:
        info = bench.main(["--devices", "cpu", "--cores", "lstm", "--graph", "--no-ixaxaar", "--slots-sweep",
                           "--steps", "2", "--repeats", "1", "--warmup", "1", "--budget", "1"])
    finally:
        torch.set_num_threads(1)
    assert "--graph skipped: CUDA graphs need a CUDA device" in capsys.readouterr().out
    assert set(info["results"]["cpu"]) == {"lstm"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_benchmark_cores_graph_times_captured_unrolls():
    """--graph on CUDA: each core's unroll (forward, and forward+backward) replayed as one CUDA graph."""
    bench = _load_script("benchmark_cores")
    info = bench.main(["--devices", "cuda", "--cores", "lstm", "ntm", "dnc", "--graph", "--no-ixaxaar",
                       "--slots-sweep", "--steps", "4", "--repeats", "2", "--budget", "2"])
    res = info["results"]["cuda"]
    for name in ("lstm", "ntm", "dnc"):
        assert res[f"{name}+graph"]["fwd_bwd_ms"] > 0 and res[f"{name}+graph"]["fwd_ms"] > 0
