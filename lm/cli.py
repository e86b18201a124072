"""``lmforge`` command line: a thin layer that parses, builds a config and calls a function.

Each subcommand is a module with ``HELP`` (its one-line summary) and ``register(subparsers)``,
which adds its parser carrying ``func(args) -> int``. The built-in ones live in
``lm/commands/``; other packages add theirs through the ``lmforge.commands`` entry-point group
(``service`` adds ``serve`` that way, so ``lm`` never imports the service). Only the command
being run registers its full parser, and command modules import their heavy dependencies (torch,
FastAPI) only when they run, so ``lmforge --help`` answers at once.

Errors the user can fix (bad config, bad corpus, bad checkpoint) print one line naming the
problem and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib.metadata import entry_points
from types import ModuleType

BUILTIN_COMMANDS = ("tokenizer", "train", "export", "import", "generate", "score")
MODULE_NAMES = {"import": "import_hf"}
"""Commands whose module is named otherwise (``import`` is a keyword)."""
ENTRY_POINT_GROUP = "lmforge.commands"


def command_modules() -> dict[str, str]:
    """Subcommand name -> the module that implements it (built-ins, then entry points)."""
    modules = {name: f"lm.commands.{MODULE_NAMES.get(name, name)}" for name in BUILTIN_COMMANDS}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        modules.setdefault(ep.name, ep.value)
    return modules


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command named in ``argv`` gets its full parser (all of them when
    ``argv`` is None)."""
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Train compact language models (char/word/subword; RNN, GRU, LSTM, Transformer) and serve them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = chosen_command(argv) if argv is not None else None
    for name, module_name in command_modules().items():
        module: ModuleType = importlib.import_module(module_name)
        if argv is None or name == chosen:
            module.register(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough for the user (no traceback)."""
    from lm.checkpoint import CheckpointError
    from lm.config import ConfigError
    from lm.decoding.params import ParamError
    from lm.training.data import DataError
    from tokenizer import TokenizerError

    return ConfigError, CheckpointError, TokenizerError, ParamError, DataError


FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
"""Errors about a path the user named: said as ``PATH: reason`` in one line."""


def describe(exc: BaseException) -> str:
    """The one line a user error is reported in (an OS error as ``path: reason``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 speaks
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (*user_errors(), *FILE_ERRORS) as exc:
        print(f"lmforge {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`lmforge generate ... | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again, and exit
        # as Python's documentation recommends (SIGPIPE handling, status 1).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
