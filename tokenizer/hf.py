"""Hugging Face tokenizers both ways: lmforge tokenizers written as ``tokenizers`` tokenizers
(``tokenizer.json``), so ``transformers.AutoTokenizer`` gives the same ids for an exported model;
and the ``hf`` kind, an imported model's own tokenizer behind lmforge's interface.

A char tokenizer is a BPE model with no merges: BPE splits a text into characters and looks
each up; with byte fallback, a character not in the vocabulary becomes its UTF-8 byte tokens,
named ``<0xNN>`` -- exactly lmforge's rule, ids included (specials 0-3, bytes 4-259, then the
characters). No normaliser and no pre-tokenizer: lmforge's char tokenizer has neither. The
decoder turns byte tokens back into bytes and joins everything (invalid UTF-8 becomes U+FFFD, as
in lmforge).

A word tokenizer is a ``WordLevel`` model over the same ids: line ends become `` <eos> `` (a
normaliser), the text splits on exactly the characters Python's ``str.split()`` splits on (a
pre-tokenizer with that character class: Rust's whitespace lacks U+001C-U+001F), and the decoder
joins words with spaces and ``<eos>`` as a newline, as ``WordTokenizer.decode`` does. A word
tokenizer with a ``split_regex`` (Python regular expressions, which Oniguruma's do not match
exactly) and the other kinds are refused with a message naming what.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizer import meta
from tokenizer.base import BOS_ID, EOS_ID, PAD_ID, SPECIAL_PIECES, UNK_ID, Tokenizer, check_ids
from tokenizer.errors import TokenizerError
from tokenizer.io import PathLike, read_regular_file, write_atomic

EXPORTABLE = ("char", "word", "bpe", "unigram")
PYTHON_WHITESPACE = "".join(f"\\u{c:04x}" for c in range(0x3001) if chr(c).isspace())
"""``str.split()``'s separators as a regular-expression class body (none lies above U+3000)."""


def word_to_hf(tok: Any) -> Any:  # noqa: ANN401 -- a WordTokenizer -> a tokenizers.Tokenizer
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if tok.split_regex is not None:
        raise TokenizerError(f"a word tokenizer with split_regex {tok.split_regex!r} cannot be written as "
                             "tokenizer.json (its Python regular expression has no exact Oniguruma equivalent); "
                             "the model exports without it")
    vocab = {piece: i for i, piece in enumerate((*SPECIAL_PIECES, *tok.words))}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=SPECIAL_PIECES[UNK_ID]))
    steps = [normalizers.Lowercase()] if tok.lowercase else []
    if tok.eos_at_newline:
        steps.append(normalizers.Replace("\n", f" {SPECIAL_PIECES[EOS_ID]} "))
    if steps:
        hf.normalizer = normalizers.Sequence(steps)
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(f"[{PYTHON_WHITESPACE}]+"), behavior="removed")
    hf.add_special_tokens(list(SPECIAL_PIECES))
    surfaces = [decoders.Replace(SPECIAL_PIECES[i], "") for i in (PAD_ID, BOS_ID)]
    if tok.eos_at_newline:
        surfaces.append(decoders.Replace(SPECIAL_PIECES[EOS_ID], "\n"))
    else:
        surfaces.append(decoders.Replace(SPECIAL_PIECES[EOS_ID], ""))
    # WordPiece with a prefix no word can start with (words hold no whitespace) puts one space
    # before every token; fused, empty surfaces' doubled spaces and the spaces around newlines go.
    hf.decoder = decoders.Sequence([*surfaces, decoders.WordPiece(prefix=" ", cleanup=False), decoders.Fuse(),
                                    decoders.Replace(Regex(" +"), " "), decoders.Replace(Regex(" ?\n ?"), "\n"),
                                    decoders.Replace(Regex(r"\A | \z"), "")])  # not Strip: it panics on ""
    return hf


def sentencepiece_to_hf(tok: Any) -> Any:  # noqa: ANN401 -- a SentencePieceTokenizer -> a tokenizers.Tokenizer
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    sp = tok.processor
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    scores = [sp.get_score(i) for i in range(len(pieces))]
    if tok.kind == "unigram":
        model = models.Unigram(list(zip(pieces, scores, strict=True)), unk_id=UNK_ID, byte_fallback=True)
    else:
        vocab = {piece: i for i, piece in enumerate(pieces)}
        learned = {i for i, piece in enumerate(pieces) if piece != "\n" and not (
            sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))}
        merges = []
        for i in sorted(learned, key=lambda i: -scores[i]):  # stable: ties keep id order
            piece = pieces[i]
            merges += sorted(((piece[:k], piece[k:]) for k in range(1, len(piece))
                              if vocab.get(piece[:k]) in learned and vocab.get(piece[k:]) in learned),
                             key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        model = models.BPE(vocab=vocab, merges=merges, unk_token=SPECIAL_PIECES[UNK_ID], byte_fallback=True,
                           fuse_unk=True)
    hf = HFTokenizer(model)
    hf.normalizer = normalizers.Replace(" ", "\u2581")
    hf.add_tokens([AddedToken("\n", normalized=False, special=False)])
    hf.add_special_tokens(list(SPECIAL_PIECES))
    hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return hf


def to_hf(tok: Tokenizer) -> Any:  # noqa: ANN401 -- a tokenizers.Tokenizer
    """The ``tokenizers.Tokenizer`` that encodes as ``tok`` does."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    if tok.kind not in EXPORTABLE:
        raise TokenizerError(f"a {tok.kind} tokenizer cannot be written as tokenizer.json yet "
                             f"(exportable: {', '.join(EXPORTABLE)}); the model exports without it")
    if tok.kind == "word":
        return word_to_hf(tok)
    if tok.kind in ("bpe", "unigram"):
        return sentencepiece_to_hf(tok)
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

    def text_prefix(self, directory: PathLike | None = None) -> tuple[int, ...]:
        """The ids transformers puts before a text (Llama's ``<s>``): what the tokenizer's
        post-processor adds in front, or ``bos`` where ``directory``'s ``tokenizer_config.json``
        asks for it (``add_bos_token``); empty where neither adds anything (GPT-2)."""
        probe = "a"
        bare = self._hf.encode(probe, add_special_tokens=False).ids
        full = self._hf.encode(probe, add_special_tokens=True).ids
        prefix = next((full[:i] for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), [])
        if not prefix and directory is not None and (Path(directory) / "tokenizer_config.json").is_file():
            config = json.loads(read_regular_file(Path(directory) / "tokenizer_config.json", 16 << 20).decode("utf-8"))
            if isinstance(config, dict) and config.get("add_bos_token") is True:
                prefix = [self.bos_id]
        return tuple(prefix)

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
