"""A completions request resolved against its model (``Plan``), and its answers' pieces:
choices, OpenAI's logprobs blocks with ``top_logprobs``, and the echoed prompt's scores.
Shared by ``/v1/completions`` and ``/v1/chat/completions`` (``service.routes``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from lm.decoding.params import Completion, GenerationParams
from service.deps import resolve_model
from service.errors import APIError
from service.generation import (
    Prompt,
    build_params,
    check_decoding_limits,
    check_token_ids,
    count_limit,
    encode_prompts,
    logit_bias,
    prompt_token_texts,
    run_score,
    score_job,
    token_limit,
    token_texts,
    top_maps,
)
from service.registry import ModelRegistry, ServedModel
from service.schemas.common import finite
from service.schemas.completions import CompletionChoice, CompletionLogprobs, CompletionRequest
from service.settings import Settings

OPENAI_NAMES = {"max_new_tokens": "max_tokens", "num_return_sequences": "n", "num_beams": "best_of"}
MAX_STOP = 4
DEFAULT_BEAMS = GenerationParams().num_beams
"""The engine's default beam width: ``use_beam_search`` without ``best_of`` (at least ``n``), and
``/v1/generate``'s beam search without ``num_beams``, within the server's limits."""
DEFAULT_MAX_TOKENS = 16
"""OpenAI's ``max_tokens`` when a request leaves it out."""


@dataclass
class Plan:
    """A completions request resolved against one model."""

    served: ServedModel
    prompts: list[Prompt]
    params: GenerationParams
    n: int
    repeat: int
    """Copies of each decoded sequence (greedy with n > 1 decodes once)."""
    logprobs: int | None
    echo: bool
    prompt_logprobs: list[list[float | None]] = field(default_factory=list)
    prompt_pieces: list[list[str]] = field(default_factory=list)
    """Each prompt's token texts (for ``echo``): they join to the echoed text."""
    prompt_tops: list[list[dict[str, float] | None]] = field(default_factory=list)

    def echo_text(self, prompt_index: int) -> str:
        return "".join(self.prompt_pieces[prompt_index]) if self.echo else ""


def _prompts(body: CompletionRequest, served: ServedModel, settings: Settings, field: str) -> list[Prompt]:
    p = body.prompt
    if isinstance(p, str):
        return encode_prompts(served, [p], settings, field, single=True)
    if not p:
        raise APIError(422, "prompt must not be an empty list", param="prompt", code="invalid_prompt")
    if isinstance(p[0], str):
        return encode_prompts(served, p, settings, "prompt", single=False)  # type: ignore[arg-type]
    id_lists = [p] if isinstance(p[0], int) else p
    count_limit(len(id_lists), settings, "prompt")
    prompts = []
    for i, ids in enumerate(id_lists):
        ids = list(ids)  # type: ignore[arg-type]
        token_limit(len(ids), settings.max_prompt_tokens, f"prompt[{i}]", "max_prompt_tokens")
        bad = [t for t in ids if not 0 <= t < served.vocab_size]
        if bad:
            raise APIError(422, f"prompt[{i}] has token id {bad[0]} outside [0, {served.vocab_size})",
                           param="prompt", code="invalid_prompt")
        prompts.append(Prompt(served.pipeline.tokenizer.decode(ids), ids))
    return prompts


