"""K trajectories at inference (coconav/decode/generate.py multi_answers, coconav/eval/evaluate.py evaluate_multi, coconav/inference.py,
`coconav eval --num-trajectories`): fused answers, per-trajectory records, K = 1 unchanged, bad values.

The navigator checkpoint (conftest.nav_checkpoint) is built on the session's tiny COCONUT run, with its
steering made live by hand (an untrained navigator would give K identical greedy trajectories).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coconav.errors import InputError
from coconav.inference import CoconavModel

QUESTIONS = ["1 + 2 ?", "3 * 4 - 2 ?", "5 - 3 + 1 ?"]


def test_generate_k_trajectories_returns_the_fused_answer_and_each_trajectory(nav_checkpoint: Path):
    model = CoconavModel.from_pretrained(nav_checkpoint, device="cpu")
    one = model.generate(QUESTIONS)
    records = model.generate(QUESTIONS, num_trajectories=5, fusion="value", return_trajectories=True)
    for q, rec in enumerate(records):
        assert rec["num_trajectories"] == 5 and len(rec["trajectories"]) == 5 and rec["fusion"] == "value"
        trajs = rec["trajectories"]
        assert trajs[0]["answer"] == one[q]  # trajectory 0 is the greedy, K = 1 one
        assert sum(t["weight"] for t in trajs) == pytest.approx(1.0)
        assert rec["forward_passes"] == 1 + sum(t["num_thoughts"] + t["new_tokens"] for t in trajs)
        for t in trajs:
            assert len(t["halt_probs"]) == len(t["values"]) == t["num_thoughts"] + 1
            assert len(t["thought_norms"]) == t["num_thoughts"]
        assert rec["answer"] in [t["answer"] for t in trajs]
        agree = sum(t["answer"] == rec["answer"] for t in trajs) / 5
        assert rec["agreement"] == pytest.approx(agree)
    # the extra trajectories explore: their steered thoughts differ from trajectory 0's
    assert any(t["num_thoughts"] > 0 for r in records for t in r["trajectories"])
    assert any(
        t["thought_norms"][:1] != r["trajectories"][0]["thought_norms"][:1]
        for r in records
        for t in r["trajectories"][1:]
        if t["num_thoughts"] and r["trajectories"][0]["num_thoughts"]
    )
    assert model.generate(QUESTIONS, num_trajectories=5, fusion="value") == [r["answer"] for r in records]
    assert model.generate(QUESTIONS, num_trajectories=1) == one


def test_generate_auto_and_bad_values(nav_checkpoint: Path):
    model = CoconavModel.from_pretrained(nav_checkpoint, device="cpu")
    records = model.generate(QUESTIONS, num_trajectories="auto", return_trajectories=True)
    assert sum(r["num_trajectories"] for r in records) == 6  # budget 2 per question, untrained selector: 2 each
    for kwargs, message in [
        ({"num_trajectories": 0}, "--num-trajectories must be in [1, navigator.max_trajectories=16], got 0"),
        ({"num_trajectories": 17}, "--num-trajectories must be in [1, navigator.max_trajectories=16], got 17"),
        ({"num_trajectories": 3, "fusion": "best"}, "--fusion must be one of majority, value, scorer, got 'best'"),
    ]:
        with pytest.raises(InputError) as err:
            model.generate(QUESTIONS, **kwargs)
        assert str(err.value) == message


def test_eval_with_k_trajectories_and_abstention(cli, nav_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "multi.json"
    res = cli(
        "eval",
        "--checkpoint",
        nav_checkpoint,
        "--data",
        "test",
        "--num-trajectories",
        "4",
        "--fusion",
        "scorer",
        "--abstain-below",
        "0.75",
        "--out",
        out,
    )
    assert res.rc == 0, res.err
    report = json.loads(out.read_text())
    assert report["num_trajectories"] == 4 and report["fusion"] == "scorer" and report["mean_trajectories"] == 4.0
    assert report["mean_trajectories_by_difficulty"] and report["accuracy_coverage"]
    assert report["accuracy_coverage"][0]["coverage"] == 1.0
    for q in report["questions"]:
        assert len(q["trajectory_answers"]) == 4 and q["forward_passes"] == 1 + q["num_thoughts"] + q["new_tokens"]
    answered = [q for q in report["questions"] if q["agreement"] >= 0.75]
    assert report["coverage"] == pytest.approx(len(answered) / len(report["questions"]))
    single = json.loads(cli("eval", "--checkpoint", nav_checkpoint, "--data", "test").out)
    assert single["accuracy"] == pytest.approx(report["first_trajectory_accuracy"])  # trajectory 0 = K = 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-trajectories", "0"], "--num-trajectories must be in [1, navigator.max_trajectories=16], got 0"),
        (["--num-trajectories", "17"], "--num-trajectories must be in [1, navigator.max_trajectories=16], got 17"),
        (["--num-trajectories", "lots"], "--num-trajectories must be an integer or 'auto', got 'lots'"),
        (
            ["--num-trajectories", "3", "--fusion", "best"],
            "--fusion must be one of majority, value, scorer, got 'best'",
        ),
        (
            ["--abstain-below", "0.5"],
            "--abstain-below needs --num-trajectories > 1 (one trajectory always agrees with itself)",
        ),
        (["--num-trajectories", "3", "--abstain-below", "2"], "--abstain-below must be in [0, 1], got 2.0"),
        (
            ["--num-trajectories", "3", "--trajectories-budget", "2"],
            "--trajectories-budget needs --num-trajectories auto",
        ),
        (
            ["--num-trajectories", "auto", "--trajectories-budget", "17"],
            "--trajectories-budget must be in [1, navigator.max_trajectories=16], got 17.0",
        ),
        (["--halt-threshold", "1"], "--halt-threshold must be in (0, 1), got 1.0"),
    ],
)
def test_eval_multi_bad_values_are_one_line_errors(cli, nav_checkpoint: Path, args: list[str], message: str):
    assert cli("eval", "--checkpoint", nav_checkpoint, "--data", "test", *args).error() == message


def test_eval_multi_needs_a_navigator(cli, tiny_run: Path):
    message = cli("eval", "--checkpoint", tiny_run, "--data", "test", "--num-trajectories", "3").error()
    assert message.startswith("--num-trajectories needs a navigator checkpoint") and message.endswith(
        "has no navigator)"
    )


def test_eval_auto_with_a_budget_override(cli, nav_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "auto.json"
    res = cli(
        "eval",
        "--checkpoint",
        nav_checkpoint,
        "--data",
        "test",
        "--num-trajectories",
        "auto",
        "--trajectories-budget",
        "3",
        "--out",
        out,
    )
    assert res.rc == 0, res.err
    report = json.loads(out.read_text())
    assert report["num_trajectories"] == "auto" and report["mean_trajectories"] == pytest.approx(3.0, abs=0.05)
    assert "spearman_difficulty_trajectories" in report  # nan here: an untrained selector gives every question K = 3


def test_eval_halt_threshold_moves_where_the_navigator_stops(cli, nav_checkpoint: Path, tiny_run: Path, tmp_path: Path):
    thoughts = {}
    for threshold in ("0.001", "0.999"):
        out = tmp_path / f"{threshold}.json"
        assert (
            cli(
                "eval", "--checkpoint", nav_checkpoint, "--data", "test", "--halt-threshold", threshold, "--out", out
            ).rc
            == 0
        )
        thoughts[threshold] = json.loads(out.read_text())["mean_thoughts"]
    assert thoughts["0.001"] < thoughts["0.999"]
    message = cli("eval", "--checkpoint", tiny_run, "--data", "test", "--halt-threshold", "0.3").error()
    assert message == "--halt-threshold needs a navigator checkpoint"
