"""`coconav doctor`: one command that checks the GPU path and writes one JSON report.

    coconav doctor --gpu --out runs/doctor.json            # one CUDA GPU, the presets' shapes (meant for <= 8 min, H100)
    coconav doctor --tiny --out runs/doctor.json           # every stage on a tiny config on the CPU (what CI runs)
    coconav doctor --gpu --stages train_step,rollout       # some stages only

The stages, in order; each is timed and reported "ok", "failed" (the error is recorded and the next stage
still runs) or "skipped":

1. ``gpu_tests``: the CUDA-marked tests (``pytest -m gpu``) in a subprocess, their counts read from its JUnit
   XML. Skipped where there is no tests folder beside the package (an installed wheel). With --tiny they are
   collected, not run.
2. ``demo``: ``coconav demo`` (no-CoT, CoT, COCONUT, the navigator) on CUDA in bf16 autocast with a short
   override set, recorded in the report, with its wall time and accuracies.
3. ``train_step``: a model of Llama-3-8B's shape (its config values; random weights, nothing downloaded) in
   bf16 with configs/gsm8k_llama3_8b_coconut.yaml's LoRA and activation checkpointing runs the COCONUT
   training step (``LatentLM.forward`` with the thoughts, backward, AdamW) at the preset's micro-batch and
   max_length: peak memory (``torch.cuda.max_memory_allocated``) against 40 GiB, and tokens/s. transformers'
   own gradient checkpointing drops the KV cache that the thought loop needs; coconav checkpoints each layer
   with the cache kept (``LatentLM.gradient_checkpointing_enable``), and this stage checks it: the
   checkpointed loop's hidden states equal those of the loop without checkpointing.
4. ``rollout``: a navigator PPO rollout (configs/gsm8k_llama3_8b_navigator_multi.yaml's navigator and
   rollout batch) at K = 5 trajectories per question on the same model, then the replay of one PPO
   minibatch with backward: time and peak memory of each.
5. ``decode``: answer tokens/s of compiled decoding (``LatentLM.compile_generation``: static KV cache, CUDA
   graphs) against Hugging Face ``generate`` and coconav's eager decoding at the same shape.

With --tiny the same code runs on a tiny Llama (and the demo on a tiny override set) on the CPU; decoding is
compiled with dynamo's "eager" backend there, which captures the calls without generating kernels.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import peft
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig

from coconav.common import DTYPE_NAMES, print0, write_json_atomic
from coconav.config import RunConfig, apply_overrides, load_config, read_yaml
from coconav.data.curriculum import IGNORE, Batch, Sequence, collate
from coconav.data.records import Example
from coconav.data.tokenizer import build_word_tokenizer
from coconav.errors import InputError
from coconav.io.hub import current_versions
from coconav.model.build import apply_lora
from coconav.model.latent_lm import LatentLM, thought_span
from coconav.model.navigator import Navigator
from coconav.recipes import demo
from coconav.rl.rollout import replay, roll_out
from coconav.tokens import LATENT_TOKENS

STAGES = ("gpu_tests", "demo", "train_step", "rollout", "decode")
REPO = Path(__file__).resolve().parents[2]  # the clone's root (site-packages for an installed wheel)
PRESETS = Path(__file__).resolve().parents[1] / "configs"
COCONUT_PRESET = PRESETS / "gsm8k_llama3_8b_coconut.yaml"
NAVIGATOR_PRESET = PRESETS / "gsm8k_llama3_8b_navigator_multi.yaml"
BUDGET_GIB = 40  # one 40 GB A100, the presets' target
GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """A Llama backbone's config values; its weights are drawn at random."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    max_position_embeddings: int


LLAMA3_8B = Shape(4096, 32, 32, 8, 14336, 128256, 500000.0, 8192)  # meta-llama/Meta-Llama-3-8B's config.json
TINY_SHAPE = Shape(64, 2, 4, 2, 128, 512, 500000.0, 512)


