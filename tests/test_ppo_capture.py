"""``--capture-rollout`` and ``--capture-update``.

The rollout step in fixed buffers (``static``, any device) gives the plain rollout's values bit for bit (buffers,
sequence-start states, episode statistics, and the updates that follow), over rollouts and runs, for every kind of
core; what it cannot run is refused in one line. On CUDA (``graph``) the step is replayed as one CUDA graph: equal
to the fixed-buffer step, no host synchronisation, parameters read where the optimiser writes them. The update's
minibatch step on fixed buffers (``static``) equals the plain update (bit for bit for cores whose unroll reads
nothing back to the host); on CUDA (``graph``) it is replayed as one CUDA graph, with the same checks."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import envs.capture
import memory_cores
from agents.checkpoint import load_checkpoint
from agents.env_adapter import EnvError, TorchVecEnv
from agents.policy import ActorCritic
from agents.ppo import PPO, TrainConfig, _tensors
from agents.runner import train

torch.set_num_threads(1)
TMAZE, COPY, MINIGRID = "MemoryCores/TMaze-v0", "MemoryCores/Copy-v0", "MemoryCores/MiniGridMemory-v0"
MAZE = "MemoryCores/MemoryMaze-v0"
MEM_KW = {"ntm": dict(num_slots=4, slot_size=3), "rl_access": dict(num_slots=4, slot_size=3),
          "dnc": dict(num_slots=4, slot_size=3), "alstm": dict(num_copies=2)}
FIELDS = ("obs", "starts", "actions", "log_probs", "values", "rewards", "terminated", "truncated", "final_values",
          "advantages", "returns", "choices", "choice_log_probs", "seq_states", "last_value")


def cfg_for(env: str = TMAZE, device: str = "cpu", **kw) -> TrainConfig:
    env_kwargs = {TMAZE: '{"length": 3, "max_steps": 6}', COPY: '{"min_length": 1, "max_length": 3}',
                  MINIGRID: '{"max_steps": 20}', MAZE: '{"maze_size": 7, "max_steps": 12}'}[env]
    base = dict(env=env, env_kwargs=env_kwargs, num_envs=4, num_steps=16, seq_len=8, num_minibatches=2,
                update_epochs=2, total_steps=4 * 16 * 3, hidden_size=8, embed_size=8, progress=False,
                tensorboard=False, device=device)
    base.update(kw)
    return TrainConfig(**base)


def make_ppo(cfg: TrainConfig, device: str = "cpu") -> PPO:
    torch.manual_seed(0)
    env = TorchVecEnv(cfg.env, cfg.num_envs, device, cfg.env_kwargs_dict())
    kw = dict(MEM_KW.get(cfg.core, {}), **cfg.core_kwargs_dict())
    pol = ActorCritic(env.single_observation_space, env.single_action_space, cfg.core, kw, cfg.embed_size,
                      cfg.shared_core, cfg.normalize_obs).to(device)
    return PPO(pol, env, cfg, seed=0)


def assert_rollouts_equal(a, b, what: str) -> None:
    for f in FIELDS:
        xa, xb = _tensors(getattr(a, f)), _tensors(getattr(b, f))
        assert len(xa) == len(xb), f"{what}: {f} has another structure"
        for u, v in zip(xa, xb):
            assert torch.equal(u, v), f"{what}: {f} differs"


CORES = sorted(memory_cores.CORES) + ["none"]  # every core, and the feed-forward agent


# the captured update gives the plain update's values bit for bit, except for lstm and gru, which run their step
# loop instead of their fused cuDNN/MKL unroll (the same values up to rounding)
EXACT_UPDATE = [c for c in sorted(memory_cores.CORES) if c not in ("lstm", "gru")] + ["none"]
CLOSE_UPDATE = ["lstm", "gru"]


@pytest.mark.parametrize("env", [TMAZE, COPY, MAZE])
@pytest.mark.parametrize("core", CORES)
def test_static_rollout_equals_the_plain_one(core, env):
    """Three rollouts with two-epoch updates between them: every buffer, the carried state, the episode statistics
    and the parameters after each update are the plain trainer's, with observation and reward normalisation on
    (their running statistics are updated in place inside the step) and episodes that end by termination (copy
    tasks) and truncation (the T-maze's step limit; MemoryMaze's lockstep episodes, whose count moves to the
    device in fixed buffers)."""
    cfg = cfg_for(env, core=core, normalize_obs=True, norm_reward=True)
    plain, static = make_ppo(cfg), make_ppo(replace(cfg, capture_rollout="static"))
    plain._any_truncated = lambda truncated: True  # the static step computes final values every step, as on a GPU
    ends = 0
    for it in range(3):
        torch.manual_seed(10 + it)
        rp = plain.collect()
        torch.manual_seed(10 + it)
        rs = static.collect()
        assert_rollouts_equal(rp, rs, f"rollout {it}")
        assert all(torch.equal(u, v) for u, v in zip(_tensors(plain.next_state), _tensors(static.next_state)))
        sp, ss = plain.stats.pop(), static.stats.pop()
        assert sp == ss
        ends += int(rp.terminated.sum() + rp.truncated.sum())
        torch.manual_seed(20 + it)
        plain.update(rp)
        torch.manual_seed(20 + it)
        static.update(rs)
        for p, q in zip(plain.policy.parameters(), static.policy.parameters()):
            assert torch.equal(p, q)
    assert ends > 0 and static._carry is not None
    # the carried values, the env's state and the statistics kept their tensors for the whole run
    assert static.next_obs is static._carry[0] and static.next_state is static._carry[2]


def test_static_rollout_keeps_every_tensor_at_one_address():
    """What a captured step reads and writes stays where the graph recorded it: the carried values, the rollout
    buffers, the env's state, the episode sums and the reward and observation statistics."""
    ppo = make_ppo(cfg_for(COPY, core="lstm", normalize_obs=True, norm_reward=True, capture_rollout="static"))

    def addresses():
        env = ppo.env.venv
        trees = [ppo._carry, ppo._buf, ppo._seq_states, ppo.stats.sums(), ppo.stats.ret, ppo.stats.len,
                 [getattr(ppo.reward_scaler, k) for k in ("ret", "mean", "var", "count")],
                 list(ppo.policy.obs_norm.buffers()), list(env._state.values())]
        leaves = []
        for tree in trees:
            if hasattr(tree, "__dataclass_fields__"):
                tree = [getattr(tree, f) for f in ("obs", "starts", "actions", "log_probs", "values", "rewards",
                                                    "terminated", "truncated", "final_values", "choice_log_probs")]
            leaves += _tensors(tree)
        return [t.data_ptr() for t in leaves]

    r = ppo.collect()
    before = addresses()
    ppo.stats.pop()
    ppo.update(r)
    ppo.collect()
    assert addresses() == before


