"""The Python inference API: load a checkpoint (with its navigator, if it has one) and answer questions.

    from coconav import CoconavModel
    model = CoconavModel.from_pretrained("runs/demo/navigator")
    model.generate("3 + 4 * 2 ?")                                   # '### 4'
    model.generate(["3 + 4 ?", "7 * 2 - 1 ?"], return_trajectories=True)
    # [{'answer': '### 7', 'num_thoughts': 2, 'halt_probs': [...], 'values': [...], 'forward_passes': 6,
    #   'steps': [{'step': 0, 'top_tokens': [['3', 0.41], ...], 'norm': ..., ...}, ...], 'memory_reads': [...]}, ...]

With a navigator, K trajectories per question fused into one answer:
    model.generate(["3 + 4 ?"], num_trajectories=5, fusion="majority", return_trajectories=True)
    # [{'answer': '### 7', 'agreement': 0.8, 'num_trajectories': 5, 'forward_passes': 31, 'fusion': 'majority',
    #   'trajectories': [{'answer': '### 7', 'num_thoughts': 2, 'halt_probs': [...], 'values': [...],
    #                     'score': 0.0, 'weight': 0.2, 'thought_norms': [...], 'steps': [...], 'memory_reads': []}, ...]}]
Trajectory 0 is the greedy one, reading its peers through the group memory (so not the K = 1 answer once the
group read is trained); the others steer with the navigator's inference temperatures (coconav/decode/groups.py);
`num_trajectories="auto"` lets the K-selector choose K per question under navigator.trajectories_budget. With K != 1
the navigator halts at navigator.multi_halt_threshold when the checkpoint has one (chosen for K > 1), else at
navigator.halt_threshold.

Without a navigator the thought count is the checkpoint's last stage's fixed count (or the
`num_thoughts` argument); with one, the navigator halts and steers (greedily). The model runs on CUDA
when available (else the CPU) in the checkpoint's own dtype unless `device` / `dtype` say otherwise:
    CoconavModel.from_pretrained("runs/demo/navigator", device="cpu", dtype="bfloat16")

A Hub id loads through the Hub cache, at a revision, with a token, from a cache folder; push_to_hub uploads the
checkpoint folder a model was loaded from (what `coconav push` uploads, its card rendered for the repo):
    model = CoconavModel.from_pretrained("USER/NAME", revision="v1", token=None, cache_dir=None)
    CoconavModel.from_pretrained("runs/demo/coconut").push_to_hub("USER/NAME", private=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from coconav.common import resolve_device, resolve_dtype
from coconav.config import RunConfig, from_dict
from coconav.decode.controller import NavigatorController
from coconav.decode.generate import (
    ThoughtPlan,
    check_multi,
    generate_answers,
    multi_answers,
    navigator_prompts,
    question_prompts,
)
from coconav.decode.settings import NavigatorSettings, resolve_settings
from coconav.decode.trace import TraceController, persistent_reads, trace_steps
from coconav.errors import CheckpointError, InputError, InputTypeError
from coconav.io.checkpoint import checkpoint_meta, latest_checkpoint, load_module
from coconav.model.latent_lm import GenerationOutput, LatentLM, ThoughtController
from coconav.model.navigator import Navigator


def _check_questions(questions: list) -> None:
    """Every question a non-empty string: InputTypeError (a TypeError) for another type, InputError for an empty
    one or an empty list."""
    for question in questions:
        if not isinstance(question, str):
            raise InputTypeError(f"every question must be a string, got {type(question).__name__}")
    if not questions or any(not q.strip() for q in questions):
        raise InputError("every question must be a non-empty string")


@dataclass
class CoconavModel:
    """A trained latent LM, its run config and stage, and optionally a navigator."""

    lm: LatentLM
    config: RunConfig
    stage: int
    navigator: Navigator | None = None
    fixed_thoughts: int | None = None  # a navigator checkpoint's base count (its COCONUT model's last stage)
    # where the navigator's halting stops, at any K (None: its config's halt_threshold at K = 1, and its
    # multi_halt_threshold, when set, at K != 1; see settings)
    halt_threshold: float | None = None
    path: Path | None = None  # the checkpoint folder it was loaded from (push_to_hub uploads it)

    def __post_init__(self) -> None:
        if self.halt_threshold is not None:
            if self.navigator is None:
                raise InputError("--halt-threshold needs a navigator checkpoint")
            self.settings()  # its range, checked once, where every navigator setting is resolved

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        compile: bool = False,
        kv_cache: str = "dynamic",
        halt_threshold: float | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> CoconavModel:
        """Load a checkpoint folder, a run folder's latest checkpoint, or a Hub id "USER/NAME" (through the Hub
        cache; HF_HUB_OFFLINE=1 reads the cache only), weights through safetensors, frozen and in eval mode.
        Hub ids only: `revision`, a branch, tag or commit (default main); `token`, for a private or gated repo
        (default: the logged-in token); `cache_dir`, the Hub cache (default HF_HUB_CACHE).
        `device`: 'cpu', 'cuda', 'cuda:N' (None: CUDA when available, else the CPU);
        `dtype`: 'float32', 'bfloat16', 'float16' (None: the dtype the checkpoint was saved in);
        `compile`: torch.compile generation's steps (implies `kv_cache="static"`; see LatentLM.compile_generation);
        `halt_threshold`: where the navigator's halting stops at any K, replacing the checkpoint's
        navigator.halt_threshold (and multi_halt_threshold)."""
        device = device if isinstance(device, torch.device) else resolve_device(device)
        dtype = dtype if isinstance(dtype, torch.dtype) or dtype is None else resolve_dtype(dtype)
        folder = latest_checkpoint(directory, revision=revision, token=token, cache_dir=cache_dir)
        meta = checkpoint_meta(folder)
        if "config" not in meta or "train_state" not in meta:
            raise CheckpointError(f"{folder}: metadata lacks the run config (not written by coconav train)")
        cfg = from_dict(RunConfig, meta["config"])
        lm = LatentLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        lm.configure_generation(kv_cache, compile)
        navigator, fixed = None, None
        stage = int(meta["train_state"].get("stage", 0))
        if cfg.navigator is not None:
            navigator = load_module(folder, "navigator", Navigator(lm.hidden_size, cfg.navigator)).to(device).eval()
            fixed = meta.get("metrics", {}).get("base_thoughts")
        return cls(
            lm=lm,
            config=cfg,
            stage=stage,
            navigator=navigator,
            fixed_thoughts=fixed,
            halt_threshold=halt_threshold,
            path=folder,
        )

    def push_to_hub(
        self,
        repo_id: str,
        revision: str | None = None,
        private: bool | None = None,
        commit_message: str | None = None,
        token: str | None = None,
    ) -> str:
        """Upload the checkpoint this model was loaded from to the Hub model repo `repo_id` (created if missing), in
        one commit: safetensors weights, coconav.json, tokenizer, navigator and a model card rendered for the repo
        (the files `coconav push` uploads; never the optimizer state or a pickle). `revision`: the branch to commit
        to (created if missing; default main); `private`: create the repo private (None: the Hub's default);
        `token`: default the logged-in token. The folder is uploaded as saved: a halt_threshold given to
        from_pretrained is not part of it. Returns the repo URL."""
        from coconav.io.hub import push

        if self.path is None:
            raise InputError(
                "push_to_hub needs a model loaded with CoconavModel.from_pretrained (its checkpoint folder)"
            )
        return push(self.path, repo_id, private=private, token=token, revision=revision, commit_message=commit_message)

    def settings(self, num_trajectories: int | str = 1, steer: bool = True, memory: bool = True) -> NavigatorSettings:
        """The navigator's settings for a run with `num_trajectories` per question (resolve_settings): the explicit
        halt_threshold, else the checkpoint's (multi_halt_threshold at K != 1 when set, else halt_threshold)."""
        if self.navigator is None:
            raise InputError("navigator settings need a navigator checkpoint")
        return resolve_settings(
            self.navigator.cfg, num_trajectories, halt_threshold=self.halt_threshold, steer=steer, memory=memory
        )

    def halt_threshold_for(self, num_trajectories: int | str) -> float | None:
        """The halting threshold of a run with `num_trajectories` per question (see settings); None without a
        navigator."""
        return None if self.navigator is None else self.settings(num_trajectories).halt_threshold

    @property
    def mode(self) -> str:
        return self.config.curriculum.mode if self.navigator is None else "coconut"

    def default_thoughts(self) -> int:
        """The fixed thought count without a navigator: eval.num_thoughts, else the last stage's."""
        if self.fixed_thoughts is not None and self.config.eval.num_thoughts is None:
            return int(self.fixed_thoughts)
        return self.config.eval_thoughts(self.stage)

    def plan(
        self,
        num_thoughts: int | None = None,
        use_navigator: bool = True,
        steer: bool = True,
        controller: ThoughtController | None = None,
    ) -> ThoughtPlan:
        """How questions think: the navigator (greedy; `steer=False` keeps its halting only) unless
        `num_thoughts` is given or `use_navigator` is off, else a fixed count (default: the last stage's).
        A `controller` replaces the default navigator controller (e.g. one that records more per thought)."""
        if num_thoughts is not None and (not isinstance(num_thoughts, int) or isinstance(num_thoughts, bool)):
            raise InputTypeError(f"num_thoughts must be an integer, got {type(num_thoughts).__name__}")
        if num_thoughts is not None and num_thoughts < 0:
            raise InputError(f"--num-thoughts must be >= 0, got {num_thoughts}")
        if num_thoughts is not None and num_thoughts >= self.lm.context_length:  # before a tensor of that size
            raise InputError(
                f"--num-thoughts {num_thoughts} does not fit the model's context of {self.lm.context_length} positions"
            )
        if use_navigator and self.navigator is not None and num_thoughts is None:
            controller = controller or NavigatorController(
                self.navigator, sample=False, settings=self.settings(steer=steer)
            )
            return ThoughtPlan("coconut", 0, controller, self.navigator.cfg.max_thoughts)
        count = num_thoughts if num_thoughts is not None else self.default_thoughts()
        if controller is not None:
            return ThoughtPlan("coconut", 0, controller, count)
        return ThoughtPlan(self.mode, count)

    @torch.no_grad()
    def answer(
        self,
        questions: list[str],
        plan: ThoughtPlan | None = None,
        max_new_tokens: int | None = None,
        return_thoughts: bool = False,
    ) -> GenerationOutput:
        """Generate answers to `questions` following `plan` (default: `self.plan()`)."""
        _check_questions(questions)
        plan = plan or self.plan()
        prompts = question_prompts(self.lm, questions, plan)
        return generate_answers(
            self.lm, prompts, plan, max_new_tokens or self.config.eval.max_new_tokens, return_thoughts=return_thoughts
        )

    @torch.no_grad()
    def generate(
        self,
        questions: str | list[str],
        num_thoughts: int | None = None,
        max_new_tokens: int | None = None,
        use_navigator: bool = True,
        return_trajectories: bool = False,
        top_k: int = 5,
        return_states: bool = False,
        controller: ThoughtController | None = None,
        num_trajectories: int | str = 1,
        fusion: str = "majority",
        answer_type: str = "number",
    ):
        """Answers for one question (a string) or a list. With num_trajectories K > 1 or "auto" (a navigator
        checkpoint): the fused answer of K trajectories, and with return_trajectories a dict per question with
        the fused answer, agreement, passes and per trajectory its answer, thoughts used, halting probabilities,
        values, fusion score and weight, and the same thought trace (`steps`, `memory_reads`) as K = 1 (see the
        module docstring); `answer_type` ("number" or "text") is how
        answers are compared in the vote. With K = 1 and return_trajectories, dicts with the
        thought count, halting probabilities and values per thought step (navigator only), passes, and
        the thought trace (coconav/decode/trace.py): `steps` (per step t = 0..n: top_k tokens under the LM head,
        norm, cosine to the previous state; with a navigator halt prob, value, steering-offset norm and
        episodic reads) and `memory_reads` (persistent-memory entries read). return_states adds
        `states`, the hidden states h_0..h_n as a tensor [n+1, D]."""
        single = isinstance(questions, str)
        try:
            items = [questions] if single else list(questions)
        except TypeError:  # neither a string nor a list: an int, None
            raise InputTypeError(
                f"questions must be a string or a list of strings, got {type(questions).__name__}"
            ) from None
        if num_trajectories != 1:
            records = self._generate_multi(
                items,
                num_trajectories,
                fusion,
                answer_type,
                num_thoughts,
                use_navigator,
                controller,
                max_new_tokens,
                return_states,
                top_k,
            )
            if not return_trajectories:
                records = [r["answer"] for r in records]
            return records[0] if single else records
        plan = self.plan(num_thoughts, use_navigator, controller=controller)
        tracer = None
        if return_trajectories and (plan.controller is not None or plan.mode == "coconut"):
            # the tracer decides exactly as the plan does (tested); other modes have no thought phase
            fixed = (
                None if plan.controller is not None else torch.full((len(items),), plan.num_thoughts, dtype=torch.long)
            )
            tracer = TraceController(plan.controller, fixed)
            room = plan.max_thoughts if plan.controller is not None else plan.num_thoughts
            plan = ThoughtPlan("coconut", 0, tracer, room)
        out = self.answer(items, plan, max_new_tokens)
        if not return_trajectories:
            return out.texts[0] if single else out.texts
        empty = [[] for _ in items]
        steps = trace_steps(self.lm, tracer, out.num_thoughts, top_k) if tracer is not None else empty
        reads = persistent_reads(tracer, len(items)) if tracer is not None else empty
        records = []
        for i, text in enumerate(out.texts):
            n = int(out.num_thoughts[i])
            record = {
                "answer": text,
                "num_thoughts": n,
                "new_tokens": int(out.new_tokens[i]),
                "forward_passes": int(out.forward_passes[i]),
            }
            navigator = tracer.inner if tracer is not None else None
            if isinstance(navigator, NavigatorController):
                record["halt_probs"] = [float(p[i]) for p in navigator.halt_probs[: n + 1]]
                record["values"] = [float(v[i]) for v in navigator.values[: n + 1]]
            record["steps"], record["memory_reads"] = steps[i], reads[i]
            if return_states:
                record["states"] = (
                    tracer.states()[i, : n + 1].cpu()
                    if tracer is not None and tracer.hidden
                    else torch.zeros(0, self.lm.hidden_size)
                )
            records.append(record)
        return records[0] if single else records

    def _generate_multi(
        self,
        items: list[str],
        num_trajectories: int | str,
        fusion: str,
        answer_type: str,
        num_thoughts: int | None,
        use_navigator: bool,
        controller: ThoughtController | None,
        max_new_tokens: int | None,
        return_states: bool,
        top_k: int = 5,
    ) -> list[dict]:
        """K trajectories per question, fused (generate with num_trajectories != 1)."""
        if self.navigator is None or not use_navigator or num_thoughts is not None or controller is not None:
            raise InputError("num_trajectories > 1 needs a navigator checkpoint (and no num_thoughts or controller)")
        check_multi(num_trajectories, fusion, self.navigator.cfg.max_trajectories)
        if answer_type not in ("number", "text"):
            raise InputError(f"answer_type must be 'number' or 'text', got {answer_type!r}")
        _check_questions(items)
        settings = self.settings(num_trajectories)
        prompts = navigator_prompts(self.lm, items)
        out = multi_answers(
            self.lm,
            self.navigator,
            prompts,
            [answer_type] * len(items),
            settings,
            fusion,
            max_new_tokens or self.config.eval.max_new_tokens,
            seed=self.config.seed,
        )
        run, ctl = out.run, out.run.controller
        states = torch.stack(ctl.states, dim=1)  # [B, steps, D]
        scores = run.final_scores
        tracer = TraceController.from_controller(ctl, self.lm.causal_lm.dtype)
        steps = trace_steps(self.lm, tracer, run.num_thoughts, top_k)
        reads = persistent_reads(tracer, len(run.group))
        records = []
        for q in range(len(items)):
            rows = (run.group == q).nonzero().flatten().tolist()
            trajectories = []
            for r in rows:
                n = int(run.num_thoughts[r])
                t = {
                    "answer": out.texts[r],
                    "num_thoughts": n,
                    "new_tokens": int(run.new_tokens[r]),
                    "halt_probs": [float(p[r]) for p in ctl.halt_probs[: n + 1]],
                    "values": [float(v[r]) for v in ctl.values[: n + 1]],
                    "score": float(scores[r]),
                    "weight": float(out.fused.weights[r]),
                    "thought_norms": [float(x) for x in states[r, 1 : n + 1].norm(dim=-1)],
                    "steps": steps[r],
                    "memory_reads": reads[r],
                }
                if return_states:
                    t["states"] = states[r, : n + 1].cpu()
                trajectories.append(t)
            records.append(
                {
                    "answer": out.fused.answers[q],
                    "agreement": float(out.fused.agreement[q]),
                    "num_trajectories": len(rows),
                    "forward_passes": int(out.forward_passes[q]),
                    "fusion": fusion,
                    "trajectories": trajectories,
                }
            )
        return records
