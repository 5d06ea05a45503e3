#!/usr/bin/env bash
# Command 1 of the README: the demo fine-tune. Installs what is missing (scripts/setup.sh),
# builds the `peft` binary, then on the bundled tiny base model (models/tiny-llama):
#   1. evaluates the base on the held-out demo questions (peft eval --accuracy --json: loss and
#      greedy accuracy, answer == expected answer over all held-out questions),
#   2. fine-tunes a LoRA adapter on the demo task (peft train, fixed seed, held-out loss every
#      STEPS/8 steps, so report.html draws the eval curve at 9 points),
#   3. evaluates base + adapter on the same held-out questions,
#   4. prints held-out loss and accuracy before/after and three held-out questions answered by
#      the base and by base + adapter (greedy).
# The task (data/demo/README.md): "Which text is this passage from: Bible, Moby Dick or Jargon
# File?" + a passage -> the text's name; held-out passages come from the documents the base
# model's pretraining held out, so it never read them.
# Environment: DEMO_STEPS=N (training steps, default 120), DEMO_OUT (default out/demo),
# DEMO_THREADS (default 2), BUILD_DIR (default build). Exits non-zero when any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$BUILD" --target peft
PEFT="$BUILD/peft"

MODEL=models/tiny-llama
TRAIN=data/demo/train.jsonl
HELD=data/demo/held_out.jsonl
OUT=${DEMO_OUT:-out/demo}
STEPS=${DEMO_STEPS:-120}
THREADS=${DEMO_THREADS:-2}
SEQ=128   # a chat-formatted passage + answer is about 110 tokens: one per row
BATCH=8
for f in "$MODEL/model.safetensors" "$TRAIN" "$HELD"; do
  [ -f "$f" ] || { echo "demo: $f missing" >&2; exit 1; }
done
rm -rf "$OUT"
mkdir -p "$OUT"

# The loss number from `peft eval --json` output (one JSON object on stdout).
# "LOSS ACCURACY" from `peft eval --accuracy --json` output (one JSON object on stdout).
eval_held_out() {
  "$PEFT" eval --model "$MODEL" "$@" --data "$HELD" --json --accuracy --sequence_len $SEQ --batch $BATCH \
      --threads "$THREADS" > "$OUT/eval.json"
  node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
           if (!(j.loss > 0) || !(j.accuracy_n > 0)) process.exit(1);
           console.log(j.loss.toFixed(4), j.accuracy, j.accuracy_n)' "$OUT/eval.json"
}

n_train=$(wc -l < "$TRAIN"); n_held=$(wc -l < "$HELD")
echo
echo "demo: task: which text is a passage from, the Bible, Moby Dick or the Jargon File ($n_train training passages, $n_held held out)"
echo "demo: base model: $MODEL (5.4M parameters, pretrained by scripts/make_base_model.sh)"
res=$(eval_held_out)   # an assignment, so that set -e stops the demo when the eval fails
read -r before acc_before n_acc <<< "$res"
echo "demo: held-out loss of the base model: $before"
EVAL_STEPS=$(( STEPS / 8 > 0 ? STEPS / 8 : 1 ))
WARMUP=$(( STEPS / 12 ))

echo "demo: LoRA fine-tuning, $STEPS steps (r 16, alpha 32, all linear layers, lr 3e-3, $WARMUP warmup steps then cosine, $BATCH rows of $SEQ tokens, seed 1, $THREADS threads)"
t0=$(date +%s)
"$PEFT" train --base_model "$MODEL" --datasets "$TRAIN" --test_datasets "$HELD" --output_dir "$OUT/adapter" \
    --adapter lora --r 16 --lora_alpha 32 --lora_dropout 0 --target_modules all-linear \
    --learning_rate 3e-3 --lr_scheduler cosine --warmup_steps $WARMUP --micro_batch_size $BATCH --sequence_len $SEQ \
    --max_steps "$STEPS" --eval_steps "$EVAL_STEPS" --logging_steps 5 --seed 1 --threads "$THREADS"
t1=$(date +%s)
res=$(eval_held_out --adapter "$OUT/adapter")
read -r after acc_after n_acc <<< "$res"

# Three held-out questions, evenly spaced through the file (one per text, as the file is grouped by
# text), not picked by result.
node -e '
const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n");
const n = lines.length;
for (const i of [Math.floor(n / 6), Math.floor(n / 2), Math.floor(5 * n / 6)]) {
  const j = JSON.parse(lines[i]);
  require("fs").writeFileSync(`${process.argv[2]}/q${i}.txt`, j.instruction);
  require("fs").writeFileSync(`${process.argv[2]}/a${i}.txt`, j.output);
  console.log(i);
}' "$HELD" "$OUT" > "$OUT/picked.txt"

echo
echo "== held-out answers (greedy; the base has never been asked this, the adapter learned it) =="
while read -r i; do
  q=$(cat "$OUT/q$i.txt")
  echo
  echo "Q: $q"
  echo "   expected:        $(cat "$OUT/a$i.txt")"
  base_ans=$("$PEFT" generate --model "$MODEL" --chat "$q" --max-new-tokens 40 --threads "$THREADS" 2> "$OUT/gen.log") \
    || { cat "$OUT/gen.log" >&2; exit 1; }
  lora_ans=$("$PEFT" generate --model "$MODEL" --adapter "$OUT/adapter" --chat "$q" --max-new-tokens 40 --threads "$THREADS" 2> "$OUT/gen.log") \
    || { cat "$OUT/gen.log" >&2; exit 1; }
  echo "   base:            $(echo "$base_ans" | tr '\n' ' ')"
  echo "   base + adapter:  $(echo "$lora_ans" | tr '\n' ' ')"
  rm -f "$OUT/q$i.txt" "$OUT/a$i.txt"
done < "$OUT/picked.txt"
rm -f "$OUT/picked.txt" "$OUT/gen.log"

echo
node -e '
const [b, a, steps, secs] = process.argv.slice(1).map(Number);
console.log(`demo: held-out loss (mean cross-entropy over answer tokens): ${b.toFixed(4)} -> ${a.toFixed(4)} ` +
            `(${(100 * (b - a) / b).toFixed(1)}% lower) after ${steps} LoRA steps in ${secs} s`);' "$before" "$after" "$STEPS" $((t1 - t0))
node -e '
const [b, a, n] = process.argv.slice(1).map(Number);
console.log(`demo: held-out accuracy: base ${(100 * b).toFixed(1)}% -> adapter ${(100 * a).toFixed(1)}% (${n} examples; ` +
            `greedy answer == expected answer, peft eval --accuracy)`);' "$acc_before" "$acc_after" "$n_acc"
echo "demo: adapter (Hugging Face PEFT layout): $OUT/adapter/adapter_config.json, adapter_model.safetensors"
echo "demo: training report: $OUT/adapter/report.html (train loss, held-out loss every $EVAL_STEPS steps, the config)"
echo "demo: try it: $PEFT generate --model $MODEL --adapter $OUT/adapter --chat \"\$(printf 'Which text is this passage from: Bible, Moby Dick or Jargon File?\\nCall me Ishmael. Some years ago I thought I would sail about a little and see the watery part of the world.')\""
