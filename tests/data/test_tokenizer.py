"""Tests for coconav.data.tokenizer: the word-level tokenizer of the built-in tasks.

Checks coverage (no <unk> over generated data), the special and latent tokens, punctuation
splitting, left padding, no BOS, decoding, and an offline save_pretrained/from_pretrained
round trip.
Run: HF_HUB_OFFLINE=1 python -m pytest tests/data/test_tokenizer.py -q
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from transformers import AutoTokenizer

from coconav.data.tasks import make_splits
from coconav.data.tokenizer import EOS, PAD, UNK, build_word_tokenizer, task_tokenizer, unknown_words
from coconav.errors import ConfigError
from coconav.tokens import BOT, EOT, LATENT_TOKENS, PAUSE, THOUGHT


@pytest.fixture(scope="module")
def arithmetic_tok():
    return task_tokenizer("arithmetic")


@pytest.fixture(scope="module")
def graph_tok():
    return task_tokenizer("graph")


def tokens(tok, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok(text)["input_ids"])


def test_constants():
    assert LATENT_TOKENS == ("<bot>", "<eot>", "<thought>", "<pause>")
    assert (BOT, EOT, THOUGHT, PAUSE) == LATENT_TOKENS
    assert (PAD, EOS, UNK) == ("<pad>", "<eos>", "<unk>")


@pytest.mark.parametrize("task", ["arithmetic", "graph"])
def test_generated_data_has_no_unknown_words(task):
    tok = task_tokenizer(task)
    splits = make_splits(task, seed=0, train_size=2000, validation_size=0, test_size=0,
                         min_difficulty=1, max_difficulty=8)  # fmt: skip
    texts = [" ".join([ex.question, *ex.steps, "###", ex.answer]) for ex in splits.train]
    ids = tok(texts)["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)
    # Sanity check that <unk> is reachable at all, so the check above can fail.
    assert tok("zzz")["input_ids"] == [tok.unk_token_id]


def test_special_token_ids_come_first_in_fixed_order(arithmetic_tok):
    # <pad>, <eos>, <unk>, then the four latent tokens, then the task's words.
    expected = [PAD, EOS, UNK, *LATENT_TOKENS]
    assert arithmetic_tok.convert_ids_to_tokens(list(range(7))) == expected
    assert (arithmetic_tok.pad_token, arithmetic_tok.eos_token, arithmetic_tok.unk_token) == (PAD, EOS, UNK)
    assert (arithmetic_tok.pad_token_id, arithmetic_tok.eos_token_id, arithmetic_tok.unk_token_id) == (0, 1, 2)
    assert arithmetic_tok.bos_token is None


def test_latent_tokens_are_single_special_ids(arithmetic_tok):
    special = set(arithmetic_tok.all_special_ids)
    for token in LATENT_TOKENS:
        ids = arithmetic_tok(token)["input_ids"]
        assert len(ids) == 1 and ids[0] in special
    # Never split, even glued to other text: "sterpus.<bot>" is three tokens.
    assert tokens(arithmetic_tok, f"1{BOT}{THOUGHT}{THOUGHT}{EOT}2") == ["1", BOT, THOUGHT, THOUGHT, EOT, "2"]


def test_calculator_step_is_one_token_per_word(arithmetic_tok):
    # "<< 2 = 7 + 5 >>" has 7 space-separated words (<<, result, =, operand, op, operand, >>),
    # and each is one token: "<<" and ">>" are not split into single characters.
    assert tokens(arithmetic_tok, "<< 2 = 7 + 5 >>") == ["<<", "2", "=", "7", "+", "5", ">>"]


def test_punctuation_is_split_and_markers_stay_whole(graph_tok):
    assert tokens(graph_tok, "Every sterpus is a wumpus.") == ["Every", "sterpus", "is", "a", "wumpus", "."]
    assert tokens(graph_tok, "Is Tom a yerpus or bumpus?") == ["Is", "Tom", "a", "yerpus", "or", "bumpus", "?"]
    assert tokens(graph_tok, "### Tom") == ["###", "Tom"]
    assert "," in graph_tok.get_vocab()  # added automatically


def test_no_bos_and_left_padding(arithmetic_tok):
    assert arithmetic_tok("1")["input_ids"] == [arithmetic_tok.convert_tokens_to_ids("1")]
    assert arithmetic_tok.padding_side == "left"
    batch = arithmetic_tok(["1", "1 + 2 ?"], padding=True)
    # the short row is padded with <pad> (id 0) on the left and masked out there
    assert batch["input_ids"][0][:3] == [0, 0, 0]
    assert batch["attention_mask"][0] == [0, 0, 0, 1]


def test_decode(arithmetic_tok, graph_tok):
    ids = arithmetic_tok(f"{BOT} {THOUGHT} {EOT} ### 1 {EOS}")["input_ids"]
    assert arithmetic_tok.decode(ids, skip_special_tokens=True) == "### 1"
    # Space before final punctuation is removed, so a decoded graph answer equals the original.
    answer = "Tom is a sterpus."
    assert graph_tok.decode(graph_tok(answer)["input_ids"]) == answer


def test_vocabulary_order_is_deterministic():
    a, b = task_tokenizer("graph"), task_tokenizer("graph")
    assert a.get_vocab() == b.get_vocab()
    assert len(a) == len(a.get_vocab())


def test_save_and_reload_offline(tmp_path, graph_tok):
    text = f"Tom is a wumpus. Is Tom a wumpus or yerpus? {BOT} {THOUGHT} {EOT} ### Tom is a wumpus. {EOS}"
    graph_tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == graph_tok(text)["input_ids"]
    assert loaded.get_vocab() == graph_tok.get_vocab()
    assert loaded.padding_side == "left"
    assert (loaded.pad_token, loaded.eos_token, loaded.unk_token, loaded.bos_token) == (PAD, EOS, UNK, None)
    assert set(LATENT_TOKENS) <= set(loaded.all_special_tokens)


def test_build_word_tokenizer_dedupes_and_validates():
    tok = build_word_tokenizer(["b", "a", "b", BOT, "."])
    # 7 specials, then b, a in first-seen order, then . ? , (the "." given once is not repeated)
    assert [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])][7:] == ["b", "a", ".", "?", ","]
    with pytest.raises(ConfigError, match="would be split"):
        build_word_tokenizer(["two words"])
    with pytest.raises(ConfigError, match="would be split"):
        build_word_tokenizer(["wumpus."])
    with pytest.raises(ConfigError, match="non-empty"):
        build_word_tokenizer([""])


def test_unknown_words_are_named_once_in_order(arithmetic_tok):
    assert unknown_words(arithmetic_tok, "what is 3 plus 4 ? what") == ["what", "is", "plus"]
    assert unknown_words(arithmetic_tok, "3 + 4 * 2 ?") == []


def test_unknown_words_survive_save_and_reload(tmp_path, arithmetic_tok):
    arithmetic_tok.save_pretrained(tmp_path)
    assert unknown_words(AutoTokenizer.from_pretrained(tmp_path), "3 plus 4 ?") == ["plus"]


def test_a_bpe_tokenizer_has_no_unknown_words():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={"a": 0, "<unk>": 1}, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    assert set(tok("zzz")["input_ids"]) == {1}  # it does map to <unk> ...
    assert unknown_words(tok, "zzz") == []  # ... but only word-level vocabularies are checked
