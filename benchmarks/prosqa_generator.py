"""How closely the ProsQA-shaped generator (coconav/data/prosqa.py) follows the real validation file.

For each per-question statistic (coconav.data.prosqa.STATISTICS) it prints the mean over the real validation
questions and over N generated ones, and a two-sample Kolmogorov-Smirnov test (scipy) of the two distributions;
then it checks that no generated question equals a real validation or test question (the test file is read for
that check only, never for a statistic). The table in docs/results/prosqa.md is this script's output.

    python benchmarks/prosqa_generator.py --data PATH/TO/prosqa [--n 3000] [--seed 0]

PATH/TO/prosqa holds valid.json and test.json (the official repository's data/prosqa_valid.json and
data/prosqa_test.json, renamed).
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from scipy.stats import ks_2samp

from coconav.data.prosqa import STATISTICS, STEP_WEIGHTS, generate_prosqa, question_statistics
from coconav.data.readers import read_coconut_json
from coconav.data.splits import normalize_question


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding ProsQA's valid.json and test.json")
    parser.add_argument("--n", type=int, default=3000, help="generated questions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    valid = read_coconut_json(Path(args.data) / "valid.json")
    rng = random.Random(args.seed)
    steps, weights = list(STEP_WEIGHTS), list(STEP_WEIGHTS.values())
    generated = [generate_prosqa(rng, rng.choices(steps, weights)[0]) for _ in range(args.n)]
    real_stats = [question_statistics(ex) for ex in valid]
    gen_stats = [question_statistics(ex) for ex in generated]
    print(f"| statistic | real validation ({len(valid)}) | generated ({args.n}) | KS statistic | KS p-value |")
    print("| --- | --- | --- | --- | --- |")
    for key in STATISTICS:
        real = [s[key] for s in real_stats]
        gen = [s[key] for s in gen_stats]
        test = ks_2samp(real, gen)
        print(
            f"| {key} | {statistics.mean(real):.2f} | {statistics.mean(gen):.2f} | {test.statistic:.3f} "
            f"| {test.pvalue:.3g} |"
        )
    held_out = valid + read_coconut_json(Path(args.data) / "test.json")
    taken = {normalize_question(ex.question) for ex in held_out}
    shared = sum(normalize_question(ex.question) in taken for ex in generated)
    print(f"\ngenerated questions equal to a real validation or test question: {shared} of {args.n} "
          f"(against {len(held_out)} real questions)")  # fmt: skip


if __name__ == "__main__":
    main()