@dataclass(frozen=True)
class Workload:
    """The sizes the stages run at: from the presets (--gpu) or tiny (--tiny)."""

    micro_batch: int  # training rows per step
    seq_len: int  # columns per training row: question, <bot>, thoughts, <eot>, answer
    thoughts: int  # thoughts per row (training) and the navigator's budget
    answer_len: int  # labelled answer tokens per training row; answer tokens of rollouts and decoding
    questions: int  # questions per rollout
    num_trajectories: int  # K trajectories per question
    replay_trajectories: int  # trajectories in one PPO minibatch
    decode_batch: int  # prompts per decoding call
    repeats: int  # timed training steps and decoding calls

    @property
    def question_len(self) -> int:
        return self.seq_len - self.thoughts - 2 - self.answer_len


def gpu_workload(coconut: RunConfig, navigator: RunConfig) -> Workload:
    """The presets' sizes: micro-batch = train.batch_size / grad_accum, max_length, the last stage's thoughts,
    the navigator's answer budget, rollout batch and minibatch (K = 5 instead of the preset's K)."""
    k = 5
    return Workload(
        micro_batch=coconut.train.batch_size // coconut.train.grad_accum,
        seq_len=coconut.data.max_length,
        thoughts=coconut.curriculum.thoughts_at(coconut.curriculum.max_stage),
        answer_len=navigator.eval.max_new_tokens,
        questions=navigator.ppo.rollout_batch,
        num_trajectories=k,
        replay_trajectories=navigator.ppo.rollout_batch * k // navigator.ppo.num_minibatches,
        decode_batch=coconut.eval.batch_size,
        repeats=3,
    )


TINY_WORKLOAD = Workload(2, 40, 6, 8, 2, 5, 5, 3, 1)

# The demo with a short override set (the full demo is `coconav demo --out runs/demo`)
DEMO_OVERRIDES = (
    "model.autocast=bfloat16 data.train_size=8000 data.validation_size=100 data.test_size=200 "
    "train.first_stage_steps=200 train.steps_per_stage=40 log.progress=false"
).split()
DEMO_NAVIGATOR_OVERRIDES = ["ppo.updates=8", "ppo.eval_every=100"]
TINY_DEMO_OVERRIDES = (
    "model.autocast=bfloat16 model.hidden_size=16 model.num_layers=1 model.num_heads=2 "
    "model.intermediate_size=32 data.train_size=48 data.validation_size=6 data.test_size=6 "
    "data.max_difficulty=2 curriculum.max_stage=2 train.batch_size=8 train.grad_accum=1 "
    "train.first_stage_steps=2 train.steps_per_stage=1 train.final_stage_steps=1 train.warmup_steps=1 "
    "eval.max_new_tokens=6 log.progress=false"
).split()
TINY_DEMO_NAVIGATOR_OVERRIDES = (
    "navigator.hidden=16 navigator.action_dim=4 navigator.max_thoughts=2 ppo.updates=2 "
    "ppo.rollout_batch=4 ppo.num_minibatches=1 ppo.ppo_epochs=1 ppo.eval_every=100 eval.max_new_tokens=6"
).split()


# -- measuring -------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device):
    """(fn(), seconds), the device synchronised on both sides."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> dict:
    """Peak memory since reset_peak, in GiB (None on a CPU: torch does not count it there)."""
    if device.type != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GIB, 2),
    }


def under_budget(*peaks: dict) -> bool | None:
    """Whether every peak allocation is below BUDGET_GIB (None without a measurement)."""
    values = [p["peak_allocated_gib"] for p in peaks]
    return None if None in values else max(values) < BUDGET_GIB


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- 1. the CUDA-marked tests ----------------------------------------------------------------------


def gpu_tests(tiny: bool, timeout: float) -> dict:
    """`pytest -m gpu` on the clone's tests folder, in a subprocess; with `tiny` only collected."""
    tests = REPO / "tests"
    if not ((REPO / "pyproject.toml").is_file() and (tests / "conftest.py").is_file()):
        return {"status": "skipped", "note": f"no tests folder at {tests} (an installed wheel): run from a clone"}
    with tempfile.TemporaryDirectory(prefix="coconav-doctor-") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
        command += ["--collect-only"] if tiny else [f"--junitxml={junit}"]
        command.append(str(tests))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        shown = "python -m pytest -q -m gpu" + (" --collect-only" if tiny else "") + " tests"
        result = {"command": shown, "exit_code": done.returncode}
        tail = (done.stdout + done.stderr).strip().splitlines()[-12:]
        if tiny:
            selected = sum(1 for line in done.stdout.splitlines() if "::" in line)
            result |= {"collected": selected, "note": "collected only: --tiny runs no CUDA test"}
        elif junit.is_file():
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
            result |= {
                "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
                "failed": counts["failures"],
                "errors": counts["errors"],
                "skipped": counts["skipped"],
            }
    if done.returncode != 0:  # 5: nothing marked gpu was collected
        result |= {"status": "failed", "error": f"pytest exited with {done.returncode}", "output": tail}
    return result


