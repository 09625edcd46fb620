"""PPO math: generalised advantage estimation and the clipped surrogate. Tensors in, tensors out.

Schulman et al., "Proximal Policy Optimization Algorithms" (arXiv 1707.06347), eq. 7 (clipped
surrogate) and eq. 9 (value + entropy terms); Schulman et al., "High-Dimensional Continuous Control
Using Generalized Advantage Estimation" (arXiv 1506.02438) for GAE. Names follow cleanrl's ppo.py.

``reference_kl`` is the KL penalty that keeps a trained LM (ppo.train_lm) near its frozen reference. Also
the pieces that train multi-trajectory navigation beside PPO: ``anneal`` (the exploration
temperature over training), ``scorer_loss`` (the fusion scorer: binary cross-entropy of each
trajectory's final-step score against its correctness) and ``selector_loss`` (the K-selector:
binary cross-entropy of the question's success logit against the share of its trajectories
that were right).

An episode is one trajectory's thought steps: step t is the navigator's decision at thought t
(continue and steer, or halt and answer). Every tensor is [B, T] with a `mask` marking real
steps; an episode ends at its last real step, where the terminal reward arrives.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Advantages(NamedTuple):
    """Shape: advantages, returns [B, T] (zero where mask is 0)."""

    advantages: torch.Tensor
    returns: torch.Tensor


class PPOLoss(NamedTuple):
    """Scalars. `loss` is what is minimised; the rest are detached diagnostics."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor
    ratio_mean: torch.Tensor


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> Advantages:
    """GAE(gamma, lambda) per episode, bootstrapping with 0 after each episode's last real step.

    Shape: rewards, values, mask [B, T]; real steps are a prefix of each row (mask 1...10...0).
    delta_t = r_t + gamma V_{t+1} m_{t+1} - V_t;  A_t = delta_t + gamma lam m_{t+1} A_{t+1}.
    """
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(values)
    next_adv = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_mask = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):  # T is the thought budget (a handful), not the batch
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        adv = delta + gamma * lam * next_mask * next_adv
        advantages[:, t] = adv * mask[:, t]
        next_adv, next_value, next_mask = advantages[:, t], values[:, t], mask[:, t]
    return Advantages(advantages=advantages, returns=(advantages + values) * mask)


def group_advantages(
    returns: torch.Tensor, group: torch.Tensor, mask: torch.Tensor, scale_rewards: str = "group", eps: float = 1e-4
) -> Advantages:
    """Group-relative advantages (GRPO, Shao et al. 2024, arXiv 2402.03300): no critic.

    Each trajectory's return minus the mean return of its group (the K trajectories of one
    question), optionally divided by a standard deviation, given to every real step of it.
    ``scale_rewards`` is TRL's name and values: "group" divides by the group's std, "batch" by the
    std over the whole batch, "none" not at all. A group whose returns are all equal gets zero
    advantages. Population std (as TRL); eps keeps zero-std groups finite.

    Shape: returns, group [B]; mask [B, T] -> advantages [B, T]; `returns` of the result is the
    per-step return (the trajectory's return at each real step), for logging and a value head.
    """
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    returns = returns.float()
    ids, inverse = torch.unique(group, return_inverse=True)
    count = returns.new_zeros(len(ids)).index_add_(0, inverse, torch.ones_like(returns))
    mean = returns.new_zeros(len(ids)).index_add_(0, inverse, returns) / count
    centred = returns - mean[inverse]  # [B]
    if scale_rewards == "group":
        var = returns.new_zeros(len(ids)).index_add_(0, inverse, centred**2) / count
        centred = centred / (var.sqrt()[inverse] + eps)
    elif scale_rewards == "batch":
        centred = centred / (returns.std(unbiased=False) + eps)
    m = mask.to(returns.dtype)
    return Advantages(advantages=centred[:, None] * m, returns=returns[:, None] * m)


