"""The Python API (coconav/inference.py): device and dtype on load, the one generation path, and a
pluggable thought controller."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coconav.errors import InputError
from coconav.inference import CoconavModel
from coconav.model.latent_lm import ThoughtDecision


def test_from_pretrained_keeps_the_checkpoint_dtype(bf16_coconut: Path):
    model = CoconavModel.from_pretrained(bf16_coconut)
    assert model.lm.causal_lm.dtype == torch.bfloat16  # the old load always gave float32
    assert not model.lm.training and not any(p.requires_grad for p in model.lm.parameters())
    assert isinstance(model.generate("1 + 2 ?"), str)
    assert CoconavModel.from_pretrained(bf16_coconut, dtype="float32").lm.causal_lm.dtype == torch.float32


def test_from_pretrained_device(bf16_coconut: Path):
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # the default: CUDA when available
    assert CoconavModel.from_pretrained(bf16_coconut).lm.device.type == expected
    assert CoconavModel.from_pretrained(bf16_coconut, device="cpu").lm.device.type == "cpu"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": "float7"}, "unknown dtype 'float7' (use one of float32, bfloat16, float16)"),
        ({"device": "gpu"}, "unknown device 'gpu' (use cpu, cuda, cuda:N or mps)"),
    ],
)
def test_from_pretrained_bad_device_or_dtype(bf16_coconut: Path, kwargs: dict, message: str):
    with pytest.raises(InputError) as err:
        CoconavModel.from_pretrained(bf16_coconut, **kwargs)
    assert str(err.value) == message


class CountingController:
    """Thinks exactly two thoughts, recording what it was shown (a stand-in for a recording controller)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def __call__(self, step, hidden, thought, active) -> ThoughtDecision:
        self.steps.append(step)
        return ThoughtDecision(thought=thought, halt=torch.full_like(active, step >= 2))


def test_generate_with_a_pluggable_controller(bf16_coconut: Path):
    model = CoconavModel.from_pretrained(bf16_coconut, device="cpu")
    controller = CountingController()
    records = model.generate(["1 + 2 ?", "3 * 4 ?"], controller=controller, return_trajectories=True)
    assert [r["num_thoughts"] for r in records] == [2, 2] and controller.steps == [0, 1, 2]
    assert all(r["forward_passes"] == 1 + 2 + r["new_tokens"] for r in records)
    # the same path with a fixed count gives the stage's count (2 thoughts at stage 2, one per step)
    plain = model.generate("1 + 2 ?", return_trajectories=True)
    assert plain["num_thoughts"] == 2 and set(plain) == {
        "answer",
        "num_thoughts",
        "new_tokens",
        "forward_passes",
        "steps",
        "memory_reads",
    }


def test_from_pretrained_static_cache_and_compile(bf16_coconut: Path):
    eager = CoconavModel.from_pretrained(bf16_coconut, dtype="float32")
    static = CoconavModel.from_pretrained(bf16_coconut, dtype="float32", kv_cache="static")
    assert eager.lm.kv_cache == "dynamic" and static.lm.kv_cache == "static"
    questions = ["1 + 2 ?", "3 * 4 - 5 ?", "6 ?"]
    assert static.generate(questions) == eager.generate(questions)
    compiled = CoconavModel.from_pretrained(bf16_coconut, dtype="float32", compile=True)
    assert compiled.lm.is_compiled and compiled.lm.kv_cache == "static"  # compiled lazily, at the first call
