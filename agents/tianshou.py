"""Memory cores as Tianshou recurrent actor and critic networks (Tianshou >= 2.0).

::

    from agents.tianshou import CoreActor, CoreCritic, make_ppo
    actor = CoreActor(env.observation_space, env.action_space.n, core="ntm", core_kwargs=dict(num_slots=32))
    critic = CoreCritic(env.observation_space, core="ntm", core_kwargs=dict(num_slots=32))
    algorithm = make_ppo(actor, critic, env.action_space, lr=3e-4)     # tianshou.algorithm.PPO

Tianshou's recurrent convention (``tianshou.utils.net.common.Recurrent``): a net is called as
``net(obs, state=None, info=None) -> (output, state)``, ``obs`` ``[B, ...]`` for one step (collection) or
``[B, L, ...]`` for a window of ``L = stack_num`` stacked observations (training), ``state`` a dict/``Batch`` of
batch-first arrays or None. Here the state is ``{"packed": [B, S], "live": [B, 1]}`` with ``packed =
core.pack_state(state)``.

What Tianshou does with recurrent state (checked against tianshou 2.0.1's source):

* **Collection** carries the state from step to step (``Collector`` passes the policy's returned ``state`` back in)
  and, when an episode ends, zeroes that env's row (``Batch.empty_``). The zeroed ``live`` flag tells
  :class:`CoreActor` that the row starts an episode, and the row is reset with ``core.reset_state`` to the core's
  own initial state (learned values where the core learns them), not left at zeros.
* **Training** (PPO/A2C ``_update_with_batch`` and the advantage computation) calls the actor as
  ``policy(minibatch)`` with ``state=None`` and the critic as ``critic(minibatch.obs)``: every sample is a window
  of the last ``stack_num`` observations (``ReplayBuffer(stack_num=...)``), run from the core's *initial* state.
  At an episode's first steps the window is padded by repeating the first observation (``ReplayBuffer.prev``
  stops at episode starts). The stored collection states are not used.

So the policy that is trained is "a core that sees only the last ``stack_num`` observations", while the policy that
collects runs the core over the whole episode. With ``stack_num = 1`` (the default) training sees no memory at all;
PPO's ratio is still computed consistently (Tianshou recomputes the old log-probabilities with the same windowed
call), but the trained policy is not the collecting one. A task whose cue lies more than ``stack_num`` steps back
cannot be learned, and the cost of a training sample grows linearly with ``stack_num``. For memory tasks prefer
the project's PPO (``agents/ppo.py``: whole sequences replayed from the stored initial state) or SB3's
RecurrentPPO (:mod:`agents.sb3`). ``rl_access`` runs here, but its access choices get no policy-gradient training
in Tianshou (there is no slot to store them; they are sampled in train mode and greedy in eval mode).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

import memory_cores
from agents.policy import _layer_init, make_encoder
from memory_cores import Core

__all__ = ["CoreActor", "CoreCritic", "CoreNet", "make_ppo"]


def _get(state: Any, key: str) -> Any:
    return state[key] if isinstance(state, dict) else getattr(state, key)


class CoreNet(nn.Module):
    """Observation encoder -> memory core -> Linear: Tianshou's ``(obs, state, info) -> (out, state)`` convention.

    Args:
        observation_space: the env's observation space (a flat or image ``Box``, ``Discrete``, ``MultiBinary``,
            ...: :func:`agents.policy.make_encoder`).
        output_dim: width of the output (number of actions for logits, 1 for a value).
        core: a name in :data:`memory_cores.CORES`.
        core_kwargs: keyword arguments of the core's constructor.
        embed_size: width of the encoder output (the core's input).
        device: where the module lives (Tianshou hands numpy in; it is moved here).

    ``forward(obs, state=None, info=None)``: ``obs`` ``[B, *obs_shape]`` (one step) or ``[B, L, *obs_shape]``
    (a window, oldest first). ``state``: None (the core's initial state) or ``{"packed": [B, S], "live": [B, 1]}``;
    rows with ``live == 0`` (Tianshou zeroes a row at episode end) start from the initial state. Returns the
    output at the window's last step, ``[B, output_dim]``, and the new state (detached).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        output_dim: int,
        core: str = "lstm",
        core_kwargs: dict | None = None,
        embed_size: int = 64,
        device: str | torch.device = "cpu",
        output_gain: float = 0.01,
    ) -> None:
        super().__init__()
        if core not in memory_cores.CORES:
            raise ValueError(f"core={core!r} is not valid: expected one of {', '.join(sorted(memory_cores.CORES))}")
        if not isinstance(output_dim, int) or output_dim <= 0:
            raise ValueError(f"output_dim must be a positive int, got {output_dim!r}")
        self.obs_shape = tuple(observation_space.shape or ())
        self.encoder = make_encoder(observation_space, embed_size)
        self.core: Core = memory_cores.make_core(core, embed_size, **dict(core_kwargs or {}))
        self.head = _layer_init(nn.Linear(self.core.output_size, output_dim), gain=output_gain)
        self.output_dim = output_dim
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, obs: Any, state: Any = None, info: Any = None) -> tuple[Tensor, dict[str, Tensor]]:
        x = torch.as_tensor(np.asarray(obs) if not isinstance(obs, Tensor) else obs, device=self.device)
        if x.dim() == len(self.obs_shape) + 1:  # one step [B, ...] -> window of one [B, 1, ...]
            x = x.unsqueeze(1)
        if x.dim() != len(self.obs_shape) + 2:
            raise ValueError(f"obs must be [B, {list(self.obs_shape)}] or [B, L, {list(self.obs_shape)}], got {list(x.shape)}")
        B = x.shape[0]
        feats = self.encoder(x).transpose(0, 1)  # [B, L, E] -> [L, B, E], time-major for the core
        core = self.core
        if state is None:
            s = core.initial_state(B, self.device)
        else:
            packed = torch.as_tensor(_get(state, "packed"), device=self.device, dtype=torch.float32)
            live = torch.as_tensor(_get(state, "live"), device=self.device).reshape(B)
            s = core.reset_state(core.unpack_state(packed), live < 0.5)  # zeroed rows: new episodes
        ys, s = core.unroll(feats, s)  # [L, B, O]
        out = self.head(ys[-1])
        new_state = {"packed": core.pack_state(s).detach(), "live": torch.ones(B, 1, device=self.device)}
        return out, new_state


