"""Decoding and scoring throughput, side by side with HuggingFace transformers.

    python bench/decode.py [--repeats 3] [--new-tokens 256] [--skip-hf] [--threads N] [--clock cpu]
                           [--dtypes fp32,bf16] [--checkpoint checkpoints/shakespeare-char --text FILE]
                           [--device cuda] [--context]

Random weights, vocabulary 10,000, a short (8-token) prompt and ``--new-tokens`` new tokens with
end-of-sequence disabled, so every run does the same work. Our Transformer is set up as GPT-2
(learned positions, biases, tied embeddings, tanh GELU) and prepared as ``Pipeline`` prepares a
loaded checkpoint (``prepare_for_inference``); HF's ``GPT2LMHeadModel`` gets the same dimensions
and its ``generate`` the same settings (greedy; sampling with temperature 1, top_k 50, top_p
0.95; beam 4). tokens/s counts the tokens returned: batch x new tokens (beam: the best
hypothesis' new tokens). Our figure includes detokenization (a 10,000-entry character
tokenizer), which HF's ``generate`` does not do. Scoring is tokens/s over disjoint 256-token
windows in batches of 16: ours through ``lm.score`` (fp32, and bf16 with its perplexity
difference), HF's as a forward with ``labels`` (its loss). Decoding runs with fp32 weights and again with bf16 weights (``lmforge serve --dtype bf16``),
each against HF's model in the same dtype. A random model's distribution is
nearly uniform, which hides what bf16 costs; ``--checkpoint``/``--text`` adds the bf16 vs fp32
perplexity of a trained checkpoint on real text.

``--device cuda`` runs the Transformer and imported rows on a GPU, ours and HF's alike (the
bounds are for the CPU and are not printed there). ``--context`` prints only the rows of a token's
cost against the context it attends to: a 6x6x384 model with a 1024-token window decoding after a
16-token and a 768-token prompt, tokens/s with and without the prompt's prefill, beside the bound
that reading the weights and the KV cache sets on that ratio.

Each figure is the best of ``--repeats`` runs after a warm-up, ours and HF's taking turns, so a
burst of load elsewhere hits both alike. On a busy shared machine wall time mostly measures the
neighbours: ``--threads 1 --clock cpu`` measures the process's own CPU time instead.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Run as a script, this directory comes first on sys.path, and bench/tokenizer.py would shadow
# the ``tokenizer`` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from lm.config import RNNConfig, TransformerConfig  # noqa: E402
from lm.context import TextContext  # noqa: E402
from lm.decoding.generate import generate  # noqa: E402
from lm.decoding.params import GenerationParams  # noqa: E402
from lm.inference import prepare_for_inference  # noqa: E402
from lm.models import build_model  # noqa: E402
from lm.pipeline import Pipeline  # noqa: E402
from lm.score import score_ids  # noqa: E402
from tokenizer import CharTokenizer  # noqa: E402

VOCAB = 10_000
PROMPT = 8
CONTEXT = 512
SCORE_WINDOW = 256
SCORE_BATCH = 16
SCORE_TOKENS = SCORE_WINDOW * SCORE_BATCH * 4

MODES = {
    "greedy-b1": (1, dict(strategy="greedy")),
    "greedy-b8": (8, dict(strategy="greedy")),
    "sample-b1": (1, dict(strategy="sample", temperature=1.0, top_k=50, top_p=0.95, seed=0)),
    "beam4-b1": (1, dict(strategy="beam", num_beams=4, early_stopping=True)),
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
DEVICE = torch.device("cpu")
"""Where the Transformer and imported rows run (``--device``)."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
clock = CLOCKS["wall"]


def best_times(fns: list[Callable[[], object] | None], repeats: int) -> list[float | None]:
    """Best time of each function over ``repeats`` runs after a warm-up, taking turns."""
    for fn in fns:
        if fn is not None:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            if fn is not None:
                start = clock()
                fn()
                ts.append(clock() - start)
    return [min(ts) if ts else None for ts in times]


