"""``lmforge serve``: run the HTTP service (``service.app``) with uvicorn.

It reaches the ``lmforge`` CLI through the ``lmforge.commands`` entry-point group
(``pyproject.toml``), so ``lm`` never imports ``service``.

Every setting of ``service.settings.Settings`` is a flag (``--max-new-tokens 256``) and an
environment variable (``LMFORGE_MAX_NEW_TOKENS=256``); flags win. The flags are pydantic-settings'
CLI source (``CliSettingsSource``) added to the ``serve`` subparser: kebab-case names, a bool as
``--log-prompts``/``--no-log-prompts``, a list as ``--models a b``, ``--models a,b`` or a repeated
``--models``. The API key is the exception: it is read from ``LMFORGE_API_KEY`` only, because
command lines are visible to every user of the machine (``ps``), so it is left out of the model
the flags are made from and ``--api-key`` is an unknown argument.

``register`` runs only when ``serve`` is the command (``lm.cli``), so ``lmforge --help`` imports
neither pydantic-settings nor FastAPI.
"""

from __future__ import annotations

import argparse
import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

SECRET_SETTINGS = frozenset({"api_key"})

HELP = "serve checkpoints over HTTP (generation, streaming, perplexity, OpenAI completions)"


def _add_argument(parser: Any, *names: str, **kwargs: Any) -> Any:
    """The CLI source's ``add_argument``, but a list flag takes several values after one flag.

    The source gives a list field ``action="append"`` (``--models a --models b`` or
    ``--models a,b``); ``--models a b``, the form ``serve`` has always taken, needs ``nargs``. With
    ``extend`` the values still arrive as the flat list of strings the source merges. The metavar
    names one item (``str``, not ``list[str]``).
    """
    if kwargs.get("action") == "append":
        item = str(kwargs.get("metavar", "VALUE")).removeprefix("list[").removesuffix("]")
        kwargs.update(action="extend", nargs="+", metavar=item)
    return parser.add_argument(*names, **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    from pydantic import create_model
    from pydantic_settings import BaseSettings, CliSettingsSource

    from service.settings import Settings

    parser = subparsers.add_parser(
        "serve",
        help=HELP,
        description="Serve every checkpoint under --checkpoints over HTTP. Each flag also reads "
        "LMFORGE_<NAME> from the environment; the API key only from LMFORGE_API_KEY.",
    )
    flags = create_model(  # the settings less the secrets: only these become flags
        "ServeFlags", __base__=BaseSettings,
        **{name: (info.annotation, info) for name, info in Settings.model_fields.items()
           if name not in SECRET_SETTINGS},  # type: ignore[call-overload]
    )
    source = CliSettingsSource(
        flags, root_parser=parser, cli_kebab_case=True, cli_implicit_flags=True, cli_hide_none_type=True,
        add_argument_method=_add_argument,
    )
    parser.set_defaults(func=functools.partial(run, source=source))


def run(args: argparse.Namespace, *, source: Any) -> int:
    import uvicorn
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from lm.config import ConfigError
    from service.app import create_app
    from service.metrics import Metrics
    from service.protocol import with_header_timeout
    from service.registry import ModelRegistry
    from service.settings import Settings

    try:
        # The flags outrank every other source (the environment, the defaults).
        settings = Settings(_cli_settings_source=source(parsed_args=args))
    except ValidationError as exc:  # one line naming the flag; lm.cli prints it and exits 2
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "settings"
        raise ConfigError(f"{flag}: {first['msg']}") from None
    except SettingsError as exc:  # a value the source cannot parse (a list with a stray quote)
        raise ConfigError(str(exc)) from None
    registry = ModelRegistry(settings, Metrics())
    registry.load_all()
    if not registry.models:
        registry.stop()
        raise ConfigError(registry.why_empty())
    app = create_app(settings, registry=registry)
    log.info("lmforge serve: http://%s:%s (checkpoints: %s)", settings.host, settings.port, settings.checkpoints)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=settings.shutdown_timeout_s, limit_concurrency=settings.max_connections,
                timeout_keep_alive=settings.keep_alive_s, http=with_header_timeout(settings.header_timeout_s))
    return 0
