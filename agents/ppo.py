"""Recurrent PPO with rollouts on the device, for any memory core.

Read top to bottom, like CleanRL's ``ppo_atari_lstm.py``:

1. :class:`TrainConfig`: every option; its field docstrings are the ``--help`` of ``scripts/train.py``.
2. :func:`compute_gae`: generalised advantage estimation that bootstraps truncated episodes from the value of
   their last observation and cuts terminated ones.
3. :class:`Rollout`: the buffer, time-major ``[T, B, ...]``, with the done flag stored with the observation it
   precedes (``starts[t]`` is True when ``obs[t]`` begins an episode) and the core state at the start of every
   training sequence (``t = 0, L, 2L, ...``).
4. :class:`PPO`: ``collect()`` steps the policy and the envs ``T`` times with no host synchronisation (on CUDA) and
   ``update()`` runs epochs over minibatches of whole sequences of length ``L``: the core is re-run from the stored
   state with the stored reset flags (resets inside a sequence go through the core's reset mask, sequences are not
   cut), the stored actions and core choices are re-scored, and the clipped surrogate, value loss and entropy
   bonus are minimised with gradient-norm clipping (:meth:`PPO.loss`). For cores with discrete choices
   (``rl_access``) a step's decision is the pair (action, access choice): one ratio of the pair's probabilities is
   clipped, as in the Stable-Baselines3 adapter, and the critic, which reads only what precedes the choice, is its
   baseline.
"""

from __future__ import annotations

import contextlib
import copy

import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

import tyro

from memory_cores import stack_states, tree_map

from . import distributed
from .distributed import Dist
from .env_adapter import EpisodeStats, TorchVecEnv
from .policy import ActorCritic, AgentState, obs_map, tree_map_any


class NonFiniteLossError(RuntimeError):
    """The PPO loss became NaN or inf; training stops before the bad gradient step."""


# ============================================================================================================ config
EVAL_METRICS = {"success_rate": "success_rate", "ep_rew_mean": "mean_return", "ep_len_mean": "mean_length"}
"""Episode statistics of the rollout (metrics.jsonl) and their names in an evaluation (``evaluate_policy``)."""

_STOP_AT = re.compile(r"^\s*([A-Za-z_]\w*)\s*(>=|<=)\s*(\S+)\s*$")


@dataclass(frozen=True)
class StopTarget:
    """A ``--stop-at`` target, ``metric op value`` (``op``: ``">="`` or ``"<="``), on a row of metrics.jsonl."""

    metric: str
    op: str
    value: float

    def reached(self, row: dict) -> bool:
        """Whether ``row`` (one update's metrics) reaches the target; False while the metric is absent (episode
        statistics appear once the first episodes end) or not finite."""
        v = row.get(self.metric)
        if v is None or not math.isfinite(v):
            return False
        return v >= self.value if self.op == ">=" else v <= self.value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass
