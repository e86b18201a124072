"""Samples while training: at each evaluation, what the model writes from one fixed prompt.

A loss curve says the model improves; a line of its text says how (spelling, then words, then
names and line breaks). At every evaluation the trainer continues the run's example prompt (a
line of held-out text, the playground's too) twice -- greedily and with one seeded sample at the
example's settings -- and writes both to the log and to ``metrics.jsonl``. The prompt and seed
are fixed for the run, so successive samples differ only by what the model learned.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lm.context import TextContext
from lm.decoding.generate import generate
from lm.decoding.params import GenerationParams
from lm.example import SAMPLING
from tokenizer import Tokenizer

log = logging.getLogger(__name__)

NEW_TOKENS = {"char": 120, "bpe": 40, "unigram": 40, "word": 24}
"""Tokens per sample, by tokenizer kind: a line or two of text."""
SEED = 1234


def write_samples(model: nn.Module, tokenizer: Tokenizer, context: TextContext, prompt: str,
                  device: torch.device) -> dict[str, str]:
    """``{"sample_prompt", "sample_greedy", "sample"}``: the greedy and the seeded continuation
    of ``prompt``. The model is left in eval mode (the training step puts it back in train)."""
    model.eval()
    n = NEW_TOKENS.get(tokenizer.kind, 40)
    greedy = GenerationParams(max_new_tokens=n)
    sampled = GenerationParams(max_new_tokens=n, seed=SEED, **SAMPLING)
    try:
        [[g]], [[s]] = (generate(model, tokenizer, [prompt], p, device=device, context=context) for p in (greedy, sampled))
    except Exception as exc:  # a sample is for reading; it never stops the run
        log.warning("no sample this evaluation: %s", exc)
        return {}
    return {"sample_prompt": prompt, "sample_greedy": g.text, "sample": s.text}
