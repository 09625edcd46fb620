"""Fusion of K trajectories into one answer (coconav/decode/fusion.py) on hand-made groups."""

from __future__ import annotations

import math

import pytest
import torch

from coconav.data.scoring import answer_key
from coconav.decode.fusion import accuracy_coverage, fuse, vote_weights


def test_answer_keys_compare_like_the_scorer():
    assert answer_key("### 18.0", "number") == answer_key("#### 18", "number") == "18"
    assert answer_key("### 1,800", "number") == "1800"
    assert answer_key("no number here", "number") is None
    assert answer_key("### Sally is a sterpus .", "text") == answer_key("### sally is a sterpus", "text")
    assert answer_key("###", "text") is None


def test_majority_vote_per_group():
    completions = [
        "### 7",
        "### 7.0",
        "### 3",  # group 0: 7 twice
        "### 1",
        "### 2",
        "### 2",
    ]  # group 1: 2 twice
    fused = fuse(completions, torch.zeros(6), "number", "majority", torch.tensor([0, 0, 0, 1, 1, 1]))
    assert fused.keys == ["7", "2"]
    assert fused.answers == ["### 7", "### 2"]
    assert fused.winner.tolist() == [0, 4]
    torch.testing.assert_close(fused.agreement, torch.tensor([2 / 3, 2 / 3]))
    torch.testing.assert_close(fused.weights, torch.full((6,), 1 / 3))


def test_majority_tie_goes_to_the_first_trajectory_and_no_answer_never_wins():
    assert fuse(["### 5", "### 4"], torch.zeros(2), "number").keys == ["5"]
    fused = fuse(["nothing", "none", "### 4"], torch.zeros(3), "number")
    assert fused.keys == ["4"] and fused.winner.tolist() == [2]
    assert float(fused.agreement[0]) == pytest.approx(1 / 3)
    assert fuse(["nothing", "none"], torch.zeros(2), "number").keys == [None]


def test_value_weighted_vote_can_overrule_the_majority():
    # values [.1, .1, .9]: shifted weights [1e-3, 1e-3, .801] -> the lone high-value answer wins
    completions = ["### 7", "### 7", "### 3"]
    fused = fuse(completions, torch.tensor([0.1, 0.1, 0.9]), "number", "value")
    assert fused.keys == ["3"]
    assert fuse(completions, torch.tensor([0.1, 0.1, 0.9]), "number", "majority").keys == ["7"]
    w = vote_weights(torch.tensor([0.1, 0.1, 0.9]), torch.zeros(3, dtype=torch.long), "value")
    torch.testing.assert_close(w, torch.tensor([1e-3, 1e-3, 0.801]) / 0.803)


def test_scorer_vote_is_a_softmax_over_the_group():
    scores, group = torch.tensor([0.0, math.log(3.0), 5.0]), torch.tensor([0, 0, 1])
    w = vote_weights(scores, group, "scorer")
    torch.testing.assert_close(w, torch.tensor([0.25, 0.75, 1.0]))
    fused = fuse(["### a", "### b", "### c"], scores, "text", "scorer", group)
    assert fused.keys == ["b", "c"]


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="fusion rule"):
        fuse(["### 1"], torch.zeros(1), "number", "best")


def test_accuracy_against_coverage():
    correct = torch.tensor([True, False, True, True])
    agreement = torch.tensor([1.0, 0.4, 0.6, 1.0])
    points = accuracy_coverage(correct, agreement)
    assert [p["threshold"] for p in points] == pytest.approx([0.4, 0.6, 1.0])
    assert [p["coverage"] for p in points] == [1.0, 0.75, 0.5]
    assert [p["accuracy"] for p in points] == [0.75, 1.0, 1.0]
