"""Tests of coconav.data.scoring: the text rule and the dispatch evaluation and rewards use."""

from __future__ import annotations

import pytest

from coconav.data.readers import read_coconut_json
from coconav.data.records import Example
from coconav.data.scoring import extract_final_text, is_correct_text, score
from coconav.errors import DataError

from conftest import real_data_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("### Sally is a sterpus .", "Sally is a sterpus."),  # decoded tokens leave " ."
        ("steps...\n#### Sally  is\na sterpus.", "Sally is a sterpus."),  # whitespace collapsed
        ("### wrong\n### Tom is a lempus.", "Tom is a lempus."),  # the last marker wins
        ("Sally is a sterpus.", "Sally is a sterpus."),  # no marker: the whole text
        ("  a , b ; c !  ", "a, b; c!"),
        ("###", ""),
    ],
)
def test_extract_final_text(text: str, expected: str) -> None:
    assert extract_final_text(text) == expected


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        ("### Sally is a sterpus .", "Sally is a sterpus.", True),
        (
            "### sally IS a Sterpus",
            "Sally is a sterpus.",
            True,
        ),  # case and one final period ignored
        ("### Sally is a hilpus.", "Sally is a sterpus.", False),
        ("### Sally is a sterpus..", "Sally is a sterpus.", False),  # only ONE period is ignored
        ("### Sally is a sterpus. Bob too.", "Sally is a sterpus.", False),  # extra text is wrong
        ("###", "", False),  # an empty prediction is never right
    ],
)
def test_is_correct_text(completion: str, reference: str, expected: bool) -> None:
    assert is_correct_text(completion, reference) is expected


def test_score_dispatches_on_answer_type() -> None:
    number = Example(question="Q?", steps=("<<9*2=18>>",), answer="18", answer_type="number")
    text = Example(question="Q?", steps=("s",), answer="Sally is a sterpus.", answer_type="text")
    assert score("The answer is $18.00.", number)  # GSM8K rule: numeric comparison
    assert not score("#### 19", number)
    assert score("### Sally is a sterpus .", text)  # text rule
    # A text answer is not compared numerically, and vice versa.
    assert not score("### 18", text)
    assert not score("### eighteen", number)


def test_score_unknown_answer_type() -> None:
    odd = Example(question="Q?", steps=(), answer="x", answer_type="choice")
    with pytest.raises(DataError, match="unknown answer_type 'choice'"):
        score("x", odd)


def test_score_real_prosqa_reference_against_itself() -> None:
    examples = read_coconut_json(real_data_path("prosqa/test.json"))  # skips when COCONAV_TEST_DATA is unset
    # Each answer, emitted the way COCONUT does ("### " + answer), scores as right. The answer
    # of the next example (another entity or category) scores as wrong: only 1 of the 499
    # neighbouring pairs of the real file shares an answer, so well under 10 match.
    assert all(score(f"### {e.answer}", e) for e in examples)
    pairs = zip(examples, examples[1:], strict=False)
    assert sum(score(f"### {b.answer}", a) for a, b in pairs) < 10
