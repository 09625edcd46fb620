"""Compiled generation (LatentLM.compile_generation, `model.compile: true`) equals the eager reference on a CPU:
the same greedy tokens and halting, thoughts and navigator outputs within float tolerance.

Compiling costs tens of seconds per new shape on 2 cores, so one compiled model serves the module."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from coconav.config import ModelConfig
from coconav.data.tokenizer import task_tokenizer
from coconav.model.build import build_latent_lm
from coconav.rl.rollout import roll_out

from conftest import prompts_for, questions, steering_navigator, varied_lm


@pytest.fixture(scope="module")
def models():
    eager = varied_lm()
    compiled = varied_lm().compile_generation()
    assert compiled.is_compiled and compiled.kv_cache == "static" and eager.kv_cache == "dynamic"
    return eager, compiled


def test_compiled_generation_equals_eager(models):
    eager, compiled = models
    prompts = prompts_for(eager, 12)
    counts = [i % 5 for i in range(12)]
    ref = eager.generate(prompts, num_thoughts=counts, max_new_tokens=8, return_thoughts=True)
    counters["frames"].clear()
    for _ in range(2):  # the second call runs the compiled code without compiling again
        out = compiled.generate(prompts, num_thoughts=counts, max_new_tokens=8, return_thoughts=True)
        assert torch.equal(out.sequences, ref.sequences) and torch.equal(out.num_thoughts, ref.num_thoughts)
        torch.testing.assert_close(out.thoughts, ref.thoughts, atol=1e-4, rtol=1e-4)
    assert counters["frames"]["ok"] >= 2  # dynamo compiled the prefill and the step (not a silent eager run)
    # capacity is rounded up to a multiple of 16 columns (fewer distinct shapes to compile)
    state = compiled.prefill(prompts[:3], max_new_columns=4)
    compiled.think(state, torch.ones(3, dtype=torch.long))
    assert state.cache.mask.shape[1] == 16
    state.release()


def test_compiled_navigator_rollouts_equal_eager(models):
    eager, compiled = models
    examples = questions(4)
    seeds = torch.arange(7, 7 + 4 * 3)
    ref = roll_out(
        eager,
        steering_navigator(seed=5).float(),
        examples,
        num_trajectories=3,
        sample=True,
        max_new_tokens=6,
        seeds=seeds,
    )
    out = roll_out(
        compiled,
        steering_navigator(seed=5).float(),
        examples,
        num_trajectories=3,
        sample=True,
        max_new_tokens=6,
        seeds=seeds,
    )
    assert out.num_thoughts.tolist() == ref.num_thoughts.tolist() and out.texts == ref.texts
    torch.testing.assert_close(out.actions, ref.actions, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.values, ref.values, atol=1e-4, rtol=1e-4)


def test_compile_is_a_model_setting():
    cfg = ModelConfig(
        name_or_path="scratch-llama", hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64, compile=True
    )
    lm = build_latent_lm(cfg, task_tokenizer("arithmetic"))
    assert lm.is_compiled and lm.kv_cache == "static"  # compiled lazily: nothing is compiled until a call
