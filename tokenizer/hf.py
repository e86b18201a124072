"""Hugging Face tokenizers both ways: lmforge tokenizers written as ``tokenizers`` tokenizers
(``tokenizer.json``), so ``transformers.AutoTokenizer`` gives the same ids for an exported model;
and the ``hf`` kind, an imported model's own tokenizer behind lmforge's interface.

A char tokenizer is a BPE model with no merges: BPE splits a text into characters and looks
each up; with byte fallback, a character not in the vocabulary becomes its UTF-8 byte tokens,
named ``<0xNN>`` -- exactly lmforge's rule, ids included (specials 0-3, bytes 4-259, then the
characters). No normaliser and no pre-tokenizer: lmforge's char tokenizer has neither. The
decoder turns byte tokens back into bytes and joins everything (invalid UTF-8 becomes U+FFFD, as
in lmforge). Other kinds are refused with a message naming the kind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizer import meta
from tokenizer.base import SPECIAL_PIECES, Tokenizer, check_ids
from tokenizer.errors import TokenizerError
from tokenizer.io import PathLike, read_regular_file, write_atomic

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


HF_FILE = "hf_tokenizer.json"
"""Where an ``hf`` tokenizer keeps the transformers file (lmforge's own ``tokenizer.json`` says
its kind and special ids)."""
SPECIAL_NAMES = ("pad", "unk", "bos", "eos")


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer (an imported model's ``tokenizer.json``: GPT-2's
    byte-level BPE, Llama's sentencepiece-style BPE...) behind lmforge's interface.

    Texts encode without added special tokens (lmforge frames texts with its text start, see
    ``lm.context``); the special ids come from the model's ``tokenizer_config.json``, and one
    the model lacks (GPT-2 has no pad or unk) stands in with its end-of-text token.
    """

    kind = "hf"

    def __init__(self, hf: Any, specials: dict[str, int], vocab_size: int | None = None) -> None:  # noqa: ANN401
        """``hf`` is a ``tokenizers.Tokenizer``; ``vocab_size`` the model's, when its embedding
        is padded past the tokenizer's ids (those extra ids decode to nothing)."""
        self._hf = hf
        self._own = hf.get_vocab_size(with_added_tokens=True)
        if vocab_size is not None and vocab_size < self._own:
            raise TokenizerError(f"the tokenizer has {self._own} tokens, more than the model's {vocab_size}")
        self._vocab_size = vocab_size or self._own
        for name in SPECIAL_NAMES:
            value = specials.get(name)
            if not isinstance(value, int) or not 0 <= value < self._vocab_size:
                raise TokenizerError(f"special token {name!r} id {value!r} is outside the vocabulary")
            setattr(self, f"{name}_id", value)
        self.specials = dict(specials)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        check_ids(ids, self._vocab_size)
        if self._vocab_size > self._own:  # a padded embedding: its extra ids decode to nothing
            ids = [i for i in ids if i < self._own]
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        """The token's own name in the vocabulary (``<|endoftext|>``)."""
        return self._hf.id_to_token(token_id) or ""

    def save(self, directory: PathLike) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / HF_FILE, self._hf.to_str().encode("utf-8"))
        names = {self.token_text(i): i for i in dict.fromkeys(self.specials.values())}
        meta.write(out, self, specials=self.specials, special_tokens=names)

    @classmethod
    def load(cls, directory: PathLike) -> HFTokenizer:
        from tokenizers import Tokenizer as Raw

        saved, path = meta.read_of(directory, (cls.kind,))
        specials = meta.require(saved, "specials", dict, path)
        raw = read_regular_file(Path(directory) / HF_FILE, 256 << 20)
        return meta.rebuild(saved, path, lambda: cls(Raw.from_str(raw.decode("utf-8")), specials, saved["vocab_size"]),
                            "its hf_tokenizer.json has {}")

    @classmethod
    def from_transformers(cls, directory: PathLike, vocab_size: int | None = None) -> HFTokenizer:
        """The tokenizer of a transformers checkpoint directory: its ``tokenizer.json``, with the
        special tokens its ``tokenizer_config.json`` (or ``special_tokens_map.json``) names."""
        from tokenizers import Tokenizer as Raw

        where = Path(directory)
        path = where / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path}: missing (a fast tokenizer file is needed; slow-only tokenizers "
                                 "are not supported)")
        hf = Raw.from_str(read_regular_file(path, 256 << 20).decode("utf-8"))
        names: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (where / name).is_file():
                data = json.loads(read_regular_file(where / name, 16 << 20).decode("utf-8"))
                names |= {k: v for k, v in data.items() if k in {f"{s}_token" for s in SPECIAL_NAMES} and v}
        ids: dict[str, int] = {}
        for special in SPECIAL_NAMES:
            token = names.get(f"{special}_token")
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str) and hf.token_to_id(token) is not None:
                ids[special] = hf.token_to_id(token)
        end = ids.get("eos", ids.get("bos"))
        if end is None:
            raise TokenizerError(f"{where}: the tokenizer names no end-of-text token (eos_token or bos_token)")
        return cls(hf, {s: ids.get(s, end) for s in SPECIAL_NAMES}, vocab_size)
