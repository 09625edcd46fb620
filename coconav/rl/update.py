"""One PPO update of the navigator: old log-probs by replay, advantages, then clipped epochs over minibatches.

The loop of cleanrl's ppo.py (Huang et al. 2022, "The 37 Implementation Details of PPO"), with its names, on
latent rollouts (coconav.rl.rollout): the batch's `logprobs` and `values` come from a no-grad replay of the
stored actions on the first epoch's minibatches (so the first `ratio` is exactly 1); `advantages` and
`returns` are GAE (ppo.advantage=gae) or group-relative (ppo.advantage=group, GRPO); each epoch reshuffles
the batch into minibatches and steps the clipped surrogate + value loss - entropy bonus (coconav.rl.ppo),
stopping early when `approx_kl` passes ppo.target_kl. Beside PPO, on the same minibatches: the KL to the
frozen reference under ppo.train_lm, and the fusion scorer's and K-selector's losses (detached features,
their own gradient clip, so they never change the policy or the value head).

Several processes: `policy` is the DDP-wrapped PolicyReplay (coconav.rl.policy), so gradients are averaged
over the ranks; the KL early stop is decided on the ranks' mean, and scale_rewards=batch divides by the std
over the global batch.

    stats = ppo_update(policy, optimizer, accelerator, traj, rewards, cfg.ppo, temperature=1.0, seed=0)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from accelerate import Accelerator

from coconav.config import PPOConfig
from coconav.distributed import gather_global, mean_over_ranks
from coconav.model.latent_lm import LatentLM
from coconav.model.navigator import Navigator
from coconav.rl.policy import head_parameters, reference_policy
from coconav.rl.ppo import (
    Advantages,
    PPOLoss,
    compute_gae,
    explained_variance,
    group_advantages,
    normalize_advantages,
    ppo_loss,
    reference_kl,
    scorer_loss,
    selector_loss,
)
from coconav.rl.rewards import correctness
from coconav.rl.rollout import Trajectories, replay

# the diagnostics of every update, each averaged over its minibatches (ratio_first: the first one only)
STATS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clipfrac",
    "ratio_first",
    "kl_ref",
    "scorer_loss",
    "selector_loss",
)


class OldPolicy(NamedTuple):
    """The batch as the rollout's policy saw it, replayed without gradients. Shape: [B, T] each."""

    logprobs: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor  # real steps (bool)


def replay_old(
    lm: LatentLM,
    navigator: Navigator,
    traj: Trajectories,
    minibatches: list[torch.Tensor],
    temperature: float,
    answer_in_policy: bool,
) -> OldPolicy:
    """Log-probs, values and step masks of every trajectory, replayed minibatch by minibatch (the first epoch's
    minibatches: its first ratio is then exactly 1)."""
    B, T, device = len(traj), navigator.cfg.max_thoughts + 1, lm.device
    logprobs, values = torch.zeros(B, T, device=device), torch.zeros(B, T, device=device)
    mask = torch.zeros(B, T, dtype=torch.bool, device=device)
    with torch.no_grad():
        for mb_inds in minibatches:
            rep = replay(lm, navigator, traj, mb_inds, temperature, answer_in_policy)
            i = mb_inds.to(device)
            logprobs[i], values[i], mask[i] = rep.logprobs, rep.values, rep.masks.valid
    return OldPolicy(logprobs, values, mask)


def advantages_for(
    cfg: PPOConfig,
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    group: torch.Tensor,
    accelerator: Accelerator | None = None,
) -> Advantages:
    """GAE (ppo.advantage=gae), or group-relative advantages with the value head's targets the reward-to-go
    (GAE with lambda 1). scale_rewards=batch divides by the std over the global batch (all ranks).

    Shape: rewards, values, mask [B, T]; group [B] (each trajectory's question) -> Advantages [B, T]."""
    if cfg.advantage == "gae":
        return compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
    returns = rewards.sum(1)
    scale = "none" if cfg.scale_rewards == "batch" else cfg.scale_rewards
    advantages = group_advantages(returns, group.to(returns.device), mask, scale).advantages
    if cfg.scale_rewards == "batch":
        advantages = advantages / (gather_global(accelerator, returns.float()).std(unbiased=False) + 1e-4)
    return Advantages(advantages=advantages, returns=compute_gae(rewards, values, mask, cfg.gamma, 1.0).returns)


