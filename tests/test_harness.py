"""lm-evaluation-harness (coconav/harness): the registered model "coconav" and the gsm8k_coconav task give the
score `coconav eval` gives on the same questions. Skipped without lm_eval (pip install 'coconav[harness]').

The data set is a local GSM8K-format .jsonl (the task's dataset_path/data_files override), so nothing is
downloaded. The checkpoint is a tiny GPT-2 COCONUT whose final LayerNorm is made to answer "7" to every
question (weight 0, bias along the embedding of "7"): half the questions below are right, so equal
scores mean something."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from coconav.harness import CoconavLM, cut_at, task_config, task_manager  # noqa: E402  (needs lm_eval)

from conftest import coconut_checkpoint, save_pretrained_base  # noqa: E402

QUESTIONS = [("3 + 4 ?", 7), ("9 - 2 ?", 7), ("1 + 2 ?", 3), ("2 * 3 ?", 6)]


@pytest.fixture(scope="module")
def sevens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 COCONUT checkpoint (2 fixed thoughts) whose every answer token is '7'."""
    from coconav.checkpoint import TrainState, checkpoint_meta, save_checkpoint
    from coconav.model.latent_lm import LatentLM

    root = tmp_path_factory.mktemp("harness")
    base = save_pretrained_base(root / "base", arch="gpt2")
    folder = coconut_checkpoint(root / "coconut", {"name_or_path": str(base)})
    lm = LatentLM.from_pretrained(folder)
    seven = lm.tokenizer.convert_tokens_to_ids("7")
    with torch.no_grad():  # a constant last hidden state: the logits are embedding · (embedding of '7')
        final = lm.causal_lm.transformer.ln_f
        final.weight.zero_()
        final.bias.copy_(lm.causal_lm.get_input_embeddings().weight[seven] * 20)
    meta = checkpoint_meta(folder)
    return save_checkpoint(root / "sevens", lm, TrainState(**meta["train_state"]), meta["config"])


@pytest.fixture(scope="module")
def questions_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gsm8k") / "test.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": f"{q} <<x>>\n#### {a}"}) + "\n" for q, a in QUESTIONS))
    return path


def test_harness_score_equals_coconav_eval(sevens: Path, questions_file: Path, cli, tmp_path: Path) -> None:
    result = cli(
        "eval",
        "--checkpoint",
        sevens,
        "--data",
        questions_file,
        "--out",
        tmp_path / "eval.json",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "6",
    )
    assert result.rc == 0, result.err
    ours = json.loads((tmp_path / "eval.json").read_text())
    assert ours["accuracy"] == 0.5  # the two questions whose answer is 7

    result = cli(
        "harness",
        "--checkpoint",
        sevens,
        "--data",
        questions_file,
        "--out",
        tmp_path / "harness.json",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "6",
    )
    assert result.rc == 0, result.err
    harness = json.loads((tmp_path / "harness.json").read_text())
    assert harness["results"]["gsm8k_coconav"]["exact_match,none"] == ours["accuracy"]
    samples = sorted(harness["samples"]["gsm8k_coconav"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == [q["completion"] for q in ours["questions"]]
    assert [s["arguments"][0][0] for s in samples] == [q for q, _ in QUESTIONS]  # the bare question


def test_simple_evaluate_with_the_registered_model_name(sevens: Path, questions_file: Path) -> None:
    out = lm_eval.simple_evaluate(
        model="coconav",
        model_args=f"checkpoint={sevens},device=cpu,max_new_tokens=4",
        tasks=[task_config(str(questions_file))],
        limit=2,
        bootstrap_iters=0,
        task_manager=task_manager(),
    )
    assert out["results"]["gsm8k_coconav"]["exact_match,none"] == 1.0  # the first two answers are 7


def test_loglikelihood_scores_the_answer_after_the_thoughts(sevens: Path) -> None:
    from lm_eval.api.instance import Instance

    model = CoconavLM(checkpoint=str(sevens), device="cpu")
    requests = [
        Instance("loglikelihood", {}, (q, cont), 0)
        for q, cont in (("3 + 4 ?", " 7"), ("3 + 4 ?", " 3"), ("3 + 4 ?", " 7 7"))
    ]
    (right, greedy_right), (wrong, greedy_wrong), (twice, greedy_twice) = model.loglikelihood(requests)
    assert greedy_right and greedy_twice and not greedy_wrong
    assert wrong < right < 0 and twice < right  # a second token only adds negative log-probability
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        model.loglikelihood_rolling(requests)


def test_navigator_checkpoints_refuse_loglikelihood_and_fuse_k_trajectories_as_coconav_eval(
    nav_checkpoint: Path, cli, tmp_path: Path
) -> None:
    from lm_eval.api.instance import Instance

    from coconav.checkpoint import checkpoint_meta
    from coconav.config import RunConfig, from_dict
    from coconav.data.splits import load_splits

    model = CoconavLM(checkpoint=str(nav_checkpoint), num_trajectories=2, fusion="majority", device="cpu")
    with pytest.raises(NotImplementedError, match="navigator"):
        model.loglikelihood([Instance("loglikelihood", {}, ("1 + 1 ?", " 2"), 0)])
    cfg = from_dict(RunConfig, checkpoint_meta(nav_checkpoint)["config"])
    examples = load_splits(cfg.data, cfg.seed).test[:3]
    data = tmp_path / "test.jsonl"
    data.write_text(
        "".join(json.dumps({"question": ex.question, "answer": f"#### {ex.answer}"}) + "\n" for ex in examples)
    )
    result = cli(
        "eval",
        "--checkpoint",
        nav_checkpoint,
        "--data",
        data,
        "--num-trajectories",
        "2",
        "--out",
        tmp_path / "eval.json",
        "--device",
        "cpu",
    )
    assert result.rc == 0, result.err
    ours = json.loads((tmp_path / "eval.json").read_text())
    answers = model.generate_until(
        [Instance("generate_until", {}, (ex.question, {"until": []}), i) for i, ex in enumerate(examples)]
    )
    assert answers == [q["completion"] for q in ours["questions"]]


def test_until_cuts_and_the_task_reads_a_local_file(questions_file: Path) -> None:
    assert cut_at("### 7\n\nQuestion: more", ["\n\n", "Question:"]) == "### 7"
    config = task_config(str(questions_file))
    assert config["dataset_path"] == "json" and config["num_fewshot"] == 0
    assert config["dataset_kwargs"]["data_files"]["test"] == str(questions_file.resolve())
    assert config["process_results"]({"answer": "#### 1,000"}, ["so ### 1000"]) == {"exact_match": 1.0}


def test_harness_refuses_a_missing_data_file(sevens: Path, cli, tmp_path: Path) -> None:
    message = cli("harness", "--checkpoint", sevens, "--data", tmp_path / "none.jsonl", "--device", "cpu").error()
    assert "no such file" in message


def test_harness_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    from coconav.cli import main

    with pytest.raises(SystemExit) as info:
        main(["harness", "--help"])
    assert info.value.code == 0 and "coconav harness --checkpoint" in capsys.readouterr().out
