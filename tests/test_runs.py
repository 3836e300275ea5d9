"""Runs that survive interruption with nothing lost: Ctrl-C/SIGTERM checkpoints, logs with no duplicates and no gaps
after any restart, checksummed checkpoints with a previous one kept, one-line errors, --time-budget."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agents.checkpoint import (
    OLD_FORMAT,
    CheckpointError,
    NonFiniteStateError,
    load_checkpoint,
    load_run_checkpoint,
    save_checkpoint,
)
from agents.ppo import TrainConfig
from agents.runner import train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
TMAZE = "MemoryCores/TMaze-v0"
STEPS = 8 * 32  # environment steps of one update of the tiny config
TINY = ["--env", TMAZE, "--num-envs", "8", "--num-steps", "32", "--seq-len", "32", "--num-minibatches", "1",
        "--update-epochs", "1", "--hidden-size", "8", "--embed-size", "8", "--no-progress"]


def tiny_cfg(run_dir: Path, updates: int = 2, **kw) -> TrainConfig:
    base = dict(env=TMAZE, env_kwargs='{"length": 3}', num_envs=8, num_steps=32, seq_len=32, num_minibatches=1,
                update_epochs=1, hidden_size=8, embed_size=8, total_steps=updates * STEPS, progress=False,
                device="cpu", run_dir=str(run_dir))
    base.update(kw)
    return TrainConfig(**base)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def tb_scalars(run_dir: Path, tag: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard tag as TensorBoard shows it (purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def script(name: str):
    """``scripts/<name>.py`` as a module (its ``main(argv)`` runs in-process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------------------------------------ logs after restarts
def test_fresh_restart_replaces_logs_and_resume_keeps_checkpoint_step(tmp_path, capsys):
    """(a) a run killed before its first checkpoint and started again logs only the new run; (b) a resume keeps
    rows and TensorBoard points up to and including the checkpoint's step and drops the killed run's later ones."""
    run = tmp_path / "run"
    cfg = tiny_cfg(run, updates=4, checkpoint_every=2, tensorboard=True)
    signal_handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    train(cfg)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == signal_handlers  # restored
    # (a) no checkpoint left (killed before the first one): the same command starts fresh
    for f in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / f).unlink()
    train(replace(cfg, total_steps=3 * STEPS, seed=2))
    assert [r["global_step"] for r in rows(run)] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in tb_scalars(run)] == [STEPS, 2 * STEPS, 3 * STEPS]

    # (b) a run at update 3 killed after its checkpoint at update 2 (the previous checkpoint stands in for it)
    shutil.copy(run / "checkpoint.prev.pt", run / "checkpoint.pt")
    assert load_checkpoint(run)["update"] == 2
    before = {r["global_step"]: r["loss"] for r in rows(run)}
    tb_before = dict(tb_scalars(run))
    out = train(replace(cfg, total_steps=5 * STEPS, resume=True))
    assert out["updates"] == 5
    after = rows(run)
    assert [r["global_step"] for r in after] == [STEPS * k for k in (1, 2, 3, 4, 5)]  # no duplicate, no gap
    assert [r["loss"] for r in after[:2]] == [before[STEPS], before[2 * STEPS]]  # kept up to the checkpoint
    assert after[2]["loss"] != before[3 * STEPS]  # the killed run's update 3 was redone
    tb = tb_scalars(run)
    assert [s for s, _ in tb] == [STEPS * k for k in (1, 2, 3, 4, 5)]
    assert tb[1][1] == pytest.approx(tb_before[2 * STEPS])  # the checkpoint's own point survives the resume
    assert [v for _, v in tb] == pytest.approx([r["loss"] for r in after])


