"""``lmforge import``: a transformers checkpoint directory as an lmforge checkpoint."""

from __future__ import annotations

import argparse
import sys

HELP = "convert a local transformers checkpoint (GPT-2, GPT-NeoX) into an lmforge checkpoint"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help=HELP,
        description="Read a transformers checkpoint directory (config.json, *.safetensors, tokenizer.json) and "
                    "write an lmforge checkpoint that generate, score and serve use like any other.",
    )
    p.add_argument("source", help="transformers checkpoint directory (downloaded beforehand, e.g. with huggingface-cli)")
    p.add_argument("dest", help="lmforge checkpoint directory to write (replaced atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lm.hf_import import HFImportError, import_hf
    from tokenizer import TokenizerError

    try:
        out = import_hf(Path(args.source), args.dest)
    except (HFImportError, TokenizerError, OSError, ValueError) as exc:
        print(f"lmforge import: error: {exc}", file=sys.stderr)
        return 2
    print(f"imported {args.source} -> {out}")
    return 0
