"""PPO math (coconav/rl/ppo.py) against numbers derived by hand and a plain per-row loop."""

from __future__ import annotations

import math

import pytest
import torch

from coconav.rl.ppo import (
    anneal,
    compute_gae,
    explained_variance,
    group_advantages,
    masked_mean,
    normalize_advantages,
    ppo_loss,
    reference_kl,
)

# -- GAE ------------------------------------------------------------------------------------------


def test_gae_gamma1_lambda1_is_return_minus_value():
    # rewards [0, 0, 1], values [.5, .6, .7], gamma = lam = 1, bootstrap 0 after the last step:
    #   t=2: delta = 1 - .7 = .3                         A_2 = .3
    #   t=1: delta = 0 + .7 - .6 = .1                    A_1 = .1 + .3 = .4
    #   t=0: delta = 0 + .6 - .5 = .1                    A_0 = .1 + .4 = .5
    # returns = A + V = [1, 1, 1] (the undiscounted return from every step)
    out = compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 1.0)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.5, 0.4, 0.3]]))
    torch.testing.assert_close(out.returns, torch.tensor([[1.0, 1.0, 1.0]]))


def test_gae_discounted():
    # gamma = .9, lam = .5 (gamma * lam = .45):
    #   t=2: A_2 = 1 - .7 = .3
    #   t=1: delta = .9 * .7 - .6 = .03;  A_1 = .03 + .45 * .3 = .165
    #   t=0: delta = .9 * .6 - .5 = .04;  A_0 = .04 + .45 * .165 = .11425
    # returns = A + V = [.61425, .765, 1.0]
    out = compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 0.9, 0.5)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.11425, 0.165, 0.3]]))
    torch.testing.assert_close(out.returns, torch.tensor([[0.61425, 0.765, 1.0]]))


