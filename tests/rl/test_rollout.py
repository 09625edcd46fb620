"""Latent rollouts and their replay (coconav/rl/rollout.py) against one-by-one references.

The tiny Llama (hidden 32, 2 layers) is random; the navigator's heads are set by hand so that its
greedy halting differs from question to question and its steering is not a no-op.
"""

from __future__ import annotations

import pytest
import torch

from coconav.config import NavigatorConfig
from coconav.model.latent_lm import LatentLM, ThoughtDecision
from coconav.model.navigator import Navigator
from coconav.rl.rollout import Trajectories, replay, replay_sequences, roll_out

from conftest import MAX_THOUGHTS, SCHEDULE, questions, scheduled_navigator, steering_navigator, tiny_lm


def sampled_rollout(lm: LatentLM, nav: Navigator, examples, seed: int, max_new_tokens: int, **kw) -> Trajectories:
    return roll_out(
        lm,
        nav,
        examples,
        sample=True,
        max_new_tokens=max_new_tokens,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def latent_ids(lm: LatentLM) -> list[int]:
    s = lm.special
    return [s.bot, s.eot, s.thought, s.pause]


def decoding_logprobs(lm: LatentLM, hidden: torch.Tensor) -> torch.Tensor:
    """The decoding distribution by hand: softmax over the vocabulary without the four latent tokens
    (decoding never emits them, so an answer's probability is renormalised over the other tokens)."""
    logits = lm.lm_head(hidden).float()
    logits[..., latent_ids(lm)] = float("-inf")
    return torch.log_softmax(logits, -1)


@pytest.fixture(scope="module")
def lm() -> LatentLM:
    return tiny_lm()


# -- batched rollouts equal one-by-one rollouts ------------------------------------------------------


def test_batched_rollout_with_uneven_halting_equals_one_by_one(lm):
    examples = questions(8)
    nav = scheduled_navigator(lm, examples)
    batch = roll_out(lm, nav, examples, sample=False, max_new_tokens=6)
    assert batch.num_thoughts.tolist() == SCHEDULE
    assert bool(batch.actions.abs().sum() > 0)
    for i, ex in enumerate(examples):
        one = roll_out(lm, nav, [ex], sample=False, max_new_tokens=6)
        n, k = int(one.num_thoughts[0]), int(one.new_tokens[0])
        assert int(batch.num_thoughts[i]) == n, i
        assert int(batch.new_tokens[i]) == k, i
        assert batch.answer_ids[i, :k].tolist() == one.answer_ids[0, :k].tolist(), i
        assert batch.texts[i] == one.texts[0]
        assert batch.prompts[i] == one.prompts[0]
        torch.testing.assert_close(batch.actions[i], one.actions[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.question_keys[i], one.question_keys[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.thought_means[i], one.thought_means[0], atol=1e-5, rtol=1e-4)
        steps = n + 1  # rollout-time diagnostics at steps 0..n (h_0..h_n)
        torch.testing.assert_close(batch.values[i, :steps], one.values[0, :steps], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.halt_probs[i, :steps], one.halt_probs[0, :steps], atol=1e-5, rtol=1e-4)
        # actions are zero after the trajectory's last thought
        assert bool((batch.actions[i, n:] == 0).all())


def test_forced_halting_min_max_and_halting_off(lm):
    examples = questions(4)
    # a halt probability of ~1 everywhere: greedy halting stops at the first allowed step
    assert roll_out(
        lm,
        Navigator(32, NavigatorConfig(hidden=16, max_thoughts=4, init_halt_bias=20.0)),
        examples,
        sample=False,
        max_new_tokens=3,
    ).num_thoughts.tolist() == [0, 0, 0, 0]
    eager = Navigator(32, NavigatorConfig(hidden=16, max_thoughts=4, min_thoughts=2, init_halt_bias=20.0))
    assert roll_out(lm, eager, examples, sample=False, max_new_tokens=3).num_thoughts.tolist() == [2, 2, 2, 2]
    # sampled halting also respects min_thoughts (p ~ 1: every sample halts at the first allowed step)
    assert roll_out(
        lm, eager, examples, sample=True, max_new_tokens=3, generator=torch.Generator().manual_seed(0)
    ).num_thoughts.tolist() == [2, 2, 2, 2]
    # halting off: always the budget, whatever the halt head says
    off = Navigator(32, NavigatorConfig(hidden=16, max_thoughts=3, halting=False, init_halt_bias=20.0))
    assert roll_out(
        lm, off, examples, sample=True, max_new_tokens=3, generator=torch.Generator().manual_seed(0)
    ).num_thoughts.tolist() == [3, 3, 3, 3]
    # a halt probability of ~0: the budget is the forced stop
    never = Navigator(32, NavigatorConfig(hidden=16, max_thoughts=3, init_halt_bias=-20.0))
    assert roll_out(lm, never, examples, sample=False, max_new_tokens=3).num_thoughts.tolist() == [3, 3, 3, 3]


def test_steering_off_feeds_zero_actions(lm):
    nav = steering_navigator(steering=False)
    traj = roll_out(lm, nav, questions(4), sample=True, max_new_tokens=3, generator=torch.Generator().manual_seed(0))
    assert bool((traj.actions == 0).all())


# -- K trajectories per question -------------------------------------------------------------------------


def test_k_trajectories_share_the_prefix(lm):
    nav = steering_navigator()
    examples = questions(3)
    one = roll_out(lm, nav, examples, sample=False, max_new_tokens=5)
    three = roll_out(lm, nav, examples, num_trajectories=3, sample=False, max_new_tokens=5)
    assert len(three) == 9
    assert three.group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert three.examples == [ex for ex in examples for _ in range(3)]
    assert three.prompts == [p for p in one.prompts for _ in range(3)]
    for q in range(3):
        rows = [3 * q + j for j in range(3)]
        # greedy: three identical copies, each equal to the K=1 trajectory of the question
        for r in rows:
            assert int(three.num_thoughts[r]) == int(one.num_thoughts[q])
            assert three.answer_ids[r].tolist() == one.answer_ids[q].tolist()
            assert three.texts[r] == one.texts[q]
            torch.testing.assert_close(three.actions[r], one.actions[q], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(three.question_keys[r], one.question_keys[q], atol=1e-5, rtol=1e-4)
        assert torch.equal(three.actions[rows[0]], three.actions[rows[1]])
        assert torch.equal(three.actions[rows[0]], three.actions[rows[2]])


def test_k_sampled_trajectories_share_the_question_but_explore(lm):
    nav = steering_navigator()
    with torch.no_grad():
        nav.log_std.fill_(0.0)
    traj = roll_out(
        lm,
        nav,
        questions(2),
        num_trajectories=3,
        sample=True,
        max_new_tokens=4,
        generator=torch.Generator().manual_seed(0),
    )
    # the prefill is shared: h_0 (the question key) is the same for the 3 copies
    torch.testing.assert_close(traj.question_keys[0], traj.question_keys[1])
    torch.testing.assert_close(traj.question_keys[0], traj.question_keys[2])
    # ... but the sampled first actions differ
    assert not torch.allclose(traj.actions[0, 0], traj.actions[1, 0])


# -- replay ------------------------------------------------------------------------------------------------


def stepwise_answer_logprob(lm: LatentLM, nav: Navigator, traj: Trajectories, i: int) -> float:
    """Recompute trajectory i with the KV cache, one position at a time: its own prompt alone, the
    stored steering (thought + U a_t) for its n thoughts, <eot>, then each stored answer token,
    summing log p(token) under the decoding distribution (decoding_logprobs)."""
    n, k = int(traj.num_thoughts[i]), int(traj.new_tokens[i])
    state = lm.prefill([traj.prompts[i]])

    def controller(step, hidden, thought, active):
        if step >= n:  # halt (think may also ask at step == max_thoughts, where halting is forced)
            return ThoughtDecision(thought=thought, halt=torch.tensor([True]))
        return ThoughtDecision(thought=thought + nav.steer(traj.actions[i, step])[None], halt=torch.tensor([False]))

    with torch.no_grad():
        used, _ = lm.think(state, torch.zeros(1, dtype=torch.long), controller=controller, max_thoughts=n)
        assert int(used[0]) == n
        total = 0.0
        for token in traj.answer_ids[i, :k].tolist():
            total += float(decoding_logprobs(lm, state.last_hidden)[0, token])
            state.last_hidden = lm._step(state, lm.embed(torch.tensor([[token]])), torch.ones(1, dtype=torch.bool))
    return total


@pytest.mark.parametrize("sample", [False, True])
def test_replay_answer_logprobs_equal_stepwise_decoding(lm, sample):
    examples = questions(8)
    nav = scheduled_navigator(lm, examples)
    if sample:
        traj = sampled_rollout(lm, nav, examples, seed=3, max_new_tokens=6)
    else:
        traj = roll_out(lm, nav, examples, sample=False, max_new_tokens=6)
    # a shuffled minibatch, as PPO replays it, with 0, 2, 3 and 5 (the budget) thoughts
    idx = torch.tensor([5, 2, 0, 1])
    assert traj.num_thoughts[idx].tolist() == [2, 0, 3, 5]
    with torch.no_grad():
        rep = replay(lm, nav, traj, idx)
    assert rep.answer_logprobs.shape == (4,)
    for j, i in enumerate(idx.tolist()):
        assert float(rep.answer_logprobs[j]) == pytest.approx(stepwise_answer_logprob(lm, nav, traj, i), abs=1e-4)
        if not sample:  # greedy tokens are the argmax: each log-prob is the largest, the sum is <= 0
            assert float(rep.answer_logprobs[j]) <= 0


def test_replay_of_trajectories_without_thoughts(lm):
    """A minibatch in which every trajectory halted at step 0 (no thought, no steering offsets)."""
    nav = Navigator(32, NavigatorConfig(hidden=16, max_thoughts=3, init_halt_bias=3.0))
    traj = roll_out(lm, nav, questions(3), sample=False, max_new_tokens=4)
    assert traj.num_thoughts.tolist() == [0, 0, 0]
    with torch.no_grad():
        rep = replay(lm, nav, traj, torch.arange(3))
    # step 0: log sigmoid(halt logit) for "halt" + the answer; nothing after it
    with torch.no_grad():  # step 0 sees h_0 only: the navigator on the one-step state sequence [h_0]
        keys = traj.question_keys
        p_halt = torch.sigmoid(nav(keys[:, None], keys).halt_logits[:, 0])
    for i in range(3):
        answer = stepwise_answer_logprob(lm, nav, traj, i)
        assert float(rep.answer_logprobs[i]) == pytest.approx(answer, abs=1e-4)
        assert float(rep.logprobs[i, 0]) == pytest.approx(float(torch.log(p_halt[i])) + answer, abs=1e-4)
    assert bool((rep.logprobs[:, 1:] == 0).all()) and bool((rep.entropy[:, 1:] == 0).all())


def test_replay_agrees_with_the_rollout(lm):
    """Values recomputed by replay equal those the rollout saw."""
    examples = questions(8)
    nav = scheduled_navigator(lm, examples)
    traj = roll_out(lm, nav, examples, sample=False, max_new_tokens=6)
    rep = replay(lm, nav, traj, torch.arange(len(traj)))
    T = MAX_THOUGHTS + 1
    assert rep.logprobs.shape == rep.values.shape == rep.entropy.shape == (8, T)
    for i in range(len(traj)):
        n = int(traj.num_thoughts[i])
        steps = n + 1  # h_0..h_n, the state after the last thought included
        torch.testing.assert_close(rep.values[i, :steps], traj.values[i, :steps], atol=1e-4, rtol=1e-4)
        # values are zero past the episode
        assert bool((rep.values[i, n + 1 :] == 0).all())
        assert rep.masks.halt[i].nonzero().flatten().tolist() == [n]


def test_replay_logprobs_by_hand(lm):
    """The replayed policy log-prob at each step is the Gaussian log-density of the stored action plus
    the Bernoulli log-prob of the halting decision, plus the answer's log-prob at the halting step."""
    from torch.distributions import Bernoulli, Normal

    nav = steering_navigator()
    traj = sampled_rollout(lm, nav, questions(8), seed=3, max_new_tokens=5)
    idx = torch.arange(len(traj))
    with torch.no_grad():
        rep = replay(lm, nav, traj, idx, temperature=1.5)
        no_answer = replay(lm, nav, traj, idx, temperature=1.5, answer_in_policy=False)
        # states h_0..h_n from the teacher-forced forward, as replay feeds them to the navigator
        from coconav.data.curriculum import collate

        batch = collate(replay_sequences(lm, traj, idx), lm.special)
        offsets = nav.steer(traj.actions[:, : int(traj.num_thoughts.max())])
        hidden = lm(batch.input_ids, batch.attention_mask, thought_offsets=offsets).hidden
        bot = int((batch.input_ids[0] == lm.special.bot).nonzero()[0])
    for i in range(len(traj)):
        n = int(traj.num_thoughts[i])
        states = hidden[i : i + 1, bot : bot + n + 1]
        with torch.no_grad():
            out = nav(states, states[:, 0])
        for t in range(n + 1):
            expected = 0.0
            if t < n:  # an action was taken
                expected += float(Normal(out.mean[0, t], out.std * 1.5).log_prob(traj.actions[i, t]).sum())
            if t < MAX_THOUGHTS:  # a halting decision (min_thoughts = 0); none at the forced stop
                expected += float(Bernoulli(logits=out.halt_logits[0, t]).log_prob(torch.tensor(float(t == n))))
            assert float(no_answer.logprobs[i, t]) == pytest.approx(expected, abs=1e-4), (i, t)
            answer = float(rep.answer_logprobs[i]) if t == n else 0.0
            assert float(rep.logprobs[i, t]) == pytest.approx(expected + answer, abs=1e-4), (i, t)
        assert bool((rep.logprobs[i, n + 1 :] == 0).all())


def test_replay_is_exactly_repeatable_with_and_without_grad(lm):
    """PPO's first ratio is new / old on the same minibatch with the same parameters: it must be exactly 1."""
    nav = steering_navigator()
    nav.train()
    traj = sampled_rollout(lm, nav, questions(8), seed=8, max_new_tokens=5)
    mb = torch.tensor([5, 1, 7, 2])
    with torch.no_grad():
        old = replay(lm, nav, traj, mb)
    new = replay(lm, nav, traj, mb)
    assert new.logprobs.requires_grad
    assert torch.equal(new.logprobs.detach(), old.logprobs)
    assert torch.equal(new.values.detach(), old.values)
    assert torch.equal(torch.exp(new.logprobs.detach() - old.logprobs), torch.ones_like(old.logprobs))


def test_replay_gradient_reaches_the_steering(lm):
    """answer_in_policy: the answer's log-prob depends on the steered thoughts, so it trains U."""
    nav = steering_navigator()
    traj = sampled_rollout(lm, nav, questions(8), seed=12, max_new_tokens=4)
    assert int(traj.num_thoughts.max()) > 0
    rep = replay(lm, nav, traj, torch.arange(len(traj)))
    rep.answer_logprobs.sum().backward()
    assert nav.up.weight.grad is not None and float(nav.up.weight.grad.abs().sum()) > 0
    lm.zero_grad(set_to_none=True)  # the fixture's LM is not frozen here (the recipe freezes it)


# -- what the trajectory record holds ---------------------------------------------------------------------


def test_thought_means_are_the_mean_thought_outputs_before_the_budget(lm):
    """thought_means (the persistent memory's value) is the mean of h_1..h_n, h_0 when n = 0, and
    question_keys is h_0 (the state at <bot>); checked against the teacher-forced forward."""
    examples = questions(8)
    nav = scheduled_navigator(lm, examples)
    traj = roll_out(lm, nav, examples, sample=False, max_new_tokens=4)
    hidden, bot = teacher_forced_states(lm, nav, traj)
    checked = 0
    for i in range(len(traj)):
        n = int(traj.num_thoughts[i])
        torch.testing.assert_close(traj.question_keys[i], hidden[i, bot], atol=1e-4, rtol=1e-4)
        if n == MAX_THOUGHTS:
            continue  # the next test
        ref = hidden[i, bot] if n == 0 else hidden[i, bot + 1 : bot + n + 1].mean(0)
        torch.testing.assert_close(traj.thought_means[i], ref, atol=1e-4, rtol=1e-4)
        checked += 1
    assert checked == 6  # every trajectory of SCHEDULE but the two at the budget


def test_thought_means_at_the_budget_include_the_last_thought(lm):
    """At n = budget the mean covers h_1..h_L: h_L is the state after the last thought (regression: the
    controller used to stop at h_{L-1})."""
    examples = questions(8)
    nav = scheduled_navigator(lm, examples)
    traj = roll_out(lm, nav, examples, sample=False, max_new_tokens=4)
    hidden, bot = teacher_forced_states(lm, nav, traj)
    full = [i for i in range(len(traj)) if int(traj.num_thoughts[i]) == MAX_THOUGHTS]
    assert full
    for i in full:
        ref = hidden[i, bot + 1 : bot + MAX_THOUGHTS + 1].mean(0)  # h_1..h_5
        torch.testing.assert_close(traj.thought_means[i], ref, atol=1e-4, rtol=1e-4)


def test_thought_means_with_a_one_thought_budget(lm):
    """Regression: with a budget of 1 the mean used to be taken over no state at all (zeros)."""
    nav = Navigator(32, NavigatorConfig(hidden=16, max_thoughts=1, init_halt_bias=-20.0))  # never halts: n = 1
    examples = questions(2)
    traj = roll_out(lm, nav, examples, sample=False, max_new_tokens=3)
    assert traj.num_thoughts.tolist() == [1, 1]
    hidden, bot = teacher_forced_states(lm, nav, traj)
    torch.testing.assert_close(traj.thought_means, hidden[:, bot + 1], atol=1e-4, rtol=1e-4)  # the mean of h_1 alone


def teacher_forced_states(lm: LatentLM, nav: Navigator, traj: Trajectories) -> tuple[torch.Tensor, int]:
    from coconav.data.curriculum import collate

    idx = torch.arange(len(traj))
    batch = collate(replay_sequences(lm, traj, idx), lm.special)
    with torch.no_grad():
        offsets = nav.steer(traj.actions[:, : int(traj.num_thoughts.max())])
        hidden = lm(batch.input_ids, batch.attention_mask, thought_offsets=offsets).hidden
    return hidden, int((batch.input_ids[0] == lm.special.bot).nonzero()[0])


class LatentLover:
    """An LM head that puts +100 on the four latent tokens: unsuppressed, they would be every answer."""

    def __init__(self, lm: LatentLM) -> None:
        self.head, self.ids = lm.lm_head, latent_ids(lm)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden).clone()
        logits[..., self.ids] += 100.0
        return logits


@pytest.mark.parametrize("sample", [False, True])
def test_answers_never_hold_latent_tokens_and_replay_scores_them(sample):
    """An answer with <thought> in it would be read as a thought slot by replay's teacher-forced forward;
    decoding must never emit <bot>/<eot>/<thought>/<pause>, whatever the model prefers."""
    lm = tiny_lm()
    lm.lm_head = LatentLover(lm)  # an instance attribute shadows the method
    plain = lm.lm_head(torch.randn(2, 32))
    assert set(plain.argmax(-1).tolist()) <= set(latent_ids(lm))  # the test is meaningful
    examples = questions(8)
    nav = scheduled_navigator(lm, examples)
    traj = roll_out(
        lm,
        nav,
        examples,
        num_trajectories=2,
        sample=sample,
        max_new_tokens=6,
        generator=torch.Generator().manual_seed(0),
    )
    for i in range(len(traj)):
        answer = traj.answer_ids[i, : int(traj.new_tokens[i])].tolist()
        assert answer and not set(answer) & set(latent_ids(lm)), answer
    with torch.no_grad():
        rep = replay(lm, nav, traj, torch.arange(len(traj)))
    assert bool(torch.isfinite(rep.answer_logprobs).all())
    for i in (0, 5, 9):
        assert float(rep.answer_logprobs[i]) == pytest.approx(stepwise_answer_logprob(lm, nav, traj, i), abs=1e-4)


# -- one prompt builder for training and inference ---------------------------------------------------


def test_training_and_inference_prompts_are_identical(lm, monkeypatch):
    """A navigator thinks from the same prompt ids in a training rollout as at inference (K = 1 and K > 1): one
    builder, coconav.decode.generate.navigator_prompts, each question's ids then <bot>."""
    from coconav.config import RunConfig
    from coconav.data.curriculum import encode_question
    from coconav.decode import generate
    from coconav.inference import CoconavModel
    from coconav.rl import rollout

    calls: list[list[list[int]]] = []

    def spy_groups(module):
        real = module.run_groups

        def spy(lm_, navigator, prompts, *args, **kwargs):
            calls.append([list(p) for p in prompts])
            return real(lm_, navigator, prompts, *args, **kwargs)

        monkeypatch.setattr(module, "run_groups", spy)

    def spy_generate(self, prompts, *args, _real=LatentLM.generate, **kwargs):
        calls.append([list(p) for p in prompts])
        return _real(self, prompts, *args, **kwargs)

    spy_groups(rollout)
    spy_groups(generate)
    monkeypatch.setattr(LatentLM, "generate", spy_generate)
    examples, nav = questions(4), steering_navigator()
    texts = [ex.question for ex in examples]
    sampled_rollout(lm, nav, examples, seed=0, max_new_tokens=2)
    training = calls[0]
    model = CoconavModel(lm, RunConfig(init_from="coconut", navigator=nav.cfg), stage=0, navigator=nav)
    calls.clear()
    model.generate(texts, max_new_tokens=2)  # K = 1: the navigator as the generation's controller
    alone = calls[0]
    calls.clear()
    model.generate(texts, max_new_tokens=2, num_trajectories=2)  # K = 2: run_groups in inference mode
    together = calls[0]
    assert training == alone == together
    assert training == [encode_question(lm.tokenizer, q) + [lm.special.bot] for q in texts]
