"""Latent rollouts of a navigator-steered COCONUT model, and their replay for PPO.

``roll_out`` runs a batch of questions with the KV cache (no gradients), from the prompts inference uses
(coconav.decode.generate.navigator_prompts): one prefill per question,
expanded along the batch for its K trajectories (never recomputed: ``batch_repeat_interleave`` for
one K, ``batch_select_indices`` with per-question counts when K varies), a thought phase in which
the navigator steers every thought of every trajectory of every question together and each
trajectory halts at its own step (later columns are masked out for it, no per-example loop), the
forced <eot>, then the answer, sampled during training and greedy for evaluation. It returns a
``Trajectories`` record of actions, halting, thought counts, answers, states and the layout.

The K trajectories of a question (rows i*K .. i*K+K-1 for a fixed K) come from
``coconav.decode.groups.run_groups``: their own random streams, exploration temperatures (replay
applies the same per-row factors), trajectory-index embedding and group-memory reads (replay reads
the stored states of the other trajectories); `num_trajectories` is an int, per-question counts or
"auto" (the K-selector under navigator.trajectories_budget). No diversity bonus is added.

``replay`` recomputes, with gradients, what PPO needs from the stored actions: the teacher-forced
thought loop with the stored steering (``LatentLM.forward(thought_offsets=...)``), the navigator's
log-probabilities, entropies and values at every step, and the log-probability of the decoded
answer (the episode's last action when ``answer_in_policy``).

``rollout_diagnostics`` and ``group_diagnostics`` summarise a rollout for the log: its accuracy, rewards and
compute, and per question K, agreement, fused and single accuracy.

    traj = roll_out(lm, nav, examples, sample=True, temperature=1.0, max_new_tokens=16)
    traj = roll_out(lm, nav, examples, num_trajectories=5, sample=True, generator=gen)
    rep = replay(lm, nav, traj, torch.arange(len(traj)), temperature=1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from coconav.data.curriculum import IGNORE, Sequence, collate
from coconav.data.records import Example
from coconav.decode.fusion import fuse
from coconav.decode.generate import fusion_scores, navigator_prompts, passes_per_question
from coconav.decode.groups import run_groups
from coconav.distributed import gather_global
from coconav.model.latent_lm import LatentLM
from coconav.model.navigator import Navigator, Peers, StepMasks, gather_peers, peer_index


@dataclass
class Trajectories:
    """A batch of rollouts: B = the sum over questions of their K, trajectory b of question group[b].

    Shape: group, trajectory (index within the group), num_thoughts, new_tokens, temperature_factors
    (each row's exploration temperature / the scheduled one), success_logits (the K-selector's, of
    the row's question) [B]; actions [B, L, A] (L = the thought budget, zeros after a trajectory's
    last thought); answer_ids [B, N] (pad after EOS); question_keys, thought_means [B, D]; states
    [B, L+1, D] (h_0..h_n, zeros after); halt_probs, values, scores [B, L+1] (rollout-time
    diagnostics; scores are the fusion scorer's logits, read at step num_thoughts); seeds [B] or None.
    """

    examples: list[Example]
    prompts: list[list[int]]
    group: torch.Tensor
    actions: torch.Tensor
    num_thoughts: torch.Tensor
    answer_ids: torch.Tensor
    new_tokens: torch.Tensor
    texts: list[str]
    question_keys: torch.Tensor
    thought_means: torch.Tensor
    halt_probs: torch.Tensor
    values: torch.Tensor
    trajectory: torch.Tensor | None = None
    temperature_factors: torch.Tensor | None = None
    states: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    success_logits: torch.Tensor | None = None
    seeds: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def final_scores(self) -> torch.Tensor:
        """Each trajectory's fusion-scorer logit at its last step. Shape: [B]."""
        return self.scores.gather(1, self.num_thoughts[:, None].to(self.scores.device)).squeeze(1)

    @property
    def final_values(self) -> torch.Tensor:
        """Each trajectory's value estimate at its last step. Shape: [B]."""
        return self.values.gather(1, self.num_thoughts[:, None].to(self.values.device)).squeeze(1)

    @property
    def counts(self) -> torch.Tensor:
        """Trajectories per question, in question order. Shape: [Q]."""
        return torch.bincount(self.group)


def _stack_steps(steps: list[torch.Tensor], length: int, like: torch.Tensor) -> torch.Tensor:
    """Stack per-step tensors [B, ...] into [B, length, ...], zero-padded after the last step."""
    if not steps:
        return like.new_zeros(like.shape[0], length, *like.shape[1:])
    out = torch.stack(steps, dim=1)
    pad = length - out.shape[1]
    return torch.cat([out, out.new_zeros(out.shape[0], pad, *out.shape[2:])], dim=1) if pad > 0 else out[:, :length]


@torch.no_grad()
def roll_out(
    lm: LatentLM,
    navigator: Navigator,
    examples: list[Example],
    *,
    num_trajectories: int | str | list[int] | torch.Tensor = 1,
    sample: bool = True,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    generator: torch.Generator | None = None,
    seeds: torch.Tensor | None = None,
    explore: bool = False,
) -> Trajectories:
    """Roll out K trajectories per question (see module docstring and coconav/decode/groups.py)."""
    L = navigator.cfg.max_thoughts
    prompts = navigator_prompts(lm, [ex.question for ex in examples])  # the prompts of inference, exactly
    run = run_groups(
        lm,
        navigator,
        prompts,
        num_trajectories=num_trajectories,
        sample=sample,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        generator=generator,
        seeds=seeds,
        explore=explore,
    )
    controller, used, B = run.controller, run.num_thoughts, len(run.group)
    states = torch.stack(controller.states, dim=1)  # [B, steps seen (up to L + 1), D]: h_0 .. h_n
    t = torch.arange(states.shape[1], device=states.device)[None]
    thought_steps = ((t >= 1) & (t <= used[:, None])).float()[..., None]  # states h_1..h_n are thought outputs
    thought_means = torch.where(
        used[:, None] > 0, (states * thought_steps).sum(1) / thought_steps.sum(1).clamp(min=1), states[:, 0]
    )
    actions = _stack_steps(
        controller.actions,
        L,
        controller.actions[0] if controller.actions else states.new_zeros(B, navigator.cfg.action_dim),
    )
    steps_taken = torch.arange(L, device=actions.device)[None, :, None] < used[:, None, None]
    real = (t <= used[:, None]).float()[..., None]
    counts = run.counts.tolist()
    return Trajectories(
        examples=[ex for ex, k in zip(examples, counts) for _ in range(k)],
        prompts=[p for p, k in zip(prompts, counts) for _ in range(k)],
        group=run.group,
        actions=actions * steps_taken,
        num_thoughts=used,
        answer_ids=run.answer_ids,
        new_tokens=run.new_tokens,
        texts=[lm.decode_text(seq) for seq in run.answer_ids],
        question_keys=states[:, 0],
        thought_means=thought_means,
        halt_probs=_stack_steps(controller.halt_probs, L + 1, controller.halt_probs[0]),
        values=_stack_steps(controller.values, L + 1, controller.values[0]),
        trajectory=run.trajectory,
        temperature_factors=run.temperature_factors,
        states=_stack_steps(list((states * real).unbind(1)), L + 1, states[:, 0]),
        scores=_stack_steps(controller.scores, L + 1, controller.scores[0]),
        success_logits=run.success_logits,
        seeds=run.seeds,
    )


@dataclass
class Replay:
    """Recomputed policy quantities for a subset of trajectories. Shape: [b, T] with T = L + 1 steps,
    answer_logprobs [b]; masks over the same steps; final_scores [b] (the fusion scorer's logit at each
    trajectory's last step, read like the values from detached states: it shares the trunk, not the
    steering's path through the LM) and
    success_logits [b] (the K-selector's, from the detached question key), for coconav.rl.ppo.scorer_loss
    and selector_loss."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor
    answer_logprobs: torch.Tensor
    masks: StepMasks
    final_scores: torch.Tensor | None = None
    success_logits: torch.Tensor | None = None


def replay_sequences(lm: LatentLM, traj: Trajectories, idx: torch.Tensor) -> list[Sequence]:
    """question <bot> <thought> x n <eot> answer tokens (with EOS), the answer labelled."""
    seqs = []
    for i in idx.tolist():
        n, k = int(traj.num_thoughts[i]), int(traj.new_tokens[i])
        head = traj.prompts[i] + [lm.special.thought] * n + [lm.special.eot]
        answer = traj.answer_ids[i, :k].tolist()
        ids = head + answer
        seqs.append(
            Sequence(ids=ids, labels=[IGNORE] * len(head) + answer, thought_targets=[IGNORE] * len(ids), stage=0)
        )
    return seqs


def replay_peers(navigator: Navigator, traj: Trajectories, idx: torch.Tensor) -> Peers | None:
    """What trajectories `idx` read of their groups: the other trajectories' stored rollout states (their
    steps 0..n exist), as the rollout's controller saw them. None without group memory or without groups."""
    if navigator.group is None or not navigator.use_group or traj.states is None or not bool((traj.counts > 1).any()):
        return None
    T = traj.states.shape[1]
    exists = torch.arange(T)[None] <= traj.num_thoughts.cpu()[:, None]
    index = peer_index(traj.group)[idx.cpu()]
    rows = torch.unique(index[index >= 0])  # only the peers these trajectories read are encoded
    remap = torch.full((len(traj),), -1, dtype=torch.long)
    remap[rows] = torch.arange(len(rows))
    local = torch.where(index >= 0, remap[index.clamp(min=0)], -1)
    device = traj.actions.device
    peers = gather_peers(traj.states[rows].cpu(), local, exists[rows])
    return Peers(pool=peers.pool.to(device), index=peers.index.to(device), visible=peers.visible.to(device))


