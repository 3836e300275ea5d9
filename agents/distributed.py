"""One agent trained over several processes with ``torch.distributed`` (started by ``torchrun``).

``torchrun --nproc-per-node K scripts/train.py ...`` starts K copies of the training script with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` in their environment. Each copy (a *rank*) steps its own ``--num-envs`` envs on its own
device; together they train one policy:

* parameters and buffers are broadcast from rank 0 at the start (:func:`broadcast_module`), so every rank starts
  from rank 0's weights, whatever it built or loaded;
* every minibatch, each rank computes the PPO loss of its share of the minibatch (``num_sequences / num_minibatches``
  of its own sequences) and the gradients are averaged over the ranks with one flat all-reduce
  (:func:`allreduce_gradients`) before clipping and the Adam step. With equal shares per rank, the average of the
  ranks' mean losses is the mean loss of the whole minibatch, so the averaged gradient is the gradient of one
  process holding all K shares; every rank then takes the same step from the same state and the parameters stay
  bit-identical (an all-reduce hands every rank the same bits);
* statistics that PPO computes over a batch are computed over the global batch: advantage normalisation
  (:func:`global_mean_std`), the observation normaliser and the reward scaler's return variance
  (:func:`global_moments`, one small all-reduce per env step when ``--normalize-obs`` or ``--norm-reward`` is on);
* rank 0 alone writes logs and checkpoints; decisions that could differ between ranks (a signal, the time budget,
  ``--target-kl``, a non-finite loss) are agreed by a collective, so every rank stops at the same update.

A rank that dies (killed, out of memory, an exception) closes its connections: a collective on another rank then
fails at once (gloo: "Connection reset by peer"), or after ``--dist-timeout`` seconds when a peer hangs, and that
rank stops with :class:`PeerLostError`; ``torchrun`` stops the others and exits non-zero. Checkpoints are written
atomically by rank 0 (:mod:`agents.checkpoint`), so the last one written before the failure loads.

Backends: ``gloo`` for CPU tensors; on a machine with CUDA the group is ``cpu:gloo,cuda:nccl`` (nccl for the
gradients of a policy on ``cuda:LOCAL_RANK``, gloo for small host-side objects), so the group can be joined before
the device is known.
"""

from __future__ import annotations

import datetime
import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")

RANK_SEED_STRIDE = 10_007
"""Rank ``r`` seeds its envs and its action sampling with ``seed + RANK_SEED_STRIDE * r`` (distinct streams per rank;
a stride, not ``seed + r``, so that rank 1 of ``--seed 1`` does not replay rank 0 of ``--seed 2`` in a study)."""


