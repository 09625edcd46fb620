"""A KV cache for one forward pass of the thought loop that can be recomputed.

The training forward (``LatentLM.forward``) runs the backbone once per thought, each pass over
the new positions only, attending to the keys and values of the earlier passes. transformers'
``DynamicCache`` appends on every ``update``; under activation checkpointing a layer is run a
second time in backward and would append twice, which is why transformers drops the cache when
gradient checkpointing is on (and a thought loop relying on it silently runs with no history).

``PassCache`` is built fresh for every pass from the tensors of the passes before it. Its
``update`` returns ``prefix ++ new`` without mutating the prefix, so running a layer again (the
checkpoint replay) gives the same keys and values: decoder layers may then be checkpointed with
the cache kept (``GradientCheckpointingLayer._can_checkpoint_with_cache``).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [B, kv_heads, T, head_dim]


class PassLayer(DynamicLayer):
    """One layer's cache for one pass: a fixed prefix plus the keys/values this pass adds."""

    def __init__(self, prefix: KV | None = None) -> None:
        super().__init__()
        self.prefix = prefix
        if prefix is not None:
            self.keys, self.values = prefix
            self.device = prefix[0].device
            self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> KV:
        # Idempotent: a replay in backward recomputes the same concatenation.
        if self.prefix is None:
            self.keys, self.values = key_states, value_states
        else:
            self.keys = torch.cat([self.prefix[0], key_states], dim=-2)
            self.values = torch.cat([self.prefix[1], value_states], dim=-2)
        self.device = key_states.device
        self.is_initialized = True
        return self.keys, self.values

    def get_seq_length(self) -> int:
        # Positions already cached before this pass (masks and default positions use it).
        return 0 if self.prefix is None else self.prefix[0].shape[-2]


class PassCache(DynamicCache):
    """The cache handed to the backbone for one pass; read `kv()` after the pass for the next one."""

    def __init__(self, prefix: list[KV] | None, num_layers: int) -> None:
        layers = [PassLayer(prefix[i] if prefix is not None else None) for i in range(num_layers)]
        Cache.__init__(self, layers=layers)

    def kv(self) -> list[KV]:
        """Keys and values of every layer after the pass (prefix and new positions)."""
        return [(layer.keys, layer.values) for layer in self.layers]
