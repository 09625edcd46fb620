"""LoRA through PEFT: the new latent-token rows train with the adapters, and a checkpoint saved as a PEFT
adapter folder reloads to identical logits (the base is resized to the tokenizer with the latent tokens)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from coconav.config import LoraConfig, ModelConfig
from coconav.model.build import build_latent_lm
from coconav.model.latent_lm import LatentLM

WORDS = ["<pad>", "<eos>", "<unk>"] + [str(i) for i in range(10)] + "+ - * = << >> ? ###".split()


def base_folder(path: Path) -> Path:
    """A 'pretrained' model whose tokenizer lacks the latent tokens (like GPT-2 or Llama on the hub)."""
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=False,
        )
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_lora_checkpoint_round_trip(tmp_path: Path):
    base = base_folder(tmp_path / "base")
    lm = build_latent_lm(ModelConfig(name_or_path=str(base), lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"])))
    assert len(lm.tokenizer) == len(WORDS) + 4  # <bot> <eot> <thought> <pause> added
    s = lm.special
    ids = torch.tensor([[3, 4, s.bot, s.thought, s.thought, s.eot, 5, 6, 1]])
    new_rows_before = lm.embed(torch.tensor([s.bot, s.eot])).detach().clone()
    opt = torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=1.0)
    for _ in range(3):
        lm(ids, torch.ones_like(ids), labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    # the latent tokens' rows are trained (trainable_token_indices), the old rows are not
    assert not torch.equal(lm.embed(torch.tensor([s.bot, s.eot])), new_rows_before)
    lm.eval()
    ref = lm(ids, torch.ones_like(ids), return_logits=True).logits
    lm.save_pretrained(tmp_path / "ckpt")
    saved = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "coconav.json"} <= saved
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in saved)
    again = LatentLM.from_pretrained(tmp_path / "ckpt").eval()
    torch.testing.assert_close(again(ids, torch.ones_like(ids), return_logits=True).logits, ref, atol=0, rtol=0)


def trainable_names(lm: LatentLM) -> set[str]:
    return {n for n, p in lm.named_parameters() if p.requires_grad}


def test_lora_checkpoint_reloads_trainable_for_training(lora_coconut: Path):
    """init_from / --resume load with trainable=True: the adapters and the latent-token rows train again
    (the old load gave 0 trainable parameters and 'element 0 of tensors does not require grad')."""
    lm = LatentLM.from_pretrained(lora_coconut, trainable=True)
    names = trainable_names(lm)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert any("trainable_tokens" in n for n in names), names  # the <bot>/<eot>/... rows stored with the adapter
    assert all("lora_" in n or "trainable_tokens" in n for n in names), names  # the base stays frozen
    assert lm.training
    s = lm.special
    ids = torch.tensor([[3, 4, s.bot, s.thought, s.eot, 5, 1]])
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    opt = torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=1.0)
    lm(ids, torch.ones_like(ids), labels=ids).loss.backward()
    opt.step()
    changed = {n for n, p in lm.named_parameters() if not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in changed) and any("trainable_tokens" in n for n in changed), changed
    assert changed <= names


def test_lora_checkpoint_reloads_frozen_for_inference(lora_coconut: Path):
    lm = LatentLM.from_pretrained(lora_coconut)
    assert not trainable_names(lm) and not lm.training
    assert any(float(p.abs().sum()) > 0 for n, p in lm.named_parameters() if "lora_B" in n)  # the trained adapter


def test_checkpoint_reloads_in_its_own_dtype(bf16_coconut: Path):
    """The weight dtype is recorded in coconav.json: a bf16 checkpoint reloads as bf16 unless told otherwise."""
    assert LatentLM.from_pretrained(bf16_coconut).causal_lm.dtype == torch.bfloat16
    assert LatentLM.from_pretrained(bf16_coconut, trainable=True).causal_lm.dtype == torch.bfloat16
    assert LatentLM.from_pretrained(bf16_coconut, dtype=torch.float32).causal_lm.dtype == torch.float32


def test_bf16_adapters_reload_as_bf16(tmp_path: Path):
    """model.lora.adapter_dtype=bfloat16: PEFT's loader upcasts stored adapters to fp32; they come back bf16."""
    from conftest import coconut_checkpoint, save_pretrained_base

    base = save_pretrained_base(tmp_path / "base")
    lora = {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"], "adapter_dtype": "bfloat16"}
    ckpt = coconut_checkpoint(tmp_path / "ckpt", {"name_or_path": str(base), "lora": lora}, train_steps=1)
    for trainable in (False, True):
        lm = LatentLM.from_pretrained(ckpt, trainable=trainable)
        dtypes = {p.dtype for n, p in lm.named_parameters() if "lora_" in n}
        assert dtypes == {torch.bfloat16}, dtypes
        assert lm.causal_lm.get_input_embeddings().weight.dtype == torch.float32  # the base as stored