def normalize_advantages(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the real steps (masked steps stay 0)."""
    m = mask.to(advantages.dtype)
    n = m.sum().clamp(min=1)
    mean = (advantages * m).sum() / n
    var = (((advantages - mean) * m) ** 2).sum() / n
    return (advantages - mean) / (var.sqrt() + eps) * m


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def ppo_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float,
    vf_coef: float,
    ent_coef: float,
    clip_value: float | None = None,
) -> PPOLoss:
    """Clipped surrogate + value loss - entropy bonus, averaged over real steps.

    Shape: every input [B, T]. policy_loss = E[max(-A r, -A clip(r, 1-eps, 1+eps))];
    value_loss = 0.5 E[(V - R)^2] (or the max with the clipped value when clip_value is set);
    approx_kl = E[(r - 1) - log r] (the low-variance estimator cleanrl logs).
    """
    log_ratio = new_logprobs - old_logprobs
    ratio = log_ratio.exp()
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - epsilon, 1 + epsilon)
    policy_loss = masked_mean(torch.max(pg1, pg2), mask)
    if clip_value is not None:
        clipped = old_values + (new_values - old_values).clamp(-clip_value, clip_value)
        v_loss = torch.max((new_values - returns) ** 2, (clipped - returns) ** 2)
    else:
        v_loss = (new_values - returns) ** 2
    value_loss = 0.5 * masked_mean(v_loss, mask)
    entropy_mean = masked_mean(entropy, mask)
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy_mean
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
        clipfrac = masked_mean(((ratio - 1).abs() > epsilon).to(ratio.dtype), mask)
        ratio_mean = masked_mean(ratio, mask)
    return PPOLoss(
        loss, policy_loss.detach(), value_loss.detach(), entropy_mean.detach(), approx_kl, clipfrac, ratio_mean
    )


def reference_kl(ref_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(policy || reference) on sampled actions, averaged: E[exp(d) - d - 1] with
    d = ref_logprobs - logprobs (Schulman, "Approximating KL divergence", 2020: unbiased and never negative).

    Shape: ref_logprobs, logprobs [B] (the policy's keeps its gradient) -> scalar."""
    log_ratio = ref_logprobs - logprobs
    return (log_ratio.exp() - log_ratio - 1).mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over real steps (1 is perfect, 0 is no better than a constant)."""
    m = mask.bool()
    y, v = returns[m].float(), values[m].float()
    var_y = y.var(unbiased=False)
    if y.numel() < 2 or var_y.item() == 0:
        return float("nan")
    return float(1 - (y - v).var(unbiased=False) / var_y)


def anneal(start: float, end: float, progress: float, shape: str = "linear") -> float:
    """The value at `progress` in [0, 1] (clamped) of a schedule from `start` to `end`.

    linear: straight line; cosine: half a cosine (slow at both ends); exponential: geometric
    interpolation start * (end / start) ** progress (both must be > 0).
    """
    p = min(1.0, max(0.0, float(progress)))
    if shape == "linear":
        return start + (end - start) * p
    if shape == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))
    if shape == "exponential":
        if start <= 0 or end <= 0:
            raise ValueError(f"an exponential schedule needs start and end > 0, got {start} and {end}")
        return start * (end / start) ** p
    raise ValueError(f"unknown schedule shape {shape!r} (expected linear, cosine or exponential)")


def scorer_loss(final_scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Fusion scorer: mean binary cross-entropy of each trajectory's final-step logit [B] against its
    correctness [B] (bool or 0/1)."""
    return F.binary_cross_entropy_with_logits(final_scores.float(), correct.float())


def selector_loss(success_logits: torch.Tensor, correct: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """K-selector: binary cross-entropy of each question's success logit against the share of its trajectories
    that were right (one term per question). Shape: success_logits, correct, group [B] (the logit repeated
    over a question's rows; its mean over the rows is used, keeping the gradient)."""
    ids, inverse = torch.unique(group, return_inverse=True)
    count = torch.zeros(len(ids), device=correct.device).index_add_(
        0, inverse, torch.ones_like(correct, dtype=torch.float)
    )
    share = torch.zeros(len(ids), device=correct.device).index_add_(0, inverse, correct.float()) / count
    logits = torch.zeros(len(ids), device=correct.device).index_add_(0, inverse, success_logits.float()) / count
    return F.binary_cross_entropy_with_logits(logits, share)
