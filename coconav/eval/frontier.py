"""The compute frontier of fixed thought budgets, and the oracles an adaptive navigator is measured against.

Every curve here is a list of (compute, accuracy) vertices on one axis: ``compute_per_question``, the
mean LM forward passes per question (the rule of ``coconav.decode.generate.passes_per_question``:
the shared prefill once, each thought and answer token of every trajectory once) plus a navigator's
own arithmetic in LM-pass equivalents. All functions are pure functions of numbers (and, for the length rule's
bins, of the questions' words).

* ``budget_points``: one point per fixed thought budget k (mean compute, accuracy).
* ``upper_envelope``: the upper concave envelope of those points: what a per-question coin between
  two adjacent budgets reaches. ``envelope_at(curve, x)`` is the best accuracy at mean compute <= x:
  None below the cheapest vertex (nothing is achievable for less), flat after the most accurate one
  (spending more never has to cost accuracy). ``compute_at(curve, accuracy)`` inverts it.
* ``oracle_curve``: each question picks its k knowing which k answer it correctly (the upper bound
  of any per-question halting rule on these budgets); ``difficulty_oracle_curve``: the choice may
  depend only on the question's difficulty. Both are the Lagrangian sweep: for lambda from +inf down
  to 0 each group picks argmax (accuracy - lambda * compute); ``lagrangian_curve`` computes the
  sweep's breakpoints exactly (each group's own concave hull, segments merged by slope).
* ``length_rule_report`` (the frontier's ``length_rule``): the baseline a user writes in one line, "this many
  thoughts for questions of this kind": one fixed budget per group (the difficulty where the examples state it,
  else quantile bins of the question's word count, the bins fixed on the fit split). The budgets are fitted on the
  validation split by the same Lagrangian sweep (``fit_length_rule``: one table of budgets per price lambda) and
  applied to the test split's per-question outcomes (``apply_length_rule``); a coin between two neighbouring
  tables reaches any compute in between.
* ``compare_row``: a method's row against the envelope, the oracle and the length rule.

    options = question_options({k: res.questions for k, res in fixed.items()})  # per question, per k
    front = frontier(options, difficulties)
    front.update(length_rule_report(validation_records_by_k, test_records_by_k, by_difficulty=True))
    compare_row(nav.accuracy, nav.compute_per_question, front["envelope"], front["oracle"], front["length_rule"])
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import pairwise

Point = tuple[float, float]  # (compute, accuracy)
Options = Mapping[int, Point]  # one question's (or group's) k -> (compute, accuracy or correct 0/1)
_EPS = 1e-9


def record_compute(record) -> float:
    """A per-question record's compute: its `compute` when set, else its forward passes."""
    compute = getattr(record, "compute", None)
    return float(record.forward_passes if compute is None else compute)


def question_options(records_by_k: Mapping[int, Sequence]) -> list[dict[int, Point]]:
    """Per question (in the records' order, the same questions for every k), per k: (compute, correct 0/1).
    Records are QuestionResult-like (correct, forward_passes, optional compute)."""
    sizes = {k: len(rs) for k, rs in records_by_k.items()}
    assert len(set(sizes.values())) <= 1, f"every budget needs the same questions, got sizes {sizes}"
    n = next(iter(sizes.values()), 0)
    return [
        {k: (record_compute(rs[i]), float(rs[i].correct)) for k, rs in sorted(records_by_k.items())} for i in range(n)
    ]


def budget_points(options: Sequence[Options]) -> list[dict]:
    """One point per fixed budget k: the mean compute and the accuracy over the questions, in order of k."""
    n = max(len(options), 1)
    ks = sorted(options[0]) if options else []
    return [
        {
            "num_thoughts": k,
            "compute_per_question": sum(o[k][0] for o in options) / n,
            "accuracy": sum(o[k][1] for o in options) / n,
        }
        for k in ks
    ]


def _hull(points: Sequence[Point]) -> list[Point]:
    """The upper concave hull of points, from the cheapest (the most accurate of those) to the most accurate
    (the cheapest of those): the vertices of the best accuracy at compute <= x."""
    best: dict[float, float] = {}
    for x, y in points:
        best[x] = max(y, best.get(x, float("-inf")))
    top = max(best.values(), default=None)
    hull: list[Point] = []
    for x, y in sorted(best.items()):
        if hull and y <= hull[-1][1] + _EPS:
            continue  # costlier and no more accurate: never on the envelope of "at most x"
        # drop the last vertex while it lies on or below the chord from the one before it to (x, y)
        while (
            len(hull) >= 2
            and ((hull[-1][0] - hull[-2][0]) * (y - hull[-2][1]) - (hull[-1][1] - hull[-2][1]) * (x - hull[-2][0]))
            >= -_EPS
        ):
            hull.pop()
        hull.append((x, y))
        if y >= top - _EPS:
            break
    return hull


