"""The built-in tokenizer and tokenizer resolution.

The built-in tokenizer is byte-level with no merges: every UTF-8 byte is one token, plus a few
special tokens. It is built locally (no download), round-trips any unicode text, and keeps
digits as single tokens, which suits the tiny models that the demo trains on the CPU.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from thinkgym.rewards.math import THINK_CLOSE, THINK_OPEN

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN, THINK_OPEN, THINK_CLOSE)

TokenizerLike = PreTrainedTokenizerBase | str | None

# UTF-16 code units: a Python str may hold them unpaired, and no UTF-8 tokenizer can take them.
_SURROGATE = re.compile("[\ud800-\udfff]")


@lru_cache(maxsize=1)
def builtin_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with 256 byte tokens and 3 special tokens (259 in all)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    tok.add_special_tokens({"additional_special_tokens": [THINK_OPEN, THINK_CLOSE]})
    tok.name_or_path = "thinkgym-builtin-bytes"
    return tok


def resolve_tokenizer(tokenizer: TokenizerLike = None) -> PreTrainedTokenizerBase:
    """Accept a tokenizer object, a name or local path, or None for the built-in one."""
    if tokenizer is None or tokenizer == "builtin":
        return builtin_tokenizer()
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if isinstance(tokenizer, str):
        try:
            return AutoTokenizer.from_pretrained(tokenizer)
        except OSError as exc:
            raise ValueError(
                f"tokenizer={tokenizer!r} could not be loaded: it is neither a local folder with a "
                f"tokenizer nor a hub id that can be reached from here ({exc.__class__.__name__}). "
                "Pass a transformers tokenizer object, a local path, or None for the built-in tokenizer."
            ) from exc
    raise ValueError(
        f"tokenizer must be a transformers tokenizer, a name or path, or None; got {type(tokenizer).__name__}"
    )


def encodable(text: str) -> str:
    """`text` with its surrogate code units made valid: a pair written as two units becomes its
    character, a lone one becomes U+FFFD, as a UTF-16 decoder does. Python strings are the only
    text that can hold them (a model's output, `json.loads` of an escape), and tokenizers refuse it."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added (no BOS), as the env counts them."""
    return list(tokenizer.encode(encodable(text), add_special_tokens=False))


def decode(tokenizer: PreTrainedTokenizerBase, ids: Any) -> str:
    """Text of `ids`, special tokens kept so that `</think>` survives the round trip."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
