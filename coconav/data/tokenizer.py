"""A small word-level tokenizer for the built-in tasks, built locally with ``tokenizers``.

COCONUT (arXiv 2412.06769 §3) marks latent reasoning with ``<bot>``/``<eot>`` and fills the
thought slots with a placeholder token (``<thought>``; ``<pause>`` serves the pause-token
baseline). Here those four, plus ``<pad>``/``<eos>``/``<unk>``, are special tokens of a
WordLevel vocabulary: whitespace separates words and runs of punctuation are their own tokens
(``sterpus.`` -> ``sterpus`` ``.``; ``<<``, ``>>`` and ``###`` stay whole). Encoding adds no BOS.
Decoding joins tokens with spaces and then removes the space before ``.``/``?``/``,``, so a
decoded graph answer reads exactly like the original (``Sally is a sterpus.``).

A word outside the vocabulary would silently become ``<unk>`` (and "what is 3 plus 4?" would still get
an answer); :func:`unknown_words` finds such words so that encoding user text can refuse them.

Usage::

    from coconav.data.tokenizer import task_tokenizer, unknown_words
    tok = task_tokenizer("arithmetic")
    tok("<< 2 = 7 + 5 >>")["input_ids"]   # 6 ids
    tok.save_pretrained(path)             # AutoTokenizer.from_pretrained(path) restores it
    unknown_words(tok, "what is 3 plus 4 ?")  # ['what', 'is', 'plus']
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from coconav.data.tasks import get_task
from coconav.errors import ConfigError
from coconav.tokens import LATENT_TOKENS

PAD = "<pad>"
EOS = "<eos>"
UNK = "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK, *LATENT_TOKENS)

# Always in the vocabulary so that punctuation split off user text never becomes <unk>.
PUNCTUATION = (".", "?", ",")


def _check_word(word: str, pre_tokenizer: pre_tokenizers.Whitespace) -> None:
    """A vocabulary word must survive pre-tokenization as one piece, or it could never be produced."""
    if not isinstance(word, str) or not word:
        raise ConfigError(f"tokenizer words must be non-empty strings, got {word!r}")
    pieces = pre_tokenizer.pre_tokenize_str(word)
    if len(pieces) != 1 or pieces[0][0] != word:
        split = [piece for piece, _ in pieces]
        raise ConfigError(f"tokenizer word {word!r} would be split into {split}; give its pieces as separate words")


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over the special tokens, then ``words`` (deduplicated, order kept).

    Ids: ``<pad>`` 0, ``<eos>`` 1, ``<unk>`` 2, ``<bot>`` 3, ``<eot>`` 4, ``<thought>`` 5,
    ``<pause>`` 6, then the words in first-seen order, then any of ``. ? ,`` not already given.
    Padding is on the left so that a batch of prompts ends aligned for generation.
    """
    pre_tokenizer = pre_tokenizers.Whitespace()
    vocab: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in [*words, *PUNCTUATION]:
        if isinstance(word, str) and word in vocab:
            continue  # a repeat, or a special token (which needs no pre-tokenizer check)
        _check_word(word, pre_tokenizer)
        vocab[word] = len(vocab)

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizer
    # Registered as added special tokens, they are matched before pre-tokenization, so "<bot>"
    # stays one token even though Whitespace() alone would split it into "<", "bot", ">".
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens=list(LATENT_TOKENS),
        padding_side="left",
        clean_up_tokenization_spaces=True,
    )


def task_tokenizer(task_name: str) -> PreTrainedTokenizerFast:
    """The word-level tokenizer covering every word the built-in task ``task_name`` can produce."""
    return build_word_tokenizer(get_task(task_name).vocabulary())


def unknown_words(tokenizer, text: str) -> list[str]:
    """The words of ``text`` that a word-level tokenizer encodes as ``<unk>`` (first-seen order, no repeats).

    Only WordLevel vocabularies (the built-in tasks', and those built from a data set's words) have
    unknown words; any other tokenizer (byte-level BPE, SentencePiece) gives [].
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, models.WordLevel):
        return []
    unk_id = backend.token_to_id(backend.model.unk_token)
    encoding = backend.encode(text, add_special_tokens=False)
    words: dict[str, None] = {}
    for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
        if token_id == unk_id:
            words.setdefault(text[start:end], None)
    return list(words)
