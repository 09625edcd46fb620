"""Thought memory (coconav/model/memory.py): causal episodic attention and the persistent bank."""

from __future__ import annotations

import math

import pytest
import torch

from coconav.model.memory import EpisodicMemory, PersistentMemory

# -- episodic ---------------------------------------------------------------------------------------


def nonzero_null(mem: EpisodicMemory) -> EpisodicMemory:
    with torch.no_grad():  # the null slot starts at zero; make it nonzero so step 0 is not trivially 0
        mem.null_key.normal_()
        mem.null_value.normal_()
    return mem


@pytest.mark.parametrize("t", [0, 2, 4])
def test_episodic_memory_is_causal(t):
    torch.manual_seed(0)
    mem = nonzero_null(EpisodicMemory(8))
    x = torch.randn(2, 6, 8)
    changed = x.clone()
    changed[:, t] += torch.randn(2, 8) * 3
    a, b = mem(x), mem(changed)
    # a change at step t leaves the readouts of the steps before it exactly as they were ...
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=0, rtol=0)
    # ... and reaches every later step (they attend over step t's key and value)
    for s in range(t + 1, 6):
        assert not torch.allclose(a[:, s], b[:, s]), s


@pytest.mark.parametrize("t", [0, 2, 4])
def test_episodic_step_does_not_read_its_own_state(t):
    """Step t's query comes from x_t, but its keys/values only from the null slot and steps < t: with a
    constant query (zero query weights) the readout at step t must not move when x_t does."""
    torch.manual_seed(0)
    mem = nonzero_null(EpisodicMemory(8))
    with torch.no_grad():
        mem.query.weight.zero_()
        mem.query.bias.normal_()
    x = torch.randn(2, 6, 8)
    changed = x.clone()
    changed[:, t] += torch.randn(2, 8) * 3
    a, b = mem(x), mem(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=0, rtol=0)
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_episodic_step0_reads_the_null_slot_and_sequence_equals_prefixes():
    torch.manual_seed(1)
    mem = EpisodicMemory(4)
    with torch.no_grad():
        mem.null_value.copy_(torch.tensor([1.0, -2.0, 3.0, 0.5]))
    x = torch.randn(3, 5, 4)
    full = mem(x)
    # step 0 has only the null slot: softmax over one score = 1 -> the null value itself
    torch.testing.assert_close(full[:, 0], mem.null_value.expand(3, 4))
    # step by step (as a rollout sees it) equals all at once (as a replay computes it)
    for s in range(5):
        torch.testing.assert_close(mem(x[:, : s + 1])[:, -1], full[:, s], atol=1e-6, rtol=1e-6)


def test_episodic_step1_by_hand():
    # dim 1, identity projections, null key 0 and null value 10: step 1 attends over
    # {null (score 0), step 0 (score q1 * k0 * 1^-0.5)}; x = [1, 2]: score = 2 * 1 = 2
    # readout = (e^0 * 10 + e^2 * 1) / (e^0 + e^2)
    mem = EpisodicMemory(1)
    with torch.no_grad():
        for lin in (mem.query, mem.key, mem.value):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
        mem.null_value.fill_(10.0)
    out = mem(torch.tensor([[[1.0], [2.0]]]))
    expected = (10 + math.exp(2) * 1) / (1 + math.exp(2))
    torch.testing.assert_close(out[0, 1, 0], torch.tensor(expected))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(10.0))


# -- persistent ---------------------------------------------------------------------------------------


def unit(*xs: float) -> torch.Tensor:
    v = torch.tensor(xs)
    return v / v.norm()


def test_empty_bank_reads_nothing():
    bank = PersistentMemory(3, 2, size=4, topk=2)
    readout, has = bank.read(torch.randn(5, 3))
    assert readout.shape == (5, 2) and bool((readout == 0).all())
    assert has.tolist() == [False] * 5


