"""Benchmark: one teacher-forced COCONUT training step (forward + backward), three ways side by side.

What it measures, on one randomly initialised demo-size model (scratch Llama: hidden 128, 3 layers,
4 heads, MLP 512, tied embeddings, the arithmetic task's vocabulary) and one random batch (32
sequences of ~12 question tokens, ``<bot>``, 6 ``<thought>`` slots, ``<eot>``, ~20 answer tokens;
question and answer lengths jittered, so rows are left- and right-padded; labels on the answer):

- ``ours``:  ``lm(input_ids, attention_mask, labels=labels)``: one backbone pass per thought, each
  over the new columns only, on the KV cache of the passes before (``LatentLM.forward``).
- ``naive``: the paper code's cost profile without its cache: for each thought column, a full
  ``causal_lm`` forward over every column before it, its last hidden state written (out of place,
  via ``lm.to_thought``) into the embedding tensor at that column; then one full forward for the
  loss. Gradients flow through the thoughts, as in ours. The script checks once that ours and
  naive give the same loss (and gradients) before timing.
- ``plain``: the floor: the same model's ordinary HF forward + backward
  (``lm.causal_lm(input_ids=..., attention_mask=..., labels=...)``) over a sequence of the same
  length with the thought slots replaced by ordinary tokens (thoughts add sequential passes, not
  tokens).

With ``--compile`` ours runs its passes through ``torch.compile`` of the decoder
(``lm.compile_backbone()``, what ``train.compile=true`` does) and plain calls
``torch.compile(lm.causal_lm, dynamic=True)``; naive stays eager. The first step of each (mostly
compile time) is timed apart and reported as ``compile_seconds``.

Each timed step is forward + ``loss.backward()`` + ``zero_grad`` (no optimizer: it would cost the
same in all three). The contenders run interleaved (ours, naive, plain, ours, ...) after warmup so
that machine noise hits all of them alike; medians over the repeats are reported, with forward and
backward separately, and the ratios ``speedup_vs_naive = naive / ours`` (aim >= 3) and
``overhead_vs_plain = ours / plain`` (aim <= 1.15).

How to run (from the repository root, with coconav installed)::

    python benchmarks/bench_train_step.py                 # default sizes (above)
    python benchmarks/bench_train_step.py --quick         # tiny sizes, 2 repeats (smoke test)
    python benchmarks/bench_train_step.py --prosqa        # ProsQA's shape: ~230 question tokens, 6 thoughts
    python benchmarks/bench_train_step.py --threads 1 --repeats 50
    python benchmarks/bench_train_step.py --profile       # also a torch.profiler table of ours on stderr
    python benchmarks/bench_train_step.py --compile       # ours and plain through torch.compile (inductor)

Output: ONE JSON object on stdout (keys explained in benchmarks/README.md); progress on stderr.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import transformers
from common import add_machine_args, add_model_args, fill_defaults, log, print_result, sync

from coconav.config import ModelConfig
from coconav.data.curriculum import IGNORE, Sequence, collate
from coconav.data.tokenizer import task_tokenizer
from coconav.model.build import build_latent_lm
from coconav.model.latent_lm import LatentLM, positions_from_mask

DEFAULTS = dict(
    batch_size=32,
    num_thoughts=6,
    question_len=12,
    answer_len=20,
    jitter=3,
    hidden_size=128,
    num_layers=3,
    num_heads=4,
    intermediate_size=512,
    repeats=20,
    warmup=3,
)
QUICK = dict(
    batch_size=4,
    num_thoughts=2,
    question_len=5,
    answer_len=6,
    jitter=1,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    repeats=2,
    warmup=1,
)
# ProsQA's shape (configs/prosqa.yaml): ~230 word-level question tokens, 6 thoughts, a 6-token answer + EOS,
# the preset's 4-layer model.
PROSQA = dict(question_len=240, jitter=6, answer_len=8, num_thoughts=6, num_layers=4, batch_size=32)
AIM_SPEEDUP_VS_NAIVE = 3.0
AIM_OVERHEAD_VS_PLAIN = 1.15
LOSS_TOLERANCE = 1e-4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke test, seconds)")
    p.add_argument("--prosqa", action="store_true", help=f"ProsQA's shape and the ProsQA preset's model: {PROSQA}")
    p.add_argument("--batch-size", type=int, help=f"sequences per step (default {DEFAULTS['batch_size']})")
    p.add_argument("--num-thoughts", type=int, help=f"thought slots per sequence (default {DEFAULTS['num_thoughts']})")
    p.add_argument("--question-len", type=int, help=f"longest question, tokens (default {DEFAULTS['question_len']})")
    p.add_argument(
        "--answer-len", type=int, help=f"longest answer incl. EOS, tokens (default {DEFAULTS['answer_len']})"
    )
    p.add_argument(
        "--jitter",
        type=int,
        help="question and answer lengths are drawn from [len - jitter, len] "
        f"(padding mix; default {DEFAULTS['jitter']})",
    )
    add_model_args(p, DEFAULTS)
    p.add_argument("--repeats", type=int, help=f"timed steps per contender (default {DEFAULTS['repeats']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps per contender first (default {DEFAULTS['warmup']})")
    add_machine_args(p)
    p.add_argument("--profile", action="store_true", help="also profile a few steps of ours and plain (stderr, JSON)")
    p.add_argument(
        "--compile", action="store_true", help="ours and plain through torch.compile (inductor); naive eager"
    )
    args = p.parse_args(argv)
    if args.prosqa and args.quick:
        p.error("--prosqa and --quick are two different sizes: give one")
    args = fill_defaults(args, {**DEFAULTS, **PROSQA} if args.prosqa else DEFAULTS, QUICK)
    if args.jitter >= min(args.question_len, args.answer_len):
        p.error("--jitter must be smaller than --question-len and --answer-len")
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
    return build_latent_lm(cfg, task_tokenizer("arithmetic")).to(args.device).train()


def make_batch(lm: LatentLM, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """A collated batch (aligned on <bot>) of random question/answer tokens, plus the plain twin."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    special = lm.special
    normal = torch.tensor(sorted(set(range(len(lm.tokenizer))) - set(lm.tokenizer.all_special_ids)))

    def words(n: int) -> list[int]:
        return normal[torch.randint(len(normal), (n,), generator=gen)].tolist()

    def jittered(n: int) -> int:
        return n - int(torch.randint(args.jitter + 1, (1,), generator=gen))

    seqs = []
    for _ in range(args.batch_size):
        head = (
            words(jittered(args.question_len)) + [special.bot] + [special.thought] * args.num_thoughts + [special.eot]
        )
        answer = words(jittered(args.answer_len) - 1) + [special.eos]
        seqs.append(
            Sequence(
                ids=head + answer,
                labels=[IGNORE] * len(head) + answer,
                thought_targets=[IGNORE] * (len(head) + len(answer)),
                stage=0,
            )
        )
    batch = collate(seqs, special).to(args.device)
    is_thought = batch.input_ids == special.thought
    # The plain twin: the same columns, the thought slots holding ordinary tokens instead.
    filler = normal[torch.randint(len(normal), batch.input_ids.shape, generator=gen)].to(args.device)
    plain_ids = torch.where(is_thought, filler, batch.input_ids)
    return dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        labels=batch.labels,
        plain_ids=plain_ids,
        plain_model=lm.causal_lm,
    )


