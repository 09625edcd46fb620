"""The navigator: a small policy that rides along a COCONUT model's continuous thoughts.

At thought step t its state is the latent LM's last hidden state h_t (the paper's next thought),
its change since the previous step (h_t - h_{t-1}), the step index, the trajectory's index in its
group (K trajectories per question), an episodic readout over the trajectory's earlier states, a
group readout over the other trajectories of its question (steps <= t) and a gated readout of a
persistent bank of past trajectories' thoughts keyed by the question (coconav/model/memory.py).
It outputs
- steering: a Gaussian action a_t in a small space (mean from the state, learned log-std times a
  temperature), mapped into the LM's input space by an up-projection U and added to the thought:
  next input = thought(h_t) + s U a_t, with s = 1 (steer_scale "none") or the RMS of plain COCONUT
  thoughts (steer_scale "rms": steering in units of the backbone's thought scale, a buffer measured
  once and saved). U starts at zero, so an untrained navigator feeds exactly the plain COCONUT thoughts;
- halting: a Bernoulli stop decision (forced continue before min_thoughts, forced stop at max);
- value: V(state) for the critic;
- a fusion score per step (the learned scorer: read at a trajectory's last step, it rates the answer
  it leads to; a linear head on the detached trunk features, so its loss trains it alone) and, from
  the question key alone, a success logit (the K-selector's difficulty signal).
The trajectory embedding, group read output, scorer and K-selector start at zero: a navigator with
them untrained (or an older checkpoint without them, see OPTIONAL_KEYS) behaves exactly as before.
Its parameters are separate from the LM's and saved with the checkpoint.

    nav = Navigator(lm.hidden_size, NavigatorConfig())
    out = nav(states, question_keys)             # states [B, T, D] -> NavigatorOutput
    out = nav(states, question_keys, trajectory=idx, peers=gather_peers(states, peer_index(group), exists))
    logp, entropy = nav.log_probs(out, actions, halts, masks, temperature)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Bernoulli, Normal

from coconav.config import NavigatorConfig
from coconav.model.memory import EpisodicMemory, GroupMemory, PersistentMemory


@dataclass
class NavigatorOutput:
    """Shape: mean [B, T, A]; std [A]; halt_logits, values, scores [B, T] (scores: fusion-scorer logits)."""

    mean: torch.Tensor
    std: torch.Tensor
    halt_logits: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor | None = None


@dataclass
class Peers:
    """The other trajectories of each row's group, as rows of a pool of trajectories (encoded once, then
    gathered). Shape: pool [N, T, D] (states h_0..h_{T-1} of N trajectories; may be the batch itself),
    index [B, P] (row of the pool of each peer, -1 = padding), visible [B, P, T] (bool: peer p's state at
    step s exists; False for padding and after it halted)."""

    pool: torch.Tensor
    index: torch.Tensor
    visible: torch.Tensor


def peer_index(group: torch.Tensor) -> torch.Tensor:
    """For each row, the other rows of its group in batch order, padded with -1. Shape: [B] -> [B, P],
    P = largest group size - 1."""
    B = group.shape[0]
    rows = torch.arange(B, device=group.device)
    same = (group[:, None] == group[None, :]) & (rows[:, None] != rows[None, :])
    P = int(same.sum(1).max()) if B else 0
    order = torch.where(same, rows[None, :], B).sort(dim=1).values[:, :P]
    return torch.where(order < B, order, -1)


def gather_peers(pool: torch.Tensor, index: torch.Tensor, exists: torch.Tensor) -> Peers:
    """Peers of every row. Shape: pool [N, T, D], index [B, P] (rows of the pool, -1 = none), exists [N, T]."""
    return Peers(pool=pool, index=index, visible=exists[index.clamp(min=0)] & (index >= 0)[:, :, None])


@dataclass
class MemoryReads:
    """What the memories read. Shape: episodic [B, T, T+1] weights of step t over [null slot, steps 0..T-1]
    (None when off); persistent (weights [B, k], bank slots [B, k], their returns [B, k]) or None when off
    or empty."""

    episodic: torch.Tensor | None
    persistent: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None


@dataclass
class StepMasks:
    """Which steps carry which decision. Shape: every field [B, T] (bool).

    valid: steps 0..n_b of each trajectory (n_b = thoughts used); steer: steps where a thought
    was fed (t < n_b); decide: steps with a sampled halting decision (min <= t < max, t <= n_b);
    halt: the decision taken (True at t = n_b).
    """

    valid: torch.Tensor
    steer: torch.Tensor
    decide: torch.Tensor
    halt: torch.Tensor


class Navigator(nn.Module):
    """Steering, halting and value heads over latent states, with episodic, group and persistent memory."""

    # parameters added with multi-trajectory navigation: a checkpoint saved before them loads with their
    # zero initialisation, which reproduces its behaviour exactly (coconav.io.checkpoint.load_module)
    OPTIONAL_KEYS = ("trajectory_embedding.", "group.", "scorer_head.", "selector.", "thought_rms")

    def __init__(self, lm_hidden: int, cfg: NavigatorConfig) -> None:
        super().__init__()
        if not (cfg.steering or cfg.halting):
            raise ValueError("a navigator needs steering or halting (or both)")
        self.cfg = cfg
        d = cfg.hidden
        self.encode = nn.Sequential(nn.LayerNorm(lm_hidden), nn.Linear(lm_hidden, d))
        # how much the state moved since the previous step: a thought that stopped changing is done
        self.encode_change = nn.Sequential(nn.LayerNorm(lm_hidden), nn.Linear(lm_hidden, d))
        self.step_embedding = nn.Embedding(cfg.max_thoughts + 1, d)
        self.episodic = EpisodicMemory(d) if cfg.episodic_memory else None
        self.bank = (
            PersistentMemory(lm_hidden, lm_hidden, cfg.memory_size, cfg.memory_topk) if cfg.persistent_memory else None
        )
        if self.bank is not None:
            self.recall = nn.Sequential(nn.LayerNorm(lm_hidden), nn.Linear(lm_hidden, d))
            self.gate = nn.Linear(2 * d, d)
        self.trunk = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d), nn.Tanh())
        self.mean_head = nn.Linear(d, cfg.action_dim)
        self.log_std = nn.Parameter(torch.full((cfg.action_dim,), float(cfg.init_log_std)))
        self.up = nn.Linear(cfg.action_dim, lm_hidden, bias=False)
        self.halt_head = nn.Linear(d, 1)
        self.value_head = nn.Linear(d, 1)
        with torch.random.fork_rng(devices=[]):  # the multi-trajectory parts leave the global RNG as it was,
            self._multi_trajectory_parts(lm_hidden, cfg)  # so a seeded navigator initialises as before them
        nn.init.zeros_(self.up.weight)  # an untrained navigator feeds plain COCONUT thoughts
        nn.init.normal_(self.mean_head.weight, std=0.01)
        nn.init.zeros_(self.mean_head.bias)
        nn.init.normal_(self.halt_head.weight, std=0.01)
        nn.init.constant_(self.halt_head.bias, cfg.init_halt_bias)
        self.use_episodic = True  # switches for "memory on / off" evaluations
        self.use_persistent = True
        self.use_group = True

    def _multi_trajectory_parts(self, lm_hidden: int, cfg: NavigatorConfig) -> None:
        d = cfg.hidden
        self.trajectory_embedding = nn.Embedding(cfg.max_trajectories, d)
        nn.init.zeros_(self.trajectory_embedding.weight)  # K = 1 and untrained: no effect
        self.group = GroupMemory(d) if cfg.group_memory else None
        self.scorer_head = nn.Linear(d, 1)  # fusion scorer: logit that the trajectory's answer is right
        # K-selector: success logit of a question from its key h_0 alone (before any thought)
        self.selector = nn.Sequential(nn.LayerNorm(lm_hidden), nn.Linear(lm_hidden, d), nn.Tanh(), nn.Linear(d, 1))
        # steer_scale "rms": RMS of plain COCONUT thoughts (0 = not measured yet)
        self.register_buffer("thought_rms", torch.zeros(()))
        for head in (self.scorer_head, self.selector[-1]):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def features(
        self,
        states: torch.Tensor,
        question_keys: torch.Tensor,
        trajectory: torch.Tensor | None = None,
        peers: Peers | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Trunk features. Shape: states [B, T, D], question_keys [B, D], trajectory [B] (index in the group,
        None = 0), peers (the group's other trajectories, None = none) -> [B, T, d] ([B, 1, d] with
        `last_only`: the last step's, what a rollout step needs; earlier steps still serve as memory)."""
        B, T, _ = states.shape
        start = T - 1 if last_only else 0
        x = embedded = self.embed_states(states)
        # every row is some trajectory: a single one (evaluation and inference at K = 1) is index 0, as in a K = 1
        # rollout, whose trajectory-0 embedding trains with the policy
        index = trajectory.to(x.device) if trajectory is not None else x.new_zeros(B, dtype=torch.long)
        x = x + self.trajectory_embedding(index)[:, None]
        if self.episodic is not None and self.use_episodic:
            x = x[:, start:] + self.episodic(x, start)
        else:
            x = x[:, start:]
        if self.group is not None and self.use_group:
            if peers is None:
                x = x + self.group(x, None, None, None, start)
            else:
                x = x + self.group(x, self.encode_peers(peers, states, embedded), peers.index, peers.visible, start)
        if self.bank is not None and self.use_persistent:
            readout, has = self.bank.read(question_keys.float())
            recalled = self.recall(readout)[:, None].expand(B, x.shape[1], -1)
            gate = torch.sigmoid(self.gate(torch.cat([x, recalled], dim=-1)))
            x = x + gate * recalled * has[:, None, None].to(x.dtype)
        return self.trunk(x)

    def encode_peers(self, peers: Peers, states: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """The peers' pool encoded (embed_states, no trajectory index), each pool row once. Shape: -> [N, T, d].
        A pool that is `states` itself reuses `embedded` (= embed_states(states))."""
        return embedded if peers.pool is states else self.embed_states(peers.pool)

    def embed_states(self, states: torch.Tensor) -> torch.Tensor:
        """Each step's input features: the state, its change since the previous step, the step index.
        Shape: states [B, T, D] -> [B, T, d]."""
        T = states.shape[1]
        states = states.float()
        change = torch.cat([torch.zeros_like(states[:, :1]), states[:, 1:] - states[:, :-1]], dim=1)
        return (
            self.encode(states)
            + self.encode_change(change)
            + self.step_embedding(torch.arange(T, device=states.device))
        )

    @torch.no_grad()
    def memory_reads(self, states: torch.Tensor, question_keys: torch.Tensor) -> MemoryReads:
        """What each memory read while `features` ran on these states (for inspection, e.g. the explorer)."""
        episodic = (
            self.episodic.attention(self.embed_states(states))
            if self.episodic is not None and self.use_episodic
            else None
        )
        persistent = None
        if self.bank is not None and self.use_persistent and self.bank.filled > 0:
            weights, slots = self.bank.lookup(question_keys.float())
            persistent = (weights, slots, self.bank.returns[slots])
        return MemoryReads(episodic=episodic, persistent=persistent)

    def forward(
        self,
        states: torch.Tensor,
        question_keys: torch.Tensor,
        trajectory: torch.Tensor | None = None,
        peers: Peers | None = None,
        last_only: bool = False,
    ) -> NavigatorOutput:
        """Heads at every step (the last only with `last_only`: T = 1 in the output). Shape: states [B, T, D]
        (step t = h_t), question_keys [B, D]; see `features`."""
        z = self.features(states, question_keys, trajectory, peers, last_only)
        return NavigatorOutput(
            mean=self.mean_head(z),
            std=self.log_std.exp(),
            halt_logits=self.halt_head(z).squeeze(-1),
            values=self.value_head(z).squeeze(-1),
            scores=self.scorer_head(z.detach()).squeeze(-1),
        )  # a probe: never shapes the trunk

    def success_logits(self, question_keys: torch.Tensor) -> torch.Tensor:
        """The K-selector's difficulty signal: logit that a trajectory answers the question right. [B, D] -> [B]."""
        return self.selector(question_keys.float()).squeeze(-1)

    @torch.no_grad()
    def set_thought_scale(self, thoughts: torch.Tensor) -> float:
        """Measure steer_scale "rms" from plain COCONUT thoughts [..., D]: their root mean square entry."""
        rms = thoughts.float().pow(2).mean().sqrt()
        if not bool(torch.isfinite(rms)) or float(rms) <= 0:
            raise ValueError(f"cannot measure the thought scale from these thoughts (RMS {float(rms)})")
        self.thought_rms.fill_(float(rms))
        return float(rms)

    @property
    def needs_thought_scale(self) -> bool:
        return self.cfg.steer_scale == "rms" and float(self.thought_rms) <= 0

    def steer(self, actions: torch.Tensor) -> torch.Tensor:
        """The offset added to each thought: U a, times the thought RMS with steer_scale "rms". Shape: [..., A] -> [..., D]."""
        offset = self.up(actions)
        if self.cfg.steer_scale == "rms":
            if self.needs_thought_scale:
                raise ValueError(
                    "navigator.steer_scale='rms' needs the thought scale: call set_thought_scale "
                    "(coconav.decode.groups.measure_thought_scale) first"
                )
            offset = offset * self.thought_rms.to(offset.dtype)
        return offset

    def step_masks(self, num_thoughts: torch.Tensor, T: int) -> StepMasks:
        """Decision masks over steps 0..T-1 for trajectories that used `num_thoughts` [B] thoughts."""
        t = torch.arange(T, device=num_thoughts.device)[None]
        n = num_thoughts[:, None]
        valid = t <= n
        steer = (t < n) if self.cfg.steering else torch.zeros_like(valid)
        decide = (
            valid & (t >= self.cfg.min_thoughts) & (t < self.cfg.max_thoughts)
            if self.cfg.halting
            else torch.zeros_like(valid)
        )
        return StepMasks(valid=valid, steer=steer, decide=decide, halt=t == n)

    def log_probs(
        self, out: NavigatorOutput, actions: torch.Tensor, masks: StepMasks, temperature: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability and entropy of the decisions taken at each step. Shape: [B, T] each;
        temperature: a float or one per row [B]."""
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.to(out.mean.dtype)[:, None, None]
        steer_dist = Normal(out.mean, out.std * temperature)
        logp_a = steer_dist.log_prob(actions).sum(-1) * masks.steer
        ent_a = steer_dist.entropy().sum(-1) * masks.steer
        halt_dist = Bernoulli(logits=out.halt_logits)
        logp_h = halt_dist.log_prob(masks.halt.to(out.halt_logits.dtype)) * masks.decide
        ent_h = halt_dist.entropy() * masks.decide
        return logp_a + logp_h, ent_a + ent_h

    @torch.no_grad()
    def remember(self, question_keys: torch.Tensor, thought_means: torch.Tensor, returns: torch.Tensor) -> None:
        """Write trajectories that earned at least memory_min_return into the persistent bank."""
        if self.bank is None:
            return
        keep = returns >= self.cfg.memory_min_return
        if bool(keep.any()):
            self.bank.write(question_keys[keep], thought_means[keep], returns[keep])
