"""Chat over base models: a chat request's messages rendered into one prompt by the model's chat
template (``lm.chat_template``: the checkpoint's own, else the ``User:``/``Assistant:``
transcript), and the template's stop strings, where a reply ends."""

from __future__ import annotations

from collections.abc import Sequence

from lm.chat_template import ChatTemplate, ChatTemplateError
from service.errors import APIError
from service.schemas.chat import Message

ROLES = {"developer": "system"}
"""OpenAI's newer name for the system role; templates know ``system``."""


def message_text(message: Message) -> str:
    content = message.content
    return content if isinstance(content, str) else "".join(part.text for part in content)


def render(messages: Sequence[Message], template: ChatTemplate | None = None) -> str:
    """The prompt for ``messages``, ending with the assistant's turn to speak; a template that
    refuses them (e.g. "roles must alternate") is a 422 naming ``messages``."""
    template = template or ChatTemplate()
    dicts = [{"role": ROLES.get(m.role, m.role), "content": message_text(m)} for m in messages]
    try:
        return template.render(dicts)
    except ChatTemplateError as exc:
        raise APIError(422, str(exc), param="messages", code="invalid_messages") from None