# -- the three contenders: each returns the loss of one forward ----------------------------------


def ours_loss(lm: LatentLM, b: dict) -> torch.Tensor:
    return lm(b["input_ids"], b["attention_mask"], labels=b["labels"]).loss


def naive_loss(lm: LatentLM, b: dict) -> torch.Tensor:
    """Full recompute of the whole prefix at every thought, then one full forward for the loss."""
    ids, mask = b["input_ids"], b["attention_mask"]
    is_thought = ids == lm.special.thought
    emb = lm.embed(ids.masked_fill(is_thought, lm.special.pad))
    pos = positions_from_mask(mask)
    for col in is_thought.any(0).nonzero().flatten().tolist():
        out = lm.causal_lm(
            inputs_embeds=emb[:, :col],
            attention_mask=mask[:, :col],
            position_ids=pos[:, :col],
            output_hidden_states=True,
            use_cache=False,
        )
        thought = lm.to_thought(out.hidden_states[-1][:, -1])  # [B, D]
        fed = torch.where(is_thought[:, col, None], thought, emb[:, col])
        emb = torch.cat([emb[:, :col], fed[:, None], emb[:, col + 1 :]], dim=1)
    return lm.causal_lm(
        inputs_embeds=emb, attention_mask=mask, position_ids=pos, labels=b["labels"], use_cache=False
    ).loss


