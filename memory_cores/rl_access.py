"""RL-selected memory access: a memory whose access process is a discrete choice (Zaremba and Sutskever 2015).

"Reinforcement Learning Neural Turing Machines" (arXiv:1505.00521) moves discrete heads in {-1, 0, +1}, chosen by
REINFORCE, while what is written and read is trained by backprop. The related patent idea: the network output
has an *RL portion* that selects a memory access process from a predetermined set, and a *differentiable portion*
that defines the read/write under the selected process. This core is that idea in the package's core contract.

One step (``x``: ``[B, I]``)::

    h_t, c_t = LSTMCell([x_t, r_{t-1}, onehot(a_{t-1})], (h_{t-1}, c_{t-1}))     # controller, H units
    xi_t     = Linear(h_t) = [ z_t | k_t | beta^_t | e^_t | v_t ]               # the network output
        RL portion:             z_t : [B, P]  logits of pi(a_t | history) over the P access processes
        differentiable portion: k_t : [B, W]  content key;  beta_t = oneplus(beta^_t) : [B]  key strength;
                                e_t = sigmoid(e^_t) : [B, W]  erase vector;  v_t : [B, W]  write (add) vector
    a_t ~ Categorical(softmax(z_t))      (train mode)    or    a_t = argmax z_t    (eval mode / greedy)
          sampled by Gumbel-max: argmax_i (log pi_i - log(-log u_i)), u_i ~ U(0, 1) (no host sync on CUDA)
    memory M_t, head p_t, usage u_t, read r_t  <-  access process a_t  (list below)
    y_t = [h_t, r_t]                                                             # [B, H + W]

The predetermined set of access processes (``ACCESS_PROCESSES``; the constructor's ``processes`` picks a subset
and fixes the order, which is the meaning of the choice index ``a_t``). ``p`` is a one-hot head pointer
``[B, N]`` over the N slots; ``M[p] = sum_i p(i) M(i)``:

* ``no_op``: nothing changes; r_t = r_{t-1}.
* ``read_head``: r_t = M[p].
* ``write_head``: M(i) <- M(i) (1 - p(i) e_t) + p(i) v_t (NTM eqs. 3-4 at the head); r_t = r_{t-1}.
* ``move_left``: p <- p shifted by -1 slot (circular; NTM eq. 8 with a one-hot shift); r_t = M[p] at the new p.
* ``move_right``: p <- p shifted by +1 slot (circular); r_t = M[p] at the new p.
* ``content_read``: r_t = sum_i w^c(i) M(i), w^c(i) = softmax_i(beta_t K[k_t, M(i)]) (NTM eq. 5); the head stays.
* ``write_least_used``: erase/add as ``write_head`` but at the one-hot slot argmin_i u(i); the head stays;
  r_t = r_{t-1}.

Processes that move *and* act in one step (as the RL-NTM head, which reads or writes and moves in the same step).
Not in the default set (:data:`DEFAULT_PROCESSES`); pick them with ``processes=`` (below):

* ``write_move_right``: erase/add at the head p (as ``write_head``), then p <- p shifted by +1 slot; r_t = r_{t-1}.
* ``write_move_left``: the same, then p <- p shifted by -1 slot.
* ``read_move_right``: r_t = M[p] read at the head p *before* the move, then p <- p shifted by +1 slot (read the
  cell under the head, then advance, as a tape head does). Reading before the move makes the Copy access sequence
  the plainest one: the items are written to slots 0, 1, ... (``write_least_used``, head left at slot 0) and
  ``read_move_right`` at every output step reads slot 0, 1, ... in order, with no repositioning step between the
  phases. (``move_right`` keeps the opposite order, move then read, as before.)
* ``read_move_left``: r_t = M[p] at the head, then p <- p shifted by -1 slot.

No process both reads and writes in one step: a read always sees the memory as it was before the step.

Choosing a subset: ``RLAccessCore(I, processes=["no_op", "write_least_used", "read_move_right"])`` (the order is
the meaning of the choice index; checkpoints and stored choices refer to it). From the command lines:
``scripts/train.py --core rl_access --core-kwargs '{"processes": ["no_op", "write_least_used",
"read_move_right"]}'`` (a JSON list, stored in the checkpoint; ``scripts/train_tianshou.py --core-kwargs`` and
the SB3 policy's ``core_kwargs`` take the same) and
``scripts/train_supervised.py --core rl_access --core-kwargs '{"processes": [...]}'`` (or
``--core-arg "processes=['no_op', 'read_move_right']"``). The default stays the seven processes above, in that
order, so existing results and checkpoints keep their meaning.

Usage ``u``: ``[B, N]`` in [0, 1]. Every step ``u <- lambda u (1 - w) + w`` with ``w`` the one-hot write
weighting (zero when the process does not write) and ``lambda = usage_decay`` in (0, 1): a written slot gets
usage 1 and the others decay, so ``argmin u`` is the least recently written slot (never-written slots first,
ties to the lowest index). Writes thus fill slots 0, 1, 2, ... and then overwrite the oldest one.

Design notes:

* Which slot is touched (head, head moves, least-used slot) is a function of the discrete choices only; what is
  written (``e``, ``v``) and the content read (``k``, ``beta``) are differentiable. Gradients of a loss on ``y``
  reach the differentiable portion and the controller; the RL portion ``z_t`` is trained only through the
  log-probabilities returned by :meth:`RLAccessCore.step_with_choice` (see :mod:`memory_cores.reinforce`).
  ``z_t`` shares its ``Linear`` with the differentiable portion, so every parameter tensor still gets a gradient
  from ``y`` (the rows of ``z_t`` in it do not).
* Plain contract: ``forward``/``step``/``unroll`` sample ``a_t`` from the global torch RNG in train mode and take
  the greedy choice (argmax, first index on ties) in eval mode, so ``core.eval()`` is deterministic and
  independent of the seed.
* Extended API for learners (detect it with :func:`has_discrete_choices`): :meth:`RLAccessCore.step_with_choice`
  and :meth:`RLAccessCore.unroll_with_choices` return a :class:`ChoiceInfo` (choice, log-probability, entropy,
  logits). Passing stored ``choices`` re-evaluates a rollout exactly: same operations, so bit-identical memory
  contents and outputs, plus the log-probabilities of those choices under the current parameters.
* The previous choice (one-hot, ``[B, P]``) is fed to the controller with the previous read, so the policy knows
  what it did last.
* A learner's baseline (critic) of ``a_t`` reads ``y_t[..., :pre_choice_size]`` = ``h_t`` only
  (:func:`pre_choice_size`): ``r_t`` is the outcome of ``a_t``, and a value that sees it learns ``E[G_t | a_t]``,
  which cancels the choice's policy gradient. ``agents/policy.py`` and ``agents/sb3.py`` do so;
  ``tests/test_choice_objective.py`` measures the gradient on a bandit against the exact one.
* Resets go through :meth:`memory_cores.base.Core.reset_state` (the package's one reset mechanism). Learned
  initial values: controller ``h_0``, ``c_0``, memory ``M_0`` (a small constant 1e-6 at init, Collier and Beel
  2018) and the read ``r_0``; the head starts at slot 0, usage at zero, the previous choice at zero.
* Memory math runs in fp32 with autocast disabled (fp64 when the module is double).
* ``kernel="triton"`` runs everything after the choice (content read, moves, least-used write, erase/add, usage)
  as one Triton kernel forward and one backward (:mod:`memory_cores.rl_access_triton`), tested equal to the plain
  step below, which stays the readable reference; ``kernel="auto"`` takes it on CUDA when Triton imports.

A learner's rollout and update (CleanRL style; see :mod:`memory_cores.reinforce` for the loss)::

    init = state                                                     # saved once per rollout
    with torch.no_grad():
        for t in range(T):                                           # rollout: sample a_t
            y, state, info = core.step_with_choice(x[t], state, reset[t])
            choices[t] = info.choice
    ys, _, info = core.unroll_with_choices(xs, init, resets, choices=choices)   # update: exact replay
    loss = reinforce_loss(info.log_prob, returns, baseline) - entropy_coef * entropy_bonus(info.entropy) + ...
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from .addressing import EPS, content_weighting, erase_and_add, oneplus, read_memory
from .base import Core, LearnedInit, check_kernel, stack_states, use_triton

DEFAULT_PROCESSES: tuple[str, ...] = (
    "no_op",
    "read_head",
    "write_head",
    "move_left",
    "move_right",
    "content_read",
    "write_least_used",
)
"""The constructor's default ``processes``, in this order (choice index = position in ``processes``). Unchanged
since the first release: results and checkpoints made with the default refer to these indices."""

ACCESS_PROCESSES: tuple[str, ...] = DEFAULT_PROCESSES + (
    "write_move_right",
    "write_move_left",
    "read_move_right",
    "read_move_left",
)
"""Every access process this core knows (the default ones first); ``processes=`` picks a subset in any order."""


class RLAccessState(NamedTuple):
    """State of :class:`RLAccessCore` (all float, batch first).

    ``h``, ``c``: ``[B, H]`` controller LSTM state. ``memory``: ``[B, N, W]`` M. ``head``: ``[B, N]`` one-hot head
    pointer p. ``usage``: ``[B, N]`` u in [0, 1]. ``read``: ``[B, W]`` last read vector r. ``prev_choice``:
    ``[B, P]`` one-hot of the previous step's access process (zeros at an episode start).
    """

    h: Tensor
    c: Tensor
    memory: Tensor
    head: Tensor
    usage: Tensor
    read: Tensor
    prev_choice: Tensor


class ChoiceInfo(NamedTuple):
    """What an RL learner needs about the discrete choice of each step (``[B]`` per step, ``[T, B]`` unrolled).

    ``choice``: long, the access process index a_t. ``log_prob``: log pi(a_t | history) (differentiable w.r.t.
    the parameters). ``entropy``: entropy of pi(. | history). ``logits``: ``[B, P]`` (``[T, B, P]``) z_t.
    """

    choice: Tensor
    log_prob: Tensor
    entropy: Tensor
    logits: Tensor


@runtime_checkable
class DiscreteChoiceCore(Protocol):
    """The protocol of cores whose memory access includes a discrete, policy-gradient-trained choice.

    Agents detect it with :func:`has_discrete_choices` and then use :meth:`step_with_choice` in the rollout
    (sampling) and :meth:`unroll_with_choices` with the stored choices in the update (exact re-evaluation).
    """

    has_discrete_choices: bool
    num_choices: int
    choice_names: tuple[str, ...]
    pre_choice_size: int
    """The core output ``y_t`` begins with ``pre_choice_size`` features computed before the step's choice ``a_t``
    (``y_t[..., :pre_choice_size]``); the rest may depend on ``a_t``. Only the leading part may feed a baseline
    (critic) of ``a_t``: see :func:`pre_choice_size`."""

    def step_with_choice(self, x, state, reset=None, choice=None, greedy=False, generator=None): ...

    def unroll_with_choices(self, xs, state, resets=None, choices=None, greedy=False, generator=None): ...


def has_discrete_choices(core: object) -> bool:
    """True when ``core`` follows :class:`DiscreteChoiceCore` (its actions need a score-function loss)."""
    return bool(getattr(core, "has_discrete_choices", False))


def pre_choice_size(core: object) -> int:
    """How many leading features of ``core``'s output a baseline of its choices may read.

    The REINFORCE baseline ``b_t`` of a choice ``a_t`` must not depend on ``a_t`` (else ``E[(G_t - b_t) grad log
    pi(a_t)]`` is no longer the policy gradient: a critic that sees the outcome of ``a_t`` learns ``E[G_t | a_t]``
    and cancels the choice's gradient). For a core with discrete choices that is ``core.pre_choice_size`` (for
    ``rl_access``: H, the controller output ``h_t``, computed before ``a_t``; the read ``r_t`` follows it); for any
    other core the whole ``core.output_size``.
    """
    if has_discrete_choices(core):
        return int(core.pre_choice_size)
    return int(core.output_size)


def _memory_dtype(dtype: torch.dtype) -> torch.dtype:
    """Memory math runs in fp32 (fp64 when the state is double), never in half precision."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _one_hot(index: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``[B]`` long -> ``[B, n]`` float one-hot (a comparison, so no host sync on CUDA unlike ``F.one_hot``)."""
    return (index.unsqueeze(-1) == torch.arange(n, device=index.device)).to(dtype)


