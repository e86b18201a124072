#!/usr/bin/env bash
# The GPU path, proven in one short run (under 8 minutes on one GPU) on a CUDA machine:
#   1. install the project (a torch that sees CUDA is kept; otherwise `pip install torch==2.13.0`,
#      which on an ordinary Linux machine is the CUDA build);
#   2. the device-parametrised tests (tests/test_devices.py) on cuda, every one against the CPU;
#   3. 200 training steps of each family (Transformer, LSTM) in bf16 on cuda, through the CLI;
#   4. the shipped checkpoints served on cuda (`lmforge serve --device cuda`), every endpoint called;
#   5. decode tokens/s against transformers on the same GPU (bench/decode.py --device cuda).
#
#     bash bench/gpu_check.sh [OUT_DIR]        # default OUT_DIR: /tmp/gpu_check
#
# LMFORGE_CHECK_DEVICE=cpu runs the same steps on the CPU (no nvidia-smi, 30 training steps, short decode rows):
# how the script itself is tested on a machine without a GPU.
#
# Prints one PASS/FAIL line per step and exits non-zero if any failed; logs are in OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/gpu_check}"
DEV="${LMFORGE_CHECK_DEVICE:-cuda}"
STEPS=200
if [ "$DEV" = cpu ]; then STEPS=30; fi
mkdir -p "$OUT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
failed=0
step() {  # step NAME COMMAND...: run it, its output to OUT/NAME.log, and say how it went
  local name="$1"; shift
  local start=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "PASS $name ($((SECONDS - start)) s)"
  else
    echo "FAIL $name ($((SECONDS - start)) s): tail of $OUT/$name.log"; tail -n 25 "$OUT/$name.log" | sed 's/^/    /'
    failed=1
  fi
}

install() {
  if [ "$DEV" = cpu ]; then
    python -c "import lm, service, transformers, httpx"
    return
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || return 1
  if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    pip install torch==2.13.0 || return 1
  fi
  pip install -e '.[test,bench]' || python -c "import lm, service, transformers, httpx"  # offline: already there
  python -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.__version__, torch.cuda.get_device_name())"
}

device_tests() {
  LMFORGE_TEST_DEVICES=$DEV python -m pytest -q -p no:cacheprovider tests/test_devices.py
}

corpus() {  # a few hundred KB of English from this repository (no data set needed)
  cat README.md docs/*.md checkpoints/README.md lm/*.py lm/*/*.py service/*.py > "$OUT/corpus.txt"
  for _ in 1 2 3; do cat "$OUT/corpus.txt" "$OUT/corpus.txt" > "$OUT/c2.txt" && mv "$OUT/c2.txt" "$OUT/corpus.txt"; done
}

train_family() {  # train_family transformer|lstm
  local model
  if [ "$1" = transformer ]; then
    model='family = "transformer"
block_size = 128
n_layer = 4
n_head = 4
n_embd = 256'
  else
    model='family = "rnn"
cell = "lstm"
n_embd = 256
n_hidden = 512
n_layer = 2'
  fi
  cat > "$OUT/$1.toml" <<EOF
[data]
train = ["$OUT/corpus.txt"]
valid_fraction = 0.05

[tokenizer]
kind = "char"

[model]
$model

[train]
out_dir = "$OUT/run-$1"
device = "$DEV"
precision = "bf16"
batch_size = 64
seq_len = 128
max_steps = $STEPS
eval_every = $((STEPS / 2))
lr = 0.003
warmup_steps = 20
progress = false
EOF
  lmforge train --config "$OUT/$1.toml" || return 1
  python - "$OUT/run-$1" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(l) for l in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
losses = [r["loss"] for r in rows if "loss" in r]
print(f"train loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} logged steps")
assert losses[-1] < losses[0] - 0.5, "the loss did not fall"
EOF
  lmforge generate "$OUT/run-$1" --device "$DEV" --prompt "The model" --max-new-tokens 40
}

serve() {
  local port=18451
  lmforge serve --checkpoints checkpoints --device "$DEV" --host 127.0.0.1 --port $port >"$OUT/server.log" 2>&1 &
  local pid=$! status
  python - "$port" "$DEV" "$pid" <<'EOF'
import os, sys, time
import httpx

base = f"http://127.0.0.1:{sys.argv[1]}"
client = httpx.Client(base_url=base, timeout=120)
for _ in range(240):
    try:  # the server process still there (not gone, not a zombie)?
        alive = open(f"/proc/{sys.argv[3]}/stat").read().split(") ")[1][0] != "Z"
    except OSError:
        alive = False
    if not alive:
        sys.exit("the server exited before it was ready (see server.log)")
    try:
        if client.get("/ready").status_code == 200:
            break
    except httpx.TransportError:
        pass
    time.sleep(0.5)
else:
    sys.exit("the server never became ready")
cards = client.get("/v1/models").json()["data"]
assert cards, "no models served"
for card in cards:
    model = card["id"]
    assert card["device"].startswith(sys.argv[2]), f"{model} is on {card['device']}"
    def ok(path, body):
        r = client.post(path, json={"model": model, **body})
        assert r.status_code == 200, f"{path} {r.status_code} {r.text[:300]}"
        return r.json()
    text = ok("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 40})["choices"][0]["text"]
    print(f"{model} on {card['device']}: ROMEO:{text!r}")
    ok("/v1/completions", {"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0.8, "seed": 1, "n": 2})
    ok("/v1/generate", {"prompt": "ROMEO:", "strategy": "beam", "num_beams": 4, "max_new_tokens": 20})
    ok("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20})
    ppl = ok("/v1/perplexity", {"text": "To be, or not to be, that is the question."})["results"][0]["perplexity"]
    print(f"{model}: perplexity {ppl:.2f}")
    ids = ok("/tokenize", {"prompt": "to be", "add_special_tokens": False})["tokens"]
    text = ok("/detokenize", {"tokens": ids})["prompt"]  # a word model may not know every word
    assert ok("/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"] == ids, (ids, text)
    for path, body in (("/v1/completions", {"prompt": "To be", "max_tokens": 10, "stream": True}),
                       ("/v1/generate/stream", {"prompt": "To be", "max_new_tokens": 10})):
        with client.stream("POST", path, json={"model": model, **body}) as r:
            assert r.status_code == 200 and any(l.startswith("data: ") for l in r.iter_lines()), path
for path in ("/health", "/metrics", "/docs", "/"):
    assert client.get(path).status_code == 200, path
print("every endpoint answered for", [c["id"] for c in cards])
EOF
  status=$?
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return $status
}

decode_bench() {
  local dtypes=fp32,bf16 new=128
  if [ "$DEV" = cpu ]; then dtypes=fp32 new=16; fi
  python bench/decode.py --device "$DEV" --new-tokens $new --repeats 2 --dtypes $dtypes \
    && python bench/decode.py --device "$DEV" --imported --new-tokens $((new / 2)) --repeats 2
}

step install install || { echo "cannot install: stopping"; exit 1; }
step device_tests device_tests
step corpus corpus
step train_transformer train_family transformer
step train_lstm train_family lstm
step serve serve
step decode_bench decode_bench
echo "decode tokens/s on $DEV:"
grep -E "^(transformer|lstm|imported|model)" "$OUT/decode_bench.log" || true
exit $failed
