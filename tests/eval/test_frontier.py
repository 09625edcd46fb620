"""The compute frontier with hand-derived numbers: envelope, oracle curves, a row's comparison."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from coconav.eval.frontier import (
    budget_points,
    compare_row,
    compute_at,
    difficulty_oracle_curve,
    envelope_at,
    frontier,
    oracle_curve,
    question_options,
    upper_envelope,
)

# Three questions, budgets k = 0, 1, 2 costing 2, 3, 4 passes: (compute, correct)
OPTIONS = [
    {0: (2.0, 1.0), 1: (3.0, 1.0), 2: (4.0, 0.0)},  # right without thinking (thinking more breaks it)
    {0: (2.0, 0.0), 1: (3.0, 1.0), 2: (4.0, 1.0)},  # needs one thought
    {0: (2.0, 0.0), 1: (3.0, 0.0), 2: (4.0, 1.0)},  # needs two thoughts
]
DIFFICULTIES = [1, 1, 2]


def approx_curve(curve):
    return [pytest.approx(p) for p in curve]


def test_the_envelope_drops_a_dominated_point_and_is_flat_at_the_top():
    points = [(1.0, 0.2), (2.0, 0.3), (3.0, 0.6), (4.0, 0.5)]
    # (2, 0.3) lies under the chord from (1, 0.2) to (3, 0.6) (0.4 at x = 2): a coin between k = 1 and k = 3
    # beats it; (4, 0.5) costs more than (3, 0.6) for less accuracy
    env = upper_envelope(points)
    assert env == approx_curve([(1.0, 0.2), (3.0, 0.6)])
    assert envelope_at(env, 2.0) == pytest.approx(0.4)  # halfway along the chord
    assert envelope_at(env, 0.5) is None  # cheaper than the cheapest budget: nothing is achievable
    assert envelope_at(env, 10.0) == pytest.approx(0.6)  # flat beyond the most accurate budget
    assert compute_at(env, 0.5) == pytest.approx(2.5)  # 1 + 2 * (0.5 - 0.2) / (0.6 - 0.2)
    assert compute_at(env, 0.1) == pytest.approx(1.0)  # the cheapest budget already does better
    assert compute_at(env, 0.7) is None  # no mix of budgets reaches 0.7


def test_budget_points_and_their_envelope():
    points = budget_points(OPTIONS)
    # k = 0: only question 1 right; k = 1: questions 1 and 2; k = 2: questions 2 and 3
    assert [(p["num_thoughts"], p["compute_per_question"], p["accuracy"]) for p in points] == [
        (0, 2.0, pytest.approx(1 / 3)),
        (1, 3.0, pytest.approx(2 / 3)),
        (2, 4.0, pytest.approx(2 / 3)),
    ]
    # k = 2 is no more accurate than k = 1 and costs more: off the envelope
    assert upper_envelope(points) == approx_curve([(2.0, 1 / 3), (3.0, 2 / 3)])


def test_the_oracle_curve_on_three_questions():
    # each question's own hull: q1 stays at (2, 1); q2 (2, 0) -> (3, 1), slope 1; q3 (2, 0) -> (4, 1), slope 1/2.
    # Start: everyone at k = 0, (2, 1/3). Falling lambda crosses q2's segment first (slope 1: +1/3 compute,
    # +1/3 accuracy), then q3's (slope 1/2: +2/3 compute, +1/3 accuracy).
    oracle = oracle_curve(OPTIONS)
    assert oracle == approx_curve([(2.0, 1 / 3), (7 / 3, 2 / 3), (3.0, 1.0)])
    assert envelope_at(oracle, 3.0) == pytest.approx(1.0)  # every question right at the cost of k = 1
    assert envelope_at(oracle, 2.5) == pytest.approx(2 / 3 + 0.5 * (2.5 - 7 / 3))  # on q3's segment, slope 1/2


def test_difficulty_oracle_lies_between_the_envelope_and_the_oracle():
    # difficulty 1 (q1, q2; weight 2/3): means (2, 1/2), (3, 1), (4, 1/2): hull (2, 1/2) -> (3, 1), slope 1/2.
    # difficulty 2 (q3; weight 1/3): (2, 0), (3, 0), (4, 1): hull (2, 0) -> (4, 1), slope 1/2.
    # Start (2, 2/3 * 1/2) = (2, 1/3); both segments have slope 1/2: one straight line to (10/3, 1).
    diff = difficulty_oracle_curve(OPTIONS, DIFFICULTIES)
    assert diff == approx_curve([(2.0, 1 / 3), (10 / 3, 1.0)])
    env, oracle = upper_envelope(budget_points(OPTIONS)), oracle_curve(OPTIONS)
    assert envelope_at(diff, 3.0) == pytest.approx(1 / 3 + 0.5 * 1.0)  # 5/6
    for x in (2.0, 2.25, 2.5, 3.0, 3.5, 4.0):
        assert envelope_at(env, x) <= envelope_at(diff, x) + 1e-9 <= envelope_at(oracle, x) + 2e-9, x


def test_gain_over_frontier_has_the_sign_of_beating_it():
    env, oracle = upper_envelope(budget_points(OPTIONS)), oracle_curve(OPTIONS)
    above = compare_row(0.75, 2.5, env, oracle)
    # the envelope at 2.5 is halfway from (2, 1/3) to (3, 2/3): 1/2; 0.75 is above every budget's accuracy
    assert above["frontier_accuracy_at_passes"] == pytest.approx(0.5)
    assert above["gain_over_frontier"] == pytest.approx(0.25)
    assert above["passes_saved_at_equal_accuracy"] is None  # no fixed-budget mix reaches 0.75
    assert above["oracle_accuracy_at_passes"] == pytest.approx(0.75)
    assert above["headroom_taken"] == pytest.approx(1.0)  # (0.75 - 0.5) / (0.75 - 0.5): at the oracle
    below = compare_row(0.5, 3.0, env, oracle)
    # the envelope gives 2/3 at 3 passes, and reaches 0.5 already at 2.5 passes: half a pass wasted
    assert below["gain_over_frontier"] == pytest.approx(0.5 - 2 / 3)
    assert below["passes_saved_at_equal_accuracy"] == pytest.approx(-0.5)
    cheap = compare_row(0.3, 1.0, env)
    assert cheap["frontier_accuracy_at_passes"] is None and cheap["gain_over_frontier"] is None
    assert cheap["oracle_accuracy_at_passes"] is None and cheap["headroom_taken"] is None


def test_options_from_records_and_the_whole_frontier():
    def rec(correct, passes, compute=None):
        return SimpleNamespace(correct=correct, forward_passes=passes, compute=compute)

    records = {
        0: [rec(True, 2), rec(False, 2), rec(False, 2)],
        1: [rec(True, 3), rec(True, 3), rec(False, 3)],
        2: [rec(False, 4), rec(True, 4), rec(True, 4, compute=4.0)],
    }
    options = question_options(records)
    assert options == OPTIONS  # compute falls back to the forward passes
    front = frontier(options, DIFFICULTIES)
    assert set(front) == {"points", "envelope", "oracle", "difficulty_oracle"}
    assert front["envelope"][-1] == {"compute_per_question": 3.0, "accuracy": pytest.approx(2 / 3)}
    assert "difficulty_oracle" not in frontier(options)
