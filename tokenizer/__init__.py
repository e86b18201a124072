"""Text <-> token ids for lmforge: ``char``, ``word``, ``bpe`` and ``unigram`` tokenizers behind
one interface. Knows nothing of torch.

    tok = train_tokenizer("bpe", ["corpus.txt"], vocab_size=8000)
    tok.save("out/")
    tok = load_tokenizer("out/")
    assert tok.decode(tok.encode(text)) == text
"""

from tokenizer.base import BOS_ID, EOS_ID, PAD_ID, SPECIAL_PIECES, UNK_ID, Tokenizer
from tokenizer.char import CharTokenizer
from tokenizer.errors import TokenizerError
from tokenizer.io import iter_text_chunks
from tokenizer.registry import KINDS, load_tokenizer, train_options, train_tokenizer
from tokenizer.sentencepiece_tok import SentencePieceTokenizer
from tokenizer.word import WordTokenizer

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
