"""Short texts against long ones: does a model start texts the way it was trained to?

For each checkpoint, scores 50 snippets of ~100 characters (each starting at a line start of the
validation split, scored one by one) and the first 20,000 characters as one stream, under the
checkpoint's recorded text start and, for comparison, under ``<eos>`` (the first round's
convention). A model conditioned on a context it never saw pays for it on every short text:
the snippet figure drifts far above the long-text one. Then prints greedy and sampled
continuations of a few prompts, to read.

    python bench/snippets.py checkpoints/shakespeare-char checkpoints/ptb-word
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from test_shipped_checkpoints import PROMPTS, snippets, validation_text  # noqa: E402

from lm.context import TextContext  # noqa: E402
from lm.decoding.params import GenerationParams  # noqa: E402
from lm.pipeline import Pipeline  # noqa: E402


def per_char(pipe: Pipeline, texts: list[str]) -> float:
    results = pipe.score(texts)
    return sum(r.nll for r in results) / sum(r.characters for r in results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--name", help="which validation split and prompts (default: the directory's name)")
    ap.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    args = ap.parse_args(argv)
    print("| checkpoint | text start | 50 snippets, nats/char | 20k-char stream, nats/char | gap |")
    print("|---|---|---|---|---|")
    samples = []
    for path in args.checkpoints:
        name = args.name or Path(path).name
        pipe = Pipeline.from_checkpoint(path, device="cpu")
        text, words = validation_text(name)
        parts = snippets(text, words)
        recorded = pipe.context
        for label, context in ((f"recorded {pipe.tokenizer.decode(list(recorded.start))!r}", recorded),
                               ("<eos> (round 1)", TextContext((pipe.tokenizer.eos_id,), recorded.max_length))):
            pipe.context = context
            short, long = per_char(pipe, parts), per_char(pipe, [text[:20000]])
            print(f"| {path} | {label} | {short:.3f} | {long:.3f} | {short - long:+.3f} |")
        pipe.context = recorded
        n = args.tokens if not words else min(args.tokens, 60)
        for params in (GenerationParams(max_new_tokens=n, stop_at_eos=False),
                       GenerationParams(strategy="sample", temperature=0.8, top_k=40, seed=1, max_new_tokens=n,
                                        stop_at_eos=False)):
            prompts = PROMPTS.get(name, [""])[:2]
            for prompt, [c] in zip(prompts, pipe.generate(prompts, params), strict=True):
                how = params.strategy + (f" t={params.temperature} k={params.top_k} seed={params.seed}"
                                         if params.strategy == "sample" else "")
                samples.append((path, how, prompt, c.text))
    print()
    for path, how, prompt, text in samples:
        print(f"--- {path}, {how}, prompt {prompt!r} ---")
        print(prompt + text)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
