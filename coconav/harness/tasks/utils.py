"""Data and scoring of coconav's harness tasks (the YAML files beside this one): coconav's own readers and splits,
and its one answer rule (coconav.data.scoring, also used by `coconav eval` and the RL reward), so that the harness
and `coconav eval` score the same questions the same way.

lm-eval calls the loaders (`custom_dataset`) with the task's metadata: its command line merges the model arguments
(pretrained=, revision=, ...) and --metadata (data=, split=) into it; from Python pass them to
coconav.harness.task_manager(metadata).
"""

from __future__ import annotations

from coconav.data.gsm8k import is_correct, parse_reference
from coconav.data.records import Example
from coconav.data.scoring import score
from coconav.errors import InputError


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """gsm8k_coconav: exact_match 1.0 when the completion's answer equals the number after '####' in doc['answer']."""
    return {"exact_match": float(is_correct(results[0], parse_reference(doc["answer"])))}


def score_results(doc: dict, results: list[str]) -> dict[str, float]:
    """coconav_test, coconav_data, prosqa_coconav: exact_match 1.0 when `coconav.data.scoring.score` accepts the
    completion (GSM8K's numeric rule or the text rule, by the question's answer type)."""
    example = Example(doc["question"], (), doc["answer"], answer_type=doc["answer_type"])
    return {"exact_match": float(score(results[0], example))}


def documents(examples: list[Example]) -> dict:
    """The task's test split as lm-eval reads it: one document per question (question, answer, answer type,
    difficulty), in the order `coconav eval` evaluates them."""
    import datasets

    rows = [
        {"question": ex.question, "answer": ex.answer, "answer_type": ex.answer_type, "difficulty": ex.difficulty}
        for ex in examples
    ]
    return {"test": datasets.Dataset.from_list(rows)}


def load_split(**metadata) -> dict:
    """coconav_test: the checkpoint's own test split (metadata split=validation: its validation split), as `coconav
    eval --data test` draws it from the checkpoint's run config."""
    from coconav.config import RunConfig, from_dict
    from coconav.data.splits import load_splits
    from coconav.io.checkpoint import checkpoint_meta, latest_checkpoint

    name = metadata.get("pretrained") or metadata.get("checkpoint")
    if not name:
        raise InputError("the task coconav_test reads the checkpoint's own split: give model_args pretrained=DIR")
    split = metadata.get("split", "test")
    if split not in ("test", "validation"):
        raise InputError(f"coconav_test: split must be 'test' or 'validation', got {split!r}")
    folder = latest_checkpoint(
        str(name), revision=metadata.get("revision"), token=metadata.get("token"), cache_dir=metadata.get("cache_dir")
    )
    cfg = from_dict(RunConfig, checkpoint_meta(folder)["config"])
    examples = getattr(load_splits(cfg.data, cfg.seed), split)
    if not examples:
        raise InputError(f"coconav_test: {folder} has no {split} questions")
    return documents(examples)


def load_data(**metadata) -> dict:
    """coconav_data: the data named by metadata data=SPEC, read as `coconav eval --data SPEC` reads it."""
    from coconav.data.readers import load_examples

    data = metadata.get("data")
    if not data:
        raise InputError("the task needs its data: --metadata data=FILE (or coconav harness --data FILE)")
    return documents(load_examples(str(data)))


def load_prosqa(**metadata) -> dict:
    """prosqa_coconav: a ProsQA file (COCONUT .json, text answers) named by metadata data=PATH."""
    found = load_data(**metadata)
    if any(t != "text" for t in found["test"]["answer_type"]):
        raise InputError(f"prosqa_coconav: {metadata['data']} has numeric answers; score it with the task coconav_data")
    return found