def replay(
    lm: LatentLM,
    navigator: Navigator,
    traj: Trajectories,
    idx: torch.Tensor,
    temperature: float = 1.0,
    answer_in_policy: bool = True,
) -> Replay:
    """Recompute log-probs, entropies and values of trajectories `idx` from their stored actions."""
    L = navigator.cfg.max_thoughts
    T = L + 1
    batch = collate(replay_sequences(lm, traj, idx), lm.special).to(lm.device)
    actions = traj.actions[idx].to(lm.device)  # [b, L, A]
    span = int(traj.num_thoughts[idx].max())
    offsets = navigator.steer(actions[:, :span]) if span > 0 else None
    out = lm(batch.input_ids, batch.attention_mask, thought_offsets=offsets)
    bot = int((batch.input_ids == lm.special.bot).float().argmax(1)[0])  # aligned: one column for all
    hidden = out.hidden[:, bot : bot + T]  # h_t at column bot + t
    if hidden.shape[1] < T:
        hidden = F.pad(hidden, (0, 0, 0, T - hidden.shape[1]))
    trajectory = traj.trajectory[idx].to(lm.device) if traj.trajectory is not None else None
    peers = replay_peers(navigator, traj, idx)
    nav = navigator(hidden, hidden[:, 0], trajectory, peers)
    # the critic reads the same states without shaping them: the value loss must not train the steering
    critic = navigator(hidden.detach(), hidden[:, 0].detach(), trajectory, peers)
    values = critic.values
    num_thoughts = traj.num_thoughts[idx].to(lm.device)
    masks = navigator.step_masks(num_thoughts, T)
    actions_t = F.pad(actions, (0, 0, 0, 1))  # [b, T, A]: no action at the final step
    if traj.temperature_factors is not None:  # each trajectory's own exploration temperature
        temperature = temperature * traj.temperature_factors[idx].to(lm.device)
    logprobs, entropy = navigator.log_probs(nav, actions_t, masks, temperature)
    answer_logprobs = lm.sequence_logprobs(out.hidden, batch.labels)
    if answer_in_policy:
        logprobs = logprobs + answer_logprobs[:, None] * masks.halt
    final_scores = critic.scores.gather(1, num_thoughts[:, None]).squeeze(1)
    return Replay(
        logprobs=logprobs,
        entropy=entropy,
        values=values * masks.valid,
        answer_logprobs=answer_logprobs,
        masks=masks,
        final_scores=final_scores,
        success_logits=navigator.success_logits(hidden[:, 0].detach()),
    )


