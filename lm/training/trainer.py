"""The trainer: teacher forcing over a token stream, evaluation, checkpoints, exact resume.

The run directory (``train.out_dir``) holds ``run_config.json`` (the resolved configuration),
``tokenizer/``, ``data/`` (cached token files), ``step-NNNNNNNN/`` resumable checkpoints with a
``latest`` pointer (replaced atomically after each complete write), ``best/`` (best validation
loss, weights only), ``metrics.jsonl`` and ``loss.png``.

Exact resume: batches are a pure function of the step (``lm.training.data``), and the checkpoint carries
the optimizer, scaler, RNG and carried recurrent state, so on CPU a resumed run's losses equal
an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_model
from torch import nn
from torch.distributed.tensor import DTensor

from lm.checkpoint import (
    LATEST_FILE,
    CheckpointError,
    load_trainer_state,
    resolve_device,
    save_checkpoint,
)
from lm.config import RunConfig, TrainConfig
from lm.context import TextContext, trained_length
from lm.losses import mean_nll, token_nll
from lm.models import RNNLM, RNNState, build_model
from lm.training.data import (
    RandomBatches,
    SequentialBatches,
    eval_batches,
    resolve_corpus,
    tokenize_to_file,
)
from lm.training.distributed import (
    DistInfo,
    agree,
    agree_stop,
    full_model_state,
    full_optimizer_state,
    gathered_rnn_state,
    init_distributed,
    load_full_model_state,
    load_full_optimizer_state,
    shard_transformer,
)
from lm.training.errors import TrainingError
from lm.training.optim import build_optimizer, scheduled_lr
from lm.training.precision import autocast_context, resolve_precision
from lm.training.rundir import (
    METRICS_FILE,
    RUN_CONFIG_FILE,
    check_tokenizer_unchanged,
    load_run_dir_config,
    recover_run_dir,
    run_to_dict,
    write_loss_plot,
)
from lm.training.trainstate import TrainProgress
from tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from tokenizer.io import write_atomic

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainResult", "TrainingError", "load_run_dir_config", "train", "write_loss_plot"]

@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens_seen: int
    elapsed: float
    best_val_loss: float
    last_val_loss: float
    test_loss: float | None = None
    skipped_steps: int = 0
    interrupted: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def prepare_tokenizer(run: RunConfig, run_dir: Path, train_files: list[Path]) -> Tokenizer:
    tok_dir = run_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        return load_tokenizer(tok_dir)
    cfg = run.tokenizer
    if cfg.path:
        tok = load_tokenizer(cfg.path)
    else:
        options: dict[str, Any] = {}
        if cfg.kind == "word":
            options = {"min_freq": cfg.min_freq, "eos_at_newline": cfg.eos_at_newline}
        elif cfg.kind == "char":
            options = {"unk_policy": cfg.unk_policy}
        tok = train_tokenizer(cfg.kind, [str(f) for f in train_files], cfg.vocab_size or None, **options)
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok.save(tok_dir)
    return load_tokenizer(tok_dir)


class Trainer:
    """One training run; ``fit()`` trains until max_steps, max_time, patience or a signal."""

    def __init__(self, run: RunConfig, *, resume: bool = False) -> None:
        self.run = run
        self.cfg: TrainConfig = run.train
        self.run_dir = Path(self.cfg.out_dir)
        self.device = resolve_device(self.cfg.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        if self.cfg.batch_size % (self.cfg.grad_accum * self.dist.world_size):
            raise TrainingError(
                f"train.batch_size ({self.cfg.batch_size}) must be divisible by grad_accum x world size "
                f"({self.cfg.grad_accum} x {self.dist.world_size})"
            )
        self.precision = resolve_precision(self.cfg.precision, self.device)
        self.resume = resume
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            recover_run_dir(self.run_dir)
            if not resume:
                check_tokenizer_unchanged(self.run_dir, run)
            (self.run_dir / RUN_CONFIG_FILE).write_text(json.dumps(run_to_dict(run), indent=2) + "\n")
        self._barrier()

        files = resolve_corpus(run.data)
        if self.dist.is_main:
            self.tokenizer = prepare_tokenizer(run, self.run_dir, files.train)
        self._barrier()
        if not self.dist.is_main:
            self.tokenizer = load_tokenizer(self.run_dir / "tokenizer")
        self.model_config = run.model_config(self.tokenizer.vocab_size)
        # What a text starts after, and the context trained: recorded in every checkpoint.
        self.context = TextContext.derive(self.tokenizer,
                                          trained_length(self.model_config.max_context, self.cfg.seq_len))
        cache = Path(run.data.cache_dir) if run.data.cache_dir else self.run_dir / "data"
        tok_dir = self.run_dir / "tokenizer"
        start = self.context.start

        def tokens_of(split: list[Path]) -> np.ndarray:
            return tokenize_to_file(split, self.tokenizer, tok_dir, cache, start=start)

        if self.dist.is_main:  # tokenize once; the other ranks then open the cached files
            for split in (files.train, files.valid, files.test):
                if split:
                    tokens_of(split)
        self._barrier()
        train_tokens = tokens_of(files.train)
        if files.valid:
            self.valid_tokens = tokens_of(files.valid)
        else:
            cut = int(len(train_tokens) * (1 - run.data.valid_fraction))
            train_tokens, self.valid_tokens = train_tokens[:cut], train_tokens[cut:]
        self.test_tokens = tokens_of(files.test) if files.test else None
        self.train_tokens = train_tokens

        torch.manual_seed(self.cfg.seed)
        self.model = build_model(self.model_config).to(self.device)
        self.is_rnn = isinstance(self.model, RNNLM)
        batching = run.data.batching
        if batching == "auto":
            batching = "sequential" if self.is_rnn else "random"
        self.sequential = batching == "sequential"
        seq_len = self.cfg.seq_len
        max_ctx = self.model_config.max_context
        if max_ctx is not None and seq_len > max_ctx:
            raise TrainingError(f"train.seq_len ({seq_len}) exceeds the model's block_size ({max_ctx})")
        Batches = SequentialBatches if self.sequential else RandomBatches
        self.batches = Batches(self.train_tokens, self.cfg.batch_size, seq_len, self.cfg.seed,
                               rank=self.dist.rank, world_size=self.dist.world_size)
        if self.cfg.fsdp and self.is_rnn:
            raise TrainingError("train.fsdp shards Transformers; an RNN LM trains with DDP (set train.fsdp = false)")
        if self.cfg.fsdp and self.precision == "fp16":
            raise TrainingError("train.fsdp with fp16 is not supported (its loss scaling is per rank); use bf16")
        self.sharded = self.cfg.fsdp and self.dist.enabled
        if self.cfg.fsdp and not self.dist.enabled:
            log.info("train.fsdp: one process, nothing to shard; training unsharded")
        self.train_model: nn.Module = self.model
        if self.sharded:
            shard_transformer(self.model)  # in place, before the optimizer sees the parameters
        elif self.dist.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(self.model, self.cfg, fused=not self.sharded)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if self.cfg.compile:
            self.train_model = torch.compile(self.train_model)

        self.progress = TrainProgress()
        self.rnn_state: RNNState | None = None
        if resume:
            self._load_resume_state()

    @property
    def step(self) -> int:
        """Optimizer steps taken (``progress.step``)."""
        return self.progress.step

    # ----------------------------------------------------------------------------- helpers
    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce / reduce-scatter on all but the last accumulation step."""
        if sync or not self.dist.enabled:
            if self.sharded:
                self.model.set_requires_gradient_sync(True)  # type: ignore[operator]
            return contextlib.nullcontext()
        if self.sharded:
            self.model.set_requires_gradient_sync(False)  # type: ignore[operator]
            return contextlib.nullcontext()
        return self.train_model.no_sync()  # type: ignore[operator]

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.precision, self.device)

    def _progress(self) -> float:
        p = self.progress.step / self.cfg.max_steps
        if self.cfg.max_time:
            p = max(p, self.progress.elapsed / self.cfg.max_time)
        return p

    def _finished(self) -> bool:
        return self.progress.step >= self.cfg.max_steps or bool(self.cfg.max_time and self.progress.elapsed >= self.cfg.max_time)

    # ----------------------------------------------------------------------------- one step
    def train_step(self) -> float | None:
        """One optimizer step over the global batch; returns the mean loss (None if skipped)."""
        cfg = self.cfg
        if self.progress.decay_start is None and self.progress.step >= cfg.warmup_steps:
            self.progress.decay_start = self._progress()
        lr = scheduled_lr(cfg, self.progress.step, self._progress(), self.progress.plateau_scale, self.progress.decay_start or 0.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.train_model.train()
        x, y, reset = self.batches.batch(self.progress.step)
        if reset or not self.sequential:
            self.rnn_state = None
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        rows = x.shape[0]
        micro = rows // cfg.grad_accum
        new_states: list[RNNState] = []
        total = torch.zeros((), device=self.device)
        for m in range(cfg.grad_accum):
            sl = slice(m * micro, (m + 1) * micro)
            state = None
            if self.rnn_state is not None:
                state = self.rnn_state.select(torch.arange(sl.start, sl.stop, device=self.device))
            sync = m == cfg.grad_accum - 1 or not self.dist.enabled
            with self._gradient_sync(sync):
                with self._autocast():
                    logits, new_state = self.train_model(x[sl], state, use_cache=False)
                loss = mean_nll(logits, y[sl]) / cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
            if self.sequential and isinstance(new_state, RNNState):
                new_states.append(new_state.detach())
        if new_states:
            self.rnn_state = RNNState.concat(new_states)
        if self.dist.enabled:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        loss_value = float(total)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if isinstance(grad_norm, DTensor):  # FSDP: the norm of the whole (sharded) gradient
            grad_norm = grad_norm.full_tensor()
        bad = not math.isfinite(loss_value) or not bool(torch.isfinite(grad_norm))
        if bad and self.precision != "fp16":
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            if cfg.on_nan == "stop":
                raise TrainingError(
                    f"non-finite {what} at step {self.progress.step + 1} (loss={loss_value}); stopped without saving. "
                    "Lower train.lr, raise train.grad_clip, or set train.on_nan='skip'"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.progress.skipped += 1
            self.rnn_state = None
            self.progress.step += 1
            log.warning("skipped step %d: non-finite %s (%d skipped so far)", self.progress.step, what, self.progress.skipped)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.tokens_seen += cfg.batch_size * x.shape[1]
        self.last_lr = lr
        return loss_value

    # ----------------------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(self, tokens: np.ndarray, max_batches: int = 0) -> float:
        """Mean NLL per token over ``tokens`` (state carried for RNNs)."""
        self.model.eval()
        batches = eval_batches(tokens, min(self.cfg.batch_size, 32), self.cfg.seq_len)
        n = batches.steps_per_epoch if not max_batches else min(max_batches, batches.steps_per_epoch)
        total, count, state = 0.0, 0, None
        for i in range(n):
            x, y, _ = batches.batch(i)
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                logits, state = self.model(x, state if self.is_rnn else None, use_cache=False)
            total += float(token_nll(logits, y).sum())
            count += y.numel()
        return total / max(count, 1)

    # ----------------------------------------------------------------------------- checkpoints
    def _training_meta(self) -> dict[str, Any]:
        return {
            "step": self.progress.step,
            "tokens_seen": self.progress.tokens_seen,
            "elapsed_s": round(self.progress.elapsed, 2),
            "best_val_loss": self.progress.best_val,
            "val_loss": self.progress.last_val,
            "precision": self.precision,
            "run": run_to_dict(self.run),
        }

    def save(self) -> Path | None:
        """Write a resumable checkpoint, repoint ``latest``, and drop older step checkpoints.

        The optimizer state is stored keyed by parameter name and unsharded, so a run resumes on
        any world size, with or without FSDP. Every rank calls this (gathers are collective).
        """
        rnn = gathered_rnn_state(self.rnn_state, self.dist)
        weights = full_model_state(self.model) if self.sharded else None
        optimizer_state = full_optimizer_state(self.model, self.optimizer)
        if not self.dist.is_main:
            return None
        trainer_state: dict[str, Any] = {
            **self.progress.to_state(),
            "world_size": self.dist.world_size,
            "optimizer": optimizer_state,
            "scaler": self.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            trainer_state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if rnn is not None:
            trainer_state["rnn_state"] = rnn
        name = f"step-{self.progress.step:08d}"
        try:
            path = save_checkpoint(self.run_dir / name, self.model, self.tokenizer, training=self._training_meta(),
                                   trainer_state=trainer_state, state_dict=weights, context=self.context)
            write_atomic(self.run_dir / LATEST_FILE, name + "\n")
        except OSError as exc:
            previous = (self.run_dir / LATEST_FILE).read_text().strip() if (self.run_dir / LATEST_FILE).is_file() else None
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            raise TrainingError(
                f"could not save the checkpoint for step {self.progress.step} to {self.run_dir / name}: "
                f"{exc.strerror or exc}; {kept}"
            ) from None
        for old in self.run_dir.glob("step-*"):
            if old.name != name and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return path

    def _load_resume_state(self) -> None:
        latest = self.run_dir / LATEST_FILE
        if not latest.is_file():
            raise CheckpointError(f"{self.run_dir}: nothing to resume (no {LATEST_FILE} pointer)")
        directory = self.run_dir / latest.read_text().strip()
        self._load_weights(directory)
        st = load_trainer_state(directory)
        saved = st["optimizer"]
        for group, mine in zip(saved["param_groups"], self.optimizer.param_groups, strict=True):
            # the kernel choice is this run's (sharded parameters cannot use fused), before loading
            group.update({k: mine[k] for k in ("fused", "foreach") if k in mine})
        if all(isinstance(i, int) for g in saved["param_groups"] for i in g["params"]):
            # written before optimizer states were keyed by parameter name
            if self.sharded:
                raise TrainingError(f"{directory}: this checkpoint's optimizer state predates FSDP support; "
                                    "resume it once without train.fsdp, then with it")
            self.optimizer.load_state_dict(saved)
        else:
            load_full_optimizer_state(self.model, self.optimizer, saved)
        self.scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["rng_torch"])
        if "rng_cuda" in st and self.device.type == "cuda":
            torch.cuda.set_rng_state(st["rng_cuda"], self.device)
        self.progress = TrainProgress.from_state(st, warmup_steps=self.cfg.warmup_steps,
                                                 max_steps=self.cfg.max_steps)
        if "rnn_state" in st:
            per = self.cfg.batch_size // self.dist.world_size
            rows = torch.arange(self.dist.rank * per, (self.dist.rank + 1) * per)
            h = st["rnn_state"]["h"]
            c = st["rnn_state"].get("c")
            self.rnn_state = RNNState(h.to(self.device), None if c is None else c.to(self.device)).select(rows.to(self.device))
        log.info("resumed %s at step %d", directory, self.progress.step)

    def _load_weights(self, directory: Path) -> None:
        """Load a checkpoint's weights into the (possibly sharded) training model."""
        path = str(directory / "model.safetensors")
        if not self.sharded:
            load_model(self.model, path, strict=True)
            return
        full = build_model(self.model_config)  # resolves tied weights, then shards into place
        load_model(full, path, strict=True)
        load_full_model_state(self.model, full.state_dict())

    # ----------------------------------------------------------------------------- metrics
    def _open_metrics(self):  # noqa: ANN202
        path = self.run_dir / METRICS_FILE
        if self.resume and path.is_file():  # drop records past the resumed step
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= self.progress.step]
            path.write_text("".join(k + "\n" for k in kept))
        elif not self.resume and path.exists():
            path.unlink()
        return open(path, "a", encoding="utf-8")

    # ----------------------------------------------------------------------------- the loop
    def fit(self, until_step: int | None = None) -> TrainResult:
        """Train to the end of the schedule, or pause at ``until_step`` (checkpoint saved, resumable)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        main = self.dist.is_main
        metrics = self._open_metrics() if main else None
        history: list[dict[str, Any]] = []

        def record(rec: dict[str, Any]) -> None:
            history.append(rec)
            if metrics is not None:
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()

        bar = tqdm(total=cfg.max_steps, initial=self.progress.step, disable=not (main and cfg.progress),
                   dynamic_ncols=True, desc="train")
        interrupted: str | None = None
        window_tokens, window_start = 0, time.perf_counter()
        losses: list[float] = []
        try:
            with _StopFlag() as stop:
                while not self._finished():
                    t0 = time.perf_counter()
                    loss = self.train_step()
                    self.progress.elapsed += time.perf_counter() - t0
                    bar.update(1)
                    if loss is not None:
                        losses.append(loss)
                        window_tokens += cfg.batch_size * cfg.seq_len
                    if self.progress.step % cfg.log_every == 0 and losses:
                        now = time.perf_counter()
                        tps = window_tokens / max(now - window_start, 1e-9)
                        mean = sum(losses) / len(losses)
                        record({"step": self.progress.step, "loss": round(mean, 5), "lr": self.last_lr,
                                "tokens_per_s": round(tps, 1), "elapsed_s": round(self.progress.elapsed, 2)})
                        if cfg.max_time:  # the run ends at whichever limit comes first: size the bar to it
                            bar.total = max(self.progress.step, round(self.progress.step / max(self._progress(), 1e-9)))
                        bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 50)):.1f}",
                                        lr=f"{self.last_lr:.2e}", tok_s=f"{tps:,.0f}")
                        losses, window_tokens, window_start = [], 0, now
                    stop_now, self.progress.elapsed = agree_stop(self.dist, self.device, stop.signum is not None,
                                                                 self.progress.elapsed)
                    paused = until_step is not None and self.progress.step >= until_step
                    done = self._finished()
                    evaluated = False
                    if (self.progress.step % cfg.eval_every == 0 and not stop_now) or done:
                        evaluated = True
                        if self._eval_and_track(record):
                            log.info("early stopping at step %d (patience %d)", self.progress.step, cfg.patience)
                            done = True
                    periodic = self.progress.step % cfg.save_every == 0 if cfg.save_every else evaluated
                    if done or stop_now or periodic or paused:
                        self.save()
                    if paused and not done:
                        interrupted = "paused"
                        break
                    if stop_now:
                        interrupted = signal.Signals(stop.signum or signal.SIGTERM).name
                        break
                    if done:
                        break
        finally:
            bar.close()
        test_loss = None
        if interrupted is None and self.test_tokens is not None and (main or self.sharded):
            best_dir = self.run_dir / "best"  # every rank reads it: sharded models load collectively
            has_best = best_dir.is_dir()
            if agree(self.dist, self.device, float(has_best)) if self.sharded else has_best:
                self._load_weights(best_dir)
            test_loss = self.evaluate(self.test_tokens)
            record({"step": self.progress.step, "test_loss": round(test_loss, 5), "test_ppl": round(math.exp(test_loss), 3)})
        if metrics is not None:
            metrics.close()
            if interrupted is None:
                write_loss_plot(self.run_dir)
        return TrainResult(self.run_dir, self.progress.step, self.progress.tokens_seen, self.progress.elapsed, self.progress.best_val, self.progress.last_val,
                           test_loss, self.progress.skipped, interrupted, history)

    def _eval_and_track(self, record) -> bool:  # noqa: ANN001
        """Evaluate, keep the best weights, adjust the plateau lr; True means stop early."""
        t0 = time.perf_counter()
        val = agree(self.dist, self.device, self.evaluate(self.valid_tokens, self.cfg.eval_batches))
        self.progress.last_val = val
        improved = val < self.progress.best_val
        if improved:
            self.progress.best_val = val
            self.progress.evals_since_best = 0
            weights = full_model_state(self.model) if self.sharded else None
            if self.dist.is_main:
                try:
                    save_checkpoint(self.run_dir / "best", self.model, self.tokenizer, training=self._training_meta(),
                                    state_dict=weights, context=self.context)
                except OSError as exc:
                    raise TrainingError(
                        f"could not save the best checkpoint at step {self.progress.step} to {self.run_dir / 'best'}: "
                        f"{exc.strerror or exc}; the previous best/ is intact"
                    ) from None
        else:
            self.progress.evals_since_best += 1
            if self.cfg.schedule == "plateau" and self.progress.step >= self.cfg.warmup_steps:
                self.progress.plateau_scale /= self.cfg.plateau_factor
        record({"step": self.progress.step, "val_loss": round(val, 5), "val_ppl": round(math.exp(min(val, 50)), 3),
                "best_val_loss": round(self.progress.best_val, 5), "eval_s": round(time.perf_counter() - t0, 2)})
        log.info("step %d: val loss %.4f (ppl %.2f)%s", self.progress.step, val, math.exp(min(val, 50)), " *" if improved else "")
        return bool(self.cfg.patience and self.progress.evals_since_best >= self.cfg.patience)


def train(run: RunConfig, *, resume: bool = False) -> TrainResult:
    """Train (or resume) the run that ``run`` describes."""
    from lm.training.distributed import shutdown_distributed

    try:
        return Trainer(run, resume=resume).fit()
    finally:
        shutdown_distributed()
