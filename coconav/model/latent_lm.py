"""The latent language model: any Hugging Face causal LM that can think in continuous thoughts.

COCONUT (Hao et al., "Training Large Language Models to Reason in a Continuous Latent Space",
arXiv 2412.06769): between ``<bot>`` and ``<eot>`` the model emits no tokens; the last-layer
hidden state of the previous position is fed back as the next input embedding (a *thought*).

- ``LatentLM.forward``: teacher-forced training forward. A batch holds ``<thought>`` slots after
  ``<bot>``; slot i's input is the last hidden state of the position before it. One backbone pass
  per thought, each over the new positions only, reusing the KV cache of the passes before; slots
  are filled with ``torch.where``, never by rebuilding ``inputs_embeds`` position by position.
  Examples may hold different numbers of thoughts: the collator aligns every example's first
  thought on one column (left padding, as the paper's collator does), so pass i computes column
  ``start + i - 1`` for every example, a thought where the example has one and a token elsewhere.
  transformers' 4-D attention mask is built once for the whole sequence and each pass takes its
  slice; ``compile_backbone`` (``train.compile``) runs the passes through ``torch.compile``.
- ``LatentLM.generate``: batched generation with the KV cache throughout: prefill, a thought phase
  in which every example stops at its own count (or when a ``ThoughtController``, later the
  navigator, says halt: later columns are masked out for it), the forced ``<eot>``, then greedy or
  sampled decoding until each example's EOS.

The whole thought loop runs inside one ``forward`` call, so DDP/FSDP wrappers see one call. With a
PEFT LoRA wrapper the injected layers are used as is.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer

from coconav.common import DTYPE_NAMES
from coconav.errors import CheckpointError, ConfigError, InputError
from coconav.model.cache import DecodeCache, PassCache, StaticPool, static_capacity
from coconav.model.streams import stream_categorical
from coconav.tokens import LATENT_TOKENS, SpecialTokens

META_FILE = "coconav.json"
FORMAT_VERSION = 1


@dataclass
class ForwardOutput:
    """What the teacher-forced forward returns.

    Shape: loss, lm_loss, thought_loss scalars; logits [B, T, V] only when asked for;
    hidden [B, T, D] last-layer hidden states (after the final norm).
    """

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    thought_loss: torch.Tensor | None
    hidden: torch.Tensor
    logits: torch.Tensor | None
    num_passes: int


@dataclass
class ThoughtDecision:
    """A controller's answer at one thought step. Shape: thought [B, D], halt [B] (bool)."""

    thought: torch.Tensor
    halt: torch.Tensor


class ThoughtController(Protocol):
    """Decides, at thought step `step`, whether each example stops thinking and what it feeds back.

    `hidden` [B, D] is the last hidden state (the paper's next thought), `thought` [B, D] the default
    input made from it, `active` [B] which examples are still thinking. Halting at step 0 means no
    thought at all. The navigator implements this to steer and halt.
    """

    def __call__(
        self, step: int, hidden: torch.Tensor, thought: torch.Tensor, active: torch.Tensor
    ) -> ThoughtDecision: ...


@dataclass
class GenerationOutput:
    """Batched generation results.

    Shape: sequences [B, N] generated ids (pad after EOS); num_thoughts, new_tokens, forward_passes
    [B]; thoughts [B, L, D] the fed-back thought inputs (zeros past an example's count) or None.
    forward_passes counts the prompt's prefill as 1, each thought 1, each generated token 1.
    """

    texts: list[str]
    sequences: torch.Tensor
    num_thoughts: torch.Tensor
    new_tokens: torch.Tensor
    forward_passes: torch.Tensor
    thoughts: torch.Tensor | None = None


