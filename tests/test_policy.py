"""Encoders, heads and the ActorCritic step/sequence API for every supported space type (fast, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

import memory_cores
from agents.policy import ActorCritic, UnsupportedSpaceError, make_encoder, make_head
from memory_cores import tree_leaves

torch.set_num_threads(1)

B = 3
OBS_SPACES = {
    "box": spaces.Box(-1.0, 1.0, (4,), np.float32),
    "box2d": spaces.Box(-1.0, 1.0, (2, 3), np.float32),
    "image_hwc": spaces.Box(0, 255, (7, 7, 3), np.uint8),
    "image_chw": spaces.Box(0.0, 1.0, (3, 8, 8), np.float32),
    "discrete": spaces.Discrete(5, start=2),
    "multidiscrete": spaces.MultiDiscrete([3, 4, 2]),
    "multibinary": spaces.MultiBinary(6),
    "dict": spaces.Dict(
        image=spaces.Box(0, 255, (5, 5, 3), np.uint8), direction=spaces.Discrete(4), mission=spaces.Text(20)
    ),
}
ACT_SPACES = {
    "discrete": spaces.Discrete(4, start=1),
    "multidiscrete": spaces.MultiDiscrete([2, 5]),
    "multibinary": spaces.MultiBinary(3),
    "box": spaces.Box(-2.0, 2.0, (2,), np.float32),
}


def batch_obs(space: spaces.Space, n: int, seed: int = 0):
    bs = batch_space(space, n)
    bs.seed(seed)
    o = bs.sample()
    if isinstance(o, dict):
        return {k: torch.as_tensor(np.asarray(v)) for k, v in o.items() if k != "mission"}
    return torch.as_tensor(np.asarray(o))


@pytest.mark.parametrize("name", sorted(OBS_SPACES))
def test_encoders_shapes_and_time_major(name):
    torch.manual_seed(0)
    space = OBS_SPACES[name]
    enc = make_encoder(space, 8)
    obs = batch_obs(space, B)
    y = enc(obs)
    assert y.shape == (B, 8) and torch.isfinite(y).all()
    # [T, B, ...] gives the same rows as [B, ...]
    seq = {k: v.unsqueeze(0).expand(2, *v.shape) for k, v in obs.items()} if isinstance(obs, dict) else obs.expand(2, *obs.shape)
    ys = enc(seq)
    assert ys.shape == (2, B, 8)
    torch.testing.assert_close(ys[1], y)


@pytest.mark.parametrize("name", sorted(ACT_SPACES))
def test_heads_sample_score_and_env_format(name):
    torch.manual_seed(0)
    space = ACT_SPACES[name]
    head = make_head(space, 6)
    h = torch.randn(B, 6)
    dist = head(h)
    a = dist.sample()
    assert a.shape == (B,) + head.action_shape
    lp, ent = dist.log_prob(a), dist.entropy()
    assert lp.shape == (B,) and ent.shape == (B,)
    assert (lp <= 1e-6).all() or name == "box"
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    env_a = head.to_env(a).numpy()
    for i in range(B):
        assert space.contains(np.asarray(env_a[i]).astype(space.dtype)), (space, env_a[i])
    # a time-major batch scores the same
    dist_t = head(h.unsqueeze(0).expand(2, B, 6))
    torch.testing.assert_close(dist_t.log_prob(a.unsqueeze(0).expand(2, *a.shape))[1], lp)


def test_categorical_probabilities_sum_to_one_and_match_sampling():
    torch.manual_seed(0)
    head = make_head(spaces.MultiDiscrete([2, 3]), 4)
    dist = head(torch.randn(1, 4))
    # enumerate all 6 joint actions: probabilities sum to 1 (padding carries no mass)
    total = sum(dist.log_prob(torch.tensor([[i, j]])).exp() for i in range(2) for j in range(3))
    torch.testing.assert_close(total, torch.ones(1))
    # Gumbel-max sampling follows the probabilities
    big = head(torch.randn(1, 4).expand(20000, 4))
    a = big.sample()
    freq = (a[:, 1] == 2).float().mean()
    p = big.log_prob(torch.tensor([[0, 2]])).exp()[0] + big.log_prob(torch.tensor([[1, 2]])).exp()[0]
    assert abs(float(freq) - float(p.detach())) < 0.02


def test_gaussian_log_prob_matches_torch():
    torch.manual_seed(0)
    head = make_head(ACT_SPACES["box"], 5)
    with torch.no_grad():
        head.log_std.fill_(-0.3)
    h = torch.randn(B, 5)
    d = head(h)
    a = d.sample()
    ref = torch.distributions.Normal(d.mean, d.log_std.exp())
    torch.testing.assert_close(d.log_prob(a), ref.log_prob(a).sum(-1))
    torch.testing.assert_close(d.entropy(), ref.entropy().sum(-1))
    # the environment gets clipped actions
    assert (head.to_env(torch.full((1, 2), 9.0)) == 2.0).all()


def test_unsupported_spaces_are_named():
    with pytest.raises(UnsupportedSpaceError, match="Text"):
        ActorCritic(spaces.Text(5), spaces.Discrete(2), core="none")
    with pytest.raises(UnsupportedSpaceError, match="action space"):
        ActorCritic(spaces.Box(0, 1, (2,)), spaces.Tuple([spaces.Discrete(2)]), core="none")
    with pytest.raises(UnsupportedSpaceError, match="observation"):
        ActorCritic(spaces.Sequence(spaces.Discrete(2)), spaces.Discrete(2), core="none")  # Tuple: supported
    with pytest.raises(ValueError, match="valid"):
        ActorCritic(spaces.Box(0, 1, (2,)), spaces.Discrete(2), core="tape")


CORE_KW = {
    "lstm": dict(hidden_size=8),
    "gru": dict(hidden_size=8),
    "alstm": dict(hidden_size=8, num_copies=2),
    "ntm": dict(hidden_size=8, num_slots=4, slot_size=3),
    "dnc": dict(hidden_size=8, num_slots=4, slot_size=3, num_read_heads=1),
    "rl_access": dict(hidden_size=8, num_slots=4, slot_size=3),
}


def _choice_core(name: str) -> bool:
    return bool(getattr(memory_cores.CORES.get(name), "has_discrete_choices", False))


@pytest.mark.parametrize(
    "core,shared,head_hidden,skip",
    [
        (core, shared, head_hidden, skip)
        for core in ["none"] + sorted(memory_cores.CORES)
        for shared, head_hidden, skip in [(True, 0, False), (False, 0, False), (True, 6, True), (False, 6, True)]
        if shared or not _choice_core(core)  # a core with choices is always shared (test_choice_core_must_be_shared)
    ],
)
def test_actor_critic_step_loop_equals_sequence(core, shared, head_hidden, skip):
    """Sampling step by step, then scoring the same actions (and core choices) over the sequence from the initial
    state with the same resets gives the same log-probs and values: what makes PPO's first ratio exactly 1."""
    torch.manual_seed(0)
    obs_space, act_space = OBS_SPACES["dict"], ACT_SPACES["multidiscrete"]
    pol = ActorCritic(obs_space, act_space, core=core, core_kwargs=CORE_KW.get(core, {}), embed_size=8,
                      shared_core=shared, head_hidden=head_hidden, obs_skip=skip)
    assert sum(n.startswith(("actor_mlp.", "value_mlp.")) for n, _ in pol.named_parameters()) == (4 if head_hidden else 0)
    T = 5
    obs = [batch_obs(obs_space, B, seed=t) for t in range(T)]
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[0] = True
    resets[2, 1] = True
    state0 = pol.initial_state(B)
    state, outs = state0, []
    with torch.no_grad():
        for t in range(T):
            out = pol.get_action_and_value(obs[t], state, resets[t])
            outs.append(out)
            state = out.state
    obs_seq = {k: torch.stack([o[k] for o in obs]) for k in obs[0]}
    actions = torch.stack([o.action for o in outs])
    choices = None
    if pol.has_choices:
        choices = tuple(None if c is None else torch.stack([o.choices[i] for o in outs])
                        for i, c in enumerate(outs[0].choices))
    seq = pol.evaluate_sequence(obs_seq, state0, resets, actions, choices)
    torch.testing.assert_close(seq.log_prob, torch.stack([o.log_prob for o in outs]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seq.value, torch.stack([o.value for o in outs]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seq.choice_log_prob, torch.stack([o.choice_log_prob for o in outs]), atol=1e-5, rtol=1e-5)
    for a, b in zip(tree_leaves(seq.state), tree_leaves(state)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # gradients reach every parameter from the sequence loss
    (seq.log_prob.sum() + seq.value.sum() + seq.entropy.sum() + seq.choice_log_prob.sum()).backward()
    missing = [n for n, p in pol.named_parameters() if p.grad is None]
    assert missing == [], missing


@pytest.mark.parametrize("core", [c for c in sorted(memory_cores.CORES) if _choice_core(c)])
def test_choice_core_must_be_shared(core):
    """A separate critic core would take access choices that reach no action or reward: refused, in one line."""
    with pytest.raises(ValueError, match=r"shared_core=False is not valid for core .*--shared-core"):
        ActorCritic(OBS_SPACES["box"], ACT_SPACES["discrete"], core=core, core_kwargs=CORE_KW.get(core, {}),
                    embed_size=8, shared_core=False)


def test_head_hidden_is_checked():
    with pytest.raises(ValueError, match="head_hidden=-1 is not valid"):
        ActorCritic(OBS_SPACES["dict"], ACT_SPACES["multidiscrete"], core="lstm", head_hidden=-1)
    with pytest.raises(ValueError, match="head_activation='gelu' is not valid: expected one of tanh, relu"):
        ActorCritic(OBS_SPACES["dict"], ACT_SPACES["multidiscrete"], core="lstm", head_hidden=4, head_activation="gelu")


@pytest.mark.parametrize("shared", [True, False])
def test_head_activation_relu(shared):
    """With head_activation="relu" both head layers are rectified: the hidden activations the heads read are >= 0
    and exactly ReLU of the layer's pre-activation (tanh, the default, gives negative ones on the same weights)."""
    torch.manual_seed(0)
    kw = dict(core="lstm", core_kwargs=CORE_KW["lstm"], embed_size=8, shared_core=shared, head_hidden=6)
    relu = ActorCritic(OBS_SPACES["box"], ACT_SPACES["discrete"], head_activation="relu", **kw)
    tanh = ActorCritic(OBS_SPACES["box"], ACT_SPACES["discrete"], **kw)
    tanh.load_state_dict(relu.state_dict())  # same parameters, only the non-linearity differs
    x = torch.randn(32, relu.actor_mlp[0].in_features)
    for r, t in ((relu.actor_mlp, tanh.actor_mlp), (relu.value_mlp, tanh.value_mlp)):
        pre = r[0](x)
        torch.testing.assert_close(r(x), pre.clamp_min(0))
        torch.testing.assert_close(t(x), pre.tanh())
        assert bool((t(x) < 0).any())


def test_obs_normalizer_statistics():
    torch.manual_seed(0)
    pol = ActorCritic(OBS_SPACES["box"], ACT_SPACES["discrete"], core="none", embed_size=8, normalize_obs=True)
    data = torch.randn(2000, 4) * 3 + 5
    for chunk in data.split(100):
        pol.normalize_obs(chunk, update=True)
    torch.testing.assert_close(pol.obs_norm.mean_obs, data.mean(0), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(pol.obs_norm.var_obs, data.var(0, unbiased=False), atol=1e-2, rtol=1e-3)
    out = pol.normalize_obs(data)
    assert abs(float(out.mean())) < 1e-3
    # saved with the policy
    assert "obs_norm.mean_obs" in pol.state_dict()


@pytest.mark.parametrize("core", ["lstm", "gru", "ntm"])
def test_segmented_unroll_equals_unroll_with_resets(core):
    """One reset-free unroll over episode segments gives the step loop's outputs and gradients."""
    from agents.policy import segmented_unroll

    if core not in memory_cores.CORES:
        pytest.skip(f"{core} not registered")
    torch.manual_seed(0)
    c = memory_cores.make_core(core, 5, **CORE_KW[core])
    with torch.no_grad():
        for p in c.parameters():
            p.add_(0.1 * torch.randn_like(p))
        _, state = c.unroll(torch.randn(3, 6, 5), c.initial_state(6))
    T = 12
    xs = torch.randn(T, 6, 5, requires_grad=True)
    resets = torch.rand(T, 6) < 0.2
    resets[:, 0] = False  # a row without resets
    resets[0, 1] = True  # a reset at t = 0
    ref, _ = c.unroll(xs, state, resets)
    seg = segmented_unroll(c, xs, state, resets)
    torch.testing.assert_close(seg, ref, atol=1e-6, rtol=1e-6)
    g_ref = torch.autograd.grad(ref.pow(2).sum(), [xs, *c.parameters()])
    g_seg = torch.autograd.grad(seg.pow(2).sum(), [xs, *c.parameters()])
    for a, b in zip(g_ref, g_seg):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_chrono_init_sets_lstm_gate_biases():
    pol = ActorCritic(OBS_SPACES["box"], ACT_SPACES["discrete"], core="lstm", core_kwargs=dict(hidden_size=8),
                      embed_size=8, chrono_init=100)
    H = 8
    b_ih, b_hh = pol.core.rnn.bias_ih_l0, pol.core.rnn.bias_hh_l0
    f = b_ih[H : 2 * H] + b_hh[H : 2 * H]
    assert (f >= 0).all() and (f <= torch.log(torch.tensor(99.0))).all() and f.std() > 0
    torch.testing.assert_close(b_ih[:H], -b_ih[H : 2 * H])


def test_obs_normalizer_on_dict_entries():
    space = spaces.Dict({"agent pos": spaces.Box(-5.0, 5.0, (2,), np.float32), "dir": spaces.Discrete(4)})
    pol = ActorCritic(space, ACT_SPACES["discrete"], core="gru", core_kwargs=dict(hidden_size=8), embed_size=8,
                      normalize_obs=True)
    obs = {"agent pos": torch.randn(B, 2) * 4 + 1, "dir": torch.tensor([0, 1, 3])}
    n = pol.normalize_obs(obs, update=True)
    assert torch.equal(n["dir"], obs["dir"]) and not torch.equal(n["agent pos"], obs["agent pos"])
    out = pol.get_action_and_value(n, pol.initial_state(B), torch.ones(B, dtype=torch.bool))
    assert out.action.shape == (B,)
