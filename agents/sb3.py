"""Memory cores as Stable-Baselines3 policies (sb3-contrib ``RecurrentPPO``).

After ``import agents.sb3`` every core of :data:`memory_cores.CORES` is a ``RecurrentPPO`` policy::

    import agents.sb3, envs, gymnasium as gym
    from sb3_contrib import RecurrentPPO

    env = gym.make("MemoryCores/TMaze-v0", length=10)
    model = RecurrentPPO("MemoryCorePolicy", env, policy_kwargs=dict(core="ntm", core_kwargs=dict(num_slots=32)))
    model.learn(50_000, progress_bar=True)
    model = RecurrentPPO("NTMPolicy", env)            # per-core aliases: LSTMPolicy, GRUPolicy, NTMPolicy, DNCPolicy,
                                                      # AssociativeLSTMPolicy, RLAccessPolicy

How a core's state travels through RecurrentPPO
------------------------------------------------
RecurrentPPO only knows LSTMs: it reads ``policy.lstm_actor.num_layers`` and ``.hidden_size`` to shape its
buffers and passes states around as ``(h, c)`` tuples of ``[n_layers, n_envs, hidden]`` tensors, stored per step
in four float32 numpy arrays (``h``/``c`` of the actor and of the critic). Here ``lstm_actor`` (and
``lstm_critic``) is a :class:`CoreStateAdapter`: it reports ``num_layers = 1`` and ``hidden_size = ceil(S / 2)``
with ``S = core.state_size``, and a core state ``packed = core.pack_state(state)`` (``[B, S]``) travels as::

    h = packed[:, :S/2][None]      c = packed[:, S/2:][None]           # [1, B, ceil(S/2)] each (zero pad if S odd)

so no buffer slot is wasted and nothing in sb3-contrib is patched. ``unpack`` reverses it exactly
(``core.unpack_state(cat(h[0], c[0])[:, :S])``).

Episode starts use the core's own reset: every sequence is run as ``core.unroll(xs, state, resets)`` with
``resets = episode_starts``, i.e. rows that start an episode get ``core.initial_state`` (learned values where the
core learns them, not zeros) through :meth:`memory_cores.Core.reset_state`, the package's single reset mechanism.
RecurrentPPO cuts its training sequences at episode starts, so resets only occur at ``t = 0`` of a sequence; the
adapter applies them once and then unrolls without resets (fused ``nn.LSTM``/``nn.GRU`` kernels for lstm/gru).
``predict(obs, state=None, ...)`` starts from the core's initial state (SB3's own default is zeros).

Cores with discrete memory-access choices (``rl_access``)
--------------------------------------------------------
The access process ``a_t`` of :class:`memory_cores.rl_access.RLAccessCore` is a discrete random choice; it must be
trained by the policy gradient. RecurrentPPO's buffers hand ``evaluate_actions`` only the state at the start of
each sequence, so the choices are stored as part of the **action**: wrap the env with
:class:`MemoryChoiceWrapper` (``Discrete(n)`` -> ``MultiDiscrete([n, P])``, ``MultiDiscrete(nvec)`` ->
``MultiDiscrete([*nvec, P])``; the env only sees its own part). Then

* rollout: the core samples ``a_t ~ pi(. | history)`` inside its step; the policy returns the joint action
  ``[env action, a_t]`` and the joint log-probability ``log pi(env action) + log pi(a_t)``;
* update: ``evaluate_actions`` replays the sequence with the stored choices
  (``core.unroll_with_choices(..., choices=stored)``, bit-identical memory operations) and scores them, so PPO's
  ratio, clipping and entropy bonus cover the access choices as well (their logits get gradient from the PPO
  loss; ``tests/test_sb3.py`` checks it);
* ``predict(..., deterministic=True)`` takes the greedy choice.

Such a core is shared by actor and critic (``shared_lstm=True``, SB3's meaning: the value head reads the detached
core output); a separate critic core would take choices nobody trains. The value head reads only the part of the
core output computed before the choice (``y[:, :core.pre_choice_size]``, the rest zeroed;
:func:`memory_cores.rl_access.pre_choice_size`), so the baseline does not depend on ``a_t``: a critic that saw the
read ``r_t`` would learn ``E[G_t | a_t]`` and cancel the choice's policy gradient (:mod:`memory_cores.reinforce`).

This is the project's PPO objective too (:meth:`agents.ppo.PPO.loss` with ``choice_coef=1`` and ``choice_ent_coef
= ent_coef``): one clipped ratio of pi(env action, a_t) per step, ``approx_kl`` and ``clip_fraction`` of that ratio,
and a value that reads h_t only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    Distribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

import memory_cores
from memory_cores import Core
from memory_cores.rl_access import pre_choice_size

__all__ = [
    "CORE_POLICY_ALIASES",
    "CoreStateAdapter",
    "MemoryChoiceWrapper",
    "MemoryCorePolicy",
    "buffer_bytes_per_step",
    "register_policies",
]


def _has_choices(core: Core) -> bool:
    return bool(getattr(core, "has_discrete_choices", False))


# ============================================================================================ state adapter
class CoreStateAdapter(nn.Module):
    """A core behind the ``nn.LSTM``-like face that RecurrentPPO reads (``num_layers``, ``hidden_size``).

    ``hidden_size = ceil(S / 2)``: the packed state ``[B, S]`` is split over the ``h`` and ``c`` slots of SB3's
    ``(h, c)`` tuples, each ``[1, B, ceil(S / 2)]``.

    Args:
        core: any :class:`memory_cores.Core`.
    """

    num_layers = 1

    def __init__(self, core: Core) -> None:
        super().__init__()
        self.core = core
        self.input_size = core.input_size
        self.output_size = core.output_size
        self.state_size = core.state_size  # S
        self.hidden_size = (self.state_size + 1) // 2  # ceil(S / 2)

    # ----------------------------------------------------------------------------------- packing
    def pack(self, state: Any) -> tuple[Tensor, Tensor]:
        """Core state (batch ``B``) -> SB3's ``(h, c)``, each ``[1, B, ceil(S / 2)]``."""
        packed = self.core.pack_state(state).to(torch.float32)  # [B, S]
        half = self.hidden_size
        if packed.shape[1] < 2 * half:  # S odd: one zero column of padding
            packed = torch.cat([packed, packed.new_zeros(packed.shape[0], 2 * half - packed.shape[1])], dim=1)
        return packed[:, :half].unsqueeze(0), packed[:, half:].unsqueeze(0)

    def unpack(self, hc: tuple[Tensor, Tensor]) -> Any:
        """SB3's ``(h, c)`` (``[1, B, ceil(S / 2)]`` each) -> core state (batch ``B``)."""
        h, c = hc
        if h.dim() != 3 or h.shape[0] != 1 or h.shape[2] != self.hidden_size or c.shape != h.shape:
            raise ValueError(
                f"a packed core state must be a pair of [1, n_envs, {self.hidden_size}] arrays (h, c), got "
                f"{list(h.shape)} and {list(c.shape)}; pass the state returned by predict() or None"
            )
        packed = torch.cat([h[0], c[0]], dim=1)[:, : self.state_size]  # [B, S]
        return self.core.unpack_state(packed)

    def initial(self, batch_size: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """The core's initial state for ``batch_size`` rows, packed as ``(h, c)``."""
        with torch.no_grad():
            return self.pack(self.core.initial_state(batch_size, device))

    # ----------------------------------------------------------------------------------- sequences
    def process(
        self,
        features: Tensor,
        hc: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        choices: Tensor | None = None,
        greedy: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Any]:
        """RecurrentPPO's ``_process_sequence`` for a core.

        Args:
            features: ``[n_seq * T, F]``, sequence-major (SB3's padded layout; ``T = 1`` in rollouts).
            hc: the packed state at the start of each sequence, ``[1, n_seq, ceil(S / 2)]`` each.
            episode_starts: ``[n_seq * T]`` float, 1 where the input starts an episode.
            choices: ``[n_seq * T]`` long stored access choices (cores with discrete choices) or None (sample).
            greedy: take the greedy choices instead of sampling (ignored when ``choices`` is given).
        Returns:
            the core outputs ``[n_seq * T, output_size]`` (same order as ``features``), the packed final state and,
            for cores with discrete choices, their :class:`memory_cores.rl_access.ChoiceInfo` (fields
            ``[n_seq * T]``), else None.
        """
        core = self.core
        n_seq = hc[0].shape[1]
        state = self.unpack(hc)
        # (n_seq * T, F) -> (n_seq, T, F) -> (T, n_seq, F): time-major for the core
        xs = features.reshape(n_seq, -1, features.shape[-1]).transpose(0, 1)
        resets = episode_starts.reshape(n_seq, -1).transpose(0, 1) > 0.5  # [T, n_seq] bool
        if _has_choices(core):
            ch = None if choices is None else choices.reshape(n_seq, -1).transpose(0, 1).long()  # [T, n_seq]
            ys, state, info = core.unroll_with_choices(xs, state, resets, choices=ch, greedy=greedy)
            # ChoiceInfo fields [T, n_seq, ...] -> [n_seq * T, ...]
            info = type(info)(*(f.transpose(0, 1).reshape((-1,) + f.shape[2:]) for f in info))
        else:
            # Sequences are cut at episode starts, so resets happen at t = 0 only: apply them once, then unroll
            # without resets (the step loop, fused where the core has a fused path).
            state = core.reset_state(state, resets[0])
            rest = resets.clone()
            rest[0] = False
            ys, state = core.unroll(xs, state, rest if bool(rest.any()) else None)
            info = None
        # (T, n_seq, O) -> (n_seq, T, O) -> (n_seq * T, O)
        latent = ys.transpose(0, 1).reshape(-1, ys.shape[-1]).to(features.dtype)
        return latent, self.pack(state), info

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - not an nn.LSTM
        raise TypeError("CoreStateAdapter is driven through MemoryCorePolicy; use .process()")


# ============================================================================================ choices in actions
class MemoryChoiceWrapper(gym.ActionWrapper):
    """Appends a core's discrete memory-access choice to the env's action space (for ``rl_access`` in SB3).

    ``Discrete(n)`` -> ``MultiDiscrete([n, P])``; ``MultiDiscrete(nvec)`` (1-d) -> ``MultiDiscrete([*nvec, P])``.
    The wrapped env receives its own part only; the last component is the access choice ``a_t`` that the policy
    made inside the core, stored by RecurrentPPO with the action and re-scored in ``evaluate_actions``.

    Args:
        env: the env to wrap.
        num_choices: P, the core's number of access processes (``core.num_choices``; 7 for the default
            ``rl_access``).
    """

    def __init__(self, env: gym.Env, num_choices: int) -> None:
        super().__init__(env)
        if not isinstance(num_choices, (int, np.integer)) or num_choices < 1:
            raise ValueError(f"num_choices must be a positive int (the core's num_choices), got {num_choices!r}")
        space = env.action_space
        if isinstance(space, spaces.Discrete):
            self._env_kind, nvec, self._start = "discrete", [int(space.n)], int(space.start)
        elif isinstance(space, spaces.MultiDiscrete) and len(space.nvec.shape) == 1:
            self._env_kind, nvec, self._start = "multidiscrete", [int(n) for n in space.nvec], None
        else:
            raise ValueError(
                f"MemoryChoiceWrapper supports Discrete and 1-d MultiDiscrete action spaces, got {space}; SB3 has no "
                "mixed discrete/continuous action space to carry the memory choice of a Box-action env"
            )
        self.num_choices = int(num_choices)
        self.action_space = spaces.MultiDiscrete(nvec + [self.num_choices])

    def action(self, action: np.ndarray) -> Any:
        a = np.asarray(action)
        if self._env_kind == "discrete":
            return int(a[0]) + self._start
        return a[:-1].astype(self.env.action_space.dtype)


def wrap_env_for_core(env: gym.Env, core: str, core_kwargs: dict | None = None) -> gym.Env:
    """``env`` as the policy for ``core`` needs it: wrapped with :class:`MemoryChoiceWrapper` when the core takes
    discrete access choices, unchanged otherwise."""
    probe = memory_cores.make_core(core, 1, **(core_kwargs or {}))
    if _has_choices(probe):
        return MemoryChoiceWrapper(env, probe.num_choices)
    return env


# ============================================================================================ the policy
class MemoryCorePolicy(RecurrentActorCriticPolicy):
    """RecurrentPPO policy whose recurrent part is any memory core: features extractor -> core -> MLP heads.

    Args (besides SB3's ``ActorCriticPolicy`` arguments, which keep their meaning):
        core: a name in :data:`memory_cores.CORES` (``"lstm"``, ``"gru"``, ``"alstm"``, ``"ntm"``, ``"dnc"``,
            ``"rl_access"``); default: the class's ``default_core`` (``"lstm"`` here, the core of an alias class).
        core_kwargs: keyword arguments of the core's constructor (``hidden_size``, ``num_slots``, ...); its
            input size is the features extractor's output width.
        shared_lstm: one core for actor and critic; the value head reads its detached output (SB3's meaning).
            Default: False, except True for cores with discrete access choices.
        enable_critic_lstm: a separate core (same class and kwargs) for the critic. Default: True unless the core
            is shared (SB3's default), never for cores with discrete choices.

    ``lstm_actor``/``lstm_critic`` are :class:`CoreStateAdapter` s (the names RecurrentPPO reads). SB3's LSTM
    arguments (``lstm_hidden_size``, ``n_lstm_layers``, ``lstm_kwargs``) do not apply: size the core with
    ``core_kwargs``.
    """

    default_core: ClassVar[str] = "lstm"

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        core: str | None = None,
        core_kwargs: dict[str, Any] | None = None,
        shared_lstm: bool | None = None,
        enable_critic_lstm: bool | None = None,
    ) -> None:
        core = self.default_core if core is None else core
        if core not in memory_cores.CORES:
            raise ValueError(f"core={core!r} is not valid: expected one of {', '.join(sorted(memory_cores.CORES))}")
        self.core_name = core
        self.core_kwargs = dict(core_kwargs or {})
        choices = bool(getattr(memory_cores.CORES[core], "has_discrete_choices", False))
        self.has_choices = choices
        if choices:
            if shared_lstm is False or enable_critic_lstm:
                raise ValueError(
                    f"core={core!r} takes discrete access choices, trained through the actor's log-probability: it "
                    "must be shared by actor and critic (shared_lstm=True, enable_critic_lstm=False), got "
                    f"shared_lstm={shared_lstm!r}, enable_critic_lstm={enable_critic_lstm!r}"
                )
            shared_lstm, enable_critic_lstm = True, False
            if not (isinstance(action_space, spaces.MultiDiscrete) and len(action_space.nvec.shape) == 1
                    and action_space.nvec.shape[0] >= 2):
                raise ValueError(
                    f"core={core!r} takes discrete memory-access choices, which RecurrentPPO must store with the "
                    f"action: wrap the env with agents.sb3.MemoryChoiceWrapper(env, num_choices) (or "
                    f"agents.sb3.wrap_env_for_core(env, {core!r}, core_kwargs)); got action space {action_space}"
                )
        else:
            shared_lstm = bool(shared_lstm) if shared_lstm is not None else False
            enable_critic_lstm = (not shared_lstm) if enable_critic_lstm is None else bool(enable_critic_lstm)
        self._pending: tuple[Core, Core | None] | None = None
        self._separate_critic_core = enable_critic_lstm  # read by _build_mlp_extractor, before SB3 sets its own
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            lstm_hidden_size=1,  # the nn.LSTMs RecurrentActorCriticPolicy builds are replaced just below
            n_lstm_layers=1,
            shared_lstm=shared_lstm,
            enable_critic_lstm=enable_critic_lstm,
        )
        actor_core, critic_core = self._pending
        self._pending = None
        self.lstm_actor = CoreStateAdapter(actor_core)
        self.lstm_critic = CoreStateAdapter(critic_core) if critic_core is not None else None
        if not (self.shared_lstm or self.enable_critic_lstm):  # critic: features -> Linear -> critic MLP
            self.critic = nn.Linear(self.features_dim, actor_core.output_size)
        self.lstm_hidden_state_shape = (1, 1, self.lstm_actor.hidden_size)
        self.to(self.device)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    # ------------------------------------------------------------------------------------------- building
    def _build_mlp_extractor(self) -> None:
        """Build the core(s) now that ``features_dim`` is known, then SB3's MLP extractor on the core output."""
        actor_core = memory_cores.make_core(self.core_name, self.features_dim, **self.core_kwargs)
        critic_core = None
        if self._separate_critic_core:
            critic_core = memory_cores.make_core(self.core_name, self.features_dim, **self.core_kwargs)
        self._pending = (actor_core, critic_core)
        self.lstm_output_dim = actor_core.output_size
        if self.has_choices and int(self.action_space.nvec[-1]) != actor_core.num_choices:
            raise ValueError(
                f"the last action component must be the core's access choice with {actor_core.num_choices} values "
                f"(core_kwargs={self.core_kwargs}), got action space {self.action_space}; wrap the env with "
                f"agents.sb3.wrap_env_for_core(env, {self.core_name!r}, core_kwargs)"
            )
        if self.has_choices:
            # the action distribution covers the env's part; the choice's distribution is the core's own
            self.action_dist = _env_part_distribution(self.action_space)
        super()._build_mlp_extractor()

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            core=self.core_name,
            core_kwargs=self.core_kwargs,
            shared_lstm=self.shared_lstm,
            enable_critic_lstm=self.enable_critic_lstm,
            features_extractor_class=self.features_extractor_class,
            features_extractor_kwargs=self.features_extractor_kwargs,
            share_features_extractor=self.share_features_extractor,
        )
        return data

    @property
    def core(self) -> Core:
        """The actor's core."""
        return self.lstm_actor.core

    def initial_state(self, n_envs: int) -> tuple[np.ndarray, np.ndarray]:
        """The core's initial state for ``n_envs`` rows, packed as ``predict`` takes and returns it."""
        h, c = self.lstm_actor.initial(n_envs, self.device)
        return h.cpu().numpy(), c.cpu().numpy()

    # ------------------------------------------------------------------------------------------- torso
    def _pi_vf(
        self, obs: Any, lstm_states: RNNStates, episode_starts: Tensor, choices: Tensor | None, greedy: bool
    ) -> tuple[Tensor, Tensor, RNNStates, Any]:
        """Features -> core(s) -> (latent_pi, latent_vf) after the MLP extractor, new states, choice info."""
        features = self.extract_features(obs)
        if self.share_features_extractor:
            pi_features = vf_features = features
        else:
            pi_features, vf_features = features
        latent_pi, states_pi, info = self.lstm_actor.process(pi_features, lstm_states.pi, episode_starts, choices, greedy)
        if self.lstm_critic is not None:
            latent_vf, states_vf, _ = self.lstm_critic.process(vf_features, lstm_states.vf, episode_starts)
        elif self.shared_lstm:
            latent_vf = self._value_input(latent_pi.detach())
            states_vf = (states_pi[0].detach(), states_pi[1].detach())
        else:
            latent_vf = self.critic(vf_features)
            states_vf = states_pi
        return (
            self.mlp_extractor.forward_actor(latent_pi),
            self.mlp_extractor.forward_critic(latent_vf),
            RNNStates(states_pi, states_vf),
            info,
        )

    def _value_input(self, latent: Tensor) -> Tensor:
        """The shared core's output as the critic sees it. For cores with discrete choices only the part computed
        before the choice (``y[:, :core.pre_choice_size]``, the controller output h_t) is kept and the rest is
        zeroed: a baseline that depends on the choice a_t would bias the choice's policy gradient (see
        :mod:`memory_cores.reinforce`)."""
        if not self.has_choices:
            return latent
        # SB3's MLP extractor gives actor and critic one input width, so the part after the choice is zeroed
        # rather than cut off; agents.policy.ActorCritic cuts it (the same information: h_t)
        pre = pre_choice_size(self.core)
        keep = (torch.arange(latent.shape[-1], device=latent.device) < pre).to(latent.dtype)  # [O] 1 then 0
        return latent * keep

    def _split_actions(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Joint action ``[N, K + 1]`` -> env part (``[N]`` for one component, else ``[N, K]``) and choice ``[N]``."""
        actions = actions.long()
        env_part = actions[:, :-1]
        if env_part.shape[1] == 1:
            env_part = env_part[:, 0]
        return env_part, actions[:, -1]

    def _joint_actions(self, env_actions: Tensor, choice: Tensor) -> Tensor:
        return torch.cat([env_actions.reshape(choice.shape[0], -1).long(), choice.long().unsqueeze(-1)], dim=1)

    # ------------------------------------------------------------------------------------------- SB3 API
    def forward(
        self, obs: Tensor, lstm_states: RNNStates, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, RNNStates]:
        """One rollout step: actions, values, log-probabilities (joint with the access choices) and new states."""
        latent_pi, latent_vf, states, info = self._pi_vf(obs, lstm_states, episode_starts, None, deterministic)
        values = self.value_net(latent_vf)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        if info is not None:
            log_prob = log_prob + info.log_prob  # log pi(env action) + log pi(a_t)
            actions = self._joint_actions(actions, info.choice)
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob, states

    def evaluate_actions(
        self, obs: Tensor, actions: Tensor, lstm_states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Values, log-probabilities and entropies of stored actions (and stored access choices, replayed)."""
        choices = None
        if self.has_choices:
            actions, choices = self._split_actions(actions)
        latent_pi, latent_vf, _, info = self._pi_vf(obs, lstm_states, episode_starts, choices, False)
        distribution = self._get_action_dist_from_latent(latent_pi)
        log_prob = distribution.log_prob(actions)
        entropy = distribution.entropy()
        if info is not None:
            log_prob = log_prob + info.log_prob
            entropy = entropy + info.entropy
        return self.value_net(latent_vf), log_prob, entropy

    def get_distribution(
        self, obs: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor
    ) -> tuple[Distribution, tuple[Tensor, ...]]:
        """The env-action distribution and the new actor state (for ``rl_access`` the access choices of this call
        are sampled; use :meth:`predict` for joint actions)."""
        features = super(ActorCriticPolicy, self).extract_features(obs, self.pi_features_extractor)
        latent_pi, states, _ = self.lstm_actor.process(features, lstm_states, episode_starts)
        return self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(latent_pi)), states

    def predict_values(self, obs: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor) -> Tensor:
        features = super(ActorCriticPolicy, self).extract_features(obs, self.vf_features_extractor)
        if self.lstm_critic is not None:
            latent_vf, _, _ = self.lstm_critic.process(features, lstm_states, episode_starts)
        elif self.shared_lstm:
            latent_vf, _, _ = self.lstm_actor.process(features, lstm_states, episode_starts, greedy=True)
            latent_vf = self._value_input(latent_vf.detach())
        else:
            latent_vf = self.critic(features)
        return self.value_net(self.mlp_extractor.forward_critic(latent_vf))

    def _predict(
        self, observation: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        features = super(ActorCriticPolicy, self).extract_features(observation, self.pi_features_extractor)
        latent_pi, states, info = self.lstm_actor.process(features, lstm_states, episode_starts, greedy=deterministic)
        distribution = self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(latent_pi))
        actions = distribution.get_actions(deterministic=deterministic)
        if info is not None:
            actions = self._joint_actions(actions, info.choice)
        return actions, states

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict``; ``state=None`` means the core's initial state (SB3 would use zeros)."""
        if state is None:
            obs_tensor, _ = self.obs_to_tensor(observation)
            first = obs_tensor[next(iter(obs_tensor))] if isinstance(obs_tensor, dict) else obs_tensor
            state = self.initial_state(first.shape[0])
        return super().predict(observation, state, episode_start, deterministic)


