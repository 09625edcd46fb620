"""The halting head's supervised cold start (coconav/rl/halting.py): targets and loss by hand."""

from __future__ import annotations

import math

import pytest
import torch

from coconav.rl.halting import halting_loss, halting_targets


def test_targets_take_the_most_rewarding_count_and_ties_go_to_more_thoughts():
    # Three questions, k = 0..3 thoughts; passes fall as thoughts replace written steps.
    passes = torch.tensor([[20.0, 16.0, 12.0, 8.0]] * 3)
    correct = torch.tensor(
        [
            [1, 1, 1, 1],  # right everywhere: 3 thoughts is cheapest (reward 1 - 0.08)
            [1, 1, 0, 0],  # right up to 1 thought: 1 thought (1 - 0.16) beats 0 thoughts (1 - 0.20)
            [0, 0, 0, 0],  # never right: the fewest passes, 3 thoughts (-0.08)
        ],
        dtype=torch.bool,
    )
    assert halting_targets(correct, passes, cost=0.01).tolist() == [3, 1, 3]
    # cost 0: every right count ties at reward 1, and the tie goes to the larger k
    assert halting_targets(correct, passes, cost=0.0).tolist() == [3, 1, 3]
    # min_thoughts 2 rules out k < 2: the second question can no longer be right, so its cheapest count wins
    assert halting_targets(correct, passes, cost=0.01, min_thoughts=2).tolist() == [3, 3, 3]


def test_targets_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        halting_targets(torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4), 0.01)


def test_loss_continues_before_the_target_halts_at_it_and_ignores_forced_steps():
    # logits 0 everywhere: each decided step costs log 2. Row 0 (target 2): steps 0, 1 continue and 2 halts (3 steps);
    # row 1 (target 4 = max_thoughts, halting forced there): steps 0..3 continue (4 steps). Mean = log 2.
    logits = torch.zeros(2, 5)
    assert halting_loss(logits, torch.tensor([2, 4]), min_thoughts=0, max_thoughts=4).item() == pytest.approx(
        math.log(2)
    )
    # A confident, right head: -8 before the target, +8 at it -> the loss is log(1 + e^-8) per step
    right = torch.tensor([[-8.0, -8.0, 8.0, 0.0, 0.0]])
    assert halting_loss(right, torch.tensor([2]), 0, 4).item() == pytest.approx(math.log1p(math.exp(-8)), rel=1e-3)
    # Steps after the target (here 3, 4 set to +-100) and before min_thoughts do not count
    noisy = torch.tensor([[100.0, -8.0, 8.0, -100.0, 100.0]])
    assert halting_loss(noisy, torch.tensor([2]), min_thoughts=1, max_thoughts=4).item() == pytest.approx(
        math.log1p(math.exp(-8)), rel=1e-3
    )


def test_loss_gradient_raises_the_halt_logit_at_the_target_only():
    logits = torch.zeros(1, 4, requires_grad=True)
    halting_loss(logits, torch.tensor([1]), 0, 3).backward()
    grad = logits.grad[0]
    assert grad[0] > 0 and grad[1] < 0  # push step 0 towards continue, step 1 towards halt
    assert grad[2] == 0 and grad[3] == 0  # after the target: no signal
