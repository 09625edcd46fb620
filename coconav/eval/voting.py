"""Untrained vote baselines for multi-trajectory reasoning: K chains per question, then a majority vote.

Three baselines a trained multi-trajectory navigator must beat at equal K:

* ``cot_vote``: self-consistency (Wang et al. 2022, arXiv 2203.11171): K CoT chains sampled at a
  temperature, then a majority vote over their answers. The compute-matched language baseline.
* ``coconut_noise_vote``: the untrained latent test-time-scaling baseline (arXiv 2510.07745): K COCONUT
  trajectories, each fed-back thought perturbed by additive Gaussian noise
  ``sigma * rms(thought) * N(0, 1)`` (``NoiseController``, one random stream per trajectory), then a
  majority vote. ``sigma`` is chosen on the validation split (``select_noise``), never on test.
* ``coconut_sample_vote``: K COCONUT trajectories with plain thoughts and answer tokens sampled at a
  temperature chosen on the validation split, then a majority vote: the latent counterpart of ``cot_vote``.

Each question's prompt is repeated K times (one row per trajectory). Forward passes follow the one
compute rule (``coconav.decode.generate.passes_per_question``): the question's prefill once (the K
chains share their prompt; a shared-prefix run, as navigator_multi does, pays it once, so the
baselines are not charged for this implementation recomputing it), plus every chain's thoughts and
tokens, summed over the K chains (``mean_forward_passes`` per question; ``compute_per_question`` is
the same, as voting adds no arithmetic of its own). ``mean_thoughts`` and ``mean_new_tokens`` are
totals over the K chains. Answers go through the one generation path of evaluation
(``ThoughtPlan`` -> ``question_prompts`` -> ``generate_answers``) and are fused by
``coconav.decode.fusion.fuse`` (majority rule; ties go to the earliest chain).

    res = cot_vote(lm, test, k=5, cfg=EvalConfig(), temperature=0.7, seed=0)
    res.accuracy, res.mean_forward_passes, res.mean_agreement
    row = coconut_noise_vote(lm, validation, test, k=5, num_thoughts=4, cfg=EvalConfig(),
                             grid=(0.0, 0.05, 0.1, 0.2, 0.4), seed=0)
    row["noise_sigma"], row["noise_grid"]   # chosen on validation
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from coconav.config import EvalConfig
from coconav.data.records import Example
from coconav.data.scoring import score
from coconav.decode.fusion import accuracy_coverage, fuse
from coconav.decode.generate import ThoughtPlan, generate_answers, passes_per_question, question_prompts
from coconav.errors import ConfigError
from coconav.eval.evaluate import QuestionMeans, by_difficulty, question_means
from coconav.model.latent_lm import LatentLM, ThoughtDecision

DEFAULT_NOISE_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4)
DEFAULT_TEMPERATURE_GRID: tuple[float, ...] = (0.3, 0.5, 0.7, 1.0)
_SEED_STRIDE = 1_000_003  # keeps (seed, question, trajectory) streams apart


def trajectory_seed(seed: int, question: int, trajectory: int, k: int) -> int:
    """The random stream of one trajectory: a function of (seed, question index, trajectory index) only,
    so a trajectory's draws do not depend on how questions are batched."""
    return (seed * _SEED_STRIDE + question * k + trajectory) % (2**63 - 1)