def plain_loss(lm: LatentLM, b: dict) -> torch.Tensor:
    """b["plain_model"] is lm.causal_lm, or its torch.compile under --compile."""
    return b["plain_model"](
        input_ids=b["plain_ids"], attention_mask=b["attention_mask"], labels=b["labels"], use_cache=False
    ).loss


CONTENDERS = {"ours": ours_loss, "naive": naive_loss, "plain": plain_loss}


def timed_step(lm: LatentLM, fn, b: dict, device: str) -> tuple[float, float]:
    """(forward ms, backward ms) of one step; gradients are cleared afterwards."""
    sync(device)
    t0 = time.perf_counter()
    loss = fn(lm, b)
    sync(device)
    t1 = time.perf_counter()
    loss.backward()
    sync(device)
    t2 = time.perf_counter()
    lm.zero_grad(set_to_none=True)
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def gradients(lm: LatentLM, fn, b: dict) -> tuple[float, dict[str, torch.Tensor]]:
    loss = fn(lm, b)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in lm.named_parameters() if p.grad is not None}
    lm.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def check_equal(lm: LatentLM, b: dict) -> dict:
    """Ours and naive must agree: same loss (within 1e-4) and the same gradients."""
    loss_ours, g_ours = gradients(lm, ours_loss, b)
    loss_naive, g_naive = gradients(lm, naive_loss, b)
    grad_diff = max(float((g_ours[n] - g_naive[n]).abs().max()) for n in g_ours)
    grad_scale = max(float(g.abs().max()) for g in g_ours.values())
    diff = abs(loss_ours - loss_naive)
    return {
        "loss_ours": loss_ours,
        "loss_naive": loss_naive,
        "loss_abs_diff": diff,
        "loss_match": diff <= LOSS_TOLERANCE,
        "loss_tolerance": LOSS_TOLERANCE,
        "grad_max_abs_diff": grad_diff,
        "grad_max_abs": grad_scale,
        "same_grad_params": sorted(g_ours) == sorted(g_naive),
    }


