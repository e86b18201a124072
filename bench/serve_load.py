"""Load test of the HTTP service: throughput and latency at 1, 4 and 16 concurrent clients,
then mixed traffic.

Starts ``lmforge serve`` on a free loopback port with one checkpoint (default: the shipped
``checkpoints/shakespeare-char``), then for each concurrency level runs that many clients in a
closed loop for a fixed time, each sending greedy ``/v1/generate`` requests for exactly 64 new
tokens, and prints requests/s, generated tokens/s, latency percentiles and errors. The mixed
level (``--mixed N``, default 16 clients) has each client send its own kind of request in turn:
greedy, seeded sampling (temperature 0.8, top_p 0.95), beam search (4 beams) and perplexity
(``/v1/perplexity`` of a 400-character text), all at once, and prints a row per kind.

Targets (issue 19): zero errors; aggregate tokens/s at 16 clients >= 6x one client's
(continuous batching); p99 <= 2x p50 at 4 clients. The load generator runs on the same machine
as the server and takes its share of the cores.

    python bench/serve_load.py [--checkpoint DIR] [--duration 20] [--clients 1 4 16] [--mixed 16]
    python bench/serve_load.py --url http://127.0.0.1:8000   # an already running server
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger("serve_load")

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "shakespeare-char"
PROMPTS = ["ROMEO:", "JULIET:\nO ", "First Citizen:\n", "KING RICHARD III:\nNow is the ", "HAMLET:\nTo be, or "]


@dataclass
class Result:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "lm.cli", "serve", "--checkpoints", str(checkpoint), "--port", str(port)]
    cmd += extra
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_API_KEY"}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; log:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server not ready after 120 s; log:\n{log_path.read_text()}")


SCORE_TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the "
              "sun.\nArise, fair sun, and kill the envious moon, who is already sick and pale with grief, that "
              "thou her maid art far more fair than she.\nJULIET:\nO Romeo, Romeo! wherefore art thou Romeo? "
              "Deny thy father and refuse thy name; or, if thou wilt not, be but sworn my love.")
MIXED = ("greedy", "sample", "beam", "perplexity")
"""The kinds of request of the mixed level, one per client in turn."""


def mixed_request(kind: str, body: dict, prompt: str) -> tuple[str, dict]:
    """The route and body of one request of ``kind`` (``body`` holds model and length)."""
    if kind == "perplexity":
        return "/v1/perplexity", {k: v for k, v in body.items() if k == "model"} | {"text": SCORE_TEXT}
    extra = {"greedy": {"strategy": "greedy"},
             "sample": {"strategy": "sample", "temperature": 0.8, "top_p": 0.95, "seed": 1},
             "beam": {"strategy": "beam", "num_beams": 4}}[kind]
    return "/v1/generate", {**body, **extra, "prompt": prompt}


def counted(route: str, reply: dict) -> int:
    """Tokens a reply accounts for: generated ones, or scored ones for perplexity."""
    if route == "/v1/perplexity":
        return sum(r["tokens"] for r in reply["results"])
    return reply["usage"]["completion_tokens"]


async def client_loop(http: httpx.AsyncClient, url: str, body: dict, stop_at: float, result: Result, k: int,
                      kind: str = "greedy") -> None:
    i = k
    while time.monotonic() < stop_at:
        route, payload = mixed_request(kind, body, PROMPTS[i % len(PROMPTS)])
        i += 1
        start = time.monotonic()
        try:
            r = await http.post(f"{url}{route}", json=payload)
            ok = r.status_code == 200
        except httpx.HTTPError as exc:
            log.warning("request failed: %s", exc)
            ok = False
        if not ok:
            result.errors += 1
            continue
        result.latencies.append(time.monotonic() - start)
        result.tokens += counted(route, r.json())


async def run_level(url: str, clients: int, seconds: float, body: dict, mixed: bool = False) -> list[Result]:
    """One result for the level, or one per kind of request when ``mixed``."""
    kinds = MIXED if mixed else ("greedy",)
    results = {kind: Result(sum(1 for k in range(clients) if kinds[k % len(kinds)] == kind), seconds)
               for kind in kinds}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        start = time.monotonic()
        stop_at = start + seconds
        await asyncio.gather(*(client_loop(http, url, body, stop_at, results[kinds[k % len(kinds)]], k,
                                           kinds[k % len(kinds)]) for k in range(clients)))
        for result in results.values():
            result.seconds = time.monotonic() - start  # the last requests finish after stop_at
    return list(results.values())


def table(results: list[Result]) -> str:
    head = f"{'clients':>7} {'requests':>8} {'req/s':>7} {'tokens/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.clients:>7} {len(r.latencies):>8} {r.rps:>7.2f} {r.tps:>9.1f} {r.percentile(50) * 1000:>8.0f} "
            f"{r.percentile(95) * 1000:>8.0f} {r.percentile(99) * 1000:>8.0f} {r.errors:>6}"
        )
    return "\n".join(rows)


def mixed_table(results: list[Result]) -> str:
    head = f"{'kind':<11} {'clients':>7} {'requests':>8} {'req/s':>7} {'tokens/s':>9} {'p50 ms':>8} {'p99 ms':>8} " \
           f"{'errors':>6}"
    rows = [head, "-" * len(head)]
    for kind, r in zip(MIXED, results, strict=True):
        rows.append(f"{kind:<11} {r.clients:>7} {len(r.latencies):>8} {r.rps:>7.2f} {r.tps:>9.1f} "
                    f"{r.percentile(50) * 1000:>8.0f} {r.percentile(99) * 1000:>8.0f} {r.errors:>6}")
    return "\n".join(rows) + "\n(tokens/s: generated tokens; for perplexity, tokens scored)"


def targets(results: list[Result], mixed: list[Result] | None = None) -> list[str]:
    by = {r.clients: r for r in results}
    errors = sum(r.errors for r in [*results, *(mixed or [])])
    out = [f"zero errors: {'PASS' if errors == 0 else 'FAIL'}"]
    if 1 in by and 16 in by:
        ratio = by[16].tps / by[1].tps if by[1].tps else float("nan")
        out.append(f"tokens/s at 16 clients = {ratio:.1f}x one client's (target >= 6x): "
                   f"{'PASS' if ratio >= 6 else 'FAIL'}")
    if 4 in by:
        ratio = by[4].percentile(99) / by[4].percentile(50)
        out.append(f"p99/p50 at 4 clients = {ratio:.2f} (target <= 2): {'PASS' if ratio <= 2 else 'FAIL'}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED, help="checkpoint directory to serve")
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--model", help="model name (default: the only one loaded)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--mixed", type=int, default=16,
                        help="clients of the mixed-traffic level (greedy, sample, beam, perplexity); 0: none")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the levels in turn and pool them (evens out a machine's changing load)")
    parser.add_argument("--device", help="device for the server (default: auto)")
    parser.add_argument("--torch-threads", type=int, help="torch threads in the server (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    proc = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        if not (args.checkpoint / "config.json").is_file():
            hint = " (the shipped model is trained by configs/shakespeare-char.toml)" if args.checkpoint == SHIPPED else ""
            print(f"serve_load: no checkpoint at {args.checkpoint}{hint}; pass --checkpoint DIR", file=sys.stderr)
            return 2
        log_path = Path(tempfile.mkstemp(prefix="serve_load-", suffix=".log")[1])
        log.info("starting lmforge serve with %s (server log: %s)", args.checkpoint, log_path)
        extra = ["--device", args.device] if args.device else []
        if args.torch_threads:
            extra += ["--torch-threads", str(args.torch_threads)]
        proc, url = start_server(args.checkpoint, extra, log_path)
    body = {"strategy": "greedy", "max_new_tokens": args.max_new_tokens, "stop_at_eos": False}
    if args.model:
        body["model"] = args.model
    try:
        asyncio.run(run_level(url, 2, 2.0, body))  # warm-up: allocator, first batch shapes
        results = {c: Result(c, 0.0) for c in args.clients}
        for round_ in range(args.rounds):
            for clients in args.clients:
                log.info("round %d: %d client(s) for %.0f s", round_ + 1, clients, args.duration)
                [r] = asyncio.run(run_level(url, clients, args.duration, body))
                pooled = results[clients]
                pooled.seconds += r.seconds
                pooled.latencies += r.latencies
                pooled.tokens += r.tokens
                pooled.errors += r.errors
        mixed = None
        if args.mixed:
            log.info("mixed traffic: %d clients for %.0f s", args.mixed, args.duration)
            mixed = asyncio.run(run_level(url, args.mixed, args.duration, body, mixed=True))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(f"\n/v1/generate, greedy, {args.max_new_tokens} new tokens, {args.duration:g} s per level x "
          f"{args.rounds} round(s), server: {args.url or args.checkpoint}\n")
    print(table(list(results.values())))
    if mixed:
        print(f"\nmixed traffic, {args.mixed} clients at once, each its own kind in turn:\n")
        print(mixed_table(mixed))
    print()
    print("\n".join(targets(list(results.values()), mixed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
