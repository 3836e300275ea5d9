"""REINFORCE helpers, and the exact gradient check (Zaremba and Sutskever 2015, section 6).

On tiny problems every sequence of discrete choices is enumerated, the expected objective
J = sum_seq p(seq) R(seq) is computed exactly, its gradient taken by autograd (itself checked by finite
differences), and compared with the mean of the estimator

    grad [ reinforce_loss(log_probs, reward_to_go(rewards), baseline, "sequence_mean") - sum_t r_t ]  ~=  -grad J

over many sampled sequences. The tolerance comes from the sample count: the samples are split into groups, the
spread of the group means gives a standard error per coordinate, and every coordinate must lie within 5 standard
errors. A negative control (the pathwise part alone) must fail the same test, so the check has teeth.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from memory_cores.reinforce import (
    LinearBaseline,
    baseline_loss,
    entropy_bonus,
    masked_mean,
    reinforce_loss,
    reward_to_go,
)
from memory_cores.rl_access import RLAccessCore

torch.set_num_threads(1)


# ---------------------------------------------------------------------- reward_to_go and the losses
def test_reward_to_go_by_hand():
    r = torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, 5.0]])  # [T=3, B=2]
    g = reward_to_go(r, gamma=0.5)
    torch.testing.assert_close(g[:, 0], torch.tensor([1 + 0.5 * (2 + 0.5 * 3), 2 + 0.5 * 3, 3.0]))
    torch.testing.assert_close(g[:, 1], torch.tensor([1 + 0.25 * 5, 0.5 * 5, 5.0]))
    # row 0's episode ends after step 0: G_0 = r_0 only
    dones = torch.tensor([[True, False], [False, False], [False, False]])
    g = reward_to_go(r, dones, gamma=0.5)
    torch.testing.assert_close(g[:, 0], torch.tensor([1.0, 2 + 0.5 * 3, 3.0]))
    torch.testing.assert_close(g[:, 1], torch.tensor([1 + 0.25 * 5, 0.5 * 5, 5.0]))
    # the same boundary in the core contract's convention: input 1 of row 0 starts a new episode
    resets = torch.tensor([[True, True], [True, False], [False, False]])
    torch.testing.assert_close(reward_to_go(r, resets=resets, gamma=0.5), g)
    # bootstrap continues unfinished episodes: G_T = V
    g = reward_to_go(r, dones, gamma=0.5, bootstrap=torch.tensor([10.0, 4.0]))
    torch.testing.assert_close(g[2], torch.tensor([3 + 5.0, 5 + 2.0]))
    torch.testing.assert_close(g[0, 0], torch.tensor(1.0))
    # a done at the last step ignores the bootstrap
    dones[2, 1] = True
    g = reward_to_go(r, dones, gamma=0.5, bootstrap=torch.tensor([10.0, 4.0]))
    torch.testing.assert_close(g[2, 1], torch.tensor(5.0))


def test_reward_to_go_errors():
    r = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="gamma"):
        reward_to_go(r, gamma=1.5)
    with pytest.raises(ValueError, match="not both"):
        reward_to_go(r, torch.zeros(3, 2, dtype=torch.bool), resets=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="dones"):
        reward_to_go(r, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bootstrap"):
        reward_to_go(r, bootstrap=torch.zeros(3))
    with pytest.raises(ValueError, match="rewards"):
        reward_to_go(torch.zeros(3))


def test_reinforce_loss_value_gradient_and_reductions():
    logits = torch.randn(4, 3, 5, requires_grad=True)
    dist = torch.distributions.Categorical(logits=logits)
    a = dist.sample()
    logp = dist.log_prob(a)  # [T=4, B=3]
    returns = torch.randn(4, 3, requires_grad=True)
    baseline = torch.randn(4, 3, requires_grad=True)
    loss = reinforce_loss(logp, returns, baseline)
    torch.testing.assert_close(loss, (-(returns - baseline) * logp).mean())
    loss.backward()
    assert returns.grad is None and baseline.grad is None  # advantages are detached
    assert logits.grad.abs().sum() > 0
    adv = (returns - baseline).detach()
    torch.testing.assert_close(reinforce_loss(logp, returns, baseline, reduction="sum"), (-adv * logp).sum())
    torch.testing.assert_close(
        reinforce_loss(logp, returns, baseline, reduction="sequence_mean"), (-adv * logp).sum(0).mean()
    )
    mask = torch.rand(4, 3) < 0.6
    mask[0, 0] = True
    torch.testing.assert_close(reinforce_loss(logp, returns, baseline, mask), (-adv * logp)[mask].mean())
    torch.testing.assert_close(
        reinforce_loss(logp, returns, baseline, mask, "sequence_mean"), ((-adv * logp) * mask).sum(0).mean()
    )
    with pytest.raises(ValueError, match="reduction"):
        reinforce_loss(logp, returns, reduction="max")
    with pytest.raises(ValueError, match="baseline"):
        reinforce_loss(logp, returns, baseline[:2])


def test_entropy_bonus_baseline_loss_and_linear_baseline():
    ent = torch.rand(5, 2)
    mask = torch.ones(5, 2, dtype=torch.bool)
    mask[3:, 1] = False
    torch.testing.assert_close(entropy_bonus(ent, mask), ent[mask].mean())
    torch.testing.assert_close(masked_mean(ent), ent.mean())
    base = LinearBaseline(3)
    feats = torch.randn(5, 2, 3)
    values = base(feats)
    assert values.shape == (5, 2)
    returns = torch.randn(5, 2, requires_grad=True)
    loss = baseline_loss(values, returns, mask)
    torch.testing.assert_close(loss, 0.5 * (values - returns)[mask].pow(2).mean())
    loss.backward()
    assert returns.grad is None and base.linear.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="feature_size"):
        LinearBaseline(0)


# ---------------------------------------------------------------------- exact gradient check machinery
def _grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def _estimator_stats(sample_loss, params, groups: int, seed: int):
    """Mean and standard error of the estimator over ``groups`` independent groups of samples."""
    gen = torch.Generator().manual_seed(seed)
    gs = torch.stack([_grad(sample_loss(gen), params) for _ in range(groups)])  # [G, D]
    return gs.mean(0), gs.std(0) / groups**0.5


def _assert_unbiased(mean, se, exact, what: str, z_max: float = 5.0):
    """Every coordinate within z_max standard errors of the exact gradient (plus a float64 round-off floor)."""
    z = (mean - exact).abs() / (se + 1e-9)
    assert z.max() < z_max, f"{what}: max z = {z.max():.1f} at coordinate {int(z.argmax())}"
    # the check must be sharp enough to mean something: standard errors small next to the gradient
    assert se.norm() < 0.2 * exact.norm(), f"{what}: too few samples (se {se.norm():.3g} vs {exact.norm():.3g})"


def _assert_biased(mean, se, exact, what: str):
    z = (mean - exact).abs() / (se + 1e-9)
    assert z.max() > 10.0, f"{what}: the negative control is not detected (max z = {z.max():.1f})"


# ---------------------------------------------------------------------- toy policy
T_TOY, P_TOY = 3, 3


def _toy_params():
    torch.manual_seed(0)
    a = (0.8 * torch.randn(T_TOY, P_TOY, dtype=torch.float64)).requires_grad_()  # per-step logits
    trans = (0.8 * torch.randn(P_TOY + 1, P_TOY, dtype=torch.float64)).requires_grad_()  # on previous choice
    w = torch.randn(P_TOY, dtype=torch.float64).requires_grad_()  # reward parameters (pathwise)
    return [a, trans, w]


def _toy_run(params, B: int, choices: torch.Tensor | None = None, generator=None):
    """Policy pi(a_t | a_{t-1}) = softmax(a[t] + trans[a_{t-1}]); reward
    r_t = (t + 1) w[a_t]^2 + sin(a[t, a_t]) + [a_t == a_{t-1}] w[0]: depends on the choices and, differentiably,
    on parameters shared with the policy. Returns log_probs, rewards, baselines (all ``[T, B]``), choices."""
    a, trans, w = params
    prev = torch.full((B,), P_TOY, dtype=torch.long)  # "no previous choice"
    logps, rewards, baselines, chosen = [], [], [], []
    for t in range(T_TOY):
        logits = a[t] + trans[prev]  # [B, P]
        log_pi = torch.log_softmax(logits, -1)
        if choices is None:
            c = torch.multinomial(log_pi.detach().exp(), 1, generator=generator).squeeze(-1)
        else:
            c = choices[t]
        logps.append(log_pi.gather(-1, c[:, None]).squeeze(-1))
        rewards.append((t + 1) * w[c] ** 2 + torch.sin(a[t, c]) + (c == prev).to(w.dtype) * w[0])
        # a baseline from the history before a_t only (here: the previous choice), detached
        baselines.append((0.7 * (t + 1) + 0.3 * prev.to(w.dtype)).detach())
        chosen.append(c)
        prev = c
    return torch.stack(logps), torch.stack(rewards), torch.stack(baselines), torch.stack(chosen)


def _all_sequences(T: int, P: int) -> torch.Tensor:
    """Every choice sequence as the columns of a ``[T, P^T]`` long tensor."""
    return torch.tensor(list(itertools.product(range(P), repeat=T)), dtype=torch.long).T.contiguous()


def _toy_exact_objective(params):
    seqs = _all_sequences(T_TOY, P_TOY)
    logps, rewards, _, _ = _toy_run(params, seqs.shape[1], choices=seqs)
    p_seq = logps.sum(0).exp()  # p(seq) = prod_t pi(a_t | a_{t-1})
    return (p_seq * rewards.sum(0)).sum(), p_seq  # J = sum_seq p(seq) R(seq)


def test_toy_exact_objective_gradient_matches_finite_differences():
    params = _toy_params()
    J, p_seq = _toy_exact_objective(params)
    torch.testing.assert_close(p_seq.sum(), torch.tensor(1.0, dtype=torch.float64))
    exact = _grad(J, params)
    numeric = []
    h = 1e-6
    with torch.no_grad():
        for p in params:
            for i in range(p.numel()):
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + h
                up = _toy_exact_objective(params)[0]
                p.view(-1)[i] = old - h
                down = _toy_exact_objective(params)[0]
                p.view(-1)[i] = old
                numeric.append((up - down) / (2 * h))
    torch.testing.assert_close(exact, torch.stack(numeric), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("use_baseline", [False, True])
def test_toy_estimator_mean_equals_exact_gradient(use_baseline):
    params = _toy_params()
    exact = -_grad(_toy_exact_objective(params)[0], params)  # gradient of the loss -J

    def estimator_loss(gen, K=4000):
        logps, rewards, baselines, _ = _toy_run(params, K, generator=gen)
        returns = reward_to_go(rewards)
        score = reinforce_loss(logps, returns, baselines if use_baseline else None, reduction="sequence_mean")
        return score - rewards.sum(0).mean()  # score-function part + pathwise part

    mean, se = _estimator_stats(estimator_loss, params, groups=20, seed=1)
    _assert_unbiased(mean, se, exact, "toy policy")

    def pathwise_only(gen, K=4000):
        _, rewards, _, _ = _toy_run(params, K, generator=gen)
        return -rewards.sum(0).mean()

    mean, se = _estimator_stats(pathwise_only, params, groups=20, seed=1)
    _assert_biased(mean, se, exact, "toy policy, pathwise part only")


# ---------------------------------------------------------------------- the rl_access core
T_CORE, I_CORE = 3, 2


def _core_problem():
    torch.manual_seed(0)
    core = RLAccessCore(I_CORE, hidden_size=4, num_slots=3, slot_size=2).double()
    with torch.no_grad():  # a policy far from uniform, and memory not constant, so every path matters
        core.interface.weight[: core.num_choices].mul_(4.0)
        core.interface.bias[: core.num_choices].copy_(torch.randn(core.num_choices))
        core.memory0.value.copy_(torch.randn(3, 2))
    xs = torch.randn(T_CORE, 1, I_CORE, dtype=torch.float64)
    c = torch.randn(core.output_size, dtype=torch.float64)
    d = torch.randn(core.output_size, dtype=torch.float64)
    q = torch.randn(core.pre_choice_size, dtype=torch.float64)
    return core, xs, c, d, q


def _core_rewards(ys, c, d):
    """r_t = c . y_t + 0.5 (d . y_t)^2: ``ys`` [T, B, F] -> [T, B]."""
    return ys @ c + 0.5 * (ys @ d) ** 2


def _core_exact_objective(core, xs, c, d):
    seqs = _all_sequences(T_CORE, core.num_choices)  # [T, P^T]
    B = seqs.shape[1]
    ys, _, info = core.unroll_with_choices(xs.expand(T_CORE, B, I_CORE), core.initial_state(B), choices=seqs)
    p_seq = info.log_prob.sum(0).exp()
    return (p_seq * _core_rewards(ys, c, d).sum(0)).sum(), p_seq


def test_rl_access_exact_objective_gradient_matches_finite_differences():
    core, xs, c, d, _ = _core_problem()
    params = list(core.parameters())
    J, p_seq = _core_exact_objective(core, xs, c, d)
    assert p_seq.numel() == 7**T_CORE
    torch.testing.assert_close(p_seq.sum(), torch.tensor(1.0, dtype=torch.float64))
    exact = _grad(J, params)
    # directional derivatives along random directions, by central differences
    gen = torch.Generator().manual_seed(0)
    h = 1e-6
    for _ in range(3):
        dirs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        with torch.no_grad():
            for p, v in zip(params, dirs):
                p.add_(h * v)
            up = _core_exact_objective(core, xs, c, d)[0]
            for p, v in zip(params, dirs):
                p.sub_(2 * h * v)
            down = _core_exact_objective(core, xs, c, d)[0]
            for p, v in zip(params, dirs):
                p.add_(h * v)
        numeric = (up - down) / (2 * h)
        torch.testing.assert_close(exact @ torch.cat([v.flatten() for v in dirs]), numeric, atol=1e-6, rtol=1e-5)


def test_rl_access_estimator_mean_equals_exact_gradient():
    """Score-function part through the core's log-probabilities + pathwise part through memory and reads."""
    core, xs, c, d, q = _core_problem()
    core.train()
    params = list(core.parameters())
    exact = -_grad(_core_exact_objective(core, xs, c, d)[0], params)

    q_all = torch.randn(core.output_size, dtype=torch.float64)

    def estimator_loss(gen, K=3000, score=True, baseline_sees_choice=False):
        ys, _, info = core.unroll_with_choices(xs.expand(T_CORE, K, I_CORE), core.initial_state(K), generator=gen)
        rewards = _core_rewards(ys, c, d)
        # baseline from h_t, computed before a_t (y[..., :pre_choice_size]); detached
        baseline = (ys[..., : core.pre_choice_size] @ q).detach()
        if baseline_sees_choice:  # wrong: the read part of y_t depends on a_t
            baseline = (ys @ q_all).detach()
        loss = -rewards.sum(0).mean()
        if score:
            loss = loss + reinforce_loss(info.log_prob, reward_to_go(rewards), baseline, reduction="sequence_mean")
        return loss

    mean, se = _estimator_stats(estimator_loss, params, groups=16, seed=2)
    _assert_unbiased(mean, se, exact, "rl_access core")
    mean, se = _estimator_stats(lambda g: estimator_loss(g, score=False), params, groups=16, seed=2)
    _assert_biased(mean, se, exact, "rl_access core, pathwise part only")
    mean, se = _estimator_stats(lambda g: estimator_loss(g, baseline_sees_choice=True), params, groups=16, seed=2)
    _assert_biased(mean, se, exact, "rl_access core, baseline that depends on the choice")
