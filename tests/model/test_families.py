"""Model families of the Hub: a tiny random model of each, saved as a 'pretrained' folder and loaded the way
`model.name_or_path` loads any causal LM, must think in continuous thoughts like Llama and GPT-2 do.

For each family: the teacher-forced latent forward equals incremental cached generation with thoughts;
a few COCONUT steps lower the loss; the static KV cache equals the dynamic one; LoRA finds its target
modules; a save/reload round trip keeps logits and the bf16 dtype; the attention kernel falls back to
eager where the family has no SDPA (Gemma 2). Sliding-window families (Mistral, Gemma 2, Gemma 3, Phi-3) get a
window shorter than the test sequences, so the window really masks something. Nothing is downloaded.

    OMP_NUM_THREADS=1 python -m pytest -q tests/model/test_families.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from coconav.config import LoraConfig, ModelConfig
from coconav.errors import ConfigError
from coconav.model.build import build_latent_lm, check_latent_loop, lora_target_modules
from coconav.model.latent_lm import LatentLM
from tests.conftest import BASE_WORDS

WINDOW = 4  # sliding window of the sliding families: shorter than every test sequence (7-15 positions)
# vocabulary and special ids as in tests/conftest.py's 'pretrained' base (the latent tokens are added on load)
COMMON = {"vocab_size": len(BASE_WORDS), "eos_token_id": 1, "bos_token_id": 1, "pad_token_id": 0}
DECODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    **COMMON,
}
LLAMA_LORA = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]

# family -> (config builder, causal LM class, the LoRA target modules found automatically)
FAMILIES = {
    "llama": (lambda: tf.LlamaConfig(**DECODER), tf.LlamaForCausalLM, LLAMA_LORA),
    "qwen2": (lambda: tf.Qwen2Config(**DECODER), tf.Qwen2ForCausalLM, LLAMA_LORA),
    "qwen3": (lambda: tf.Qwen3Config(head_dim=8, **DECODER), tf.Qwen3ForCausalLM, LLAMA_LORA),
    "mistral": (lambda: tf.MistralConfig(sliding_window=WINDOW, **DECODER), tf.MistralForCausalLM, LLAMA_LORA),
    "gemma2": (lambda: tf.Gemma2Config(head_dim=8, sliding_window=WINDOW, **DECODER), tf.Gemma2ForCausalLM, LLAMA_LORA),
    "gemma3": (
        lambda: tf.Gemma3TextConfig(
            head_dim=8, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"], **DECODER
        ),
        tf.Gemma3ForCausalLM,
        LLAMA_LORA,
    ),
    # a sliding window, as Phi-3-mini-4k has (2047)
    "phi3": (
        lambda: tf.Phi3Config(sliding_window=WINDOW, **DECODER),
        tf.Phi3ForCausalLM,
        ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"],
    ),
    "olmo2": (lambda: tf.Olmo2Config(**DECODER), tf.Olmo2ForCausalLM, LLAMA_LORA),
    "gpt2": (
        lambda: tf.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **COMMON
        ),
        tf.GPT2LMHeadModel,
        ["c_attn", "c_fc", "c_proj"],
    ),
    "gpt_neox": (
        lambda: tf.GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            **COMMON,
        ),
        tf.GPTNeoXForCausalLM,
        ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"],
    ),
}
NO_SDPA = {"gemma2"}  # transformers 5.24: Gemma2 sets _supports_sdpa = False (soft-capped attention scores)


def base_tokenizer() -> PreTrainedTokenizerFast:
    """A word tokenizer without the latent tokens, like a hub model's."""
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(BASE_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(family name, a saved 'pretrained' folder of a tiny random model of it), built once per module.

    Weights are N(0, 0.1^2) rather than the families' tiny init, so greedy tokens vary and equality means something."""
    name = request.param
    make_config, model_class, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = model_class(make_config())
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp(name) / "base"
    model.save_pretrained(path)
    base_tokenizer().save_pretrained(path)
    return name, path


def load(path: Path, **model) -> LatentLM:
    return build_latent_lm(ModelConfig(name_or_path=str(path), **model)).eval()


def teacher_forced_row(lm: LatentLM, prompt: list[int], n: int, answer: list[int]) -> torch.Tensor:
    """One example alone (no padding): logits [len(answer), V] predicting the answer tokens after <eot>."""
    s = lm.special
    ids = torch.tensor([prompt + [s.thought] * n + [s.eot] + answer])
    logits = lm(ids, torch.ones_like(ids), return_logits=True).logits[0]
    first = len(prompt) + n  # the <eot> column predicts answer[0]
    return logits[first : first + len(answer)]


def cached_generation(
    lm: LatentLM, prompts: list[list[int]], counts: list[int], answers: list[list[int]]
) -> torch.Tensor:
    """Batched incremental decoding with the KV cache: prefill, thoughts, <eot>, then the given answer tokens
    fed one column at a time. Logits [B, A, V] predicting each answer token."""
    with torch.no_grad():
        state = lm.prefill(prompts, max_new_columns=max(counts) + 1 + len(answers[0]))
        lm.think(state, torch.tensor(counts))
        logits = [lm.lm_head(state.last_hidden)]
        tokens = torch.tensor(answers)
        keep = torch.ones(len(prompts), dtype=torch.bool)
        for i in range(tokens.shape[1] - 1):
            state.last_hidden = lm._step(state, lm.embed(tokens[:, i : i + 1]), keep)
            logits.append(lm.lm_head(state.last_hidden))
        state.release()
    return torch.stack(logits, dim=1)


def test_latent_forward_equals_cached_generation(family):
    name, path = family
    lm = load(path)
    s = lm.special
    prompts = [[7, 8, 9, 10, 11, 12, s.bot], [9, 10, 5, s.bot], [12, 8, 9, 3, 4, s.bot]]
    answers = [[13, 14, 15, 16], [16, 15, 14, 13], [8, 8, 9, 9]]
    with torch.no_grad():
        # without thoughts the latent forward is the causal LM's own forward (logit soft-capping included)
        ids = torch.tensor([prompts[0][:-1] + answers[0]])
        torch.testing.assert_close(
            lm(ids, torch.ones_like(ids), return_logits=True).logits,
            lm.causal_lm(input_ids=ids).logits,
            atol=1e-5,
            rtol=1e-5,
        )
        for counts in ([2, 2, 2], [3, 1, 0]):  # even counts; uneven halting (rows mask their idle thought columns)
            cached = cached_generation(lm, prompts, counts, answers)
            for b, (prompt, n, answer) in enumerate(zip(prompts, counts, answers)):
                ref = teacher_forced_row(lm, prompt, n, answer)
                torch.testing.assert_close(cached[b], ref, atol=1e-4, rtol=1e-4, msg=f"{name} row {b} counts {counts}")


def training_batch(lm: LatentLM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows aligned on <bot>, as the collator makes them: 2 thoughts, and 1 thought with left padding."""
    s = lm.special
    ids = torch.tensor(
        [
            [7, 8, 9, s.bot, s.thought, s.thought, s.eot, 13, 14, 1],
            [s.pad, 8, 10, s.bot, s.thought, s.eot, 15, 16, 1, s.pad],
        ]
    )
    mask = (ids != s.pad).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :7] = -100
    labels[1, 6] = 15  # row 1's answer starts one column earlier
    return ids, mask, labels


def test_padded_training_batch_equals_rows_alone(family):
    """The collator's layout (rows aligned on <bot>, left and right padding, uneven thoughts) changes nothing:
    sliding windows count the same tokens as for each row alone."""
    name, path = family
    lm = load(path)
    ids, mask, _ = training_batch(lm)
    with torch.no_grad():
        batched = lm(ids, mask, return_logits=True).logits
        for b in range(ids.shape[0]):
            row = ids[b][mask[b].bool()][None]
            alone = lm(row, torch.ones_like(row), return_logits=True).logits[0]
            torch.testing.assert_close(batched[b][mask[b].bool()], alone, atol=1e-4, rtol=1e-4, msg=f"{name} row {b}")


def test_coconut_steps_lower_the_loss(family):
    name, path = family
    lm = load(path).train()
    ids, mask, labels = training_batch(lm)
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(4):
        loss = lm(ids, mask, labels=labels).loss
        assert torch.isfinite(loss), name
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    lm.eval()
    with torch.no_grad():
        after = float(lm(ids, mask, labels=labels).loss)
    assert after < losses[0], f"{name}: loss {losses[0]:.4f} -> {losses} -> {after:.4f}"


def test_static_cache_equals_dynamic(family):
    name, path = family
    lm = load(path)
    s = lm.special
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(7, 20, (int(k),), generator=gen).tolist() + [s.bot] for k in (2, 6, 4, 9, 3, 5)]
    counts = [0, 1, 2, 3, 4, 2]
    ref = lm.generate(prompts, num_thoughts=counts, max_new_tokens=6, return_thoughts=True)
    lm.use_static_cache()
    out = lm.generate(prompts, num_thoughts=counts, max_new_tokens=6, return_thoughts=True)
    assert out.sequences.tolist() == ref.sequences.tolist(), name
    assert torch.equal(out.new_tokens, ref.new_tokens)
    torch.testing.assert_close(out.thoughts, ref.thoughts, atol=1e-4, rtol=1e-4)


def test_lora_targets_are_found_automatically(family):
    name, path = family
    expected = FAMILIES[name][2]
    assert lora_target_modules(load(path).causal_lm) == expected
    lm = load(path, lora=LoraConfig(r=2, alpha=4))  # target_modules unset: resolved from the model
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in lm.named_parameters() if ".lora_A" in n}
    assert wrapped == set(expected), name
    assert not any("lm_head" in n or "embed" in n for n, _ in lm.named_parameters() if "lora_" in n)
    lm.train()
    ids, mask, labels = training_batch(lm)
    before = {n: p.detach().clone() for n, p in lm.named_parameters() if "lora_B" in n}
    opt = torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=0.5)
    lm(ids, mask, labels=labels).loss.backward()
    opt.step()
    assert any(not torch.equal(p, before[n]) for n, p in lm.named_parameters() if n in before), name
    assert torch.isfinite(lm(ids, mask, labels=labels).loss)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_and_reload_round_trip(family, dtype, tmp_path: Path):
    name, path = family
    lm = load(path, dtype=dtype)
    ids, mask, _ = training_batch(lm)
    with torch.no_grad():
        ref = lm(ids, mask, return_logits=True).logits
    lm.save_pretrained(tmp_path / "ckpt")
    again = LatentLM.from_pretrained(tmp_path / "ckpt")
    assert again.weight_dtype == getattr(torch, dtype), name
    assert again.causal_lm.config._attn_implementation == lm.causal_lm.config._attn_implementation
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask, return_logits=True).logits, ref, atol=0, rtol=0)


def test_attention_falls_back_where_sdpa_is_missing(family, tmp_path: Path):
    name, path = family
    expected = "eager" if name in NO_SDPA else "sdpa"
    assert load(path).causal_lm.config._attn_implementation == expected
    eager = load(path, attn_implementation="eager")
    assert eager.causal_lm.config._attn_implementation == "eager"
    eager.save_pretrained(tmp_path / "eager")  # the kernel is kept in coconav.json (config.json drops it)
    assert LatentLM.from_pretrained(tmp_path / "eager").causal_lm.config._attn_implementation == "eager"
    if name in NO_SDPA:
        with pytest.raises(ConfigError, match="attn_implementation=sdpa is not supported by Gemma2ForCausalLM") as err:
            load(path, attn_implementation="sdpa")
        assert "\n" not in str(err.value) and "attn_logit_softcapping" in str(err.value)


def test_gemma_thoughts_are_not_rescaled_like_token_embeddings(tmp_path_factory):
    """Gemma multiplies token embeddings by sqrt(D) inside its embedding module: a thought (a last hidden
    state) reaches the first layer as is, never multiplied again."""
    model = tf.Gemma3ForCausalLM(FAMILIES["gemma3"][0]())
    path = tmp_path_factory.mktemp("gemma_scale") / "base"
    model.save_pretrained(path)
    base_tokenizer().save_pretrained(path)
    lm = load(path)
    s = lm.special
    seen = []
    hook = lm.decoder.layers[0].register_forward_pre_hook(
        lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]), with_kwargs=True
    )
    ids = torch.tensor([[7, 8, s.bot, s.thought, s.eot, 9]])
    with torch.no_grad():
        out = lm(ids, torch.ones_like(ids))
    hook.remove()
    torch.testing.assert_close(seen[0][0, 0], lm.causal_lm.model.embed_tokens.weight[7] * 32**0.5)
    torch.testing.assert_close(seen[1][0, 0], out.hidden[0, 2])  # pass 1's first column: the thought, unscaled
    # thought_norm=embedding rescales a thought to the norm of the scaled token embeddings (what layer 0 sees)
    lm.thought_norm = "embedding"
    target = (lm.causal_lm.model.embed_tokens.weight.norm(dim=-1) * 32**0.5).mean()
    torch.testing.assert_close(lm.to_thought(torch.randn(3, 32)).norm(dim=-1), target.expand(3).detach())


def test_encoder_decoder_model_is_refused_in_one_line(tmp_path: Path):
    model = tf.T5ForConditionalGeneration(
        tf.T5Config(
            vocab_size=len(BASE_WORDS), d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, decoder_start_token_id=0
        )
    )
    model.save_pretrained(tmp_path / "t5")
    base_tokenizer().save_pretrained(tmp_path / "t5")
    with pytest.raises(ConfigError, match="encoder-decoder model") as err:
        load(tmp_path / "t5")
    assert "\n" not in str(err.value)


def test_hidden_state_that_cannot_be_fed_back_is_refused():
    """A head reading a width other than the input embedding's: no thought can be fed back."""
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**DECODER))
    check_latent_loop(model, "tiny-llama")
    model.lm_head = torch.nn.Linear(16, len(BASE_WORDS), bias=False)
    with pytest.raises(ConfigError, match=r"last hidden state \(width 16\) cannot be fed back") as err:
        check_latent_loop(model, "tiny-llama")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_compiled_generation_of_a_sliding_window_family_equals_eager(family):
    """Gemma 3 only (about 2 minutes of compiling on a CPU): the position-windowed masks (a dict by layer
    type) pass through torch.compile with the static cache; greedy tokens equal, thoughts within 1e-4."""
    name, path = family
    if name != "gemma3":
        pytest.skip("one sliding-window family is enough for this slow test")
    eager, compiled = load(path), load(path).compile_generation()
    s = eager.special
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(7, 20, (int(k),), generator=gen).tolist() + [s.bot] for k in (2, 6, 4, 9, 3, 5)]
    counts = [0, 1, 2, 3, 4, 2]
    ref = eager.generate(prompts, num_thoughts=counts, max_new_tokens=6, return_thoughts=True)
    out = compiled.generate(prompts, num_thoughts=counts, max_new_tokens=6, return_thoughts=True)
    assert out.sequences.tolist() == ref.sequences.tolist()
    torch.testing.assert_close(out.thoughts, ref.thoughts, atol=1e-4, rtol=1e-4)
