#!/usr/bin/env bash
# make_demo_data.sh: rebuilds the demo task data, data/demo/{train,held_out}.jsonl, from the
# Jargon File as Debian's jargon-text package ships it (public domain): "Define the hacker term
# X." -> the first one or two sentences of X's definition. Deterministic (tools/demo_data.mjs
# orders entries by sha256 of the term; the first 80 are held out). Installs jargon-text with
# apt-get when missing; checks the file's sha256; prints counts and the outputs' sha256.
# Not a build or CI step: the JSONL files are committed (data/demo/README.md has the recipe).
# Usage: scripts/make_demo_data.sh [OUT_DIR]   (default data/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-data/demo}

# jargon-text 4.4.7-4.1 (Debian 12 bookworm)
JARGON_GZ=/usr/share/doc/jargon-text/jargon.txt.gz
JARGON_SHA=fcaa76e4c2ebdf90c6557524b9430373dc49d1a26462ef30f43c0ace70a25a3a

sha() { sha256sum "$1" | cut -d' ' -f1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The file from the installed package, or (images that drop /usr/share/doc) from the .deb itself.
jargon_file() {
  if [ ! -f "$JARGON_GZ" ]; then
    echo "make_demo_data: installing jargon-text (Debian)" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq --no-install-recommends jargon-text >&2 || { $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq --no-install-recommends jargon-text >&2; }
  fi
  if [ -f "$JARGON_GZ" ]; then echo "$JARGON_GZ"; return; fi
  (cd "$tmp" && apt-get download jargon-text >&2 && dpkg-deb -x jargon-text_*.deb deb)
  echo "$tmp/deb$JARGON_GZ"
}

gz=$(jargon_file)
got=$(sha "$gz")
if [ "$got" != "$JARGON_SHA" ]; then
  echo "make_demo_data: $gz has sha256 $got, expected $JARGON_SHA (jargon-text 4.4.7-4.1); the committed data came from that version" >&2
  exit 1
fi
zcat "$gz" > "$tmp/jargon.txt"
node tools/demo_data.mjs dataset "$tmp/jargon.txt" "$OUT"
for f in "$OUT/train.jsonl" "$OUT/held_out.jsonl"; do
  echo "$(sha "$f")  $f  $(wc -l < "$f") lines"
done
