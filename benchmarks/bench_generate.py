"""Benchmark: generating answers after continuous thoughts, batched with a KV cache vs naive recompute.

What it measures, on one randomly initialised demo-size model (scratch Llama: hidden 128, 3 layers,
4 heads, MLP 512, tied embeddings, the arithmetic task's vocabulary) and one batch of 32 random
prompts (~12 question tokens, lengths jittered so the batch is left-padded, ending in ``<bot>``):

- ``ours``:  ``lm.generate(prompts, num_thoughts=6, max_new_tokens=16)``: one prefill, one cached
  step per thought, the forced ``<eot>``, then one cached step per token, all 32 prompts at once.
- ``naive``: per example, no cache: for each thought a full ``causal_lm`` forward over every
  embedding so far, its last hidden state (through ``lm.to_thought``) appended as the next input;
  then ``<eot>``; then for each new token a full forward over everything so far and the argmax of
  the last position's logits, latent-control tokens suppressed as in ours (``lm.suppress_latent``).

The weights are redrawn from N(0, 0.1^2) (``--init-std``): at transformers' init (std 0.02) a tied
random model just repeats its last input token, which would make the token check below vacuous;
the values of the weights do not change the work done. (Much larger values make the random network
chaotic over the thought feedback loop: at std 0.2, float rounding differences between two correct
implementations grow to ~1e-2 by the sixth thought.)

Exactly ``max_new_tokens`` tokens are generated for every example: while timing, ``lm.special`` is
replaced by a copy with ``eos=-1`` (``dataclasses.replace``), so no token ends an answer (restored
afterwards); the naive loop never stops early either. The script asserts that ours generated
``batch x max_new_tokens`` tokens, and checks that ours and naive produce the same greedy tokens
and the same thoughts (the fed-back vectors) for every example of the batch.
Reported: median seconds per batch over the repeats (after warmup), generated tokens per second of
each, and ``speedup = ours / naive`` in tokens per second (aim >= 20).

How to run (from the repository root, with coconav installed)::

    python benchmarks/bench_generate.py                # default sizes (above)
    python benchmarks/bench_generate.py --quick        # tiny sizes, few repeats (smoke test)
    python benchmarks/bench_generate.py --threads 1 --repeats 20 --naive-repeats 3

Output: ONE JSON object on stdout (keys explained in benchmarks/README.md); progress on stderr.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import transformers
from common import add_machine_args, add_model_args, fill_defaults, log, no_eos, print_result, sync

from coconav.config import ModelConfig
from coconav.data.tokenizer import task_tokenizer
from coconav.model.build import build_latent_lm
from coconav.model.latent_lm import LatentLM

DEFAULTS = dict(
    batch_size=32,
    num_thoughts=6,
    max_new_tokens=16,
    question_len=12,
    jitter=3,
    hidden_size=128,
    num_layers=3,
    num_heads=4,
    intermediate_size=512,
    repeats=10,
    naive_repeats=3,
    warmup=1,
    init_std=0.1,
)
QUICK = dict(
    batch_size=4,
    num_thoughts=2,
    max_new_tokens=4,
    question_len=5,
    jitter=1,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    repeats=2,
    naive_repeats=1,
    warmup=1,
    init_std=0.1,
)
AIM_SPEEDUP = 20.0
THOUGHT_TOLERANCE = 1e-4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke test, seconds)")
    p.add_argument("--batch-size", type=int, help=f"prompts per batch (default {DEFAULTS['batch_size']})")
    p.add_argument("--num-thoughts", type=int, help=f"thoughts per prompt (default {DEFAULTS['num_thoughts']})")
    p.add_argument(
        "--max-new-tokens", type=int, help=f"answer tokens per prompt (default {DEFAULTS['max_new_tokens']})"
    )
    p.add_argument("--question-len", type=int, help=f"longest question, tokens (default {DEFAULTS['question_len']})")
    p.add_argument(
        "--jitter",
        type=int,
        help=f"question lengths are drawn from [len - jitter, len] (left padding; default {DEFAULTS['jitter']})",
    )
    add_model_args(p, DEFAULTS)
    p.add_argument(
        "--init-std",
        type=float,
        help="redraw every weight matrix from N(0, std^2); 0 keeps "
        f"transformers' init (default {DEFAULTS['init_std']})",
    )
    p.add_argument("--repeats", type=int, help=f"timed batches of ours (default {DEFAULTS['repeats']})")
    p.add_argument("--naive-repeats", type=int, help=f"timed batches of naive (default {DEFAULTS['naive_repeats']})")
    p.add_argument("--warmup", type=int, help=f"untimed batches of each first (default {DEFAULTS['warmup']})")
    add_machine_args(p)
    args = fill_defaults(p.parse_args(argv), DEFAULTS, QUICK)
    if args.jitter >= args.question_len:
        p.error("--jitter must be smaller than --question-len")
    return args


def build_model(args: argparse.Namespace) -> LatentLM:
    torch.manual_seed(args.seed)
    cfg = ModelConfig(
        name_or_path="scratch-llama",
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        tie_embeddings=True,
        thought_norm=args.thought_norm,
        attn_implementation=args.attn,
    )
    lm = build_latent_lm(cfg, task_tokenizer("arithmetic")).to(args.device).eval()
    if args.init_std > 0:  # see the module docstring: makes greedy tokens vary, so the check means something
        with torch.no_grad():
            for param in lm.parameters():
                if param.dim() >= 2:
                    param.normal_(0.0, args.init_std)
    return lm


def make_prompts(lm: LatentLM, args: argparse.Namespace) -> list[list[int]]:
    """Random question tokens from the ordinary vocabulary, each prompt ending in <bot>."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    normal = torch.tensor(sorted(set(range(len(lm.tokenizer))) - set(lm.tokenizer.all_special_ids)))
    prompts = []
    for _ in range(args.batch_size):
        n = args.question_len - int(torch.randint(args.jitter + 1, (1,), generator=gen))
        prompts.append(normal[torch.randint(len(normal), (n,), generator=gen)].tolist() + [lm.special.bot])
    return prompts


