"""Actor-critic policies on top of any memory core: observation encoder -> core -> policy and value heads.

Shapes: one step works on batch-first tensors ``[B, ...]``; sequences are time-major ``[T, B, ...]``, as in the
cores. An observation is a tensor, or a ``dict``/``tuple`` nesting of tensors for a ``Dict``/``Tuple`` space.

Spaces supported:

* observations: ``Box`` (flat vectors of any shape; 3-d boxes are images and go through a CNN), ``Discrete``,
  ``MultiDiscrete``, ``MultiBinary``, and ``Dict`` and ``Tuple`` of these, nested to any depth (e.g.
  ``Dict(a=Tuple(Box, Discrete), b=Dict(c=MultiBinary))``). ``Text`` entries of a ``Dict`` or ``Tuple``, such as
  MiniGrid's constant ``mission``, are skipped. A batch of a ``Dict`` space is a ``dict`` of tensors, of a ``Tuple``
  space a ``tuple`` (``None`` in the place of a skipped ``Text`` entry), nested as the space: :func:`obs_map`.
* actions: ``Discrete``, ``MultiDiscrete``, ``MultiBinary`` and ``Box`` (a diagonal Gaussian; the sample is
  clipped to the bounds only when it is sent to the environment, the stored action is the raw sample).

The recurrent API follows CleanRL's ``ppo_atari_lstm.py``: ``get_action_and_value(obs, state, reset, action=None)``
samples in the rollout and scores a given action in the update; :meth:`ActorCritic.evaluate_sequence` is the same
over ``[T, B]`` with ``core.unroll``. Cores that take discrete internal decisions (``has_discrete_choices``, e.g.
``rl_access``) get their choices sampled in the rollout, returned so the caller can store them like actions, and
re-evaluated exactly in the update (``choices=...``).

The value is the baseline of those choices too, so for such a core it reads only the part of the core output
computed before the step's choice (``y_t[..., :core.pre_choice_size]``, for ``rl_access`` the controller output
``h_t``, not the read ``r_t`` that follows the choice; :func:`memory_cores.rl_access.pre_choice_size`): a value
that saw the choice's outcome would learn ``E[G_t | a_t]`` and cancel the choice's gradient. Such a core must be
shared by actor and critic. For every other core the value reads the whole core output.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

import memory_cores
from memory_cores import Core, tree_map
from memory_cores.rl_access import pre_choice_size

Obs = Any  # a tensor, or a dict/tuple nesting of tensors for a Dict/Tuple observation space (None: a skipped Text)


class UnsupportedSpaceError(ValueError):
    """An observation or action space that the encoders/heads cannot handle."""


def obs_map(fn, obs: Obs, *rest: Obs) -> Obs:
    """Apply ``fn`` to every tensor of an observation and return the results in the same structure.

    ``obs`` is a tensor, or a ``dict``/``tuple`` nesting of tensors as its ``Dict``/``Tuple`` space (any depth);
    ``None`` entries (skipped ``Text`` entries of a ``Tuple``) stay None. ``rest``: observations of the same
    structure whose matching tensors are passed beside, ``fn(t, *r_t)`` (e.g. ``dst[t].copy_(src)``).
    """
    if obs is None:
        return None
    if isinstance(obs, dict):
        return {k: obs_map(fn, v, *(r[k] for r in rest)) for k, v in obs.items()}
    if isinstance(obs, (tuple, list)):
        out = [obs_map(fn, v, *(r[i] for r in rest)) for i, v in enumerate(obs)]
        return type(obs)(*out) if hasattr(obs, "_fields") else type(obs)(out)
    return fn(obs, *rest)


def _map_with_path(fn, obs: Obs, path: tuple = ()) -> Obs:
    """:func:`obs_map` with the entry's path: ``fn(path, t)``, ``path`` the keys/indices from the top
    (``("a", 0)`` for ``obs["a"][0]``; ``()`` for a plain tensor)."""
    if obs is None:
        return None
    if isinstance(obs, dict):
        return {k: _map_with_path(fn, v, path + (k,)) for k, v in obs.items()}
    if isinstance(obs, (tuple, list)):
        out = [_map_with_path(fn, v, path + (i,)) for i, v in enumerate(obs)]
        return type(obs)(*out) if hasattr(obs, "_fields") else type(obs)(out)
    return fn(path, obs)


def _get_path(obs: Obs, path: tuple) -> Any:
    """The entry of a nested observation at ``path`` (see :func:`_map_with_path`)."""
    for p in path:
        obs = obs[p]
    return obs


def _one_line(space: spaces.Space) -> str:
    """``str(space)`` on one line (a Box with per-element bounds prints its arrays over several lines)."""
    return " ".join(str(space).split())


def _layer_init(layer: nn.Module, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights with ``gain`` and constant bias (the PPO implementation details, CleanRL)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


# ====================================================================================================== encoders
HEAD_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
"""Non-linearities of the optional hidden layer before the policy and value heads (``head_activation``)."""


def _is_text_space(space: spaces.Space) -> bool:
    """Text-like entries (``Text``, MiniGrid's ``MissionSpace``) are not encoded."""
    return isinstance(space, spaces.Text) or type(space).__name__ == "MissionSpace"


def _is_image(space: spaces.Box) -> bool:
    return len(space.shape) == 3


class FlatEncoder(nn.Module):
    """``Box`` (any shape but 3-d) or ``MultiBinary``: flatten -> Linear -> ReLU. ``[*, *shape]`` -> ``[*, out]``."""

    def __init__(self, space: spaces.Box | spaces.MultiBinary, out_size: int) -> None:
        super().__init__()
        self.shape = tuple(space.shape)
        self.in_size = int(np.prod(self.shape)) if self.shape else 1
        self.net = nn.Sequential(_layer_init(nn.Linear(self.in_size, out_size)), nn.ReLU())
        self.out_size = out_size

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[: x.dim() - len(self.shape)]
        return self.net(x.reshape(lead + (self.in_size,)).to(self.net[0].weight.dtype))


class ImageEncoder(nn.Module):
    """3-d ``Box`` (``[H, W, C]`` or ``[C, H, W]``): a CNN. ``[*, H, W, C]`` -> ``[*, out]``.

    Channels-last is assumed unless the first axis is small (<= 4) and the last is not. Integer images are scaled
    by ``1 / max(high)`` (``1/255`` for pixels). Small images (side < 32, e.g. MiniGrid's 7x7 views) use three
    2x2 convolutions (16, 32, 64 channels); larger ones the Nature-DQN CNN.
    """

    def __init__(self, space: spaces.Box, out_size: int) -> None:
        super().__init__()
        shape = tuple(space.shape)
        self.shape = shape
        self.channels_last = not (shape[0] <= 4 and shape[2] > 4)
        C, H, W = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        high = np.asarray(space.high, dtype=np.float64)
        scale = 1.0
        if np.issubdtype(space.dtype, np.integer) and np.isfinite(high).all() and high.max() > 0:
            scale = 1.0 / float(high.max())
        self.scale = scale
        if min(H, W) < 32:
            k = 2 if min(H, W) >= 4 else 1
            convs = [nn.Conv2d(C, 16, k), nn.ReLU(), nn.Conv2d(16, 32, k), nn.ReLU(), nn.Conv2d(32, 64, k), nn.ReLU()]
        else:
            convs = [nn.Conv2d(C, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU()]
            convs += [nn.Conv2d(64, 64, 3, 1), nn.ReLU()]
        for m in convs:
            if isinstance(m, nn.Conv2d):
                _layer_init(m)
        self.cnn = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            n_flat = self.cnn(torch.zeros(1, C, H, W)).shape[1]
        self.head = nn.Sequential(_layer_init(nn.Linear(n_flat, out_size)), nn.ReLU())
        self.out_size = out_size

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        x = x.reshape((-1,) + self.shape).to(self.head[0].weight.dtype) * self.scale  # [N, *shape]
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
        return self.head(self.cnn(x)).reshape(lead + (self.out_size,))


class DiscreteEncoder(nn.Module):
    """``Discrete(n, start)``: an embedding. ``[*]`` (int) -> ``[*, out]``."""

    def __init__(self, space: spaces.Discrete, out_size: int) -> None:
        super().__init__()
        self.start = int(space.start)
        self.embed = nn.Embedding(int(space.n), out_size)
        self.out_size = out_size

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.embed(x.long() - self.start))


class MultiDiscreteEncoder(nn.Module):
    """``MultiDiscrete(nvec)``: the sum of one embedding per component (= a linear layer on the concatenated
    one-hots), then ReLU. ``[*, *nvec.shape]`` (int) -> ``[*, out]``."""

    def __init__(self, space: spaces.MultiDiscrete, out_size: int) -> None:
        super().__init__()
        nvec = np.asarray(space.nvec).reshape(-1)
        self.shape = tuple(space.nvec.shape)
        self.K = len(nvec)
        start = np.asarray(getattr(space, "start", np.zeros_like(space.nvec))).reshape(-1)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]) - start
        self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.long), persistent=False)
        self.embed = nn.Embedding(int(nvec.sum()), out_size)
        self.bias = nn.Parameter(torch.zeros(out_size))
        self.out_size = out_size

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[: x.dim() - len(self.shape)]
        idx = x.reshape(lead + (self.K,)).long() + self.offsets  # [*, K]
        return torch.relu(self.embed(idx).sum(-2) + self.bias)


