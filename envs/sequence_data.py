"""Batched generators of the NTM paper's algorithmic tasks in supervised form (Graves et al. 2014, section 4).

Every task returns a :class:`SequenceBatch`, time-major and padded to the longest row of the batch:

* ``inputs``  ``[T, B, input_size]``: what the model sees at each step (zeros after a row's end),
* ``targets`` ``[T, B, target_size]``: the bits to predict (zeros where nothing is scored),
* ``mask``    ``[T, B]`` float, 1 on the output phase of each row: the loss and the bit errors count only there,
* ``sizes``   ``[B]`` long, the task's size per row (sequence length, or number of items for associative recall).

Every task has ``input_size``, ``target_size``, ``min_size``/``max_size`` (the training range of the row size) and
``sample(batch_size, size=None, max_size=None, generator=None, device=None)``. Rows of one batch have different sizes
(uniform in ``[min_size, max_size]``) unless ``size`` fixes them, which is how the length-generalisation tests build
batches of one length; ``max_size`` lowers the upper bound (a curriculum).

Layouts (``nb`` = ``num_bits``; "step" = index along ``T``):

* Copy: step 0 start flag (channel ``nb``); steps ``1..L`` the ``L`` random bit vectors; step ``L+1`` delimiter
  flag (channel ``nb+1``); steps ``L+2..2L+1`` zero input while the model writes the ``L`` vectors back.
  ``T_row = 2L + 2``.
* Repeat copy: step 0 start flag (channel ``nb``); steps ``1..L`` the vectors; step ``L+1`` the repeat count
  normalised by ``max_repeats`` on channel ``nb+1`` (it doubles as the delimiter); then ``R * L`` output steps with
  the sequence ``R`` times and one more step where only the end-marker target channel (``nb``) is 1.
  ``T_row = L + 3 + R L``; ``target_size = nb + 1``.
* Associative recall: ``n`` items of ``item_length`` vectors, each item preceded by an item-delimiter step (channel
  ``nb``); then a query delimiter (channel ``nb+1``), a copy of item ``q`` (uniform in ``0..n-2``), another query
  delimiter, and ``item_length`` zero-input steps where the target is item ``q+1``.
  ``T_row = (item_length + 1) n + 2 item_length + 2``.

Pure tensor code (no gymnasium, no ``memory_cores``); a ``torch.Generator`` makes batches reproducible.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["SequenceBatch", "CopyTask", "RepeatCopyTask", "AssociativeRecallTask", "make_task", "TASKS"]


class SequenceBatch(NamedTuple):
    """One batch of a sequence task (see the module docstring for the layouts)."""

    inputs: Tensor  # [T, B, input_size]
    targets: Tensor  # [T, B, target_size]
    mask: Tensor  # [T, B] float, 1 where the output is scored
    sizes: Tensor  # [B] long: sequence length (copy tasks) or number of items (associative recall)


def _check_range(name_min: str, lo: int, name_max: str, hi: int, floor: int) -> None:
    if not isinstance(lo, int) or lo < floor:
        raise ValueError(f"{name_min} must be an int >= {floor}, got {lo!r}")
    if not isinstance(hi, int) or hi < lo:
        raise ValueError(f"{name_max} must be an int >= {name_min} ({lo}), got {hi!r}")


def _sizes(batch_size: int, lo: int, hi: int, fixed: int | None, generator: torch.Generator | None) -> Tensor:
    """``[B]`` sizes: all equal to ``fixed`` when given, else uniform in ``[lo, hi]``."""
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if fixed is not None:
        return torch.full((batch_size,), int(fixed), dtype=torch.long)
    return torch.randint(lo, hi + 1, (batch_size,), generator=generator)


def _bits(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Random {0, 1} float tensor of ``shape`` (p = 0.5 per bit, as in the paper)."""
    return torch.randint(0, 2, shape, generator=generator).float()


