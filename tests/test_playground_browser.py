"""The playground page in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright for Python against ``lmforge serve`` on a free loopback port, with an API key set.

Skips (with the reason) when Playwright or Chromium is missing; CI installs both. Playwright's
own browser download is never used: Chromium is the system one, given by ``executable_path``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_until_ready
from test_server_e2e import lmforge_command
from test_service_helpers import free_port, make_checkpoint

pytestmark = pytest.mark.slow

KEY = "playground-e2e-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVER_MAX_NEW_TOKENS = 5000
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 30_000

# Records the length of the completion's text at every DOM update, to see it grow.
OBSERVE = """() => {
  window.__lengths = [];
  const target = document.getElementById("completion");
  new MutationObserver(() => window.__lengths.push(target.textContent.length))
    .observe(target, { childList: true, characterData: true, subtree: true });
}"""


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def playwright_api() -> Any:
    return pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                                             "(pip install playwright)")


@pytest.fixture(scope="module")
def browser(playwright_api: Any) -> Iterator[Any]:
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``lmforge serve`` with one tiny model and an API key (started only once a browser is there)."""
    root = tmp_path_factory.mktemp("playground-ckpts")
    make_checkpoint(root / "tiny")
    port = free_port()
    log = root.parent / "playground-server.log"
    env = {**os.environ, "LMFORGE_API_KEY": KEY, "LMFORGE_DEVICE": "cpu", "LMFORGE_TORCH_THREADS": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*lmforge_command(), "serve", "--checkpoints", str(root), "--port", str(port),
             "--max-new-tokens", str(SERVER_MAX_NEW_TOKENS)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, process, log, AUTH)
    yield Server(url, process, log)
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def expect(playwright_api: Any) -> Any:
    return playwright_api.expect


