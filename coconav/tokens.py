"""The latent vocabulary: the four tokens COCONUT adds to any tokenizer, and their ids.

COCONUT (arXiv 2412.06769 §3) marks latent reasoning with ``<bot>``/``<eot>`` and fills the
thought slots with a placeholder (``<thought>``); ``<pause>`` serves the pause-token baseline.
Both the data collator and the latent LM need these, so they sit in the bottom layer and import
nothing from coconav but the errors: loading the model pulls in no task generators.

    special = SpecialTokens.from_tokenizer(tokenizer)   # ids of <bot>, <eot>, <thought>, <pause>, pad, eos
"""

from __future__ import annotations

from dataclasses import dataclass

from coconav.errors import ConfigError

BOT = "<bot>"
EOT = "<eot>"
THOUGHT = "<thought>"
PAUSE = "<pause>"
LATENT_TOKENS = (BOT, EOT, THOUGHT, PAUSE)


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the latent LM and the collator need."""

    bot: int
    eot: int
    thought: int
    pause: int
    pad: int
    eos: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialTokens:
        """Read the ids from a tokenizer that has the latent tokens (pad falls back to EOS)."""
        vocab = tokenizer.get_vocab()
        missing = [tok for tok in LATENT_TOKENS if tok not in vocab]
        if missing:
            raise ConfigError(f"tokenizer lacks the latent tokens {missing}: call add_latent_tokens first")
        if tokenizer.eos_token_id is None:
            raise ConfigError("tokenizer has no EOS token: set tokenizer.eos_token")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(
            bot=vocab[BOT],
            eot=vocab[EOT],
            thought=vocab[THOUGHT],
            pause=vocab[PAUSE],
            pad=pad,
            eos=tokenizer.eos_token_id,
        )
