"""Curriculum collation (COCONUT §3): which steps are language and which are thoughts, per stage and mode."""

from __future__ import annotations

import random

import pytest
import torch

from coconav.config import CurriculumConfig
from coconav.data.curriculum import (
    IGNORE,
    build_prompt,
    build_sequence,
    collate,
    sample_stage,
    stage_layout,
    step_result,
    tokenize_example,
    tokenize_examples,
)
from coconav.data.records import Example
from coconav.data.tasks import get_task
from coconav.data.tokenizer import task_tokenizer
from coconav.tokens import SpecialTokens

TOK = task_tokenizer("arithmetic")
SPECIAL = SpecialTokens.from_tokenizer(TOK)
# d = 3: three steps of 7 tokens each (<< r = a op b >>), question 8 tokens ("7 + 5 * 2 - 3 ?")
EX = Example("7 + 5 * 2 - 3 ?", ("<< 2 = 7 + 5 >>", "<< 4 = 2 * 2 >>", "<< 1 = 4 - 3 >>"), "1")
TOKED = tokenize_example(EX, TOK)


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def test_tokenized_parts():
    assert TOKED.question == ids("7 + 5 * 2 - 3 ?")
    assert TOKED.steps == [ids("<< 2 = 7 + 5 >>"), ids("<< 4 = 2 * 2 >>"), ids("<< 1 = 4 - 3 >>")]
    assert TOKED.answer == ids("### 1") + [TOK.eos_token_id]
    assert TOKED.step_targets == ids("2 4 1")  # each step's result, the thought-loss target
    assert TOKED.answer_target == ids("1")[0]


def test_batched_tokenization_equals_one_by_one():
    rng = random.Random(0)
    task = get_task("arithmetic")
    examples = [task.generate(rng, d) for d in (1, 3, 6, 2)]
    assert tokenize_examples(examples, TOK) == [tokenize_example(e, TOK) for e in examples]


@pytest.mark.parametrize(
    "step,result",
    [
        ("<< 2 = 7 + 5 >>", "2"),
        ("<<16-3-4=9>>", "9"),
        ("<<600*.4=240>>", "240"),
        ("Every wumpus is a yerpus.", "yerpus"),
        ("Sally is a rempus.", "rempus"),
    ],
)
def test_step_result(step, result):
    assert step_result(step) == result


def cfg(**kw) -> CurriculumConfig:
    return CurriculumConfig(**{"mode": "coconut", "max_stage": 4, **kw})


@pytest.mark.parametrize(
    "stage,expected",
    [
        (0, (0, 0)),  # stage 0: all steps in language
        (1, (1, 1)),  # stage k: the first k steps replaced by k thoughts
        (3, (3, 3)),
        (4, (3, 4)),  # more slots than steps: k thoughts all the same (the paper's rule), every step dropped
        (5, (3, 4)),  # the final stage (max_stage + 1): every step dropped, max_stage x c thoughts (padded)
    ],
)
def test_stage_layout_coconut(stage, expected):
    assert stage_layout(3, stage, cfg()) == expected


def test_stage_layout_variants():
    assert stage_layout(3, 5, cfg(pad_to_max=False)) == (3, 3)  # not padded: min(steps, max_stage) x c
    assert stage_layout(3, 2, cfg(thoughts_per_step=2)) == (2, 4)
    assert stage_layout(3, 2, cfg(mode="cot")) == (0, 0)
    assert stage_layout(3, 2, cfg(mode="no_cot")) == (3, 0)
    assert stage_layout(3, 2, cfg(mode="pause")) == (2, 2)


def test_sequence_at_stage_two():
    seq = build_sequence(TOKED, 2, cfg(), SPECIAL)
    head = TOKED.question + [SPECIAL.bot, SPECIAL.thought, SPECIAL.thought, SPECIAL.eot]
    assert seq.ids == head + TOKED.steps[2] + TOKED.answer
    # loss only on the remaining step, the answer and EOS
    assert seq.labels == [IGNORE] * len(head) + TOKED.steps[2] + TOKED.answer
    # thought loss targets sit on the slots: results of steps 1 and 2
    slots = [i for i, t in enumerate(seq.ids) if t == SPECIAL.thought]
    assert [seq.thought_targets[i] for i in slots] == TOKED.step_targets[:2]
    assert all(t == IGNORE for i, t in enumerate(seq.thought_targets) if i not in slots)


