"""Tests of soar.rl: RLOO properties, the policy-gradient loss, and Proposition 1 on a toy policy."""

from __future__ import annotations

import itertools

import pytest
import torch

from soar.rl import group_stats, masked_mean, policy_gradient_loss, rloo_advantages, token_logps



@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in float64 (soar.rl is dtype-agnostic); restored for other test files."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def leave_one_out(rewards: list[float]) -> list[float]:
    """The paper's formula written as a loop: A_i = R_i - mean_{j != i} R_j."""
    G = len(rewards)
    return [r - sum(rewards[j] for j in range(G) if j != i) / (G - 1) for i, r in enumerate(rewards)]


# ---------------------------------------------------------------------------- rloo_advantages

RLOO_CASES = [
    ([1.0, 0.0], "G=2: each sample's baseline is the other sample"),
    ([1.0, 0.0, 0.0, 0.0], "one success in four: +1 for it, -1/3 for the others"),
    ([0.5, -0.25, 1.0, 0.0, 2.0], "shaped, signed rewards (student reward magnitudes)"),
    ([0.03, -0.01, 0.0, 0.02], "teacher rewards: accuracy deltas over 4 datasets"),
]


@pytest.mark.parametrize("rewards, why", RLOO_CASES)
def test_rloo_equals_leave_one_out_loop(rewards, why):
    got = rloo_advantages(torch.tensor(rewards))
    torch.testing.assert_close(got, torch.tensor(leave_one_out(rewards)), msg=why)
    assert abs(got.sum().item()) < 1e-12, why


def test_rloo_known_values():
    got = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(got, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))


def test_rloo_sums_to_zero_per_group_with_batch_dims():
    rewards = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    A = rloo_advantages(rewards)
    assert A.shape == rewards.shape
    torch.testing.assert_close(A.sum(-1), torch.zeros(3, 5))
    # each group is treated independently: the same as calling it group by group
    for idx in itertools.product(range(3), range(5)):
        torch.testing.assert_close(A[idx], torch.tensor(leave_one_out(rewards[idx].tolist())))


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 0.1, 0.3])
def test_rloo_zero_for_equal_rewards(value):
    # a fail@k question (all 0) or an all-solved one gives no signal; exactly none for a group at
    # the format credit too (in float32, the pipeline's rewards, a group of eight 0.1s or 0.3s
    # leaves a ~1e-8 mean round-off, which Adam would amplify)
    for dtype in (torch.float64, torch.float32):
        assert torch.equal(rloo_advantages(torch.full((2, 8), value, dtype=dtype)), torch.zeros(2, 8, dtype=dtype))


def test_rloo_integer_rewards_become_float():
    A = rloo_advantages(torch.tensor([1, 0, 0]))
    assert A.is_floating_point()
    torch.testing.assert_close(A, torch.tensor([1.0, -0.5, -0.5]), check_dtype=False)


@pytest.mark.parametrize("shape", [(1,), (4, 1), (0,)])
def test_rloo_needs_two_samples(shape):
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.zeros(shape))


# ---------------------------------------------------------------------------- masked_mean


def test_masked_mean_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, mask).item() == 1.5
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([1.5, 0.0]))  # empty row -> 0
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([1.0, 2.0, 0.0]))


def test_masked_mean_empty_mask_is_zero_and_ignores_nonfinite_padding():
    x = torch.tensor([1.0, float("nan"), float("-inf")], requires_grad=True)
    assert masked_mean(x, torch.zeros(3)).item() == 0.0
    out = masked_mean(x, torch.tensor([1.0, 0.0, 0.0]))
    out.backward()
    assert out.item() == 1.0
    assert torch.equal(x.grad, torch.tensor([1.0, 0.0, 0.0]))


# ---------------------------------------------------------------------------- policy_gradient_loss


def toy_batch(seed=0, B=4, T=6):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])[:B]
    mask = torch.ones(B, T)
    mask[1, 4:] = 0  # unequal lengths: 6, 4, 6, 3
    mask[3, 3:] = 0
    return logps, advantages, mask


def test_pg_gradient_direction():
    logps, A, mask = toy_batch()
    loss, _ = policy_gradient_loss(logps, A, mask)
    loss.backward()
    # descending the loss raises logp of positive-advantage samples and lowers the negative ones
    assert (logps.grad[0] < 0).all() and (logps.grad[2] < 0).all()
    assert (logps.grad[1, :4] > 0).all() and (logps.grad[3, :3] > 0).all()
    with torch.no_grad():  # and the finite step agrees
        bumped = logps.clone()
        bumped[0] += 0.1
        assert policy_gradient_loss(bumped, A, mask)[0] < loss


