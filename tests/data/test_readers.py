"""Tests of coconav.data.readers: GSM8k-Aug and COCONUT JSON readers and load_examples.

Real files come from ``$COCONAV_TEST_DATA`` (skipped when the variable is unset); every malformed case is written
to ``tmp_path`` and must raise a one-line DataError naming the file and line or record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from coconav.data.readers import load_examples, read_coconut_json, read_gsm8k_aug  # noqa: E402
from coconav.errors import ConfigError, DataError  # noqa: E402

from conftest import real_data_path  # noqa: E402


def need(relative: str) -> Path:
    return real_data_path(relative)  # skips when COCONAV_TEST_DATA is unset


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- GSM8k-Aug -----------------------------------------------------------------------------


def test_aug_first_real_row() -> None:
    (example,) = read_gsm8k_aug(need("gsm8k_aug/valid.txt"), limit=1)
    # valid.txt line 1 ends "...per year?||<<4-2=2>> <<2/.5=4>> <<12/4=3>> <<100*3=300>> #### 300"
    assert example.question.startswith("John cuts his grass to 2 inches.")
    assert example.steps == ("<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>")
    assert example.answer == "300"
    assert example.difficulty == 4 and example.answer_type == "number"


@pytest.mark.parametrize(("split", "rows", "no_steps"), [("valid", 500, 6), ("test", 1319, 18)])
def test_aug_full_real_files(split: str, rows: int, no_steps: int) -> None:
    # `no_steps`: lines like "...|| #### 9" with no equation at all (counted with grep "|| ####").
    examples = read_gsm8k_aug(need(f"gsm8k_aug/{split}.txt"))
    assert len(examples) == rows
    assert sum(not e.steps for e in examples) == no_steps


def test_aug_test_matches_gsm8k_test() -> None:
    # GSM8k-Aug test is GSM8K test with the notes as steps: same questions, answers, and the
    # same notes wherever GSM8K has any (its 18 note-less rationales are answer-only in Aug).
    aug = read_gsm8k_aug(need("gsm8k_aug/test.txt"))
    original = load_examples(str(need("gsm8k/test.jsonl")))
    assert [e.question for e in aug] == [e.question for e in original]
    assert [e.answer for e in aug] == [e.answer for e in original]
    assert all(a.steps == o.steps for a, o in zip(aug, original, strict=True) if a.steps)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "Q? <<1+1=2>> #### 2",
            r"bad\.txt:2: expected 'question\|\|<<eq>> \.\.\. #### N', found no '\|\|'",
        ),
        ("Q?||<<1+1=2>> 2", r"bad\.txt:2: expected '#### N' after '\|\|', found no '####'"),
        ("Q?||<<1+1=2>> #### abc", r"bad\.txt:2: answer after '####' is not a number: 'abc'"),
        ("  ||<<1+1=2>> #### 2", r"bad\.txt:2: question is empty"),
    ],
)
def test_aug_malformed(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, "bad.txt", f"Q?||<<1+1=2>> #### 2\n{line}\n")
    with pytest.raises(DataError, match=message):
        read_gsm8k_aug(path)


def test_aug_blank_lines_skipped_and_commas_normalised(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.txt", "\nQ?||<<500*2=1000>> #### 1,000\n\n")
    (example,) = read_gsm8k_aug(path)
    assert example.answer == "1000"  # thousands comma stripped as in GSM8K
    assert example.meta["source"].endswith("ok.txt:2")  # physical line, counting the blank one


def test_aug_empty_and_invalid_utf8(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"empty\.txt: no records"):
        read_gsm8k_aug(write(tmp_path, "empty.txt", "\n\n"))
    with pytest.raises(DataError, match=r"latin\.txt:1: invalid UTF-8 \(byte 0xe9 at column 4\)"):
        read_gsm8k_aug(write(tmp_path, "latin.txt", b"caf\xe9?||<<1+1=2>> #### 2\n"))


# --- COCONUT JSON --------------------------------------------------------------------------


def test_coconut_first_real_prosqa_row() -> None:
    (example,) = read_coconut_json(need("prosqa/test.json"), limit=1)
    assert example.question.endswith("Is Sally a hilpus or sterpus?")
    assert example.answer == "Sally is a sterpus."
    assert example.answer_type == "text"  # not a number
    assert example.steps == (
        "Sally is a scrompus.",
        "Every scrompus is a rempus.",
        "Every rempus is a sterpus.",
    )
    assert example.difficulty == 3
    # The graph keys are not part of the record but are kept for analysis.
    assert example.meta["root"] == 1 and example.meta["target"] == 21


@pytest.mark.parametrize(("split", "rows"), [("valid", 300), ("test", 500)])
def test_coconut_full_real_prosqa(split: str, rows: int) -> None:
    # valid.json holds 300 records, not the 500 the data README announces (checked with
    # json.load + len); test.json holds 500.
    examples = read_coconut_json(need(f"prosqa/{split}.json"))
    assert len(examples) == rows
    assert all(e.answer_type == "text" and 3 <= e.difficulty <= 6 for e in examples)


def record(**fields) -> dict:
    base = {"question": "Q?", "steps": ["s1", "s2"], "answer": "A."}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not ...}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (record(question=...), r"record 1: field 'question' missing"),
        (record(answer=...), r"record 1: field 'answer' missing"),
        (record(steps=...), r"record 1: field 'steps' missing"),
        (record(question=["Q?"]), r"record 1: field 'question' must be a string, got list"),
        (record(question=" \n"), r"record 1: field 'question' is empty"),
        (record(steps="s1"), r"record 1: field 'steps' must be a list of strings"),
        (record(steps=["s1", 2]), r"record 1: field 'steps' must be a list of strings"),
        (record(steps=[]), r"record 1: field 'steps' is an empty list"),
        (record(steps=["s1", "  "]), r"record 1: field 'steps' has an empty step at index 1"),
        (record(answer=None), r"record 1: field 'answer' must be a string, got NoneType"),
        (record(answer=""), r"record 1: field 'answer' is empty"),
        ("just a string", r"record 1: expected an object, got str"),
    ],
)
def test_coconut_malformed_records(tmp_path: Path, bad: object, message: str) -> None:
    # Record 0 is fine, so the index in the message must point at the second record (0-based 1).
    path = write(tmp_path, "bad.json", json.dumps([record(), bad]))
    with pytest.raises(DataError, match=r"bad\.json: " + message):
        read_coconut_json(path)


def test_coconut_bad_json_reports_line_and_column(tmp_path: Path) -> None:
    # The missing comma sits on line 3; the parser notices it at column 3 of that line.
    path = write(tmp_path, "bad.json", '[\n  {"question": "Q?"}\n  {"question": "R?"}\n]\n')
    with pytest.raises(DataError, match=r"bad\.json:3: bad JSON at column 3: Expecting ','"):
        read_coconut_json(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"question": "Q?"}', r"obj\.json: expected a JSON list of records, got dict"),
        ("[]", r"obj\.json: no records \(the JSON list is empty\)"),
        ("", r"obj\.json: no records"),
    ],
)
def test_coconut_top_level(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_coconut_json(write(tmp_path, "obj.json", text))


def test_coconut_invalid_utf8(tmp_path: Path) -> None:
    # "[\n" then the bad byte is the 16th byte of line 2.
    path = write(tmp_path, "bad.json", b'[\n{"question": "\xff"}]')
    with pytest.raises(DataError, match=r"bad\.json:2: invalid UTF-8 \(byte 0xff at column 15\)"):
        read_coconut_json(path)


def test_coconut_numeric_answers(tmp_path: Path) -> None:
    # GSM8K in COCONUT format: answers that are numbers become canonical with type "number".
    path = write(
        tmp_path,
        "gsm.json",
        json.dumps([record(answer="1,000"), record(answer=18), record(answer="18 eggs")]),
    )
    first, second, third = read_coconut_json(path)
    assert (first.answer, first.answer_type) == ("1000", "number")
    assert (second.answer, second.answer_type) == ("18", "number")  # a JSON number is accepted
    assert (third.answer, third.answer_type) == ("18 eggs", "text")  # not a single number


# --- load_examples ---------------------------------------------------------------------------


def test_dispatch_by_extension() -> None:
    gsm = load_examples(need("gsm8k/test.jsonl"), limit=2)  # a Path is accepted too
    aug = load_examples(str(need("gsm8k_aug/valid.txt")), limit=2)
    prosqa = load_examples(str(need("prosqa/test.json")), limit=2)
    assert gsm[0].answer == "18" and aug[0].answer == "300" and prosqa[0].answer == "Sally is a sterpus."


def test_dispatch_steps_style_reaches_gsm8k() -> None:
    (example,) = load_examples(str(need("gsm8k/test.jsonl")), steps="lines", limit=1)
    assert example.steps[0] == "Janet sells 16 - 3 - 4 = 9 duck eggs a day."
    with pytest.raises(ConfigError, match="unknown steps style"):
        load_examples(str(need("gsm8k/test.jsonl")), steps="both")  # type: ignore[arg-type]


def test_format_prefix_overrides_extension(tmp_path: Path) -> None:
    # A GSM8k-Aug file saved as .data (or any name) is read when the format is named.
    path = write(tmp_path, "aug.data", "Q?||<<1+1=2>> #### 2\n")
    (example,) = load_examples(f"gsm8k_aug:{path}")
    assert example.steps == ("<<1+1=2>>",)
    jsonl_named_json = write(tmp_path, "x.json", json.dumps({"question": "Q?", "answer": "#### 4"}) + "\n")
    assert load_examples(f"gsm8k:{jsonl_named_json}")[0].answer == "4"
    coconut = write(tmp_path, "c.txt", json.dumps([record()]))
    assert load_examples(f"coconut:{coconut}")[0].answer_type == "text"


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"x\.csv: unknown data file extension '\.csv'"):
        load_examples(str(write(tmp_path, "x.csv", "a,b\n")))
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file"):
        load_examples(str(tmp_path / "missing.jsonl"))
    # Shaped like owner/name, but the data-file extension says it is a missing local file.
    with pytest.raises(DataError, match=r"data/x\.jsonl: no such file"):
        load_examples("data/x.jsonl")
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        load_examples(f"gsm8k_aug:{tmp_path / 'nope.txt'}")
    with pytest.raises(DataError, match="empty data spec"):
        load_examples("  ")


GSM8K_ROW = {"question": "Q?", "answer": "1+1=<<1+1=2>>2\n#### 2"}
# A row of whynlp/gsm8k-aug (the hub copy of GSM8k-Aug): steps are the calculator notes.
AUG_ROW = {"question": "Q?", "steps": ["<<600*30/100=180>>", "<<180*2=360>>"], "answer": "360"}


def patch_hub(monkeypatch: pytest.MonkeyPatch, rows: list[dict]) -> list[tuple]:
    """Make datasets.load_dataset return `rows` in memory; returns the list of calls it records."""
    import datasets

    calls: list[tuple] = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_ids_go_to_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = patch_hub(monkeypatch, [GSM8K_ROW] * 3)
    assert len(load_examples("openai/gsm8k:train", steps="lines", limit=2)) == 2
    load_examples("openai/gsm8k")  # split defaults to test
    load_examples("gsm8k:openai/gsm8k:test")  # the gsm8k prefix is compatible with the hub
    # openai/gsm8k needs its "main" config; other ids load their default config.
    assert calls == [
        ("openai/gsm8k", "main", "train"),
        ("openai/gsm8k", "main", "test"),
        ("openai/gsm8k", "main", "test"),
    ]
    # The hub serves GSM8K and GSM8k-Aug rows here; COCONUT JSON needs a local file.
    with pytest.raises(DataError, match="no such file"):
        load_examples("coconut:owner/prosqa")


def test_gsm8k_aug_hub_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    no_steps = {"question": "Answer only?", "steps": [], "answer": "9"}  # as in GSM8k-Aug's text files
    calls = patch_hub(monkeypatch, [AUG_ROW, no_steps])
    first, second = load_examples("whynlp/gsm8k-aug:validation")
    assert calls == [("whynlp/gsm8k-aug", None, "validation")]
    assert first.steps == ("<<600*30/100=180>>", "<<180*2=360>>") and first.answer == "360"
    assert first.answer_type == "number" and first.meta["source"] == "whynlp/gsm8k-aug:validation[0]"
    assert second.steps == () and second.answer == "9"
    # The steps column decides the row format; "gsm8k_aug:" forces it.
    assert load_examples("gsm8k_aug:whynlp/gsm8k-aug:test")[0].steps == first.steps


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "Q?", "steps": ["<<1=1>>"], "answer": "many"}, "column 'answer' is not a number: 'many'"),
        ({"question": " ", "steps": [], "answer": "1"}, "column 'question' must be a non-empty string"),
        (
            {"question": "Q?", "steps": ["<<1=1>>", ""], "answer": "1"},
            "column 'steps' must be a list of non-empty strings",
        ),
        ({"question": "Q?", "steps": ["<<1=1>>"]}, "column 'answer' missing"),
    ],
    ids=["answer", "question", "steps", "no-answer"],
)
def test_gsm8k_aug_hub_bad_rows(monkeypatch: pytest.MonkeyPatch, row: dict, message: str) -> None:
    patch_hub(monkeypatch, [AUG_ROW, row])
    with pytest.raises(DataError) as info:
        load_examples("gsm8k_aug:whynlp/gsm8k-aug:train")
    assert str(info.value) == f"whynlp/gsm8k-aug:train: row 1: {message}"


def test_hub_id_offline_without_cache_is_one_line_error(tmp_path: Path) -> None:
    """The real datasets call, offline with an empty cache: one clear line, no traceback, no retries."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    code = (
        "import sys\nfrom coconav.data.readers import load_examples\nfrom coconav.errors import DataError\n"
        "try:\n    load_examples('openai/gsm8k:test')\nexcept DataError as err:\n    print(err)\n    sys.exit(2)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    (line,) = res.stdout.splitlines()
    assert line.startswith("openai/gsm8k:test: cannot load from the Hugging Face hub (config 'main'): ")
    assert line.endswith(
        "; HF_HUB_OFFLINE is set and no cached copy was found: load it once online, or give a "
        "local file instead (e.g. data.train=path/to/train.jsonl or --data path/to/test.jsonl)"
    )


