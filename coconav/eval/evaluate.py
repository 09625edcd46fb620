"""Evaluation: accuracy, accuracy by difficulty, thoughts used, tokens, forward passes, latency.

The number of thoughts per question is a fixed count (the last trained stage's, or an argument)
or a controller's halting decision — never the test example's own number of gold steps (the
paper's code does that; it tells the model how hard each problem is).

Forward passes per question: the prompt's prefill counts one (once per question, however many
trajectories share it), each thought one, each generated token one (the pass over the forced <eot>
produces the first answer token): the rule of ``coconav.decode.generate.passes_per_question``.
``compute_per_question`` adds the navigator's own arithmetic in LM-pass equivalents (``navigator_cost``:
its parameters used per thought step / the LM's parameters, times the steps it ran; the K-selector's
once per question with K "auto"), the axis of the compute frontier (``coconav.eval.frontier``).

    result = evaluate(lm, examples, mode="coconut", num_thoughts=6, cfg=EvalConfig())
    print(result.summary())

Every answer comes from the one generation path of ``coconav.decode.generate``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import pairwise

import torch

from coconav.common import progress
from coconav.config import EvalConfig
from coconav.data.records import Example
from coconav.data.scoring import score
from coconav.decode.controller import NavigatorController
from coconav.decode.fusion import accuracy_coverage
from coconav.decode.generate import (
    ThoughtPlan,
    generate_answers,
    multi_answers,
    navigator_prompts,
    question_prompts,
)
from coconav.decode.settings import NavigatorSettings, resolve_settings
from coconav.errors import InputError
from coconav.eval.frontier import frontier, length_rule_report, question_options, record_compute
from coconav.model.latent_lm import LatentLM, ThoughtController
from coconav.model.navigator import Navigator


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
    compute: float | None = None  # forward passes + the navigator's arithmetic in LM passes (None: = forward_passes)


@dataclass
class QuestionMeans:
    """The aggregates every evaluation reports, as `question_means` computes them (means per question)."""

    accuracy: float
    accuracy_by_difficulty: dict[str, float]
    mean_thoughts: float
    mean_new_tokens: float
    mean_forward_passes: float
    compute_per_question: float
    seconds_per_question: float
    num_questions: int


@dataclass
class EvalResult(QuestionMeans):
    """Aggregates over a test set (means per question) and the per-question records."""

    mean_thoughts_by_difficulty: dict[str, float] = field(default_factory=dict)
    questions: list[QuestionResult] = field(default_factory=list, repr=False)
    multi: dict | None = field(default=None, repr=False)  # K > 1: trajectories, agreement, fusion (see evaluate_multi)

    def summary(self) -> dict:
        """The aggregate numbers (no per-question records), JSON-ready."""
        out = asdict(self)
        out.pop("questions")
        multi = out.pop("multi")
        if multi is not None:
            out.update({k: v for k, v in multi.items() if k != "per_question"})
        return out

    def to_json(self, with_questions: bool = True) -> dict:
        out = self.summary()
        if with_questions:
            out["questions"] = [asdict(q) for q in self.questions]
            if self.multi is not None:
                for q, extra in zip(out["questions"], self.multi["per_question"]):
                    q.update(extra)
        return out


def by_difficulty(records: list) -> dict[int, list]:
    """Records grouped by their `difficulty`, in increasing order."""
    groups: dict[int, list] = defaultdict(list)
    for r in records:
        groups[r.difficulty].append(r)
    return dict(sorted(groups.items()))


def question_means(records: list, thoughts: str, seconds: float) -> dict:
    """The fields of QuestionMeans: accuracy (overall and by difficulty), mean thoughts (the
    records' attribute `thoughts`), answer tokens, forward passes and compute (record_compute) per question,
    seconds per question."""
    n = max(len(records), 1)
    return {
        "accuracy": sum(r.correct for r in records) / n,
        "accuracy_by_difficulty": {
            str(d): sum(r.correct for r in rs) / len(rs) for d, rs in by_difficulty(records).items()
        },
        "mean_thoughts": sum(getattr(r, thoughts) for r in records) / n,
        "mean_new_tokens": sum(r.new_tokens for r in records) / n,
        "mean_forward_passes": sum(r.forward_passes for r in records) / n,
        "compute_per_question": sum(record_compute(r) for r in records) / n,
        "seconds_per_question": seconds / n,
        "num_questions": len(records),
    }


@dataclass
class NavigatorCost:
    """A navigator's arithmetic in LM forward-pass equivalents (its parameters used / the LM's parameters, embeddings
    included on both sides): `step` per thought step of one trajectory (every head, the memories' parameters and,
    with persistent memory on, its stored keys: a read compares the state with each), `selector` once per question
    (the K-selector, with K "auto"). Zero for a fixed thought count."""

    step: float = 0.0
    selector: float = 0.0


def navigator_cost(lm: LatentLM, navigator: Navigator) -> NavigatorCost:
    """The NavigatorCost of `navigator` on `lm` (see there)."""
    lm_params = sum(p.numel() for p in lm.parameters())
    selector = sum(p.numel() for name, p in navigator.named_parameters() if name.startswith("selector."))
    step = sum(p.numel() for p in navigator.parameters()) - selector
    if navigator.bank is not None and navigator.use_persistent:
        step += navigator.bank.keys.numel()
    return NavigatorCost(step=step / lm_params, selector=selector / lm_params)


def aggregate(records: list[QuestionResult], seconds: float) -> EvalResult:
    """Means over questions, and accuracy and thoughts grouped by difficulty."""
    return EvalResult(
        **question_means(records, "num_thoughts", seconds),
        mean_thoughts_by_difficulty={
            str(d): sum(r.num_thoughts for r in rs) / len(rs) for d, rs in by_difficulty(records).items()
        },
        questions=records,
    )


def evaluate(
    lm: LatentLM,
    examples: list[Example],
    mode: str,
    num_thoughts: int,
    cfg: EvalConfig,
    controller: ThoughtController | None = None,
    max_thoughts: int | None = None,
    seed: int = 0,
    show_progress: bool = False,
    prompts: list[list[int]] | None = None,
    cost: NavigatorCost | None = None,
) -> EvalResult:
    """Generate an answer for every example and score it with the task's rule (coconav.data.scoring).

    `prompts` replaces the mode's prompts (e.g. a chat template for a zero-shot baseline). `cost`: the
    controller's arithmetic (a navigator's), added to each question's compute once per controller call
    (the controller sees every state: thoughts + 1 calls)."""
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
        idx = order[lo : lo + cfg.batch_size]
        out = generate_answers(
            lm,
            [prompts[i] for i in idx],
            plan,
            cfg.max_new_tokens,
            cfg.do_sample,
            cfg.temperature,
            cfg.top_p,
            generator,
        )
        for j, i in enumerate(idx):
            ex = examples[i]
            # pause tokens are part of the prompt but each costs a sequential position like a thought
            used = int(out.num_thoughts[j]) if mode == "coconut" else (num_thoughts if mode == "pause" else 0)
            records[i] = QuestionResult(
                question=ex.question,
                reference=ex.answer,
                completion=out.texts[j],
                correct=score(out.texts[j], ex),
                difficulty=ex.difficulty,
                num_thoughts=used,
                new_tokens=int(out.new_tokens[j]),
                forward_passes=int(out.forward_passes[j]),
                compute=float(out.forward_passes[j]) + (cost.step * (used + 1) if cost else 0.0),
            )
    seconds = time.perf_counter() - start
    lm.train(was_training)
    return aggregate([r for r in records if r is not None], seconds)


def evaluate_navigator(
    lm: LatentLM,
    navigator: Navigator,
    examples: list[Example],
    cfg: EvalConfig,
    settings: NavigatorSettings | None = None,
    seed: int = 0,
    show_progress: bool = False,
) -> EvalResult:
    """Evaluate the navigator at K = 1: one lone trajectory per question (index 0), deciding (greedily) when to halt
    and how to steer each thought. Its group read has no peers to see: it reads the null slot only, which a
    navigator trained with K > 1 and group memory never met in training (there every trajectory had peers), so
    this row measures that navigator used alone, not trajectory 0 of a group (evaluate_multi reports that one).
    `settings` (resolve_settings at K = 1; None: the navigator's config): settings.memory=False switches every
    memory off (episodic, persistent and the group read), settings.steer=False keeps halting only, and
    settings.halt_threshold is where its halting stops."""
    settings = settings or resolve_settings(navigator.cfg)
    saved = navigator.use_persistent, navigator.use_episodic, navigator.use_group, navigator.training
    navigator.use_persistent = navigator.use_episodic = navigator.use_group = settings.memory
    navigator.eval()
    try:
        controller = NavigatorController(navigator, sample=False, settings=settings)
        return evaluate(
            lm,
            examples,
            "coconut",
            0,
            cfg,
            controller=controller,
            max_thoughts=navigator.cfg.max_thoughts,
            seed=seed,
            show_progress=show_progress,
            cost=navigator_cost(lm, navigator),
        )
    finally:
        navigator.use_persistent, navigator.use_episodic, navigator.use_group = saved[:3]
        navigator.train(saved[3])


def fixed_count_results(
    lm: LatentLM,
    examples: list[Example],
    thoughts: list[int],
    cfg: EvalConfig,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[int, EvalResult]:
    """Fixed-count COCONUT at every k of `thoughts` on `examples`: k -> its EvalResult (per-question records in
    the examples' order). The frontier's sweep and the halting head's cold start read the same records."""
    return {k: evaluate(lm, examples, "coconut", k, cfg, seed=seed, show_progress=show_progress) for k in thoughts}


def sweep_thoughts(
    lm: LatentLM,
    examples: list[Example],
    thoughts: list[int],
    cfg: EvalConfig,
    seed: int = 0,
    with_difficulty: bool = True,
    show_progress: bool = False,
    fit_examples: list[Example] | None = None,
    length_bins: int = 4,
    rule_by_difficulty: bool | None = None,
) -> dict:
    """Fixed-count COCONUT at every k of `thoughts` on `examples`, and the compute frontier they span
    (coconav.eval.frontier.frontier: points, envelope, oracle, and with_difficulty the difficulty oracle);
    each point also reports its mean_forward_passes and accuracy_by_difficulty.

    `fit_examples` (the validation split): the same counts on them fit the length rule (length_rule_report: one
    budget per difficulty with_difficulty, else per bin of `length_bins` question-length bins), which is then applied
    to `examples`: `length_rule` and `length_rule_fit` (its `in_sample` true when `fit_examples` is `examples`
    itself, measured once). None, or no fit example: no length rule. `rule_by_difficulty` (default: with_difficulty)
    groups the rule by difficulty; False where the question hides its difficulty (ProsQA), whose rule must then
    read the question's length only."""
    results = fixed_count_results(lm, examples, thoughts, cfg, seed, show_progress)
    first = results[thoughts[0]].questions
    front = frontier(
        question_options({k: r.questions for k, r in results.items()}),
        [q.difficulty for q in first] if with_difficulty else None,
    )
    for point in front["points"]:
        res = results[point["num_thoughts"]]
        point.update(mean_forward_passes=res.mean_forward_passes, accuracy_by_difficulty=res.accuracy_by_difficulty)
    if fit_examples:
        in_sample = fit_examples is examples
        fit = results if in_sample else fixed_count_results(lm, fit_examples, thoughts, cfg, seed, show_progress)
        rule = length_rule_report(
            {k: r.questions for k, r in fit.items()},
            {k: r.questions for k, r in results.items()},
            by_difficulty=with_difficulty if rule_by_difficulty is None else rule_by_difficulty,
            num_bins=length_bins,
        )
        rule["length_rule_fit"]["in_sample"] = in_sample
        front.update(rule)
    return front


@dataclass
class ThresholdChoice:
    """The halting threshold chosen for a compute budget, and what each threshold tried gave (threshold,
    accuracy, mean_forward_passes, mean_thoughts) on the split it was chosen on."""

    threshold: float
    budget: float
    fits: bool
    tried: list[dict]


def choose_halt_threshold(
    lm: LatentLM,
    navigator: Navigator,
    examples: list[Example],
    cfg: EvalConfig,
    budget: float,
    grid: list[float],
    seed: int = 0,
    num_trajectories: int = 1,
    fusion: str = "majority",
    refine: int = 0,
) -> ThresholdChoice:
    """The halting threshold for a budget of mean forward passes per question, chosen on `examples` (the
    validation split, never the test split): the navigator is evaluated at every threshold of `grid` as it will be
    used (K = 1 greedy, or K trajectories fused by `fusion`, every trajectory's passes counted); the most accurate
    threshold whose mean passes fit the budget wins (ties: fewer passes); when none fits, the one with the fewest
    passes.

    `refine` > 0: two adjacent grid thresholds, one within the budget and one above it, bracket the point where the
    budget is crossed (budget_bracket); `refine` bisection steps (in logit space, each one more evaluation) narrow
    that bracket, so a budget that falls in a coarse gap of the grid is spent rather than left unused. Every threshold
    evaluated is in `tried`, and the choice is made over all of them by the rule above."""

    def measure(threshold: float) -> dict:
        settings = NavigatorSettings(halt_threshold=threshold, num_trajectories=num_trajectories)
        res = (
            evaluate_navigator(lm, navigator, examples, cfg, settings=settings, seed=seed)
            if num_trajectories == 1
            else evaluate_multi(lm, navigator, examples, cfg, settings, fusion, seed=seed)
        )
        return {
            "threshold": threshold,
            "accuracy": res.accuracy,
            "mean_forward_passes": res.mean_forward_passes,
            "mean_thoughts": res.mean_thoughts,
            "compute_per_question": res.compute_per_question,
        }

    tried = [measure(threshold) for threshold in sorted(set(grid))]
    bracket = budget_bracket(tried, budget)
    for _ in range(refine if bracket else 0):
        inside, outside = bracket
        mid = torch.sigmoid((torch.logit(torch.tensor(inside)) + torch.logit(torch.tensor(outside))) / 2).item()
        if mid in (inside, outside):
            break
        point = measure(mid)
        tried.append(point)
        bracket = (mid, outside) if point["mean_forward_passes"] <= budget else (inside, mid)
    tried.sort(key=lambda t: t["threshold"])
    best = best_within_budget(tried, budget)
    return ThresholdChoice(
        threshold=best["threshold"], budget=budget, fits=best["mean_forward_passes"] <= budget, tried=tried
    )


def best_within_budget(tried: list[dict], budget: float) -> dict:
    """The most accurate point whose mean passes fit the budget (ties: fewer passes); none fits: the fewest passes."""
    fitting = [t for t in tried if t["mean_forward_passes"] <= budget]
    if fitting:
        return max(fitting, key=lambda t: (t["accuracy"], -t["mean_forward_passes"]))
    return min(tried, key=lambda t: t["mean_forward_passes"])


def budget_bracket(tried: list[dict], budget: float) -> tuple[float, float] | None:
    """(fitting threshold, over-budget threshold): two thresholds adjacent in `tried` (sorted by threshold) whose mean
    passes straddle the budget, one within it and one above, so the crossing lies between them; None when no adjacent
    pair straddles it (nothing fits, or everything does). Where validation noise makes passes cross the budget more
    than once, the pair whose fitting threshold is the most accurate (ties: more passes). The bracket need not hold
    the best fitting threshold: a noisy point elsewhere on the grid may be more accurate than the fitting end of the
    pair, and the budget between the pair is still worth spending."""
    pairs = []
    for a, b in pairwise(tried):
        inside, outside = (a, b) if a["mean_forward_passes"] <= budget else (b, a)
        if inside["mean_forward_passes"] <= budget < outside["mean_forward_passes"]:
            pairs.append((inside, outside))
    if not pairs:
        return None
    inside, outside = max(pairs, key=lambda p: (p[0]["accuracy"], p[0]["mean_forward_passes"]))
    return inside["threshold"], outside["threshold"]


def evaluate_multi(
    lm: LatentLM,
    navigator: Navigator,
    examples: list[Example],
    cfg: EvalConfig,
    settings: NavigatorSettings,
    fusion: str = "majority",
    abstain_below: float = 0.0,
    seed: int = 0,
    show_progress: bool = False,
) -> EvalResult:
    """Evaluate K trajectories per question fused into one answer. Per question, num_thoughts, new_tokens and
    forward_passes count all trajectories. `multi` adds mean_trajectories (by difficulty), agreement, the
    accuracy of trajectory 0 (greedy, reading its peers: not the K = 1 navigator of evaluate_navigator when the
    group read is trained), of any trajectory (oracle) and of all trajectories,
    the accuracy-coverage curve of abstaining below an agreement level, and at `abstain_below` the
    coverage and the accuracy on the answered questions. `settings` (resolve_settings): K, the halting threshold,
    settings.memory=False switches the episodic, group and persistent memory off, settings.steer=False keeps halting
    only."""
    num_trajectories = settings.num_trajectories
    if not 0 <= abstain_below <= 1:
        raise InputError(f"--abstain-below must be in [0, 1], got {abstain_below}")
    if cfg.max_questions:
        examples = examples[: cfg.max_questions]
    saved = navigator.training, lm.training, navigator.use_persistent, navigator.use_episodic, navigator.use_group
    navigator.use_persistent = navigator.use_episodic = navigator.use_group = settings.memory
    navigator.eval()
    lm.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].question))
    records: list[QuestionResult | None] = [None] * len(examples)
    extras: list[dict | None] = [None] * len(examples)
    cost = navigator_cost(lm, navigator)
    selector = cost.selector if num_trajectories == "auto" else 0.0
    start = time.perf_counter()
    try:
        for lo in progress(range(0, len(order), cfg.batch_size), desc="eval", enabled=show_progress):
            idx = order[lo : lo + cfg.batch_size]
            batch = [examples[i] for i in idx]
            prompts = navigator_prompts(lm, [ex.question for ex in batch])
            out = multi_answers(
                lm,
                navigator,
                prompts,
                [ex.answer_type for ex in batch],
                settings,
                fusion,
                cfg.max_new_tokens,
                seed + lo,
            )
            traj = out.run
            right = [score(text, batch[int(g)]) for text, g in zip(out.texts, traj.group)]
            for j, i in enumerate(idx):
                ex, rows = examples[i], (traj.group == j).nonzero().flatten().tolist()
                records[i] = QuestionResult(
                    question=ex.question,
                    reference=ex.answer,
                    completion=out.fused.answers[j],
                    correct=score(out.fused.answers[j], ex),
                    difficulty=ex.difficulty,
                    num_thoughts=int(traj.num_thoughts[rows].sum()),
                    new_tokens=int(traj.new_tokens[rows].sum()),
                    forward_passes=int(out.forward_passes[j]),
                    # the navigator at every state of every trajectory (thoughts + 1 each), the K-selector once
                    compute=float(out.forward_passes[j])
                    + cost.step * (int(traj.num_thoughts[rows].sum()) + len(rows))
                    + selector,
                )
                extras[i] = {
                    "trajectories": len(rows),
                    "agreement": float(out.fused.agreement[j]),
                    "trajectory_answers": [out.texts[r] for r in rows],
                    "trajectory_correct": [right[r] for r in rows],
                    "trajectory_thoughts": [int(traj.num_thoughts[r]) for r in rows],
                    "fusion_weights": [float(out.fused.weights[r]) for r in rows],
                }
    finally:
        navigator.train(saved[0])
        lm.train(saved[1])
        navigator.use_persistent, navigator.use_episodic, navigator.use_group = saved[2:]
    result = aggregate([r for r in records if r is not None], time.perf_counter() - start)
    result.multi = multi_summary(
        result.questions, [e for e in extras if e is not None], num_trajectories, fusion, abstain_below
    )
    return result


