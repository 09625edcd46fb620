"""The static KV cache of generation (coconav/model/cache.py DecodeCache): same outputs as the dynamic
(reference) layout, fixed shapes, buffers reused from the model's pool, and clear refusals."""

from __future__ import annotations

import pytest
import torch

from coconav.errors import ConfigError
from coconav.rl.rollout import roll_out

from conftest import prompts_for, questions, scheduled_navigator, steering_navigator, tiny_lm, varied_lm


@pytest.mark.parametrize("name", ["scratch-llama", "scratch-gpt2"])
def test_static_generation_equals_dynamic(name):
    lm = varied_lm(name)
    prompts = prompts_for(lm)
    counts = [i % 5 for i in range(len(prompts))]  # uneven thought counts: rows halt at different steps
    ref = lm.generate(prompts, num_thoughts=counts, max_new_tokens=8, return_thoughts=True)
    assert len({tuple(s.tolist()) for s in ref.sequences}) > 3  # the tokens really vary
    lm.use_static_cache()
    out = lm.generate(prompts, num_thoughts=counts, max_new_tokens=8, return_thoughts=True)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.equal(out.num_thoughts, ref.num_thoughts) and torch.equal(out.new_tokens, ref.new_tokens)
    torch.testing.assert_close(out.thoughts, ref.thoughts, atol=1e-4, rtol=1e-4)


def test_static_layout_has_fixed_shapes_and_writes_one_column_per_step():
    lm = varied_lm().use_static_cache()
    prompts = prompts_for(lm, 4)
    width = max(map(len, prompts))
    state = lm.prefill(prompts, max_new_columns=5)
    assert not state.cache.is_static  # the prefix is frozen at the first step (rows may still be repeated)
    lm.think(state, torch.tensor([0, 1, 2, 3]))
    cache = state.cache
    assert cache.is_static and cache.mask.shape == (4, width + 5) and cache.length == width + 4
    for layer in cache.cache.layers:
        assert layer.keys.shape[2] == width + 5
    # rows that stopped thinking keep their thought columns masked: row 0 sees none, row 3 all three
    thought_columns = cache.mask[:, width : width + 3]
    assert thought_columns.tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert cache.mask[:, width + 3].tolist() == [1, 1, 1, 1]  # <eot>
    with pytest.raises(RuntimeError, match="do it between the prefill and the first step"):
        cache.repeat_rows(2)
    lm._step(state, lm.embed(torch.zeros(4, 1, dtype=torch.long)), torch.ones(4, dtype=torch.bool))  # the last column
    with pytest.raises(RuntimeError, match="columns are all used"):
        cache.column(torch.ones(4, dtype=torch.bool))


def test_static_buffers_are_reused_from_the_pool():
    lm = varied_lm().use_static_cache()
    prompts = prompts_for(lm, 6)
    state = lm.prefill(prompts, max_new_columns=4)
    lm.think(state, torch.full((6,), 2))
    pointer = state.cache.cache.layers[0].keys.data_ptr()
    state.release()
    again = lm.prefill(prompts, max_new_columns=4)
    lm.think(again, torch.full((6,), 2))
    assert again.cache.cache.layers[0].keys.data_ptr() == pointer  # the same buffers, zeroed and refilled
    other = lm.prefill(prompts[:3], max_new_columns=4)  # another shape: its own buffers
    lm.think(other, torch.full((3,), 2))
    assert other.cache.cache.layers[0].keys.data_ptr() != pointer


def test_static_rollouts_with_uneven_halting_and_k_trajectories_equal_dynamic():
    lm = tiny_lm()
    examples = questions(6)
    nav = scheduled_navigator(lm, examples)
    ref = roll_out(lm, nav, examples, sample=False, max_new_tokens=6)
    seeds = torch.arange(50, 50 + 6 * 3)
    nav3 = steering_navigator()
    ref3 = roll_out(lm, nav3, examples, num_trajectories=3, sample=True, max_new_tokens=6, seeds=seeds)
    lm.use_static_cache()
    try:
        out = roll_out(lm, nav, examples, sample=False, max_new_tokens=6)
        out3 = roll_out(lm, nav3, examples, num_trajectories=3, sample=True, max_new_tokens=6, seeds=seeds)
    finally:
        lm.use_static_cache(False)
    for a, b in ((out, ref), (out3, ref3)):
        assert a.num_thoughts.tolist() == b.num_thoughts.tolist() and a.texts == b.texts
        assert len(set(b.num_thoughts.tolist())) > 1  # halting really is uneven
        torch.testing.assert_close(a.actions, b.actions, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=1e-4)


def test_kv_cache_setting_is_checked():
    lm = tiny_lm()
    with pytest.raises(ConfigError, match="model.kv_cache must be 'dynamic' or 'static'"):
        lm.configure_generation("paged")
    assert lm.configure_generation("static").kv_cache == "static" and not lm.is_compiled
