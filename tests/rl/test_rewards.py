"""Navigator rewards (coconav/rl/rewards.py): the same scoring rule as evaluation, and the per-step layout."""

from __future__ import annotations

import pytest
import torch

from coconav.data.records import Example
from coconav.data.scoring import score
from coconav.rl.rewards import correctness, episode_return, format_ok, step_rewards

NUMBER = Example(question="Tom has 3 apples and buys 4. How many?", steps=("<<3+4=7>>",), answer="7")
TEXT = Example(
    question="Is Sally a sterpus?", steps=("Sally is a wumpus.",), answer="Sally is a sterpus.", answer_type="text"
)


def test_correctness_uses_the_evaluation_scoring_rule():
    completions = ["<<3+4=7>> ### 7", "### 8", "the answer is 7", "### sally is a sterpus .", "### Sally is a wumpus."]
    examples = [NUMBER, NUMBER, NUMBER, TEXT, TEXT]
    got = correctness(completions, examples)
    # GSM8K rule: the number after the last ###; 'the answer is 7' is rule 2 of extract_answer;
    # text rule: case and the space before the period ignored
    assert got.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert got.tolist() == [float(score(c, e)) for c, e in zip(completions, examples)]
    assert got.dtype == torch.float32 and got.shape == (5,)


def test_correctness_needs_one_completion_per_example():
    with pytest.raises(AssertionError):
        correctness(["### 7"], [NUMBER, NUMBER])


def test_format_ok():
    # '###' or '####' followed by a non-space character, anywhere
    assert format_ok(["### 7", "#### 12", "7", "###", "x ###  y", "## 7"]).tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_step_rewards_layout():
    # n = [0, 2, 3], T = 5, cost .1, correct [1, 0, 1], formatted [1, 1, 0], format_coef .5:
    #   row 0 (halts at step 0): terminal 1 + .5 * 1 = 1.5 at t=0, zeros after
    #   row 1 (2 thoughts): -.1, -.1, then 0 + .5 * 1 = .5 at t=2, zeros after
    #   row 2 (3 thoughts): -.1, -.1, -.1, then 1 + .5 * 0 = 1 at t=3, then 0
    correct = torch.tensor([1.0, 0.0, 1.0])
    formatted = torch.tensor([1.0, 1.0, 0.0])
    n = torch.tensor([0, 2, 3])
    r = step_rewards(correct, formatted, n, num_steps=5, thought_cost=0.1, format_coef=0.5)
    expected = torch.tensor(
        [
            [1.5, 0.0, 0.0, 0.0, 0.0],
            [-0.1, -0.1, 0.5, 0.0, 0.0],
            [-0.1, -0.1, -0.1, 1.0, 0.0],
        ]
    )
    torch.testing.assert_close(r, expected)
    # the return of each trajectory is the row sum: 1.5, .5 - .2 = .3, 1 - .3 = .7
    ret = episode_return(correct, formatted, n, thought_cost=0.1, format_coef=0.5)
    torch.testing.assert_close(ret, torch.tensor([1.5, 0.3, 0.7]))
    torch.testing.assert_close(ret, r.sum(1))


def test_step_rewards_at_the_budget_and_without_format_term():
    # n = max = 4 with T = 5 (budget + 1 steps): four costs then the terminal reward at t=4
    r = step_rewards(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([4]), num_steps=5, thought_cost=0.25)
    # format_coef defaults to 0: terminal = correct = 1
    torch.testing.assert_close(r, torch.tensor([[-0.25, -0.25, -0.25, -0.25, 1.0]]))
    torch.testing.assert_close(
        episode_return(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([4]), 0.25), torch.tensor([0.0])
    )


def test_step_rewards_need_room_for_the_terminal_step():
    with pytest.raises(AssertionError, match="num_steps=4 must exceed"):
        step_rewards(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([4]), num_steps=4, thought_cost=0.1)


def test_episode_return_equals_row_sum_on_random_batches():
    g = torch.Generator().manual_seed(0)
    B, T = 32, 9
    correct = torch.randint(0, 2, (B,), generator=g).float()
    formatted = torch.randint(0, 2, (B,), generator=g).float()
    n = torch.randint(0, T, (B,), generator=g)
    r = step_rewards(correct, formatted, n, T, thought_cost=0.03, format_coef=0.2)
    torch.testing.assert_close(episode_return(correct, formatted, n, 0.03, 0.2), r.sum(1))
    # exactly one non-cost entry per row, at column n (the terminal step), zeros after it
    t = torch.arange(T)[None]
    assert bool((r[t > n[:, None]] == 0).all())
    torch.testing.assert_close(r[t < n[:, None]], torch.full_like(r[t < n[:, None]], -0.03))


def test_token_cost_is_paid_at_the_terminal_step():
    # n = [1, 0], new_tokens = [3, 5], thought_cost .1, token_cost .05, correct [1, 1]:
    #   row 0: -.1 at t=0, then 1 - .05 * 3 = .85 at t=1
    #   row 1: 1 - .05 * 5 = .75 at t=0
    correct = torch.tensor([1.0, 1.0])
    r = step_rewards(
        correct,
        torch.zeros(2),
        torch.tensor([1, 0]),
        3,
        thought_cost=0.1,
        new_tokens=torch.tensor([3, 5]),
        token_cost=0.05,
    )
    torch.testing.assert_close(r, torch.tensor([[-0.1, 0.85, 0.0], [0.75, 0.0, 0.0]]))
    ret = episode_return(
        correct, torch.zeros(2), torch.tensor([1, 0]), 0.1, new_tokens=torch.tensor([3, 5]), token_cost=0.05
    )
    torch.testing.assert_close(ret, torch.tensor([0.75, 0.75]))
    torch.testing.assert_close(ret, r.sum(1))