def rollout_diagnostics(
    traj: Trajectories, returns: torch.Tensor, correct: torch.Tensor, temperature: float, accelerator=None
) -> dict[str, float]:
    """The rollout's numbers over the global batch (all ranks): accuracy, reward mean and std, thoughts, answer
    tokens and forward passes (the compute rule of passes_per_question: a question's K trajectories share one
    prefill), the exploration temperature and the first step's halting probability.
    Shape: returns, correct [B_global] (already gathered); `traj` this rank's."""
    num_thoughts = gather_global(accelerator, traj.num_thoughts)
    work = traj.num_thoughts + traj.new_tokens.to(traj.num_thoughts.device)
    local = passes_per_question(work, traj.group, int(traj.group.max()) + 1 if len(traj) else 0)
    passes = float(gather_global(accelerator, local.to(traj.num_thoughts.device)).mean())
    return {
        "rollout/accuracy": float(correct.mean()),
        "rollout/reward_mean": float(returns.mean()),
        "rollout/reward_std": float(returns.std()) if len(returns) > 1 else 0.0,
        "rollout/mean_thoughts": float(num_thoughts.float().mean()),
        "rollout/mean_new_tokens": float(gather_global(accelerator, traj.new_tokens).float().mean()),
        "rollout/forward_passes": passes,
        "rollout/temperature": temperature,
        "rollout/halt_prob": float(traj.halt_probs[:, 0].mean()),
    }


