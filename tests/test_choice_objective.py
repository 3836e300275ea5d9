"""The objective of a core's discrete access choices (``rl_access``) in the project's PPO.

The value is the REINFORCE baseline of the choice a_t, so it must not depend on a_t: it reads only the part of the
core output computed before the choice (h_t), not the read r_t that follows it. A value that saw r_t would learn
E[G_t | a_t], and A_t = G_t - V would then have zero mean given a_t: the choice's gradient would vanish.

Checked on a one-step bandit whose exact gradient is known by enumerating every (choice, action) pair: after the
critic is fitted, the choice gradient of PPO's loss matches it; the negative control (a critic that reads r_t too)
measures about 0 on the same data.
"""

from __future__ import annotations

import math

import pytest
import torch
from gymnasium import spaces
from torch import nn

from agents.env_adapter import StepOut
from agents.policy import ActorCritic
from agents.ppo import PPO, TrainConfig

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ value before the choice
@pytest.mark.parametrize("obs_skip,head_hidden", [(False, 0), (True, 6)])
def test_value_is_the_same_for_every_stored_choice(obs_skip, head_hidden):
    """Same observation, same state, a different stored access choice: identical values (while the action's
    log-probability, which reads r_t, does change with the choice)."""
    torch.manual_seed(0)
    pol = ActorCritic(spaces.Box(-1.0, 1.0, (3,)), spaces.Discrete(4), core="rl_access",
                      core_kwargs=dict(hidden_size=8, num_slots=4, slot_size=3), embed_size=8, obs_skip=obs_skip,
                      head_hidden=head_hidden)
    with torch.no_grad():
        pol.core.memory0.value.normal_()  # distinct slots, so every process reads something else
        pol.actor_head.linear.weight.normal_()
    B, P = 5, pol.core.num_choices
    state = pol.initial_state(B)
    with torch.no_grad():  # a state inside an episode: memory written, head moved
        for t in range(4):
            state = pol.get_action_and_value(torch.randn(B, 3), state, torch.full((B,), t == 0)).state
    obs = torch.randn(1, B, 3)
    no_reset = torch.zeros(1, B, dtype=torch.bool)
    action = torch.zeros(1, B, dtype=torch.long)
    values, log_probs = [], []
    with torch.no_grad():
        for c in range(P):
            out = pol.evaluate_sequence(obs, state, no_reset, action, (torch.full((1, B), c), None))
            values.append(out.value)
            log_probs.append(out.log_prob)
    for v in values[1:]:
        assert torch.equal(v, values[0])
    assert any(not torch.allclose(lp, log_probs[0]) for lp in log_probs[1:]), "r_t must depend on the choice"


