"""Tokenizer + model + device: text in, text out. What the CLI and the HTTP service call."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lm.chat_template import ChatTemplate
from lm.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    load_checkpoint,
    read_chat_template,
    read_context,
    read_example,
    resolve_checkpoint_dir,
)
from lm.config import ModelConfig
from lm.context import TextContext
from lm.decoding.engine import DecodeSession
from lm.decoding.generate import generate
from lm.decoding.params import Completion, Event, GenerationParams, ParamError
from lm.dtypes import torch_dtype
from lm.example import Example
from lm.inference import prepare_for_inference
from lm.models import model_device
from lm.quantize import is_int8, quantize_int8
from lm.score import ScoreJob, ScoreResult, score_results, score_texts

log = logging.getLogger(__name__)


class Pipeline:
    """A loaded checkpoint ready to generate and score.

    The pipeline works on its own copy of ``model`` (prepared for inference: eval mode, packed
    weights), so the caller's model is left as it was -- still trainable and savable -- unless
    ``owned`` says the pipeline may take it over (a model it loaded itself).
    """

    def __init__(self, model: nn.Module, tokenizer, config: ModelConfig, *, name: str = "model",
                 device: torch.device | None = None, context: TextContext | None = None,
                 owned: bool = False, example: Example | None = None,
                 chat_template: ChatTemplate | None = None) -> None:
        self.name = name
        self.model = prepare_for_inference(model, in_place=owned)
        self.tokenizer = tokenizer
        self.config = config
        self.context = context or TextContext.derive(tokenizer, getattr(model, "max_context", None))
        """What texts start from and the context length to use (``lm.context``)."""
        self.example = example
        """The prompt and settings that show the model at its best (``lm.example``), if known."""
        self.chat_template = chat_template or ChatTemplate()
        """How a chat's messages become a prompt (``lm.chat_template``)."""
        self.device = device if device is not None else model_device(model)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, device: str | torch.device | None = None,
                        name: str | None = None, dtype: torch.dtype | str | None = None) -> Pipeline:
        """Load a checkpoint (or a run directory's best/latest one) onto ``device`` (default:
        cuda, else mps, else cpu), optionally cast to ``dtype`` (``torch.bfloat16``, or a name of
        ``lm.dtypes`` as the CLI and the server settings give it)."""
        int8 = dtype == "int8"
        if isinstance(dtype, str):
            dtype = None if int8 else torch_dtype(dtype)
        directory = resolve_checkpoint_dir(path)
        model, tokenizer, config = load_checkpoint(directory, device=device, dtype=dtype)
        if int8 and not is_int8(model):
            model = quantize_int8(model)
        int8 = is_int8(model)  # asked for, or stored so (lmforge export --dtype int8)
        context = read_context(directory, tokenizer)
        name = name or Path(path).resolve().name
        log.info("loaded %s (%s, %s) from %s", name, config.family, "int8" if int8 else dtype or torch.float32,
                 directory)
        example = read_example(directory)
        if example is not None:
            try:
                GenerationParams(**example.params)
            except (ParamError, TypeError) as exc:
                raise CheckpointError(f"{directory / CONFIG_FILE}: example params: {exc}") from None
        return cls(model, tokenizer, config, name=name, context=context, owned=True, example=example,
                   chat_template=read_chat_template(directory))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[list[Completion]]:
        """Completions for each prompt (see ``lm.decoding.generate.generate``)."""
        return generate(self.model, self.tokenizer, prompts, params, device=self.device, context=self.context)

    def stream(self, prompt: str, params: GenerationParams) -> Iterator[Event]:
        """Events as they happen: a ``TokenEvent`` per token (its ``text`` deltas concatenate to
        the completion's text), then a ``FinishEvent`` per sequence (beam search: only those)."""
        session = self.session(max(1, params.rows))
        session.add(0, self.encode(prompt), params)
        while session.active:
            yield from session.step()

    def score(self, texts: list[str], *, stride: int | None = None, token_logprobs: bool = False) -> list[ScoreResult]:
        """Perplexity and friends per text (see ``lm.score``)."""
        return score_texts(self.model, self.tokenizer, texts, context=self.context, stride=stride,
                           token_logprobs=token_logprobs, device=self.device)

    def score_job(self, texts: list[str], *, stride: int | None = None, top: int = 0) -> ScoreJob:
        """The scoring of ``texts`` as a step-wise job (the server interleaves it with decoding);
        ``score_results(texts, job.result())`` gives what ``score`` returns. ``top``: keep each
        position's most likely tokens too."""
        return ScoreJob(self.model, [self.encode(t) for t in texts], context=self.context, stride=stride,
                        device=self.device, top=top)

    @staticmethod
    def score_results(texts: list[str], job: ScoreJob, *, token_logprobs: bool = False) -> list[ScoreResult]:
        return score_results(texts, job.result(), token_logprobs=token_logprobs,
                             tops=job.top_result() if job.top else None)

    def session(self, max_batch_rows: int = 64) -> DecodeSession:
        """A fresh step-wise decoder over this model (the server's continuous batching)."""
        return DecodeSession(self.model, self.tokenizer, context=self.context, device=self.device,
                             max_batch_rows=max_batch_rows)