def test_pg_zero_advantages_give_zero_gradient():
    logps, _, mask = toy_batch()
    ref = logps.detach() - 0.3  # a reference exists but kl_coef = 0 switches it off
    loss, _ = policy_gradient_loss(logps, torch.zeros(4), mask, ref_logps=ref, kl_coef=0.0)
    loss.backward()
    assert torch.equal(logps.grad, torch.zeros_like(logps))


def test_pg_kl_term():
    logps, A, mask = toy_batch()
    same = policy_gradient_loss(logps, A, mask, ref_logps=logps.detach(), kl_coef=0.1)
    assert same[1]["kl"] == 0.0
    assert same[0].item() == pytest.approx(policy_gradient_loss(logps, A, mask)[0].item())
    ref = logps.detach() + 0.2 * torch.randn(logps.shape, generator=torch.Generator().manual_seed(1))
    loss, stats = policy_gradient_loss(logps, A, mask, ref_logps=ref, kl_coef=0.1)
    delta = ref - logps.detach()
    k3 = (delta.exp() - delta - 1)[mask.bool()].mean().item()
    assert stats["kl"] == pytest.approx(k3) and k3 > 0
    assert loss.item() == pytest.approx(stats["pg_loss"] + 0.1 * k3)


def test_pg_kl_gradient_pulls_toward_reference():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-0.5, -2.5]])  # ref above logp at t=0, below at t=1
    loss, _ = policy_gradient_loss(logps, torch.zeros(1), torch.ones(1, 2), ref_logps=ref, kl_coef=1.0)
    loss.backward()
    assert logps.grad[0, 0] < 0 < logps.grad[0, 1]  # a descent step moves logp toward ref


def test_pg_normalizations():
    logps, A, mask = toy_batch()
    token, _ = policy_gradient_loss(logps, A, mask, normalize="token")
    sequence, _ = policy_gradient_loss(logps, A, mask, normalize="sequence")
    assert token.item() != pytest.approx(sequence.item())  # unequal lengths: they differ
    # by hand: token = sum of all masked terms / 19 tokens; sequence = mean of per-row means
    per_token = -A[:, None] * logps.detach() * mask
    assert token.item() == pytest.approx((per_token.sum() / mask.sum()).item())
    assert sequence.item() == pytest.approx((per_token.sum(-1) / mask.sum(-1)).mean().item())
    full = torch.ones_like(mask)
    torch.testing.assert_close(
        policy_gradient_loss(logps, A, full, normalize="token")[0],
        policy_gradient_loss(logps, A, full, normalize="sequence")[0],
    )