class NoiseController:
    """A ThoughtController that thinks a fixed number of thoughts and adds Gaussian noise to each one.

    thought' = thought + sigma * rms(thought) * eps, with rms over the hidden dimension per row and
    eps ~ N(0, I) drawn from row b's own ``torch.Generator`` (``generators[b]``). sigma = 0 feeds the
    thoughts unchanged (plain COCONUT). Halting: row b stops after ``num_thoughts`` thoughts.
    """

    def __init__(self, sigma: float, num_thoughts: int, generators: Sequence[torch.Generator]) -> None:
        if sigma < 0:
            raise ConfigError(f"the noise scale sigma must be >= 0, got {sigma}")
        self.sigma, self.num_thoughts, self.generators = float(sigma), int(num_thoughts), list(generators)

    def __call__(self, step: int, hidden: torch.Tensor, thought: torch.Tensor, active: torch.Tensor) -> ThoughtDecision:
        halt = torch.full_like(active, step >= self.num_thoughts)
        if self.sigma == 0.0 or step >= self.num_thoughts:
            return ThoughtDecision(thought=thought, halt=halt)
        if len(self.generators) != thought.shape[0]:
            raise ValueError(f"NoiseController has {len(self.generators)} generators for a batch of {thought.shape[0]}")
        eps = torch.stack([torch.randn(thought.shape[1], generator=g, device=g.device) for g in self.generators])
        rms = thought.float().pow(2).mean(-1, keepdim=True).sqrt()  # [B, 1]
        noisy = thought.float() + self.sigma * rms * eps.to(thought.device)
        return ThoughtDecision(thought=noisy.to(thought.dtype), halt=halt)


@dataclass
class VoteQuestion:
    """One question's K chains and their fused answer."""

    question: str
    reference: str
    difficulty: int
    completions: list[str]
    chain_correct: list[bool]
    fused: str
    correct: bool
    agreement: float
    forward_passes: int
    thoughts: int
    new_tokens: int


@dataclass
class VoteResult(QuestionMeans):
    """A vote baseline over a test set. Means are per question; passes (the shared prefill once), thoughts and
    tokens are summed over the question's K chains (all compute counted). ``mean_chain_accuracy`` is one chain's accuracy
    (the mean over chains), ``best_of_k`` the share of questions some chain got right (an oracle)."""

    mean_trajectories: float
    mean_trajectories_by_difficulty: dict[str, float]
    mean_agreement: float
    mean_chain_accuracy: float
    best_of_k: float
    mean_forward_passes_by_difficulty: dict[str, float] = field(default_factory=dict)
    accuracy_coverage: list[dict[str, float]] = field(default_factory=list)
    questions: list[VoteQuestion] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        """The aggregate numbers (no per-question records), JSON-ready."""
        out = asdict(self)
        out.pop("questions")
        return out


def _aggregate(records: list[VoteQuestion], k: int, seconds: float) -> VoteResult:
    n = max(len(records), 1)
    by_diff = by_difficulty(records)
    correct = torch.tensor([r.correct for r in records], dtype=torch.bool)
    agreement = torch.tensor([r.agreement for r in records], dtype=torch.float64)
    return VoteResult(
        **question_means(records, "thoughts", seconds),
        mean_trajectories=float(k),
        mean_trajectories_by_difficulty={str(d): float(k) for d in by_diff},
        mean_agreement=sum(r.agreement for r in records) / n,
        mean_chain_accuracy=sum(sum(r.chain_correct) / len(r.chain_correct) for r in records) / n,
        best_of_k=sum(any(r.chain_correct) for r in records) / n,
        mean_forward_passes_by_difficulty={
            str(d): sum(r.forward_passes for r in rs) / len(rs) for d, rs in by_diff.items()
        },
        accuracy_coverage=accuracy_coverage(correct, agreement) if records else [],
        questions=records,
    )


