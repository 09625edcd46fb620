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
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False))
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
