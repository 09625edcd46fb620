"""Scoring of the gsm8k_coconav harness task (gsm8k_coconav.yaml): coconav's one GSM8K answer rule,
the same `is_correct` that `coconav eval` and the RL reward use, so the harness and coconav agree."""

from __future__ import annotations

from coconav.data.gsm8k import is_correct, parse_reference


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """exact_match: 1.0 when the completion's answer equals the number after '####' in doc['answer']."""
    return {"exact_match": float(is_correct(results[0], parse_reference(doc["answer"])))}
