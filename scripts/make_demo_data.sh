#!/usr/bin/env bash
# make_demo_data.sh: rebuilds the demo task data, data/demo/{train,held_out}.jsonl, from the King
# James Bible as Debian's bible-kjv-text package ships it (public domain), read out with
# bible-kjv's `bible` exactly as scripts/make_base_model.sh does: "Which book of the Bible is
# this verse from?\n<verse>" -> "<book>", 20 books, 64 training and 4 held-out verses per book.
# Deterministic (tools/demo_data.mjs orders each book's verses by sha256 of "Book c:v").
# Installs bible-kjv / bible-kjv-text with apt-get when missing; checks the data file's sha256;
# prints counts and the outputs' sha256.
# Not a build or CI step: the JSONL files are committed (data/demo/README.md has the recipe).
# Usage: scripts/make_demo_data.sh [OUT_DIR]   (default data/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/demo}

# bible-kjv-text 4.38 (Debian 12 bookworm), same pin as scripts/make_base_model.sh
BIBLE_DATA=/usr/lib/bible.data
BIBLE_DATA_SHA=6c746c2acc8a34bfded980883ff1701a5d68934a1c853ebf88a07b978fe0ae0e

sha() { sha256sum "$1" | cut -d' ' -f1; }

if ! command -v bible > /dev/null || [ ! -f "$BIBLE_DATA" ]; then
  echo "make_demo_data: installing bible-kjv bible-kjv-text (Debian)" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq --no-install-recommends bible-kjv bible-kjv-text >&2 || { $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq --no-install-recommends bible-kjv bible-kjv-text >&2; }
fi
got=$(sha "$BIBLE_DATA")
if [ "$got" != "$BIBLE_DATA_SHA" ]; then
  echo "make_demo_data: $BIBLE_DATA has sha256 $got, expected $BIBLE_DATA_SHA (bible-kjv-text 4.38); the committed data came from that version" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Chapter headings ("Genesis 1") and numbered verses ("  1 In the beginning ...").
bible -l100000 "Gen1:1-Rev22:21" > "$tmp/kjv.txt"
node tools/demo_data.mjs kjv "$tmp/kjv.txt" "$OUT"
for f in "$OUT/train.jsonl" "$OUT/held_out.jsonl"; do
  echo "$(sha "$f")  $f  $(wc -l < "$f") lines"
done
