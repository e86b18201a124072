"""Run every benchmark, write ``bench/RESULTS.md`` and the PNG charts the README shows.

Each benchmark runs as its own process (so one's threads and memory never colour another's);
its table is copied verbatim into RESULTS.md under the exact command that produced it.

    python bench/run_all.py [--quick] [--with-soak] [--only NAME ...]   (--only keeps the others' last results)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CHARTS = BENCH / "charts"


def benchmarks(quick: bool, soak: bool) -> list[tuple[str, list[str]]]:
    py = sys.executable
    runs = [
        ("tokenizer", [py, "bench/tokenizer.py", "--repeat", "2" if quick else "3"]),
        ("train", [py, "bench/train.py", "--compile", "--steps", "10" if quick else "20", "--rounds", "2" if quick else "3",
                   "--quality-steps", "0" if quick else "400"]),
        ("quality", [py, "bench/quality.py"]),
        ("recipes", [py, "bench/recipes.py", "--scale", "0.4" if quick else "1"]),
        ("budget", [py, "bench/budget.py", "--minutes", "2" if quick else "20"]),
        ("linear", [py, "bench/linear.py", "--repeats", "10" if quick else "20"]),
        ("decode", [py, "bench/decode.py", "--repeats", "1" if quick else "2", "--new-tokens", "128" if quick else "256"]),
        ("decode_context", [py, "bench/decode.py", "--context", "--repeats", "2" if quick else "3",
                            "--new-tokens", "256"]),
        ("decode_imported", [py, "bench/decode.py", "--imported", "--repeats", "1" if quick else "2",
                             "--new-tokens", "32" if quick else "64"]),
        ("int8", [py, "bench/int8.py", "--repeats", "1" if quick else "2"]),
        ("serve_load", [py, "bench/serve_load.py", "--duration", "6" if quick else "15"]),
        ("busy", [py, "bench/busy.py", "--steps", "12" if quick else "20"]),
    ]
    if soak:
        runs.append(("soak", [py, "bench/soak.py", "--duration", "300"]))
    return runs


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def _pyplot():  # noqa: ANN202
    """matplotlib.pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, name: str) -> Path:  # noqa: ANN001
    """Write ``fig`` to ``charts/<name>`` and free it."""
    fig.tight_layout()
    out = CHARTS / name
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def loss_chart() -> Path | None:
    plt = _pyplot()
    files = sorted((REPO / "checkpoints" / "curves").glob("*.metrics.jsonl"))
    if not files:
        return None
    fig, axes = plt.subplots(1, len(files), figsize=(6 * len(files), 4), dpi=100, squeeze=False)
    for ax, f in zip(axes[0], files, strict=True):
        recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        tr = [(r["elapsed_s"] / 60, r["loss"]) for r in recs if "loss" in r]
        va = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
        steps = [r["step"] for r in recs if "loss" in r]
        minutes = [r["elapsed_s"] / 60 for r in recs if "loss" in r]
        ax.plot(*zip(*tr, strict=True), label="train", linewidth=1)
        if va:
            ax.plot(np.interp([s for s, _ in va], steps, minutes), [v for _, v in va], "o-", label="validation")
        ax.set_title(f.name.replace(".metrics.jsonl", ""))
        ax.set_xlabel("training minutes")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, "loss_curves.png")


def decode_chart(text: str) -> Path | None:
    plt = _pyplot()

    rows = re.findall(r"^((?:transformer|lstm) \S+)\s+([a-z0-9]+-b\d+)\s+(fp32|bf16)\s+(\d+)\s+(\d+|-)", text, re.M)
    if not rows:
        return None
    labels = [f"{m.removeprefix('transformer ')}\n{mode}\n{dtype}" for m, mode, dtype, _, _ in rows]
    ours = [float(o) for _, _, _, o, _ in rows]
    hf = [float(h) if h != "-" else 0.0 for _, _, _, _, h in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.9), 4.5), dpi=100)
    ax.bar(x - 0.2, ours, 0.4, label="lmforge")
    ax.bar(x + 0.2, hf, 0.4, label="transformers")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("tokens/s")
    ax.set_yscale("log")
    ax.set_title("decode throughput by model and strategy")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, "decode.png")


