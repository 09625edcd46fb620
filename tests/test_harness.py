"""lm-evaluation-harness (coconav/harness): the registered model "coconav" and coconav's tasks give the score
`coconav eval` gives on the same questions, through `coconav harness`, which is lm-eval's own command line.
Skipped without lm_eval (pip install -e '.[harness]').

The data are local files (a GSM8K-format .jsonl, a ProsQA-format .json) or the checkpoint's own built-in test split,
so nothing is downloaded. The checkpoint is a tiny GPT-2 COCONUT whose final LayerNorm is made to answer "7" to every
question (weight 0, bias along the embedding of "7"): some of the questions below are right, so equal
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
    from coconav.io.checkpoint import TrainState, checkpoint_meta, save_checkpoint
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


def harness_output(folder: Path, task: str) -> tuple[dict, list[dict]]:
    """What lm-eval's --output_path and --log_samples wrote: its results file (config and versions included) and the
    task's samples, by question."""
    [results] = folder.rglob("results_*.json")
    [samples] = folder.rglob(f"samples_{task}_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return json.loads(results.read_text()), sorted(rows, key=lambda s: s["doc_id"])


def eval_report(cli, checkpoint: Path, tmp_path: Path, *flags: object) -> dict:
    result = cli("eval", "--checkpoint", checkpoint, "--out", tmp_path / "eval.json", "--device", "cpu", *flags)
    assert result.rc == 0, result.err
    return json.loads((tmp_path / "eval.json").read_text())


def test_harness_score_equals_coconav_eval(sevens: Path, questions_file: Path, cli, tmp_path: Path) -> None:
    ours = eval_report(cli, sevens, tmp_path, "--data", questions_file, "--batch-size", "2", "--max-new-tokens", "6")
    assert ours["accuracy"] == pytest.approx(0.5)  # the two questions whose answer is 7

    out = tmp_path / "harness"
    result = cli(
        "harness",
        "--checkpoint",
        sevens,
        "--data",
        questions_file,
        "--max-new-tokens",
        "6",
        "--batch_size",  # lm-eval's own flags from here on, passed through as given
        "2",
        "--output_path",
        out,
        "--log_samples",
        "--seed",
        "0",
    )
    assert result.rc == 0, result.err
    results, samples = harness_output(out, "coconav_data")  # a data file: the task coconav_data, not gsm8k_coconav
    score = results["results"]["coconav_data"]
    assert score["exact_match,none"] == pytest.approx(ours["accuracy"])
    # bootstrap error bars on by default: the standard error of the mean of 1, 1, 0, 0 (n = 4) is sqrt(1/12)
    assert score["exact_match_stderr,none"] == pytest.approx((1 / 12) ** 0.5)
    assert results["config"]["model"] == "coconav" and "pretrained" in results["config"]["model_args"]
    assert [s["resps"][0][0] for s in samples] == [q["completion"] for q in ours["questions"]]
    # the bare question is the request's context (lm-eval's samples file: arguments of request 0, argument 0)
    assert [s["arguments"]["gen_args_0"]["arg_0"] for s in samples] == [q for q, _ in QUESTIONS]


def test_harness_on_the_checkpoints_test_split_and_on_a_prosqa_file_equals_coconav_eval(
    sevens: Path, cli, tmp_path: Path
) -> None:
    """coconav_test: the checkpoint's own built-in test split; prosqa_coconav: a ProsQA-format file (COCONUT .json,
    text answers) scored by the text rule. The model answers '7 7 ...' (its word-level vocabulary keeps the questions
    to digits), so some answers are right on both."""
    split = eval_report(cli, sevens, tmp_path, "--data", "test", "--max-questions", "20", "--max-new-tokens", "6")
    assert 0 < split["accuracy"] < 1, split["accuracy"]  # some answers are 7: a score that means something
    answers = ("7 7 7 7 7 7", "7 7 7 7 7 7.", "Tom is a wumpus.", "Tom is a rempus.")
    data = tmp_path / "prosqa_test.json"
    data.write_text(
        json.dumps([{"question": q, "steps": ["a step"], "answer": a} for (q, _), a in zip(QUESTIONS, answers)])
    )
    prosqa = eval_report(cli, sevens, tmp_path, "--data", data, "--max-new-tokens", "6")
    assert prosqa["accuracy"] == pytest.approx(0.5)

    out = tmp_path / "harness"
    flags = ["--max-new-tokens", "6", "--limit", "20", "--output_path", out, "--log_samples"]
    result = cli("harness", "--checkpoint", sevens, "--tasks", "coconav_test,prosqa_coconav", "--data", data, *flags)
    assert result.rc == 0, result.err
    results, samples = harness_output(out, "coconav_test")  # --data names the file; the split is the test split
    assert results["results"]["coconav_test"]["exact_match,none"] == pytest.approx(split["accuracy"])
    assert [s["doc"]["question"] for s in samples] == [q["question"] for q in split["questions"]]
    assert results["results"]["prosqa_coconav"]["exact_match,none"] == pytest.approx(prosqa["accuracy"])


def test_simple_evaluate_with_the_registered_model_name(sevens: Path, questions_file: Path) -> None:
    out = lm_eval.simple_evaluate(
        model="coconav",
        model_args=f"pretrained={sevens},device=cpu,max_new_tokens=4",
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

    from coconav.config import RunConfig, from_dict
    from coconav.data.splits import load_splits
    from coconav.io.checkpoint import checkpoint_meta

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


def test_unknown_model_arguments_are_refused_in_one_line(sevens: Path, cli) -> None:
    from coconav.errors import InputError

    with pytest.raises(InputError, match="no model argument num_trajectory"):
        CoconavLM(pretrained=str(sevens), num_trajectory=5, device="cpu")
    # through the command line: refused before lm-eval starts (one line, nothing loaded)
    message = cli("harness", "--checkpoint", sevens, "--model_args", "num_trajectory=5", "--limit", "1").error()
    assert "no model argument num_trajectory" in message and "num_trajectories" in message, message
    message = cli("harness", "--checkpoint", sevens, "--num-trajectory", "3").error()  # lm-eval's refusal, one line
    assert "unrecognized arguments: --num-trajectory" in message, message
    with pytest.raises(InputError, match="not both"):
        CoconavLM(pretrained=str(sevens), checkpoint="elsewhere", device="cpu")
    with pytest.raises(InputError, match="pretrained=DIR"):
        CoconavLM(device="cpu")


def test_pretrained_is_the_checkpoint_and_the_device_is_cuda_only_where_it_exists(
    sevens: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coconav.harness import harness_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert harness_device(None).type == "cpu"
    assert harness_device("cuda:0").type == "cpu"  # lm-eval's own default, on a machine without CUDA
    model = CoconavLM(pretrained=str(sevens), device="cuda:0")
    assert model.model.lm.device.type == "cpu" and model.model.path == sevens
    assert CoconavLM(checkpoint=str(sevens)).model.path == sevens  # the alias


def test_lm_evals_command_line_passes_through(sevens: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every lm-eval flag arrives as lm-eval parses it; coconav adds its task folder, the model and the defaults."""
    from coconav.cli import _parser
    from coconav.harness import TASK_DIR, lm_eval_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [
        "harness",
        "--checkpoint",
        str(sevens),
        "--num-trajectories",
        "3",
        "--tasks",
        "coconav_test,gsm8k_coconav",
        "--include_path",
        str(tmp_path),
        "--output_path",
        str(tmp_path / "out"),
        "--log_samples",
        "--wandb_args",
        "project=coconav,name=harness",
        "--model_args",
        "fusion=value",
        "--limit",
        "5",
        "--gen_kwargs",
        "max_gen_toks=7",
        "--seed",
        "1",
    ]
    args, passed = _parser().parse_known_args(argv)
    _, ns = lm_eval_args(args, passed)
    assert (ns.model, ns.tasks, ns.include_path) == (
        "coconav",
        ["coconav_test", "gsm8k_coconav"],
        [TASK_DIR, str(tmp_path)],
    )
    assert ns.model_args == {"pretrained": str(sevens), "num_trajectories": "3", "fusion": "value"}
    assert (ns.output_path, ns.log_samples, ns.limit) == (str(tmp_path / "out"), True, 5)
    assert ns.wandb_args == {"project": "coconav", "name": "harness"} and ns.seed == [1, 1, 1, 1]
    assert ns.gen_kwargs == {"max_gen_toks": 7}
    assert (ns.device, ns.batch_size) == ("cpu", "auto")  # CUDA only where it exists; the checkpoint's batch size
    args, passed = _parser().parse_known_args(["harness", "--device", "cuda:1", "--batch_size", "4"])
    _, ns = lm_eval_args(args, passed)
    assert (ns.device, ns.batch_size, ns.tasks, ns.metadata) == ("cuda:1", "4", ["coconav_test"], {"split": "test"})
    # an lm-eval --config file keeps what it sets; coconav's shortcuts and the command line come on top
    config = tmp_path / "lm_eval.yaml"
    config.write_text("tasks: [coconav_test]\ndevice: cpu\nmodel_args: {fusion: scorer, dtype: float32}\n")
    args, passed = _parser().parse_known_args(["harness", "--checkpoint", "ck", "--config", str(config)])
    _, ns = lm_eval_args(args, passed)
    assert ns.model_args == {"pretrained": "ck", "fusion": "scorer", "dtype": "float32"}
    assert (ns.device, ns.include_path, ns.tasks) == (None, [TASK_DIR], None)  # lm-eval reads them from the file


def test_the_lm_eval_plugin_entry_point_names_the_registered_model() -> None:
    """Declared for lm-eval releases that read entry points (group lm_eval.models): it must name this class."""
    import importlib
    import tomllib

    from lm_eval.api.registry import get_model

    from conftest import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["lm_eval.models"]["coconav"]
    module, name = target.split(":")
    assert getattr(importlib.import_module(module), name) is CoconavLM is get_model("coconav")


def test_harness_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    from coconav.cli import main

    with pytest.raises(SystemExit) as info:
        main(["harness", "--help"])
    assert info.value.code == 0 and "coconav harness --checkpoint" in capsys.readouterr().out
