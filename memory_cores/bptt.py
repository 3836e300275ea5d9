"""Memory-efficient backpropagation through time (Gruslys, Munos, Danihelka, Lanctot, Graves 2016, NeurIPS).

BPTT-HSM ("selective hidden state memorization", section 3 of the paper): with a budget of ``m`` slots for stored
hidden states, backpropagating a sequence of length ``t`` works recursively:

* run ``y`` steps forward from the stored state at the segment's start and store the hidden state h_y (one slot);
* backpropagate the right part ``[y, t)`` from h_y with the ``m - 1`` remaining slots;
* free h_y and backpropagate the left part ``[0, y)`` with all ``m`` slots.

With one slot only the segment start is stored, so backpropagating each step ``k`` means running forward to ``k``
again. The dynamic programme chooses the split ``y`` that minimises the number of forward steps (paper's notation,
the cost counts *every* forward operation, the first pass included; a step whose internal state is needed for the
backward step is run in the same pass)::

    C(0, m) = 0
    C(1, m) = 1                                   # one forward (with internals) then its backward step
    C(t, 1) = t (t + 1) / 2                        # t + (t - 1) + ... + 1
    C(t, m) = min_{1 <= y < t} [ y + C(t - y, m - 1) + C(y, m) ]

Note that with this accounting ``C(t, m) = 2 t - 1`` for ``m >= t`` (not ``t``): hidden states only are stored, so
each step except the last is run again to rebuild its internals for the backward step.

Execution here (:func:`memory_efficient_unroll`) is a ``torch.autograd.Function``. Its forward pass runs the whole
sequence under ``no_grad`` (it must produce every output) and stores the hidden states at the split points of the
policy's "right spine" (the states the paper's procedure stores during its first pass: at most ``m - 1`` besides
the initial state). The backward pass follows the recursion above, skipping the spine's forward runs (those states
are already stored), so it executes ``C(T, m) - (T - t_last)`` core steps, where ``t_last`` is the length of the
last spine segment (:attr:`BPTTPolicy.backward_steps`). Total core steps = ``T + backward_steps``; for ``m >= T``
that is ``2 T`` (no recomputation beyond one grad-enabled pass), for ``m = 1`` it is ``T + T (T + 1) / 2``.

Stretches (``segment_steps = S``, beyond the paper): the paper recomputes each step alone, which for a core whose
``unroll`` fuses many steps into one kernel (``nn.LSTM``) costs a kernel call per step and makes BPTT-HSM far slower
than plain BPTT. With ``S > 1`` a stretch of up to ``S`` steps is recomputed in one grad-enabled run and
backpropagated at once (the backward pass then holds one stretch's activations besides the stored states: the
"plus one segment" of the memory budget). The same dynamic programme with these leaves::

    C(t, m) = t                    for t <= S      # one grad-enabled run of the stretch
    C(t, 1) = t + C(t - S, 1)      for t > S       # rerun from the start for each stretch, the last one first
    C(t, m) = min_{1 <= y < t} [ y + C(t - y, m - 1) + C(y, m) ]   otherwise

``S = 1`` is the paper's policy exactly (tests/test_bptt.py checks both against brute force).

BPTT-ISM and BPTT-MSM (sections 3.4 and 3.5 of the paper): instead of the hidden state after ``y`` steps, the
*internal state* of step ``y`` may be stored: the activations its backward step needs (here: the autograd graph of
that one step, its output state included), which costs ``alpha`` slots (``internal_cost``, the size of a step's
internals in units of one hidden state) and saves recomputing that step. Split at ``y`` (``1 <= y <= t``): run
``y`` steps, the last one with grad, keep its graph; backpropagate the right part ``[y, t)`` from its output state
with ``m - alpha`` slots (the right part's start state lives inside the stored internals); backpropagate the
stored step without recomputing it; then the left part ``[0, y - 1)`` with all ``m`` slots::

    C_internal(t, m) = min_{1 <= y <= t} [ y + C(t - y, m - alpha) + C(y - 1, m) ]     (m - alpha >= 1)

``storage="hidden"`` is BPTT-HSM (above), ``"internal"`` BPTT-ISM (internal-state splits only; the initial hidden
state is still the one stored hidden state), ``"mixed"`` BPTT-MSM: the cheaper of both splits at every node (the
hidden split at equal cost, it holds less).

Every run of consecutive steps goes through ``core.unroll`` on the segment's slice of ``xs`` and ``resets``, so
fused unrolls (lstm/gru, the DNC's hand-written backward, gtrxl/memnet/perceiver_ar/lru/ffm paths) stay in use
and per-row resets inside the sequence work.

RNG: the global RNG state (CPU, and CUDA of the inputs' device) is saved with every stored hidden state and
restored before recomputing from it, inside ``torch.random.fork_rng`` so the caller's stream is untouched. This
replays sampling exactly for cores that draw their random numbers step by step from the global generator (as
``rl_access`` in train mode does: one uniform draw per step). For learners, replaying stored choices
(``unroll_with_choices``) remains the exact route; a core that draws randomness in bulk per ``unroll`` call would
not replay identically and should be used in eval mode or with stored choices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import Core, State, tree_leaves, tree_unflatten

__all__ = ["BPTTPolicy", "STORAGES", "bptt_policy", "internal_state_cost", "memory_efficient_unroll"]

STORAGES = ("hidden", "internal", "mixed")  # BPTT-HSM, BPTT-ISM, BPTT-MSM
LEAF, HIDDEN, INTERNAL = 0, 1, 2  # kinds of a policy node


@functools.lru_cache(maxsize=64)
def _dp(T: int, M: int, S: int = 1, storage: str = "hidden", alpha: int = 1) -> tuple[np.ndarray, ...]:
    """Tables ``C[t, m]``, ``Y[t, m]`` (optimal split) and ``K[t, m]`` (its kind: LEAF, HIDDEN or INTERNAL) for
    ``0 <= t <= T``, ``1 <= m <= M``, with stretches of at most ``S`` steps recomputed in one grad-enabled run
    (``S = 1``: the paper's step by step) and internal states of ``alpha`` slots (``storage`` internal or mixed)."""
    C = np.zeros((T + 1, M + 1), dtype=np.int64)
    Y = np.zeros((T + 1, M + 1), dtype=np.int64)
    K = np.zeros((T + 1, M + 1), dtype=np.int64)
    for t in range(1, T + 1):  # one slot: chunks of S from the end, each rerun from the start
        C[t, 1] = t + (C[t - S, 1] if t > S else 0)  # S = 1: C(t, 1) = t (t + 1) / 2
    for m in range(2, M + 1):
        C[1:S + 1, m] = np.arange(1, min(S, T) + 1)  # a stretch of t <= S steps: one run with grad, C = t
        for t in range(S + 1, T + 1):
            best, arg, kind = C[t, 1] if storage == "internal" else None, 0, LEAF
            if storage != "internal":
                y = np.arange(1, t)
                c = y + C[t - y, m - 1] + C[y, m]  # C(t, m) = min_y [ y + C(t - y, m - 1) + C(y, m) ]
                i = int(np.argmin(c))  # the smallest y among equal costs
                best, arg, kind = c[i], i + 1, HIDDEN
            if storage != "hidden" and m - alpha >= 1:
                y = np.arange(1, t + 1)
                c = y + C[t - y, m - alpha] + C[y - 1, m]  # the internal state of step y: y - 1 + 1 steps run
                i = int(np.argmin(c))
                if c[i] < best:
                    best, arg, kind = c[i], i + 1, INTERNAL
            C[t, m], Y[t, m], K[t, m] = best, arg, kind
    for a in (C, Y, K):
        a.flags.writeable = False
    return C, Y, K


@dataclass(frozen=True)
class BPTTPolicy:
    """The BPTT-HSM/ISM/MSM policy for a sequence of ``T`` steps, ``memory_slots`` slots and recomputed stretches of
    at most ``segment_steps`` steps.

    Attributes:
        T, memory_slots, segment_steps: the problem.
        cost: C(T, m) of the paper, the total number of forward steps of the paper's procedure (first pass included).
        forward_stores: positions ``p`` stored by the forward pass (the spine): the hidden state after ``p`` steps,
            or the internal state of step ``p`` (``forward_kinds``).
        backward_steps: core steps :func:`memory_efficient_unroll` runs in its backward pass (``cost`` less the
            spine's forward steps, ``forward_stores[-1]``); the forward pass runs ``T`` more.
        storage: ``"hidden"`` (BPTT-HSM), ``"internal"`` (BPTT-ISM) or ``"mixed"`` (BPTT-MSM).
        internal_cost: ``alpha``, the slots one step's internal state takes (storage internal or mixed).
        forward_kinds: HIDDEN (1) or INTERNAL (2) for each of ``forward_stores``.
    """

    T: int
    memory_slots: int
    cost: int
    forward_stores: tuple[int, ...]
    backward_steps: int
    segment_steps: int = 1
    storage: str = "hidden"
    internal_cost: int = 1
    forward_kinds: tuple[int, ...] = ()

    @property
    def slots(self) -> int:
        """The slots the programme works with: ``memory_slots``, less what can never help (more hidden states than
        steps, more than every step's internals)."""
        return _useful_slots(self.T, self.memory_slots, self.storage, self.internal_cost)

    def node(self, t: int, m: int) -> tuple[int, int]:
        """What to do when backpropagating ``t`` steps with ``m`` slots: ``(kind, y)``, kind LEAF (``y = 0``;
        ``t <= segment_steps``: one grad-enabled run of the stretch; ``m = 1``: recompute from the start for every
        stretch of ``segment_steps`` steps, from the end), HIDDEN (store the hidden state after ``y`` steps,
        ``1 <= y < t``) or INTERNAL (store the internal state of step ``y``, ``1 <= y <= t``)."""
        if t <= self.segment_steps or m <= 1:
            return LEAF, 0
        M = self.slots
        _, Y, K = _dp(self.T, M, self.segment_steps, self.storage, self.internal_cost)
        return int(K[t, min(m, M)]), int(Y[t, min(m, M)])

    def split(self, t: int, m: int) -> int:
        """The ``y`` of :meth:`node` (0 for a leaf)."""
        return self.node(t, m)[1]


def bptt_policy(
    T: int, memory_slots: int, segment_steps: int = 1, storage: str = "hidden", internal_cost: int = 1
) -> BPTTPolicy:
    """Solve the dynamic programme for ``T`` steps and ``memory_slots`` (``>= 1``, the initial state's included).

    ``segment_steps`` (``S >= 1``): the longest stretch recomputed in one grad-enabled run, whose activations the
    backward pass holds at once ("plus what one recomputed segment needs"). ``S = 1`` is the paper's policy (each
    step recomputed alone); a larger ``S`` lets a core's fused multi-step unroll (``nn.LSTM``) run whole stretches,
    with the leaves of the recursion costing ``C(t, m) = t`` for ``t <= S`` and ``C(t, 1) = t + C(t - S, 1)``.
    ``storage``: ``"hidden"`` (BPTT-HSM), ``"internal"`` (BPTT-ISM) or ``"mixed"`` (BPTT-MSM); ``internal_cost``
    (``alpha >= 1``): the slots one step's internal state takes (:func:`internal_state_cost` measures it).
    """
    if not isinstance(T, int) or T < 0:
        raise ValueError(f"T must be a non-negative int, got {T!r}")
    if not isinstance(memory_slots, int) or isinstance(memory_slots, bool) or memory_slots < 1:
        raise ValueError(f"memory_slots must be an int >= 1 (the slot holding the initial state), got {memory_slots!r}")
    if not isinstance(segment_steps, int) or isinstance(segment_steps, bool) or segment_steps < 1:
        raise ValueError(f"segment_steps must be an int >= 1 (1: recompute step by step), got {segment_steps!r}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if not isinstance(internal_cost, int) or isinstance(internal_cost, bool) or internal_cost < 1:
        raise ValueError(f"internal_cost must be an int >= 1 (slots per stored internal state), got {internal_cost!r}")
    S = min(segment_steps, max(T, 1))
    alpha = internal_cost if storage != "hidden" else 1
    M = _useful_slots(T, memory_slots, storage, alpha)
    C, Y, K = _dp(T, M, S, storage, alpha)
    stores, kinds, a, t, m = [], [], 0, T, M
    while t > S and m > 1 and K[t, m] != LEAF:
        y, kind = int(Y[t, m]), int(K[t, m])
        stores.append(a + y)
        kinds.append(kind)
        a, t, m = a + y, t - y, m - (1 if kind == HIDDEN else alpha)
    cost = int(C[T, M]) if T > 0 else 0
    return BPTTPolicy(T, memory_slots, cost, tuple(stores), cost - a, S, storage, alpha, tuple(kinds))


def _useful_slots(T: int, memory_slots: int, storage: str, alpha: int) -> int:
    """More hidden states than steps never help, nor more than the initial state and every step's internals."""
    return min(memory_slots, max(T, 1) if storage == "hidden" else 1 + alpha * max(T, 1))


def internal_state_cost(core: Core, x: Tensor, state: State) -> int:
    """``alpha`` for :func:`bptt_policy`: the bytes one grad-enabled step of ``core`` saves for its backward (its
    internal state, counted by saved-tensor hooks; parameters, held anyway, are not counted) over the bytes of its
    hidden state, rounded up. ``x``: ``[B, input_size]`` or ``[1, B, input_size]``; ``state``: a state for that
    batch. RNG state is left untouched."""
    xs = x if x.dim() == 3 else x.unsqueeze(0)
    saved, params = [0], {p.data_ptr() for p in core.parameters()}

    def pack(t: Tensor) -> Tensor:
        if t.data_ptr() not in params:
            saved[0] += t.numel() * t.element_size()
        return t

    s_in = [leaf.detach().requires_grad_(leaf.is_floating_point()) for leaf in tree_leaves(state)]
    with torch.random.fork_rng(devices=[xs.device] if xs.device.type == "cuda" else []):
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            core.unroll(xs[:1].detach(), tree_unflatten(state, s_in))
    hidden = sum(leaf.numel() * leaf.element_size() for leaf in s_in)
    return max(1, -(-saved[0] // max(hidden, 1)))


def _rng_get(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _rng_set(rng, device: torch.device) -> None:
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state(rng[1], device)


class _MemoryEfficientUnroll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, core, policy, template, xs, resets, n_state, *leaves_and_params):
        state_leaves = leaves_and_params[:n_state]
        params = leaves_and_params[n_state:]
        T = xs.shape[0]
        state = tree_unflatten(template, [s.detach() for s in state_leaves])
        stored = {0: (state, _rng_get(xs.device))}
        internals = {}  # position p -> the kept graph of step p (BPTT-ISM/MSM spine)
        ys, a = [], 0
        for p, kind in zip(policy.forward_stores, policy.forward_kinds or (HIDDEN,) * len(policy.forward_stores)):
            if kind == HIDDEN:
                y, state = core.unroll(xs[a:p], state, None if resets is None else resets[a:p])
                ys.append(y)
            else:  # run to p - 1, then step p with grad, keeping its graph as the stored internal state
                if p - 1 > a:
                    y, state = core.unroll(xs[a:p - 1], state, None if resets is None else resets[a:p - 1])
                    ys.append(y)
                internals[p] = _build(core, template, xs, resets, p - 1, p, state, ctx.needs_input_grad[3])
                ys.append(internals[p][2].detach())
                state = tree_unflatten(template, [o.detach() for o in internals[p][3]])
            stored[p] = (state, _rng_get(xs.device))
            a = p
        y, state = core.unroll(xs[a:T], state, None if resets is None else resets[a:T])
        ys.append(y)
        out_leaves = tree_leaves(state)
        # Stored hidden states go through save_for_backward so saved-tensor hooks see (and count) them.
        positions = sorted(stored)
        flat = [leaf for p in positions for leaf in tree_leaves(stored[p][0])]
        ctx.save_for_backward(xs, *([] if resets is None else [resets]), *flat)
        ctx.has_resets = resets is not None
        ctx.rngs = {p: stored[p][1] for p in positions}
        ctx.internals = internals
        ctx.positions = positions
        ctx.core, ctx.policy, ctx.template, ctx.n_state, ctx.n_params = core, policy, template, n_state, len(params)
        ctx.state_needs_grad = [s.requires_grad for s in state_leaves]
        ctx.params = params
        ctx.mark_non_differentiable(*[o for o in out_leaves if not o.is_floating_point()])
        return (torch.cat(ys), *out_leaves)

    @staticmethod
    def backward(ctx, g_ys, *g_out):
        core, policy, template = ctx.core, ctx.policy, ctx.template
        saved = ctx.saved_tensors
        xs = saved[0]
        resets = saved[1] if ctx.has_resets else None
        flat = list(saved[2 if ctx.has_resets else 1:])
        n = len(tree_leaves(template))
        stored = {}
        for i, p in enumerate(ctx.positions):
            stored[p] = (tree_unflatten(template, flat[i * n:(i + 1) * n]), ctx.rngs[p])
        params = ctx.params
        T = xs.shape[0]
        dev = xs.device
        g_xs = torch.zeros_like(xs) if ctx.needs_input_grad[3] else None
        g_params = [torch.zeros_like(p) if p.requires_grad else None for p in params]

        def run(s, rng, a, b):
            """Hidden state after steps [a, b) from the stored state s at a (no grad); returns (state, rng at b)."""
            if b == a:
                return s, rng
            _rng_set(rng, dev)
            with torch.no_grad():
                _, s = core.unroll(xs[a:b], s, None if resets is None else resets[a:b])
            return s, _rng_get(dev)

        def grad_run(k0, k1, s, rng, g_next):
            """Run steps [k0, k1) with grad from s (state before k0) and backpropagate g_ys[k0:k1] and g_next
            into s (one recomputed stretch: its activations are held until this returns)."""
            _rng_set(rng, dev)
            return backward_graph(_build(core, template, xs, resets, k0, k1, s, g_xs is not None), g_next)

        def backward_graph(graph, g_next):
            """Backpropagate g_ys over a built stretch's steps and g_next (its final state) into its start state."""
            k0, k1, y, s_out, s_in, x = graph
            outs, grads = [y], [g_ys[k0:k1]]
            for o, g in zip(s_out, g_next):
                if o.requires_grad and g is not None:
                    outs.append(o)
                    grads.append(g)
            inputs = [leaf for leaf in s_in if leaf.requires_grad]
            if g_xs is not None:
                inputs.append(x)
            p_idx = [i for i, p in enumerate(params) if p.requires_grad]
            inputs += [params[i] for i in p_idx]
            if not outs[0].requires_grad:
                outs, grads = outs[1:], grads[1:]
            gs = torch.autograd.grad(outs, inputs, grads, allow_unused=True) if outs and inputs else [None] * len(inputs)
            gs = list(gs)
            g_s = []
            for leaf in s_in:
                g_s.append(gs.pop(0) if leaf.requires_grad else None)
            if g_xs is not None:
                gx = gs.pop(0)
                if gx is not None:
                    g_xs[k0:k1] += gx
            for i, g in zip(p_idx, gs):
                if g is not None:
                    g_params[i] += g
            return g_s

        S = policy.segment_steps

        alpha = policy.internal_cost
        internals = ctx.internals

        def backprop(a, t, m, g_end):
            """BPTT-HSM/ISM/MSM on steps [a, a + t) with m slots; the state at a is stored. Returns grad w.r.t. it."""
            if t == 0:
                return g_end
            s, rng = stored[a]
            kind, y = policy.node(t, m)
            if kind == INTERNAL:  # C = y + C(t - y, m - alpha) + C(y - 1, m)
                p = a + y
                if p not in internals:  # y - 1 steps without grad, step p with grad (skipped on the spine)
                    s_k, rng_k = run(s, rng, a, p - 1)
                    _rng_set(rng_k, dev)
                    internals[p] = _build(core, template, xs, resets, p - 1, p, s_k, g_xs is not None)
                    stored[p] = (tree_unflatten(template, [o.detach() for o in internals[p][3]]), _rng_get(dev))
                g_mid = backprop(p, t - y, m - alpha, g_end)
                del stored[p]
                g_mid = backward_graph(internals.pop(p), g_mid)  # the stored step: no recomputation
                return backprop(a, y - 1, m, g_mid)
            if kind == LEAF:  # a leaf: C(t, m) = t for t <= S; one slot: C(t, 1) = t + C(t - S, 1)
                g, end = g_end, a + t
                while end > a:
                    start = max(a, end - S)
                    s_k, rng_k = run(s, rng, a, start)
                    g = grad_run(start, end, s_k, rng_k, g)
                    end = start
                return g
            if a + y not in stored:  # y forward steps (skipped on the spine, stored by the forward pass)
                stored[a + y] = run(s, rng, a, a + y)
            g_mid = backprop(a + y, t - y, m - 1, g_end)  # C(t - y, m - 1)
            del stored[a + y]  # free the slot
            return backprop(a, y, m, g_mid)  # C(y, m)

        g_end = list(g_out)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            g_state = backprop(0, T, policy.slots, g_end)
        g_state = [g if need else None for g, need in zip(g_state, ctx.state_needs_grad)]
        return (None, None, None, g_xs, None, None, *g_state, *g_params)


def _build(core: Core, template: State, xs: Tensor, resets: Tensor | None, k0: int, k1: int, s: State,
           xs_grad: bool) -> tuple:
    """Run steps ``[k0, k1)`` from ``s`` with grad: ``(k0, k1, ys, out_leaves, in_leaves, x)``, the graph held by
    the returned tensors (a recomputed stretch, or a stored internal state)."""
    s_in = [leaf.detach().requires_grad_(leaf.is_floating_point()) for leaf in tree_leaves(s)]
    x = xs[k0:k1].detach().requires_grad_(xs_grad)
    with torch.enable_grad():
        y, s_out = core.unroll(x, tree_unflatten(template, s_in), None if resets is None else resets[k0:k1])
    return k0, k1, y, tree_leaves(s_out), s_in, x


def memory_efficient_unroll(
    core: Core, xs: Tensor, state: State, resets: Tensor | None = None, *, memory_slots: int, segment_steps: int = 1,
    storage: str = "hidden", internal_cost: int | None = None,
) -> tuple[Tensor, State]:
    """``core.unroll(xs, state, resets)`` with BPTT-HSM backpropagation under a budget of stored hidden states.

    Same outputs and the same gradients (w.r.t. parameters, ``xs`` and the initial state) as ``core.unroll``, while
    the graph holds at most ``memory_slots`` hidden states (the initial one included) plus, in the backward pass,
    the activations of one recomputed stretch of at most ``segment_steps`` steps (1: the paper's step-by-step
    recomputation; more lets fused multi-step unrolls such as ``nn.LSTM``'s run whole stretches, see
    :func:`bptt_policy`). ``xs``: ``[T, B, input_size]``; ``resets``: ``[T, B]`` bool or None.
    ``storage``: ``"hidden"`` (BPTT-HSM), ``"internal"`` (BPTT-ISM) or ``"mixed"`` (BPTT-MSM), with one step's
    internal state taking ``internal_cost`` slots (None: measured by :func:`internal_state_cost` on the first step).
    See the module docstring for the policy, the step counts and the RNG handling.
    """
    if xs.dim() != 3:
        raise ValueError(f"xs must have shape [T, B, input_size], got {list(xs.shape)}")
    if storage != "hidden" and internal_cost is None and xs.shape[0] > 0:
        internal_cost = internal_state_cost(core, xs[:1], state)
    policy = bptt_policy(int(xs.shape[0]), memory_slots, segment_steps, storage, internal_cost or 1)
    if xs.shape[0] == 0:
        return core.unroll(xs, state, resets)
    leaves = tree_leaves(state)
    params = [p for p in core.parameters()]
    out = _MemoryEfficientUnroll.apply(core, policy, state, xs, resets, len(leaves), *leaves, *params)
    ys, out_leaves = out[0], out[1:]
    return ys, tree_unflatten(state, list(out_leaves))
