"""How many threads torch computes with: as many as there are cores that no other process is
keeping busy.

torch's default, a thread per core, falls off a cliff on a loaded machine: OpenMP threads
spin-wait for each other at the end of every operation, and one of them shares its core with
another process, so every operation waits for the slowest thread while the others burn their
cores spinning (``bench/busy.py``: a char Transformer trains at about 5k tokens/s with one core
busy elsewhere, against 9k on one thread and 14k on both cores when they are free). Sleeping
instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) mostly avoids the cliff but costs ~15% on an
idle machine, so lmforge keeps the spinning and counts the free cores instead: before it starts
(``choose``), and, for a long training run, again every few seconds (``ThreadGovernor``), so a
neighbour that starts later costs a few seconds, not the run.

Busy cores are measured from ``/proc/stat`` (Linux): CPU time spent on the cores this process
may use (its affinity) minus this process's own, over a short interval. Elsewhere the count falls back to the usable cores.
An explicit count (``train.threads``, ``--threads``, ``torch_threads``) is used as given.
"""

from __future__ import annotations

import os
import time

SAMPLE_S = 0.1
"""How long ``busy_elsewhere`` watches the machine when asked for a fresh figure."""
BUSY = 0.6
"""A core counts as taken when other processes use at least this fraction of it."""


def _cpus() -> set[int] | None:
    """The cores this process may run on (its affinity mask), None where it cannot be read."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def usable_cpus() -> int:
    """How many cores this process may run on (e.g. under ``taskset`` or in a container)."""
    cpus = _cpus()
    return len(cpus) if cpus else max(1, os.cpu_count() or 1)


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent so far (user, nice, system, irq, softirq, steal) on
    the cores this process may use -- not the whole host, whose other cores (another
    container's) are not ours to count."""
    mine = _cpus()
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = [line.split() for line in f if line.startswith("cpu")]
    except OSError:
        return None
    per_cpu = [fields for fields in lines if fields[0] != "cpu" and fields[0][3:].isdigit()]
    chosen = [f for f in per_cpu if mine is None or int(f[0][3:]) in mine] or [f for f in lines if f[0] == "cpu"]
    if not chosen:
        return None
    ticks = 0
    for fields in chosen:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


class BusyMeter:
    """Cores kept busy by other processes since the previous reading."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        machine = _machine_busy_seconds()
        return None if machine is None else (time.monotonic(), machine, _own_seconds())

    def cores(self) -> float | None:
        """Busy cores by others since the last call (None where it cannot be measured)."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] <= 0:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / (now[0] - last[0]))


def busy_elsewhere(sample_s: float = SAMPLE_S) -> float | None:
    """Cores other processes keep busy right now, watched for ``sample_s`` seconds."""
    meter = BusyMeter()
    time.sleep(sample_s)
    return meter.cores()


def free_cores(busy: float | None, usable: int | None = None) -> int:
    """Cores left for us when others keep ``busy`` cores busy (at least one)."""
    usable = usable_cpus() if usable is None else usable
    taken = 0 if busy is None else int(busy + (1 - BUSY))  # 0.6 of a core counts as a core
    return max(1, usable - taken)


def choose(requested: int = 0, *, reserve: int = 0, share: int = 1) -> int:
    """The thread count to compute with: ``requested`` when given (> 0), else the free cores
    less ``reserve`` (a core kept for an event loop), split ``share`` ways (the processes of a
    torchrun job on this machine), at least one."""
    if requested > 0:
        return requested
    return max(1, (free_cores(busy_elsewhere()) - reserve) // share)


def apply(requested: int = 0, *, reserve: int = 0, share: int = 1) -> int:
    """``torch.set_num_threads(choose(...))``; returns the count."""
    import torch

    threads = choose(requested, reserve=reserve, share=share)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


class ThreadGovernor:
    """Re-counts the free cores every ``every_s`` seconds of a long run and follows them.

    Fixed when the user gave a count. ``poll`` is cheap (two small file reads) and is meant to
    be called once per training step; it changes the count only between steps.
    """

    def __init__(self, requested: int = 0, every_s: float = 5.0, *, share: int = 1) -> None:
        # One of ``share`` processes training side by side: each takes its part of the cores and
        # keeps it (the others' load would read as someone else's and shrink every share to 1).
        self.fixed = requested > 0 or share > 1
        self.threads = apply(requested, share=share)
        self.every_s = every_s
        self._meter = BusyMeter()
        self._next = time.monotonic() + every_s

    def poll(self) -> int:
        """The thread count for the next step (changed when the machine's load has)."""
        if self.fixed or time.monotonic() < self._next:
            return self.threads
        self._next = time.monotonic() + self.every_s
        wanted = free_cores(self._meter.cores())
        if wanted != self.threads:
            import torch

            torch.set_num_threads(wanted)
            self.threads = wanted
        return self.threads
