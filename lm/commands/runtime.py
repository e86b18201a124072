"""The options every command that runs a model takes: where (``--device``), in what precision
(``--dtype``) and on how many threads (``--threads``), and loading the model with them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from lm.dtypes import RUNTIME_DTYPES

if TYPE_CHECKING:
    from lm.pipeline import Pipeline


def add_runtime_args(group: Any) -> None:
    """Add ``--threads``, ``--device`` and ``--dtype`` to a parser or argument group."""
    group.add_argument("--threads", type=int, default=0, metavar="N",
                       help="torch threads (default: the cores no other process keeps busy)")
    group.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    group.add_argument("--dtype", choices=RUNTIME_DTYPES, default="fp32",
                       help="weights precision (default fp32; int8: weight-only int8 linear layers, quantized at load)")


def load_pipeline(args: argparse.Namespace) -> Pipeline:
    """The checkpoint ``args.checkpoint`` on the chosen threads, device and dtype."""
    from lm import threads
    from lm.pipeline import Pipeline

    threads.apply(args.threads)
    return Pipeline.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype)
