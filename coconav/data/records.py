"""The one record type every reader and built-in task produces.

An ``Example`` is a question, its reasoning steps in language, and the final answer, the
format of the COCONUT paper's data (``[{question, steps, answer}, ...]``, arXiv 2412.06769 §4).
``difficulty`` is the number of reasoning steps unless a task says otherwise; it is used only
to group results (accuracy by difficulty), never to decide how many thoughts a test problem gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One reasoning problem.

    Attributes:
        question: the problem text, never empty.
        steps: the reasoning steps in language, in order (may be empty for answer-only data).
        answer: the final answer as text (a number for GSM8K-style tasks), never empty.
        difficulty: number of reasoning steps, or a task's own difficulty knob.
        answer_type: "number" (scored numerically, GSM8K rule) or "text" (exact match).
    """

    question: str
    steps: tuple[str, ...]
    answer: str
    difficulty: int = -1
    answer_type: str = "number"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.difficulty < 0:
            object.__setattr__(self, "difficulty", len(self.steps))
        if not isinstance(self.steps, tuple):
            object.__setattr__(self, "steps", tuple(self.steps))
