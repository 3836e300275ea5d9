"""Batched, device-resident environments: the base class shared by every task in ``envs``.

A task is written once, as a :class:`BatchedEnv` subclass whose state is a few ``[N, ...]`` tensors on one torch
device; a step is a short, fixed sequence of tensor operations over all ``N`` rows (no Python loop over rows, no
``.item()``/``.cpu()``/``nonzero``/boolean-mask indexing, so a CUDA rollout never waits for the host). The same
rules serve the standard single Gymnasium env through :class:`SingleEnv` (``num_envs=1`` on CPU, numpy in and
out), so single and batched envs cannot drift apart.

Batched contract (``gymnasium.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point", device=...)``):

- ``reset(seed=None, options=None) -> (obs, info)``: every row starts a new episode (no partial resets: with
  SAME_STEP autoreset they are never needed). ``obs`` is a ``[N, *obs_shape]`` tensor on ``env.device``; ``info``
  is ``{}``; ``options`` is unused.
- ``step(actions) -> (obs, reward, terminated, truncated, info)``: ``actions`` is a ``[N, *action_shape]`` tensor
  (numpy arrays are accepted and copied to the device); ``reward`` float32 ``[N]``; ``terminated``/``truncated``
  bool ``[N]``. All outputs are tensors on ``env.device`` that the env never writes into afterwards (treat them as
  read-only: a constant such as an all-False ``truncated`` may be shared between steps).
- Autoreset mode: ``AutoresetMode.SAME_STEP`` (``env.metadata["autoreset_mode"]``). A row whose episode ends in
  this step (``terminated | truncated``) is reset inside the same ``step``: the ``obs`` returned for it is the first
  observation of its *next* episode; ``reward``/``terminated``/``truncated`` belong to the episode that ended. The
  last observation of the ended episode is only computed on request (``return_final_obs=True``) and then given as
  ``info["final_obs"]`` (``[N, *obs_shape]``, meaningful where ``info["_final_obs"]``).
- Episode statistics, with no host synchronisation: ``info["episode"]`` is a dict of ``[N]`` tensors, meaningful
  on the rows where the ``[N]`` bool mask ``info["_episode"]`` (= ``terminated | truncated``) is True:
  ``"r"`` float32 return, ``"l"`` int32 length (steps), plus the task's own entries (e.g. ``"success"`` bool,
  ``"bit_errors"`` int32). Sum them under the mask on the device (``(r * mask).sum()``, ``mask.sum()``) and read
  the totals once per rollout.

Randomness: at ``reset(seed=s)`` the env seeds ``self.generator`` (a ``torch.Generator`` on the env device, for
subclasses that draw with ``torch.rand(..., generator=self.generator)``) and derives a per-row seed
``row_seed[i] = hash(s, i)``. Subclasses may instead draw *counter-based* random numbers: :meth:`episode_keys`
gives a 32-bit key per row that is a hash of ``(row_seed, episode_id)``, where ``episode_id[i]`` counts the
episodes row ``i`` has started since the seed; :func:`hash32` of ``key + index`` gives any number of further
values (``episode_id`` is maintained while the class attribute ``counter_based`` is True, the default).
Counter-based tasks draw nothing from a shared stream, so row ``i``'s episodes depend only on ``(s, i)``:
row 0 of a batched env seeded ``s`` plays exactly the episodes of the single env seeded ``s``, independent of
``num_envs`` and bit-identical on CPU and CUDA (integer arithmetic only).

Writing a task: subclass :class:`BatchedEnv`, call ``super().__init__(num_envs, single_observation_space,
single_action_space, device=..., return_final_obs=...)`` and implement

- ``_reset_rows(mask)``: start a new episode on the rows where ``mask`` (``[N]`` bool) is True, leaving the other
  rows untouched (``torch.where``); called with all rows True by ``reset`` and with ``terminated | truncated`` by
  ``step``; ``self.episode_id`` has already been advanced for those rows;
- ``_step(actions) -> (reward, terminated, truncated, episode_info)``: advance every row by one step, with
  ``actions`` already checked (shape, device, dtype of ``single_action_space``); ``truncated`` may be ``None`` for
  a task that never truncates; ``episode_info`` is a dict of ``[N]`` tensors valid on rows whose episode ends now
  (they go into ``info["episode"]``);
- ``_observe() -> obs``: the ``[N, *obs_shape]`` observation of the current state (a new tensor).

Numpy users: :class:`NumpyVectorEnv` wraps a batched env into numpy in / numpy out (SAME_STEP autoreset, like
Stable-Baselines3's ``VecEnv``; an SB3 adapter only has to split ``info`` per row).
"""

