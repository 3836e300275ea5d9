"""One torch view of every environment the trainer accepts.

:class:`TorchVecEnv` gives PPO the same interface for

* the project's batched tensor envs (``envs.BatchedEnv``, made with ``vectorization_mode="vector_entry_point"``):
  everything stays on the device; no host synchronisation per step;
* any other Gymnasium id or ``VectorEnv`` (numpy): made as a ``SyncVectorEnv`` with SAME_STEP autoreset, converted
  to torch once per step.

Both use SAME_STEP autoreset: after ``step`` the observation of a row whose episode ended is the first of its next
episode; the last observation of the ended episode comes as ``final_obs`` (needed to bootstrap truncated
episodes). Episode statistics (return, length, success) are summed on the device under the done mask and read
once per rollout with :meth:`EpisodeStats.pop`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor


class EnvError(ValueError):
    """A user error about the environment (unknown id, bad keyword, unsupported autoreset mode)."""


class StepOut(NamedTuple):
    """One step of ``N`` envs: ``obs`` (first obs of the next episode where ``done``), ``reward`` f32 ``[N]``,
    ``terminated``/``truncated`` bool ``[N]``, ``final_obs`` (last obs of the ended episode where ``done``; None
    when not requested), ``success`` bool ``[N]`` (meaningful where ``done``; None when the env has none)."""

    obs: Any
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    final_obs: Any
    success: Tensor | None


def _to_torch(x: Any, device: torch.device) -> Any:
    """A batched numpy observation as torch tensors on ``device``, nested as its space: a ``Dict`` batch -> a
    ``dict`` (``Text`` entries dropped), a ``Tuple`` batch -> a ``tuple`` (``None`` in a ``Text`` entry's place,
    so the positions still match the space), any depth; arrays -> tensors."""
    if isinstance(x, dict):
        return {k: _to_torch(v, device) for k, v in x.items() if not _is_text(v)}
    if isinstance(x, tuple):
        return tuple(None if _is_text(v) else _to_torch(v, device) for v in x)
    return torch.as_tensor(np.asarray(x), device=device)


def _is_text(v: Any) -> bool:
    """Whether a batched entry is text: a string array, or the tuple of ``N`` strings that Gymnasium batches a
    ``Text`` (or MiniGrid mission) entry into. A ``dict``/``tuple`` of arrays (a nested space) is not text."""
    if isinstance(v, dict):
        return False
    if isinstance(v, tuple):
        return len(v) > 0 and all(isinstance(e, (str, bytes)) for e in v)
    a = np.asarray(v)
    return a.dtype.kind in ("U", "S", "O")


def _project_env_ids() -> None:
    try:
        import envs  # noqa: F401  (registers MemoryCores/* on import)
    except ImportError:  # pragma: no cover - the project's envs are optional for the agents
        pass


def _maybe_import_minigrid(env_id: str) -> None:
    if env_id.startswith("MiniGrid") or env_id.startswith("BabyAI"):
        try:
            import minigrid  # noqa: F401
        except ImportError as e:
            raise EnvError(f"env {env_id!r} needs the minigrid package: pip install minigrid") from e


def split_env_id(env_id: str) -> tuple[str | None, str]:
    """Gymnasium's ``"module:EnvId"`` form -> ``("module", "EnvId")``; a plain id -> ``(None, id)``."""
    module, sep, name = env_id.rpartition(":")
    return (module, name) if sep and module else (None, env_id)