def upper_envelope(points: Sequence[dict] | Sequence[Point]) -> list[Point]:
    """The upper concave envelope of (compute, accuracy) points (dicts from budget_points or pairs)."""
    pairs = [
        (p["compute_per_question"], p["accuracy"]) if isinstance(p, dict) else (float(p[0]), float(p[1]))
        for p in points
    ]
    return _hull(pairs)


def envelope_at(curve: Sequence[Point], x: float) -> float | None:
    """The curve's best accuracy at mean compute <= x: linear between vertices, None below the first vertex,
    the last vertex's accuracy beyond it."""
    if not curve or x < curve[0][0] - _EPS:
        return None
    for (x0, y0), (x1, y1) in pairwise(curve):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x > x0 else y0
    return curve[-1][1]


def compute_at(curve: Sequence[Point], accuracy: float) -> float | None:
    """The least mean compute at which the curve reaches `accuracy` (None when it never does)."""
    if not curve or accuracy > curve[-1][1] + _EPS:
        return None
    if accuracy <= curve[0][1]:
        return curve[0][0]
    for (x0, y0), (x1, y1) in pairwise(curve):
        if accuracy <= y1 + _EPS:
            return x0 + (x1 - x0) * (accuracy - y0) / (y1 - y0)
    return curve[-1][0]


def lagrangian_curve(groups: Sequence[tuple[float, Options]]) -> list[Point]:
    """The concave hull of what choosing one option (or a mix) per group achieves, as the Lagrangian sweep.

    groups: (weight, {k: (compute, accuracy)}) with weights summing to 1; the totals are sum weight * option.
    For a price lambda each group picks argmax accuracy - lambda * compute; as lambda falls from +inf to 0 a
    group moves along its own concave hull, crossing a segment where lambda equals the segment's slope. So
    the curve starts at every group's cheapest option and adds all groups' segments in decreasing slope.
    """
    start_x = start_y = 0.0
    segments: list[tuple[float, float, float]] = []  # (slope, weighted dx, weighted dy)
    for weight, options in groups:
        hull = _hull(list(options.values()))
        start_x, start_y = start_x + weight * hull[0][0], start_y + weight * hull[0][1]
        for (x0, y0), (x1, y1) in pairwise(hull):
            segments.append(((y1 - y0) / (x1 - x0), weight * (x1 - x0), weight * (y1 - y0)))
    curve = [(start_x, start_y)]
    for _, dx, dy in sorted(segments, key=lambda s: -s[0]):
        curve.append((curve[-1][0] + dx, curve[-1][1] + dy))
    return _hull(curve)  # merges collinear vertices (equal slopes)


def oracle_curve(options: Sequence[Options]) -> list[Point]:
    """Per question, the k chosen knowing which k answer it correctly: each question is its own group."""
    n = len(options)
    return lagrangian_curve([(1 / n, o) for o in options]) if n else []


def difficulty_oracle_curve(options: Sequence[Options], difficulties: Sequence[int]) -> list[Point]:
    """The choice of k may depend only on the difficulty: a group per difficulty, its options its questions'
    means at each k, weighted by its share of the questions."""
    assert len(options) == len(difficulties), f"{len(options)} questions but {len(difficulties)} difficulties"
    by: dict[int, list[Options]] = defaultdict(list)
    for o, d in zip(options, difficulties):
        by[d].append(o)
    n = len(options)
    groups = [
        (len(qs) / n, {p["num_thoughts"]: (p["compute_per_question"], p["accuracy"]) for p in budget_points(qs)})
        for _, qs in sorted(by.items())
    ]
    return lagrangian_curve(groups) if n else []


def frontier(options: Sequence[Options], difficulties: Sequence[int] | None = None) -> dict:
    """The fixed budgets' points, their envelope, the oracle curve and (with difficulties) the difficulty
    oracle, JSON-ready (curves as lists of {compute_per_question, accuracy})."""
    points = budget_points(options)
    out = {"points": points, "envelope": as_json(upper_envelope(points)), "oracle": as_json(oracle_curve(options))}
    if difficulties is not None:
        out["difficulty_oracle"] = as_json(difficulty_oracle_curve(options, difficulties))
    return out


def as_json(curve: Sequence[Point]) -> list[dict]:
    return [{"compute_per_question": x, "accuracy": y} for x, y in curve]


