"""Run splits from data files (test never overlaps train) and the stateless batch sampler."""

from __future__ import annotations

import json
from pathlib import Path

from coconav.config import DataConfig
from coconav.data.splits import batch_indices, data_vocabulary, load_splits


def write_coconut(path: Path, questions: list[str]) -> Path:
    path.write_text(json.dumps([{"question": q, "steps": ["<<1+1=2>>"], "answer": "2"} for q in questions]))
    return path


def test_files_splits_remove_test_questions_from_train(tmp_path):
    train = write_coconut(tmp_path / "train.json", [f"q{i}" for i in range(20)])
    test = write_coconut(tmp_path / "test.json", ["q3", "q7", "other"])
    splits = load_splits(DataConfig(task="files", train=str(train), test=str(test), validation_size=5, test_size=0,
                                    train_size=0), seed=0)
    train_q = {e.question for e in splits.train}
    assert {"q3", "q7"}.isdisjoint(train_q)  # test rows never train
    assert len(splits.test) == 3 and len(splits.validation) == 5
    assert train_q.isdisjoint({e.question for e in splits.validation})  # the held-out rows left training
    assert len(splits.train) == 20 - 2 - 5
    again = load_splits(DataConfig(task="files", train=str(train), test=str(test), validation_size=5, test_size=0,
                                   train_size=0), seed=0)
    assert [e.question for e in again.validation] == [e.question for e in splits.validation]  # seeded


def test_batch_indices_cover_each_epoch_once_and_are_deterministic():
    n, b = 10, 4
    stream = [i for step in range(5) for i in batch_indices(n, b, step, seed=3)]  # 20 = two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a new permutation each epoch
    assert batch_indices(n, b, 2, seed=3) == batch_indices(n, b, 2, seed=3)  # resumable: a pure function
    assert batch_indices(n, b, 2, seed=3) != batch_indices(n, b, 2, seed=4)


def test_data_vocabulary_splits_words_and_punctuation():
    from coconav.data.records import Example

    words = data_vocabulary([Example("Tom has 3 apples.", ("<<3+1=4>>",), "4")])
    assert {"Tom", "3", "apples", ".", "<<", ">>", "###", "4"} <= set(words)