def reference_logprobs(
    lm: LatentLM,
    navigator: Navigator,
    reference_adapter: str | None,
    traj: Trajectories,
    mb_inds: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Log-probabilities of the sampled answers under the frozen reference (train_lm only). Shape: [b].

    Computed before the policy's replay of the minibatch: switching adapters must not happen between
    a forward pass and its backward."""
    with torch.no_grad(), reference_policy(lm, reference_adapter):
        return replay(lm, navigator, traj, mb_inds, temperature).answer_logprobs


def ppo_update(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    traj: Trajectories,
    rewards: torch.Tensor,
    cfg: PPOConfig,
    temperature: float,
    seed: int,
    correct: torch.Tensor | None = None,
) -> dict[str, float]:
    """Old log-probs by replay, advantages (GAE or group), then epochs of clipped updates over shuffled minibatches
    (with the KL to the reference under train_lm, and the fusion scorer's and K-selector's losses when their
    coefficients are > 0); returns the update's ppo/* diagnostics.

    `policy`: the PolicyReplay (DDP-wrapped with several ranks; it names the KL reference) and `optimizer` the one
    prepared with it by `accelerator`; `seed` seeds the minibatch shuffles; `correct` [B]: each trajectory's answer
    right (None: scored here)."""
    inner = accelerator.unwrap_model(policy)
    lm, navigator = inner.lm, inner.navigator
    B, device = len(traj), lm.device
    lm.eval()  # no dropout: replays must reproduce the rollout's distribution (first ratios exactly 1)
    g = torch.Generator().manual_seed(seed)
    minibatches = list(torch.randperm(B, generator=g).chunk(cfg.num_minibatches))
    # 1. the batch's log-probs and values under the rollout's policy
    old = replay_old(lm, navigator, traj, minibatches, temperature, cfg.answer_in_policy)
    # 2. advantages
    advantages, returns = advantages_for(cfg, rewards.to(device), old.values, old.mask, traj.group, accelerator)
    correct = (correctness(traj.texts, traj.examples) if correct is None else correct).to(device)  # [B], 0/1
    group = traj.group.to(device)
    train_scorer, train_selector = cfg.scorer_coef > 0, cfg.selector_coef > 0
    stats: dict[str, list[float]] = {k: [] for k in STATS}
    heads = {id(p) for p in head_parameters(navigator)}
    # the policy's (and value head's) gradient clip ignores the heads: their losses cannot rescale its step
    params = [p for group_ in optimizer.param_groups for p in group_["params"] if id(p) not in heads]
    head_params = [p for group_ in optimizer.param_groups for p in group_["params"] if id(p) in heads]
    epochs_done = 0
    # 3. PPO epochs over shuffled minibatches, with early stop on approx KL
    for epoch in range(cfg.ppo_epochs):
        if epoch > 0:
            minibatches = list(torch.randperm(B, generator=g).chunk(cfg.num_minibatches))
        stop = False
        for i, mb_inds in enumerate(minibatches):
            mb = mb_inds.to(device)
            ref = None
            if cfg.train_lm and cfg.beta > 0:
                ref = reference_logprobs(lm, navigator, inner.reference_adapter, traj, mb_inds, temperature)
            new = policy(traj, mb_inds, temperature, cfg.answer_in_policy, train_scorer, train_selector)
            mb_advantages = advantages[mb]
            if cfg.norm_adv and cfg.advantage == "gae":
                mb_advantages = normalize_advantages(mb_advantages, old.mask[mb])
            out = ppo_loss(
                new.logprobs,
                old.logprobs[mb],
                mb_advantages,
                new.values,
                old.values[mb],
                returns[mb],
                new.entropy,
                old.mask[mb],
                cfg.epsilon,
                cfg.vf_coef,
                cfg.ent_coef,
                cfg.clip_value,
            )
            loss = out.loss
            if ref is not None:
                kl = reference_kl(ref, new.answer_logprobs)
                loss = loss + cfg.beta * kl
                stats["kl_ref"].append(float(kl.detach()))
            if new.final_scores is not None:
                s_loss = scorer_loss(new.final_scores, correct[mb])
                stats["scorer_loss"].append(float(s_loss.detach()))
                if train_scorer:
                    loss = loss + cfg.scorer_coef * s_loss
            if new.success_logits is not None:
                k_loss = selector_loss(new.success_logits, correct[mb], group[mb])
                stats["selector_loss"].append(float(k_loss.detach()))
                if train_selector:
                    loss = loss + cfg.selector_coef * k_loss
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)  # DDP averages the gradients over the ranks here
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            if head_params and (train_scorer or train_selector):
                accelerator.clip_grad_norm_(head_params, cfg.max_grad_norm)
            optimizer.step()
            record(stats, out, first=epoch == 0 and i == 0)
            if cfg.target_kl is not None and mean_over_ranks(accelerator, out.approx_kl) > cfg.target_kl:
                stop = True  # all ranks stop together
                break
        epochs_done = epoch + 1
        if stop:
            break
    return summarize(stats, accelerator, explained_variance(old.values, returns, old.mask), epochs_done)


def record(stats: dict[str, list[float]], out: PPOLoss, first: bool) -> None:
    """Append a minibatch's PPO diagnostics (its mean ratio too when it is the update's first)."""
    if first:
        stats["ratio_first"].append(float(out.ratio_mean))
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
        stats[key].append(float(getattr(out, key)))


def summarize(
    stats: dict[str, list[float]], accelerator: Accelerator, explained_var: float, epochs: int
) -> dict[str, float]:
    """The update's ppo/* metrics: each diagnostic's mean over its minibatches (the scorer's and selector's losses
    over all ranks, each having seen its own slice), explained variance and the epochs run."""
    summary = {f"ppo/{k}": sum(v) / len(v) for k, v in stats.items() if v}
    for key in ("ppo/scorer_loss", "ppo/selector_loss"):
        if key in summary:
            summary[key] = mean_over_ranks(accelerator, torch.tensor(summary[key]))
    summary["ppo/explained_variance"] = explained_var
    summary["ppo/epochs"] = epochs
    return summary