@dataclass
class DecodeState:
    """The running state of batched decoding: the cache with its key mask, next positions, last hidden state.

    Shape: next_position [B]; last_hidden [B, D]; the key mask is cache.mask [B, S] (coconav/model/cache.py).
    """

    cache: DecodeCache
    next_position: torch.Tensor
    last_hidden: torch.Tensor

    def repeat_rows(self, k: int) -> DecodeState:
        """k consecutive copies of every row: copy j of row i at i*k + j (the cache indexed, never recomputed)."""
        self.cache.repeat_rows(k)
        return DecodeState(
            cache=self.cache,
            next_position=self.next_position.repeat_interleave(k, 0),
            last_hidden=self.last_hidden.repeat_interleave(k, 0),
        )

    def select_rows(self, index: torch.Tensor) -> DecodeState:
        """Rows `index` in that order. Shape: index [B']."""
        self.cache.select_rows(index)
        return DecodeState(
            cache=self.cache, next_position=self.next_position[index], last_hidden=self.last_hidden[index]
        )

    def release(self) -> None:
        """Generation is over: static cache buffers go back to the model's pool."""
        self.cache.release()


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: 0 at each example's first real token. Shape: [B, T]."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def thought_span(is_thought: torch.Tensor) -> tuple[int, int]:
    """(first thought column, number of thought columns) of an aligned batch; (0, 0) without thoughts.

    Every example's thoughts must be contiguous and start at the same column (the collator's
    alignment), so column start + i holds thought i for every example with more than i thoughts.
    """
    columns = is_thought.any(0).nonzero().flatten()
    if columns.numel() == 0:
        return 0, 0
    start, end = int(columns[0]), int(columns[-1]) + 1
    span = is_thought[:, start:end]
    # Each row must be 1...10...0: non-increasing along the span, and no thought outside it.
    ok = bool((span[:, 1:].int() - span[:, :-1].int() <= 0).all()) and int(span.sum()) == int(is_thought.sum())
    assert ok and bool(span[:, 0].any()), "thought slots must be contiguous and aligned on one start column"
    assert start >= 1, "a thought cannot be the first position (it needs a preceding hidden state)"
    return start, end - start


def pass_bounds(length: int, start: int, num_thoughts: int) -> list[tuple[int, int]]:
    """Column ranges of the backbone passes: the prefix, one column per further thought, then the rest.

    Pass 0 computes [0, start) whose last hidden state becomes thought 0; pass i (1 <= i < L)
    computes column start+i-1 (thought i-1) whose hidden state becomes thought i; the last pass
    computes [start+L-1, T), the last thought and everything after it.
    """
    if num_thoughts == 0:
        return [(0, length)]
    bounds = [(0, start)]
    bounds += [(start + i - 1, start + i) for i in range(1, num_thoughts)]
    bounds.append((start + num_thoughts - 1, length))
    return bounds


def add_latent_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, init_token: str = "<<") -> list[int]:
    """Add <bot>, <eot>, <thought>, <pause> to the tokenizer and the embeddings; returns the new ids.

    New rows (input and, when untied, output) start as a copy of `init_token`'s embedding, as the
    paper does with '<<'; the EOS token is used when `init_token` is not one token of the vocabulary.
    """
    missing = [tok for tok in LATENT_TOKENS if tok not in tokenizer.get_vocab()]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not missing:
        return []
    tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    new_ids = tokenizer.convert_tokens_to_ids(missing)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ref = tokenizer.convert_tokens_to_ids(init_token)
    if ref is None or ref == tokenizer.unk_token_id or ref in new_ids:
        ref = tokenizer.eos_token_id
    with torch.no_grad():
        for emb in {model.get_input_embeddings().weight, model.get_output_embeddings().weight}:
            emb[new_ids] = emb[ref].clone()
    return list(new_ids)


