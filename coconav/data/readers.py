"""Readers of the data formats COCONUT uses, and ``load_examples``, the one entry point.

Formats (arXiv 2412.06769 §4; github.com/facebookresearch/coconut):
  * GSM8K original JSON lines ``{"question", "answer"}`` (``.jsonl``) -> :mod:`coconav.data.gsm8k`;
  * GSM8k-Aug text lines ``question||<<eq>> <<eq>> #### N`` (``.txt``, from
    github.com/da03/Internalize_CoT_Step_by_Step), the equation-only steps COCONUT trains on;
  * the COCONUT JSON list ``[{"question", "steps", "answer"}, ...]`` (``.json``), used for
    ProsQA, ProntoQA and the preprocessed GSM8k-Aug; extra keys (the ProsQA graph) go to
    ``Example.meta``;
  * Hugging Face hub data sets through ``datasets``: GSM8K rows ``{"question", "answer"}``
    (``openai/gsm8k``) and GSM8k-Aug rows ``{"question", "steps": [...], "answer"}``
    (``whynlp/gsm8k-aug``), told apart by their columns.

Every malformed input raises a one-line DataError naming the file and the line (line formats)
or the 0-based record index into the JSON list (``test.json: record 3: ...``)::

    from coconav.data.readers import load_examples
    load_examples("openai/gsm8k:test")                      # Hugging Face hub id, GSM8K rows
    load_examples("whynlp/gsm8k-aug:validation", limit=10)  # hub id, GSM8k-Aug rows
    load_examples("data/prosqa/test.json")                  # a local COCONUT JSON file, by extension
    load_examples("gsm8k_aug:data/gsm8k_aug/valid.txt")     # a local file, format forced
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from coconav.data.gsm8k import (
    NOTE_RE,
    STEP_STYLES,
    StepStyle,
    check_limit,
    examples_from_rows,
    gsm8k_example,
    load_hub_rows,
    parse_json,
    parse_number,
    parse_reference,
    read_gsm8k_jsonl,
    read_records,
    read_text,
)
from coconav.data.records import Example
from coconav.errors import ConfigError, DataError

FORMATS: tuple[str, ...] = ("gsm8k", "gsm8k_aug", "coconut")
_EXTENSIONS: dict[str, str] = {".jsonl": "gsm8k", ".txt": "gsm8k_aug", ".json": "coconut"}
# A Hugging Face repo id (owner/name, the characters the hub allows) with an optional split.
# Hub data sets that need a config name; any other id loads its default config.
HUB_CONFIGS: dict[str, str] = {"openai/gsm8k": "main"}
_HUB_ID_RE = re.compile(r"(?P<name>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<split>[\w.-]+))?")


def _aug_example(line: str) -> Example:
    question, sep, rationale = line.rpartition("||")
    if not sep:
        raise DataError("expected 'question||<<eq>> ... #### N', found no '||'")
    if not question.strip():
        raise DataError("question is empty")
    if "####" not in rationale:
        raise DataError("expected '#### N' after '||', found no '####'")
    answer = parse_reference(rationale)
    # Only the notes are steps; GSM8k-Aug has nothing else between them, and a few lines have no
    # note at all (answer-only, 6 of 500 valid, 18 of 1,319 test) and so get no steps.
    steps = tuple(NOTE_RE.findall(rationale[: rationale.rfind("####")]))
    return Example(question=question.strip(), steps=steps, answer=answer, answer_type="number")


def read_gsm8k_aug(path: str | Path, limit: int | None = None) -> list[Example]:
    """Examples from a GSM8k-Aug text file: ``question||<<eq>> <<eq>> #### N`` per line.

    Steps are the ``<<eq>>`` notes (possibly none), answer the canonical number after
    ``####``. Blank lines are skipped; reading stops after ``limit`` records.
    """

    def parse(line: str, where: str) -> Example:
        example = _aug_example(line)
        example.meta["source"] = where
        return example

    return read_records(path, parse, limit)


def aug_row_example(record: Any, source: str) -> Example:
    """An Example from one GSM8k-Aug hub row ``{"question", "steps": ["<<eq>>", ...], "answer"}``.

    As in the text files, a row may have no steps (answer-only problems); the answer must be
    one number. Raises DataError without location.
    """
    if not isinstance(record, dict):
        raise DataError(f"expected a row with columns question, steps, answer, got {type(record).__name__}")
    for name in ("question", "steps", "answer"):
        if record.get(name) is None:  # a Dataset fills a column missing from one row with None
            raise DataError(f"column {name!r} missing")
    question, steps, answer = record["question"], record["steps"], record["answer"]
    if not isinstance(question, str) or not question.strip():
        raise DataError("column 'question' must be a non-empty string")
    if not isinstance(steps, list) or not all(isinstance(step, str) and step.strip() for step in steps):
        raise DataError("column 'steps' must be a list of non-empty strings")
    number = parse_number(str(answer)) if isinstance(answer, (str, int, float)) else None
    if number is None or isinstance(answer, bool):
        raise DataError(f"column 'answer' is not a number: {str(answer)[:40]!r}")
    return Example(
        question=question.strip(),
        steps=tuple(s.strip() for s in steps),
        answer=number,
        answer_type="number",
        meta={"source": source},
    )


def load_hub(
    name: str,
    split: str = "test",
    fmt: str | None = None,
    steps: StepStyle = "notes",
    limit: int | None = None,
) -> list[Example]:
    """Examples of one split of a hub data set: GSM8K rows, or GSM8k-Aug rows (a ``steps`` column).

    ``fmt`` ("gsm8k" or "gsm8k_aug") forces the row format; None tells them apart by the
    columns. The config is ``HUB_CONFIGS[name]`` ("main" for openai/gsm8k) or the default.
    """
    check_limit(limit)
    rows = load_hub_rows(name, split, HUB_CONFIGS.get(name))
    if fmt is None:
        fmt = "gsm8k_aug" if "steps" in (getattr(rows, "column_names", None) or ()) else "gsm8k"
    if fmt == "gsm8k_aug":
        parse = aug_row_example
    else:

        def parse(row: Any, source: str) -> Example:
            return gsm8k_example(row, steps, source)

    return examples_from_rows(rows, f"{name}:{split}", parse, limit)


def _coconut_example(record: Any) -> Example:
    if not isinstance(record, dict):
        raise DataError(f"expected an object, got {type(record).__name__}")
    for name in ("question", "steps", "answer"):
        if name not in record:
            raise DataError(f"field {name!r} missing")
    question, steps, answer = record["question"], record["steps"], record["answer"]
    if not isinstance(question, str):
        raise DataError(f"field 'question' must be a string, got {type(question).__name__}")
    if not question.strip():
        raise DataError("field 'question' is empty")
    if not isinstance(steps, list) or not all(isinstance(step, str) for step in steps):
        raise DataError("field 'steps' must be a list of strings")
    if not steps:
        raise DataError("field 'steps' is an empty list")
    for index, step in enumerate(steps):
        if not step.strip():
            raise DataError(f"field 'steps' has an empty step at index {index}")
    # bool is an int in Python, but true/false is never a meaningful answer here.
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise DataError(f"field 'answer' must be a string, got {type(answer).__name__}")
    if not answer.strip():
        raise DataError("field 'answer' is empty")
    number = parse_number(answer)
    extra = {key: value for key, value in record.items() if key not in ("question", "steps", "answer")}
    return Example(
        question=question.strip(),
        steps=tuple(steps),
        answer=number if number is not None else answer.strip(),
        answer_type="number" if number is not None else "text",
        meta=extra,
    )


def read_coconut_json(path: str | Path, limit: int | None = None) -> list[Example]:
    """Examples from a COCONUT JSON list ``[{"question", "steps", "answer", ...}, ...]``.

    ``answer_type`` is "number" when the answer is a single number (then stored canonical,
    ``"1,000"`` -> ``"1000"``), else "text" (kept as written, e.g. ``"Sally is a sterpus."``).
    Extra keys are kept in ``Example.meta``. Record indices in errors are 0-based.
    """
    check_limit(limit)
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: no records (the file is empty or blank)")
    try:
        data = parse_json(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: bad JSON at column {exc.colno}: {exc.msg}") from None
    except DataError as exc:  # nested too deeply, an integer too long
        raise DataError(f"{path}: {exc}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: no records (the JSON list is empty)")
    examples: list[Example] = []
    for index, record in enumerate(data if limit is None else data[:limit]):
        try:
            example = _coconut_example(record)
        except DataError as exc:
            raise DataError(f"{path}: record {index}: {exc}") from None
        example.meta["source"] = f"{path}[{index}]"
        examples.append(example)
    return examples


def _split_format(spec: str) -> tuple[str | None, str]:
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in FORMATS:
        return prefix, rest
    return None, spec


def load_examples(
    spec: str | os.PathLike[str], *, steps: StepStyle = "notes", limit: int | None = None
) -> list[Example]:
    """Examples from a data spec: a local file, ``FORMAT:PATH``, or a hub id.

    * ``path.jsonl`` GSM8K original, ``path.txt`` GSM8k-Aug, ``path.json`` COCONUT JSON;
    * ``gsm8k:PATH``, ``gsm8k_aug:PATH``, ``coconut:PATH`` force the format;
    * ``owner/name`` or ``owner/name:split`` (default split "test"), when no such file exists,
      loads a hub data set through ``datasets``: GSM8K rows (``openai/gsm8k:train``) or GSM8k-Aug
      rows (``whynlp/gsm8k-aug:validation``), told apart by the columns (see :func:`load_hub`).
    ``steps`` ("notes" or "lines") applies to GSM8K original data only: GSM8k-Aug steps are
    always the notes and COCONUT JSON carries its own.
    """
    if steps not in STEP_STYLES:
        raise ConfigError(f"unknown steps style {steps!r} (expected one of {', '.join(STEP_STYLES)})")
    spec = os.fspath(spec)
    if not spec.strip():
        raise DataError("empty data spec (expected a file path or a hub id such as openai/gsm8k:test)")
    fmt, location = _split_format(spec)
    path = Path(location)
    if path.exists():
        if fmt is None:
            fmt = _EXTENSIONS.get(path.suffix.lower())
            if fmt is None:
                raise DataError(
                    f"{path}: unknown data file extension {path.suffix or '(none)'!r} "
                    "(expected .jsonl GSM8K, .txt GSM8k-Aug or .json COCONUT, "
                    "or a prefix gsm8k:, gsm8k_aug:, coconut:)"
                )
        if fmt == "gsm8k":
            return read_gsm8k_jsonl(path, steps=steps, limit=limit)
        if fmt == "gsm8k_aug":
            return read_gsm8k_aug(path, limit=limit)
        return read_coconut_json(path, limit=limit)
    hub = _HUB_ID_RE.fullmatch(location)
    # "data/x.jsonl" is also owner/name-shaped; a data-file extension means a missing file.
    if hub and fmt != "coconut" and Path(hub.group("name")).suffix.lower() not in _EXTENSIONS:
        return load_hub(hub.group("name"), split=hub.group("split") or "test", fmt=fmt, steps=steps, limit=limit)
    raise DataError(f"{location}: no such file")