# -- 2. the demo -----------------------------------------------------------------------------------


def run_demo(tiny: bool) -> dict:
    """`coconav demo` with a short override set, in bf16 autocast (on CUDA when there is one)."""
    overrides = TINY_DEMO_OVERRIDES if tiny else DEMO_OVERRIDES
    nav_overrides = TINY_DEMO_NAVIGATOR_OVERRIDES if tiny else DEMO_NAVIGATOR_OVERRIDES
    with tempfile.TemporaryDirectory(prefix="coconav-doctor-") as tmp:
        preset = Path(tmp) / "navigator.yaml"  # the demo's navigator preset (its bases merged in), overridden
        preset.write_text(yaml.safe_dump(apply_overrides(read_yaml(demo.NAVIGATOR_PRESET), nav_overrides)))
        start = time.perf_counter()
        results = demo.run(out=Path(tmp) / "demo", seed=0, overrides=overrides, navigator=str(preset))
        wall = time.perf_counter() - start
    methods = results["methods"]
    return {
        "command": "coconav demo --out DIR " + " ".join(overrides),
        "overrides": overrides,
        "navigator_overrides": nav_overrides,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "wall_seconds": round(wall, 1),
        "test_questions": results["test_size"],
        "accuracy": {name: round(m["accuracy"], 4) for name, m in methods.items()},
        "mean_forward_passes": {name: round(m["mean_forward_passes"], 2) for name, m in methods.items()},
    }


# -- 3-5. the Llama-3-8B-shaped backbone -----------------------------------------------------------


