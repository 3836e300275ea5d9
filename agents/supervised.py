"""Supervised training and evaluation of a memory core on the NTM paper's algorithmic tasks.

The model is ``core -> linear readout``; the loss is binary cross-entropy with logits on the output phase only (the
task's mask); bit errors threshold the sigmoid at 0.5 (``logit > 0``) and count wrong bits per sequence, as in the
NTM paper. A batch is one time-major tensor ``[T, B, input_size]`` padded to its longest row and run through
``core.unroll`` once; one optimiser step per batch.

>>> from envs.sequence_data import CopyTask
>>> from memory_cores import make_core
>>> task = CopyTask(max_length=5)
>>> model = SequenceModel(make_core("lstm", task.input_size, hidden_size=32), task.target_size)
>>> result = train(model, task, TrainConfig(max_sequences=640, batch_size=32))
>>> errors = evaluate(model, task, sizes=[5, 10], num_sequences=64)

Cores with discrete memory-access choices (``rl_access``) have three choice modes (``TrainConfig.choices``):

* ``trained``: a_t ~ pi (the core's RL portion), trained by REINFORCE (reward of a step: minus its cross-entropy;
  reward-to-go; a learned baseline V(h_t) on the pre-choice controller output, so it does not depend on a_t);
  greedy choices in :func:`evaluate`.
* ``random``: a_t uniform over the P processes, independent of the parameters, from a generator of their own
  (seeded from the run's seed, so the training and test sequences stay those of the other modes); no choice loss
  (the RL rows of the interface get exactly zero gradient). Random choices in :func:`evaluate` too.
* ``oracle``: a hand-written access sequence (:func:`oracle_choices`; Copy only) fed as the stored choices, so only
  the differentiable part (what is written, the controller, the readout) is trained: its upper bound.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs.sequence_data import SequenceBatch
from memory_cores import Core, memory_efficient_unroll
from memory_cores.reinforce import LinearBaseline, baseline_loss, entropy_bonus, reinforce_loss, reward_to_go
from memory_cores.rl_access import has_discrete_choices

__all__ = [
    "SequenceModel",
    "TrainConfig",
    "masked_bce",
    "bit_errors",
    "train",
    "evaluate",
    "record_weightings",
    "count_parameters",
    "choice_usage",
    "peak_initial_weightings",
    "slots_stay_identical",
    "CHOICE_MODES",
    "oracle_choices",
    "copy_oracle_choices",
    "stored_choices",
    "oracle_agreement",
]

CHOICE_MODES = ("trained", "random", "oracle")
"""How a discrete-choice core's access processes are chosen in :func:`train` and :func:`evaluate`."""

COPY_ORACLE = {"start": "no_op", "item": "write_least_used", "delimiter": "no_op", "answer": "read_move_right"}
"""The Copy oracle's access process per phase of a row (padding steps after the answer: ``no_op``)."""


class SequenceModel(nn.Module):
    """A core followed by a linear readout to ``target_size`` logits.

    Args:
        core: any :class:`memory_cores.Core` whose ``input_size`` is the task's input width.
        target_size: bits predicted per step.
    """

    def __init__(self, core: Core, target_size: int) -> None:
        super().__init__()
        self.core = core
        self.readout = nn.Linear(core.output_size, target_size)

    def forward(self, inputs: Tensor, choices: Tensor | None = None, memory_slots: int = 0,
                segment_steps: int = 1, storage: str = "hidden") -> Tensor:
        """``inputs`` ``[T, B, input_size]`` -> logits ``[T, B, target_size]``; every row starts from the core's
        initial state. ``choices`` ``[T, B]`` long (discrete-choice cores only): apply these access processes
        instead of the core's own (sampled in train mode, greedy in eval mode). ``memory_slots`` > 0 (cores
        without discrete choices): backpropagate through :func:`memory_cores.memory_efficient_unroll` with that
        many stored states and recomputed stretches of at most ``segment_steps`` steps, storing hidden states,
        internal states or the mix (``storage``; same values and gradients)."""
        T, B, _ = inputs.shape
        state = self.core.initial_state(B, device=inputs.device)
        if choices is not None:
            ys, _, _ = self.core.unroll_with_choices(inputs, state, choices=choices)
        elif 0 < memory_slots < T and torch.is_grad_enabled():
            ys, _ = memory_efficient_unroll(self.core, inputs, state, memory_slots=memory_slots,
                                            segment_steps=segment_steps, storage=storage)
        else:
            ys, _ = self.core.unroll(inputs, state)  # [T, B, output_size]
        return self.readout(ys)

    def forward_with_states(self, inputs: Tensor) -> tuple[Tensor, list[Any]]:
        """Like :meth:`forward` but step by step, also returning the core state after every step (for plots)."""
        T, B, _ = inputs.shape
        state = self.core.initial_state(B, device=inputs.device)
        ys, states = [], []
        for t in range(T):
            y, state = self.core(inputs[t], state)
            ys.append(y)
            states.append(state)
        return self.readout(torch.stack(ys)), states


