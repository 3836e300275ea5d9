"""The core contract shared by every memory core.

A *core* is a recurrent module with explicit state (the DeepMind ``RNNCore`` idea): state goes in, state comes
out, and nothing episode-related is kept on the module. That is what lets one rollout carry thousands of
independent episodes, replay a stored sequence in a training update, and pack state into SB3's numpy buffers.

Concrete cores implement three things:

* ``initial_state(batch_size, device=None)``: a NamedTuple (nesting allowed) of tensors, batch first.
* ``step(x, state) -> (y, new_state)``: one time step without any reset logic.
* ``output_size``: the width of ``y``.

This base class adds everything else, once, for every core:

* ``forward(x, state, reset=None)``: resets the rows flagged in ``reset`` to the initial state (with
  ``torch.where``, so learned initial states and ``inf``/``nan`` never leak through a mask multiply), then steps.
* ``unroll(xs, state, resets=None)``: the time-major step loop.
* ``pack_state`` / ``unpack_state`` / ``state_size``: a state as one ``[B, S]`` tensor and back.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

# A state is a (possibly nested) NamedTuple of tensors; the helpers below walk that tree.
State = Any


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
_COMPILED_STEPS: dict[tuple[type, str], Callable] = {}


def _compiled_step(cls: type, mode: str) -> Callable:
    """``torch.compile`` of ``cls.step`` (called as ``fn(core, x, state)``), made once per class and mode."""
    key = (cls, mode)
    if key not in _COMPILED_STEPS:
        _COMPILED_STEPS[key] = torch.compile(cls.step, mode=None if mode == "default" else mode, dynamic=False)
    return _COMPILED_STEPS[key]


def tree_leaves(tree: State) -> list[Tensor]:
    """All tensors of a nested tuple, depth first, in field order."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, tuple):
        out: list[Tensor] = []
        for sub in tree:
            out.extend(tree_leaves(sub))
        return out
    raise TypeError(f"a core state holds tensors and (named) tuples only, got {type(tree).__name__}")


def tree_map(fn: Callable[..., Tensor], tree: State, *rest: State) -> State:
    """Apply ``fn`` leaf-wise to one or more trees of identical structure, keeping the NamedTuple types."""
    if isinstance(tree, Tensor):
        return fn(tree, *rest)
    if isinstance(tree, tuple):
        children = [tree_map(fn, *subs) for subs in zip(tree, *rest)]
        if hasattr(tree, "_fields"):  # NamedTuple
            return type(tree)(*children)
        return type(tree)(children)
    raise TypeError(f"a core state holds tensors and (named) tuples only, got {type(tree).__name__}")


def tree_unflatten(template: State, leaves: Sequence[Tensor]) -> State:
    """Rebuild a tree shaped like ``template`` from ``leaves`` (the inverse of :func:`tree_leaves`)."""
    it = iter(leaves)
    out = tree_map(lambda _: next(it), template)
    rest = list(it)
    if rest:
        raise ValueError(f"{len(rest)} leaves left over when rebuilding a state")
    return out


def select_rows(mask: Tensor, on_true: State, on_false: State) -> State:
    """Row-wise choice between two states: ``mask`` is ``[B]`` bool; True rows come from ``on_true``."""

    def pick(a: Tensor, b: Tensor) -> Tensor:
        m = mask.reshape(mask.shape + (1,) * (b.dim() - 1))
        return torch.where(m, a, b)

    return tree_map(pick, on_true, on_false)


def stack_states(states: Sequence[State]) -> State:
    """Stack a list of states along a new leading time axis: leaves ``[B, ...]`` -> ``[T, B, ...]``."""
    return tree_map(lambda *xs: torch.stack(xs), *states)


KERNELS = ("plain", "auto", "triton")
"""Values of the ``kernel`` argument of the cores with a Triton fast path (``memory_cores.KERNEL_CORES``)."""