def test_hub_id_through_patched_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    line = need("gsm8k/test.jsonl").read_text("utf-8").splitlines()[0]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list([json.loads(line)]))
    (example,) = load_examples("openai/gsm8k:test")
    assert example.answer == "18" and example.steps == ("<<16-3-4=9>>", "<<9*2=18>>")


# --- every reader against every malformed file -------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000  # deeper than the interpreter's recursion limit
LONG_INT = "1" * 5000  # int() refuses more than 4300 digits
GOOD_GSM8K_LINE = '{"question": "Q?", "answer": "<<1+1=2>> #### 2"}'
GOOD_AUG_LINE = "Q?||<<1+1=2>> #### 2"
MALFORMED = {  # name -> {extension: (file content, the message's pattern after "FILE")}
    "deep": {
        ".json": (DEEP, r": bad JSON: lists or objects nested too deeply"),
        ".jsonl": (f"{GOOD_GSM8K_LINE}\n{DEEP}\n", r":2: bad JSON: lists or objects nested too deeply"),
    },
    "long-int": {
        ".json": (f"[{LONG_INT}]", r": bad JSON: Exceeds the limit \(4300 digits\)"),
        ".jsonl": (f'{{"question": "Q?", "answer": {LONG_INT}}}\n', r":1: bad JSON: Exceeds the limit"),
    },
    "not-utf8": {
        ".json": (b"[\xff]", r":1: invalid UTF-8 \(byte 0xff at column 2\)"),
        ".jsonl": (GOOD_GSM8K_LINE.encode() + b"\n\xfe\n", r":2: invalid UTF-8 \(byte 0xfe at column 1\)"),
        ".txt": (GOOD_AUG_LINE.encode() + b"\nQ\xe9?||#### 1\n", r":2: invalid UTF-8 \(byte 0xe9 at column 2\)"),
    },
    "empty": {
        ".json": ("", r": no records \(the file is empty or blank\)"),
        ".jsonl": ("\n \n", r": no records \(the file is empty or blank\)"),
        ".txt": ("", r": no records \(the file is empty or blank\)"),
    },
    "wrong-top-level": {
        ".json": ('{"question": "Q?", "steps": ["s"], "answer": "1"}', r": expected a JSON list of records, got dict"),
        ".jsonl": ('["Q?", "#### 1"]\n', r":1: expected a JSON object, got list"),
        ".txt": ("Q? #### 1\n", r":1: expected 'question\|\|<<eq>> ... #### N', found no '\|\|'"),
    },
}
CASES = [(name, ext) for name, by_ext in MALFORMED.items() for ext in by_ext]


@pytest.mark.parametrize(("name", "ext"), CASES, ids=[f"{n}{e}" for n, e in CASES])
def test_every_reader_refuses_every_malformed_file_in_one_line(tmp_path: Path, name: str, ext: str) -> None:
    text, message = MALFORMED[name][ext]
    path = write(tmp_path, f"bad{ext}", text)
    with pytest.raises(DataError, match="^" + str(path).replace(".", r"\.") + message) as info:
        load_examples(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # `except ValueError` catches it too


def test_a_folder_named_like_a_data_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.json").mkdir()
    with pytest.raises(DataError, match=r"data\.json: is a directory, expected a data file"):
        load_examples(tmp_path / "data.json")


@pytest.mark.parametrize("ext", [".json", ".jsonl"])
def test_a_deeply_nested_file_through_the_cli_is_one_line(cli, tiny_run: Path, tmp_path: Path, ext: str) -> None:
    path = write(tmp_path, f"deep{ext}", MALFORMED["deep"][ext][0])
    assert (
        "bad JSON: lists or objects nested too deeply" in cli("eval", "--checkpoint", tiny_run, "--data", path).error()
    )
