"""Evaluation: accuracy, accuracy by difficulty, thoughts used, tokens, forward passes, latency.

The number of thoughts per question is a fixed count (the last trained stage's, or an argument)
or a controller's halting decision — never the test example's own number of gold steps (the
paper's code does that; it tells the model how hard each problem is).

Forward passes per question: the prompt's prefill counts one, each thought one, each generated
token one (the pass over the forced <eot> produces the first answer token).

    result = evaluate(lm, examples, mode="coconut", num_thoughts=6, cfg=EvalConfig())
    print(result.summary())

Every answer (here, in coconav.inference and in `coconav eval` / `coconav generate`) comes from one
path: a ``ThoughtPlan`` (mode, fixed count or controller) -> ``question_prompts`` -> ``generate_answers``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch

from coconav.config import EvalConfig
from coconav.data.curriculum import build_prompt, encode_question
from coconav.data.records import Example
from coconav.data.scoring import score
from coconav.common import progress
from coconav.model.controller import NavigatorController
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


def generate_answers(lm: LatentLM, prompts: list[list[int]], plan: ThoughtPlan, max_new_tokens: int,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     generator: torch.Generator | None = None, return_thoughts: bool = False) -> GenerationOutput:
    """The one generation path of evaluation and inference: the plan's thoughts, then the answer."""
    return lm.generate(prompts, num_thoughts=plan.latent_thoughts, controller=plan.controller,
                       max_thoughts=plan.max_thoughts if plan.controller is not None else None,
                       max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                       generator=generator, return_thoughts=return_thoughts)


@dataclass
class QuestionResult:
    """One evaluated question."""

    question: str
    reference: str
    completion: str
    correct: bool
    difficulty: int
    num_thoughts: int
    new_tokens: int
    forward_passes: int


@dataclass
class EvalResult:
    """Aggregates over a test set (means per question) and the per-question records."""

    accuracy: float
    accuracy_by_difficulty: dict[str, float]
    mean_thoughts: float
    mean_new_tokens: float
    mean_forward_passes: float
    seconds_per_question: float
    num_questions: int
    mean_thoughts_by_difficulty: dict[str, float] = field(default_factory=dict)
    questions: list[QuestionResult] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        """The aggregate numbers (no per-question records), JSON-ready."""
        out = asdict(self)
        out.pop("questions")
        return out

    def to_json(self, with_questions: bool = True) -> dict:
        out = self.summary()
        if with_questions:
            out["questions"] = [asdict(q) for q in self.questions]
        return out


def aggregate(records: list[QuestionResult], seconds: float) -> EvalResult:
    """Means over questions, and accuracy and thoughts grouped by difficulty."""
    n = max(len(records), 1)
    by_diff: dict[int, list[QuestionResult]] = defaultdict(list)
    for r in records:
        by_diff[r.difficulty].append(r)
    return EvalResult(
        accuracy=sum(r.correct for r in records) / n,
        accuracy_by_difficulty={str(d): sum(r.correct for r in rs) / len(rs) for d, rs in sorted(by_diff.items())},
        mean_thoughts=sum(r.num_thoughts for r in records) / n,
        mean_new_tokens=sum(r.new_tokens for r in records) / n,
        mean_forward_passes=sum(r.forward_passes for r in records) / n,
        seconds_per_question=seconds / n,
        num_questions=len(records),
        mean_thoughts_by_difficulty={str(d): sum(r.num_thoughts for r in rs) / len(rs) for d, rs in sorted(by_diff.items())},
        questions=records,
    )


def evaluate(lm: LatentLM, examples: list[Example], mode: str, num_thoughts: int, cfg: EvalConfig,
             controller: ThoughtController | None = None, max_thoughts: int | None = None,
             seed: int = 0, show_progress: bool = False, prompts: list[list[int]] | None = None) -> EvalResult:
    """Generate an answer for every example and score it with the task's rule (coconav.data.scoring).

    `prompts` replaces the mode's prompts (e.g. a chat template for a zero-shot baseline)."""
    if cfg.max_questions:
        examples = examples[: cfg.max_questions]
        prompts = prompts[: cfg.max_questions] if prompts is not None else None
    was_training = lm.training
    lm.eval()
    generator = torch.Generator(device=lm.device).manual_seed(seed) if cfg.do_sample else None
    plan = ThoughtPlan(mode, num_thoughts, controller, max_thoughts)
    if prompts is None:
        prompts = question_prompts(lm, [ex.question for ex in examples], plan)
    # Batches of similar prompt length waste less on padding; results are put back in order.
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    records: list[QuestionResult | None] = [None] * len(examples)
    start = time.perf_counter()
    batches = range(0, len(order), cfg.batch_size)
    for lo in progress(batches, desc="eval", enabled=show_progress):
        idx = order[lo: lo + cfg.batch_size]
        out = generate_answers(lm, [prompts[i] for i in idx], plan, cfg.max_new_tokens, cfg.do_sample,
                               cfg.temperature, cfg.top_p, generator)
        for j, i in enumerate(idx):
            ex = examples[i]
            # pause tokens are part of the prompt but each costs a sequential position like a thought
            used = int(out.num_thoughts[j]) if mode == "coconut" else (num_thoughts if mode == "pause" else 0)
            records[i] = QuestionResult(question=ex.question, reference=ex.answer, completion=out.texts[j],
                                        correct=score(out.texts[j], ex), difficulty=ex.difficulty, num_thoughts=used,
                                        new_tokens=int(out.new_tokens[j]), forward_passes=int(out.forward_passes[j]))
    seconds = time.perf_counter() - start
    lm.train(was_training)
    return aggregate([r for r in records if r is not None], seconds)


def evaluate_navigator(lm: LatentLM, navigator: Navigator, examples: list[Example], cfg: EvalConfig, steer: bool = True,
                       persistent_memory: bool = True, episodic_memory: bool = True, seed: int = 0,
                       show_progress: bool = False) -> EvalResult:
    """Evaluate with the navigator deciding (greedily) when to halt and how to steer each thought."""
    saved = navigator.use_persistent, navigator.use_episodic, navigator.training
    navigator.use_persistent, navigator.use_episodic = persistent_memory, episodic_memory
    navigator.eval()
    try:
        controller = NavigatorController(navigator, sample=False, steer=steer)
        return evaluate(lm, examples, "coconut", 0, cfg, controller=controller, max_thoughts=navigator.cfg.max_thoughts,
                        seed=seed, show_progress=show_progress)
    finally:
        navigator.use_persistent, navigator.use_episodic = saved[0], saved[1]
        navigator.train(saved[2])


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    def ranks(values: list[float]) -> torch.Tensor:
        v = torch.tensor(values, dtype=torch.float64)
        order = v.argsort()
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in v.unique():  # ties share their mean rank
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.norm() * ry.norm()).item()
    return float((rx @ ry).item() / denom) if denom > 0 else float("nan")


ZERO_SHOT_INSTRUCTION = "Solve the problem step by step. End with the line 'The answer is N.' where N is a number."


def chat_prompts(tokenizer, questions: list[str], instruction: str = ZERO_SHOT_INSTRUCTION) -> list[list[int]]:
    """Zero-shot prompts through the tokenizer's chat template (an untouched instruct model's own format)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return [list(tokenizer(f"{q}\n{instruction}\n")["input_ids"]) for q in questions]
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": f"{q}\n{instruction}"}],
                                               add_generation_prompt=True, tokenize=True, return_dict=False))
            for q in questions]
