"""`coconav doctor`: --tiny runs every stage on the CPU and writes the report; --gpu without CUDA is one line."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from coconav.model.latent_lm import LatentLM
from coconav.recipes import doctor

TOP_KEYS = {"mode", "command", "started", "device", "versions", "workload", "ok", "seconds", "stages"}
STAGE_KEYS = {
    "gpu_tests": {"command", "exit_code", "collected"},
    "demo": {"command", "overrides", "navigator_overrides", "wall_seconds", "accuracy", "mean_forward_passes"},
    "train_step": {
        "preset",
        "backbone",
        "lora",
        "gradient_checkpointing",
        "micro_batch",
        "seq_len",
        "thoughts",
        "tokens_per_step",
        "trainable_parameters",
        "loss",
        "step_seconds",
        "tokens_per_second",
        "peak_allocated_gib",
        "budget_gib",
        "under_budget",
        "cache_kept",
    },
    "rollout": {"num_trajectories", "questions", "trajectories", "rollout", "replay", "under_budget"},
    "decode": {"tokens_per_second", "seconds_per_batch", "compiled_over_hf_generate", "compile_backend"},
}


def test_tiny_runs_every_stage_and_writes_the_report(cli, tmp_path: Path):
    out = tmp_path / "reports" / "doctor.json"
    result = cli("doctor", "--tiny", "--out", out)
    assert result.rc == 0, result.out[-3000:] + result.err[-3000:]
    report = json.loads(out.read_text())
    assert set(report) == TOP_KEYS and report["mode"] == "tiny" and report["ok"] is True
    assert list(report["stages"]) == list(doctor.STAGES)
    for name, stage in report["stages"].items():
        assert stage["status"] == "ok", (name, stage.get("error"), stage.get("traceback"))
        assert STAGE_KEYS[name] | {"status", "seconds"} <= set(stage), (name, sorted(stage))
    train = report["stages"]["train_step"]
    # the checkpointed thought loop kept its cache: one pass per thought plus the prefix, the same hidden states
    assert train["cache_kept"]["ok"] and train["cache_kept"]["passes"] == train["thoughts"] + 1
    assert train["gradient_checkpointing"] is True and train["backbone"]["dtype"] == "bfloat16"
    assert report["stages"]["rollout"]["trajectories"] == 5 * report["stages"]["rollout"]["questions"]
    assert report["stages"]["gpu_tests"]["collected"] >= 1  # tests/test_gpu.py
    assert report["stages"]["demo"]["overrides"] == doctor.TINY_DEMO_OVERRIDES
    table = result.out[result.out.index("stage ") :]
    assert all(name in table for name in doctor.STAGES) and "all stages ok" in table


def test_a_thought_loop_that_loses_its_cache_fails_the_training_stage(tmp_path: Path, monkeypatch):
    def drop_the_cache(self) -> None:  # transformers' own behaviour under checkpointing: the cache is dropped
        for layer in [m for m in self.causal_lm.modules() if isinstance(m, GradientCheckpointingLayer)]:
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = functools.partial(
                torch.utils.checkpoint.checkpoint, use_reentrant=False
            )
            layer._can_checkpoint_with_cache = False

    monkeypatch.setattr(LatentLM, "gradient_checkpointing_enable", drop_the_cache)
    report = doctor.run(gpu=False, out=tmp_path / "doctor.json", stages="train_step")
    assert report["ok"] is False and report["stages"]["train_step"]["status"] == "failed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_without_cuda_is_a_one_line_error(cli, tmp_path: Path):
    out = tmp_path / "doctor.json"
    assert cli("doctor", "--gpu", "--out", out).error() == (
        "no CUDA device is visible (torch.cuda.is_available() is False): run it on a GPU machine, "
        "or `coconav doctor --tiny` for the CPU check"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--tiny", "--stages", "demo,warp"],
            "--stages takes names among gpu_tests, demo, train_step, rollout, decode",
        ),
        (["--tiny", "--gpu"], "argument --gpu: not allowed with argument --tiny"),
        ([], "one of the arguments --gpu --tiny is required"),
    ],
)
def test_bad_flags_are_one_line_errors(cli, tmp_path: Path, argv, message):
    assert message in cli("doctor", *argv, "--out", tmp_path / "d.json").error()


def test_help_shows_the_default_report_and_an_example(capsys: pytest.CaptureFixture[str]):
    from coconav.cli import main

    with pytest.raises(SystemExit) as info:
        main(["doctor", "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0 and text.split("example:\n", 1)[1].strip().startswith("coconav doctor --gpu ")
    assert "(default: runs/doctor.json)" in " ".join(text.split())
