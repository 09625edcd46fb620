"""Built-in reasoning tasks, generated in code from a seed so the whole pipeline runs offline.

Two tasks stand in for the COCONUT paper's data sets (arXiv 2412.06769 §4):

* ``arithmetic``: chained one-digit arithmetic mod 10 with GSM8K-style calculator steps
  (``<< 2 = 7 + 5 >>``), a small stand-in for GSM8k that trains from scratch in minutes on a CPU.
* ``graph``: ProsQA-style reachability over a random DAG of made-up concepts
  ("Every wumpus is a yerpus. ... Is Tom a zorpus or bumpus?"), the paper's planning task.

Each task generates one ``Example`` from a ``random.Random`` and a difficulty (the number of
reasoning steps), and lists its whole vocabulary so a word-level tokenizer can be built with no
data (see ``coconav.data.tokenizer.task_tokenizer``). ``make_splits`` draws train, validation and
test splits with balanced difficulties and no test question ever seen in training.

Usage::

    from coconav.data.tasks import get_task, make_splits
    splits = make_splits("arithmetic", seed=0, train_size=10_000, validation_size=200,
                         test_size=500, min_difficulty=1, max_difficulty=4)
    splits.train[0].question   # e.g. "7 + 5 * 2 ?"
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

from coconav.data import prosqa
from coconav.data.records import Example
from coconav.errors import ConfigError

# A draw that keeps hitting excluded questions this many times in a row means the question
# space of that difficulty is (nearly) used up; stop instead of looping forever.
_MAX_CONSECUTIVE_REJECTIONS = 10_000

ANSWER_MARKER = "###"


class Task:
    """A reasoning task that generates examples from a seed.

    Subclasses set the class attributes and implement ``generate`` and ``vocabulary``.
    """

    name: str = ""
    answer_type: str = "number"
    min_difficulty: int = 1
    max_supported_difficulty: int = 1
    difficulty_weights: dict[int, float] | None = None
    """How often each difficulty is drawn (None: the levels are cycled evenly)."""
    difficulty_visible: bool = True
    """Whether the question shows its difficulty (its length grows with the steps): the length rule then groups
    questions by difficulty; False (ProsQA: length and steps correlate at -0.10) groups them by length only."""

    def generate(self, rng: random.Random, difficulty: int) -> Example:
        """One example with ``difficulty`` reasoning steps, using only ``rng`` for randomness."""
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        """Every word (whitespace/punctuation-separated token) the task can produce, in a fixed order."""
        raise NotImplementedError

    def question_space_size(self, difficulty: int) -> int | None:
        """How many distinct questions exist at ``difficulty``, or None when it is effectively unbounded."""
        return None

    def check_difficulty(self, difficulty: int) -> None:
        """Raise ConfigError unless ``difficulty`` is an int this task supports."""
        if isinstance(difficulty, bool) or not isinstance(difficulty, int):
            raise ConfigError(f"task {self.name!r}: difficulty must be an integer, got {difficulty!r}")
        if not self.min_difficulty <= difficulty <= self.max_supported_difficulty:
            raise ConfigError(
                f"task {self.name!r}: difficulty {difficulty} is outside the supported range "
                f"{self.min_difficulty}..{self.max_supported_difficulty}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ---------------------------------------------------------------------------------------------
# arithmetic
# ---------------------------------------------------------------------------------------------

_OPS = ("+", "-", "*")
_OP_FUNCS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}
# A move k in range(30) is an (operator, operand digit) pair: op = _OPS[k // 10], b = k % 10.
_N_MOVES = len(_OPS) * 10
_MOVES = tuple(range(_N_MOVES))


def _build_arithmetic_table() -> tuple[tuple[tuple[str, str, int], ...], ...]:
    """For every current value 0-9 and move k: (step text, question fragment, next value).

    Generation is then table look-ups only, which keeps 100k examples around a second.
    """
    table = []
    for v in range(10):
        row = []
        for k in _MOVES:
            op, b = _OPS[k // 10], k % 10
            r = _OP_FUNCS[op](v, b) % 10  # Python % keeps negatives in 0-9
            row.append((f"<< {r} = {v} {op} {b} >>", f"{op} {b}", r))
        table.append(tuple(row))
    return tuple(table)


_ARITHMETIC_TABLE = _build_arithmetic_table()


class ArithmeticTask(Task):
    """Chained arithmetic mod 10, evaluated left to right, one calculator note per operation.

    ``7 + 5 * 2 - 3 ?`` has steps ``<< 2 = 7 + 5 >>``, ``<< 4 = 2 * 2 >>``, ``<< 1 = 4 - 3 >>``
    (result first) and answer ``1``; difficulty is the number of operations.
    """

    name = "arithmetic"
    answer_type = "number"
    min_difficulty = 1
    max_supported_difficulty = 16

    def generate(self, rng: random.Random, difficulty: int) -> Example:
        self.check_difficulty(difficulty)
        # One uniform draw over the whole question space, read as mixed-radix digits (start digit
        # base 10, then one base-30 move per operation): a single rng call instead of d+1 keeps
        # generation fast, and every question is equally likely.
        index = rng.randrange(10 * _N_MOVES**difficulty)
        index, value = divmod(index, 10)
        start = value
        steps = []
        fragments = []
        for _ in range(difficulty):
            index, k = divmod(index, _N_MOVES)
            step, fragment, value = _ARITHMETIC_TABLE[value][k]
            steps.append(step)
            fragments.append(fragment)
        return Example(
            question=f"{start} {' '.join(fragments)} ?",
            steps=tuple(steps),
            answer=str(value),
            difficulty=difficulty,
            answer_type=self.answer_type,
        )

    def vocabulary(self) -> list[str]:
        return [str(d) for d in range(10)] + list(_OPS) + ["=", "<<", ">>", "?", ANSWER_MARKER]

    def question_space_size(self, difficulty: int) -> int | None:
        # a start digit, then one of 3 operators x 10 digits per operation
        return 10 * _N_MOVES**difficulty


# ---------------------------------------------------------------------------------------------
# graph (ProsQA-style)
# ---------------------------------------------------------------------------------------------

# The person names used by ProsQA.
_NAMES = (
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max",
    "Oliver", "Polly", "Rex", "Sally", "Sam", "Stella", "Tom", "Wren",
)  # fmt: skip
_ONSETS = ("b", "br", "d", "f", "g", "gr", "j", "l", "r", "sh", "st", "t", "w", "y", "z")
_RIMES = ("umpus", "erpus", "impus", "orpus")


def _build_concepts() -> tuple[str, ...]:
    """60 invented concept words in the ProsQA style (``wumpus``, ``yerpus``, ``brimpus`` ...)."""
    return tuple(onset + rime for onset in _ONSETS for rime in _RIMES)


_CONCEPTS = _build_concepts()
_GRAPH_WORDS = ("Every", "is", "a", "Is", "or", ".", "?")


class _GraphBuilder:
    """Grows one random DAG around a person -> c1 -> ... -> cd chain.

    Nodes fall in two groups: R, reachable from the person (the chain and dead-end distractors),
    and U, unreachable from the person (a second root whose chain ends in the negative target,
    plus its own distractors). Edges go R -> R, U -> U or U -> R, never R -> U, so the negative
    target can never be reached from the person. Inside each group an edge always goes to a
    higher rank, so the graph stays acyclic, and no R distractor points into the chain, so the
    chain is the only path from the person to the answer and the steps are unambiguous.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pool = rng.sample(_CONCEPTS, len(_CONCEPTS))
        self.edges: list[tuple[str, str]] = []
        self.edge_set: set[tuple[str, str]] = set()
        self.rank: dict[str, int] = {}

    def new_concept(self, rank: int) -> str | None:
        if not self.pool:
            return None
        concept = self.pool.pop()
        self.rank[concept] = rank
        return concept

    def take_concept(self, rank: int) -> str:
        """A fresh concept for the chains; the 60-word pool is far larger than any graph needs."""
        concept = self.new_concept(rank)
        if concept is None:
            raise RuntimeError("graph task: concept pool exhausted")  # unreachable for d <= 8
        return concept

    def add_edge(self, src: str, dst: str) -> bool:
        if (src, dst) in self.edge_set or src == dst:
            return False
        self.edges.append((src, dst))
        self.edge_set.add((src, dst))
        return True

    def add_path(self, root: str, nodes: Sequence[str]) -> None:
        prev = root
        for node in nodes:
            self.add_edge(prev, node)
            prev = node

    def grow(self, sources: Sequence[str], targets: list[str]) -> None:
        """Add one edge from a random source to an existing target of higher rank or a new node."""
        src = self.rng.choice(sources)
        later = [t for t in targets if self.rank[t] > self.rank[src] and (src, t) not in self.edge_set]
        if later and self.rng.random() < 0.35:
            self.add_edge(src, self.rng.choice(later))
            return
        node = self.new_concept(self.rank[src] + 1)
        if node is not None:
            targets.append(node)
            self.add_edge(src, node)


