"""Answer generation: the one path from questions to answers, for evaluation and for inference.

A ``ThoughtPlan`` (mode, and a fixed thought count or a controller) -> ``question_prompts`` ->
``generate_answers``; ``navigator_prompts`` are the prompts a navigator starts from, in training and inference. With a navigator and K > 1 (or K = "auto") trajectories per question, the one
path is ``multi_answers``: ``run_groups`` in inference mode (trajectory 0 greedy, the others steered
at the navigator's inference temperatures, halting and answers greedy), then ``fuse`` by majority,
value or learned-scorer vote.

The compute rule (``passes_per_question``), one for every row of every table: a question's forward passes
are 1 for its prompt's prefill, counted once however many trajectories or chains share it, plus one per
thought and one per answer token of each of them. ``coconav.eval`` adds a navigator's own arithmetic in
LM-pass equivalents to get ``compute_per_question``, the axis of the compute frontier (coconav.eval.frontier).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coconav.data.curriculum import build_prompt, encode_question
from coconav.decode.fusion import FUSION_RULES, Fused, fuse
from coconav.decode.groups import GroupRun, run_groups
from coconav.decode.settings import NavigatorSettings, check_trajectories
from coconav.errors import InputError
from coconav.model.latent_lm import GenerationOutput, LatentLM, ThoughtController
from coconav.model.navigator import Navigator


@dataclass
class ThoughtPlan:
    """How a batch of questions thinks: the prompt format (mode) and a fixed thought count, or a controller
    (the navigator, or any ThoughtController such as a recording one) that halts within `max_thoughts`."""

    mode: str
    num_thoughts: int = 0
    controller: ThoughtController | None = None
    max_thoughts: int | None = None

    @property
    def latent_thoughts(self) -> int:
        """Continuous thoughts fed back at a fixed count (0 with a controller: it decides; 0 outside coconut)."""
        return self.num_thoughts if self.mode == "coconut" and self.controller is None else 0


def question_prompts(lm: LatentLM, questions: list[str], plan: ThoughtPlan) -> list[list[int]]:
    """The prompts of `questions` in the plan's mode; a question longer than the context is an InputError."""
    count = 0 if plan.controller is not None else plan.num_thoughts
    prompts = [build_prompt(encode_question(lm.tokenizer, q), plan.mode, count, lm.special) for q in questions]
    longest = max((len(p) for p in prompts), default=0)
    if longest >= lm.context_length:
        which = "the question" if len(questions) == 1 else "a question"
        raise InputError(f"{which} has {longest} tokens, longer than the model's context of {lm.context_length}")
    return prompts


def navigator_prompts(lm: LatentLM, questions: list[str]) -> list[list[int]]:
    """The prompts a navigator thinks from (each question's ids, then <bot>): the same in training rollouts
    (coconav.rl.rollout) as at inference and in evaluation, K = 1 or K > 1; the navigator decides the thoughts."""
    return question_prompts(lm, questions, ThoughtPlan("coconut"))


def generate_answers(
    lm: LatentLM,
    prompts: list[list[int]],
    plan: ThoughtPlan,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    return_thoughts: bool = False,
) -> GenerationOutput:
    """The one generation path of evaluation and inference: the plan's thoughts, then the answer."""
    return lm.generate(
        prompts,
        num_thoughts=plan.latent_thoughts,
        controller=plan.controller,
        max_thoughts=plan.max_thoughts if plan.controller is not None else None,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        generator=generator,
        return_thoughts=return_thoughts,
    )


def passes_per_question(work: torch.Tensor, group: torch.Tensor, num_questions: int) -> torch.Tensor:
    """The compute rule: forward passes per question = 1 (the question's prefill, shared by all its trajectories
    or chains and counted once) + the thoughts and answer tokens of every one of them.

    Shape: work [B] (thoughts + answer tokens of each trajectory), group [B] (its question, 0..Q-1) -> [Q] float.
    """
    return 1 + torch.zeros(num_questions).index_add_(0, group.cpu().long(), work.cpu().float())


@dataclass
class MultiAnswers:
    """K trajectories per question and their fusion. texts [B] (each trajectory's answer); forward_passes [Q]:
    the shared prefill once plus every thought and answer token of every trajectory."""

    run: GroupRun
    texts: list[str]
    fused: Fused
    forward_passes: torch.Tensor


def check_multi(num_trajectories: int | str, fusion: str, max_trajectories: int) -> None:
    """One-line InputErrors for the fusion rule and K (names as the CLI flags)."""
    if fusion not in FUSION_RULES:
        raise InputError(f"--fusion must be one of {', '.join(FUSION_RULES)}, got {fusion!r}")
    check_trajectories(num_trajectories, max_trajectories)


def fusion_scores(run: GroupRun, rule: str) -> torch.Tensor:
    """Each trajectory's vote score for `rule`: ones (majority), final value (value), final scorer logit (scorer).
    `run` is a GroupRun, or anything with per-trajectory `group`, `final_values` and `final_scores` (the PPO
    recipe passes its rollout's Trajectories)."""
    if rule == "value":
        return run.final_values.cpu()
    if rule == "scorer":
        return run.final_scores.cpu()
    return torch.ones(len(run.group))


@torch.no_grad()
def multi_answers(
    lm: LatentLM,
    navigator: Navigator,
    prompts: list[list[int]],
    answer_types: list[str],
    settings: NavigatorSettings,
    fusion: str,
    max_new_tokens: int,
    seed: int = 0,
) -> MultiAnswers:
    """K = settings.num_trajectories navigator trajectories per prompt (latent prompts ending with <bot>; inference
    mode), fused into one answer per question by `fusion` over the answer keys of `answer_types` (one per prompt);
    `settings` (resolve_settings) also gives steering and inference halting's threshold."""
    check_multi(settings.num_trajectories, fusion, navigator.cfg.max_trajectories)
    room = lm.context_length - max((len(p) for p in prompts), default=0) - navigator.cfg.max_thoughts - 1
    if room <= 0:
        raise InputError(
            f"a prompt plus {navigator.cfg.max_thoughts} thoughts does not fit the model's context "
            f"of {lm.context_length} positions"
        )
    generator = torch.Generator().manual_seed(seed)
    run = run_groups(
        lm,
        navigator,
        prompts,
        num_trajectories=settings.num_trajectories,
        sample=False,
        explore=True,
        max_new_tokens=min(max_new_tokens, room),
        generator=generator,
        settings=settings,
    )
    texts = [lm.decode_text(seq) for seq in run.answer_ids]
    types = [answer_types[int(g)] for g in run.group]
    fused = fuse(texts, fusion_scores(run, fusion), types, fusion, run.group)
    passes = passes_per_question(run.num_thoughts + run.new_tokens, run.group, len(prompts))
    return MultiAnswers(run=run, texts=texts, fused=fused, forward_passes=passes.long())
