"""Supervised halting targets: the cold start of the navigator's halting head before PPO.

Each question is answered once at every fixed thought count k; its target is the k with the most
reward (right minus the cost of its forward passes), and the halting head learns, as a discrete hazard,
to continue before that step and to halt at it (SLPO's supervised cold start of the stop gate,
arXiv 2607.19691). Tensors in, tensors out.

    targets = halting_targets(correct, passes, cost=0.01, min_thoughts=0)   # [N, L+1] each -> [N]
    loss = halting_loss(out.halt_logits, targets, min_thoughts=0, max_thoughts=L)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def halting_targets(correct: torch.Tensor, passes: torch.Tensor, cost: float, min_thoughts: int = 0) -> torch.Tensor:
    """The best thought count of each question: argmax over k >= min_thoughts of correct_k - cost * passes_k,
    ties to the larger k (more thinking in latent space at equal reward). Shape: correct, passes [N, L+1]
    (column k = k thoughts) -> [N] long."""
    if correct.shape != passes.shape or correct.dim() != 2:
        raise ValueError(
            f"correct and passes must both be [N, L+1], got {list(correct.shape)} and {list(passes.shape)}"
        )
    reward = correct.float() - cost * passes.float()  # [N, L+1]
    reward[:, :min_thoughts] = float("-inf")
    flipped = reward.flip(-1)  # argmax takes the first maximum: flipping it makes that the largest k
    return reward.shape[1] - 1 - flipped.argmax(-1)


def halting_loss(
    halt_logits: torch.Tensor, targets: torch.Tensor, min_thoughts: int, max_thoughts: int
) -> torch.Tensor:
    """Binary cross-entropy of the halting decisions against `targets`: continue (0) at the steps before a
    question's target, halt (1) at it; steps where no decision is taken (before min_thoughts, at or after
    max_thoughts where halting is forced) and after the target are masked out. Shape: halt_logits [N, T]
    (step t = after h_t), targets [N] -> scalar (mean over the decided steps)."""
    t = torch.arange(halt_logits.shape[1], device=halt_logits.device)[None]  # [1, T]
    target = targets.to(halt_logits.device)[:, None]  # [N, 1]
    decide = (t >= min_thoughts) & (t < max_thoughts) & (t <= target)
    labels = (t == target).to(halt_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(halt_logits, labels, reduction="none")
    return (bce * decide).sum() / decide.sum().clamp(min=1)
