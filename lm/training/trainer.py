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
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from lm.checkpoint import latest_checkpoint, load_trainer_state
from lm.config import ConfigError, RunConfig, TrainConfig
from lm.context import TextContext, trained_length
from lm.devices import resolve_device
from lm.example import from_stream
from lm.losses import mean_nll
from lm.models import RNNLM, RNNState, build_model
from lm.threads import ThreadGovernor
from lm.training import finetune
from lm.training.averaging import WeightAverage
from lm.training.data import load_splits, make_batches, prepare_tokenizer, resolve_corpus
from lm.training.distributed import (
    DistInfo,
    agree,
    agree_stop,
    full_model_state,
    full_optimizer_state,
    gathered_rnn_state,
    gradient_sync,
    init_distributed,
    shutdown_distributed,
    wrap_for_training,
)
from lm.training.errors import TrainingError
from lm.training.evaluation import mean_loss
from lm.training.optim import build_optimizer, scheduled_lr
from lm.training.precision import autocast_context, resolve_precision
from lm.training.progress import ProgressLine
from lm.training.resume import (
    RunCheckpoint,
    load_weights,
    rank_rnn_state,
    restore_optimizer,
    restore_rng,
    rng_state,
)
from lm.training.rundir import (
    RUN_CONFIG_FILE,
    check_tokenizer_unchanged,
    load_run_dir_config,
    open_metrics,
    recover_run_dir,
    run_to_dict,
    write_loss_plot,
)
from lm.training.samples import write_samples
from lm.training.stopflag import StopFlag
from lm.training.trainstate import TrainProgress, TrainResult
from tokenizer import load_tokenizer

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainResult", "TrainingError", "load_run_dir_config", "train", "write_loss_plot"]