def test_static_rollout_under_bf16_autocast_carries_fp32():
    ppo = make_ppo(cfg_for(TMAZE, core="ntm", autocast="bf16", capture_rollout="static"))
    for _ in range(2):
        r = ppo.collect()
        ppo.update(r)
    assert all(t.dtype == torch.float32 for t in _tensors(ppo.next_state) if t.is_floating_point())
    assert all(t.dtype == torch.float32 for t in _tensors(r.seq_states) if t.is_floating_point())
    assert torch.isfinite(r.values).all() and torch.isfinite(r.log_probs).all()


def assert_resumed_runs_end_equal(tmp_path: Path, base: TrainConfig, captured: dict, plain: dict) -> None:
    """train() for half of ``base``'s steps then resumed, three ways: plain throughout, ``captured`` throughout, and
    ``captured`` resumed ``plain``; the three final checkpoints hold the same weights."""
    half = base.total_steps // 2
    for name, first, then in (("plain", plain, plain), ("captured", captured, captured), ("mixed", captured, plain)):
        train(replace(base, run_dir=str(tmp_path / name), total_steps=half, **first))
        train(replace(base, run_dir=str(tmp_path / name), resume=True, **then))
    a, b, c = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("plain", "captured", "mixed"))
    for k, v in a["policy"].items():
        assert torch.equal(v, b["policy"][k]) and torch.equal(v, c["policy"][k]), k


def test_a_run_with_static_capture_equals_the_plain_run_and_resumes(tmp_path: Path):
    """scripts/train.py's loop (checkpoints, logs, resume) with --capture-rollout static ends with the plain run's
    weights (LSTM: its final values need no sampling, so the plain CPU path's skipped ones change nothing)."""
    base = cfg_for(TMAZE, core="lstm", total_steps=4 * 16 * 4, checkpoint_every=1, seed=3)
    static = dict(capture_rollout="static")
    assert_resumed_runs_end_equal(tmp_path, base, static, dict(capture_rollout=""))


