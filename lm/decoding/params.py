"""What a generation request asks for (``GenerationParams``) and what it gets (``Completion``,
and step by step ``TokenEvent``/``FinishEvent``).

One flat, validated parameter object with OpenAI-style names (after vLLM's ``SamplingParams``):
every range is checked when the object is built, and a bad value raises ``ParamError`` naming
the field, what is allowed and what was given, so the CLI and the HTTP service can pass the
message straight to the user. ``lm.decoding.generate`` and ``lm.decoding.engine`` re-export these names; they live
here so the engine, beam search and ``generate()`` share them without an import cycle.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

STRATEGIES = ("greedy", "sample", "beam")
Alternatives = tuple[tuple[int, float], ...]
"""The most likely tokens at one position: ``(token id, log-probability)``, most likely first."""
MAX_TOP_LOGPROBS = 20
"""The most alternatives a request may ask for per position (OpenAI's chat limit)."""
FINISH_REASONS = ("length", "stop", "eos", "banned")
"""Why a sequence ended: ``max_new_tokens``, a stop string, ``<eos>``, or no token left to choose
(``no_repeat_ngram_size`` had banned every token of the vocabulary)."""


class ParamError(ValueError):
    """An invalid generation parameter; ``field`` names it (the service maps this to a 4xx)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(name, f"{name} must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ParamError(name, f"{name} must be >= {low}, got {value}")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamError(name, f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """How to continue a prompt.

    ``greedy`` takes the most likely token; ``sample`` draws from the distribution shaped by
    ``temperature`` (0 means greedy), ``top_k``, ``top_p`` and ``min_p``; ``beam`` keeps
    ``num_beams`` hypotheses ranked by log-probability / length ** ``length_penalty``.
    ``repetition_penalty``, ``no_repeat_ngram_size``, ``logit_bias`` (token id -> a number in
    [-100, 100] added to its logit, OpenAI's semantics) and ``suppress_tokens`` (ids never
    chosen) apply to every strategy. ``top_logprobs`` asks for the most likely tokens and their
    log-probabilities at every generated position (``TokenEvent.top``). ``seed`` makes a
    sampled request reproducible whatever else is decoded with it. Generation ends at
    ``max_new_tokens``, at ``<eos>`` (if ``stop_at_eos``) or when the text contains one of
    ``stop`` (which is cut off and not returned).
    """

    strategy: str = "greedy"
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool = True
    num_return_sequences: int = 1
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = ()
    stop_at_eos: bool = True
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs; a mapping is accepted and stored sorted."""
    suppress_tokens: tuple[int, ...] = ()
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ParamError("strategy", f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        _int("max_new_tokens", self.max_new_tokens, 0)
        if _number("temperature", self.temperature) < 0:
            raise ParamError("temperature", f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        _int("top_k", self.top_k, 0)
        if not 0 < _number("top_p", self.top_p) <= 1:
            raise ParamError("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= _number("min_p", self.min_p) < 1:
            raise ParamError("min_p", f"min_p must be in [0, 1), got {self.min_p}")
        if _number("repetition_penalty", self.repetition_penalty) <= 0:
            raise ParamError("repetition_penalty", f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ParamError("seed", f"seed must be an integer or None, got {self.seed!r}")
        _int("num_beams", self.num_beams, 1)
        _number("length_penalty", self.length_penalty)
        if not isinstance(self.early_stopping, bool):
            raise ParamError("early_stopping", f"early_stopping must be true or false, got {self.early_stopping!r}")
        _int("num_return_sequences", self.num_return_sequences, 1)
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise ParamError(
                "num_return_sequences",
                f"num_return_sequences must be <= num_beams ({self.num_beams}) for beam search, "
                f"got {self.num_return_sequences}",
            )
        _int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, tuple | list) or not all(isinstance(s, str) and s for s in stop):
            raise ParamError("stop", f"stop must be a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))  # accept a str or a list, store a tuple
        if not isinstance(self.stop_at_eos, bool):
            raise ParamError("stop_at_eos", f"stop_at_eos must be true or false, got {self.stop_at_eos!r}")
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        pairs = []
        for pair in bias:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ParamError("logit_bias", f"logit_bias must map token ids to numbers, got {self.logit_bias!r}")
            token, value = pair
            _int("logit_bias", token, 0)
            if not -100 <= _number("logit_bias", value) <= 100:
                raise ParamError("logit_bias", f"logit_bias values must be in [-100, 100], got {value} for {token}")
            pairs.append((int(token), float(value)))
        if len({t for t, _ in pairs}) != len(pairs):
            raise ParamError("logit_bias", "logit_bias names a token id twice")
        object.__setattr__(self, "logit_bias", tuple(sorted(pairs)))
        if not isinstance(self.suppress_tokens, tuple | list):
            raise ParamError("suppress_tokens", f"suppress_tokens must be a list of token ids, got {self.suppress_tokens!r}")
        for token in self.suppress_tokens:
            _int("suppress_tokens", token, 0)
        object.__setattr__(self, "suppress_tokens", tuple(sorted({int(t) for t in self.suppress_tokens})))
        _int("top_logprobs", self.top_logprobs, 0)
        if self.top_logprobs > MAX_TOP_LOGPROBS:
            raise ParamError("top_logprobs", f"top_logprobs must be <= {MAX_TOP_LOGPROBS}, got {self.top_logprobs}")

    @property
    def constrains(self) -> bool:
        """Whether any constraint (penalty, bias, suppression, n-gram ban) changes the logits."""
        return (self.repetition_penalty != 1.0 or bool(self.no_repeat_ngram_size) or bool(self.logit_bias)
                or bool(self.suppress_tokens))

    def check_vocab(self, vocab_size: int) -> None:
        """Every token id the parameters name is below ``vocab_size`` (else a ``ParamError``
        naming the field): checked where a model is known, by the engine and, before a stream
        starts, by the server."""
        named = [("logit_bias", t) for t, _ in self.logit_bias] + [("suppress_tokens", t) for t in self.suppress_tokens]
        for name, token in named:
            if token >= vocab_size:
                raise ParamError(name, f"{name} names token id {token}, outside the vocabulary [0, {vocab_size})")

    @property
    def rows(self) -> int:
        """Batch rows this request occupies while it decodes."""
        return self.num_beams if self.strategy == "beam" else self.num_return_sequences

    @property
    def samples(self) -> bool:
        """Whether tokens are drawn at random (``sample`` with a positive temperature)."""
        return self.strategy == "sample" and self.temperature > 0


@dataclass
class Completion:
    """One generated continuation.

    ``token_ids`` and ``logprobs`` include the token that ended generation (``<eos>``, or the
    tokens that completed a stop string) although ``text`` does not, as in vLLM and OpenAI:
    ``cumulative_logprob == sum(logprobs)``. Log-probabilities are under the model's
    distribution after ``repetition_penalty``/``no_repeat_ngram_size`` and before the sampling
    shapers (temperature, top-k, top-p, min-p), so strategies report comparable numbers. Beam
    search ranks its results by ``cumulative_logprob / len(token_ids) ** length_penalty``.
    With ``top_logprobs: k``, ``top_logprobs[i]`` holds the ``k`` most likely ``(token id,
    log-probability)`` at position ``i`` under that same distribution, most likely first.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    cumulative_logprob: float
    finish_reason: str
    prompt_tokens: int
    top_logprobs: list[Alternatives] = field(default_factory=list)


@dataclass
class TokenEvent:
    """Row ``index`` of request ``request_id`` produced ``token_id``; ``text`` is the new text
    that is safe to show (whole UTF-8 characters, never part of a stop string; may be "")."""

    request_id: Hashable
    index: int
    text: str
    token_id: int
    logprob: float
    top: Alternatives = ()
    """With ``top_logprobs``: the most likely ``(token id, log-probability)`` at this position."""


@dataclass
class FinishEvent:
    """Row ``index`` of request ``request_id`` is done. For beam search, one per returned
    hypothesis, best first. ``text`` is text held back until the end that no ``TokenEvent``
    carried (a row that ended with no token left to choose): the ``TokenEvent`` deltas plus
    ``text`` are exactly ``completion.text``."""

    request_id: Hashable
    index: int
    completion: Completion
    text: str = ""


@dataclass
class DoneEvent:
    """Request ``request_id`` is complete: every one of its ``num_return_sequences``
    ``FinishEvent``s came before this, and it holds no rows any more."""

    request_id: Hashable


Event = TokenEvent | FinishEvent | DoneEvent