class GraphTask(Task):
    """ProsQA-style question: is the person a (reachable) X or an (unreachable) Y?

    Facts ``Every A is a B.`` and ``NAME is a A.`` in random order, then ``Is NAME a X or Y?``.
    Steps follow the one path ``NAME is a c1.``, ``Every c1 is a c2.`` ... to the answer
    ``NAME is a cd.``; difficulty is the path length d. About 2-3x as many facts as steps.
    """

    name = "graph"
    answer_type = "text"
    min_difficulty = 1
    max_supported_difficulty = 8

    def generate(self, rng: random.Random, difficulty: int) -> Example:
        self.check_difficulty(difficulty)
        d = difficulty
        g = _GraphBuilder(rng)
        person, other_name = rng.sample(_NAMES, 2)
        g.rank[person] = 0
        chain = [g.take_concept(i + 1) for i in range(d)]
        g.add_path(person, chain)

        # The negative target sits at a similar depth so depth alone does not give it away.
        neg_depth = rng.randint(max(1, d - 1), d + 1)
        neg_root = other_name if rng.random() < 0.5 else g.take_concept(0)
        g.rank[neg_root] = 0
        neg_chain = [g.take_concept(i + 1) for i in range(neg_depth)]
        g.add_path(neg_root, neg_chain)

        reach_sources = [person, *chain]
        reach_extra: list[str] = []
        unreach_nodes = [neg_root, *neg_chain]
        unreach_extra: list[str] = []
        total_facts = rng.randint(2 * d + 2, 3 * d + 2)
        for _ in range(4 * total_facts):  # bounded: a few draws may add nothing (duplicate edge)
            if len(g.edges) >= total_facts:
                break
            kind = rng.choices(("reach", "unreach", "cross"), weights=(4, 3, 2))[0]
            if kind == "reach":
                g.grow(reach_sources + reach_extra, reach_extra)
            elif kind == "unreach":
                g.grow(unreach_nodes + unreach_extra, unreach_extra)
            else:
                # U -> R edges make chain concepts reachable from elsewhere too, which is harmless:
                # nothing in R points back into U.
                g.add_edge(rng.choice(unreach_nodes + unreach_extra), rng.choice(chain + reach_extra))

        target, neg_target = chain[-1], neg_chain[-1]
        self._balance_in_degrees(g, target, neg_target, unreach_nodes + unreach_extra)

        names = {person, other_name}
        facts = [f"{src} is a {dst}." if src in names else f"Every {src} is a {dst}." for src, dst in g.edges]
        rng.shuffle(facts)
        options = [target, neg_target]
        rng.shuffle(options)
        question = " ".join(facts) + f" Is {person} a {options[0]} or {options[1]}?"
        steps = [f"{person} is a {chain[0]}."] + [f"Every {a} is a {b}." for a, b in zip(chain, chain[1:])]
        return Example(
            question=question,
            steps=tuple(steps),
            answer=f"{person} is a {target}.",
            difficulty=d,
            answer_type=self.answer_type,
        )

    @staticmethod
    def _balance_in_degrees(g: _GraphBuilder, target: str, neg_target: str, unreach: list[str]) -> None:
        """Give both answer options the same number of incoming facts.

        Cross edges (U -> R) would otherwise give the true target more parents than the negative
        one, and "pick the option named in more facts" would beat chance without any reasoning.
        """

        def parents(node: str) -> int:
            return sum(1 for _, dst in g.edges if dst == node)

        for _ in range(len(_CONCEPTS)):
            gap = parents(target) - parents(neg_target)
            if gap == 0:
                return
            if gap < 0:
                # Any U node may point into R: nothing in R leads back to U.
                free = [u for u in unreach if (u, target) not in g.edge_set]
                if not free:
                    return
                g.add_edge(g.rng.choice(free), target)
            else:
                rank = g.rank[neg_target]
                free = [u for u in unreach if g.rank[u] < rank and (u, neg_target) not in g.edge_set]
                source = g.rng.choice(free) if free else g.new_concept(0)  # a new root always fits
                if source is None:
                    return
                if not free:
                    unreach.append(source)
                g.add_edge(source, neg_target)

    def vocabulary(self) -> list[str]:
        return [*_GRAPH_WORDS, ANSWER_MARKER, *_NAMES, *_CONCEPTS]


