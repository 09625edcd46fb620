"""The `coconav` command line end to end: bad data, bad checkpoints, bad questions, train/resume.

Every user error must end with exit code 2 and ONE stderr line `coconav: error: ...` naming the
problem (file and line where there is one), never a traceback. The checkpoint is the session's
tiny COCONUT run (conftest.tiny_run); tests that change a checkpoint work on a copy.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
import torch

from coconav.data.curriculum import build_prompt, encode_question
from coconav.data.tasks import get_task
from coconav.io.checkpoint import list_checkpoints
from coconav.model.latent_lm import LatentLM

REPO = Path(__file__).resolve().parent.parent
DEMO_PRESET = REPO / "configs" / "demo.yaml"
LAST_STAGE = 6  # the demo preset: max_stage 6, final_stage_steps 0 -> stages 0..6, 1 thought per step


def last_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / f"stage-{LAST_STAGE}"


def copy_checkpoint(run: Path, dest: Path) -> Path:
    shutil.copytree(last_checkpoint(run), dest)
    return dest


def a_question() -> str:
    return get_task("arithmetic").generate(random.Random(0), 3).question


def metric_steps(run: Path, prefix: str = "train/loss") -> list[int]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [rec["step"] for rec in map(json.loads, lines) if prefix in rec]


# -- eval --data FILE: malformed data files -------------------------------------------------------

GOOD_GSM8K = '{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\\n#### 7"}\n'

DATA_CASES = {
    # name: (file name, content, expected message with {path})
    "bad_json_jsonl": (
        "d.jsonl",
        '{"question": "a", \n',
        "{path}:1: bad JSON at column 19: Expecting property name enclosed in double quotes",
    ),
    "bad_json_second_line": (
        "d.jsonl",
        GOOD_GSM8K + '{"question": "a" "answer": "#### 1"}\n',
        "{path}:2: bad JSON at column 18: Expecting ',' delimiter",
    ),
    "bad_json_coconut": (
        "d.json",
        '[\n  {"question": "q",\n   "steps": ["a"] "answer": "1"}\n]\n',
        "{path}:3: bad JSON at column 19: Expecting ',' delimiter",
    ),
    "invalid_utf8": (
        "d.jsonl",
        GOOD_GSM8K.encode() + b'{"question": "caf\xe9", "answer": "#### 1"}\n',
        "{path}:2: invalid UTF-8 (byte 0xe9 at column 18)",
    ),
    "invalid_utf8_coconut": (
        "d.json",
        b'[{"question": "\xff", "steps": ["a"], "answer": "1"}]',
        "{path}:1: invalid UTF-8 (byte 0xff at column 16)",
    ),
    "missing_question_jsonl": ("d.jsonl", '{"answer": "#### 3"}\n', "{path}:1: field 'question' missing"),
    "missing_answer_jsonl": ("d.jsonl", '{"question": "q"}\n', "{path}:1: field 'answer' missing"),
    "missing_question_coconut": (
        "d.json",
        '[{"steps": ["a"], "answer": "1"}]',
        "{path}: record 0: field 'question' missing",
    ),
    "missing_answer_coconut": (
        "d.json",
        '[{"question": "q", "steps": ["a"]}, {"question": "q"}]',
        "{path}: record 0: field 'answer' missing",
    ),
    "question_not_string_jsonl": (
        "d.jsonl",
        '{"question": 3, "answer": "#### 3"}\n',
        "{path}:1: field 'question' must be a string, got int",
    ),
    "answer_not_string_jsonl": (
        "d.jsonl",
        '{"question": "q", "answer": ["#### 3"]}\n',
        "{path}:1: field 'answer' must be a string, got list",
    ),
    "record_not_object_jsonl": ("d.jsonl", '["q", "#### 3"]\n', "{path}:1: expected a JSON object, got list"),
    "steps_not_list_coconut": (
        "d.json",
        '[{"question": "q", "steps": "a", "answer": "1"}]',
        "{path}: record 0: field 'steps' must be a list of strings",
    ),
    "answer_not_string_coconut": (
        "d.json",
        '[{"question": "q", "steps": ["a"], "answer": [1]}]',
        "{path}: record 0: field 'answer' must be a string, got list",
    ),
    "empty_steps_coconut": (
        "d.json",
        '[{"question": "q", "steps": ["a"], "answer": "1"}, {"question": "q", "steps": [], "answer": "1"}]',
        "{path}: record 1: field 'steps' is an empty list",
    ),
    "non_numeric_gsm8k_answer": (
        "d.jsonl",
        '{"question": "q", "answer": "so\\n#### many"}\n',
        "{path}:1: answer after '####' is not a number: 'many'",
    ),
    "gsm8k_answer_without_marker": (
        "d.jsonl",
        '{"question": "q", "answer": "7"}\n',
        "{path}:1: answer has no '#### N' line",
    ),
    "empty_file_jsonl": ("d.jsonl", "", "{path}: no records (the file is empty or blank)"),
    "blank_file_jsonl": ("d.jsonl", "\n  \n", "{path}: no records (the file is empty or blank)"),
    "empty_file_coconut": ("d.json", "", "{path}: no records (the file is empty or blank)"),
    "empty_list_coconut": ("d.json", "[]", "{path}: no records (the JSON list is empty)"),
    "empty_file_gsm8k_aug": ("d.txt", "", "{path}: no records (the file is empty or blank)"),
    "unknown_extension": ("d.csv", "q,a\n", None),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_eval_rejects_malformed_data(cli, tiny_run: Path, tmp_path: Path, case: str) -> None:
    name, content, expected = DATA_CASES[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    msg = cli("eval", "--checkpoint", tiny_run, "--data", path).error()
    if expected is None:
        assert msg.startswith(f"{path}: unknown data file extension '.csv'")
    else:
        assert msg == expected.format(path=path)


def test_eval_missing_data_file(cli, tiny_run: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    assert cli("eval", "--checkpoint", tiny_run, "--data", missing).error() == f"{missing}: no such file"


def test_eval_good_data_file(cli, tiny_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "ok.json"
    data.write_text(json.dumps([{"question": a_question(), "steps": ["1 + 2 = 3"], "answer": "3"}]), encoding="utf-8")
    report = tmp_path / "report.json"
    res = cli("eval", "--checkpoint", tiny_run, "--data", data, "--out", report)
    assert res.rc == 0, res.err
    got = json.loads(report.read_text(encoding="utf-8"))
    assert got["num_questions"] == 1 and got["num_thoughts"] == LAST_STAGE and got["stage"] == LAST_STAGE
    assert got["checkpoint"] == str(last_checkpoint(tiny_run))


def test_eval_test_split(cli, tiny_run: Path) -> None:
    res = cli("eval", "--checkpoint", tiny_run, "--data", "test", "--num-thoughts", "2")
    assert res.rc == 0, res.err
    summary = json.loads(res.out)
    assert summary["num_questions"] == 8 and summary["num_thoughts"] == 2 and summary["mean_thoughts"] == 2.0


@pytest.mark.parametrize("flag", ["--no-steering", "--no-memory"])
def test_eval_ablation_flags_need_a_navigator(cli, tiny_run: Path, flag: str) -> None:
    message = cli("eval", "--checkpoint", tiny_run, "--data", "test", flag).error()
    assert message.startswith(f"{flag} needs a navigator checkpoint and no --num-thoughts (")
    assert message.endswith("has no navigator)")


def test_eval_error_is_the_only_stderr_output(cli, tiny_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("", encoding="utf-8")
    res = cli("eval", "--checkpoint", tiny_run, "--data", path)
    assert res.err == f"coconav: error: {path}: no records (the file is empty or blank)\n"


# -- broken checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_missing_checkpoint_folder(cli, tmp_path: Path, command: str) -> None:
    missing = tmp_path / "no_such_run"
    extra = ["--data", "test"] if command == "eval" else ["1 + 2 ?"]
    msg = cli(command, "--checkpoint", missing, *extra).error()
    assert str(missing) in msg


def test_missing_checkpoint_folder_says_not_found(cli, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_run"
    msg = cli("eval", "--checkpoint", missing).error()
    assert "not found" in msg or "does not exist" in msg or "no such" in msg
    assert "resume" not in msg


def test_checkpoint_folder_without_metadata(cli, tiny_run: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_run, tmp_path / "ckpt")
    (folder / "coconav.json").unlink()
    assert str(folder) in cli("generate", "--checkpoint", folder, "1 + 2 ?").error()


def test_checkpoint_folder_without_metadata_names_the_file(cli, tiny_run: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_run, tmp_path / "ckpt")
    (folder / "coconav.json").unlink()
    msg = cli("eval", "--checkpoint", folder).error()
    assert "coconav.json" in msg and "resume" not in msg


def test_checkpoint_with_corrupt_metadata(cli, tiny_run: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_run, tmp_path / "ckpt")
    (folder / "coconav.json").write_text('{"format_version": 1, "special_tok', encoding="utf-8")
    assert cli("eval", "--checkpoint", folder).error() == f"{folder}/coconav.json: corrupt metadata (not valid JSON)"


def test_checkpoint_with_unknown_format_version(cli, tiny_run: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_run, tmp_path / "ckpt")
    meta = json.loads((folder / "coconav.json").read_text(encoding="utf-8"))
    (folder / "coconav.json").write_text(json.dumps({**meta, "format_version": 99}), encoding="utf-8")
    assert (
        cli("generate", "--checkpoint", folder, "1 + 2 ?").error()
        == f"{folder}/coconav.json: unknown checkpoint format (expected format_version 1)"
    )


def test_checkpoint_with_truncated_weights(cli, tiny_run: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_run, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert cli("eval", "--checkpoint", folder).error().startswith(f"{folder}: cannot load the model weights (")


def test_checkpoint_without_weights(cli, tiny_run: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_run, tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    assert cli("eval", "--checkpoint", folder).error().startswith(f"{folder}: cannot load the model weights (")


def test_resume_without_trainer_state(cli, tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (last_checkpoint(run) / "trainer_state.safetensors").unlink()
    msg = cli("train", "--resume", run).error()
    assert msg == f"{last_checkpoint(run)}: trainer state missing or corrupt (FileNotFoundError)"


def test_resume_with_corrupt_trainer_state(cli, tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (last_checkpoint(run) / "trainer_state.json").write_text("{", encoding="utf-8")
    msg = cli("train", "--resume", run).error()
    assert msg == f"{last_checkpoint(run)}: trainer state missing or corrupt (JSONDecodeError)"


def test_resume_a_folder_that_is_not_a_run(cli, tmp_path: Path) -> None:
    assert cli("train", "--resume", tmp_path).error() == f"{tmp_path} has no config.yaml: is it a coconav run folder?"


def test_resume_a_run_without_checkpoints(cli, tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    assert cli("train", "--resume", run).error() == f"no complete checkpoint under {run}/checkpoints"


# -- generate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("question", ["", "   ", "\n\t "], ids=["empty", "spaces", "whitespace"])
def test_generate_empty_question(cli, tiny_run: Path, question: str) -> None:
    assert cli("generate", "--checkpoint", tiny_run, question).error() == "the question is empty"


def test_generate_question_longer_than_context(cli, tiny_run: Path) -> None:
    question = " ".join(["1"] * 600)  # 600 words, one token each; the tiny model's context is 512
    msg = cli("generate", "--checkpoint", tiny_run, question).error()
    match = re.fullmatch(r"the question has (\d+) tokens, longer than the model's context of 512", msg)
    assert match and int(match.group(1)) >= 600, msg


def test_generate_question_that_leaves_no_room_for_thoughts(cli, tiny_run: Path) -> None:
    question = " ".join(["1"] * 508)  # 508 + <bot> fits 512, but not with 6 thoughts and <eot>
    msg = cli("generate", "--checkpoint", tiny_run, question).error()
    assert msg == f"a prompt of 509 tokens plus {LAST_STAGE} thoughts does not fit the model's context of 512 positions"


def test_generate_negative_thoughts(cli, tiny_run: Path) -> None:
    assert (
        cli("generate", "--checkpoint", tiny_run, "1 + 2 ?", "--num-thoughts", "-1").error()
        == "--num-thoughts must be >= 0, got -1 (see 'coconav generate --help')"
    )


def test_generate_prints_the_answer(cli, tiny_run: Path) -> None:
    question = a_question()
    res = cli("generate", "--checkpoint", tiny_run, question)
    assert res.rc == 0, res.err
    # the same generation done by hand: the last stage's checkpoint, its thought count, greedy
    lm = LatentLM.from_pretrained(last_checkpoint(tiny_run)).eval()
    prompt = build_prompt(encode_question(lm.tokenizer, question), "coconut", LAST_STAGE, lm.special)
    expected = lm.generate([prompt], num_thoughts=LAST_STAGE, max_new_tokens=8).texts[0]
    assert res.out == expected + "\n"


def test_generate_show_thoughts(cli, tiny_run: Path) -> None:
    res = cli("generate", "--checkpoint", tiny_run, a_question(), "--show-thoughts", "--top-k", "3")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].startswith("answer:")
    header = re.fullmatch(r"mode: coconut, thoughts: (\d+), forward passes: (\d+)", lines[1])
    assert header, lines[1]
    assert int(header.group(1)) == LAST_STAGE
    thought_lines = lines[2:]
    assert len(thought_lines) == LAST_STAGE
    for i, line in enumerate(thought_lines, start=1):
        assert line.startswith(f"thought {i}: ")
        assert len(re.findall(r"'[^']*' \d\.\d\d", line)) == 3  # top-3 tokens with probabilities


def test_generate_show_thoughts_with_num_thoughts(cli, tiny_run: Path) -> None:
    res = cli("generate", "--checkpoint", tiny_run, a_question(), "--show-thoughts", "--num-thoughts", "2")
    assert res.rc == 0, res.err
    assert "thoughts: 2," in res.out
    assert re.findall(r"^thought (\d+): ", res.out, flags=re.M) == ["1", "2"]


# -- train: no silent overwrite, resume -------------------------------------------------------------


def test_train_twice_without_resume_is_refused(cli, tiny_run: Path, tiny_overrides: list[str]) -> None:
    before = {
        p: p.read_bytes() for p in (tiny_run / "config.yaml", tiny_run / "metrics.jsonl", tiny_run / "stages.json")
    }
    checkpoints = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    msg = cli("train", "--config", DEMO_PRESET, *tiny_overrides, f"out_dir={tiny_run}").error()
    assert msg == (
        f"{tiny_run} already holds checkpoints: pass --resume {tiny_run} to continue it, or choose another out_dir"
    )
    assert {p: p.read_bytes() for p in before} == before  # nothing rewritten
    assert sorted(p.name for p in (tiny_run / "checkpoints").iterdir()) == checkpoints


def test_resume_continues_an_interrupted_run(
    cli, tmp_path: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from coconav.recipes import train_coconut

    run = tmp_path / "run"
    original = train_coconut.train_stage

    def stop_at_stage_2(r, stage, state):
        if stage == 2:
            raise KeyboardInterrupt  # Ctrl-C at the start of stage 2
        return original(r, stage, state)

    monkeypatch.setattr(train_coconut, "train_stage", stop_at_stage_2)
    res = cli("train", "--config", DEMO_PRESET, *tiny_overrides, "train.log_every=1", f"out_dir={run}")
    assert res.rc == 130 and "interrupted" in res.err
    assert [p.name for p in list_checkpoints(run)] == ["stage-0", "stage-1"]
    stages = json.loads((run / "stages.json").read_text(encoding="utf-8"))
    assert [s["stage"] for s in stages] == [0, 1]
    steps_before = metric_steps(run)
    assert steps_before == [1, 2, 3]  # 2 steps of stage 0, 1 of stage 1
    assert not (run / "results.json").exists()

    monkeypatch.setattr(train_coconut, "train_stage", original)
    res = cli("train", "--resume", run)
    assert res.rc == 0, res.err
    assert "resuming from" in res.out and "stage-1" in res.out
    stages = json.loads((run / "stages.json").read_text(encoding="utf-8"))
    assert [s["stage"] for s in stages] == [0, 1, 2, 3, 4, 5, 6]
    assert [s["global_step"] for s in stages] == [2, 3, 4, 5, 6, 7, 8]
    assert metric_steps(run) == steps_before + [4, 5, 6, 7, 8]  # continues, never restarts at 1
    assert (run / "results.json").is_file()
    assert [p.name for p in list_checkpoints(run)][-1] == f"stage-{LAST_STAGE}"


def test_resume_of_a_finished_run_trains_nothing(cli, tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    steps = metric_steps(run)
    res = cli("train", "--resume", run)
    assert res.rc == 0, res.err
    assert metric_steps(run) == steps
    assert len(json.loads((run / "stages.json").read_text(encoding="utf-8"))) == LAST_STAGE + 1


def test_fresh_train_does_not_mix_with_stale_metrics(cli, tmp_path: Path, tiny_overrides: list[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 5, "time": 0, "train/loss": 9.0}\n', encoding="utf-8")
    res = cli("train", "--config", DEMO_PRESET, *tiny_overrides, "curriculum.max_stage=1", f"out_dir={run}")
    if res.rc == 2:  # refusing is fine too
        return
    steps = metric_steps(run)
    assert steps == sorted(steps), steps


# -- device, dtype and answer length of eval / generate --------------------------------------------


def test_eval_honours_max_new_tokens(cli, tiny_run: Path) -> None:
    """--max-new-tokens used to be read by --zero-shot only and silently ignored for a checkpoint."""
    full = json.loads(cli("eval", "--checkpoint", tiny_run, "--data", "test").out)
    assert full["mean_new_tokens"] > 2  # the tiny model's answers use more than 2 of eval.max_new_tokens=8
    res = cli("eval", "--checkpoint", tiny_run, "--data", "test", "--max-new-tokens", "2")
    assert res.rc == 0, res.err
    assert 0 < json.loads(res.out)["mean_new_tokens"] <= 2


@pytest.mark.parametrize("command", ["eval", "generate"])
@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--dtype", "float7", "unknown dtype 'float7' (use one of float32, bfloat16, float16)"),
        ("--device", "gpu", "unknown device 'gpu' (use cpu, cuda, cuda:N or mps)"),
    ],
)
def test_bad_device_or_dtype_is_a_one_line_error(
    cli, tiny_run: Path, command: str, flag: str, value: str, message: str
) -> None:
    args = ["--data", "test"] if command == "eval" else [a_question()]
    assert cli(command, "--checkpoint", tiny_run, *args, flag, value).error() == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(cli, tiny_run: Path) -> None:
    assert (
        cli("generate", "--checkpoint", tiny_run, a_question(), "--device", "cuda").error()
        == "device 'cuda' asked for, but CUDA is not available here (use --device cpu)"
    )


def test_generate_with_device_and_dtype(cli, tiny_run: Path) -> None:
    res = cli(
        "generate", "--checkpoint", tiny_run, a_question(), "--device", "cpu", "--dtype", "bfloat16", "--show-thoughts"
    )
    assert res.rc == 0, res.err
    assert f"thoughts: {LAST_STAGE}" in res.out


# -- flags: ranges, help, version -----------------------------------------------------------------

RANGE_CASES = [  # (argv after the command, flag, the smallest allowed value, the value given)
    (["eval", "--checkpoint", "RUN", "--batch-size", "0"], "--batch-size", 1, "0"),
    (["eval", "--checkpoint", "RUN", "--batch-size", "-3"], "--batch-size", 1, "-3"),
    (["eval", "--checkpoint", "RUN", "--max-questions", "0"], "--max-questions", 1, "0"),
    (["eval", "--checkpoint", "RUN", "--num-thoughts", "-1"], "--num-thoughts", 0, "-1"),
    (["eval", "--zero-shot", "M", "--data", "d.jsonl", "--max-new-tokens", "0"], "--max-new-tokens", 1, "0"),
    (["generate", "--checkpoint", "RUN", "q", "--max-new-tokens", "0"], "--max-new-tokens", 1, "0"),
    (["generate", "--checkpoint", "RUN", "q", "--top-k", "0"], "--top-k", 1, "0"),
    (["generate", "--checkpoint", "RUN", "q", "--num-thoughts", "-2"], "--num-thoughts", 0, "-2"),
    (["demo", "--seed", "-1"], "--seed", 0, "-1"),
]


@pytest.mark.parametrize(
    ("argv", "flag", "low", "value"), RANGE_CASES, ids=[f"{c[0][0]}{c[1]}{c[3]}" for c in RANGE_CASES]
)
def test_numeric_flags_out_of_range(cli, argv: list[str], flag: str, low: int, value: str) -> None:
    # 0 used to be read as "the default" (eval --batch-size 0 exited 0 and wrote a report).
    assert cli(*argv).error() == f"{flag} must be >= {low}, got {value} (see 'coconav {argv[0]} --help')"


def test_numeric_flag_not_an_integer(cli) -> None:
    assert (
        cli("eval", "--checkpoint", "RUN", "--batch-size", "eight").error()
        == "--batch-size must be an integer >= 1, got 'eight' (see 'coconav eval --help')"
    )


def test_argparse_errors_are_one_line(cli) -> None:
    assert (
        cli("generate", "--checkpoint", "RUN").error()
        == "the following arguments are required: question (see 'coconav generate --help')"
    )
    assert cli("eval", "--bogus").error() == "unrecognized arguments: --bogus (see 'coconav --help')"


def test_eval_batch_size_zero_writes_no_report(cli, tiny_run: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    assert (
        cli("eval", "--checkpoint", tiny_run, "--batch-size", "0", "--out", report).error().startswith("--batch-size")
    )
    assert not report.exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import coconav
    from coconav.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"coconav {coconav.__version__}\n"


@pytest.mark.parametrize("command", ["train", "eval", "generate", "explore", "demo"])
def test_command_help_shows_defaults_and_an_example(capsys: pytest.CaptureFixture[str], command: str) -> None:
    from coconav.cli import main

    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0
    example = text.split("example:\n", 1)[1].strip()
    assert example.startswith(f"coconav {command} "), text
    text = " ".join(text.split())  # help lines wrap with the terminal width
    if command == "eval":
        assert "256 with --zero-shot" in text and "(default: test)" in text
    if command == "generate":
        assert "(default: 5)" in text
    if command == "demo":
        assert "(default: runs/demo)" in text and "(default: 0)" in text


def test_error_under_a_progress_bar_stands_on_its_own_line(cli, tiny_run: Path, tmp_path: Path) -> None:
    # A 100,000-token question: the error must stand on its own line whether it is raised before the
    # evaluation's progress bar is drawn (the one generation path checks prompt lengths first) or under it.
    long_question = " ".join(["1"] * 100_000) + " ?"
    data = tmp_path / "long.json"
    data.write_text(json.dumps([{"question": long_question, "steps": ["1 + 2 = 3"], "answer": "3"}]), encoding="utf-8")
    res = cli("eval", "--checkpoint", tiny_run, "--data", data)
    assert res.rc == 2 and "Traceback" not in res.err
    before, error = res.err.split("coconav: error: ")
    if not before:
        assert error.endswith("\n") and "\r" not in error and "tokens" in error, error
        return
    # The bar was closed (and, left=False, wiped) before the error: nothing of it is left on the error's line.
    assert before.endswith(("\r", "\n")), repr(before[-120:])
    assert not re.split(r"[\r\n]", before[:-1])[-1].strip(), repr(before[-120:])
    assert error.endswith("\n") and "\r" not in error and "tokens" in error, error


@pytest.mark.parametrize("interrupt", [False, True], ids=["error", "ctrl-c"])
def test_error_in_training_closes_the_bar_first(
    cli, tmp_path: Path, tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch, interrupt: bool
) -> None:
    # The stage bar is a local of train_stage: the traceback keeps it open after the exception, so
    # without closing it the message was printed right after "stage 0:  50%|#####  | 1/2 [...]".
    from coconav.errors import DataError
    from coconav.recipes import train_coconut

    real_step, calls = train_coconut.train_step, []

    def failing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt if interrupt else DataError("bad.jsonl:7: a question of 100000 tokens")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_coconut, "train_step", failing_step)
    overrides = [o for o in tiny_overrides if not o.startswith("log.progress")] + ["log.progress=true"]
    res = cli("train", "--config", DEMO_PRESET, *overrides, f"out_dir={tmp_path / 'run'}")
    marker = "coconav: interrupted" if interrupt else "coconav: error: bad.jsonl:7: a question of 100000 tokens"
    assert res.rc == (130 if interrupt else 2) and marker in res.err
    before = res.err[: res.err.index(marker)]
    assert "stage 0:" in before  # the bar was drawn
    assert before.endswith(("\r", "\n")), repr(before[-120:])  # the message starts its own line ...
    assert not re.split(r"[\r\n]", before[:-1])[-1].strip(), repr(before[-120:])  # ... and the bar was wiped


# -- words the built-in tokenizer does not know ----------------------------------------------------

UNKNOWN = (
    "words this model does not know: 'what', 'is', 'plus' (its vocabulary holds only the words of its task "
    "or training data; in the question 'what is 3 plus 4?')"
)


def test_generate_names_unknown_words(cli, tiny_run: Path) -> None:
    # They used to become <unk> silently, and the question was answered.
    assert cli("generate", "--checkpoint", tiny_run, "what is 3 plus 4?").error() == UNKNOWN


def test_python_api_names_unknown_words(tiny_run: Path) -> None:
    from coconav import CoconavModel
    from coconav.errors import InputError

    model = CoconavModel.from_pretrained(tiny_run)
    with pytest.raises(InputError) as info:
        model.generate(["3 + 4 ?", "what is 3 plus 4?"])
    assert str(info.value) == UNKNOWN
    assert isinstance(model.generate("3 + 4 ?"), str)


def test_eval_data_file_with_unknown_words(cli, tiny_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD_GSM8K, encoding="utf-8")  # an English word problem for an arithmetic-task model
    msg = cli("eval", "--checkpoint", tiny_run, "--data", data).error()
    assert msg.startswith("words this model does not know: 'Tom', 'has', 'apples', 'and', 'buys', 'How', 'many'"), msg


def test_eval_sweep_thoughts_reports_the_frontier(cli, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "frontier.json"
    res = cli("eval", "--checkpoint", tiny_run, "--sweep-thoughts", "0-2", "--data", "validation", "--out", out)
    assert res.rc == 0, res.err
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got["sweep_thoughts"] == [0, 2] and got["num_questions"] == 8 and got["data"] == "validation"
    assert [p["num_thoughts"] for p in got["points"]] == [0, 1, 2]
    for p in got["points"]:  # a fixed count has no navigator arithmetic: compute = passes
        assert p["compute_per_question"] == pytest.approx(p["mean_forward_passes"])
        assert 0.0 <= p["accuracy"] <= 1.0
    assert {"envelope", "oracle", "difficulty_oracle"} <= set(got)  # a built-in task: questions have a difficulty
    # the oracle is at least the envelope at the costliest budget; the envelope ends at the best budget's accuracy
    best = max(p["accuracy"] for p in got["points"])
    assert got["envelope"][-1]["accuracy"] == pytest.approx(best)
    assert got["oracle"][-1]["accuracy"] >= got["difficulty_oracle"][-1]["accuracy"] >= best - 1e-9
    # the length rule is fitted on the validation split: here the very questions it is applied to, and it says so;
    # fitted and applied on the same questions it is the difficulty oracle
    assert got["length_rule_fit"] == {
        "group_by": "difficulty",
        "num_questions": 8,
        "in_sample": True,
        "data": "validation",
    }
    assert got["length_rule"][-1]["accuracy"] == pytest.approx(got["difficulty_oracle"][-1]["accuracy"])
    assert res.out.startswith(f"wrote {out}\n") and json.loads(res.out.split("\n", 1)[1])["points"] == got["points"]


def test_eval_sweep_thoughts_on_test_fits_the_length_rule_on_validation(cli, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "frontier.json"
    assert cli("eval", "--checkpoint", tiny_run, "--sweep-thoughts", "0-1", "--data", "test", "--out", out).rc == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    # fitted on the run's 8 validation questions, applied to its test questions: one budget per difficulty
    assert got["length_rule_fit"] == {
        "group_by": "difficulty",
        "num_questions": 8,
        "in_sample": False,
        "data": "validation",
    }
    assert got["length_rule"] and all(set(v["budgets"].values()) <= {0, 1} for v in got["length_rule"])
    computes = [v["compute_per_question"] for v in got["length_rule"]]
    assert computes == sorted(computes) and all(0.0 <= v["fit_accuracy"] <= 1.0 for v in got["length_rule"])


@pytest.mark.parametrize(
    "text, message",
    [("3-1", "needs A <= B, got '3-1'"), ("x", "must be A-B"), ("=-1", "must be A-B"), ("1-", "must be A-B")],
)
def test_eval_sweep_thoughts_rejects_a_malformed_range(cli, tiny_run: Path, text: str, message: str) -> None:
    # "=-1": passed as --sweep-thoughts=-1 (argparse would read a bare -1 as a flag: also a one-line error)
    argv = ["eval", "--checkpoint", tiny_run] + (
        [f"--sweep-thoughts{text}"] if text.startswith("=") else ["--sweep-thoughts", text]
    )
    assert message in cli(*argv).error()
    assert (
        "--sweep-thoughts"
        in cli("eval", "--checkpoint", tiny_run, "--sweep-thoughts", "0-1", "--num-thoughts", "2").error()
    )


# -- numbers too large for what they size: refused before anything runs ------------------------------------

HUGE = "99999999999999999999"  # 1e20: past int64, where torch's sizes overflow
HUGE_CASES = [  # (argv, the message after "coconav: error: ")
    (
        ["eval", "--checkpoint", "RUN", "--sweep-thoughts", f"0-{HUGE}"],
        f"--sweep-thoughts A-B: B must be <= 4096 thoughts, got '0-{HUGE}'",
    ),
    (["eval", "--checkpoint", "RUN", "--sweep-thoughts", "0-" + "9" * 5000], "--sweep-thoughts A-B: B must be <= 4096"),
    (["eval", "--checkpoint", "RUN", "--num-thoughts", HUGE], f"--num-thoughts must be <= 2147483647, got {HUGE}"),
    (
        ["eval", "--checkpoint", "RUN", "--max-questions", "1e400"],
        "--max-questions must be an integer >= 1, got '1e400'",
    ),
    (["eval", "--checkpoint", "RUN", "--max-questions", HUGE], f"--max-questions must be <= 2147483647, got {HUGE}"),
    (["eval", "--checkpoint", "RUN", "--batch-size", HUGE], f"--batch-size must be <= 2147483647, got {HUGE}"),
    (["eval", "--checkpoint", "RUN", "--max-new-tokens", HUGE], f"--max-new-tokens must be <= 2147483647, got {HUGE}"),
    (
        ["eval", "--checkpoint", "RUN", "--max-questions", "9" * 5000],
        "--max-questions must be an integer >= 1, got '999",
    ),
    (
        ["eval", "--checkpoint", "RUN", "--num-trajectories", "9" * 5000],
        "--num-trajectories must be an integer or 'auto'",
    ),
    (["eval", "--checkpoint", "RUN", "--halt-threshold", "nan"], "--halt-threshold must be a finite number, got 'nan'"),
    (["eval", "--checkpoint", "RUN", "--abstain-below", "inf"], "--abstain-below must be a finite number, got 'inf'"),
    (
        ["eval", "--checkpoint", "RUN", "--trajectories-budget", "1e400"],
        "--trajectories-budget must be a finite number",
    ),
    (["generate", "--checkpoint", "RUN", "q", "--top-k", HUGE], f"--top-k must be <= 2147483647, got {HUGE}"),
    (
        ["generate", "--checkpoint", "RUN", "q", "--num-thoughts", HUGE],
        f"--num-thoughts must be <= 2147483647, got {HUGE}",
    ),
    (["explore", "--checkpoint", "RUN", "--port", "65536"], "--port must be <= 65535, got 65536"),
    (["explore", "--checkpoint", "RUN", "--max-questions", HUGE], f"--max-questions must be <= 2147483647, got {HUGE}"),
    (["demo", "--seed", HUGE], f"--seed must be <= 4294967295, got {HUGE}"),
    (["train", "--config", str(DEMO_PRESET), f"seed={HUGE}"], f"seed must be in [0, 2**32), got {HUGE}"),
    (["train", "--config", str(DEMO_PRESET), "train.lr=1e400"], "train.lr: expected a finite number, got '1e400'"),
]


@pytest.mark.parametrize(("argv", "message"), HUGE_CASES, ids=[f"{c[0][0]}{c[0][-2]}" for c in HUGE_CASES])
def test_huge_numbers_are_refused_in_one_line(cli, argv: list[str], message: str) -> None:
    # each once overflowed with a traceback (a range list of 1e20 items, a tensor of 1e20 thoughts, seeding with 1e20)
    assert cli(*argv).error().startswith(message)


def test_a_sweep_beyond_the_context_is_refused_before_any_count_runs(cli, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "frontier.json"
    message = cli("eval", "--checkpoint", tiny_run, "--sweep-thoughts", "0-4000", "--out", out).error()
    assert message == "--sweep-thoughts: 4000 thoughts do not fit the model's context of 512 positions"
    assert not out.exists()


# -- output paths: checked before the work, never a temporary file left --------------------------------------


@pytest.mark.parametrize(
    ("command", "flag"),
    [("eval", "--out"), ("explore", "--static"), ("explore", "--search-frontier")],
)
def test_an_output_file_that_is_a_folder_is_refused_before_the_work(cli, tmp_path: Path, command, flag):
    # the checkpoint does not even exist: the path is checked first, so no evaluation runs only to fail at the end
    folder = tmp_path / "reports"
    folder.mkdir()
    message = cli(command, "--checkpoint", tmp_path / "no-such-run", flag, folder).error()
    assert message.startswith(f"{flag} {folder} is a folder: give a file name (e.g. {folder}/")
    assert list(folder.iterdir()) == []


def test_an_output_file_below_a_file_is_refused_before_the_work(cli, tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    message = cli("eval", "--checkpoint", tmp_path / "no-such-run", "--out", blocker / "x.json").error()
    assert message == f"--out {blocker / 'x.json'}: {blocker} is a file, not a folder"


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_an_output_file_in_a_read_only_folder_is_refused_before_the_work(cli, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        message = cli("eval", "--checkpoint", tmp_path / "no-such-run", "--out", folder / "x.json").error()
    finally:
        folder.chmod(0o700)
    assert message.startswith(f"--out {folder / 'x.json'}: cannot write in {folder}")


def test_missing_folders_of_an_output_file_are_made(cli, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "report.json"
    assert cli("eval", "--checkpoint", tiny_run, "--max-questions", "2", "--out", out).rc == 0
    assert json.loads(out.read_text())["num_questions"] == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.json"]  # no temporary file beside it


def test_an_output_folder_that_is_a_file_is_refused_before_the_work(cli, tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file")
    assert cli("demo", "--out", blocker).error() == f"--out {blocker} is a file, not a folder"
    assert (
        cli("train", "--config", DEMO_PRESET, f"out_dir={blocker}").error()
        == f"out_dir {blocker} is a file, not a folder"
    )


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    from coconav.common import write_json_atomic

    target = tmp_path / "report.json"
    target.mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        write_json_atomic(target, {"accuracy": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


# -- a navigator run checks the checkpoint it steers before making its run folder -----------------------------


def test_a_navigator_without_its_coconut_checkpoint_writes_nothing(cli, tmp_path: Path) -> None:
    out, missing = tmp_path / "nav", tmp_path / "no-coconut" / "checkpoints" / "stage-6"
    message = cli(
        "train", "--config", REPO / "configs" / "demo_navigator.yaml", f"out_dir={out}", f"init_from={missing}"
    ).error()
    assert message == f"init_from: checkpoint folder not found: {missing} (the COCONUT checkpoint the navigator steers)"
    assert not out.exists()  # no config.yaml, no metrics.jsonl


def test_a_missing_navigator_preset_is_refused_before_the_demo_trains(cli, tmp_path: Path) -> None:
    out, missing = tmp_path / "demo", tmp_path / "no-such-navigator.yaml"
    assert cli("demo", "--out", out, "--navigator-config", missing).error() == f"config file not found: {missing}"
    assert not out.exists()
