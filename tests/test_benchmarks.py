"""Smoke tests of the benchmark scripts: each runs with --quick and prints one JSON object with the documented keys.

No timing is asserted (performance claims are measured, never tested by timed assertions); only the
correctness checks the scripts make (ours and naive agree) and the shape of their output.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *extra: str) -> dict:
    """Run benchmarks/<name> --quick in a fresh interpreter; stdout must be exactly one JSON object."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--quick", "--threads", "1", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCHMARKS.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # fails on anything but one JSON document
    assert isinstance(result, dict)
    return result


def assert_positive_numbers(mapping: dict, keys: set[str]) -> None:
    assert set(mapping) == keys
    for value in mapping.values():
        assert isinstance(value, float) and math.isfinite(value) and value > 0


CONFIG_KEYS = {
    "model",
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "tie_embeddings",
    "vocab_size",
    "parameters",
    "batch_size",
    "num_thoughts",
    "threads",
    "device",
    "torch",
    "transformers",
    "quick",
}


def test_bench_train_step_quick():
    out = run_script("bench_train_step.py")
    contenders = {"ours", "naive", "plain"}
    assert out["benchmark"] == "train_step"
    for key in ("ms_per_step", "forward_ms", "backward_ms", "min_ms_per_step"):
        assert_positive_numbers(out[key], contenders)
    for key in ("speedup_vs_naive", "overhead_vs_plain"):
        assert isinstance(out[key], float) and math.isfinite(out[key]) and out[key] > 0
    assert set(out["aims"]) == {
        "speedup_vs_naive_min",
        "speedup_vs_naive_met",
        "overhead_vs_plain_max",
        "overhead_vs_plain_met",
    }
    assert set(out["backbone_passes"]) == contenders and set(out["columns_computed"]) == contenders
    cfg = out["config"]
    assert CONFIG_KEYS | {"seq_len", "first_thought_column", "repeats", "warmup"} <= set(cfg)
    assert cfg["quick"] is True and cfg["threads"] == 1
    assert out["columns_per_step"] == cfg["batch_size"] * cfg["seq_len"]
    assert 0 < out["label_tokens_per_step"] < out["tokens_per_step"] <= out["columns_per_step"]
    assert out["backbone_passes"] == {"ours": cfg["num_thoughts"] + 1, "naive": cfg["num_thoughts"] + 1, "plain": 1}
    # The correctness check the script makes before timing: ours and the naive recompute agree.
    check = out["check"]
    assert check["loss_match"] is True and check["loss_abs_diff"] <= check["loss_tolerance"]
    assert check["same_grad_params"] is True
    assert check["grad_max_abs_diff"] <= 1e-4 * max(1.0, check["grad_max_abs"])
    assert "profile" not in out


def test_bench_generate_quick():
    out = run_script("bench_generate.py")
    assert out["benchmark"] == "generate"
    for key in ("tokens_per_second", "seconds_per_batch", "min_seconds_per_batch"):
        assert_positive_numbers(out[key], {"ours", "naive"})
    assert isinstance(out["speedup"], float) and out["speedup"] > 0
    assert set(out["aims"]) == {"speedup_min", "speedup_met"}
    cfg = out["config"]
    assert CONFIG_KEYS | {"max_new_tokens", "prompt_lengths", "repeats", "naive_repeats", "warmup"} <= set(cfg)
    B, L, N = cfg["batch_size"], cfg["num_thoughts"], cfg["max_new_tokens"]
    assert out["generated_tokens_per_batch"] == B * N
    # ours: prefill, one pass per thought, the forced <eot>, one per token after the first (and at
    # present one more after the last token when max_new_tokens is reached); naive: per example
    calls = out["forward_calls_per_batch"]
    assert 1 + L + N <= calls["ours"] <= 1 + L + 1 + N and calls["naive"] == B * (L + N)
    check = out["check"]
    assert check["examples_compared"] == B
    assert check["tokens_match"] is True and check["examples_matching"] == B
    assert check["thoughts_match"] is True
    assert len(check["first_example_ours"]) == N and check["first_example_ours"] == check["first_example_naive"]


def test_bench_rollout_quick():
    out = run_script("bench_rollout.py")
    assert out["benchmark"] == "rollout"
    assert_positive_numbers(out["questions_per_second"], {"batched", "loop"})
    assert_positive_numbers(out["seconds_per_rollout"], {"batched", "loop"})
    assert isinstance(out["speedup"], float) and out["speedup"] > 0
    # the check the script makes: the batched rollout decides and answers exactly as one-by-one rollouts
    check = out["check"]
    assert check["thought_counts_match"] is True and check["answers_match"] is True
    assert check["answers_matching"] == check["trajectories"] == out["config"]["questions"]
    assert out["config"]["quick"] is True and out["config"]["threads"] == 1
    # K trajectories side by side (quick: K = 1 and 5)
    multi = out["multi"]
    assert_positive_numbers(multi["seconds_per_rollout"], {"1", "5"})
    assert multi["ratio_vs_k1"]["1"] == 1.0 and multi["ratio_vs_k1"]["5"] > 0
    assert set(out["multi_by_layout"]) == {"dynamic", "static"} and out["multi_by_layout"]["dynamic"] == multi
    assert_positive_numbers(out["multi_by_layout"]["static"]["seconds_per_rollout"], {"1", "5"})


def test_bench_decode_quick():
    out = run_script("bench_decode.py")
    assert out["benchmark"] == "decode" and out["matmul_gflops"] > 0
    tiny = out["results"]["tiny"]["4"]
    for workload in ("decode", "rollout"):
        res = tiny[workload]
        assert_positive_numbers(res["gflops"], {"dynamic", "static", "compiled"})
        assert_positive_numbers(res["fraction_of_matmul"], {"dynamic", "static", "compiled"})
        assert res["speedup_vs_dynamic"]["dynamic"] == 1.0 and res["compile_seconds"] >= 0
        # the check the script makes: static and compiled decode exactly as the dynamic reference
        for contender in ("static", "compiled"):
            assert res["check"][contender]["tokens_match"] is True
            assert res["check"][contender]["thought_max_abs_diff"] < 1e-4
    # the FLOP count is the analytic one: prefill, thoughts, <eot>, fed tokens per row (4 prompts of 3-6 tokens)
    assert 0 < tiny["decode"]["gflop_per_call"] < 1e-2


def test_bench_steer_scale_quick():
    out = run_script("bench_steer_scale.py")
    demo = out["backbones"]["demo_scratch"]
    assert demo["thoughts"] == out["config"]["questions"] * out["config"]["max_thoughts"]
    ratios = demo["offset_over_norm"]
    for scale in ("none", "rms"):
        assert ratios[scale]["mean"] > 0 and math.isfinite(ratios[scale]["mean"])
    # steer_scale "rms" multiplies the same offset by the thought RMS
    assert ratios["rms"]["mean"] / ratios["none"]["mean"] == pytest.approx(demo["thought_rms"], rel=1e-4)
