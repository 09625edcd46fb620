"""The Python inference API: load a checkpoint (with its navigator, if it has one) and answer questions.

    from coconav import CoconavModel
    model = CoconavModel.from_pretrained("runs/demo/navigator")
    model.generate("3 + 4 * 2 ?")                                   # '### 4'
    model.generate(["3 + 4 ?", "7 * 2 - 1 ?"], return_trajectories=True)
    # [{'answer': '### 7', 'num_thoughts': 2, 'halt_probs': [...], 'values': [...], 'forward_passes': 6,
    #   'steps': [{'step': 0, 'top_tokens': [['3', 0.41], ...], 'norm': ..., ...}, ...], 'memory_reads': [...]}, ...]

Without a navigator the thought count is the checkpoint's last stage's fixed count (or the
`num_thoughts` argument); with one, the navigator halts and steers (greedily).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from coconav.checkpoint import checkpoint_meta, latest_checkpoint, load_module
from coconav.config import RunConfig, from_dict
from coconav.data.curriculum import build_prompt, encode_question
from coconav.errors import CheckpointError, InputError
from coconav.model.controller import NavigatorController
from coconav.model.latent_lm import LatentLM
from coconav.model.navigator import Navigator
from coconav.trace import TraceController, persistent_reads, trace_steps


@dataclass
class CoconavModel:
    """A trained latent LM, its run config and stage, and optionally a navigator."""

    lm: LatentLM
    config: RunConfig
    stage: int
    navigator: Navigator | None = None
    fixed_thoughts: int | None = None  # a navigator checkpoint's base count (its COCONUT model's last stage)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CoconavModel:
        """Load a checkpoint folder, or a run folder's latest checkpoint (weights through safetensors)."""
        folder = latest_checkpoint(directory)
        meta = checkpoint_meta(folder)
        if "config" not in meta or "train_state" not in meta:
            raise CheckpointError(f"{folder}: metadata lacks the run config (not written by coconav train)")
        cfg = from_dict(RunConfig, meta["config"])
        lm = LatentLM.from_pretrained(folder)
        lm.eval()
        navigator, fixed = None, None
        stage = int(meta["train_state"].get("stage", 0))
        if cfg.navigator is not None:
            navigator = load_module(folder, "navigator", Navigator(lm.hidden_size, cfg.navigator)).to(lm.device).eval()
            fixed = meta.get("metrics", {}).get("base_thoughts")
        return cls(lm=lm, config=cfg, stage=stage, navigator=navigator, fixed_thoughts=fixed)

    @property
    def mode(self) -> str:
        return self.config.curriculum.mode if self.navigator is None else "coconut"

    def default_thoughts(self) -> int:
        """The fixed thought count without a navigator: eval.num_thoughts, else the last stage's."""
        if self.fixed_thoughts is not None and self.config.eval.num_thoughts is None:
            return int(self.fixed_thoughts)
        return self.config.eval_thoughts(self.stage)

    @torch.no_grad()
    def generate(self, questions: str | list[str], num_thoughts: int | None = None, max_new_tokens: int | None = None,
                 use_navigator: bool = True, return_trajectories: bool = False, top_k: int = 5,
                 return_states: bool = False):
        """Answers for one question (a string) or a list; with return_trajectories, dicts with the
        thought count, halting probabilities and values per thought step (navigator only), passes, and
        the thought trace (coconav/trace.py): `steps` (per step t = 0..n: top_k tokens under the LM head,
        norm, cosine to the previous state; with a navigator halt prob, value, steering-offset norm and
        episodic reads) and `memory_reads` (persistent-memory entries read). return_states adds
        `states`, the hidden states h_0..h_n as a tensor [n+1, D]."""
        single = isinstance(questions, str)
        items = [questions] if single else list(questions)
        if not items or any(not isinstance(q, str) or not q.strip() for q in items):
            raise InputError("every question must be a non-empty string")
        lm = self.lm
        navigate = use_navigator and self.navigator is not None and num_thoughts is None
        thoughts = 0 if navigate else (num_thoughts if num_thoughts is not None else self.default_thoughts())
        prompts = [build_prompt(encode_question(lm.tokenizer, q), self.mode, thoughts, lm.special) for q in items]
        longest = max(len(p) for p in prompts)
        if longest >= lm.context_length:
            raise InputError(f"a question has {longest} tokens, longer than the model's context of {lm.context_length}")
        controller = NavigatorController(self.navigator, sample=False) if navigate else None
        tracer = None
        if return_trajectories:  # the tracer decides exactly as the plain path does (tested)
            counts = torch.full((len(items),), thoughts if self.mode == "coconut" else 0, dtype=torch.long)
            tracer = TraceController(controller, None if navigate else counts)
        max_thoughts = self.navigator.cfg.max_thoughts if navigate else (int(counts.max()) if tracer is not None else None)
        out = lm.generate(prompts, num_thoughts=thoughts if self.mode == "coconut" else 0,
                          controller=tracer if tracer is not None else controller, max_thoughts=max_thoughts,
                          max_new_tokens=max_new_tokens or self.config.eval.max_new_tokens)
        if not return_trajectories:
            return out.texts[0] if single else out.texts
        steps = trace_steps(lm, tracer, out.num_thoughts, top_k)
        reads = persistent_reads(tracer, len(items))
        records = []
        for i, text in enumerate(out.texts):
            n = int(out.num_thoughts[i])
            record = {"answer": text, "num_thoughts": n, "new_tokens": int(out.new_tokens[i]),
                      "forward_passes": int(out.forward_passes[i])}
            if controller is not None:
                record["halt_probs"] = [float(p[i]) for p in controller.halt_probs[: n + 1]]
                record["values"] = [float(v[i]) for v in controller.values[: n + 1]]
            record["steps"], record["memory_reads"] = steps[i], reads[i]
            if return_states:
                record["states"] = tracer.states()[i, : n + 1].cpu() if tracer.hidden else torch.zeros(0, lm.hidden_size)
            records.append(record)
        return records[0] if single else records