def _env_part_distribution(space: spaces.Space) -> Distribution:
    """The distribution of the env's part of a :class:`MemoryChoiceWrapper` action space."""
    nvec = [int(n) for n in space.nvec[:-1]]
    return CategoricalDistribution(nvec[0]) if len(nvec) == 1 else MultiCategoricalDistribution(nvec)


# ============================================================================================ aliases
def _alias_class(name: str, core: str) -> type[MemoryCorePolicy]:
    cls = type(name, (MemoryCorePolicy,), {"default_core": core, "__module__": __name__})
    cls.__doc__ = f"""``MemoryCorePolicy`` with ``core="{core}"`` by default (``policy_kwargs=dict(core_kwargs=...)``)."""
    return cls


LSTMPolicy = _alias_class("LSTMPolicy", "lstm")
GRUPolicy = _alias_class("GRUPolicy", "gru")
AssociativeLSTMPolicy = _alias_class("AssociativeLSTMPolicy", "alstm")
NTMPolicy = _alias_class("NTMPolicy", "ntm")
DNCPolicy = _alias_class("DNCPolicy", "dnc")
RLAccessPolicy = _alias_class("RLAccessPolicy", "rl_access")

CORE_POLICY_ALIASES: dict[str, type[MemoryCorePolicy]] = {
    "MemoryCorePolicy": MemoryCorePolicy,
    "LSTMPolicy": LSTMPolicy,
    "GRUPolicy": GRUPolicy,
    "AssociativeLSTMPolicy": AssociativeLSTMPolicy,
    "NTMPolicy": NTMPolicy,
    "DNCPolicy": DNCPolicy,
    "RLAccessPolicy": RLAccessPolicy,
}
"""Policy names usable as ``RecurrentPPO(name, env)`` after ``import agents.sb3``."""


def register_policies() -> None:
    """Add :data:`CORE_POLICY_ALIASES` to ``RecurrentPPO.policy_aliases`` (done on import; idempotent)."""
    RecurrentPPO.policy_aliases.update(CORE_POLICY_ALIASES)


register_policies()


# ============================================================================================ costs
def buffer_bytes_per_step(core: str, input_size: int = 64, **core_kwargs: Any) -> int:
    """Bytes that RecurrentPPO's rollout buffer spends on recurrent state per env step for ``core``.

    The buffer keeps four float32 arrays (``h``/``c`` of actor and critic) of ``[n_steps, 1, n_envs,
    ceil(S / 2)]``, whatever the sharing: ``4 * ceil(S / 2) * 4`` bytes per env step (about ``8 S``).
    The critic's slots are filled whether or not it has its own core.
    """
    S = memory_cores.make_core(core, input_size, **core_kwargs).state_size
    return 4 * ((S + 1) // 2) * 4  # 4 arrays x ceil(S / 2) float32
