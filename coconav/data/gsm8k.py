"""GSM8K: the one answer rule (evaluation and RL reward) and the readers of the original data.

GSM8K (Cobbe et al. 2021, arXiv 2110.14168, github.com/openai/grade-school-math) stores each
problem as ``{"question", "answer"}`` where ``answer`` is a rationale with calculator notes
``<<16-3-4=9>>`` and a last line ``#### 18``. COCONUT (arXiv 2412.06769 §4.1) trains on
GSM8k-Aug, whose steps are exactly those calculator notes, and ends its outputs with ``### N``.

Everything that decides whether a numeric answer is right goes through :func:`is_correct`, so
evaluation and the RL reward can never disagree::

    from coconav.data.gsm8k import extract_answer, is_correct, read_gsm8k_jsonl
    extract_answer("... so she makes $18.00 a day. #### 18")   # -> "18"
    is_correct("The answer is 1,000.", "1000")                  # -> True
    examples = read_gsm8k_jsonl("data/gsm8k/test.jsonl", steps="notes")   # a local copy
    examples = load_gsm8k_hub("openai/gsm8k", split="test")          # the same rows, from the hub
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from coconav.data.records import Example
from coconav.errors import ConfigError, DataError

StepStyle = Literal["notes", "lines"]
STEP_STYLES: tuple[str, ...] = ("notes", "lines")

# A number as people and models write it: optional sign, optional "$", thousands grouped with
# commas (only real 3-digit groups, so "1, 2, 3" stays three numbers), optional decimals, or a
# bare ".5". The look-behind keeps the "-" of "16-3" from turning 3 into -3 and keeps the
# digits after a decimal point from being read as a number of their own.
_NUMBER = (
    r"(?<![\w.])(?P<sign>-)?\$?"
    r"(?P<body>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)|\.\d+)"
)
_NUMBER_RE = re.compile(_NUMBER)
_FULL_NUMBER_RE = re.compile(r"\s*(?P<sign>-)?\s*\$?\s*(?P<body>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)\s*")
# "###" also matches inside "####"; rfind of "###" therefore lands on the last marker of either.
_MARKER = "###"
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?[\s*]*" + _NUMBER, re.IGNORECASE)
_A_COLON_RE = re.compile(r"(?:(?<!\w)A|(?i:\banswer))\s*:[\s*]*" + _NUMBER)
NOTE_RE = re.compile(r"<<[^<>]*>>")

# Completions are compared to references exactly (Decimal), then with this absolute slack so
# that float printing artefacts such as "17.999999999" still count; it is far below the
# smallest difference between two GSM8K answers (integers, or cents at most).
_TOLERANCE = Decimal("1e-6")


def canonical_number(sign: str | None, body: str) -> str:
    """Canonical text of a number: no commas or ``$``, no trailing zeros, ``.5`` -> ``0.5``.

    ``sign`` is "-" or None, ``body`` the digits (``"1,000.50"``, ``".5"``, ``"18."``).
    """
    # Done on the text rather than with Decimal.normalize(), which rounds to 28 digits.
    whole, _, fraction = body.replace(",", "").partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    text = f"{whole}.{fraction}" if fraction else whole
    # "-0" and "-0.00" are plain 0.
    return f"-{text}" if sign and text != "0" else text


def parse_number(text: str) -> str | None:
    """The canonical number if ``text`` is exactly one number (``" $1,000.50 "``), else None."""
    match = _FULL_NUMBER_RE.fullmatch(text)
    if match is None:
        return None
    return canonical_number(match.group("sign"), match.group("body"))


def _number_from(match: re.Match[str] | None) -> str | None:
    if match is None:
        return None
    return canonical_number(match.group("sign"), match.group("body"))


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - the loop only walks to the last match
        pass
    return last


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a completion as a canonical number string, or None.

    Rules, first that applies wins:
      1. the first number after the LAST ``###``/``####`` marker (COCONUT's and GSM8K's);
      2. the last ``the answer is N`` / ``the final answer is: N`` (any case, ``$`` allowed);
      3. the last ``A: N`` / ``Answer: N``;
      4. the last number anywhere in the text.
    A marker followed by no number (``#### eighteen``) does not stop the search: rules 2-4 are
    tried on the whole text. Commas and ``$`` are stripped as in GSM8K's own normalisation.
    """
    marker = text.rfind(_MARKER)
    if marker >= 0:
        found = _number_from(_NUMBER_RE.search(text, marker + len(_MARKER)))
        if found is not None:
            return found
    for pattern in (_ANSWER_IS_RE, _A_COLON_RE, _NUMBER_RE):
        found = _number_from(_last(pattern, text))
        if found is not None:
            return found
    return None


