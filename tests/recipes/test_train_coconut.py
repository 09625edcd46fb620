"""The COCONUT recipe (coconav/recipes/train_coconut.py) continuing from a checkpoint: `init_from` and
`--resume` of a LoRA checkpoint train its adapters (and latent-token rows), in the checkpoint's dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coconav.config import RunConfig, from_dict
from coconav.errors import ConfigError
from coconav.recipes import train_coconut


def continue_config(init_from: Path, out_dir: Path, **model) -> RunConfig:
    """A two-step COCONUT run on the arithmetic task starting from `init_from`."""
    return from_dict(
        RunConfig,
        {
            "out_dir": str(out_dir),
            "threads": 1,
            "init_from": str(init_from),
            "model": model,
            "data": {"task": "arithmetic", "train_size": 16, "validation_size": 2, "test_size": 2, "max_difficulty": 2},
            "curriculum": {"mode": "coconut", "thoughts_per_step": 1, "max_stage": 2, "start_stage": 2},
            "train": {"batch_size": 4, "final_stage_steps": 2, "warmup_steps": 1},
            "eval": {"max_new_tokens": 4},
            "log": {"progress": False},
        },
    )


def test_init_from_a_lora_checkpoint_trains_its_adapters(lora_coconut: Path, tmp_path: Path):
    """The command the Llama-3-8B preset prints (init_from=<LoRA checkpoint>) used to end in 'element 0 of
    tensors does not require grad': the reload had no trainable parameter."""
    run, state = train_coconut.build_run(continue_config(lora_coconut, tmp_path / "run"))
    trainable = {n: p.detach().clone() for n, p in run.lm.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trainable) and any("trainable_tokens" in n for n in trainable)
    stats = train_coconut.train_step(run, state.stage, 0)
    assert torch.isfinite(torch.tensor(stats["loss"]))
    changed = {n for n, p in run.lm.named_parameters() if n in trainable and not torch.equal(p, trainable[n])}
    assert any("lora_B" in n for n in changed) and any("trainable_tokens" in n for n in changed), changed
    run.logger.close()


def test_resume_of_a_lora_run_trains_its_adapters(lora_coconut: Path, tmp_path: Path):
    """--resume reloads the run's last checkpoint through the same path: trainable adapters, not frozen."""
    out = tmp_path / "run"
    cfg = continue_config(lora_coconut, out)
    train_coconut.train(cfg)
    run, state = train_coconut.build_run(cfg, resume=str(out))
    assert state.stage_done
    assert any("lora_B" in n for n, p in run.lm.named_parameters() if p.requires_grad)
    assert run.lm.training
    run.logger.close()


def test_init_from_and_resume_keep_the_checkpoint_dtype(bf16_coconut: Path, tmp_path: Path):
    """model.dtype unset: a bf16 checkpoint continues in bf16 (init_from, then --resume); set: it is honoured."""
    out = tmp_path / "run"
    cfg = continue_config(bf16_coconut, out)
    run, _ = train_coconut.build_run(cfg)
    assert run.lm.causal_lm.dtype == torch.bfloat16
    run.logger.close()
    train_coconut.train(cfg)
    resumed, _ = train_coconut.build_run(cfg, resume=str(out))
    assert resumed.lm.causal_lm.dtype == torch.bfloat16
    resumed.logger.close()
    upcast, _ = train_coconut.build_run(continue_config(bf16_coconut, tmp_path / "run32", dtype="float32"))
    assert upcast.lm.causal_lm.dtype == torch.float32
    upcast.logger.close()


def test_stage_at_follows_the_stage_lengths_and_skips_empty_stages():
    cfg = from_dict(
        RunConfig,
        {
            "curriculum": {"mode": "coconut", "max_stage": 2},
            "train": {"first_stage_steps": 3, "steps_per_stage": 2, "final_stage_steps": 1},
        },
    )
    # stages 0, 1, 2, 3 last 3, 2, 2, 1 steps
    assert [train_coconut.stage_at(cfg, s, 100, 1) for s in range(9)] == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    cfg.train.final_stage_steps = 0  # stage 3 skipped: step 7 on stays in the last stage that trains
    assert [train_coconut.stage_at(cfg, s, 100, 1) for s in range(5, 9)] == [2, 2, 2, 2]


