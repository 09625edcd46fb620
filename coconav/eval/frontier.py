"""The compute frontier of fixed thought budgets, and the oracles an adaptive navigator is measured against.

Every curve here is a list of (compute, accuracy) vertices on one axis: ``compute_per_question``, the
mean LM forward passes per question (the rule of ``coconav.decode.generate.passes_per_question``:
the shared prefill once, each thought and answer token of every trajectory once) plus a navigator's
own arithmetic in LM-pass equivalents. All functions are pure functions of numbers.

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
* ``compare_row``: a method's row against the envelope and the oracle.

    options = question_options({k: res.questions for k, res in fixed.items()})  # per question, per k
    front = frontier(options, difficulties)
    compare_row(nav.accuracy, nav.compute_per_question, front["envelope"], front["oracle"])
"""

from __future__ import annotations

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


def compare_row(accuracy: float, compute: float, envelope: Sequence, oracle: Sequence | None = None) -> dict:
    """A row (its accuracy at its compute_per_question) against the envelope of fixed budgets and the oracle:
    frontier_accuracy_at_passes (the envelope at the row's compute; None below the cheapest budget),
    gain_over_frontier (the row's accuracy minus that), oracle_accuracy_at_passes, and
    passes_saved_at_equal_accuracy (the envelope's compute at the row's accuracy minus the row's compute;
    None when the envelope never reaches that accuracy) and headroom_taken (the gain over the envelope as a share
    of the oracle's: 1 = the oracle, 0 = the envelope; None without headroom). "passes" here means
    compute_per_question."""
    envelope = as_points(envelope)
    at = envelope_at(envelope, compute)
    needed = compute_at(envelope, accuracy)
    ceiling = envelope_at(as_points(oracle), compute) if oracle is not None else None
    room = None if at is None or ceiling is None else ceiling - at
    return {
        "frontier_accuracy_at_passes": at,
        "gain_over_frontier": None if at is None else accuracy - at,
        "oracle_accuracy_at_passes": ceiling,
        "passes_saved_at_equal_accuracy": None if needed is None else needed - compute,
        "headroom_taken": (accuracy - at) / room if room is not None and room > 1e-12 else None,
    }
