"""Thought traces: what each continuous thought of a generation did, step by step.

A ``TraceController`` rides along ``LatentLM.generate`` (the ``ThoughtController`` seam): it wraps the
navigator's controller, or, without a navigator, reproduces the fixed thought count exactly (halt at
step >= count, the thought fed back unchanged), and records the last hidden state h_t at every
thought step t = 0..n (h_0 is the state at <bot>; thought t+1 is made from h_t; h_n is followed by
<eot>) and the navigator's steering offset. ``trace_steps`` turns that into per-step records: the
top-k tokens of the LM head over h_t (the COCONUT paper's probing view), the norm of h_t and its
cosine to h_{t-1}, and with a navigator the halting probability, value, steering-offset norm and
episodic-memory read weights; ``persistent_reads`` lists which stored thoughts the persistent bank
read, with what weight.

    tracer = TraceController(NavigatorController(nav, sample=False))        # or TraceController(None, counts)
    out = lm.generate(prompts, num_thoughts=0, controller=tracer, max_thoughts=nav.cfg.max_thoughts)
    steps = trace_steps(lm, tracer, out.num_thoughts, top_k=5)             # list over rows of lists of dicts

Used by ``CoconavModel.generate(..., return_trajectories=True)`` and the thought explorer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coconav.decode.controller import NavigatorController
from coconav.model.latent_lm import LatentLM, ThoughtController, ThoughtDecision


class TraceController:
    """Records h_t and the steering offset at each thought step; decides like `inner` (or a fixed count)."""

    def __init__(self, inner: ThoughtController | None, num_thoughts: torch.Tensor | None = None) -> None:
        if inner is None and num_thoughts is None:
            raise ValueError("a TraceController without a navigator needs the fixed thought counts")
        self.inner, self.num_thoughts = inner, num_thoughts
        self.hidden: list[torch.Tensor] = []  # h_t, [B, D] each
        self.offsets: list[torch.Tensor] = []  # fed thought minus the plain COCONUT thought, [B, D] each

    def __call__(self, step: int, hidden: torch.Tensor, thought: torch.Tensor, active: torch.Tensor) -> ThoughtDecision:
        if step == 0:
            self.hidden, self.offsets = [], []
        self.hidden.append(hidden.detach().float())
        if self.inner is None:  # exactly LatentLM.think's rule without a controller
            decision = ThoughtDecision(thought=thought, halt=step >= self.num_thoughts.to(hidden.device))
        else:
            decision = self.inner(step, hidden, thought, active)
        self.offsets.append((decision.thought - thought).detach().float())
        return decision

    @classmethod
    def from_controller(cls, controller: NavigatorController, dtype: torch.dtype) -> TraceController:
        """The trace of a finished NavigatorController run (e.g. K trajectories through run_groups): its recorded
        h_t, and as offsets exactly what it added to each thought (the steering cast to the thoughts' `dtype`)."""
        tracer = cls(controller)
        tracer.hidden = [h.detach().float() for h in controller.states]
        tracer.offsets = [controller.navigator.steer(a).to(dtype).float() for a in controller.actions]
        return tracer

    def states(self) -> torch.Tensor:
        """The recorded states. Shape: [B, S, D], S = steps the loop ran (thoughts used + 1 for the longest row)."""
        return torch.stack(self.hidden, dim=1)


@torch.no_grad()
def top_tokens(lm: LatentLM, hidden: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
    """The k most likely tokens of the LM head over each state, with probabilities. Shape: hidden [S, D]."""
    probs = torch.softmax(lm.lm_head(hidden.to(lm.device, lm.causal_lm.dtype)).float(), dim=-1)  # [S, V]
    values, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
    convert = lm.tokenizer.convert_ids_to_tokens
    return [[(str(convert(int(t))), float(p)) for p, t in zip(vs, ts)] for vs, ts in zip(values, ids)]


@torch.no_grad()
def trace_steps(lm: LatentLM, tracer: TraceController, num_thoughts: torch.Tensor, top_k: int = 5) -> list[list[dict]]:
    """Per row, one record per step t = 0..n_b: fed (t < n_b), top_tokens, norm, cosine_prev (None at t = 0),
    and with a navigator halt_prob, value, steer_norm (None where nothing was fed) and episodic_reads
    (weights over [null slot, steps 0..t-1], None when the navigator has no episodic memory)."""
    if not tracer.hidden:  # no thought phase (a no-CoT / CoT / pause prompt)
        return [[] for _ in range(len(num_thoughts))]
    states = tracer.states()  # [B, S, D]
    offsets = torch.stack(tracer.offsets, dim=1).norm(dim=-1)  # [B, S]
    cosines = F.cosine_similarity(states[:, 1:], states[:, :-1], dim=-1)  # [B, S-1]
    norms = states.norm(dim=-1)  # [B, S]
    nav = tracer.inner if isinstance(tracer.inner, NavigatorController) else None
    reads = nav.navigator.memory_reads(states, states[:, 0]) if nav is not None else None
    rows = []
    for b, n in enumerate(int(x) for x in num_thoughts):
        tokens = top_tokens(lm, states[b, : n + 1], top_k)
        steps = []
        for t in range(n + 1):
            step = {
                "step": t,
                "fed": t < n,
                "top_tokens": [[tok, p] for tok, p in tokens[t]],
                "norm": float(norms[b, t]),
                "cosine_prev": float(cosines[b, t - 1]) if t > 0 else None,
            }
            if nav is not None:
                step["halt_prob"] = float(nav.halt_probs[t][b])
                step["value"] = float(nav.values[t][b])
                step["steer_norm"] = float(offsets[b, t]) if t < n else None
                step["episodic_reads"] = (
                    [float(w) for w in reads.episodic[b, t, : t + 1]] if reads.episodic is not None else None
                )
            steps.append(step)
        rows.append(steps)
    return rows


@torch.no_grad()
def persistent_reads(tracer: TraceController, batch: int) -> list[list[dict]]:
    """Per row, the persistent-memory entries the navigator read (keyed by the question's state at <bot>):
    bank slot, read weight and the return the stored trajectory earned. Empty without a bank or entries."""
    nav = tracer.inner if isinstance(tracer.inner, NavigatorController) else None
    reads = None
    if nav is not None and tracer.hidden:
        states = tracer.states()
        reads = nav.navigator.memory_reads(states[:, :1], states[:, 0]).persistent
    if reads is None:
        return [[] for _ in range(batch)]
    weights, slots, returns = reads
    return [
        [{"slot": int(s), "weight": float(w), "return": float(r)} for w, s, r in zip(weights[b], slots[b], returns[b])]
        for b in range(batch)
    ]
