"""Prometheus metrics, one ``CollectorRegistry`` per app so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's counters, gauges and histograms; routes and schedulers update them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lmforge_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "lmforge_request_latency_seconds",
            "Time from request start to the last byte of the response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_generated = Counter(
            "lmforge_tokens_generated", "Tokens generated, by model", ["model"], registry=r
        )
        self.prompt_tokens = Counter(
            "lmforge_prompt_tokens", "Prompt tokens processed (generation and scoring), by model", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "lmforge_queue_depth", "Requests accepted and not finished (waiting or decoding), by model", ["model"],
            registry=r,
        )
        self.batch_rows = Gauge(
            "lmforge_batch_rows", "Rows in the running decode batch, by model", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "lmforge_batch_size",
            "Requests in the decode batch at each step, by model",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "lmforge_decode_step_seconds", "Duration of one batched decode step, by model", ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r,
        )
        self.rejected = Counter(
            "lmforge_rejected", "Requests refused before any model work, by reason", ["reason"], registry=r
        )
        self.models_loaded = Gauge("lmforge_models_loaded", "Models loaded and serving", registry=r)