class Backbone:
    """The LoRA LatentLM of `shape` that stages 3-5 share, built at its first use (a failed build is re-raised)."""

    def __init__(self, shape: Shape, coconut: RunConfig, device: torch.device) -> None:
        self.shape, self.coconut, self.device = shape, coconut, device
        self._lm: LatentLM | None = None
        self._error: BaseException | None = None
        self.build_seconds: float | None = None

    def get(self) -> LatentLM:
        if self._error is not None:
            raise RuntimeError(f"building the backbone failed: {self._error}")
        if self._lm is None:
            try:
                self._lm, self.build_seconds = timed(self._build, self.device)
            except Exception as err:
                self._error = err
                raise
        return self._lm

    def _build(self) -> LatentLM:
        """Random weights in the preset's dtype, straight on the device; the preset's LoRA (the latent tokens'
        rows trained as in a real run) and activation checkpointing."""
        cfg, shape = self.coconut.model, self.shape
        # 7 special tokens (<pad>, <eos>, <unk> and the 4 latent ones) + words + 3 punctuation marks = vocab_size
        tokenizer = build_word_tokenizer(f"w{i}" for i in range(shape.vocab_size - 10))
        config = LlamaConfig(
            hidden_size=shape.hidden_size,
            num_hidden_layers=shape.num_layers,
            num_attention_heads=shape.num_heads,
            num_key_value_heads=shape.num_kv_heads,
            intermediate_size=shape.intermediate_size,
            vocab_size=len(tokenizer),
            rope_theta=shape.rope_theta,
            max_position_embeddings=shape.max_position_embeddings,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(0)
        with torch.device(self.device):
            model = AutoModelForCausalLM.from_config(
                config, dtype=DTYPE_NAMES[cfg.dtype or "float32"], attn_implementation=cfg.attn_implementation
            )
        if cfg.lora is not None:
            model = apply_lora(model, cfg, tokenizer.convert_tokens_to_ids(list(LATENT_TOKENS)))
        lm = LatentLM(model, tokenizer, thought_norm=cfg.thought_norm, autocast=cfg.autocast)
        if cfg.gradient_checkpointing:
            lm.gradient_checkpointing_enable()
        return lm

    def describe(self) -> dict:
        lm = self.get()
        return {
            **asdict(self.shape),
            "parameters": sum(p.numel() for p in lm.parameters()),
            "dtype": str(lm.weight_dtype).removeprefix("torch."),
            "build_seconds": round(self.build_seconds or 0.0, 1),
        }


def random_words(n: int, vocab_size: int, generator: torch.Generator) -> list[int]:
    """n ids of the tokenizer's words (ids 7 .. vocab_size - 4: after the special tokens, before punctuation)."""
    return torch.randint(7, vocab_size - 3, (n,), generator=generator).tolist()


def training_batch(lm: LatentLM, work: Workload, vocab_size: int) -> Batch:
    """micro_batch rows of seq_len real tokens: question, <bot>, the thoughts, <eot>, labelled answer."""
    gen, s = torch.Generator().manual_seed(0), lm.special
    seqs = []
    for _ in range(work.micro_batch):
        head = random_words(work.question_len, vocab_size, gen) + [s.bot] + [s.thought] * work.thoughts + [s.eot]
        answer = random_words(work.answer_len, vocab_size, gen)
        ids = head + answer
        seqs.append(Sequence(ids, [IGNORE] * len(head) + answer, [IGNORE] * len(ids), stage=work.thoughts))
    return collate(seqs, s)


def train_step(backbone: Backbone, work: Workload) -> dict:
    """The COCONUT training step at the preset's micro-batch and length; the checkpointed loop keeps its cache."""
    lm, device = backbone.get(), backbone.device
    batch = training_batch(lm, work, backbone.shape.vocab_size).to(device)
    start, _ = thought_span(batch.input_ids == lm.special.thought)
    lm.eval()  # the reference: the same thought loop without checkpointing (layers checkpoint in training only)
    with torch.no_grad():
        reference = lm(batch.input_ids, batch.attention_mask).hidden[:, start:]
    lm.train()
    trainable = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=backbone.coconut.train.lr)

    def step():
        out = lm(batch.input_ids, batch.attention_mask, labels=batch.labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out

    reset_peak(device)
    first, first_seconds = timed(step, device)
    hidden = first.hidden.detach()[:, start:]
    # relative mean difference; a loop that lost its cache would see no earlier columns: a difference of order 1
    difference = float((hidden.float() - reference.float()).abs().mean() / reference.float().abs().mean())
    passes, loss = first.num_passes, float(first.loss.detach())
    del first, hidden, reference
    seconds = [timed(step, device)[1] for _ in range(work.repeats)]
    memory = peak(device)
    lm.eval()
    tokens = int(batch.attention_mask.sum())
    cache_kept = passes == work.thoughts + 1 and difference < 1e-2
    result = {
        "preset": f"configs/{COCONUT_PRESET.name}",
        "backbone": backbone.describe(),
        "lora": asdict(backbone.coconut.model.lora) if backbone.coconut.model.lora is not None else None,
        "gradient_checkpointing": backbone.coconut.model.gradient_checkpointing,
        "micro_batch": work.micro_batch,
        "seq_len": work.seq_len,
        "thoughts": work.thoughts,
        "labelled_tokens_per_row": work.answer_len,
        "tokens_per_step": tokens,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "loss": round(loss, 4),
        "first_step_seconds": round(first_seconds, 3),
        "step_seconds": round(statistics.median(seconds), 3),
        "tokens_per_second": round(tokens / statistics.median(seconds), 1),
        **memory,
        "budget_gib": BUDGET_GIB,
        "under_budget": under_budget(memory),
        "cache_kept": {"passes": passes, "relative_difference": round(difference, 6), "ok": cache_kept},
    }
    if not cache_kept or not math.isfinite(loss):
        result |= {
            "status": "failed",
            "error": "the checkpointed thought loop lost its cache or the loss is not finite",
        }
    return result


def rollout(backbone: Backbone, work: Workload, tiny: bool) -> dict:
    """A navigator rollout at K trajectories per question, then one PPO minibatch replayed with backward."""
    lm, device = backbone.get(), backbone.device
    nav_cfg = load_config(NAVIGATOR_PRESET).navigator
    nav_cfg = dataclasses.replace(nav_cfg, max_thoughts=work.thoughts)
    if tiny:
        nav_cfg = dataclasses.replace(nav_cfg, hidden=16, action_dim=4)
    lm.eval()  # as the navigator recipe runs it: eval mode, the LM frozen
    lm.requires_grad_(False)
    torch.manual_seed(0)
    navigator = Navigator(lm.hidden_size, nav_cfg).to(device)
    gen = torch.Generator().manual_seed(1)
    examples = [
        Example(" ".join(f"w{i - 7}" for i in random_words(work.question_len, backbone.shape.vocab_size, gen)), (), "1")
        for _ in range(work.questions)
    ]
    sampler = torch.Generator(device=device).manual_seed(0)

    def run(questions: list[Example], max_new_tokens: int):
        return roll_out(
            lm,
            navigator,
            questions,
            num_trajectories=work.num_trajectories,
            sample=True,
            temperature=nav_cfg.temperature,
            max_new_tokens=max_new_tokens,
            generator=sampler,
        )

    timed(lambda: run(examples[:1], 2), device)  # warm-up: kernel selection is not timed
    reset_peak(device)
    traj, rollout_seconds = timed(lambda: run(examples, work.answer_len), device)
    rollout_memory = peak(device)
    navigator.train()
    idx = torch.arange(min(work.replay_trajectories, len(traj)))

    def replay_backward():
        rep = replay(lm, navigator, traj, idx, temperature=nav_cfg.temperature)
        loss = -(rep.logprobs * rep.masks.valid).sum() + rep.values.pow(2).sum()
        loss.backward()
        return float(loss.detach())

    reset_peak(device)
    loss, replay_seconds = timed(replay_backward, device)
    replay_memory = peak(device)
    return {
        "preset": f"configs/{NAVIGATOR_PRESET.name} (navigator, rollout batch, minibatches; K = {work.num_trajectories})",
        "num_trajectories": work.num_trajectories,
        "questions": work.questions,
        "trajectories": len(traj),
        "prompt_tokens": work.question_len + 1,
        "max_new_tokens": work.answer_len,
        "mean_thoughts": round(float(traj.num_thoughts.float().mean()), 2),
        "mean_new_tokens": round(float(traj.new_tokens.float().mean()), 2),
        "rollout": {"seconds": round(rollout_seconds, 3), **rollout_memory},
        "replay": {
            "trajectories": len(idx),
            "seconds": round(replay_seconds, 3),
            "loss_finite": math.isfinite(loss),
            **replay_memory,
        },
        "budget_gib": BUDGET_GIB,
        "under_budget": under_budget(rollout_memory, replay_memory),
    }


def decode(backbone: Backbone, work: Workload, tiny: bool) -> dict:
    """Answer tokens/s at the training shape: Hugging Face generate, coconav eager, coconav compiled."""
    lm, device = backbone.get(), backbone.device
    lm.eval()
    gen = torch.Generator().manual_seed(2)
    vocab = backbone.shape.vocab_size
    prompts = [random_words(work.question_len, vocab, gen) + [lm.special.bot] for _ in range(work.decode_batch)]
    ids, mask = lm.left_pad(prompts)
    pad, eos = lm.special.pad, lm.special.eos

    def coconav(max_new_tokens: int) -> torch.Tensor:
        return lm.generate(prompts, num_thoughts=work.thoughts, max_new_tokens=max_new_tokens).sequences

    def hf(max_new_tokens: int) -> torch.Tensor:
        return lm.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,  # no EOS before max_new_tokens: every row writes them all
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )[:, ids.shape[1] :]

    def measure(fn: Callable, warm: int) -> tuple[float, float, torch.Tensor]:
        """(first call's seconds, median seconds of the timed calls, the last call's tokens)."""
        _, first = timed(lambda: fn(warm), device)
        calls = [timed(lambda: fn(work.answer_len), device) for _ in range(work.repeats)]
        assert calls[-1][0].shape == (work.decode_batch, work.answer_len), f"tokens {tuple(calls[-1][0].shape)}"
        return first, statistics.median(s for _, s in calls), calls[-1][0]

    backend = "eager" if tiny else "inductor"
    lm.special = dataclasses.replace(lm.special, eos=-1)  # coconav without EOS: every row writes answer_len tokens
    try:
        with torch.no_grad():
            _, hf_seconds, _ = measure(hf, 2)
            lm.configure_generation("dynamic", compile=False)
            _, eager_seconds, eager_tokens = measure(coconav, 2)
            lm.compile_generation(backend=backend)
            # the first call compiles, at the timed shape (the static cache's capacity depends on max_new_tokens)
            compile_call, compiled_seconds, compiled_tokens = measure(coconav, work.answer_len)
    finally:
        lm.special = dataclasses.replace(lm.special, eos=eos)
        lm.configure_generation("dynamic", compile=False)
    seconds = {"hf_generate": hf_seconds, "coconav_eager": eager_seconds, "coconav_compiled": compiled_seconds}
    rate = {name: round(work.decode_batch * work.answer_len / s, 1) for name, s in seconds.items()}
    return {
        "batch": work.decode_batch,
        "prompt_tokens": work.question_len + 1,
        "thoughts": work.thoughts,
        "new_tokens": work.answer_len,
        "seconds_per_batch": {name: round(s, 3) for name, s in seconds.items()},
        "tokens_per_second": rate,
        "compiled_over_hf_generate": round(rate["coconav_compiled"] / rate["hf_generate"], 2),
        "compiled_over_eager": round(rate["coconav_compiled"] / rate["coconav_eager"], 2),
        "compile_backend": backend,
        "compile_seconds": round(compile_call - compiled_seconds, 1),
        # a random model's logits are nearly flat, so greedy tokens may differ by rounding alone; tests/test_gpu.py
        # checks compiled against eager on a model whose tokens are well separated
        "tokens_match_eager": bool(torch.equal(eager_tokens, compiled_tokens)),
    }


