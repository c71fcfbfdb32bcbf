"""The algorithmic core of SOAR, as pure tensor math (PAPER.md: teacher update, Proposition 1).

Both learners use RLOO (REINFORCE with a leave-one-out baseline):
- the student, grouped by question: G = samples per question (paper: 32);
- the teacher, grouped by dataset: G = datasets per group (paper: g = 4), each dataset X_k gets
  one grounded reward R(X_k) and its advantage A_k applies to every pair of X_k.

Why RLOO and not a plain REINFORCE (Proposition 1): the teacher samples through rejection
sampling, so the accepted outputs follow q(x) = p(x) / p(valid), yet we can only score them with
the proposal's log p(x). Since log q(x) = log p(x) - log p(valid) and the RLOO advantages of a
group sum to zero, sum_k A_k grad log p(x_k) = sum_k A_k grad log q(x_k): the unknown
grad log p(valid) term cancels. With raw rewards it does not (tests/test_rl.py shows both).

No models and no I/O here: callers pass log-probabilities, rewards and masks. Nothing is clipped
(no PPO ratio clip): one gradient step per batch is on-policy, as in the paper's RLOO.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the positions where `mask` is nonzero; 0 where the mask is empty.

    Masked-out values never reach the result, even inf or nan (padding can hold either), and
    receive zero gradient.
    """
    keep = mask != 0
    x = torch.where(keep, x, torch.zeros_like(x)) * mask  # (...) masked-out entries are exactly 0
    total = x.sum() if dim is None else x.sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / torch.where(count > 0, count, torch.ones_like(count))  # empty mask: 0 / 1 = 0


def rloo_advantages(rewards: Tensor) -> Tensor:
    """Leave-one-out advantages over the last dimension (the group).

        A_i = R_i - 1/(G-1) sum_{j != i} R_j = G/(G-1) (R_i - mean_j R_j)

    rewards: (..., G), G >= 2. Returns (..., G), summing to 0 over each group (Proposition 1),
    and exactly 0 for a group of equal rewards (no learning signal, e.g. a fail@k question with
    0/G). Exactly, not up to round-off: the mean of G copies of 0.1 is not 0.1 in float32, and
    Adam divides the resulting ~1e-8 gradients by their own size, so a student that never sees
    a success would take lr-sized steps in a round-off direction (it drifted to KL 0.13 in 10).
    """
    G = rewards.shape[-1]
    if G < 2:
        raise ValueError(f"RLOO needs at least 2 samples per group, got G={G}")
    rewards = rewards.float() if not rewards.is_floating_point() else rewards
    baseline = rewards.mean(dim=-1, keepdim=True)  # (..., 1)
    spread = (rewards != rewards[..., :1]).any(dim=-1, keepdim=True)  # (..., 1)
    return torch.where(spread, G / (G - 1) * (rewards - baseline), torch.zeros_like(rewards))  # (..., G)