class Trainer:
    """One training run; ``fit()`` trains until max_steps, max_time, patience or a signal."""

    def __init__(self, run: RunConfig, *, resume: bool = False) -> None:
        self.init_from, self.fallback = None, None  # fine-tuning: the source checkpoint, the corpus share it lacked
        if run.train.init_from and not resume:
            run, self.init_from = finetune.resolve(run)
        self.run = run
        self.cfg: TrainConfig = run.train
        self.run_dir = Path(self.cfg.out_dir)
        self.device = resolve_device(self.cfg.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.threads = ThreadGovernor(self.cfg.threads, share=self.dist.local_world_size)  # free cores
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
        self.train_tokens, self.valid_tokens, self.test_tokens = load_splits(
            run.data, files, self.tokenizer, self.run_dir, self.context.start,
            is_main=self.dist.is_main, barrier=self._barrier,
        )
        self.example = from_stream(self.tokenizer, self.valid_tokens)  # the playground's first prompt
        if self.init_from is not None and self.dist.is_main:
            self.fallback = finetune.report_fallback(self.tokenizer, self.train_tokens)

        torch.manual_seed(self.cfg.seed)
        self.model = build_model(self.model_config).to(self.device)
        if self.init_from is not None:
            finetune.start(self.model, self.init_from)
        self.is_rnn = isinstance(self.model, RNNLM)
        self.sequential, self.batches = make_batches(self.train_tokens, run.data.batching, self.cfg, is_rnn=self.is_rnn,
                                                     max_context=self.model_config.max_context, dist=self.dist)
        self.sharded, self.train_model = wrap_for_training(self.model, self.cfg.fsdp, self.precision,
                                                           self.dist, self.device)
        self.optimizer = build_optimizer(self.model, self.cfg, fused=not self.sharded)
        self.average = WeightAverage(self.model, self.cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if self.cfg.compile:
            self.train_model = torch.compile(self.train_model)

        self.checkpoints = RunCheckpoint(self.run_dir, self.model, self.tokenizer, self.context, self.example,
                                         finetune.chat_template(self.init_from, self.run_dir if resume else None))
        self.progress = TrainProgress()
        self.rnn_state: RNNState | None = None
        if resume:
            self._load_resume_state()
            if self._finished():
                budget, more = self.progress.spent(self.cfg.max_steps, self.cfg.max_time)
                raise ConfigError(f"nothing to resume: {self.run_dir} already finished its budget ({budget}); "
                                  f"to train further: lmforge train --resume {self.run_dir} --set {more}")

    @property
    def step(self) -> int:
        """Optimizer steps taken (``progress.step``)."""
        return self.progress.step

    # ----------------------------------------------------------------------------- helpers
    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        return gradient_sync(self.model, self.train_model, self.dist, self.sharded, sync)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.precision, self.device)

    def _progress(self) -> float:
        return self.progress.fraction(self.cfg.max_steps, self.cfg.max_time)

    def _finished(self) -> bool:
        return self.progress.finished(self.cfg.max_steps, self.cfg.max_time)

    # ----------------------------------------------------------------------------- one step
    def train_step(self) -> float | None:
        """One optimizer step over the global batch; returns the mean loss (None if skipped)."""
        cfg = self.cfg
        if self.progress.decay_start is None and self.progress.step >= cfg.warmup_steps:
            self.progress.decay_start = self._progress()
        lr = scheduled_lr(cfg, self.progress.step, self._progress(), self.progress.plateau_scale, self.progress.decay_start or 0.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr = lr
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
        self.average.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.tokens_seen += cfg.batch_size * x.shape[1]
        return loss_value

    # ----------------------------------------------------------------------------- evaluation
    def evaluate(self, tokens: np.ndarray, max_batches: int = 0, model: torch.nn.Module | None = None) -> float:
        """Mean NLL per token over ``tokens`` (state carried for RNNs) of ``model``, by default
        the evaluated weights (the average, when ``lm.training.averaging`` keeps one)."""
        model = self.average.model_for_eval() if model is None else model
        return mean_loss(model, tokens, batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len, device=self.device,
                         autocast=self._autocast, carry_state=self.is_rnn, max_batches=max_batches,
                         progress=self.dist.is_main and self.cfg.progress)

    # ----------------------------------------------------------------------------- checkpoints
    def _training_meta(self) -> dict[str, Any]:
        extra = {} if self.fallback is None else {"fallback_fraction": round(self.fallback, 6)}
        return self.progress.meta(precision=self.precision, run=run_to_dict(self.run), **extra)

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
            **rng_state(self.device),
        }
        if rnn is not None:
            trainer_state["rnn_state"] = rnn
        if (average := self.average.to_state()) is not None:
            trainer_state["average"] = average
        return self.checkpoints.write_step(self.progress.step, training=self._training_meta(), weights=weights,
                                           trainer_state=trainer_state)

    def _load_resume_state(self) -> None:
        directory = latest_checkpoint(self.run_dir)
        load_weights(self.model, self.model_config, directory, sharded=self.sharded)
        st = load_trainer_state(directory)
        restore_optimizer(self.optimizer, self.model, st["optimizer"], sharded=self.sharded, directory=directory)
        self.scaler.load_state_dict(st["scaler"])
        restore_rng(st, self.device)
        self.progress = TrainProgress.from_state(st, warmup_steps=self.cfg.warmup_steps,
                                                 max_steps=self.cfg.max_steps)
        if "rnn_state" in st:
            self.rnn_state = rank_rnn_state(st["rnn_state"], self.cfg.batch_size, self.dist, self.device)
        self.average.load_state(st.get("average"))
        log.info("resumed %s at step %d", directory, self.progress.step)

    # ----------------------------------------------------------------------------- the loop
    def fit(self, until_step: int | None = None) -> TrainResult:
        """Train to the end of the schedule, or pause at ``until_step`` (checkpoint saved, resumable)."""
        cfg = self.cfg
        main = self.dist.is_main
        metrics = open_metrics(self.run_dir, self.resume, self.progress.step) if main else None
        history: list[dict[str, Any]] = []

        def record(rec: dict[str, Any]) -> None:
            history.append(rec)
            if metrics is not None:
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()

        line = ProgressLine(max_steps=cfg.max_steps, start_step=self.progress.step, max_time=cfg.max_time,
                            threads=self.threads.threads, enabled=main and cfg.progress)
        interrupted: str | None = None
        try:
            with StopFlag() as stop:
                while not self._finished():
                    line.threads = self.threads.poll()
                    t0 = time.perf_counter()
                    loss = self.train_step()
                    self.progress.elapsed += time.perf_counter() - t0
                    line.step(self.progress.step, loss, cfg.batch_size * cfg.seq_len, self.progress.elapsed)
                    if self.progress.step % cfg.log_every == 0:
                        rec = line.report(self.progress.step, self.last_lr, self.progress.elapsed)
                        if rec is not None:
                            record(rec)
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
            line.close()
        test_loss = None
        if interrupted is None and self.test_tokens is not None and (main or self.sharded):
            best_dir = self.run_dir / "best"  # every rank reads it: sharded models load collectively
            has_best = best_dir.is_dir()
            if agree(self.dist, self.device, float(has_best)) if self.sharded else has_best:
                load_weights(self.model, self.model_config, best_dir, sharded=self.sharded)
            test_loss = self.evaluate(self.test_tokens, model=self.model)
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
            weights = full_model_state(self.model) if self.sharded else self.average.weights()
            if self.dist.is_main:
                self.checkpoints.write("best", self.progress.step, training=self._training_meta(), weights=weights)
        else:
            self.progress.evals_since_best += 1
            if self.cfg.schedule == "plateau" and self.progress.step >= self.cfg.warmup_steps:
                self.progress.plateau_scale /= self.cfg.plateau_factor
        rec = {"step": self.progress.step, "val_loss": round(val, 5), "val_ppl": round(math.exp(min(val, 50)), 3),
               "best_val_loss": round(self.progress.best_val, 5), "eval_s": round(time.perf_counter() - t0, 2)}
        log.info("step %d: val loss %.4f (ppl %.2f)%s", self.progress.step, val, math.exp(min(val, 50)), " *" if improved else "")
        if self.cfg.samples and self.dist.is_main and not self.sharded:  # a sharded model decodes only collectively
            rec |= write_samples(self.average.model_for_eval(), self.tokenizer, self.context, self.example.prompt, self.device)
            log.info("step %d sample: %r", self.progress.step, rec.get("sample_prompt", "") + rec.get("sample", ""))
        if self.average.after_eval(self.progress.evals_since_best):
            log.info("step %d: averaging the weights from here on (train.optimizer = asgd)", self.progress.step)
        record(rec)
        return bool(self.cfg.patience and self.progress.evals_since_best >= self.cfg.patience)


def train(run: RunConfig, *, resume: bool = False) -> TrainResult:
    """Train (or resume) the run that ``run`` describes."""
    trainer, finished = None, False
    try:
        trainer = Trainer(run, resume=resume)
        result, finished = trainer.fit(), True
        return result
    finally:
        del trainer  # the model lets go of the process group before the group goes (see there)
        shutdown_distributed(wait=finished)
