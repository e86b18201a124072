"""Which models the server holds: discovery, loading, and lookup by name.

A model is a checkpoint (a directory holding ``config.json``) or a training run directory
(``lmforge train``'s ``out_dir``: served from its ``best/``, else the checkpoint ``latest`` points
at) -- the checkpoints directory itself or one of its subdirectories. Its name is the directory's
name, the run's for a run directory (``--checkpoints runs`` serves ``runs/ptb-word`` as
``ptb-word``, never as ``best`` or ``step-00000121``). Names from requests are only ever looked up in the dict of loaded models,
never joined into a path, so no request can reach outside the checkpoints directory. Symlinks in
the checkpoints directory are followed: the directory is the operator's, and a link to a
checkpoint kept elsewhere is served like one inside it (what a link may point at is the
operator's choice; a request can only ever name a model already loaded). A
checkpoint that fails to load is logged and skipped: one bad directory does not take the others
down.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm import threads
from lm.checkpoint import CONFIG_FILE, LATEST_FILE, CheckpointError, resolve_checkpoint_dir
from lm.config import to_dict
from lm.pipeline import Pipeline
from lm.quantize import is_int8
from service.metrics import Metrics
from service.scheduler import Scheduler
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServedModel:
    """A loaded pipeline with its decode scheduler and its scoring lane."""

    name: str
    path: Path
    pipeline: Pipeline
    scheduler: Scheduler
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def vocab_size(self) -> int:
        return self.pipeline.tokenizer.vocab_size

    def card(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about this model (OpenAI shape plus the config)."""
        config = self.pipeline.config
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "lmforge",
            "config": to_dict(config),
            "tokenizer": {"kind": self.pipeline.tokenizer.kind, "vocab_size": self.vocab_size},
            "device": str(self.pipeline.device),
            "dtype": "int8" if is_int8(self.pipeline.model) else
                     str(next(self.pipeline.model.parameters()).dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in self.pipeline.model.parameters()),
            "max_context": config.max_context,
            "example": None if self.pipeline.example is None else self.pipeline.example.to_dict(),
        }


RUN_MARKERS = (LATEST_FILE, "run_config.json")
"""Files only a training run directory holds."""


def _is_run_dir(path: Path) -> bool:
    return not (path / CONFIG_FILE).is_file() and any((path / marker).is_file() for marker in RUN_MARKERS)


def _model_name(checkpoint: Path) -> str:
    """A checkpoint inside a run (``runs/x/best``, ``runs/x/step-00000121``) is named after the run."""
    inside_run = checkpoint.name == "best" or checkpoint.name.startswith("step-")
    return checkpoint.parent.name if inside_run and _is_run_dir(checkpoint.parent) else checkpoint.name


def _served_dir(path: Path) -> Path | None:
    """The checkpoint ``path`` stands for (itself, or a run's best/latest), None if it is neither."""
    if (path / CONFIG_FILE).is_file():
        return path
    if not _is_run_dir(path):
        return None
    try:
        return resolve_checkpoint_dir(path)
    except CheckpointError as exc:
        log.error("skipping run %s: %s", path, exc)
        return None


def discover(checkpoints: Path, names: list[str] | None) -> dict[str, Path]:
    """Map model name -> checkpoint directory.

    ``checkpoints`` may itself be one checkpoint or one run directory. Hidden entries
    (``.x.tmp-123``, the half-written siblings of an atomic save) are never models.
    """
    if not checkpoints.is_dir():
        return {}
    itself = _served_dir(checkpoints)
    if itself is not None:
        found = {_model_name(checkpoints): itself}
    else:
        found = {}
        for child in sorted(checkpoints.iterdir()):
            served = None if child.name.startswith(".") or not child.is_dir() else _served_dir(child)
            if served is not None:
                found[child.name] = served
    if names is None:
        return found
    chosen = {}
    for name in names:
        if name in found:
            chosen[name] = found[name]
        else:
            log.error("model %r not found in %s (available: %s)", name, checkpoints, ", ".join(found) or "none")
    return chosen


class ModelRegistry:
    """The loaded models, keyed by name; starts and stops their schedulers."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.failed: dict[str, str] = {}

    def load_all(self) -> None:
        """Load every discovered checkpoint (blocking: call it from a worker thread)."""
        # Decoding shares the process with the event loop: torch's default (a thread per core)
        # would fight it for the CPU, and oversubscribed threads collapse batched throughput.
        threads.apply(self.settings.torch_threads, reserve=1)  # the free cores, less one
        for name, path in discover(self.settings.checkpoints, self.settings.models).items():
            try:
                pipeline = self._load_bounded(name, path)
            except Exception as exc:  # any bad checkpoint is skipped, whatever the failure
                log.error("skipping model %r at %s: %s", name, path, exc)
                self.failed[name] = str(exc)
                continue
            self.add(name, path, pipeline)

    def _load_bounded(self, name: str, path: Path) -> Pipeline:
        """Load one checkpoint within ``load_timeout_s``: a directory that makes loading hang (a
        filesystem that never answers) costs that long and is skipped, never the whole startup.
        The abandoned load runs on in a daemon thread, which the process does not wait for."""
        box: dict[str, Any] = {}

        def load() -> None:
            try:
                box["pipeline"] = Pipeline.from_checkpoint(path, device=self.settings.device, name=name,
                                                           dtype=self.settings.dtype)
            except BaseException as exc:  # noqa: BLE001 -- handed to the waiting thread
                box["error"] = exc

        worker = threading.Thread(target=load, name=f"load-{name}", daemon=True)
        worker.start()
        worker.join(self.settings.load_timeout_s)
        if worker.is_alive():
            raise TimeoutError(f"loading took over {self.settings.load_timeout_s:g} s (load_timeout_s)")
        if "error" in box:
            raise box["error"]
        return box["pipeline"]

    def why_empty(self) -> str:
        """Why no model is served, in one line: what failed to load, or what was looked for."""
        where, names = self.settings.checkpoints, self.settings.models
        if self.failed:
            reasons = "; ".join(f"{name}: {why}" for name, why in self.failed.items())
            return f"no model could be loaded from {where} ({reasons})"
        if not where.is_dir():
            return f"{where}: no such checkpoints directory"
        if names:
            return f"no model named {', '.join(names)} in {where} (--models names checkpoint or run directories there)"
        return (f"nothing to serve in {where}: it holds no checkpoint (a directory with config.json) and no "
                "training run (a directory with best/ or a latest pointer), nor do its subdirectories")

    def add(self, name: str, path: Path, pipeline: Pipeline) -> ServedModel:
        """Serve an already-built pipeline under ``name`` (also how tests inject models)."""
        scheduler = Scheduler(
            name,
            pipeline.session,
            max_queue=self.settings.max_queue,
            max_batch_rows=self.settings.max_batch_rows,
            metrics=self.metrics,
        )
        scheduler.start()
        served = ServedModel(name=name, path=path, pipeline=pipeline, scheduler=scheduler)
        self.models[name] = served
        self.metrics.models_loaded.set(len(self.models))
        log.info("serving model %r from %s on %s", name, path, pipeline.device)
        return served

    def stop(self) -> None:
        for served in self.models.values():
            served.scheduler.stop()
        self.metrics.models_loaded.set(0)

    @property
    def default_model(self) -> str | None:
        """The model a client that names none is shown first: ``default_model`` if loaded, else
        the first loaded (the order of ``models``, else of the directory)."""
        chosen = self.settings.default_model
        if chosen is not None and chosen in self.models:
            return chosen
        return next(iter(self.models), None)

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.scheduler.alive for m in self.models.values())