class TrainConfig:
    """Recurrent PPO on a memory task with any memory core."""

    env: str = "MemoryCores/TMaze-v0"
    """Gymnasium env id: a project task (MemoryCores/...), a MiniGrid id or any id with supported spaces."""
    env_kwargs: str = "{}"
    """JSON object of keyword arguments for the env, e.g. '{"length": 50}' (merged over the task's defaults)."""
    env_factory: str = ""
    """module:function that builds one env (a gymnasium.Env, wrappers included), called with the --env-kwargs as
    keywords; N copies are run in a SyncVectorEnv. Used instead of making --env (which then only names the run).
    Stored in the checkpoint, so evaluate.py and --resume rebuild the same env."""
    core: str = "lstm"
    """Memory core: a name in memory_cores.CORES (lstm, gru, alstm, ntm, dnc, rl_access, ...) or 'none' for the
    feed-forward baseline."""
    hidden_size: int = 128
    """Core hidden size (controller units); width of the feed-forward layer for core 'none'."""
    core_kwargs: str = "{}"
    """JSON object of further core keywords, e.g. '{"num_slots": 32, "slot_size": 16}'."""
    compile_core: str = ""
    """Run the core's step through torch.compile (memory_cores.Core.compile_step): 'default' (fused kernels),
    'reduce-overhead' (also CUDA graphs on a GPU) or 'max-autotune'; '' keeps it eager. For cores that step in a
    Python loop (ntm, rl_access, ...), where kernel launches dominate (GPUs); on this CPU the NTM gains 1.17x
    (scripts/benchmark_cores.py --compile-step default). Compiling takes up to a minute at the start of a run. Same
    values up to rounding."""
    autocast: str = ""
    """Mixed precision: 'bf16' runs the policy's forward passes of the rollout and the update's loss under
    torch.autocast(bfloat16), so the controllers, encoders and heads compute in bf16 while the memory cores keep
    their memory math (addressing, erase/add, links) in fp32; the backward pass, the optimiser step, GAE and every
    stored rollout buffer (core states included) stay fp32. The default '' keeps everything fp32. For GPUs with
    bf16 tensor cores; on this CPU training runs at 0.9x (scripts/benchmark_training.py --autocast fp32 bf16). Not
    with memory-efficient BPTT (--bptt-memory-slots), whose recomputation runs outside autocast."""
    capture_rollout: str = ""
    """'graph' replays each rollout step (policy forward, sampling, env step with autoreset, buffer writes, episode
    and normalisation statistics) as one CUDA graph: one launch per step instead of hundreds, for GPUs, where an
    eager step costs 0.3 to 1 ms of launches whatever the batch (docs/gpu.md). 'static' runs the same fixed-buffer
    step eagerly on any device (what 'graph' records; for checking and debugging). '' (default): the plain step
    loop. Both give the plain rollout's values (bit for bit in fp32; with --autocast bf16 the core state is carried
    in fp32 between steps). Needs a batched tensor env of this package (MemoryCores/...) and one process (not
    under torchrun); the final-observation value of truncated episodes is computed every step, as on any
    accelerator. The first two steps of a run are eager (warm-up), the third is captured; a capture that fails
    warns and the run goes on with the 'static' step."""
    capture_update: str = ""
    """'graph' replays each minibatch step of the update (the loss over the minibatch's sequences, backward,
    gradient clipping, the Adam step) as one CUDA graph, for GPUs, where the memory cores' update is hundreds of
    launch-bound kernels per sequence step; Adam then runs with capturable=True and its learning rate in a device
    tensor. 'static' runs the same fixed-buffer step eagerly on any device. '' (default): the plain update. The
    minibatch is gathered by a device index from fixed copies of the rollout's sequences, and the cores run
    Core.unroll_sync_free (no host read): lstm and gru their step loop instead of their fused cuDNN/MKL unroll
    (same values up to rounding; on this CPU 0.35x), the others the plain update's values bit for bit. The first
    two minibatch steps of a run are eager (warm-up), the third is captured; a capture that fails warns and the run
    goes on with the 'static' step. One process only; not with memory-efficient BPTT."""
    embed_size: int = 128
    """Width of the observation encoder's output (the core's input)."""
    shared_core: bool = True
    """Actor and critic share encoder and core (False: the critic has its own)."""
    chrono_init: int = 0
    """Chrono-initialise the LSTM gate biases inside the core for memory time scales up to this many steps (0: torch's
    default init, which forgets about half per step)."""
    head_hidden: int = 0
    """Width of a hidden layer (Linear -> --head-activation) before the policy and the value head (0: linear heads on the core
    output). Lets the heads combine the remembered with the currently seen non-linearly."""
    obs_skip: bool = False
    """The heads also see the encoder output beside the core output (the current observation directly)."""
    head_activation: Literal["tanh", "relu"] = "tanh"
    """Non-linearity of the --head-hidden layers: tanh or relu (relu picks up products of two inputs, e.g. remembered
    cue x object in view, faster from a small initialisation)."""
    normalize_obs: bool = False
    """Normalise float Box observations by running mean/std (stored normalised, so the update sees the same)."""

    preset: str = ""
    """Where the defaults came from (read by scripts/train.py before the other options): '' the task's preset
    (agents/presets.py), 'gpu' the task's preset at GPU batch sizes: num_envs and num_minibatches x16, so each
    minibatch holds as many sequences and a run makes as many gradient steps per env step as with the CPU preset
    (the learning per env step is unchanged; measured on the T-maze of length 50: 512 envs x 64 minibatches solved
    it in 3 of 3 seeds, 8 minibatches in none, docs/gpu.md). Options given on the command line win."""
    num_envs: int = 64
    """Number of parallel environments B of each process (under torchrun each of the K processes steps its own B
    envs, so an update holds K * B * num_steps steps; see docs/distributed.md)."""
    num_steps: int = 128
    """Rollout length T per environment and update."""
    seq_len: int = 128
    """Truncated-BPTT length L of a training sequence (must divide num_steps); the core state at each sequence
    start is stored in the rollout."""
    bptt_memory_slots: int = 0
    """Memory-efficient BPTT (Gruslys et al. 2016) in the update: with 0 < slots < seq_len the core's backward keeps
    at most this many core states and recomputes the rest by the paper's dynamic programme (same gradients, less
    memory, more time); 0: plain BPTT. For long sequences of cores with large states (ntm, dnc). Not for cores
    with discrete choices (rl_access)."""
    bptt_storage: str = "hidden"
    """With --bptt-memory-slots: what the dynamic programme may store: hidden states (BPTT-HSM), internal states
    of steps (BPTT-ISM: a step's activations, so it is not recomputed; each takes as many slots as its size in
    hidden states, measured) or the cheaper of both at every split (mixed, BPTT-MSM). One of hidden, internal,
    mixed."""
    bptt_segment_steps: int = 1
    """With --bptt-memory-slots: the longest stretch of steps recomputed in one run in the backward pass (its
    activations are held at once); 1 is the paper's step-by-step recomputation, a few tens lets fused unrolls
    (lstm, gru) run whole stretches at far less time for a little more memory (docs/bptt.md)."""
    total_steps: int = 1_000_000
    """Total environment steps (all envs of all processes together), rounded down to whole updates of
    processes * num_envs * num_steps (said when it happens)."""
    time_budget: float = 0.0
    """Wall-clock budget in seconds (0: none). Training stops at the first update that ends past it (or at
    --total-steps, whichever comes first) and the learning rate anneals over the elapsed fraction of the budget
    (or of the steps, if that is larger), for time-boxed comparisons: give a large --total-steps to let time
    decide. Seconds of earlier sessions of a resumed run count."""
    stop_at: str = ""
    """Stop early once a target is reached: 'METRIC>=VALUE' or 'METRIC<=VALUE' on a column of metrics.jsonl
    (the rollout's success_rate or ep_rew_mean, or any training metric), held for --stop-patience updates
    in a row (see --stop-min-episodes), e.g. success_rate>=0.95. The run then ends with a checkpoint; the
    summary records the step and training second at which the target was first reached in that streak (time
    to solve). '' (default): train to --total-steps."""
    stop_patience: int = 1
    """With --stop-at: how many updates in a row must reach the target before training stops."""
    stop_min_episodes: int = 32
    """With --stop-at on an episode statistic (success_rate, ep_rew_mean, ep_len_mean): an update has a say
    only if at least this many episodes ended in it, judged on those episodes alone (updates with fewer
    neither count nor break the streak), so a few lucky early episodes cannot stop a run."""
    stop_eval_episodes: int = 0
    """With --stop-at on an episode statistic: once the rollouts have reached the target (--stop-patience
    updates), confirm it on this many evaluation episodes of the policy after that update (the one the
    checkpoint keeps; the first episode of as many fresh envs, sampled actions, seeded); if it falls short,
    training goes on and the streak starts again. The target's step and seconds are then those of the
    confirming update, evaluation included. 0: the rollouts decide (an update can still change the policy
    after the rollouts that reached the target)."""
    learning_rate: float = 3e-4
    """Adam learning rate."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over the run."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: int = 4
    """Minibatches per epoch (each holds whole sequences; must divide num_envs * num_steps / seq_len)."""
    update_epochs: int = 4
    """Epochs over the rollout per update."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    norm_reward: bool = True
    """Scale rewards by the running standard deviation of the discounted return (as Stable-Baselines3's
    VecNormalize(norm_reward=True)), clipped to +-10, so value targets stay near unit scale whatever the env's
    reward scale. Episode statistics stay in the env's units."""
    clip_coef: float = 0.2
    """Surrogate clipping coefficient."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's values."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient of the action distribution."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clipping."""
    target_kl: float | None = None
    """Stop the epochs of an update early when the approximate KL exceeds this (None: never)."""
    choice_coef: float = 1.0
    """Weight of a core's discrete choices (rl_access) in the step's joint PPO log-ratio: 1 clips the ratio of
    pi(action, choice) as one decision (the SB3 adapter's objective), 0 leaves the choices untrained."""
    choice_ent_coef: float = 0.01
    """Entropy bonus coefficient of a core's discrete choices."""

    device: str = "auto"
    """auto (cuda when available), cpu or cuda[:i]."""
    seed: int = 1
    """Seed of torch and of the environments."""
    torch_threads: int = 1
    """torch.set_num_threads for the CPU (1 is best for small models on a shared machine)."""
    run_dir: str = ""
    """Directory for metrics, TensorBoard events and checkpoints (default runs/<env>__<core>__<seed>)."""
    checkpoint_every: int = 20
    """Write a checkpoint every this many updates (and always at the end)."""
    resume: bool = False
    """Continue a killed run from the last checkpoint in --run-dir."""
    init_from: str = ""
    """Start from the policy weights of this checkpoint (file or run directory), e.g. a curriculum: train on a small
    maze, then go on from its weights on a larger one. The network options must match it; env keywords may differ
    (same observation and action spaces). Optimizer, step counts and run directory start fresh."""
    progress: bool = True
    """Show a live progress bar."""
    tensorboard: bool = True
    """Write TensorBoard scalars (SB3-style names) to run_dir."""
    dist_timeout: float = 600.0
    """Under torchrun: seconds a process waits in a collective for another one before the run fails (a process
    that dies is noticed at once; this bounds a hung one)."""
    world_size: tyro.conf.Suppress[int] = 1
    """Processes training this run together (torchrun's WORLD_SIZE); set by the runner, not an option."""

    # ---------------------------------------------------------------------------------------------- helpers
    def stop_target(self) -> StopTarget | None:
        """``--stop-at`` parsed (None when empty); a malformed one is refused in one line."""
        if not self.stop_at:
            return None
        m = _STOP_AT.match(self.stop_at)
        value = None
        if m:
            try:
                value = float(m.group(3))
            except ValueError:
                pass
        if value is None or not math.isfinite(value):
            raise ValueError(f"--stop-at {self.stop_at!r} is not valid: expected METRIC>=VALUE or METRIC<=VALUE with a "
                             f"column of metrics.jsonl and a finite number, e.g. success_rate>=0.95")
        return StopTarget(m.group(1), m.group(2), value)

    def env_kwargs_dict(self) -> dict:
        return _json_obj("env_kwargs", self.env_kwargs)

    def core_kwargs_dict(self) -> dict:
        kw = _json_obj("core_kwargs", self.core_kwargs)
        if self.core.lower() not in ("none", "mlp", "ff", "feedforward", ""):
            kw.setdefault("hidden_size", self.hidden_size)
        else:
            kw = {"hidden_size": self.hidden_size}
        return kw

    @property
    def steps_per_update(self) -> int:
        """Environment steps of one update, all processes together: ``world_size * num_envs * num_steps``."""
        return self.world_size * self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Updates of the run: ``total_steps`` rounded down to whole updates (at least one)."""
        return max(1, self.total_steps // self.steps_per_update)

    def total_steps_rounding(self) -> str | None:
        """One line saying how ``total_steps`` was rounded to whole updates, or None when it is a multiple."""
        per, n = self.steps_per_update, self.num_updates
        if self.total_steps == n * per:
            return None
        way = "up" if n * per > self.total_steps else "down"
        procs = f"{self.world_size} processes * " if self.world_size > 1 else ""
        names = "processes * num_envs * num_steps" if self.world_size > 1 else "num_envs * num_steps"
        return (f"--total-steps {self.total_steps:,} rounded {way} to {n * per:,} ({n:,} update{'s' if n > 1 else ''}):"
                f" training runs whole updates of {names} = {procs}{self.num_envs} * {self.num_steps} = {per:,}"
                " steps")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option, its value and the valid range."""
        positive = ["hidden_size", "embed_size", "num_envs", "num_steps", "seq_len", "total_steps",
                    "num_minibatches", "update_epochs", "checkpoint_every", "torch_threads"]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"--{name.replace('_', '-')} {v!r} is not valid: expected a positive integer")
        v = self.bptt_memory_slots
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"--bptt-memory-slots {v!r} is not valid: expected an integer >= 0 (0: plain BPTT)")
        s = self.bptt_segment_steps
        if not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise ValueError(f"--bptt-segment-steps {s!r} is not valid: expected an integer >= 1 (1: step by step)")
        if self.compile_core not in ("", "default", "reduce-overhead", "max-autotune"):
            raise ValueError(f"--compile-core {self.compile_core!r} is not valid: expected default, reduce-overhead, "
                             "max-autotune or '' (eager)")
        if self.autocast not in ("", "bf16"):
            raise ValueError(f"--autocast {self.autocast!r} is not valid: expected bf16 or '' (fp32)")
        if self.capture_rollout not in ("", "static", "graph"):
            raise ValueError(f"--capture-rollout {self.capture_rollout!r} is not valid: expected graph, static or '' "
                             "(the plain step loop)")
        if self.preset not in ("", "gpu"):
            raise ValueError(f"--preset {self.preset!r} is not valid: expected gpu or '' (the task's preset)")
        if self.capture_update not in ("", "static", "graph"):
            raise ValueError(f"--capture-update {self.capture_update!r} is not valid: expected graph, static or '' "
                             "(the plain update)")
        for name in ("capture_rollout", "capture_update"):
            flag = "--" + name.replace("_", "-")
            if getattr(self, name) and self.world_size > 1:
                raise ValueError(f"{flag} runs in one process only (a run over several processes all-reduces "
                                 "statistics and gradients between its steps); drop it under torchrun")
            if getattr(self, name) == "graph" and self.compile_core == "reduce-overhead":
                raise ValueError(f"{flag} graph and --compile-core reduce-overhead both make CUDA graphs and cannot "
                                 "nest; use --compile-core default with it")
        if self.capture_update and self.bptt_memory_slots:
            raise ValueError("--capture-update does not support memory-efficient BPTT (--bptt-memory-slots) yet; use "
                             "--bptt-memory-slots 0")
        if self.autocast and self.bptt_memory_slots:
            raise ValueError("--autocast bf16 does not support memory-efficient BPTT (its backward recomputes outside "
                             "autocast); use --bptt-memory-slots 0")
        if self.bptt_storage not in ("hidden", "internal", "mixed"):
            raise ValueError(f"--bptt-storage {self.bptt_storage!r} is not valid: expected hidden, internal or mixed")
        if v and self.core == "rl_access":
            raise ValueError("--bptt-memory-slots: memory-efficient BPTT does not support cores with discrete choices "
                             "(rl_access) yet; use 0")
        if self.num_steps % self.seq_len:
            raise ValueError(f"--seq-len {self.seq_len} must divide --num-steps {self.num_steps}")
        num_seq = self.num_envs * (self.num_steps // self.seq_len)
        if num_seq % self.num_minibatches:
            raise ValueError(
                f"--num-minibatches {self.num_minibatches} must divide the number of sequences per rollout "
                f"(num_envs * num_steps / seq_len = {num_seq})"
            )
        for name, lo, hi in (("gamma", 0.0, 1.0), ("gae_lambda", 0.0, 1.0), ("clip_coef", 0.0, 10.0)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"--{name.replace('_', '-')} {v!r} is out of range: expected [{lo}, {hi}]")
        for name in ("learning_rate", "max_grad_norm"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"--{name.replace('_', '-')} {v!r} is not valid: expected a positive number")
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"world_size {self.world_size!r} is not valid: expected a positive integer")
        if isinstance(self.dist_timeout, bool) or not isinstance(self.dist_timeout, (int, float)) or not (
            self.dist_timeout > 0 and math.isfinite(self.dist_timeout)
        ):
            raise ValueError(f"--dist-timeout {self.dist_timeout!r} is not valid: expected seconds > 0")
        if isinstance(self.time_budget, bool) or not isinstance(self.time_budget, (int, float)) or not (
            self.time_budget >= 0 and math.isfinite(self.time_budget)
        ):
            raise ValueError(f"--time-budget {self.time_budget!r} is not valid: expected seconds >= 0 (0: no budget)")
        for name in ("stop_patience", "stop_min_episodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} {v!r} is not valid: expected an integer >= 1")
        target = self.stop_target()
        if isinstance(self.stop_eval_episodes, bool) or not isinstance(self.stop_eval_episodes, int) or \
                self.stop_eval_episodes < 0:
            raise ValueError(f"--stop-eval-episodes {self.stop_eval_episodes!r} is not valid: expected an integer >= 0")
        if self.stop_eval_episodes and (target is None or target.metric not in EVAL_METRICS):
            raise ValueError(f"--stop-eval-episodes needs --stop-at on an episode statistic "
                             f"({', '.join(EVAL_METRICS)}), not {self.stop_at!r}")
        self.env_kwargs_dict()
        self.core_kwargs_dict()