def multi_summary(
    records: list[QuestionResult], extras: list[dict], num_trajectories: int | str, fusion: str, abstain_below: float
) -> dict:
    """The multi-trajectory aggregates of evaluate_multi (see there)."""
    n = max(len(records), 1)
    correct = torch.tensor([r.correct for r in records], dtype=torch.bool)
    agreement = torch.tensor([e["agreement"] for e in extras], dtype=torch.float)
    by_diff: dict[int, list[int]] = defaultdict(list)
    for r, e in zip(records, extras):
        by_diff[r.difficulty].append(e["trajectories"])
    answered = agreement >= abstain_below
    covered = int(answered.sum())
    all_right = [c for e in extras for c in e["trajectory_correct"]]
    return {
        "num_trajectories": num_trajectories,
        "fusion": fusion,
        "mean_trajectories": sum(e["trajectories"] for e in extras) / n,
        "mean_trajectories_by_difficulty": {str(d): sum(ks) / len(ks) for d, ks in sorted(by_diff.items())},
        # K "auto": does K rise with difficulty (nan when every question got the same K)
        "spearman_difficulty_trajectories": spearman(
            [r.difficulty for r in records], [e["trajectories"] for e in extras]
        ),
        "mean_agreement": float(agreement.mean()) if len(extras) else float("nan"),
        "first_trajectory_accuracy": sum(e["trajectory_correct"][0] for e in extras) / n,
        "oracle_accuracy": sum(any(e["trajectory_correct"]) for e in extras) / n,
        "trajectory_accuracy": sum(all_right) / max(len(all_right), 1),
        "accuracy_coverage": accuracy_coverage(correct, agreement) if len(extras) else [],
        "abstain_below": abstain_below,
        "coverage": covered / n,
        "selective_accuracy": float(correct[answered].float().mean()) if covered else float("nan"),
        "per_question": extras,
    }


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties, scipy.stats.rankdata); nan when either side is constant
    or has fewer than two values. The Pearson correlation of the ranks is computed here rather than by
    scipy.stats.spearmanr, whose own arithmetic differs in the last bit: reported numbers stay as they were."""
    from scipy.stats import rankdata

    def ranks(values: list[float]) -> torch.Tensor:  # 0-based, as before: rankdata's 1-based ranks minus 1 (exact)
        return torch.from_numpy(rankdata(values, method="average") - 1.0)

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
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{q}\n{instruction}"}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
        for q in questions
    ]
