"""``lmforge generate CKPT --prompt TEXT``: continue prompts with a checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from lm.commands.runtime import add_runtime_args, load_pipeline
from lm.decoding.params import STRATEGIES, GenerationParams

HELP = "continue a prompt with a trained model"

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    d = GenerationParams()  # the defaults, quoted in the help (unset options keep them)
    p = sub.add_parser(
        "generate", help=HELP,
        description="Continue each --prompt with greedy decoding, sampling or beam search. Prints the "
                    "prompt followed by its continuation (--json: everything, for machines).")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory (or a run directory: its best/latest)")
    p.add_argument("--prompt", action="append", required=True, help="text to continue; repeat for a batch")
    g = p.add_argument_group("strategy")
    g.add_argument("--strategy", choices=STRATEGIES,
                   help="greedy, sample or beam (default: the checkpoint's example settings -- for models trained "
                        f"here, sampling at temperature 0.8, top_p 0.95 -- else {d.strategy}); options given "
                        "override single settings")
    g.add_argument("--max-new-tokens", type=int, help=f"most tokens to add (default {d.max_new_tokens})")
    g.add_argument("--temperature", type=float, help=f"sample: < 1 sharper, > 1 flatter, 0 greedy (default {d.temperature:g})")
    g.add_argument("--top-k", type=int, help=f"sample: keep the k most likely tokens (default {d.top_k}; 0: all)")
    g.add_argument("--top-p", type=float, help=f"sample: keep the most likely tokens up to this mass (default {d.top_p:g})")
    g.add_argument("--min-p", type=float, help=f"sample: drop tokens below min_p x the best (default {d.min_p:g})")
    g.add_argument("--repetition-penalty", type=float, help=f"> 1 discourages repeated tokens (default {d.repetition_penalty:g})")
    g.add_argument("--seed", type=int, help="sample: make the result reproducible")
    g.add_argument("--num-beams", type=int, help=f"beam: hypotheses kept (default {d.num_beams})")
    g.add_argument("--length-penalty", type=float, help=f"beam: rank by logprob / length ** this (default {d.length_penalty:g})")
    g.add_argument("--no-early-stopping", dest="early_stopping", action="store_false", default=None,
                   help="beam: go on while a running beam could still win")
    g.add_argument("-n", "--num-return-sequences", type=int, help=f"completions per prompt (default {d.num_return_sequences})")
    g.add_argument("--no-repeat-ngram-size", type=int, help=f"never repeat an n-gram of this size (default {d.no_repeat_ngram_size}; 0: off)")
    g.add_argument("--stop", action="append", help="stop before this text; repeatable")
    g.add_argument("--ignore-eos", dest="stop_at_eos", action="store_false", default=None,
                   help="keep going after <eos>")
    o = p.add_argument_group("output and device")
    o.add_argument("--stream", action="store_true", help="print text as it is generated")
    o.add_argument("--json", action="store_true", help="print JSON (with --stream: one JSON line per event)")
    o.add_argument("--top-logprobs", type=int, metavar="K",
                   help="with --json: each position's K most likely (token id, logprob), up to 20")
    add_runtime_args(o)
    p.set_defaults(func=run)


def example_settings(pipe) -> dict:  # noqa: ANN001 -- a lm.pipeline.Pipeline
    """The decoding settings the checkpoint reads best with (``lm.example``), less their length
    (the CLI's own default): what an unconfigured ``generate`` uses, since greedy decoding of a
    small model loops within lines. Empty for a checkpoint without an example (greedy then)."""
    if pipe.example is None:
        return {}
    settings = {k: v for k, v in pipe.example.params.items() if k != "max_new_tokens"}
    shown = ", ".join(f"{k} {v}" for k, v in settings.items())
    log.info("decoding with the checkpoint's example settings (%s); --strategy greedy for greedy", shown)
    return settings


def run(args: argparse.Namespace) -> int:
    from lm.decoding.params import DoneEvent, FinishEvent, GenerationParams, ParamError

    names = [f.name for f in dataclasses.fields(GenerationParams)]
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if "stop" in given:
        given["stop"] = tuple(given["stop"])
    try:
        GenerationParams(**given)  # a bad option fails before the model loads
    except ParamError as exc:
        print(f"lmforge generate: error: {exc}", file=sys.stderr)
        return 2
    pipe = load_pipeline(args)
    base = example_settings(pipe) if args.strategy is None else {}
    try:
        params = GenerationParams(**{**base, **given})
        if args.stream and params.rows > 1:
            raise ParamError("stream", "--stream prints one sequence: use it without beam search and -n > 1")
    except ParamError as exc:
        print(f"lmforge generate: error: {exc}", file=sys.stderr)
        return 2

    if args.stream:
        for prompt in args.prompt:
            if not args.json:
                print(prompt, end="", flush=True)
            for event in pipe.stream(prompt, params):
                if isinstance(event, DoneEvent):
                    continue
                if args.json:
                    record = ({"completion": dataclasses.asdict(event.completion)} if isinstance(event, FinishEvent)
                              else {"text": event.text, "token_id": event.token_id, "logprob": event.logprob})
                    print(json.dumps(record, ensure_ascii=False), flush=True)
                else:
                    print(event.text, end="", flush=True)  # a FinishEvent's text: what was held back
            if not args.json:
                print()
        return 0

    results = pipe.generate(args.prompt, params)
    if args.json:
        doc = {
            "model": pipe.name,
            "params": dataclasses.asdict(params),
            "results": [{"prompt": prompt, "completions": [dataclasses.asdict(c) for c in completions]}
                        for prompt, completions in zip(args.prompt, results, strict=True)],
        }
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    many = len(args.prompt) * params.num_return_sequences > 1
    for p_i, (prompt, completions) in enumerate(zip(args.prompt, results, strict=True), 1):
        for c_i, c in enumerate(completions, 1):
            if many:
                print(f"--- prompt {p_i}, completion {c_i} ({c.finish_reason}, "
                      f"logprob {c.cumulative_logprob:.2f}) ---")
            print(prompt + c.text)
    return 0