def plan(body: CompletionRequest, request: Request, registry: ModelRegistry, settings: Settings, *,
         field: str = "prompt", logprobs: int | None = None, extra_stop: tuple[str, ...] = ()) -> Plan:
    """The request resolved against its model; errors about a string prompt name ``field`` (the
    chat route's prompt is its ``messages``, its ``top_logprobs`` count is ``logprobs`` and its
    template's stop strings are ``extra_stop``, beside the client's)."""
    if logprobs is None:
        logprobs = body.logprobs
    served = resolve_model(registry, body.model, settings)
    n = body.n or 1
    if body.best_of is not None and body.best_of != n and not body.use_beam_search:
        raise APIError(422, "best_of is only supported equal to n (or as the beam width with use_beam_search)",
                       param="best_of", code="unsupported")
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise APIError(422, f"stop takes up to {MAX_STOP} non-empty strings", param="stop", code="invalid_stop")
    if "max_tokens" not in body.model_fields_set:  # OpenAI's default, within this server's limit
        max_tokens = min(DEFAULT_MAX_TOKENS, settings.max_new_tokens)
    else:
        max_tokens = settings.max_new_tokens if body.max_tokens is None else body.max_tokens
    temperature = 1.0 if body.temperature is None else body.temperature
    greedy = temperature == 0 and not body.use_beam_search
    options: dict[str, Any] = {"max_new_tokens": max_tokens, "stop": (*extra_stop, *stop), "logit_bias": logit_bias(body.logit_bias),
                               "top_logprobs": logprobs or 0}
    if body.use_beam_search:
        width = max(n, min(DEFAULT_BEAMS, settings.beam_limit))
        options.update(strategy="beam", num_beams=body.best_of or width, num_return_sequences=n,
                       length_penalty=body.length_penalty, early_stopping=body.early_stopping)
    elif greedy:
        options["strategy"] = "greedy"
    else:
        options.update(strategy="sample", temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p,
                       seed=body.seed, num_return_sequences=n)
    check_decoding_limits(settings, {**options, "num_return_sequences": n}, names=OPENAI_NAMES)
    params = build_params(options, names=OPENAI_NAMES)
    check_token_ids(served, params)
    prompts = _prompts(body, served, settings, field)
    log = request.state.log
    log.update(model=served.name, strategy=params.strategy, prompts=len(prompts),
               prompt_tokens=sum(len(p.ids) for p in prompts))
    if settings.log_prompts:
        log["prompt"] = [p.text for p in prompts]
    out = Plan(served, prompts, params, n, n if greedy else 1, logprobs, bool(body.echo))
    if out.echo:
        out.prompt_pieces = [prompt_token_texts(served, p.ids) for p in prompts]
    return out


def finish_reason(c: Completion) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def logprobs_block(tokens: list[str], lps: list[float | None], start: int,
                   tops: list[dict[str, float] | None] | None) -> CompletionLogprobs:
    """OpenAI's logprobs object; ``start`` is the character offset of the first token."""
    offsets = []
    for t in tokens:
        offsets.append(start)
        start += len(t)
    return CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=tops, text_offset=offsets)


async def prompt_logprobs(plan: Plan, request: Request, settings: Settings, rid: str) -> None:
    """Log-probabilities of the prompt tokens, for ``echo`` with ``logprobs``, scored on the
    model's worker like ``/v1/perplexity`` (queue bound, timeout, cost limit, disconnects).

    Every prompt token gets one (the first is conditioned on the model's text start, as
    ``lm.score`` does), unlike OpenAI's null for the first token.
    """
    texts = [p.text for p in plan.prompts]
    served = plan.served
    job = score_job(served, texts, settings, "prompt", top=plan.logprobs or 0)
    await run_score(served, job, request, settings, rid)
    results = served.pipeline.score_results(texts, job, token_logprobs=True)
    for i, (p, s) in enumerate(zip(plan.prompts, results, strict=True)):
        lps = [finite(x) for x in (s.token_logprobs or [])]
        unscored = max(0, len(p.ids) - len(lps))
        lps = [None] * unscored + lps[-len(p.ids):] if p.ids else []
        plan.prompt_logprobs.append(lps)
        if plan.logprobs:
            tops = [()] * unscored + (s.top_logprobs or [])[-len(p.ids):] if p.ids else []
            start = list(served.pipeline.context.start)
            plan.prompt_tops.append(top_maps(served, start, p.ids, plan.prompt_pieces[i], lps, tops))


def choice(plan: Plan, prompt_index: int, c: Completion) -> CompletionChoice:
    prompt = plan.prompts[prompt_index]
    text = plan.echo_text(prompt_index) + c.text
    logprobs = None
    if plan.logprobs is not None:
        tokens = token_texts(plan.served, prompt.ids, c.token_ids, c.text)
        lps = [finite(x) for x in c.logprobs]
        tops = None
        if plan.logprobs:
            context, _ = plan.served.pipeline.context.frame(prompt.ids)
            tops = top_maps(plan.served, context, c.token_ids, tokens, lps, c.top_logprobs)
        if plan.echo:
            tokens = plan.prompt_pieces[prompt_index] + tokens
            lps = plan.prompt_logprobs[prompt_index] + lps
            tops = plan.prompt_tops[prompt_index] + tops if tops is not None else None
        logprobs = logprobs_block(tokens, lps, 0, tops if plan.logprobs else None)
    return CompletionChoice(text=text, index=0, logprobs=logprobs, finish_reason=finish_reason(c))  # type: ignore[arg-type]