def check_kernel(kernel: str) -> str:
    """``kernel`` if it is one of :data:`KERNELS`, else a one-line ``ValueError``."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def use_triton(kernel: str, device: torch.device, applies: bool = True) -> bool:
    """Whether a core built with ``kernel`` runs its Triton kernels for inputs on ``device``: always with
    ``"triton"``, never with ``"plain"``; with ``"auto"`` where the kernels ``applies`` to the core's configuration,
    on CUDA, with Triton importable (imported only then, so plain cores never load it)."""
    if kernel == "triton":
        return True
    if kernel != "auto" or not applies or device.type != "cuda":
        return False
    from .triton_common import available

    return available(device) is None


class Core(nn.Module):
    """Base class of every memory core.

    Args:
        input_size: width of one input vector ``x``.

    Subclasses set ``self.output_size`` and implement :meth:`initial_state` and :meth:`step`.
    """

    input_size: int
    output_size: int

    def __init__(self, input_size: int) -> None:
        super().__init__()
        if not isinstance(input_size, int) or input_size <= 0:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        self.input_size = input_size

    # ------------------------------------------------------------------ to implement
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The state an episode starts from: a NamedTuple of ``[batch_size, ...]`` tensors."""
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step with no reset logic. ``x``: ``[B, input_size]`` -> ``y``: ``[B, output_size]``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ provided
    def _device(self, device: torch.device | str | None) -> torch.device:
        """``device`` if given, else the device of the module's parameters or buffers (CPU when it has none)."""
        if device is not None:
            return torch.device(device)
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def _param_dtype(self) -> torch.dtype:
        for t in self.parameters():
            return t.dtype
        return torch.get_default_dtype()

    def reset_state(self, state: State, reset: Tensor | None) -> State:
        """Rows where ``reset`` (``[B]`` bool) is True get the initial state; the others are returned untouched.

        The only reset mechanism of the package: cores never implement their own.
        """
        if reset is None:
            return state
        leaves = tree_leaves(state)
        batch_size = leaves[0].shape[0]
        if reset.shape != (batch_size,):
            raise ValueError(f"reset must have shape [{batch_size}] (one flag per row), got {list(reset.shape)}")
        init = self.initial_state(batch_size, device=leaves[0].device)
        return select_rows(reset.to(torch.bool), init, state)

    compiled_step_mode: str | None = None  # see compile_step; None: eager (a class default, so old pickles load)

    def compile_step(self, mode: str | None = "default") -> "Core":
        """Opt-in: run :meth:`step` through ``torch.compile`` wherever :meth:`forward` runs it (the rollout's steps
        and the base class's :meth:`unroll` loop, hence the update's sequences and memory-efficient BPTT's
        recomputations for every core without a fused unroll of its own: ntm, alstm, rl_access, grid_lstm, ...).

        ``mode``: ``"default"`` (inductor fuses a step's elementwise ops and reductions into few kernels),
        ``"reduce-overhead"`` (the same, replayed as CUDA graphs on a GPU) or ``"max-autotune"``; None switches back
        to eager. Same values up to rounding (tests/test_compile_step.py). The compiled function is shared by all
        cores of a class and specialised per instance and shapes on first use, which takes seconds to a minute;
        a core that samples in ``step`` (``rl_access`` in train mode) draws from inductor's random stream, not
        eager's. Returns ``self``."""
        if mode is not None and mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)} or None, got {mode!r}")
        self.compiled_step_mode = mode
        return self

    def forward(self, x: Tensor, state: State, reset: Tensor | None = None) -> tuple[Tensor, State]:
        """One step. ``x``: ``[B, input_size]``; ``reset``: ``[B]`` bool, True where ``x`` starts a new episode
        (that row's state becomes the initial state before the step). Returns ``y``: ``[B, output_size]`` and the
        new state."""
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"x must have shape [B, {self.input_size}], got {list(x.shape)}")
        state = self.reset_state(state, reset)
        if self.compiled_step_mode is not None:
            return _compiled_step(type(self), self.compiled_step_mode)(self, x, state)
        return self.step(x, state)

    def unroll(self, xs: Tensor, state: State, resets: Tensor | None = None) -> tuple[Tensor, State]:
        """Time-major unroll; exactly the step loop::

            for t in range(T):
                ys[t], state = self(xs[t], state, resets[t])

        ``xs``: ``[T, B, input_size]``; ``resets``: ``[T, B]`` bool or None. Returns ``ys``: ``[T, B, output_size]``
        and the final state.
        """
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        if resets is not None and resets.shape != xs.shape[:2]:
            raise ValueError(f"resets must have shape {list(xs.shape[:2])}, got {list(resets.shape)}")
        ys = []
        for t in range(xs.shape[0]):
            y, state = self(xs[t], state, None if resets is None else resets[t])
            ys.append(y)
        return torch.stack(ys), state

    def unroll_sync_free(self, xs: Tensor, state: State, resets: Tensor | None = None) -> tuple[Tensor, State]:
        """:meth:`unroll` reading nothing back to the host, for callers that must not synchronise (a PPO update
        captured as a CUDA graph). The same values; same arguments and returns. Default: :meth:`unroll` itself
        (most cores never read the host); lstm and gru run the step loop (their fused cuDNN/MKL path is chosen by
        reading the reset flags), the DNC its fused unroll with every step's reset mask applied."""
        return self.unroll(xs, state, resets)

    # ------------------------------------------------------------------ packing (SB3 buffers)
    def _state_template(self) -> State:
        return self.initial_state(1)

    @property
    def state_size(self) -> int:
        """S: the width of a packed state (sum of the per-row sizes of all state tensors)."""
        return sum(leaf[0].numel() for leaf in tree_leaves(self._state_template()))

    def pack_state(self, state: State) -> Tensor:
        """A state as one ``[B, S]`` tensor (leaves flattened per row and concatenated in field order)."""
        leaves = tree_leaves(state)
        B = leaves[0].shape[0]
        return torch.cat([leaf.reshape(B, -1).to(leaves[0].dtype) for leaf in leaves], dim=1)

    def unpack_state(self, packed: Tensor) -> State:
        """Inverse of :meth:`pack_state`: ``[B, S]`` -> state."""
        template = self._state_template()
        template_leaves = tree_leaves(template)
        width = sum(leaf[0].numel() for leaf in template_leaves)
        if packed.dim() != 2 or packed.shape[1] != width:
            raise ValueError(f"packed state must have shape [B, {width}] for this core, got {list(packed.shape)}")
        B = packed.shape[0]
        leaves, offset = [], 0
        for leaf in template_leaves:
            n = leaf[0].numel()
            leaves.append(packed[:, offset : offset + n].reshape((B,) + leaf.shape[1:]).to(leaf.dtype))
            offset += n
        return tree_unflatten(template, leaves)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, output_size={self.output_size}"


class LearnedInit(nn.Module):
    """A learned initial value of shape ``shape``, broadcast over the batch: ``expand(B) -> [B, *shape]``."""

    def __init__(self, *shape: int, init: float | Tensor = 0.0) -> None:
        super().__init__()
        value = init if isinstance(init, Tensor) else torch.full(shape, float(init))
        self.value = nn.Parameter(value.clone().reshape(shape))

    def expand(self, batch_size: int, device: torch.device | None = None) -> Tensor:
        v = self.value if device is None else self.value.to(device)
        return v.unsqueeze(0).expand((batch_size,) + tuple(v.shape))