# ------------------------------------------------------------------------------------------------------ the bandit
class Bandit:
    """``N`` one-step episodes: observation 1, actions {0, 1}, reward 1 for action 1. A ``TorchVecEnv`` look-alike."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs, self.device = num_envs, torch.device("cpu")
        self.single_observation_space = spaces.Box(-1.0, 1.0, (1,))
        self.single_action_space = spaces.Discrete(2)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        return torch.ones(self.num_envs, 1)

    def step(self, action: torch.Tensor) -> StepOut:
        n = self.num_envs
        ones, done = torch.ones(n, 1), torch.ones(n, dtype=torch.bool)
        return StepOut(ones, (action == 1).float(), done, torch.zeros_like(done), ones, None)


H = 4  # controller units; the read r_t (one number) is feature H of y_t = [h_t, r_t]
READ = 1  # choice index of read_head in processes ("no_op", "read_head")


def bandit_policy(seed: int = 0) -> ActorCritic:
    """The choice decides the action through the read: read_head reads M_0(0) = +2, no_op keeps r_0 = -2, and the
    action head's logit of action 1 is 2 r_t, so E[R | read_head] = sigmoid(4) and E[R | no_op] = sigmoid(-4);
    pi(choice) is uniform."""
    torch.manual_seed(seed)
    pol = ActorCritic(spaces.Box(-1.0, 1.0, (1,)), spaces.Discrete(2), core="rl_access",
                      core_kwargs=dict(hidden_size=H, num_slots=2, slot_size=1, processes=("no_op", "read_head")),
                      embed_size=4)
    core, P = pol.core, pol.core.num_choices
    with torch.no_grad():
        core.memory0.value.fill_(2.0)
        core.read0.value.fill_(-2.0)
        core.interface.weight[:P].zero_()
        core.interface.bias[:P].zero_()
        pol.actor_head.linear.weight.zero_()
        pol.actor_head.linear.bias.zero_()
        pol.actor_head.linear.weight[1, H] = 2.0
    return pol


def exact_choice_gradient(pol: ActorCritic) -> float:
    """d(-J)/dz_read with J = sum_{c, a} pi(c) pi(a | c) R(a), all four (choice, action) pairs enumerated."""
    c = torch.tensor([[0, 0, 1, 1]])
    a = torch.tensor([[0, 1, 0, 1]])
    out = pol.evaluate_sequence(torch.ones(1, 4, 1), pol.initial_state(4), torch.ones(1, 4, dtype=torch.bool), a,
                                (c, None))
    J = ((out.log_prob + out.choice_log_prob).exp() * (a == 1).float()).sum()
    return float(torch.autograd.grad(-J, pol.core.interface.bias)[0][READ])


def ppo_choice_gradient(pol: ActorCritic, num_envs: int = 4096) -> tuple[float, float, float]:
    """Fit the critic on rollouts (value parameters only), then the choice gradient d loss / dz_read of PPO's
    loss on a fresh rollout at ratio 1 (raw advantages, no entropy bonus). Returns it with its standard error
    and the fitted values' spread over the rollout."""
    cfg = TrainConfig(env="bandit", core="rl_access", hidden_size=H, embed_size=4, num_envs=num_envs, num_steps=1,
                      seq_len=1, num_minibatches=1, norm_adv=False, norm_reward=False, ent_coef=0.0,
                      choice_ent_coef=0.0, device="cpu", progress=False, tensorboard=False)
    ppo = PPO(pol, Bandit(num_envs), cfg, seed=0)
    value_params = list(pol.value_head.parameters()) + list(pol.value_mlp.parameters())
    opt = torch.optim.Adam(value_params, lr=0.05)
    for it in range(200):
        if it % 50 == 0:
            d = ppo.sequences(ppo.collect())
        out = pol.evaluate_sequence(d["obs"], d["states"], d["starts"], d["actions"], d["choices"])
        opt.zero_grad()
        ((out.value - d["returns"]) ** 2).mean().backward()
        opt.step()
    d = ppo.sequences(ppo.collect())
    loss, m = ppo.loss(d, torch.arange(num_envs))
    assert float(m["approx_kl"]) < 1e-6  # ratio 1
    g = float(torch.autograd.grad(loss, pol.core.interface.bias)[0][READ])
    # per-sample terms of the same gradient: -A_i (1[c_i = read] - pi(read)), for the standard error
    pi_read = float(torch.softmax(pol.core.interface.bias[:2].detach(), -1)[READ])
    terms = -d["advantages"][0] * ((d["choices"][0][0] == READ).float() - pi_read)
    torch.testing.assert_close(terms.mean(), torch.tensor(g), atol=1e-5, rtol=1e-4)
    return g, float(terms.std() / num_envs**0.5), float(d["values"].std())


def test_bandit_choice_gradient_matches_the_exact_one():
    pol = bandit_policy()
    exact = exact_choice_gradient(pol)
    sigmoid = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    # -pi (1 - pi) (E[R | read] - E[R | no_op]) = -0.25 (sigmoid(4) - sigmoid(-4)) = -0.2410
    assert exact == pytest.approx(-0.25 * (sigmoid(4.0) - sigmoid(-4.0)), abs=1e-6)
    g, se, v_spread = ppo_choice_gradient(pol)
    assert v_spread < 1e-5  # one value for both choices: it cannot see them
    assert abs(g - exact) < 5 * se and se < 0.05 * abs(exact), (g, exact, se)


def test_bandit_negative_control_a_critic_that_sees_the_read_cancels_the_gradient():
    """The old wiring (value on [h_t, r_t]) on the same bandit: the fitted critic learns E[R | choice] and the
    choice gradient vanishes, so the test above can tell the two apart."""
    pol = bandit_policy()
    exact = exact_choice_gradient(pol)
    torch.manual_seed(1)
    pol.value_head = nn.Linear(pol.core.output_size, 1)  # reads [h_t, r_t]
    pol._value_features = lambda h: h
    g, se, v_spread = ppo_choice_gradient(pol)
    assert v_spread > 0.3  # the critic tells the choices apart
    assert abs(g) < 0.1 * abs(exact) and abs(g - exact) > 20 * se, (g, exact, se)