from __future__ import annotations

import secrets
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

__all__ = [
    "BatchedEnv",
    "SingleEnv",
    "NumpyVectorEnv",
    "hash32",
    "uniform_int",
    "resolve_device",
    "check_int",
    "check_float",
    "to_numpy",
]

MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B9  # 2^32 / golden ratio: the Weyl increment of counter-based streams


# --------------------------------------------------------------------------------------------------------------------
# option checking
# --------------------------------------------------------------------------------------------------------------------


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``torch.device(device)``, raising ``ValueError`` for an unknown or unavailable device."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a torch device (use 'cpu', 'cuda' or 'cuda:<index>')") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available on this machine (use 'cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: valid CUDA indices are 0..{torch.cuda.device_count() - 1}")
    elif dev.type not in ("cpu", "mps", "xpu", "meta"):
        raise ValueError(f"device={device!r} is not supported (use 'cpu' or 'cuda')")
    return dev


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (``high=None``: no upper bound), else ``ValueError`` naming it."""
    valid = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} is not valid: expected {valid}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range: expected {valid}")
    return value


def check_float(name: str, value: Any, low: float = -float("inf"), high: float = float("inf")) -> float:
    """``value`` as a finite float in ``[low, high]``, else ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}={value!r} is not valid: expected a number in [{low}, {high}]")
    value = float(value)
    if not np.isfinite(value) or value < low or value > high:
        raise ValueError(f"{name}={value} is out of range: expected a finite number in [{low}, {high}]")
    return value


# --------------------------------------------------------------------------------------------------------------------
# counter-based random numbers (integer tensor ops, identical on every device)
# --------------------------------------------------------------------------------------------------------------------


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (a bijection on ``[0, 2^32)``; "lowbias32" by C. Wellons), element-wise.

    ``x``: int64 tensor of any shape; only its low 32 bits are used. Returns int64 values in ``[0, 2^32)``. Products
    of two 32-bit values fit in 64 bits up to wrap-around of the sign bit, which the mask undoes, so the result is
    exact on every device.
    """
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def uniform_int(key: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Integers in ``[low, high]`` from 32-bit hashed values ``key`` (int64, any shape), by modulo.

    The modulo bias is below ``(high - low + 1) / 2^32``: negligible for the small ranges used here.
    """
    return low + key % (high - low + 1)


def _seed_to_row_seeds(seed: int, num_envs: int, device: torch.device) -> torch.Tensor:
    """``[N]`` int64 per-row seeds ``hash(seed, row)``: row ``i`` depends only on ``(seed, i)``."""
    lo, hi = seed & MASK32, (seed >> 32) & MASK32
    s = int(hash32(torch.tensor([lo ^ int(hash32(torch.tensor([hi + 0x5BD1E995]))[0])]))[0])
    rows = torch.arange(num_envs, dtype=torch.int64, device=device)
    return hash32(s + hash32(rows * GOLDEN32 + 0x68E31DA4))


# --------------------------------------------------------------------------------------------------------------------
# the batched env
# --------------------------------------------------------------------------------------------------------------------


