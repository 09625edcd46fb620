"""Per-row random streams (coconav/model/streams.py): a row's draws depend on its seed and step only."""

from __future__ import annotations

import torch

from coconav.model.streams import HALT, STEER, stream_categorical, stream_normal, stream_uniform


def test_a_rows_draws_do_not_depend_on_the_other_rows():
    seeds = torch.tensor([7, 8, 9])
    together = stream_normal(seeds, step=3, size=5)
    for i in range(3):
        torch.testing.assert_close(stream_normal(seeds[i : i + 1], step=3, size=5)[0], together[i], rtol=0, atol=0)
    assert not torch.equal(together[0], together[1])
    assert not torch.equal(stream_normal(seeds, 4, 5), together)  # another step, other noise
    assert not torch.equal(stream_uniform(seeds, 3, 5, STEER), stream_uniform(seeds, 3, 5, HALT))  # other salt


def test_normals_and_uniforms_have_the_right_moments():
    seeds = torch.arange(4000)
    z = stream_normal(seeds, 0, 8)
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.03
    u = stream_uniform(seeds, 1, 8, HALT)
    assert float(u.min()) > 0 and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01


def test_categorical_draws_follow_the_probabilities_and_never_pick_zero_mass():
    probs = torch.tensor([0.0, 0.25, 0.0, 0.75, 0.0])
    draws = stream_categorical(probs.expand(8000, 5), torch.arange(8000), step=2)
    counts = torch.bincount(draws, minlength=5).float() / 8000
    assert counts[0] == 0 and counts[2] == 0 and counts[4] == 0
    assert abs(float(counts[3]) - 0.75) < 0.02