def parse_reference(answer_field: str) -> str:
    """The canonical number after the last ``####`` of a GSM8K ``answer`` field.

    Raises DataError when there is no ``####`` or what follows it is not a single number.
    """
    marker = answer_field.rfind("####")
    if marker < 0:
        raise DataError("answer has no '#### N' line")
    tail = answer_field[marker + 4 :].strip()
    number = parse_number(tail)
    if number is None:
        raise DataError(f"answer after '####' is not a number: {tail[:40]!r}")
    return number


def _reference_number(reference: str) -> str:
    if "####" in reference:
        return parse_reference(reference)
    number = parse_number(reference)
    if number is None:
        raise DataError(f"reference answer is not a number: {reference[:40]!r}")
    return number


def numbers_equal(a: str, b: str) -> bool:
    """Whether two canonical number strings are equal up to float printing noise."""
    x, y = Decimal(a), Decimal(b)
    return x == y or abs(x - y) <= _TOLERANCE


def is_correct(completion: str, reference: str) -> bool:
    """Whether ``completion``'s final number equals the reference numerically.

    ``reference`` is a full GSM8K answer field (ending ``#### N``) or a bare number
    (``"1,000"``, ``"18"``). ``18`` == ``18.0``, ``1,000`` == ``1000``, ``.5`` == ``0.5``.
    A completion with no number at all is wrong; a malformed reference raises DataError.
    """
    expected = _reference_number(reference)
    predicted = extract_answer(completion)
    if predicted is None:
        return False
    return numbers_equal(predicted, expected)


def steps_from_rationale(rationale: str, style: StepStyle = "notes") -> list[str]:
    """The reasoning steps of a GSM8K rationale.

    ``"notes"``: one step per calculator note, kept with its brackets (``<<16-3-4=9>>``), the
    step format of GSM8k-Aug that COCONUT trains on. A rationale without any calculator note
    (a few percent of GSM8K: 18 of 1,319 test rows, 95 of 7,473 train rows, mostly algebra)
    falls back to ``"lines"`` so that it still has steps.
    ``"lines"``: one step per non-empty line before ``#### N``, calculator notes removed
    (``Janet sells 16 - 3 - 4 = 9 duck eggs a day.``).
    """
    if style not in STEP_STYLES:
        raise ConfigError(f"unknown steps style {style!r} (expected one of {', '.join(STEP_STYLES)})")
    marker = rationale.rfind("####")
    body = rationale if marker < 0 else rationale[:marker]
    if style == "notes":
        notes = NOTE_RE.findall(body)
        if notes:
            return notes
    lines = (" ".join(NOTE_RE.sub("", line).split()) for line in body.split("\n"))
    return [line for line in lines if line]


def check_limit(limit: int | None) -> None:
    """ConfigError unless ``limit`` is None or a non-negative int (0 reads nothing)."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative integer or None, got {limit!r}")


def read_text(path: str | Path) -> str:
    """The UTF-8 text of a data file; DataError naming the file (and line) when it cannot be."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a data file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        # Editors on Windows add a BOM; it is not part of the first record.
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})") from None


def parse_json(text: str) -> Any:
    """``json.loads`` that also refuses, as a one-line DataError without location (callers add it), JSON
    that Python cannot hold: lists or objects nested deeper than the interpreter's recursion limit
    (a RecursionError) and integers of more than 4300 digits (a ValueError). Bad syntax stays a
    ``json.JSONDecodeError``, whose line and column the caller words for its format.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise DataError("bad JSON: lists or objects nested too deeply (hundreds of levels)") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        detail = (str(exc).strip().splitlines() or [""])[0].split(";")[0]
        raise DataError(f"bad JSON: {detail}") from None


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for each non-blank line; ``\\r\\n`` endings accepted."""
    # split("\n") rather than splitlines(): the latter also breaks on U+2028 and form feeds,
    # which may legally sit inside a JSON string or a question.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield number, line