def test_pg_sequence_normalization_skips_empty_sequences():
    logps = torch.tensor([[-1.0, -1.0], [-3.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # second completion is empty
    loss, _ = policy_gradient_loss(logps, torch.tensor([1.0, 1.0]), mask, normalize="sequence")
    assert loss.item() == pytest.approx(1.0)  # not 0.5: the empty row is not averaged in


@pytest.mark.parametrize("normalize", ["token", "sequence"])
def test_pg_mask_respected(normalize):
    logps, A, mask = toy_batch()
    ref = logps.detach() - 0.1
    kw = dict(ref_logps=ref, old_logps=logps.detach(), kl_coef=0.5, normalize=normalize)
    loss, _ = policy_gradient_loss(logps, A, mask, **kw)
    loss.backward()
    assert torch.equal(logps.grad[mask == 0], torch.zeros(int((mask == 0).sum())))
    # garbage (even -inf / nan, as padding may hold) at masked positions changes nothing
    pad = mask == 0
    garbage = logps.detach().clone().masked_fill(pad, float("-inf")).requires_grad_()
    bad_ref = ref.masked_fill(pad, float("nan"))
    bad_old = logps.detach().masked_fill(pad, 7.0)
    kw.update(ref_logps=bad_ref, old_logps=bad_old)
    loss2, _ = policy_gradient_loss(garbage, A, mask, **kw)
    loss2.backward()
    assert loss2.item() == loss.item()
    assert torch.equal(garbage.grad, logps.grad)


def test_pg_old_logps_same_gradient_on_policy():
    logps, A, mask = toy_batch()
    ref = logps.detach() - 0.1
    policy_gradient_loss(logps, A, mask, ref_logps=ref, kl_coef=0.01)[0].backward()
    plain = logps.grad.clone()
    logps.grad = None
    loss, stats = policy_gradient_loss(logps, A, mask, old_logps=logps.detach(), ref_logps=ref, kl_coef=0.01)
    loss.backward()
    torch.testing.assert_close(logps.grad, plain)
    assert stats["ratio/mean"] == pytest.approx(1.0)
    logps.grad = None  # passing the live tensor as old_logps must not cancel the gradient
    policy_gradient_loss(logps, A, mask, old_logps=logps, ref_logps=ref, kl_coef=0.01)[0].backward()
    torch.testing.assert_close(logps.grad, plain)
    # off-policy: the ratio reweights the gradient by pi / pi_old
    logps.grad = None
    old = logps.detach() - 0.5
    policy_gradient_loss(logps, A, mask, old_logps=old)[0].backward()
    torch.testing.assert_close(logps.grad, -A[:, None] * (logps.detach() - old).exp() * mask / mask.sum())


def test_pg_stats_are_floats():
    logps, A, mask = toy_batch()
    _, stats = policy_gradient_loss(logps, A, mask, ref_logps=logps.detach(), kl_coef=0.001)
    assert {"loss", "pg_loss", "kl", "advantages/mean", "advantages/std", "completions/mean_length"} <= set(stats)
    assert all(type(v) is float for v in stats.values())
    assert stats["completions/mean_length"] == 19 / 4 and stats["num_tokens"] == 19


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(normalize="batch"), "normalize"),
        (dict(advantages=torch.zeros(3)), "advantages"),
        (dict(mask=torch.ones(4, 5)), "mask"),
        (dict(logps=torch.zeros(4)), "logps"),
        (dict(kl_coef=0.001), "ref_logps"),
    ],
)
def test_pg_rejects_bad_arguments(kwargs, match):
    args = dict(logps=torch.zeros(4, 6), advantages=torch.zeros(4), mask=torch.ones(4, 6))
    options = {k: v for k, v in kwargs.items() if k in ("normalize", "kl_coef")}
    args.update({k: v for k, v in kwargs.items() if k not in options})
    with pytest.raises(ValueError, match=match):
        policy_gradient_loss(args["logps"], args["advantages"], args["mask"], **options)


# ---------------------------------------------------------------------------- token_logps, group_stats


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logps_matches_log_softmax(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11, generator=g)).to(dtype).requires_grad_()
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    got = token_logps(logits, tokens)
    assert got.dtype == torch.float32 and got.shape == (2, 5)
    want = logits.float().log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(got, want)
    got.sum().backward()  # d log p(token) / d logits = onehot(token) - softmax(logits)
    expected = torch.nn.functional.one_hot(tokens, 11) - logits.detach().float().softmax(-1)
    torch.testing.assert_close(logits.grad.float(), expected, atol=1e-2, rtol=0)


GROUP_STATS_CASES = [
    ([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]], 0.5, "fail@k group gives no signal; mixed group does"),
    ([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]], 2 / 3, "all-solved and all-failed groups both have zero std"),
    ([[0.2, 0.1, 0.0]], 0.0, "distinct rewards"),
]


@pytest.mark.parametrize("rewards, frac, why", GROUP_STATS_CASES)
def test_group_stats(rewards, frac, why):
    r = torch.tensor(rewards)
    stats = group_stats(r)
    assert stats["frac_reward_zero_std"] == pytest.approx(frac), why
    assert stats["reward_mean"] == pytest.approx(r.mean().item())
    assert stats["reward_std"] == pytest.approx(r.std().item())
    assert all(type(v) is float for v in stats.values())


# ---------------------------------------------------------------------------- Proposition 1
#
# Toy teacher: a categorical policy p = softmax(theta) over K outcomes; some outcomes are invalid
# (no tags, no \boxed{}, unparsable answer). Rejection sampling resamples until valid, so accepted
# outcomes follow q(x) = p(x) / p(valid) on the valid set. The trainer only has log p(x).

K = 6
VALID = torch.tensor([0, 2, 3, 5])  # outcomes 1 and 4 are rejected
REWARD = torch.tensor([0.3, 0.0, -0.2, 1.0, 0.0, 0.5], dtype=torch.float64)  # r(x), for valid x


def theta():
    return torch.tensor([0.4, 1.2, -0.7, 0.1, 0.9, -0.3], dtype=torch.float64, requires_grad=True)


def log_p(th):
    return th.log_softmax(-1)  # (K,) the proposal, what the trainer can compute


def log_q(th):
    valid = torch.zeros(K, dtype=torch.bool)
    valid[VALID] = True
    return th.masked_fill(~valid, float("-inf")).log_softmax(-1)  # (K,) renormalized on valid


