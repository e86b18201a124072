"""A newcomer's first minutes, in a real browser (headless Chromium, as in
``test_playground_browser``) against ``lmforge serve`` of the shipped checkpoints with no
network: the playground opens on the default model with its example filled in, the first
Generate reads like the corpus, and the API docs render with every outside request blocked."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until_ready
from test_playground_browser import TIMEOUT_MS, Server, browser, expect, playwright_api  # noqa: F401
from test_server_e2e import lmforge_command
from test_service_helpers import free_port

pytestmark = pytest.mark.slow

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.fixture(scope="module")
def shipped(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    """``lmforge serve`` exactly as the quick start runs it: the shipped checkpoints, defaults."""
    port = free_port()
    log = tmp_path_factory.mktemp("shipped") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMFORGE_")}
    with open(log, "wb") as out:
        process = subprocess.Popen([*lmforge_command(), "serve", "--port", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, process, log, {})
    yield Server(url, process, log)
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def offline_page(browser: Any, shipped: Server) -> Iterator[Any]:  # noqa: F811
    """A tab that can reach only the server: any other request fails, as with no network."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    outside: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(shipped.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not outside, f"the page asked for outside resources: {outside}"
    assert not errors, errors


def test_the_first_click_reads_like_the_corpus(offline_page: Any, shipped: Server, expect: Any) -> None:  # noqa: F811
    page = offline_page
    page.goto(f"{shipped.url}/")
    expect(page.locator("#model")).to_have_value("shakespeare-char")
    expect(page.locator("#prompt")).to_have_value("GREMIO:\n")
    assert page.is_checked("#strategy-sample")
    assert page.input_value("#temperature") == "0.8" and page.input_value("#max_new_tokens") == "400"
    page.click("#generate")
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "done", timeout=120_000)
    text = page.text_content("#completion")
    lines = [ln for ln in text.split("\n") if ln.strip()]
    assert len(text) > 200 and len(lines) >= 4, text
    assert len(set(lines)) >= 0.8 * len(lines), f"the first generation loops:\n{text}"
    words = text.split()
    assert sum(w.strip(",.;:!?'").isalpha() for w in words) >= 0.8 * len(words), text
    # the word model: its own example, and it runs past line ends
    page.select_option("#model", "ptb-word")
    expect(page.locator("#prompt")).to_have_value("consumers may want to move their")
    assert not page.is_checked("#stop_at_eos")
    # a prompt the user typed is theirs: switching models keeps it
    page.fill("#prompt", "my own words")
    page.select_option("#model", "shakespeare-char")
    expect(page.locator("#prompt")).to_have_value("my own words")


def test_the_docs_render_with_no_network(offline_page: Any, shipped: Server, expect: Any) -> None:  # noqa: F811
    page = offline_page
    page.goto(f"{shipped.url}/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    assert page.locator(".opblock").count() >= 8
    expect(page.get_by_text("/v1/generate/stream").first).to_be_visible()
    page.goto(f"{shipped.url}/redoc")
    expect(page.get_by_text("/v1/completions").first).to_be_attached()
