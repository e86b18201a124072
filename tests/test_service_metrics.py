"""``/metrics`` stays small and true whatever clients send: labels come from fixed sets (a
flood of made-up methods or unauthenticated requests mints no series), and the batch gauge
falls as soon as a request is cancelled."""

from __future__ import annotations

import asyncio
import random
import string
import time
from pathlib import Path

import pytest
import torch
from test_service_helpers import client_for, make_checkpoint, test_settings

from lm.decoding.params import GenerationParams
from lm.pipeline import Pipeline
from service.metrics import Metrics
from service.scheduler import Scheduler

KEY = "metrics-key"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics")
    make_checkpoint(root / "tiny")
    return root


def junk(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(n))


def series(text: str) -> set[str]:
    """The names and labels of every sample in a ``/metrics`` page (values dropped)."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_made_up_methods_and_paths_mint_no_series(root: Path) -> None:
    rng = random.Random(0)
    with client_for(test_settings(root)) as client:
        client.get("/metrics")
        for _ in range(3):  # the fixed series these requests fall into exist from here on
            client.request(junk(rng, 8), f"/{junk(rng, 6)}")
            client.request(junk(rng, 5), "/v1/generate")
        before = client.get("/metrics").text
        for _ in range(300):
            client.request(junk(rng, 8), f"/{junk(rng, 6)}")
            client.request(junk(rng, 5), "/v1/generate")
        after = client.get("/metrics").text
    assert series(after) == series(before)
    assert len(after) < len(before) + 3_000, f"/metrics grew from {len(before)} to {len(after)} bytes"
    assert 'method="other"' in after and 'route="unmatched"' in after


def test_unauthenticated_requests_cost_no_series(root: Path) -> None:
    rng = random.Random(1)
    auth = {"Authorization": f"Bearer {KEY}"}
    with client_for(test_settings(root, api_key=KEY)) as client:
        client.get("/metrics", headers=auth)
        client.get("/v1/nothing")  # the one series every refusal shares
        before = client.get("/metrics", headers=auth).text
        for _ in range(300):
            assert client.request(rng.choice(["GET", "POST", junk(rng, 4)]), f"/{junk(rng, 7)}").status_code == 401
            assert client.post("/v1/generate", json={"prompt": "a"}).status_code == 401
        after = client.get("/metrics", headers=auth).text
    assert series(after) == series(before)
    assert 'lmforge_requests_total{method="other",route="unauthenticated",status="401"} 601.0' in after


def test_batch_rows_falls_when_a_request_is_cancelled(root: Path) -> None:
    pipeline = Pipeline.from_checkpoint(root / "tiny")
    metrics = Metrics()
    scheduler = Scheduler("tiny", pipeline.session, max_queue=64, max_batch_rows=32, metrics=metrics)
    scheduler.start()

    def rows() -> float:
        return metrics.registry.get_sample_value("lmforge_batch_rows", {"model": "tiny"}) or 0.0

    async def scenario() -> None:
        params = GenerationParams(strategy="sample", num_return_sequences=8, max_new_tokens=10_000, seed=1,
                                  stop_at_eos=False)
        ids = pipeline.encode("To be")
        submission = scheduler.submit([(ids, params)] * 4, "big")
        deadline = time.monotonic() + 10
        while rows() < 32 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert rows() == 32
        submission.cancel()
        deadline = time.monotonic() + 5
        while rows() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert rows() == 0, "the gauge kept the cancelled request's rows"

    try:
        torch.manual_seed(0)
        asyncio.run(scenario())
    finally:
        scheduler.stop()