def vote_evaluate(
    lm: LatentLM,
    examples: list[Example],
    mode: str,
    k: int,
    cfg: EvalConfig,
    *,
    num_thoughts: int = 0,
    sigma: float = 0.0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> VoteResult:
    """K chains per question (its prompt repeated K times), then a majority vote on the answer.

    mode 'coconut': ``num_thoughts`` thoughts per chain with noise ``sigma`` (``NoiseController``, one
    generator per chain); mode 'cot' / 'no_cot': language chains. In every mode the answer tokens (and a CoT
    chain's steps) are sampled when ``do_sample``, at ``temperature`` / ``top_p`` (one generator per batch, seeded
    from ``seed`` and the batch's index); otherwise greedy.
    ``cfg.batch_size`` counts chains (rows), ``cfg.max_new_tokens`` bounds each chain's answer.
    """
    if k < 1:
        raise ConfigError(f"the number of chains K must be >= 1, got {k}")
    if cfg.max_questions:
        examples = examples[: cfg.max_questions]
    was_training = lm.training
    lm.eval()
    base = question_prompts(lm, [ex.question for ex in examples], ThoughtPlan(mode, num_thoughts))
    rows = [(i, j) for i in range(len(examples)) for j in range(k)]  # row = (question, chain)
    order = sorted(range(len(rows)), key=lambda r: len(base[rows[r][0]]))
    texts: list[str] = [""] * len(rows)
    passes = torch.zeros(len(rows), dtype=torch.long)
    thoughts = torch.zeros(len(rows), dtype=torch.long)
    tokens = torch.zeros(len(rows), dtype=torch.long)
    start = time.perf_counter()
    for b, lo in enumerate(range(0, len(order), cfg.batch_size)):
        idx = order[lo : lo + cfg.batch_size]
        if mode == "coconut":
            gens = [torch.Generator(device=lm.device).manual_seed(trajectory_seed(seed, *rows[r], k)) for r in idx]
            plan = ThoughtPlan(mode, 0, NoiseController(sigma, num_thoughts, gens), max_thoughts=num_thoughts)
        else:
            plan = ThoughtPlan(mode, num_thoughts)
        generator = torch.Generator(device=lm.device).manual_seed(trajectory_seed(seed, b, 0, 1)) if do_sample else None
        out = generate_answers(
            lm, [base[rows[r][0]] for r in idx], plan, cfg.max_new_tokens, do_sample, temperature, top_p, generator
        )
        for j, r in enumerate(idx):
            texts[r] = out.texts[j]
        at = torch.tensor(idx, dtype=torch.long)
        passes[at], thoughts[at], tokens[at] = out.forward_passes.cpu(), out.num_thoughts.cpu(), out.new_tokens.cpu()
    group = torch.tensor([i for i, _ in rows], dtype=torch.long)
    # each chain's passes less its prefill (1): the question's prefill is counted once, below
    question_passes = passes_per_question(passes - 1, group, len(examples))
    answer_types = [examples[i].answer_type for i, _ in rows]
    fused = fuse(texts, torch.zeros(len(rows)), answer_types, rule="majority", group=group) if rows else None
    seconds = time.perf_counter() - start
    records = []
    for i, ex in enumerate(examples):
        chain = range(i * k, (i + 1) * k)
        records.append(
            VoteQuestion(
                question=ex.question,
                reference=ex.answer,
                difficulty=ex.difficulty,
                completions=[texts[r] for r in chain],
                chain_correct=[score(texts[r], ex) for r in chain],
                fused=fused.answers[i],
                correct=score(fused.answers[i], ex),
                agreement=round(float(fused.agreement[i]) * k) / k,
                forward_passes=int(question_passes[i]),
                thoughts=int(thoughts[list(chain)].sum()),
                new_tokens=int(tokens[list(chain)].sum()),
            )
        )
    lm.train(was_training)
    return _aggregate(records, k, seconds)


def cot_vote(
    lm: LatentLM,
    examples: list[Example],
    k: int,
    cfg: EvalConfig,
    temperature: float = 0.7,
    top_p: float = 1.0,
    seed: int = 0,
) -> VoteResult:
    """Self-consistency: K CoT chains sampled at ``temperature`` (and ``top_p``), then a majority vote."""
    return vote_evaluate(lm, examples, "cot", k, cfg, do_sample=True, temperature=temperature, top_p=top_p, seed=seed)


def select_on_validation(
    grid: Sequence[float], run: Callable[[float], VoteResult], what: str
) -> tuple[float, dict[str, dict]]:
    """The value of ``grid`` whose K-vote (``run(value)`` on the validation split) is most accurate (ties: the
    smaller value). Returns (value, {str(value): {accuracy, mean_agreement, mean_chain_accuracy}})."""
    if not grid:
        raise ConfigError(f"the {what} grid is empty: give at least one value")
    table: dict[str, dict] = {}
    best, best_acc = None, -1.0
    for value in sorted(float(v) for v in grid):
        res = run(value)
        table[str(value)] = {
            "accuracy": res.accuracy,
            "mean_agreement": res.mean_agreement,
            "mean_chain_accuracy": res.mean_chain_accuracy,
        }
        if res.accuracy > best_acc:
            best, best_acc = value, res.accuracy
    return float(best), table


def select_noise(
    lm: LatentLM,
    validation: list[Example],
    k: int,
    num_thoughts: int,
    cfg: EvalConfig,
    grid: Sequence[float] = DEFAULT_NOISE_GRID,
    seed: int = 0,
) -> tuple[float, dict[str, dict]]:
    """Pick sigma from ``grid`` by the K-vote accuracy on ``validation`` (ties: the smaller sigma).
    Returns (sigma, {str(sigma): {accuracy, mean_agreement, mean_chain_accuracy}})."""
    if not validation:
        raise ConfigError("choosing the noise scale needs a validation split, and it is empty")
    return select_on_validation(
        grid,
        lambda sigma: vote_evaluate(
            lm, validation, "coconut", k, cfg, num_thoughts=num_thoughts, sigma=sigma, seed=seed
        ),
        "noise",
    )


def coconut_noise_vote(
    lm: LatentLM,
    validation: list[Example],
    test: list[Example],
    k: int,
    num_thoughts: int,
    cfg: EvalConfig,
    grid: Sequence[float] = DEFAULT_NOISE_GRID,
    seed: int = 0,
) -> tuple[VoteResult, dict]:
    """The latent noise baseline: sigma chosen on ``validation`` (``select_noise``), then K noisy COCONUT
    trajectories per ``test`` question and a majority vote. Returns (test result, selection record with
    the grid, each sigma's validation numbers and the chosen sigma)."""
    sigma, table = select_noise(lm, validation, k, num_thoughts, cfg, grid, seed)
    result = vote_evaluate(lm, test, "coconut", k, cfg, num_thoughts=num_thoughts, sigma=sigma, seed=seed)
    return result, {
        "noise_sigma": sigma,
        "noise_grid": [float(s) for s in grid],
        "noise_validation": table,
        "noise_selected_on": "validation",
    }


def coconut_sample_vote(
    lm: LatentLM,
    validation: list[Example],
    test: list[Example],
    k: int,
    num_thoughts: int,
    cfg: EvalConfig,
    grid: Sequence[float] = DEFAULT_TEMPERATURE_GRID,
    top_p: float = 1.0,
    seed: int = 0,
) -> tuple[VoteResult, dict]:
    """The latent sampling baseline: K COCONUT trajectories per question with plain thoughts (``num_thoughts``,
    as fixed-count COCONUT) and sampled answer tokens, then a majority vote. The temperature is chosen from
    ``grid`` on ``validation`` (the best K-vote accuracy; ties: the lower temperature), then used on ``test``.
    Returns (test result, selection record with the grid, each temperature's validation numbers and the choice)."""
    if not validation:
        raise ConfigError("choosing the sampling temperature needs a validation split, and it is empty")
    if any(t <= 0 for t in grid):
        raise ConfigError(f"every sampling temperature must be > 0, got {list(grid)}")

    def run(examples: list[Example], temperature: float) -> VoteResult:
        return vote_evaluate(
            lm,
            examples,
            "coconut",
            k,
            cfg,
            num_thoughts=num_thoughts,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )

    temperature, table = select_on_validation(grid, lambda t: run(validation, t), "temperature")
    return run(test, temperature), {
        "temperature": temperature,
        "temperature_grid": [float(t) for t in grid],
        "top_p": top_p,
        "temperature_validation": table,
        "temperature_selected_on": "validation",
    }