class BatchedEnv(VectorEnv):
    """``N`` independent episodes of one task, stepped together as tensor operations on ``device``.

    Args:
        num_envs: N, the number of rows (>= 1).
        single_observation_space: the observation space of one row (a ``Box``).
        single_action_space: the action space of one row (``Discrete``, ``MultiBinary`` or ``Box``).
        device: torch device of every state tensor, input and output.
        return_final_obs: also compute the last observation of each ending episode (``info["final_obs"]``); costs
            one extra ``_observe`` per step, so it is off by default.

    See the module docstring for the step/reset contract, the autoreset mode and the ``info`` keys.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    counter_based: bool = True  # keep ``episode_id`` up to date (for :meth:`episode_keys`); False saves an op a step

    def __init__(
        self,
        num_envs: int,
        single_observation_space: gym.Space,
        single_action_space: gym.Space,
        *,
        device: torch.device | str | None = "cpu",
        return_final_obs: bool = False,
    ) -> None:
        self.num_envs = check_int("num_envs", num_envs, 1)
        self.device = resolve_device(device)
        self.return_final_obs = bool(return_final_obs)
        self.single_observation_space = single_observation_space
        self.single_action_space = single_action_space
        self.observation_space = batch_space(single_observation_space, self.num_envs)
        self.action_space = batch_space(single_action_space, self.num_envs)
        self._action_shape = (self.num_envs, *single_action_space.shape)
        if isinstance(single_action_space, gym.spaces.Discrete):
            self._action_dtype = torch.int64
        elif isinstance(single_action_space, gym.spaces.MultiBinary):
            self._action_dtype = torch.bool
        else:
            self._action_dtype = torch.float32

        N, dev = self.num_envs, self.device
        self._tensor_device = torch.empty(0, device=dev).device  # as tensors report it ("cuda:0" for "cuda")
        self.generator = torch.Generator(device=dev)
        self.row_seed = torch.zeros(N, dtype=torch.int64, device=dev)  # [N] per-row seed, hash(seed, row)
        self.episode_id = torch.zeros(N, dtype=torch.int64, device=dev)  # [N] episodes started since the seed
        self._ep_return = torch.zeros(N, dtype=torch.float32, device=dev)  # [N] return so far
        self._ep_length = torch.zeros(N, dtype=torch.int32, device=dev)  # [N] steps so far
        self._seeded = False
        self._all_rows = torch.ones(N, dtype=torch.bool, device=dev)
        self._zero_f = torch.zeros((), dtype=torch.float32, device=dev)
        self._zero_i = torch.zeros((), dtype=torch.int32, device=dev)
        self._never = torch.zeros(N, dtype=torch.bool, device=dev)  # returned as ``truncated`` by tasks that never truncate

    # ---- to implement in a task ------------------------------------------------------------------------------------

    def _reset_rows(self, mask: torch.Tensor) -> None:
        """Start a new episode on the rows where ``mask`` (``[N]`` bool) is True; keep the others."""
        raise NotImplementedError

    def _step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Advance every row one step; returns ``reward [N] f32, terminated [N] bool, truncated [N] bool, ep_info``."""
        raise NotImplementedError

    def _observe(self) -> torch.Tensor:
        """The ``[N, *obs_shape]`` observation of the current state, as a new tensor."""
        raise NotImplementedError

    def prepare_static(self) -> None:
        """Make ``step`` replayable in fixed buffers (a CUDA graph): move any host-side step state a task keeps
        (a Python counter) into device tensors updated in place. Called by :class:`envs.capture.StaticStep`
        before its first reset; a no-op for tasks whose state is all tensors."""

    # ---- helpers for tasks -----------------------------------------------------------------------------------------

    def episode_keys(self) -> torch.Tensor:
        """``[N]`` int64 32-bit keys, one per (row, episode): ``hash(row_seed + hash(episode_id))``."""
        return hash32(self.row_seed + hash32(self.episode_id * GOLDEN32 + 0x2545F491))

    # ---- the VectorEnv API -----------------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Start new episodes on every row; returns ``(obs [N, ...], {})``.

        ``seed``: an int >= 0 re-seeds the env (same seed, same episodes). Without a seed, the first reset draws one
        from the OS and later resets continue from the current state (each reset row starts its next episode).
        """
        if seed is not None:
            seed = check_int("seed", seed, 0)
        elif not self._seeded:
            seed = secrets.randbits(63)
        if seed is not None:
            super().reset(seed=seed)
            self.generator.manual_seed(seed)
            self.row_seed = _seed_to_row_seeds(seed, self.num_envs, self.device)
            self.episode_id = torch.zeros_like(self.episode_id)
            self._seeded = True
        else:
            self.episode_id = self.episode_id + 1
        self._ep_return = torch.zeros_like(self._ep_return)
        self._ep_length = torch.zeros_like(self._ep_length)
        self._reset_rows(self._all_rows)
        return self._observe(), {}

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """One step of every row, with SAME_STEP autoreset (see the module docstring)."""
        if not self._seeded:
            raise RuntimeError("call reset() before step()")
        a = self.check_actions(actions)
        reward, terminated, truncated, ep_info = self._step(a)
        if truncated is None:  # a task that never truncates
            truncated, done = self._never, terminated
        else:
            done = terminated | truncated
        ep_return = self._ep_return + reward  # [N]
        ep_length = self._ep_length + 1  # [N]
        info: dict[str, Any] = {"episode": {"r": ep_return, "l": ep_length, **ep_info}, "_episode": done}
        self._ep_return = torch.where(done, self._zero_f, ep_return)
        self._ep_length = torch.where(done, self._zero_i, ep_length)
        if self.return_final_obs:
            info["final_obs"] = self._observe()
            info["_final_obs"] = done
        if self.counter_based:
            self.episode_id = self.episode_id + done
        self._reset_rows(done)
        return self._observe(), reward, terminated, truncated, info

    def check_actions(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``actions`` as a ``[N, *action_shape]`` tensor on the env device with the action space's dtype.

        Shape errors raise ``ValueError``; values are not range-checked (that would need a host sync):
        ``MultiBinary`` actions are read as ``action != 0`` (or ``> 0.5`` for floats), ``Discrete`` as integers.
        """
        if not isinstance(actions, torch.Tensor):
            actions = torch.as_tensor(np.asarray(actions))
        if tuple(actions.shape) != self._action_shape:
            raise ValueError(
                f"actions have shape {tuple(actions.shape)}: expected {self._action_shape} "
                f"(num_envs={self.num_envs}, single_action_space={self.single_action_space})"
            )
        if actions.device != self._tensor_device:
            actions = actions.to(self.device)
        if actions.dtype != self._action_dtype:
            if self._action_dtype == torch.bool and actions.is_floating_point():
                actions = actions > 0.5
            else:
                actions = actions.to(self._action_dtype)
        return actions

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_envs={self.num_envs}, device={self.device})"


