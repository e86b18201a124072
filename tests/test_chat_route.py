"""``/v1/chat/completions`` beyond the official client's happy path: the transcript template, the
turn boundary as a stop, errors that name ``messages``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_service_helpers import client_for, make_checkpoint, test_settings

from service.chat import render
from service.schemas.chat import Message


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("chat")
    make_checkpoint(root / "tiny")
    with client_for(test_settings(root, max_prompt_tokens=64)) as c:
        yield c


def test_the_template_is_a_transcript_ending_with_the_assistant_to_speak() -> None:
    messages = [Message(role="system", content="A play."), Message(role="user", content=" Hi "),
                Message(role="assistant", content="Hello."),
                Message(role="user", content=[{"type": "text", "text": "Again"}, {"type": "text", "text": "?"}])]
    assert render(messages) == "A play.\n\nUser: Hi\nAssistant: Hello.\nUser: Again?\nAssistant:"


def test_a_reply_is_one_turn_and_equals_the_completion_of_the_transcript(client: TestClient) -> None:
    messages = [{"role": "user", "content": "To be"}]
    chat = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 40, "temperature": 0})
    assert chat.status_code == 200, chat.text
    reply = chat.json()["choices"][0]["message"]["content"]
    plain = client.post("/v1/completions", json={"prompt": "User: To be\nAssistant:", "max_tokens": 40,
                                                 "temperature": 0, "stop": ["\nUser:"]}).json()
    assert reply == plain["choices"][0]["text"].lstrip()
    assert "\nUser:" not in reply


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 500}]}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 1}, "presence_penalty"),
])
def test_bad_requests_name_the_field(client: TestClient, body: dict, param: str) -> None:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["param"] or "").startswith(param), r.text
