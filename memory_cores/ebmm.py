"""Energy-based memory model core (Bartunov, Rae, Osindero and Lillicrap 2020, "Meta-Learning Deep Energy-Based
Memory Models", ICLR, arXiv:1910.02720).

The memory is the parameters ``theta`` of an energy model ``E(x; theta)``. Writing a set of patterns ``X`` takes a
few gradient steps on a writing loss from the meta-learned initial parameters ``theta_bar``; reading descends the
energy from a (corrupted) query; initial parameters, step sizes and loss weights are meta-learned by
backpropagating a retrieval loss through writing and reading. Paper, section 3 (``K_w`` write steps, ``K_r`` read
steps, step sizes ``eta^(k)`` and ``gamma^(k)`` learned)::

    write:  theta^(0)   = theta_bar
            W(X, theta) = 1/|X| sum_{x in X} [ E(x; theta) + alpha ||grad_x E(x; theta)||^2 ] + beta ||theta - theta_bar||^2
            theta^(k+1) = theta^(k) - eta^(k) grad_theta W(X, theta^(k))                         k = 0..K_w-1
    read:   x^(0)       = x~                                                                     the query
            x^(k+1)     = x^(k) - gamma^(k) grad_x E(x^(k); theta)                               k = 0..K_r-1

The energy terms make stored patterns low-energy points, the ``alpha`` term makes them stationary (zero gradient:
attractors of the read dynamics), the ``beta`` term keeps the written parameters near ``theta_bar``.

As a core (one pattern per step, the state holds this episode's ``theta``). Step ``t``, input ``x_t``::

    p_t      = tanh(W_p x_t + b_p)                        the step's pattern (and query) in the energy's space, [B, d]
    g_t      = sigmoid(w_g . x_t + b_g)                   write strength, [B]
    x^_t     = read(p_t; theta_{t-1})                     K_r read steps from the query p_t, on the memory so far
    theta_t  = theta_{t-1} - sum of K_w steps eta^(k) grad_theta [ g_t W({p_t}, theta) ]   starting at theta_{t-1}
    y_t      = [x^_t ; p_t]                               output_size = 2 d

So each step writes its own pattern with ``K_w`` inner steps of the paper's writing loss (``X = {p_t}``; the
penalty still pulls towards ``theta_bar``, which makes old patterns fade at a learned rate ``beta``), scaled by a
learned gate ``g_t`` (``g_t = 0`` leaves the memory exactly unchanged), and reads *before* writing, so that a
corrupted query is compared with what was stored and is not itself stored first. The episode starts from
``theta_0 = theta_bar``: a reset (the base class's one mechanism) restores the meta-learned initial parameters.

Energy model: the free energy of a Gaussian-Bernoulli RBM with unit variances (``d`` visible, ``m`` hidden units),
``theta = (W [m, d], b [d], c [m])``::

    E(x; theta) = 1/2 ||x||^2 - b^T x - sum_j softplus(W_j x + c_j)
    grad_x E    = x - b - W^T sigmoid(W x + c)

With ``gamma = 1`` a read step is ``x <- b + W^T sigmoid(W x + c)``, the mean-field update of the RBM (a continuous
Hopfield-type update), and one write step from ``theta_bar = 0`` adds ``eta sigmoid(.) p^T`` to ``W``, a Hebbian
outer product; the paper allows any differentiable network, this one keeps the state small (``m d + d + m`` floats
per row) and the gradients in closed form.

Meta-learning. The inner gradients are taken with ``torch.autograd.grad(..., create_graph=True)``, so the outer
loss reaches ``theta_bar``, the step sizes, ``alpha``, ``beta``, the projection and the gate through every write
and read (:meth:`EBMMCore.step` with ``closed_form=False``, the plain reading of the equations). In a
``torch.no_grad()`` rollout the inner steps still need gradients: they run under ``torch.enable_grad()`` and the
results are detached. The fast path (``closed_form=True``, the default) computes the same inner gradients from
the closed forms above (:func:`rbm_write_grads`, :func:`rbm_energy_grad_x`) with ordinary tensor ops, so no
double-backward graph is built and nothing changes under ``no_grad``; ``tests/test_ebmm.py`` checks it equal to
the autograd path in values and gradients.

Shapes: ``B`` batch, ``d`` = ``pattern_size``, ``m`` = ``hidden_size``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Core


class EBMMState(NamedTuple):
    """State of :class:`EBMMCore`: this episode's energy parameters theta_t, batch first.

    Attributes:
        W: ``[B, m, d]`` weights of the energy's hidden units.
        b: ``[B, d]`` visible bias.
        c: ``[B, m]`` hidden bias.
    """

    W: Tensor
    b: Tensor
    c: Tensor


def rbm_energy(x: Tensor, theta: EBMMState) -> Tensor:
    """E(x; theta) = 1/2 ||x||^2 - b^T x - sum_j softplus(W_j x + c_j), per row: ``x`` ``[B, d]`` -> ``[B]``."""
    pre = torch.bmm(theta.W, x.unsqueeze(-1)).squeeze(-1) + theta.c  # W x + c: [B, m]
    return 0.5 * (x * x).sum(-1) - (theta.b * x).sum(-1) - F.softplus(pre).sum(-1)


def rbm_energy_grad_x(x: Tensor, theta: EBMMState) -> Tensor:
    """grad_x E(x; theta) = x - b - W^T sigmoid(W x + c) in closed form: ``[B, d]``."""
    s = torch.sigmoid(torch.bmm(theta.W, x.unsqueeze(-1)).squeeze(-1) + theta.c)  # [B, m]
    return x - theta.b - torch.bmm(s.unsqueeze(1), theta.W).squeeze(1)


def rbm_write_grads(p: Tensor, theta: EBMMState, alpha: Tensor) -> EBMMState:
    """grad_theta [ E(p; theta) + alpha ||r||^2 ] in closed form, ``r = grad_x E(p; theta)``, per row.

    With ``s = sigmoid(W p + c)`` and ``v = s (1 - s) * (W r)``::

        dE/dW = -s p^T          d||r||^2/dW = -2 (s r^T + v p^T)
        dE/db = -p              d||r||^2/db = -2 r
        dE/dc = -s              d||r||^2/dc = -2 v
    """
    s = torch.sigmoid(torch.bmm(theta.W, p.unsqueeze(-1)).squeeze(-1) + theta.c)  # [B, m]
    r = p - theta.b - torch.bmm(s.unsqueeze(1), theta.W).squeeze(1)  # grad_x E at p: [B, d]
    v = s * (1.0 - s) * torch.bmm(theta.W, r.unsqueeze(-1)).squeeze(-1)  # [B, m]
    two_a = 2.0 * alpha
    gW = -s.unsqueeze(-1) * p.unsqueeze(1) - two_a * (s.unsqueeze(-1) * r.unsqueeze(1) + v.unsqueeze(-1) * p.unsqueeze(1))
    gb = -p - two_a * r
    gc = -s - two_a * v
    return EBMMState(gW, gb, gc)


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class EBMMCore(Core):
    """Energy-based memory: the per-episode parameters of an energy model, written by learned gradient steps.

    Args:
        input_size: width of ``x``.
        hidden_size: m, hidden units of the energy model (RBM free energy); the memory holds ``m d + d + m`` floats
            per row.
        pattern_size: d, width of a stored pattern / query ``p_t = tanh(W_p x_t + b_p)`` (the paper's ``x``).
        write_steps: K_w, gradient steps of one write (the paper: a few). 0 never changes the memory.
        read_steps: K_r, gradient steps of one read. 0 returns the query.
        step_size_init: initial write step size eta^(k) for ``W`` (the biases' start at 10x less); all are learned,
            one per step and parameter group, kept positive with a softplus.
        read_step_init: initial read step size gamma^(k) (1: the RBM's mean-field update), learned, positive.
        alpha_init, beta_init: initial weights of the gradient-norm term and of the distance penalty of the writing
            loss (the paper's alpha, beta), learned, positive.
        closed_form: compute the inner gradients in closed form (fast path, default) rather than with
            ``torch.autograd.grad(create_graph=True)`` (the plain reading); both give the same values and gradients.

    Output: ``y_t = [x^_t ; p_t]``, ``[B, 2 d]``: the read-out pattern and the query it started from.
    State: :class:`EBMMState`, initially ``theta_bar`` (learned).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 64,
        pattern_size: int = 32,
        write_steps: int = 3,
        read_steps: int = 3,
        step_size_init: float | None = None,
        read_step_init: float = 1.0,
        alpha_init: float = 0.1,
        beta_init: float = 0.01,
        closed_form: bool = True,
    ) -> None:
        super().__init__(input_size)
        for name, value, low in (
            ("hidden_size", hidden_size, 1),
            ("pattern_size", pattern_size, 1),
            ("write_steps", write_steps, 0),
            ("read_steps", read_steps, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if step_size_init is None:
            step_size_init = 1.0 / hidden_size
        for name, value in (
            ("step_size_init", step_size_init),
            ("read_step_init", read_step_init),
            ("alpha_init", alpha_init),
            ("beta_init", beta_init),
        ):
            if not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite float, got {value!r}")
        m, d = hidden_size, pattern_size
        self.hidden_size, self.pattern_size = m, d
        self.write_steps, self.read_steps = write_steps, read_steps
        self.closed_form = bool(closed_form)
        self.output_size = 2 * d
        self.project = nn.Linear(input_size, d)  # p_t = tanh(W_p x_t + b_p)
        self.gate = nn.Linear(input_size, 1)  # g_t = sigmoid(w_g . x_t + b_g)
        # theta_bar: the meta-learned initial energy parameters
        self.W_bar = nn.Parameter(torch.randn(m, d) / math.sqrt(d))
        self.b_bar = nn.Parameter(torch.zeros(d))
        self.c_bar = nn.Parameter(torch.zeros(m))
        # eta^(k) per write step and group (W, b, c); gamma^(k) per read step; alpha, beta: all softplus(raw) > 0
        eta = [_inv_softplus(step_size_init), _inv_softplus(0.1 * step_size_init), _inv_softplus(0.1 * step_size_init)]
        self.eta_raw = nn.Parameter(torch.tensor([eta] * write_steps).reshape(write_steps, 3))
        self.gamma_raw = nn.Parameter(torch.full((read_steps,), _inv_softplus(read_step_init)))
        self.alpha_raw = nn.Parameter(torch.tensor(_inv_softplus(alpha_init)))
        self.beta_raw = nn.Parameter(torch.tensor(_inv_softplus(beta_init)))

    # ------------------------------------------------------------------ learned constants
    @property
    def eta(self) -> Tensor:
        """eta^(k) ``[K_w, 3]``: write step sizes per step for W, b, c."""
        return F.softplus(self.eta_raw)

    @property
    def gamma(self) -> Tensor:
        """gamma^(k) ``[K_r]``: read step sizes."""
        return F.softplus(self.gamma_raw)

    @property
    def alpha(self) -> Tensor:
        return F.softplus(self.alpha_raw)

    @property
    def beta(self) -> Tensor:
        return F.softplus(self.beta_raw)

    # ------------------------------------------------------------------ contract
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> EBMMState:
        """theta_0 = theta_bar for every row."""
        device = self._device(device)

        def expand(p: Tensor) -> Tensor:
            return p.to(device).unsqueeze(0).expand((batch_size,) + tuple(p.shape))

        return EBMMState(expand(self.W_bar), expand(self.b_bar), expand(self.c_bar))

    def energy(self, x: Tensor, theta: EBMMState) -> Tensor:
        """E(x; theta) per row, ``[B]``."""
        return rbm_energy(x, theta)

    def step(self, x: Tensor, state: EBMMState) -> tuple[Tensor, EBMMState]:
        p = torch.tanh(self.project(x))  # p_t: [B, d]
        g = torch.sigmoid(self.gate(x)).squeeze(-1)  # g_t: [B]
        if self.closed_form:
            x_hat = self.read_closed_form(p, state)
            theta = self.write_closed_form(p, g, state)
        else:
            x_hat = self.read_autograd(p, state)
            theta = self.write_autograd(p, g, state)
        return torch.cat([x_hat, p], dim=-1), theta

    # ------------------------------------------------------------------ plain path: torch.autograd.grad
    def read_autograd(self, query: Tensor, theta: EBMMState) -> Tensor:
        """x^(k+1) = x^(k) - gamma^(k) grad_x E(x^(k); theta), from x^(0) = ``query``, gradients by autograd."""
        outer = torch.is_grad_enabled()  # False in a no_grad rollout: run the inner steps, return detached results
        with torch.enable_grad():
            theta = _as_graph_input(theta, outer)
            x = _requires_grad(query if outer else query.detach())
            for k in range(self.read_steps):
                (grad_x,) = torch.autograd.grad(self.energy(x, theta).sum(), x, create_graph=outer)
                x = x - self.gamma[k] * grad_x
                if not outer:
                    x = x.detach().requires_grad_(True)
        return x if outer else x.detach()

    def write_autograd(self, p: Tensor, g: Tensor, theta: EBMMState) -> EBMMState:
        """K_w steps theta <- theta - eta^(k) grad_theta [ g (E(p) + alpha ||grad_x E(p)||^2 + beta ||theta -
        theta_bar||^2) ], gradients by autograd (``create_graph`` so the outer loss reaches everything)."""
        outer = torch.is_grad_enabled()
        theta_bar = self.initial_state(p.shape[0], p.device)
        with torch.enable_grad():
            theta = _as_graph_input(theta, outer)
            p = _requires_grad(p if outer else p.detach())  # grad_x E(p) is differentiated again: p needs a graph
            g = g if outer else g.detach()
            for k in range(self.write_steps):
                # a fresh alias of p: theta^(k) depends on p through the earlier steps, and grad_x E must be the
                # partial derivative at fixed theta^(k), not the total one through those steps
                x = p.view_as(p)
                (grad_x,) = torch.autograd.grad(self.energy(x, theta).sum(), x, create_graph=True)
                loss = self.energy(x, theta) + self.alpha * (grad_x * grad_x).sum(-1)  # [B]
                loss = loss + self.beta * sum(((t - t0) ** 2).flatten(1).sum(-1) for t, t0 in zip(theta, theta_bar))
                grads = torch.autograd.grad((g * loss).sum(), tuple(theta), create_graph=outer)
                eta = self.eta[k]
                theta = EBMMState(*(t - eta[i] * gr for i, (t, gr) in enumerate(zip(theta, grads))))
                if not outer:
                    theta = _as_graph_input(theta, False)
        return theta if outer else EBMMState(*(t.detach() for t in theta))

    # ------------------------------------------------------------------ fast path: closed-form inner gradients
    def read_closed_form(self, query: Tensor, theta: EBMMState) -> Tensor:
        """:meth:`read_autograd` with ``grad_x E`` from :func:`rbm_energy_grad_x`."""
        x = query
        for k in range(self.read_steps):
            x = x - self.gamma[k] * rbm_energy_grad_x(x, theta)
        return x

    def write_closed_form(self, p: Tensor, g: Tensor, theta: EBMMState) -> EBMMState:
        """:meth:`write_autograd` with the writing loss's gradient from :func:`rbm_write_grads` and the penalty's
        ``2 beta (theta - theta_bar)``."""
        theta_bar = self.initial_state(p.shape[0], p.device)
        alpha, beta = self.alpha, self.beta
        gate = [g.view(-1, 1, 1), g.view(-1, 1), g.view(-1, 1)]  # g_t broadcast to W, b, c
        for k in range(self.write_steps):
            grads = rbm_write_grads(p, theta, alpha)
            eta = self.eta[k]
            theta = EBMMState(
                *(
                    t - eta[i] * gate[i] * (gr + 2.0 * beta * (t - t0))
                    for i, (t, gr, t0) in enumerate(zip(theta, grads, theta_bar))
                )
            )
        return theta

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, pattern_size={self.pattern_size}, "
            f"write_steps={self.write_steps}, read_steps={self.read_steps}, closed_form={self.closed_form}"
        )


def _requires_grad(t: Tensor) -> Tensor:
    """``t`` if it is already part of a graph, else a detached leaf that requires grad (autograd.grad needs one)."""
    return t if t.requires_grad else t.detach().requires_grad_(True)


def _as_graph_input(theta: EBMMState, outer: bool) -> EBMMState:
    """The energy parameters as inputs of the inner gradients: kept in the outer graph when ``outer`` (a state
    without a graph, e.g. from a rollout buffer, becomes a leaf), detached leaves otherwise."""
    if outer:
        return EBMMState(*(_requires_grad(t) for t in theta))
    return EBMMState(*(t.detach().requires_grad_(True) for t in theta))


class HopfieldState(NamedTuple):
    """State of :class:`HopfieldCore`: ``M`` ``[B, d, d]``, the Hebbian weight matrix of this episode."""

    M: Tensor


class HopfieldCore(Core):
    """A Hopfield-network memory with the same interface as :class:`EBMMCore`: the baseline of the retrieval check
    (not registered in ``CORES``). Hebbian outer-product writes, iterated ``tanh`` reads (Hopfield 1982/1984)::

        p_t  = tanh(W_p x_t + b_p),   g_t = sigmoid(w_g . x_t + b_g)
        x^(0) = p_t,   x^(k+1) = tanh(beta_r M_{t-1} x^(k))               K_r synchronous updates
        M_t  = M_{t-1} + g_t (p_t p_t^T - diag(p_t * p_t)) / d            Hebb rule, no self-connections
        y_t  = [x^(K_r) ; p_t]

    Memory: ``d^2`` floats per row; ``M_0 = 0``. Learned: the projection, the gate and the inverse temperature
    ``beta_r``.

    Args:
        input_size: width of ``x``.
        pattern_size: d.
        read_steps: K_r.
        inverse_temperature: initial beta_r (learned, positive).
    """

    def __init__(self, input_size: int, pattern_size: int = 32, read_steps: int = 3,
                 inverse_temperature: float = 4.0) -> None:
        super().__init__(input_size)
        if not isinstance(pattern_size, int) or pattern_size <= 0:
            raise ValueError(f"pattern_size must be a positive int, got {pattern_size!r}")
        if not isinstance(read_steps, int) or read_steps < 0:
            raise ValueError(f"read_steps must be an int >= 0, got {read_steps!r}")
        self.pattern_size, self.read_steps = pattern_size, read_steps
        self.output_size = 2 * pattern_size
        self.project = nn.Linear(input_size, pattern_size)
        self.gate = nn.Linear(input_size, 1)
        self.beta_raw = nn.Parameter(torch.tensor(_inv_softplus(inverse_temperature)))

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> HopfieldState:
        d = self.pattern_size
        return HopfieldState(torch.zeros(batch_size, d, d, device=self._device(device), dtype=self._param_dtype()))

    def step(self, x: Tensor, state: HopfieldState) -> tuple[Tensor, HopfieldState]:
        d = self.pattern_size
        p = torch.tanh(self.project(x))  # [B, d]
        g = torch.sigmoid(self.gate(x)).view(-1, 1, 1)
        beta = F.softplus(self.beta_raw)
        x_hat = p
        for _ in range(self.read_steps):
            x_hat = torch.tanh(beta * torch.bmm(state.M, x_hat.unsqueeze(-1)).squeeze(-1))
        outer = p.unsqueeze(-1) * p.unsqueeze(1)  # p p^T: [B, d, d]
        hebb = outer - torch.diag_embed(p * p)
        return torch.cat([x_hat, p], dim=-1), HopfieldState(state.M + g * hebb / d)
