"""ProsQA-shaped questions, generated: training data for the COCONUT paper's planning benchmark.

ProsQA (arXiv 2412.06769 §4, github.com/facebookresearch/coconut ``data/prosqa_*.json``) asks whether
a person is one of two concepts, given about 36 facts that form a random DAG:
``Every shumpus is a rempus. ... Tom is a terpus. ... Is Tom a lempus or scrompus?``. The answer is
``Tom is a lempus.``, the steps are one shortest path from the person to it. This module draws new
questions with the real files' distribution, so that a model can be trained from scratch on as many
as it needs and scored on the real validation and test files:

* the vocabulary: ProsQA's 17 names and 38 concepts, and its sentence frames;
* the shape: the person's reachable region grown in BFS layers (the answer is a sink at depth
  ``steps``; extra edges inside a layer or back to an earlier one make longer alternative paths,
  as in 81% of real questions), a second person whose region holds the negative option (a sink at
  depth 1-4, never reachable from the asker), a few edges from that region into the asker's, and
  extra people with one or two facts;
* the order: facts shuffled, options in random order.

Every number below was fitted on the real *validation* file only (300 questions); the test file is
never read to fit anything. ``docs/results/prosqa.md`` compares each statistic with the validation
file (``python benchmarks/prosqa_generator.py``). Usage::

    import random
    from coconav.data.prosqa import generate_prosqa
    example = generate_prosqa(random.Random(0), steps=4)
    example.meta["edges"], example.meta["root"], example.meta["target"], example.meta["neg_target"]
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coconav.data.records import Example
from coconav.errors import DataError

NAMES: tuple[str, ...] = (
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max",
    "Oliver", "Polly", "Rex", "Sally", "Sam", "Stella", "Tom", "Wren",
)  # fmt: skip
CONCEPTS: tuple[str, ...] = (
    "bompus", "boompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus", "grimpus",
    "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus", "numpus", "quimpus",
    "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus", "terpus", "timpus", "tumpus",
    "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus", "zhorpus", "zumpus",
)  # fmt: skip
FRAME_WORDS: tuple[str, ...] = ("Every", "is", "a", "Is", "or", ".", "?")

# Fitted on the validation file (counts out of 300 questions unless said otherwise).
STEP_WEIGHTS: dict[int, int] = {3: 124, 4: 133, 5: 36, 6: 7}
"""Path length (steps) of a question."""
ROOT_CHILDREN: dict[int, int] = {1: 30, 2: 92, 3: 95, 4: 50, 5: 23, 6: 8, 7: 2}
"""Facts about the asker (``Tom is a X.``): the size of BFS layer 1."""
LAYER_MEANS: dict[int, tuple[float, ...]] = {
    3: (4.84, 3.15),
    4: (4.19, 3.62, 1.97),
    5: (3.72, 3.31, 2.33, 1.42),
    6: (4.0, 3.0, 2.57, 1.43, 1.14),
}
"""Mean size of BFS layers 2..steps of the asker's region, by steps (layer `steps` holds the answer)."""
BEYOND_MEAN: dict[int, float] = {3: 0.3, 4: 0.13, 5: 0.03, 6: 0.0}
"""Mean number of reachable nodes deeper than the answer."""
IN_DEGREE: dict[int, int] = {1: 1793, 2: 1141, 3: 531, 4: 180, 5: 54, 6: 11, 7: 2}
"""Parents of a reachable non-root node (counts over all such nodes)."""
EXTRA_PARENT_SHIFT: dict[int, int] = {1: 516, 0: 1315, -1: 478, -2: 118, -3: 15}
"""Depth of the child minus depth of an extra parent: +1 the layer above (a second shortest route), 0 the child's
own layer, -1 one layer deeper... (every such edge keeps each node's BFS depth; counts of extra edges)."""
ANSWER_PARENTS: dict[int, int] = {1: 186, 2: 84, 3: 24, 4: 6}
"""Facts naming the answer as their object (its parents, before facts from the second region)."""
NEGATIVE_PARENTS: dict[int, int] = {1: 100, 2: 117, 3: 55, 4: 17, 5: 8, 6: 2, 7: 1}
"""Parents of the negative option."""
NEG_DEPTH: dict[int, int] = {1: 64, 2: 160, 3: 71, 4: 5}
"""Depth of the negative option below the second person."""
NEG_LAYER_MEANS: dict[int, tuple[float, ...]] = {
    1: (3.55, 2.66, 0.89),
    2: (2.84, 3.59, 0.87),
    3: (2.73, 3.55, 2.48, 0.3),
    4: (2.0, 3.4, 2.6, 1.8),
}
"""Mean size of the second person's BFS layers 1.. by the negative option's depth."""
NEG_EXTRA_PARENT_SHIFT: dict[int, int] = {1: 164, 0: 1052, -1: 305, -2: 36}
"""As EXTRA_PARENT_SHIFT, inside the second person's region."""
NEG_EXTRA_PARENTS: float = 0.62
"""Mean extra parents per node of the second person's region (13.8 edges over 8.5 non-person nodes)."""
CROSS_EDGES: dict[int, int] = {0: 80, 1: 57, 2: 74, 3: 37, 4: 23, 5: 16, 6: 8, 7: 5}
"""Facts from the second person's region into the asker's."""
EXTRA_PEOPLE: dict[int, int] = {0: 191, 1: 82, 2: 21, 3: 5, 4: 1}
"""People besides the asker and the second person."""
EXTRA_PERSON_FACTS: dict[int, int] = {1: 123, 2: 18, 3: 2}
"""Facts about each extra person."""
EXTRA_PERSON_TARGETS: dict[str, int] = {"asker": 111, "own": 40, "second": 14}
"""Where an extra person's facts point: into the asker's region, to a concept of their own, or into the
second person's region."""