# ---------------------------------------------------------------------------------------------
# prosqa (the paper's files' distribution)
# ---------------------------------------------------------------------------------------------


class ProsQATask(Task):
    """ProsQA-shaped questions (coconav.data.prosqa): the real files' vocabulary, graph shape and wording,
    path lengths drawn as in the validation file (3-6 steps: 41/44/12/2%). Train on these, score on the
    real ``valid.json`` and ``test.json`` (``data.validation`` and ``data.test``)."""

    name = "prosqa"
    answer_type = "text"
    min_difficulty = 1
    max_supported_difficulty = 8
    difficulty_weights = {k: float(v) for k, v in prosqa.STEP_WEIGHTS.items()}
    difficulty_visible = False

    def generate(self, rng: random.Random, difficulty: int) -> Example:
        self.check_difficulty(difficulty)
        return prosqa.generate_prosqa(rng, difficulty)

    def vocabulary(self) -> list[str]:
        return [*prosqa.FRAME_WORDS, ANSWER_MARKER, *prosqa.NAMES, *prosqa.CONCEPTS]


# ---------------------------------------------------------------------------------------------
# registry and splits
# ---------------------------------------------------------------------------------------------

TASKS: dict[str, Task] = {task.name: task for task in (ArithmeticTask(), GraphTask(), ProsQATask())}


