"""Evaluate a checkpoint on a data set, or answer one question with it.

    coconav eval --checkpoint runs/demo/coconut --data test --out runs/demo/coconut_test.json
    coconav eval --checkpoint RUN/checkpoints/stage-4 --data openai/gsm8k:test
    coconav generate --checkpoint runs/demo/coconut "3 + 4 * 2 - 1 ?" --show-thoughts
    coconav eval --checkpoint RUN --device cuda --dtype bfloat16 --max-new-tokens 128
    coconav eval --checkpoint runs/demo/navigator --num-trajectories 5 --fusion value --abstain-below 0.6
    coconav eval --checkpoint runs/demo/coconut --sweep-thoughts 0-4 --data validation --out frontier.json

The mode and thought count come from the checkpoint's config and stage (the last stage's fixed
count) unless --num-thoughts says otherwise; never from the test example's own steps. The model runs
on CUDA when available (else the CPU), in the checkpoint's own dtype, unless --device / --dtype say
otherwise. A navigator checkpoint may run K trajectories per question (`--num-trajectories K` or
`auto`), fused into one answer by `--fusion` (majority, value or scorer); `--abstain-below A` reports
the coverage and accuracy when answering only where at least a share A of the trajectories agree.
`--sweep-thoughts A-B` evaluates the checkpoint's COCONUT LM at every fixed count k = A..B (a
navigator is ignored) and reports the compute frontier they span (coconav.eval.frontier), with the
length rule: one thought budget per difficulty (per bin of question length for a data file), fitted on
the run's validation split and applied to --data (with --data validation, fitted and applied on the same
questions: `length_rule_fit.in_sample` says so).
"""

from __future__ import annotations

from pathlib import Path

import torch

from coconav.common import resolve_device, resolve_dtype
from coconav.config import EvalConfig, ModelConfig
from coconav.data.readers import load_examples
from coconav.data.splits import load_splits
from coconav.data.tasks import get_task
from coconav.decode.generate import check_multi
from coconav.decode.settings import NavigatorSettings
from coconav.errors import InputError
from coconav.eval.evaluate import chat_prompts, evaluate, evaluate_multi, evaluate_navigator, sweep_thoughts
from coconav.inference import CoconavModel
from coconav.io.checkpoint import latest_checkpoint
from coconav.io.hub import hub_source
from coconav.model.build import build_latent_lm
from coconav.model.latent_lm import LatentLM