def grouping_run(out_dir: Path, length_pool: int) -> dict:
    """A 3-stage COCONUT run on arithmetic problems of 1-4 steps (lengths vary), 4 micro-batches per step."""
    cfg = from_dict(
        RunConfig,
        {
            "out_dir": str(out_dir),
            "threads": 1,
            "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
            "data": {"task": "arithmetic", "train_size": 96, "validation_size": 0, "test_size": 2, "max_difficulty": 4},
            "curriculum": {"mode": "coconut", "thoughts_per_step": 1, "max_stage": 1},
            "train": {
                "batch_size": 16,
                "grad_accum": 4,
                "length_pool": length_pool,
                "first_stage_steps": 6,
                "steps_per_stage": 6,
                "final_stage_steps": 6,
                "warmup_steps": 1,
                "log_every": 2,
            },
            "eval": {"max_new_tokens": 4},
            "log": {"progress": False},
        },
    )
    results = train_coconut.train(cfg)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {"results": results, "train": [r for r in records if "train/loss" in r]}


def test_metrics_log_real_tokens_and_computed_columns_and_grouping_cuts_the_padding(tmp_path: Path):
    drawn, grouped = grouping_run(tmp_path / "drawn", 0), grouping_run(tmp_path / "grouped", 4)
    for run in (drawn, grouped):
        assert len(run["train"]) == 9  # every 2 of 18 steps
        for r in run["train"]:
            assert 0 < r["train/tokens"] <= r["train/columns"]
            assert r["train/padded_fraction"] == pytest.approx(1 - r["train/tokens"] / r["train/columns"])
        summary = run["results"]["train"]
        assert summary["tokens"] == sum(r["train/tokens"] * 2 for r in run["train"])  # logged means of 2 steps
        assert summary["columns"] == sum(r["train/columns"] * 2 for r in run["train"])
    # the same examples over the run (18 steps x 16 = 3 epochs of 96), with less padding when grouped
    assert grouped["results"]["train"]["tokens"] == drawn["results"]["train"]["tokens"]
    assert grouped["results"]["train"]["padded_fraction"] < 0.5 * drawn["results"]["train"]["padded_fraction"]


def scratch_config(out_dir: Path, **train) -> RunConfig:
    """A fresh tiny scratch-Llama COCONUT run on the arithmetic task."""
    return from_dict(
        RunConfig,
        {
            "out_dir": str(out_dir),
            "threads": 1,
            "model": {
                "name_or_path": "scratch-llama",
                "hidden_size": 32,
                "num_layers": 1,
                "num_heads": 4,
                "intermediate_size": 64,
                "gradient_checkpointing": train.pop("gradient_checkpointing", False),
            },
            "data": {"task": "arithmetic", "train_size": 8, "validation_size": 2, "test_size": 2, "max_difficulty": 2},
            "curriculum": {"mode": "coconut", "thoughts_per_step": 1, "max_stage": 1},
            "train": {"batch_size": 4, "steps_per_stage": 1, "warmup_steps": 1, **train},
            "eval": {"max_new_tokens": 4},
            "log": {"progress": False},
        },
    )


def test_train_compile_compiles_the_training_forward_only(tmp_path: Path):
    """train.compile=true hands the training forward a compiled decoder (compiled lazily, at the first step)."""
    run, _ = train_coconut.build_run(scratch_config(tmp_path / "run", compile=True))
    assert run.lm.compiled_decoder is not None
    run.logger.close()
    run, _ = train_coconut.build_run(scratch_config(tmp_path / "eager"))
    assert run.lm.compiled_decoder is None
    run.logger.close()


def test_train_compile_with_gradient_checkpointing_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        train_coconut.build_run(scratch_config(tmp_path / "run", compile=True, gradient_checkpointing=True))
