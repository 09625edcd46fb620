"""The KV caches of coconav: the training thought loop's (``PassCache``) and generation's (``DecodeCache``).

Training. The training forward (``LatentLM.forward``) runs the backbone once per thought, each pass over
the new positions only, attending to the keys and values of the earlier passes. transformers'
``DynamicCache`` appends on every ``update``; under activation checkpointing a layer is run a
second time in backward and would append twice, which is why transformers drops the cache when
gradient checkpointing is on (and a thought loop relying on it silently runs with no history).

``PassCache`` is built fresh for every pass from the tensors of the passes before it. Its
``update`` returns ``prefix ++ new`` without mutating the prefix, so running a layer again (the
checkpoint replay) gives the same keys and values: decoder layers may then be checkpointed with
the cache kept (``GradientCheckpointingLayer._can_checkpoint_with_cache``).

Generation. ``DecodeCache`` owns the layout of batched decoding's cache and key mask: the dynamic
layout (the reference) or the static one (preallocated, fixed shapes, for ``torch.compile``).
"""

from __future__ import annotations

import threading

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticLayer

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


# -- batched decoding: the one owner of the generation cache's layout ----------------------------


class DecodeCache:
    """The KV cache and key mask of batched generation (prefill, thoughts, answer tokens).

    Two layouts, one owner:
    - dynamic (the reference): transformers' ``DynamicCache`` grows by one column per step and the
      key mask [B, S] grows with it;
    - static (``capacity`` set): the prefill still fills a ``DynamicCache`` (its width is the
      prompt's, and the rows of a question may still be repeated or selected for its K
      trajectories); at the first step after it, the cache is frozen into transformers'
      static layers (``StaticLayer``), preallocated to ``capacity`` columns, and the key mask becomes [B, capacity]
      (zeros where nothing is written yet). Every later step writes one column in place, so the
      shapes a step sees never change: what ``torch.compile`` and CUDA graphs need. A row that has
      halted writes a column its mask hides, as in the dynamic layout.

    Static buffers come from a pool owned by the model (``StaticPool``) and go back to it on
    ``release``, so repeated calls of one shape reuse the same addresses (CUDA graphs re-record
    when a static input's address changes).
    """

    def __init__(self, mask: torch.Tensor, capacity: int | None = None, pool: StaticPool | None = None) -> None:
        if capacity is not None and pool is None:
            raise ValueError("a static KV cache (capacity set) needs the model's StaticPool")
        self.cache: Cache = DynamicCache()
        self.mask = mask  # [B, S]
        self.capacity = capacity
        self.pool = pool
        self.length = mask.shape[1]  # columns written so far
        self._pool_key = None

    @property
    def is_static(self) -> bool:
        return self._pool_key is not None

    def repeat_rows(self, k: int) -> None:
        """k consecutive copies of every row (before the first step)."""
        self._check_dynamic("repeat rows")
        self.cache.batch_repeat_interleave(k)
        self.mask = self.mask.repeat_interleave(k, 0)

    def select_rows(self, index: torch.Tensor) -> None:
        """Rows `index` of the batch, in that order (before the first step). Shape: index [B']."""
        self._check_dynamic("select rows")
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]

    def column(self, keep: torch.Tensor) -> torch.Tensor:
        """Open one more column (keep [B]: whether each row's new position is visible) and return the key
        mask the backbone call that fills it must see."""
        if self.capacity is not None and not self.is_static:
            self._freeze()
        if self.is_static:
            if self.length >= self.mask.shape[1]:
                raise RuntimeError(f"the static KV cache's {self.mask.shape[1]} columns are all used")
            self.mask[:, self.length] = keep.to(self.mask.dtype)
        else:
            self.mask = torch.cat([self.mask, keep.to(self.mask.dtype)[:, None]], dim=1)
        self.length += 1
        return self.mask

    def release(self) -> None:
        """Hand the static buffers back to the pool (the state must not be stepped again)."""
        if self.is_static and self.pool is not None:
            self.pool.put(self._pool_key, self.cache)
        self._pool_key = None
        self.capacity = None

    def _check_dynamic(self, what: str) -> None:
        if self.is_static:
            raise RuntimeError(f"cannot {what} of a static cache: do it between the prefill and the first step")

    def _freeze(self) -> None:
        """Copy the dynamic prefix into preallocated static buffers of `capacity` columns."""
        prefix = [(layer.keys, layer.values) for layer in self.cache.layers]
        B, written = self.mask.shape
        if self.capacity < written:
            raise RuntimeError(f"static KV cache capacity {self.capacity} < the {written} columns already written")
        keys = prefix[0][0]
        key = (B, self.capacity, keys.dtype, keys.device, len(prefix))
        static = self.pool.take(key)
        if static is None:
            # Full-length layers for every layer, sliding-window ones included, as in the dynamic layout (a
            # DynamicCache built without a config): the sliding window is applied by the attention mask, over
            # cache columns, so both layouts mask alike (transformers' StaticSlidingWindowLayer would roll).
            static = Cache(layers=[StaticLayer(max_cache_len=self.capacity) for _ in prefix])
        for layer, (k, v) in zip(static.layers, prefix):
            if not layer.is_initialized:
                layer.lazy_initialization(k, v)
            layer.keys.zero_()
            layer.values.zero_()
            layer.keys[:, :, :written] = k
            layer.values[:, :, :written] = v
            layer.cumulative_length.fill_(written)
        mask = self.mask.new_zeros(B, self.capacity)
        mask[:, :written] = self.mask
        self.cache, self.mask, self._pool_key = static, mask, key


class StaticPool:
    """Static KV caches kept by a model between calls, one free list per (rows, capacity, dtype, device, layers).

    Thread-safe: a cache in use is out of the pool, so concurrent generations never share buffers."""

    def __init__(self, config) -> None:
        self.config = config
        self._free: dict[tuple, list[Cache]] = {}
        self._lock = threading.Lock()

    def take(self, key: tuple) -> Cache | None:
        with self._lock:
            free = self._free.get(key)
            return free.pop() if free else None

    def put(self, key: tuple, cache: Cache) -> None:
        with self._lock:
            self._free.setdefault(key, []).append(cache)


def static_capacity(columns: int, multiple: int = 1) -> int:
    """`columns` rounded up to a multiple of `multiple` (compiled steps: fewer distinct shapes to compile)."""
    return -(-columns // multiple) * multiple