def test_padding_thoughts_target_the_answer():
    seq = build_sequence(TOKED, 5, cfg(), SPECIAL)  # final stage: 4 slots for 3 steps
    slots = [i for i, t in enumerate(seq.ids) if t == SPECIAL.thought]
    assert len(slots) == 4
    assert [seq.thought_targets[i] for i in slots] == TOKED.step_targets + [TOKED.answer_target]
    assert seq.ids[slots[-1] + 1 :] == [SPECIAL.eot] + TOKED.answer  # <eot> then the answer directly


def test_modes():
    cot = build_sequence(TOKED, 3, cfg(mode="cot"), SPECIAL)
    assert cot.ids == TOKED.question + [SPECIAL.bot, SPECIAL.eot] + sum(TOKED.steps, []) + TOKED.answer
    no_cot = build_sequence(TOKED, 0, cfg(mode="no_cot"), SPECIAL)
    assert no_cot.ids == TOKED.question + [SPECIAL.bot, SPECIAL.eot] + TOKED.answer
    pause = build_sequence(TOKED, 2, cfg(mode="pause"), SPECIAL)
    assert pause.ids.count(SPECIAL.pause) == 2 and SPECIAL.thought not in pause.ids
    assert all(t == IGNORE for t in pause.thought_targets)  # pauses are tokens, not thoughts


def test_no_curriculum_trains_the_final_stage_only():
    assert cfg(no_curriculum=True).stages() == [5]
    assert cfg().stages() == [0, 1, 2, 3, 4, 5]
    assert cfg(start_stage=1).stages() == [1, 2, 3, 4, 5]
    assert cfg(mode="cot").stages() == [0]


def test_mixing():
    rng = random.Random(0)
    assert {sample_stage(3, 2, cfg(), rng) for _ in range(50)} == {2}  # mix_prob 0
    drawn = [sample_stage(3, 4, cfg(mix_prob=1.0, mix_from="lower"), rng) for _ in range(400)]
    assert set(drawn) == {0, 1, 2, 3}  # a lower stage, uniformly
    drawn = [sample_stage(3, 1, cfg(mix_prob=1.0), rng) for _ in range(400)]
    assert set(drawn) == {0, 1, 2, 3}  # the paper: uniform over 0..number of steps
    half = [sample_stage(3, 4, cfg(mix_prob=0.5, mix_from="lower"), rng) == 4 for _ in range(2000)]
    assert 0.45 < sum(half) / len(half) < 0.55


def test_collate_aligns_bot_and_pads():
    short = build_sequence(tokenize_example(Example("3 + 4 ?", ("<< 7 = 3 + 4 >>",), "7"), TOK), 1, cfg(), SPECIAL)
    long = build_sequence(TOKED, 3, cfg(), SPECIAL)
    batch = collate([short, long], SPECIAL)
    bot_cols = (batch.input_ids == SPECIAL.bot).nonzero()[:, 1]
    assert bot_cols.tolist() == [bot_cols[1].item()] * 2  # the same column
    for row, seq in zip(range(2), (short, long)):
        real = batch.attention_mask[row].bool()
        assert batch.input_ids[row][real].tolist() == seq.ids
        assert batch.labels[row][real].tolist() == seq.labels
        assert (batch.labels[row][~real] == IGNORE).all()
    assert batch.input_ids.shape == (
        2,
        int(bot_cols[0]) + max(len(s.ids) - s.ids.index(SPECIAL.bot) for s in (short, long)),
    )
    assert batch.input_ids.dtype == torch.long


def test_prompts():
    q = TOKED.question
    assert build_prompt(q, "coconut", 6, SPECIAL) == q + [SPECIAL.bot]
    assert build_prompt(q, "pause", 2, SPECIAL) == q + [SPECIAL.bot, SPECIAL.pause, SPECIAL.pause, SPECIAL.eot]
    assert build_prompt(q, "cot", 0, SPECIAL) == build_prompt(q, "no_cot", 0, SPECIAL) == q + [SPECIAL.bot, SPECIAL.eot]


def test_encode_question_refuses_unknown_words():
    from coconav.data.curriculum import encode_question
    from coconav.errors import InputError

    tok = task_tokenizer("arithmetic")
    assert tok.unk_token_id not in encode_question(tok, "3 + 4 ?")
    with pytest.raises(InputError) as info:
        encode_question(tok, "what is 3 plus 4?")
    assert str(info.value) == (
        "words this model does not know: 'what', 'is', 'plus' (its vocabulary holds only the "
        "words of its task or training data; in the question 'what is 3 plus 4?')"
    )