def test_capture_refusals_are_one_line():
    with pytest.raises(ValueError, match="--capture-rollout 'yes' is not valid"):
        cfg_for(capture_rollout="yes").validate()
    with pytest.raises(ValueError, match="one process only"):
        cfg_for(capture_rollout="static", world_size=2).validate()
    with pytest.raises(ValueError, match="cannot nest"):
        cfg_for(capture_rollout="graph", compile_core="reduce-overhead").validate()
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_ppo(cfg_for(capture_rollout="graph"))
    env = TorchVecEnv(gym.make_vec("CartPole-v1", 2, vectorization_mode="sync",
                                   vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}), 2)
    with pytest.raises(EnvError, match="needs a batched tensor env of this package"):
        env.use_static_step()


def failing_cuda_graphs(monkeypatch) -> None:
    """CPU stand-ins for torch.cuda's streams and graphs whose capture fails at once, as a capture does on a GPU
    when the step holds an op that cannot be captured (no kernel of the step runs)."""
    class Stream:
        def wait_stream(self, other) -> None:
            pass

    class Graph:
        def register_generator_state(self, generator) -> None:
            pass

    @contextlib.contextmanager
    def graph(g, **kw):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\n(details)")
        yield

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)


def replaying_cuda_graphs(monkeypatch) -> None:
    """CPU stand-ins for torch.cuda's streams and graphs that keep a graph's semantics: a capture records the step
    without running it, each replay runs it; what the step returns at its capture is all the caller gets."""
    failing_cuda_graphs(monkeypatch)

    class Graph:
        def register_generator_state(self, generator) -> None:
            self.generators = [*getattr(self, "generators", []), generator]

        def replay(self) -> None:
            self.fn()

    def record(graph, fn):
        graph.fn = fn
        return None

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(envs.capture, "record_graph", record)


@pytest.mark.parametrize("core", EXACT_UPDATE)
def test_the_graph_paths_give_the_plain_trainer_with_stand_in_graphs(core, monkeypatch):
    """The ``graph`` orchestration (two eager warm-up steps on a side stream, one capture, replays whose outputs are
    read from fixed buffers only: carried values, rollout rows at the device index, sequence-start states copied
    between replays, the update's metric buffers, parameters updated in place) run on the CPU with graphs that
    record without running and run on replay: three rollouts and updates equal the plain trainer's bit for bit."""
    cfg = cfg_for(COPY, core=core, normalize_obs=True, norm_reward=True)
    plain = make_ppo(cfg)
    plain._any_truncated = lambda truncated: True
    graphed = make_ppo(replace(cfg, capture_rollout="static", capture_update="static"))
    graphed.capture, graphed.capture_update = "graph", "graph"  # what a CUDA run asks for (refused on the CPU)
    replaying_cuda_graphs(monkeypatch)
    for it in range(3):
        torch.manual_seed(it)
        rp = plain.collect()
        torch.manual_seed(it)
        rg = graphed.collect()
        assert_rollouts_equal(rp, rg, f"rollout {it}")
        assert plain.stats.pop() == graphed.stats.pop()
        torch.manual_seed(10 + it)
        mp = plain.update(rp)
        torch.manual_seed(10 + it)
        mg = graphed.update(rg)
        assert all(torch.equal(mp[k], mg[k]) for k in mp)
        assert all(torch.equal(p, q) for p, q in zip(plain.policy.parameters(), graphed.policy.parameters()))
    assert graphed._graph is not None and graphed._update_graph is not None
    assert (graphed._eager_steps, graphed._update_eager_steps) == (2, 2)
    assert graphed._graph.generators == [graphed.env.venv.env.generator]  # the copy task draws from its generator


@pytest.mark.parametrize("core,autocast", [("lstm", ""), ("gru", ""), ("lstm", "bf16"), ("ntm", "bf16")])
def test_stand_in_graphs_equal_the_static_steps(core, autocast, monkeypatch):
    """lstm and gru (whose captured update runs their step loop) and bf16 autocast (its weight cache off under
    graphs): the graph orchestration with stand-in graphs gives the fixed-buffer (static) trainer's values bit for
    bit."""
    cfg = cfg_for(TMAZE, core=core, autocast=autocast, capture_rollout="static", capture_update="static")
    static, graphed = make_ppo(cfg), make_ppo(cfg)
    graphed.capture, graphed.capture_update = "graph", "graph"
    replaying_cuda_graphs(monkeypatch)
    for it in range(2):
        torch.manual_seed(it)
        rs = static.collect()
        torch.manual_seed(it)
        rg = graphed.collect()
        assert_rollouts_equal(rs, rg, f"rollout {it}")
        torch.manual_seed(10 + it)
        static.update(rs)
        torch.manual_seed(10 + it)
        graphed.update(rg)
        assert all(torch.equal(p, q) for p, q in zip(static.policy.parameters(), graphed.policy.parameters()))
    assert graphed._graph is not None and graphed._update_graph is not None