@pytest.fixture
def page(browser: Any, server: Server, expect: Any) -> Iterator[Any]:
    """A fresh tab on the playground, the key entered and the models listed. Fails the test on
    any uncaught script error or console error other than the HTTP errors a test provokes."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.goto(f"{server.url}/")
    expect(page.locator("#banner")).to_contain_text("requires an API key")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    expect(page.locator("#model")).to_have_value("tiny")
    yield page
    context.close()
    assert not problems, problems


def generate_in_page(page: Any, expect: Any, prompt: str, **options: Any) -> str:
    """Fill the form, press Generate, wait for the stream's end; the completion's text."""
    page.fill("#prompt", prompt)
    page.click(f"label[for=strategy-{options.pop('strategy', 'greedy')}]")
    if not options.pop("stop_at_eos", True):
        page.uncheck("#stop_at_eos")
    for name, value in options.items():
        page.fill(f"#{name}", str(value))
    page.click("#generate")
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "done")
    return page.text_content("#completion")


def api_generate(server: Server, **body: Any) -> str:
    r = httpx.post(f"{server.url}/v1/generate", headers=AUTH, json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_the_page_is_public_and_asks_for_the_key(page: Any, server: Server, expect: Any) -> None:
    # The fixture saw the request for the key and entered it; the model list came back.
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#model-info")).to_contain_text("params")
    expect(page.locator("#key-state")).to_have_text("key in use")
    # The key lives in the tab's sessionStorage: a reload needs no typing.
    page.reload()
    expect(page.locator("#model")).to_have_value("tiny")
    expect(page.locator("#banner")).to_be_hidden()
    # Forgetting it brings the request back; a wrong key is refused with the server's reason.
    page.click("#key-forget")
    expect(page.locator("#banner")).to_contain_text("requires an API key")
    assert page.evaluate("() => sessionStorage.length") == 0
    page.fill("#api-key", KEY + "-wrong")
    page.press("#api-key", "Enter")
    expect(page.locator("#banner")).to_contain_text("refused the API key: invalid API key")
    expect(page.locator("#api-key")).to_have_class(re.compile(r"\binvalid\b"))
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    expect(page.locator("#model")).to_have_value("tiny")
    expect(page.locator("#banner")).to_be_hidden()


def test_generate_streams_the_completion(page: Any, server: Server, expect: Any, tmp_path: Path) -> None:
    page.evaluate(OBSERVE)
    text = generate_in_page(page, expect, "ROMEO:", max_new_tokens=400, stop_at_eos=False)
    assert text, "the output gained text"
    assert text == api_generate(server, prompt="ROMEO:", max_new_tokens=400, stop_at_eos=False)
    assert page.text_content("#echo") == "ROMEO:"
    lengths = page.evaluate("window.__lengths")
    growth = [n for n in lengths if 0 < n < len(text)]
    assert len(set(growth)) >= 2, f"the text grew over several updates, saw lengths {lengths}"
    assert growth == sorted(growth)
    expect(page.locator("#gen-stats")).to_contain_text("400 tokens")
    expect(page.locator("#gen-stats")).to_contain_text("finish: length")
    page.screenshot(path=str(tmp_path / "playground-generate.png"), full_page=True)


def test_sample_and_beam(page: Any, server: Server, expect: Any) -> None:
    expect(page.locator("#num_beams")).to_be_disabled()
    page.click("label[for=strategy-sample]")
    expect(page.locator("#temperature")).to_be_enabled()
    expect(page.locator("#num_beams")).to_be_disabled()
    first = generate_in_page(page, expect, "To be", strategy="sample", max_new_tokens=60, seed=7, temperature=1.2,
                             top_k=20, top_p=0.9, stop_at_eos=False)
    assert len(first) > 0
    again = generate_in_page(page, expect, "To be", strategy="sample", max_new_tokens=60, seed=7)
    assert again == first, "the same seed gives the same sample"
    expect(page.locator("#temperature")).to_be_enabled()
    beam = generate_in_page(page, expect, "To be", strategy="beam", num_beams=3, max_new_tokens=12)
    expect(page.locator("#temperature")).to_be_disabled()
    assert beam == api_generate(server, prompt="To be", strategy="beam", num_beams=3, max_new_tokens=12,
                                stop_at_eos=False)


def test_stop_cancels_the_stream(page: Any, server: Server, expect: Any) -> None:
    page.fill("#prompt", "a")
    page.fill("#max_new_tokens", str(SERVER_MAX_NEW_TOKENS))
    page.uncheck("#stop_at_eos")
    page.click("#generate")
    expect(page.locator("#completion")).to_have_text(re.compile(r".{6}", re.DOTALL))
    expect(page.locator("#cancel")).to_be_enabled()
    page.click("#cancel")
    expect(page.locator("#gen-status")).to_have_text("stopped")
    expect(page.locator("#generate")).to_be_enabled()
    assert len(page.text_content("#completion")) < SERVER_MAX_NEW_TOKENS
    deadline = time.monotonic() + 10  # the server notices the disconnect and drops the request
    while 'lmforge_queue_depth{model="tiny"} 0.0' not in httpx.get(f"{server.url}/metrics", headers=AUTH).text:
        assert time.monotonic() < deadline, "the cancelled generation is still queued"
        time.sleep(0.05)


def test_errors_name_the_field(page: Any, expect: Any) -> None:
    page.fill("#max_new_tokens", str(SERVER_MAX_NEW_TOKENS + 1))
    page.click("#generate")
    expect(page.locator("#gen-error")).to_contain_text("max_new_tokens")
    expect(page.locator("#gen-status")).to_have_attribute("data-state", "error")
    expect(page.locator("#max_new_tokens")).to_have_class(re.compile(r"\binvalid\b"))
    page.fill("#max_new_tokens", "2.5")  # caught before any request
    page.click("#generate")
    expect(page.locator("#gen-error")).to_contain_text("max_new_tokens must be a whole number")


def test_score_shows_the_perplexity(page: Any, server: Server, expect: Any, tmp_path: Path) -> None:
    text = "To be, or not to be"
    page.fill("#score-text", text)
    page.click("#score")
    expect(page.locator("#ppl-tokens")).to_have_text("19")
    want = httpx.post(f"{server.url}/v1/perplexity", headers=AUTH, json={"text": text}).json()["results"][0]
    shown = float(page.text_content("#ppl"))
    assert shown > 1 and shown == pytest.approx(want["perplexity"], rel=1e-3)
    assert float(page.text_content("#ppl-bpc")) == pytest.approx(want["bits_per_char"], abs=1e-3)
    assert float(page.text_content("#ppl-nll")) == pytest.approx(want["nll_per_token"], abs=1e-3)
    expect(page.locator("#score-status")).to_contain_text("tiny")
    page.screenshot(path=str(tmp_path / "playground-score.png"), full_page=True)
