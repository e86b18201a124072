"""``lm.threads``: the thread count follows the cores other processes leave free."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lm.threads as threads


def test_free_cores_counts_a_mostly_busy_core_as_taken() -> None:
    assert threads.free_cores(None, usable=4) == 4  # unmeasurable: every usable core
    assert threads.free_cores(0.0, usable=4) == 4
    assert threads.free_cores(0.3, usable=4) == 4  # a little background work leaves the core
    assert threads.free_cores(0.7, usable=4) == 3
    assert threads.free_cores(1.9, usable=4) == 2
    assert threads.free_cores(8.0, usable=4) == 1  # always at least one


def test_choose_takes_an_explicit_count_and_keeps_a_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 1.0)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    assert threads.choose(3) == 3
    assert threads.choose() == 3
    assert threads.choose(reserve=1) == 2
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 5.0)
    assert threads.choose(reserve=1) == 1


def test_ranks_on_one_machine_split_its_cores_and_keep_their_share(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0.0)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.setattr(threads.BusyMeter, "cores", lambda self: 4.0)  # the other ranks, busy
    assert threads.choose(share=2) == 4
    assert threads.choose(share=3) == 2
    assert threads.choose(share=16) == 1
    try:
        rank = threads.ThreadGovernor(share=2, every_s=0.0)
        assert rank.threads == 4 == torch.get_num_threads()
        assert rank.poll() == 4  # the peer rank's load is not a neighbour's
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="busy cores are measured from /proc/stat")
def test_a_spinning_neighbour_is_seen() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_elsewhere(0.3) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()


def test_the_governor_follows_the_load_and_a_fixed_count_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    readings = iter([0.0, 1.0, 0.0])
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 0.0)
    monkeypatch.setattr(threads.BusyMeter, "cores", lambda self: next(readings))
    try:
        governor = threads.ThreadGovernor(every_s=0.0)
        assert governor.threads == 2 == torch.get_num_threads()
        assert governor.poll() == 2
        assert governor.poll() == 1 == torch.get_num_threads()  # a neighbour took a core
        assert governor.poll() == 2  # and left
        fixed = threads.ThreadGovernor(1, every_s=0.0)
        assert fixed.poll() == fixed.poll() == 1
    finally:
        torch.set_num_threads(before)
