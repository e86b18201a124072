"""Text <-> token ids for lmforge: ``char``, ``word``, ``bpe`` and ``unigram`` tokenizers behind
one interface. Knows nothing of torch.

    tok = train_tokenizer("bpe", ["corpus.txt"], vocab_size=8000)
    tok.save("out/")
    tok = load_tokenizer("out/")
    assert tok.decode(tok.encode(text)) == text
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizer.base import BOS_ID, EOS_ID, PAD_ID, SPECIAL_PIECES, UNK_ID, Tokenizer
    from tokenizer.char import CharTokenizer
    from tokenizer.errors import TokenizerError
    from tokenizer.io import iter_text_chunks
    from tokenizer.kinds import KINDS
    from tokenizer.registry import load_tokenizer, train_options, train_tokenizer
    from tokenizer.sentencepiece_tok import SentencePieceTokenizer
    from tokenizer.word import WordTokenizer

_HOMES = {
    **dict.fromkeys(
        ("BOS_ID", "EOS_ID", "PAD_ID", "SPECIAL_PIECES", "UNK_ID", "Tokenizer"), "base"
    ),
    "CharTokenizer": "char",
    "TokenizerError": "errors",
    "iter_text_chunks": "io",
    "KINDS": "kinds",
    **dict.fromkeys(("load_tokenizer", "train_options", "train_tokenizer"), "registry"),
    "SentencePieceTokenizer": "sentencepiece_tok",
    "WordTokenizer": "word",
}
"""Where each public name lives; imported on first use, so a submodule such as
``tokenizer.kinds`` can be imported without loading numpy and sentencepiece."""

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "KINDS",
    "PAD_ID",
    "SPECIAL_PIECES",
    "UNK_ID",
    "CharTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerError",
    "WordTokenizer",
    "iter_text_chunks",
    "load_tokenizer",
    "train_options",
    "train_tokenizer",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tokenizer.{home}"), name)
