#!/usr/bin/env bash
# make_demo_data.sh: rebuilds the demo task data, data/demo/{train,held_out}.jsonl: "Which text is
# this passage from: Bible, Moby Dick or Jargon File?\n<passage>" -> "<text's name>", 333 training
# and 26 held-out passages per text, cut from the base model's own pretraining corpus.
# Runs step 1 of scripts/make_base_model.sh (CORPUS_ONLY=1: installs the Debian packages when
# missing, checks every sha256, writes the cleaned texts) into a scratch directory, then
# `node tools/demo_data.mjs sources` (deterministic: the pretraining's document cut and held-out
# split, sha256 order within each text); prints counts and the outputs' sha256.
# Not a build or CI step: the JSONL files are committed (data/demo/README.md has the recipe).
# Usage: scripts/make_demo_data.sh [OUT_DIR]   (default data/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/demo}

sha() { sha256sum "$1" | cut -d' ' -f1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
CORPUS_ONLY=1 WORK="$tmp" bash scripts/make_base_model.sh >&2
node tools/demo_data.mjs sources "$tmp" "$OUT"
for f in "$OUT/train.jsonl" "$OUT/held_out.jsonl"; do
  echo "$(sha "$f")  $f  $(wc -l < "$f") lines"
done
