"""Benchmark: navigator rollout throughput, batched (``coconav.rl.rollout.roll_out``) vs one question at a time.

Side by side in one run, on a randomly initialised demo-size model (scratch Llama: hidden 128, 3 layers,
4 heads, MLP 512, the arithmetic task's vocabulary) and a navigator whose halting and steering heads
are redrawn at random, so that halting and steering depend on the state (whether halting then varies
between questions depends on the draw: see ``check.distinct_thought_counts``; the default run uses the
full budget everywhere). The questions come from the built-in arithmetic task (difficulties 1-6).
Nothing is downloaded.

- **batched**: ``roll_out(lm, navigator, questions, num_trajectories=K)``: one prefill per question
  shared by its K trajectories, the thought phase with per-trajectory halting by masks, the answer
  decoded with the KV cache, all questions in one batch;
- **loop**: the same call once per question (a batch of one), the obvious alternative.

Both run greedy (``sample=False``) so that the check is exact: after timing, the script compares the
thought counts and answers of the two.

Then, side by side in the same run, **K trajectories per question** (the aim: K = 5 within 1.6x
the wall time of K = 1): sampled training rollouts (``sample=True``: per-trajectory streams and
temperatures, group memory on) of the same questions with K = 1, 5 and 16 (``--ks``), interleaved
repeats, each question prefilled once and its cache expanded K times. ``multi.ratio_vs_k1`` is the
median seconds of K over those of K = 1; ``mean_thoughts`` says how long the thought phases ran (the
batch steps until its last trajectory halts). The K comparison runs once per generation cache layout
(``--layouts``, default dynamic and static; ``compiled`` adds ``LatentLM.compile_generation``, its first
call untimed as warmup), reported under ``multi_by_layout`` (``multi`` is the first layout's). Prints one
JSON object on stdout (progress on stderr).

    python benchmarks/bench_rollout.py                 # 64 questions, K = 1; then K = 1, 5, 16
    python benchmarks/bench_rollout.py --trajectories 4 --ks 1,5
    python benchmarks/bench_rollout.py --quick         # a smoke test (seconds)
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch
import transformers
from common import add_machine_args, add_model_args, fill_defaults, log, print_result

from coconav.config import ModelConfig, NavigatorConfig
from coconav.data.tasks import get_task
from coconav.data.tokenizer import task_tokenizer
from coconav.model.build import build_latent_lm
from coconav.model.navigator import Navigator
from coconav.rl.rollout import Trajectories, roll_out

DEFAULTS = {
    "ks": "1,5,16",
    "questions": 64,
    "trajectories": 1,
    "max_thoughts": 6,
    "max_new_tokens": 8,
    "repeats": 5,
    "warmup": 1,
    "hidden_size": 128,
    "num_layers": 3,
    "num_heads": 4,
    "intermediate_size": 512,
}
QUICK = {
    "ks": "1,5",
    "questions": 8,
    "repeats": 1,
    "warmup": 0,
    "hidden_size": 32,
    "num_layers": 2,
    "intermediate_size": 64,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and one repeat (a smoke test, seconds)")
    p.add_argument("--questions", type=int, help=f"questions per rollout (default {DEFAULTS['questions']})")
    p.add_argument(
        "--trajectories", type=int, help=f"trajectories per question, K (default {DEFAULTS['trajectories']})"
    )
    p.add_argument(
        "--layouts",
        default="dynamic,static",
        help="generation cache layouts for the K comparison: dynamic, static, compiled (default dynamic,static)",
    )
    p.add_argument("--ks", help=f"K values compared side by side, sampled (default {DEFAULTS['ks']}; '' to skip)")
    p.add_argument(
        "--max-thoughts", type=int, help=f"the navigator's thought budget (default {DEFAULTS['max_thoughts']})"
    )
    p.add_argument("--max-new-tokens", type=int, help=f"answer tokens at most (default {DEFAULTS['max_new_tokens']})")
    add_model_args(p, DEFAULTS, kernels=False)
    p.add_argument("--repeats", type=int, help=f"timed runs of each (default {DEFAULTS['repeats']})")
    p.add_argument("--warmup", type=int, help=f"untimed runs of each first (default {DEFAULTS['warmup']})")
    add_machine_args(p, device=False)
    return fill_defaults(p.parse_args(argv), DEFAULTS, QUICK)


def build(args: argparse.Namespace):
    torch.manual_seed(args.seed)
    cfg = ModelConfig(
        name_or_path="scratch-llama",
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        tie_embeddings=True,
    )
    lm = build_latent_lm(cfg, task_tokenizer("arithmetic")).eval()
    nav = Navigator(args.hidden_size, NavigatorConfig(max_thoughts=args.max_thoughts)).eval()
    with torch.no_grad():  # random heads: halting and steering that depend on the state
        nav.halt_head.weight.normal_(0, 3.0 / nav.halt_head.weight.shape[1] ** 0.5)
        nav.halt_head.bias.fill_(-2.0)
        nav.mean_head.weight.normal_(0, 1.0)
        nav.up.weight.normal_(0, 0.1)
    rng = random.Random(args.seed + 1)
    task = get_task("arithmetic")
    questions = [task.generate(rng, 1 + i % 6) for i in range(args.questions)]
    return lm, nav, questions


@torch.no_grad()
def batched(lm, nav, questions, args) -> list[Trajectories]:
    return [
        roll_out(
            lm, nav, questions, num_trajectories=args.trajectories, sample=False, max_new_tokens=args.max_new_tokens
        )
    ]


@torch.no_grad()
def loop(lm, nav, questions, args) -> list[Trajectories]:
    return [
        roll_out(lm, nav, [q], num_trajectories=args.trajectories, sample=False, max_new_tokens=args.max_new_tokens)
        for q in questions
    ]


@torch.no_grad()
def sampled(lm, nav, questions, args, k: int) -> Trajectories:
    return roll_out(
        lm,
        nav,
        questions,
        num_trajectories=k,
        sample=True,
        max_new_tokens=args.max_new_tokens,
        generator=torch.Generator().manual_seed(args.seed),
    )


def compare_layouts(lm, nav, questions, args) -> dict[str, dict | None]:
    """The K comparison under each generation cache layout (the same weights, navigator and questions)."""
    out = {}
    for layout in [x.strip() for x in args.layouts.split(",") if x.strip()]:
        if layout not in ("dynamic", "static", "compiled"):
            raise SystemExit(f"unknown layout {layout!r} (dynamic, static or compiled)")
        lm.configure_generation("static" if layout != "dynamic" else "dynamic", compile=layout == "compiled")
        if layout == "compiled":  # compile every K's shape before timing
            for k in [int(k) for k in args.ks.split(",") if k.strip()]:
                sampled(lm, nav, questions, args, k)
        out[layout] = compare_k(lm, nav, questions, args)
        log(f"{layout}: K ratios {out[layout] and out[layout]['ratio_vs_k1']}")
    lm.configure_generation("dynamic")
    return out


def compare_k(lm, nav, questions, args) -> dict | None:
    """K trajectories per question vs K = 1, sampled, interleaved repeats."""
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if not ks:
        return None
    seconds: dict[int, list[float]] = {k: [] for k in ks}
    last: dict[int, Trajectories] = {}
    for r in range(args.warmup + args.repeats):
        for k in ks:
            t0 = time.perf_counter()
            last[k] = sampled(lm, nav, questions, args, k)
            s = time.perf_counter() - t0
            if r >= args.warmup:
                seconds[k].append(s)
                log(f"K={k} repeat {r - args.warmup + 1}/{args.repeats}: {s:.3f} s")
    median = {k: statistics.median(ts) for k, ts in seconds.items()}
    base = median.get(1)
    return {
        "seconds_per_rollout": {str(k): v for k, v in median.items()},
        "min_seconds_per_rollout": {str(k): min(ts) for k, ts in seconds.items()},
        "ratio_vs_k1": {str(k): v / base for k, v in median.items()} if base else None,
        "trajectories_per_second": {str(k): len(last[k]) / v for k, v in median.items()},
        "mean_thoughts": {str(k): float(last[k].num_thoughts.float().mean()) for k in ks},
        "thought_phase_steps": {str(k): int(last[k].num_thoughts.max()) for k in ks},
        "mean_new_tokens": {str(k): float(last[k].new_tokens.float().mean()) for k in ks},
    }


def summary(trajs: list[Trajectories]) -> tuple[list[int], list[str]]:
    thoughts = [int(n) for t in trajs for n in t.num_thoughts]
    return thoughts, [text for t in trajs for text in t.texts]


def run(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lm, nav, questions = build(args)
    log(
        f"{len(questions)} questions x {args.trajectories} trajectories, up to {args.max_thoughts} thoughts, "
        f"{args.max_new_tokens} answer tokens; {torch.get_num_threads()} threads"
    )
    seconds: dict[str, list[float]] = {"batched": [], "loop": []}
    outputs = {}
    for r in range(args.warmup + args.repeats):  # interleaved, so machine noise hits both alike
        for name, fn in (("batched", batched), ("loop", loop)):
            t0 = time.perf_counter()
            outputs[name] = fn(lm, nav, questions, args)
            s = time.perf_counter() - t0
            if r >= args.warmup:
                seconds[name].append(s)
                log(f"{name} repeat {r - args.warmup + 1}/{args.repeats}: {s:.3f} s")
    by_layout = compare_layouts(lm, nav, questions, args)
    multi = next(iter(by_layout.values()), None)
    (t_b, a_b), (t_l, a_l) = summary(outputs["batched"]), summary(outputs["loop"])
    n = len(questions)
    qps = {name: n / statistics.median(ts) for name, ts in seconds.items()}
    return {
        "benchmark": "rollout",
        "questions_per_second": qps,
        "seconds_per_rollout": {name: statistics.median(ts) for name, ts in seconds.items()},
        "min_seconds_per_rollout": {name: min(ts) for name, ts in seconds.items()},
        "speedup": qps["batched"] / qps["loop"],
        "check": {
            "thought_counts_match": t_b == t_l,
            "answers_match": a_b == a_l,
            "answers_matching": sum(x == y for x, y in zip(a_b, a_l)),
            "trajectories": len(a_b),
            "distinct_thought_counts": sorted(set(t_b)),
            "mean_thoughts": statistics.mean(t_b),
        },
        "multi": multi,
        "multi_by_layout": by_layout,
        "config": {
            "questions": n,
            "trajectories": args.trajectories,
            "ks": args.ks,
            "max_thoughts": args.max_thoughts,
            "max_new_tokens": args.max_new_tokens,
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "num_heads": args.num_heads,
            "intermediate_size": args.intermediate_size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "quick": args.quick,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    main()