def read_bandwidth(mb: int = 512) -> float:
    """Bytes/s at which this machine streams memory into the cores (a sum over ``mb`` MB)."""
    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    best = min(_timed(x.sum) for _ in range(5))
    return x.numel() * 4 / best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads (each tensor once: tied weights are one tensor)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def products_seconds(model: torch.nn.Module) -> float:
    """Time of one decode step's matrix-vector products alone: every ``nn.Linear`` of the
    prepared ``model`` applied once to a single row, in turn, through the kernels it decodes
    with (``lm.inference.PackedLinear``; best of 20). No decoder can take a step faster with
    these kernels."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(1, m.in_features, dtype=m.weight.dtype) for m in linears]

    def step() -> None:
        for m, x in zip(linears, xs, strict=True):
            m(x)

    with torch.inference_mode():
        step()
        return min(_timed(step) for _ in range(20))


def char_tokenizer() -> CharTokenizer:
    """A character tokenizer with exactly ``VOCAB`` ids (4 specials, 256 bytes, CJK characters)."""
    return CharTokenizer([chr(0x4E00 + i) for i in range(VOCAB - 260)])


def ours_transformer(n_layer: int, n_head: int, n_embd: int, block_size: int = CONTEXT,
                     dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=VOCAB, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                            pos_emb="learned", bias=True)
    return prepare_for_inference(build_model(cfg).to(device=DEVICE, dtype=dtype), in_place=True)


def hf_gpt2(n_layer: int, n_head: int, n_embd: int, n_positions: int = CONTEXT,
            dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=n_positions, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(cfg).to(device=DEVICE, dtype=dtype).eval()


def prompts(batch: int) -> torch.Tensor:
    return torch.randint(260, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(1))


def ours_decode(model, tok, batch: int, mode: dict, new: int) -> Callable[[], object]:
    ids = prompts(batch).tolist()
    params = GenerationParams(max_new_tokens=new, stop_at_eos=False, **mode)

    def run() -> None:
        out = generate(model, tok, ids, params)
        assert all(len(c[0].token_ids) == new for c in out)

    return run


def hf_decode(model, batch: int, mode: dict, new: int) -> Callable[[], object]:
    from transformers import GenerationConfig

    ids = prompts(batch).to(DEVICE)
    kw: dict = dict(max_new_tokens=new, min_new_tokens=new, pad_token_id=0, eos_token_id=0, use_cache=True)
    if mode["strategy"] == "sample":
        kw.update(do_sample=True, temperature=1.0, top_k=50, top_p=0.95)
    elif mode["strategy"] == "beam":
        kw.update(do_sample=False, num_beams=4, early_stopping=True)
    else:
        kw.update(do_sample=False)
    config = GenerationConfig(**kw)

    def run() -> None:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        assert out.cpu().shape[1] == PROMPT + new  # .cpu(): wait for the device

    return run


def score_data() -> list[list[int]]:
    g = torch.Generator().manual_seed(2)
    return [torch.randint(4, VOCAB, (SCORE_TOKENS,), generator=g).tolist()]


def ours_score(model, data, result: dict) -> Callable[[], object]:
    """Scores ``data``; leaves the perplexity in ``result['ppl']``."""

    def run() -> None:
        [nll] = score_ids(model, data, context=TextContext((3,), model.max_context), batch_size=SCORE_BATCH)
        result["ppl"] = math.exp(float(nll.mean()))

    return run


def hf_score(model, data) -> Callable[[], object]:
    """HF's idiomatic perplexity forward: ``model(ids, labels=ids)`` (it shifts the labels)."""
    x = torch.tensor(data[0]).view(-1, SCORE_WINDOW).to(DEVICE)

    def run() -> None:
        with torch.inference_mode():
            for b in range(0, len(x), SCORE_BATCH):
                loss = model(x[b : b + SCORE_BATCH], labels=x[b : b + SCORE_BATCH]).loss
            float(loss)  # wait for the device

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--skip-hf", action="store_true", help="only measure lmforge")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="wall time, or this process's CPU time")
    parser.add_argument("--dtypes", default="fp32,bf16",
                        help="weight precisions to decode in, both ours and HF's (bf16 skips sampling)")
    parser.add_argument("--checkpoint", help="also score --text with this checkpoint in fp32 and bf16")
    parser.add_argument("--text", help="UTF-8 text file for --checkpoint")
    parser.add_argument("--imported", action="store_true",
                        help="only: GPT-2-small- and SmolLM-135M-shaped models (random) imported from transformers "
                             "(lm.hf_import) against transformers on the very same weights")
    parser.add_argument("--device", default="cpu", help="torch device for the Transformer and imported rows")
    parser.add_argument("--context", action="store_true",
                        help="only: decode tokens/s after a 16- and a 768-token prompt (6x6x384, window 1024)")
    args = parser.parse_args()
    global clock, DEVICE
    clock = CLOCKS[args.clock]
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    new, repeats = args.new_tokens, args.repeats
    tok = char_tokenizer()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {new} new tokens, best of {repeats} "
          f"({args.clock} time)")
    if args.context:
        context_rows(tok, new, repeats)
        return
    print(f"{'model':<22} {'mode':<10} {'dtype':<5} {'lmforge tok/s':>14} {'HF tok/s':>10} {'ratio':>7}")

    def row(name: str, mode: str, ours: float, theirs: float | None, dtype: str = "fp32") -> None:
        ratio = f"{ours / theirs:6.2f}x" if theirs else "      -"
        hf = f"{theirs:10.0f}" if theirs else f"{'-':>10}"
        print(f"{name:<22} {mode:<10} {dtype:<5} {ours:14.0f} {hf} {ratio}", flush=True)

    if args.imported:
        imported_rows(row, new, repeats)
        return
    cpu = DEVICE.type == "cpu"
    bandwidth = read_bandwidth()
    bounds = []
    for dims in ((4, 4, 128), (6, 6, 384)):
        name = "transformer {}x{}x{}".format(*dims)
        for label in args.dtypes.split(","):
            model = ours_transformer(*dims, dtype=DTYPES[label])
            size, products = weight_bytes(model), products_seconds(model) if cpu else 0.0
            if cpu:
                bounds.append(f"{name} {label}: {size / 2**20:5.1f} MiB of weights: streaming them bounds batch 1 at "
                              f"{bandwidth / size:5.0f} tokens/s; the products alone take {products * 1e3:.2f} ms "
                              f"({size / products / 1e9:.1f} GB/s) -> at most {1 / products:.0f} tokens/s")
            dtype = DTYPES[label]
            ours_model = ours_transformer(*dims, dtype=dtype)
            hf_model = None if args.skip_hf else hf_gpt2(*dims, dtype=dtype)
            for mode, (batch, kw) in MODES.items():
                if label != "fp32" and mode.startswith("sample"):
                    continue
                ours = ours_decode(ours_model, tok, batch, kw, new)
                theirs = None if hf_model is None else hf_decode(hf_model, batch, kw, new)
                t_ours, t_hf = best_times([ours, theirs], repeats)
                row(name, mode, batch * new / t_ours, batch * new / t_hf if t_hf else None, label)

    print(f"\nmemory bandwidth {bandwidth / 1e9:.1f} GB/s (streaming read). A decode step reads every weight "
          "once, through the kernels lmforge decodes with (bench/linear.py compares them):")
    for line in bounds:
        print("  " + line)
    print()
    torch.manual_seed(0)
    lstm = prepare_for_inference(build_model(RNNConfig(vocab_size=VOCAB, cell="lstm", n_embd=200, n_hidden=200,
                                                        n_layer=2)).to(DEVICE), in_place=True)
    for mode, (batch, kw) in MODES.items():
        [t] = best_times([ours_decode(lstm, tok, batch, kw, new)], repeats)
        row("lstm 2x200", mode, batch * new / t, None)

    data = score_data()
    print(f"\nscoring: {SCORE_TOKENS} tokens, {SCORE_WINDOW}-token windows, batch {SCORE_BATCH}")
    print(f"{'model':<22} {'lmforge fp32':>13} {'lmforge bf16':>13} {'HF fp32':>10} {'ratio fp32':>11} "
          f"{'bf16 ppl diff':>14}")
    for dims in ((4, 4, 128), (6, 6, 384)):
        name = "transformer {}x{}x{}".format(*dims)
        model = ours_transformer(*dims, block_size=SCORE_WINDOW)
        bf16_model = ours_transformer(*dims, block_size=SCORE_WINDOW, dtype=torch.bfloat16)
        hf = None if args.skip_hf else hf_score(hf_gpt2(*dims, n_positions=SCORE_WINDOW), data)
        r32: dict = {}
        r16: dict = {}
        t32, t16, thf = best_times([ours_score(model, data, r32), ours_score(bf16_model, data, r16), hf], repeats)
        fp32, bf16 = SCORE_TOKENS / t32, SCORE_TOKENS / t16
        ratio = f"{thf / t32:10.2f}x" if thf else f"{'-':>11}"
        theirs = f"{SCORE_TOKENS / thf:10.0f}" if thf else f"{'-':>10}"
        diff = 100 * (r16["ppl"] - r32["ppl"]) / r32["ppl"]
        print(f"{name:<22} {fp32:13.0f} {bf16:13.0f} {theirs} {ratio} {diff:13.3f}%", flush=True)

    if args.checkpoint and args.text:
        score_checkpoint(args.checkpoint, args.text, repeats)