def policy_gradient_loss(
    logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    old_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    kl_coef: float = 0.0,
    normalize: str = "token",
) -> tuple[Tensor, dict[str, float]]:
    """RLOO surrogate loss with an optional k3 KL penalty to a reference policy.

    Per token t of sequence i (m_it = mask, A_i = advantage of sequence i):

        l_it = -A_i * log pi(y_it)                          (REINFORCE surrogate, on-policy)
        l_it = -A_i * pi(y_it) / pi_old(y_it)               (if old_logps: importance ratio,
                                                             same gradient at pi = pi_old)
        l_it += kl_coef * k3_it,  k3 = exp(ref - logp) - (ref - logp) - 1  >= 0
                                                            (Schulman's unbiased KL(pi||ref);
                                                             paper: kl_coef = 0.001)
    normalize:
        "token":    L = sum_it m_it l_it / sum_it m_it      (DAPO; every token weighs the same,
                                                             long completions are not diluted)
        "sequence": L = mean_i (sum_t m_it l_it / sum_t m_it) (GRPO; every sequence weighs the
                                                             same; empty sequences are skipped)
    Default "token": each sequence's weight on grad log pi(y_i) is then exactly A_i / N
    (N = masked tokens in the batch), so the weights of a group still sum to zero and
    Proposition 1 holds for completions of any length; "sequence" weighs them A_i / |y_i|, which
    sums to zero only when lengths are equal (Dr. GRPO's length bias). The two agree when all
    lengths are equal.

    logps, old_logps, ref_logps, mask: (B, T); advantages: (B,), broadcast over tokens.
    Returns (loss, stats); stats are floats with TRL-style names.
    """
    if logps.dim() != 2 or mask.shape != logps.shape:
        shapes = f"{tuple(logps.shape)} and {tuple(mask.shape)}"
        raise ValueError(f"logps and mask must both be (B, T), got {shapes}")
    if advantages.shape != logps.shape[:1]:
        shapes = f"{tuple(logps.shape[:1])}, got {tuple(advantages.shape)}"
        raise ValueError(f"advantages must be (B,) = {shapes}")
    if normalize not in ("token", "sequence"):
        raise ValueError(f"normalize must be 'token' or 'sequence', got {normalize!r}")
    if kl_coef != 0 and ref_logps is None:  # a silently dropped KL term is a config bug
        raise ValueError(f"kl_coef={kl_coef} needs ref_logps")
    mask = mask.to(logps.dtype)
    keep = mask != 0

    def clean(t: Tensor) -> Tensor:
        # Zero the padding *before* any exp: a nan/inf there would poison the backward pass
        # (torch.where passes 0 * inf = nan gradients through its unselected branch).
        return torch.where(keep, t, torch.zeros_like(t))  # (B, T)

    logps = clean(logps)
    A = advantages.detach().to(logps.dtype)[:, None]  # (B, 1) rewards carry no gradient
    if old_logps is None:
        per_token = -A * logps  # (B, T)
    else:
        ratio = torch.exp(logps - clean(old_logps).detach())  # (B, T) = 1 when on-policy
        per_token = -A * ratio  # (B, T)
    pg_per_token = per_token

    if ref_logps is not None:
        delta = clean(ref_logps).detach() - logps  # (B, T) log ref/pi
        kl = torch.exp(delta) - delta - 1  # (B, T) k3 estimator, >= 0, 0 iff pi == ref
        per_token = per_token + kl_coef * kl  # (B, T)

    def reduce(t: Tensor) -> Tensor:
        if normalize == "token":
            return masked_mean(t, mask)  # ()
        per_seq = masked_mean(t, mask, dim=-1)  # (B,)
        return masked_mean(per_seq, (mask.sum(-1) > 0).to(t.dtype))  # ()

    loss = reduce(per_token)
    with torch.no_grad():
        lengths = mask.sum(-1)  # (B,)
        stats = {
            "loss": loss.item(),
            "pg_loss": reduce(pg_per_token).item(),
            "kl": masked_mean(kl, mask).item() if ref_logps is not None else 0.0,
            "advantages/mean": A.mean().item(),
            "advantages/std": A.std().item() if A.numel() > 1 else 0.0,
            "completions/mean_length": lengths.mean().item(),
            "num_tokens": lengths.sum().item(),
        }
        if old_logps is not None:
            stats["ratio/mean"] = masked_mean(ratio, mask).item()
    return loss, stats


def token_logps(logits: Tensor, tokens: Tensor) -> Tensor:
    """log pi(tokens[b, t]) from logits (B, T, V) and tokens (B, T); returns float32 (B, T).

    logits[:, t] must already be the distribution of tokens[:, t] (shift by one before calling)
    and already divided by the sampling temperature if it was not 1 (the paper samples at 1.0).
    """
    # Memory: a full log_softmax materializes a second (B, T, V) tensor, in float32 (for
    # V = 128k and B*T = 32k tokens, about 16 GiB). Going one sequence at a time bounds the
    # forward temporaries to (T, V). For float32 logits, gather - logsumexp then keeps nothing of
    # size V for backward beyond the logits themselves. For bf16 logits, autograd still keeps
    # each row's float32 cast (bf16 logsumexp is too coarse for importance ratios and KL).
    rows = []
    for row_logits, row_tokens in zip(logits, tokens):  # (T, V), (T,)
        row_logits = row_logits.float()  # (T, V) no copy when already float32
        picked = row_logits.gather(-1, row_tokens[:, None]).squeeze(-1)  # (T,)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))  # (T,)
    return torch.stack(rows)  # (B, T)


def group_stats(rewards: Tensor) -> dict[str, float]:
    """Logging summary of grouped rewards (..., G), with TRL's names.

    reward_mean, reward_std: over all rewards (TRL computes reward_std the same way);
    frac_reward_zero_std: fraction of groups whose rewards are all equal, i.e. whose RLOO
    advantages are all 0 and so give no gradient (the paper's motivation: fail@128 questions).
    """
    rewards = rewards.detach().float()
    group_std = rewards.std(dim=-1, correction=0)  # (...)
    zero_std = torch.isclose(group_std, torch.zeros_like(group_std))  # (...)
    return {
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "frac_reward_zero_std": zero_std.float().mean().item(),
    }