def as_points(curve: Sequence[dict] | Sequence[Point]) -> list[Point]:
    """A curve from as_json (or already pairs) as (compute, accuracy) pairs."""
    return [(c["compute_per_question"], c["accuracy"]) if isinstance(c, dict) else (c[0], c[1]) for c in curve]


def question_words(question: str) -> int:
    """A question's length for the length rule's bins: its whitespace-separated words."""
    return len(question.split())


def length_edges(lengths: Sequence[int], num_bins: int = 4) -> list[int]:
    """Bin edges of question length, fixed on the fit split: its num_bins-quantiles (each one of its lengths), without
    repeats and without its longest length, so every bin holds at least one of its questions. A length falls in bin
    ``length_bin(length, edges)``: bin j holds edges[j - 1] < length <= edges[j] (the last bin: past the last
    edge)."""
    assert num_bins >= 1, f"num_bins must be at least 1, got {num_bins}"
    ordered = sorted(lengths)
    if not ordered:
        return []
    n = len(ordered)
    cuts = {ordered[math.ceil(i * n / num_bins) - 1] for i in range(1, num_bins)}
    return sorted(c for c in cuts if c < ordered[-1])


def length_bin(length: float, edges: Sequence[float]) -> int:
    """The bin of a length under `edges` (length_edges)."""
    return bisect_left(edges, length)


def hull_budgets(options: Options) -> list[int]:
    """The budgets k on the upper concave hull of one group's {k: (compute, accuracy)}, cheapest first (equal points:
    the smallest k)."""
    label: dict[tuple[float, float], int] = {}
    for k, point in sorted(options.items()):
        label.setdefault(tuple(point), k)
    return [label[point] for point in _hull(list(options.values()))]


def fit_length_rule(options: Sequence[Options], groups: Sequence[int]) -> list[dict[int, int]]:
    """The length rule's budget tables {group: k}, fitted on these questions (the validation split), one per point of
    the Lagrangian sweep, cheapest first.

    At price lambda each group picks the fixed k maximising its questions' accuracy - lambda * compute. As lambda falls
    from +inf to 0 a group moves one vertex along its own concave hull where lambda crosses that segment's slope, so
    the first table holds every group's cheapest hull budget and each next table moves one group one vertex on."""
    assert len(options) == len(groups), f"{len(options)} questions but {len(groups)} groups"
    by: dict[int, list[Options]] = defaultdict(list)
    for o, g in zip(options, groups):
        by[g].append(o)
    table: dict[int, int] = {}
    steps: list[tuple[float, int, int]] = []  # (slope, group, the k it moves to)
    for g, questions in sorted(by.items()):
        means = {p["num_thoughts"]: (p["compute_per_question"], p["accuracy"]) for p in budget_points(questions)}
        ks = hull_budgets(means)
        table[g] = ks[0]
        for k0, k1 in pairwise(ks):
            (x0, y0), (x1, y1) = means[k0], means[k1]
            steps.append(((y1 - y0) / (x1 - x0), g, k1))
    tables = [dict(table)] if table else []
    # a group's own slopes fall strictly along its hull, so this order keeps each group's moves in order
    for _, g, k in sorted(steps, key=lambda s: (-s[0], s[1])):
        table[g] = k
        tables.append(dict(table))
    return tables


def apply_length_rule(
    tables: Sequence[Mapping[int, int]], options: Sequence[Options], groups: Sequence[int]
) -> list[Point]:
    """Each budget table applied to these questions' outcomes: its (mean compute, accuracy). A question of a group the
    tables do not know takes the nearest known group's budget (on a tie the larger group's)."""
    assert len(options) == len(groups), f"{len(options)} questions but {len(groups)} groups"
    if not tables or not options:
        return []
    known = sorted(tables[0])
    nearest = {g: min(known, key=lambda f: (abs(f - g), -f)) for g in set(groups)}
    n = len(options)
    points = []
    for table in tables:
        chosen = [o[table[nearest[g]]] for o, g in zip(options, groups)]
        points.append((sum(c for c, _ in chosen) / n, sum(a for _, a in chosen) / n))
    return points