def imported_models() -> list[tuple[str, torch.nn.Module]]:
    """transformers models with random weights at two real shapes: GPT-2 small (12 layers, 12
    heads, 768 wide, 50,257 ids) and SmolLM-135M, a Llama (30 layers, 9 query and 3 key/value
    heads, 576 wide, SwiGLU 1536, 49,152 ids, tied head)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_positions=CONTEXT, bos_token_id=0, eos_token_id=0, pad_token_id=0))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                         max_position_embeddings=CONTEXT, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                         bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    return [("imported gpt2 (124M)", gpt2.eval()), ("imported llama (135M)", llama.eval())]


def imported_rows(row: Callable[..., None], new: int, repeats: int) -> None:
    """Each of ``imported_models`` imported into lmforge (``lm.hf_import``): both decode the
    same weights."""
    from lm.hf_import import lmforge_config, lmforge_state

    for name, hf in imported_models():
        cfg = lmforge_config(hf.config.to_dict())
        ours = build_model(cfg)
        ours.load_state_dict(lmforge_state(hf.state_dict(), cfg))
        ours = prepare_for_inference(ours.eval(), in_place=True)
        tok = CharTokenizer([chr(0x10000 + i) for i in range(cfg.vocab_size - 260)])
        for mode in ("greedy-b1", "greedy-b8", "beam4-b1"):
            batch, kw = MODES[mode]
            t_ours, t_hf = best_times([ours_decode(ours, tok, batch, kw, new), hf_decode(hf, batch, kw, new)],
                                      repeats)
            row(name, mode, batch * new / t_ours, batch * new / t_hf)
        data = score_data()
        result: dict = {}
        t_ours, t_hf = best_times([ours_score(ours, data, result), hf_score(hf, data)], repeats)
        row(name, "score", SCORE_TOKENS / t_ours, SCORE_TOKENS / t_hf)


def context_rows(tok: CharTokenizer, new: int, repeats: int) -> None:
    """A token's cost against its context: greedy batch 1 after a 16- and a 768-token prompt.

    Each step reads every weight and, for each layer, the keys and values of every earlier
    token; so at 768 tokens of context a step reads ``weights + kv`` bytes where at 16 it reads
    little more than ``weights``, and no decoder that keeps an fp32 cache can do better than
    ``weights / (weights + kv)`` of the short-context speed. tokens/s are printed with the
    prompt's prefill counted in the time and without it (the steps alone)."""
    dims = (6, 6, 384)
    model = ours_transformer(*dims, block_size=1024)
    cfg = model.config
    weights = weight_bytes(model)

    def kv_bytes(prompt: int) -> int:
        """fp32 keys and values a step reads, on average over the decode after ``prompt`` tokens."""
        return 2 * cfg.n_layer * (prompt + new // 2) * cfg.n_embd * 4

    generator = torch.Generator().manual_seed(3)
    one = GenerationParams(max_new_tokens=1, stop_at_eos=False, strategy="greedy")
    params = GenerationParams(max_new_tokens=new, stop_at_eos=False, strategy="greedy")
    print(f"\ncontext: transformer 6x6x384, window 1024, greedy b1, {new} new tokens")
    print(f"{'prompt':>7} {'tok/s':>8} {'steps tok/s':>12} {'prefill ms':>11} {'vs 16':>7} {'steps vs 16':>12} "
          f"{'bound':>7}")
    base: tuple[float, float] | None = None
    for length in (16, 768):
        ids = [torch.randint(260, VOCAB, (length,), generator=generator).tolist()]
        t_one, t_all = best_times([lambda ids=ids: generate(model, tok, ids, one),
                                   lambda ids=ids: generate(model, tok, ids, params)], repeats)
        total, steps = new / t_all, (new - 1) / (t_all - t_one)
        bound = (weights + kv_bytes(16)) / (weights + kv_bytes(length))  # bytes a step reads, 16 over this
        base = base or (total, steps)
        print(f"{length:7d} {total:8.0f} {steps:12.0f} {t_one * 1e3:11.1f} {total / base[0]:6.2f}x "
              f"{steps / base[1]:11.2f}x {bound:6.2f}x", flush=True)


def score_checkpoint(path: str, text_file: str, repeats: int) -> None:
    """fp32 vs bf16 perplexity and speed of a trained checkpoint on a real text."""
    with open(text_file, encoding="utf-8") as fh:
        text = fh.read()
    results: dict[str, tuple[float, float]] = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        pipe = Pipeline.from_checkpoint(path, dtype=dtype)
        out: dict = {}

        def run(pipe: Pipeline = pipe, out: dict = out) -> None:
            out["r"] = pipe.score([text])[0]

        [t] = best_times([run], repeats)
        results[name] = (out["r"].perplexity, out["r"].tokens / t)
    (p32, s32), (p16, s16) = results["fp32"], results["bf16"]
    print(f"\n{path} on {text_file}: perplexity fp32 {p32:.4f}, bf16 {p16:.4f} "
          f"({100 * (p16 - p32) / p32:+.3f}%); tokens/s fp32 {s32:.0f}, bf16 {s16:.0f}")


if __name__ == "__main__":
    main()
