"""One agent over several processes (agents/distributed.py): two CPU ranks on gloo.

* PPO level (two ranks started by ``torch.multiprocessing.spawn``, once for the module): an update on a rollout
  split across the ranks equals one process's update on the whole rollout (float tolerance: only the order of the
  sums differs); so does one minibatch step of chosen sequences (2 minibatches per epoch), gradients included;
  observation and return statistics over the ranks equal those of one batch; after real collect/update cycles the
  parameters, Adam's state and the statistics are bit-identical on both ranks, which stepped different envs.
* CLI level (``python -m torch.distributed.run --nproc-per-node 2 scripts/train.py``): rank 1 kills itself mid-run
  (``os._exit`` in a test-only env factory); the run exits non-zero, rank 0 says in one line that another process
  stopped, the last checkpoint rank 0 wrote loads (``world_size`` 2, logs up to its step) and resumes with one
  process and then with two to the end, started the multi-node way (two torchrun agents meeting through a c10d
  rendezvous on 127.0.0.1).

Skipped where torch.distributed or gloo is unavailable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of two spawned gloo ranks computed (:func:`distributed_helpers.ppo_checks`)."""
    import torch.multiprocessing as mp

    import distributed_helpers

    d = tmp_path_factory.mktemp("ranks")
    mp.spawn(distributed_helpers.worker, args=(WORLD, str(d / "init"), str(d)), nprocs=WORLD, join=True)
    return [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _close(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


def test_update_on_split_rollout_equals_one_process(ranks):
    """2 ranks x 4 envs == 1 process x 8 envs: same weights and rollout, 2 epochs of 1 minibatch (global advantage
    normalisation, rank-averaged gradients); the parameters after the update agree to float tolerance."""
    import distributed_helpers as h

    cfg = h.tiny_cfg(2 * h.B_RANK)
    weights, full = h.full_rollout(cfg)
    ppo = h.make_ppo(cfg)
    ppo.policy.load_state_dict(weights)
    ppo.update(full)
    one = ppo.policy.state_dict()
    moved = max(float((one[k] - weights[k]).abs().max()) for k in one)
    assert moved > 1e-3  # the update did something to compare
    for r in range(WORLD):
        _close(ranks[r]["update_params"], one)


def test_minibatch_step_equals_one_process(ranks):
    """One gradient step of 3 sequences on each rank == the step of those 6 sequences in one process: the
    rank-averaged gradient is the gradient of the whole minibatch, and the step and the clipped norm follow."""
    import distributed_helpers as h

    cfg = h.tiny_cfg(2 * h.B_RANK, num_minibatches=2)
    weights, full = h.full_rollout(cfg)
    ppo = h.make_ppo(cfg)
    ppo.policy.load_state_dict(weights)
    data = ppo.sequences(full)
    idx = torch.tensor(sum((h.local_to_global(h.MINIBATCH[r], r, h.B_RANK, WORLD) for r in range(WORLD)), []))
    m = ppo._minibatch_step(data, idx, idx)
    grads = {n: p.grad for n, p in ppo.policy.named_parameters() if p.grad is not None}
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    for r in range(WORLD):
        _close(ranks[r]["mb_grads"], grads, rtol=1e-4, atol=1e-7)
        _close(ranks[r]["mb_params"], ppo.policy.state_dict())
        torch.testing.assert_close(ranks[r]["mb_grad_norm"], m["grad_norm"], rtol=1e-5, atol=1e-7)
    # the other rank's sequences matter: one rank's share alone gives another gradient
    assert not torch.allclose(ranks[0]["mb_grads"]["value_head.weight"] * 2, grads["value_head.weight"], atol=1e-6)


def test_statistics_over_ranks_equal_one_batch(ranks):
    """Observation normaliser and reward scaler fed each rank's half of a batch: the statistics (and the scaled
    rewards) are those of one process fed the whole batch, and identical bit for bit on both ranks."""
    import gymnasium as gym

    from agents.policy import ObsNormalizer
    from agents.ppo import RewardScaler
    import distributed_helpers as h

    g = torch.Generator().manual_seed(7)
    norm = ObsNormalizer(gym.spaces.Box(-1e3, 1e3, (3,)))
    scaler = RewardScaler(WORLD * h.B_RANK, 0.9, torch.device("cpu"))
    scaled = []
    for t in range(5):
        obs = 50.0 + 3.0 * torch.randn(WORLD * h.B_RANK, 3, generator=g) + t
        rew = torch.randn(WORLD * h.B_RANK, generator=g)
        done = torch.rand(WORLD * h.B_RANK, generator=g) < 0.3
        norm.update(obs)
        scaled.append(scaler(rew, done))
    _close(ranks[0]["obs_stats"], norm.state_dict(), rtol=1e-5, atol=1e-5)
    _close(ranks[0]["ret_stats"], {k: v for k, v in scaler.state_dict().items() if k != "ret"}, rtol=1e-5, atol=1e-6)
    for t in range(5):
        torch.testing.assert_close(torch.cat([ranks[r]["scaled"][t] for r in range(WORLD)]), scaled[t],
                                   rtol=1e-5, atol=1e-6)
    for key in ("obs_stats", "ret_stats"):
        for k, v in ranks[0][key].items():
            assert torch.equal(v, ranks[1][key][k]), (key, k)


def test_parameters_stay_bit_identical_across_ranks(ranks):
    """Three collect/update cycles with --normalize-obs and --norm-reward, 2 minibatches, each rank on its own envs
    and its own (perturbed) initial weights before the broadcast: parameters, Adam state, statistics and the
    logged metrics are equal bit for bit on both ranks; global_step counts both ranks' steps."""
    a, b = ranks
    assert a["trained"].keys() == b["trained"].keys()
    for k in a["trained"]:
        assert torch.equal(a["trained"][k], b["trained"][k]), k
    assert all(torch.equal(x, y) for x, y in zip(a["adam"], b["adam"])) and a["adam"]
    for k in a["trained_ret_stats"]:
        assert torch.equal(a["trained_ret_stats"][k], b["trained_ret_stats"][k]), k
    assert a["metrics"] == b["metrics"]
    assert a["global_step"] == b["global_step"] == 3 * 16 * 4 * WORLD
    assert not torch.equal(a["first_obs"], b["first_obs"])  # distinct envs per rank (seeds differ)


# ================================================================================================== torchrun, CLI
TINY = ["--env", "MemoryCores/TMaze-v0", "--env-factory", "distributed_helpers:dying_tmaze", "--env-kwargs",
        '{"length": 3}', "--num-envs", "4", "--num-steps", "16", "--seq-len", "16", "--num-minibatches", "1",
        "--update-epochs", "1", "--hidden-size", "8", "--embed-size", "8", "--no-progress", "--device", "cpu",
        "--checkpoint-every", "1", "--dist-timeout", "60", "--no-tensorboard"]
PER_UPDATE = 4 * 16  # env steps of one rank in one update


def _env(die_rank: int | None = None, die_after: int = 0) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "DYING_ENV_RANK"):
        env.pop(name, None)
    if die_rank is not None:
        env.update(DYING_ENV_RANK=str(die_rank), DYING_ENV_AFTER=str(die_after))
    return env


def _launch(nproc: int, args: list[str], die_rank: int | None = None, die_after: int = 0) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node nproc scripts/train.py args`` (one machine)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--max-restarts", "0", str(ROOT / "scripts" / "train.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env(die_rank, die_after),
                          cwd=str(ROOT))


