"""Train/validation/test splits for a run, from a built-in task or from data files, and batch sampling.

    splits = load_splits(cfg.data, seed=cfg.seed)
    idx = batch_indices(num_examples=len(splits.train), batch_size=128, step=global_step, seed=0)

Batches are a pure function of (seed, step): each epoch is a seeded permutation of the training
set and step s takes the next `batch_size` indices of that stream, so a resumed run sees exactly
the batches it would have seen, with no sampler state to save.
"""

from __future__ import annotations

import random

from coconav.common import print0
from coconav.config import DataConfig
from coconav.data.readers import load_examples
from coconav.data.records import Example
from coconav.data.tasks import Splits, make_splits
from coconav.errors import ConfigError, DataError


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Generate a built-in task's splits or read the configured files. The three never share a question (compared
    after normalize_question): test questions are removed from the training rows and from a validation file, and a
    validation file's questions from the training rows (each removal is reported on one line); a validation file
    left empty by that is a DataError."""
    if cfg.task != "files":
        splits = make_splits(
            cfg.task,
            seed=seed,
            train_size=cfg.train_size,
            validation_size=0 if cfg.validation else cfg.validation_size,
            test_size=0 if cfg.test else cfg.test_size,
            min_difficulty=cfg.min_difficulty,
            max_difficulty=cfg.max_difficulty,
        )
        return _with_files(splits, cfg) if cfg.validation or cfg.test else splits
    limit = lambda n: n or None  # noqa: E731 - 0 means all rows
    train = load_examples(cfg.train, steps=cfg.gsm8k_steps) if cfg.train else []
    test = load_examples(cfg.test, steps=cfg.gsm8k_steps, limit=limit(cfg.test_size)) if cfg.test else []
    train = drop_shared(train, test, f"training file {cfg.train}", f"test file {cfg.test}")
    if cfg.validation:
        validation = validation_file(cfg, test)
        train = drop_shared(train, validation, f"training file {cfg.train}", f"validation file {cfg.validation}")
    else:  # hold out a seeded sample of the training rows
        rng = random.Random(f"{seed}-validation")
        order = list(range(len(train)))
        rng.shuffle(order)
        held = set(order[: cfg.validation_size])
        validation = [train[i] for i in sorted(held)]
        train = [ex for i, ex in enumerate(train) if i not in held]
    if cfg.train_size:
        train = train[: cfg.train_size]
    if cfg.train and not train:
        raise DataError(f"{cfg.train}: no training examples left after removing test/validation rows")
    return Splits(train=train, validation=validation, test=test)


def _with_files(splits: Splits, cfg: DataConfig) -> Splits:
    """A generated training split scored on files: data.validation and/or data.test replace the generated ones
    (e.g. ProsQA's real valid.json and test.json), and generated training questions equal to one of theirs are
    dropped (reported on one line)."""
    test = load_examples(cfg.test, steps=cfg.gsm8k_steps, limit=cfg.test_size or None) if cfg.test else splits.test
    validation = validation_file(cfg, test) if cfg.validation else splits.validation
    train = drop_shared(splits.train, test, f"generated {cfg.task} training questions", "the test split")
    train = drop_shared(train, validation, f"generated {cfg.task} training questions", "the validation split")
    return Splits(train=train, validation=validation, test=test)


def validation_file(cfg: DataConfig, test: list[Example]) -> list[Example]:
    """The examples of the file data.validation (at most validation_size; 0 = all) without the test split's
    questions; a file left empty by that is a DataError."""
    validation = load_examples(cfg.validation, steps=cfg.gsm8k_steps, limit=cfg.validation_size or None)
    validation = drop_shared(validation, test, f"validation file {cfg.validation}", f"test file {cfg.test}")
    if not validation:
        raise DataError(f"validation file {cfg.validation}: every question is also in the test file {cfg.test}")
    return validation


def normalize_question(text: str) -> str:
    """A question as compared across splits: stripped, whitespace collapsed, lowercased."""
    return " ".join(text.split()).lower()


def drop_shared(examples: list[Example], others: list[Example], name: str, other_name: str) -> list[Example]:
    """`examples` without the questions of `others` (compared after normalize_question): training on, or choosing
    settings on, questions a later split scores would bias it. Prints one line when rows are dropped."""
    taken = {normalize_question(ex.question) for ex in others}
    kept = [ex for ex in examples if normalize_question(ex.question) not in taken]
    if len(kept) < len(examples):
        print0(
            f"{name}: {len(examples) - len(kept)} row(s) whose question is also in the {other_name} left out "
            "(compared after stripping, collapsing whitespace and lowercasing)"
        )
    return kept


def data_vocabulary(examples: list[Example]) -> list[str]:
    """Every whitespace-separated word of the examples (for a from-scratch word-level tokenizer)."""
    import re

    words: dict[str, None] = {}
    for ex in examples:
        for text in (ex.question, *ex.steps, ex.answer, "###"):
            for word in re.findall(r"\w+|[^\w\s]+", text):
                words.setdefault(word, None)
    return list(words)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the training examples in batch `step` (epochs are seeded permutations)."""
    if num_examples <= 0:
        raise ConfigError("the training split is empty")
    out: list[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, num_examples)
        perm = epoch_permutation(num_examples, seed, epoch)
        take = min(batch_size - len(out), num_examples - offset)
        out.extend(perm[offset : offset + take])
        position += take
    return out


_PERM_CACHE: dict[tuple[int, int, int], list[int]] = {}


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded order of the training examples in `epoch` (cached: callers must not change it)."""
    key = (n, seed, epoch)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 4:
            _PERM_CACHE.clear()
        perm = list(range(n))
        random.Random(f"{seed}-epoch-{epoch}").shuffle(perm)
        _PERM_CACHE[key] = perm
    return _PERM_CACHE[key]
