"""The compute rule: forward passes per question, the shared prefill counted once."""

from __future__ import annotations

import torch

from coconav.decode.generate import passes_per_question


def test_the_prefill_is_counted_once_per_question():
    # question 0 has three trajectories doing 2, 3 and 4 thoughts + tokens; question 1 one doing 5:
    # 1 + (2 + 3 + 4) = 10 (not 3 prefills + 9 = 12) and 1 + 5 = 6
    work = torch.tensor([2, 3, 4, 5])
    group = torch.tensor([0, 0, 0, 1])
    assert passes_per_question(work, group, 2).tolist() == [10.0, 6.0]
    # a question without trajectories still pays nothing but its prefill
    assert passes_per_question(work, group, 3).tolist() == [10.0, 6.0, 1.0]