def serve_chart(text: str) -> Path | None:
    plt = _pyplot()

    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.M)
    if not rows:
        return None
    clients = [int(r[0]) for r in rows]
    tps = [float(r[3]) for r in rows]
    p50, p95, p99 = ([float(r[i]) for r in rows] for i in (4, 5, 6))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    a.plot(clients, tps, "o-")
    a.set_xscale("log", base=2)
    a.set_xlabel("concurrent clients")
    a.set_ylabel("generated tokens/s")
    a.set_title("server throughput")
    a.grid(alpha=0.3)
    for series, name in ((p50, "p50"), (p95, "p95"), (p99, "p99")):
        b.plot(clients, series, "o-", label=name)
    b.set_xscale("log", base=2)
    b.set_xlabel("concurrent clients")
    b.set_ylabel("latency (ms)")
    b.set_title("request latency (64 new tokens)")
    b.grid(alpha=0.3)
    b.legend()
    return _save(fig, "serve.png")


def previous_sections(path: Path) -> dict[str, tuple[str, str]]:
    """``name -> (section, output)`` from an earlier RESULTS.md (empty if there is none)."""
    if not path.is_file():
        return {}
    found = {}
    for m in re.finditer(r"^## (\w+)\n\n`[^`]*` \(\d+ s\)\n\n```\n(.*?)\n```\n", path.read_text(), re.M | re.S):
        found[m.group(1)] = (m.group(0), m.group(2))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (noisier figures)")
    ap.add_argument("--with-soak", action="store_true", help="also the 5-minute soak")
    ap.add_argument("--only", nargs="+", help="run only these benchmarks")
    args = ap.parse_args()
    CHARTS.mkdir(exist_ok=True)
    kept = previous_sections(BENCH / "RESULTS.md") if args.only else {}
    outputs: dict[str, str] = {}
    sections = []
    for name, cmd in benchmarks(args.quick, args.with_soak):
        if args.only and name not in args.only:
            if name in kept:  # --only re-runs some benchmarks and keeps the others' last results
                sections.append(kept[name][0])
                outputs[name] = kept[name][1]
            continue
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        took = time.perf_counter() - t0
        out = proc.stdout.strip() or "(no output)"
        if proc.returncode != 0:
            out += f"\n\n[exit {proc.returncode}] " + proc.stderr.strip()[-1500:]
        outputs[name] = out
        print(out, flush=True)
        shown = "python " + " ".join(cmd[1:])
        sections.append(f"## {name}\n\n`{shown}` ({took:.0f} s)\n\n```\n{out}\n```\n")
    charts = [p for p in (loss_chart(), decode_chart(outputs.get("decode", "")),
                          serve_chart(outputs.get("serve_load", ""))) if p]
    header = (f"# Benchmark results\n\nWritten by `python bench/run_all.py{' --quick' if args.quick else ''}"
              f"{' --only ' + ' '.join(args.only) if args.only else ''}` on "
              f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.\n\nMachine: {machine()}.\n\n")
    if args.only:
        old = re.search(r"^Written by .*?\n\nMachine: (.*?)\n", (BENCH / "RESULTS.md").read_text(), re.M | re.S) \
            if (BENCH / "RESULTS.md").is_file() else None
        stale = [name for name in outputs if name not in args.only]
        if stale and old:
            header += (f"Re-run now: {', '.join(args.only)}. Kept from the previous RESULTS.md ({old.group(1)}): "
                       f"{', '.join(stale)}.\n\n")
    pics = "".join(f"![{p.stem}](charts/{p.name})\n\n" for p in charts)
    (BENCH / "RESULTS.md").write_text(header + pics + "\n".join(sections))
    print(f"wrote {BENCH / 'RESULTS.md'} and {len(charts)} chart(s)")

if __name__ == "__main__":
    main()