def length_rule_curve(
    fit_options: Sequence[Options], fit_groups: Sequence[int], options: Sequence[Options], groups: Sequence[int]
) -> list[dict]:
    """The length rule fitted on (fit_options, fit_groups) and applied to (options, groups): one vertex per budget
    table, JSON-ready ({compute_per_question, accuracy} on the applied questions, the table as `budgets` {group: k},
    fit_compute_per_question and fit_accuracy on the fit questions), sorted by compute. Between two vertices the rule
    is a per-question coin between their tables: ``envelope_at(as_points(curve), x)`` is its accuracy at compute x."""
    tables = fit_length_rule(fit_options, fit_groups)
    fitted = apply_length_rule(tables, fit_options, fit_groups)
    applied = apply_length_rule(tables, options, groups)
    vertices = [
        {
            "compute_per_question": x,
            "accuracy": y,
            "budgets": {str(g): k for g, k in sorted(table.items())},
            "fit_compute_per_question": fx,
            "fit_accuracy": fy,
        }
        for table, (x, y), (fx, fy) in zip(tables, applied, fitted)
    ]
    return sorted(vertices, key=lambda v: v["compute_per_question"])


def length_rule_report(
    fit_records: Mapping[int, Sequence], records: Mapping[int, Sequence], by_difficulty: bool, num_bins: int = 4
) -> dict:
    """The length rule from per-question records (QuestionResult-like: correct, forward_passes, optional compute,
    difficulty, question) of the same fixed budgets on the fit split and on the split it is applied to:
    {"length_rule": length_rule_curve(...), "length_rule_fit": {group_by, edges (word-count bins only), num_questions}}.
    Groups: the difficulty with `by_difficulty`, else `num_bins` quantile bins of the question's word count, the bins
    fixed on the fit split."""
    assert sorted(fit_records) == sorted(records), f"budgets differ: fit {sorted(fit_records)}, {sorted(records)}"
    fit_first, first = next(iter(fit_records.values()), []), next(iter(records.values()), [])
    if by_difficulty:
        fit_groups, groups = [r.difficulty for r in fit_first], [r.difficulty for r in first]
        how: dict = {"group_by": "difficulty"}
    else:
        edges = length_edges([question_words(r.question) for r in fit_first], num_bins)
        fit_groups = [length_bin(question_words(r.question), edges) for r in fit_first]
        groups = [length_bin(question_words(r.question), edges) for r in first]
        how = {"group_by": "question_words", "edges": edges}
    curve = length_rule_curve(question_options(fit_records), fit_groups, question_options(records), groups)
    return {"length_rule": curve, "length_rule_fit": {**how, "num_questions": len(fit_first)}}


def compare_row(
    accuracy: float,
    compute: float,
    envelope: Sequence,
    oracle: Sequence | None = None,
    length_rule: Sequence | None = None,
) -> dict:
    """A row (its accuracy at its compute_per_question) against the envelope of fixed budgets, the oracle and the
    length rule, all read at the row's compute_per_question:
    envelope_accuracy_at_compute (None below the cheapest budget), gain_over_frontier (the row's accuracy minus that),
    oracle_accuracy_at_compute, length_rule_accuracy_at_compute and gain_over_length_rule (None below the rule's
    cheapest table or without a rule), passes_saved_at_equal_accuracy (the envelope's compute at the row's accuracy
    minus the row's compute; None when the envelope never reaches that accuracy; "passes" here means
    compute_per_question) and headroom_taken (the gain over the envelope as a share of the oracle's: 1 = the oracle,
    0 = the envelope; None without headroom). Results written before these names read
    frontier_accuracy_at_passes and oracle_accuracy_at_passes for the two "at_compute" values (``LEGACY_KEYS``)."""
    envelope = as_points(envelope)
    at = envelope_at(envelope, compute)
    needed = compute_at(envelope, accuracy)
    ceiling = envelope_at(as_points(oracle), compute) if oracle is not None else None
    rule = envelope_at(as_points(length_rule), compute) if length_rule else None
    room = None if at is None or ceiling is None else ceiling - at
    return {
        "envelope_accuracy_at_compute": at,
        "gain_over_frontier": None if at is None else accuracy - at,
        "oracle_accuracy_at_compute": ceiling,
        "length_rule_accuracy_at_compute": rule,
        "gain_over_length_rule": None if rule is None else accuracy - rule,
        "passes_saved_at_equal_accuracy": None if needed is None else needed - compute,
        "headroom_taken": (accuracy - at) / room if room is not None and room > 1e-12 else None,
    }


# compare_row's keys under the names results.json files written before them used
LEGACY_KEYS = {
    "envelope_accuracy_at_compute": "frontier_accuracy_at_passes",
    "oracle_accuracy_at_compute": "oracle_accuracy_at_passes",
}


def row_value(row: Mapping, key: str):
    """A compare_row value of a method row from results.json, under its current name or the one it had before
    (LEGACY_KEYS); None when the row has neither."""
    if key in row:
        return row[key]
    return row.get(LEGACY_KEYS.get(key, key))