def test_top1_read_returns_the_nearest_entry_value():
    bank = PersistentMemory(3, 2, size=8, topk=1)
    keys = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])  # keys are normalised on write
    values = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    bank.write(keys, values, torch.tensor([1.0, 1.0, 1.0]))
    assert bank.filled == 3
    # nearest by cosine: [.9, .1, 0] -> key 0; [0, 1, 1.1] -> key 2 (cos .74 vs .67); [-1, 3, 0] -> key 1
    readout, has = bank.read(torch.tensor([[0.9, 0.1, 0.0], [0.0, 1.0, 1.1], [-1.0, 3.0, 0.0]]))
    torch.testing.assert_close(readout, torch.tensor([[1.0, 1.0], [3.0, 3.0], [2.0, 2.0]]), atol=0, rtol=0)
    assert has.tolist() == [True, True, True]
    torch.testing.assert_close(bank.keys[2], torch.tensor([0.0, 0.0, 1.0]))


def test_topk_read_weights_by_sharpened_similarity():
    # query q = (1, 1)/sqrt2; keys k0 = (1, 1)/sqrt2 (cos 1), k1 = e1 (cos .7071), k2 = -e1 (cos -.7071);
    # topk 2 keeps k0 and k1 (k2's value 99 must not appear).
    # weights = softmax([1, .70711] / .1) = softmax([10, 7.0711]): w0 = 1 / (1 + e^-2.9289) = .94926
    # readout = w0 * 10 + w1 * 20
    bank = PersistentMemory(2, 1, size=4, topk=2)
    bank.write(
        torch.tensor([[1.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]),
        torch.tensor([[10.0], [20.0], [99.0]]),
        torch.tensor([1.0, 1.0, 1.0]),
    )
    readout, _ = bank.read(torch.tensor([[1.0, 1.0]]))
    w0 = 1 / (1 + math.exp(-(1 - math.sqrt(0.5)) / 0.1))
    assert w0 == pytest.approx(0.94926, abs=1e-5)
    torch.testing.assert_close(readout, torch.tensor([[w0 * 10 + (1 - w0) * 20]]))


def test_eviction_lowest_return_first_then_oldest():
    bank = PersistentMemory(2, 1, size=2, topk=1)
    k = torch.tensor([[1.0, 0.0]])

    def write(value: float, ret: float) -> None:
        bank.write(k, torch.tensor([[value]]), torch.tensor([ret]))

    def stored() -> list[tuple[float, float]]:
        return [(float(bank.values[i, 0]), float(bank.returns[i])) for i in range(bank.filled)]

    # returns are binary fractions so that float32 compares exactly
    write(1, 0.5)  # slot 0, age 0
    write(2, 1.0)  # slot 1, age 1
    write(3, 0.75)  # full: lowest return .5 (slot 0) goes
    assert stored() == [(3, 0.75), (2, 1.0)]
    write(4, 0.25)  # lower than everything stored: not written
    assert stored() == [(3, 0.75), (2, 1.0)]
    assert int(bank.count) == 3
    write(5, 1.0)  # lowest is .75 (slot 0); the new entry gets age 3
    assert stored() == [(5, 1.0), (2, 1.0)]
    # now both hold 1.0: slot 1 (age 1) is older than slot 0 (age 3) -> slot 1 goes first
    write(6, 1.0)
    assert stored() == [(5, 1.0), (6, 1.0)]
    # then slot 0 (age 3 < 4) is the older one
    write(7, 1.0)
    assert stored() == [(7, 1.0), (6, 1.0)]
    assert bank.ages.tolist() == [5, 4]


def test_state_dict_round_trip_gives_identical_reads():
    torch.manual_seed(0)
    bank = PersistentMemory(6, 3, size=5, topk=2)
    bank.write(torch.randn(7, 6), torch.randn(7, 3), torch.randn(7))  # overfills: evictions happen
    queries = torch.randn(4, 6)
    before = bank.read(queries)
    fresh = PersistentMemory(6, 3, size=5, topk=2)
    assert not fresh.read(queries)[1].any()
    fresh.load_state_dict(bank.state_dict())
    assert fresh.filled == bank.filled == 5
    after = fresh.read(queries)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    # later writes continue identically (ages and count were restored too)
    extra = (torch.randn(2, 6), torch.randn(2, 3), torch.tensor([5.0, 5.0]))
    bank.write(*extra)
    fresh.write(*extra)
    for name, buf in bank.state_dict().items():
        assert torch.equal(buf, fresh.state_dict()[name]), name
