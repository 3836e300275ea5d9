"""A batched env stepped with its state in fixed buffers, and replayed as a CUDA graph on a GPU.

An eager :class:`envs.base.BatchedEnv` step is a few dozen small kernels: at 4,096 envs on a GPU each step costs
0.3 to 1 ms of launches whatever the batch (docs/gpu.md). A CUDA graph replays all of a step's kernels with one
launch, but it reads and writes fixed addresses, while a task's step rebinds its state attributes to new tensors
(``self.t = self.t + 1``). :class:`StaticStep` bridges the two without touching any task:

* **Fixed buffers** (every device): the env's ``prepare_static()`` first moves host-side step state (the copy
  tasks' Python step counter, MemoryMaze's lockstep count) into device tensors; after each ``step`` (and ``reset``)
  the tensors the step bound to the env's state attributes are copied into the buffers those attributes held
  before, and the attributes are bound back to them. The env's state therefore lives at the same addresses for
  its whole life; values are exactly the plain env's. A step that changes a state tensor's shape or dtype,
  creates a new state attribute or changes a Python attribute cannot be replayed and is refused with a one-line
  error (``reset`` runs eagerly and may change Python attributes such as the seed; a task's step must not read
  Python attributes that ``reset`` changes).
* **CUDA graph** (``graph=True``, CUDA only): the first step after construction warms up on a side stream (the
  state is saved before and restored after, so the episodes are the plain env's), then captures one in-place step
  into a ``torch.cuda.CUDAGraph``; every step copies the actions into a fixed input buffer and replays the graph.
  Counter-based tasks (``counter_based = True``: MiniGridMemory, MemoryMaze) draw their randomness from state
  tensors, so replays equal the eager env bit for bit; tasks that draw from ``env.generator`` (the copy tasks'
  sequences, the T-maze's cue) have it registered with the graph (``CUDAGraph.register_generator_state``,
  :func:`register_env_generator`), so each replay draws new numbers from the generator's advancing offset.

Outputs of a replayed step (``obs``, ``reward``, ``terminated``, ``truncated``, ``info`` tensors) are the graph's
fixed output tensors: the next ``step`` overwrites them. Consume or copy them before stepping again (the PPO
rollout does: each is written into the rollout buffers or read by the policy before the next step).

Example::

    env = StaticStep(gym.make_vec("MemoryCores/Copy-v0", num_envs=4096, vectorization_mode="vector_entry_point",
                                  device="cuda").unwrapped, graph=True)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(actions)   # [4096, ...] tensors, one graph launch
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from envs.base import BatchedEnv

__all__ = ["StaticStep", "record_graph", "register_env_generator"]

_SCALARS = (bool, int, float, str, type(None))


def _leaves(v: Any) -> tuple[torch.Tensor, ...] | None:
    """The tensors of a state attribute (a tensor, or a tuple/list of tensors), or None for anything else."""
    if isinstance(v, torch.Tensor):
        return (v,)
    if isinstance(v, (tuple, list)) and v and all(isinstance(x, torch.Tensor) for x in v):
        return tuple(v)
    return None


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def record_graph(graph: torch.cuda.CUDAGraph, fn: Callable[[], Any]) -> Any:
    """Record ``fn()`` into ``graph`` (``torch.cuda.graph``: its kernels are recorded, not run; its Python runs
    once) and return what it returned. Every capture of this package goes through here."""
    with torch.cuda.graph(graph):
        return fn()


def register_env_generator(graph: torch.cuda.CUDAGraph, env: BatchedEnv) -> None:
    """Register ``env.generator`` with ``graph`` (before its capture) when the task draws from it, so that each
    replay draws new numbers; counter-based tasks draw from their state tensors and need nothing."""
    if env.counter_based:
        return
    register = getattr(graph, "register_generator_state", None)
    if register is None:
        raise RuntimeError(f"{type(env).__name__} draws from env.generator and this torch cannot register a "
                           "generator with a CUDA graph (CUDAGraph.register_generator_state); capture without a graph")
    register(env.generator)


class StaticStep:
    """``env`` (a :class:`envs.base.BatchedEnv`) with its state in fixed buffers; ``graph=True`` replays each step
    as one CUDA graph (see the module docstring).

    Args:
        env: a batched env of this package (``gym.make_vec(..., vectorization_mode="vector_entry_point")``, its
            ``.unwrapped`` if wrapped).
        graph: capture the step in a CUDA graph (needs ``env.device`` to be CUDA).
        warmup: eager steps on a side stream before the capture (their effect on the state is undone).

    ``reset(seed=None)`` and ``step(actions)`` are the env's (same shapes: ``actions [N, *action_shape]`` on the
    env's device); every other attribute is the env's.
    """

    def __init__(self, env: BatchedEnv, graph: bool = False, warmup: int = 3) -> None:
        if not isinstance(env, BatchedEnv):
            raise TypeError(f"StaticStep needs a BatchedEnv of this package (got {type(env).__name__}); pass "
                            "gym.make_vec(..., vectorization_mode='vector_entry_point') or its .unwrapped")
        if graph and env.device.type != "cuda":
            raise ValueError(f"StaticStep(graph=True) needs a CUDA env (this env is on {env.device})")
        self.env, self.graph, self.warmup = env, bool(graph), int(warmup)
        self._state: dict[str, Any] | None = None  # attribute -> the value (tensor / tuple of tensors) it keeps
        self._scalars: dict[str, Any] = {}
        self._cuda_graph: torch.cuda.CUDAGraph | None = None
        self._actions: torch.Tensor | None = None  # the graph's fixed input
        self._out: tuple | None = None  # the graph's fixed outputs

    def __getattr__(self, name: str) -> Any:  # num_envs, device, spaces, metadata, ...
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    # ---------------------------------------------------------------------------------------------- fixed buffers
    def _snapshot(self) -> None:
        """Take the env's current state attributes as the fixed buffers."""
        d = vars(self.env)
        self._state = {k: v for k, v in d.items() if _leaves(v) is not None}
        self._scalars = {k: v for k, v in d.items() if isinstance(v, _SCALARS)}

    def _write_back(self, what: str) -> None:
        """Copy the tensors the last call bound to state attributes into the fixed buffers; bind those back."""
        env, state, name = self.env, self._state, type(self.env).__name__
        d = vars(env)
        for k, v in d.items():
            if k not in state and _leaves(v) is not None:
                raise RuntimeError(f"{name}.{what} created the state attribute {k!r}: its step cannot run in fixed "
                                   "buffers")
            if what == "step" and isinstance(v, _SCALARS) and (
                    k not in self._scalars or not (v is self._scalars[k] or v == self._scalars[k])):
                raise RuntimeError(f"{name}.{what} changed the Python attribute {k!r} ({self._scalars.get(k)!r} -> "
                                   f"{v!r}): a CUDA graph would replay the old value")
        changed = [(k, d[k]) for k, old in state.items() if d.get(k) is not old]
        if not changed:
            return
        held = {_storage(t) for v in state.values() for t in _leaves(v)}
        staged = []
        for k, new in changed:
            old_l, new_l = _leaves(state[k]), _leaves(new)
            if new_l is None or len(new_l) != len(old_l) or any(
                    a.shape != b.shape or a.dtype != b.dtype or a.device != b.device for a, b in zip(old_l, new_l)):
                raise RuntimeError(f"{name}.{what} changed the shape, dtype or device of {k!r}: its step cannot run in "
                                   "fixed buffers")
            # a new value that is (a view of) a fixed buffer is cloned first: copies below may overwrite that buffer
            staged.append((old_l, [b.clone() if _storage(b) in held else b for b in new_l]))
        for old_l, new_l in staged:
            for a, b in zip(old_l, new_l):
                a.copy_(b)
        for k, _ in changed:
            setattr(env, k, state[k])

    def bind_buffers(self) -> None:
        """Bind the env's state attributes back to the fixed buffers (after a step that failed half-way, e.g. a
        CUDA-graph capture that raised: the buffers hold the state of before that step)."""
        if self._state is not None:
            for k, v in self._state.items():
                setattr(self.env, k, v)

    def _step_in_place(self, actions: torch.Tensor) -> tuple:
        out = self.env.step(actions)
        self._write_back("step")
        return out

    # ---------------------------------------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The env's ``reset``, its new state written into the fixed buffers (taken at the first reset)."""
        if self._state is None:
            self.env.prepare_static()
            obs, info = self.env.reset(seed=seed, options=options)
            self._snapshot()
            return obs, info
        obs, info = self.env.reset(seed=seed, options=options)
        self._write_back("reset")
        self._scalars = {k: v for k, v in vars(self.env).items() if isinstance(v, _SCALARS)}  # (the seed, ...)
        return obs, info

    def step(self, actions: torch.Tensor) -> tuple:
        """The env's ``step`` (see the class docstring for what a replayed step's outputs are)."""
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if not self.graph:
            return self._step_in_place(actions)
        actions = self.env.check_actions(actions)
        if self._cuda_graph is None:
            self._capture(actions)
        self._actions.copy_(actions)
        self._cuda_graph.replay()
        return self._out

    def _capture(self, actions: torch.Tensor) -> None:
        env = self.env
        self._actions = actions.clone()
        saved = {k: [t.clone() for t in _leaves(v)] for k, v in self._state.items()}
        gen_state = env.generator.get_state()
        side = torch.cuda.Stream(device=env.device)
        side.wait_stream(torch.cuda.current_stream(env.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._step_in_place(self._actions)
        torch.cuda.current_stream(env.device).wait_stream(side)
        for k, v in self._state.items():  # undo the warm-up: the episodes are the plain env's
            for t, s in zip(_leaves(v), saved[k]):
                t.copy_(s)
        env.generator.set_state(gen_state)
        g = torch.cuda.CUDAGraph()
        register_env_generator(g, env)
        # records the kernels without running them: the state is as restored
        out = record_graph(g, lambda: self._step_in_place(self._actions))
        self._cuda_graph, self._out = g, out