# -- the command -----------------------------------------------------------------------------------


def parse_stages(text: str | None) -> list[str]:
    """--stages: a comma-separated subset of STAGES (None: all), run in STAGES' order."""
    if text is None:
        return list(STAGES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise InputError(f"--stages takes names among {', '.join(STAGES)}, got {text!r}")
    return [name for name in STAGES if name in names]


def run_stage(name: str, fn: Callable[[], dict]) -> dict:
    """One stage: its result with status and seconds; an exception is recorded as a failure, not raised."""
    print0(f"[doctor] {name} ...")
    start = time.perf_counter()
    try:
        result = {"status": "ok", **fn()}
    except Exception as err:  # the failure is the finding: record it and go on to the next stage
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        result = {
            "status": "failed",
            "error": f"{type(err).__name__}: {first}"[:500],
            "traceback": traceback.format_exc().splitlines()[-20:],
        }
    result["seconds"] = round(time.perf_counter() - start, 1)
    free_memory()
    print0(f"[doctor] {name}: {result['status']} ({result['seconds']} s)")
    return result


def summary(name: str, r: dict) -> str:
    """The table's last column: one line per stage."""
    if r["status"] != "ok":
        return r.get("error") or r.get("note", "")
    gib = lambda value: "n/a on a CPU" if value is None else f"{value:.1f} GiB"
    budget = {None: "", True: f" (under {BUDGET_GIB} GiB)", False: f" (OVER {BUDGET_GIB} GiB)"}[r.get("under_budget")]
    if name == "gpu_tests":
        if "collected" in r:
            return f"{r['collected']} collected (not run: {r['note']})"
        return f"{r['passed']} passed, {r['failed']} failed, {r['errors']} errors, {r['skipped']} skipped"
    if name == "demo":
        accuracy = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["accuracy"].items())
        return f"{accuracy} on {r['test_questions']} questions, {r['wall_seconds']:.0f} s"
    if name == "train_step":
        return (
            f"{r['micro_batch']} x {r['seq_len']} tokens, {r['thoughts']} thoughts: {r['tokens_per_second']:,.0f} "
            f"tokens/s, peak {gib(r['peak_allocated_gib'])}{budget}, cache kept"
        )
    if name == "rollout":
        return (
            f"K = {r['num_trajectories']}, {r['trajectories']} trajectories: {r['rollout']['seconds']:.1f} s, peak "
            f"{gib(r['rollout']['peak_allocated_gib'])}; replay of {r['replay']['trajectories']}: "
            f"{r['replay']['seconds']:.1f} s, peak {gib(r['replay']['peak_allocated_gib'])}{budget}"
        )
    rate = r["tokens_per_second"]
    return (
        f"compiled {rate['coconav_compiled']:,.0f} tokens/s, HF generate {rate['hf_generate']:,.0f} "
        f"({r['compiled_over_hf_generate']}x), eager {rate['coconav_eager']:,.0f}"
    )


