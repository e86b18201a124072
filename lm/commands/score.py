"""``lmforge score CKPT --input FILE``: perplexity of text files under a checkpoint.

A file is one token stream (so the word tokenizer's ``<eos>`` at each line end is scored, as in
the Penn Treebank convention) unless ``--per-line`` scores each line on its own. See ``lm.score``
for what is counted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from lm.commands.runtime import add_runtime_args, load_pipeline

HELP = "perplexity of text files"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score", help=HELP,
        description="Score text files: tokens, total and mean NLL, perplexity, bits per character.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory (or a run directory: its best/latest)")
    p.add_argument("--input", required=True, nargs="+", metavar="FILE", help="UTF-8 text files ('-': standard input)")
    p.add_argument("--per-line", action="store_true", help="score each line separately (with its newline)")
    p.add_argument("--stride", type=int, default=None,
                   help="Transformer: window advance for texts longer than the context "
                        "(default: the context, disjoint windows; smaller = more left context, slower)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward (default 16)")
    p.add_argument("--token-logprobs", action="store_true", help="with --json: include per-token log-probabilities")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_runtime_args(p)
    p.set_defaults(func=run)


def _read(name: str) -> str:
    """The text of ``name`` (``-``: standard input); a missing file or bytes that are not UTF-8
    are a ``TokenizerError`` naming the input and the byte offset."""
    from tokenizer import TokenizerError
    from tokenizer.io import iter_text_chunks

    if name != "-":
        return "".join(iter_text_chunks(name))
    raw = sys.stdin.buffer.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"standard input: not valid UTF-8 at byte offset {exc.start}") from None


def _json_number(value: float) -> float | None:
    """JSON has no NaN or infinity: an undefined figure (no tokens to average) is null."""
    return value if math.isfinite(value) else None


def run(args: argparse.Namespace) -> int:
    from lm.decoding.params import ParamError
    from lm.losses import perplexity
    from lm.score import score_texts

    labels, texts = [], []
    for name in args.input:
        text = _read(name)
        if args.per_line:
            lines = text.splitlines(keepends=True)
            labels += [f"{name}:{i}" for i in range(1, len(lines) + 1)]
            texts += lines
        else:
            labels.append(name)
            texts.append(text)
    pipe = load_pipeline(args)
    try:
        results = score_texts(pipe.model, pipe.tokenizer, texts, context=pipe.context, stride=args.stride,
                              batch_size=args.batch_size,
                              token_logprobs=args.token_logprobs and args.json, device=pipe.device)
    except ParamError as exc:
        print(f"lmforge score: error: {exc}", file=sys.stderr)
        return 2
    tokens = sum(r.tokens for r in results)
    nll = sum(r.nll for r in results)
    chars = sum(r.characters for r in results)
    total = {
        "tokens": tokens, "characters": chars, "nll": nll,
        "nll_per_token": nll / tokens if tokens else float("nan"),
        "perplexity": perplexity(nll, tokens),
        "bits_per_char": nll / math.log(2) / chars if chars else float("nan"),
    }
    if args.json:
        texts = [{"input": label, **vars(r)} for label, r in zip(labels, results, strict=True)]
        for figures in (total, *texts):
            figures.update({k: _json_number(v) for k, v in figures.items() if isinstance(v, float)})
        doc = {"model": pipe.name, "stride": args.stride, "total": total, "texts": texts}
        print(json.dumps(doc, indent=2, allow_nan=False))
        return 0
    width = max(12, *(len(label) for label in labels))
    print(f"{'input':<{width}} {'tokens':>10} {'chars':>10} {'nll/token':>10} {'perplexity':>12} {'bits/char':>10}")
    rows = list(zip(labels, results, strict=True))
    for label, r in rows:
        per = r.nll / r.tokens if r.tokens else float("nan")
        print(f"{label:<{width}} {r.tokens:>10} {r.characters:>10} {per:>10.4f} {r.perplexity:>12.3f} "
              f"{r.bits_per_char:>10.4f}")
    if len(rows) > 1:
        print(f"{'total':<{width}} {tokens:>10} {chars:>10} {total['nll_per_token']:>10.4f} "
              f"{total['perplexity']:>12.3f} {total['bits_per_char']:>10.4f}")
    return 0
