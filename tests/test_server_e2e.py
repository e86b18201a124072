"""End to end: ``lmforge serve`` as a subprocess on a free loopback port, called with httpx."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import wait_until_ready
from test_service_helpers import free_port, make_checkpoint

KEY = "e2e-key-do-not-log"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


def lmforge_command() -> list[str]:
    exe = shutil.which("lmforge")
    return [exe] if exe else [sys.executable, "-m", "lm.cli"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ckpts")
    make_checkpoint(root / "tiny")
    port = free_port()
    log = root.parent / "server.log"
    env = {**os.environ, "LMFORGE_API_KEY": KEY, "LMFORGE_DEVICE": "cpu"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*lmforge_command(), "serve", "--checkpoints", str(root), "--port", str(port),
             "--max-new-tokens", "100000", "--max-score-cost", "100000000"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, process, log, AUTH)
    yield Server(url, process, log)
    if process.poll() is None:
        process.kill()
        process.wait()


def queue_depth(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    return float(re.search(r'lmforge_queue_depth\{model="tiny"\} ([0-9.]+)', text).group(1))


def wait_for_empty_queue(server: Server, seconds: float) -> float:
    start = time.monotonic()
    while queue_depth(server) and time.monotonic() - start < seconds:
        time.sleep(0.05)
    assert queue_depth(server) == 0
    return time.monotonic() - start


def test_health_is_open_and_the_rest_needs_the_key(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    r = httpx.post(f"{server.url}/v1/generate", json={"prompt": "a"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_generate(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/generate", headers=AUTH,
                   json={"prompt": "ROMEO:", "max_new_tokens": 16, "stop_at_eos": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["usage"]["completion_tokens"] == 16
    assert r.headers["x-request-id"] == body["id"]


def test_sse_streaming(server: Server) -> None:
    body = {"prompt": "To be", "max_new_tokens": 40, "stop_at_eos": False}
    expected = httpx.post(f"{server.url}/v1/generate", headers=AUTH, json=body).json()["choices"][0]
    events: list[tuple[str, dict]] = []
    with httpx.stream("POST", f"{server.url}/v1/generate/stream", headers=AUTH, json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    kinds = [e for e, _ in events]
    assert kinds == ["token"] * 40 + ["finish", "done"]
    assert "".join(d["text"] for e, d in events if e == "token") == expected["text"]
    assert events[-2][1]["finish_reason"] == "length"
    assert events[-1][1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}


def test_disconnect_mid_stream_cancels_generation(server: Server) -> None:
    body = {"prompt": "a", "max_new_tokens": 100000, "stop_at_eos": False}
    with httpx.stream("POST", f"{server.url}/v1/generate/stream", headers=AUTH, json=body, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        assert queue_depth(server) == 1
    assert wait_for_empty_queue(server, 5) < 5


def send_and_leave(server: Server, route: str, body: dict) -> None:
    """POST ``body`` on a raw socket, wait until the server holds the request, then hang up."""
    payload = json.dumps(body).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        deadline = time.monotonic() + 5
        while queue_depth(server) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert queue_depth(server) == 1


def test_disconnect_while_waiting_cancels_generation(server: Server) -> None:
    send_and_leave(server, "/v1/generate", {"prompt": "a", "max_new_tokens": 100000, "stop_at_eos": False})
    assert wait_for_empty_queue(server, 5) < 5


def test_disconnect_while_scoring_stops_the_work(server: Server) -> None:
    """A client that leaves mid-scoring frees the model: its queue slot empties within a
    second or so, and a request after it is answered at once (not after the abandoned work)."""
    send_and_leave(server, "/v1/perplexity",
                   {"texts": ["To be, or not to be, that is the question. " * 90] * 16, "stride": 1})
    assert wait_for_empty_queue(server, 3) < 3
    start = time.monotonic()
    r = httpx.post(f"{server.url}/v1/perplexity", headers=AUTH, json={"text": "To be, or not to be"})
    assert r.status_code == 200 and time.monotonic() - start < 2


def test_perplexity_and_completions(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/perplexity", headers=AUTH, json={"text": "To be, or not to be"})
    assert r.status_code == 200 and r.json()["results"][0]["tokens"] == 19
    r = httpx.post(f"{server.url}/v1/completions", headers=AUTH,
                   json={"model": "tiny", "prompt": "To", "max_tokens": 5, "stream": True})
    assert r.text.rstrip().endswith("data: [DONE]")


def test_sigterm_stops_cleanly_and_logs_no_secrets(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    log = server.log.read_text()
    assert "Application shutdown complete" in log
    access = [json.loads(line.split("lmforge.access: ", 1)[1]) for line in log.splitlines() if "lmforge.access: " in line]
    assert access and all({"route", "status", "latency_ms"} <= set(a) for a in access)
    assert any(a.get("disconnected") for a in access)
    assert KEY not in log
    assert "ROMEO" not in log  # no prompt text by default