def format_table(stages: dict[str, dict]) -> str:
    rows = [("stage", "status", "seconds", "result")]
    rows += [(name, r["status"], f"{r['seconds']:.1f}", summary(name, r)) for name, r in stages.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}" for row in rows)


def run(gpu: bool, out: str | Path, stages: str | None = None) -> dict:
    """Run the stages (gpu: on CUDA at the real shapes; else tiny, on the CPU), write the report to `out`."""
    if gpu and not torch.cuda.is_available():
        raise InputError(
            "no CUDA device is visible (torch.cuda.is_available() is False): run it on a GPU machine, "
            "or `coconav doctor --tiny` for the CPU check"
        )
    names = parse_stages(stages)
    tiny = not gpu
    device = torch.device("cuda" if gpu else "cpu")
    coconut, navigator = load_config(COCONUT_PRESET), load_config(NAVIGATOR_PRESET)
    work = gpu_workload(coconut, navigator) if gpu else TINY_WORKLOAD
    backbone = Backbone(LLAMA3_8B if gpu else TINY_SHAPE, coconut, device)
    steps = {
        "gpu_tests": lambda: gpu_tests(tiny, timeout=120 if tiny else 300),
        "demo": lambda: run_demo(tiny),
        "train_step": lambda: train_step(backbone, work),
        "rollout": lambda: rollout(backbone, work, tiny),
        "decode": lambda: decode(backbone, work, tiny),
    }
    start = time.perf_counter()
    report = {
        "mode": "gpu" if gpu else "tiny",
        "command": f"coconav doctor --{'gpu' if gpu else 'tiny'}" + (f" --stages {','.join(names)}" if stages else ""),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
        "versions": {
            **current_versions(),
            "peft": peft.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
        },
        "workload": asdict(work),
        "ok": False,
        "seconds": 0.0,
        "stages": {},
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    for name in names:  # the report is rewritten after every stage: a run cut short keeps what it measured
        report["stages"][name] = run_stage(name, steps[name])
        report["seconds"] = round(time.perf_counter() - start, 1)
        report["ok"] = len(report["stages"]) == len(names) and all(
            r["status"] != "failed" for r in report["stages"].values()
        )
        write_json_atomic(out, report)
    print0(f"\n{format_table(report['stages'])}\n{'all stages ok' if report['ok'] else 'FAILED'}: wrote {out}")
    return report
