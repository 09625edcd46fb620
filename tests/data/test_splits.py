"""Run splits from data files (test never overlaps train, nor a validation file either) and the stateless batch
sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coconav.config import DataConfig
from coconav.data.splits import batch_indices, data_vocabulary, load_splits, normalize_question
from coconav.errors import DataError


def write_coconut(path: Path, questions: list[str]) -> Path:
    path.write_text(json.dumps([{"question": q, "steps": ["<<1+1=2>>"], "answer": "2"} for q in questions]))
    return path


def test_files_splits_remove_test_questions_from_train(tmp_path):
    train = write_coconut(tmp_path / "train.json", [f"q{i}" for i in range(20)])
    test = write_coconut(tmp_path / "test.json", ["q3", "q7", "other"])
    splits = load_splits(
        DataConfig(task="files", train=str(train), test=str(test), validation_size=5, test_size=0, train_size=0), seed=0
    )
    train_q = {e.question for e in splits.train}
    assert {"q3", "q7"}.isdisjoint(train_q)  # test rows never train
    assert len(splits.test) == 3 and len(splits.validation) == 5
    assert train_q.isdisjoint({e.question for e in splits.validation})  # the held-out rows left training
    assert len(splits.train) == 20 - 2 - 5
    again = load_splits(
        DataConfig(task="files", train=str(train), test=str(test), validation_size=5, test_size=0, train_size=0), seed=0
    )
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


@pytest.mark.parametrize("other", ["train", "test"])
def test_a_validation_file_never_shares_questions_with_train_or_test(tmp_path, capsys, other):
    """Shared with train: the training rows lose them; shared with test: the validation file loses them. Either way
    one line says how many, and the three splits end up disjoint."""
    train = write_coconut(tmp_path / "train.json", [f"q{i}" for i in range(10)])
    test = write_coconut(tmp_path / "test.json", ["t1", "t2", "t3"])
    # two questions repeated up to surrounding space, inner whitespace and case: the same question
    shared = ["  Q3 ", "q5"] if other == "train" else ["T1", "t2\t"]
    validation = write_coconut(tmp_path / "validation.json", ["v1", *shared])
    cfg = DataConfig(
        task="files",
        train=str(train),
        test=str(test),
        validation=str(validation),
        validation_size=0,
        test_size=0,
        train_size=0,
    )
    splits = load_splits(cfg, seed=0)
    keys = {
        name: {normalize_question(e.question) for e in getattr(splits, name)}
        for name in ("train", "validation", "test")
    }
    assert not keys["train"] & keys["validation"] and not keys["validation"] & keys["test"]
    if other == "train":
        assert len(splits.train) == 8 and len(splits.validation) == 3
    else:
        assert len(splits.train) == 10 and [e.question for e in splits.validation] == ["v1"]
    lines = [line for line in capsys.readouterr().out.splitlines() if "left out" in line]
    named = "training file" if other == "train" else "test file"
    assert len(lines) == 1 and "2 row(s)" in lines[0] and named in lines[0]


def test_a_validation_file_inside_the_test_file_is_a_one_line_error(tmp_path):
    train = write_coconut(tmp_path / "train.json", [f"q{i}" for i in range(10)])
    test = write_coconut(tmp_path / "test.json", ["t1", "t2"])
    validation = write_coconut(tmp_path / "validation.json", ["T1"])
    cfg = DataConfig(task="files", train=str(train), test=str(test), validation=str(validation), test_size=0)
    with pytest.raises(DataError, match="every question is also in the test file") as err:
        load_splits(cfg, seed=0)
    assert "\n" not in str(err.value)


def test_normalize_question():
    assert normalize_question("  What is\t3 +  4 ?\n") == "what is 3 + 4 ?"


def test_a_disjoint_validation_file_is_read_as_is(tmp_path):
    train = write_coconut(tmp_path / "train.json", [f"q{i}" for i in range(10)])
    test = write_coconut(tmp_path / "test.json", ["t1"])
    validation = write_coconut(tmp_path / "validation.json", ["v1", "v2"])
    splits = load_splits(
        DataConfig(
            task="files",
            train=str(train),
            test=str(test),
            validation=str(validation),
            validation_size=0,
            test_size=0,
            train_size=0,
        ),
        seed=0,
    )
    assert [e.question for e in splits.validation] == ["v1", "v2"] and len(splits.train) == 10


def test_a_generated_task_scored_on_files_keeps_its_validation_file_apart_from_its_test_file(tmp_path):
    # task='prosqa' trains on generated questions and reads validation and test from files: as with task='files',
    # the validation file loses the test file's questions (here "t2"), and one that holds only those is refused.
    test = write_coconut(tmp_path / "test.json", ["t1", "t2"])
    validation = write_coconut(tmp_path / "validation.json", ["v1", "T2"])
    cfg = DataConfig(task="prosqa", train_size=4, validation=str(validation), test=str(test), validation_size=0,
                     test_size=0, min_difficulty=3, max_difficulty=6)  # fmt: skip
    splits = load_splits(cfg, seed=0)
    assert [e.question for e in splits.validation] == ["v1"] and len(splits.test) == 2 and len(splits.train) == 4
    only_test = write_coconut(tmp_path / "only_test.json", ["t1"])
    with pytest.raises(DataError, match="every question is also in the test file"):
        load_splits(DataConfig(**{**cfg.__dict__, "validation": str(only_test)}), seed=0)
