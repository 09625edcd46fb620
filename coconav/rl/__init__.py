"""Reinforcement learning for the navigator: rollouts with recorded log-probabilities, rewards, and the
PPO math (GAE, group advantages, clipped losses) as functions of tensors."""