def _json_obj(name: str, text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--{name.replace('_', '-')} {text!r} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--{name.replace('_', '-')} {text!r} must be a JSON object like '{{\"key\": 1}}'")
    return value


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not valid: expected auto, cpu or cuda[:index]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine (use cpu or auto)")
    return dev


# ================================================================================================================ GAE
def compute_gae(
    rewards: Tensor,
    values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    final_values: Tensor,
    last_value: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over a rollout; all ``[T, B]`` except ``last_value`` ``[B]``.

    Step ``t`` is the transition from ``obs[t]`` with ``rewards[t]``. Its next-state value is

    * ``0`` when the episode terminated at ``t`` (also when it was truncated at the same step),
    * ``final_values[t]``, the value of the episode's last observation, when it was truncated at ``t``,
    * ``values[t + 1]`` otherwise (``last_value`` for ``t = T - 1``).

    ``delta_t = r_t + gamma V_next - V_t``; ``A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}`` with ``done_t``
    = terminated or truncated (the episode's advantage never leaks into the next one). Returns ``advantages`` and
    ``returns = advantages + values``, both ``[T, B]``.
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        next_value = last_value if t == T - 1 else values[t + 1]
        next_value = torch.where(truncated[t], final_values[t], next_value)
        next_value = torch.where(terminated[t], torch.zeros_like(next_value), next_value)
        cont = (~(terminated[t] | truncated[t])).to(rewards.dtype)
        delta = rewards[t] + gamma * next_value - values[t]
        next_adv = delta + gamma * gae_lambda * cont * next_adv
        advantages[t] = next_adv
    return advantages, advantages + values


# ============================================================================================================ buffer
def _alloc_like(x: Any, T: int) -> Any:
    return obs_map(lambda t: torch.zeros((T,) + tuple(t.shape), dtype=t.dtype, device=t.device), x)


@dataclass
class Rollout:
    """One rollout of ``T`` steps of ``B`` envs, time-major.

    ``obs`` ``[T, B, ...]`` (normalised as the policy saw it; a dict for Dict spaces), ``starts`` ``[T, B]`` bool
    (``obs[t]`` begins an episode), ``actions`` ``[T, B, ...]``, ``log_probs``/``values``/``rewards`` ``[T, B]``,
    ``terminated``/``truncated`` ``[T, B]`` bool, ``final_values`` ``[T, B]`` (value of the last observation of an
    episode truncated at ``t``), ``choices`` (the core's discrete choices, ``[T, B, ...]`` leaves, or None) with
    ``choice_log_probs`` ``[T, B]``, ``seq_states`` (the agent state at ``t = 0, L, 2L, ...``: leaves
    ``[T / L, B, ...]``), ``last_value`` ``[B]``; ``advantages``/``returns`` ``[T, B]`` after :meth:`PPO.collect`.
    """

    obs: Any
    starts: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    final_values: Tensor
    choices: Any
    choice_log_probs: Tensor
    seq_states: Any = None
    last_value: Tensor | None = None
    advantages: Tensor | None = None
    returns: Tensor | None = None


# ================================================================================================ reward scaling
class RewardScaler:
    """Rewards divided by the running standard deviation of the discounted return (Stable-Baselines3's
    ``VecNormalize(norm_reward=True)``): ``R_t = gamma R_{t-1} + r_t`` per env (0 after an episode ends), running
    variance ``sigma^2`` of ``R`` over all envs and steps (Chan et al.'s parallel update), ``r_t / sqrt(sigma^2 +
    eps)`` clipped to ``+-clip``. Device tensors only (no host sync). ``[N]`` rewards in and out.
    """

    def __init__(self, num_envs: int, gamma: float, device: torch.device, clip: float = 10.0, eps: float = 1e-8,
                 distributed_moments: bool = False):
        self.gamma, self.clip, self.eps = gamma, clip, eps
        # under torchrun: the batch moments of R over every rank's envs (agents.distributed.global_moments)
        self.distributed_moments = distributed_moments
        self.ret = torch.zeros(num_envs, device=device)  # [N] running discounted return R
        self.mean = torch.zeros((), device=device)
        self.var = torch.ones((), device=device)
        self.count = torch.full((), 1e-4, device=device)

    def __call__(self, reward: Tensor, done: Tensor) -> Tensor:
        # in place: the statistics keep their tensors (a rollout step captured as a CUDA graph keeps updating them)
        self.ret.copy_(self.ret * self.gamma + reward)
        if self.distributed_moments:  # every rank's [N] returns together: [K N]
            n, b_mean, b_var = distributed.global_moments(self.ret, self.mean)
        else:
            n = self.ret.numel()
            b_mean, b_var = self.ret.mean(), self.ret.var(unbiased=False)
        tot = self.count + n
        delta = b_mean - self.mean
        self.var.copy_((self.var * self.count + b_var * n + delta.pow(2) * self.count * n / tot) / tot)
        self.mean.copy_(self.mean + delta * n / tot)
        self.count.copy_(tot)
        self.ret.masked_fill_(done, 0.0)
        return (reward / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, k).clone() for k in ("ret", "mean", "var", "count")}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k in ("mean", "var", "count"):
            getattr(self, k).copy_(state[k])
        if state["ret"].shape == self.ret.shape:  # the per-env returns only fit the same number of envs
            self.ret.copy_(state["ret"])


# =============================================================================================================== PPO
class PPO:
    """Recurrent PPO: :meth:`collect` a rollout on the device, :meth:`update` the policy on it.

    Args:
        policy: an :class:`ActorCritic` on ``device``.
        env: a :class:`TorchVecEnv` on ``device``.
        cfg: the :class:`TrainConfig` (PPO hyper-parameters; ``num_envs`` must equal ``env.num_envs``,
            ``world_size`` the ``dist``'s).
        seed: seed of the first env reset.
        dist: this process's place in a run over several processes (:mod:`agents.distributed`; default: a single
            process). With ``world_size > 1`` the process group must be joined: gradients are averaged over the
            ranks every minibatch, advantage normalisation and the observation and return statistics use every
            rank's batch, ``global_step`` counts every rank's steps and the metrics of :meth:`update` are rank
            means, so ``K`` ranks of ``B`` envs update like one process of ``K B`` envs (equal up to float
            rounding for the same data; minibatches hold ``1 / num_minibatches`` of each rank's sequences).
    """

    def __init__(self, policy: ActorCritic, env: TorchVecEnv, cfg: TrainConfig, seed: int | None = None,
                 dist: Dist | None = None) -> None:
        if env.num_envs != cfg.num_envs:
            raise ValueError(f"num_envs {cfg.num_envs} does not match the env's {env.num_envs}")
        self.dist = dist if dist is not None else Dist()
        if cfg.world_size != self.dist.world_size:
            raise ValueError(f"world_size {cfg.world_size} of the config does not match the process group's "
                             f"{self.dist.world_size}")
        self.policy, self.env, self.cfg = policy, env, cfg
        self.device = env.device
        # --capture-rollout / --capture-update: the rollout step / each minibatch step in fixed buffers ('static'),
        # replayed as a CUDA graph ('graph')
        self.capture, self.capture_update = cfg.capture_rollout, cfg.capture_update
        for flag, mode in (("--capture-rollout", self.capture), ("--capture-update", self.capture_update)):
            if mode and self.dist.enabled:
                raise ValueError(f"{flag} runs in one process only; drop it under torchrun")
            if mode == "graph" and self.device.type != "cuda":
                raise ValueError(f"{flag} graph needs a CUDA device (this run is on {self.device}); use {flag} "
                                 "static to run its fixed-buffer step eagerly")
        if self.capture:
            env.use_static_step()  # the env's state in fixed buffers (envs.capture.StaticStep)
        self._data: dict[str, Any] | None = None  # fixed copies of the update's sequences
        self._idx: Tensor | None = None  # [M] the minibatch's sequences, on the device
        self._update_graph: Any = None
        self._update_out: dict[str, Tensor] | None = None  # buffers of the captured step's metrics (each replay writes)
        self._update_eager_steps = 0
        self._carry: tuple[Any, Tensor, AgentState] | None = None  # (obs, start, state): the step's fixed inputs
        self._t: Tensor | None = None  # [1] the step index inside the rollout, on the device
        self._seq_states: AgentState | None = None  # [T / L, B, ...] leaves: the state at each sequence start
        self._graph: Any = None  # the captured step (torch.cuda.CUDAGraph)
        self._eager_steps = 0  # steps run before the capture (warm-up)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
        self._configure_optimizer()
        self.stats = EpisodeStats(env.num_envs, self.device)
        self.reward_scaler = RewardScaler(env.num_envs, cfg.gamma, self.device,
                                          distributed_moments=self.dist.enabled) if cfg.norm_reward else None
        B = env.num_envs
        # the running state of the rollout
        self.next_obs = self._normalize_obs(env.reset(seed=seed), update=True)
        self.next_start = torch.ones(B, dtype=torch.bool, device=self.device)
        self.next_state: AgentState = policy.initial_state(B, self.device)
        self.global_step = 0
        self.update_count = 0
        self._buf: Rollout | None = None
        # On an accelerator the update's inner loop runs without host reads (the minibatches' finiteness is
        # checked once per update, the parameters restored if it failed); on the CPU a host read costs nothing,
        # so each minibatch is checked before its step.
        self.sync_free = self.device.type != "cpu" or bool(self.capture_update)
        # --autocast bf16: the policy's forward passes (rollout steps, the update's loss) under torch.autocast
        self.autocast_dtype = torch.bfloat16 if cfg.autocast == "bf16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context of the policy's forward passes: ``torch.autocast(<policy device type>, bfloat16)`` with
        ``--autocast bf16``, else a no-op. Backward, optimiser step and GAE run outside it."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # a CUDA graph must not replay autocast's cache of cast weights (torch.cuda.graph's documented rule); the
        # fixed-buffer steps run without it too, so that they compute what a graph records
        cache = False if (self.capture or self.capture_update) else None
        return torch.autocast(device_type=self.policy.device.type, dtype=self.autocast_dtype, cache_enabled=cache)

    def _full(self, tree: Any) -> Any:
        """Under autocast: the tensors of ``tree`` (a core state, an action, choices) with bf16/fp16 leaves cast to
        float32, what the rollout stores (the cores keep their memory fp32; controller states and float actions
        come out of autocast in bf16). Exact: every bf16 value is a float32 value. A no-op without autocast."""
        if self.autocast_dtype is None:
            return tree
        return tree_map_any(lambda t: t.float() if t.dtype in (torch.bfloat16, torch.float16) else t, tree)

    # ---------------------------------------------------------------------------------------------- rollout
    def _normalize_obs(self, obs: Any, update: bool = False) -> Any:
        """:meth:`ActorCritic.normalize_obs`; under torchrun the statistics are updated with every rank's batch."""
        norm = self.policy.obs_norm
        if update and norm is not None and self.dist.enabled:
            distributed.update_obs_normalizer(norm, obs)
            return norm(obs)
        return self.policy.normalize_obs(obs, update=update)

    def _any_truncated(self, truncated: Tensor) -> bool:
        """Whether to compute final-observation values this step. On CPU the check is free (no device to wait
        for); on accelerators the values are computed every step instead of synchronising."""
        if self.device.type == "cpu" and not self.capture:
            return bool(truncated.any())
        return True

    @torch.no_grad()
    def collect(self) -> Rollout:
        """Step policy and envs ``T = num_steps`` times; compute GAE. No ``.item()``/``.cpu()`` per step."""
        cfg = self.cfg
        T, L, B = cfg.num_steps, cfg.seq_len, self.env.num_envs
        if self.capture:
            self._collect_static()
            state = self.next_state
        else:
            seq_states = []
            obs, start, state = self.next_obs, self.next_start, self.next_state
            for t in range(T):
                if t % L == 0:
                    seq_states.append(self._full(state))  # the state before obs[t]; resets at t are applied by the core
                obs, start, state = self._step(t, obs, start, state)
            self.next_obs, self.next_start, self.next_state = obs, start, self._full(state)
            self._buf.seq_states = stack_states(seq_states)  # leaves [T / L, B, ...]
        buf = self._buf
        self.global_step += T * B * self.dist.world_size  # every rank's steps
        with self.autocast():  # (from the state as the last step left it: bf16 leaves under autocast)
            buf.last_value = self.policy.get_value(self.next_obs, state, self.next_start).to(buf.values.dtype)
        buf.advantages, buf.returns = compute_gae(
            buf.rewards, buf.values, buf.terminated, buf.truncated, buf.final_values, buf.last_value,
            cfg.gamma, cfg.gae_lambda,
        )
        return buf

    def _step(self, t: int | Tensor, obs: Any, start: Tensor, state: AgentState) -> tuple[Any, Tensor, AgentState]:
        """Rollout step ``t`` (an int, or a ``[1]`` device index in the captured step) from ``obs`` ``[B, ...]``
        (normalised), ``start`` ``[B]`` and ``state``: act, step the envs, write row ``t`` of the buffers and fold
        the step into the episode statistics. Returns the next (normalised obs, start, state)."""
        policy = self.policy
        with self.autocast():
            out = policy.get_action_and_value(obs, state, start)
        if self.autocast_dtype is not None:  # float actions (Box, MultiBinary) and choices stored fp32
            out = out._replace(action=self._full(out.action), choices=self._full(out.choices))
        buf = self._buf if self._buf is not None else self._alloc(obs, out)

        def put(dst: Tensor, src: Tensor) -> None:  # row t of a buffer (an index_put with a device index: same dtype)
            dst[t] = src if src.dtype == dst.dtype else src.to(dst.dtype)

        obs_map(put, buf.obs, obs)
        put(buf.starts, start)
        put(buf.actions, out.action)
        put(buf.log_probs, out.log_prob)
        put(buf.values, out.value)
        put(buf.choice_log_probs, out.choice_log_prob)
        if out.choices is not None:
            _copy_tree_at(buf.choices, out.choices, t)

        step = self.env.step(policy.env_action(out.action))
        done = step.terminated | step.truncated
        scaler = self.reward_scaler
        put(buf.rewards, step.reward if scaler is None else scaler(step.reward, done))
        put(buf.terminated, step.terminated)
        put(buf.truncated, step.truncated)
        if step.final_obs is not None and self._any_truncated(step.truncated):
            # V(last obs of a truncated episode): one more step from the state after obs[t], no reset
            final_obs = self._normalize_obs(step.final_obs)
            with self.autocast():
                put(buf.final_values, policy.get_value(final_obs, out.state))
        else:
            buf.final_values[t] = 0.0
        self.stats.add(step.reward, done, step.success)
        return self._normalize_obs(step.obs, update=True), done, out.state

    def _alloc(self, obs: Any, out: Any) -> Rollout:
        """The rollout buffers ``[T, B, ...]``, allocated once, shaped like the first step's tensors."""
        T, B, dev = self.cfg.num_steps, self.env.num_envs, self.device
        self._buf = Rollout(
            obs=_alloc_like(obs, T),
            starts=torch.zeros(T, B, dtype=torch.bool, device=dev),
            actions=_alloc_like(out.action, T),
            log_probs=torch.zeros(T, B, device=dev),
            values=torch.zeros(T, B, device=dev),
            rewards=torch.zeros(T, B, device=dev),
            terminated=torch.zeros(T, B, dtype=torch.bool, device=dev),
            truncated=torch.zeros(T, B, dtype=torch.bool, device=dev),
            final_values=torch.zeros(T, B, device=dev),
            choices=tree_map_any(lambda c: torch.zeros((T,) + c.shape, dtype=c.dtype, device=dev), out.choices),
            choice_log_probs=torch.zeros(T, B, device=dev),
        )
        return self._buf

    # ------------------------------------------------------------------------------- captured rollout step
    def _collect_static(self) -> None:
        """:meth:`collect`'s step loop with every input and output of a step in fixed buffers (``--capture-rollout``):
        the carried (obs, start, state) are ``self.next_*`` for the whole run, the step index is a device tensor,
        the buffers are written at it, and the env's state lives in :class:`envs.capture.StaticStep`'s buffers. With
        ``graph`` the run's first two steps run eagerly on a side stream (warm-up), the third is captured as a CUDA
        graph and every later step replays it: one launch per step."""
        T, L = self.cfg.num_steps, self.cfg.seq_len
        if self._carry is None:  # the carried values become the step's fixed inputs (fp32 state under autocast)
            self._carry = tree_map_any(torch.clone, (self.next_obs, self.next_start, self._full(self.next_state)))
            self.next_obs, self.next_start, self.next_state = self._carry
            self._t = torch.zeros(1, dtype=torch.long, device=self.device)
            self._seq_states = tree_map_any(lambda s: s.new_zeros((T // L,) + tuple(s.shape)), self.next_state)
        self._t.zero_()
        for t in range(T):
            if t % L == 0:  # the state before obs[t]; resets at t are applied by the core
                _copy_tensors(_tensors(self._seq_states), _tensors(self.next_state), index=t // L)
            if self._graph is not None:
                self._graph.replay()
            elif self.capture == "graph" and self._eager_steps >= 2:
                rec = self._capture("rollout", self._static_step, env=self.env.venv)
                if rec is None:  # not capturable: this run goes on with the same step, eagerly
                    self.capture = "static"
                    self._static_step()
                else:
                    self._graph = rec[0]
                    self._graph.replay()  # (a capture records the step without running it)
            else:
                self._eager_static_step()
        self._buf.seq_states = self._seq_states  # leaves [T / L, B, ...]

    def _static_step(self) -> None:
        """One step of :meth:`_step` on the fixed buffers: reads ``self._carry`` and ``self._t``, writes the rollout
        buffers at ``self._t``, the next (obs, start, state) into ``self._carry`` and ``self._t + 1``."""
        obs, start, state = self._carry
        new = self._step(self._t, obs, start, state)
        _copy_tensors(_tensors(self._carry), _tensors(new))
        self._t.add_(1)

    def _eager_static_step(self) -> None:
        if self.capture != "graph":
            self._static_step()
            return
        # warm-up before the capture, on a side stream as torch.cuda.graph asks (libraries initialise lazily)
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self._static_step()
        main.wait_stream(side)
        self._eager_steps += 1

    def _capture(self, what: str, fn: Callable[[], Any], env: Any = None) -> tuple[Any, Any] | None:
        """Record ``fn()`` as a CUDA graph (its kernels, with the default generator and, for tasks that draw from
        it, the env's generator registered, so every replay draws new numbers; ``env``: the
        :class:`envs.capture.StaticStep` the step runs). Returns (graph, what ``fn`` returned), or None when the
        capture fails (an op that cannot be captured): a warning names the error and the caller goes on with the
        fixed-buffer step, eagerly. A capture runs no kernel, so no tensor has changed; the env's state attributes
        are bound back to their buffers."""
        from envs.capture import record_graph, register_env_generator

        graph = torch.cuda.CUDAGraph()
        try:
            if env is not None:
                register_env_generator(graph, env.env)
            out = record_graph(graph, fn)
        except RuntimeError as e:
            if env is not None:
                env.bind_buffers()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            warnings.warn(f"--capture-{what} graph: the step could not be captured as a CUDA graph ({first}); this "
                          f"run goes on with the same fixed-buffer step run eagerly (--capture-{what} static)",
                          RuntimeWarning, stacklevel=3)
            return None
        return graph, out

    # ------------------------------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict[str, Any]:
        """Trainer state beyond the policy and the optimizer, for checkpoints (the reward scaler's statistics)."""
        return {"reward_scaler": self.reward_scaler.state_dict()} if self.reward_scaler is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state` (keys this run does not use are ignored). Under torchrun the statistics are
        the global ones; the per-env running returns saved are rank 0's, so ranks > 0 start theirs at zero."""
        if self.reward_scaler is not None and "reward_scaler" in state:
            saved = state["reward_scaler"]
            if self.dist.rank > 0:
                saved = {k: v for k, v in saved.items() if k != "ret"} | {"ret": torch.zeros(0)}
            self.reward_scaler.load_state_dict(saved)

    # ----------------------------------------------------------------------------------------------- update
    def sequences(self, r: Rollout) -> dict[str, Any]:
        """The rollout cut into ``N = B T / L`` sequences of length ``L``: ``[T, B, ...]`` -> ``[L, N, ...]``,
        sequence ``n = k B + b`` is env ``b``'s steps ``k L .. k L + L - 1``; states ``[K, B, ...]`` -> ``[N, ...]``."""
        T, L = self.cfg.num_steps, self.cfg.seq_len
        K = T // L

        def seq(x: Tensor) -> Tensor:
            B = x.shape[1]
            # [T, B, ...] -> [K, L, B, ...] -> [L, K, B, ...] -> [L, K * B, ...]
            return x.reshape((K, L) + tuple(x.shape[1:])).transpose(0, 1).reshape((L, K * B) + tuple(x.shape[2:]))

        return dict(
            obs=obs_map(seq, r.obs),
            starts=seq(r.starts),
            actions=seq(r.actions),
            log_probs=seq(r.log_probs),
            values=seq(r.values),
            advantages=seq(r.advantages),
            returns=seq(r.returns),
            choices=tree_map_any(seq, r.choices),
            choice_log_probs=seq(r.choice_log_probs),
            # [K, B, ...] -> [K * B, ...]
            states=tree_map(lambda s: s.reshape((-1,) + tuple(s.shape[2:])), r.seq_states),
        )

    def set_learning_rate(self, elapsed_seconds: float | None = None) -> float:
        """Set and return the learning rate of the coming update: constant, or with ``anneal_lr`` linearly annealed
        to 0 over the run: ``1 - f`` with ``f`` the fraction of the updates done (``update_count / num_updates``)
        or, with a ``time_budget``, the larger of that and the elapsed fraction of the budget
        (``elapsed_seconds / time_budget``), so the rate reaches 0 at whichever end comes first.

        ``elapsed_seconds``: the run's training seconds so far, earlier sessions of a resumed run included (default:
        ``self.train_seconds``, which the runner sets before each update; 0 when unset). A host-side number: no
        device synchronisation.
        """
        cfg = self.cfg
        lr = cfg.learning_rate
        if cfg.anneal_lr:
            frac = self.update_count / cfg.num_updates
            if cfg.time_budget > 0:
                if elapsed_seconds is None:
                    elapsed_seconds = getattr(self, "train_seconds", 0.0)
                frac = max(frac, elapsed_seconds / cfg.time_budget)
            lr = cfg.learning_rate * max(0.0, 1.0 - frac)
        for g in self.optimizer.param_groups:
            if isinstance(g["lr"], Tensor):  # --capture-update graph: the graph reads it from the device
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr
        return lr

    def _configure_optimizer(self) -> None:
        """Adam as the update runs it: with ``--capture-update graph`` capturable (step counts on the device) and
        with its learning rate in a device tensor (a CUDA graph would replay a Python float forever); otherwise
        the plain settings. Applied at construction and after loading an optimizer state of either kind."""
        graph = self.capture_update == "graph"
        for g in self.optimizer.param_groups:
            g["capturable"] = graph
            if graph:
                g["foreach"] = True
            lr = float(g["lr"])
            g["lr"] = torch.tensor(lr, device=self.device) if graph else lr
        for st in self.optimizer.state.values():
            if "step" in st:
                st["step"] = st["step"].to(self.device if graph else "cpu", torch.float32)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """``self.optimizer.load_state_dict(state)`` (a checkpoint's), then set up as this run's options ask."""
        self.optimizer.load_state_dict(state)
        self._configure_optimizer()

    def update(self, r: Rollout) -> dict[str, Tensor]:
        """Epochs of minibatch updates on whole sequences; returns device tensors averaged over the minibatches:
        ``loss``, ``policy_gradient_loss``, ``value_loss``, ``entropy_loss``, ``approx_kl``, ``clip_fraction`` (of
        the step's joint ratio, choices included; ``target_kl`` stops on it), ``grad_norm``, with discrete core
        choices ``choice_entropy`` and ``choice_approx_kl``; and ``explained_variance``, ``learning_rate``.

        Host reads: on an accelerator (:attr:`sync_free`) the epochs and minibatches (:meth:`_epochs`) read nothing
        back from the device, except ``approx_kl`` once per epoch when ``target_kl`` is set; the reset flags of a
        segmented unroll (lstm/gru) come to the host once per update, and whether every minibatch loss was finite is
        read once at the end: if one was not, the parameters and optimiser state of before the update are restored
        and :class:`NonFiniteLossError` is raised. On the CPU each minibatch is checked before its step."""
        policy = self.policy
        lr = self.set_learning_rate()
        data = self.sequences(r)
        if self.capture_update:  # the step reads fixed copies (no host copy of the flags: no segmented unroll)
            data = self._fixed_data(data)
        else:
            # the reset flags on the host once per update (segmented unroll of lstm/gru); none for other cores
            data["starts_cpu"] = data["starts"].cpu() if policy.segment_unroll else None
        saved = self._snapshot() if self.sync_free else None
        sums, n_mb, finite = self._epochs(data)
        if finite is not None and not bool(finite):  # the update's one host read of a decision
            self._restore(saved)
            raise NonFiniteLossError(f"non-finite PPO loss at update {self.update_count + 1} (parameters and "
                                     "optimiser state of before the update restored)")
        out = {k: v / n_mb for k, v in sums.items()}
        # explained variance of the rollout's values
        y, v = r.returns.flatten(), r.values.flatten()
        if self.dist.enabled:  # rank means of the metrics; the explained variance of every rank's rollout together
            keys = sorted(out)
            if keys:
                means = distributed.allreduce_mean(torch.stack([out[k].float() for k in keys]))
                out = {k: means[i] for i, k in enumerate(keys)}
            var_res = distributed.global_mean_std(y - v)[1] ** 2
            var_y = distributed.global_mean_std(y)[1] ** 2
            out["explained_variance"] = 1 - var_res / var_y.clamp_min(1e-8)
        else:
            out["explained_variance"] = 1 - (y - v).var() / y.var().clamp_min(1e-8)
        out["learning_rate"] = torch.tensor(lr)
        self.update_count += 1
        return out

    def _epochs(self, data: dict[str, Any]) -> tuple[dict[str, Tensor], int, Tensor | None]:
        """The update's ``update_epochs x num_minibatches`` gradient steps on :meth:`sequences`' ``data``: returns
        the summed metrics, the number of minibatches and, when :attr:`sync_free`, a device bool that is True when
        every minibatch loss was finite (None on the CPU path, which checks each minibatch before its step)."""
        cfg = self.cfg
        N = data["starts"].shape[1]
        mb = N // cfg.num_minibatches
        sums: dict[str, Tensor] = {}
        n_mb = 0
        finite = torch.ones((), dtype=torch.bool, device=self.device) if self.sync_free else None
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(N)  # on the host: indexes the host copy of the flags too
            perm_dev = self._to_device_async(perm)  # one asynchronous copy per epoch
            for i in range(cfg.num_minibatches):
                sl = slice(i * mb, (i + 1) * mb)
                if self.capture_update:
                    metrics = self._captured_minibatch_step(data, perm_dev[sl])
                else:
                    metrics = self._minibatch_step(data, perm_dev[sl], perm[sl])
                if finite is not None:
                    finite = finite & metrics.pop("finite")
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_mb += 1
            if cfg.target_kl is not None:
                kl = metrics["approx_kl"]
                if self.dist.enabled:  # every rank decides on the global KL, so all stop at the same epoch
                    kl = distributed.allreduce_mean(kl)
                if float(kl) > cfg.target_kl:  # a host read per epoch, only with target_kl
                    break
        return sums, n_mb, finite

    def _to_device_async(self, t: Tensor) -> Tensor:
        """``t`` (on the host) on the device without making the host wait: pinned memory and a non-blocking copy
        on CUDA (a copy from pageable memory synchronises)."""
        if self.device.type == "cpu":
            return t
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _snapshot(self) -> tuple[list[Tensor], dict]:
        """Copies of the parameters and the optimiser state (device copies, no host read)."""
        params = [p.detach().clone() for p in self.policy.parameters()]
        return params, copy.deepcopy(self.optimizer.state_dict())

    @torch.no_grad()
    def _restore(self, saved: tuple[list[Tensor], dict]) -> None:
        params, opt_state = saved
        for p, q in zip(self.policy.parameters(), params):
            p.copy_(q)
        self.load_optimizer_state(opt_state)
        self._update_graph, self._update_eager_steps = None, 0  # the optimiser's state tensors are new ones

    def loss(self, data: dict[str, Any], idx: Tensor, idx_cpu: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The PPO loss of the minibatch of sequences ``idx`` (of :meth:`sequences`' ``N``) and its metrics; no
        gradient step.

        One clipped surrogate for the whole decision of a step. With ``u_t`` the action and, for a core with discrete
        choices (``rl_access``), ``a_t`` its access choice, pi(u_t, a_t | history) = pi(u_t | history, a_t)
        pi(a_t | history), so the probability ratio of the step is::

            log rho_t = [log pi(u_t) - log pi_old(u_t)] + c [log pi(a_t) - log pi_old(a_t)]    (c = choice_coef)
            L^CLIP    = -mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)

        clipped once for the pair, as the SB3 adapter does (the choice is the last component of its MultiDiscrete
        action); ``c = 1`` is the exact joint ratio, ``c = 0`` leaves the choices untrained. At rho = 1 the gradient
        is ``-A_t (grad log pi(u_t) + c grad log pi(a_t))``: the choice gets REINFORCE with the critic as baseline,
        which reads only what precedes a_t (:class:`agents.policy.ActorCritic`). ``approx_kl`` (``mean((rho - 1) -
        log rho)``) and ``clip_fraction`` are of rho_t, so they and ``target_kl`` count the choices;
        ``choice_approx_kl`` is the choices' share alone. Entropy bonuses: ``ent_coef`` H(pi(u_t)) and
        ``choice_ent_coef`` H(pi(a_t)).

        With ``--autocast bf16`` the whole computation runs under :meth:`autocast` (the policy's forward in bf16,
        memory math in fp32 inside the cores); the policy's outputs are cast to the buffers' float32 before the
        surrogate, so the loss is float32 and the caller's backward runs outside autocast.
        """
        with self.autocast():
            return self._loss(data, idx, idx_cpu)

    def _loss(self, data: dict[str, Any], idx: Tensor, idx_cpu: Tensor | None = None
              ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg, policy = self.cfg, self.policy
        starts_cpu = data.get("starts_cpu")
        if starts_cpu is not None:
            starts_cpu = starts_cpu[:, idx.cpu() if idx_cpu is None else idx_cpu]
        pick = lambda x: x[:, idx]  # noqa: E731  [L, N, ...] -> [L, M, ...]
        state = tree_map(lambda s: s[idx], data["states"])  # [M, ...]
        out = policy.evaluate_sequence(
            obs_map(pick, data["obs"]), state, pick(data["starts"]), pick(data["actions"]),
            choices=tree_map_any(pick, data["choices"]), segmented=policy.segment_unroll and not self.capture_update,
            resets_cpu=starts_cpu, memory_slots=cfg.bptt_memory_slots, segment_steps=cfg.bptt_segment_steps,
            storage=cfg.bptt_storage, sync_free=bool(self.capture_update),
        )
        if self.autocast_dtype is not None:  # bf16 outputs of the forward -> the buffers' dtype (float32)
            f32 = data["log_probs"].dtype
            out = out._replace(**{k: getattr(out, k).to(f32) for k in
                                  ("log_prob", "entropy", "value", "choice_log_prob", "choice_entropy")})
        adv = pick(data["advantages"])  # [L, M]
        if cfg.norm_adv:
            if self.dist.enabled:  # the statistics of the whole minibatch, every rank's share: [L, K M]
                mean, std = distributed.global_mean_std(adv)
                adv = (adv - mean) / (std + 1e-8)
            else:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        # log rho_t of the step's decision: the action's, plus the core's choice's (weighted by choice_coef)
        logratio = out.log_prob - pick(data["log_probs"])  # [L, M]
        metrics: dict[str, Tensor] = {}
        if policy.has_choices:
            c_logratio = out.choice_log_prob - pick(data["choice_log_probs"])  # [L, M]
            logratio = logratio + cfg.choice_coef * c_logratio
            with torch.no_grad():
                metrics["choice_approx_kl"] = ((c_logratio.exp() - 1) - c_logratio).mean()
        ratio = logratio.exp()
        pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
        # value loss (optionally clipped around the rollout's values)
        ret, old_v = pick(data["returns"]), pick(data["values"])
        v_loss_unclipped = (out.value - ret) ** 2
        if cfg.clip_vloss:
            v_clipped = old_v + (out.value - old_v).clamp(-cfg.clip_coef, cfg.clip_coef)
            v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - ret) ** 2).mean()
        else:
            v_loss = 0.5 * v_loss_unclipped.mean()
        entropy = out.entropy.mean()
        loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
        if policy.has_choices:
            c_entropy = out.choice_entropy.mean()
            loss = loss - cfg.choice_ent_coef * c_entropy
            metrics["choice_entropy"] = c_entropy.detach()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - logratio).mean()
            clipfrac = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
        metrics.update(
            loss=loss.detach(), policy_gradient_loss=pg_loss.detach(), value_loss=v_loss.detach(),
            entropy_loss=-entropy.detach(), approx_kl=approx_kl, clip_fraction=clipfrac,
        )
        return loss, metrics

    def _minibatch_step(self, data: dict[str, Any], idx: Tensor, idx_cpu: Tensor | None = None) -> dict[str, Tensor]:
        """One gradient step on :meth:`loss` of the minibatch ``idx``, gradient norm clipped; returns the metrics.
        Under torchrun the gradients (and the loss, to decide on its finiteness together) are averaged over the
        ranks before clipping: every rank clips and steps the same global gradient."""
        loss, metrics = self.loss(data, idx, idx_cpu)
        if self.dist.enabled:
            return self._distributed_step(loss, metrics)
        if self.sync_free:  # checked once per update (see update())
            metrics["finite"] = torch.isfinite(loss.detach())
        elif not bool(torch.isfinite(loss)):  # CPU: free to check here, before a bad gradient step
            raise NonFiniteLossError(f"non-finite PPO loss ({float(loss.detach())}) at update {self.update_count + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        metrics["grad_norm"] = grad_norm.detach()
        return metrics

    # -------------------------------------------------------------------------------- captured update step
    def _fixed_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """:meth:`sequences`' tensors copied into buffers allocated at the first update (the captured step reads
        them there)."""
        if self._data is None:
            self._data = tree_map_any(torch.clone, data)
        else:
            _copy_tensors(_tensors(self._data), _tensors(data))
        return self._data

    def _captured_minibatch_step(self, data: dict[str, Any], idx: Tensor) -> dict[str, Tensor]:
        """:meth:`_minibatch_step` on the fixed data with the minibatch's index copied into a fixed ``[M]`` buffer
        (``--capture-update``); with ``graph`` the run's first two steps run eagerly on a side stream, the third is
        captured and every later one replays it. Returns the metrics (a replay's are the graph's output tensors,
        valid until the next replay: the caller sums them at once)."""
        if self._idx is None:
            self._idx = idx.clone()
        else:
            self._idx.copy_(idx)
        if self._update_graph is None and self.capture_update == "graph" and self._update_eager_steps >= 2:
            self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients in the graph's pool

            def step() -> None:  # the metrics into fixed buffers, which every replay overwrites
                for k, v in self._minibatch_step(data, self._idx).items():
                    self._update_out[k].copy_(v)

            rec = self._capture("update", step)
            if rec is None:  # not capturable: this run goes on with the same step, eagerly
                self.capture_update = "static"
            else:
                self._update_graph = rec[0]
        if self._update_graph is not None:
            self._update_graph.replay()
            return dict(self._update_out)
        if self.capture_update != "graph":
            return self._minibatch_step(data, self._idx)
        main = torch.cuda.current_stream(self.device)  # warm-up on a side stream, as torch.cuda.graph asks
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self._minibatch_step(data, self._idx)
        main.wait_stream(side)
        self._update_eager_steps += 1
        self._update_out = {k: v.detach().clone() for k, v in out.items()}  # the captured step's output buffers
        return out

    def _distributed_step(self, loss: Tensor, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`_minibatch_step` over the ranks: backward, one all-reduce of the gradients and the loss, then the
        same check, clipping and step on every rank (no step when the mean loss is not finite)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mean_loss = distributed.allreduce_gradients(self.policy.parameters(), self.dist.world_size, loss.detach())
        if self.sync_free:  # the same flag on every rank, checked once per update (see update())
            metrics["finite"] = torch.isfinite(mean_loss)
        elif not bool(torch.isfinite(mean_loss)):  # the same decision on every rank
            raise NonFiniteLossError(f"non-finite PPO loss ({float(mean_loss)}, mean over the ranks) at update "
                                     f"{self.update_count + 1}")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        metrics["grad_norm"] = grad_norm.detach()
        return metrics


def _tensors(tree: Any) -> list[Tensor]:
    """The tensors of a tree (tuples, lists, dicts, NamedTuples; None skipped), in a fixed order."""
    out: list[Tensor] = []
    tree_map_any(out.append, tree)
    return out


def _copy_tensors(dst: list[Tensor], src: list[Tensor], index: int | None = None) -> None:
    """``dst[i].copy_(src[i])`` (into ``dst[i][index]`` with an index). A source that shares storage with a
    destination (a core that returns a state tensor unchanged, or a view of one) is cloned before any copy."""
    if len(dst) != len(src):
        raise RuntimeError(f"a rollout step changed the structure of its carried values ({len(src)} tensors, "
                           f"{len(dst)} expected)")
    held = {t.untyped_storage().data_ptr() for t in dst}
    src = [s.clone() if s.untyped_storage().data_ptr() in held else s for s in src]
    for d, s in zip(dst, src):
        (d if index is None else d[index]).copy_(s)


def _copy_tree_at(dst: Any, src: Any, t: int | Tensor) -> None:
    if src is None:
        return
    if isinstance(src, Tensor):
        dst[t] = src
    elif isinstance(src, dict):
        for k in src:
            _copy_tree_at(dst[k], src[k], t)
    else:
        for d, s in zip(dst, src):
            _copy_tree_at(d, s, t)
