"""Evaluate a checkpoint on a data set, or answer one question with it.

    coconav eval --checkpoint runs/demo/coconut --data test --out runs/demo/coconut_test.json
    coconav eval --checkpoint RUN/checkpoints/stage-4 --data openai/gsm8k:test
    coconav generate --checkpoint runs/demo/coconut "3 + 4 * 2 - 1 ?" --show-thoughts
    coconav eval --checkpoint RUN --device cuda --dtype bfloat16 --max-new-tokens 128
    coconav eval --checkpoint runs/demo/navigator --num-trajectories 5 --fusion value --abstain-below 0.6

The mode and thought count come from the checkpoint's config and stage (the last stage's fixed
count) unless --num-thoughts says otherwise; never from the test example's own steps. The model runs
on CUDA when available (else the CPU), in the checkpoint's own dtype, unless --device / --dtype say
otherwise. A navigator checkpoint may run K trajectories per question (`--num-trajectories K` or
`auto`), fused into one answer by `--fusion` (majority, value or scorer); `--abstain-below A` reports
the coverage and accuracy when answering only where at least a share A of the trajectories agree.
"""

from __future__ import annotations

from pathlib import Path

import torch

from coconav.checkpoint import latest_checkpoint
from coconav.common import resolve_device, resolve_dtype
from coconav.config import EvalConfig, ModelConfig
from coconav.data.readers import load_examples
from coconav.data.splits import load_splits
from coconav.errors import InputError
from coconav.evaluate import check_multi, chat_prompts, evaluate, evaluate_multi, evaluate_navigator
from coconav.inference import CoconavModel
from coconav.model.build import build_latent_lm
from coconav.model.latent_lm import LatentLM


def run(checkpoint: str | Path, data: str = "test", num_thoughts: int | None = None, max_questions: int | None = None,
        batch_size: int | None = None, steer: bool = True, memory: bool = True, max_new_tokens: int | None = None,
        device: str | None = None, dtype: str | None = None, num_trajectories: int | str = 1, fusion: str = "majority",
        abstain_below: float = 0.0, compile: bool = False, trajectories_budget: float | None = None,
        halt_threshold: float | None = None) -> dict:
    """Evaluate; returns the JSON report (aggregates and per-question records).

    ``num_trajectories`` K > 1 or "auto" (navigator checkpoints): K trajectories per question fused by
    ``fusion``; ``abstain_below`` adds coverage and selective accuracy at that agreement threshold.

    For a navigator checkpoint, ``steer=False`` keeps its halting but feeds plain COCONUT thoughts back
    (the steering ablation) and ``memory=False`` switches its episodic and persistent memory off.
    ``trajectories_budget`` (with K "auto") replaces the checkpoint's navigator.trajectories_budget.
    ``halt_threshold`` replaces the checkpoint's navigator.halt_threshold (halt where p exceeds it).
    ``max_new_tokens`` replaces the checkpoint's eval.max_new_tokens. ``compile``: torch.compile generation's
    steps (static KV cache; LatentLM.compile_generation).
    """
    if max_new_tokens is not None and max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    folder = latest_checkpoint(checkpoint)
    model = CoconavModel.from_pretrained(folder, device=resolve_device(device), dtype=resolve_dtype(dtype), compile=compile)
    cfg = model.config
    if data in ("test", "validation"):
        examples = getattr(load_splits(cfg.data, cfg.seed), data)
    else:
        examples = load_examples(data, steps=cfg.data.gsm8k_steps)
    if not examples:
        raise InputError(f"no examples to evaluate in {data!r}")
    eval_cfg = EvalConfig(**{**cfg.eval.__dict__, "max_questions": max_questions or cfg.eval.max_questions,
                             "batch_size": batch_size or cfg.eval.batch_size,
                             "max_new_tokens": max_new_tokens or cfg.eval.max_new_tokens})
    if not (steer and memory) and (model.navigator is None or num_thoughts is not None):
        flag = "--no-steering" if not steer else "--no-memory"
        raise InputError(f"{flag} needs a navigator checkpoint and no --num-thoughts ({folder} "
                         + ("has no navigator)" if model.navigator is None else "would run with a fixed thought count)"))
    if halt_threshold is not None:
        set_halt_threshold(model, halt_threshold)
    plan = model.plan(num_thoughts, steer=steer)
    multi = num_trajectories != 1
    if multi or abstain_below:
        if model.navigator is None or num_thoughts is not None:
            raise InputError(f"--num-trajectories needs a navigator checkpoint and no --num-thoughts ({folder} "
                             + ("has no navigator)" if model.navigator is None else "would run with a fixed thought count)"))
        check_multi(num_trajectories, fusion, model.navigator.cfg.max_trajectories)
        if trajectories_budget is not None:
            set_trajectories_budget(model, num_trajectories, trajectories_budget)
        if not multi:
            raise InputError("--abstain-below needs --num-trajectories > 1 (one trajectory always agrees with itself)")
    if multi:
        result = evaluate_multi(model.lm, model.navigator, examples, eval_cfg, num_trajectories, fusion, abstain_below,
                                seed=cfg.seed, show_progress=True, steer=steer, memory=memory)
        how = {"mode": "coconut", "navigator": True, "max_thoughts": model.navigator.cfg.max_thoughts,
               "steering": steer, "memory": memory}
    elif plan.controller is not None:
        result = evaluate_navigator(model.lm, model.navigator, examples, eval_cfg, steer=steer, persistent_memory=memory,
                                    episodic_memory=memory, seed=cfg.seed, show_progress=True)
        how = {"mode": "coconut", "navigator": True, "max_thoughts": model.navigator.cfg.max_thoughts,
               "steering": steer, "memory": memory}
    else:
        result = evaluate(model.lm, examples, plan.mode, plan.num_thoughts, eval_cfg, seed=cfg.seed, show_progress=True)
        how = {"mode": plan.mode, "navigator": False, "num_thoughts": plan.num_thoughts}
    return {"checkpoint": str(folder), "data": data, "stage": model.stage, **how, **result.to_json()}