def _module_names(keys: list) -> list[str]:
    """Unique ``nn.ModuleDict`` names for the entries of a ``Dict`` space: the key itself where it is a valid name
    (so existing checkpoints keep their parameter names), else the key with non-alphanumerics as ``_`` and a
    ``_2``, ``_3``, ... suffix where needed (a key with ``.``, an empty key, or one that names a ``ModuleDict``
    attribute such as ``keys``). The same keys in the same order always give the same names."""
    probe, used, names = nn.ModuleDict(), set(), []
    for key in keys:
        name = str(key)
        if not name or "." in name or hasattr(probe, name):
            name = "_" + "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
        base, n = name, 2
        while name in used or hasattr(probe, name):
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names.append(name)
    return names


class _EntriesEncoder(nn.Module):
    """One encoder per entry of a ``Dict``/``Tuple`` space (``Text`` entries skipped), outputs concatenated
    ``[*, sum of entry widths]``, then Linear -> ReLU to ``[*, out]``. Entries may be ``Dict``/``Tuple`` themselves
    (each nested level is one such encoder)."""

    def __init__(self, entries: list[tuple[Any, str, str, spaces.Space]], space: spaces.Space, out_size: int,
                 path: str) -> None:
        """``entries``: ``(key into the observation, module name, path for errors, sub-space)`` in order."""
        super().__init__()
        self.encoders = nn.ModuleDict()
        self.entry_keys: list[Any] = []
        for key, name, sub_path, sub in entries:
            if _is_text_space(sub):
                continue  # e.g. MiniGrid's mission string: constant per task, not encoded
            self.encoders[name] = make_encoder(sub, out_size, _path=sub_path)
            self.entry_keys.append(key)
        if not self.encoders:
            raise UnsupportedSpaceError(
                f"{path} space {_one_line(space)} has no supported entry (Text entries are skipped)"
            )
        width = sum(e.out_size for e in self.encoders.values())
        self.trunk = nn.Sequential(_layer_init(nn.Linear(width, out_size)), nn.ReLU())
        self.out_size = out_size

    def forward(self, obs: dict[Any, Obs] | tuple[Obs, ...]) -> Tensor:
        # [*, e_1] ++ ... ++ [*, e_K] -> [*, sum e_k] -> [*, out]
        return self.trunk(torch.cat([enc(obs[k]) for k, enc in zip(self.entry_keys, self.encoders.values())], -1))


class DictEncoder(_EntriesEncoder):
    """``Dict``: one encoder per entry (module named by the key, see :func:`_module_names`), outputs concatenated,
    then Linear -> ReLU to ``out``. ``{key: [*, ...]}`` -> ``[*, out]``."""

    def __init__(self, space: spaces.Dict, out_size: int, _path: str = "observation") -> None:
        keys = list(space.spaces)
        entries = [(k, name, f"{_path}[{k!r}]", space.spaces[k]) for k, name in zip(keys, _module_names(keys))]
        super().__init__(entries, space, out_size, _path)


