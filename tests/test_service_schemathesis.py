"""Schema-driven fuzzing (Schemathesis) of every operation: no 5xx, every response as documented,
and the schema tells the truth both ways.

Valid and invalid bodies are generated from the app's own OpenAPI schema; each response must
not be a server error, must use a documented status code, content type and body schema, and
invalid input must be refused with a 4xx. A second, positive-only run sends only what the schema
allows and requires a 2xx for every one: the live limits, the loaded models, their vocabularies
and context, and the relations between fields are all in the schema. The server runs with small
decoding limits so that generated requests stay fast; its token limits are set above what a body
of ``max_body_bytes`` can hold (at most 4 tokens a character), because a text's length in tokens
depends on its content and is the one limit JSON Schema cannot state (it is in the field
descriptions; the server's 422 names it). ``LMFORGE_FUZZ_EXAMPLES`` raises the number of examples
per operation.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode  # noqa: E402
from test_service_helpers import client_for, make_checkpoint, test_settings  # noqa: E402

from service.app import create_app  # noqa: E402

EXAMPLES = int(os.environ.get("LMFORGE_FUZZ_EXAMPLES", "25"))
KEY = "fuzz-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]
BODY = 16384
TEXT_TOKENS = 8 * BODY  # more than any text of a BODY-byte request can encode to, with a chat template's turns
LIMITS = {"max_new_tokens": 8, "max_prompt_tokens": TEXT_TOKENS, "max_num_beams": 3, "max_return_sequences": 3,
          "max_prompts": 3, "max_score_tokens": TEXT_TOKENS, "max_score_cost": 64 * TEXT_TOKENS,
          "max_body_bytes": BODY, "max_batch_rows": 16}


def _app():  # type: ignore[no-untyped-def]
    """The app under test, built at collection time because the schema is read from it."""
    root = Path(tempfile.mkdtemp(prefix="lmforge-fuzz-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    make_checkpoint(root / "tiny")
    return create_app(test_settings(root, api_key=KEY, **LIMITS))


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers={"Authorization": f"Bearer {KEY}"})
positive = schemathesis.openapi.from_asgi("/openapi.json", APP, headers={"Authorization": f"Bearer {KEY}"})
positive.config.generation.update(modes=[GenerationMode.POSITIVE])


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS)


@positive.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_what_the_schema_allows_is_accepted(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"},
                           checks=[not_a_server_error, positive_data_acceptance, response_schema_conformance])


def test_the_schema_names_the_loaded_models_and_their_vocabulary(tmp_path: Path) -> None:
    """What the positive run relies on, read off the document: ``model`` is an enum of the
    loaded names, examples name a loaded model, token ids stop below the vocabulary."""
    make_checkpoint(tmp_path / "tiny")
    with client_for(test_settings(tmp_path)) as client:
        doc = client.get("/openapi.json").json()
        vocab = client.get("/tokenizer_info").json()["vocab_size"]
    bodies = doc["components"]["schemas"]
    assert bodies["GenerateRequest"]["properties"]["model"]["anyOf"][0]["enum"] == ["tiny"]
    assert all(e.get("model", "tiny") == "tiny" for e in bodies["CompletionRequest"]["examples"])
    assert bodies["DetokenizeRequest"]["properties"]["tokens"]["items"]["maximum"] == vocab - 1
    import re

    pattern = bodies["CompletionRequest"]["properties"]["logit_bias"]["anyOf"][0]["propertyNames"]["pattern"]
    assert [bool(re.fullmatch(pattern.strip("^$"), str(i))) for i in (0, vocab - 1, vocab, 10 * vocab)] == \
        [True, True, False, False]
