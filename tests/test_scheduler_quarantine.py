"""A failure stays inside the request that caused it, even when it breaks a whole batch step.

The engine decodes every request of a model in one batch, so a step that raises cannot say whose
row broke it. The scheduler then replays each request alone -- sampled requests are seeded by
the server, so a replay repeats what the client already has, which is skipped -- and only a
request whose own replay fails gets the error. Here an engine that breaks whenever a "poisoned"
request is in its batch stands in for any such bug."""

from __future__ import annotations

import asyncio

import pytest
import torch

from lm.config import TransformerConfig
from lm.decoding.engine import DecodeSession
from lm.decoding.params import FinishEvent, GenerationParams, TokenEvent
from lm.models import build_model
from service.metrics import Metrics
from service.scheduler import GenerationFailed, Scheduler
from tokenizer import CharTokenizer

TOK = CharTokenizer(list("abcde \n"), unk_policy="unk")
POISON = TOK.encode("e")[0]


class BreaksOnPoison(DecodeSession):
    """Fails its third step while a request whose prompt starts with ``POISON`` is decoding."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.poisoned: set[object] = set()
        self.steps = 0

    def add(self, request_id, prompt_ids, params) -> None:  # noqa: ANN001
        if prompt_ids and prompt_ids[0] == POISON:
            self.poisoned.add(request_id)
        super().add(request_id, prompt_ids, params)

    def step(self):  # noqa: ANN201
        self.steps += 1
        if self.steps >= 3 and self.poisoned & set(self._requests):
            raise RuntimeError("a bug some row triggers")
        return super().step()


@pytest.fixture
def scheduler():  # noqa: ANN201
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=TOK.vocab_size, block_size=32, n_layer=1, n_head=2,
                                          n_embd=16)).eval()
    s = Scheduler("tiny", lambda rows: BreaksOnPoison(model, TOK, max_batch_rows=rows), max_queue=64,
                  max_batch_rows=32, metrics=Metrics())
    s.start()
    yield s
    s.stop()


JOBS = [("ab", GenerationParams(max_new_tokens=12, stop_at_eos=False)),
        ("c", GenerationParams(strategy="sample", num_return_sequences=2, max_new_tokens=12, stop_at_eos=False)),
        ("ba", GenerationParams(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=10)),
        ("dd", GenerationParams(strategy="sample", seed=4, max_new_tokens=12, stop_at_eos=False))]


def run(scheduler: Scheduler, jobs: list[tuple[str, GenerationParams]]) -> list[object]:
    """Each job's streamed text per sequence and its completions, or the exception it ended with."""

    async def one(i: int, prompt: str, p: GenerationParams) -> object:
        sub = scheduler.submit([(TOK.encode(prompt), p)], f"r{i}", stream=True)
        streamed: dict[int, str] = {}
        done: dict[int, tuple] = {}
        try:
            async for _, event in sub.events(asyncio.get_running_loop().time() + 30):
                if isinstance(event, TokenEvent):
                    streamed[event.index] = streamed.get(event.index, "") + event.text
                elif isinstance(event, FinishEvent):
                    done[event.index] = (event.completion.text, tuple(event.completion.token_ids))
                    if p.strategy != "beam":
                        assert streamed.get(event.index, "") + event.text == event.completion.text
        except GenerationFailed as exc:
            return exc
        return [done[k] for k in sorted(done)]

    async def main() -> list[object]:
        return await asyncio.gather(*(one(i, prompt, p) for i, (prompt, p) in enumerate(jobs)))

    return asyncio.run(main())


def test_only_the_request_that_breaks_the_batch_fails(scheduler: Scheduler) -> None:
    seeded = [(prompt, p) for prompt, p in JOBS if not (p.samples and p.seed is None)]
    alone = [run(scheduler, [job])[0] for job in seeded]
    results = run(scheduler, [*JOBS[:2], ("eab", GenerationParams(max_new_tokens=12)), *JOBS[2:]])
    assert isinstance(results[2], GenerationFailed)
    good = results[:2] + results[3:]
    assert all(not isinstance(r, BaseException) for r in good)
    # every other request completes -- the streamed text whole, no token twice -- and the
    # deterministic ones exactly as alone
    assert [good[0], good[2], good[3]] == alone
    assert len(good[1]) == 2
    assert scheduler.depth == 0
    # and the model serves on
    assert run(scheduler, [JOBS[0]]) == [alone[0]]
