"""Curriculum collation (COCONUT §3): which steps are language and which are thoughts, per stage.

A training sequence is ``question <bot> [slots] <eot> remaining-steps ### answer <eos>``:
- stage 0 (and mode ``cot``): every step in language, no slot;
- stage k (1 <= k <= max_stage): the first k steps are replaced by k x thoughts_per_step slots
  (k slots even when the example has fewer than k steps, as the paper's code does);
- the final stage (max_stage + 1): every step is dropped, max_stage x c slots (or
  min(steps, max_stage) x c with ``pad_to_max=False``, the paper's non-padded variant);
- ``no_cot``: no steps and no slots; ``pause``: the same slots as coconut but filled with the
  ordinary ``<pause>`` token instead of continuous thoughts ("pause as thought").
Labels cover only the remaining steps, the answer and EOS. Batches are aligned so that every
example's ``<bot>`` falls on one column (left padding, as the paper's collator does): the latent
LM's thought loop then handles all examples of a batch with one pass per thought.

    tok = tokenize_example(example, tokenizer)
    seq = build_sequence(tok, stage=2, cfg=curriculum_cfg, special=special, rng=random.Random(0))
    batch = collate([seq, ...], pad_id=special.pad)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from coconav.config import CurriculumConfig
from coconav.data.prosqa import graph_of
from coconav.data.records import Example
from coconav.data.tokenizer import unknown_words
from coconav.errors import InputError
from coconav.tokens import SpecialTokens

IGNORE = -100
ANSWER_MARKER = "### "
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example's parts.

    question: question + newline (with the tokenizer's BOS if it adds one); steps: each step +
    newline; answer: '### ' + answer + EOS; step_targets: the first token of each step's result
    (thought-loss target); answer_target: the first token of the answer's result (its number, or the last
    word of a text answer: 'Tom is a lempus.' -> 'lempus'); frontier_targets: for questions that carry a graph
    (ProsQA records), the first tokens of the concepts at each BFS depth 1, 2, ... from the question's person
    (the thought-loss targets of ``curriculum.thought_target: frontier``), else empty.
    """

    question: list[int]
    steps: list[list[int]]
    answer: list[int]
    step_targets: list[int]
    answer_target: int
    difficulty: int
    frontier_targets: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class Sequence:
    """One training sequence. ids, labels and thought_targets have equal length; a thought target is a token
    id, or a tuple of ids (a set: the thought should spread its probability over all of them)."""

    ids: list[int]
    labels: list[int]
    thought_targets: list[int | tuple[int, ...]]
    stage: int


@dataclass
class Batch:
    """A collated batch aligned on <bot>. Shape: every tensor [B, T]; thought_targets [B, T, S] when some thought
    has a set of targets (S the largest set, padded with -100)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    thought_targets: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels, self.thought_targets)))


def step_result(step: str) -> str:
    """The result a reasoning step establishes: the bare-number side of its '=' (GSM8K notes, either
    order), else its last word ('Every A is a B.' -> 'B')."""
    text = step.strip().removeprefix("<<").removesuffix(">>").strip()
    if "=" in text:
        left, right = (part.strip() for part in text.rsplit("=", 1))
        if _NUMBER.match(right.replace(",", "")):
            return right
        if _NUMBER.match(left.replace(",", "")):
            return left
        return right or left
    words = re.findall(r"[\w.\-]+", text.rstrip(".?!"))
    return words[-1] if words else text


def _encode(tokenizer, text: str, special: bool = False) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special))


def encode_question(tokenizer, question: str) -> list[int]:
    """Token ids of a question as every prompt starts (with the tokenizer's BOS, ending in a newline).

    A word-level tokenizer (built-in tasks) has no id for a word it never saw: InputError naming the
    words, rather than a silent ``<unk>`` and a confident answer to a different question."""
    ids = _encode(tokenizer, question.strip() + "\n", special=True)
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        words = unknown_words(tokenizer, question)
        if words:
            shown = ", ".join(repr(word) for word in words[:10]) + (
                f" and {len(words) - 10} more" if len(words) > 10 else ""
            )
            short = question.strip() if len(question.strip()) <= 60 else question.strip()[:57] + "..."
            raise InputError(
                f"words this model does not know: {shown} (its vocabulary holds only the words of its "
                f"task or training data; in the question {short!r})"
            )
    return ids


def tokenize_example(example: Example, tokenizer) -> TokenizedExample:
    """Tokenize the parts of an example the way the paper does (question and steps end in a newline)."""
    return tokenize_examples([example], tokenizer)[0]


def tokenize_examples(examples: list[Example], tokenizer) -> list[TokenizedExample]:
    """tokenize_example for many examples, with one batched tokenizer call per kind of text (the
    tokenizer's Rust backend does the work; a call per text would cost ~50 us of Python each)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def batch(texts: list[str], special: bool = False) -> list[list[int]]:
        if not texts:
            return []
        if backend is not None:  # the Rust tokenizer directly: no per-text Python objects
            return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=special)]
        return list(tokenizer(texts, add_special_tokens=special)["input_ids"])

    questions = batch([ex.question.strip() + "\n" for ex in examples], special=True)
    all_steps = [s for ex in examples for s in ex.steps]
    steps = iter(batch([s.strip() + "\n" for s in all_steps]))
    results = iter(batch([step_result(s) for s in all_steps]))
    answers = batch([ANSWER_MARKER + ex.answer.strip() for ex in examples])
    answer_firsts = batch([step_result(ex.answer) for ex in examples])
    layers = [frontier_words(ex) for ex in examples]
    words = iter(batch([w for ex_layers in layers for layer in ex_layers for w in layer]))
    eos = tokenizer.eos_token_id
    out = []
    for ex, q, a, af, ex_layers in zip(examples, questions, answers, answer_firsts, layers):
        ex_steps = [next(steps) for _ in ex.steps]
        targets = [(r[0] if r else eos) for r in (next(results) for _ in ex.steps)]
        frontier = tuple(tuple(sorted({ids[0] for ids in (next(words) for _ in layer) if ids})) for layer in ex_layers)
        out.append(
            TokenizedExample(
                list(q),
                [list(s) for s in ex_steps],
                list(a) + [eos],
                targets,
                af[0] if af else eos,
                ex.difficulty,
                frontier,
            )
        )
    return out


