"""Reinforcement learning for the navigator: rollouts with recorded log-probabilities (rollout), rewards, the
PPO math (GAE, group advantages, clipped losses) as functions of tensors (ppo, halting), the policy that PPO
trains and one PPO update over it (policy, update), and the halting head's supervised cold start."""