def set_trajectories_budget(model: CoconavModel, num_trajectories: int | str, budget: float) -> None:
    """--trajectories-budget: the mean K per question that "auto" spends (replaces the checkpoint's)."""
    if num_trajectories != "auto":
        raise InputError("--trajectories-budget needs --num-trajectories auto")
    top = model.navigator.cfg.max_trajectories
    if not 1 <= budget <= top:
        raise InputError(f"--trajectories-budget must be in [1, navigator.max_trajectories={top}], got {budget}")
    model.navigator.cfg.trajectories_budget = float(budget)


def set_halt_threshold(model: CoconavModel, threshold: float) -> None:
    """--halt-threshold: where greedy halting stops (replaces the checkpoint's navigator.halt_threshold)."""
    if model.navigator is None:
        raise InputError("--halt-threshold needs a navigator checkpoint")
    if not 0 < threshold < 1:
        raise InputError(f"--halt-threshold must be in (0, 1), got {threshold}")
    model.navigator.cfg.halt_threshold = float(threshold)


def run_zero_shot(model: str, data: str, max_questions: int | None = None, batch_size: int = 32,
                  max_new_tokens: int = 256, device: str | None = None, dtype: str | None = None) -> dict:
    """An untouched pretrained model, zero-shot with its chat template and a step-by-step instruction."""
    torch_device = resolve_device(device)
    if dtype is not None:
        resolve_dtype(dtype)
        if dtype not in ("float32", "bfloat16"):
            raise InputError(f"--zero-shot loads float32 or bfloat16 weights, not {dtype!r}")
    examples = load_examples(data)
    if max_questions:
        examples = examples[:max_questions]
    if not examples:
        raise InputError(f"no examples to evaluate in {data!r}")
    lm = build_latent_lm(ModelConfig(name_or_path=model, dtype=dtype)).to(torch_device)
    prompts = chat_prompts(lm.tokenizer, [ex.question for ex in examples])
    cfg = EvalConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    result = evaluate(lm, examples, "cot", 0, cfg, prompts=prompts, show_progress=True)
    return {"model": model, "data": data, "mode": "zero_shot", "navigator": False, "num_thoughts": 0,
            **result.to_json()}


def generate_text(checkpoint: str | Path, question: str, num_thoughts: int | None = None, show_thoughts: bool = False,
                  top_k: int = 5, max_new_tokens: int | None = None, device: str | None = None,
                  dtype: str | None = None) -> str:
    """The answer to one question; with `show_thoughts`, each thought's nearest tokens under the LM head."""
    if not question or not question.strip():
        raise InputError("the question is empty")
    model = CoconavModel.from_pretrained(checkpoint, device=resolve_device(device), dtype=resolve_dtype(dtype))
    plan = model.plan(num_thoughts)
    out = model.answer([question], plan, max_new_tokens, return_thoughts=show_thoughts)
    if not show_thoughts:
        return out.texts[0]
    lines = [f"answer: {out.texts[0]}", f"mode: {plan.mode}{' + navigator' if plan.controller is not None else ''}, "
             f"thoughts: {int(out.num_thoughts[0])}, forward passes: {int(out.forward_passes[0])}"]
    if out.thoughts is not None:
        lines += probe_thoughts(model.lm, out.thoughts[0, : int(out.num_thoughts[0])], top_k)
    return "\n".join(lines)


@torch.no_grad()
def probe_thoughts(lm: LatentLM, thoughts: torch.Tensor, top_k: int) -> list[str]:
    """For each thought [L, D], the top-k tokens of the LM head applied to it (the paper's probing view)."""
    lines = []
    probs = torch.softmax(lm.lm_head(thoughts).float(), dim=-1)  # [L, V]
    values, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    for i in range(thoughts.shape[0]):
        tokens = ", ".join(f"{lm.tokenizer.convert_ids_to_tokens(int(t))!r} {float(p):.2f}" for p, t in zip(values[i], ids[i]))
        lines.append(f"thought {i + 1}: {tokens}")
    return lines


def parse_trajectories(text: str | int | None) -> int | str:
    """--num-trajectories: an integer or "auto" (None: 1)."""
    if text is None:
        return 1
    if isinstance(text, int) or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--num-trajectories must be an integer or 'auto', got {text!r}") from None
