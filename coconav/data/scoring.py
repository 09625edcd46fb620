"""Scoring a completion against an Example: the one function evaluation and rewards import.

Numeric answers (GSM8K-style) use the GSM8K rule of :mod:`coconav.data.gsm8k`; text answers
(ProsQA, ProntoQA in COCONUT, arXiv 2412.06769 §4) are compared as the text after the last
``###`` marker, which COCONUT's models emit before their answer, ignoring case, spacing
before punctuation and one trailing period::

    from coconav.data.scoring import score
    score("### Sally is a sterpus .", example)   # True when example.answer == "Sally is a sterpus."
"""

from __future__ import annotations

import re
from decimal import Decimal

from coconav.data.gsm8k import extract_answer, is_correct
from coconav.data.records import Example
from coconav.errors import DataError

_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([.,;:!?])")
_MARKER = "###"


def extract_final_text(text: str) -> str:
    """The text after the last ``###``/``####`` (all of it if none), whitespace normalised.

    Tokenizers often decode ``"sterpus ."``; the space before punctuation is removed and runs
    of whitespace collapse to one space:
    ``"### Sally is a sterpus ."`` -> ``"Sally is a sterpus."``.
    """
    marker = text.rfind(_MARKER)
    if marker >= 0:
        # rfind of "###" lands inside a "####"; skip any further "#" of the same marker.
        text = text[marker + len(_MARKER) :].lstrip("#")
    text = " ".join(text.split())
    return _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)


def _comparable(text: str) -> str:
    final = extract_final_text(text).casefold()
    return final[:-1].rstrip() if final.endswith(".") else final


def is_correct_text(completion: str, reference: str) -> bool:
    """Whether the final texts are equal ignoring case and one trailing period.

    An empty prediction is never correct, even against an empty reference.
    """
    predicted = _comparable(completion)
    return bool(predicted) and predicted == _comparable(reference)


def answer_key(completion: str, answer_type: str) -> str | None:
    """The final answer of a completion in the form answers are compared in, or None if it states none.

    Two completions that ``score`` would judge the same way against any reference get the same key:
    the canonical number (``"18"`` for ``"### 18.0"``) or the comparable text. Votes count keys.
    """
    if answer_type == "number":
        number = extract_answer(completion)
        if number is None:
            return None
        value = Decimal(number)
        return "0" if value == 0 else format(value.normalize(), "f")
    if answer_type == "text":
        return _comparable(completion) or None
    raise DataError(f"unknown answer_type {answer_type!r} (expected 'number' or 'text')")


def score(completion: str, example: Example) -> bool:
    """Whether ``completion`` answers ``example``: numeric rule or text rule by answer_type."""
    if example.answer_type == "number":
        return is_correct(completion, example.answer)
    if example.answer_type == "text":
        return is_correct_text(completion, example.answer)
    raise DataError(f"unknown answer_type {example.answer_type!r} (expected 'number' or 'text')")