def _import_module(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EnvError(f"{what}: cannot import module {module!r} ({e}); is it installed or on PYTHONPATH?") from None


def resolve_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of ``env_id`` (a registered id, or Gymnasium's ``"module:EnvId"`` form, which imports
    ``module`` first so that it registers its envs, as ``gym.make`` does), or :class:`EnvError` with a clear
    message."""
    _project_env_ids()
    module, name = split_env_id(env_id)
    if module is not None:
        _import_module(module, f"env {env_id!r}")
    _maybe_import_minigrid(name)
    try:
        return gym.spec(name)
    except gym.error.Error as e:
        known = sorted(k for k in gym.registry if k.startswith("MemoryCores/"))
        where = f" after importing {module!r}" if module else ""
        raise EnvError(f"unknown env id {name!r}{where} ({e}); project tasks: {', '.join(known)}") from None


def load_env_factory(target: str) -> Callable[..., gym.Env]:
    """The function named by ``"module:function"`` (``--env-factory``); :class:`EnvError` when it cannot be
    imported or is not callable. The function is called with the env keywords and returns one ``gymnasium.Env``
    (wrappers included)."""
    module, sep, name = target.rpartition(":")
    if not sep or not module or not name:
        raise EnvError(f"--env-factory {target!r} is not valid: expected module:function, e.g. my_envs:make_env")
    mod = _import_module(module, f"--env-factory {target!r}")
    fn = getattr(mod, name, None)
    if fn is None:
        raise EnvError(f"--env-factory {target!r}: module {module!r} has no attribute {name!r}")
    if not callable(fn):
        raise EnvError(f"--env-factory {target!r} is not callable")
    fn.env_factory_name = target  # how TorchVecEnv names the env
    return fn


def factory_name(fn: Callable) -> str:
    """``"module:function"`` of an env factory (as given to :func:`load_env_factory`, else from the function)."""
    return getattr(fn, "env_factory_name", None) or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"


def _checked_factory(fn: Callable[..., gym.Env], env_kwargs: dict) -> Callable[[], gym.Env]:
    """A thunk for ``SyncVectorEnv`` that calls ``fn(**env_kwargs)`` and checks that it returned a single env."""

    def make() -> gym.Env:
        try:
            env = fn(**env_kwargs)
        except TypeError as e:
            raise EnvError(f"env factory {factory_name(fn)}: bad env_kwargs {json.dumps(env_kwargs)}: {e}") from None
        if isinstance(env, gym.vector.VectorEnv) or not isinstance(env, gym.Env):
            raise EnvError(
                f"env factory {factory_name(fn)} returned {type(env).__name__}: it must return one gymnasium.Env "
                "(the trainer runs N copies in a SyncVectorEnv)"
            )
        return env

    return make


def _is_batched_tensor_env(spec: gym.envs.registration.EnvSpec) -> bool:
    """Whether the id's vector entry point is one of the project's device-resident batched envs."""
    if spec.vector_entry_point is None:
        return False
    try:
        from envs.base import BatchedEnv
    except ImportError:  # pragma: no cover
        return False
    creator = spec.vector_entry_point
    if isinstance(creator, str):
        try:
            creator = gym.envs.registration.load_env_creator(creator)
        except (ImportError, AttributeError, ModuleNotFoundError):
            return False
    return isinstance(creator, type) and issubclass(creator, BatchedEnv)


class TorchVecEnv:
    """``N`` environments with torch tensors in and out on ``device`` (see the module docstring).

    Args:
        env: a Gymnasium id (str; ``"module:EnvId"`` imports ``module`` first, as ``gym.make`` does), an env
            factory (a callable returning one ``gymnasium.Env``, called as ``env(**env_kwargs)`` for each of the N
            copies of a ``SyncVectorEnv``), or a ``VectorEnv`` instance (with SAME_STEP autoreset).
        num_envs: N (ignored for an instance).
        device: torch device of every tensor the adapter returns.
        env_kwargs: keyword arguments for the env's constructor (ids and factories).
        need_final_obs: ask for the last observation of ended episodes (``StepOut.final_obs``).
    """

    def __init__(
        self,
        env: str | Callable[..., gym.Env] | gym.vector.VectorEnv,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        env_kwargs: dict | None = None,
        need_final_obs: bool = True,
    ) -> None:
        self.device = torch.device(device)
        env_kwargs = dict(env_kwargs or {})
        self.need_final_obs = need_final_obs
        if isinstance(env, str):
            spec = resolve_spec(env)
            self.env_id = env
            try:
                if _is_batched_tensor_env(spec):
                    venv = gym.make_vec(
                        spec, num_envs=num_envs, vectorization_mode="vector_entry_point", device=self.device,
                        return_final_obs=need_final_obs, **env_kwargs,
                    )
                else:
                    venv = gym.make_vec(
                        spec, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **env_kwargs,
                    )
            except TypeError as e:
                raise EnvError(f"bad env_kwargs {json.dumps(env_kwargs)} for {env!r}: {e}") from None
        elif callable(env) and not isinstance(env, gym.vector.VectorEnv):
            self.env_id = factory_name(env)
            venv = gym.vector.SyncVectorEnv(
                [_checked_factory(env, env_kwargs) for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP
            )
        elif isinstance(env, gym.vector.VectorEnv):
            venv, self.env_id = env, getattr(getattr(env, "spec", None), "id", None) or type(env).__name__
        else:
            raise EnvError(
                f"env {env!r} is not valid: expected an env id, an env factory or a gymnasium VectorEnv "
                f"(a single gymnasium.Env: pass a function that makes it)"
            )
        mode = venv.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode != AutoresetMode.SAME_STEP and str(mode) != str(AutoresetMode.SAME_STEP.value):
            raise EnvError(
                f"the VectorEnv uses autoreset mode {mode}; the trainer needs SAME_STEP: create it with "
                "vector_kwargs={'autoreset_mode': gymnasium.vector.AutoresetMode.SAME_STEP}"
            )
        self.venv = venv
        self.num_envs = venv.num_envs
        self.single_observation_space = venv.single_observation_space
        self.single_action_space = venv.single_action_space
        self.is_torch = isinstance(getattr(venv, "device", None), torch.device)
        if self.is_torch and venv.device != self.device:
            raise EnvError(f"the env lives on {venv.device} but the trainer runs on {self.device}")
        if self.is_torch and need_final_obs and not getattr(venv, "return_final_obs", True):
            venv.return_final_obs = True
        # success: the env's own flag, else (MiniGrid) a positive reward at termination
        self._minigrid_success = "minigrid" in str(getattr(getattr(venv, "spec", None), "entry_point", "")).lower() or (
            split_env_id(self.env_id)[1].startswith("MiniGrid")
        )

    def use_static_step(self) -> None:
        """Step the env with its state in fixed buffers (:class:`envs.capture.StaticStep`), as a rollout step
        captured in a CUDA graph needs; call before the first :meth:`reset`. Batched tensor envs of this package
        only (a task whose step changes a state's shape or a Python attribute is refused at its first step)."""
        from envs.base import BatchedEnv
        from envs.capture import StaticStep

        if isinstance(self.venv, StaticStep):
            return
        base = getattr(self.venv, "unwrapped", self.venv)
        if not self.is_torch or not isinstance(base, BatchedEnv) or base is not self.venv:
            raise EnvError(f"--capture-rollout needs a batched tensor env of this package (MemoryCores/..., "
                           f"unwrapped); {self.env_id!r} steps {type(self.venv).__name__} on the host")
        self.venv = StaticStep(base)

    def reset(self, seed: int | None = None) -> Any:
        obs, _ = self.venv.reset(seed=seed)
        return obs if self.is_torch else _to_torch(obs, self.device)

    def step(self, action: Tensor) -> StepOut:
        if self.is_torch:
            obs, reward, term, trunc, info = self.venv.step(action)
            ep = info.get("episode", {})
            success = ep.get("success")
            if success is None and self._minigrid_success:
                success = term & (reward > 0)
            final = info.get("final_obs") if self.need_final_obs else None
            return StepOut(obs, reward.float(), term, trunc, final, None if success is None else success.bool())
        # numpy env: one conversion per step
        obs, reward, term, trunc, info = self.venv.step(action.cpu().numpy())
        done = np.logical_or(term, trunc)
        final = None
        if self.need_final_obs:
            final = obs if not isinstance(obs, dict) else dict(obs)
            if done.any() and "final_obs" in info:
                final = _replace_rows(obs, info["final_obs"], done)
        success = None
        finfo = info.get("final_info", {})
        for key in ("success", "is_success"):
            if key in finfo:
                success = np.asarray(finfo[key], dtype=bool) & done
        if success is None and self._minigrid_success:
            success = np.asarray(term) & (np.asarray(reward) > 0)
        dev = self.device
        return StepOut(
            _to_torch(obs, dev),
            torch.as_tensor(np.asarray(reward, dtype=np.float32), device=dev),
            torch.as_tensor(np.asarray(term, dtype=bool), device=dev),
            torch.as_tensor(np.asarray(trunc, dtype=bool), device=dev),
            None if final is None else _to_torch(final, dev),
            None if success is None else torch.as_tensor(success, device=dev),
        )

    def close(self) -> None:
        self.venv.close()


def _replace_rows(obs: Any, final_obs: np.ndarray, done: np.ndarray) -> Any:
    """``obs`` (a batch: arrays ``[N, ...]`` nested in dicts/tuples as the space) with the rows where ``done``
    replaced by the per-env ``final_obs`` entries (an object array ``[N]`` of single observations, nested the same
    way). ``obs`` is not modified."""
    rows = [final_obs[i] if d else None for i, d in enumerate(np.asarray(done, dtype=bool))]
    return _replace_rows_nested(obs, rows)


def _replace_rows_nested(obs: Any, rows: list) -> Any:
    """:func:`_replace_rows` on one level: ``rows[i]`` is env ``i``'s single observation at this level, or None
    to keep the row."""
    if isinstance(obs, dict):
        return {k: _replace_rows_nested(v, [None if r is None else r[k] for r in rows]) for k, v in obs.items()}
    if isinstance(obs, tuple):
        if _is_text(obs):  # a Text entry batched as a tuple of N strings
            return tuple(v if r is None else r for v, r in zip(obs, rows))
        return tuple(
            _replace_rows_nested(v, [None if r is None else r[j] for r in rows]) for j, v in enumerate(obs)
        )
    out = np.array(obs, copy=True)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = r
    return out


@dataclass
class EpisodeStats:
    """Device-side running sums over finished episodes (no host sync until :meth:`pop`)."""

    num_envs: int
    device: torch.device

    def __post_init__(self) -> None:
        z = lambda: torch.zeros((), device=self.device)  # noqa: E731
        self.ret = torch.zeros(self.num_envs, device=self.device)  # [N] running return
        self.len = torch.zeros(self.num_envs, device=self.device)  # [N] running length
        self.count, self.sum_ret, self.sum_len, self.sum_success, self.count_success = z(), z(), z(), z(), z()

    def add(self, reward: Tensor, done: Tensor, success: Tensor | None) -> None:
        """Fold one step in (``[N]`` reward, done, success or None). In place: the sums keep their tensors, so a
        rollout step captured as a CUDA graph (``--capture-rollout graph``) keeps adding to them."""
        self.ret.add_(reward)
        self.len.add_(1)
        d = done.float()
        self.count.add_(d.sum())
        self.sum_ret.add_((self.ret * d).sum())
        self.sum_len.add_((self.len * d).sum())
        if success is not None:
            self.sum_success.add_((success.float() * d).sum())
            self.count_success.add_(d.sum())
        self.ret.mul_(1 - d)
        self.len.mul_(1 - d)

    def sums(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The finished-episode sums: count, return, length, successes, episodes with a success flag (0-d)."""
        return self.count, self.sum_ret, self.sum_len, self.sum_success, self.count_success

    def pop(self) -> dict[str, float]:
        """Means over the episodes finished since the last pop (one host sync); {} when none finished."""
        vals = torch.stack(self.sums()).tolist()
        count, sr, sl, ss, cs = vals
        for t in self.sums():
            t.zero_()
        if count == 0:
            return {}
        out = {"episodes": count, "ep_rew_mean": sr / count, "ep_len_mean": sl / count}
        if cs > 0:
            out["success_rate"] = ss / cs
        return out
