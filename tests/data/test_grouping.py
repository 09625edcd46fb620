"""Length grouping (coconav/data/grouping.py): the arrangement of a pool into micro-batches, and the
length-grouped sampler (a permutation per epoch, pure function of seed and step, fewer columns)."""

from __future__ import annotations

import random

from coconav.config import CurriculumConfig
from coconav.data.curriculum import TokenizedExample, build_sequence
from coconav.data.grouping import arrange, columns, grouped_batch_indices, predicted_layout, sequence_layout
from coconav.data.splits import batch_indices
from coconav.tokens import SpecialTokens

SPECIAL = SpecialTokens(pad=0, eos=1, bot=2, eot=3, thought=4, pause=5)


def stream(n: int, batch: int, steps: int, **kw) -> list[int]:
    return [i for step in range(steps) for i in grouped_batch_indices(n, batch, step, **kw)]


def test_predicted_layout_is_the_built_sequence_layout_at_every_stage():
    ex = TokenizedExample(
        question=[7] * 5,
        steps=[[8] * 3, [9] * 4, [10] * 2],
        answer=[11, 12, 1],
        step_targets=[8, 9, 10],
        answer_target=11,
        difficulty=3,
    )
    cfg = CurriculumConfig(mode="coconut", thoughts_per_step=2, max_stage=2)
    for stage in range(4):  # 0 (CoT), 1-2 (steps replaced by 2 thoughts each), 3 (final: all steps dropped)
        seq = build_sequence(ex, stage, cfg, SPECIAL)
        assert predicted_layout(ex, stage, cfg) == sequence_layout(seq, SPECIAL)
    # stage 1: <bot>, 2 thoughts, <eot>, steps 2-3 (4 + 2 tokens), the answer (3): 2 + 2 + 6 + 3 = 13 after 5
    assert predicted_layout(ex, 1, cfg) == (5, 13)


def test_columns_count_the_widest_prefix_plus_the_widest_suffix_per_micro_batch():
    # micro-batch [(3, 5), (1, 9)]: width 3 + 9 = 12, 2 rows -> 24; micro-batch [(4, 4)]: 1 row of 8
    assert columns([(3, 5), (1, 9), (4, 4)], micro=2) == 24 + 8


def test_arrange_groups_prefix_and_suffix_separately_where_total_length_cannot():
    # every total is 50, so sorting by total keeps the mixed pairs (2 x 80 columns each); grouping by
    # prefix gives pairs of equal layout: 2 x 50 columns each, no padding
    layouts = [(10, 40), (40, 10)] * 4
    assert columns(layouts, 2) == 4 * 2 * 80
    order = arrange(layouts, micro=2)
    assert sorted(order) == list(range(8))
    assert columns([layouts[i] for i in order], 2) == 4 * 2 * 50


def test_arrange_is_never_worse_than_the_given_order():
    rng = random.Random(0)
    for _ in range(20):
        layouts = [(rng.randrange(1, 60), rng.randrange(1, 90)) for _ in range(rng.randrange(1, 40))]
        order = arrange(layouts, micro=4)
        assert sorted(order) == list(range(len(layouts)))
        assert columns([layouts[i] for i in order], 4) <= columns(layouts, 4)


def test_grouped_batches_cover_each_epoch_once_even_across_a_stage_change():
    n, batch = 50, 8  # 8 does not divide 50: some batches straddle two epochs
    # the layouts change at step 9 (a new stage) in the middle of a pool of 3 batches
    layouts = {
        s: [(random.Random(f"{s}-{i}").randrange(1, 30), random.Random(f"x{s}-{i}").randrange(1, 30)) for i in range(n)]
        for s in (0, 1)
    }
    kw = dict(seed=3, pool=3, micro=4, layouts_at=lambda step: layouts[int(step >= 9)])
    out = stream(n, batch, 25, **kw)  # 200 positions = 4 epochs
    for epoch in range(4):
        assert sorted(out[epoch * n : (epoch + 1) * n]) == list(range(n)), epoch
    assert out[:n] != out[n : 2 * n]
    assert out == stream(n, batch, 25, **kw)  # resumable: a pure function of (seed, step)
    assert out != stream(n, batch, 25, **{**kw, "seed": 4})
    assert grouped_batch_indices(n, batch, 17, **kw) == out[17 * batch : 18 * batch]  # any step on its own


def test_grouped_batches_cut_padding_against_random_batches():
    # four kinds of example, 16 of each: a micro-batch of one kind has no padding at all
    n, batch = 64, 8
    layouts = [(10 if i % 2 else 40, 5 if i % 4 < 2 else 30) for i in range(n)]
    real = sum(p + s for p, s in layouts)
    kw = dict(seed=0, pool=8, micro=batch, layouts_at=lambda step: layouts)
    grouped = [grouped_batch_indices(n, batch, step, **kw) for step in range(8)]
    drawn = [batch_indices(n, batch, step, seed=0) for step in range(8)]
    assert sorted(i for b in grouped for i in b) == list(range(n))
    assert sum(columns([layouts[i] for i in b], batch) for b in grouped) == real  # no padded column
    assert sum(columns([layouts[i] for i in b], batch) for b in drawn) > 1.3 * real


def test_grouped_batches_are_in_micro_batch_order():
    # a global batch of 16 for 2 ranks x 2 micro-batches of 4: each chunk of 4 is one group
    n = 32
    layouts = [(i % 4 * 10 + 1, 5) for i in range(n)]  # four prefix lengths, 8 examples each
    for step in range(2):
        b = grouped_batch_indices(n, 16, step, seed=1, pool=2, micro=4, layouts_at=lambda s: layouts)
        assert all(len({layouts[i] for i in b[lo : lo + 4]}) == 1 for lo in range(0, 16, 4))
