"""lmforge tokenizers written as Hugging Face ``tokenizers`` tokenizers (``tokenizer.json``), so
``transformers.AutoTokenizer`` gives the same ids for an exported model.

A char tokenizer is a BPE model with no merges: BPE splits a text into characters and looks
each up; with byte fallback, a character not in the vocabulary becomes its UTF-8 byte tokens,
named ``<0xNN>`` -- exactly lmforge's rule, ids included (specials 0-3, bytes 4-259, then the
characters). No normaliser and no pre-tokenizer: lmforge's char tokenizer has neither. The
decoder turns byte tokens back into bytes and joins everything (invalid UTF-8 becomes U+FFFD, as
in lmforge). Other kinds are refused with a message naming the kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizer.base import SPECIAL_PIECES, Tokenizer
from tokenizer.errors import TokenizerError

EXPORTABLE = ("char",)


def to_hf(tok: Tokenizer) -> Any:  # noqa: ANN401 -- a tokenizers.Tokenizer
    """The ``tokenizers.Tokenizer`` that encodes as ``tok`` does."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    if tok.kind not in EXPORTABLE:
        raise TokenizerError(f"a {tok.kind} tokenizer cannot be written as tokenizer.json yet "
                             f"(exportable: {', '.join(EXPORTABLE)}); the model exports without it")
    byte_fallback = getattr(tok, "byte_fallback", False)
    vocab = {piece: i for i, piece in enumerate(SPECIAL_PIECES)}
    if byte_fallback:
        vocab |= {f"<0x{b:02X}>": len(SPECIAL_PIECES) + b for b in range(256)}
    first = len(vocab)
    vocab |= {char: first + i for i, char in enumerate(tok.chars)}  # type: ignore[attr-defined]
    model = models.BPE(vocab=vocab, merges=[], byte_fallback=byte_fallback,
                       unk_token=None if byte_fallback else SPECIAL_PIECES[tok.unk_id])
    hf = HFTokenizer(model)
    hf.add_special_tokens(list(SPECIAL_PIECES))
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return hf


def write(tok: Tokenizer, directory: str | Path, *, model_max_length: int | None = None) -> Path:
    """``tokenizer.json`` and a ``tokenizer_config.json`` naming the fast tokenizer and the
    special tokens, in ``directory``."""
    out = Path(directory)
    to_hf(tok).save(str(out / "tokenizer.json"))
    names = dict(zip(("pad_token", "unk_token", "bos_token", "eos_token"), SPECIAL_PIECES, strict=True))
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "add_bos_token": False,
                              "split_special_tokens": True,  # "<eos>" in a text is five characters, as in lmforge
                              "add_eos_token": False, "clean_up_tokenization_spaces": False}
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