class CopyTask:
    """Copy (NTM paper 4.1): read ``L`` random ``num_bits``-bit vectors, then write them back after a delimiter.

    Args:
        num_bits: bits per vector (8 in the paper).
        min_length: shortest training sequence (1 in the paper).
        max_length: longest training sequence (20 in the paper).
    """

    name = "copy"

    def __init__(self, num_bits: int = 8, min_length: int = 1, max_length: int = 20) -> None:
        if not isinstance(num_bits, int) or num_bits <= 0:
            raise ValueError(f"num_bits must be a positive int, got {num_bits!r}")
        _check_range("min_length", min_length, "max_length", max_length, 1)
        self.num_bits, self.min_length, self.max_length = num_bits, min_length, max_length
        self.input_size = num_bits + 2  # bits + start flag + delimiter flag
        self.target_size = num_bits
        self.min_size, self.max_size = min_length, max_length  # the size of a row is its length L

    def sample(
        self,
        batch_size: int,
        size: int | None = None,
        max_size: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SequenceBatch:
        """A batch. ``size`` fixes every row's length L; ``max_size`` lowers the upper bound of L (curriculum)."""
        hi = self.max_length if max_size is None else max_size
        L = _sizes(batch_size, self.min_length, hi, size, generator)  # [B]
        nb, B = self.num_bits, batch_size
        Lmax = int(L.max())
        T = 2 * Lmax + 2
        bits = _bits((Lmax, B, nb), generator)  # [Lmax, B, nb]; row b uses bits[:L[b], b]
        t = torch.arange(T).unsqueeze(1)  # [T, 1]
        inputs = torch.zeros(T, B, nb + 2)
        targets = torch.zeros(T, B, nb)
        # input phase: steps 1..L carry bits[t-1]
        in_phase = (t >= 1) & (t <= L)  # [T, B]
        src = (t - 1).clamp(0, Lmax - 1).expand(T, B)
        inputs[..., :nb] = torch.gather(bits, 0, src.unsqueeze(-1).expand(T, B, nb)) * in_phase.unsqueeze(-1)
        inputs[0, :, nb] = 1.0  # start flag
        inputs[L + 1, torch.arange(B), nb + 1] = 1.0  # delimiter flag
        # output phase: steps L+2..2L+1 want bits[t-L-2]
        out_phase = (t >= L + 2) & (t <= 2 * L + 1)  # [T, B]
        src = (t - L - 2).clamp(0, Lmax - 1)
        targets[:] = torch.gather(bits, 0, src.unsqueeze(-1).expand(T, B, nb)) * out_phase.unsqueeze(-1)
        return _to(SequenceBatch(inputs, targets, out_phase.float(), L), device)


class RepeatCopyTask:
    """Repeat copy (NTM paper 4.2): read a sequence and a repeat count, write the sequence that many times and then
    an end marker.

    Args:
        num_bits: bits per vector (8 in the paper).
        min_length, max_length: sequence length range (1..10 in the paper).
        min_repeats, max_repeats: repeat count range (1..10 in the paper); the count is given as
            ``repeats / max_repeats`` so that it stays in [0, 1] (the paper normalises it too).
    """

    name = "repeat_copy"

    def __init__(
        self, num_bits: int = 8, min_length: int = 1, max_length: int = 10, min_repeats: int = 1, max_repeats: int = 10
    ) -> None:
        if not isinstance(num_bits, int) or num_bits <= 0:
            raise ValueError(f"num_bits must be a positive int, got {num_bits!r}")
        _check_range("min_length", min_length, "max_length", max_length, 1)
        _check_range("min_repeats", min_repeats, "max_repeats", max_repeats, 1)
        self.num_bits, self.min_length, self.max_length = num_bits, min_length, max_length
        self.min_repeats, self.max_repeats = min_repeats, max_repeats
        self.input_size = num_bits + 2  # bits + start flag + normalised repeat count
        self.target_size = num_bits + 1  # bits + end marker
        self.min_size, self.max_size = min_length, max_length  # the size of a row is its length L

    def sample(
        self,
        batch_size: int,
        size: int | None = None,
        max_size: int | None = None,
        repeats: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SequenceBatch:
        """A batch. ``size`` fixes every row's length L, ``repeats`` its repeat count R; ``max_size`` lowers the
        upper bound of L (curriculum)."""
        hi = self.max_length if max_size is None else max_size
        L = _sizes(batch_size, self.min_length, hi, size, generator)  # [B]
        R = _sizes(batch_size, self.min_repeats, self.max_repeats, repeats, generator)  # [B]
        nb, B = self.num_bits, batch_size
        Lmax = int(L.max())
        T = int((L + 3 + R * L).max())
        bits = _bits((Lmax, B, nb), generator)
        t = torch.arange(T).unsqueeze(1)  # [T, 1]
        rows = torch.arange(B)
        inputs = torch.zeros(T, B, nb + 2)
        targets = torch.zeros(T, B, nb + 1)
        in_phase = (t >= 1) & (t <= L)
        src = (t - 1).clamp(0, Lmax - 1).expand(T, B)
        inputs[..., :nb] = torch.gather(bits, 0, src.unsqueeze(-1).expand(T, B, nb)) * in_phase.unsqueeze(-1)
        inputs[0, :, nb] = 1.0  # start flag
        inputs[L + 1, rows, nb + 1] = R.float() / self.max_repeats  # repeat count, also the delimiter
        # output: steps L+2 .. L+1+R*L repeat bits[(t-L-2) mod L]; step L+2+R*L is the end marker
        copy_phase = (t >= L + 2) & (t <= L + 1 + R * L)
        src = torch.remainder((t - L - 2).clamp(min=0), L).clamp(max=Lmax - 1)
        targets[..., :nb] = torch.gather(bits, 0, src.unsqueeze(-1).expand(T, B, nb)) * copy_phase.unsqueeze(-1)
        end = L + 2 + R * L  # [B]
        targets[end, rows, nb] = 1.0
        mask = (t >= L + 2) & (t <= end)
        return _to(SequenceBatch(inputs, targets, mask.float(), L), device)


class AssociativeRecallTask:
    """Associative recall (NTM paper 4.3): after a list of items, a query item is shown and the model must answer
    with the item that followed it in the list.

    Args:
        num_bits: bits per vector (6 in the paper).
        item_length: vectors per item (3 in the paper).
        min_items, max_items: number of items (2..6 in the paper).
    """

    name = "associative_recall"

    def __init__(self, num_bits: int = 6, item_length: int = 3, min_items: int = 2, max_items: int = 6) -> None:
        if not isinstance(num_bits, int) or num_bits <= 0:
            raise ValueError(f"num_bits must be a positive int, got {num_bits!r}")
        if not isinstance(item_length, int) or item_length <= 0:
            raise ValueError(f"item_length must be a positive int, got {item_length!r}")
        _check_range("min_items", min_items, "max_items", max_items, 2)
        self.num_bits, self.item_length = num_bits, item_length
        self.min_items, self.max_items = min_items, max_items
        self.input_size = num_bits + 2  # bits + item delimiter + query delimiter
        self.target_size = num_bits
        self.min_size, self.max_size = min_items, max_items  # the size of a row is its number of items n

    def sample(
        self,
        batch_size: int,
        size: int | None = None,
        max_size: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SequenceBatch:
        """A batch. ``size`` fixes every row's number of items n; ``max_size`` lowers the upper bound of n."""
        hi = self.max_items if max_size is None else max_size
        if size is not None and size < 2:
            raise ValueError(f"size (number of items) must be >= 2 (one to query, one to answer), got {size}")
        n = _sizes(batch_size, self.min_items, hi, size, generator)  # [B]
        nb, K, B = self.num_bits, self.item_length, batch_size
        nmax = int(n.max())
        T_row = (K + 1) * n + 2 * K + 2  # [B]
        T = int(T_row.max())
        data = _bits((nmax, K, B, nb), generator)  # item i, vector k
        # query index q in 0..n-2 per row
        q = (torch.rand(B, generator=generator) * (n - 1).float()).long().clamp(max=n - 2)
        rows = torch.arange(B)
        inputs = torch.zeros(T, B, nb + 2)
        targets = torch.zeros(T, B, nb)
        mask = torch.zeros(T, B)
        for i in range(nmax):
            on = i < n  # rows that have item i
            start = (K + 1) * i
            inputs[start, :, nb] = on.float()  # item delimiter
            inputs[start + 1 : start + 1 + K, :, :nb] = data[i] * on.float().reshape(1, B, 1)
        qs = (K + 1) * n  # query delimiter step per row
        inputs[qs, rows, nb + 1] = 1.0
        inputs[qs + K + 1, rows, nb + 1] = 1.0
        for k in range(K):
            inputs[qs + 1 + k, rows, :nb] = data[q, k, rows]  # the query item
            targets[qs + K + 2 + k, rows] = data[q + 1, k, rows]  # the answer: the next item
            mask[qs + K + 2 + k, rows] = 1.0
        return _to(SequenceBatch(inputs, targets, mask, n), device)


def _to(batch: SequenceBatch, device: torch.device | str | None) -> SequenceBatch:
    if device is None:
        return batch
    return SequenceBatch(*(t.to(device) for t in batch))


TASKS = {"copy": CopyTask, "repeat_copy": RepeatCopyTask, "associative_recall": AssociativeRecallTask}

from .babi_tasks import BabiSingleFact, BabiThreeFacts, BabiTwoFacts  # noqa: E402  (bAbI-style tasks 1-3)

TASKS.update({"babi1": BabiSingleFact, "babi2": BabiTwoFacts, "babi3": BabiThreeFacts})


def make_task(name: str, **kwargs) -> CopyTask | RepeatCopyTask | AssociativeRecallTask:
    """Build a task by name (``copy``, ``repeat_copy``, ``associative_recall``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASKS)}")
    return TASKS[name](**kwargs)


from . import paper_tasks  # noqa: E402,F401  (adds parity, addition, pattern_retrieval to TASKS)
