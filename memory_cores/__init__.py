"""memory-cores: recurrent memory cores behind one small API.

>>> import torch, memory_cores
>>> core = memory_cores.make_core("ntm", input_size=10)
>>> state = core.initial_state(batch_size=4)
>>> y, state = core(torch.randn(4, 10), state)                       # one step
>>> ys, state = core.unroll(torch.randn(7, 4, 10), state)            # time-major [T, B, ...]

See :class:`memory_cores.base.Core` for the contract every core follows.
"""

from __future__ import annotations

import inspect

from .base import Core, select_rows, stack_states, tree_leaves, tree_map
from .alstm import AssociativeLSTMCore
from .bptt import STORAGES, bptt_policy, internal_state_cost, memory_efficient_unroll
from .dnc import DNCCore
from .ebmm import EBMMCore
from .ffm import FFMCore
from .grid_lstm import GridLSTMCore
from .gtrxl import GTrXLCore
from .lru import LRUCore
from .memnet import MemNetCore
from .ntm import NTMCore
from .perceiver_ar import PerceiverARCore
from .rl_access import RLAccessCore
from .rnn import GRUCore, LSTMCore

CORES: dict[str, type[Core]] = {
    "lstm": LSTMCore,
    "gru": GRUCore,
    "alstm": AssociativeLSTMCore,
    "ntm": NTMCore,
    "dnc": DNCCore,
    "rl_access": RLAccessCore,
    "gtrxl": GTrXLCore,
    "lru": LRUCore,
    "ffm": FFMCore,
    "grid_lstm": GridLSTMCore,
    "ebmm": EBMMCore,
    "memnet": MemNetCore,
    "perceiver_ar": PerceiverARCore,
}

KERNEL_CORES: tuple[str, ...] = tuple(
    name for name, cls in CORES.items() if "kernel" in inspect.signature(cls.__init__).parameters
)
"""Cores whose constructor takes ``kernel="plain"|"auto"|"triton"``: their memory access has a Triton fast path
(:mod:`memory_cores.ntm_triton`, ``dnc_triton``, ``alstm_triton``, ``rl_access_triton``)."""


def make_core(name: str, input_size: int, **kwargs) -> Core:
    """Build the core registered as ``name`` (a key of :data:`CORES`) for inputs of width ``input_size``.

    Raises ``ValueError`` for an unknown name or keyword, listing what is valid.
    """
    if name not in CORES:
        raise ValueError(f"unknown core {name!r}; valid names: {', '.join(sorted(CORES))}")
    cls = CORES[name]
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "input_size") and params[p].kind != inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown keyword(s) {unknown} for core {name!r}; valid keywords: {', '.join(valid)}")
    return cls(input_size, **kwargs)


__all__ = [
    "CORES",
    "Core",
    "KERNEL_CORES",
    "STORAGES",
    "bptt_policy",
    "internal_state_cost",
    "make_core",
    "memory_efficient_unroll",
    "select_rows",
    "stack_states",
    "tree_leaves",
    "tree_map",
]
