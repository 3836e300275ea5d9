"""A resettable parallel scan for diagonal linear recurrences (the fast path of ``lru`` and ``ffm``).

The recurrence, elementwise over every axis after time::

    h_t = a_t * h_{t-1} + b_t        (h_{-1} = 0)
    h_t = b_t                        where reset_t   (the carried state is dropped)

Each step is an affine map ``h -> a h + b``; a step with ``reset`` is the constant map ``h -> b``. Composing maps
is associative, so all prefixes ``e_0 o e_1 o ... o e_t`` (and with them every ``h_t``) come from a parallel scan in
O(log T) sequential combine steps instead of T. The combine of an earlier element ``i`` with a later ``j`` is the
resettable operator of Lu et al. 2023 ("Structured State Space Models for In-Context Reinforcement Learning")::

    (a_i, b_i, r_i) . (a_j, b_j, r_j) = (where(r_j, a_j, a_j a_i),  where(r_j, b_j, a_j b_i + b_j),  r_i | r_j)

It uses ``torch.where``, never a mask multiply: an ``inf`` in a dropped state cannot leak through ``0 * inf``.

A core whose episodes restart from a (possibly learned) initial state ``h0`` folds it into ``b``: a step that
resets has ``b_t = a_t h0 + (input term)`` and ``reset_t = True``, which is exactly "state becomes ``h0``, then the
step". The carried state enters the same way at ``t = 0`` (``b_0 = a_0 h_{-1} + ...``).

The scan is the odd/even recursion of Blelloch 1990 (as ``jax.lax.associative_scan``): combine neighbouring pairs
(T/2 elements), scan those recursively, then combine each even element with the prefix before it. Work O(T),
2 log2(T) combine calls, each one batched torch op over its level. Complex tensors work as well as real ones.

:func:`linear_scan_loop` is the same recurrence as a plain loop: the readable reference the tests compare with.
"""

from __future__ import annotations

from torch import Tensor
import torch


