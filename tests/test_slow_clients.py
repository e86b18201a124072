"""Slow and greedy clients against the real server (``lmforge serve`` on a loopback port, raw
sockets): headers that never finish are cut off after ``header_timeout_s``, a body that stops
arriving gets 408 after ``body_timeout_s`` and frees its slot,
connections past ``max_connections`` get 503 instead of piling up, and a slow *reader* of a
stream is not mistaken for a slow sender."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import wait_until_ready
from test_server_e2e import lmforge_command
from test_service_helpers import free_port, make_checkpoint

MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("slow")
    make_checkpoint(root / "tiny")
    port = free_port()
    log = root / "server.log"
    env = {**os.environ, "LMFORGE_DEVICE": "cpu", "LMFORGE_TORCH_THREADS": "1", "LMFORGE_BODY_TIMEOUT_S": "1", "LMFORGE_HEADER_TIMEOUT_S": "1",
           "LMFORGE_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    with open(log, "wb") as out:
        process = subprocess.Popen([*lmforge_command(), "serve", "--checkpoints", str(root), "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(base, process, log, {})
    yield base
    process.terminate()
    process.wait(timeout=30)


def partial_request(url: str, sent: int = 10, declared: int = 200) -> socket.socket:
    """A POST that announces ``declared`` body bytes and sends ``sent`` of them."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (f"POST /v1/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n")
    sock.sendall(head.encode() + b'{"prompt": "' + b"a" * (sent - 12))
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1])
    while chunk := sock.recv(65536):  # the server closes after a 408
        data += chunk
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_a_body_that_stops_arriving_gets_408(url: str) -> None:
    t0 = time.monotonic()
    sock = partial_request(url)
    status, body = read_response(sock)
    sock.close()
    assert status == 408 and 0.8 < time.monotonic() - t0 < 6
    assert json.loads(body)["error"]["code"] == "body_timeout"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'lmforge_rejected_total{reason="body_timeout"}' in metrics


@pytest.mark.parametrize("sent", [b"", b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nX-Slow"])
def test_headers_that_never_finish_are_cut_off(url: str, sent: bytes) -> None:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(sent)
    t0 = time.monotonic()
    assert sock.recv(100) == b""  # closed by the server, with nothing to say
    assert 0.8 < time.monotonic() - t0 < 6
    sock.close()


def test_a_keep_alive_connection_serves_several_requests(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
            time.sleep(0.3)


def test_connections_past_the_cap_get_503_and_slots_come_back(url: str) -> None:
    held = []
    for _ in range(MAX_CONNECTIONS - 1):  # uvicorn counts the connection asking too
        held.append(partial_request(url))
        time.sleep(0.05)
    try:
        over = httpx.post(f"{url}/v1/generate", json={"prompt": "a", "max_new_tokens": 1}, timeout=10)
        assert over.status_code == 503
    finally:
        statuses = [read_response(s)[0] for s in held]
        for s in held:
            s.close()
    assert statuses == [408] * (MAX_CONNECTIONS - 1)
    ok = httpx.post(f"{url}/v1/generate", json={"prompt": "a", "max_new_tokens": 1}, timeout=10)
    assert ok.status_code == 200


def test_a_slow_reader_of_a_stream_is_not_timed_out(url: str) -> None:
    body = {"prompt": "To be", "max_new_tokens": 40, "strategy": "sample", "seed": 1}
    with httpx.stream("POST", f"{url}/v1/generate/stream", json=body, timeout=30) as r:
        assert r.status_code == 200
        chunks = []
        for i, chunk in enumerate(r.iter_text()):
            chunks.append(chunk)
            if i == 1:
                time.sleep(2.5)  # longer than body_timeout_s, after the body was complete
    assert "event: done" in "".join(chunks)
