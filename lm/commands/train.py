"""``lmforge train``: train a model from a TOML config, or resume a run directory."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from lm.config import ConfigError, apply_overrides, load_run_config

HELP = "train a language model from a TOML config"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help=HELP,
        description="Train a model. Tables [data], [tokenizer], [model], [train]; see configs/ for examples.",
    )
    p.add_argument("--config", help="TOML run config (e.g. configs/shakespeare-char.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--init-from", metavar="CKPT",
                   help="fine-tune: start from this checkpoint's (or run's best) weights and tokenizer on the "
                        "config's data, with a fresh optimizer and schedule (train.init_from)")
    p.add_argument("--input", metavar="FILE",
                   help="with --minutes, no config: train on this text file with the tokenizer, model size and "
                        "batch chosen for it and the budget from throughput measured here (lm.training.budget)")
    p.add_argument("--minutes", type=float, metavar="N", help="the budget of --input, in minutes of training")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run exactly where it stopped (model, optimizer, schedule, RNG, data position)")
    p.set_defaults(func=run)


RESUMABLE = ("train",)
"""The config tables ``--resume --set`` may change; the others define the run."""


def run(args: argparse.Namespace) -> int:
    from lm.training.rundir import RUN_CONFIG_FILE
    from lm.training.trainer import TrainingError, load_run_dir_config, train

    if (args.input is None) != (args.minutes is None):
        raise ConfigError("--input FILE and --minutes N go together: a budgeted run needs both")
    if args.input is not None and (args.config or args.resume or args.init_from):
        given = next(f for f, v in (("--config", args.config), ("--resume", args.resume),
                                    ("--init-from", args.init_from)) if v)
        raise ConfigError(f"--input/--minutes plan a run without a config; {given} cannot be combined with them")
    if args.input is not None:
        from pathlib import Path

        from lm.config import run_config_from_dict
        from lm.training.budget import plan

        config = run_config_from_dict(apply_overrides(plan(Path(args.input), args.minutes), args.overrides))
    elif args.resume:
        if args.init_from:
            raise ConfigError("--init-from starts a new run from a checkpoint; --resume continues a run: give one")
        if args.config:
            raise ConfigError(f"--resume continues {args.resume} with the config it was started with "
                              f"(its {RUN_CONFIG_FILE}); --config cannot change it. Leave out --config, "
                              "or start a new run with --config alone")
        overrides = apply_overrides({}, args.overrides)
        fixed = sorted(f"{table}.{key}" for table, values in overrides.items() if table not in RESUMABLE
                       for key in values) + [f"train.{key}" for key in overrides.get("train", {})
                                             if key == "out_dir"]
        if fixed:
            raise ConfigError(f"--resume cannot change {', '.join(fixed)}: a run's data, tokenizer, model "
                              "and directory are fixed when it starts (only train.* settings, such as "
                              "train.max_steps or train.lr, can change); start a new run for the rest")
        config = load_run_dir_config(args.resume, overrides)
        if config.train.out_dir != args.resume:
            from dataclasses import replace

            config = replace(config, train=replace(config.train, out_dir=args.resume))
    elif args.config:
        init = [f"train.init_from={json.dumps(args.init_from)}"] if args.init_from else []
        config = load_run_config(args.config, [*args.overrides, *init])
    else:
        raise ConfigError("give --config FILE to start a run or --resume RUN_DIR to continue one")
    try:
        result = train(config, resume=bool(args.resume))
    except TrainingError as exc:
        print(f"lmforge train: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    if result.interrupted:
        print(f"interrupted by {result.interrupted} at step {result.steps}; checkpoint saved. "
              f"Continue with: lmforge train --resume {result.run_dir}")
        import signal

        return 128 + int(getattr(signal, result.interrupted, signal.SIGINT))
    line = (f"done: {result.steps} steps, {result.tokens_seen:,} tokens, {result.elapsed:.0f} s; "
            f"best val loss {result.best_val_loss:.4f} (ppl {math.exp(min(result.best_val_loss, 50)):.2f})")
    if result.test_loss is not None:
        line += f"; test loss {result.test_loss:.4f} (ppl {math.exp(result.test_loss):.2f})"
    if result.skipped_steps:
        line += f"; {result.skipped_steps} steps skipped (non-finite)"
    print(line)
    print(f"run directory: {result.run_dir} (best weights in {result.run_dir}/best)")
    return 0
