#!/usr/bin/env bash
# Command 1 of the README. Until the bundled tiny base model lands (issue: "the main job out of
# the box"), it installs what is missing, builds, and runs a smoke training run: a few steps of
# full fine-tuning on the tiny PyTorch-checked fixture checkpoint, printing the loss falling as it learns one batch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$BUILD" --target peft
STEPS=${DEMO_STEPS:-20}
echo "demo: $STEPS steps of full fine-tuning on tests/fixtures/llama_gqa (a tiny HF-layout Llama with GQA)"
"$BUILD/peft" bench --model tests/fixtures/llama_gqa --method full --batch 2 --seq 12 --steps "$STEPS" --warmup 0 --threads 2 --same-batch --lr 3e-3
echo "demo: done (one JSON line above: loss_first -> loss_final, tokens/s, peak RSS)"
