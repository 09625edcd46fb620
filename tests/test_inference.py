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


@pytest.mark.parametrize(
    ("questions", "kind", "message"),
    [
        ("", InputError, "every question must be a non-empty string"),
        ([], InputError, "every question must be a non-empty string"),
        (["1 + 2 ?", "  "], InputError, "every question must be a non-empty string"),
        ([None], TypeError, "every question must be a string, got NoneType"),
        (["1 + 2 ?", 3], TypeError, "every question must be a string, got int"),
        (7, TypeError, "questions must be a string or a list of strings, got int"),
    ],
    ids=["empty", "no-questions", "blank", "none", "int-in-list", "int"],
)
@pytest.mark.parametrize("num_trajectories", [1, 2])
def test_bad_questions_are_value_or_type_errors(nav_checkpoint: Path, questions, kind, message, num_trajectories):
    """API errors are ValueErrors (InputError), and TypeErrors too where the type is wrong: `except ValueError`
    around a call catches every bad argument coconav refuses, `except TypeError` the wrong types."""
    model = CoconavModel.from_pretrained(nav_checkpoint)
    with pytest.raises(kind) as err:
        model.generate(questions, num_trajectories=num_trajectories)
    assert str(err.value) == message and isinstance(err.value, ValueError) and isinstance(err.value, InputError)


@pytest.mark.parametrize(
    ("num_thoughts", "kind", "message"),
    [
        (10**20, InputError, "--num-thoughts 100000000000000000000 does not fit the model's context of 512 positions"),
        (-1, InputError, "--num-thoughts must be >= 0, got -1"),
        ("3", TypeError, "num_thoughts must be an integer, got str"),
    ],
)
def test_bad_thought_counts_are_refused_before_any_tensor_is_sized(tiny_run: Path, num_thoughts, kind, message):
    # 10**20 thoughts once overflowed torch.full with a bare "Overflow when unpacking long long"
    with pytest.raises(kind) as err:
        CoconavModel.from_pretrained(tiny_run).generate("1 + 2 ?", num_thoughts=num_thoughts)
    assert str(err.value) == message and isinstance(err.value, ValueError)
