"""Evaluate a checkpoint on a data set, or answer one question with it.

    coconav eval --checkpoint runs/demo/coconut --data test --out runs/demo/coconut_test.json
    coconav eval --checkpoint RUN/checkpoints/stage-4 --data ../shared/data/gsm8k/test.jsonl
    coconav generate --checkpoint runs/demo/coconut "3 + 4 * 2 - 1 ?" --show-thoughts

The mode and thought count come from the checkpoint's config and stage (the last stage's fixed
count) unless --num-thoughts says otherwise; never from the test example's own steps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from coconav.checkpoint import checkpoint_meta, latest_checkpoint
from coconav.config import EvalConfig, RunConfig, from_dict
from coconav.data.curriculum import build_prompt, encode_question
from coconav.data.readers import load_examples
from coconav.data.splits import load_splits
from coconav.errors import CheckpointError, InputError
from coconav.evaluate import evaluate
from coconav.model.latent_lm import LatentLM


def load_for_inference(checkpoint: str | Path) -> tuple[LatentLM, RunConfig, int, Path]:
    """(model, its run config, its stage, the folder) of a checkpoint or a run folder's latest one."""
    folder = latest_checkpoint(checkpoint)
    meta = checkpoint_meta(folder)
    if "config" not in meta or "train_state" not in meta:
        raise CheckpointError(f"{folder}: metadata lacks the run config (not written by coconav train)")
    cfg = from_dict(RunConfig, meta["config"])
    lm = LatentLM.from_pretrained(folder)
    lm.eval()
    return lm, cfg, int(meta["train_state"].get("stage", 0)), folder


def thoughts_for(cfg: RunConfig, stage: int, num_thoughts: int | None) -> tuple[str, int]:
    """The mode and thought count to evaluate a model trained up to `stage` with."""
    if num_thoughts is not None and num_thoughts < 0:
        raise InputError(f"--num-thoughts must be >= 0, got {num_thoughts}")
    if num_thoughts is not None:
        return cfg.curriculum.mode, num_thoughts
    if cfg.eval.num_thoughts is not None:
        return cfg.curriculum.mode, cfg.eval.num_thoughts
    return cfg.curriculum.mode, cfg.curriculum.thoughts_at(stage)


def run(checkpoint: str | Path, data: str = "test", num_thoughts: int | None = None, max_questions: int | None = None,
        batch_size: int | None = None) -> dict:
    """Evaluate; returns the JSON report (aggregates and per-question records)."""
    lm, cfg, stage, folder = load_for_inference(checkpoint)
    if data in ("test", "validation"):
        examples = getattr(load_splits(cfg.data, cfg.seed), data)
    else:
        examples = load_examples(data, steps=cfg.data.gsm8k_steps)
    if not examples:
        raise InputError(f"no examples to evaluate in {data!r}")
    mode, thoughts = thoughts_for(cfg, stage, num_thoughts)
    eval_cfg = EvalConfig(**{**cfg.eval.__dict__, "max_questions": max_questions or cfg.eval.max_questions,
                             "batch_size": batch_size or cfg.eval.batch_size})
    result = evaluate(lm, examples, mode, thoughts, eval_cfg, seed=cfg.seed, show_progress=True)
    return {"checkpoint": str(folder), "data": data, "mode": mode, "stage": stage, "num_thoughts": thoughts,
            **result.to_json()}


def generate_text(checkpoint: str | Path, question: str, num_thoughts: int | None = None, show_thoughts: bool = False,
                  top_k: int = 5, max_new_tokens: int | None = None) -> str:
    """The answer to one question; with `show_thoughts`, each thought's nearest tokens under the LM head."""
    if not question or not question.strip():
        raise InputError("the question is empty")
    lm, cfg, stage, _ = load_for_inference(checkpoint)
    mode, thoughts = thoughts_for(cfg, stage, num_thoughts)
    prompt = build_prompt(encode_question(lm.tokenizer, question), mode, thoughts, lm.special)
    if len(prompt) >= lm.context_length:
        raise InputError(f"the question has {len(prompt)} tokens, longer than the model's context of {lm.context_length}")
    out = lm.generate([prompt], num_thoughts=thoughts if mode == "coconut" else 0,
                      max_new_tokens=max_new_tokens or cfg.eval.max_new_tokens, return_thoughts=show_thoughts)
    if not show_thoughts:
        return out.texts[0]
    lines = [f"answer: {out.texts[0]}", f"mode: {mode}, thoughts: {int(out.num_thoughts[0])}, "
             f"forward passes: {int(out.forward_passes[0])}"]
    if out.thoughts is not None:
        lines += probe_thoughts(lm, out.thoughts[0, : int(out.num_thoughts[0])], top_k)
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