def ours_generate(
    lm: LatentLM, prompts: list[list[int]], args: argparse.Namespace, return_thoughts: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(generated ids [B, N], thoughts [B, L, D] or None)."""
    out = lm.generate(
        prompts, num_thoughts=args.num_thoughts, max_new_tokens=args.max_new_tokens, return_thoughts=return_thoughts
    )
    expected = len(prompts) * args.max_new_tokens
    assert int(out.new_tokens.sum()) == expected, f"ours generated {int(out.new_tokens.sum())} tokens, not {expected}"
    return out.sequences, out.thoughts


@torch.no_grad()
def naive_generate(
    lm: LatentLM, prompts: list[list[int]], args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, no cache: every thought and every token recomputes the whole sequence so far.

    Returns (generated ids [B, N], thoughts [B, L, D])."""
    eot = torch.tensor([[lm.special.eot]], device=lm.device)
    rows, thoughts = [], []
    for prompt in prompts:
        emb = lm.embed(torch.tensor([prompt], device=lm.device))  # [1, P, D]
        for _ in range(args.num_thoughts):
            hidden = lm.causal_lm(inputs_embeds=emb, output_hidden_states=True, use_cache=False).hidden_states[-1]
            emb = torch.cat([emb, lm.to_thought(hidden[:, -1:])], dim=1)
        thoughts.append(emb[0, len(prompt) :])
        emb = torch.cat([emb, lm.embed(eot)], dim=1)
        tokens = []
        for _ in range(args.max_new_tokens):
            # the same rule as ours: latent-control tokens (<bot>, <eot>, <thought>) are never generated
            logits = lm.suppress_latent(
                lm.causal_lm(inputs_embeds=emb, use_cache=False).logits[:, -1].float()
            )  # [1, V]
            token = logits.argmax(-1)
            tokens.append(token)
            emb = torch.cat([emb, lm.embed(token[:, None])], dim=1)
        rows.append(torch.cat(tokens))
    return torch.stack(rows), torch.stack(thoughts)


def timed(fn, lm: LatentLM, prompts: list[list[int]], args: argparse.Namespace) -> tuple[float, tuple]:
    sync(args.device)
    t0 = time.perf_counter()
    out = fn(lm, prompts, args)
    sync(args.device)
    return time.perf_counter() - t0, out


def count_passes(lm: LatentLM, prompts: list[list[int]], args: argparse.Namespace) -> tuple[int, tuple]:
    """Backbone passes of one call of ours (counted by wrapping lm._run on the instance), and its output."""
    run_pass, calls = lm._run, [0]

    def counted(*a, **kw):
        calls[0] += 1
        return run_pass(*a, **kw)

    lm._run = counted  # an instance attribute for this call only; the class is untouched
    try:
        out = ours_generate(lm, prompts, args, return_thoughts=True)
    finally:
        del lm._run
    return calls[0], out


def run(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lm = build_model(args)
    prompts = make_prompts(lm, args)
    B, N, L = len(prompts), args.max_new_tokens, args.num_thoughts
    log(
        f"model: {sum(p.numel() for p in lm.parameters()):,} parameters; {B} prompts of "
        f"{min(map(len, prompts))}-{max(map(len, prompts))} tokens; {L} thoughts, {N} new tokens; "
        f"{torch.get_num_threads()} threads"
    )

    seconds: dict[str, list[float]] = {"ours": [], "naive": []}
    outputs: dict[str, tuple] = {}
    with no_eos(lm):
        for name, fn, repeats in (("ours", ours_generate, args.repeats), ("naive", naive_generate, args.naive_repeats)):
            for r in range(args.warmup + repeats):
                s, outputs[name] = timed(fn, lm, prompts, args)
                if r >= args.warmup:
                    seconds[name].append(s)
                    log(f"{name} repeat {r - args.warmup + 1}/{repeats}: {s * 1e3:.1f} ms")
        ours_passes, (ours_seq, ours_thoughts) = count_passes(lm, prompts, args)

    naive_seq, naive_thoughts = (t.cpu() for t in outputs["naive"])
    ours_seq, ours_thoughts = ours_seq.cpu(), ours_thoughts.cpu()
    assert torch.equal(ours_seq, outputs["ours"][0].cpu()), "ours is not deterministic between calls"
    matching = [bool(torch.equal(ours_seq[b], naive_seq[b])) for b in range(B)]
    thought_diff = float((ours_thoughts - naive_thoughts).abs().max()) if L > 0 else 0.0
    thought_scale = float(naive_thoughts.abs().max()) if L > 0 else 0.0
    log(
        f"check: {sum(matching)}/{B} examples generate the same tokens in ours and naive; "
        f"max thought difference {thought_diff:.2e} (thoughts up to {thought_scale:.2f})"
    )
    if not all(matching):
        log(f"WARNING: token mismatch in examples {[b for b, ok in enumerate(matching) if not ok]}")

    tokens = B * N
    sec = {n: statistics.median(v) for n, v in seconds.items()}
    tps = {n: tokens / s for n, s in sec.items()}
    speedup = tps["ours"] / tps["naive"]
    return {
        "benchmark": "generate",
        "tokens_per_second": tps,
        "seconds_per_batch": sec,
        "min_seconds_per_batch": {n: min(v) for n, v in seconds.items()},
        "speedup": speedup,
        "aims": {"speedup_min": AIM_SPEEDUP, "speedup_met": speedup >= AIM_SPEEDUP},
        "generated_tokens_per_batch": tokens,
        # Backbone forward calls per batch: ours batched and cached (counted: prefill, thoughts, <eot>,
        # one step per token); naive one uncached full forward per example per thought and per token.
        "forward_calls_per_batch": {"ours": ours_passes, "naive": B * (L + N)},
        "check": {
            "examples_compared": B,
            "examples_matching": sum(matching),
            "tokens_match": all(matching),
            "distinct_tokens_generated": len(set(ours_seq.flatten().tolist())),
            "thought_max_abs_diff": thought_diff,
            "thought_max_abs": thought_scale,
            "thoughts_match": thought_diff <= THOUGHT_TOLERANCE * max(1.0, thought_scale),
            "first_example_ours": ours_seq[0].tolist(),
            "first_example_naive": naive_seq[0].tolist(),
        },
        "config": {
            "model": "scratch-llama",
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "num_heads": args.num_heads,
            "intermediate_size": args.intermediate_size,
            "tie_embeddings": True,
            "vocab_size": len(lm.tokenizer),
            "parameters": sum(p.numel() for p in lm.parameters()),
            "thought_norm": args.thought_norm,
            "attn_implementation": args.attn,
            "init_std": args.init_std,
            "batch_size": B,
            "num_thoughts": L,
            "max_new_tokens": N,
            "question_len": args.question_len,
            "jitter": args.jitter,
            "prompt_lengths": [len(p) for p in prompts],
            "greedy": True,
            "eos_disabled": True,
            "repeats": args.repeats,
            "naive_repeats": args.naive_repeats,
            "warmup": args.warmup,
            "quick": args.quick,
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            "device": args.device,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    main()