@pytest.mark.parametrize("core", ["ntm", "dnc"])
def test_a_failed_capture_warns_and_the_run_goes_on_with_the_fixed_buffer_step(core, monkeypatch):
    """``graph`` whose capture fails (an op a CUDA graph cannot hold): one warning per capture naming the error,
    and the run continues with the same fixed-buffer steps run eagerly: the plain trainer's rollouts and updates."""
    cfg = cfg_for(TMAZE, core=core, normalize_obs=True, norm_reward=True)
    plain = make_ppo(cfg)
    plain._any_truncated = lambda truncated: True
    graphed = make_ppo(replace(cfg, capture_rollout="static", capture_update="static"))
    graphed.capture, graphed.capture_update = "graph", "graph"  # what a CUDA run asks for (refused on the CPU)
    failing_cuda_graphs(monkeypatch)
    with pytest.warns(RuntimeWarning) as caught:
        for it in range(2):
            torch.manual_seed(it)
            rp = plain.collect()
            torch.manual_seed(it)
            rg = graphed.collect()
            assert_rollouts_equal(rp, rg, f"rollout {it}")
            torch.manual_seed(10 + it)
            plain.update(rp)
            torch.manual_seed(10 + it)
            graphed.update(rg)
            assert all(torch.equal(p, q) for p, q in zip(plain.policy.parameters(), graphed.policy.parameters()))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # one per capture tried, not one per step
    for what in ("rollout", "update"):
        assert any(m.startswith(f"--capture-{what} graph: the step could not be captured as a CUDA graph (CUDA "
                                f"error: operation not permitted when stream is capturing); this run goes on")
                   for m in messages)
    assert (graphed.capture, graphed.capture_update) == ("static", "static")
    static_env = graphed.env.venv
    assert all(getattr(static_env.env, k) is v for k, v in static_env._state.items())  # bound to its buffers


# ----------------------------------------------------------------------------------------------------- CUDA graph
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def sharpen(ppo: PPO, action: int) -> None:
    """Make the policy take ``action`` with probability 1 (so a rollout is a function of the env and the weights)."""
    head = ppo.policy.actor_head.linear
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        head.bias[action] = 1e4


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("core", ["lstm", "ntm", "dnc", "alstm"])
def test_cuda_graph_rollout_equals_the_static_one_and_syncs_nothing(core):
    """MiniGridMemory (counter-based: its randomness is a function of its state) with a policy that always moves
    forward: the graphed rollout's buffers equal the fixed-buffer rollout's; replays make no host synchronisation;
    after an update of the weights (in place, as Adam does) the replays act on the new weights."""
    cfg = cfg_for(MINIGRID, device="cuda", core=core, num_envs=64, num_steps=32, seq_len=16, normalize_obs=True)
    static, graphed = make_ppo(replace(cfg, capture_rollout="static"), "cuda"), \
        make_ppo(replace(cfg, capture_rollout="graph"), "cuda")
    graphed.policy.load_state_dict(static.policy.state_dict())
    for ppo in (static, graphed):
        sharpen(ppo, 2)
    for it in range(3):
        rs = static.collect()
        torch.cuda.synchronize()
        if it > 0:
            torch.cuda.set_sync_debug_mode("error")
        try:
            rg = graphed.collect()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert graphed._graph is not None
        for f in ("obs", "starts", "actions", "rewards", "terminated", "truncated"):
            assert torch.equal(getattr(rs, f), getattr(rg, f)), f"rollout {it}: {f} differs"
        for f in ("values", "log_probs", "final_values", "advantages"):
            torch.testing.assert_close(getattr(rs, f), getattr(rg, f), rtol=1e-5, atol=1e-5)
    assert (rg.actions == 2).all()
    for ppo in (static, graphed):
        sharpen(ppo, 0)  # in place: the graph reads the parameters where they are
    assert (graphed.collect().actions == 0).all()


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("env", [TMAZE, COPY])
@pytest.mark.parametrize("autocast", ["", "bf16"])
def test_cuda_graph_training_runs_and_draws_new_episodes(env, autocast):
    """Envs that draw from their own generator (the T-maze's cue, the copy tasks' sequences) and the policy's
    sampling draw new numbers at every replay; updates stay finite, with and without bf16 autocast."""
    cfg = cfg_for(env, device="cuda", core="lstm", num_envs=256, num_steps=32, seq_len=16, autocast=autocast,
                  capture_rollout="graph", norm_reward=True)
    ppo = make_ppo(cfg, "cuda")
    for _ in range(3):
        r = ppo.collect()
        m = ppo.update(r)
    assert torch.isfinite(m["loss"])
    assert not torch.equal(r.obs[1], r.obs[-1]) and r.actions.float().std() > 0
    assert ppo.stats.pop()["episodes"] > 0


