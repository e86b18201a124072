"""``lmforge serve``: run the HTTP service (``service.app``) with uvicorn.

It reaches the ``lmforge`` CLI through the ``lmforge.commands`` entry-point group
(``pyproject.toml``), so ``lm`` never imports ``service``.

Every setting of ``service.settings.Settings`` is a flag (``--max-new-tokens 256``) and an
environment variable (``LMFORGE_MAX_NEW_TOKENS=256``); flags win. The API key is the exception:
it is read from ``LMFORGE_API_KEY`` only, because command lines are visible to every user of the
machine (``ps``).
"""

from __future__ import annotations

import argparse
import logging
import types
import typing
from typing import Any

log = logging.getLogger(__name__)

SECRET_SETTINGS = frozenset({"api_key"})

HELP = "serve checkpoints over HTTP (generation, streaming, perplexity, OpenAI completions)"


def _flag_kind(annotation: Any) -> str:
    """``bool``, ``list`` or ``scalar`` for a settings field's annotation."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    inner = [a for a in args if a is not type(None)] or [annotation]
    if inner[0] is bool:
        return "bool"
    if typing.get_origin(inner[0]) is list:
        return "list"
    return "scalar"


def register(subparsers: argparse._SubParsersAction) -> None:
    from service.settings import Settings

    parser = subparsers.add_parser(
        "serve",
        help=HELP,
        description="Serve every checkpoint under --checkpoints over HTTP. Each flag also reads "
        "LMFORGE_<NAME> from the environment; the API key only from LMFORGE_API_KEY.",
    )
    for name, info in Settings.model_fields.items():
        if name in SECRET_SETTINGS:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{info.description} (default: {info.default})"
        kind = _flag_kind(info.annotation)
        if kind == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif kind == "list":
            parser.add_argument(flag, dest=name, nargs="+", metavar="NAME", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_text)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from lm.config import ConfigError
    from service.app import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = Settings(**overrides)  # flags arrive as strings and are coerced like env values
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "settings"
        raise ConfigError(f"{flag}: {first['msg']}") from None
    app = create_app(settings)
    log.info("lmforge serve: http://%s:%s (checkpoints: %s)", settings.host, settings.port, settings.checkpoints)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=settings.shutdown_timeout_s)
    return 0

