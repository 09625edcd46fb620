"""Multi-trajectory rollouts (coconav/rl/rollout.py): K = 1 is today's navigator exactly, K trajectories from
a shared prefix equal K single rollouts given the same random streams, memory-off changes only the
memory read, variable K per question, and the per-trajectory temperatures.

The K = 1 references in tests/golden/rollout_k1.json were recorded with the single-trajectory code
before the multi-trajectory change (same tiny model, navigator and seeds as below).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import questions, steering_navigator, tiny_lm

GOLDEN = Path(__file__).parents[1] / "golden" / "rollout_k1.json"


def k1_digest(lm, nav, examples, sample: bool, seed: int) -> dict:
    from coconav.rl.rollout import roll_out

    gen = torch.Generator().manual_seed(seed) if sample else None
    traj = roll_out(lm, nav, examples, sample=sample, temperature=1.3, max_new_tokens=6, generator=gen)
    return {
        "num_thoughts": traj.num_thoughts.tolist(),
        "texts": traj.texts,
        "actions": [[round(float(v), 5) for v in row] for row in traj.actions.flatten(1)],
        "halt_probs": [[round(float(v), 5) for v in row] for row in traj.halt_probs],
        "values": [[round(float(v), 5) for v in row] for row in traj.values],
    }


def k1_cases() -> dict:
    lm = tiny_lm()
    nav = steering_navigator()
    examples = questions(6)
    return {"sampled": k1_digest(lm, nav, examples, True, 11), "greedy": k1_digest(lm, nav, examples, False, 0)}


def test_k1_reproduces_the_single_trajectory_navigator_exactly():
    golden = json.loads(GOLDEN.read_text())
    now = k1_cases()
    for case in ("sampled", "greedy"):
        want, got = golden[case], now[case]
        assert got["num_thoughts"] == want["num_thoughts"]
        assert got["texts"] == want["texts"]
        for key in ("actions", "halt_probs", "values"):
            torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(want[key]), atol=2e-5, rtol=0)
    assert any(n > 0 for n in golden["sampled"]["num_thoughts"])  # the reference exercises thoughts and steering


if __name__ == "__main__":  # records the reference (run once, on the code before the change)
    GOLDEN.write_text(json.dumps(k1_cases(), indent=1))


# -- K trajectories from a shared prefix -----------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def explorer(**cfg):
    """A steering navigator with a wide std, so that sampled trajectories really differ."""
    nav = steering_navigator(**cfg)
    with torch.no_grad():
        nav.log_std.fill_(0.0)
    return nav


def test_k_trajectories_equal_k_single_rollouts_with_the_same_streams(lm):
    from coconav.decode.groups import trajectory_temperatures
    from coconav.rl.rollout import roll_out

    nav = explorer(group_memory=False)
    examples, K = questions(3), 4
    seeds = torch.arange(100, 100 + 3 * K)
    joint = roll_out(lm, nav, examples, num_trajectories=K, sample=True, temperature=1.3, max_new_tokens=6, seeds=seeds)
    factors = trajectory_temperatures(K, nav.cfg.temperature_spread)
    assert joint.group.tolist() == [q for q in range(3) for _ in range(K)]
    assert joint.trajectory.tolist() == list(range(K)) * 3
    torch.testing.assert_close(joint.temperature_factors, factors.repeat(3))
    for r in range(3 * K):
        q, j = divmod(r, K)
        alone = roll_out(
            lm,
            nav,
            [examples[q]],
            sample=True,
            temperature=1.3 * float(factors[j]),
            max_new_tokens=6,
            seeds=seeds[r : r + 1],
        )
        assert int(joint.num_thoughts[r]) == int(alone.num_thoughts[0])
        assert joint.texts[r] == alone.texts[0]
        assert (
            joint.answer_ids[r, : int(joint.new_tokens[r])].tolist()
            == alone.answer_ids[0, : int(alone.new_tokens[0])].tolist()
        )
        torch.testing.assert_close(joint.actions[r], alone.actions[0], atol=1e-4, rtol=1e-4)
    # the streams make the trajectories of one question differ (the test is not about K copies)
    assert len({tuple(joint.actions[j, 0].tolist()) for j in range(K)}) == K
    assert len({int(n) for n in joint.num_thoughts}) > 1


def test_without_seeds_k_gt_1_draws_per_row_seeds_from_the_generator(lm):
    from coconav.rl.rollout import roll_out

    nav = explorer()
    a = roll_out(
        lm,
        nav,
        questions(2),
        num_trajectories=3,
        sample=True,
        max_new_tokens=4,
        generator=torch.Generator().manual_seed(5),
    )
    b = roll_out(
        lm,
        nav,
        questions(2),
        num_trajectories=3,
        sample=True,
        max_new_tokens=4,
        generator=torch.Generator().manual_seed(5),
    )
    assert a.seeds is not None and a.seeds.shape == (6,) and torch.equal(a.seeds, b.seeds)
    assert torch.equal(a.actions, b.actions) and a.texts == b.texts


def group_reading_navigator(**cfg):
    """An explorer whose group read, trajectory embedding, scorer and K-selector are live (the zero-initialised
    parts set by hand)."""
    nav = explorer(**cfg)
    with torch.no_grad():
        nav.group.out.weight.normal_(0, 2.0)
        nav.trajectory_embedding.weight.normal_(0, 1.0)
        nav.scorer_head.weight.normal_(0, 1.0)
        nav.selector[-1].weight.normal_(0, 1.0)
    return nav


def test_group_memory_changes_the_rollout_and_its_switch_restores_independence(lm):
    from coconav.rl.rollout import roll_out

    examples, seeds = questions(3), torch.arange(12)
    nav = group_reading_navigator()
    with torch.no_grad():
        nav.trajectory_embedding.weight.zero_()  # only the group read differs from independent rollouts
    on = roll_out(lm, nav, examples, num_trajectories=4, sample=True, max_new_tokens=5, seeds=seeds)
    nav.use_group = False
    off = roll_out(lm, nav, examples, num_trajectories=4, sample=True, max_new_tokens=5, seeds=seeds)
    plain = explorer(group_memory=False)
    plain.load_state_dict({k: v for k, v in nav.state_dict().items() if not k.startswith("group.")})
    independent = roll_out(lm, plain, examples, num_trajectories=4, sample=True, max_new_tokens=5, seeds=seeds)
    assert not torch.allclose(on.actions, off.actions)  # the read matters when on
    torch.testing.assert_close(off.actions, independent.actions)  # off = a navigator without group memory
    assert off.texts == independent.texts and torch.equal(off.num_thoughts, independent.num_thoughts)
    torch.testing.assert_close(off.halt_probs, independent.halt_probs)


def test_replay_reconstructs_group_reads_trajectory_index_and_temperatures(lm):
    """Replay of a multi-trajectory rollout gives the rollout's own values and steering log-probs: the
    peers' stored states, the trajectory embedding and each row's temperature factor are used again."""
    from torch.distributions import Normal

    from coconav.rl.rollout import replay, roll_out

    nav = group_reading_navigator()
    traj = roll_out(
        lm,
        nav,
        questions(3),
        num_trajectories=[2, 4, 3],
        sample=True,
        temperature=1.1,
        max_new_tokens=5,
        seeds=torch.arange(9),
    )
    assert traj.group.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    idx = torch.tensor([1, 4, 8, 5])
    with torch.no_grad():
        rep = replay(lm, nav, traj, idx, temperature=1.1, answer_in_policy=False)
    valid = rep.masks.valid
    torch.testing.assert_close(rep.values[valid], traj.values[idx][valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rep.final_scores, traj.final_scores[idx], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rep.success_logits, traj.success_logits[idx], atol=1e-4, rtol=1e-4)
    # steering log-prob of step 0 by hand, from the rollout's own mean and the row's temperature
    b = 0 if int(traj.num_thoughts[idx[0]]) > 0 else next(i for i in range(4) if int(traj.num_thoughts[idx[i]]) > 0)
    r = int(idx[b])
    states = traj.states[r : r + 1, :1]
    from coconav.model.navigator import gather_peers, peer_index

    exists = torch.arange(traj.states.shape[1])[None] <= traj.num_thoughts[:, None]
    peers = gather_peers(traj.states[:, :1], peer_index(traj.group)[r : r + 1], exists[:, :1])
    out = nav(states, states[:, 0], traj.trajectory[r : r + 1], peers)
    std = out.std * 1.1 * float(traj.temperature_factors[r])
    want = Normal(out.mean[0, 0], std).log_prob(traj.actions[r, 0]).sum().detach()
    halt_part = 0.0
    if nav.cfg.halting and bool(rep.masks.decide[b, 0]):
        p = torch.sigmoid(out.halt_logits[0, 0])
        halt_part = float(torch.log(1 - p).detach())  # it did not halt at step 0
    assert float(rep.logprobs[b, 0]) == pytest.approx(float(want) + halt_part, abs=1e-3)


def test_variable_k_per_question_shares_each_prefix(lm):
    from coconav.rl.rollout import roll_out

    nav = steering_navigator()
    examples = questions(3)
    one = roll_out(lm, nav, examples, sample=False, max_new_tokens=5)
    many = roll_out(lm, nav, examples, num_trajectories=[1, 3, 2], sample=False, max_new_tokens=5)
    assert many.group.tolist() == [0, 1, 1, 1, 2, 2] and many.trajectory.tolist() == [0, 0, 1, 2, 0, 1]
    assert many.counts.tolist() == [1, 3, 2]
    assert many.examples == [examples[0]] + [examples[1]] * 3 + [examples[2]] * 2
    for r, q in enumerate(many.group.tolist()):  # greedy and untrained extras: copies of the K = 1 rollout
        torch.testing.assert_close(many.question_keys[r], one.question_keys[q], atol=1e-5, rtol=1e-4)
        assert many.texts[r] == one.texts[q] and int(many.num_thoughts[r]) == int(one.num_thoughts[q])


def test_sixteen_trajectories_work(lm):
    from coconav.rl.rollout import replay, roll_out

    nav = group_reading_navigator()
    traj = roll_out(
        lm,
        nav,
        questions(2),
        num_trajectories=16,
        sample=True,
        max_new_tokens=3,
        generator=torch.Generator().manual_seed(1),
    )
    assert len(traj) == 32 and traj.trajectory.max() == 15
    rep = replay(lm, nav, traj, torch.arange(32))
    assert bool(torch.isfinite(rep.logprobs).all())


@pytest.mark.parametrize(
    "k, message",
    [
        (0, "num_trajectories must be in [1, navigator.max_trajectories=16], got 0"),
        (17, "num_trajectories must be in [1, navigator.max_trajectories=16], got 17"),
        ("auto", "num_trajectories='auto' needs navigator.trajectories_budget"),
        ("many", "num_trajectories must be an integer or 'auto'"),
    ],
)
def test_bad_trajectory_counts_are_one_line_errors(lm, k, message):
    from coconav.rl.rollout import roll_out

    with pytest.raises(ValueError, match=None) as err:
        roll_out(lm, steering_navigator(), questions(2), num_trajectories=k, max_new_tokens=2)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_auto_spends_the_budget_by_the_selector(lm):
    from coconav.rl.rollout import roll_out

    nav = steering_navigator(trajectories_budget=3.0)
    examples = questions(4)
    even = roll_out(lm, nav, examples, num_trajectories="auto", sample=False, max_new_tokens=2)
    assert even.counts.tolist() == [3, 3, 3, 3]  # an untrained selector: every question alike
    with torch.no_grad():  # a selector that finds the second question hard
        nav.selector[-1].bias.fill_(3.0)
    keys = even.question_keys[even.trajectory == 0]
    with torch.no_grad():
        feats = nav.selector[:-1](keys)
        nav.selector[-1].weight.copy_(-(feats[1] - feats.mean(0))[None] * 50)
    probs = torch.sigmoid(nav.success_logits(keys))
    assert int(probs.argmin()) == 1
    auto = roll_out(lm, nav, examples, num_trajectories="auto", sample=False, max_new_tokens=2)
    assert int(auto.counts.sum()) == 12 and int(auto.counts.argmax()) == 1


def test_scorer_and_selector_losses_reach_their_heads_but_not_the_policy_heads(lm):
    from coconav.rl.ppo import scorer_loss, selector_loss
    from coconav.rl.rollout import replay, roll_out

    nav = group_reading_navigator()
    traj = roll_out(lm, nav, questions(2), num_trajectories=3, sample=True, max_new_tokens=3, seeds=torch.arange(6))
    rep = replay(lm, nav, traj, torch.arange(6))
    correct = torch.tensor([1, 0, 1, 0, 0, 1])
    (scorer_loss(rep.final_scores, correct) + selector_loss(rep.success_logits, correct, traj.group)).backward()
    grads = {n for n, p in nav.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    assert "scorer_head.weight" in grads and "selector.3.weight" in grads
    assert not {"up.weight", "mean_head.weight", "halt_head.weight"} & grads  # the policy is not shaped by them


def test_evaluation_at_k1_is_the_k1_rollout_trajectory_embedding_included(lm):
    """Greedy evaluation (and inference) at K = 1 used to skip the trajectory-0 embedding that every rollout,
    K = 1 included, trains: a navigator trained with K > 1 then answered differently alone than as trajectory 0."""
    from coconav.config import EvalConfig
    from coconav.eval.evaluate import evaluate_navigator
    from coconav.rl.rollout import roll_out

    nav = group_reading_navigator()
    with torch.no_grad():
        nav.trajectory_embedding.weight[0].normal_(0, 3.0)  # a strong trajectory-0 bias: it moves halting
    examples = questions(6)
    traj = roll_out(lm, nav, examples, sample=False, max_new_tokens=5)
    res = evaluate_navigator(lm, nav, examples, EvalConfig(max_new_tokens=5, batch_size=6))
    assert [q.num_thoughts for q in res.questions] == traj.num_thoughts.tolist()
    states = torch.randn(4, 3, 32)
    torch.testing.assert_close(
        nav(states, states[:, 0]).halt_logits, nav(states, states[:, 0], torch.zeros(4, dtype=torch.long)).halt_logits
    )
