"""The tokenizer kinds lmforge trains, named in one place (and importable without numpy or
sentencepiece, so a config can be checked before any tokenizer code loads)."""

SENTENCEPIECE_KINDS: tuple[str, ...] = ("bpe", "unigram")
KINDS: tuple[str, ...] = ("char", "word", *SENTENCEPIECE_KINDS)
