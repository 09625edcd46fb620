"""Thought memory for the navigator: episodic (this trajectory's earlier thoughts), group and persistent.

- ``EpisodicMemory``: at thought step t the navigator attends over the states of steps < t of its
  own trajectory (a learned null slot makes step 0 well defined). Computed for a whole sequence of
  states with a causal mask, so a rollout (step by step) and a replay (all steps at once) agree.
- ``GroupMemory``: the shared memory of the K trajectories of one question. At step t a trajectory
  attends over the other trajectories' states at steps <= t that are real (a peer that halted at n
  has states 0..n), plus a learned null slot; its output projection starts at zero, so an untrained
  group read adds nothing and K trajectories start out independent.
- ``PersistentMemory``: a bounded bank of thoughts from past trajectories. Each entry is keyed by
  an encoding of the question (the latent LM's state at <bot>, L2-normalised), holds the mean of
  that trajectory's thought states as its value, and the return it earned. A read takes the top-k
  keys by cosine similarity and returns their similarity-weighted values; the navigator fuses the
  readout into its features through a learned gate. Written after each rollout (trajectories whose
  return reaches a threshold). Eviction: when full, the entry with the lowest return goes first,
  the oldest among equals. Saved with the checkpoint as tensors; switched off by config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NullSlotAttention(nn.Module):
    """Query, key and value projections and a learned null slot (key and value), shared by the memory reads:
    the null slot makes a read well defined when there is nothing to read yet."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.null_key = nn.Parameter(torch.zeros(dim))
        self.null_value = nn.Parameter(torch.zeros(dim))
        self.scale = dim**-0.5


class EpisodicMemory(NullSlotAttention):
    """Causal attention of each step over the earlier steps of its trajectory (plus a null slot)."""

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Readout for steps start..T-1. Shape: x [B, T, d] -> [B, T - start, d]; step t sees steps < t only."""
        B, _, d = x.shape
        v = torch.cat([self.null_value.expand(B, 1, d), self.value(x)], dim=1)  # [B, T+1, d]
        return torch.einsum("bts,bsd->btd", self.attention(x, start), v)

    def attention(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Read weights of steps start..T-1 over [null slot, step 0, ..., step T-1]. Shape: x [B, T, d] -> [B, T - start, T+1]."""
        B, T, d = x.shape
        k = torch.cat([self.null_key.expand(B, 1, d), self.key(x)], dim=1)  # [B, T+1, d], slot 0 is the null slot
        scores = torch.einsum("btd,bsd->bts", self.query(x[:, start:]), k) * self.scale  # [B, T-start, T+1]
        # slot 0 (null) is always visible; slot s+1 (step s) only to steps t > s
        visible = torch.ones(T, T + 1, dtype=torch.bool, device=x.device)
        visible[:, 1:] = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
        return scores.masked_fill(~visible[start:], float("-inf")).softmax(-1)


