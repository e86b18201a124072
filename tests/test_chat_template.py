"""Chat templates per checkpoint: the config's own, a transformers ``tokenizer_config.json``'s,
set at ``lmforge export``; rendered in a bounded sandbox; a broken one fails the load, a refusal
fails only its request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_service_helpers import client_for, make_checkpoint, test_settings

from lm.chat_template import ChatTemplate, ChatTemplateError
from lm.checkpoint import CheckpointError, read_chat_template
from lm.cli import main
from lm.pipeline import Pipeline

TAGGED = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_a_published_template_renders_as_transformers_does() -> None:
    """The ChatML template (Qwen's, SmolLM's), rendered here and by transformers' own renderer."""
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again?"}]
    ours = ChatTemplate(CHATML, ("<|im_end|>",)).render(messages)
    theirs, _ = render_jinja_template(conversations=[messages], chat_template=CHATML, add_generation_prompt=True)
    assert ours == theirs[0]
    assert ours.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("template", [
    "{{ 'x' * 10**9 }}",
    "{{ 2 ** 100000 }}",
    "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
    "{{ messages.append(1) }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception('roles must alternate user/assistant') }}",
    "{{ 'x'|center(10**9) }}", "{{ 'x'.ljust(10**9) }}", "{{ 'x'|indent(10**9, true) }}",
    "{{ '{:>999999999}'.format(1) }}", "{{ '%999999999d' % 1 }}", "{{ lipsum(n=10**6) }}",
])
def test_a_hostile_or_refusing_template_is_an_error_not_a_hang(template: str) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate(template).render([{"role": "user", "content": "x"}])


def test_a_template_that_refuses_a_system_role_loads_and_its_tokens_survive_export() -> None:
    """Gemma-style templates raise on a system message: the load check uses user/assistant
    turns; bos/eos tokens are kept when the template is stored in a config."""
    strict = ChatTemplate("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}"
                          "{% endif %}{{ bos_token }}{{ m.content }}{{ eos_token }}{% endfor %}", ("</s>",),
                          bos_token="<s>", eos_token="</s>")
    strict.check()
    again = ChatTemplate.from_dict(json.loads(json.dumps(strict.to_dict())))
    assert again == strict and again.render([{"role": "user", "content": "hi"}]) == "<s>hi</s>"


def test_bad_templates_and_stops_are_refused_when_built() -> None:
    for bad in ("{% for %}", "", "x" * (65 << 10)):
        with pytest.raises(ChatTemplateError):
            ChatTemplate(bad)
    with pytest.raises(ChatTemplateError, match="stop"):
        ChatTemplate(TAGGED, ("",))
    with pytest.raises(ChatTemplateError, match="stop"):
        ChatTemplate(TAGGED, ("a", "b", "c", "d", "e"))


def tagged_checkpoint(root: Path) -> Path:
    """A checkpoint whose config carries the tagged template, written by ``lmforge export``."""
    make_checkpoint(root / "src")
    (root / "tagged.jinja").write_text(TAGGED, encoding="utf-8")
    assert main(["export", str(root / "src"), str(root / "models" / "tagged"), "--chat-template",
                 str(root / "tagged.jinja"), "--chat-stop", "\n<user>"]) == 0
    return root / "models" / "tagged"


def test_export_sets_keeps_and_resets_the_template(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tagged = tagged_checkpoint(tmp_path)
    assert read_chat_template(tagged) == ChatTemplate(TAGGED, ("\n<user>",))
    assert main(["export", str(tagged), str(tmp_path / "copy")]) == 0  # the source's is kept
    assert read_chat_template(tmp_path / "copy") == ChatTemplate(TAGGED, ("\n<user>",))
    assert main(["export", str(tagged), str(tmp_path / "plain"), "--chat-template", "default"]) == 0
    assert read_chat_template(tmp_path / "plain") == ChatTemplate()
    assert read_chat_template(tmp_path / "src") is None  # never set: the default at serve time
    capsys.readouterr()
    (tmp_path / "broken.jinja").write_text("{% if %}", encoding="utf-8")
    assert main(["export", str(tagged), str(tmp_path / "x"), "--chat-template", str(tmp_path / "broken.jinja")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.jinja" in err and "does not compile" in err
    assert main(["export", str(tagged), str(tmp_path / "x"), "--chat-template", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_tokenizer_config_template_is_used_with_its_eos_as_the_stop(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "imported")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": "x"}],
        "eos_token": {"content": "<|im_end|>"}, "bos_token": None}), encoding="utf-8")
    template = Pipeline.from_checkpoint(path, device="cpu").chat_template
    assert template.stop == ("<|im_end|>",) and template.template == CHATML


def test_a_broken_template_fails_the_load_and_names_its_file(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "bad")
    config = json.loads((path / "config.json").read_text())
    config["chat_template"] = {"template": "{{ raise_exception('no') }}", "stop": []}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"bad/config.json: the chat template failed"):
        Pipeline.from_checkpoint(path, device="cpu")
    (path / "config.json").write_text(json.dumps({**config, "chat_template": "User: {q}"}))
    with pytest.raises(CheckpointError, match="chat_template must be"):
        read_chat_template(path)


def test_the_server_chats_through_each_models_template(tmp_path: Path) -> None:
    """The tagged model's reply is the completion of its own rendered prompt, stopped at its own
    turn boundary; the default model keeps the transcript; a template's refusal is a 422 for
    that request only."""
    tagged_checkpoint(tmp_path)
    make_checkpoint(tmp_path / "models" / "plain")
    strict = make_checkpoint(tmp_path / "models" / "strict")
    config = json.loads((strict / "config.json").read_text())
    config["chat_template"] = {"template": "{% if messages[0].role != 'system' %}{{ raise_exception('start with "
                                           "a system message') }}{% endif %}{{ messages[0].content }}", "stop": []}
    (strict / "config.json").write_text(json.dumps(config))
    messages = [{"role": "user", "content": "To be"}]
    with client_for(test_settings(tmp_path / "models")) as client:
        for model, prompt, stop in (("tagged", "<user>To be\n<assistant>", "\n<user>"),
                                    ("plain", "User: To be\nAssistant:", "\nUser:")):
            chat = client.post("/v1/chat/completions", json={"model": model, "messages": messages,
                                                              "max_tokens": 30, "temperature": 0})
            assert chat.status_code == 200, chat.text
            plain = client.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 30,
                                                         "temperature": 0, "stop": [stop]}).json()
            assert chat.json()["choices"][0]["message"]["content"] == plain["choices"][0]["text"].lstrip()
        refused = client.post("/v1/chat/completions", json={"model": "strict", "messages": messages})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "messages"
        assert "start with a system message" in refused.json()["error"]["message"]
        ok = client.post("/v1/chat/completions", json={"model": "strict", "max_tokens": 3,
                                                        "messages": [{"role": "system", "content": "Hi"}, *messages]})
        assert ok.status_code == 200, ok.text
