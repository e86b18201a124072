"""Errors of the training room that other rooms name (the run directory, precision, the loop)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""
