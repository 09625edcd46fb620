"""Tests for coconav.data.tasks: the built-in arithmetic and graph tasks and make_splits.

The arithmetic answers are checked against an independent left-to-right mod-10 evaluator; the
graph questions are parsed back into a graph and checked for the ProsQA properties (DAG, the
true target reachable from the person by exactly the step path, the negative one by no path).
Run: HF_HUB_OFFLINE=1 python -m pytest tests/data/test_tasks.py -q
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest

from coconav.data.records import Example
from coconav.data.tasks import TASKS, Splits, Task, get_task, make_splits
from coconav.errors import ConfigError

STEP_RE = re.compile(r"^<< (\d) = (\d) ([+\-*]) (\d) >>$")
FACT_RE = re.compile(r"(?:Every ([a-z]+)|([A-Z][a-z]+)) is a ([a-z]+)\.")
QUERY_RE = re.compile(r" Is ([A-Z][a-z]+) a ([a-z]+) or ([a-z]+)\?$")


def evaluate_mod10(question: str) -> list[int]:
    """Reference evaluator: the value after each operation, left to right, mod 10."""
    tokens = question.split()
    assert tokens[-1] == "?"
    value, values = int(tokens[0]), []
    for op, b in zip(tokens[1:-1:2], tokens[2:-1:2]):
        value = {"+": value + int(b), "-": value - int(b), "*": value * int(b)}[op] % 10
        values.append(value)
    return values


def parse_graph(question: str) -> tuple[list[tuple[str, str]], str, str, str]:
    """Edges, person and the two options of a graph question."""
    match = QUERY_RE.search(question)
    assert match, question
    facts_text = question[: match.start()]
    edges = [(every or name, dst) for every, name, dst in FACT_RE.findall(facts_text)]
    # Every fact was parsed: one fact per sentence.
    assert len(edges) == facts_text.count("."), question
    return edges, match.group(1), match.group(2), match.group(3)


def reachable(edges: list[tuple[str, str]], start: str) -> dict[str, int]:
    """Breadth-first distances from start."""
    children: dict[str, list[str]] = {}
    for src, dst in edges:
        children.setdefault(src, []).append(dst)
    dist, frontier = {start: 0}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in children.get(node, []):
                if child not in dist:
                    dist[child] = dist[node] + 1
                    nxt.append(child)
        frontier = nxt
    return dist


def count_paths(edges: list[tuple[str, str]], start: str, end: str) -> int:
    children: dict[str, list[str]] = {}
    for src, dst in edges:
        children.setdefault(src, []).append(dst)

    def paths(node: str) -> int:
        return 1 if node == end else sum(paths(c) for c in children.get(node, []))

    return paths(start)


def is_acyclic(edges: list[tuple[str, str]]) -> bool:
    """Kahn's algorithm: every node gets removed iff there is no cycle."""
    indeg: Counter[str] = Counter(dst for _, dst in edges)
    nodes = {n for e in edges for n in e}
    ready = [n for n in nodes if indeg[n] == 0]
    removed = 0
    while ready:
        node = ready.pop()
        removed += 1
        for src, dst in edges:
            if src == node:
                indeg[dst] -= 1
                if indeg[dst] == 0:
                    ready.append(dst)
    return removed == len(nodes)


# --- registry -------------------------------------------------------------------------------


def test_registry_holds_both_tasks():
    assert set(TASKS) == {"arithmetic", "graph", "prosqa"}
    assert get_task("arithmetic").answer_type == "number"
    assert get_task("graph").answer_type == "text"
    for name, task in TASKS.items():
        assert task.name == name
        assert isinstance(task, Task)


def test_unknown_task_lists_known_names():
    with pytest.raises(ConfigError, match="arithmetic, graph"):
        get_task("gsm9k")


@pytest.mark.parametrize("name", ["arithmetic", "graph"])
def test_out_of_range_difficulty_is_config_error(name):
    task = get_task(name)
    with pytest.raises(ConfigError, match="outside the supported range"):
        task.generate(random.Random(0), task.max_supported_difficulty + 1)
    with pytest.raises(ConfigError):
        task.generate(random.Random(0), 0)


# --- arithmetic -----------------------------------------------------------------------------


def test_arithmetic_supports_difficulty_1_to_12():
    task = get_task("arithmetic")
    assert task.min_difficulty == 1 and task.max_supported_difficulty >= 12


@pytest.mark.parametrize(
    ("question", "steps", "answer"),
    [
        ("7 + 5 ?", ("<< 2 = 7 + 5 >>",), "2"),  # 12 % 10 = 2, result written first
        ("2 - 7 ?", ("<< 5 = 2 - 7 >>",), "5"),  # -5 % 10 = 5 (Python %, never negative)
        ("4 * 3 ?", ("<< 2 = 4 * 3 >>",), "2"),  # 12 % 10 = 2
    ],
)
def test_arithmetic_worked_examples(question, steps, answer):
    # d=1 has only 300 questions, so a fixed-seed search finds each one quickly.
    task, rng = get_task("arithmetic"), random.Random(0)
    for _ in range(100_000):
        example = task.generate(rng, 1)
        if example.question == question:
            break
    else:
        pytest.fail(f"{question!r} never generated")
    assert example == Example(question, steps, answer, difficulty=1, answer_type="number")