class TupleEncoder(_EntriesEncoder):
    """``Tuple``: one encoder per entry (modules named ``"0"``, ``"1"``, ...), outputs concatenated, then Linear ->
    ReLU to ``out``. ``([*, ...], [*, ...], ...)`` -> ``[*, out]``; a skipped ``Text`` entry's place may hold None."""

    def __init__(self, space: spaces.Tuple, out_size: int, _path: str = "observation") -> None:
        entries = [(i, str(i), f"{_path}[{i}]", sub) for i, sub in enumerate(space.spaces)]
        super().__init__(entries, space, out_size, _path)


def make_encoder(space: spaces.Space, out_size: int, _path: str = "observation") -> nn.Module:
    """The encoder for an observation space, ``[*, ...]`` -> ``[*, out_size]``; ``Dict``/``Tuple`` spaces nest.

    Raises :class:`UnsupportedSpaceError` (one line) naming the path of the bad entry, e.g. ``observation[0]['x']``.
    """
    if isinstance(space, spaces.Box):
        return ImageEncoder(space, out_size) if _is_image(space) else FlatEncoder(space, out_size)
    if isinstance(space, spaces.MultiBinary):
        return FlatEncoder(space, out_size)
    if isinstance(space, spaces.Discrete):
        return DiscreteEncoder(space, out_size)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiDiscreteEncoder(space, out_size)
    if isinstance(space, spaces.Dict):
        return DictEncoder(space, out_size, _path)
    if isinstance(space, spaces.Tuple):
        return TupleEncoder(space, out_size, _path)
    raise UnsupportedSpaceError(
        f"unsupported {_path} space {_one_line(space)}; supported: Box, Discrete, MultiDiscrete, MultiBinary, and "
        "Dict/Tuple of these (nested; Text entries skipped)"
    )


