"""Length grouping for <bot>-aligned batches: fewer padded columns per micro-batch.

The collator (coconav/data/curriculum.py `collate`) puts every example's <bot> on one column, so a
micro-batch of rows computes rows x (max prefix + max suffix) columns, where a sequence's *layout* is
(prefix, suffix) = (tokens before <bot>, tokens from <bot> on). Padding depends on the two lengths
separately, not on their sum: `arrange` cuts a pool of examples into micro-batches by trying a few
orders (the given one, by total length, and "strips": sorted by one length, cut into strips, each
strip sorted by the other) and keeping the one with the fewest columns.

`grouped_batch_indices` is the length-grouped sampler (as transformers' LengthGroupedSampler does it:
shuffle, cut into pools of `pool` global batches, sort each pool, cut it into batches, shuffle the
batches of the pool). Like `batch_indices` it is a pure function of (seed, step), so a resumed run and
a run on more processes with the same global batch see the same batches:

    idx = grouped_batch_indices(len(examples), batch_size=16, step=global_step, seed=0, pool=16, micro=8,
                                layouts_at=lambda step: layouts)   # layouts[i] = (prefix, suffix) of example i
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from collections.abc import Sequence as Seq

from coconav.config import CurriculumConfig
from coconav.data.curriculum import Sequence, TokenizedExample, stage_layout
from coconav.data.splits import batch_indices, epoch_permutation
from coconav.tokens import SpecialTokens

Layout = tuple[int, int]  # (tokens before <bot>, tokens from <bot> on)


def sequence_layout(seq: Sequence, special: SpecialTokens) -> Layout:
    """(prefix, suffix) of a built training sequence."""
    bot = seq.ids.index(special.bot)
    return bot, len(seq.ids) - bot


def predicted_layout(ex: TokenizedExample, stage: int, cfg: CurriculumConfig) -> Layout:
    """The layout `build_sequence(ex, stage, cfg)` gives without curriculum mixing: the question before
    <bot>; <bot>, the stage's slots, <eot>, the steps still in language and the answer after it."""
    dropped, slots = stage_layout(len(ex.steps), stage, cfg)
    return len(ex.question), 2 + slots + sum(len(step) for step in ex.steps[dropped:]) + len(ex.answer)


def columns(layouts: Seq[Layout], micro: int) -> int:
    """Columns computed (rows x width, padding included) when `layouts` are cut in order into micro-batches."""
    total = 0
    for lo in range(0, len(layouts), micro):
        chunk = layouts[lo : lo + micro]
        total += len(chunk) * (max(p for p, _ in chunk) + max(s for _, s in chunk))
    return total


def _strips(order: list[int], layouts: Seq[Layout], micro: int, strips: int, first: int) -> list[int]:
    """Sort by length `first` (0 prefix, 1 suffix), cut into `strips` strips of whole micro-batches, sort
    each strip by the other length."""
    second = 1 - first
    ranked = sorted(order, key=lambda i: (layouts[i][first], layouts[i][second]))
    per = math.ceil(math.ceil(len(ranked) / strips) / micro) * micro
    out: list[int] = []
    for lo in range(0, len(ranked), per):
        out += sorted(ranked[lo : lo + per], key=lambda i: (layouts[i][second], layouts[i][first]))
    return out


def arrange(layouts: Seq[Layout], micro: int) -> list[int]:
    """An order of range(len(layouts)) whose micro-batches (consecutive chunks of `micro`) compute the
    fewest columns among the candidates: the given order (so never worse than it), by total length, and
    1..sqrt(micro-batches)+1 strips either way round. Ties keep the earlier candidate (deterministic)."""
    order = list(range(len(layouts)))
    candidates = [order, sorted(order, key=lambda i: layouts[i][0] + layouts[i][1])]
    for strips in range(1, math.isqrt(math.ceil(len(order) / micro)) + 2):
        candidates += [_strips(order, layouts, micro, strips, 0), _strips(order, layouts, micro, strips, 1)]
    return min(candidates, key=lambda o: columns([layouts[i] for i in o], micro))


_POOL_CACHE: dict[tuple, list[list[int]]] = {}


def grouped_batch_indices(
    num_examples: int,
    batch_size: int,
    step: int,
    seed: int,
    pool: int,
    micro: int,
    layouts_at: Callable[[int], Seq[Layout]],
) -> list[int]:
    """Indices of the training examples in batch `step`, length-grouped; each epoch still covers every
    example once.

    The epoch's seeded permutation (the one `batch_indices` uses) is cut into pools of `pool` batches;
    a pool is arranged into micro-batches of `micro` (`arrange`) by the layouts `layouts_at(s)` gives for
    the pool's first step s (the stage there decides the lengths: a stage change inside a pool keeps the
    pool's grouping, so no example is lost or repeated), cut into batches, and its batches shuffled. A
    batch that straddles two epochs (when batch_size does not divide num_examples) is drawn as
    `batch_indices` draws it. The result is in micro-batch order: consecutive chunks of `micro` are the
    groups.
    """
    n, B = num_examples, batch_size
    start = step * B
    epoch = start // n
    if (start + B - 1) // n != epoch:
        return batch_indices(n, B, step, seed)
    head = -(epoch * n) % B  # positions at this epoch's start taken by a batch begun in the previous epoch
    first = (epoch * n + head) // B  # the epoch's first whole batch
    full = (n - head) // B  # whole batches in this epoch
    p, k = divmod(step - first, pool)
    count = min(pool, full - p * pool)
    lo = head + p * pool * B
    members = epoch_permutation(n, seed, epoch)[lo : lo + count * B]
    layouts = layouts_at(first + p * pool)
    pool_layouts = [tuple(layouts[i]) for i in members]
    key = (n, B, seed, epoch, p, pool, micro, hash(tuple(pool_layouts)))
    if key not in _POOL_CACHE:
        if len(_POOL_CACHE) > 4:
            _POOL_CACHE.clear()
        arranged = [members[i] for i in arrange(pool_layouts, micro)]
        batches = [arranged[b * B : (b + 1) * B] for b in range(count)]
        random.Random(f"{seed}-pool-{epoch}-{p}").shuffle(batches)
        _POOL_CACHE[key] = batches
    return list(_POOL_CACHE[key][k])