def unwrap_peft(model: nn.Module) -> PreTrainedModel:
    """The underlying transformers causal LM of a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class LatentLM(nn.Module):
    """A causal LM with continuous thoughts (see module docstring)."""

    def __init__(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, thought_norm: str = "none", autocast: str = "none"
    ) -> None:
        super().__init__()
        if thought_norm not in ("none", "embedding"):
            raise ConfigError(f"thought_norm must be 'none' or 'embedding', got {thought_norm!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.special = SpecialTokens.from_tokenizer(tokenizer)
        self.thought_norm = thought_norm
        self.autocast_dtype = torch.bfloat16 if autocast == "bfloat16" else None
        self.kv_cache = "dynamic"  # generation's cache layout: "dynamic" (the reference) or "static"
        self._static_pool: StaticPool | None = None
        self._compiled: dict | None = None  # torch.compile'd generation calls (compile_generation)

    # -- pieces of the backbone --------------------------------------------------------------

    @property
    def causal_lm(self) -> PreTrainedModel:
        return unwrap_peft(self.model)

    @property
    def decoder(self) -> nn.Module:
        return self.causal_lm.get_decoder()

    @property
    def num_layers(self) -> int:
        return self.causal_lm.config.get_text_config().num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.causal_lm.get_input_embeddings().weight.shape[1]

    @property
    def context_length(self) -> int:
        cfg = self.causal_lm.config.get_text_config()
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))

    @property
    def device(self) -> torch.device:
        return self.causal_lm.get_input_embeddings().weight.device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings()(ids)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from last hidden states, as the causal LM's own forward computes them: with the final
        soft-capping of families that have one (Gemma 2: cap * tanh(logits / cap)). Shape: [..., D] -> [..., V]."""
        logits = self.causal_lm.get_output_embeddings()(hidden)
        cap = getattr(self.causal_lm.config.get_text_config(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def to_thought(self, hidden: torch.Tensor) -> torch.Tensor:
        """The input embedding made from a last hidden state. Shape: [..., D] -> [..., D].

        'none' is the paper's rule (feed it back as is). 'embedding' rescales it to the mean L2
        norm of the input-embedding rows, the factor detached so gradients flow through the
        direction (a final-normed hidden state can be ~100x an embedding's norm in a small model).
        """
        if self.thought_norm == "none":
            return hidden
        embedding = self.causal_lm.get_input_embeddings()
        # Gemma's embedding module multiplies its rows by sqrt(D) (`embed_scale`): the norm of what it outputs
        scale_rows = float(getattr(embedding, "scalar_embed_scale", 1.0))
        target = embedding.weight.detach().float().norm(dim=-1).mean() * scale_rows
        scale = (target / hidden.detach().float().norm(dim=-1, keepdim=True).clamp(min=1e-6)).to(hidden.dtype)
        return hidden * scale

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """One backbone pass over new positions. Shape: embeds [B, t, D], mask [B, S+t] -> [B, t, D]."""
        out = self.decoder(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        )
        return out.last_hidden_state

    def _pass(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: PassCache
    ) -> torch.Tensor:
        """One pass of the training forward: `_run` through the compiled decoder when `compile_backbone` was called.

        Shape: embeds [B, t, D], mask [B, S+t] or [B, 1, t, S+t] -> [B, t, D].
        """
        compiled = self.compiled_decoder
        if compiled is None:
            return self._run(embeds, mask, positions, cache)
        return compiled(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        ).last_hidden_state

    @property
    def compiled_decoder(self) -> nn.Module | None:
        """The ``torch.compile``d decoder that ``forward`` runs after ``compile_backbone``, else None."""
        return self.__dict__.get("_compiled_decoder")

    def compile_backbone(self) -> None:
        """Run the training forward's passes through ``torch.compile(decoder)`` (inductor; opt-in).

        Only ``forward`` (the teacher-forced thought loop) uses it; generation stays eager. The first
        steps compile (a minute or more on a CPU); shapes are dynamic, so sequence length, batch size
        and the number of thoughts vary without recompiling (dynamo keeps one graph per kind of pass:
        prefix, first cached column, further single columns, wider passes; and per grad mode). Results
        equal eager within float rounding. Not with activation checkpointing (refused). The compiled
        module is kept outside the module tree: parameter names and the state dict are unchanged.
        """
        if any(getattr(m, "gradient_checkpointing", False) for m in self.causal_lm.modules()):
            raise ConfigError(
                "compiling the backbone does not work with gradient checkpointing: "
                "set train.compile=false or model.gradient_checkpointing=false"
            )
        object.__setattr__(self, "_compiled_decoder", torch.compile(self.decoder, dynamic=True))

    # -- activation checkpointing that keeps the thought loop's cache --------------------------

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each decoder layer in backward while the thought loop keeps its KV cache.

        transformers' own switch drops the cache (``use_cache=False``); here each layer is
        checkpointed by transformers' layer wrapper with the cache kept, which is safe because
        ``PassCache.update`` is idempotent (see coconav/model/cache.py).
        """
        if self.compiled_decoder is not None:
            raise ConfigError(
                "gradient checkpointing does not work with a compiled backbone (train.compile): "
                "set one of model.gradient_checkpointing, train.compile to false"
            )
        base = self.causal_lm
        if _hf_checkpointing(base):
            base.gradient_checkpointing_disable()  # the model-level switch would drop the cache
        layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
        if not layers:
            raise ConfigError(f"{type(base).__name__} has no checkpointable decoder layers")
        checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        for layer in layers:
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = checkpoint
            layer._can_checkpoint_with_cache = True

    def gradient_checkpointing_disable(self) -> None:
        for layer in self.causal_lm.modules():
            if isinstance(layer, GradientCheckpointingLayer):
                layer.gradient_checkpointing = False

    # -- teacher-forced training forward -----------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        thought_targets: torch.Tensor | None = None,
        thought_loss_weight: float = 0.0,
        return_logits: bool = False,
        thought_offsets: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """Teacher-forced forward with continuous thoughts.

        Shape: input_ids, attention_mask, labels, thought_targets [B, T]. `labels` are -100 where no
        loss is taken (question, thoughts, padding). `thought_targets` holds, at each thought column,
        the token that the state fed back as that thought should predict (-100 elsewhere).
        `thought_offsets` [B, L, D] is added to thought i's input (the navigator's steering, replayed).
        """
        if _hf_checkpointing(self.causal_lm) and self.training:
            self.gradient_checkpointing_enable()  # a user turned on transformers' own switch: keep the cache
        with self._autocast():
            hidden, num_passes = self._thought_forward(input_ids, attention_mask, thought_offsets)
        lm_loss = thought_loss = loss = None
        if labels is not None:
            lm_loss = self._shifted_ce(hidden, labels)
            loss = lm_loss
        if thought_targets is not None and thought_loss_weight > 0:
            thought_loss = self._shifted_ce(hidden, thought_targets)
            loss = (
                lm_loss + thought_loss_weight * thought_loss
                if lm_loss is not None
                else thought_loss_weight * thought_loss
            )
        logits = self.lm_head(hidden) if return_logits else None
        return ForwardOutput(
            loss=loss, lm_loss=lm_loss, thought_loss=thought_loss, hidden=hidden, logits=logits, num_passes=num_passes
        )

    def _thought_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, offsets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int]:
        is_thought = input_ids == self.special.thought  # [B, T]
        tok_embeds = self.embed(input_ids.masked_fill(is_thought, self.special.pad))  # [B, T, D]
        positions = positions_from_mask(attention_mask)  # [B, T]
        start, num_thoughts = thought_span(is_thought)
        bounds = pass_bounds(input_ids.shape[1], start, num_thoughts)
        full_mask = self.full_attention_mask(tok_embeds, attention_mask) if len(bounds) > 1 else None
        chunks: list[torch.Tensor] = []
        prefix = None
        for i, (a, b) in enumerate(bounds):
            x = tok_embeds[:, a:b]
            if i > 0:  # column a is thought i-1 where the example has one: last pass's final hidden state
                thought = self.to_thought(chunks[-1][:, -1])
                if offsets is not None:
                    thought = thought + offsets[:, i - 1].to(thought.dtype)
                fed = torch.where(is_thought[:, a, None], thought.to(x.dtype), x[:, 0])[:, None]  # [B, 1, D]
                x = fed if b - a == 1 else torch.cat([fed, x[:, 1:]], dim=1)
            # The pass's rows of the whole sequence's 4-D mask (transformers uses a 4-D mask as is).
            mask = full_mask[:, :, a:b, :b] if full_mask is not None else attention_mask[:, :b]
            cache = PassCache(prefix, self.num_layers)
            chunks.append(self._pass(x, mask, positions[:, a:b], cache))
            prefix = cache.kv()
        return torch.cat(chunks, dim=1), len(chunks)

    def full_attention_mask(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """transformers' 4-D attention mask over the whole sequence, built once for all passes, or None.

        The rows [a, b) and columns [0, b) of it are the mask transformers would build for a pass over
        columns [a, b) on a cache of a columns, so each pass takes its slice instead of calling
        ``create_causal_mask`` again. None (each pass then builds its own from the 2-D mask) when the
        attention kernel takes no plain 4-D tensor (flash, flex), when some layers need another mask
        (sliding-window or chunked attention: a 4-D mask would be handed to them as is), or when
        transformers needs no mask at all (no padding: sdpa's ``is_causal``).
        Shape: embeds [B, T, D], mask [B, T] -> [B, 1, T, T].
        """
        config = self.decoder.config
        if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager") or not getattr(
            config, "is_causal", True
        ):
            return None
        other_layers = any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or [])
        if other_layers or getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None):
            return None
        mask = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=attention_mask, cache=None)
        return mask if isinstance(mask, torch.Tensor) and mask.dim() == 4 else None

    def suppress_latent(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits with <bot>, <eot>, <thought> and <pause> made impossible: decoding never emits them."""
        s = self.special
        banned = [i for i in (s.bot, s.eot, s.thought, s.pause) if i not in (s.eos, s.pad)]
        return logits.index_fill(-1, torch.tensor(banned, device=logits.device), float("-inf"))

    def sequence_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Sum over each row of log p(target token) under the decoding distribution (latent tokens
        suppressed), logits only where there is a target.

        Shape: hidden [B, T, D], targets [B, T] (-100 where none; predicted from the position before) -> [B].
        """
        keep = targets[:, 1:] != -100  # [B, T-1]
        logits = self.suppress_latent(self.lm_head(hidden[:, :-1][keep]).float()) / temperature  # [N, V]
        token_logp = torch.log_softmax(logits, -1).gather(-1, targets[:, 1:][keep][:, None]).squeeze(-1)
        rows = keep.nonzero()[:, 0]
        return torch.zeros(hidden.shape[0], device=hidden.device).index_add(0, rows, token_logp)

    def _shifted_ce(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy with logits computed only where there is a target.

        Shape: hidden [B, T, D]; targets [B, T], or [B, T, S] for sets of targets (-100 pads a set): a position
        with a set is scored by the mean cross-entropy over its members (a uniform target over the set, which
        equals the plain cross-entropy for a set of one)."""
        shifted = targets[:, 1:]
        keep = shifted != -100 if shifted.dim() == 2 else (shifted != -100).any(-1)  # [B, T-1]
        logits = self.lm_head(hidden[:, :-1][keep])  # [N, V]
        if logits.shape[0] == 0:
            return hidden.sum() * 0.0
        if shifted.dim() == 2:
            return F.cross_entropy(logits.float(), shifted[keep])
        members = shifted[keep]  # [N, S]
        valid = members != -100
        logp = F.log_softmax(logits.float(), dim=-1).gather(1, members.clamp(min=0))  # [N, S]
        return (-(logp * valid).sum(1) / valid.sum(1)).mean()

    # -- batched generation ------------------------------------------------------------------

    def left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad token id lists. Shape: ids, mask [B, P]."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise InputError("every prompt needs at least one token")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.special.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # -- the static KV cache and compiled generation ----------------------------------------------

    def use_static_cache(self, enabled: bool = True) -> LatentLM:
        """Generation with a preallocated KV cache of fixed shapes (coconav/model/cache.py, ``DecodeCache``)
        instead of the growing one. Outputs equal the dynamic cache's within float rounding."""
        self.kv_cache = "static" if enabled else "dynamic"
        if enabled and self._static_pool is None:
            self._static_pool = StaticPool(self.causal_lm.config)
        return self

    def compile_generation(self, mode: str | None = None, backend: str = "inductor") -> LatentLM:
        """``torch.compile`` the backbone calls of generation: the prefill (dynamic shapes) and the one-column
        step that serves every thought and every answer token (static KV cache, fixed shapes).

        `mode` None: "reduce-overhead" (CUDA graphs) for the step on a GPU, inductor's default on a CPU.
        `backend` is torch.compile's: "inductor" generates kernels; "eager" only captures the calls with dynamo
        (seconds instead of tens of seconds: what `coconav doctor --tiny` uses to check this path on a CPU).
        The static cache is turned on. The eager path (without this call) stays the reference: greedy
        tokens are the same and thoughts equal within float tolerance (tests/model/test_compile.py).
        Compilation happens at the first call of each shape (the cache's capacity is rounded up to a
        multiple of 16 columns; after the second shape the step is recompiled once with dynamic sizes).
        """
        self.use_static_cache(True)
        cuda_graphs = backend == "inductor" and self.device.type == "cuda"
        step_mode = mode if mode is not None else ("reduce-overhead" if cuda_graphs else None)
        self._compiled = {
            "prefill": torch.compile(self._prefill_call, dynamic=True, mode=mode, backend=backend),
            "step": torch.compile(self._step_call, mode=step_mode, backend=backend),
        }
        return self

    def configure_generation(self, kv_cache: str = "dynamic", compile: bool = False) -> LatentLM:
        """Apply `model.kv_cache` / `model.compile` (coconav/config.py): compiling implies the static cache."""
        if kv_cache not in ("dynamic", "static"):
            raise ConfigError(f"model.kv_cache must be 'dynamic' or 'static', got {kv_cache!r}")
        self._compiled = None
        self.use_static_cache(kv_cache == "static" or compile)
        return self.compile_generation() if compile else self

    @property
    def is_compiled(self) -> bool:
        return self._compiled is not None

    # Two functions with the same body on purpose: torch.compile keys its graphs and its recompile limit
    # on the code object, so the prefill's dynamic shapes and the step's fixed ones stay apart.
    def _prefill_call(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        return self._run(embeds, mask, positions, cache)

    def _step_call(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        return self._run(embeds, mask, positions, cache)

    def _step(self, state: DecodeState, embeds: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Feed one column [B, 1, D]; examples with keep=False see it masked out. Returns hidden [B, D]."""
        mask = state.cache.column(keep)
        positions = state.next_position[:, None]
        if self.sliding_window is not None:
            mask = self.windowed_step_mask(mask, positions, embeds.dtype)
        if self._compiled is not None and state.cache.is_static:
            # a copy: a CUDA-graph replay overwrites its output buffers at the next step
            hidden = self._compiled["step"](embeds, mask, positions, state.cache.cache)[:, -1].clone()
        else:
            hidden = self._step_call(embeds, mask, positions, state.cache.cache)[:, -1]
        state.next_position = state.next_position + keep.long()
        return hidden

    @property
    def sliding_window(self) -> int | None:
        """The sliding window of a model with sliding-window attention layers (Mistral, Phi-3, Gemma 2/3), else None."""
        config = self.decoder.config
        window = getattr(config, "sliding_window", None)
        kinds = getattr(config, "layer_types", None)
        if not window or (kinds is not None and "sliding_attention" not in kinds):
            return None
        return int(window)

    def windowed_step_mask(
        self, key_mask: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The attention masks of one generation step of a sliding-window model, the window counted in positions.

        transformers counts a sliding window in cache columns. A row that stops thinking before others leaves
        hidden columns in its cache (the batch's later thought columns), so a window of columns would hold
        fewer of its real tokens than the same example alone, or the training forward, sees. Here key column j
        is in the window of the new query when position(query) - position(j) < window, a visible column's
        position being the count of visible columns before it. The mask is a 4-D tensor, or a dict by layer
        type for models with both kinds of layers, which transformers uses as is (eager: additive floats).
        Shape: key_mask [B, S], positions [B, 1] -> [B, 1, 1, S].
        """
        config = self.decoder.config
        kind = getattr(config, "_attn_implementation", None)
        if kind not in ("sdpa", "eager"):  # flash / flex kernels take no plain 4-D mask: transformers' own
            return key_mask
        visible = key_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
        key_positions = (key_mask.cumsum(-1) - 1)[:, None, None, :]  # [B, 1, 1, S]
        sliding = visible & (positions[:, :, None, None] - key_positions < self.sliding_window)
        masks = {"full_attention": visible, "sliding_attention": sliding}
        if kind == "eager":
            zero, low = torch.zeros((), dtype=dtype, device=key_mask.device), torch.finfo(dtype).min
            masks = {name: torch.where(m, zero, low) for name, m in masks.items()}
        if getattr(config, "layer_types", None) is not None:
            return masks
        return masks["sliding_attention"]  # every layer slides (Mistral, Phi-3 with a window)

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], max_new_columns: int | None = None) -> DecodeState:
        """Run the prompts (left-padded) through the backbone once, filling a fresh cache.

        `max_new_columns`: the most columns the steps after it will add (thoughts, <eot>, answer tokens);
        with the static cache on it sizes the preallocated buffers (None: the dynamic layout)."""
        ids, mask = self.left_pad(prompts)
        capacity = None
        if self.kv_cache == "static" and max_new_columns is not None:
            capacity = static_capacity(mask.shape[1] + max_new_columns, 16 if self._compiled is not None else 1)
        cache = DecodeCache(mask, capacity, self._static_pool)
        call = self._compiled["prefill"] if self._compiled is not None else self._prefill_call
        with self._autocast():
            hidden = call(self.embed(ids), mask, positions_from_mask(mask), cache.cache)
        return DecodeState(cache=cache, next_position=mask.sum(1), last_hidden=hidden[:, -1])

    @torch.no_grad()
    def think(
        self,
        state: DecodeState,
        num_thoughts: torch.Tensor,
        controller: ThoughtController | None = None,
        max_thoughts: int | None = None,
        return_thoughts: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The thought phase: feed back hidden states until each example halts, then feed <eot>.

        Without a controller example b thinks num_thoughts[b] times. With one, the controller
        decides at each step (at most `max_thoughts`). Returns (thoughts used [B], thoughts [B, L, D]).
        """
        B = state.last_hidden.shape[0]
        limit = (
            int(num_thoughts.max())
            if controller is None
            else int(max_thoughts if max_thoughts is not None else num_thoughts.max())
        )
        active = torch.ones(B, dtype=torch.bool, device=self.device)
        used = torch.zeros(B, dtype=torch.long, device=self.device)
        fed = []
        with self._autocast():
            for step in range(limit + 1):
                thought = self.to_thought(state.last_hidden)
                if controller is None:
                    halt = step >= num_thoughts
                else:  # called at step == limit too (it sees the last state), but halting is forced there
                    decision = controller(step, state.last_hidden, thought, active)
                    thought, halt = decision.thought, decision.halt
                if step == limit:
                    break
                active = active & ~halt
                if not bool(active.any()):
                    break
                hidden = self._step(state, thought[:, None].to(state.last_hidden.dtype), active)
                state.last_hidden = torch.where(active[:, None], hidden, state.last_hidden)
                used = used + active.long()
                if return_thoughts:
                    fed.append(torch.where(active[:, None], thought, torch.zeros_like(thought)))
            eot = self.embed(torch.full((B, 1), self.special.eot, device=self.device))
            state.last_hidden = self._step(state, eot, torch.ones(B, dtype=torch.bool, device=self.device))
        thoughts = torch.stack(fed, dim=1) if fed else None
        if return_thoughts and thoughts is None:
            thoughts = state.last_hidden.new_zeros(B, 0, self.hidden_size)
        return used, thoughts

    @torch.no_grad()
    def decode(
        self,
        state: DecodeState,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        seeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy or sampled decoding from `state` until EOS. Returns (sequences [B, N], new_tokens [B]).
        `seeds` [B]: sample each row from its own random stream (see sample_token)."""
        B = state.last_hidden.shape[0]
        finished = torch.zeros(B, dtype=torch.bool, device=self.device)
        new_tokens = torch.zeros(B, dtype=torch.long, device=self.device)
        tokens = []
        with self._autocast():
            for i in range(max_new_tokens):
                logits = self.suppress_latent(self.lm_head(state.last_hidden).float())  # [B, V]
                token = sample_token(logits, do_sample, temperature, top_p, generator, seeds, i)
                token = token.masked_fill(finished, self.special.pad)
                tokens.append(token)
                new_tokens += (~finished).long()
                finished = finished | (token == self.special.eos)
                if bool(finished.all()) or i == max_new_tokens - 1:
                    break
                state.last_hidden = self._step(state, self.embed(token[:, None]), torch.ones_like(finished))
        sequences = torch.stack(tokens, dim=1) if tokens else torch.zeros(B, 0, dtype=torch.long, device=self.device)
        return sequences, new_tokens

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        num_thoughts: int | list[int] | torch.Tensor = 0,
        *,
        controller: ThoughtController | None = None,
        max_thoughts: int | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        return_thoughts: bool = False,
    ) -> GenerationOutput:
        """Generate answers for a batch of prompts (token id lists).

        A prompt that ends with <bot> gets a thought phase (`num_thoughts` per example, or the
        controller's halting) and then the forced <eot>; any other prompt is decoded directly.
        """
        ends_bot = [p[-1] == self.special.bot for p in prompts if p]
        if any(ends_bot) and not all(ends_bot):
            raise InputError("either every prompt of a batch ends with <bot> (latent mode) or none does")
        B = len(prompts)
        counts = torch.as_tensor(num_thoughts, dtype=torch.long, device=self.device).expand(B).clone()
        longest = max((len(p) for p in prompts), default=0)
        thought_room = int(max_thoughts if controller is not None and max_thoughts is not None else counts.max())
        room = self.context_length - longest - thought_room - 1  # the forced <eot> takes one position
        if room <= 0:
            raise InputError(
                f"a prompt of {longest} tokens plus {thought_room} thoughts does not fit the model's "
                f"context of {self.context_length} positions"
            )
        max_new_tokens = min(max_new_tokens, room)
        state = self.prefill(prompts, max_new_columns=thought_room + 1 + max_new_tokens)
        thoughts = None
        if all(ends_bot) and ends_bot:
            used, thoughts = self.think(state, counts, controller, max_thoughts, return_thoughts)
        else:
            if bool((counts > 0).any()):
                raise InputError("thoughts were asked for but the prompts do not end with <bot>")
            used = torch.zeros(B, dtype=torch.long, device=self.device)
        sequences, new_tokens = self.decode(state, max_new_tokens, do_sample, temperature, top_p, generator)
        state.release()
        texts = [self.decode_text(seq) for seq in sequences]
        return GenerationOutput(
            texts=texts,
            sequences=sequences,
            num_thoughts=used,
            new_tokens=new_tokens,
            forward_passes=1 + used + new_tokens,
            thoughts=thoughts,
        )

    def decode_text(self, ids: torch.Tensor | list[int]) -> str:
        """Text of generated ids up to the first EOS, without special tokens."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.special.eos in ids:
            ids = ids[: ids.index(self.special.eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # -- saving and loading ------------------------------------------------------------------

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the backbone's stored weights (a LoRA model: its base's, not its adapters')."""
        return self.causal_lm.get_input_embeddings().weight.dtype

    def metadata(self, extra: dict | None = None) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "special_tokens": asdict(self.special),
            "thought_norm": self.thought_norm,
            "autocast": "bfloat16" if self.autocast_dtype is not None else "none",
            "dtype": str(self.weight_dtype).removeprefix("torch."),
            "attn_implementation": getattr(self.causal_lm.config, "_attn_implementation", None),
            **(extra or {}),
        }

    def save_pretrained(self, directory: str | Path, extra_metadata: dict | None = None) -> None:
        """Write the backbone and tokenizer in Hugging Face format (safetensors) plus coconav.json.

        A LoRA-wrapped backbone is saved as a PEFT adapter folder ('adapter/') next to nothing
        else: the base model id is recorded in its adapter_config.json.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.model is not self.causal_lm:  # a PEFT adapter: the new token rows live in the adapter itself,
            self.model.save_pretrained(
                directory,
                safe_serialization=True,
                save_embedding_layers=False,  # not a full
                selected_adapters=["default"],
            )  # embedding copy; a frozen PPO reference
        else:  # adapter is not part of the model
            self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        (directory / META_FILE).write_text(json.dumps(self.metadata(extra_metadata), indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, dtype: torch.dtype | None = None, trainable: bool = False, **overrides
    ) -> LatentLM:
        """Load a folder written by `save_pretrained` (weights through safetensors only).

        `dtype` None keeps the checkpoint's own weight dtype (recorded in coconav.json). A LoRA checkpoint
        loads with frozen adapters (inference) unless `trainable`: then its adapters, and the latent-token
        rows stored with them, train again as when the run started. The module comes back in eval mode
        unless `trainable`.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = Path(directory)
        meta = read_metadata(directory)
        dtype = dtype if dtype is not None else checkpoint_dtype(meta)
        # the attention kernel it was saved with (transformers' config.json does not keep it); else automatic
        attn = {"attn_implementation": meta["attn_implementation"]} if meta.get("attn_implementation") else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
            if (directory / "adapter_config.json").is_file():
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(
                    directory, dtype=dtype, use_safetensors=True, is_trainable=trainable, **attn
                )
                lora = ((meta.get("config") or {}).get("model") or {}).get("lora") or {}
                if lora.get("adapter_dtype") == "bfloat16":  # PEFT upcasts stored bf16 adapters: back as trained
                    for name, param in model.named_parameters():
                        if "lora_" in name or "trainable_tokens" in name:
                            param.data = param.data.to(torch.bfloat16)
            else:
                model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, use_safetensors=True, **attn)
                model.requires_grad_(trainable)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{directory}: cannot load the model weights ({first})") from None
        kwargs = {
            "thought_norm": meta.get("thought_norm", "none"),
            "autocast": meta.get("autocast", "none"),
            **overrides,
        }
        return cls(model, tokenizer, **kwargs).train(trainable)


def _hf_checkpointing(model: nn.Module) -> bool:
    """Whether transformers' own gradient checkpointing switch is on (it would drop the cache)."""
    return any(
        getattr(m, "gradient_checkpointing", False) and not isinstance(m, GradientCheckpointingLayer)
        for m in model.modules()
    )


def checkpoint_dtype(meta: dict) -> torch.dtype:
    """The weight dtype a checkpoint was saved in: coconav.json's 'dtype', else its run config's model.dtype
    (checkpoints written before the field existed), else float32."""
    name = meta.get("dtype") or (meta.get("config") or {}).get("model", {}).get("dtype") or "float32"
    if name not in DTYPE_NAMES:
        raise CheckpointError(
            f"unknown weight dtype {name!r} in the checkpoint metadata (known: {', '.join(DTYPE_NAMES)})"
        )
    return DTYPE_NAMES[name]


def read_metadata(directory: Path) -> dict:
    """coconav.json of a checkpoint folder, with one-line errors for a missing or broken folder."""
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {directory}")
    path = directory / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a coconav checkpoint: {META_FILE} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # bad JSON or UTF-8, nested too deeply, an integer too long
        raise CheckpointError(f"{path}: corrupt metadata (not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format (expected format_version {FORMAT_VERSION})")
    return meta


def sample_token(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None = None,
    seeds: torch.Tensor | None = None,
    step: int = 0,
) -> torch.Tensor:
    """Greedy or temperature / nucleus sampling. Shape: logits [B, V] -> tokens [B]. With per-row stream
    `seeds` [B] (coconav/model/streams.py) row b draws from its own stream at `step` instead of `generator`."""
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the top token always stays)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if seeds is not None:
        return stream_categorical(probs, seeds, step)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
