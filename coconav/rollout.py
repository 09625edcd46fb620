"""Latent rollouts of a navigator-steered COCONUT model, and their replay for PPO.

``roll_out`` runs a batch of questions with the KV cache (no gradients): one prefill per question,
expanded along the batch for its K trajectories (never recomputed: ``batch_repeat_interleave`` for
one K, ``batch_select_indices`` with per-question counts when K varies), a thought phase in which
the navigator steers every thought of every trajectory of every question together and each
trajectory halts at its own step (later columns are masked out for it, no per-example loop), the
forced <eot>, then the answer, sampled during training and greedy for evaluation. It returns a
``Trajectories`` record of actions, halting, thought counts, answers, states and the layout.

K trajectories of a question (rows i*K .. i*K+K-1 for a fixed K) differ by
- their random streams: with K > 1 (or explicit `seeds`) each row draws its steering noise,
  halting and answer tokens from its own stream (coconav/model/streams.py), so K trajectories
  rolled out together equal K single rollouts given the same seeds; K = 1 without seeds uses the
  batch `generator` exactly as before;
- their exploration temperature: the scheduled temperature times
  ``trajectory_temperatures(K, navigator.temperature_spread)`` (geometric spread, K = 1: x1);
  replay applies the same per-row factors;
- the navigator's trajectory-index embedding, and what each reads of the others through the group
  memory (navigator.group_memory; replay reads the stored states of the other trajectories).
No diversity bonus is added to the reward.

`num_trajectories` is an int (1..max_trajectories), per-question counts, or "auto": the K-selector
(``Navigator.success_logits`` on the question key h_0) and ``allocate_trajectories`` spend
navigator.trajectories_budget trajectories per question on average, more on harder questions.
With `explore=True` (inference, not sampling) trajectory 0 takes the mean action and trajectories
1..K-1 sample their steering at ``inference_temperatures``; halting and answers stay greedy.

``replay`` recomputes, with gradients, what PPO needs from the stored actions: the teacher-forced
thought loop with the stored steering (``LatentLM.forward(thought_offsets=...)``), the navigator's
log-probabilities, entropies and values at every step, and the log-probability of the decoded
answer (the episode's last action when ``answer_in_policy``).

    traj = roll_out(lm, nav, examples, sample=True, temperature=1.0, max_new_tokens=16)
    traj = roll_out(lm, nav, examples, num_trajectories=5, sample=True, generator=gen)
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
from coconav.model.navigator import Navigator, Peers, StepMasks, gather_peers, peer_index
from coconav.model.streams import stream_seeds


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


def repeat_state(state: DecodeState, k: int | torch.Tensor) -> DecodeState:
    """Copies of each question's decoding state: k (int) copies each, copy j of question i at row i*k + j,
    or counts[i] copies of question i (a tensor [Q]), consecutive. The cache is indexed, never recomputed."""
    if isinstance(k, torch.Tensor):
        if bool((k == k[0]).all()):
            return repeat_state(state, int(k[0]))
        index = torch.repeat_interleave(torch.arange(len(k), device=k.device), k).to(state.mask.device)
        state.cache.batch_select_indices(index)
        return DecodeState(cache=state.cache, mask=state.mask[index], next_position=state.next_position[index],
                           last_hidden=state.last_hidden[index])
    if k == 1:
        return state
    state.cache.batch_repeat_interleave(k)
    return DecodeState(cache=state.cache, mask=state.mask.repeat_interleave(k, 0),
                       next_position=state.next_position.repeat_interleave(k, 0),
                       last_hidden=state.last_hidden.repeat_interleave(k, 0))


def trajectory_temperatures(k: int, spread: float) -> torch.Tensor:
    """Exploration temperature factors of K trajectories: spread ** linspace(-1, 1, K) (geometric around 1,
    from 1/spread to spread; K = 1 -> [1.0]). Shape: [K]."""
    if k == 1:
        return torch.ones(1)
    return torch.tensor(spread, dtype=torch.float64).pow(torch.linspace(-1, 1, k, dtype=torch.float64)).float()


def inference_temperatures(k: int, temperature: float, spread: float) -> torch.Tensor:
    """Steering temperatures of K inference trajectories: 0 for trajectory 0 (the mean action, as K = 1),
    temperature x trajectory_temperatures(K-1, spread) for the others. Shape: [K]."""
    if k == 1:
        return torch.zeros(1)
    return torch.cat([torch.zeros(1), temperature * trajectory_temperatures(k - 1, spread)])


def allocate_trajectories(success_probs: torch.Tensor, budget: float, max_k: int) -> torch.Tensor:
    """K per question for K = "auto": every question gets 1, and the rest of round(budget x Q) trajectories
    goes to questions in proportion to their failure probability (1 - p), largest remainders first,
    capped at max_k. Equal probabilities give every question the budget (rounded). Shape: [Q] -> [Q] long."""
    if not 1 <= budget <= max_k:
        raise ValueError(f"navigator.trajectories_budget must be in [1, max_trajectories={max_k}], got {budget}")
    Q = success_probs.shape[0]
    need = (1 - success_probs.double().clamp(0, 1)).cpu()
    need = need + 1e-9  # all-certain questions still share the budget evenly
    extra_total = int(round(budget * Q)) - Q
    k = torch.ones(Q, dtype=torch.long)
    for _ in range(max_k):  # redistribute what the cap leaves over
        room = (k < max_k)
        left = extra_total - int((k - 1).sum())
        if left <= 0 or not bool(room.any()):
            break
        share = torch.where(room, need, torch.zeros_like(need))
        want = share / share.sum() * left
        whole = torch.minimum(want.floor().long(), max_k - k)
        k = k + whole
        left = extra_total - int((k - 1).sum())
        if left > 0:
            frac = torch.where(k < max_k, want - want.floor(), torch.full_like(want, -1.0))
            order = sorted(range(Q), key=lambda i: (-float(frac[i]), i))
            for i in order[:left]:
                if frac[i] >= 0 and k[i] < max_k:
                    k[i] += 1
    return k


def measure_thought_scale(lm: LatentLM, navigator: Navigator, prompts: list[list[int]]) -> float:
    """Set the navigator's thought scale (steer_scale "rms") from plain COCONUT thoughts on `prompts`
    (max_thoughts each, no steering): the RMS entry of the thoughts fed back. Returns it."""
    state = lm.prefill(prompts)
    counts = torch.full((len(prompts),), navigator.cfg.max_thoughts, dtype=torch.long, device=lm.device)
    _, thoughts = lm.think(state, counts, return_thoughts=True)
    return navigator.set_thought_scale(thoughts)


def _stack_steps(steps: list[torch.Tensor], length: int, like: torch.Tensor) -> torch.Tensor:
    """Stack per-step tensors [B, ...] into [B, length, ...], zero-padded after the last step."""
    if not steps:
        return like.new_zeros(like.shape[0], length, *like.shape[1:])
    out = torch.stack(steps, dim=1)
    pad = length - out.shape[1]
    return torch.cat([out, out.new_zeros(out.shape[0], pad, *out.shape[2:])], dim=1) if pad > 0 else out[:, :length]


def trajectory_counts(navigator: Navigator, num_trajectories: int | str | list[int] | torch.Tensor, Q: int,
                      question_keys: torch.Tensor) -> torch.Tensor:
    """K per question from an int, per-question counts or "auto" (the K-selector under the budget). Shape: [Q]."""
    cfg = navigator.cfg
    if isinstance(num_trajectories, str):
        if num_trajectories != "auto":
            raise ValueError(f"num_trajectories must be an integer or 'auto', got {num_trajectories!r}")
        if cfg.trajectories_budget is None:
            raise ValueError("num_trajectories='auto' needs navigator.trajectories_budget (mean K per question)")
        probs = torch.sigmoid(navigator.success_logits(question_keys))
        return allocate_trajectories(probs, cfg.trajectories_budget, cfg.max_trajectories)
    counts = torch.as_tensor(num_trajectories, dtype=torch.long).flatten().cpu()
    counts = counts.expand(Q).clone() if counts.numel() == 1 else counts
    if counts.numel() != Q:
        raise ValueError(f"num_trajectories has {counts.numel()} counts for {Q} questions")
    if bool((counts < 1).any()) or bool((counts > cfg.max_trajectories).any()):
        raise ValueError(f"num_trajectories must be in [1, navigator.max_trajectories={cfg.max_trajectories}], "
                         f"got {counts.min().item() if bool((counts < 1).any()) else counts.max().item()}")
    return counts


@torch.no_grad()
def roll_out(lm: LatentLM, navigator: Navigator, examples: list[Example], *,
             num_trajectories: int | str | list[int] | torch.Tensor = 1, sample: bool = True,
             temperature: float = 1.0, max_new_tokens: int = 32, generator: torch.Generator | None = None,
             seeds: torch.Tensor | None = None, explore: bool = False) -> Trajectories:
    """Roll out K trajectories per question (see module docstring). `seeds` [B]: per-row streams."""
    L, cfg = navigator.cfg.max_thoughts, navigator.cfg
    prompts = [encode_question(lm.tokenizer, ex.question) + [lm.special.bot] for ex in examples]
    if navigator.needs_thought_scale:
        measure_thought_scale(lm, navigator, prompts)
    state = lm.prefill(prompts)
    success = navigator.success_logits(state.last_hidden.float())  # [Q]
    counts = trajectory_counts(navigator, num_trajectories, len(examples), state.last_hidden.float())
    state = repeat_state(state, counts)
    group = torch.repeat_interleave(torch.arange(len(examples)), counts)
    starts = torch.cumsum(counts, 0) - counts
    trajectory = torch.arange(len(group)) - starts[group]
    B, multi = len(group), bool((counts > 1).any())
    factors = torch.cat([trajectory_temperatures(int(k), cfg.temperature_spread) for k in counts])
    if seeds is None and multi and (sample or explore):
        seeds = stream_seeds(generator, B)
    if seeds is not None and seeds.shape != (B,):
        raise ValueError(f"seeds must have shape [{B}] (one per trajectory), got {list(seeds.shape)}")
    dev = lm.device
    row_temperature = temperature * factors.to(dev) if multi else temperature
    explore_t = None
    if explore and not sample:
        explore_t = torch.cat([inference_temperatures(int(k), cfg.inference_temperature, cfg.temperature_spread)
                               for k in counts]).to(dev)
    controller = NavigatorController(navigator, sample, row_temperature, generator, group=group.to(dev) if multi else None,
                                     trajectory=trajectory.to(dev), seeds=seeds.to(dev) if seeds is not None else None,
                                     explore=explore_t)
    used, _ = lm.think(state, torch.zeros(B, dtype=torch.long, device=dev), controller=controller, max_thoughts=L)
    answer_ids, new_tokens = lm.decode(state, max_new_tokens, do_sample=sample, generator=generator,
                                       seeds=seeds.to(dev) if seeds is not None and sample else None)
    states = torch.stack(controller.states, dim=1)  # [B, steps seen (up to L + 1), D]: h_0 .. h_n
    t = torch.arange(states.shape[1], device=states.device)[None]
    thought_steps = ((t >= 1) & (t <= used[:, None])).float()[..., None]  # states h_1..h_n are thought outputs
    thought_means = torch.where(used[:, None] > 0, (states * thought_steps).sum(1) / thought_steps.sum(1).clamp(min=1),
                                states[:, 0])
    actions = _stack_steps(controller.actions, L, controller.actions[0] if controller.actions else
                           states.new_zeros(B, navigator.cfg.action_dim))
    steps_taken = torch.arange(L, device=actions.device)[None, :, None] < used[:, None, None]
    real = (t <= used[:, None]).float()[..., None]
    return Trajectories(
        examples=[ex for ex, k in zip(examples, counts.tolist()) for _ in range(k)],
        prompts=[p for p, k in zip(prompts, counts.tolist()) for _ in range(k)],
        group=group, actions=actions * steps_taken,
        num_thoughts=used, answer_ids=answer_ids, new_tokens=new_tokens,
        texts=[lm.decode_text(seq) for seq in answer_ids], question_keys=states[:, 0], thought_means=thought_means,
        halt_probs=_stack_steps(controller.halt_probs, L + 1, controller.halt_probs[0]),
        values=_stack_steps(controller.values, L + 1, controller.values[0]),
        trajectory=trajectory, temperature_factors=factors if multi else torch.ones(B),
        states=_stack_steps(list((states * real).unbind(1)), L + 1, states[:, 0]),
        scores=_stack_steps(controller.scores, L + 1, controller.scores[0]),
        success_logits=success[group.to(success.device)], seeds=seeds)


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


def replay_peers(navigator: Navigator, traj: Trajectories, idx: torch.Tensor) -> Peers | None:
    """What trajectories `idx` read of their groups: the other trajectories' stored rollout states (their
    steps 0..n exist), as the rollout's controller saw them. None without group memory or without groups."""
    if navigator.group is None or not navigator.use_group or traj.states is None or not bool((traj.counts > 1).any()):
        return None
    T = traj.states.shape[1]
    exists = torch.arange(T)[None] <= traj.num_thoughts.cpu()[:, None]
    index = peer_index(traj.group)[idx.cpu()]
    peers = gather_peers(traj.states.cpu(), index, exists)
    device = traj.actions.device
    return Peers(states=peers.states.to(device), visible=peers.visible.to(device))


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
    trajectory = traj.trajectory[idx].to(lm.device) if traj.trajectory is not None else None
    peers = replay_peers(navigator, traj, idx)
    nav = navigator(hidden, hidden[:, 0], trajectory, peers)
    # the critic reads the same states without shaping them: the value loss must not train the steering
    values = navigator(hidden.detach(), hidden[:, 0].detach(), trajectory, peers).values
    num_thoughts = traj.num_thoughts[idx].to(lm.device)
    masks = navigator.step_masks(num_thoughts, T)
    actions_t = F.pad(actions, (0, 0, 0, 1))  # [b, T, A]: no action at the final step
    if traj.temperature_factors is not None:  # each trajectory's own exploration temperature
        temperature = temperature * traj.temperature_factors[idx].to(lm.device)
    logprobs, entropy = navigator.log_probs(nav, actions_t, masks, temperature)
    answer_logprobs = lm.sequence_logprobs(out.hidden, batch.labels)
    if answer_in_policy:
        logprobs = logprobs + answer_logprobs[:, None] * masks.halt
    return Replay(logprobs=logprobs, entropy=entropy, values=values * masks.valid, answer_logprobs=answer_logprobs,
                  masks=masks)