def run(
    checkpoint: str | Path,
    data: str = "test",
    num_thoughts: int | None = None,
    max_questions: int | None = None,
    batch_size: int | None = None,
    steer: bool = True,
    memory: bool = True,
    max_new_tokens: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    num_trajectories: int | str = 1,
    fusion: str = "majority",
    abstain_below: float = 0.0,
    compile: bool = False,
    trajectories_budget: float | None = None,
    halt_threshold: float | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> dict:
    """Evaluate; returns the JSON report (aggregates and per-question records). A checkpoint from the Hub is
    reported by its repo id and commit (`checkpoint`, `commit`), not by its folder in the cache.

    ``num_trajectories`` K > 1 or "auto" (navigator checkpoints): K trajectories per question fused by
    ``fusion``; ``abstain_below`` adds coverage and selective accuracy at that agreement threshold.

    For a navigator checkpoint, ``steer=False`` keeps its halting but feeds plain COCONUT thoughts back
    (the steering ablation) and ``memory=False`` switches every memory off (episodic, persistent and the group read).
    ``trajectories_budget`` (with K "auto") replaces the checkpoint's navigator.trajectories_budget.
    ``halt_threshold`` replaces the checkpoint's halting threshold (halt where p exceeds it): navigator.halt_threshold
    at K = 1, navigator.multi_halt_threshold (when set, else halt_threshold) at K != 1.
    ``max_new_tokens`` replaces the checkpoint's eval.max_new_tokens. ``compile``: torch.compile generation's
    steps (static KV cache; LatentLM.compile_generation). ``revision``, ``token``, ``cache_dir``: a Hub id's
    branch, tag or commit, token and cache (CoconavModel.from_pretrained).
    """
    if max_new_tokens is not None and max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    folder = latest_checkpoint(checkpoint, revision=revision, token=token, cache_dir=cache_dir)
    model = CoconavModel.from_pretrained(
        folder,
        device=resolve_device(device),
        dtype=resolve_dtype(dtype),
        compile=compile,
        halt_threshold=halt_threshold,
    )
    cfg = model.config
    examples = eval_examples(cfg, data)
    eval_cfg = eval_settings(cfg, max_questions, batch_size, max_new_tokens)
    if not (steer and memory) and (model.navigator is None or num_thoughts is not None):
        flag = "--no-steering" if not steer else "--no-memory"
        raise InputError(
            f"{flag} needs a navigator checkpoint and no --num-thoughts ({folder} "
            + ("has no navigator)" if model.navigator is None else "would run with a fixed thought count)")
        )
    plan = model.plan(num_thoughts, steer=steer)
    multi = num_trajectories != 1
    if multi or abstain_below:
        if model.navigator is None or num_thoughts is not None:
            raise InputError(
                f"--num-trajectories needs a navigator checkpoint and no --num-thoughts ({folder} "
                + ("has no navigator)" if model.navigator is None else "would run with a fixed thought count)")
            )
        check_multi(num_trajectories, fusion, model.navigator.cfg.max_trajectories)
        if trajectories_budget is not None:
            set_trajectories_budget(model, num_trajectories, trajectories_budget)
        if not multi:
            raise InputError("--abstain-below needs --num-trajectories > 1 (one trajectory always agrees with itself)")
    if multi:
        settings = model.settings(num_trajectories, steer=steer, memory=memory)
        result = evaluate_multi(
            model.lm,
            model.navigator,
            examples,
            eval_cfg,
            settings,
            fusion,
            abstain_below,
            seed=cfg.seed,
            show_progress=True,
        )
        how = navigator_report(model, settings)
    elif plan.controller is not None:
        settings = model.settings(1, steer=steer, memory=memory)
        result = evaluate_navigator(
            model.lm, model.navigator, examples, eval_cfg, settings=settings, seed=cfg.seed, show_progress=True
        )
        how = navigator_report(model, settings)
    else:
        result = evaluate(model.lm, examples, plan.mode, plan.num_thoughts, eval_cfg, seed=cfg.seed, show_progress=True)
        how = {"mode": plan.mode, "navigator": False, "num_thoughts": plan.num_thoughts}
    return {**checkpoint_source(folder), "data": data, "stage": model.stage, **how, **result.to_json()}


def checkpoint_source(folder: Path) -> dict:
    """How a report names its checkpoint: {'checkpoint': folder} for a local one, and for a snapshot of the Hub
    cache {'checkpoint': repo id, 'commit': its commit} (the cache folder says nothing to a reader elsewhere)."""
    source = hub_source(folder)
    if source is None:
        return {"checkpoint": str(folder)}
    return {"checkpoint": source.repo_id, "commit": source.commit}


def eval_examples(cfg, data: str) -> list:
    """--data: 'test' or 'validation' (the run's splits) or a data file / hub id; none is an InputError."""
    if data in ("test", "validation"):
        examples = getattr(load_splits(cfg.data, cfg.seed), data)
    else:
        examples = load_examples(data, steps=cfg.data.gsm8k_steps)
    if not examples:
        raise InputError(f"no examples to evaluate in {data!r}")
    return examples


def eval_settings(cfg, max_questions: int | None, batch_size: int | None, max_new_tokens: int | None) -> EvalConfig:
    """The checkpoint's eval settings with the command line's replacements."""
    return EvalConfig(
        **{
            **cfg.eval.__dict__,
            "max_questions": max_questions or cfg.eval.max_questions,
            "batch_size": batch_size or cfg.eval.batch_size,
            "max_new_tokens": max_new_tokens or cfg.eval.max_new_tokens,
        }
    )


def run_sweep(
    checkpoint: str | Path,
    thoughts: list[int],
    data: str = "test",
    max_questions: int | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> dict:
    """--sweep-thoughts: the checkpoint's COCONUT LM (a navigator is ignored) at every fixed count of `thoughts`
    on `data`, and the frontier they span: points, envelope, oracle curve and, for a built-in task's splits
    (whose questions have a difficulty), the difficulty-oracle curve. The length rule (`length_rule`,
    `length_rule_fit`) is fitted on the run's validation split, its same counts evaluated too, and applied to
    `data`: one budget per difficulty for a built-in task's splits, else per bin of question length. With
    `data` "validation" it is fitted on the very questions it is applied to (in sample, said in the report)."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    folder = latest_checkpoint(checkpoint, revision=revision, token=token, cache_dir=cache_dir)
    model = CoconavModel.from_pretrained(folder, device=resolve_device(device), dtype=resolve_dtype(dtype))
    cfg = model.config
    if cfg.curriculum.mode != "coconut":
        raise InputError(
            f"--sweep-thoughts needs a COCONUT checkpoint; {folder} was trained with curriculum.mode="
            f"{cfg.curriculum.mode!r}"
        )
    if thoughts and max(thoughts) >= model.lm.context_length:  # before any count is evaluated, not at the last
        raise InputError(
            f"--sweep-thoughts: {max(thoughts)} thoughts do not fit the model's context of "
            f"{model.lm.context_length} positions"
        )
    examples = eval_examples(cfg, data)
    builtin = data in ("test", "validation") and cfg.data.task != "files"
    eval_cfg = eval_settings(cfg, max_questions, batch_size, max_new_tokens)
    fit = examples if data == "validation" else load_splits(cfg.data, cfg.seed).validation
    front = sweep_thoughts(
        model.lm,
        examples,
        thoughts,
        eval_cfg,
        seed=cfg.seed,
        with_difficulty=builtin,
        show_progress=True,
        fit_examples=fit,
        rule_by_difficulty=builtin and get_task(cfg.data.task).difficulty_visible,
    )
    if "length_rule" in front:
        front["length_rule_fit"]["data"] = "validation"
    else:
        front["length_rule_fit"] = {"data": "validation", "num_questions": 0, "note": "no validation questions"}
    return {
        **checkpoint_source(folder),
        "data": data,
        "stage": model.stage,
        "mode": "coconut",
        "navigator": False,
        "sweep_thoughts": [thoughts[0], thoughts[-1]],
        "num_questions": len(examples[: eval_cfg.max_questions or None]),
        **front,
    }


def navigator_report(model: CoconavModel, settings: NavigatorSettings) -> dict:
    """How a navigator checkpoint was evaluated, for the report."""
    return {
        "mode": "coconut",
        "navigator": True,
        "max_thoughts": model.navigator.cfg.max_thoughts,
        "steering": settings.steer,
        "memory": settings.memory,
        "halt_threshold": settings.halt_threshold,
    }


def set_trajectories_budget(model: CoconavModel, num_trajectories: int | str, budget: float) -> None:
    """--trajectories-budget: the mean K per question that "auto" spends (replaces the checkpoint's)."""
    if num_trajectories != "auto":
        raise InputError("--trajectories-budget needs --num-trajectories auto")
    top = model.navigator.cfg.max_trajectories
    if not 1 <= budget <= top:
        raise InputError(f"--trajectories-budget must be in [1, navigator.max_trajectories={top}], got {budget}")
    model.navigator.cfg.trajectories_budget = float(budget)


def run_zero_shot(
    model: str,
    data: str,
    max_questions: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 256,
    device: str | None = None,
    dtype: str | None = None,
) -> dict:
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
    return {
        "model": model,
        "data": data,
        "mode": "zero_shot",
        "navigator": False,
        "num_thoughts": 0,
        **result.to_json(),
    }


def generate_text(
    checkpoint: str | Path,
    question: str,
    num_thoughts: int | None = None,
    show_thoughts: bool = False,
    top_k: int = 5,
    max_new_tokens: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> str:
    """The answer to one question; with `show_thoughts`, each thought's nearest tokens under the LM head."""
    if not question or not question.strip():
        raise InputError("the question is empty")
    model = CoconavModel.from_pretrained(
        checkpoint,
        device=resolve_device(device),
        dtype=resolve_dtype(dtype),
        revision=revision,
        token=token,
        cache_dir=cache_dir,
    )
    plan = model.plan(num_thoughts)
    out = model.answer([question], plan, max_new_tokens, return_thoughts=show_thoughts)
    if not show_thoughts:
        return out.texts[0]
    lines = [
        f"answer: {out.texts[0]}",
        f"mode: {plan.mode}{' + navigator' if plan.controller is not None else ''}, "
        f"thoughts: {int(out.num_thoughts[0])}, forward passes: {int(out.forward_passes[0])}",
    ]
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
        tokens = ", ".join(
            f"{lm.tokenizer.convert_ids_to_tokens(int(t))!r} {float(p):.2f}" for p, t in zip(values[i], ids[i])
        )
        lines.append(f"thought {i + 1}: {tokens}")
    return lines