def test_arithmetic_matches_reference_evaluator():
    task, rng = get_task("arithmetic"), random.Random(1)
    for i in range(2000):
        d = 1 + i % 12
        ex = task.generate(rng, d)
        tokens = ex.question.split(" ")
        # "a0 op b ... ?": 1 + 2d tokens, single spaces, ends with "?"
        assert len(tokens) == 2 + 2 * d and tokens[-1] == "?"
        assert all(len(t) == 1 for t in tokens)
        values = evaluate_mod10(ex.question)
        assert len(ex.steps) == d and ex.difficulty == d and ex.answer_type == "number"
        prev = int(tokens[0])
        for j, step in enumerate(ex.steps):
            m = STEP_RE.match(step)
            assert m, step
            # result first, then the previous value, the j-th operator and operand
            assert (int(m[1]), int(m[2]), m[3], m[4]) == (values[j], prev, tokens[1 + 2 * j], tokens[2 + 2 * j])
            prev = values[j]
        assert ex.answer == str(values[-1])


def test_arithmetic_uses_all_operators_digits_and_answers():
    task, rng = get_task("arithmetic"), random.Random(2)
    examples = [task.generate(rng, 3) for _ in range(1000)]
    ops = Counter(t for ex in examples for t in ex.question.split()[1:-1:2])
    answers = Counter(ex.answer for ex in examples)
    assert set(ops) == {"+", "-", "*"}
    assert set(answers) == {str(d) for d in range(10)}


def test_arithmetic_vocabulary_and_space():
    task = get_task("arithmetic")
    vocab = task.vocabulary()
    assert vocab[:10] == [str(d) for d in range(10)]
    assert set(vocab[10:]) == {"+", "-", "*", "=", "<<", ">>", "?", "###"}
    # a start digit (10) times 3 operators x 10 operands per operation
    assert task.question_space_size(1) == 300
    assert task.question_space_size(2) == 9000


# --- graph ----------------------------------------------------------------------------------


def test_graph_examples_have_prosqa_properties():
    task, rng = get_task("graph"), random.Random(3)
    for i in range(400):
        d = 1 + i % 8
        ex = task.generate(rng, d)
        edges, person, x, y = parse_graph(ex.question)
        assert ex.difficulty == d and ex.answer_type == "text" and len(ex.steps) == d
        assert is_acyclic(edges)
        assert len(set(edges)) == len(edges)  # no repeated fact

        true_target = ex.answer.removeprefix(f"{person} is a ").removesuffix(".")
        assert ex.answer == f"{person} is a {true_target}."
        neg_target = y if x == true_target else x
        assert {x, y} == {true_target, neg_target} and x != y

        dist = reachable(edges, person)
        assert dist.get(true_target) == d  # the steps are a shortest path...
        assert count_paths(edges, person, true_target) == 1  # ...and the only one
        assert neg_target not in dist  # no path at all to the negative target

        # Steps: "NAME is a c1.", "Every c1 is a c2.", ..., each one a fact of the question.
        chain = [FACT_RE.fullmatch(s) for s in ex.steps]
        assert all(chain), ex.steps
        assert chain[0][2] == person and chain[-1][3] == true_target
        for step in ex.steps:
            assert step in ex.question
        for a, b in zip(chain, chain[1:]):
            assert a[3] == b[1]

        # About 2-3x as many facts as steps (at least 4 so d=1 is not trivial to read off).
        assert max(4, 2 * d) <= len(edges) <= 3 * d + 6


def test_graph_options_are_balanced_and_shuffled():
    # "Pick the option named in more facts" and "pick the first option" must not beat chance.
    task, rng = get_task("graph"), random.Random(4)
    first_is_true = 0
    for i in range(400):
        ex = task.generate(rng, 1 + i % 8)
        edges, person, x, y = parse_graph(ex.question)
        true_target = ex.answer.split()[-1].rstrip(".")
        neg_target = y if x == true_target else x
        parents = Counter(dst for _, dst in edges)
        assert parents[true_target] == parents[neg_target]
        first_is_true += x == true_target
    assert 150 < first_is_true < 250  # ~200 of 400 expected


def test_graph_words_come_from_vocabulary():
    task, rng = get_task("graph"), random.Random(5)
    vocab = set(task.vocabulary())
    assert 55 <= sum(w.endswith("pus") for w in vocab) <= 70  # the ~60 invented concepts
    for i in range(200):
        ex = task.generate(rng, 1 + i % 8)
        text = " ".join([ex.question, *ex.steps, ex.answer])
        words = re.findall(r"\w+|[^\w\s]+", text)
        assert set(words) <= vocab


def test_same_rng_seed_same_example():
    for name in TASKS:
        a = get_task(name).generate(random.Random(7), 3)
        b = get_task(name).generate(random.Random(7), 3)
        assert a == b


# --- make_splits ----------------------------------------------------------------------------


