"""``lmforge export``: copy a run's checkpoint into a standalone, weights-only checkpoint."""

from __future__ import annotations

import argparse

from lm.dtypes import WEIGHT_DTYPES, torch_dtype

HELP = "write a weights-only checkpoint (e.g. for shipping) from a run or checkpoint directory"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help=HELP,
        description="Export the best (or given) checkpoint of a run without trainer state, optionally in bf16.",
    )
    p.add_argument("source", help="run directory (its best/ is used) or checkpoint directory")
    p.add_argument("dest", help="destination checkpoint directory (replaced atomically)")
    p.add_argument("--dtype", choices=WEIGHT_DTYPES, default="fp32", help="weight precision on disk")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lm.checkpoint import (
        load_checkpoint,
        read_config,
        read_context,
        read_example,
        resolve_checkpoint_dir,
        save_checkpoint,
    )

    src = resolve_checkpoint_dir(args.source)
    _, meta = read_config(src)
    model, tok, _ = load_checkpoint(src, device="cpu")
    training = dict(meta.get("training") or {})
    training["exported_from"] = str(src)
    training["weights_dtype"] = args.dtype
    out = save_checkpoint(args.dest, model, tok, training=training, dtype=torch_dtype(args.dtype),
                          context=read_context(src, tok), example=read_example(src))
    print(f"exported {src} -> {out} ({args.dtype})")
    return 0
