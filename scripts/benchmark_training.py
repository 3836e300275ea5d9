#!/usr/bin/env python3
"""Training throughput: the project's recurrent PPO against sb3-contrib's RecurrentPPO, side by side.

    python3 scripts/benchmark_training.py                                  # every entry, 30 s each, 1 thread
    python3 scripts/benchmark_training.py --seconds 10 --entries tmaze:lstm tmaze:sb3-lstm
    python3 scripts/benchmark_training.py --threads 2 --json runs/bench_training.json
    python3 scripts/benchmark_training.py --no-sb3 --entries tmaze:lstm tmaze:ntm --autocast fp32 bf16   # + ratio
    python3 scripts/benchmark_training.py --no-sb3 --device cuda --capture-rollout off graph --num-envs 4096
    python3 scripts/benchmark_training.py --no-sb3 --device cuda --capture-rollout graph --capture-update off graph

Throughput is training steps per second: environment steps of complete PPO iterations (rollout + update, GAE
included) divided by the time they took. Each entry first runs ``--warmup-updates`` iterations untimed, then
whole iterations until ``--seconds`` have passed (at least one); the clock is read between iterations only. Two
rates are printed: by the wall clock and by this process's CPU time (on a shared machine the wall-clock rate drops
with the other processes' load; with one torch thread the CPU-time rate is what an idle core would give).

Entries (``task:agent``):

* ``tmaze:*``: the T-maze (length 10, the training preset's keywords). Ours on the batched env
  (``MemoryCores/TMaze-v0``, ``vector_entry_point``); RecurrentPPO on the single Gymnasium env in a
  ``DummyVecEnv`` of ``Monitor``-wrapped envs (what ``make_vec_env`` builds).
* ``minigrid:*``: MiniGrid-MemoryS7 (7x7 grid, 7x7 view, flat uint8 image of 147 values). Ours on the batched port
  ``MemoryCores/MiniGridMemory-v0``; RecurrentPPO on MiniGrid's own ``MiniGrid-MemoryS7-v0`` behind
  ``envs.minigrid_wrappers.FlatImageObs`` (``MemoryCores/MiniGridMemoryWrapped-v0``), in a ``DummyVecEnv``.
* ``minigrid-sync:*``: the unbatched path. ``env`` is the raw env's own stepping speed (one
  ``MiniGrid-MemoryS7-v0``, random actions drawn before timing, resets included); ``env-sync`` the same flat env
  stepped through Gymnasium's ``SyncVectorEnv`` with random actions; ``lstm`` our PPO training through that
  ``SyncVectorEnv`` (``agents.env_adapter.TorchVecEnv``, numpy converted to torch once per step).

Agents: ``lstm``, ``ntm``, ``dnc``, ``ntm-triton`` and ``dnc-triton`` (the core with ``kernel="triton"``: its memory
access as one Triton kernel forward and one backward; CUDA only, skipped with a message elsewhere); on ``tmaze`` and
``minigrid`` also any other core of ``memory_cores.CORES`` by name (``tmaze:alstm``, ``tmaze:rl_access-triton``: the
``-triton`` suffix for the cores of ``memory_cores.KERNEL_CORES``) (ours:
``agents.policy.ActorCritic`` trained by ``agents.ppo.PPO``, exactly
the loop of ``agents.runner.train`` without its logging and checkpoints), ``sb3-lstm`` and ``sb3-defaults``
(sb3-contrib ``RecurrentPPO``). Same network for ``lstm`` and ``sb3-lstm``: Linear(obs, 128) + ReLU encoder, one
LSTM of 128 units shared by actor and critic (SB3: ``shared_lstm=True, enable_critic_lstm=False``), linear policy
and value heads (SB3: ``net_arch=[]``), Adam. Same PPO settings per task: ``n_envs``, ``n_steps``, 4 epochs, 4
minibatches (SB3 ``batch_size = n_envs * n_steps / 4`` steps). Differences that remain: SB3 samples minibatches
of padded episode chunks, ours of fixed-length sequences re-run from the stored state; where an episode starts
inside a sequence SB3 steps its LSTM one step at a time in the update, ours fuses it (``segmented_unroll``).
``sb3-defaults`` is ``RecurrentPPO("MlpLstmPolicy", env, policy_kwargs=dict(lstm_hidden_size=128))`` on one env:
SB3's defaults (n_steps 128, batch_size 128, 10 epochs, separate critic LSTM, 64-64 MLPs); ``--num-envs`` and
``--num-steps`` do not change it. NTM and DNC use the cores' default sizes
(NTM 128 x 20 memory, 1 read and 1 write head; DNC 64 x 32, 4 read heads) with a 128-unit LSTM controller.

``--autocast fp32 bf16`` times each of our entries twice in the same process, eager fp32 and with ``TrainConfig.
autocast = "bf16"`` (the rollout's forward passes and the update's loss under ``torch.autocast(bfloat16)``, memory
math, backward and optimiser step in fp32), and prints the bf16 / fp32 ratio of the rates per entry.
``--capture-rollout off graph`` (or ``static``) likewise times the plain rollout beside ``TrainConfig.
capture_rollout`` (the rollout step in fixed buffers, replayed as one CUDA graph per step with ``graph``, CUDA
only; the warm-up iteration includes the capture) and prints the ratios; the update is the same in both.
``--capture-update off graph`` (or ``static``) does the same for ``TrainConfig.capture_update`` (each minibatch
step of the update replayed as one CUDA graph). Both lists given: every combination is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# ---------------------------------------------------------------------------------------------- task settings
TMAZE_KWARGS = {"length": 10}
"""T-maze keywords (merged with the training preset's: ``wrong_arm_reward=0``, ``max_steps=max(4 (L+1), L^2)``)."""
MINIGRID_WRAPPED = {"env_id": "MiniGrid-MemoryS7-v0", "view_size": 7}
"""``MemoryCores/MiniGridMemoryWrapped-v0`` keywords: MiniGrid's MemoryS7 with its default 7x7 view, flat."""

# task -> (num_envs, num_steps, seq_len): the PPO shape shared by every agent of the task
TASK_SHAPES: dict[str, tuple[int, int, int]] = {
    "tmaze": (32, 256, 256),  # the T-maze training preset (agents/presets.py)
    "minigrid": (64, 128, 64),  # the MiniGridMemory preset
    "minigrid-sync": (16, 128, 64),  # the MiniGrid-Memory* preset (SyncVectorEnv)
}

ENTRIES: tuple[str, ...] = (
    "tmaze:lstm", "tmaze:sb3-lstm", "tmaze:sb3-defaults", "tmaze:ntm", "tmaze:ntm-triton", "tmaze:dnc",
    "tmaze:dnc-triton", "minigrid:lstm", "minigrid:sb3-lstm", "minigrid:sb3-defaults", "minigrid:ntm",
    "minigrid:ntm-triton", "minigrid:dnc", "minigrid:dnc-triton",
    "minigrid-sync:env", "minigrid-sync:env-sync", "minigrid-sync:lstm",
)


@dataclass
class Result:
    """One timed entry: ``steps`` env steps in ``wall`` seconds (``cpu`` seconds of process CPU time)."""

    entry: str
    env: str
    num_envs: int
    num_steps: int
    steps: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    update_wall: float = 0.0
    iterations: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sps(self) -> float:
        return self.steps / self.wall if self.wall > 0 else float("nan")

    @property
    def sps_cpu(self) -> float:
        return self.steps / self.cpu if self.cpu > 0 else float("nan")


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


# ================================================================================================= our PPO
AUTOCAST_MODES = ("fp32", "bf16")
CAPTURE_MODES = ("off", "static", "graph")
"""``--capture-rollout`` / ``--capture-update``: the plain rollout / update, or ``TrainConfig.capture_rollout`` /
``capture_update`` = static / graph."""
"""``--autocast``: our PPO in float32, or with ``TrainConfig.autocast = "bf16"``."""
COMPILE_MODES = ("none", "act", "update", "both")
"""``--compile``: which of our PPO's functions ``torch.compile`` wraps: the rollout step
(``ActorCritic.get_action_and_value``), the update's sequence evaluation (``ActorCritic.evaluate_sequence``), both."""


def bench_ours(entry: str, core: str, env_id: str, env_kwargs: dict, shape: tuple[int, int, int], seconds: float,
               warmup: int, device: str, seed: int, compile_mode: str = "none", autocast: str = "fp32",
               capture: str = "off", capture_update: str = "off") -> Result:
    """Our recurrent PPO (``agents.ppo.PPO``) on ``env_id``: whole collect + update iterations for ``seconds``
    (``autocast``: ``fp32`` or ``bf16``, :attr:`agents.ppo.TrainConfig.autocast`; ``capture``: ``off``,
    ``static`` or ``graph``, :attr:`agents.ppo.TrainConfig.capture_rollout`; ``capture_update`` likewise,
    :attr:`agents.ppo.TrainConfig.capture_update`)."""
    from agents.env_adapter import TorchVecEnv
    from agents.ppo import PPO, TrainConfig, resolve_device
    from agents.presets import env_kwargs_for
    from agents.runner import build_policy

    B, T, L = shape
    core_kwargs = {}
    if core.endswith("-triton"):  # ntm-triton, dnc-triton, ...: the core with its Triton kernels
        core, core_kwargs = core.removesuffix("-triton"), {"kernel": "triton"}
    cfg = TrainConfig(env=env_id, core=core, core_kwargs=json.dumps(core_kwargs), num_envs=B, num_steps=T,
                      seq_len=L, num_minibatches=4, update_epochs=4, total_steps=10**9, hidden_size=128, embed_size=128, seed=seed, progress=False,
                      tensorboard=False, torch_threads=torch.get_num_threads(),
                      autocast="" if autocast == "fp32" else autocast,
                      capture_rollout="" if capture == "off" else capture,
                      capture_update="" if capture_update == "off" else capture_update)
    cfg = replace(cfg, env_kwargs=json.dumps(env_kwargs_for(env_id, env_kwargs)))
    cfg.validate()
    dev = resolve_device(device)
    torch.manual_seed(seed)
    venv = TorchVecEnv(env_id, B, dev, cfg.env_kwargs_dict())
    policy = build_policy(cfg, venv.single_observation_space, venv.single_action_space).to(dev)
    ppo = PPO(policy, venv, cfg, seed=seed)
    if compile_mode in ("act", "both"):
        policy.get_action_and_value = torch.compile(policy.get_action_and_value, dynamic=False)
    if compile_mode in ("update", "both"):
        policy.evaluate_sequence = torch.compile(policy.evaluate_sequence, dynamic=False)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def iteration() -> float:
        rollout = ppo.collect()
        sync()
        t_up = time.perf_counter()
        metrics = ppo.update(rollout)
        _ = {k: float(v) for k, v in metrics.items()}  # the trainer's one host sync per update
        ppo.stats.pop()
        sync()
        return time.perf_counter() - t_up

    t_warm = time.perf_counter()
    for _ in range(warmup):
        iteration()
    warm = time.perf_counter() - t_warm
    res = Result(entry, f"{env_id} {json.dumps(cfg.env_kwargs_dict())}", B, T, note=f"seq_len {L}")
    tags = []
    if compile_mode != "none":
        tags.append(f"compile {compile_mode}")
        res.note += f", torch.compile: {compile_mode}, {warm:.0f} s warm-up"
    if autocast != "fp32":
        tags.append(f"{autocast} autocast")
        res.note += f", {autocast} autocast"
    if capture != "off":
        tags.append(f"capture {capture}")
        res.note += f", rollout captured: {capture}"
    if capture_update != "off":
        tags.append(f"update {capture_update}")
        res.note += f", update captured: {capture_update}"
    for what, asked, ran in (("rollout", capture, ppo.capture), ("update", capture_update, ppo.capture_update)):
        if asked == "graph" and ran != "graph":  # the capture failed (warned): the fixed-buffer step ran eagerly
            tags.append(f"{what} capture FAILED, ran {ran}")
            res.note += f", {what} capture failed: ran {ran}"
    if tags:
        res.entry = f"{entry} ({', '.join(tags)})"
    res.extra["autocast"], res.extra["compile"], res.extra["base_entry"] = autocast, compile_mode, entry
    res.extra["capture"], res.extra["capture_update"] = capture, capture_update
    n_params = sum(p.numel() for p in policy.parameters())
    res.extra["params"] = n_params
    (w0, c0), steps0 = _clock(), ppo.global_step
    while True:
        res.update_wall += iteration()
        res.iterations += 1
        w, c = _clock()
        if w - w0 >= seconds:
            break
    res.steps, res.wall, res.cpu = ppo.global_step - steps0, w - w0, c - c0
    venv.close()
    return res


# ======================================================================================= sb3-contrib RecurrentPPO
def bench_sb3(entry: str, env_id: str, env_kwargs: dict, shape: tuple[int, int, int], seconds: float, warmup: int,
              seed: int, defaults: bool = False) -> Result:
    """sb3-contrib ``RecurrentPPO`` on the single Gymnasium env ``env_id`` in a ``DummyVecEnv``; whole iterations
    for ``seconds``. Our network (LSTM 128 shared by actor and critic, Linear(obs, 128) + ReLU features, linear
    heads) and PPO shape, or with ``defaults`` RecurrentPPO's defaults (one env, LSTM 128)."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers MemoryCores/*)
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv
    from stable_baselines3.common.preprocessing import get_flattened_obs_dim
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class LinearReLU(BaseFeaturesExtractor):
        """flatten -> Linear(obs, features_dim) -> ReLU: our ``FlatEncoder``."""

        def __init__(self, observation_space, features_dim: int = 128) -> None:
            super().__init__(observation_space, features_dim)
            n_in = get_flattened_obs_dim(observation_space)
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, features_dim), torch.nn.ReLU())

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.net(obs.float())

    class IterationClock(BaseCallback):
        """Clock readings at each rollout start (= after the previous iteration's update); stops the run at the
        first rollout start ``seconds`` after the end of the warm-up."""

        def __init__(self) -> None:
            super().__init__()
            self.marks: list[tuple[float, float, int]] = []
            self.update_wall = 0.0
            self.stop = False

        def _on_rollout_start(self) -> None:
            w, c = _clock()
            if self.marks and hasattr(self, "_rollout_end"):
                if len(self.marks) > warmup:
                    self.update_wall += w - self._rollout_end
            self.marks.append((w, c, self.num_timesteps))
            if len(self.marks) > warmup + 1 and w - self.marks[warmup][0] >= seconds:
                self.stop = True

        def _on_rollout_end(self) -> None:
            self._rollout_end = time.perf_counter()

        def _on_step(self) -> bool:
            return not self.stop

    B, T, _ = shape
    def make_env() -> gym.Env:
        return Monitor(gym.make(env_id, **env_kwargs))

    # what make_vec_env builds (Monitor + DummyVecEnv), without its render_mode="rgb_array" default, which the
    # project's single envs refuse
    if defaults:
        # RecurrentPPO as its README runs it, with a 128-unit LSTM: n_steps 128, batch_size 128, 10 epochs,
        # separate actor and critic LSTMs, 64-64 tanh MLPs after them, flattened observations
        B, T = 1, 128
        vec = DummyVecEnv([make_env])
        vec.seed(seed)
        model = RecurrentPPO("MlpLstmPolicy", vec, seed=seed, device="cpu", verbose=0,
                             policy_kwargs=dict(lstm_hidden_size=128))
        note = "SB3 defaults: batch_size 128, 10 epochs, critic LSTM, 64-64 MLPs"
    else:
        vec = DummyVecEnv([make_env] * B)
        vec.seed(seed)
        model = RecurrentPPO(
            "MlpLstmPolicy", vec, n_steps=T, batch_size=B * T // 4, n_epochs=4, learning_rate=3e-4, gamma=0.99,
            gae_lambda=0.95, ent_coef=0.01, max_grad_norm=0.5, seed=seed, device="cpu", verbose=0,
            policy_kwargs=dict(
                lstm_hidden_size=128, n_lstm_layers=1, shared_lstm=True, enable_critic_lstm=False, net_arch=[],
                features_extractor_class=LinearReLU, features_extractor_kwargs=dict(features_dim=128),
            ),
        )
        note = f"batch_size {B * T // 4}, 4 epochs"
    clock = IterationClock()
    model.learn(total_timesteps=10**9, callback=clock)
    (w0, c0, s0), (w1, c1, s1) = clock.marks[warmup], clock.marks[-1]
    res = Result(entry, f"{env_id} {json.dumps(env_kwargs)} (DummyVecEnv)", B, T, steps=s1 - s0, wall=w1 - w0,
                 cpu=c1 - c0, update_wall=clock.update_wall, iterations=len(clock.marks) - 1 - warmup,
                 note=note)
    res.extra["params"] = sum(p.numel() for p in model.policy.parameters())
    vec.close()
    return res


# ====================================================================================================== raw env
def bench_env(entry: str, env_id: str, env_kwargs: dict, num_envs: int, seconds: float, sync: bool,
              seed: int) -> Result:
    """Random-action stepping speed: one env (``sync=False``, resets included) or ``num_envs`` in a
    ``SyncVectorEnv`` (autoreset). Actions come from a pool drawn before timing."""
    import gymnasium as gym

    import envs  # noqa: F401
    import minigrid  # noqa: F401

    rng = np.random.default_rng(seed)
    if sync:
        env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", **env_kwargs)
        n_act = int(env.single_action_space.n)
        pool = [rng.integers(0, n_act, num_envs) for _ in range(64)]
        env.reset(seed=seed)
        step = lambda a: env.step(a)  # noqa: E731
    else:
        env = gym.make(env_id, **env_kwargs)
        n_act = int(env.action_space.n)
        pool = [int(a) for a in rng.integers(0, n_act, 1024)]
        env.reset(seed=seed)

        def step(a: int) -> None:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
    n = num_envs if sync else 1
    for i in range(20):
        step(pool[i % len(pool)])
    (w0, c0), calls = _clock(), 0
    while True:
        for _ in range(64):
            step(pool[calls % len(pool)])
            calls += 1
        w, c = _clock()
        if w - w0 >= seconds:
            break
    env.close()
    what = f"SyncVectorEnv x {num_envs}" if sync else "single env"
    return Result(entry, f"{env_id} {json.dumps(env_kwargs)} ({what}, random actions)", n, 0, steps=calls * n,
                  wall=w - w0, cpu=c - c0)


# ======================================================================================================= driver
def run_entry(entry: str, args: argparse.Namespace, compile_mode: str = "none", autocast: str = "fp32",
              capture: str = "off", capture_update: str = "off") -> Result:
    task, agent = entry.split(":")
    B, T, L = TASK_SHAPES[task]
    B = args.num_envs or B
    T = args.num_steps or T
    L = min(L, T)
    shape = (B, T, L)
    kw = dict(seconds=args.seconds, seed=args.seed)
    ours = dict(capture=capture, capture_update=capture_update)
    sb3 = agent.startswith("sb3")
    if sb3:
        kw["defaults"] = agent == "sb3-defaults"
    if task == "tmaze":
        if sb3:
            from agents.presets import env_kwargs_for

            return bench_sb3(entry, "MemoryCores/TMaze-v0", env_kwargs_for("MemoryCores/TMaze-v0", TMAZE_KWARGS),
                             shape, warmup=args.warmup_updates, **kw)
        return bench_ours(entry, agent, "MemoryCores/TMaze-v0", TMAZE_KWARGS, shape, warmup=args.warmup_updates,
                          device=args.device, compile_mode=compile_mode, autocast=autocast, **ours, **kw)
    if task == "minigrid":
        if sb3:
            return bench_sb3(entry, "MemoryCores/MiniGridMemoryWrapped-v0", MINIGRID_WRAPPED, shape,
                             warmup=args.warmup_updates, **kw)
        return bench_ours(entry, agent, "MemoryCores/MiniGridMemory-v0", {"size": 7, "view_size": 7}, shape,
                          warmup=args.warmup_updates, device=args.device, compile_mode=compile_mode,
                          autocast=autocast, **ours, **kw)
    # minigrid-sync
    if agent == "env":
        return bench_env(entry, "MiniGrid-MemoryS7-v0", {}, 1, sync=False, **kw)
    if agent == "env-sync":
        return bench_env(entry, "MemoryCores/MiniGridMemoryWrapped-v0", MINIGRID_WRAPPED, B, sync=True, **kw)
    return bench_ours(entry, agent, "MemoryCores/MiniGridMemoryWrapped-v0", MINIGRID_WRAPPED, shape,
                      warmup=args.warmup_updates, device=args.device, compile_mode=compile_mode, autocast=autocast,
                      **ours, **kw)


def print_table(results: list[Result]) -> list[str]:
    """Print (and return) a Markdown table. Ratios use the CPU-time rates (the wall-clock ones drop with the
    machine's load): to ``sb3-lstm`` and ``sb3-defaults`` of the same task, and for ``minigrid-sync`` to the raw
    env's own stepping speed."""
    by = {r.entry: r for r in results}
    lines = [
        "| entry | parameters | envs x steps | iterations | steps/s (wall) | steps/s (CPU time) | update share | "
        "x sb3 same settings | x sb3 defaults | x raw env |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(r: Result, ref_entry: str) -> str:
        ref = by.get(ref_entry)
        return f"{r.sps_cpu / ref.sps_cpu:.1f}" if ref is not None and ref is not r else ""

    for r in results:
        task, agent = r.entry.split(":")
        own = agent.startswith("sb3")
        r_same = ratio(r, f"{task}:sb3-lstm") if task != "minigrid-sync" and not own else ""
        r_def = ratio(r, f"{task}:sb3-defaults") if task != "minigrid-sync" and agent != "sb3-defaults" else ""
        r_env = ratio(r, "minigrid-sync:env") if task == "minigrid-sync" else ""
        shape = f"{r.num_envs} x {r.num_steps}" if r.num_steps else f"{r.num_envs} (env only)"
        share = f"{r.update_wall / r.wall:.0%}" if r.num_steps and r.wall > 0 else ""
        iters = str(r.iterations) if r.num_steps else ""
        params = f"{r.extra['params']:,}" if "params" in r.extra else ""
        lines.append(f"| {r.entry} | {params} | {shape} | {iters} | {r.sps:,.0f} | {r.sps_cpu:,.0f} | {share} | "
                     f"{r_same} | {r_def} | {r_env} |")
    print("\n".join(lines), flush=True)
    return lines


MODE_FIELDS = ("compile", "autocast", "capture", "capture_update")
"""The settings an entry of ours is timed under, side by side (``--compile``, ``--autocast``, ``--capture-rollout``,
``--capture-update``)."""


def ratio_table(results: list[Result], field: str, base: str, title: str) -> list[str]:
    """A Markdown table (lines) of each of our runs whose ``field`` (one of :data:`MODE_FIELDS`) is not
    ``base`` against the run of the same entry and other settings with ``base``: both rates and their ratio, by the
    CPU time and by the wall clock. Nothing when no such pair was timed."""

    def key(r: Result, value: str) -> tuple:
        return (r.extra.get("base_entry"),) + tuple(value if f == field else r.extra.get(f) for f in MODE_FIELDS)

    runs = {key(r, r.extra.get(field)): r for r in results}
    lines = [
        f"{title} (torch threads {torch.get_num_threads()}; > 1: faster than {base}):",
        "",
        f"| entry | {base} steps/s (CPU time) | steps/s (CPU time) | ratio (CPU time) | {base} steps/s (wall) | "
        "steps/s (wall) | ratio (wall) |",
        "|---|---|---|---|---|---|---|",
    ]
    n = 0
    for r in results:
        ref = runs.get(key(r, base))
        if field not in r.extra or r.extra[field] == base or ref is None:
            continue
        lines.append(f"| {r.entry} | {ref.sps_cpu:,.0f} | {r.sps_cpu:,.0f} | {r.sps_cpu / ref.sps_cpu:.2f} | "
                     f"{ref.sps:,.0f} | {r.sps:,.0f} | {r.sps / ref.sps:.2f} |")
        n += 1
    return lines if n else []


def valid_entry(entry: str) -> bool:
    """An entry of :data:`ENTRIES`, or ``tmaze:CORE`` / ``minigrid:CORE`` for any core of ``memory_cores.CORES``
    (``CORE-triton`` for those of ``memory_cores.KERNEL_CORES``)."""
    if entry in ENTRIES:
        return True
    from memory_cores import CORES, KERNEL_CORES

    task, _, agent = entry.partition(":")
    core = agent.removesuffix("-triton")
    return task in ("tmaze", "minigrid") and (core in KERNEL_CORES if agent.endswith("-triton") else core in CORES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", nargs="+", default=list(ENTRIES), metavar="TASK:AGENT",
                        help=f"entries to time, in order (default: all): {' '.join(ENTRIES)}; on tmaze and minigrid "
                             "also any core by name (tmaze:gru, tmaze:alstm-triton, ...)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="timed seconds per entry after the warm-up; whole iterations, at least one (default 30)")
    parser.add_argument("--warmup-updates", type=int, default=1,
                        help="untimed PPO iterations (rollout + update) before timing (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--num-envs", type=int, default=0, help="override every task's number of envs (0: per task)")
    parser.add_argument("--num-steps", type=int, default=0, help="override every task's rollout length (0: per task)")
    parser.add_argument("--device", default="cpu", help="device of our PPO: cpu, cuda or auto (SB3 stays on cpu)")
    parser.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    parser.add_argument("--no-sb3", action="store_true", help="skip the sb3-* entries")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--compile", nargs="+", default=["none"], choices=COMPILE_MODES, metavar="MODE",
                        help="time our agents once per mode, side by side: none (eager), act (torch.compile the "
                             "rollout step), update (the update's sequence evaluation), both (default: none)")
    parser.add_argument("--autocast", nargs="+", default=["fp32"], choices=AUTOCAST_MODES, metavar="PRECISION",
                        help="time our agents once per precision, side by side, and print the bf16 / fp32 ratio: "
                             "fp32, bf16 (TrainConfig.autocast: forward passes under torch.autocast(bfloat16)) "
                             "(default: fp32)")
    parser.add_argument("--capture-rollout", nargs="+", default=["off"], choices=CAPTURE_MODES, metavar="MODE",
                        help="time our agents once per mode, side by side, and print the ratios to off: off (the "
                             "plain rollout), static (TrainConfig.capture_rollout: the rollout step in fixed "
                             "buffers), graph (the same step replayed as one CUDA graph; CUDA only) (default: off)")
    parser.add_argument("--capture-update", nargs="+", default=["off"], choices=CAPTURE_MODES, metavar="MODE",
                        help="likewise for the update's minibatch steps (TrainConfig.capture_update): off, static, "
                             "graph (default: off)")
    args = parser.parse_args(argv)

    bad = [e for e in args.entries if not valid_entry(e)]
    if bad:
        parser.error(f"--entries {' '.join(bad)} not valid: expected some of {' '.join(ENTRIES)}, or tmaze:CORE / "
                     "minigrid:CORE for a core of memory_cores.CORES (CORE-triton for memory_cores.KERNEL_CORES)")
    for name in ("threads", "warmup_updates"):
        if getattr(args, name) < (1 if name == "threads" else 0):
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is not valid: expected >= "
                         f"{1 if name == 'threads' else 0}")
    if not args.seconds > 0:
        parser.error(f"--seconds {args.seconds} is not valid: expected a positive number")
    torch.set_num_threads(args.threads)
    entries = list(args.entries)
    is_sb3 = lambda e: ":sb3" in e  # noqa: E731
    needs_minigrid = lambda e: e.startswith("minigrid-sync") or e.startswith("minigrid:sb3")  # noqa: E731
    if any(map(is_sb3, entries)) and not args.no_sb3:
        try:
            import sb3_contrib  # noqa: F401
        except ImportError:
            print("sb3_contrib is not installed: skipping the sb3-* entries (pip install sb3-contrib)")
            args.no_sb3 = True
    if args.no_sb3:
        entries = [e for e in entries if not is_sb3(e)]
    if any(map(needs_minigrid, entries)):
        try:
            import minigrid  # noqa: F401
        except ImportError:
            print("minigrid is not installed: skipping the entries that need it (pip install minigrid)")
            entries = [e for e in entries if not needs_minigrid(e)]
    if any(e.endswith("-triton") for e in entries):
        from memory_cores.triton_common import available

        why = available(args.device)
        if why:
            print(f"skipping the *-triton entries: {why}")
            entries = [e for e in entries if not e.endswith("-triton")]

    versions = f"torch {torch.__version__}"
    try:
        import sb3_contrib
        import stable_baselines3

        versions += f", stable-baselines3 {stable_baselines3.__version__}, sb3-contrib {sb3_contrib.__version__}"
    except ImportError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# benchmark_training: torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), device {args.device}, {args.seconds:g} s per entry after "
          f"{args.warmup_updates} warm-up iteration(s), seed {args.seed}; {versions}; load average {load:.2f} at start",
          flush=True)
    results = []
    theirs = lambda e: is_sb3(e) or e.endswith(":env") or e.endswith(":env-sync")  # noqa: E731
    runs = [(e, m, a, c, u) for e in entries for m in (["none"] if theirs(e) else args.compile)
            for a in (["fp32"] if theirs(e) else args.autocast)
            for c in (["off"] if theirs(e) else args.capture_rollout)
            for u in (["off"] if theirs(e) else args.capture_update)]
    for e, m, a, c, u in runs:
        t0 = time.perf_counter()
        r = run_entry(e, args, m, a, c, u)
        results.append(r)
        e = r.entry
        print(f"{e:>24}: {r.sps:10,.0f} steps/s wall, {r.sps_cpu:10,.0f} steps/s CPU time ({r.steps} steps, "
              f"{r.iterations} iterations, {time.perf_counter() - t0:.0f} s with warm-up) {r.env}", flush=True)
    print()
    lines = print_table(results)
    for what, base, title in (("autocast", "fp32", "bf16 autocast against fp32"),
                              ("capture", "off", "Captured rollout against the plain one"),
                              ("capture_update", "off", "Captured update against the plain one")):
        extra = ratio_table(results, what, base, title)
        if extra:
            print("\n" + "\n".join(extra), flush=True)
            lines += [""] + extra
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), versions=versions, load_average_start=load,
                           load_average_end=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                           results=[dict(r.__dict__, sps=r.sps, sps_cpu=r.sps_cpu) for r in results],
                           table=lines), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
