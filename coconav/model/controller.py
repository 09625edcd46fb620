"""The thought-control seam: adapts a Navigator to ``LatentLM.think``/``generate``.

``LatentLM`` asks a controller, at every thought step, for the thought to feed back and whether each
row halts. ``NavigatorController`` answers with the navigator's steering and halting, sampled (PPO
rollouts) or greedy (evaluation, inference), and records the states, actions, halting probabilities
and values it produced.

    controller = NavigatorController(navigator, sample=False)
    out = lm.generate(prompts, num_thoughts=0, controller=controller, max_thoughts=navigator.cfg.max_thoughts)
    controller.halt_probs  # list over steps of [B]
"""

from __future__ import annotations

import torch

from coconav.model.latent_lm import ThoughtDecision
from coconav.model.navigator import Navigator


class NavigatorController:
    """Adapts a Navigator to LatentLM.think: records states and samples (or takes the mode of) decisions."""

    def __init__(self, navigator: Navigator, sample: bool, temperature: float = 1.0,
                 generator: torch.Generator | None = None, steer: bool = True) -> None:
        self.navigator, self.sample, self.temperature, self.generator = navigator, sample, temperature, generator
        self.steer = steer and navigator.cfg.steering  # steer=False: halting only, plain COCONUT thoughts
        self.reset()

    def reset(self) -> None:
        self.states: list[torch.Tensor] = []  # h_t, [B, D] each
        self.actions: list[torch.Tensor] = []  # a_t, [B, A] each
        self.halt_probs: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __call__(self, step: int, hidden: torch.Tensor, thought: torch.Tensor, active: torch.Tensor) -> ThoughtDecision:
        if step == 0:
            self.reset()
        nav, cfg = self.navigator, self.navigator.cfg
        self.states.append(hidden.float())
        states = torch.stack(self.states, dim=1)  # [B, t+1, D]
        out = nav(states, states[:, 0])
        mean, halt_logit = out.mean[:, -1], out.halt_logits[:, -1]  # [B, A], [B]
        self.halt_probs.append(torch.sigmoid(halt_logit))
        self.values.append(out.values[:, -1])
        if cfg.halting and step >= cfg.min_thoughts:
            p = torch.sigmoid(halt_logit)
            halt = torch.bernoulli(p, generator=self.generator).bool() if self.sample else p > 0.5
        else:
            halt = torch.zeros_like(active)
        if self.steer:
            std = out.std * self.temperature
            noise = torch.randn(mean.shape, generator=self.generator, device=mean.device) if self.sample else 0.0
            action = mean + std * noise
        else:
            action = torch.zeros_like(mean)
        self.actions.append(action)
        return ThoughtDecision(thought=thought + nav.steer(action).to(thought.dtype), halt=halt)
