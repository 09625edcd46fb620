"""K trajectories per question in one batch: the model-layer core of rollouts and multi-trajectory inference.

``run_groups`` prefills each question once, expands its KV cache along the batch for its K
trajectories (never recomputed: ``batch_repeat_interleave`` for one K, ``batch_select_indices``
with per-question counts when K varies), runs the thought phase of every trajectory of every
question together under a ``NavigatorController`` (each halts on its own), the forced <eot>, then
decodes the answers. ``coconav.rl.rollout.roll_out`` (PPO) and ``coconav.decode.generate.multi_answers``
(evaluation, inference) both build on it.

K trajectories of a question differ by
- their random streams: with K > 1 (or explicit `seeds`) each row draws its steering noise,
  halting and answer tokens from its own stream (coconav/model/streams.py), so K trajectories
  rolled out together equal K single rollouts given the same seeds; K = 1 without seeds uses the
  batch `generator` exactly as before;
- their exploration temperature: the scheduled temperature times
  ``trajectory_temperatures(K, navigator.temperature_spread)`` (geometric spread, K = 1: x1);
- the navigator's trajectory-index embedding, and what each reads of the others through the group
  memory (navigator.group_memory).
No diversity bonus is added to the reward.

K is an int (1..max_trajectories), per-question counts, or "auto": the K-selector
(``Navigator.success_logits`` on the question key h_0) and ``allocate_trajectories`` spend
navigator.trajectories_budget trajectories per question on average, more on harder questions.
With `explore=True` (inference, not sampling) trajectory 0 takes the mean action and trajectories
1..K-1 sample their steering at ``inference_temperatures``; answers stay greedy, and so does halting unless
navigator.inference_halting is "sample" (trajectories 1..K-1 then draw it from their streams).

    run = run_groups(lm, nav, prompts, num_trajectories=5, sample=True, temperature=1.0,
                     max_new_tokens=16, generator=torch.Generator().manual_seed(0))
    run.group, run.trajectory, run.num_thoughts, run.answer_ids
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coconav.decode.controller import NavigatorController
from coconav.decode.settings import NavigatorSettings
from coconav.model.latent_lm import DecodeState, LatentLM
from coconav.model.navigator import Navigator
from coconav.model.streams import stream_seeds


@dataclass
class GroupRun:
    """What run_groups produced. B = the sum over questions of their K; rows of a question are consecutive.

    Shape: counts [Q]; group, trajectory, num_thoughts, new_tokens, temperature_factors, success_logits
    (the K-selector's, of the row's question) [B]; answer_ids [B, N]; seeds [B] or None; controller:
    the per-step records (states, alive, actions, halt_probs, values, scores: lists over steps of [B, ...]).
    """

    counts: torch.Tensor
    group: torch.Tensor
    trajectory: torch.Tensor
    num_thoughts: torch.Tensor
    answer_ids: torch.Tensor
    new_tokens: torch.Tensor
    temperature_factors: torch.Tensor
    success_logits: torch.Tensor
    seeds: torch.Tensor | None
    controller: NavigatorController

    def at_last_step(self, steps: list[torch.Tensor]) -> torch.Tensor:
        """Each row's entry at its last step (num_thoughts) of per-step records [B] (e.g. controller.values)."""
        stacked = torch.stack(steps, dim=1)
        return stacked.gather(1, self.num_thoughts[:, None].to(stacked.device)).squeeze(1)

    @property
    def final_values(self) -> torch.Tensor:
        """The value estimate at each trajectory's last step. Shape: [B]."""
        return self.at_last_step(self.controller.values)

    @property
    def final_scores(self) -> torch.Tensor:
        """The fusion scorer's logit at each trajectory's last step. Shape: [B]."""
        return self.at_last_step(self.controller.scores)


def repeat_state(state: DecodeState, k: int | torch.Tensor) -> DecodeState:
    """Copies of each question's decoding state: k (int) copies each, copy j of question i at row i*k + j,
    or counts[i] copies of question i (a tensor [Q]), consecutive. The cache is indexed, never recomputed."""
    if isinstance(k, torch.Tensor):
        if bool((k == k[0]).all()):
            return repeat_state(state, int(k[0]))
        index = torch.repeat_interleave(torch.arange(len(k), device=k.device), k).to(state.next_position.device)
        return state.select_rows(index)
    return state if k == 1 else state.repeat_rows(k)


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
        room = k < max_k
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
    state = lm.prefill(prompts, max_new_columns=navigator.cfg.max_thoughts + 1)
    counts = torch.full((len(prompts),), navigator.cfg.max_thoughts, dtype=torch.long, device=lm.device)
    _, thoughts = lm.think(state, counts, return_thoughts=True)
    state.release()
    return navigator.set_thought_scale(thoughts)


def trajectory_counts(
    navigator: Navigator, num_trajectories: int | str | list[int] | torch.Tensor, Q: int, question_keys: torch.Tensor
) -> torch.Tensor:
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
        raise ValueError(
            f"num_trajectories must be in [1, navigator.max_trajectories={cfg.max_trajectories}], "
            f"got {counts.min().item() if bool((counts < 1).any()) else counts.max().item()}"
        )
    return counts


@torch.no_grad()
def run_groups(
    lm: LatentLM,
    navigator: Navigator,
    prompts: list[list[int]],
    *,
    num_trajectories: int | str | list[int] | torch.Tensor = 1,
    sample: bool = True,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    generator: torch.Generator | None = None,
    seeds: torch.Tensor | None = None,
    explore: bool = False,
    settings: NavigatorSettings | None = None,
) -> GroupRun:
    """K trajectories for each prompt (ending with <bot>); see the module docstring. `seeds` [B]: per-row streams;
    `settings`: steering and inference halting's threshold (None: the navigator's config at K = 1; K is
    `num_trajectories`, which may also be per-question counts)."""
    L, cfg = navigator.cfg.max_thoughts, navigator.cfg
    if navigator.needs_thought_scale:
        measure_thought_scale(lm, navigator, prompts)
    state = lm.prefill(prompts, max_new_columns=L + 1 + max_new_tokens)
    success = navigator.success_logits(state.last_hidden.float())  # [Q]
    counts = trajectory_counts(navigator, num_trajectories, len(prompts), state.last_hidden.float())
    state = repeat_state(state, counts)
    group = torch.repeat_interleave(torch.arange(len(prompts)), counts)
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
    if explore and not sample and multi:  # K = 1 everywhere: greedy, exactly as without explore
        explore_t = torch.cat(
            [inference_temperatures(int(k), cfg.inference_temperature, cfg.temperature_spread) for k in counts]
        ).to(dev)
    row_seeds = seeds.to(dev) if seeds is not None else None
    controller = NavigatorController(
        navigator,
        sample,
        row_temperature,
        generator,
        group=group.to(dev) if multi else None,
        trajectory=trajectory.to(dev),
        seeds=row_seeds,
        explore=explore_t,
        settings=settings,
    )
    used, _ = lm.think(state, torch.zeros(B, dtype=torch.long, device=dev), controller=controller, max_thoughts=L)
    answer_ids, new_tokens = lm.decode(
        state, max_new_tokens, do_sample=sample, generator=generator, seeds=row_seeds if sample else None
    )
    state.release()
    return GroupRun(
        counts=counts,
        group=group,
        trajectory=trajectory,
        num_thoughts=used,
        answer_ids=answer_ids,
        new_tokens=new_tokens,
        temperature_factors=factors if multi else torch.ones(B),
        success_logits=success[group.to(success.device)],
        seeds=seeds,
        controller=controller,
    )
