"""Supervised tasks of the Grid LSTM and energy-based memory papers, in the :class:`SequenceBatch` form of
:mod:`envs.sequence_data` (time-major, padded, a mask on the scored steps, targets as bits for a BCE readout).

* :class:`ParityTask`: k-bit parity (Kalchbrenner et al. 2016, section 4.1). The k bits arrive *at once*, in one
  step, "through a single projection" as in the paper, so the task tests depth, not recurrence: ``T = 1``.
* :class:`AdditionTask`: integer addition (Kalchbrenner et al. 2016, section 4.2), digit by digit.
* :class:`PatternRetrievalTask`: store random binary patterns, then retrieve each from a corrupted query (the
  associative retrieval of Bartunov et al. 2020, with random bit strings in place of images).

Every task has ``name``, ``input_size``, ``target_size``, ``min_size``/``max_size`` and
``sample(batch_size, size=None, max_size=None, generator=None, device=None)`` like the tasks of
:mod:`envs.sequence_data`, so ``agents.supervised.train``/``evaluate`` and ``scripts/train_supervised.py`` run them
unchanged. Pure tensor code; a ``torch.Generator`` makes batches reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sequence_data import TASKS, SequenceBatch, _check_range, _sizes, _to

__all__ = ["ParityTask", "AdditionTask", "PatternRetrievalTask"]


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class ParityTask:
    """k-bit parity: one step whose input is ``k`` random bits (as -1/+1) and whose target is their parity (1 when
    the number of ones is odd). ``T = 1``; ``sizes`` is ``k`` for every row.

    Args:
        num_bits: k (the paper reaches 250 with deep 1-LSTM grids).
    """

    name = "parity"

    def __init__(self, num_bits: int = 16) -> None:
        _positive_int("num_bits", num_bits)
        self.num_bits = num_bits
        self.input_size, self.target_size = num_bits, 1
        self.min_size = self.max_size = num_bits

    def sample(
        self,
        batch_size: int,
        size: int | None = None,
        max_size: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SequenceBatch:
        """A batch ``[1, B, k]``. ``size``/``max_size`` may only repeat ``k`` (the input width is fixed)."""
        for name, value in (("size", size), ("max_size", max_size)):
            if value is not None and value != self.num_bits:
                raise ValueError(f"{name} must be None or num_bits={self.num_bits} for parity, got {value!r}")
        k = _sizes(batch_size, self.num_bits, self.num_bits, None, generator)  # [B], all k
        bits = torch.randint(0, 2, (1, batch_size, self.num_bits), generator=generator)  # [1, B, k]
        inputs = 2.0 * bits.float() - 1.0
        targets = (bits.sum(-1, keepdim=True) % 2).float()  # [1, B, 1]
        return _to(SequenceBatch(inputs, targets, torch.ones(1, batch_size), k), device)


class AdditionTask:
    """Addition of two ``n``-digit integers, digit by digit, least significant digit first.

    Layout of a row with ``n`` digits (channels: ``base`` one-hot digit, then two flags)::

        step     0 .. n-1      n        n+1 .. 2n     2n+1     2n+2 .. 3n+2
        input    digits of a   sep      digits of b   go       nothing
        target                                                 the n+1 digits of a + b (one-hot)

    ``T_row = 3n + 3``; the mask covers the ``n + 1`` answer steps; ``sizes`` is ``n``. A sequence is right when all
    its answer bits are (``perfect_fraction`` in :func:`agents.supervised.evaluate` is the accuracy of whole sums,
    the paper's measure). Digits are uniform, so leading zeros occur.

    Args:
        min_digits, max_digits: range of ``n`` (the paper: 15 digits).
        base: digit base (10).
    """

    name = "addition"

    def __init__(self, min_digits: int = 4, max_digits: int = 4, base: int = 10) -> None:
        _check_range("min_digits", min_digits, "max_digits", max_digits, 1)
        if not isinstance(base, int) or base < 2:
            raise ValueError(f"base must be an int >= 2, got {base!r}")
        self.min_digits, self.max_digits, self.base = min_digits, max_digits, base
        self.input_size = base + 2  # digit one-hot + separator flag + go flag
        self.target_size = base
        self.min_size, self.max_size = min_digits, max_digits

    def sample(
        self,
        batch_size: int,
        size: int | None = None,
        max_size: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SequenceBatch:
        hi = self.max_digits if max_size is None else max_size
        n = _sizes(batch_size, self.min_digits, hi, size, generator)  # [B]
        base, B = self.base, batch_size
        nmax = int(n.max())
        T = 3 * nmax + 3
        a = torch.randint(0, base, (nmax, B), generator=generator)  # digit i of a (least significant first)
        b = torch.randint(0, base, (nmax, B), generator=generator)
        i = torch.arange(nmax).unsqueeze(1)  # [nmax, 1]
        a, b = a * (i < n), b * (i < n)  # digits beyond a row's n are 0
        # the sum's n+1 digits by carrying, least significant first
        s = torch.zeros(nmax + 1, B, dtype=torch.long)
        carry = torch.zeros(B, dtype=torch.long)
        for j in range(nmax):
            total = a[j] + b[j] + carry
            s[j], carry = total % base, total // base
        s[nmax] = carry  # a row with n < nmax added zeros past its digits: its final carry is s[n], zeros follow
        rows = torch.arange(B)
        inputs = torch.zeros(T, B, base + 2)
        targets = torch.zeros(T, B, base)
        mask = torch.zeros(T, B)
        for j in range(nmax):
            on = (j < n).float()
            inputs[j, rows, a[j]] += on  # a's digits at steps 0..n-1
            inputs[n + 1 + j, rows, b[j]] += on  # b's digits at steps n+1..2n (clipped rows: n+1+j < 2n+1)
        inputs[n, rows, base] = 1.0  # separator
        inputs[2 * n + 1, rows, base + 1] = 1.0  # go
        for j in range(nmax + 1):
            on = j <= n
            t = (2 * n + 2 + j).clamp(max=T - 1)
            targets[t[on], rows[on], s[j][on]] = 1.0
            mask[t[on], rows[on]] = 1.0
        return _to(SequenceBatch(inputs, targets, mask, n), device)


class PatternRetrievalTask:
    """Associative retrieval of binary patterns from corrupted queries.

    A row stores ``K`` random patterns of ``d`` bits (as -1/+1), then queries each of them once, in a random order,
    with a corrupted copy; the target at a query step is the original pattern (bits 0/1). Channels: ``d`` pattern
    values, a store flag, a query flag::

        step     0 .. K-1                     K .. 2K-1
        input    pattern k, store flag        corrupted pattern pi(j), query flag
        target                                pattern pi(j) (bits)

    ``T_row = 2K``; ``sizes`` is ``K``. Corruption (``noise``): ``"flip"`` flips ``round(noise_level * d)`` bits at
    random positions; ``"block"`` replaces a random contiguous block of ``round(noise_level * d)`` bits by random
    bits (the bit-string analogue of the papers' block noise on images).

    Args:
        pattern_bits: d.
        min_patterns, max_patterns: range of K.
        noise: ``"flip"`` or ``"block"``.
        noise_level: fraction of the ``d`` bits corrupted.
    """

    name = "pattern_retrieval"

    def __init__(
        self,
        pattern_bits: int = 16,
        min_patterns: int = 1,
        max_patterns: int = 4,
        noise: str = "flip",
        noise_level: float = 0.2,
    ) -> None:
        _positive_int("pattern_bits", pattern_bits)
        _check_range("min_patterns", min_patterns, "max_patterns", max_patterns, 1)
        if noise not in ("flip", "block"):
            raise ValueError(f"noise must be 'flip' or 'block', got {noise!r}")
        if not 0.0 <= float(noise_level) <= 1.0:
            raise ValueError(f"noise_level must be a fraction in [0, 1], got {noise_level!r}")
        self.pattern_bits, self.noise, self.noise_level = pattern_bits, noise, float(noise_level)
        self.min_patterns, self.max_patterns = min_patterns, max_patterns
        self.input_size = pattern_bits + 2
        self.target_size = pattern_bits
        self.min_size, self.max_size = min_patterns, max_patterns
        self.num_corrupted = int(round(self.noise_level * pattern_bits))

    def corrupt(self, patterns: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``patterns`` ``[..., d]`` of -1/+1 -> a corrupted copy (see the class docstring)."""
        d, c = self.pattern_bits, self.num_corrupted
        lead = patterns.shape[:-1]
        if self.noise == "flip":
            # the c positions with the smallest random keys: c distinct positions per pattern
            keys = torch.rand(lead + (d,), generator=generator)
            flip = keys.argsort(-1).argsort(-1) < c  # rank < c
            return torch.where(flip, -patterns, patterns)
        start = torch.randint(0, d - c + 1, lead + (1,), generator=generator)
        pos = torch.arange(d)
        block = (pos >= start) & (pos < start + c)
        noise = 2.0 * torch.randint(0, 2, lead + (d,), generator=generator).float() - 1.0
        return torch.where(block, noise, patterns)

    def sample(
        self,
        batch_size: int,
        size: int | None = None,
        max_size: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SequenceBatch:
        hi = self.max_patterns if max_size is None else max_size
        K = _sizes(batch_size, self.min_patterns, hi, size, generator)  # [B]
        d, B = self.pattern_bits, batch_size
        Kmax = int(K.max())
        T = 2 * Kmax
        patterns = 2.0 * torch.randint(0, 2, (Kmax, B, d), generator=generator).float() - 1.0
        # query order: a random permutation of the row's K patterns (random keys, the first K ranks)
        keys = torch.rand(Kmax, B, generator=generator) + (torch.arange(Kmax).unsqueeze(1) >= K).float()
        order = keys.argsort(0)  # [Kmax, B]; the first K entries of row b are a permutation of 0..K-1
        rows = torch.arange(B)
        queried = patterns[order, rows.unsqueeze(0)]  # [Kmax, B, d]: pattern pi(j) of each row
        corrupted = self.corrupt(queried, generator)
        inputs = torch.zeros(T, B, d + 2)
        targets = torch.zeros(T, B, d)
        mask = torch.zeros(T, B)
        for j in range(Kmax):
            on = j < K  # [B]
            inputs[j, on, :d] = patterns[j, on]
            inputs[j, on, d] = 1.0  # store flag
            t = (K + j).clamp(max=T - 1)
            inputs[t[on], rows[on], :d] = corrupted[j, on]
            inputs[t[on], rows[on], d + 1] = 1.0  # query flag
            targets[t[on], rows[on]] = (queried[j, on] > 0).float()
            mask[t[on], rows[on]] = 1.0
        return _to(SequenceBatch(inputs, targets, mask, K), device)


# registered in the task registry of envs.sequence_data (which imports this module at its end)
TASKS.update({ParityTask.name: ParityTask, AdditionTask.name: AdditionTask, PatternRetrievalTask.name: PatternRetrievalTask})
