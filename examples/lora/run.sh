#!/usr/bin/env bash
# Two tenants share one model; one of them customizes it with a LoRA adapter. Runs from a source
# checkout after `bash scripts/setup.sh`, on the tiny llama model and adapter in tests/data.
set -euo pipefail
cd "$(dirname "$0")/../.."
export REALM_HOME=${REALM_HOME:-$(mktemp -d)}
realm=.venv/bin/realm
model=tests/data/tiny-llama-F32.gguf
adapter=tests/data/tiny-llama-lora-r8.gguf   # llama.cpp's GGUF adapter format; a PEFT folder works too

# Ad hoc: the same prompt with and without the adapter.
$realm run "Once upon a time" --model "$model" --temperature 0 --max-tokens 12 --quiet
$realm run "Once upon a time" --model "$model" --temperature 0 --max-tokens 12 --quiet --lora "$adapter" --lora-scale 0.5
# The same adapter merged into a cached copy of the weights (docs/lora.md): the same text here, other last bits.
$realm run "Once upon a time" --model "$model" --temperature 0 --max-tokens 12 --quiet --lora "$adapter" --lora-scale 0.5 \
    --lora-mode merged

# Per tenant: acme binds the adapter as "style"; globex has none. Both deploy the reference guest.
for tenant in acme globex; do
    $realm tenant create "$tenant"
    $realm tenant deploy "$tenant" guest/generate.wasm
done
$realm tenant set-lora acme "$adapter" --scale 0.5 --as style

# Both tenants at once, in one batched run: acme's requests use its adapter, globex's never do.
cat >"$REALM_HOME/requests.jsonl" <<JSONL
{"tenant": "acme", "prompt": "Once upon a time", "lora": "style", "temperature": 0, "max_tokens": 12}
{"tenant": "globex", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 12}
JSONL
$realm batch "$REALM_HOME/requests.jsonl" --model "$model"

# What the adapter costs: decode speed with and without it in one run, alone and 4 requests over 4 scales.
$realm bench --model "$model" --lora "$adapter" --decode-tokens 32 --json
$realm bench --model "$model" --lora "$adapter" --concurrency 1,4 --decode-tokens 16 --json
