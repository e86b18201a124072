"""A checkpoint's chat template: how a chat's messages become the one prompt a base model continues.

lmforge's own models have no chat training, so the default is a plain transcript -- the format
such models have seen most (plays, forums, interviews): an optional system line, then ``User:``
and ``Assistant:`` turns, and a last ``Assistant:`` for the model to continue; the reply ends
where the model starts the user's next turn (``stop``).

A checkpoint may carry its own (``config.json`` ``chat_template``: ``{"template", "stop"}``,
set by ``lmforge export --chat-template``), or, as a model imported from the transformers format
does, a ``tokenizer_config.json`` beside it whose ``chat_template`` is used, with its
``eos_token`` as the stop. Templates are Jinja, as in transformers (``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception``), so a model's
published template works unchanged. A template is data from a file, never trusted code: it is
rendered in Jinja's immutable sandbox, with its size, the size of what it may build and the
items its ``range()`` loops may run through bounded, and compiled and tried once when the
checkpoint loads, so a broken one fails the load and names the file. (Loops over long strings
are not counted: a template that spins that way is caught by the server's load time bound.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_TEMPLATE_CHARS = 64 << 10
"""A chat template is a few hundred characters (the largest published ones, a few thousand)."""
MAX_RENDERED_CHARS = 4 << 20
"""No string or list a template builds may exceed this (``"x" * 10**9`` is refused, not run)."""
MAX_RANGE_ITEMS = 100_000
"""Items all of a render's ``range()`` calls may produce together (nested loops included)."""
MAX_TEMPLATE_STOPS = 4
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

DEFAULT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' -%}{{ message.content | trim }}{{ '\\n\\n' }}"
    "{%- else -%}{{ 'User' if message.role == 'user' else 'Assistant' }}: {{ message.content | trim }}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)
DEFAULT_STOP = ("\nUser:",)


class ChatTemplateError(ValueError):
    """A chat template that is malformed, too large, or fails when rendered (the message says how)."""


@dataclass(frozen=True)
class ChatTemplate:
    template: str = DEFAULT_TEMPLATE
    stop: tuple[str, ...] = DEFAULT_STOP
    """Where a reply ends (the model beginning the next turn, or its end-of-turn token's text)."""
    bos_token: str = ""
    eos_token: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template:
            raise ChatTemplateError("chat_template.template must be a non-empty string")
        if len(self.template) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(f"chat_template.template is {len(self.template)} characters; "
                                    f"at most {MAX_TEMPLATE_CHARS} are read")
        stop = self.stop
        if (not isinstance(stop, tuple | list) or len(stop) > MAX_TEMPLATE_STOPS
                or not all(isinstance(s, str) and s for s in stop)):
            raise ChatTemplateError(f"chat_template.stop must be up to {MAX_TEMPLATE_STOPS} non-empty strings, "
                                    f"got {stop!r}")
        object.__setattr__(self, "stop", tuple(stop))
        self._compiled  # noqa: B018 -- a template that does not compile is an error now, not per request

    @cached_property
    def _compiled(self) -> jinja2.Template:
        env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.globals["raise_exception"] = _raise
        env.globals["range"] = _budgeted_range
        env.globals.pop("lipsum", None)  # builds text of any size
        for name in WIDTH_FILTERS:  # a width or count of any size builds a string of that size
            env.filters[name] = _bounded_filter(env.filters[name])
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            return env.from_string(self.template)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat_template.template does not compile: {exc}") from None

    def render(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt for ``messages`` (``{"role", "content"}`` dicts); ``ChatTemplateError``
        with the template's own message when it refuses them or breaks a bound."""
        token = _RANGE_BUDGET.set([MAX_RANGE_ITEMS])
        try:
            text = self._compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except (jinja2.TemplateError, SecurityError, TypeError, ValueError, ArithmeticError, LookupError,
                MemoryError, RecursionError) as exc:
            raise ChatTemplateError(f"the chat template failed on these messages: {exc}") from None
        finally:
            _RANGE_BUDGET.reset(token)
        if len(text) > MAX_RENDERED_CHARS:
            raise ChatTemplateError(f"the chat template rendered {len(text)} characters (at most {MAX_RENDERED_CHARS})")
        return text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"template": self.template, "stop": list(self.stop)}
        return out | {k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token)) if v}

    @classmethod
    def from_dict(cls, data: object) -> ChatTemplate:
        """The ``chat_template`` a ``config.json`` holds; a wrong shape is a ``ChatTemplateError``."""
        keys = {"template", "stop", "bos_token", "eos_token"}
        if (not isinstance(data, dict) or set(data) - keys or "template" not in data
                or not all(isinstance(data.get(k, ""), str) for k in ("bos_token", "eos_token"))):
            raise ChatTemplateError(f'chat_template must be {{"template": str, "stop": [str, ...]}} (and optional '
                                    f'"bos_token"/"eos_token" strings), got {data!r}')
        return cls(data["template"], tuple(data.get("stop", DEFAULT_STOP)), bos_token=data.get("bos_token", ""),
                   eos_token=data.get("eos_token", ""))

    def check(self) -> None:
        """Render a small conversation: a template that fails on ordinary messages fails here.
        Tried with and without a system message (published templates refuse one or require it);
        an error only when both fail."""
        turns = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
                 {"role": "user", "content": "Again?"}]
        try:
            self.render(turns)
        except ChatTemplateError:
            self.render([{"role": "system", "content": "Be brief."}, *turns])


