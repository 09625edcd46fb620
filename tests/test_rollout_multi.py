"""Multi-trajectory rollouts (coconav/rollout.py): K = 1 is today's navigator exactly, K trajectories from
a shared prefix equal K single rollouts given the same random streams, memory-off changes only the
memory read, variable K per question, and the per-trajectory temperatures.

The K = 1 references in tests/golden/rollout_k1.json were recorded with the single-trajectory code
before the multi-trajectory change (same tiny model, navigator and seeds as below).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_rollout import questions, steering_navigator, tiny_lm

GOLDEN = Path(__file__).parent / "golden" / "rollout_k1.json"


def k1_digest(lm, nav, examples, sample: bool, seed: int) -> dict:
    from coconav.rollout import roll_out
    gen = torch.Generator().manual_seed(seed) if sample else None
    traj = roll_out(lm, nav, examples, sample=sample, temperature=1.3, max_new_tokens=6, generator=gen)
    return {"num_thoughts": traj.num_thoughts.tolist(), "texts": traj.texts,
            "actions": [[round(float(v), 5) for v in row] for row in traj.actions.flatten(1)],
            "halt_probs": [[round(float(v), 5) for v in row] for row in traj.halt_probs],
            "values": [[round(float(v), 5) for v in row] for row in traj.values]}


def k1_cases() -> dict:
    lm = tiny_lm()
    nav = steering_navigator()
    examples = questions(6)
    return {"sampled": k1_digest(lm, nav, examples, True, 11), "greedy": k1_digest(lm, nav, examples, False, 0)}


def test_k1_reproduces_the_single_trajectory_navigator_exactly():
    golden = json.loads(GOLDEN.read_text())
    now = k1_cases()
    for case in ("sampled", "greedy"):
        want, got = golden[case], now[case]
        assert got["num_thoughts"] == want["num_thoughts"]
        assert got["texts"] == want["texts"]
        for key in ("actions", "halt_probs", "values"):
            torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(want[key]), atol=2e-5, rtol=0)
    assert any(n > 0 for n in golden["sampled"]["num_thoughts"])  # the reference exercises thoughts and steering


if __name__ == "__main__":  # records the reference (run once, on the code before the change)
    GOLDEN.write_text(json.dumps(k1_cases(), indent=1))
