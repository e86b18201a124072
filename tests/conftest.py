"""Shared fixtures: small corpora made on the spot, and the real ones when ../shared is present."""

from __future__ import annotations

import os

# The tests' models are tiny: one thread is faster for them, and it keeps the test process, the
# servers it starts and any background job on a 2-core machine from stalling each other in
# OpenMP barriers. Set before torch is imported, so subprocesses inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n"
) * 12


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` or a skip naming what is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    """Tiny models run faster on one intra-op thread (and a shared machine's second core is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def wait_until_ready(url: str, process: subprocess.Popen, log: Path, headers: dict[str, str],
                     timeout: float = 60.0) -> None:
    """Poll ``/ready`` of a server started as a subprocess; fail with its log if it dies or stalls."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"lmforge serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", headers=headers, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"server not ready after {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.1)
