"""REINFORCE (score-function) helpers for discrete choices: reward-to-go, the policy-gradient loss, baselines.

Williams (1992); the variance reductions Zaremba and Sutskever (2015) call crucial for RL-NTMs: reward-to-go and a
learned baseline. Shapes are time-major: ``T`` steps, ``B`` independent rows (episodes run side by side).

For an objective ``J(theta) = E_{a ~ pi_theta}[ sum_t r_t(theta, a) ]`` whose rewards may also depend on the
parameters differentiably (a stochastic computation graph: discrete choices plus a differentiable path), the
unbiased gradient estimator used here is::

    grad J ~= sum_t (G_t - b_t) grad log pi(a_t | h_t)   +   grad sum_t r_t          (choices a held fixed)
             \\_________ score-function part _________/       \\__ pathwise part __/

with ``G_t = sum_{s >= t} gamma^{s-t} r_s`` the reward-to-go (rewards before ``t`` do not depend on ``a_t``, so
dropping them keeps the estimator unbiased) and ``b_t`` any baseline that does not depend on ``a_t`` or later
choices. For the ``rl_access`` core, ``y_t[..., :core.pre_choice_size]`` (the controller output h_t) is computed
before ``a_t`` and may feed a baseline; the read part of ``y_t`` may not (the test shows the bias it causes).
As a loss to minimise::

    loss = reinforce_loss(log_probs, returns, baseline, reduction="sequence_mean") - rewards.sum(0).mean()

``tests/test_reinforce.py`` checks this against the exact gradient of ``J`` obtained by enumerating every choice
sequence of a tiny problem (a toy policy and the ``rl_access`` core).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "sequence_mean")


def _check_same_shape(name: str, value: Tensor | None, ref: Tensor, ref_name: str) -> None:
    if value is not None and value.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {list(ref.shape)}, got {list(value.shape)}")


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` (same shape, bool or 0/1) is set; plain mean if None."""
    if mask is None:
        return x.mean()
    _check_same_shape("mask", mask, x, "x")
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def _reduce(terms: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    if reduction == "mean":
        return masked_mean(terms, mask)
    if mask is not None:
        terms = torch.where(mask.to(torch.bool), terms, torch.zeros_like(terms))
    if reduction == "sum":
        return terms.sum()
    if reduction == "sequence_mean":
        return terms.sum(0).mean()
    raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")


def reward_to_go(
    rewards: Tensor,
    dones: Tensor | None = None,
    gamma: float = 1.0,
    *,
    resets: Tensor | None = None,
    bootstrap: Tensor | None = None,
) -> Tensor:
    """Discounted reward-to-go ``G_t = r_t + gamma (1 - done_t) G_{t+1}``, cut at episode boundaries.

    Give the boundaries in either convention (or neither: one episode per row):

    * ``dones[t, b]``: the episode of row ``b`` ends after step ``t`` (``r_t`` is its last reward);
    * ``resets[t, b]``: input ``t`` of row ``b`` begins a new episode (the core contract's flag), i.e. the
      episode ends after step ``t - 1``.

    Args:
        rewards: ``[T, B]``.
        dones: ``[T, B]`` bool or None.
        gamma: discount in [0, 1].
        resets: ``[T, B]`` bool or None (keyword only; not together with ``dones``).
        bootstrap: ``[B]`` value of the state after step ``T - 1`` (``G_T``) for rows whose episode goes on
            past the rollout; default 0 (the episode is treated as finished).
    Returns:
        ``[T, B]`` returns, same dtype as ``rewards``, no gradient cut (detach them for a score-function loss;
        :func:`reinforce_loss` does).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape [T, B], got {list(rewards.shape)}")
    if not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
    if dones is not None and resets is not None:
        raise ValueError("give episode boundaries as dones or as resets, not both")
    _check_same_shape("dones", dones, rewards, "rewards")
    _check_same_shape("resets", resets, rewards, "rewards")
    T, B = rewards.shape
    if bootstrap is not None and bootstrap.shape != (B,):
        raise ValueError(f"bootstrap must have shape [{B}], got {list(bootstrap.shape)}")
    if resets is not None:
        # done_t = reset_{t+1}; the last step's continuation is unknown -> bootstrap
        dones = torch.cat([resets[1:], torch.zeros_like(resets[:1])]).to(torch.bool)
    keep = (
        torch.ones_like(rewards) if dones is None else 1.0 - dones.to(rewards.dtype)
    )  # [T, B] 1 where the episode continues after t
    g = torch.zeros(B, dtype=rewards.dtype, device=rewards.device) if bootstrap is None else bootstrap.to(rewards)
    out = []
    for t in range(T - 1, -1, -1):
        g = rewards[t] + gamma * keep[t] * g  # G_t = r_t + gamma (1 - done_t) G_{t+1}
        out.append(g)
    return torch.stack(out[::-1])


def reinforce_loss(
    log_probs: Tensor,
    returns: Tensor,
    baseline: Tensor | None = None,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Score-function (REINFORCE) loss ``-(G_t - b_t).detach() * log pi(a_t)``, reduced to a scalar.

    Its gradient is minus the score-function part of the policy gradient. Returns and baseline are detached
    here, so a learned baseline gets no gradient from this loss (train it with :func:`baseline_loss`).

    Args:
        log_probs: ``[T, B]`` log pi(a_t | h_t) of the taken choices (``ChoiceInfo.log_prob``).
        returns: ``[T, B]`` G_t, e.g. from :func:`reward_to_go`.
        baseline: ``[T, B]`` b_t or None (0). Must not depend on a_t or later choices.
        mask: ``[T, B]`` bool/0-1 or None: entries to count (e.g. padding off).
        reduction: ``"mean"`` over the counted entries, ``"sum"``, or ``"sequence_mean"`` (sum over time, mean
            over the B rows: the unbiased estimator of the gradient of the expected episode return per row).
    Returns:
        scalar loss.
    """
    _check_same_shape("returns", returns, log_probs, "log_probs")
    _check_same_shape("baseline", baseline, log_probs, "log_probs")
    advantage = returns.detach() if baseline is None else (returns - baseline).detach()  # G_t - b_t
    return _reduce(-advantage * log_probs, mask, reduction)


def entropy_bonus(entropy: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean policy entropy ``H(pi(. | h_t))`` over the counted entries (``[T, B]`` -> scalar).

    Subtract ``coef * entropy_bonus(info.entropy)`` from the loss to keep the choice distribution exploring.
    """
    return masked_mean(entropy, mask)


def baseline_loss(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> Tensor:
    """Value regression for a learned baseline: ``0.5 * mean (V(h_t) - G_t)^2`` with the returns detached.

    Args:
        values: ``[T, B]`` V(h_t) (the baseline's prediction; pass ``values.detach()`` as ``baseline`` to
            :func:`reinforce_loss`).
        returns: ``[T, B]`` G_t.
        mask: ``[T, B]`` or None.
    """
    _check_same_shape("returns", returns, values, "values")
    return 0.5 * masked_mean((values - returns.detach()).pow(2), mask)


class LinearBaseline(nn.Module):
    """A learned baseline ``b_t = V(h_t) = w . h_t + c`` on features of the history (e.g. the core output ``y``).

    ``features``: ``[T, B, F]`` -> ``[T, B]``. Feed the features detached (``y.detach()``) if the baseline must not
    shape the core's representation.
    """

    def __init__(self, feature_size: int) -> None:
        super().__init__()
        if not isinstance(feature_size, int) or feature_size <= 0:
            raise ValueError(f"feature_size must be a positive int, got {feature_size!r}")
        self.linear = nn.Linear(feature_size, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features).squeeze(-1)


__all__ = [
    "LinearBaseline",
    "baseline_loss",
    "entropy_bonus",
    "masked_mean",
    "reinforce_loss",
    "reward_to_go",
]