class RLAccessCore(Core):
    """Memory core whose access process per step is a discrete choice trained by REINFORCE.

    See the module docstring for the equations and the table of access processes.

    Args:
        input_size: width of ``x``.
        hidden_size: H, units of the LSTM controller.
        num_slots: N, memory slots.
        slot_size: W, width of a memory slot (word size).
        processes: the predetermined set of access processes, names from :data:`ACCESS_PROCESSES`; their order
            defines the choice index. Default: :data:`DEFAULT_PROCESSES` (the seven original ones; the processes
            that move and act in one step, ``write_move_*`` and ``read_move_*``, are chosen explicitly).
        usage_decay: lambda in (0, 1), the per-step decay of the usage of slots not written.
        kernel: ``"plain"`` (default): the memory access as the torch ops of :meth:`_step`, the readable reference.
            ``"triton"``: everything after the choice (content read, head moves, least-used write, erase/add,
            usage) as one Triton kernel forward and one backward (:mod:`memory_cores.rl_access_triton`; float32 or
            float64 memory; CUDA tensors, or the CPU under ``TRITON_INTERPRET=1`` for tests; elsewhere a one-line
            error). The choice, its log-probability and the entropy stay in torch, so sampling draws the same
            random numbers and stored choices replay exactly. Same values up to rounding; once-differentiable.
            ``"auto"``: the Triton kernels where they can run (Triton importable, CUDA inputs) and the plain step
            elsewhere, so that a checkpoint trained on a GPU evaluates on a CPU.

    ``output_size == hidden_size + slot_size`` (``y = [h, r]``). ``num_choices == len(processes)`` (P).
    ``pre_choice_size == hidden_size``: ``y[..., :pre_choice_size]`` (= h_t) is computed before the choice a_t,
    so it is a valid input for a REINFORCE baseline of a_t; the read part ``r_t`` is not (it depends on a_t).
    """

    has_discrete_choices = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 100,
        num_slots: int = 32,
        slot_size: int = 16,
        processes: Sequence[str] = DEFAULT_PROCESSES,
        usage_decay: float = 0.99,
        kernel: str = "plain",
    ) -> None:
        super().__init__(input_size)
        for name, value in (("hidden_size", hidden_size), ("num_slots", num_slots), ("slot_size", slot_size)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(processes, str):
            raise ValueError(f"processes must be a sequence of names, got the string {processes!r}")
        processes = tuple(processes)
        unknown = [p for p in processes if p not in ACCESS_PROCESSES]
        if not processes or unknown or len(set(processes)) != len(processes):
            raise ValueError(
                f"processes must be a non-empty list of distinct names from {list(ACCESS_PROCESSES)}, "
                f"got {list(processes)}"
            )
        if not 0.0 < float(usage_decay) < 1.0:
            raise ValueError(f"usage_decay must lie in (0, 1), got {usage_decay!r}")
        self.hidden_size = hidden_size
        self.num_slots = num_slots
        self.slot_size = slot_size
        self.processes = processes
        self.choice_names = processes
        self.num_choices = len(processes)
        self.usage_decay = float(usage_decay)
        self.kernel = check_kernel(kernel)
        self.output_size = hidden_size + slot_size
        self.pre_choice_size = hidden_size

        P, W = self.num_choices, slot_size
        # controller input: [x_t, r_{t-1}, onehot(a_{t-1})]
        self.controller = nn.LSTMCell(input_size + W + P, hidden_size)
        # xi_t = [z (P) | k (W) | beta^ (1) | e^ (W) | v (W)]
        self.interface = nn.Linear(hidden_size, P + 3 * W + 1)
        self.h0 = LearnedInit(hidden_size)
        self.c0 = LearnedInit(hidden_size)
        self.memory0 = LearnedInit(num_slots, slot_size, init=1e-6)
        self.read0 = LearnedInit(slot_size)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden_size={self.hidden_size}, num_slots={self.num_slots}, "
            f"slot_size={self.slot_size}, processes={list(self.processes)}, usage_decay={self.usage_decay}"
            + (f", kernel={self.kernel!r}" if self.kernel != "plain" else "")
        )

    # ------------------------------------------------------------------ contract
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> RLAccessState:
        """Episode start: learned ``h_0, c_0, M_0, r_0``; head at slot 0; usage 0; no previous choice."""
        device = self._device(device)
        dtype = self._param_dtype()
        B, N = batch_size, self.num_slots
        head = torch.zeros(B, N, device=device, dtype=dtype)
        head[:, 0] = 1.0
        return RLAccessState(
            h=self.h0.expand(B, device),
            c=self.c0.expand(B, device),
            memory=self.memory0.expand(B, device),
            head=head,
            usage=torch.zeros(B, N, device=device, dtype=dtype),
            read=self.read0.expand(B, device),
            prev_choice=torch.zeros(B, self.num_choices, device=device, dtype=dtype),
        )

    def step(self, x: Tensor, state: RLAccessState) -> tuple[Tensor, RLAccessState]:
        """One step: samples the access process in train mode, takes the greedy one in eval mode."""
        y, new_state, _ = self._step(x, state, choice=None, greedy=not self.training, generator=None)
        return y, new_state

    # ------------------------------------------------------------------ extended API for RL learners
    def step_with_choice(
        self,
        x: Tensor,
        state: RLAccessState,
        reset: Tensor | None = None,
        choice: Tensor | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, RLAccessState, ChoiceInfo]:
        """One step that also returns the discrete choice and its log-probability and entropy.

        Args:
            x: ``[B, input_size]``.
            state: the state before the step.
            reset: ``[B]`` bool or None; flagged rows start from the initial state (via ``reset_state``).
            choice: ``[B]`` long or None. Given: these access processes are applied (re-evaluation of a stored
                rollout; bit-identical to it) and ``log_prob`` scores them. None: sampled from pi (or argmax
                when ``greedy``), whatever the train/eval mode.
            greedy: take argmax z_t instead of sampling (ignored when ``choice`` is given).
            generator: torch RNG of the uniforms u of the Gumbel-max sampling, on the device of ``x`` (default: the
                global one).
        Returns:
            ``y``: ``[B, H + W]``, the new state, and a :class:`ChoiceInfo` of ``[B]`` fields.
        """
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"x must have shape [B, {self.input_size}], got {list(x.shape)}")
        if choice is not None and (choice.shape != x.shape[:1] or choice.dtype != torch.long):
            raise ValueError(
                f"choice must be a [{x.shape[0]}] long tensor of indices in [0, {self.num_choices}), "
                f"got shape {list(choice.shape)} and dtype {choice.dtype}"
            )
        return self._step(x, self.reset_state(state, reset), choice=choice, greedy=greedy, generator=generator)

    def unroll_with_choices(
        self,
        xs: Tensor,
        state: RLAccessState,
        resets: Tensor | None = None,
        choices: Tensor | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, RLAccessState, ChoiceInfo]:
        """Time-major unroll returning the choices; exactly the loop::

            for t in range(T):
                ys[t], state, info[t] = self.step_with_choice(xs[t], state, resets[t], choices[t], greedy, generator)

        ``xs``: ``[T, B, input_size]``; ``resets``: ``[T, B]`` bool or None; ``choices``: ``[T, B]`` long or None
        (the choices of a stored rollout, replayed exactly). Returns ``ys``: ``[T, B, H + W]``, the final state
        and a :class:`ChoiceInfo` with ``[T, B]`` fields (``logits`` ``[T, B, P]``).
        """
        if xs.dim() != 3 or xs.shape[2] != self.input_size:
            raise ValueError(f"xs must have shape [T, B, {self.input_size}], got {list(xs.shape)}")
        for name, value in (("resets", resets), ("choices", choices)):
            if value is not None and value.shape != xs.shape[:2]:
                raise ValueError(f"{name} must have shape {list(xs.shape[:2])}, got {list(value.shape)}")
        ys, infos = [], []
        for t in range(xs.shape[0]):
            y, state, info = self.step_with_choice(
                xs[t],
                state,
                None if resets is None else resets[t],
                None if choices is None else choices[t],
                greedy=greedy,
                generator=generator,
            )
            ys.append(y)
            infos.append(info)
        return torch.stack(ys), state, stack_states(infos)

    # ------------------------------------------------------------------ the step itself
    def _step(
        self,
        x: Tensor,
        state: RLAccessState,
        choice: Tensor | None,
        greedy: bool,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, RLAccessState, ChoiceInfo]:
        B, N, W, P = x.shape[0], self.num_slots, self.slot_size, self.num_choices
        pdtype = self._param_dtype()

        # Controller: h_t, c_t = LSTM([x_t, r_{t-1}, onehot(a_{t-1})], (h_{t-1}, c_{t-1}))
        ctrl_in = torch.cat([x.to(pdtype), state.read.to(pdtype), state.prev_choice.to(pdtype)], dim=-1)
        h, c = self.controller(ctrl_in, (state.h.to(pdtype), state.c.to(pdtype)))
        xi = self.interface(h)  # [B, P + 3W + 1]

        mdtype = _memory_dtype(state.memory.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xi = xi.to(mdtype)
            z, k, beta_hat, e_hat, v = torch.split(xi, [P, W, 1, W, W], dim=-1)
            # RL portion: pi(. | history) = softmax(z_t)
            log_pi = torch.log_softmax(z, dim=-1)  # [B, P]
            if choice is None:
                if greedy:
                    choice = z.argmax(dim=-1)  # first index on ties
                else:
                    # Gumbel-max: a_t = argmax_i (log pi_i + g_i), g_i = -log(-log u_i), u_i ~ U(0, 1), as the
                    # policy heads sample: one tensor program on the device (torch.multinomial syncs on CUDA)
                    u = torch.rand(log_pi.shape, generator=generator, device=log_pi.device, dtype=log_pi.dtype)
                    u = u.clamp_(min=torch.finfo(log_pi.dtype).tiny)
                    choice = (log_pi.detach() - torch.log(-torch.log(u))).argmax(dim=-1)
            log_prob = log_pi.gather(-1, choice.unsqueeze(-1)).squeeze(-1)  # log pi(a_t) [B]
            entropy = -(log_pi.exp() * log_pi).sum(-1)  # H(pi) [B]
            if use_triton(self.kernel, x.device):
                info = ChoiceInfo(choice=choice, log_prob=log_prob, entropy=entropy, logits=z)
                return self._step_triton(h, c, xi, state, info, mdtype)

            # Differentiable portion
            beta = oneplus(beta_hat)  # [B, 1] beta_t >= 1
            e = torch.sigmoid(e_hat)  # [B, W] e_t in (0, 1)

            M = state.memory.to(mdtype)  # [B, N, W]
            p = state.head.to(mdtype)  # [B, N] one-hot
            u = state.usage.to(mdtype)  # [B, N]
            r_prev = state.read.to(mdtype)  # [B, W]
            zeros = torch.zeros_like(p)

            # Candidate (new head, write weighting, read) of every process in the set.
            new_head: dict[str, Tensor] = {}
            write_w: dict[str, Tensor] = {}
            read: dict[str, Tensor] = {}
            need = set(self.processes)
            head_weights = []  # the one-hot weightings whose reads the processes need, read in one bmm
            if need & {"read_head", "read_move_right", "read_move_left"}:
                head_weights.append(("at_head", p))  # M[p] at the head before any move
            if "move_left" in need:
                head_weights.append(("move_left", torch.roll(p, shifts=-1, dims=-1)))  # p(i) <- p(i + 1)
            if "move_right" in need:
                head_weights.append(("move_right", torch.roll(p, shifts=1, dims=-1)))  # p(i) <- p(i - 1)
            if "content_read" in need:
                # w^c(i) = softmax_i(beta K[k, M(i)])   (NTM eq. 5)
                w_c = content_weighting(M, k.unsqueeze(1), beta)  # [B, 1, N]
                head_weights.append(("content_read", w_c.squeeze(1)))
            if head_weights:
                reads = read_memory(M, torch.stack([w for _, w in head_weights], dim=1))  # r = sum_i w(i) M(i)
                for j, (name, _) in enumerate(head_weights):
                    read[name] = reads[:, j]
            for name in ("move_left", "move_right"):
                if name in need:
                    new_head[name] = dict(head_weights)[name]
            for name in ("read_head", "read_move_right", "read_move_left"):
                if name in need:
                    read[name] = read["at_head"]  # r_t = M[p], read before the move
            right, left = torch.roll(p, shifts=1, dims=-1), torch.roll(p, shifts=-1, dims=-1)  # p shifted +1 / -1
            for name, moved in (
                ("read_move_right", right),
                ("read_move_left", left),
                ("write_move_right", right),
                ("write_move_left", left),
            ):
                if name in need:
                    new_head[name] = moved  # the head moves after this step's read or write
            for name in ("write_head", "write_move_right", "write_move_left"):
                if name in need:
                    write_w[name] = p  # erase/add at the head p (before the move)
            if "write_least_used" in need:
                # one-hot at argmin_i u(i) (first index on ties: never-written slots in order 0, 1, 2, ...)
                write_w["write_least_used"] = _one_hot(u.argmin(dim=-1), N, mdtype)

            # Tables over the P processes ([B, P, .]), then the chosen row of each.
            head_table = torch.stack([new_head.get(name, p) for name in self.processes], dim=1)  # [B, P, N]
            write_table = torch.stack([write_w.get(name, zeros) for name in self.processes], dim=1)  # [B, P, N]
            read_table = torch.stack([read.get(name, r_prev) for name in self.processes], dim=1)  # [B, P, W]
            idx = choice.reshape(B, 1, 1)
            p_new = head_table.gather(1, idx.expand(B, 1, N)).squeeze(1)  # [B, N]
            w_write = write_table.gather(1, idx.expand(B, 1, N)).squeeze(1)  # [B, N], zero if no write
            r_new = read_table.gather(1, idx.expand(B, 1, W)).squeeze(1)  # [B, W]

            # Write: M(i) <- M(i) (1 - w(i) e) + w(i) v   (NTM eqs. 3-4); unchanged where w = 0
            M_new = erase_and_add(M, w_write.unsqueeze(1), e.unsqueeze(1), v.unsqueeze(1))
            # Usage: written slot -> 1, the others decay by lambda
            u_new = self.usage_decay * u * (1.0 - w_write) + w_write
            y, new_state = self._output(state, h, c, M_new, p_new, u_new, r_new, choice, mdtype)
        return y, new_state, ChoiceInfo(choice=choice, log_prob=log_prob, entropy=entropy, logits=z)

    def _output(self, state: RLAccessState, h, c, M_new, p_new, u_new, r_new, choice: Tensor, mdtype: torch.dtype):
        """``y_t = [h_t, r_t]`` ``[B, H + W]`` (in ``mdtype``) and the new state in the dtypes of ``state``."""
        y = torch.cat([h.to(mdtype), r_new], dim=-1)  # [B, H + W]
        new_state = RLAccessState(
            h=h.to(state.h.dtype),
            c=c.to(state.c.dtype),
            memory=M_new.to(state.memory.dtype),
            head=p_new.to(state.head.dtype),
            usage=u_new.to(state.usage.dtype),
            read=r_new.to(state.read.dtype),
            prev_choice=_one_hot(choice, self.num_choices, state.prev_choice.dtype),
        )
        return y, new_state

    def _step_triton(
        self, h: Tensor, c: Tensor, xi: Tensor, state: RLAccessState, info: ChoiceInfo, mdtype: torch.dtype
    ) -> tuple[Tensor, RLAccessState, ChoiceInfo]:
        """The access of :meth:`_step` after the choice through :func:`memory_cores.rl_access_triton.rl_access`
        (same equations). ``xi``: ``[B, P + 3W + 1]`` in ``mdtype``; ``info``: the step's :class:`ChoiceInfo`."""
        from .rl_access_triton import rl_access  # imports Triton only where the kernel is asked for

        M_new, p_new, u_new, r_new = rl_access(
            xi,
            info.choice,
            state.memory.to(mdtype),
            state.head.to(mdtype),
            state.usage.to(mdtype),
            state.read.to(mdtype),
            processes=self.processes,
            usage_decay=self.usage_decay,
            eps=EPS,
        )
        y, new_state = self._output(state, h, c, M_new, p_new, u_new, r_new, info.choice, mdtype)
        return y, new_state, info