def peak_initial_weightings(core: nn.Module, slot: int = 0, mass: float = 0.95) -> list[str]:
    """Set learned initial head weightings (``LearnedInit`` parameters whose name contains ``weights_init``, read
    as softmax logits ``[..., N]``) to a distribution with ``mass`` on ``slot``; returns the names changed.

    Why: when the memory starts constant (every slot equal, e.g. the 1e-6 init of Collier and Beel 2018) *and* the
    initial weightings are uniform, every slot stays identical forever: content weighting of equal rows is uniform,
    interpolating, shifting and sharpening a uniform weighting keep it uniform, and a uniform write keeps the rows
    equal. The gradient with respect to the initial logits is zero too (softmax projects out the uniform direction),
    so training cannot leave that point and the memory is unusable. A peaked start breaks the symmetry (the learned
    values can still move anywhere).
    """
    changed = []
    for name, p in core.named_parameters():
        if "weights_init" in name:
            N = p.shape[-1]
            with torch.no_grad():
                # softmax gives `mass` on `slot`: logit l with e^l / (e^l + N - 1) = mass
                logit = math.log(mass * (N - 1) / (1.0 - mass)) if N > 1 else 0.0
                p.zero_()
                p[..., slot] = logit
            changed.append(name)
    return changed


@torch.no_grad()
def slots_stay_identical(core: Core, input_size: int, steps: int = 8) -> bool:
    """True when, from the initial state and random binary inputs, every head weighting in the state stays exactly
    uniform over the slots (the symmetric trap described in :func:`peak_initial_weightings`)."""
    gen = torch.Generator().manual_seed(0)
    xs = torch.randint(0, 2, (steps, 2, input_size), generator=gen).float()
    dev = next(core.parameters()).device
    _, state = core.unroll(xs.to(dev), core.initial_state(2, device=dev))
    ws = [leaf for name, leaf in _named_fields(state) if "weight" in name.split(".")[-1]]
    return bool(ws) and all(bool((w == w[..., :1]).all()) for w in ws)


