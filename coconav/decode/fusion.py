"""Fusing a group of K trajectories into one answer: pure functions of answer keys and weights.

A *group* is the K trajectories (or K sampled CoT chains) of one question. Each trajectory's decoded
answer is reduced to a key (``coconav.data.scoring.answer_key``: the canonical number or comparable
text, None when it states no answer); fusion picks one key per group:

- ``majority``: the most frequent key (self-consistency, Wang et al. 2022, arXiv 2203.11171);
- ``value``: keys weighted by each trajectory's weight, e.g. the navigator's value estimate, shifted
  to be positive within the group (a weighted vote);
- ``scorer``: the same weighted vote with the weights of a learned scorer (softmax over the group).

Ties go to the key that appears first in the group (trajectory order), so fusion is deterministic.
Keys that are None (no answer) never win while another key has weight. ``agreement`` is the share
of the group that voted for the winner: 1.0 when every trajectory agrees, the confidence used to
abstain.

    fused = fuse(["### 7", "### 7", "### 3"], torch.tensor([0.2, 0.1, 0.9]), "number", rule="majority")
    fused.answers, fused.agreement   # ['### 7'], tensor([0.6667])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from coconav.data.scoring import answer_key

FusionRule = Literal["majority", "value", "scorer"]
FUSION_RULES: tuple[str, ...] = ("majority", "value", "scorer")


@dataclass
class Fused:
    """One fused answer per group.

    Shape: answers, keys: lists of length G; winner [G] (index into the flat batch of the winning
    key's first trajectory); agreement [G] in (0, 1]; weights [B] (each trajectory's normalised
    vote weight within its group).
    """

    answers: list[str]
    keys: list[str | None]
    winner: torch.Tensor
    agreement: torch.Tensor
    weights: torch.Tensor


def vote_weights(scores: torch.Tensor, group: torch.Tensor, rule: str) -> torch.Tensor:
    """Each trajectory's vote weight, summing to 1 within its group. Shape: scores, group [B] -> [B].

    majority: uniform; value: scores shifted so the group's minimum gets a small positive share;
    scorer: softmax of the scores over the group.
    """
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r} (expected one of {', '.join(FUSION_RULES)})")
    scores = scores.float()
    weights = torch.empty_like(scores)
    for g in group.unique():
        rows = group == g
        s = scores[rows]
        if rule == "majority":
            w = torch.ones_like(s)
        elif rule == "value":
            w = s - s.min() + 1e-3
        else:
            w = torch.softmax(s, dim=0)
        weights[rows] = w / w.sum()
    return weights


def fuse(
    completions: list[str],
    scores: torch.Tensor,
    answer_type: str | list[str],
    rule: str = "majority",
    group: torch.Tensor | None = None,
) -> Fused:
    """Fuse each group's completions into one answer by a weighted vote over answer keys.

    Shape: completions, scores, group [B]; group ids need not be contiguous (default: one group).
    ``answer_type`` is "number" or "text", or one per completion.
    """
    B = len(completions)
    if scores.shape != (B,):
        raise ValueError(f"scores must have shape [{B}], got {list(scores.shape)}")
    group = torch.zeros(B, dtype=torch.long) if group is None else group.long().cpu()
    types = [answer_type] * B if isinstance(answer_type, str) else list(answer_type)
    keys = [answer_key(c, t) for c, t in zip(completions, types)]
    weights = vote_weights(scores.cpu(), group, rule)
    answers, fused_keys, winners, agreement = [], [], [], []
    for g in _in_order(group):
        rows = [b for b in range(B) if int(group[b]) == g]
        tally: dict[str | None, float] = {}
        for b in rows:  # dict order is first appearance: ties go to the earliest trajectory
            tally[keys[b]] = tally.get(keys[b], 0.0) + float(weights[b])
        candidates = {k: v for k, v in tally.items() if k is not None} or tally
        best = max(candidates, key=candidates.__getitem__)
        first = next(b for b in rows if keys[b] == best)
        answers.append(completions[first])
        fused_keys.append(best)
        winners.append(first)
        agreement.append(sum(1 for b in rows if keys[b] == best) / len(rows))
    return Fused(
        answers=answers,
        keys=fused_keys,
        winner=torch.tensor(winners, dtype=torch.long),
        agreement=torch.tensor(agreement),
        weights=weights,
    )


def _in_order(group: torch.Tensor) -> list[int]:
    """Group ids in order of first appearance."""
    seen: dict[int, None] = {}
    for g in group.tolist():
        seen.setdefault(int(g), None)
    return list(seen)


def accuracy_coverage(correct: torch.Tensor, agreement: torch.Tensor) -> list[dict[str, float]]:
    """Accuracy on the answered questions against coverage, abstaining below each agreement level.

    Shape: correct, agreement [G] (one fused answer per question). One point per distinct agreement
    threshold A (answer when agreement >= A), from A = min (full coverage) upwards.
    """
    points = []
    for threshold in sorted(set(agreement.tolist())):
        answered = agreement >= threshold
        n = int(answered.sum())
        points.append(
            {
                "threshold": float(threshold),
                "coverage": n / len(correct),
                "accuracy": float(correct[answered].float().mean()) if n else float("nan"),
            }
        )
    return points