# ------------------------------------------------------------------------------------------------ captured update


@pytest.mark.parametrize("core", EXACT_UPDATE + CLOSE_UPDATE)
def test_static_update_equals_the_plain_one(core):
    """Three updates (two epochs of two minibatches each) on the same rollouts: the fixed-buffer update (the
    rollout's sequences copied into buffers, the minibatch gathered by a device index, the finiteness checked once
    per update) leaves the plain update's parameters, optimiser state and metrics."""
    cfg = cfg_for(COPY, core=core, normalize_obs=True)
    plain, static = make_ppo(cfg), make_ppo(replace(cfg, capture_update="static"))
    exact = core in EXACT_UPDATE
    check = torch.equal if exact else (lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-5))
    for it in range(3):
        torch.manual_seed(10 + it)
        r = plain.collect()
        torch.manual_seed(20 + it)
        mp = plain.update(r)
        torch.manual_seed(20 + it)
        ms = static.update(r)  # the plain trainer's rollout: the updates alone are compared
        for k in mp:
            assert check(mp[k], ms[k]), (it, k)
        for p, q in zip(plain.policy.parameters(), static.policy.parameters()):
            assert check(p, q), it
        states = [_tensors(list(p.optimizer.state.values())) for p in (plain, static)]
        for a, b in zip(*states):
            assert check(a, b)
    assert static._data is not None and static._idx is not None


def test_static_update_reads_its_data_where_it_copied_it():
    ppo = make_ppo(cfg_for(TMAZE, core="ntm", capture_update="static"))
    r = ppo.collect()
    ppo.update(r)
    before = [t.data_ptr() for t in _tensors(ppo._data)] + [ppo._idx.data_ptr()]
    r = ppo.collect()
    ppo.update(r)
    assert [t.data_ptr() for t in _tensors(ppo._data)] + [ppo._idx.data_ptr()] == before
    # the copies hold this update's sequences
    assert torch.equal(ppo._data["advantages"], ppo.sequences(r)["advantages"])


def test_a_run_with_both_captures_static_trains_and_resumes(tmp_path: Path):
    """train() with --capture-rollout static --capture-update static, resumed with and without them: the ntm run
    ends with the plain run's weights (its update is exact), and the optimiser state loads either way."""
    base = cfg_for(TMAZE, core="ntm", total_steps=4 * 16 * 4, checkpoint_every=1, seed=5)
    both = dict(capture_rollout="static", capture_update="static")
    assert_resumed_runs_end_equal(tmp_path, base, both, dict(capture_rollout="", capture_update=""))


def test_capture_update_refusals_are_one_line():
    with pytest.raises(ValueError, match="--capture-update 'on' is not valid"):
        cfg_for(capture_update="on").validate()
    with pytest.raises(ValueError, match="--capture-update runs in one process only"):
        cfg_for(capture_update="static", world_size=2).validate()
    with pytest.raises(ValueError, match="memory-efficient BPTT"):
        cfg_for(capture_update="static", bptt_memory_slots=4).validate()
    with pytest.raises(ValueError, match="--capture-update graph needs a CUDA device"):
        make_ppo(cfg_for(capture_update="graph"))


