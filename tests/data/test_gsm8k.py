"""Tests of coconav.data.gsm8k: the GSM8K answer rule, step extraction and the GSM8K readers.

Real rows come from ``$COCONAV_TEST_DATA/gsm8k`` (skipped when the variable is unset); malformed inputs are
written to ``tmp_path``. The hub loader is tested offline by replacing
``datasets.load_dataset`` with a function returning real rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coconav.data.gsm8k import (  # noqa: E402
    extract_answer,
    is_correct,
    load_gsm8k_hub,
    parse_reference,
    read_gsm8k_jsonl,
    steps_from_rationale,
)
from coconav.errors import ConfigError, DataError  # noqa: E402

from conftest import real_data_path  # noqa: E402

# The first row of GSM8K test, verbatim.
JANET_QUESTION = (
    "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers' market "
    "daily for $2 per fresh duck egg. How much in dollars does she make every day at the "
    "farmers' market?"
)
JANET_ANSWER = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market.\n#### 18"
)
# A GSM8K test rationale (line 25) with no calculator note at all (an algebra rationale).
NO_NOTE_ANSWER = (
    "Let X be the original price of the book. The discounted price is X - X*25% = $19.50.\n"
    "Combining like terms, we get .75X = $19.50\n"
    "Dividing both sides by .75, we get X = $26.\n#### 26"
)


def need(relative: str) -> Path:
    return real_data_path(relative)  # skips when COCONAV_TEST_DATA is unset


# --- extract_answer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 1,000", "1000"),  # GSM8K's own normalisation strips thousands commas
        ("so 9 * 2 = 18\n#### 18", "18"),  # the marker beats the rationale's numbers
        ("### 12", "12"),  # COCONUT's marker has three hashes
        ("### 12\n### 13", "13"),  # the LAST marker wins
        ("#### 18\n\nQuestion: she has 5 eggs", "18"),  # first number after the last marker
        ("#### -3", "-3"),  # negative kept
        ("#### 18.00", "18"),  # trailing zeros dropped
        ("#### 007", "7"),  # leading zeros dropped
        ("#### -0.00", "0"),  # minus zero is plain zero
        ("#### $1,450,000", "1450000"),
        ("The answer is $18.00.", "18"),  # $ stripped, sentence period not a decimal point
        ("the final answer is: 42 dollars", "42"),  # colon, any case, trailing units
        ("THE ANSWER IS 7. Later I said 9.", "7"),  # 'answer is' beats the last number
        ("The answer is **-12**", "-12"),  # markdown bold around the number
        ("A: 7", "7"),
        ("Answer: 1,450,000.", "1450000"),
        ("5 apples then A: 3 and more 8", "3"),  # 'A:' beats the trailing number
        ("she has 3 then 4 apples", "4"),  # fallback: last number in the text
        ("so x = -3", "-3"),  # a leading minus is a sign...
        ("16-3-4=9", "9"),  # ...but the '-' of a subtraction is not
        ("0.5 cups", "0.5"),
        ("it grows .5 inches", "0.5"),  # bare decimal gets its leading zero
        ("$1,000.50 in total", "1000.5"),
        ("#### eighteen, she had 7", "7"),  # marker without a number: fall through to the rest
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_answer_forms(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extract_answer_list_commas_are_not_thousands() -> None:
    # "1, 2, 3" is a list, not 123: only real 3-digit groups count as thousands separators.
    assert extract_answer("counts 1, 2, 3") == "3"


# --- is_correct / parse_reference ---------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "reference"),
    [
        ("#### 18", "18"),
        ("#### 18.0", "18"),  # 18 == 18.0
        ("The answer is 1000", "1,000"),  # 1,000 == 1000
        ("### .5", "0.5"),  # .5 == 0.5
        ("#### 0.50", ".5"),
        ("The answer is $18.00.", JANET_ANSWER),  # full answer field as reference
        ("#### 17.9999999999", "18"),  # float printing noise within the 1e-6 tolerance
        ("#### -3", "-3"),
    ],
)
def test_is_correct_true(completion: str, reference: str) -> None:
    assert is_correct(completion, reference)


@pytest.mark.parametrize(
    ("completion", "reference"),
    [
        ("#### 19", "18"),
        ("#### 3", "-3"),  # the sign matters
        ("#### 18.01", "18"),  # cents are a real difference, far above the tolerance
        ("#### 1000001", "1,000,000"),
        ("I don't know", "18"),  # no number at all is wrong, not an error
    ],
)
def test_is_correct_false(completion: str, reference: str) -> None:
    assert not is_correct(completion, reference)


def test_long_numbers_are_not_rounded() -> None:
    # 33 digits: more than Decimal's default 28-digit precision, which would merge these two.
    big = "123456789012345678901234567890123"
    assert extract_answer(f"#### {big}") == big
    assert not is_correct(f"#### {big}", big[:-1] + "4")


def test_is_correct_bad_reference_is_data_error() -> None:
    with pytest.raises(DataError, match="not a number"):
        is_correct("#### 3", "three")


def test_parse_reference() -> None:
    assert parse_reference(JANET_ANSWER) == "18"
    assert parse_reference("blah\n#### 1,450,000") == "1450000"
    with pytest.raises(DataError, match="no '#### N'"):
        parse_reference("Janet makes 18 dollars")
    with pytest.raises(DataError, match="not a number: 'abc'"):
        parse_reference("so\n#### abc")


# --- steps_from_rationale -----------------------------------------------------------------


def test_steps_notes_are_calculator_notes() -> None:
    # The GSM8k-Aug step format: each <<...>> note with its brackets, in order.
    assert steps_from_rationale(JANET_ANSWER) == ["<<16-3-4=9>>", "<<9*2=18>>"]


def test_steps_lines_drop_notes_and_answer_line() -> None:
    assert steps_from_rationale(JANET_ANSWER, "lines") == [
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.",
    ]


def test_steps_notes_fall_back_to_lines_without_notes() -> None:
    # No calculator note: "notes" returns the same as "lines" so the example keeps its steps.
    lines = steps_from_rationale(NO_NOTE_ANSWER, "lines")
    assert len(lines) == 3
    assert steps_from_rationale(NO_NOTE_ANSWER, "notes") == lines


def test_steps_lines_skip_blank_lines() -> None:
    assert steps_from_rationale("a = <<1+1=2>>2\n\n  \nb = 3\n#### 3", "lines") == [
        "a = 2",
        "b = 3",
    ]


def test_steps_unknown_style() -> None:
    with pytest.raises(ConfigError, match="unknown steps style 'words'"):
        steps_from_rationale(JANET_ANSWER, "words")  # type: ignore[arg-type]


# --- read_gsm8k_jsonl on real data --------------------------------------------------------


def test_read_first_real_row() -> None:
    (example,) = read_gsm8k_jsonl(need("gsm8k/test.jsonl"), limit=1)
    assert example.question == JANET_QUESTION
    assert example.answer == "18"
    assert example.steps == ("<<16-3-4=9>>", "<<9*2=18>>")
    assert example.difficulty == 2  # difficulty = number of steps
    assert example.answer_type == "number"
    assert example.meta["source"].endswith("test.jsonl:1")


@pytest.mark.parametrize(("split", "rows", "fallbacks"), [("test", 1319, 18), ("train", 7473, 95)])
def test_read_full_real_files(split: str, rows: int, fallbacks: int) -> None:
    # Row counts from the GSM8K release; `fallbacks` = rationales with no calculator note
    # (counted independently by scanning the raw answers for "<<"), whose "notes" steps are
    # therefore whole lines.
    examples = read_gsm8k_jsonl(need(f"gsm8k/{split}.jsonl"))
    assert len(examples) == rows
    assert sum(not e.steps[0].startswith("<<") for e in examples) == fallbacks
    # Every reference is a canonical number, and every rationale scores as its own answer.
    raw = [json.loads(line) for line in need(f"gsm8k/{split}.jsonl").read_text("utf-8").splitlines()]
    assert all(is_correct(r["answer"], e.answer) for r, e in zip(raw, examples, strict=True))


def test_read_lines_style_real() -> None:
    (example,) = read_gsm8k_jsonl(need("gsm8k/test.jsonl"), steps="lines", limit=1)
    assert example.steps[0] == "Janet sells 16 - 3 - 4 = 9 duck eggs a day."


# --- read_gsm8k_jsonl on malformed files --------------------------------------------------


def write(tmp_path: Path, text: str | bytes, name: str = "bad.jsonl") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


GOOD = json.dumps({"question": "Q?", "answer": "x <<1+1=2>>2\n#### 2"})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([GOOD, "{not json"], r"bad\.jsonl:2: bad JSON at column 2"),
        ([GOOD, '["question"]'], r"bad\.jsonl:2: expected a JSON object, got list"),
        ([json.dumps({"answer": "#### 2"})], r"bad\.jsonl:1: field 'question' missing"),
        ([json.dumps({"question": "Q?"})], r"bad\.jsonl:1: field 'answer' missing"),
        (
            [json.dumps({"question": 3, "answer": "#### 2"})],
            r"bad\.jsonl:1: field 'question' must be a string, got int",
        ),
        (
            [json.dumps({"question": "  ", "answer": "#### 2"})],
            r"bad\.jsonl:1: field 'question' is empty",
        ),
        (
            [json.dumps({"question": "Q?", "answer": "#### abc"})],
            r"bad\.jsonl:1: answer after '####' is not a number",
        ),
        (
            [json.dumps({"question": "Q?", "answer": "it is 2"})],
            r"bad\.jsonl:1: answer has no '#### N' line",
        ),
    ],
)
def test_malformed_jsonl(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_gsm8k_jsonl(path)


def test_blank_lines_are_skipped_and_numbered(tmp_path: Path) -> None:
    # Line numbers in errors count blank lines: the bad record is on physical line 4.
    path = write(tmp_path, f"{GOOD}\n\n   \n{{}}\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:4: field 'question' missing"):
        read_gsm8k_jsonl(path)
    ok = write(tmp_path, f"\n{GOOD}\r\n\n{GOOD}\n", "ok.jsonl")
    assert len(read_gsm8k_jsonl(ok)) == 2  # CRLF endings are fine too


def test_invalid_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid UTF-8 \(byte 0xe9 at column 18\)"):
        read_gsm8k_jsonl(path)


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(DataError, match=r"bad\.jsonl: no records"):
        read_gsm8k_jsonl(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_gsm8k_jsonl(tmp_path / "nope.jsonl")


def test_limit_stops_early(tmp_path: Path) -> None:
    # With limit=1 the broken second line is never parsed.
    path = write(tmp_path, f"{GOOD}\n{{broken\n")
    assert len(read_gsm8k_jsonl(path, limit=1)) == 1
    with pytest.raises(ConfigError, match="limit"):
        read_gsm8k_jsonl(path, limit=-1)


# --- load_gsm8k_hub, offline ---------------------------------------------------------------


def real_rows(count: int) -> list[dict[str, str]]:
    lines = need("gsm8k/test.jsonl").read_text("utf-8").splitlines()[:count]
    return [json.loads(line) for line in lines]


def test_load_gsm8k_hub_with_patched_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = real_rows(3)
    calls: list[tuple] = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_gsm8k_hub(limit=2)
    assert calls == [("openai/gsm8k", "main", "test")]  # the defaults reach the hub call
    assert len(examples) == 2  # limit honoured
    assert examples[0].question == JANET_QUESTION and examples[0].answer == "18"
    assert examples[0].meta["source"] == "openai/gsm8k:test[0]"


def test_load_gsm8k_hub_failure_is_one_line_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        load_gsm8k_hub("openai/gsm8k", split="train")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("openai/gsm8k:train: cannot load from the Hugging Face hub")
    assert "ConnectionError: Couldn't reach" in message


def test_load_gsm8k_hub_bad_row(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = [{"question": "Q?", "answer": "#### 2"}, {"question": "Q?", "answer": "no marker"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    with pytest.raises(DataError, match=r"openai/gsm8k:test: row 1: answer has no '#### N'"):
        load_gsm8k_hub()
