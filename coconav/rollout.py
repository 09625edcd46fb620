"""Latent rollouts of a navigator-steered COCONUT model, and their replay for PPO.

``roll_out`` runs a batch of questions with the KV cache (no gradients): one prefill per question
(shared by its K trajectories through ``batch_repeat_interleave``), a thought phase in which the
navigator steers every thought and each trajectory halts at its own step (later columns are masked
out for it, no per-example loop), the forced <eot>, then the answer, sampled during training and
greedy for evaluation. It returns a ``Trajectories`` record of actions, halting, thought counts,
answers and the question keys.

``replay`` recomputes, with gradients, what PPO needs from the stored actions: the teacher-forced
thought loop with the stored steering (``LatentLM.forward(thought_offsets=...)``), the navigator's
log-probabilities, entropies and values at every step, and the log-probability of the decoded
answer (the episode's last action when ``answer_in_policy``).

    traj = roll_out(lm, nav, examples, sample=True, temperature=1.0, max_new_tokens=16)
    rep = replay(lm, nav, traj, torch.arange(len(traj)), temperature=1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from coconav.data.curriculum import IGNORE, Sequence, collate, encode_question
from coconav.data.records import Example
from coconav.model.controller import NavigatorController
from coconav.model.latent_lm import DecodeState, LatentLM
from coconav.model.navigator import Navigator, StepMasks


@dataclass
class Trajectories:
    """A batch of rollouts: B = questions x K trajectories, trajectory b of question group[b].

    Shape: group, num_thoughts, new_tokens, correct, formatted [B]; actions [B, L, A] (L = the
    thought budget, zeros after a trajectory's last thought); answer_ids [B, N] (pad after EOS);
    question_keys, thought_means [B, D]; halt_probs, values [B, L+1] (rollout-time diagnostics).
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

    def __len__(self) -> int:
        return len(self.examples)


def repeat_state(state: DecodeState, k: int) -> DecodeState:
    """K copies of each question's decoding state, copy j of question i at row i*K + j."""
    if k == 1:
        return state
    state.cache.batch_repeat_interleave(k)
    return DecodeState(cache=state.cache, mask=state.mask.repeat_interleave(k, 0),
                       next_position=state.next_position.repeat_interleave(k, 0),
                       last_hidden=state.last_hidden.repeat_interleave(k, 0))


def _stack_steps(steps: list[torch.Tensor], length: int, like: torch.Tensor) -> torch.Tensor:
    """Stack per-step tensors [B, ...] into [B, length, ...], zero-padded after the last step."""
    if not steps:
        return like.new_zeros(like.shape[0], length, *like.shape[1:])
    out = torch.stack(steps, dim=1)
    pad = length - out.shape[1]
    return torch.cat([out, out.new_zeros(out.shape[0], pad, *out.shape[2:])], dim=1) if pad > 0 else out[:, :length]


@torch.no_grad()
def roll_out(lm: LatentLM, navigator: Navigator, examples: list[Example], *, num_trajectories: int = 1,
             sample: bool = True, temperature: float = 1.0, max_new_tokens: int = 32,
             generator: torch.Generator | None = None) -> Trajectories:
    """Roll out K trajectories per question (see module docstring)."""
    K, L = num_trajectories, navigator.cfg.max_thoughts
    prompts = [encode_question(lm.tokenizer, ex.question) + [lm.special.bot] for ex in examples]
    state = repeat_state(lm.prefill(prompts), K)
    controller = NavigatorController(navigator, sample, temperature, generator)
    B = len(examples) * K
    used, _ = lm.think(state, torch.zeros(B, dtype=torch.long, device=lm.device), controller=controller, max_thoughts=L)
    answer_ids, new_tokens = lm.decode(state, max_new_tokens, do_sample=sample, generator=generator)
    states = torch.stack(controller.states, dim=1)  # [B, steps seen (up to L + 1), D]: h_0 .. h_n
    t = torch.arange(states.shape[1], device=states.device)[None]
    thought_steps = ((t >= 1) & (t <= used[:, None])).float()[..., None]  # states h_1..h_n are thought outputs
    thought_means = torch.where(used[:, None] > 0, (states * thought_steps).sum(1) / thought_steps.sum(1).clamp(min=1),
                                states[:, 0])
    actions = _stack_steps(controller.actions, L, controller.actions[0] if controller.actions else
                           states.new_zeros(B, navigator.cfg.action_dim))
    steps_taken = torch.arange(L, device=actions.device)[None, :, None] < used[:, None, None]
    return Trajectories(
        examples=[ex for ex in examples for _ in range(K)], prompts=[p for p in prompts for _ in range(K)],
        group=torch.arange(len(examples)).repeat_interleave(K), actions=actions * steps_taken,
        num_thoughts=used, answer_ids=answer_ids, new_tokens=new_tokens,
        texts=[lm.decode_text(seq) for seq in answer_ids], question_keys=states[:, 0], thought_means=thought_means,
        halt_probs=_stack_steps(controller.halt_probs, L + 1, controller.halt_probs[0]),
        values=_stack_steps(controller.values, L + 1, controller.values[0]))


@dataclass
class Replay:
    """Recomputed policy quantities for a subset of trajectories. Shape: [b, T] with T = L + 1 steps,
    answer_logprobs [b]; masks over the same steps."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor
    answer_logprobs: torch.Tensor
    masks: StepMasks


def replay_sequences(lm: LatentLM, traj: Trajectories, idx: torch.Tensor) -> list[Sequence]:
    """question <bot> <thought> x n <eot> answer tokens (with EOS), the answer labelled."""
    seqs = []
    for i in idx.tolist():
        n, k = int(traj.num_thoughts[i]), int(traj.new_tokens[i])
        head = traj.prompts[i] + [lm.special.thought] * n + [lm.special.eot]
        answer = traj.answer_ids[i, :k].tolist()
        ids = head + answer
        seqs.append(Sequence(ids=ids, labels=[IGNORE] * len(head) + answer, thought_targets=[IGNORE] * len(ids), stage=0))
    return seqs


def replay(lm: LatentLM, navigator: Navigator, traj: Trajectories, idx: torch.Tensor, temperature: float = 1.0,
           answer_in_policy: bool = True) -> Replay:
    """Recompute log-probs, entropies and values of trajectories `idx` from their stored actions."""
    L = navigator.cfg.max_thoughts
    T = L + 1
    batch = collate(replay_sequences(lm, traj, idx), lm.special).to(lm.device)
    actions = traj.actions[idx].to(lm.device)  # [b, L, A]
    span = int(traj.num_thoughts[idx].max())
    offsets = navigator.steer(actions[:, :span]) if span > 0 else None
    out = lm(batch.input_ids, batch.attention_mask, thought_offsets=offsets)
    bot = int((batch.input_ids == lm.special.bot).float().argmax(1)[0])  # aligned: one column for all
    hidden = out.hidden[:, bot:bot + T]  # h_t at column bot + t
    if hidden.shape[1] < T:
        hidden = F.pad(hidden, (0, 0, 0, T - hidden.shape[1]))
    nav = navigator(hidden, hidden[:, 0])
    # the critic reads the same states without shaping them: the value loss must not train the steering
    values = navigator(hidden.detach(), hidden[:, 0].detach()).values
    num_thoughts = traj.num_thoughts[idx].to(lm.device)
    masks = navigator.step_masks(num_thoughts, T)
    actions_t = F.pad(actions, (0, 0, 0, 1))  # [b, T, A]: no action at the final step
    logprobs, entropy = navigator.log_probs(nav, actions_t, masks, temperature)
    answer_logprobs = lm.sequence_logprobs(out.hidden, batch.labels)
    if answer_in_policy:
        logprobs = logprobs + answer_logprobs[:, None] * masks.halt
    return Replay(logprobs=logprobs, entropy=entropy, values=values * masks.valid, answer_logprobs=answer_logprobs,
                  masks=masks)
