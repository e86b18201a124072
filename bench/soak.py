"""Soak test of the HTTP service: 16 clients mixing every endpoint for 5 minutes.

Each client loops over generate (greedy), generate/stream (SSE), beam search, perplexity and
completions (plain and streamed), sending a unique ``X-Request-ID`` that the server must echo
in the header and the body (or the stream's last event). The run passes with zero 5xx, zero
lost or duplicated responses, and resident memory growing less than 10% between the end of
warm-up and the end of the run.

    python bench/soak.py [--checkpoint DIR] [--duration 300] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from serve_load import SHIPPED, start_server

log = logging.getLogger("soak")

TEXTS = ["To be, or not to be, that is the question:", "ROMEO:\nBut soft, what light through yonder window breaks?",
         "First Citizen:\nBefore we proceed any further, hear me speak.", "O", "KING LEAR:\nBlow, winds, and crack"]


@dataclass
class Tally:
    sent: set[str] = field(default_factory=set)
    answered: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    mismatched: list[str] = field(default_factory=list)
    transport_errors: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("5"))

    @property
    def lost(self) -> set[str]:
        return self.sent - set(self.answered)

    @property
    def duplicated(self) -> list[str]:
        return [rid for rid, n in self.answered.items() if n > 1]


def sse_data(text: str) -> list[tuple[str | None, str]]:
    out = []
    for block in text.strip().split("\n\n"):
        event = None
        data = []
        for line in block.splitlines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, "\n".join(data)))
    return out


def echoed_id(kind: str, r: httpx.Response) -> str | None:
    """The request id the body carries (JSON ``id``, or the stream's last id-bearing event)."""
    if kind == "stream":
        events = sse_data(r.text)
        done = [json.loads(d) for e, d in events if e == "done"]
        return done[-1]["id"] if done else None
    if kind == "completions_stream":
        events = sse_data(r.text)
        if events[-1][1] != "[DONE]":
            return None
        ids = {json.loads(d)["id"] for _, d in events[:-1]}
        return ids.pop() if len(ids) == 1 else None
    return r.json().get("id")


def request_for(kind: str, rng: random.Random) -> tuple[str, dict]:
    prompt = rng.choice(TEXTS)[: rng.randint(1, 30)]
    if kind == "generate":
        return "/v1/generate", {"prompt": prompt, "max_new_tokens": 32}
    if kind == "stream":
        return "/v1/generate/stream", {"prompt": prompt, "max_new_tokens": 32, "strategy": "sample",
                                       "temperature": 0.8, "seed": rng.randint(0, 1000)}
    if kind == "beam":
        return "/v1/generate", {"prompt": prompt, "strategy": "beam", "num_beams": 3, "num_return_sequences": 2,
                                "max_new_tokens": 16}
    if kind == "perplexity":
        return "/v1/perplexity", {"texts": rng.sample(TEXTS, 2), "token_logprobs": rng.random() < 0.5}
    if kind == "completions":
        return "/v1/completions", {"prompt": [prompt, prompt[::-1] or "a"], "max_tokens": 16, "temperature": 0,
                                   "logprobs": 1}
    return "/v1/completions", {"prompt": prompt, "max_tokens": 24, "temperature": 0.7, "stream": True, "n": 2}


KINDS = ("generate", "stream", "beam", "perplexity", "completions", "completions_stream")


async def client(http: httpx.AsyncClient, url: str, k: int, stop_at: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed * 1000 + k)
    i = 0
    while time.monotonic() < stop_at:
        kind = KINDS[(k + i) % len(KINDS)]
        rid = f"soak-{k}-{i}"
        i += 1
        path, body = request_for(kind, rng)
        tally.sent.add(rid)
        tally.by_kind[kind] += 1
        try:
            r = await http.post(url + path, json=body, headers={"X-Request-ID": rid})
        except httpx.HTTPError as exc:
            tally.transport_errors += 1
            log.warning("%s %s: %s", rid, kind, exc)
            continue
        tally.statuses[str(r.status_code)] += 1
        if r.status_code != 200:
            log.warning("%s %s: %d %s", rid, kind, r.status_code, r.text[:200])
            continue
        if r.headers.get("x-request-id") != rid or echoed_id(kind, r) != rid:
            tally.mismatched.append(rid)
            continue
        tally.answered[rid] += 1


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found")


async def sample_memory(pid: int, stop_at: float, samples: list[tuple[float, int]]) -> None:
    start = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - start, rss_kib(pid)))
        await asyncio.sleep(2)
    samples.append((time.monotonic() - start, rss_kib(pid)))


async def soak(url: str, pid: int | None, clients: int, seconds: float, warmup: float, seed: int
               ) -> tuple[Tally, list[tuple[float, int]]]:
    tally = Tally()
    samples: list[tuple[float, int]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        stop_at = time.monotonic() + seconds
        tasks = [client(http, url, k, stop_at, tally, seed) for k in range(clients)]
        if pid is not None:
            tasks.append(sample_memory(pid, stop_at, samples))
        await asyncio.gather(*tasks)
    return tally, samples


def report(tally: Tally, samples: list[tuple[float, int]], warmup: float, seconds: float) -> bool:
    total = sum(tally.statuses.values())
    print(f"\nsoak: {seconds:g} s, {total} responses ({total / seconds:.1f}/s); by kind: {dict(tally.by_kind)}")
    print(f"statuses: {dict(tally.statuses)}  transport errors: {tally.transport_errors}")
    checks = [
        ("zero 5xx", tally.server_errors == 0, f"{tally.server_errors}"),
        ("zero lost responses", not tally.lost, f"{len(tally.lost)} lost"),
        ("zero duplicated responses", not tally.duplicated, f"{len(tally.duplicated)} duplicated"),
        ("every id echoed back", not tally.mismatched, f"{len(tally.mismatched)} mismatched"),
    ]
    if samples:
        after = [kib for t, kib in samples if t >= warmup] or [samples[-1][1]]
        base, end, peak = after[0], samples[-1][1], max(after)
        growth = (end - base) / base * 100
        print(f"RSS (MiB): start {samples[0][1] / 1024:.0f}, after {warmup:g} s warm-up {base / 1024:.0f}, "
              f"peak {peak / 1024:.0f}, end {end / 1024:.0f}; growth after warm-up {growth:+.1f}%")
        checks.append(("RSS growth after warm-up < 10%", growth < 10, f"{growth:+.1f}%"))
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name} ({detail})")
    return all(ok for _, ok, _ in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--url", help="soak this running server (memory is then not measured)")
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the memory baseline")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    proc = None
    if args.url:
        url, pid = args.url.rstrip("/"), None
    else:
        if not (args.checkpoint / "config.json").is_file():
            print(f"soak: no checkpoint at {args.checkpoint}; pass --checkpoint DIR", file=sys.stderr)
            return 2
        log_path = Path(tempfile.mkstemp(prefix="soak-", suffix=".log")[1])
        log.info("starting lmforge serve with %s (server log: %s)", args.checkpoint, log_path)
        proc, url = start_server(args.checkpoint, [], log_path)
        pid = proc.pid
    try:
        log.info("%d clients for %g s", args.clients, args.duration)
        tally, samples = asyncio.run(soak(url, pid, args.clients, args.duration, args.warmup, args.seed))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    return 0 if report(tally, samples, args.warmup, args.duration) else 1


if __name__ == "__main__":
    sys.exit(main())
