"""Schema-driven fuzzing (Schemathesis) of every operation: no 5xx, every response as documented.

Valid and invalid bodies are generated from the app's own OpenAPI schema; each response must
not be a server error, must use a documented status code, content type and body schema, and
invalid input must be refused with a 4xx. The server runs with small limits so that generated
requests stay fast. ``LMFORGE_FUZZ_EXAMPLES`` raises the number of examples per operation.
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
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_service_helpers import make_checkpoint, test_settings  # noqa: E402

from service.app import create_app  # noqa: E402

EXAMPLES = int(os.environ.get("LMFORGE_FUZZ_EXAMPLES", "25"))
KEY = "fuzz-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]
LIMITS = {"max_new_tokens": 8, "max_prompt_tokens": 64, "max_num_beams": 3, "max_return_sequences": 3,
          "max_prompts": 3, "max_score_tokens": 256, "max_body_bytes": 16384, "max_batch_rows": 16}


def _app():  # type: ignore[no-untyped-def]
    """The app under test, built at collection time because the schema is read from it."""
    root = Path(tempfile.mkdtemp(prefix="lmforge-fuzz-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    make_checkpoint(root / "tiny")
    return create_app(test_settings(root, api_key=KEY, **LIMITS))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app(), headers={"Authorization": f"Bearer {KEY}"})


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS)
