"""Weight-only int8 (``--dtype int8``, ``lm.quantize``) against fp32 on this machine: decode
tokens/s at batch 1 and 8 for the 6x6x384 benchmark model and a GPT-2-small-shaped one (124M,
random weights), and the perplexity of the shipped checkpoints on their validation text in both.

Usage: ``python bench/int8.py [--new-tokens 64] [--repeats 2]``. Targets (issue 19): decode b1
>= 1.6x fp32 for both shapes; perplexity within 1% of fp32.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import MODES, VOCAB, best_times, char_tokenizer, ours_decode  # noqa: E402

from lm.config import TransformerConfig  # noqa: E402
from lm.inference import prepare_for_inference  # noqa: E402
from lm.models import build_model  # noqa: E402
from lm.pipeline import Pipeline  # noqa: E402
from lm.quantize import quantize_int8  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"6x6x384": dict(vocab_size=VOCAB, n_layer=6, n_head=6, n_embd=384),
          "gpt2 (124M)": dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768)}
VALIDATION = {"shakespeare-char": "tinyshakespeare/input.txt", "ptb-word": "ptb/ptb.valid.txt"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.new_tokens} new tokens, "
          f"best of {args.repeats}")
    print(f"{'model':<14} {'mode':<10} {'fp32 tok/s':>11} {'int8 tok/s':>11} {'ratio':>7}")
    tok = None
    for name, shape in SHAPES.items():
        torch.manual_seed(0)
        base = build_model(TransformerConfig(block_size=512, pos_emb="learned", bias=True, **shape)).eval()
        fp32 = prepare_for_inference(base)
        int8 = quantize_int8(copy.deepcopy(base))
        tok = char_tokenizer() if shape["vocab_size"] == VOCAB else \
            type(char_tokenizer())([chr(0x10000 + i) for i in range(shape["vocab_size"] - 260)])
        for mode in ("greedy-b1", "greedy-b8"):
            batch, kw = MODES[mode]
            t32, t8 = best_times([ours_decode(fp32, tok, batch, kw, args.new_tokens),
                                  ours_decode(int8, tok, batch, kw, args.new_tokens)], args.repeats)
            n = batch * args.new_tokens
            print(f"{name:<14} {mode:<10} {n / t32:11.0f} {n / t8:11.0f} {t32 / t8:6.2f}x", flush=True)
    print(f"\n{'checkpoint':<18} {'fp32 ppl':>10} {'int8 ppl':>10} {'change':>8}")
    for ckpt, text_file in VALIDATION.items():
        path = Path(args.data) / text_file
        if not path.is_file():
            print(f"{ckpt:<18} (no {path})")
            continue
        text = path.read_text(encoding="utf-8")
        text = text[-len(text) // 10:] if ckpt == "shakespeare-char" else text  # the char model's held-out tail
        ppl = [Pipeline.from_checkpoint(REPO / "checkpoints" / ckpt, device="cpu", dtype=dt).score([text])[0].perplexity
               for dt in ("fp32", "int8")]
        print(f"{ckpt:<18} {ppl[0]:10.3f} {ppl[1]:10.3f} {100 * (ppl[1] / ppl[0] - 1):+7.3f}%", flush=True)


if __name__ == "__main__":
    main()
