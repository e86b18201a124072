"""The tokenizer kinds lmforge trains, named in one place (and importable without numpy or
sentencepiece, so a config can be checked before any tokenizer code loads)."""

SENTENCEPIECE_KINDS: tuple[str, ...] = ("bpe", "unigram")
KINDS: tuple[str, ...] = ("char", "word", *SENTENCEPIECE_KINDS)
IMPORTED_KIND = "hf"
"""A model's own tokenizer, imported with it (``lmforge import``): loaded from a path, never trained."""
