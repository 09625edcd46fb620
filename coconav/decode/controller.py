"""The thought-control seam: adapts a Navigator to ``LatentLM.think``/``generate``.

``LatentLM`` asks a controller, at every thought step, for the thought to feed back and whether each
row halts. ``NavigatorController`` answers with the navigator's steering and halting, sampled (PPO
rollouts) or greedy (evaluation, inference), and records the states, actions, halting probabilities,
values and fusion scores it produced.

With K trajectories per question the batch holds every trajectory as a row; the controller is told
each row's `group` (its question) and `trajectory` index, so the navigator sees the trajectory
embedding and reads the group's shared memory (the other rows of its group, states at steps <= t
that exist: a peer that halted stops adding states). Randomness is either one generator for the
batch (as for K = 1) or per-row stream `seeds` (coconav/model/streams.py), so that a row draws the
same noise whichever rows share its batch. The steering temperature may differ per row (a tensor):
sampled rollouts multiply the std by it; greedy runs may still `explore` with per-row temperatures
(0 = the mean action), halting staying greedy unless navigator.inference_halting = "sample" (then
trajectories 1..K-1 draw it from their streams): K-trajectory inference. Greedy and inference-sampled
halting read the probability shifted by navigator.halt_threshold (greedy: halt where p > threshold).

    controller = NavigatorController(navigator, sample=False)
    out = lm.generate(prompts, num_thoughts=0, controller=controller, max_thoughts=navigator.cfg.max_thoughts)
    controller.halt_probs  # list over steps of [B]
"""

from __future__ import annotations

import math

import torch

from coconav.decode.settings import NavigatorSettings, resolve_settings
from coconav.model.latent_lm import ThoughtDecision
from coconav.model.navigator import Navigator, gather_peers, peer_index
from coconav.model.streams import HALT, STEER, stream_normal, stream_uniform


def inference_halt_prob(halt_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """The halting probability used at inference: sigmoid(logit - logit(threshold)), which exceeds 1/2 exactly
    where the policy's own probability exceeds `threshold` (threshold 0.5: the policy's probability)."""
    return torch.sigmoid(halt_logits - math.log(threshold / (1 - threshold)))


class NavigatorController:
    """Adapts a Navigator to LatentLM.think: records states and samples (or takes the mode of) decisions."""

    def __init__(
        self,
        navigator: Navigator,
        sample: bool,
        temperature: float | torch.Tensor = 1.0,
        generator: torch.Generator | None = None,
        *,
        settings: NavigatorSettings | None = None,
        group: torch.Tensor | None = None,
        trajectory: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
        explore: torch.Tensor | None = None,
    ) -> None:
        """temperature: float or per-row [B]; group, trajectory: [B] (None: every row alone, index 0);
        seeds: [B] per-row streams (None: `generator`); explore: [B] steering temperatures when not sampling;
        settings: steering and where inference halting stops (None: the navigator's config at K = 1)."""
        settings = settings or resolve_settings(navigator.cfg)
        self.navigator, self.sample, self.temperature, self.generator = navigator, sample, temperature, generator
        self.steer = settings.steer and navigator.cfg.steering  # steer=False: halting only, plain COCONUT thoughts
        self.trajectory, self.seeds, self.explore = trajectory, seeds, explore
        self.halt_threshold = settings.halt_threshold
        self.peers = peer_index(group) if group is not None else None
        self.reset()

    def reset(self) -> None:
        self.states: list[torch.Tensor] = []  # h_t, [B, D] each
        self.alive: list[torch.Tensor] = []  # [B] each: the row had not halted before step t (h_t is real)
        self.actions: list[torch.Tensor] = []  # a_t, [B, A] each
        self.halt_probs: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []  # fusion-scorer logits, [B] each

    def _noise(self, step: int, like: torch.Tensor) -> torch.Tensor:
        if self.seeds is not None:
            return stream_normal(self.seeds, step, like.shape[-1], STEER).to(like.device)
        return torch.randn(like.shape, generator=self.generator, device=like.device)

    def _draw_halt(self, step: int, p: torch.Tensor) -> torch.Tensor:
        """Bernoulli(p) per row: from the rows' streams when they have them, else the batch generator."""
        if self.seeds is not None:
            return stream_uniform(self.seeds, step, 1, HALT)[:, 0].to(p.device) < p
        return torch.bernoulli(p, generator=self.generator).bool()

    def _per_row(self, value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
        return value.to(like.device, like.dtype)[:, None] if isinstance(value, torch.Tensor) else value

    def __call__(self, step: int, hidden: torch.Tensor, thought: torch.Tensor, active: torch.Tensor) -> ThoughtDecision:
        if step == 0:
            self.reset()
        nav, cfg = self.navigator, self.navigator.cfg
        self.states.append(hidden.float())
        self.alive.append(active.clone())
        states = torch.stack(self.states, dim=1)  # [B, t+1, D]
        peers = None
        if self.peers is not None and nav.group is not None and nav.use_group:
            peers = gather_peers(states, self.peers.to(states.device), torch.stack(self.alive, dim=1))
        out = nav(states, states[:, 0], self.trajectory, peers, last_only=True)
        mean, p = out.mean[:, -1], torch.sigmoid(out.halt_logits[:, -1])  # [B, A], [B]
        self.halt_probs.append(p)
        self.values.append(out.values[:, -1])
        self.scores.append(out.scores[:, -1])
        if cfg.halting and step >= cfg.min_thoughts:
            if self.sample:
                halt = self._draw_halt(step, p)
            else:
                shifted = inference_halt_prob(out.halt_logits[:, -1], self.halt_threshold)
                halt = shifted > 0.5  # p > halt_threshold
                if self.explore is not None and cfg.inference_halting == "sample":  # trajectories 1..K-1
                    halt = torch.where(self.trajectory.to(p.device) > 0, self._draw_halt(step, shifted), halt)
        else:
            halt = torch.zeros_like(active)
        if self.steer and self.sample:
            std = out.std * self._per_row(self.temperature, mean)
            action = mean + std * self._noise(step, mean)
        elif self.steer and self.explore is not None:
            action = mean + out.std * self._per_row(self.explore, mean) * self._noise(step, mean)
        elif self.steer:
            action = mean
        else:
            action = torch.zeros_like(mean)
        self.actions.append(action.float())  # float32 as the states: replay steers from them outside autocast
        return ThoughtDecision(thought=thought + nav.steer(action).to(thought.dtype), halt=halt)
