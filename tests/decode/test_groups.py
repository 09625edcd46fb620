"""The K-trajectory core (coconav/decode/groups.py): temperature spreads, K allocation, cache expansion."""

from __future__ import annotations

import pytest
import torch

from coconav.decode.groups import (
    allocate_trajectories,
    inference_temperatures,
    measure_thought_scale,
    repeat_state,
    trajectory_temperatures,
)

from conftest import questions, steering_navigator, tiny_lm


def test_trajectory_temperatures_are_a_geometric_spread_around_one():
    assert trajectory_temperatures(1, 2.0).tolist() == [1.0]
    torch.testing.assert_close(trajectory_temperatures(3, 2.0), torch.tensor([0.5, 1.0, 2.0]))
    t = trajectory_temperatures(5, 4.0)
    torch.testing.assert_close(t[1:] / t[:-1], torch.full((4,), 2.0))  # constant ratio 4 ** (2 / 4)
    assert trajectory_temperatures(4, 1.0).tolist() == [1.0] * 4
    torch.testing.assert_close(inference_temperatures(4, 0.5, 2.0), torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert inference_temperatures(1, 0.5, 2.0).tolist() == [0.0]


def test_allocation_spends_the_budget_on_the_hard_questions():
    k = allocate_trajectories(torch.tensor([0.9, 0.1, 0.5, 0.5]), budget=3.0, max_k=16)
    assert int(k.sum()) == 12 and bool((k >= 1).all())
    assert int(k[1]) > int(k[2]) == int(k[3]) > int(k[0])
    assert allocate_trajectories(torch.full((5,), 0.3), 2.0, 16).tolist() == [2] * 5
    capped = allocate_trajectories(torch.tensor([0.0, 1.0, 1.0]), budget=4.0, max_k=5)
    assert capped.tolist()[0] == 5 and int(capped.sum()) == 12 and int(capped.max()) <= 5
    assert allocate_trajectories(torch.tensor([0.2, 0.7]), 1.0, 4).tolist() == [1, 1]
    with pytest.raises(ValueError, match="trajectories_budget must be in"):
        allocate_trajectories(torch.tensor([0.5]), 0.5, 4)


def test_variable_repeat_indexes_the_cache_without_recomputing():
    lm = tiny_lm()
    prompts = [[4, 5, 6, lm.special.bot], [7, lm.special.bot]]
    state = lm.prefill(prompts)
    keys = [layer.keys.clone() for layer in state.cache.cache.layers]
    out = repeat_state(state, torch.tensor([3, 1]))
    assert out.last_hidden.shape[0] == 4 and out.cache.mask.shape[0] == 4
    for before, layer in zip(keys, out.cache.cache.layers):
        assert torch.equal(layer.keys, before[[0, 0, 0, 1]])


def test_thought_scale_is_the_rms_of_plain_thoughts_and_scales_the_offset():
    lm = tiny_lm()
    nav = steering_navigator(steer_scale="rms")
    assert nav.needs_thought_scale
    a = torch.randn(2, 4)
    with pytest.raises(ValueError, match="steer_scale='rms' needs the thought scale"):
        nav.steer(a)
    prompts = [[4, 5, 6, lm.special.bot], [7, lm.special.bot]]
    rms = measure_thought_scale(lm, nav, prompts)
    _, thoughts = lm.think(lm.prefill(prompts), torch.full((2,), nav.cfg.max_thoughts), return_thoughts=True)
    assert rms == pytest.approx(float(thoughts.pow(2).mean().sqrt()), rel=1e-5)
    torch.testing.assert_close(nav.steer(a), nav.up(a) * rms)
    assert "thought_rms" in nav.state_dict()  # saved with the checkpoint


def test_a_rollout_measures_the_scale_once_and_replay_uses_it():
    from coconav.rl.rollout import replay, roll_out

    lm = tiny_lm()
    nav = steering_navigator(steer_scale="rms")
    traj = roll_out(lm, nav, questions(3), sample=True, max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    rms = float(nav.thought_rms)
    assert rms > 0
    roll_out(lm, nav, questions(2, seed=9), sample=True, max_new_tokens=4)
    assert float(nav.thought_rms) == rms  # measured once, not per rollout
    with torch.no_grad():
        rep = replay(lm, nav, traj, torch.arange(3))
    assert bool(torch.isfinite(rep.logprobs).all())


@pytest.mark.parametrize("halting, threshold", [("greedy", 0.5), ("sample", 0.5), ("greedy", 0.2), ("sample", 0.2)])
def test_inference_halting_is_greedy_for_trajectory_0_and_drawn_from_the_streams_when_sampled(halting, threshold):
    """Greedy rows halt where p > halt_threshold; sampled rows draw from p with its odds divided by the threshold's
    (the halting logit shifted by -logit(threshold)), so both move with the threshold."""
    from coconav.decode.groups import run_groups
    from coconav.model.streams import HALT, stream_uniform

    def shifted(p: float) -> float:
        odds = p / (1 - p) / (threshold / (1 - threshold))
        return odds / (1 + odds)

    lm = tiny_lm()
    nav = steering_navigator(inference_halting=halting, halt_threshold=threshold)
    prompts = [[4, 5, 6, lm.special.bot], [7, lm.special.bot], [8, 9, lm.special.bot]]
    run = run_groups(
        lm,
        nav,
        prompts,
        num_trajectories=6,
        sample=False,
        explore=True,
        max_new_tokens=3,
        generator=torch.Generator().manual_seed(0),
    )
    probs = torch.stack(run.controller.halt_probs, dim=1)  # [B, steps]
    for row in range(len(run.group)):
        n = int(run.num_thoughts[row])
        if halting == "sample" and int(run.trajectory[row]) > 0:
            draws = [
                float(stream_uniform(run.seeds[row : row + 1], t, 1, HALT)) < shifted(float(probs[row, t]))
                for t in range(n + 1)
            ]
        else:
            draws = [float(probs[row, t]) > threshold for t in range(n + 1)]
        # a row halts at the first step whose decision says so (or at the budget)
        assert not any(draws[:n]) and (n == nav.cfg.max_thoughts or draws[n]), (row, n, draws)
    first = run.num_thoughts[run.trajectory == 0]
    others = run.num_thoughts.view(3, 6)[:, 1:]
    if halting == "greedy":  # with greedy halting the halting differs only through the steered states
        single = run_groups(lm, nav, prompts, num_trajectories=1, sample=False, explore=True, max_new_tokens=3)
        assert torch.equal(first, single.num_thoughts)
    else:
        assert bool((others != first[:, None]).any())  # sampled halting spreads the thought counts