def group_diagnostics(traj: Trajectories, correct: torch.Tensor, fusion: str, accelerator=None) -> dict[str, float]:
    """Per-question rollout diagnostics over the global batch (all ranks): K (mean, share of each value), agreement
    with the answer fused by `fusion`, and the accuracy of the fused answer, of trajectory 0 and of any trajectory.
    Shape: correct [B] (this rank's trajectories, 0/1)."""
    correct = correct.float().cpu()
    group = traj.group.cpu()
    Q = int(group.max()) + 1 if len(group) else 0
    fused = fuse(traj.texts, fusion_scores(traj, fusion), [ex.answer_type for ex in traj.examples], fusion, group)
    first = traj.trajectory.cpu() == 0 if traj.trajectory is not None else torch.ones(len(group), dtype=torch.bool)
    per_question = torch.stack(
        [
            traj.counts.cpu().float(),  # K
            fused.agreement.float(),  # share agreeing with the fused answer
            correct[fused.winner],  # fused answer right
            torch.zeros(Q).index_add_(0, group, correct).gt(0).float(),  # any trajectory right
            correct[first],  # trajectory 0 right
        ],
        dim=1,
    )
    k, agreement, fused_right, any_right, first_right = gather_global(accelerator, per_question).unbind(1)
    out = {
        "rollout/k_mean": float(k.mean()),
        "rollout/agreement": float(agreement.mean()),
        "rollout/fused_accuracy": float(fused_right.mean()),
        "rollout/best_single_accuracy": float(any_right.mean()),
        "rollout/single_accuracy": float(first_right.mean()),
    }
    for value in sorted({int(v) for v in k.tolist()}):
        out[f"rollout/k_share/{value}"] = float((k == value).float().mean())
    return out