# --------------------------------------------------------------------------------------------------------------------
# the single Gymnasium env (one-row batched env on CPU, numpy in and out)
# --------------------------------------------------------------------------------------------------------------------


def to_numpy(x: Any) -> Any:
    """Tensors (also inside dicts, lists and tuples) to numpy arrays on the host."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(v) for v in x)
    return x


class SingleEnv(gym.Env):
    """A standard ``gymnasium.Env`` playing row 0 of ``batched_cls(num_envs=1, device="cpu", **options)``.

    Subclasses set ``batched_cls``. Numpy in and out; ``reset(seed=s)`` gives the same episodes as row 0 of the
    batched env reset with ``seed=s`` (for counter-based tasks). At the last step of an episode the observation is
    the episode's final one, and ``info`` holds the task's episode statistics (e.g. ``success``, ``bit_errors``) as
    Python scalars; other steps return ``{}``. After the end, ``reset()`` starts the row's next episode.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    batched_cls: type[BatchedEnv]

    def __init__(self, render_mode: str | None = None, **options: Any) -> None:
        if render_mode is not None:
            # No renderer: accept and ignore the mode (Stable-Baselines3's make_vec_env asks for "rgb_array").
            gym.logger.warn(f"render_mode={render_mode!r} is ignored: these tasks have no renderer")
        self.render_mode = None
        device = resolve_device(options.pop("device", "cpu"))
        if device.type != "cpu":
            raise ValueError(
                f"device={device} is not valid for a single env, which runs on 'cpu' (numpy in and out); "
                "use gymnasium.make_vec(..., device=...) for a batched env on another device"
            )
        self.batched = self.batched_cls(num_envs=1, device="cpu", return_final_obs=True, **options)
        self.observation_space = self.batched.single_observation_space
        self.action_space = self.batched.single_action_space
        self._pending_obs: torch.Tensor | None = None  # first obs of the next episode, after an episode end

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is None and self._pending_obs is not None:
            obs = self._pending_obs  # the batched env already started the next episode
        else:
            obs, _ = self.batched.reset(seed=seed)
        self._pending_obs = None
        return obs[0].numpy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = torch.as_tensor(np.asarray(action))
        if tuple(a.shape) != tuple(self.action_space.shape):
            raise ValueError(f"action has shape {tuple(a.shape)}: expected {self.action_space.shape} ({self.action_space})")
        obs, reward, terminated, truncated, info = self.batched.step(a[None])
        term, trunc = bool(terminated[0]), bool(truncated[0])
        out: dict[str, Any] = {}
        if term or trunc:
            self._pending_obs = obs
            obs = info["final_obs"]
            for k, v in info["episode"].items():
                if k not in ("r", "l"):
                    out[k] = v[0].item()
        return obs[0].numpy(), float(reward[0]), term, trunc, out


# --------------------------------------------------------------------------------------------------------------------
# numpy view of a batched env
# --------------------------------------------------------------------------------------------------------------------


class NumpyVectorEnv(gym.vector.VectorWrapper):
    """Numpy in / numpy out view of a :class:`BatchedEnv` (same SAME_STEP autoreset and ``info`` layout).

    Each step copies observations, rewards, flags and info to the host, so use it for numpy libraries, not for
    speed.
    """

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        return to_numpy(obs), to_numpy(info)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(torch.as_tensor(np.asarray(actions)))
        return to_numpy(obs), to_numpy(reward), to_numpy(terminated), to_numpy(truncated), to_numpy(info)