def copy_oracle_choices(batch: SequenceBatch, processes: Sequence[str]) -> Tensor:
    """The hand-written Copy access sequence as choice indices ``[T, B]`` (long) into ``processes``.

    Copy layout of a row of length L (:class:`envs.sequence_data.CopyTask`): step 0 start flag, steps 1..L the
    items, step L+1 delimiter, steps L+2..2L+1 the answer. The sequence (:data:`COPY_ORACLE`)::

        step      0       1 .. L              L+1      L+2 .. 2L+1       2L+2 .. T-1 (padding)
        process   no_op   write_least_used    no_op    read_move_right   no_op

    ``write_least_used`` fills slots 0, 1, ..., L-1 in order (never-written slots first, lowest index first) and
    leaves the head at slot 0; ``read_move_right`` reads the slot under the head and then moves it right, so the
    answer step L+2+j reads slot j = item j. Needs ``L <= num_slots``. Raises ``ValueError`` when ``processes``
    lacks one of the three processes.
    """
    processes = tuple(processes)
    missing = [name for name in dict.fromkeys(COPY_ORACLE.values()) if name not in processes]
    if missing:
        raise ValueError(
            f"the Copy oracle needs the access processes {sorted(set(COPY_ORACLE.values()))}; the core's processes "
            f"{list(processes)} lack {missing}: build it with e.g. processes=['no_op', 'write_least_used', "
            f"'read_move_right']"
        )
    T, B = batch.mask.shape
    L = batch.sizes.to(batch.mask.device).view(1, B)  # [1, B]
    t = torch.arange(T, device=batch.mask.device).view(T, 1)  # [T, 1]
    index = {phase: processes.index(name) for phase, name in COPY_ORACLE.items()}
    out = torch.full((T, B), index["start"], dtype=torch.long, device=batch.mask.device)  # step 0 and padding
    out = torch.where((t >= 1) & (t <= L), torch.full_like(out, index["item"]), out)
    out = torch.where(t == L + 1, torch.full_like(out, index["delimiter"]), out)
    out = torch.where((t >= L + 2) & (t <= 2 * L + 1), torch.full_like(out, index["answer"]), out)
    return out


def oracle_choices(task, batch: SequenceBatch, processes: Sequence[str]) -> Tensor:
    """The oracle access sequence of ``task`` for ``batch`` (``[T, B]`` long); only Copy has one today."""
    name = getattr(task, "name", type(task).__name__)
    if name == "copy":
        return copy_oracle_choices(batch, processes)
    raise ValueError(f"choices='oracle' is defined for the copy task only, got task {name!r}")