def frontier_words(example: Example) -> list[list[str]]:
    """The concepts at BFS depth 1, 2, ... from the question's person, for a question that carries its graph
    (ProsQA's ``idx_to_symbol``/``edges``/``root``); [] otherwise. The COCONUT paper (§5) reads thought i as
    this frontier held in superposition."""
    graph = graph_of(example)
    if graph is None:
        return []
    depths = graph.distances()
    deepest = max(d for d in depths if d is not None)
    return [[w for w, d in zip(graph.symbols, depths) if d == layer] for layer in range(1, deepest + 1)]


def stage_layout(num_steps: int, stage: int, cfg: CurriculumConfig) -> tuple[int, int]:
    """(language steps dropped, slots) for an example with `num_steps` steps at `stage`."""
    c = cfg.thoughts_per_step
    if cfg.mode == "no_cot":
        return num_steps, 0
    if cfg.mode == "cot" or stage == 0:
        return 0, 0
    if stage > cfg.max_stage:  # the final stage: every step in latent space
        slots = cfg.max_stage if cfg.pad_to_max else min(num_steps, cfg.max_stage)
        return num_steps, slots * c
    return min(stage, num_steps), stage * c


def sample_stage(num_steps: int, stage: int, cfg: CurriculumConfig, rng: random.Random) -> int:
    """The stage an example is drawn at: `stage`, or with probability mix_prob another one."""
    if cfg.mode not in ("coconut", "pause") or cfg.mix_prob <= 0 or rng.random() >= cfg.mix_prob:
        return stage
    if cfg.mix_from == "lower":
        return rng.randrange(stage) if stage > 0 else 0
    return rng.randrange(num_steps + 1)  # the paper: uniform over 0..len(steps)


def build_sequence(
    ex: TokenizedExample, stage: int, cfg: CurriculumConfig, special: SpecialTokens, rng: random.Random | None = None
) -> Sequence:
    """The training sequence of `ex` at `stage` (with curriculum mixing when `rng` is given)."""
    if rng is not None:
        stage = sample_stage(len(ex.steps), stage, cfg, rng)
    dropped, slots = stage_layout(len(ex.steps), stage, cfg)
    slot_id = special.pause if cfg.mode == "pause" else special.thought
    head = ex.question + [special.bot] + [slot_id] * slots + [special.eot]
    tail = [t for step in ex.steps[dropped:] for t in step] + ex.answer
    ids = head + tail
    labels = [IGNORE] * len(head) + tail
    targets = [IGNORE] * len(ids)
    if cfg.mode == "coconut":
        c = cfg.thoughts_per_step
        first = len(ex.question) + 1
        frontier = ex.frontier_targets if cfg.thought_target == "frontier" else ()
        for j in range(slots):
            step = j // c
            if frontier:
                targets[first + j] = frontier[step] if step < len(frontier) else (ex.answer_target,)
            else:
                targets[first + j] = ex.step_targets[step] if step < min(dropped, len(ex.steps)) else ex.answer_target
    return Sequence(ids=ids, labels=labels, thought_targets=targets, stage=stage)


def collate(seqs: list[Sequence], special: SpecialTokens) -> Batch:
    """Pad a list of sequences into a batch whose <bot> tokens share one column."""
    bots = [s.ids.index(special.bot) for s in seqs]
    lead = max(bots)
    width = max(lead - b + len(s.ids) for b, s in zip(bots, seqs))
    B = len(seqs)
    input_ids = torch.full((B, width), special.pad, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    labels = torch.full((B, width), IGNORE, dtype=torch.long)
    set_size = max((len(t) for s in seqs for t in s.thought_targets if isinstance(t, tuple)), default=0)
    targets = torch.full((B, width, set_size) if set_size else (B, width), IGNORE, dtype=torch.long)
    for i, (b, s) in enumerate(zip(bots, seqs)):
        a = lead - b
        n = len(s.ids)
        input_ids[i, a : a + n] = torch.tensor(s.ids)
        mask[i, a : a + n] = 1
        labels[i, a : a + n] = torch.tensor(s.labels)
        if not set_size:
            targets[i, a : a + n] = torch.tensor(s.thought_targets)
            continue
        for j, t in enumerate(s.thought_targets):
            members = t if isinstance(t, tuple) else (t,)
            targets[i, a + j, : len(members)] = torch.tensor(members)
    return Batch(input_ids, mask, labels, targets)


def build_prompt(question: list[int], mode: str, num_thoughts: int, special: SpecialTokens) -> list[int]:
    """The evaluation prompt after the question's ids. coconut: ends with <bot> (thoughts are
    generated); pause: <bot>, the pauses and <eot>; cot / no_cot: <bot><eot>. The answer (and any
    remaining steps) is generated."""
    if mode == "coconut":
        return question + [special.bot]
    if mode == "pause":
        return question + [special.bot] + [special.pause] * num_thoughts + [special.eot]
    if mode in ("cot", "no_cot"):
        return question + [special.bot, special.eot]
    raise InputError(f"unknown mode {mode!r}")
