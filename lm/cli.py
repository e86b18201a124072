"""``lmforge`` command line: a thin layer that parses, builds a config and calls a function.

Each subcommand lives in ``lm/commands/<name>.py`` with ``register(subparsers)``; the parser it
adds carries ``func(args) -> int``. Errors the user can fix (bad config, bad corpus, bad
checkpoint) print one line naming the problem and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMANDS = ("tokenizer", "train", "export", "generate", "score", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Train compact language models (char/word/subword; RNN, GRU, LSTM, Transformer) and serve them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lm.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lm.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough for the user (no traceback)."""
    from lm.checkpoint import CheckpointError
    from lm.config import ConfigError
    from lm.params import ParamError
    from tokenizer import TokenizerError

    errors: list[type[BaseException]] = [ConfigError, CheckpointError, TokenizerError, ParamError, FileNotFoundError]
    try:
        from lm.data import DataError

        errors.append(DataError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 speaks
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except user_errors() as exc:
        print(f"lmforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
