"""Thoughts read as a search (coconav/eval/search.py): a question's graph from its record, BFS distances, the
reasoning path, each node's first token and probability under the LM head, and the frontier analysis with
hand-derived numbers. The graph is conftest.GRAPH_RECORD (ProsQA-shaped, invented words); the real ProsQA
validation file is checked when COCONAV_TEST_DATA names the data folder."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from coconav.data.readers import load_examples
from coconav.data.tokenizer import build_word_tokenizer
from coconav.errors import DataError
from coconav.eval.search import Graph, graph_of, node_probabilities, node_token_ids, parse_graph, search_frontier

from conftest import GRAPH_DISTANCES, GRAPH_RECORD, graph_example, graph_model


def test_the_reader_keeps_the_graph_in_meta(tmp_path: Path) -> None:
    path = tmp_path / "graph.json"
    record = {**GRAPH_RECORD, "edges": json.dumps(GRAPH_RECORD["edges"])}  # some files store the pairs as a string
    path.write_text(json.dumps([record]))
    [example] = load_examples(path)
    graph = graph_of(example)
    assert graph == graph_of(graph_example())
    assert graph.symbols[graph.root] == "Alex" and graph.symbols[graph.target] == "lempus"
    assert graph.symbols[graph.neg_target] == "tumpus" and len(graph.edges) == 8


def test_distances_and_paths() -> None:
    example = graph_example()
    graph = graph_of(example)
    assert graph.distances() == GRAPH_DISTANCES
    assert graph.gold_path(example.steps) == [0, 2, 4, 6]  # Alex -> wumpus -> rempus -> lempus, read off the steps
    assert graph.shortest_path(7) == [0, 3, 5, 7]  # yumpus only through zumpus, gorpus
    assert graph.shortest_path(8) is None  # tumpus: only Bo reaches it
    # steps that are not a path over the edges (or no steps): the BFS path from the root to the target
    assert graph.gold_path(["Alex is a zumpus.", "Every zumpus is a lempus."]) == [0, 2, 4, 6]
    assert graph.gold_path(["3 + 4 = 7"]) == graph.gold_path() == [0, 2, 4, 6]
    view = graph.to_json(example.steps)
    assert view["path"] == [0, 2, 4, 6] and view["depth"] == GRAPH_DISTANCES and view["nodes"][9] == "kumpus"


def test_a_question_without_a_graph_has_none() -> None:
    assert parse_graph({}) is None and parse_graph({"source": "x.json[0]"}) is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"root": None}, "graph field 'root' missing"),
        ({"idx_to_symbol": []}, "'idx_to_symbol' must be a non-empty list"),
        ({"idx_to_symbol": ["Alex", 3]}, "'idx_to_symbol' must be a non-empty list"),
        ({"edges": "[[0, 1"}, "'edges' is a string but not JSON"),
        ({"edges": [[0, 1, 2]]}, "'edges' must be a list of [source, destination] pairs"),
        ({"edges": [[0, 10]]}, "graph field 'edges' must be a node index in 0..9, got '10'"),
        ({"target": True}, "graph field 'target' must be a node index in 0..9, got 'True'"),
        ({"neg_target": -1}, "graph field 'neg_target' must be a node index in 0..9, got '-1'"),
    ],
)
def test_a_malformed_graph_is_a_one_line_error(change: dict, message: str) -> None:
    record = {k: v for k, v in {**GRAPH_RECORD, **change}.items() if v is not None}
    example = graph_example(record)
    example.meta["source"] = "prosqa.json[4]"
    with pytest.raises(DataError) as err:
        graph_of(example)
    assert str(err.value).startswith("prosqa.json[4]: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_node_tokens_are_each_words_first_token() -> None:
    words = ["Alex", "wumpus", "rempus"]
    tokenizer = build_word_tokenizer(words)
    assert node_token_ids(tokenizer, ["rempus", "Alex", "kumpus"]) == [
        tokenizer.convert_tokens_to_ids("rempus"),
        tokenizer.convert_tokens_to_ids("Alex"),
        None,  # not in the vocabulary: <unk> is no reading of the node
    ]


def test_node_probabilities_are_the_lm_heads() -> None:
    model = graph_model()
    graph = graph_of(graph_example())
    ids = node_token_ids(model.lm.tokenizer, graph.symbols)
    assert ids[:9] == [model.lm.tokenizer.convert_tokens_to_ids(w) for w in graph.symbols[:9]] and ids[9] is None
    states = torch.randn(4, model.lm.hidden_size)
    probs = node_probabilities(model.lm, states, ids)  # [4, 10]
    assert probs.shape == (4, 10) and torch.isnan(probs[:, 9]).all()
    full = torch.softmax(model.lm.lm_head(states), dim=-1)
    assert torch.allclose(probs[:, :9], full[:, ids[:9]], atol=1e-6)


def test_the_frontier_analysis_by_hand() -> None:
    graph = graph_of(graph_example())  # distances [0, -, 1, 1, 2, 2, 3, 3, -, -]
    nan = math.nan
    first = torch.tensor(
        [
            # Alex   Bo   wumpus zumpus rempus gorpus lempus yumpus tumpus kumpus
            [0.05, 0.01, 0.30, 0.20, 0.04, 0.02, 0.01, 0.01, nan, nan],  # step 0: frontier = distance 1
            [0.00, 0.00, 0.10, 0.10, 0.40, 0.20, 0.10, 0.00, 0.10, nan],  # step 1: frontier = distance 2
        ]
    )
    second = torch.zeros(1, 10)
    second[0, 2] = 1.0  # one step, all its mass on wumpus (distance 1)
    second[0, 9] = nan
    steps = search_frontier([(first, graph), (second, graph)]).steps
    assert [(s.step, s.frontier_depth, s.questions) for s in steps] == [(0, 1, 2), (1, 2, 1)]
    s0, s1 = steps
    # step 0, frontier pairs: 0.30, 0.20 (first) and 1.0, 0.0 (second): mean 1.5 / 4
    assert s0.frontier_nodes == 4 and s0.frontier_mean == pytest.approx(0.375, abs=1e-6)
    # frontier mass per question: 0.5 and 1.0, mean 0.75
    assert s0.frontier_mass == pytest.approx(0.75, abs=1e-6)
    # other pairs: first's 6 known (0.05 + 0.01 + 0.04 + 0.02 + 0.01 + 0.01 = 0.14) and second's 7 zeros
    assert s0.other_nodes == 13 and s0.other_mean == pytest.approx(0.14 / 13, abs=1e-6)
    assert s0.other_mass == pytest.approx(0.07, abs=1e-6)  # (0.14 + 0) / 2
    # by distance, pooled: 0 -> (0.05 + 0) / 2; 1 -> 0.375; 2 -> (0.04 + 0.02 + 0 + 0) / 4; 3 -> (0.01 + 0.01) / 4;
    # unreachable -> Bo 0.01 (first; its tumpus unknown) and Bo, tumpus 0 (second): 0.01 / 3
    assert list(s0.by_distance) == ["0", "1", "2", "3", "unreachable"]
    expected = {"0": 0.025, "1": 0.375, "2": 0.015, "3": 0.005, "unreachable": 0.01 / 3}
    assert s0.by_distance == pytest.approx(expected, abs=1e-6)
    # step 1 (first question only): frontier rempus 0.4, gorpus 0.2; the other 7 known sum to 0.4
    assert s1.frontier_mean == pytest.approx(0.3, abs=1e-6) and s1.frontier_mass == pytest.approx(0.6, abs=1e-6)
    assert s1.other_nodes == 7 and s1.other_mean == pytest.approx(0.4 / 7, abs=1e-6)
    assert s1.other_mass == pytest.approx(0.4, abs=1e-6)
    json.dumps(search_frontier([(first, graph)]).to_json())  # plain JSON


def test_a_step_beyond_the_graph_has_no_frontier() -> None:
    graph = Graph(symbols=("a", "b"), edges=((0, 1),), root=0, target=1)
    [s0, s1] = search_frontier([(torch.tensor([[0.2, 0.5], [0.1, 0.3]]), graph)]).steps
    assert s0.frontier_mean == pytest.approx(0.5, abs=1e-6) and s0.other_mean == pytest.approx(0.2, abs=1e-6)
    assert s1.frontier_nodes == 0 and s1.frontier_mean is None and s1.frontier_mass == 0.0  # no node at distance 2
    assert s1.other_mass == pytest.approx(0.4, abs=1e-6)


def test_the_real_prosqa_graphs(real_data) -> None:
    """Every validation record carries a graph whose steps walk its edges from the root to the target, and a
    word-level tokenizer over the file's words knows every node."""
    examples = load_examples(real_data("prosqa/valid.json"))
    words = {w for ex in examples for w in re.findall(r"\w+", ex.question + " " + " ".join(ex.steps))}
    tokenizer = build_word_tokenizer(sorted(words))
    for ex in examples:
        graph = graph_of(ex)
        assert graph is not None, ex.meta.get("source")
        path = graph.gold_path(ex.steps)
        assert len(path) == len(ex.steps) + 1 and path[0] == graph.root and path[-1] == graph.target, ex.meta
        dist = graph.distances()
        assert dist[graph.target] is not None and dist[graph.target] <= len(ex.steps)
        assert None not in node_token_ids(tokenizer, graph.symbols)
