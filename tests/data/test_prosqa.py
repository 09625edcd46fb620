"""Tests of coconav.data.prosqa: ProsQA-shaped questions, their graphs, and the frontier thought targets.

The generator's structure is checked on every question it draws; its fit to the real validation file, and
that no generated question is a real one, run when ``$COCONAV_TEST_DATA`` names the data folder.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from coconav.config import CurriculumConfig
from coconav.data.curriculum import build_sequence, collate, frontier_words, tokenize_examples
from coconav.data.prosqa import CONCEPTS, NAMES, STATISTICS, Graph, generate_prosqa, parse_graph, question_statistics
from coconav.data.readers import read_coconut_json
from coconav.data.splits import normalize_question
from coconav.data.tasks import get_task, make_splits
from coconav.data.tokenizer import task_tokenizer
from coconav.errors import DataError
from coconav.tokens import SpecialTokens

from conftest import real_data_path


def record_graph(meta):
    graph = parse_graph(meta)
    return graph.symbols, graph.edges, graph.root, graph.target, graph.neg_target


def _depths(edges, root):
    depth, queue = {root: 0}, [root]
    for u in queue:
        for a, b in edges:
            if a == u and b not in depth:
                depth[b] = depth[u] + 1
                queue.append(b)
    return depth


@pytest.mark.parametrize("steps", [3, 4, 5, 6])
def test_generated_questions_are_well_formed(steps: int) -> None:
    rng = random.Random(steps)
    for _ in range(60):
        ex = generate_prosqa(rng, steps)
        symbols, edges, root, target, neg = record_graph(ex.meta)
        depth = _depths(edges, root)
        assert depth[target] == steps == len(ex.steps)  # the answer is `steps` facts away
        assert neg not in depth  # the negative option is never reachable from the asker
        assert all(a != target and a != neg for a, _ in edges)  # both options are sinks
        assert len(set(symbols)) == len(symbols) and set(symbols) <= set(NAMES) | set(CONCEPTS)
        assert symbols[root] in NAMES
        # every fact is stated once in the question, and the steps are facts of the question
        facts = re.findall(r"[^.?]+\.", ex.question.rsplit(" Is ", 1)[0])
        assert len(facts) == len(edges)
        assert all(f" {step}" in f" {ex.question}" for step in ex.steps)
        person, x, y = re.fullmatch(r".* Is (\w+) a (\w+) or (\w+)\?", ex.question).groups()
        assert person == symbols[root] and {x, y} == {symbols[target], symbols[neg]}
        assert ex.answer == f"{symbols[root]} is a {symbols[target]}."
        # acyclic: a topological order exists
        order = {v: i for i, v in enumerate(_topological(len(symbols), edges))}
        assert all(order[a] < order[b] for a, b in edges)


def _topological(n, edges):
    indegree = [0] * n
    for _, b in edges:
        indegree[b] += 1
    ready = [v for v in range(n) if indegree[v] == 0]
    out = []
    while ready:
        u = ready.pop()
        out.append(u)
        for a, b in edges:
            if a == u:
                indegree[b] -= 1
                if indegree[b] == 0:
                    ready.append(b)
    assert len(out) == n, "the graph has a cycle"
    return out


def test_generation_is_seeded() -> None:
    a = generate_prosqa(random.Random("s"), 4)
    b = generate_prosqa(random.Random("s"), 4)
    assert a == b and a.meta == b.meta


def test_task_draws_the_fitted_step_mix_and_uses_its_vocabulary() -> None:
    splits = make_splits(
        "prosqa", seed=0, train_size=2000, validation_size=0, test_size=0, min_difficulty=3, max_difficulty=6
    )
    counts = {d: sum(ex.difficulty == d for ex in splits.train) for d in (3, 4, 5, 6)}
    # weights 124/133/36/7 out of 300: 41/44/12/2%; 2,000 draws keep each within a few points
    assert counts[3] / 2000 == pytest.approx(124 / 300, abs=0.05)
    assert counts[4] / 2000 == pytest.approx(133 / 300, abs=0.05)
    assert counts[6] / 2000 < 0.06
    tokenizer = task_tokenizer("prosqa")
    ids = tokenizer(splits.train[0].question)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert get_task("prosqa").answer_type == "text"


def test_shortest_path_draws_among_the_shortest_ones() -> None:
    # 0 -> 1 -> 3 and 0 -> 2 -> 3: two shortest paths of 2; 0 -> 4 -> 5 -> 3 is longer
    edges = ((0, 1), (1, 3), (0, 2), (2, 3), (0, 4), (4, 5), (5, 3))
    graph = Graph(("Tom", "a", "b", "c", "d", "e"), edges, root=0, target=3, neg_target=5)
    assert graph.shortest_path(3) == [0, 1, 3]  # the first one BFS finds
    drawn = {tuple(graph.shortest_path(3, random.Random(seed))) for seed in range(20)}
    assert drawn == {(0, 1, 3), (0, 2, 3)}
    assert Graph(graph.symbols, edges, root=3, target=0).shortest_path(0) is None
    meta = {"idx_to_symbol": list(graph.symbols), "edges": json.dumps([list(e) for e in edges]), "root": 0}
    with pytest.raises(DataError, match="'target' missing"):
        parse_graph(meta)
    meta.update(target=3, neg_target=5)
    assert parse_graph(meta).edges == edges  # edges as a JSON string (some copies of the files)
    with pytest.raises(DataError, match="node index"):
        parse_graph({**meta, "target": 9})


def test_reader_takes_the_official_training_format(tmp_path: Path) -> None:
    # prosqa_train.json in the official repository: a list of records with the graph fields
    records = [generate_prosqa(random.Random(i), 3) for i in range(3)]
    rows = [{"question": ex.question, "steps": list(ex.steps), "answer": ex.answer, **ex.meta} for ex in records]
    path = tmp_path / "prosqa_train.json"
    path.write_text(json.dumps(rows))
    examples = read_coconut_json(path)
    assert [ex.question for ex in examples] == [ex.question for ex in records]
    assert examples[0].answer_type == "text"
    assert record_graph(examples[0].meta) == record_graph(records[0].meta)


def test_frontier_targets_are_the_bfs_layers() -> None:
    ex = generate_prosqa(random.Random(7), 4)
    symbols, edges, root, target, _ = record_graph(ex.meta)
    depth = _depths(edges, root)
    layers = frontier_words(ex)
    for i, layer in enumerate(layers, start=1):
        assert sorted(layer) == sorted(symbols[v] for v, d in depth.items() if d == i)
    tokenizer = task_tokenizer("prosqa")
    tok = tokenize_examples([ex], tokenizer)[0]
    assert [sorted(tokenizer.convert_ids_to_tokens(list(ids))) for ids in tok.frontier_targets] == [
        sorted(layer) for layer in layers
    ]
    assert tokenizer.convert_ids_to_tokens([tok.answer_target]) == [symbols[target]]  # the answer's concept
    special = SpecialTokens(*(tokenizer.convert_tokens_to_ids(t) for t in ("<bot>", "<eot>", "<thought>", "<pause>")),
                            tokenizer.pad_token_id, tokenizer.eos_token_id)  # fmt: skip
    cfg = CurriculumConfig(max_stage=6, thought_loss_weight=1.0, thought_target="frontier")
    seq = build_sequence(tok, stage=7, cfg=cfg, special=special)
    first = len(tok.question) + 1
    assert seq.thought_targets[first : first + 6] == [*tok.frontier_targets, *[(tok.answer_target,)] * 2]
    batch = collate([seq], special)
    assert batch.thought_targets.shape == (1, len(seq.ids), max(len(s) for s in tok.frontier_targets))
    # 'step' keeps one target per thought: the path's concepts, then the answer for padding thoughts
    step = build_sequence(tok, stage=7, cfg=CurriculumConfig(max_stage=6, thought_loss_weight=1.0), special=special)
    assert step.thought_targets[first : first + 6] == [*tok.step_targets, tok.answer_target, tok.answer_target]
    assert collate([step], special).thought_targets.dim() == 2


def test_statistics_of_a_hand_made_record() -> None:
    # Tom -> a -> c (answer); Tom -> b -> c; Sam -> d -> e (negative); d -> b (a fact into the asker's region)
    symbols = ["Tom", "a", "b", "c", "Sam", "d", "e"]
    edges = [[0, 1], [1, 3], [0, 2], [2, 3], [4, 5], [5, 6], [5, 2]]
    meta = {"idx_to_symbol": symbols, "edges": edges, "root": 0, "target": 3, "neg_target": 6}
    ex = read_like(meta, steps=("Tom is a a.", "Every a is a c."))
    stats = question_statistics(ex)
    assert set(stats) == set(STATISTICS)
    assert stats["reachable"] == 4 and stats["paths_to_answer"] == 2 and stats["single_path"] == 0
    assert stats["negative_depth"] == 2 and stats["cross_facts"] == 1 and stats["answer_parents"] == 2
    assert stats["sinks"] == 2 and stats["people"] == 2 and stats["longest_path"] == 2


def read_like(meta: dict, steps: tuple[str, ...]):
    from coconav.data.records import Example

    return Example(question="Tom is a a. Is Tom a c or e?", steps=steps, answer="Tom is a c.", answer_type="text",
                   meta=meta)  # fmt: skip


# --- against the real files (COCONAV_TEST_DATA) -------------------------------------------------


def test_no_generated_question_is_a_real_one() -> None:
    real = read_coconut_json(real_data_path("prosqa/valid.json")) + read_coconut_json(
        real_data_path("prosqa/test.json")
    )
    taken = {normalize_question(ex.question) for ex in real}
    rng = random.Random(0)
    generated = [generate_prosqa(rng, rng.choice((3, 4, 5, 6))) for _ in range(3000)]
    assert not any(normalize_question(ex.question) in taken for ex in generated)


def test_generator_matches_the_validation_file() -> None:
    real = read_coconut_json(real_data_path("prosqa/valid.json"))
    rng = random.Random(1)
    weights = {3: 124, 4: 133, 5: 36, 6: 7}
    generated = [generate_prosqa(rng, rng.choices(list(weights), list(weights.values()))[0]) for _ in range(1500)]

    def mean(examples, key):
        return sum(question_statistics(ex)[key] for ex in examples) / len(examples)

    # tolerances: a few percent of each mean (docs/results/prosqa.md gives the full table and its tests)
    for key, tolerance in [("steps", 0.15), ("nodes", 1.0), ("facts", 4.0), ("reachable", 1.0),
                           ("negative_depth", 0.2), ("single_path", 0.08), ("asker_facts", 0.3)]:  # fmt: skip
        assert mean(generated, key) == pytest.approx(mean(real, key), abs=tolerance), key


def test_set_targets_collate_to_one_padded_tensor() -> None:
    from coconav.data.curriculum import Sequence

    special = SpecialTokens(bot=1, eot=2, thought=3, pause=4, pad=0, eos=5)
    seqs = [
        Sequence(ids=[9, 1, 3, 2, 7], labels=[-100] * 4 + [7], thought_targets=[-100, -100, (10, 11), -100, -100], stage=7),
        Sequence(ids=[1, 3, 2, 7], labels=[-100] * 3 + [7], thought_targets=[-100, (12,), -100, -100], stage=7),
    ]  # fmt: skip
    targets = collate(seqs, special).thought_targets
    assert targets.shape == (2, 5, 2)
    assert targets[0, 2].tolist() == [10, 11] and targets[1, 2].tolist() == [12, -100]
    assert torch.all(targets[:, [0, 1, 3, 4]] == -100)