# ---------------------------------------------------------------------------------------------- checkpoint integrity
def test_damaged_checkpoints_are_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_cfg(run, updates=2, checkpoint_every=1, tensorboard=False))
    good = load_checkpoint(run)
    assert good["update"] == 2 and load_checkpoint(run / "checkpoint.prev.pt")["update"] == 1  # rotated
    data = (run / "checkpoint.pt").read_bytes()
    rng = random.Random(0)
    bad = tmp_path / "bad"
    bad.mkdir()
    files = []
    for i in range(100):  # random bytes, some behind a zip or a checkpoint header
        size = rng.choice([0, 1, 6, 100, 4096, 70_000])
        prefix = [b"", b"PK\x03\x04", data[:120], data[:30]][i % 4]
        files.append((f"random{i}", prefix + rng.randbytes(size)))
    for i in range(10):  # truncated real checkpoints
        files.append((f"truncated{i}", data[: rng.randrange(0, len(data))]))
    for i in range(10):  # 4 KiB overwritten at random places (the header included)
        at = 0 if i == 0 else rng.randrange(0, len(data) - 4096)
        files.append((f"overwritten{i}", data[:at] + rng.randbytes(4096) + data[at + 4096 :]))
    for name, content in files:
        (bad / name).write_bytes(content)
        with pytest.raises(CheckpointError):
            load_checkpoint(bad / name)
    # a checkpoint of the first format (no header, no checksum) still loads; damage in it is still one line
    old = {k: v for k, v in good.items() if k != "train_seconds"}
    torch.save({**old, "format": OLD_FORMAT}, bad / "old.pt")
    assert load_checkpoint(bad / "old.pt")["update"] == 2
    old_bytes = (bad / "old.pt").read_bytes()
    (bad / "old_cut.pt").write_bytes(old_bytes[: len(old_bytes) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad / "old_cut.pt")
    # a NaN in the policy is never written
    nan = dict(good, policy={k: v.clone() for k, v in good["policy"].items()})
    next(iter(nan["policy"].values())).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteStateError, match="not finite"):
        save_checkpoint(bad / "nan.pt", nan)
    assert not (bad / "nan.pt").exists()

    # a damaged checkpoint.pt: loading names the good previous one; --resume falls back to it with a warning
    (run / "checkpoint.pt").write_bytes(files[-1][1])
    with pytest.raises(CheckpointError, match=r"SHA-256.*previous checkpoint .*checkpoint.prev.pt \(update 1\)"):
        load_checkpoint(run)
    ckpt, path, warning = load_run_checkpoint(run)
    assert ckpt["update"] == 1 and path.name == "checkpoint.prev.pt" and "resuming from the previous" in warning
    # ... and through the scripts: one line, exit 2
    train_main, eval_main = script("train").main, script("evaluate").main
    (bad / "six.pt").write_bytes(data[:6])
    assert eval_main([str(bad / "six.pt")]) == 2
    one_line_error(capsys, "six.pt", "truncated or corrupt")
    assert eval_main([str(bad / "random3")]) == 2
    one_line_error(capsys, "random3")
    assert train_main(TINY + ["--init-from", str(bad / "random1"), "--run-dir", str(tmp_path / "r1")]) == 2
    one_line_error(capsys, "random1")
    (tmp_path / "r2").mkdir()
    shutil.copy(bad / "truncated3", tmp_path / "r2" / "checkpoint.pt")
    assert train_main(["--resume", "--run-dir", str(tmp_path / "r2")]) == 2
    one_line_error(capsys, "checkpoint.pt", "truncated or corrupt")
    assert not (tmp_path / "r1").exists()