def surrogate_grad(logprob_fn, group, advantages):
    """grad_theta of the loss the trainer minimizes, through soar.rl.policy_gradient_loss."""
    th = theta()
    logps = logprob_fn(th)[group][:, None]  # (G, 1) one "token" per sample
    loss, _ = policy_gradient_loss(logps, advantages, torch.ones_like(logps))
    (grad,) = torch.autograd.grad(loss, th)
    return grad


GROUPS = [
    ([0, 2, 3, 5], "all distinct"),
    ([3, 3, 0, 5], "repeated outcome"),
    ([5, 0], "G=2"),
    ([2, 2, 2, 3, 0, 5, 5, 3], "G=8"),
]


@pytest.mark.parametrize("group, why", GROUPS)
def test_proposition1_rloo_gradient_exact_per_group(group, why):
    group = torch.tensor(group)
    A = rloo_advantages(REWARD[group])  # (G,) sums to 0
    torch.testing.assert_close(surrogate_grad(log_p, group, A), surrogate_grad(log_q, group, A), msg=why)


@pytest.mark.parametrize("group, why", GROUPS)
def test_proposition1_fails_for_plain_reinforce(group, why):
    group = torch.tensor(group)
    R = REWARD[group]  # raw rewards as advantages: they do not sum to zero
    assert R.sum() != 0
    g_p, g_q = surrogate_grad(log_p, group, R), surrogate_grad(log_q, group, R)
    assert (g_p - g_q).abs().max() > 1e-3, why
    # the gap is exactly the uncancelled term: mean(R) * grad log p(valid)
    th = theta()
    (grad_log_p_valid,) = torch.autograd.grad(log_p(th)[VALID].logsumexp(0), th)
    torch.testing.assert_close(g_p - g_q, -R.mean() * grad_log_p_valid)


LENGTH = torch.tensor([1, 5, 3, 2, 4, 6])  # tokens in each outcome's completion


@pytest.mark.parametrize("normalize, holds", [("token", True), ("sequence", False)])
def test_proposition1_with_unequal_lengths(normalize, holds):
    # Spread log pi(x) over the L(x) tokens of x (their sum is the sequence log-prob). "token"
    # weighs every sequence by A_k / N, so the log p(valid) terms still cancel; "sequence" weighs
    # them by A_k / L(x_k), which no longer sums to zero (rl.policy_gradient_loss docstring).
    group = torch.tensor([0, 2, 3, 5])
    A = rloo_advantages(REWARD[group])
    mask = (torch.arange(6)[None, :] < LENGTH[group][:, None]).double()  # (G, 6)

    def grad(logprob_fn):
        th = theta()
        logps = logprob_fn(th)[group][:, None] / LENGTH[group][:, None] * mask  # (G, 6)
        (g,) = torch.autograd.grad(policy_gradient_loss(logps, A, mask, normalize=normalize)[0], th)
        return g

    assert torch.allclose(grad(log_p), grad(log_q)) == holds


def expected_grad(logprob_fn, advantage_fn, G):
    """E over i.i.d. accepted groups (x_1..x_G ~ q) of the surrogate gradient, by enumeration."""
    th = theta()
    q = log_q(th).exp().detach()  # (K,)
    groups = torch.tensor(list(itertools.product(VALID.tolist(), repeat=G)))  # (|V|^G, G)
    weight = q[groups].prod(-1)  # (N,) probability of each group
    A = advantage_fn(REWARD[groups])  # (N, G)
    objective = (weight[:, None] * A * logprob_fn(th)[groups]).sum() / G  # E[(1/G) sum_k A_k log pi]
    (grad,) = torch.autograd.grad(objective, th)
    return grad


@pytest.mark.parametrize("G", [2, 3])
def test_proposition1_in_expectation(G):
    # the true gradient of J(theta) = E_{x~q}[r(x)], the objective of the accepted distribution
    th = theta()
    (true_grad,) = torch.autograd.grad((log_q(th).exp() * REWARD).sum(), th)
    # RLOO with the proposal's log p is unbiased for it (Proposition 1) ...
    torch.testing.assert_close(expected_grad(log_p, rloo_advantages, G), true_grad)
    # ... REINFORCE is unbiased only with the renormalized log q, which the trainer cannot compute
    torch.testing.assert_close(expected_grad(log_q, lambda r: r, G), true_grad)
    biased = expected_grad(log_p, lambda r: r, G)
    assert (biased - true_grad).abs().max() > 1e-2