# ========================================================================================= action distributions
def _wide(t: Tensor) -> Tensor:
    """``t`` in float32 when it is bf16/fp16 (a head's output under autocast), else unchanged: distributions
    normalise, sample and score in at least float32 (on the CPU autocast leaves log_softmax and rand_like in bf16)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class Categorical:
    """Categorical over the last axis of ``logits`` ``[*, n]``; actions ``[*]`` long."""

    def __init__(self, logits: Tensor) -> None:
        self.log_p = torch.log_softmax(_wide(logits), dim=-1)

    def sample(self) -> Tensor:
        # Gumbel-max: argmax(log p + G), G ~ Gumbel(0, 1); one tensor program for any leading shape.
        u = torch.rand_like(self.log_p).clamp_(min=1e-20)
        return (self.log_p - torch.log(-torch.log(u))).argmax(-1)

    def mode(self) -> Tensor:
        return self.log_p.argmax(-1)

    def log_prob(self, a: Tensor) -> Tensor:
        return self.log_p.gather(-1, a.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        return -(self.log_p.exp() * self.log_p).sum(-1)


class MultiCategorical(Categorical):
    """Independent categoricals, padded to one ``[*, K, max_n]`` tensor (padding logits -1e9, probability 0).
    Actions ``[*, K]`` long; log-probabilities and entropies summed over ``K``."""

    def log_prob(self, a: Tensor) -> Tensor:
        return super().log_prob(a).sum(-1)

    def entropy(self) -> Tensor:
        return super().entropy().sum(-1)


class Bernoulli:
    """Independent Bernoullis, ``logits`` ``[*, n]``; actions ``[*, n]`` float in {0, 1}; sums over ``n``."""

    def __init__(self, logits: Tensor) -> None:
        self.logits = _wide(logits)

    def sample(self) -> Tensor:
        return (torch.rand_like(self.logits) < torch.sigmoid(self.logits)).to(self.logits.dtype)

    def mode(self) -> Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    def log_prob(self, a: Tensor) -> Tensor:
        # log p(a) = a log s(l) + (1 - a) log s(-l) = -BCE(l, a)
        a = a.to(self.logits.dtype)
        return -nn.functional.binary_cross_entropy_with_logits(self.logits, a, reduction="none").sum(-1)

    def entropy(self) -> Tensor:
        p = torch.sigmoid(self.logits)
        return (nn.functional.softplus(self.logits) - p * self.logits).sum(-1)


class DiagGaussian:
    """Diagonal Gaussian, ``mean`` and ``log_std`` ``[*, n]``; actions ``[*, n]``; sums over ``n``."""

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        mean, log_std = _wide(mean), _wide(log_std)
        self.mean, self.log_std = mean, log_std.expand_as(mean)

    def sample(self) -> Tensor:
        return (self.mean + self.log_std.exp() * torch.randn_like(self.mean)).detach()

    def mode(self) -> Tensor:
        return self.mean.detach()

    def log_prob(self, a: Tensor) -> Tensor:
        z = (a - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z * z - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> Tensor:
        return (self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)


# ================================================================================================== action heads
class DiscreteHead(nn.Module):
    """``Discrete(n, start)`` -> :class:`Categorical`; actions stored as long ``[B]`` (without ``start``)."""

    action_dtype = torch.long

    def __init__(self, space: spaces.Discrete, in_size: int) -> None:
        super().__init__()
        self.start = int(space.start)
        self.action_shape: tuple[int, ...] = ()
        self.linear = _layer_init(nn.Linear(in_size, int(space.n)), gain=0.01)

    def forward(self, h: Tensor) -> Categorical:
        return Categorical(self.linear(h))

    def to_env(self, a: Tensor) -> Tensor:
        return a + self.start if self.start else a


class MultiDiscreteHead(nn.Module):
    """``MultiDiscrete(nvec)`` -> :class:`MultiCategorical`; actions long ``[B, K]`` (flattened ``nvec``)."""

    action_dtype = torch.long

    def __init__(self, space: spaces.MultiDiscrete, in_size: int) -> None:
        super().__init__()
        nvec = np.asarray(space.nvec).reshape(-1)
        self.env_shape = tuple(space.nvec.shape)
        self.K, self.max_n = len(nvec), int(nvec.max())
        self.action_shape = (self.K,)
        self.linear = _layer_init(nn.Linear(in_size, int(nvec.sum())), gain=0.01)
        # scatter index of each logit into the padded [K, max_n] layout
        idx = np.concatenate([k * self.max_n + np.arange(n) for k, n in enumerate(nvec)])
        self.register_buffer("index", torch.as_tensor(idx, dtype=torch.long), persistent=False)
        start = np.asarray(getattr(space, "start", np.zeros_like(space.nvec))).reshape(-1)
        self.register_buffer("start", torch.as_tensor(start, dtype=torch.long), persistent=False)

    def forward(self, h: Tensor) -> MultiCategorical:
        flat = self.linear(h)  # [*, sum n]
        padded = flat.new_full(flat.shape[:-1] + (self.K * self.max_n,), -1e9)
        padded = padded.index_copy(-1, self.index, flat)
        return MultiCategorical(padded.reshape(flat.shape[:-1] + (self.K, self.max_n)))

    def to_env(self, a: Tensor) -> Tensor:
        return (a + self.start).reshape(a.shape[:-1] + self.env_shape)


class MultiBinaryHead(nn.Module):
    """``MultiBinary(n)`` -> :class:`Bernoulli`; actions float ``[B, n]`` (flattened)."""

    action_dtype = torch.float32

    def __init__(self, space: spaces.MultiBinary, in_size: int) -> None:
        super().__init__()
        self.env_shape = tuple(np.atleast_1d(space.shape))
        n = int(np.prod(self.env_shape))
        self.action_shape = (n,)
        self.linear = _layer_init(nn.Linear(in_size, n), gain=0.01)

    def forward(self, h: Tensor) -> Bernoulli:
        return Bernoulli(self.linear(h))

    def to_env(self, a: Tensor) -> Tensor:
        return a.to(torch.int8).reshape(a.shape[:-1] + self.env_shape)


class BoxHead(nn.Module):
    """``Box`` actions -> :class:`DiagGaussian` with a state-independent learned ``log_std`` (init 0); actions
    float ``[B, n]`` (flattened); :meth:`to_env` clips to the bounds and restores the shape."""

    action_dtype = torch.float32

    def __init__(self, space: spaces.Box, in_size: int) -> None:
        super().__init__()
        self.env_shape = tuple(space.shape)
        n = int(np.prod(self.env_shape)) if self.env_shape else 1
        self.action_shape = (n,)
        self.mean = _layer_init(nn.Linear(in_size, n), gain=0.01)
        self.log_std = nn.Parameter(torch.zeros(n))
        low = np.broadcast_to(space.low, self.env_shape).astype(np.float32).copy()
        high = np.broadcast_to(space.high, self.env_shape).astype(np.float32).copy()
        self.register_buffer("low", torch.as_tensor(low.reshape(-1), dtype=torch.float32), persistent=False)
        self.register_buffer("high", torch.as_tensor(high.reshape(-1), dtype=torch.float32), persistent=False)

    def forward(self, h: Tensor) -> DiagGaussian:
        return DiagGaussian(self.mean(h), self.log_std)

    def to_env(self, a: Tensor) -> Tensor:
        a = torch.maximum(torch.minimum(a, self.high.to(a.dtype)), self.low.to(a.dtype))
        return a.reshape(a.shape[:-1] + self.env_shape)


def make_head(space: spaces.Space, in_size: int) -> nn.Module:
    """The action head for an action space; raises :class:`UnsupportedSpaceError` naming the space."""
    if isinstance(space, spaces.Discrete):
        return DiscreteHead(space, in_size)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiDiscreteHead(space, in_size)
    if isinstance(space, spaces.MultiBinary):
        return MultiBinaryHead(space, in_size)
    if isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
        return BoxHead(space, in_size)
    raise UnsupportedSpaceError(
        f"unsupported action space {space}; supported: Discrete, MultiDiscrete, MultiBinary, Box (float)"
    )


# ============================================================================================== obs normaliser
class ObsNormalizer(nn.Module):
    """Running mean/variance normalisation of the float non-image ``Box`` leaves of an observation, wherever they
    are nested in ``Dict``/``Tuple`` spaces, clipped to ``±clip``.

    Other leaves (images, discrete, binary, integer boxes) pass through. The statistics are buffers (saved with the
    policy) named by the leaf's path: ``mean_obs``/``var_obs`` for a plain ``Box``, ``mean_obs_<key>`` for a
    ``Dict`` entry, ``mean_obs_<key>_<index>_...`` for nested ones (non-alphanumerics as ``_``; a ``_2``, ``_3``,
    ... suffix where two paths would give one name), so the same space always gives the same names. Applied once
    in the rollout; the *normalised* observation is stored, so the update sees exactly what the rollout saw.
    """

    def __init__(self, space: spaces.Space, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.clip, self.eps = clip, eps
        self.leaves: dict[tuple, str] = {}  # path (keys/indices from the top) -> buffer name stem
        for path, sub in self._float_leaves(space):
            name, base, n = self._name(path), self._name(path), 2
            while name in self.leaves.values():
                name, n = f"{base}_{n}", n + 1
            self.register_buffer(f"mean_{name}", torch.zeros(sub.shape))
            self.register_buffer(f"var_{name}", torch.ones(sub.shape))
            self.leaves[path] = name
        self.register_buffer("count", torch.tensor(1e-4))

    @classmethod
    def _float_leaves(cls, space: spaces.Space, path: tuple = ()):
        """``(path, Box)`` of every float non-image ``Box`` inside ``space``, in the space's order."""
        if isinstance(space, spaces.Box):
            if np.issubdtype(space.dtype, np.floating) and not _is_image(space):
                yield path, space
        elif isinstance(space, spaces.Dict):
            for key, sub in space.spaces.items():
                yield from cls._float_leaves(sub, path + (key,))
        elif isinstance(space, spaces.Tuple):
            for i, sub in enumerate(space.spaces):
                yield from cls._float_leaves(sub, path + (i,))

    @staticmethod
    def _name(path: tuple) -> str:
        clean = ("".join(ch if ch.isalnum() else "_" for ch in str(p)) for p in path)
        return "_".join(("obs", *clean))

    def _stats(self, path: tuple) -> tuple[Tensor, Tensor]:
        name = self.leaves[path]
        return getattr(self, f"mean_{name}"), getattr(self, f"var_{name}")

    @torch.no_grad()
    def update(self, obs: Obs) -> None:
        """Fold a batch ``[B, ...]`` into the running statistics (parallel Welford / Chan et al.)."""
        n = None
        for path in self.leaves:
            x = _get_path(obs, path).float()  # [B, *shape]
            mean, var = self._stats(path)
            n = x.shape[0]
            b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
            tot = self.count + n
            delta = b_mean - mean
            mean.add_(delta * n / tot)
            var.copy_((var * self.count + b_var * n + delta.pow(2) * self.count * n / tot) / tot)
        if n is not None:
            self.count.add_(n)

    def forward(self, obs: Obs) -> Obs:
        """The observation with its float ``Box`` leaves normalised (same structure; other leaves as given)."""
        if not self.leaves:
            return obs

        def norm(path: tuple, x: Tensor) -> Tensor:
            if path not in self.leaves:
                return x
            mean, var = self._stats(path)
            return ((x.float() - mean) / torch.sqrt(var + self.eps)).clamp(-self.clip, self.clip)

        return _map_with_path(norm, obs)