# --------------------------------------------------------------------------------------------------- CLI user errors
def test_cli_user_errors_resume_without_run_dir_and_help(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main = script("train").main
    (tmp_path / "afile").write_text("x")
    assert main(TINY + ["--run-dir", "afile"]) == 2
    one_line_error(capsys, "--run-dir afile is a file")
    assert main(TINY + ["--run-dir", "afile/run"]) == 2
    one_line_error(capsys, "--run-dir afile/run cannot be created: afile is a file")
    assert main(TINY + ["--run-dir", "/proc/no/such/run"]) == 2
    one_line_error(capsys, "--run-dir /proc/no/such/run cannot be created")
    assert main(TINY + ["--env-kwargs", '{"length": "ten"}', "--run-dir", "ten"]) == 2
    one_line_error(capsys, "length")
    assert not (tmp_path / "ten").exists()  # a failed start leaves no empty run directory

    # --total-steps rounded to whole updates: said in one line
    cmd = TINY + ["--env-kwargs", '{"length": 2}', "--seed", "3", "--no-tensorboard"]
    assert main(cmd + ["--total-steps", "100"]) == 0
    assert "--total-steps 100 rounded up to 256 (1 update): training runs whole updates of num_envs * num_steps " \
           "= 8 * 32 = 256 steps" in capsys.readouterr().out
    # --resume added to the original command (no --run-dir): the run directory of --env, --core and --seed
    assert main(cmd + ["--total-steps", "512", "--resume"]) == 0
    ckpt = load_checkpoint(tmp_path / "runs" / "MemoryCores_TMaze-v0__lstm__3")
    assert ckpt["update"] == 2 and json.loads(ckpt["config"]["env_kwargs"])["length"] == 2
    capsys.readouterr()
    assert main(cmd[:-3] + ["--seed", "4", "--resume"]) == 2
    one_line_error(capsys, "no checkpoint in runs/MemoryCores_TMaze-v0__lstm__4", "--seed 4")

    # --help says which defaults it shows
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Defaults below: the preset of MemoryCores/TMaze-v0 (agents/presets.py)" in out
    assert "(default: 32)" in out.split("--num-envs")[1][:200]  # the T-maze preset's num_envs
    with pytest.raises(SystemExit):
        main(["--env", "CartPole-v1", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the generic defaults (CartPole-v1 has no preset" in out
    assert f"(default: {TrainConfig.num_envs})" in out.split("--num-envs")[1][:200]


# -------------------------------------------------------------------------------------------------------- time budget
def test_time_budget_stops_and_anneals_over_time(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(run, updates=10_000, time_budget=1.5, learning_rate=1e-3, tensorboard=False, checkpoint_every=10_000)
    t0 = time.perf_counter()
    out = train(cfg)
    assert 1.5 <= time.perf_counter() - t0 < 15
    assert out["stopped"] == "time budget" and 2 <= out["updates"] < cfg.num_updates
    r = rows(run)
    lrs, elapsed = [x["learning_rate"] for x in r], [x["time_elapsed"] for x in r]
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[0] > 0.5e-3 and lrs[-1] < 0.5e-3  # falls with time
    assert elapsed[-1] >= 1.5 > elapsed[-2]  # stopped at the first update that ended past the budget
    ckpt = load_checkpoint(run)
    assert ckpt["update"] == out["updates"] and ckpt["train_seconds"] >= 1.5
    # resumed with a larger budget: the seconds of the first session count
    out2 = train(replace(cfg, time_budget=2.0, resume=True))
    r2 = rows(run)[len(r):]
    assert out2["updates"] > out["updates"] and r2[0]["time_elapsed"] > 1.5
    assert r2[0]["learning_rate"] < 1e-3 * (1 - 1.5 / 2.0) + 1e-9  # annealed over the whole run's seconds


# ------------------------------------------------------------------------------------------------------------ stop at
def test_stop_at_stops_at_the_target_with_its_step_and_seconds(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(run, updates=10, stop_at="iterations>=3", tensorboard=False, checkpoint_every=100)
    out = train(cfg)
    assert out["stopped"] == "target reached" and out["updates"] == 3
    r = rows(run)
    assert len(r) == 3 and load_checkpoint(run)["update"] == 3  # checkpointed where it stopped
    assert out["target"] == dict(stop_at="iterations>=3", patience=1, reached=True, step=3 * STEPS,
                                 seconds=r[-1]["time_elapsed"])
    # resumed: already reached, so nothing more is trained
    again = train(replace(cfg, resume=True))
    assert again["stopped"] == "target reached" and again["updates"] == 3 and len(rows(run)) == 3
    assert again["target"]["step"] == 3 * STEPS


def test_stop_patience_counts_updates_in_a_row_across_a_resume(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(run, updates=4, stop_at="iterations >= 2", stop_patience=4, tensorboard=False, checkpoint_every=100)
    out = train(cfg)  # updates 2, 3, 4 reach it: 3 in a row, not 4
    assert out["stopped"] == "total steps" and out["updates"] == 4
    assert out["target"] == dict(stop_at="iterations>=2", patience=4, reached=False, step=None, seconds=None)
    first = rows(run)[1]
    out2 = train(replace(cfg, total_steps=10 * STEPS, resume=True))  # the 4th in a row is update 5
    assert out2["stopped"] == "target reached" and out2["updates"] == 5
    assert out2["target"]["step"] == 2 * STEPS and out2["target"]["seconds"] == first["time_elapsed"]


def test_stop_at_lower_bound_absent_metric_and_refusals(tmp_path):
    from agents.ppo import StopTarget

    t = TrainConfig(stop_at="value_loss<=0.5").stop_target()
    assert t == StopTarget("value_loss", "<=", 0.5) and str(t) == "value_loss<=0.5"
    assert t.reached({"value_loss": 0.5}) and not t.reached({"value_loss": 0.6})
    assert not t.reached({}) and not t.reached({"value_loss": float("nan")})
    assert TrainConfig().stop_target() is None
    # a metric that never appears: the run goes to its total steps
    out = train(tiny_cfg(tmp_path / "run", updates=2, stop_at="no_such_metric>=0", tensorboard=False))
    assert out["stopped"] == "total steps" and out["target"]["reached"] is False
    for bad in ("success_rate>0.9", "success_rate>=", ">=0.9", "success_rate>=high", "success_rate>=nan",
                "success rate>=1"):
        with pytest.raises(ValueError, match="--stop-at .* is not valid: expected METRIC>=VALUE"):
            TrainConfig(stop_at=bad).validate()
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="--stop-patience .* is not valid"):
            TrainConfig(stop_at="iterations>=1", stop_patience=bad).validate()


def test_stop_at_on_episodes_counts_only_updates_where_enough_episodes_ended(tmp_path):
    # MemoryMaze's episodes end together every max_steps = 80 steps: in updates 3, 5 and 8 of 32 steps; the others end
    # none and repeat the last means in metrics.jsonl, which must not count towards the streak (nor break it)
    maze = dict(env="MemoryCores/MemoryMaze-v0", env_kwargs='{"maze_size": 7, "view_size": 3, "max_steps": 80}',
                num_envs=4, tensorboard=False, checkpoint_every=100)
    out = train(tiny_cfg(tmp_path / "a", updates=10, stop_at="ep_len_mean>=80", stop_patience=2,
                         stop_min_episodes=4, **maze))
    assert [r.get("episodes") for r in rows(tmp_path / "a")] == [None, None, 4.0, 4.0, 4.0]  # 4: repeats 3
    assert out["stopped"] == "target reached" and out["updates"] == 5 and out["target"]["step"] == 3 * STEPS // 2
    # more episodes required than end in an update: the target never counts
    out = train(tiny_cfg(tmp_path / "b", updates=6, stop_at="ep_len_mean>=80", stop_min_episodes=5, **maze))
    assert out["stopped"] == "total steps" and not out["target"]["reached"]
    with pytest.raises(ValueError, match="--stop-min-episodes 0 is not valid"):
        TrainConfig(stop_at="success_rate>=1", stop_min_episodes=0).validate()


def test_stop_eval_confirms_the_target_on_evaluation_episodes(tmp_path):
    run = tmp_path / "run"
    out = train(tiny_cfg(run, updates=5, stop_at="ep_len_mean<=1e6", stop_min_episodes=1, stop_eval_episodes=16,
                         tensorboard=False))
    r = rows(run)
    assert out["stopped"] == "target reached" and out["updates"] == 1 and len(r) == 1
    assert 4 <= r[0]["stop_eval_ep_len_mean"] <= 16  # T-maze L = 3: at least L + 1 steps, at most its step limit
    assert out["target"]["step"] == STEPS and out["target"]["seconds"] >= r[0]["time_elapsed"]


def test_stop_eval_that_falls_short_restarts_the_streak_and_leaves_training_as_it_was(tmp_path, monkeypatch):
    import agents.runner as runner

    real, calls = runner._confirm, []

    def confirm(*args):  # the real evaluation runs; its verdict: short of the target the first two times
        ev = real(*args)
        calls.append(ev)
        return dict(ev, mean_length=2e6 if len(calls) <= 2 else ev["mean_length"])

    monkeypatch.setattr(runner, "_confirm", confirm)
    kw = dict(tensorboard=False, checkpoint_every=100, learning_rate=1e-3)
    out = train(tiny_cfg(tmp_path / "a", updates=6, stop_at="ep_len_mean<=1e6", stop_min_episodes=1,
                         stop_eval_episodes=8, **kw))
    assert len(calls) == 3 and out["updates"] == 3 and out["target"]["step"] == 3 * STEPS
    assert [x["stop_eval_ep_len_mean"] for x in rows(tmp_path / "a")][:2] == [2e6, 2e6]
    # the evaluations draw from random streams of their own: the same parameters as a run without --stop-at
    train(tiny_cfg(tmp_path / "b", updates=6, stop_at="iterations>=3", **kw))  # the same annealing, 3 updates
    pa, pb = (load_checkpoint(tmp_path / x)["policy"] for x in "ab")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_stop_eval_refusals():
    for kw, msg in ((dict(stop_at="iterations>=1", stop_eval_episodes=8), "needs --stop-at on an episode statistic"),
                    (dict(stop_eval_episodes=8), "needs --stop-at on an episode statistic"),
                    (dict(stop_at="success_rate>=1", stop_eval_episodes=-1), "--stop-eval-episodes -1 is not valid")):
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**kw).validate()
    from agents.env_adapter import TorchVecEnv  # noqa: F401  (registers the tasks)
    import gymnasium as gym

    venv = gym.make_vec(TMAZE, num_envs=2, vectorization_mode="sync")
    with pytest.raises(ValueError, match="--stop-eval-episodes builds evaluation envs of its own"):
        train(TrainConfig(env=TMAZE, stop_at="success_rate>=1", stop_eval_episodes=8), env=venv)
    venv.close()


def test_train_script_says_when_the_target_was_reached(tmp_path):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "scripts/train.py", *TINY, "--total-steps", str(10 * STEPS),
                          "--stop-at", "iterations>=2", "--no-tensorboard", "--run-dir", str(run)],
                         cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"(target iterations>=2 reached at step {2 * STEPS:,}, " in res.stdout
    assert len(rows(run)) == 2


# ------------------------------------------------------------------------------------------------------------ signals
def _run_until_logged(run: Path, *extra: str, wait_for: str = "metrics.jsonl") -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "scripts/train.py", *TINY, "--total-steps", str(100_000 * STEPS),
                          "--checkpoint-every", "1000", "--run-dir", str(run), *extra],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ((run / wait_for).exists() and (run / wait_for).stat().st_size):
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.05)
    return p


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_checkpoint_and_resume_continues(tmp_path, capsys, sig):
    run = tmp_path / "run"
    p = _run_until_logged(run)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    last = rows(run)[-1]
    ckpt = load_checkpoint(run)
    assert ckpt["update"] == last["iterations"] and ckpt["global_step"] == last["global_step"]
    name = "interrupted" if sig == signal.SIGINT else "interrupted (SIGTERM)"
    assert (f"{name} at update {ckpt['update']} ({ckpt['global_step']:,} steps): checkpoint written to "
            f"{run}/checkpoint.pt; continue with: python3 scripts/train.py --resume --run-dir {run}") in err
    assert "Traceback" not in err
    # --resume continues from it: no duplicate rows
    n = ckpt["update"]
    assert script("train").main(["--resume", "--run-dir", str(run), "--total-steps", str((n + 2) * STEPS)]) == 0
    assert [r["iterations"] for r in rows(run)] == list(range(1, n + 3))
    if sig == signal.SIGINT:  # a second Ctrl-C during a long update stops at once, keeping the last checkpoint
        run2 = tmp_path / "run2"
        p = _run_until_logged(run2, "--num-envs", "64", "--num-steps", "1024", "--seq-len", "1024",
                              "--checkpoint-every", "1", wait_for="checkpoint.pt")
        p.send_signal(signal.SIGINT)
        assert "stopping after the update in progress" in p.stderr.readline() + p.stderr.readline()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130 and "Traceback" not in err, err
        saved = load_checkpoint(run2)["update"]
        assert f"stopped at once (SIGINT) during update {saved + 1}: the last checkpoint {run2}/checkpoint.pt " \
               f"(update {saved}) is kept; continue with: python3 scripts/train.py --resume --run-dir {run2}" in err


def test_preset_gpu_scales_envs_and_minibatches_and_is_recorded(tmp_path, capsys):
    """--preset gpu: the task preset's num_envs and num_minibatches x16 (the same minibatch and gradient steps per
    env step), shown by --help, given options still win, recorded in the config; a bad value in one line."""
    main = script("train").main
    with pytest.raises(SystemExit):
        main(["--env", TMAZE, "--preset", "gpu", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 512)" in out.split("--num-envs INT")[1][:200]
    assert "(default: 64)" in out.split("--num-minibatches INT")[1][:200]
    run = tmp_path / "gpu"
    assert main(["--env", TMAZE, "--preset", "gpu", "--num-envs", "64", "--num-steps", "8", "--seq-len", "8",
                 "--total-steps", "512", "--hidden-size", "8", "--embed-size", "8", "--no-progress",
                 "--no-tensorboard", "--device", "cpu", "--run-dir", str(run)]) == 0
    cfg = load_checkpoint(run / "checkpoint.pt")["config"]
    assert (cfg["preset"], cfg["num_envs"], cfg["num_minibatches"]) == ("gpu", 64, 64)
    capsys.readouterr()
    assert main(["--env", TMAZE, "--preset", "tpu", "--run-dir", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "--preset 'tpu' is not valid")