def profile(lm: LatentLM, b: dict, device: str, steps: int = 3, top: int = 15) -> dict:
    """torch.profiler over a few steps of ours and of plain: the ops where the time goes (stderr + JSON)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    run_pass = lm._pass

    def traced_run(embeds, mask, positions, cache):  # label ours' backbone passes by their width
        with record_function(f"ours.pass[{embeds.shape[1]} cols]"):
            return run_pass(embeds, mask, positions, cache)

    result = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    lm._pass = traced_run  # an instance attribute for the profile only; the class is untouched
    try:
        for name in ("ours", "plain"):
            with torch_profile(activities=activities) as prof:
                for _ in range(steps):
                    with record_function(f"{name}.forward"):
                        loss = CONTENDERS[name](lm, b)
                    with record_function(f"{name}.backward"):
                        loss.backward()
                    lm.zero_grad(set_to_none=True)
            averages = prof.key_averages()
            log(f"--- profile of {name} ({steps} steps), sorted by self CPU time ---")
            log(averages.table(sort_by="self_cpu_time_total", row_limit=top))
            labels = [e for e in averages if e.key.startswith(f"{name}.")]
            ops = sorted(
                (e for e in averages if not e.key.startswith(f"{name}.")),
                key=lambda e: e.self_cpu_time_total,
                reverse=True,
            )
            result[name] = {
                # forward / backward / each pass: wall time (CPU total) per step, and the Python and
                # dispatcher time spent outside any aten op (self CPU of the label)
                "regions": {
                    e.key: {
                        "calls_per_step": e.count / steps,
                        "ms_per_step": e.cpu_time_total / 1e3 / steps,
                        "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                    }
                    for e in labels
                },
                "ops": [
                    {
                        "name": e.key,
                        "calls_per_step": e.count / steps,
                        "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                    }
                    for e in ops[:top]
                ],
                "op_calls_per_step": sum(e.count for e in ops) / steps,
            }
    finally:
        del lm._pass
    return result


def run(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lm = build_model(args)
    b = make_batch(lm, args)
    B, T = b["input_ids"].shape
    L = args.num_thoughts
    start = int((b["input_ids"] == lm.special.thought).any(0).nonzero()[0])
    log(
        f"model: {sum(p.numel() for p in lm.parameters()):,} parameters; batch {B} x {T} columns "
        f"(thoughts at columns {start}..{start + L - 1}); {torch.get_num_threads()} threads"
    )

    compile_seconds = None
    if args.compile:
        lm.compile_backbone()
        b["plain_model"] = torch.compile(lm.causal_lm, dynamic=True)
        compile_seconds = {
            name: sum(timed_step(lm, CONTENDERS[name], b, args.device)) / 1e3 for name in ("ours", "plain")
        }
        log(f"compile: first step of ours {compile_seconds['ours']:.1f} s, of plain {compile_seconds['plain']:.1f} s")

    check = check_equal(lm, b)
    log(
        f"check: loss ours {check['loss_ours']:.6f} naive {check['loss_naive']:.6f} "
        f"(diff {check['loss_abs_diff']:.2e}); max grad diff {check['grad_max_abs_diff']:.2e}"
    )
    if not check["loss_match"]:
        log("WARNING: ours and naive disagree on the loss")

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CONTENDERS}
    for r in range(args.warmup + args.repeats):
        for name, fn in CONTENDERS.items():
            fwd_bwd = timed_step(lm, fn, b, args.device)
            if r >= args.warmup:
                times[name].append(fwd_bwd)
        if r >= args.warmup:
            log(
                f"repeat {r - args.warmup + 1}/{args.repeats}: "
                + ", ".join(f"{n} {sum(t[-1]):.1f} ms" for n, t in times.items())
            )

    def median(name: str, part: int | None) -> float:
        return statistics.median(sum(t) if part is None else t[part] for t in times[name])

    step_ms = {n: median(n, None) for n in CONTENDERS}
    speedup = step_ms["naive"] / step_ms["ours"]
    overhead = step_ms["ours"] / step_ms["plain"]
    result = {
        "benchmark": "train_step",
        "ms_per_step": step_ms,
        "forward_ms": {n: median(n, 0) for n in CONTENDERS},
        "backward_ms": {n: median(n, 1) for n in CONTENDERS},
        "min_ms_per_step": {n: min(sum(t) for t in times[n]) for n in CONTENDERS},
        "speedup_vs_naive": speedup,
        "overhead_vs_plain": overhead,
        "aims": {
            "speedup_vs_naive_min": AIM_SPEEDUP_VS_NAIVE,
            "speedup_vs_naive_met": speedup >= AIM_SPEEDUP_VS_NAIVE,
            "overhead_vs_plain_max": AIM_OVERHEAD_VS_PLAIN,
            "overhead_vs_plain_met": overhead <= AIM_OVERHEAD_VS_PLAIN,
        },
        "tokens_per_step": int(b["attention_mask"].sum()),
        "columns_per_step": B * T,
        "label_tokens_per_step": int((b["labels"] != IGNORE).sum()),
        # Backbone passes per forward, and columns they compute (each column x batch rows).
        "backbone_passes": {"ours": L + 1, "naive": L + 1, "plain": 1},
        "columns_computed": {"ours": T, "naive": sum(range(start, start + L)) + T, "plain": T},
        "check": check,
        "compile_seconds": compile_seconds,
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
            "compile": args.compile,
            "batch_size": B,
            "seq_len": T,
            "num_thoughts": L,
            "first_thought_column": start,
            "question_len": args.question_len,
            "answer_len": args.answer_len,
            "jitter": args.jitter,
            "repeats": args.repeats,
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
    if args.profile:
        result["profile"] = profile(lm, b, args.device)
    return result


def main(argv: list[str] | None = None) -> dict:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    main()