@pytest.mark.parametrize("core", sorted(memory_cores.CORES))
def test_captured_steps_read_nothing_back_to_the_host(core, monkeypatch):
    """What a CUDA graph records, for every core: the fixed-buffer rollout (policy, env, statistics) and the update's
    epochs run no op that makes the host wait for the device (the CPU stand-in for the CUDA test's sync debug mode). Exempt, as
    host work: Adam's step counter, a host tensor unless capturable (it is capturable under ``graph``)."""
    from test_ppo import RecordHostReads, host_only, strict_epochs

    tolist, lists = torch.Tensor.tolist, []
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: lists.append(1) or tolist(t))
    ppo = make_ppo(cfg_for(COPY, core=core, normalize_obs=True, norm_reward=True, capture_rollout="static",
                           capture_update="static"))
    ppo.update(ppo.collect())  # buffers, copies and optimiser state allocated
    lists.clear()
    with RecordHostReads(ppo.device) as rec:
        r = ppo.collect()
    assert rec.bad == [] and lists == []
    records = strict_epochs(ppo, lambda: RecordHostReads(ppo.device))
    monkeypatch.setattr(ppo.optimizer, "step", host_only(ppo.optimizer.step, records))
    ppo.update(r)
    assert len(records) == 1 and records[0].bad == [] and lists == []


@pytest.mark.parametrize("name", ["lstm", "gru", "dnc", "ntm"])
def test_unroll_sync_free_equals_unroll_and_reads_nothing_back(name, monkeypatch):
    """Core.unroll_sync_free (what a captured update runs) gives unroll's values and gradients with resets inside
    the sequence and runs no op that makes the host wait; lstm's, gru's and dnc's own unroll does read the flags."""
    from test_ppo import RecordHostReads

    tolist, lists = torch.Tensor.tolist, []

    def recorded(t):  # .tolist() reads device values without an aten op the recorder sees
        lists.append(1)
        return tolist(t)

    monkeypatch.setattr(torch.Tensor, "tolist", recorded)
    torch.manual_seed(0)
    core = memory_cores.make_core(name, 5, **({"hidden_size": 8} | MEM_KW.get(name, {})))
    xs, resets = torch.randn(7, 3, 5, requires_grad=True), torch.rand(7, 3) < 0.3
    resets[3, 1] = True
    outs = {}
    for how in ("unroll", "unroll_sync_free"):
        s0 = core.initial_state(3)  # (a learned initial state: its own graph per unroll)
        lists.clear()
        with RecordHostReads(torch.device("cpu")) as rec:
            ys, s1 = getattr(core, how)(xs, s0, resets)
        rec.bad += ["tolist"] * len(lists)
        loss = ys.square().sum() + sum(t.sum() for t in _tensors(s1) if t.is_floating_point())
        grads = torch.autograd.grad(loss, [xs, *core.parameters()])
        outs[how] = (rec.bad, [ys, *_tensors(s1)], grads)
    assert outs["unroll_sync_free"][0] == []
    assert (outs["unroll"][0] != []) == (name != "ntm")  # the recorder sees the fused paths' host reads
    exact = name in ("dnc", "ntm")  # the same fused unroll / the same loop; lstm, gru: loop against cuDNN/MKL
    for a, b in zip(outs["unroll"][1] + list(outs["unroll"][2]), outs["unroll_sync_free"][1] +
                    list(outs["unroll_sync_free"][2])):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("core", ["lstm", "ntm", "dnc", "rl_access"])
def test_cuda_graph_update_equals_the_static_one_syncs_nothing_and_anneals(core):
    """On CUDA the graphed update (capturable Adam, learning rate in a device tensor) leaves the fixed-buffer
    update's parameters (up to Adam's capturable rounding); its replays read nothing back to the host; a learning
    rate of 0 (the end of the annealing) reaches the graph and leaves the parameters as they were."""
    cfg = cfg_for(MINIGRID, device="cuda", core=core, num_envs=64, num_steps=32, seq_len=16, num_minibatches=4)
    static, graphed = make_ppo(replace(cfg, capture_update="static"), "cuda"), \
        make_ppo(replace(cfg, capture_update="graph"), "cuda")
    graphed.policy.load_state_dict(static.policy.state_dict())
    for it in range(3):
        r = static.collect()
        torch.manual_seed(it)
        static.update(r)
        graphed.set_learning_rate()  # what update() does around its epochs
        data = graphed._fixed_data(graphed.sequences(r))
        torch.manual_seed(it)
        torch.cuda.synchronize()
        if it > 0:
            torch.cuda.set_sync_debug_mode("error")
        try:
            graphed._epochs(data)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        graphed.update_count += 1
        assert graphed._update_graph is not None or it == 0
        for p, q in zip(static.policy.parameters(), graphed.policy.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    graphed.update_count = graphed.cfg.num_updates  # annealed to 0
    before = [p.detach().clone() for p in graphed.policy.parameters()]
    graphed.update(static.collect())
    assert all(torch.equal(a, b) for a, b in zip(before, graphed.policy.parameters()))