def _launch_two_nodes(args: list[str]) -> list[tuple[int, str, str]]:
    """The multi-node command on this machine: two torchrun agents (``--nnodes 2 --nproc-per-node 1``) that meet
    through a c10d rendezvous on 127.0.0.1; (exit code, stdout, stderr) of each."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend",
           "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}", "--max-restarts", "0",
           str(ROOT / "scripts" / "train.py"), *args]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                              cwd=str(ROOT)) for _ in range(2)]
    out = []
    for p in procs:
        so, se = p.communicate(timeout=240)
        out.append((p.returncode, so, se))
    return out


def _train_script():
    """``scripts/train.py`` as a module (its ``main(argv)`` runs in this process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("script_train", ROOT / "scripts" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_killed_rank_stops_the_run_and_the_checkpoint_resumes(tmp_path, capsys):
    """Rank 1 exits (os._exit) during its 4th rollout: torchrun exits non-zero, rank 0 reports the lost process in
    one line, the last checkpoint (update 3, written by rank 0 alone, world_size 2) loads and the logs end at its
    step; ``--resume`` continues it with 1 process (another world size) and then with 2 to the end, launched as two
    "nodes" with torchrun's rendezvous options."""
    from agents.checkpoint import load_checkpoint

    run = tmp_path / "run"
    total = 8 * WORLD * PER_UPDATE
    args = [*TINY, "--total-steps", str(total), "--run-dir", str(run)]
    # 4 envs step together: the 4th rollout of rank 1 begins after 3 * 64 of its env steps (x4 env copies counted)
    p = _launch(WORLD, args, die_rank=1, die_after=4 * (3 * 16 + 5))
    assert p.returncode != 0, p.stdout[-2000:] + p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert lines and "rank 0: another process of the run stopped or stopped answering" in lines[0], p.stderr[-3000:]
    assert "kept the last good checkpoint" in lines[0] and "(update 3)" in lines[0], lines[0]
    assert "exitcode  : 3" in p.stderr  # torchrun names the rank that died
    ckpt = load_checkpoint(run)
    assert ckpt["world_size"] == WORLD and ckpt["update"] == 3 and ckpt["global_step"] == 3 * WORLD * PER_UPDATE
    assert len(ckpt["torch_rng_per_rank"]) == WORLD
    steps = [json.loads(line)["global_step"] for line in open(run / "metrics.jsonl")]
    assert steps == [WORLD * PER_UPDATE * (i + 1) for i in range(3)]  # rank 0 alone logged, no duplicates

    # another world size: 1 process takes over at the same global step (in this process: no start-up cost)
    train_script = _train_script()
    assert train_script.main(["--resume", "--run-dir", str(run), "--total-steps", str(5 * WORLD * PER_UPDATE)]) == 0
    assert "resuming a run of 2 processes with 1: its 384 steps count as 6 updates of 64 steps" in \
        capsys.readouterr().out
    ckpt = load_checkpoint(run)
    assert ckpt["world_size"] == 1 and ckpt["global_step"] == 5 * WORLD * PER_UPDATE
    # and back to 2 processes, to the end, started as two "nodes" (torchrun's rendezvous options) on this machine
    nodes = _launch_two_nodes(["--resume", "--run-dir", str(run), "--total-steps", str(total)])
    assert all(rc == 0 for rc, _, _ in nodes), [se[:4000] for _, _, se in nodes]
    assert sum(so.count("done:") for _, so, _ in nodes) == 1  # rank 0 alone prints
    assert sum(so.count("resuming a run of 1 process with 2") for _, so, _ in nodes) == 1
    ckpt = load_checkpoint(run)
    assert ckpt["world_size"] == WORLD and ckpt["global_step"] == total
    steps = [json.loads(line)["global_step"] for line in open(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == total


def test_malformed_torchrun_variables_are_one_line_errors(monkeypatch, capsys, tmp_path):
    """WORLD_SIZE/RANK that torchrun would never set: scripts/train.py says which variable and exits 2, without
    joining any group or creating the run directory."""
    main = _train_script().main
    for world, rank, needle in (("two", "0", "WORLD_SIZE='two' is not an integer"),
                                ("2", "2", "WORLD_SIZE=2, RANK=2, LOCAL_RANK=0 are not valid")):
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("RANK", rank)
        assert main(["--env", "MemoryCores/TMaze-v0", "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not (tmp_path / "run").exists() and not dist.is_initialized()


def test_gpu_choice_under_torchrun_user_errors(monkeypatch):
    """Under torchrun each process takes cuda:LOCAL_RANK: an explicit cuda:i and a LOCAL_RANK beyond the GPUs are
    one-line ValueErrors (CUDA faked available; no GPU is touched), --device cpu stays on the CPU."""
    from agents.distributed import Dist, rank_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"--device 'cuda:1': under torchrun each process uses cuda:LOCAL_RANK"):
        rank_device("cuda:1", Dist(2, 0, 0))
    with pytest.raises(ValueError, match=r"LOCAL_RANK 3 has no GPU: this machine has 2"):
        rank_device("cuda", Dist(4, 3, 3))
    assert rank_device("cpu", Dist(2, 1, 1)) == torch.device("cpu")
