"""The advantages of one PPO update (coconav/rl/update.py) against numbers derived by hand.

The update itself (replay, epochs, early stop, DDP) runs in tests/recipes/test_train_navigator.py on a
navigator built by the recipe; here its choice of advantages, which needs no model.
"""

from __future__ import annotations

import pytest
import torch

from coconav.config import PPOConfig
from coconav.rl.ppo import compute_gae
from coconav.rl.update import advantages_for

# two questions of two trajectories each, every episode two steps long, the reward at the last step
REWARDS = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.5]])
VALUES = torch.tensor([[0.2, 0.4], [0.1, 0.3], [0.5, 0.5], [0.0, 0.0]])
MASK = torch.ones(4, 2, dtype=torch.bool)
GROUP = torch.tensor([0, 0, 1, 1])


def test_gae_advantages_are_compute_gae():
    cfg = PPOConfig(advantage="gae", gamma=0.9, lam=0.8)
    out = advantages_for(cfg, REWARDS, VALUES, MASK, GROUP)
    expected = compute_gae(REWARDS, VALUES, MASK, 0.9, 0.8)
    torch.testing.assert_close(out.advantages, expected.advantages, atol=0, rtol=0)
    torch.testing.assert_close(out.returns, expected.returns, atol=0, rtol=0)


@pytest.mark.parametrize("scale", ["none", "group", "batch"])
def test_group_advantages_by_hand(scale):
    # returns [1, 0, 1, .5]; group means .5 and .75 -> centred [.5, -.5, .25, -.25], at every real step;
    # group: each group's population std is .5 and .25 -> [1, -1, 1, -1] (eps 1e-4 in the denominator);
    # batch: the population std of all four returns (mean .625): sqrt(mean([.375^2, .625^2, .375^2, .125^2]))
    # = sqrt(.171875) = .4146
    cfg = PPOConfig(num_trajectories=2, advantage="group", scale_rewards=scale, gamma=0.9)
    out = advantages_for(cfg, REWARDS, VALUES, MASK, GROUP)
    centred = torch.tensor([0.5, -0.5, 0.25, -0.25])
    divisor = {
        "none": torch.ones(4),
        "group": torch.tensor([0.5, 0.5, 0.25, 0.25]) + 1e-4,
        "batch": torch.full((4,), 0.171875**0.5 + 1e-4),
    }[scale]
    torch.testing.assert_close(out.advantages, (centred / divisor)[:, None].expand(4, 2), atol=1e-6, rtol=0)
    # the value head's targets: the reward-to-go, discounted (GAE with lambda 1): [.9 r, r] for a final reward r
    torch.testing.assert_close(out.returns, torch.stack([0.9 * REWARDS[:, 1], REWARDS[:, 1]], 1), atol=1e-6, rtol=0)