class CoreActor(CoreNet):
    """A :class:`CoreNet` whose output is the logits of a ``Discrete(num_actions)`` action (for Tianshou's
    ``DiscreteActorPolicy``)."""

    def __init__(self, observation_space: spaces.Space, num_actions: int, **kwargs: Any) -> None:
        super().__init__(observation_space, int(num_actions), output_gain=0.01, **kwargs)


class CoreCritic(nn.Module):
    """V(window) for Tianshou's actor-critic algorithms: ``critic(obs) -> [B, 1]``, the core run from its initial
    state over the window ``obs`` ``[B, L, ...]`` (or one step ``[B, ...]``). Tianshou gives critics no state."""

    def __init__(self, observation_space: spaces.Space, **kwargs: Any) -> None:
        super().__init__()
        self.net = CoreNet(observation_space, 1, output_gain=1.0, **kwargs)

    def forward(self, obs: Any, **kwargs: Any) -> Tensor:
        value, _ = self.net(obs)
        return value


def make_ppo(actor: CoreActor, critic: CoreCritic, action_space: gym.Space, lr: float = 3e-4, **ppo_kwargs: Any):
    """Tianshou's PPO with a :class:`CoreActor` (``DiscreteActorPolicy``) and a :class:`CoreCritic`.

    ``ppo_kwargs`` go to ``tianshou.algorithm.PPO`` (``eps_clip``, ``ent_coef``, ``gae_lambda``, ``max_batchsize``,
    ...).
    """
    from tianshou.algorithm import PPO
    from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory

    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"make_ppo supports Discrete action spaces (Tianshou's DiscreteActorPolicy), got {action_space}")
    policy = DiscreteActorPolicy(actor=actor, action_space=action_space, deterministic_eval=True)
    return PPO(policy=policy, critic=critic, optim=AdamOptimizerFactory(lr=lr), **ppo_kwargs)
