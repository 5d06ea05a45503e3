#!/usr/bin/env bash
# serve_shape.sh: `peft serve-bench` on a random-weight model of a named shape with 4 LoRA
# adapters (r 16, all linear layers, 2 training steps each), so that batched serving is
# measured where the weights do not fit in cache (tiny's do: see README, "Serving").
#   bench/serve_shape.sh [SHAPE] [THREADS...]      e.g. bench/serve_shape.sh small 1 2
# The model is `peft bench --shape SHAPE --save-gguf` (bf16), merged with the first adapter into a
# Hugging Face directory (what serve loads) with models/tiny-llama's tokenizer (ids < 4096 fit
# any shape's vocabulary). Everything is written under WORK (default build/serve-SHAPE), which
# this script owns and re-creates. Env: PEFT (default build/peft), ROUNDS (3), CLIENTS (8),
# SECONDS_LOAD (6).
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${1:-small}
shift || true
THREADS=${*:-1 2}
PEFT=${PEFT:-build/peft}
WORK=${WORK:-build/serve-$SHAPE}
[ -x "$PEFT" ] || { echo "serve_shape: $PEFT not built (ninja -C build peft)" >&2; exit 1; }
case "$WORK" in build/serve-*) rm -rf "$WORK" ;; *) [ ! -e "$WORK" ] || { echo "serve_shape: $WORK exists" >&2; exit 1; } ;; esac
mkdir -p "$WORK"
"$PEFT" bench --shape "$SHAPE" --dtype bf16 --save-gguf "$WORK/base.gguf" 2> /dev/null
ADAPTERS=()
for name in a b c d; do
  "$PEFT" train --base_model "$WORK/base.gguf" --tokenizer models/tiny-llama --datasets data/demo/train.jsonl \
    --output_dir "$WORK/$name" --r 16 --lora_alpha 32 --target_modules all-linear --max_steps 2 \
    --micro_batch_size 1 --sequence_len 64 --learning_rate 1e-2 --seed "$(printf '%d' "'$name")" > "$WORK/$name.log" 2>&1 \
    || { echo "serve_shape: training adapter $name failed, see $WORK/$name.log" >&2; exit 1; }
  ADAPTERS+=(--adapter "$name=$WORK/$name")
done
"$PEFT" merge --model "$WORK/base.gguf" --adapter "$WORK/a" --out "$WORK/model" > "$WORK/merge.log" 2>&1
cp models/tiny-llama/tokenizer.json models/tiny-llama/tokenizer_config.json models/tiny-llama/special_tokens_map.json "$WORK/model/"
for t in $THREADS; do
  "$PEFT" serve-bench --model "$WORK/model" "${ADAPTERS[@]}" --parallel 4 --threads "$t" --rounds "${ROUNDS:-3}" \
    --clients "${CLIENTS:-8}" --seconds "${SECONDS_LOAD:-6}" 2> /dev/null
done