def _combine(
    a_i: Tensor, b_i: Tensor, r_i: Tensor | None, a_j: Tensor, b_j: Tensor, r_j: Tensor | None, need_a: bool = True
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """The resettable operator: element ``i`` (earlier) then element ``j`` (later), batched over a level.

    Returns ``(a, b, r)`` of the composite; ``a`` is None when ``need_a`` is False (the top level needs only ``b``).
    """
    if r_j is None:  # no resets anywhere: plain affine composition
        a = a_j * a_i if need_a else None
        return a, a_j * b_i + b_j, None
    a = torch.where(r_j, a_j, a_j * a_i) if need_a else None
    b = torch.where(r_j, b_j, a_j * b_i + b_j)
    return a, b, r_i | r_j


def _interleave(even: Tensor, odd: Tensor) -> Tensor:
    """``[even_0, odd_0, even_1, odd_1, ...]`` along dim 0; ``even`` has as many or one more elements than ``odd``."""
    n = odd.shape[0]
    shape = torch.broadcast_shapes(even.shape[1:], odd.shape[1:])
    even = even.expand(even.shape[:1] + shape)
    if even.shape[0] > n:
        head, last = torch.split(even, [n, 1])
    else:
        head, last = even, None
    out = torch.stack([head, odd.expand((n,) + shape)], dim=1).reshape((2 * n,) + shape)  # [n, 2, ...] -> [2n, ...]
    return out if last is None else torch.cat([out, last])


def _split_even_odd(x: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor] | tuple[None, None, None, None]:
    """The parts of ``x`` ``[T, ...]`` one level of the scan needs: ``(paired, first, later, odd)`` with
    ``paired = x[0:2n:2]`` (the evens that have an odd partner, ``n = T // 2``), ``first = x[0:1]``,
    ``later = x[2::2]`` and ``odd = x[1::2]``.

    Written with ``split``/``unbind`` rather than strided slices: their backward is one ``cat``/``stack`` of the
    parts' gradients, where a strided slice's backward fills a zero tensor of the full size for every slice (that
    was most of the scan's time at T = 256).
    """
    if x is None:
        return None, None, None, None
    T = x.shape[0]
    n = T // 2
    main, tail = torch.split(x, [2 * n, T - 2 * n])  # tail: the last even element when T is odd
    paired, odd = torch.unbind(main.reshape((n, 2) + x.shape[1:]), dim=1)  # [n, ...] each
    first, rest = torch.split(paired, [1, n - 1])
    later = torch.cat([rest, tail]) if T % 2 else rest
    return paired, first, later, odd


def _scan(a: Tensor, b: Tensor, r: Tensor | None, need_a: bool) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """All prefixes of the elements ``(a[t], b[t], r[t])``, ``t = 0 .. T-1`` (dim 0), by odd/even recursion."""
    T = b.shape[0]
    if T < 2:
        return a, b, r
    n_e = (T - 1) // 2  # even elements 2, 4, ... after the first
    a_pair, a0, a_e, a_od = _split_even_odd(a)
    b_pair, b0, b_e, b_od = _split_even_odd(b)
    r_pair, r0, r_e, r_od = _split_even_odd(r)
    assert a_pair is not None and b_pair is not None and a_od is not None and b_od is not None
    # pairs (2k . 2k+1): T // 2 elements, the prefixes at the odd indices once scanned
    a_p, b_p, r_p = _combine(a_pair, b_pair, r_pair, a_od, b_od, r_od)
    a_o, b_o, r_o = _scan(a_p, b_p, r_p, need_a=need_a)  # prefixes ending at 1, 3, 5, ...
    assert b0 is not None and b_e is not None and a0 is not None and a_e is not None

    def before(x: Tensor | None) -> Tensor | None:
        """The odd prefixes ending at 1, 3, ..., 2 n_e - 1 (each even element's predecessor)."""
        if x is None or x.shape[0] == n_e:
            return x
        return torch.split(x, [n_e, x.shape[0] - n_e])[0]

    def with_first(first: Tensor | None, rest: Tensor | None) -> Tensor | None:
        """The prefix ending at 0 is element 0 itself; then the even prefixes 2, 4, ..."""
        if first is None or rest is None:
            return None
        return torch.cat([first.expand((1,) + rest.shape[1:]), rest]) if rest.shape[0] else first

    # the even indices 2k, k >= 1: the prefix ending just before (at 2k - 1) . element 2k
    if n_e > 0:
        a_pe, b_pe, r_pe = _combine(before(a_o), before(b_o), before(r_o), a_e, b_e, r_e, need_a)  # type: ignore
    else:  # T = 2: the prefixes are element 0 and the pair
        a_pe, b_pe, r_pe = (a_e if need_a else None), b_e, r_e
    b_out = _interleave(with_first(b0, b_pe), b_o)  # type: ignore[arg-type]
    a_out = None if a_pe is None or a_o is None else _interleave(with_first(a0, a_pe), a_o)  # type: ignore
    r_out = None if r_pe is None or r_o is None else _interleave(with_first(r0, r_pe), r_o)  # type: ignore
    return a_out, b_out, r_out


def resettable_scan(a: Tensor, b: Tensor, reset: Tensor | None = None) -> Tensor:
    """``h`` of the recurrence above for every ``t``, by a parallel scan over dim 0.

    Args:
        a: ``[T, ...]`` multipliers (``Lambda`` of the LRU, ``gamma`` of FFM); broadcastable against ``b`` in the
            trailing dims (e.g. ``[T, 1, N]`` for a per-unit constant), but with the full time length ``T``
            (use ``expand``: no copy).
        b: ``[T, ...]`` inputs.
        reset: ``[T, ...]`` bool, broadcastable against ``b`` (e.g. ``[T, B, 1]``), or None: True where ``h_t``
            drops ``h_{t-1}``.

    Returns ``h``: ``[T, ...]`` shaped like ``b`` (broadcast), ``h_t = a_t h_{t-1} + b_t`` from ``h_{-1} = 0``.
    """
    if a.shape[0] != b.shape[0] or (reset is not None and reset.shape[0] != b.shape[0]):
        raise ValueError(
            f"a, b and reset need the same time length (dim 0), got {a.shape[0]}, {b.shape[0]}"
            + ("" if reset is None else f", {reset.shape[0]}")
        )
    if reset is not None and reset.dtype != torch.bool:
        raise TypeError(f"reset must be a bool tensor, got {reset.dtype}")
    _, h, _ = _scan(a, b, reset, need_a=False)
    return h


def linear_scan_loop(a: Tensor, b: Tensor, reset: Tensor | None = None) -> Tensor:
    """The same recurrence as :func:`resettable_scan`, as the plain time loop (T sequential steps)."""
    h = torch.zeros_like(a[0] * b[0])
    # unbind, not a[t] / b[t]: the backward of T selects would zero-fill T full-size tensors (O(T^2))
    resets = [None] * b.shape[0] if reset is None else reset.unbind(0)
    hs = []
    for a_t, b_t, r_t in zip(a.unbind(0), b.unbind(0), resets):
        h = a_t * h + b_t
        if r_t is not None:
            h = torch.where(r_t, b_t, h)
        hs.append(h)
    return torch.stack(hs)