def stored_choices(
    model: SequenceModel, task, batch: SequenceBatch, mode: str, generator: torch.Generator | None = None
) -> Tensor | None:
    """The choices ``[T, B]`` to feed for ``mode`` (:data:`CHOICE_MODES`): None for ``trained`` (the core's own),
    uniform indices drawn from ``generator`` for ``random``, :func:`oracle_choices` for ``oracle``."""
    if mode not in CHOICE_MODES:
        raise ValueError(f"choices must be one of {list(CHOICE_MODES)}, got {mode!r}")
    if mode == "trained":
        return None
    core = model.core
    if not has_discrete_choices(core):
        raise ValueError(f"choices={mode!r} needs a core with discrete access choices (rl_access), got "
                         f"{type(core).__name__}")
    T, B = batch.mask.shape
    if mode == "random":
        # drawn on the CPU generator of the data, then moved: the same choices on every device
        return torch.randint(0, core.num_choices, (T, B), generator=generator).to(batch.mask.device)
    return oracle_choices(task, batch, core.choice_names)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def masked_bce(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Binary cross-entropy with logits on the scored steps only.

    Args:
        logits, targets: ``[T, B, C]``.
        mask: ``[T, B]``, 1 where the step is scored.
    Returns:
        ``(mean, per_sequence_bits)``: the mean over scored bits (the training loss) and the summed cost per
        sequence in bits ``[B]`` (the NTM paper's "cost per sequence").
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # [T, B, C]
    bce = bce * mask.unsqueeze(-1)
    C = logits.shape[-1]
    mean = bce.sum() / (mask.sum() * C).clamp(min=1.0)
    per_seq_bits = bce.sum(dim=(0, 2)) / math.log(2.0)  # [B]
    return mean, per_seq_bits


def bit_errors(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Wrong bits per sequence ``[B]``: prediction ``sigmoid(logit) > 0.5`` (i.e. ``logit > 0``) against
    ``targets > 0.5``, counted on the scored steps (``mask`` ``[T, B]``) only."""
    wrong = (logits > 0) != (targets > 0.5)  # [T, B, C]
    return (wrong.float() * mask.unsqueeze(-1)).sum(dim=(0, 2))


@dataclass
class TrainConfig:
    """Options of :func:`train` (the CLI's ``--help`` repeats them)."""

    batch_size: int = 32
    """Sequences per optimiser step."""
    max_sequences: int = 200_000
    """Stop after this many training sequences."""
    max_minutes: float = 60.0
    """Stop after this much wall time (minutes)."""
    optimizer: str = "adam"
    """``adam`` or ``rmsprop`` (the paper: RMSProp with momentum 0.9)."""
    lr: float = 1e-3
    """Learning rate (the paper: 1e-4 with RMSProp; 3e-4..1e-3 with Adam converges faster here)."""
    momentum: float = 0.9
    """RMSProp momentum."""
    clip_value: float | None = 10.0
    """Element-wise gradient clip to (-v, v) as in the paper; None disables it."""
    clip_norm: float | None = None
    """Global gradient-norm clip; None disables it."""
    log_every: int = 50
    """Log one learning-curve point every this many batches."""
    early_stop_errors: float | None = 0.01
    """Stop when the mean training bit errors per sequence over the last ``window`` batches (at the full size
    range) is at most this; None disables early stopping."""
    window: int = 50
    """Batches averaged for early stopping and the curriculum."""
    curriculum: bool = False
    """Grow the largest training size from ``curriculum_start`` by ``curriculum_step`` each time the windowed
    bit errors per sequence fall below ``curriculum_threshold``."""
    curriculum_start: int = 4
    curriculum_step: int = 2
    curriculum_threshold: float = 0.5
    pg_coef: float = 1.0
    """Cores with discrete memory-access choices (``rl_access``): weight of the REINFORCE loss. The reward of step
    t is minus the cross-entropy (nats, summed over bits) of that step's output; the return is the reward-to-go;
    a learned linear baseline on the pre-choice controller output reduces variance."""
    entropy_coef: float = 0.01
    """Discrete-choice cores: weight of the entropy bonus of the choice distribution."""
    bptt_memory_slots: int = 0
    """Memory-efficient BPTT (Gruslys et al. 2016): with ``0 < slots < T`` the backward pass keeps at most this
    many core states and recomputes the rest (same gradients, less memory, more time); 0: plain BPTT. Cores
    without discrete choices."""
    bptt_segment_steps: int = 1
    """With ``bptt_memory_slots``: the longest stretch recomputed in one run (1: the paper's step by step)."""
    bptt_storage: str = "hidden"
    """With ``bptt_memory_slots``: hidden (BPTT-HSM), internal (BPTT-ISM) or mixed (BPTT-MSM)."""
    choices: str = "trained"
    """Discrete-choice cores: ``trained`` (sampled from the core's policy, trained by REINFORCE), ``random``
    (uniform, no choice loss) or ``oracle`` (the task's hand-written access sequence, :func:`oracle_choices`)."""
    seed: int = 0
    device: str = "cpu"


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, alpha=0.95, eps=1e-6)
    raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got {cfg.optimizer!r}")


def train(
    model: SequenceModel,
    task,
    cfg: TrainConfig,
    log: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``model`` on batches of ``task`` (see :mod:`envs.sequence_data`).

    Returns a dict with ``history`` (one point per ``log_every`` batches: sequences seen, wall seconds, mean loss
    per bit, cost in bits per sequence, bit errors per sequence, current largest size), ``sequences``, ``batches``,
    ``wall_s``, ``stopped`` (``early``, ``max_sequences`` or ``max_minutes``).
    """
    if cfg.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {cfg.batch_size}")
    if cfg.choices not in CHOICE_MODES:
        raise ValueError(f"choices must be one of {list(CHOICE_MODES)}, got {cfg.choices!r}")
    device = torch.device(cfg.device)
    model.to(device).train()
    discrete = has_discrete_choices(model.core)
    if cfg.bptt_memory_slots < 0 or cfg.bptt_segment_steps < 1:
        raise ValueError(f"bptt_memory_slots must be >= 0 and bptt_segment_steps >= 1, got {cfg.bptt_memory_slots} "
                         f"and {cfg.bptt_segment_steps}")
    if cfg.bptt_storage not in ("hidden", "internal", "mixed"):
        raise ValueError(f"bptt_storage must be hidden, internal or mixed, got {cfg.bptt_storage!r}")
    if cfg.bptt_memory_slots and discrete:
        raise ValueError("bptt_memory_slots: memory-efficient BPTT does not support cores with discrete choices "
                         "(rl_access); use 0")
    if cfg.choices != "trained" and not discrete:
        raise ValueError(f"choices={cfg.choices!r} needs a core with discrete access choices (rl_access), got "
                         f"{type(model.core).__name__}")
    params = list(model.parameters())
    baseline = None
    if discrete and cfg.choices == "trained":
        # b_t = V(h_t) on the part of y_t computed before the choice a_t (unbiased baseline)
        baseline = LinearBaseline(getattr(model.core, "pre_choice_size", model.core.output_size)).to(device)
        params += list(baseline.parameters())
    opt = _make_optimizer(params, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    choice_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # random choices: data stay those of the seed
    size_now = min(cfg.curriculum_start, task.max_size) if cfg.curriculum else task.max_size
    size_now = max(size_now, task.min_size)
    recent_err: deque[float] = deque(maxlen=cfg.window)
    acc = {"loss": 0.0, "bits": 0.0, "err": 0.0, "n": 0}
    history: list[dict] = []
    sequences = batches = 0
    t0 = time.perf_counter()
    stopped = "max_sequences"
    while sequences < cfg.max_sequences:
        batch: SequenceBatch = task.sample(cfg.batch_size, max_size=size_now, generator=gen, device=device)
        if discrete and cfg.choices == "trained":
            logits, loss, sup_loss, seq_bits = _reinforce_loss(model, baseline, batch, cfg)
        else:
            # plain cores; random or oracle choices, stored, so the loss is the supervised part alone (the RL
            # portion z_t enters no term: no choice gradient)
            logits = model(batch.inputs, stored_choices(model, task, batch, cfg.choices, choice_gen),
                           memory_slots=cfg.bptt_memory_slots, segment_steps=cfg.bptt_segment_steps,
                           storage=cfg.bptt_storage)
            loss, seq_bits = masked_bce(logits, batch.targets, batch.mask)
            sup_loss = loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
        if cfg.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()
        sequences += cfg.batch_size
        batches += 1
        with torch.no_grad():
            err = bit_errors(logits, batch.targets, batch.mask).mean().item()
        if not math.isfinite(sup_loss.item()):
            stopped = "non_finite_loss"
            break
        recent_err.append(err)
        acc["loss"] += sup_loss.item()  # the BCE per bit (without the REINFORCE terms of discrete cores)
        acc["bits"] += seq_bits.mean().item()
        acc["err"] += err
        acc["n"] += 1
        if batches % cfg.log_every == 0:
            n = acc["n"]
            point = {
                "sequences": sequences,
                "wall_s": round(time.perf_counter() - t0, 2),
                "loss": acc["loss"] / n,
                "cost_bits_per_seq": acc["bits"] / n,
                "bit_errors_per_seq": acc["err"] / n,
                "max_size": size_now,
            }
            history.append(point)
            acc = {"loss": 0.0, "bits": 0.0, "err": 0.0, "n": 0}
            if log is not None:
                log(point)
        windowed = sum(recent_err) / len(recent_err)
        if len(recent_err) == cfg.window:
            if size_now < task.max_size:
                if windowed < cfg.curriculum_threshold:
                    size_now = min(task.max_size, size_now + cfg.curriculum_step)
                    recent_err.clear()
            elif cfg.early_stop_errors is not None and windowed <= cfg.early_stop_errors:
                stopped = "early"
                break
        if time.perf_counter() - t0 > 60.0 * cfg.max_minutes:
            stopped = "max_minutes"
            break
    return {
        "history": history,
        "sequences": sequences,
        "batches": batches,
        "wall_s": round(time.perf_counter() - t0, 2),
        "stopped": stopped,
        "final_max_size": size_now,
        "config": asdict(cfg),
    }


def _reinforce_loss(
    model: SequenceModel, baseline: nn.Module, batch: SequenceBatch, cfg: TrainConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loss of a core with discrete access choices: supervised BCE (pathwise part, choices held fixed) + REINFORCE
    on the choices + baseline regression - entropy bonus. Returns ``(logits, loss, BCE per bit, cost bits per
    sequence)``."""
    core = model.core
    T, B, _ = batch.inputs.shape
    # one pass samples a_t ~ pi and keeps log pi(a_t) differentiable (supervised data: no separate rollout needed)
    ys, _, info = core.unroll_with_choices(batch.inputs, core.initial_state(B, device=batch.inputs.device))
    logits = model.readout(ys)  # [T, B, C]
    sup_loss, seq_bits = masked_bce(logits, batch.targets, batch.mask)
    with torch.no_grad():
        step_bce = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none").sum(-1)  # [T, B]
        rewards = -step_bce * batch.mask  # r_t = -cross-entropy of step t (0 outside the output phase)
        # steps up to each row's last scored step count; the padding after it does not
        t_idx = torch.arange(T, device=ys.device).unsqueeze(1)
        last = (batch.mask * t_idx).amax(0)  # [B]
        valid = (t_idx <= last).to(ys.dtype)  # [T, B]
        returns = reward_to_go(rewards, gamma=1.0)  # G_t = sum_{s >= t} r_s
    values = baseline(ys[..., : getattr(core, "pre_choice_size", core.output_size)].detach())  # [T, B]
    pg = reinforce_loss(info.log_prob, returns, values.detach(), mask=valid, reduction="mean")
    loss = (
        sup_loss
        + cfg.pg_coef * pg
        + baseline_loss(values, returns, valid)
        - cfg.entropy_coef * entropy_bonus(info.entropy, valid)
    )
    return logits, loss, sup_loss, seq_bits


@torch.no_grad()
def choice_usage(model: SequenceModel, batch: SequenceBatch) -> dict[str, dict[str, float]]:
    """Greedy (eval-mode) access-process frequencies of a discrete-choice core, split into the input phase (before
    the first scored step) and the output phase (scored steps): ``{"input": {name: fraction}, "output": ...}``."""
    core = model.core
    was = model.training
    model.eval()
    T, B, _ = batch.inputs.shape
    _, _, info = core.unroll_with_choices(batch.inputs, core.initial_state(B, device=batch.inputs.device), greedy=True)
    model.train(was)
    t_idx = torch.arange(T, device=batch.inputs.device).unsqueeze(1)
    first = torch.where(batch.mask > 0, t_idx, torch.full_like(t_idx, T)).amin(0)  # [B]
    phases = {"input": t_idx < first, "output": batch.mask > 0}
    out = {}
    for phase, m in phases.items():
        chosen = info.choice[m]
        out[phase] = {
            name: round((chosen == i).float().mean().item(), 4) for i, name in enumerate(core.choice_names)
        }
    return out


@torch.no_grad()
def oracle_agreement(model: SequenceModel, task, batch: SequenceBatch) -> dict[str, float]:
    """How close a discrete-choice core's greedy (eval-mode) choices are to the task's oracle access sequence
    (:func:`oracle_choices`): the fraction of steps with the oracle's process in the input phase (before the first
    scored step), in the output phase (scored steps), and the fraction of rows whose whole sequence up to the last
    scored step is the oracle's. Other access sequences may solve the task too; this is a description, not a score.
    """
    core = model.core
    oracle = oracle_choices(task, batch, core.choice_names)  # [T, B]
    was = model.training
    model.eval()
    T, B, _ = batch.inputs.shape
    _, _, info = core.unroll_with_choices(batch.inputs, core.initial_state(B, device=batch.inputs.device), greedy=True)
    model.train(was)
    same = info.choice == oracle  # [T, B]
    t_idx = torch.arange(T, device=batch.inputs.device).unsqueeze(1)
    first = torch.where(batch.mask > 0, t_idx, torch.full_like(t_idx, T)).amin(0)  # [B]
    last = (batch.mask * t_idx).amax(0)  # [B]
    input_phase, output_phase = t_idx < first, batch.mask > 0
    return {
        "input": round(same[input_phase].float().mean().item(), 4),
        "output": round(same[output_phase].float().mean().item(), 4),
        "whole_sequence": round((same | (t_idx > last)).all(0).float().mean().item(), 4),
    }


@torch.no_grad()
def evaluate(
    model: SequenceModel,
    task,
    sizes: Sequence[int],
    num_sequences: int = 256,
    batch_size: int = 128,
    seed: int = 12345,
    device: str | torch.device = "cpu",
    choices: str = "trained",
) -> dict[int, dict[str, float]]:
    """Bit errors per sequence at fixed sizes (length generalisation).

    Returns ``{size: {"mean": ..., "median": ..., "max": ..., "perfect_fraction": ...}}`` over ``num_sequences``
    fresh sequences per size (a fixed ``seed``, so every model sees the same test sequences). ``choices``
    (discrete-choice cores, :data:`CHOICE_MODES`): ``trained`` takes the greedy choices (eval mode), ``random``
    uniform ones drawn from the same seeded generator, ``oracle`` the task's oracle sequence.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    choice_gen = torch.Generator().manual_seed(seed + 1_000_003)  # its own stream: same test sequences in every mode
    out: dict[int, dict[str, float]] = {}
    for size in sizes:
        errs = []
        left = num_sequences
        while left > 0:
            b = min(batch_size, left)
            batch = task.sample(b, size=int(size), generator=gen, device=device)
            logits = model(batch.inputs, stored_choices(model, task, batch, choices, choice_gen))
            errs.append(bit_errors(logits, batch.targets, batch.mask).cpu())
            left -= b
        e = torch.cat(errs)
        out[int(size)] = {
            "mean": e.mean().item(),
            "median": e.median().item(),
            "max": e.max().item(),
            "perfect_fraction": (e == 0).float().mean().item(),
        }
    model.train(was_training)
    return out


def _named_fields(tree: Any, prefix: str = "") -> list[tuple[str, Tensor]]:
    """(dotted field name, tensor) for every leaf of a nested NamedTuple state."""
    if isinstance(tree, Tensor):
        return [(prefix, tree)]
    out: list[tuple[str, Tensor]] = []
    if isinstance(tree, tuple):
        names = getattr(tree, "_fields", None) or [str(i) for i in range(len(tree))]
        for name, sub in zip(names, tree):
            out.extend(_named_fields(sub, f"{prefix}.{name}" if prefix else name))
    return out


@torch.no_grad()
def record_weightings(model: SequenceModel, batch: SequenceBatch, row: int = 0) -> dict[str, Any]:
    """Read and write weightings over one sequence, read from the core state after every step.

    Looks for state fields whose name contains ``weight`` (e.g. ``read_weights`` ``[B, H, N]``,
    ``write_weights`` ``[B, N]`` or ``[B, H, N]``); returns ``{"fields": {name: [T][H][N] lists}, "inputs":
    [T][C], "targets": ..., "outputs": sigmoid outputs, "mask": [T]}`` for batch row ``row``.
    """
    model.eval()
    logits, states = model.forward_with_states(batch.inputs)
    fields: dict[str, list] = {}
    for name, _ in _named_fields(states[0]):
        if "weight" in name.split(".")[-1]:
            fields[name] = []
    for s in states:
        for name, leaf in _named_fields(s):
            if name in fields:
                w = leaf[row].float()
                if w.dim() == 1:
                    w = w.unsqueeze(0)  # one head: [1, N]
                fields[name].append(w.reshape(-1, w.shape[-1]).tolist())
    return {
        "fields": fields,
        "inputs": batch.inputs[:, row].tolist(),
        "targets": batch.targets[:, row].tolist(),
        "outputs": torch.sigmoid(logits[:, row]).tolist(),
        "mask": batch.mask[:, row].tolist(),
    }