class PeerLostError(RuntimeError):
    """A collective failed: another rank of the run died, hung past the timeout or stopped with an error."""


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run: ``world_size`` processes, this one is ``rank`` (``local_rank`` on its
    machine). ``Dist()`` is a single process (no process group)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs and checkpoints and prints."""
        return self.rank == 0


def torchrun_env() -> Dist | None:
    """The ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` that ``torchrun`` sets, or None when they are not set;
    ``ValueError`` in one line when they are malformed."""
    if "WORLD_SIZE" not in os.environ and "RANK" not in os.environ:
        return None
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        text = os.environ.get(name, "0" if name == "LOCAL_RANK" else "")
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer (set by torchrun; "
                             "start the script with torchrun or unset WORLD_SIZE and RANK)") from None
    w, r, lr = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if w < 1 or not 0 <= r < w or lr < 0:
        raise ValueError(f"WORLD_SIZE={w}, RANK={r}, LOCAL_RANK={lr} are not valid: expected 0 <= RANK < WORLD_SIZE")
    return Dist(world_size=w, rank=r, local_rank=lr)


def init_from_env(timeout_s: float = 600.0) -> Dist:
    """Join the process group that ``torchrun`` describes (once; later calls return the same :class:`Dist`).

    Without torchrun's variables, or with ``WORLD_SIZE=1``, no group is made and ``Dist()`` is returned. The group's
    backend is ``gloo`` (``cpu:gloo,cuda:nccl`` where CUDA is available); ``timeout_s`` is how long a collective
    waits for a rank that does not answer before it fails.
    """
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))
    env = torchrun_env()
    if env is None or env.world_size == 1:
        return Dist()
    if not dist.is_available():
        raise ValueError("torchrun started this process but this torch build has no torch.distributed")
    if not timeout_s > 0:
        raise ValueError(f"--dist-timeout {timeout_s!r} is not valid: expected seconds > 0")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return env


def shutdown(barrier: bool = True) -> None:
    """Leave the process group (if one was joined); safe to call after a peer died. With ``barrier`` the ranks
    first wait for each other, so no rank tears its connections down while another still uses them."""
    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                cpu_barrier()
        except Exception:  # noqa: BLE001  a peer is gone: nothing to wait for
            pass
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001  a broken group: nothing left to tear down cleanly
            pass


def cpu_barrier() -> None:
    """Wait until every rank gets here: an all-reduce of one number on the CPU (gloo), so that no GPU and no
    nccl communicator is touched, whatever the device of the run."""
    _collective(dist.all_reduce, torch.zeros(1))


def exit_now(code: int) -> None:
    """End a process that was part of a run over several processes: flush stdout and stderr, then ``os._exit``.

    The interpreter's normal teardown after :func:`shutdown` sometimes aborts in torch's gloo backend (SIGABRT,
    "terminate called without an active exception", in about half of the 2-process runs on a loaded machine with
    torch 2.13), which torchrun then reports as a failed run although everything was written. Call this last, when
    files are closed (the checkpoint is fsynced by then)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001  a closed pipe: nothing more to say
            pass
    os._exit(code)


def rank_device(device: str, ctx: Dist) -> torch.device:
    """The device of this rank for ``--device``: as :func:`agents.ppo.resolve_device` for one process; under
    torchrun ``auto``/``cuda`` mean ``cuda:LOCAL_RANK`` (one GPU per process) and ``cpu`` the CPU. ``ValueError``
    for an explicit ``cuda:i`` under torchrun (each process picks its GPU from LOCAL_RANK)."""
    from .ppo import resolve_device

    if not ctx.enabled:
        return resolve_device(device)
    dev = resolve_device(device)
    if dev.type != "cuda":
        return dev
    if device not in ("auto", "cuda"):
        raise ValueError(f"--device {device!r}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda "
                         "(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if ctx.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {ctx.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                         "start at most that many processes per node (--nproc-per-node)")
    dev = torch.device("cuda", ctx.local_rank)
    torch.cuda.set_device(dev)
    return dev


# ============================================================================================= host-side objects
def on_rank0(ctx: Dist, fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone, its result (or the exception it raised) handed to every rank.

    Used for what touches the run directory (reading and checking a checkpoint, creating directories). An
    exception is re-raised on every rank with ``from_rank0 = True`` set on it (the CLI prints it on rank 0 only).
    A single process just calls ``fn``.
    """
    if not ctx.enabled:
        return fn()
    box: list[Any] = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001  handed to the other ranks, re-raised below
            try:
                pickle.dumps(e)
            except Exception:  # noqa: BLE001  an exception that cannot travel: its type family and message do
                e = (ValueError if isinstance(e, ValueError) else RuntimeError)(str(e))
            box[0] = ("error", e)
    _collective(dist.broadcast_object_list, box, src=0, device=torch.device("cpu"))
    kind, value = box[0]
    if kind == "error":
        value.from_rank0 = True
        raise value
    return value


def _collective(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a collective; a failure (a dead or hung peer) becomes :class:`PeerLostError` with its first line."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:  # gloo raises RuntimeError; nccl/store errors are DistError, a RuntimeError too
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PeerLostError(first[:300]) from None


# ================================================================================================= gradients
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers (the whole ``state_dict``) into ``module`` on every rank."""
    with torch.no_grad():
        for t in module.state_dict().values():  # detached tensors sharing the parameters' storage
            _collective(dist.broadcast, t, src=src)


def allreduce_gradients(params: Iterable[Tensor], world_size: int, extra: Tensor) -> Tensor:
    """Average the gradients of ``params`` over the ranks in place, with one flat all-reduce per dtype; returns
    the rank mean of ``extra`` (a few values reduced in the same call, e.g. the loss).

    ``grad_i <- (1/K) sum_r grad_i^(r)``. A parameter without a gradient on a rank counts as zeros there; one
    without a gradient on every rank keeps ``grad = None`` (Adam then skips it, as in one process). ``extra``
    ``[E]`` (any float shape) rides in the first bucket. One host synchronisation (the gradient flags).
    """
    params = [p for p in params if p.requires_grad]
    groups: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    extra_out = None
    for i, (dtype, ps) in enumerate(groups.items()):
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        has = torch.tensor([float(p.grad is not None) for p in ps], dtype=dtype, device=ps[0].device)  # [P]
        tail = [has] + ([extra.detach().reshape(-1).to(dtype=dtype, device=ps[0].device)] if i == 0 else [])
        flat = torch.cat([g.reshape(-1) for g in grads] + tail)  # [sum numel + P (+ E)]
        _collective(dist.all_reduce, flat)  # SUM over ranks: every rank receives the same bits
        n = sum(p.numel() for p in ps)
        flags = flat[n : n + len(ps)].cpu().tolist()
        if i == 0:
            extra_out = (flat[n + len(ps) :] / world_size).reshape(extra.shape).to(extra.dtype)
        offset = 0
        for p, f in zip(ps, flags):
            k = p.numel()
            if f > 0:
                p.grad = (flat[offset : offset + k] / world_size).view_as(p)
            offset += k
    if extra_out is None:  # no parameter needs a gradient
        extra_out = allreduce_mean(extra.detach())
    return extra_out


# ================================================================================================ statistics
def allreduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over the ranks (same shape; a new tensor)."""
    y = x.detach().clone()
    _collective(dist.all_reduce, y)
    return y / dist.get_world_size()


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag True on every rank when it is True on any rank (one all-reduce), e.g. "a signal arrived" or "the
    time budget is spent", so that every rank makes the same decision."""
    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    _collective(dist.all_reduce, t, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())


def sum_episode_stats(stats: Any) -> None:
    """Replace the finished-episode sums of an :class:`agents.env_adapter.EpisodeStats` by their sums over the
    ranks (one all-reduce), so that :meth:`pop` gives the means over every rank's episodes."""
    sums = stats.sums()
    t = torch.stack([s.float() for s in sums])  # [5]
    _collective(dist.all_reduce, t)
    for s, total in zip(sums, t):
        s.copy_(total)


def agree_max(value: float) -> float:
    """The largest ``value`` over the ranks (e.g. elapsed seconds, so every rank anneals the learning rate alike)."""
    t = torch.tensor([float(value)], dtype=torch.float64)
    _collective(dist.all_reduce, t, op=dist.ReduceOp.MAX)
    return float(t.item())


def global_moments(x: Tensor, shift: Tensor) -> tuple[int, Tensor, Tensor]:
    """Count, mean and (biased) variance along dim 0 of ``x`` ``[B, ...]`` over every rank's ``x`` together.

    Every rank must pass the same ``B`` and the same ``shift`` ``[...]`` (the running mean, identical on all
    ranks): the sums of ``d = x - shift`` and ``d^2`` are all-reduced in float64 (one call) and
    ``mean = shift + S1 / N``, ``var = S2 / N - (S1 / N)^2`` with ``N = B K``; shifting by a mean close to the
    data's keeps the one-pass variance accurate. Returns ``N`` (a Python int), ``mean`` and ``var`` ``[...]`` in
    ``x``'s dtype, identical on every rank.
    """
    B = x.shape[0]
    N = B * dist.get_world_size()
    d = x.double() - shift.double()  # [B, ...]
    s = torch.stack([d.sum(0), (d * d).sum(0)])  # [2, ...]
    _collective(dist.all_reduce, s)
    m = s[0] / N
    var = (s[1] / N - m * m).clamp_min(0.0)
    return N, (shift.double() + m).to(x.dtype), var.to(x.dtype)


def global_mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased standard deviation of all elements of ``x`` over every rank's ``x`` (same numel on each
    rank); float64 sums, one all-reduce. What ``x.mean()``, ``x.std()`` of the concatenation would give."""
    xd = x.detach().double().reshape(-1)
    n = xd.numel() * dist.get_world_size()
    s = torch.stack([xd.sum(), (xd * xd).sum()])
    _collective(dist.all_reduce, s)
    mean = s[0] / n
    var = ((s[1] - n * mean * mean) / max(n - 1, 1)).clamp_min(0.0)
    return mean.to(x.dtype), var.sqrt().to(x.dtype)


def update_obs_normalizer(obs_norm: nn.Module, obs: Any) -> None:
    """Fold every rank's observation batch ``[B, ...]`` into an :class:`agents.policy.ObsNormalizer`'s running
    statistics, exactly the update one process would make with the concatenated batch ``[K B, ...]`` (Chan et al.'s
    parallel update with the global batch's count, mean and variance from :func:`global_moments`). Identical on
    every rank."""
    from .policy import _get_path

    n = None
    with torch.no_grad():
        for path in obs_norm.leaves:
            x = _get_path(obs, path).float()  # [B, *shape]
            mean, var = obs_norm._stats(path)
            n, b_mean, b_var = global_moments(x, mean)
            tot = obs_norm.count + n
            delta = b_mean - mean
            mean.add_(delta * n / tot)
            var.copy_((var * obs_norm.count + b_var * n + delta.pow(2) * obs_norm.count * n / tot) / tot)
        if n is not None:
            obs_norm.count.add_(n)


def rng_states(ctx: Dist) -> list[Tensor]:
    """Every rank's CPU RNG state (``torch.get_rng_state()``), in rank order, on every rank."""
    mine = torch.get_rng_state()
    if not ctx.enabled:
        return [mine]
    out = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    _collective(dist.all_gather, out, mine)
    return out


def max_param_difference(module: nn.Module) -> float:
    """The largest difference of any parameter or float buffer between the ranks (0.0 when they are identical
    bit for bit); two all-reduces of the flattened state."""
    flat = torch.cat([t.detach().double().reshape(-1) for t in module.state_dict().values()
                      if t.is_floating_point()])
    hi, lo = flat.clone(), flat.clone()
    _collective(dist.all_reduce, hi, op=dist.ReduceOp.MAX)
    _collective(dist.all_reduce, lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max()) if flat.numel() else 0.0


def same_on_all_ranks(value: int) -> bool:
    """Whether an integer (e.g. the number of envs) is the same on every rank."""
    t = torch.tensor([float(value), -float(value)], dtype=torch.float64)
    _collective(dist.all_reduce, t, op=dist.ReduceOp.MAX)
    return t[0].item() == value and -t[1].item() == value
