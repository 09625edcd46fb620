"""The compute frontier with hand-derived numbers: envelope, oracle curves, a row's comparison."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from coconav.eval.frontier import (
    apply_length_rule,
    budget_points,
    compare_row,
    compute_at,
    difficulty_oracle_curve,
    envelope_at,
    fit_length_rule,
    frontier,
    length_bin,
    length_edges,
    length_rule_curve,
    length_rule_report,
    oracle_curve,
    question_options,
    row_value,
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
    assert above["envelope_accuracy_at_compute"] == pytest.approx(0.5)
    assert above["gain_over_frontier"] == pytest.approx(0.25)
    assert above["passes_saved_at_equal_accuracy"] is None  # no fixed-budget mix reaches 0.75
    assert above["oracle_accuracy_at_compute"] == pytest.approx(0.75)
    assert above["headroom_taken"] == pytest.approx(1.0)  # (0.75 - 0.5) / (0.75 - 0.5): at the oracle
    below = compare_row(0.5, 3.0, env, oracle)
    # the envelope gives 2/3 at 3 passes, and reaches 0.5 already at 2.5 passes: half a pass wasted
    assert below["gain_over_frontier"] == pytest.approx(0.5 - 2 / 3)
    assert below["passes_saved_at_equal_accuracy"] == pytest.approx(-0.5)
    cheap = compare_row(0.3, 1.0, env)
    assert cheap["envelope_accuracy_at_compute"] is None and cheap["gain_over_frontier"] is None
    assert cheap["oracle_accuracy_at_compute"] is None and cheap["headroom_taken"] is None
    assert cheap["length_rule_accuracy_at_compute"] is None and cheap["gain_over_length_rule"] is None  # no rule


def test_old_results_keep_their_names_readable():
    old = {"frontier_accuracy_at_passes": 0.5, "oracle_accuracy_at_passes": 0.75}  # a row written before the rename
    assert (
        row_value(old, "envelope_accuracy_at_compute") == 0.5 and row_value(old, "oracle_accuracy_at_compute") == 0.75
    )
    new = compare_row(0.75, 2.5, upper_envelope(budget_points(OPTIONS)))
    assert row_value(new, "envelope_accuracy_at_compute") == pytest.approx(0.5)
    assert row_value({}, "gain_over_length_rule") is None


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


# The length rule. Validation: budgets k = 0, 1, 2 cost 2, 3, 4 passes for every question; (compute, correct).
def outcomes(*rights: tuple[int, int, int]) -> list[dict]:
    return [{k: (2.0 + k, float(r[k])) for k in range(3)} for r in rights]


EASY = [(1, 1, 1), (1, 1, 1), (0, 1, 1), (0, 1, 1)]  # difficulty 1: accuracy 1/2, 1, 1 at k = 0, 1, 2
HARD = [(0, 0, 1), (0, 1, 1), (0, 0, 1), (0, 0, 0)]  # difficulty 2: accuracy 0, 1/4, 3/4
FIT = outcomes(*EASY, *HARD)
FIT_GROUPS = [1, 1, 1, 1, 2, 2, 2, 2]


def test_the_length_rule_fits_one_budget_per_group_by_a_cost_sweep_on_validation():
    # Each group's hull of (compute, accuracy):
    #   difficulty 1: (2, 1/2) -> (3, 1), slope 1/2; k = 2 (4, 1) costs more for no more accuracy: off the hull.
    #   difficulty 2: (2, 0) -> (4, 3/4), slope 3/8; k = 1 (3, 1/4) lies under that chord (3/8 at 3): off the hull.
    # lambda above 1/2: both groups at k = 0; between 1/2 and 3/8: difficulty 1 moves to k = 1; below 3/8:
    # difficulty 2 moves to k = 2. So three tables, cheapest first.
    tables = fit_length_rule(FIT, FIT_GROUPS)
    assert tables == [{1: 0, 2: 0}, {1: 1, 2: 0}, {1: 1, 2: 2}]
    # on validation the tables are the difficulty oracle's vertices: (2, 1/4), (2.5, 1/2), (3.5, 7/8)
    assert apply_length_rule(tables, FIT, FIT_GROUPS) == approx_curve([(2.0, 0.25), (2.5, 0.5), (3.5, 0.875)])
    assert apply_length_rule(tables, FIT, FIT_GROUPS) == approx_curve(difficulty_oracle_curve(FIT, FIT_GROUPS))


def test_the_length_rule_is_applied_to_test_outcomes_and_mixed_between_tables():
    test = outcomes((1, 1, 1), (0, 1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1))
    groups = [1, 1, 2, 2, 3]  # difficulty 3 is not in validation: it takes difficulty 2's budget (the nearest)
    # table {1: 0, 2: 0}: only question 1 right, every question 2 passes -> (2, 1/5)
    # table {1: 1, 2: 0}: questions 1 and 2 right; 3, 3, 2, 2, 2 passes -> (12/5, 2/5)
    # table {1: 1, 2: 2}: questions 1, 2, 4, 5 right (3 needed k = 1, which test alone would have chosen);
    #   3, 3, 4, 4, 4 passes -> (18/5, 4/5)
    curve = length_rule_curve(FIT, FIT_GROUPS, test, groups)
    assert [(v["compute_per_question"], v["accuracy"]) for v in curve] == approx_curve(
        [(2.0, 0.2), (2.4, 0.4), (3.6, 0.8)]
    )
    assert [v["budgets"] for v in curve] == [{"1": 0, "2": 0}, {"1": 1, "2": 0}, {"1": 1, "2": 2}]
    assert curve[-1]["fit_accuracy"] == pytest.approx(0.875) and curve[-1]["fit_compute_per_question"] == 3.5
    # a coin between the last two tables at 3.0 passes: halfway from (2.4, 0.4) to (3.6, 0.8)
    row = compare_row(0.7, 3.0, upper_envelope(budget_points(test)), length_rule=curve)
    assert row["length_rule_accuracy_at_compute"] == pytest.approx(0.6)
    assert row["gain_over_length_rule"] == pytest.approx(0.1)
    assert (
        compare_row(0.7, 1.5, upper_envelope(budget_points(test)), length_rule=curve)["gain_over_length_rule"] is None
    )


def test_length_bins_are_quantiles_fixed_on_the_fit_split():
    # 8 lengths, 4 bins: the quarter quantiles are the 2nd, 4th and 6th shortest (3, 5, 7); the longest (9) is no edge
    edges = length_edges([9, 3, 5, 7, 3, 5, 7, 9], 4)
    assert edges == [3, 5, 7]
    assert [length_bin(x, edges) for x in (1, 3, 4, 5, 7, 9, 100)] == [0, 0, 1, 1, 2, 3, 3]
    # ties collapse: five questions of 5 words and one of 9 give two bins, each holding a fit question
    assert length_edges([5, 5, 5, 5, 5, 9], 4) == [5]
    assert length_edges([5, 5], 4) == [] and length_edges([], 4) == [] and length_edges([1, 2, 3], 1) == []


def test_the_length_rule_from_records_groups_by_words_when_there_is_no_difficulty():
    def rec(question, correct, k):
        return SimpleNamespace(question=question, correct=correct, forward_passes=2 + k, compute=None, difficulty=-1)

    short, long = "3 + 4 ?", "3 + 4 * 2 - 1 ?"  # 4 and 8 words: one bin each (edges [4])
    fit = {
        k: [rec(short, k == 0, k), rec(short, k == 0, k), rec(long, k == 1, k), rec(long, k == 1, k)] for k in (0, 1)
    }
    test = {k: [rec(short, True, k), rec(long, k == 1, k), rec("1 ?", True, k)] for k in (0, 1)}
    report = length_rule_report(fit, test, by_difficulty=False, num_bins=2)
    assert report["length_rule_fit"] == {"group_by": "question_words", "edges": [4], "num_questions": 4}
    # short questions: k = 0 is right and cheaper, never left; long ones: (2, 0) -> (3, 1) at slope 1.
    # test: "1 ?" (2 words) falls in the short bin; tables {0: 0, 1: 0} -> (2, 2/3), {0: 0, 1: 1} -> (7/3, 1)
    assert [(v["compute_per_question"], v["accuracy"]) for v in report["length_rule"]] == approx_curve(
        [(2.0, 2 / 3), (7 / 3, 1.0)]
    )
