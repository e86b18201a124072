"""Server settings: every knob and every limit in one validated object.

Values come from ``LMFORGE_*`` environment variables and from ``lmforge serve`` flags (flags
win). Routes reach the settings through the ``get_settings`` dependency so tests can hand the
app a ``Settings`` of their own or override the dependency.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lm.dtypes import RuntimeDtype

SHIPPED_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
"""The repository's ``checkpoints/`` directory: what ``lmforge serve`` serves by default."""
SHIPPED_DEFAULT_MODEL = "shakespeare-char"
"""The shipped model a newcomer meets first (the playground opens on it)."""


class Settings(BaseSettings):
    """Configuration of one server process. Limits are per request unless said otherwise."""

    model_config = SettingsConfigDict(env_prefix="LMFORGE_", extra="forbid", frozen=True)

    checkpoints: Path = Field(
        SHIPPED_CHECKPOINTS,
        description="what to serve: a directory of checkpoints and training runs (each run as one model, from its best/ or latest), or one checkpoint or run directory",
    )
    models: list[str] | None = Field(
        None, description="serve only these model names (subdirectory names); default: all"
    )
    default_model: str | None = Field(
        SHIPPED_DEFAULT_MODEL, description="the model the playground opens on (when it is not loaded: the first one)"
    )
    device: str = Field("auto", description="torch device; auto = cuda, else mps, else cpu")
    dtype: RuntimeDtype = Field(
        "fp32", description="weights precision; on CPUs with native bf16, bf16 decodes larger models faster "
        "(6x6x384: 1.2-1.6x at batch 1) and small ones slower (bench/decode.py), at a small perplexity cost; "
        "int8 quantizes every linear layer's weight at load (per-channel scales, lm.quantize)"
    )
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads (0: the cores no other process keeps busy, less one for "
        "the HTTP event loop)"
    )
    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to bind")
    api_key: SecretStr | None = Field(
        None, description="bearer token every route but /health requires (env only)"
    )
    log_prompts: bool = Field(False, description="include prompt text in the per-request log line")

    max_prompt_tokens: int = Field(1024, ge=1, description="tokens in one prompt")
    max_new_tokens: int = Field(512, ge=1, description="tokens generated per sequence")
    max_num_beams: int = Field(8, ge=1, description="beam width")
    max_return_sequences: int = Field(8, ge=1, description="sequences returned per prompt (n)")
    max_prompts: int = Field(16, ge=1, description="prompts (or texts to score) per request")
    max_score_tokens: int = Field(16384, ge=1, description="tokens in one text to score")
    max_score_cost: int = Field(262144, ge=1, description="token positions one scoring request may run through "
                                                          "the model, every sliding window counted (stride: 1 "
                                                          "costs the window length per token)")
    max_body_bytes: int = Field(262_144, ge=1024, description="request body size")
    max_queue: int = Field(64, ge=1, description="requests accepted per model at once (decoding or waiting)")
    max_batch_rows: int = Field(32, ge=1, description="rows of the running decode batch per model")
    request_timeout_s: float = Field(120.0, gt=0, description="seconds before a request is abandoned (504)")
    shutdown_timeout_s: float = Field(
        10.0, gt=0, description="on shutdown, seconds to let open requests and streams finish before closing them"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a connection may take to send a request's headers before it is closed"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="seconds a request body may pause while arriving before the request gets 408"
    )
    max_connections: int = Field(
        512, ge=1, description="open connections (and requests) at once; past it new ones get 503 (uvicorn's limit_concurrency)"
    )
    keep_alive_s: float = Field(5.0, gt=0, description="seconds an idle keep-alive connection stays open")
    load_timeout_s: float = Field(
        120.0, gt=0, description="seconds one checkpoint may take to load before it is skipped (the others still serve)"
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 429 and 503")

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        """Accept ``LMFORGE_MODELS=a,b`` as well as a JSON list."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def beam_limit(self) -> int:
        """The widest beam search a request can get: ``max_num_beams``, within a batch's rows."""
        return min(self.max_num_beams, self.max_batch_rows)

    @property
    def sequence_limit(self) -> int:
        """The most sequences per prompt: ``max_return_sequences``, within a batch's rows."""
        return min(self.max_return_sequences, self.max_batch_rows)


def get_settings(request: Request) -> Settings:
    """The app's settings; a dependency so tests can override it."""
    return request.app.state.settings