def test_gae_episode_ends_at_mask_boundary():
    # Row [r=1 at t=1, then padding]: the episode is steps 0..1 only; whatever sits in the padded
    # columns (reward 5, value 9) must neither bootstrap nor leak back.
    #   t=1: A_1 = 1 - .2 = .8;  t=0: delta = 0 + .2 - .1 = .1, A_0 = .1 + .8 = .9  (gamma = lam = 1)
    rewards = torch.tensor([[0.0, 1.0, 5.0, 5.0]])
    values = torch.tensor([[0.1, 0.2, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0, 0]])
    out = compute_gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.9, 0.8, 0.0, 0.0]]))
    torch.testing.assert_close(out.returns, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def reference_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Textbook GAE over ONE episode (a plain Python list, no padding), bootstrap 0 at the end."""
    n = len(rewards)
    adv = [0.0] * n
    running = 0.0
    for t in reversed(range(n)):
        next_value = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_per_row_loop_with_uneven_lengths(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 7, 6
    lengths = [1, 6, 3, 2, 6, 4, 5]
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    out = compute_gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        ref = reference_gae(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
        torch.testing.assert_close(out.advantages[b, :n], torch.tensor(ref, dtype=torch.float64))
        torch.testing.assert_close(out.returns[b, :n], torch.tensor(ref, dtype=torch.float64) + values[b, :n])
        # masked steps stay exactly 0
        assert bool((out.advantages[b, n:] == 0).all()) and bool((out.returns[b, n:] == 0).all())


# -- the clipped loss -----------------------------------------------------------------------------


def loss_inputs(ratio, adv, **overrides):
    """Old log-probs 0 so that exp(new) is the ratio; values, returns, entropy neutral unless given."""
    new = torch.log(torch.tensor([ratio]))
    B, T = new.shape
    kwargs = dict(
        new_logprobs=new,
        old_logprobs=torch.zeros(B, T),
        advantages=torch.tensor([adv]),
        new_values=torch.zeros(B, T),
        old_values=torch.zeros(B, T),
        returns=torch.zeros(B, T),
        entropy=torch.zeros(B, T),
        mask=torch.ones(B, T),
        epsilon=0.2,
        vf_coef=0.5,
        ent_coef=0.0,
    )
    kwargs.update(overrides)
    return kwargs


def test_policy_loss_clipfrac_and_kl_by_hand():
    # A = [1, -1], ratio = [1.5, .5], eps = .2:
    #   step 0: -A r = -1.5, -A clip(r) = -1.2 -> max = -1.2   (gain capped at 1 + eps)
    #   step 1: -A r = +.5,  -A clip(r) = +.8  -> max = +.8    (pessimistic: clipped side)
    #   policy loss = (-1.2 + .8) / 2 = -0.2
    #   clipfrac: |1.5 - 1| = .5 > .2 and |.5 - 1| = .5 > .2 -> 1.0
    #   approx_kl = mean((r - 1) - log r) = ((.5 - ln 1.5) + (-.5 - ln .5)) / 2
    #             = (.0945349 + .1931472) / 2 = .1438410
    out = ppo_loss(**loss_inputs([1.5, 0.5], [1.0, -1.0]))
    torch.testing.assert_close(out.policy_loss, torch.tensor(-0.2))
    torch.testing.assert_close(out.clipfrac, torch.tensor(1.0))
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert kl == pytest.approx(0.143841, abs=1e-6)
    torch.testing.assert_close(out.approx_kl, torch.tensor(kl))
    torch.testing.assert_close(out.ratio_mean, torch.tensor(1.0))  # (1.5 + .5) / 2
    # values, returns and entropy are 0: the total is the policy term alone
    torch.testing.assert_close(out.loss, torch.tensor(-0.2))


def test_unclipped_ratio_gives_plain_surrogate_and_mask_excludes_steps():
    # ratio [1.1, .9, 3.0] with the third step masked out; A = [2, 1, 100]:
    #   step 0: -2 * 1.1 = -2.2 vs -2 * 1.1 (inside the clip range) -> -2.2
    #   step 1: -1 * .9 = -.9 vs -1 * .9 -> -.9
    #   policy loss = (-2.2 - .9) / 2 = -1.55; clipfrac 0 (|.1| <= .2); the masked step is ignored
    out = ppo_loss(**loss_inputs([1.1, 0.9, 3.0], [2.0, 1.0, 100.0], mask=torch.tensor([[1, 1, 0]])))
    torch.testing.assert_close(out.policy_loss, torch.tensor(-1.55))
    torch.testing.assert_close(out.clipfrac, torch.tensor(0.0))


def test_value_loss_and_value_clipping():
    # new V = [1.0, 0.0], old V = [0.0, 0.0], returns R = [2.0, -1.0]:
    #   unclipped: 0.5 * mean((1-2)^2, (0+1)^2) = 0.5 * mean(1, 1) = 0.5
    #   clip_value = .5: clipped V = old + clip(new - old, +-.5) = [.5, 0]
    #     step 0: max((1-2)^2 = 1, (.5-2)^2 = 2.25) = 2.25;  step 1: max(1, 1) = 1
    #     value loss = 0.5 * (2.25 + 1) / 2 = 0.8125
    #   total with vf_coef .5 and a zero policy term (A = 0): .5 * .8125 = .40625
    common = dict(new_values=torch.tensor([[1.0, 0.0]]), returns=torch.tensor([[2.0, -1.0]]))
    plain = ppo_loss(**loss_inputs([1.0, 1.0], [0.0, 0.0], **common))
    torch.testing.assert_close(plain.value_loss, torch.tensor(0.5))
    clipped = ppo_loss(**loss_inputs([1.0, 1.0], [0.0, 0.0], clip_value=0.5, **common))
    torch.testing.assert_close(clipped.value_loss, torch.tensor(0.8125))
    torch.testing.assert_close(clipped.loss, torch.tensor(0.40625))


def test_entropy_bonus_lowers_the_loss():
    # entropy e at every step, ent_coef .1: loss = policy(0) + value(0) - .1 * e
    low = ppo_loss(**loss_inputs([1.0, 1.0], [0.0, 0.0], entropy=torch.tensor([[1.0, 1.0]]), ent_coef=0.1))
    high = ppo_loss(**loss_inputs([1.0, 1.0], [0.0, 0.0], entropy=torch.tensor([[3.0, 3.0]]), ent_coef=0.1))
    torch.testing.assert_close(low.loss, torch.tensor(-0.1))
    torch.testing.assert_close(high.loss, torch.tensor(-0.3))
    assert high.loss < low.loss
    torch.testing.assert_close(high.entropy, torch.tensor(3.0))


def test_loss_gradient_flows_only_through_new_quantities():
    kwargs = loss_inputs([1.5, 0.5], [1.0, -1.0])
    new = kwargs["new_logprobs"].clone().requires_grad_(True)
    values = torch.zeros(1, 2, requires_grad=True)
    kwargs.update(new_logprobs=new, new_values=values, returns=torch.tensor([[1.0, 1.0]]))
    ppo_loss(**kwargs).loss.backward()
    # both steps are clipped on the pessimistic side: no policy gradient reaches the log-probs
    torch.testing.assert_close(new.grad, torch.zeros(1, 2))
    # value term: vf_coef * 0.5 * mean((V - 1)^2) -> d/dV = .5 * .5 * 2 (V - 1) / 2 = -.25 at V = 0
    torch.testing.assert_close(values.grad, torch.tensor([[-0.25, -0.25]]))


# -- normalisation and diagnostics ----------------------------------------------------------------


def test_normalize_advantages_over_real_steps_only():
    # real steps [1, 2, 3]: mean 2, population variance ((1)^2 + 0 + 1^2) / 3 = 2/3, std .8164966
    # -> [-1.2247449, 0, 1.2247449]; the masked step (value 100) stays 0 and does not enter the stats
    adv = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = normalize_advantages(adv, mask)
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(out, torch.tensor([[-1 / s, 0.0], [1 / s, 0.0]]))
    real = out[mask.bool()]
    torch.testing.assert_close(real.mean(), torch.tensor(0.0))
    torch.testing.assert_close(real.var(unbiased=False), torch.tensor(1.0), atol=1e-6, rtol=1e-6)


def test_masked_mean():
    # (1 + 3) / 2 = 2; the 10 is masked out
    assert float(masked_mean(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([1, 1, 0]))) == 2.0


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # perfect prediction on the real steps (the padded columns disagree and must not count)
    values = returns.clone()
    values[1, 1:] = 50.0
    assert explained_variance(values, returns, mask) == pytest.approx(1.0)
    # a constant prediction: Var[R - c] = Var[R] -> 0
    assert explained_variance(torch.full_like(returns, 7.0), returns, mask) == pytest.approx(0.0, abs=1e-6)
    # V = R - [1, -1, 1, -1] on the real steps: R = [1,2,3,4] var 1.25; residual [1,-1,1,-1] var 1 -> 1 - 1/1.25 = .2
    half = returns - torch.tensor([[1.0, -1.0, 1.0], [-1.0, 0.0, 0.0]])
    assert explained_variance(half, returns, mask) == pytest.approx(0.2, abs=1e-6)
    # constant returns: undefined (nan), not a division by zero
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask))


# -- group-relative advantages (GRPO) -----------------------------------------------------------


def test_group_advantages_by_hand():
    # group 0: returns [1, 0, 0, 1] -> mean .5, population std .5 -> [1, -1, -1, 1]
    # group 1: returns [1, 0] (rows 4, 5, interleaved ids) -> mean .5, std .5 -> [1, -1]
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    group = torch.tensor([0, 0, 0, 0, 7, 7])
    mask = torch.tensor([[1, 1, 0]] * 6)
    out = group_advantages(returns, group, mask, scale_rewards="group", eps=0.0)
    expected = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])[:, None] * mask
    torch.testing.assert_close(out.advantages, expected)
    torch.testing.assert_close(out.returns, returns[:, None] * mask)


def test_group_advantages_unscaled_and_batch_scaled():
    # group 0: returns [.9, .3] -> mean .6 -> [.3, -.3]; group 1: [.2] alone -> [0]
    returns, group, mask = torch.tensor([0.9, 0.3, 0.2]), torch.tensor([0, 0, 1]), torch.ones(3, 1)
    none = group_advantages(returns, group, mask, scale_rewards="none")
    torch.testing.assert_close(none.advantages[:, 0], torch.tensor([0.3, -0.3, 0.0]))
    # batch std of [.9, .3, .2]: mean 1.4/3; population std = sqrt(((.9-m)^2 + (.3-m)^2 + (.2-m)^2) / 3)
    m = 1.4 / 3
    std = math.sqrt(((0.9 - m) ** 2 + (0.3 - m) ** 2 + (0.2 - m) ** 2) / 3)
    batch = group_advantages(returns, group, mask, scale_rewards="batch", eps=0.0)
    torch.testing.assert_close(batch.advantages[:, 0], torch.tensor([0.3 / std, -0.3 / std, 0.0]))


def test_group_std_scaling_blows_a_pure_cost_difference_up_to_the_size_of_right_against_wrong():
    # reward = correct - 0.01 per forward pass. Group 0: both right, 10 and 11 passes -> returns .90, .89 (a pure
    # cost difference); group 1: right and wrong at 10 passes each -> returns .90, -.10.
    returns = torch.tensor([0.90, 0.89, 0.90, -0.10])
    group, mask = torch.tensor([0, 0, 1, 1]), torch.ones(4, 1)
    # scale_rewards="none": return minus the group mean. Group 0: mean .895 -> [+.005, -.005] (the cost difference,
    # tiny); group 1: mean .40 -> [+.5, -.5] (right against wrong, 100 times larger).
    none = group_advantages(returns, group, mask, scale_rewards="none", eps=0.0)
    torch.testing.assert_close(none.advantages[:, 0], torch.tensor([0.005, -0.005, 0.5, -0.5]))
    # scale_rewards="group" (the default): divided by each group's population std, .005 and .5 -> both groups +-1:
    # one extra pass weighs as much as a wrong answer.
    scaled = group_advantages(returns, group, mask, scale_rewards="group", eps=0.0)
    torch.testing.assert_close(scaled.advantages[:, 0], torch.tensor([1.0, -1.0, 1.0, -1.0]))
    from coconav.config import PPOConfig

    assert PPOConfig().scale_rewards == "group"  # the default keeps the numbers of earlier runs


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_vanish_when_a_group_agrees(scale):
    returns = torch.tensor([0.7, 0.7, 0.7, 1.0, 0.0])
    out = group_advantages(returns, torch.tensor([0, 0, 0, 1, 1]), torch.ones(5, 2), scale_rewards=scale)
    assert torch.all(out.advantages[:3] == 0)
    assert torch.all(out.advantages[3:, 0] != 0)


def test_group_advantages_reject_unknown_scaling():
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(2), torch.zeros(2), torch.ones(2, 1), scale_rewards="std")


# -- multi-trajectory training pieces: annealing, scorer and K-selector losses -------------------------


def test_anneal_shapes_by_hand():
    from coconav.rl.ppo import anneal

    assert anneal(2.0, 0.5, 0.0) == 2.0 and anneal(2.0, 0.5, 1.0) == 0.5
    assert anneal(2.0, 0.5, 0.5, "linear") == pytest.approx(1.25)
    assert anneal(2.0, 0.5, 0.5, "cosine") == pytest.approx(1.25)
    assert anneal(2.0, 0.5, 0.25, "cosine") == pytest.approx(0.5 + 1.5 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert anneal(2.0, 0.5, 0.5, "exponential") == pytest.approx(1.0)
    assert anneal(2.0, 0.5, 3.0) == 0.5  # progress is clamped
    with pytest.raises(ValueError, match="unknown schedule shape 'step'"):
        anneal(1.0, 0.1, 0.5, "step")
    with pytest.raises(ValueError, match="needs start and end > 0"):
        anneal(1.0, 0.0, 0.5, "exponential")


def test_scorer_and_selector_losses_by_hand():
    from coconav.rl.ppo import scorer_loss, selector_loss

    logits, correct = torch.tensor([0.0, 2.0]), torch.tensor([True, False])
    want = -(math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2.0)))) / 2
    assert float(scorer_loss(logits, correct)) == pytest.approx(want)
    # two questions: 1 of 2 right (logit 0), 3 of 3 right (logit 2); one term per question
    group = torch.tensor([0, 0, 1, 1, 1])
    loss = selector_loss(torch.tensor([0.0, 0.0, 2.0, 2.0, 2.0]), torch.tensor([1, 0, 1, 1, 1]), group)
    p = 1 / (1 + math.exp(-2.0))
    assert float(loss) == pytest.approx((-math.log(0.5) - math.log(p)) / 2)
    logits = torch.zeros(5, requires_grad=True)
    selector_loss(logits, torch.tensor([1, 0, 1, 1, 1]), group).backward()
    assert logits.grad is not None and float(logits.grad[2]) < 0  # push the easy question's logit up


@pytest.mark.parametrize("start,end", [(1.0, 0.3), (2.0, 0.1), (0.5, 0.5), (0.3, 1.0)])
def test_anneal_linear_is_the_recipes_old_schedule_bit_for_bit(start, end):
    # train_navigator's schedule before anneal: start + (end - start) * min(1, update / max(1, updates - 1))
    for updates in (1, 2, 7, 60):
        for update in range(updates + 1):
            frac = update / max(1, updates - 1)
            assert anneal(start, end, frac) == start + (end - start) * min(1.0, frac), (updates, update)


def test_reference_kl_k3_by_hand():
    # two sampled answers: the reference gives the first twice the policy's probability (d = log 2), the second the
    # same (d = 0); k3 = exp(d) - d - 1 -> 2 - log 2 - 1 = .306853 and 0, mean .153426
    logprobs = torch.tensor([math.log(0.25), math.log(0.5)], requires_grad=True)
    ref = torch.tensor([math.log(0.5), math.log(0.5)])
    kl = reference_kl(ref, logprobs)
    assert float(kl.detach()) == pytest.approx((1 - math.log(2)) / 2, abs=1e-6)
    kl.backward()  # the penalty's gradient reaches the policy: d/dlogp (exp(r - logp) - (r - logp) - 1) = 1 - exp(d)
    torch.testing.assert_close(logprobs.grad, torch.tensor([(1 - 2.0) / 2, 0.0]))
    assert float(reference_kl(ref, ref)) == 0.0  # the policy at its reference: no penalty