# ============================================================================================== core plumbing
class ChoiceOut(NamedTuple):
    """Discrete internal decisions of a core (REINFORCE head): ``choice`` as the core returns it (``[T, B, ...]``),
    ``log_prob`` and ``entropy`` summed to ``[T, B]``."""

    choice: Any
    log_prob: Tensor
    entropy: Tensor


def _sum_to(x: Tensor, ndim: int) -> Tensor:
    """Sum trailing axes until ``x`` has ``ndim`` dims (per-head log-probs ``[T, B, K]`` -> ``[T, B]``)."""
    while x.dim() > ndim:
        x = x.sum(-1)
    return x


def core_has_choices(core: Core | None) -> bool:
    return core is not None and bool(getattr(core, "has_discrete_choices", False))


def unroll_core(
    core: Core, xs: Tensor, state: Any, resets: Tensor | None, choices: Any = None, greedy: bool = False,
    sync_free: bool = False,
) -> tuple[Tensor, Any, ChoiceOut | None]:
    """``core.unroll`` over ``[T, B, ...]``; for cores with discrete choices, ``unroll_with_choices`` (sampling
    when ``choices`` is None, or the argmax with ``greedy``; scoring the given ones otherwise) and the choices'
    log-probabilities/entropies. ``sync_free``: ``core.unroll_sync_free`` (reads nothing back to the host)."""
    one = xs.shape[0] == 1  # a rollout step: the core's single-step call (no unroll bookkeeping, no host sync)
    if not core_has_choices(core):
        if one:
            y, state = core(xs[0], state, None if resets is None else resets[0])
            return y.unsqueeze(0), state, None
        unroll = core.unroll_sync_free if sync_free else core.unroll
        ys, state = unroll(xs, state, resets)
        return ys, state, None
    if one:
        y, state, info = core.step_with_choice(
            xs[0], state, None if resets is None else resets[0], None if choices is None else choices[0],
            greedy=greedy,
        )
        info = tree_map_any(lambda t: t.unsqueeze(0), info)
        ys = y.unsqueeze(0)
    else:
        ys, state, info = core.unroll_with_choices(xs, state, resets, choices=choices, greedy=greedy)
    get = (lambda k: info[k]) if isinstance(info, dict) else (lambda k: getattr(info, k))
    return ys, state, ChoiceOut(get("choice"), _sum_to(get("log_prob"), 2), _sum_to(get("entropy"), 2))