_TABLES: dict[int, tuple[dict[Any, float], list[Any], list[float]]] = {}


def _draw(rng: random.Random, weights: dict[Any, float]) -> Any:
    """A key of `weights` drawn with probability proportional to its value (cumulative sums cached per table)."""
    table = _TABLES.get(id(weights))
    if table is None or table[0] is not weights:
        keys = list(weights)
        table = _TABLES[id(weights)] = (weights, keys, list(itertools.accumulate(weights[k] for k in keys)))
    _, keys, cumulative = table
    return keys[bisect.bisect(cumulative, rng.random() * cumulative[-1])]


def _poisson_at_least_one(rng: random.Random, mean: float) -> int:
    """1 + Poisson(mean - 1): a layer size with the fitted mean that is never empty."""
    lam, n, p = max(mean - 1.0, 0.0), 0, 1.0
    limit = pow(2.718281828459045, -lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return 1 + n
        n += 1


def _poisson(rng: random.Random, mean: float) -> int:
    return _poisson_at_least_one(rng, mean + 1.0) - 1


class _Region:
    """One person's region grown in BFS layers: every node of layer i has a parent in layer i-1, and
    extra parents only from layers >= i-1 (so every node keeps depth i); acyclic by a check."""

    def __init__(self, rng: random.Random, edges: set[tuple[int, int]], children: dict[int, list[int]]) -> None:
        self.rng = rng
        self.edges = edges
        self.children = children
        self.layers: list[list[int]] = []

    def reaches(self, src: int, dst: int) -> bool:
        stack, seen = [src], {src}
        while stack:
            u = stack.pop()
            if u == dst:
                return True
            for v in self.children.get(u, ()):
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        return False

    def add(self, src: int, dst: int) -> bool:
        if src == dst or (src, dst) in self.edges or self.reaches(dst, src):
            return False
        self.edges.add((src, dst))
        self.children.setdefault(src, []).append(dst)
        return True

    def grow(
        self,
        root: int,
        sizes: Sequence[int],
        new_node,
        extra_parents,
        sink_parents,
        shifts: dict[int, int],
        sinks: set[int],
        sink_depth: int,
    ) -> int:
        """Layers of `sizes` below `root`, each node with one parent above and `extra_parents()` more; the first
        node of layer `sink_depth` is an answer option (a sink, added to `sinks`) and is returned."""
        self.layers = [[root]]
        sink = -1
        for depth, size in enumerate(sizes, start=1):
            parents = [u for u in self.layers[-1] if u not in sinks]
            if not parents:
                break
            layer = [new_node() for _ in range(size)]
            if depth == sink_depth:
                sink = layer[0]
                sinks.add(sink)
            for node in layer:
                self.add(self.rng.choice(parents), node)
            self.layers.append(layer)
        for depth in range(1, len(self.layers)):
            for node in self.layers[depth]:
                wanted = sink_parents() - 1 if node == sink else extra_parents()
                for _ in range(wanted):
                    self.add_parent(node, depth, shifts, sinks)
        return sink

    def add_parent(self, node: int, depth: int, shifts: dict[int, int], sinks: set[int], tries: int = 2) -> bool:
        """One more parent for `node` (at `depth`) from a layer drawn from `shifts`; False if none fits."""
        for _ in range(tries):
            source_depth = depth - _draw(self.rng, shifts)  # shift +1: the layer above; 0: own layer; ...
            if not 0 <= source_depth < len(self.layers):
                continue
            candidates = [u for u in self.layers[source_depth] if u not in sinks and u != node]
            if candidates and self.add(self.rng.choice(candidates), node):
                return True
        return False


def generate_prosqa(rng: random.Random, steps: int) -> Example:
    """One ProsQA-shaped question whose answer is `steps` facts from the asker (3-6 in the real files)."""
    if not 1 <= steps <= 8:
        raise DataError(f"ProsQA questions have 1-8 steps here, got {steps}")
    concepts = rng.sample(CONCEPTS, len(CONCEPTS))
    people = rng.sample(NAMES, len(NAMES))
    symbols: list[str] = []

    def new(word_pool: list[str]):
        def make() -> int:
            symbols.append(word_pool.pop())
            return len(symbols) - 1

        return make

    new_concept, new_person = new(concepts), new(people)
    edges: set[tuple[int, int]] = set()
    children: dict[int, list[int]] = {}
    sinks: set[int] = set()

    # The asker's region: layer 1 = facts about the asker, the answer alone a sink at layer `steps`.
    asker = new_person()
    means = LAYER_MEANS.get(steps) or (4.0,) * (steps - 1)
    sizes = [_draw(rng, ROOT_CHILDREN)] + [_poisson_at_least_one(rng, m) for m in means[: steps - 1]]
    beyond = _poisson(rng, BEYOND_MEAN.get(steps, 0.0))
    if beyond:
        sizes.append(beyond)
    mine = _Region(rng, edges, children)
    budget = min(sum(sizes), len(concepts) - 8)  # leave concepts for the second region
    sizes = _fit(sizes, budget)
    extra = lambda: _draw(rng, IN_DEGREE) - 1  # noqa: E731
    answer_parents = lambda: _draw(rng, ANSWER_PARENTS)  # noqa: E731
    target = mine.grow(asker, sizes, new_concept, extra, answer_parents, EXTRA_PARENT_SHIFT, sinks, sink_depth=steps)

    # The second person's region, holding the negative option (a sink, never reachable from the asker).
    second = new_person()
    neg_depth = _draw(rng, NEG_DEPTH)
    neg_means = NEG_LAYER_MEANS[neg_depth]
    neg_sizes = _fit([_poisson_at_least_one(rng, m) for m in neg_means], max(len(concepts) - 2, neg_depth))
    theirs = _Region(rng, edges, children)
    neg_extra = lambda: _poisson(rng, NEG_EXTRA_PARENTS)  # noqa: E731
    neg_parents = lambda: _draw(rng, NEGATIVE_PARENTS)  # noqa: E731
    neg_target = theirs.grow(
        second, neg_sizes, new_concept, neg_extra, neg_parents, NEG_EXTRA_PARENT_SHIFT, sinks, neg_depth
    )
    reach_mine = {v for layer in mine.layers for v in layer}
    theirs_nodes = [v for layer in theirs.layers for v in layer if v != second]

    # Facts from the second region into the asker's (never the other way: the negative option stays unreachable).
    for _ in range(_draw(rng, CROSS_EDGES)):
        src = rng.choice([v for v in theirs_nodes if v not in sinks] or [second])
        dst = rng.choice([v for v in reach_mine if v != asker])
        mine.add(src, dst)

    # Extra people with a fact or two.
    for _ in range(_draw(rng, EXTRA_PEOPLE)):
        person = new_person()
        for _ in range(_draw(rng, EXTRA_PERSON_FACTS)):
            where = _draw(rng, EXTRA_PERSON_TARGETS)
            if where == "own" and concepts:
                mine.add(person, new_concept())
            elif where == "second":
                mine.add(person, rng.choice(theirs_nodes))
            else:
                mine.add(person, rng.choice([v for v in reach_mine if v != asker]))

    return _render(rng, symbols, edges, asker, target, neg_target)


def _fit(sizes: list[int], budget: int) -> list[int]:
    """Shrink the largest layers until the sizes sum to at most `budget` (the 38 concepts run out)."""
    sizes = list(sizes)
    while sum(sizes) > budget and max(sizes) > 1:
        sizes[sizes.index(max(sizes))] -= 1
    return sizes


def _render(
    rng: random.Random, symbols: list[str], edges: set[tuple[int, int]], asker: int, target: int, neg_target: int
) -> Example:
    """The question text, steps (one shortest path, chosen at random) and the ProsQA record fields."""
    is_person = [word in NAMES for word in symbols]
    facts = [
        f"{symbols[a]} is a {symbols[b]}." if is_person[a] else f"Every {symbols[a]} is a {symbols[b]}."
        for a, b in edges
    ]
    facts.sort()  # a set's order is not seeded; sort, then shuffle with the seeded rng
    rng.shuffle(facts)
    options = [symbols[target], symbols[neg_target]]
    rng.shuffle(options)
    question = " ".join(facts) + f" Is {symbols[asker]} a {options[0]} or {options[1]}?"
    path = Graph(tuple(symbols), tuple(sorted(edges)), asker, target, neg_target).shortest_path(target, rng) or []
    steps = [f"{symbols[path[0]]} is a {symbols[path[1]]}."]
    steps += [f"Every {symbols[a]} is a {symbols[b]}." for a, b in zip(path[1:], path[2:])]
    meta = {"idx_to_symbol": symbols, "edges": [list(e) for e in sorted(edges)], "root": asker, "target": target}
    meta["neg_target"] = neg_target
    return Example(
        question=question,
        steps=tuple(steps),
        answer=f"{symbols[asker]} is a {symbols[target]}.",
        difficulty=len(steps),
        answer_type="text",
        meta=meta,
    )


GRAPH_KEYS = ("idx_to_symbol", "edges", "root", "target")
_WORD_RE = re.compile(r"[^\W\d_][\w-]*")


@dataclass(frozen=True)
class Graph:
    """A question's graph: node words, directed edges (index pairs), the root and the two answer options."""

    symbols: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    root: int
    target: int
    neg_target: int | None = None

    def children(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.symbols]
        for src, dst in self.edges:
            out[src].append(dst)
        return out

    def distances(self) -> list[int | None]:
        """Each node's shortest distance from the root along the edges (BFS); None where it cannot be reached."""
        dist: list[int | None] = [None] * len(self.symbols)
        dist[self.root] = 0
        children, queue = self.children(), deque([self.root])
        while queue:
            node = queue.popleft()
            for child in children[node]:
                if dist[child] is None:
                    dist[child] = dist[node] + 1
                    queue.append(child)
        return dist

    def shortest_path(self, dst: int, rng: random.Random | None = None) -> list[int] | None:
        """A shortest path root -> dst (None when dst cannot be reached): the first one BFS finds, or with `rng`
        one drawn at random among them (each hop back picks one of the node's parents one layer up)."""
        children = self.children()
        parents: dict[int, list[int]] = {self.root: []}
        layer = [self.root]
        while layer and dst not in parents:
            found: list[int] = []
            for node in layer:
                for child in children[node]:
                    if child not in parents:
                        parents[child] = [node]
                        found.append(child)
                    elif child in found:
                        parents[child].append(node)
            layer = found
        if dst not in parents:
            return None
        path = [dst]
        while path[-1] != self.root:
            options = parents[path[-1]]
            path.append(rng.choice(options) if rng is not None else options[0])
        return path[::-1]

    def gold_path(self, steps: Sequence[str] = ()) -> list[int]:
        """The reasoning path: the root, then the node each step ends on ("Every terpus is a brimpus." ->
        brimpus), when every hop is an edge and it ends at the target; else the BFS path root -> target."""
        index = {s: i for i, s in enumerate(self.symbols)}
        path = [self.root]
        for step in steps:
            words = [w for w in _WORD_RE.findall(step) if w in index]
            if not words:
                break
            path.append(index[words[-1]])
        edges = set(self.edges)
        if len(path) == len(steps) + 1 > 1 and path[-1] == self.target and all(e in edges for e in zip(path, path[1:])):
            return path
        return self.shortest_path(self.target) or [self.root]

    def to_json(self, steps: Sequence[str] = ()) -> dict:
        """The page's view: nodes, edges, root, target, neg_target, gold path and each node's depth (BFS)."""
        return {
            "nodes": list(self.symbols),
            "edges": [list(e) for e in self.edges],
            "root": self.root,
            "target": self.target,
            "neg_target": self.neg_target,
            "path": self.gold_path(steps),
            "depth": self.distances(),
        }


def _node(value: object, name: str, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise DataError(f"graph field {name!r} must be a node index in 0..{n - 1}, got {str(value)[:40]!r}")
    return value


def parse_graph(meta: dict) -> Graph | None:
    """The graph in a record's extra fields (None when it has none). Raises DataError, one line, when malformed."""
    if "idx_to_symbol" not in meta and "edges" not in meta:
        return None
    missing = [k for k in GRAPH_KEYS if k not in meta]
    if missing:
        raise DataError(f"graph field {missing[0]!r} missing (a graph needs {', '.join(GRAPH_KEYS)})")
    symbols, edges = meta["idx_to_symbol"], meta["edges"]
    if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) and s.strip() for s in symbols):
        raise DataError("graph field 'idx_to_symbol' must be a non-empty list of non-empty strings")
    if isinstance(edges, str):  # some files store the pairs as a JSON string
        try:
            edges = json.loads(edges)
        except (ValueError, RecursionError):
            raise DataError("graph field 'edges' is a string but not JSON") from None
    if not isinstance(edges, list) or not all(isinstance(e, (list, tuple)) and len(e) == 2 for e in edges):
        raise DataError("graph field 'edges' must be a list of [source, destination] pairs")
    n = len(symbols)
    pairs = tuple((_node(a, "edges", n), _node(b, "edges", n)) for a, b in edges)
    neg = meta.get("neg_target")
    return Graph(
        symbols=tuple(s.strip() for s in symbols),
        edges=pairs,
        root=_node(meta["root"], "root", n),
        target=_node(meta["target"], "target", n),
        neg_target=None if neg is None else _node(neg, "neg_target", n),
    )