def read_template(directory: Path, stored: object, config_file: str) -> ChatTemplate | None:
    """A checkpoint's template: the one its config stores (``stored``, from ``config_file``),
    else that of a transformers-style ``tokenizer_config.json`` beside it, else None (the
    default). Tried on a small conversation; a ``ChatTemplateError`` names the file."""
    where = directory / (config_file if stored is not None else TOKENIZER_CONFIG_FILE)
    try:
        template = ChatTemplate.from_dict(stored) if stored is not None else from_tokenizer_config(directory)
        if template is not None:
            template.check()
    except ChatTemplateError as exc:
        message = str(exc)
        raise ChatTemplateError(message if message.startswith(str(where)) else f"{where}: {message}") from None
    return template


def from_tokenizer_config(directory: str | os.PathLike[str]) -> ChatTemplate | None:
    """The template of a transformers-style ``tokenizer_config.json`` in ``directory`` (its
    ``chat_template``, a string or a list of named ones -- ``default`` is taken), stopping at its
    ``eos_token``; None when there is no such file or it has no template."""
    from tokenizer.io import read_regular_file

    path = Path(directory) / TOKENIZER_CONFIG_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(read_regular_file(path, MAX_TEMPLATE_CHARS * 16).decode("utf-8"))
    except (OSError, ValueError) as exc:  # TokenizerError is a ValueError
        raise ChatTemplateError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise ChatTemplateError(f"{path}: not a JSON object")
    template = data.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None:
        return None
    if not isinstance(template, str):
        raise ChatTemplateError(f"{path}: chat_template must be a string or a list of named templates")

    def token(name: str) -> str:
        value = data.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        return value if isinstance(value, str) else ""

    eos = token("eos_token")
    try:
        return ChatTemplate(template, (eos,) if eos else (), bos_token=token("bos_token"), eos_token=eos)
    except ChatTemplateError as exc:
        raise ChatTemplateError(f"{path}: {exc}") from None


_RANGE_BUDGET: ContextVar[list[int]] = ContextVar("chat_template_range_budget")


def _budgeted_range(*args: int) -> range:
    """``range``, counted against the render's budget: nested loops cannot multiply past it."""
    items = range(*args)
    budget = _RANGE_BUDGET.get([MAX_RANGE_ITEMS])
    budget[0] -= len(items)
    if budget[0] < 0:
        raise SecurityError(f"the template's ranges went past {MAX_RANGE_ITEMS} items in all")
    return items


WIDTH_FILTERS = ("center", "indent", "wordwrap", "truncate", "format", "batch", "slice")
_FORMAT_WIDTH = re.compile(r"\{[^}]*?(\d+)[^}]*\}")
"""The numbers in a format string's fields (a width or precision among them)."""
_PERCENT_WIDTH = re.compile(r"%[-+ #0]*(\d+)")


def _check_sizes(args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_RENDERED_CHARS:
            raise SecurityError(f"the template passed {value}, past the bound {MAX_RENDERED_CHARS}")


def _bounded_filter(f: Any) -> Any:  # noqa: ANN401
    """A filter whose size arguments are held to the bound."""
    def bounded(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        _check_sizes(args[1:], kwargs)
        return f(*args, **kwargs)

    for attr in ("jinja_pass_arg",):  # keep Jinja's pass_context/pass_environment marks
        if hasattr(f, attr):
            setattr(bounded, attr, getattr(f, attr))
    return bounded


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with ``*`` and ``**`` checked: repetition builds bounded
    values and powers stay small numbers."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401, N805
        """Calls from the template (``'x'.center(10**9)``): no integer argument past the bound."""
        _check_sizes(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:  # noqa: ANN401
        """``'{:>99999999}'.format``: no format field wider than the bound (checked on the
        format string, before anything is built)."""
        if isinstance(obj, str) and attribute in ("format", "format_map") and any(
                int(w) > MAX_RENDERED_CHARS for w in _FORMAT_WIDTH.findall(obj)):
            raise SecurityError("the template formats a field wider than the bound")
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:  # noqa: ANN401
        if operator == "%" and isinstance(left, str) and any(int(w) > MAX_RENDERED_CHARS for w in _PERCENT_WIDTH.findall(left)):
            raise SecurityError("the template formats a field wider than the bound")
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError("the template raised a number to a power over 64")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int) and count * len(seq) > MAX_RENDERED_CHARS:
                    raise SecurityError(f"the template built a value of {count * len(seq)} items "
                                        f"(at most {MAX_RENDERED_CHARS})")
        return super().call_binop(context, operator, left, right)
