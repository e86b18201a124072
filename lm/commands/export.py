"""``lmforge export``: copy a run's checkpoint into a standalone, weights-only checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lm.dtypes import RUNTIME_DTYPES, torch_dtype

HELP = "write a weights-only checkpoint (e.g. for shipping) from a run or checkpoint directory"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help=HELP,
        description="Export the best (or given) checkpoint of a run without trainer state, optionally in bf16.",
    )
    p.add_argument("source", help="run directory (its best/ is used) or checkpoint directory")
    p.add_argument("dest", help="destination checkpoint directory (replaced atomically)")
    p.add_argument("--dtype", choices=RUNTIME_DTYPES, default="fp32",
                   help="weight precision on disk; int8: the linear layers quantized as --dtype int8 serves them "
                        "(per-channel scales), loaded as they are")
    p.add_argument("--format", choices=("lmforge", "hf"), default="lmforge",
                   help="hf: a transformers checkpoint (AutoModelForCausalLM loads it; Transformers only: "
                        "RoPE models as GPT-NeoX, learned positions as GPT-2), weights and config")
    p.add_argument("--chat-template", metavar="FILE",
                   help="a Jinja chat template (transformers' convention: messages, add_generation_prompt) "
                        "for /v1/chat/completions; 'default' for the User:/Assistant: transcript (default: "
                        "the source's)")
    p.add_argument("--chat-stop", action="append", metavar="TEXT",
                   help="where a chat reply ends, e.g. the next turn's start; repeatable (with --chat-template)")
    p.set_defaults(func=run)


def chat_template(args: argparse.Namespace, source):  # noqa: ANN001, ANN201 -- lm.chat_template types
    """The template to export: the one given (a file, or 'default'), else the source's."""
    from lm.chat_template import DEFAULT_STOP, ChatTemplate
    from lm.checkpoint import read_chat_template

    if args.chat_template is None:
        if args.chat_stop:
            raise ValueError("--chat-stop goes with --chat-template")
        return read_chat_template(source)
    if args.chat_template == "default":
        return ChatTemplate(stop=tuple(args.chat_stop or DEFAULT_STOP))
    from tokenizer.io import read_regular_file

    path = Path(args.chat_template)
    text = read_regular_file(path, 1 << 20).decode("utf-8")
    template = ChatTemplate(text, tuple(args.chat_stop or ()))
    template.check()
    return template


def run(args: argparse.Namespace) -> int:
    from lm.chat_template import ChatTemplateError
    from lm.checkpoint import (
        load_checkpoint,
        read_config,
        read_context,
        read_example,
        resolve_checkpoint_dir,
        save_checkpoint,
    )
    from tokenizer import TokenizerError

    src = resolve_checkpoint_dir(args.source)
    _, meta = read_config(src)
    if args.format == "hf":
        return export_transformers(src, args)
    try:
        template = chat_template(args, src)
    except FileNotFoundError:
        return _error(f"--chat-template {args.chat_template}: no such file")
    except (ChatTemplateError, TokenizerError, UnicodeDecodeError, ValueError) as exc:
        return _error(f"--chat-template {args.chat_template}: {exc}" if args.chat_template else str(exc))
    model, tok, _ = load_checkpoint(src, device="cpu")
    training = dict(meta.get("training") or {})
    training["exported_from"] = str(src)
    training["weights_dtype"] = args.dtype
    int8 = args.dtype == "int8"
    if int8:
        from lm.quantize import is_int8, quantize_int8

        model = model if is_int8(model) else quantize_int8(model)
    elif "quantization" in meta:
        return _error(f"{src} holds int8 weights: they export as int8 only (--dtype int8)")
    out = save_checkpoint(args.dest, model, tok, training=training, dtype=None if int8 else torch_dtype(args.dtype),
                          context=read_context(src, tok), example=read_example(src), chat_template=template)
    print(f"exported {src} -> {out} ({args.dtype})")
    return 0


def _error(message: str) -> int:
    print(f"lmforge export: error: {message}", file=sys.stderr)
    return 2


def export_transformers(src: Path, args: argparse.Namespace) -> int:
    """``--format hf``: the model's weights and config as transformers reads them (fp32)."""
    from lm.checkpoint import load_checkpoint
    from lm.hf_export import ExportError, export_hf

    if args.dtype != "fp32" or args.chat_template or args.chat_stop:
        return _error("--format hf writes fp32 weights and the model only (no --dtype, --chat-template)")
    model, tok, _ = load_checkpoint(src, device="cpu")
    try:
        out = export_hf(model, args.dest, tok)
    except ExportError as exc:
        return _error(str(exc))
    print(f"exported {src} -> {out} (transformers: {json.loads((out / 'config.json').read_text())['architectures'][0]})")
    return 0