def graph_of(example: Example) -> Graph | None:
    """The example's graph (None without one); errors name the record (its `source` in meta)."""
    try:
        return parse_graph(example.meta)
    except DataError as err:
        source = example.meta.get("source")
        raise DataError(f"{source}: {err}" if source else str(err)) from None


STATISTICS: tuple[str, ...] = (
    "steps", "nodes", "facts", "words", "people", "reachable", "asker_facts", "answer_parents", "negative_parents",
    "negative_depth", "paths_to_answer", "single_path", "longest_path", "cross_facts", "sinks",
)  # fmt: skip
"""The per-question statistics compared between generated and real questions (docs/results/prosqa.md)."""


def question_statistics(example: Example) -> dict[str, float]:
    """The STATISTICS of one ProsQA record: sizes, the asker's reachable region, the structure around both
    answer options (parents, the negative option's depth below its own person), and the number of paths."""
    graph = graph_of(example)
    if graph is None or graph.neg_target is None:
        raise DataError("not a ProsQA record: it has no idx_to_symbol/edges/root/target/neg_target")
    symbols, edges, root, target, neg = graph.symbols, graph.edges, graph.root, graph.target, graph.neg_target
    children: dict[int, list[int]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
    depth = {v: d for v, d in enumerate(graph.distances()) if d is not None}
    people = [i for i, w in enumerate(symbols) if w in NAMES]
    from_people = [Graph(symbols, edges, p, target).distances()[neg] for p in people if p != root]
    neg_depth = min((d for d in from_people if d is not None), default=0)
    paths: dict[int, int] = {}
    longest: dict[int, int] = {}

    def count(u: int) -> int:  # paths u -> target (a DAG: memoised DFS)
        if u == target:
            return 1
        if u not in paths:
            paths[u] = sum(count(v) for v in children.get(u, ()))
        return paths[u]

    def length(u: int) -> int:  # the longest path u -> target, -1 if none
        if u == target:
            return 0
        if u not in longest:
            best = [length(v) for v in children.get(u, ())]
            best = [b for b in best if b >= 0]
            longest[u] = 1 + max(best) if best else -1
        return longest[u]

    n_paths = count(root)
    return {
        "steps": len(example.steps),
        "nodes": len(symbols),
        "facts": len(edges),
        "words": len(example.question.split()),
        "people": len(people),
        "reachable": len(depth),
        "asker_facts": len(children.get(root, ())),
        "answer_parents": sum(1 for _, b in edges if b == target),
        "negative_parents": sum(1 for _, b in edges if b == neg),
        "negative_depth": neg_depth,
        "paths_to_answer": n_paths,
        "single_path": float(n_paths == 1),
        "longest_path": length(root),
        "cross_facts": sum(1 for a, b in edges if a not in depth and b in depth),
        "sinks": sum(1 for i in range(len(symbols)) if i not in children),
    }