def read_records(path: str | Path, parse: Callable[[str, str], Example], limit: int | None) -> list[Example]:
    """Examples from a one-record-per-line file: ``parse(line, "file:line")`` for each non-blank line.

    A parse error becomes a DataError prefixed with ``file:line``; reading stops after ``limit``
    records; a file without records is a DataError.
    """
    check_limit(limit)
    examples: list[Example] = []
    seen_any = False
    for number, line in iter_lines(read_text(path)):
        seen_any = True
        if limit is not None and len(examples) >= limit:
            break
        where = f"{path}:{number}"
        try:
            examples.append(parse(line, where))
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
    if not seen_any:
        raise DataError(f"{path}: no records (the file is empty or blank)")
    return examples


def _field(record: dict[str, Any], name: str) -> str:
    if name not in record:
        raise DataError(f"field {name!r} missing")
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"field {name!r} is empty")
    return value


def gsm8k_example(record: Any, steps: StepStyle, source: str) -> Example:
    """An Example from one GSM8K row ``{"question", "answer"}``; DataError without location."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    question = _field(record, "question")
    rationale = _field(record, "answer")
    answer = parse_reference(rationale)
    step_list = steps_from_rationale(rationale, steps)
    return Example(
        question=question.strip(),
        steps=tuple(step_list),
        answer=answer,
        difficulty=len(step_list),
        answer_type="number",
        meta={"source": source},
    )


def read_gsm8k_jsonl(path: str | Path, steps: StepStyle = "notes", limit: int | None = None) -> list[Example]:
    """Examples from an original GSM8K JSON-lines file (``question``, ``answer`` per line).

    ``answer`` becomes the number after ``####``, ``steps`` come from
    :func:`steps_from_rationale`, difficulty is the number of steps. Blank lines are skipped;
    reading stops after ``limit`` records (later lines are then not checked).
    """
    if steps not in STEP_STYLES:
        raise ConfigError(f"unknown steps style {steps!r} (expected one of {', '.join(STEP_STYLES)})")

    def parse(line: str, where: str) -> Example:
        try:
            record = parse_json(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"bad JSON at column {exc.colno}: {exc.msg}") from None
        return gsm8k_example(record, steps, where)

    return read_records(path, parse, limit)


def load_hub_rows(name: str, split: str, config: str | None = None):
    """The rows (a ``datasets.Dataset``) of one split of a Hugging Face hub data set.

    Any failure to load (offline without a cached copy, unknown id, split or config) becomes a
    one-line DataError that says how to go on: connect once to fill the cache, or give a file.
    """
    # Imported here: `datasets` is slow to import and only the hub loaders need it.
    import datasets

    where = f"{name}:{split}"
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the hub raises many unrelated types; all mean "could not load"
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
        hint = (
            "; HF_HUB_OFFLINE is set and no cached copy was found: load it once online, or give a "
            "local file instead (e.g. data.train=path/to/train.jsonl or --data path/to/test.jsonl)"
            if offline
            else ""
        )
        raise DataError(
            f"{where}: cannot load from the Hugging Face hub (config {config!r}): {type(exc).__name__}: {detail}{hint}"
        ) from None


def examples_from_rows(rows: Any, where: str, parse: Callable[[Any, str], Example], limit: int | None) -> list[Example]:
    """``parse(row, "name:split[i]")`` for each hub row (at most ``limit``); errors name the row."""
    examples: list[Example] = []
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            break
        try:
            examples.append(parse(row, f"{where}[{index}]"))
        except DataError as exc:
            raise DataError(f"{where}: row {index}: {exc}") from None
    if not examples and limit != 0:
        raise DataError(f"{where}: no records")
    return examples


def load_gsm8k_hub(
    name: str = "openai/gsm8k",
    split: str = "test",
    config: str | None = "main",
    steps: StepStyle = "notes",
    limit: int | None = None,
) -> list[Example]:
    """Examples of a GSM8K-format data set (``question``, ``answer`` columns) on the hub, via ``datasets``.

    ``load_gsm8k_hub("openai/gsm8k", "test")`` downloads (or reuses the cache of) the same
    rows as GSM8K's ``test.jsonl``. Any failure to load becomes a one-line DataError.
    """
    if steps not in STEP_STYLES:
        raise ConfigError(f"unknown steps style {steps!r} (expected one of {', '.join(STEP_STYLES)})")
    check_limit(limit)
    rows = load_hub_rows(name, split, config)
    return examples_from_rows(rows, f"{name}:{split}", lambda row, source: gsm8k_example(row, steps, source), limit)
