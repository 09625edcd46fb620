"""Thoughts read as a search over a graph question: the COCONUT paper's frontier analysis
(arXiv 2412.06769 §5, "latent reasoning as a search"; its Figures 8-9).

A ProsQA question carries its graph: ``idx_to_symbol`` (the node names and concepts), ``edges`` (index
pairs, or a JSON string of them), ``root``, ``target`` and ``neg_target``, which the COCONUT JSON reader
keeps in ``Example.meta``. At thought step t the LM head's distribution over the state h_t (h_0 at <bot>;
h_t becomes thought t+1: the readout behind the explorer's top tokens) gives each node the probability of
the first token of its word, the paper's "value" of the node. Read this way, thought t+1 holds the search
frontier: the nodes t+1 edges from the root (shortest path). ``search_frontier`` averages, per step, the
probability on frontier nodes against the other nodes, and by a node's distance from the root.

    graph = graph_of(example)                                    # None: the question has no graph
    ids = node_token_ids(lm.tokenizer, graph.symbols)            # first token of each node's word
    probs = node_probabilities(lm, states, ids)                  # states [S, D] -> [S, N]
    report = search_frontier([(probs, graph), ...]).to_json()

Nodes whose words share a first token (common with a byte-level BPE: " ter", " t") share a probability;
with a word-level tokenizer (coconav.data.tokenizer) every word is one token. A word the tokenizer cannot
encode (``<unk>``) has no probability (NaN here, null on the page) and counts in no mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from coconav.data.prosqa import GRAPH_KEYS, Graph, graph_of, parse_graph
from coconav.model.latent_lm import LatentLM

__all__ = ["GRAPH_KEYS", "Graph", "graph_of", "parse_graph"]  # the graph lives in coconav.data.prosqa

UNREACHABLE = "unreachable"  # the distance key of nodes the root cannot reach


def node_token_ids(tokenizer, words: Sequence[str]) -> list[int | None]:
    """The first token of each word as it appears after a space in text (None where it is unknown)."""
    out: list[int | None] = []
    for word in words:
        ids = tokenizer.encode(" " + word, add_special_tokens=False)
        # a tokenizer may give the space a token of its own (SentencePiece's lone '▁'): skip blank pieces
        first = next((i for i in ids if tokenizer.decode([i]).strip()), None)
        out.append(None if first is None or first == tokenizer.unk_token_id else int(first))
    return out


@torch.no_grad()
def node_probabilities(lm: LatentLM, states: torch.Tensor, token_ids: Sequence[int | None]) -> torch.Tensor:
    """The LM head's probability of each node's token at each state, NaN for a node without a token.
    Shape: states [S, D] -> [S, N] (float32, on the CPU)."""
    probs = torch.softmax(lm.lm_head(states.to(lm.device, lm.causal_lm.dtype)).float(), dim=-1).cpu()  # [S, V]
    index = torch.tensor([i if i is not None else 0 for i in token_ids], dtype=torch.long)
    out = probs[:, index]  # [S, N]
    known = torch.tensor([i is not None for i in token_ids])
    return torch.where(known, out, torch.full_like(out, math.nan))


@dataclass
class StepFrontier:
    """One thought step t over all questions: the state h_t, which becomes thought t+1 (frontier depth t+1).

    frontier_mean / other_mean: mean probability of a frontier node / any other node (all pairs of question
    and node pooled); frontier_mass / other_mass: the summed probability on a question's frontier / other nodes,
    averaged over questions; by_distance: the mean probability of a node at each distance from the root
    (keys "0", "1", ..., "unreachable"). None where nothing was counted."""

    step: int
    frontier_depth: int
    questions: int = 0
    frontier_nodes: int = 0
    other_nodes: int = 0
    frontier_mean: float | None = None
    other_mean: float | None = None
    frontier_mass: float | None = None
    other_mass: float | None = None
    by_distance: dict[str, float] = field(default_factory=dict)


@dataclass
class SearchFrontier:
    """The frontier analysis of a set of questions: one StepFrontier per thought step."""

    steps: list[StepFrontier]

    def to_json(self) -> dict:
        return {"steps": [asdict(s) for s in self.steps]}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def search_frontier(items: Iterable[tuple[torch.Tensor, Graph]]) -> SearchFrontier:
    """The frontier analysis of questions given as (node probabilities [S_i, N_i], graph) pairs: per step t, the
    probability on nodes at distance t+1 from the root against the rest, and by distance (see StepFrontier)."""
    pooled: dict[int, dict] = {}
    for probs, graph in items:
        assert probs.dim() == 2 and probs.shape[1] == len(graph.symbols), (tuple(probs.shape), len(graph.symbols))
        dist = graph.distances()
        for t, row in enumerate(probs.tolist()):
            acc = pooled.setdefault(t, {"frontier": [], "other": [], "fmass": [], "omass": [], "dist": {}})
            frontier = [p for p, d in zip(row, dist) if d == t + 1 and not math.isnan(p)]
            other = [p for p, d in zip(row, dist) if d != t + 1 and not math.isnan(p)]
            acc["frontier"] += frontier
            acc["other"] += other
            acc["fmass"].append(sum(frontier))
            acc["omass"].append(sum(other))
            for p, d in zip(row, dist):
                if not math.isnan(p):
                    acc["dist"].setdefault(UNREACHABLE if d is None else str(d), []).append(p)
    steps = []
    for t in sorted(pooled):
        acc = pooled[t]
        order = sorted(acc["dist"], key=lambda k: (k == UNREACHABLE, int(k) if k != UNREACHABLE else 0))
        steps.append(
            StepFrontier(
                step=t,
                frontier_depth=t + 1,
                questions=len(acc["fmass"]),
                frontier_nodes=len(acc["frontier"]),
                other_nodes=len(acc["other"]),
                frontier_mean=_mean(acc["frontier"]),
                other_mean=_mean(acc["other"]),
                frontier_mass=_mean(acc["fmass"]),
                other_mass=_mean(acc["omass"]),
                by_distance={k: _mean(acc["dist"][k]) for k in order},
            )
        )
    return SearchFrontier(steps=steps)
