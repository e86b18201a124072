"""``lmforge tokenizer``: train a tokenizer, encode or decode text for quick inspection."""

from __future__ import annotations

import argparse
import json
import sys

from tokenizer.kinds import KINDS

HELP = "train and inspect tokenizers"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help=HELP,
                       description="Train a tokenizer (char, word, bpe, unigram) or encode/decode with one.")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    t = tsub.add_parser("train", help="train a tokenizer on text files",
                        description="Train a tokenizer and save it to --out.")
    t.add_argument("--kind", required=True, choices=KINDS, help="char, word, or sentencepiece bpe/unigram")
    t.add_argument("--input", required=True, nargs="+", metavar="FILE", help="UTF-8 text files")
    t.add_argument("--vocab-size", type=int, default=None,
                   help="vocabulary size (required for bpe/unigram; for char/word a maximum)")
    t.add_argument("--out", required=True, metavar="DIR", help="directory to save the tokenizer to")
    t.add_argument("--min-freq", type=int, default=None, help="word: drop words seen fewer times")
    t.add_argument("--no-eos-at-newline", action="store_true", help="word: do not turn line ends into <eos>")
    t.add_argument("--lowercase", action="store_true", help="word: lowercase before counting")
    t.add_argument("--split-regex", default=None, help="word: regex whose matches are the words")
    t.add_argument("--unk-policy", choices=("byte_fallback", "unk"), default=None,
                   help="char: unseen characters as UTF-8 byte tokens (default) or <unk>")
    t.add_argument("--character-coverage", type=float, default=None, help="bpe/unigram: sentencepiece coverage")
    t.set_defaults(func=run_train)

    e = tsub.add_parser("encode", help="print the token ids of a text")
    e.add_argument("dir", help="tokenizer or checkpoint directory")
    e.add_argument("text", nargs="?", help="text (default: standard input)")
    e.add_argument("--pieces", action="store_true", help="also show each token's text")
    e.set_defaults(func=run_encode)

    d = tsub.add_parser("decode", help="print the text of token ids")
    d.add_argument("dir", help="tokenizer or checkpoint directory")
    d.add_argument("ids", nargs="*", type=int, help="token ids (default: whitespace-separated on standard input)")
    d.set_defaults(func=run_decode)


def run_train(args: argparse.Namespace) -> int:
    from tokenizer import train_tokenizer

    options = {
        "min_freq": args.min_freq,
        "eos_at_newline": False if args.no_eos_at_newline else None,
        "lowercase": args.lowercase or None,
        "split_regex": args.split_regex,
        "unk_policy": args.unk_policy,
        "character_coverage": args.character_coverage,
    }
    options = {k: v for k, v in options.items() if v is not None}
    tok = train_tokenizer(args.kind, args.input, args.vocab_size, **options)
    tok.save(args.out)
    print(f"trained {args.kind} tokenizer: {tok.vocab_size} tokens -> {args.out}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from tokenizer import load_tokenizer

    tok = load_tokenizer(args.dir)
    text = args.text if args.text is not None else sys.stdin.read()
    ids = tok.encode(text)
    if args.pieces:
        print(json.dumps([[i, tok.decode([i])] for i in ids], ensure_ascii=False))
    else:
        print(" ".join(map(str, ids)))
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from tokenizer import TokenizerError, load_tokenizer

    tok = load_tokenizer(args.dir)
    ids = args.ids or [int(x) for x in sys.stdin.read().split()]
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise TokenizerError(f"token id(s) {bad[:5]} outside the vocabulary [0, {tok.vocab_size})")
    sys.stdout.write(tok.decode(ids))
    sys.stdout.write("\n")
    return 0
