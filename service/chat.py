"""Chat over base models: the messages of a chat request rendered into one prompt.

lmforge's models are base language models with no chat training, so the template is a plain
transcript -- the format such models have seen most (plays, forums, interviews): an optional
system line, then ``User: ...`` and ``Assistant: ...`` turns, and a last ``Assistant:`` for
the model to continue. Generation stops where the model starts the user's next turn
(``TURN_STOPS``), so a reply is one turn. (A template per checkpoint, carried in its config
and set at export or import, is not implemented: every model uses this one.)
"""

from __future__ import annotations

from collections.abc import Sequence

from service.schemas.chat import Message

ROLE_NAMES = {"user": "User", "assistant": "Assistant"}
TURN_STOPS = ("\nUser:",)
"""Where a reply ends: the model beginning the next user turn."""


def message_text(message: Message) -> str:
    content = message.content
    return content if isinstance(content, str) else "".join(part.text for part in content)


def render(messages: Sequence[Message]) -> str:
    """The transcript prompt for ``messages``, ending with the assistant's turn to speak."""
    lines = []
    for message in messages:
        text = message_text(message).strip()
        if message.role in ("system", "developer"):
            lines.append(text + "\n")
        else:
            lines.append(f"{ROLE_NAMES[message.role]}: {text}")
    return "\n".join(lines) + "\nAssistant:"