def segment_plan(resets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Host-side index arithmetic of :func:`segmented_unroll` for the reset flags ``resets`` ``[T, B]`` (bool, on
    the CPU): every row is cut at its episode starts into ``S`` segments (one starts at ``t = 0`` in every row).

    Returns ``seg_b`` ``[S]`` (the segment's row), ``seg_new`` ``[S]`` (the segment starts after ``t = 0``, i.e. at
    a reset), ``src`` ``[L_max, S]`` (time-major flat index ``t B + b`` of each padded step; padding points at 0) and
    ``inv`` ``[T B]`` (the position of each time-major step in the flattened ``[L_max, S]`` layout)."""
    T, B = resets.shape
    r = resets.clone()
    r[0] = True  # every row has a segment starting at t = 0
    # segments in (row, time) order: flat row-major index f = b T + t0; a row's last segment ends at the row's end
    f = r.t().reshape(-1).nonzero().squeeze(1)  # [S]
    seg_b, seg_t0 = f // T, f % T
    lengths = torch.diff(f, append=torch.tensor([B * T]))  # [S]
    S, L_max = f.numel(), int(lengths.max())
    j = torch.arange(L_max).unsqueeze(1)  # [L_max, 1]
    valid = j < lengths.unsqueeze(0)  # [L_max, S]
    src = (seg_t0.unsqueeze(0) + j) * B + seg_b.unsqueeze(0)  # time-major flat index into [T * B]
    src = torch.where(valid, src, torch.zeros_like(src))
    # inverse map: position in the padded [L_max * S] layout of each time-major [T * B] step
    inv = torch.empty(T * B, dtype=torch.long)
    inv[src[valid]] = (j * S + torch.arange(S).unsqueeze(0)).expand(L_max, S)[valid]
    return seg_b, seg_t0 > 0, src, inv


def segmented_unroll(
    core: Core, xs: Tensor, state: Any, resets: Tensor, resets_cpu: Tensor | None = None,
    unroll: Callable[[Tensor, Any], Tensor] | None = None,
) -> Tensor:
    """``core.unroll(xs, state, resets)[0]`` computed as ONE reset-free unroll over episode segments.

    Cores such as ``lstm``/``gru`` run a fused multi-step kernel only when no row resets after ``t = 0``; with
    episode starts inside the sequences they fall back to a Python step loop. Here every sequence is cut at its
    episode starts into segments; segment ``s`` of row ``b`` covering steps ``t0 .. t1 - 1`` starts from the initial
    state when ``t0 > 0`` (a reset), or from ``state[b]`` (reset if ``resets[0, b]``) when ``t0 = 0``. The segments
    are stacked as columns of a ``[L_max, S, ...]`` batch, padded at their ends (padding comes after the valid
    steps, so it cannot change them), unrolled once without resets and gathered back to ``[T, B, ...]``. That is
    the step loop, step for step. The final state is not returned (padding runs past the segments' ends).

    ``xs``: ``[T, B, I]``; ``resets``: ``[T, B]`` bool; ``resets_cpu``: the same on the host if already there (saves
    the one device-to-host copy); ``unroll(x_seg, s_seg) -> ys_seg``: the reset-free unroll of the ``[L_max, S]``
    segment batch (default ``core.unroll(x_seg, s_seg)[0]``; the PPO update passes memory-efficient BPTT here, so
    its stretches are reset-free too). Returns ``ys``: ``[T, B, O]``.
    """
    T, B = resets.shape
    r = (resets if resets_cpu is None else resets_cpu).to("cpu", torch.bool)
    seg_b, seg_new, src, inv = segment_plan(r)  # on the host
    S, L_max = seg_b.numel(), src.shape[0]
    dev = xs.device  # asynchronous copies: the host never waits for the device here
    src, inv = src.to(dev, non_blocking=True), inv.to(dev, non_blocking=True)
    seg_b_d, seg_new_d = seg_b.to(dev, non_blocking=True), seg_new.to(dev, non_blocking=True)
    seg_reset = seg_new_d | resets[0].index_select(0, seg_b_d)
    x_seg = xs.reshape(T * B, -1).index_select(0, src.reshape(-1)).reshape(L_max, S, -1)  # [L_max, S, I]
    s_seg = core.reset_state(tree_map(lambda t: t.index_select(0, seg_b_d), state), seg_reset)
    ys_seg = core.unroll(x_seg, s_seg, None)[0] if unroll is None else unroll(x_seg, s_seg)  # [L_max, S, O], fused
    return ys_seg.reshape(L_max * S, -1).index_select(0, inv).reshape(T, B, -1)


def chrono_init_(module: nn.Module, t_max: float) -> int:
    """Chrono initialisation (Tallec and Ollivier 2018) of every ``nn.LSTM``/``nn.LSTMCell`` inside ``module``.

    Forget-gate biases ``b_f = log(U(1, t_max - 1))`` and input-gate biases ``b_i = -b_f``, so the cells start with
    memory time scales spread up to ``t_max`` steps (torch's default init forgets with rate about 1/2 per step:
    a cue 50 steps back gets a gradient of about ``0.5^50``). Returns the number of LSTM modules initialised.
    """
    if t_max <= 2:
        raise ValueError(f"chrono t_max must be > 2 steps, got {t_max!r}")
    n = 0
    for m in module.modules():
        if isinstance(m, (nn.LSTM, nn.LSTMCell)):
            H = m.hidden_size
            for name, p in m.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        b_f = torch.log(torch.empty(H).uniform_(1.0, t_max - 1.0))
                        p[H : 2 * H] = b_f  # gates in torch order: input, forget, cell, output
                        p[:H] = -b_f
                elif name.startswith("bias_hh"):
                    with torch.no_grad():
                        p[: 2 * H] = 0.0
            n += 1
    return n


# Cores whose unroll is fused only without resets inside the sequence: the update uses segmented_unroll for them.
SEGMENT_CORES = ("lstm", "gru")

# ================================================================================================ actor-critic
class AgentState(NamedTuple):
    """Recurrent state of an :class:`ActorCritic`: the actor core's state and, with ``shared_core=False``, the
    critic core's; ``()`` where there is no core (feed-forward baseline, or shared core for ``critic``)."""

    actor: Any
    critic: Any


class ActOut(NamedTuple):
    """One rollout step: ``action`` ``[B, ...]``, ``log_prob``/``entropy``/``value`` ``[B]``, the new ``state``, and
    the core's ``choices`` (or None) with their ``[B]`` log-prob and entropy (zeros without choices)."""

    action: Tensor
    log_prob: Tensor
    entropy: Tensor
    value: Tensor
    state: AgentState
    choices: Any
    choice_log_prob: Tensor
    choice_entropy: Tensor


class SeqOut(NamedTuple):
    """A scored sequence: ``log_prob``, ``entropy``, ``value``, ``choice_log_prob``, ``choice_entropy`` ``[T, B]``
    and the final ``state``."""

    log_prob: Tensor
    entropy: Tensor
    value: Tensor
    choice_log_prob: Tensor
    choice_entropy: Tensor
    state: AgentState


NO_CORE = ("none", "mlp", "ff", "feedforward", "")


class ActorCritic(nn.Module):
    """Observation encoder -> memory core -> policy head and value head.

    Args:
        observation_space: a supported Gymnasium space (see the module docstring).
        action_space: a supported Gymnasium space.
        core: a name in ``memory_cores.CORES`` (``"lstm"``, ``"ntm"``, ...), or ``"none"``/``None`` for the
            feed-forward baseline (encoder -> Linear -> tanh -> heads).
        core_kwargs: keyword arguments for the core's constructor (``hidden_size``, ``num_slots``, ...).
        embed_size: width of the encoder output, the core's input.
        shared_core: actor and critic share one encoder and core (default); False gives the critic its own. Must be
            True for a core with discrete choices (a critic core's own choices would reach no action or reward).
        normalize_obs: keep running statistics of the float non-image ``Box`` leaves of the observation (nested
            ones too) and normalise them (:meth:`normalize_obs`, :class:`ObsNormalizer`).
        chrono_init: when > 0, chrono-initialise the gate biases of every LSTM inside the core(s) for memory time
            scales up to this many steps (:func:`chrono_init_`); 0 keeps torch's init.
        segment_unroll: let :meth:`evaluate_sequence` use :func:`segmented_unroll` when asked (default: for the
            cores in :data:`SEGMENT_CORES`).
        head_hidden: when > 0, the policy and the value head each get a hidden layer of this width (Linear ->
            ``head_activation``) on the core output, as Stable-Baselines3's ``net_arch`` after its LSTM; 0: linear heads. A
            hidden layer lets a head combine what the core remembers with what it sees now non-linearly (e.g.
            "the remembered cue equals the object in view"), which a linear head on the core output cannot.
        obs_skip: the heads see the encoder output beside the core output (``[core out | embed]``), so the current
            observation reaches them directly and not only through the core's gates (no effect without a core).
        head_activation: ``"tanh"`` (default) or ``"relu"``, the non-linearity of the ``head_hidden`` layers. An odd
            function such as tanh has no second-order term, so from a small initialisation a tanh layer picks up a
            product of two inputs ("remembered cue" x "object in view") only slowly; ReLU has one from the start.

    The value head reads the core output, or for a core with discrete choices (``rl_access``) only its part computed
    before the step's choice (``[y_t[..., :pre_choice_size] | embed]``, see the module docstring).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        core: str | None = "lstm",
        core_kwargs: dict | None = None,
        embed_size: int = 128,
        shared_core: bool = True,
        normalize_obs: bool = False,
        segment_unroll: bool | None = None,
        chrono_init: int = 0,
        head_hidden: int = 0,
        obs_skip: bool = False,
        head_activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.obs_skip = bool(obs_skip) and not (core is None or str(core).lower() in NO_CORE)
        if embed_size <= 0:
            raise ValueError(f"embed_size must be a positive int, got {embed_size!r}")
        if isinstance(head_hidden, bool) or not isinstance(head_hidden, int) or head_hidden < 0:
            raise ValueError(f"head_hidden={head_hidden!r} is not valid: expected an integer >= 0")
        if head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(
                f"head_activation={head_activation!r} is not valid: expected one of {', '.join(HEAD_ACTIVATIONS)}"
            )
        core_kwargs = dict(core_kwargs or {})
        self.core_name = "none" if core is None or str(core).lower() in NO_CORE else str(core)
        if self.core_name != "none" and self.core_name not in memory_cores.CORES:
            raise ValueError(
                f"unknown core {core!r}; valid: none, {', '.join(sorted(memory_cores.CORES))}"
            )
        self.observation_space, self.action_space = observation_space, action_space
        self.shared_core = shared_core
        self.obs_norm = ObsNormalizer(observation_space) if normalize_obs else None

        def torso() -> tuple[nn.Module, Core | None, nn.Module | None, int]:
            enc = make_encoder(observation_space, embed_size)
            if self.core_name == "none":
                width = int(core_kwargs.get("hidden_size", embed_size))
                mlp = nn.Sequential(_layer_init(nn.Linear(embed_size, width)), nn.Tanh())
                return enc, None, mlp, width
            c = memory_cores.make_core(self.core_name, embed_size, **core_kwargs)
            return enc, c, None, c.output_size + (embed_size if self.obs_skip else 0)

        self.encoder, self.core, self.mlp, width = torso()
        self.has_choices = core_has_choices(self.core)
        if self.has_choices and not shared_core:
            raise ValueError(
                f"shared_core=False is not valid for core {self.core_name!r}: its discrete access choices are trained "
                "through the actor's policy gradient, and a separate critic core's choices would reach no action or "
                "reward; use shared_core=True (--shared-core)"
            )
        # the core output the value may read: all of it, or for a core with choices the part before the choice
        self.value_core_width = pre_choice_size(self.core) if self.core is not None else width
        if shared_core:
            self.critic_encoder = self.critic_core = self.critic_mlp = None
            critic_width = width
            if self.has_choices:  # [h_t | embed]: y_t's pre-choice part (and the encoder output with obs_skip)
                critic_width = width - self.core.output_size + self.value_core_width
        else:
            self.critic_encoder, self.critic_core, self.critic_mlp, critic_width = torso()
        if head_hidden:
            act = HEAD_ACTIVATIONS[head_activation]
            self.actor_mlp = nn.Sequential(_layer_init(nn.Linear(width, head_hidden)), act())
            self.value_mlp = nn.Sequential(_layer_init(nn.Linear(critic_width, head_hidden)), act())
            width = critic_width = head_hidden
        else:
            self.actor_mlp = self.value_mlp = nn.Identity()
        self.actor_head = make_head(action_space, width)
        self.value_head = _layer_init(nn.Linear(critic_width, 1), gain=1.0)
        self.segment_unroll = self.core_name in SEGMENT_CORES if segment_unroll is None else bool(segment_unroll)
        if chrono_init:
            for c in (self.core, self.critic_core):
                if c is not None:
                    chrono_init_(c, chrono_init)

    # ----------------------------------------------------------------------------------------------- state
    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> AgentState:
        device = self.device if device is None else device
        a = self.core.initial_state(batch_size, device) if self.core is not None else ()
        c = self.critic_core.initial_state(batch_size, device) if self.critic_core is not None else ()
        return AgentState(a, c)

    def normalize_obs(self, obs: Obs, update: bool = False) -> Obs:
        """Normalise an observation batch ``[B, ...]`` (identity without ``normalize_obs``); ``update`` folds the
        batch into the running statistics first (rollouts only)."""
        if self.obs_norm is None:
            return obs
        if update:
            self.obs_norm.update(obs)
        return self.obs_norm(obs)

    # ----------------------------------------------------------------------------------------------- torso
    def _torso(
        self, enc: nn.Module, core: Core | None, mlp: nn.Module | None, obs: Obs, state: Any, resets: Tensor | None,
        choices: Any, greedy: bool = False, segmented: bool = False, resets_cpu: Tensor | None = None,
        memory_slots: int = 0, segment_steps: int = 1, storage: str = "hidden", sync_free: bool = False,
    ) -> tuple[Tensor, Any, ChoiceOut | None]:
        """Sequence torso: ``obs`` ``[T, B, ...]`` -> features ``[T, B, width]``, final core state, choices."""
        x = enc(obs)  # [T, B, embed]
        if core is None:
            return mlp(x), state, None
        use_segments = segmented and self.segment_unroll and resets is not None and x.shape[0] > 1
        if 0 < memory_slots < x.shape[0] and not core_has_choices(core):
            # memory-efficient BPTT (Gruslys et al. 2016): the same values and gradients, at most memory_slots states
            def mem_unroll(xx: Tensor, ss: Any, rr: Tensor | None = None) -> tuple[Tensor, Any]:
                return memory_cores.memory_efficient_unroll(core, xx, ss, rr, memory_slots=memory_slots,
                                                            segment_steps=segment_steps, storage=storage)

            if use_segments:  # over the episode segments: every recomputed stretch stays reset-free (fused)
                h = segmented_unroll(core, x, state, resets, resets_cpu, lambda xx, ss: mem_unroll(xx, ss)[0])
                new_state = None
            else:
                h, new_state = mem_unroll(x, state, resets)
            ch = None
        elif use_segments and not core_has_choices(core):
            h, new_state, ch = segmented_unroll(core, x, state, resets, resets_cpu), None, None
        else:
            h, new_state, ch = unroll_core(core, x, state, resets, choices, greedy, sync_free)
        if self.obs_skip:
            h = torch.cat([h, x], -1)  # [T, B, core out + embed]: what the core remembers beside what is seen now
        return h, new_state, ch

    def _forward_seq(
        self, obs: Obs, state: AgentState, resets: Tensor | None, choices: Any = None, greedy: bool = False,
        segmented: bool = False, resets_cpu: Tensor | None = None, memory_slots: int = 0, segment_steps: int = 1,
        storage: str = "hidden", sync_free: bool = False,
    ):
        """Shared forward over ``[T, B]``: actor features, value ``[T, B]``, new state, choice outputs."""
        actor_choices, critic_choices = (None, None) if choices is None else choices
        h, s_actor, ch_a = self._torso(
            self.encoder, self.core, self.mlp, obs, state.actor, resets, actor_choices, greedy, segmented, resets_cpu,
            memory_slots, segment_steps, storage, sync_free,
        )
        if self.shared_core:
            hv, s_critic = self._value_features(h), state.critic
        else:  # (a core with choices is always shared: the critic core takes none)
            hv, s_critic, _ = self._torso(
                self.critic_encoder, self.critic_core, self.critic_mlp, obs, state.critic, resets, critic_choices,
                greedy, segmented, resets_cpu, memory_slots, segment_steps, storage, sync_free,
            )
        value = self.value_head(self.value_mlp(hv)).squeeze(-1)
        T, B = value.shape
        if ch_a is None:
            zero = value.new_zeros(T, B)
            ch = (None, zero, zero)
        else:
            ch = ((ch_a.choice, None), ch_a.log_prob, ch_a.entropy)
        return h, value, AgentState(s_actor, s_critic), ch

    def _value_features(self, h: Tensor) -> Tensor:
        """What the value reads of the shared torso's features ``h`` ``[T, B, width]``: all of them, or for a core
        with discrete choices ``[y_t[..., :pre_choice_size] | embed]`` (``[T, B, H (+ embed)]``), the features that
        precede the choice a_t, so the value is a valid baseline of a_t (a value that saw r_t, the outcome of a_t,
        would learn E[G_t | a_t] and cancel a_t's policy gradient)."""
        if not self.has_choices:
            return h
        pre, out = self.value_core_width, self.core.output_size
        if self.obs_skip:
            return torch.cat([h[..., :pre], h[..., out:]], -1)  # [h_t | embed of x_t]: neither depends on a_t
        return h[..., :pre]  # h_t

    # -------------------------------------------------------------------------------------------- public
    def get_action_and_value(
        self,
        obs: Obs,
        state: AgentState,
        reset: Tensor | None = None,
        action: Tensor | None = None,
        deterministic: bool = False,
    ) -> ActOut:
        """One step. ``obs`` ``[B, ...]`` (already normalised), ``reset`` ``[B]`` bool (True where ``obs`` starts an
        episode). Samples an action (or takes the mode, and the greedy core choices, with ``deterministic``)
        unless ``action`` is given, in which case it is scored. Returns :class:`ActOut`."""
        obs1 = obs_map(lambda t: t.unsqueeze(0), obs)
        resets = None if reset is None else reset.unsqueeze(0)
        h, value, new_state, (choices, c_lp, c_ent) = self._forward_seq(obs1, state, resets, greedy=deterministic)
        dist = self.actor_head(self.actor_mlp(h[0]))
        if action is None:
            action = dist.mode() if deterministic else dist.sample()
        choices = None if choices is None else tree_map_any(lambda t: t[0], choices)
        return ActOut(action, dist.log_prob(action), dist.entropy(), value[0], new_state, choices, c_lp[0], c_ent[0])

    @torch.no_grad()
    def get_value(self, obs: Obs, state: AgentState, reset: Tensor | None = None) -> Tensor:
        """Value ``[B]`` of one observation batch ``[B, ...]`` from ``state`` (the state is not returned)."""
        obs1 = obs_map(lambda t: t.unsqueeze(0), obs)
        _, value, _, _ = self._forward_seq(obs1, state, None if reset is None else reset.unsqueeze(0))
        return value[0]

    def evaluate_sequence(
        self, obs: Obs, state: AgentState, resets: Tensor, actions: Tensor, choices: Any = None,
        segmented: bool = False, resets_cpu: Tensor | None = None, memory_slots: int = 0, segment_steps: int = 1,
        storage: str = "hidden", sync_free: bool = False,
    ) -> SeqOut:
        """Score stored actions (and core choices) over a sequence: ``obs`` ``[T, B, ...]``, ``state`` at ``t=0``,
        ``resets`` ``[T, B]``, ``actions`` ``[T, B, ...]``, ``choices`` as returned by the rollout, stacked over
        time. Exactly the step loop of :meth:`get_action_and_value` (the core's ``unroll``).

        ``segmented``: for cores in :data:`SEGMENT_CORES` run :func:`segmented_unroll` (same values, one fused
        unroll instead of a step loop when episodes start inside the sequences); the returned state is then None.
        ``resets_cpu``: ``resets`` already on the host (optional). ``memory_slots`` > 0: sequences longer than it run
        through :func:`memory_cores.memory_efficient_unroll` (same values and gradients, at most that many stored
        core states and recomputed stretches of at most ``segment_steps`` steps; cores without discrete choices),
        with ``segmented`` over the episode segments, so that every recomputed stretch is reset-free; ``storage``:
        hidden states (BPTT-HSM), internal states (BPTT-ISM) or the mix (BPTT-MSM). ``sync_free``: nothing is read
        back to the host (with ``segmented`` False; the cores' ``unroll_sync_free``: a PPO update captured as a
        CUDA graph)."""
        h, value, new_state, (_, c_lp, c_ent) = self._forward_seq(
            obs, state, resets, choices, segmented=segmented, resets_cpu=resets_cpu, memory_slots=memory_slots,
            segment_steps=segment_steps, storage=storage, sync_free=sync_free,
        )
        dist = self.actor_head(self.actor_mlp(h))
        return SeqOut(dist.log_prob(actions), dist.entropy(), value, c_lp, c_ent, new_state)

    def env_action(self, action: Tensor) -> Tensor:
        """The stored action in the environment's format (shape restored, ``start`` added, Box clipped)."""
        return self.actor_head.to_env(action)


def tree_map_any(fn, tree: Any) -> Any:
    """Map ``fn`` over the tensors of any nesting of tuples/lists/dicts (None kept)."""
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map_any(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tree_map_any(fn, v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map_any(fn, v) for v in tree)
    return tree


__all__ = [
    "ActorCritic",
    "AgentState",
    "ActOut",
    "SeqOut",
    "UnsupportedSpaceError",
    "make_encoder",
    "make_head",
    "obs_map",
    "tree_map_any",
]