def small_splits(task: str = "arithmetic", seed: int = 0, **overrides) -> Splits:
    kwargs = dict(seed=seed, train_size=600, validation_size=60, test_size=90, min_difficulty=1, max_difficulty=3)
    kwargs.update(overrides)
    return make_splits(task, **kwargs)


@pytest.mark.parametrize("task", ["arithmetic", "graph"])
def test_splits_sizes_balance_and_disjointness(task):
    splits = small_splits(task)
    assert isinstance(splits, Splits)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (600, 60, 90)
    for split in splits:
        counts = Counter(ex.difficulty for ex in split)
        # cycled over 1..3: sizes divisible by 3 give exactly a third each
        assert counts == {1: len(split) // 3, 2: len(split) // 3, 3: len(split) // 3}
    test_q = [ex.question for ex in splits.test]
    val_q = [ex.question for ex in splits.validation]
    assert len(set(test_q)) == len(test_q) and len(set(val_q)) == len(val_q)
    assert not set(test_q) & set(val_q)
    train_q = {ex.question for ex in splits.train}
    assert not train_q & set(test_q) and not train_q & set(val_q)


def test_uneven_sizes_spread_within_one():
    splits = small_splits(train_size=100, validation_size=7, test_size=11, max_difficulty=4)
    for split in splits:
        counts = Counter(ex.difficulty for ex in split)
        assert set(counts) <= {1, 2, 3, 4}
        assert max(counts.values()) - min(counts.values()) <= 1


def test_splits_deterministic_and_seed_dependent():
    assert small_splits(seed=3) == small_splits(seed=3)
    other = small_splits(seed=4)
    base = small_splits(seed=3)
    assert base.test != other.test and base.train != other.train


def test_test_split_independent_of_train_size():
    # Test is drawn first from its own rng, so growing the training set never changes it.
    assert small_splits(train_size=10).test == small_splits(train_size=1000).test


def test_no_overlap_when_d1_space_is_nearly_used_up():
    # d=1 arithmetic has 300 questions: 150 test + 100 validation leave exactly 50 for training.
    splits = make_splits(
        "arithmetic", seed=0, train_size=2000, validation_size=100, test_size=150, min_difficulty=1, max_difficulty=1
    )
    held_out = {ex.question for ex in splits.test} | {ex.question for ex in splits.validation}
    assert len(held_out) == 250
    train_q = Counter(ex.question for ex in splits.train)
    assert not set(train_q) & held_out
    assert len(train_q) == 50  # 2000 draws over 50 questions hit every one of them
    assert max(train_q.values()) > 1  # train may repeat its own questions


def test_whole_d1_space_can_be_held_out_when_no_training_is_asked():
    splits = make_splits(
        "arithmetic", seed=1, train_size=0, validation_size=100, test_size=200, min_difficulty=1, max_difficulty=1
    )
    assert len({ex.question for ex in [*splits.test, *splits.validation]}) == 300


def test_exhausted_question_space_raises():
    with pytest.raises(ConfigError, match="only 300 distinct questions at difficulty 1"):
        make_splits("arithmetic", seed=0, train_size=0, validation_size=0, test_size=500,
                    min_difficulty=1, max_difficulty=1)  # fmt: skip
    with pytest.raises(ConfigError, match="leaving none for training"):
        make_splits("arithmetic", seed=0, train_size=10, validation_size=100, test_size=200,
                    min_difficulty=1, max_difficulty=1)  # fmt: skip


class TinyTask(Task):
    """Three possible questions and no declared space size: only the rejection cap can stop it."""

    name = "tiny"
    max_supported_difficulty = 1

    def generate(self, rng: random.Random, difficulty: int) -> Example:
        q = f"q{rng.randrange(3)}"
        return Example(q, (), "1", difficulty)

    def vocabulary(self) -> list[str]:
        return ["q0", "q1", "q2", "1"]


def test_rejection_cap_stops_infinite_loop():
    with pytest.raises(ConfigError, match="question space looks exhausted"):
        make_splits(
            TinyTask(), seed=0, train_size=0, validation_size=0, test_size=4, min_difficulty=1, max_difficulty=1
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"min_difficulty": 3, "max_difficulty": 2}, "min_difficulty"),
        ({"train_size": -1}, "train_size must be >= 0"),
        ({"test_size": 1.5}, "test_size must be an integer"),
        ({"max_difficulty": 99}, "outside the supported range"),
        ({"min_difficulty": 0}, "outside the supported range"),
        ({"task": "nope"}, "unknown task"),
    ],
)
def test_bad_split_arguments(overrides, message):
    with pytest.raises(ConfigError, match=message):
        small_splits(**overrides)


def test_100k_arithmetic_train_examples_are_fast():
    # The brief asks for well under 2 s; the bound is looser because CI CPUs are shared.
    start = time.perf_counter()
    splits = make_splits(
        "arithmetic", seed=0, train_size=100_000, validation_size=0, test_size=0, min_difficulty=1, max_difficulty=12
    )
    elapsed = time.perf_counter() - start
    assert len(splits.train) == 100_000
    assert elapsed < 4.0, f"took {elapsed:.2f} s"
