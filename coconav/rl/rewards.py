"""Rewards for navigator training: pure functions of strings and tensors.

The answer reward uses the same scoring rule as evaluation (coconav.data.scoring.score, which for
GSM8K-style answers is coconav.data.gsm8k.is_correct), so what the policy is paid for is exactly
what evaluation counts as correct. Each thought costs `thought_cost`; an optional format term pays
for an answer that follows the '### <answer>' convention at all.

Per-step rewards for PPO: -thought_cost at every step that continues thinking, and at the final
(halting) step the answer reward plus the format term minus token_cost per generated token.
"""

from __future__ import annotations

import re

import torch

from coconav.data.records import Example
from coconav.data.scoring import score

_FORMAT = re.compile(r"#{3,4}\s*\S")


def correctness(completions: list[str], examples: list[Example]) -> torch.Tensor:
    """1.0 where the completion's final answer is right, else 0.0. Shape: [B]."""
    assert len(completions) == len(examples), f"{len(completions)} completions for {len(examples)} examples"
    return torch.tensor([float(score(c, ex)) for c, ex in zip(completions, examples)])


def format_ok(completions: list[str]) -> torch.Tensor:
    """1.0 where the completion states a final answer after '###'. Shape: [B]."""
    return torch.tensor([float(bool(_FORMAT.search(c))) for c in completions])


def step_rewards(
    correct: torch.Tensor,
    formatted: torch.Tensor,
    num_thoughts: torch.Tensor,
    num_steps: int,
    thought_cost: float,
    format_coef: float = 0.0,
    new_tokens: torch.Tensor | None = None,
    token_cost: float = 0.0,
) -> torch.Tensor:
    """Per-step rewards [B, T]: -thought_cost at each continuing step t < n_b, and at step n_b
    (the halting decision, after which the answer is decoded) correct + format_coef * formatted
    - token_cost * new_tokens.

    Shape: correct, formatted, num_thoughts, new_tokens [B] -> [B, num_steps], num_steps > max(num_thoughts).
    """
    B = correct.shape[0]
    steps = torch.arange(num_steps).expand(B, num_steps)
    n = num_thoughts.long()[:, None]
    assert int(n.max()) < num_steps, f"num_steps={num_steps} must exceed the largest thought count {int(n.max())}"
    rewards = torch.where(steps < n, torch.tensor(-thought_cost), torch.tensor(0.0))
    terminal = correct + format_coef * formatted
    if new_tokens is not None:
        terminal = terminal - token_cost * new_tokens.to(correct.dtype)
    terminal = terminal[:, None]
    return torch.where(steps == n, terminal.expand(B, num_steps), rewards)


def episode_return(
    correct: torch.Tensor,
    formatted: torch.Tensor,
    num_thoughts: torch.Tensor,
    thought_cost: float,
    format_coef: float = 0.0,
    new_tokens: torch.Tensor | None = None,
    token_cost: float = 0.0,
) -> torch.Tensor:
    """The undiscounted return of each trajectory: correct + format - costs of thoughts and tokens. Shape: [B]."""
    ret = correct + format_coef * formatted - thought_cost * num_thoughts.to(correct.dtype)
    if new_tokens is not None:
        ret = ret - token_cost * new_tokens.to(correct.dtype)
    return ret