class GroupMemory(NullSlotAttention):
    """Attention of each step over the other trajectories of its group at steps <= t (plus a null slot)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)  # untrained: the read adds nothing (trajectories independent)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        x: torch.Tensor,
        pool: torch.Tensor | None,
        index: torch.Tensor | None,
        visible: torch.Tensor | None,
        start: int = 0,
    ) -> torch.Tensor:
        """Readout of query steps start..start+Tq-1. Shape: x [B, Tq, d] (the queries); pool [N, T, d] (encoded
        states of the trajectories the peers are drawn from; keys and values are projected once per pool row),
        index [B, P] (row of the pool of each peer, -1 = none), visible [B, P, T] (bool: peer state exists)
        -> [B, Tq, d]. pool None: the null slot only."""
        B, Tq, d = x.shape
        if pool is None or index.shape[1] == 0:
            return self.out(self.null_value).expand(B, Tq, d)
        rows = index.clamp(min=0)
        k, v = self.key(pool)[rows].flatten(1, 2), self.value(pool)[rows].flatten(1, 2)  # [B, P*T, d]
        v = torch.cat([self.null_value.expand(B, 1, d), v], dim=1)  # [B, 1+P*T, d]
        return self.out(torch.einsum("bts,bsd->btd", self._weights(x, k, visible, start), v))

    def attention(
        self, x: torch.Tensor, pool: torch.Tensor, index: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """Read weights of each step over [null slot, peer 0 steps 0..T-1, peer 1 ...]. Shape: -> [B, T, 1+P*T]."""
        return self._weights(x, self.key(pool)[index.clamp(min=0)].flatten(1, 2), visible, 0)

    def _weights(self, x: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor, start: int) -> torch.Tensor:
        B, Tq, d = x.shape
        P, T = visible.shape[1], visible.shape[2]
        k = torch.cat([self.null_key.expand(B, 1, d), keys], dim=1)
        scores = torch.einsum("btd,bsd->bts", self.query(x), k) * self.scale
        steps = torch.arange(start, start + Tq, device=x.device)
        causal = torch.arange(T, device=x.device)[None, :] <= steps[:, None]  # step t sees peer steps s <= t
        seen = visible[:, None, :, :] & causal[None, :, None, :]  # [B, Tq, P, T]
        seen = torch.cat([torch.ones(B, Tq, 1, dtype=torch.bool, device=x.device), seen.reshape(B, Tq, P * T)], dim=-1)
        return scores.masked_fill(~seen, float("-inf")).softmax(-1)


class PersistentMemory(nn.Module):
    """A bank of (question key, thought value, return) entries with top-k reads (no parameters)."""

    def __init__(self, key_dim: int, value_dim: int, size: int, topk: int) -> None:
        super().__init__()
        self.size, self.topk = size, topk
        self.register_buffer("keys", torch.zeros(size, key_dim))
        self.register_buffer("values", torch.zeros(size, value_dim))
        self.register_buffer("returns", torch.full((size,), float("-inf")))
        self.register_buffer("ages", torch.zeros(size, dtype=torch.long))  # write counter at insertion
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # entries written so far

    @property
    def filled(self) -> int:
        return int(min(int(self.count), self.size))

    @torch.no_grad()
    def write(self, keys: torch.Tensor, values: torch.Tensor, returns: torch.Tensor) -> None:
        """Add entries. Shape: keys [N, Dk], values [N, Dv], returns [N]. Evicts lowest return, then oldest."""
        for key, value, ret in zip(F.normalize(keys.float(), dim=-1), values.float(), returns.float()):
            if self.filled < self.size:
                slot = self.filled
            else:
                low = self.returns.min()
                if bool(low > ret):
                    continue  # everything stored earned more than this entry
                candidates = (self.returns == low).nonzero().flatten()  # lowest return first,
                slot = int(candidates[self.ages[candidates].argmin()])  # the oldest among equals
            self.keys[slot], self.values[slot], self.returns[slot] = key, value, ret
            self.ages[slot] = self.count
            self.count += 1

    def read(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k similarity-weighted values. Shape: queries [B, Dk] -> (readout [B, Dv], has [B] bool)."""
        B = queries.shape[0]
        if self.filled == 0:
            return queries.new_zeros(B, self.values.shape[1]), torch.zeros(B, dtype=torch.bool, device=queries.device)
        weights, idx = self.lookup(queries)
        readout = torch.einsum("bk,bkd->bd", weights, self.values[idx])
        return readout.to(queries.dtype), torch.ones(B, dtype=torch.bool, device=queries.device)

    def lookup(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which entries a read takes and their weights. Shape: queries [B, Dk] -> (weights [B, k], slots [B, k]),
        k = min(topk, filled) (k = 0 when the bank is empty)."""
        n = self.filled
        sims = F.normalize(queries.float(), dim=-1) @ self.keys[:n].T  # [B, n]
        top, idx = sims.topk(min(self.topk, n), dim=-1)
        return torch.softmax(top / 0.1, dim=-1), idx  # sharp: the nearest questions dominate