def get_task(name: str) -> Task:
    """The built-in task called ``name``; ConfigError listing the known names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


class Splits(NamedTuple):
    """The three splits of a generated data set."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]


def _check_int(name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _level_counts(size: int, levels: Sequence[int]) -> dict[int, int]:
    """How many of ``size`` examples fall on each level when the levels are cycled in order."""
    per, extra = divmod(size, len(levels))
    return {level: per + (1 if i < extra else 0) for i, level in enumerate(levels)}


def _check_capacity(task: Task, levels: Sequence[int], sizes: dict[str, int]) -> None:
    """Fail fast when test+validation cannot be unique, or leave no question for training."""
    held_out = _level_counts(sizes["test"], levels)
    validation = _level_counts(sizes["validation"], levels)
    train = _level_counts(sizes["train"], levels)
    for level in levels:
        space = task.question_space_size(level)
        if space is None:
            continue
        need = held_out[level] + validation[level]
        if need > space:
            raise ConfigError(
                f"task {task.name!r} has only {space} distinct questions at difficulty {level}, "
                f"but test+validation need {need} unique ones there; lower test_size/validation_size "
                f"or raise min_difficulty"
            )
        if train[level] and need >= space:
            raise ConfigError(
                f"task {task.name!r}: test+validation use all {space} questions at difficulty {level}, "
                f"leaving none for training; lower test_size/validation_size or raise min_difficulty"
            )


def _draw(
    task: Task,
    rng: random.Random,
    size: int,
    levels: Sequence[int],
    excluded: set[str],
    *,
    unique: bool,
    split: str,
) -> list[Example]:
    """``size`` examples cycling over ``levels``, skipping questions in ``excluded``.

    With ``unique`` each accepted question is added to ``excluded`` (so held-out splits have no
    repeats and later splits avoid them); without it ``excluded`` is only read.
    """
    generate = task.generate
    n_levels = len(levels)
    weights = task.difficulty_weights
    level_weights = [weights.get(level, 0.0) for level in levels] if weights else None
    if level_weights is not None and not any(level_weights):
        raise ConfigError(f"task {task.name!r} draws no question at difficulties {levels[0]}..{levels[-1]}")
    out: list[Example] = []
    append = out.append
    for i in range(size):
        level = rng.choices(levels, level_weights)[0] if level_weights else levels[i % n_levels]
        example = generate(rng, level)
        rejections = 0
        while example.question in excluded:
            rejections += 1
            if rejections >= _MAX_CONSECUTIVE_REJECTIONS:
                raise ConfigError(
                    f"task {task.name!r}: could not find a new {split} question at difficulty {level} "
                    f"after {rejections} tries; its question space looks exhausted, lower the split "
                    f"sizes or raise min_difficulty"
                )
            example = generate(rng, level)
        if unique:
            excluded.add(example.question)
        append(example)
    return out


def make_splits(
    task: Task | str,
    *,
    seed: int,
    train_size: int,
    validation_size: int,
    test_size: int,
    min_difficulty: int,
    max_difficulty: int,
) -> Splits:
    """Generate train/validation/test splits whose difficulties cycle evenly over min..max.

    Test is drawn first (rng seeded by ``f"{seed}-test"``), then validation, then train, each from
    its own string-seeded rng, so the test split does not change when train_size does. Test and
    validation questions are unique and disjoint; train never contains a test or validation
    question but may repeat its own. Raises ConfigError for bad arguments or an exhausted space.
    """
    task_obj = get_task(task) if isinstance(task, str) else task
    _check_int("seed", seed)
    sizes = {
        "train": _check_int("train_size", train_size, 0),
        "validation": _check_int("validation_size", validation_size, 0),
        "test": _check_int("test_size", test_size, 0),
    }
    _check_int("min_difficulty", min_difficulty)
    _check_int("max_difficulty", max_difficulty)
    if min_difficulty > max_difficulty:
        raise ConfigError(f"min_difficulty ({min_difficulty}) must be <= max_difficulty ({max_difficulty})")
    task_obj.check_difficulty(min_difficulty)
    task_obj.check_difficulty(max_difficulty)
    levels = list(range(min_difficulty, max_difficulty + 1))
    _check_capacity(task_obj, levels, sizes)

    # random.Random(str) seeds from a SHA-512 of the string: stable across runs, unlike hash().
    held_out: set[str] = set()
    test = _draw(task_obj, random.Random(f"{seed}-test"), sizes["test"], levels, held_out, unique=True, split="test")
    validation = _draw(
        task_obj, random.Random(f"{seed}-validation"), sizes["validation"], levels, held_out,
        unique=True, split="validation",
    )  # fmt: skip
    train = _draw(
        task_obj, random.Random(f"{seed}-train"), sizes["train"], levels, held_out, unique=False, split="train"
    )
    return Splits(train=train, validation=validation, test=test)
