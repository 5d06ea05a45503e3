#!/usr/bin/env bash
# test_compare_methods.sh PEFT_BINARY: bench/compare_methods.sh on a tiny budget (lora and vera,
# 2 steps, one learning rate, the second task data/compare/kinds) writes a table with one
# filled row per method, an SVG naming every method, and refuses outputs that are or hold its
# inputs. Registered in CTest (label bench); under a minute on 2 idle cores.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export PEFT=${1:?usage: test_compare_methods.sh PEFT_BINARY}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# ---- refusals: nothing trained, nothing of the inputs touched ------------------------------------
before=$(cat data/compare/kinds/*.jsonl data/compare/*.jsonl | sha256sum)
STEPS=1 LRS=1e-2 METHODS=lora OUT=data/compare bash bench/compare_methods.sh > "$TMP/r1.log" 2>&1 \
  && fail "OUT=data/compare (an input) was accepted"
grep -q "refused" "$TMP/r1.log" || fail "OUT=data/compare: no 'refused' message: $(cat "$TMP/r1.log")"
STEPS=1 LRS=1e-2 METHODS=lora OUT=data bash bench/compare_methods.sh > "$TMP/r2.log" 2>&1 \
  && fail "OUT=data (contains the inputs) was accepted"
mkdir -p "$TMP/mine" && echo keep > "$TMP/mine/notes.txt"
STEPS=1 LRS=1e-2 METHODS=lora OUT="$TMP/mine" bash bench/compare_methods.sh > "$TMP/r3.log" 2>&1 \
  && fail "a non-empty directory the script did not make was accepted"
[ "$(cat "$TMP/mine/notes.txt")" = keep ] && [ "$(ls "$TMP/mine")" = notes.txt ] || fail "the foreign directory was changed"
METHODS=lora,no_such_method OUT="$TMP/bad" bash bench/compare_methods.sh > "$TMP/r4.log" 2>&1 \
  && fail "an unknown METHODS name was accepted"
grep -q "no_such_method" "$TMP/r4.log" || fail "unknown method: the message does not name it"
[ ! -e "$TMP/bad" ] || fail "an unknown METHODS name still created OUT"
[ "$(cat data/compare/kinds/*.jsonl data/compare/*.jsonl | sha256sum)" = "$before" ] || fail "the task data changed"

# ---- a tiny comparison -------------------------------------------------------------------------
OUT="$TMP/cmp"
if ! STEPS=2 LRS=1e-2 METHODS=lora,vera TASKS=data/compare/kinds OUT="$OUT" bash bench/compare_methods.sh > "$TMP/run.log" 2>&1; then
  fail "the tiny comparison failed: $(tail -5 "$TMP/run.log")"
else
  md="$OUT/compare.md"
  for task in kinds; do
    grep -q "^## Task \`$task\`" "$md" || fail "compare.md has no section for task $task"
    for m in lora vera; do
      # the row of method m in task's table: a finite held-out loss, a parameter count
      row=$(awk -v t="## Task \`$task\`" -v m="| $m |" '$0 == t {on = 1; next} /^## / {on = 0} on && index($0, m) == 1' "$md")
      [ -n "$row" ] || { fail "compare.md: no row for $m on $task"; continue; }
      loss=$(cut -d'|' -f4 <<< "$row" | tr -d ' ')
      acc=$(cut -d'|' -f6 <<< "$row" | tr -d ' ')
      params=$(cut -d'|' -f8 <<< "$row" | tr -d ' ,')
      [[ "$loss" =~ ^[0-9]+\.[0-9]{4}$ ]] || fail "$m on $task: held-out loss '$loss' is not a number"
      [[ "$acc" =~ ^[0-9.]+%$ ]] || fail "$m on $task: accuracy '$acc' is not a percentage"
      [[ "$params" =~ ^[1-9][0-9]*$ ]] || fail "$m on $task: trainable parameters '$params'"
    done
  done
  # vera trains far fewer parameters than lora (its shared projections are frozen)
  node -e '
const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => JSON.parse(l));
const get = (m, t) => rows.find((r) => r.method === m && r.task === t);
for (const t of ["kinds"]) {
  const l = get("lora", t), v = get("vera", t), b = get("base", t);
  if (!l || !v || !b) throw new Error(`results.jsonl: rows missing for ${t}`);
  for (const r of [l, v]) for (const k of ["eval_loss", "forget_loss", "step_s", "peak_rss_mib", "setup_s"])
    if (!(typeof r[k] === "number" && isFinite(r[k]) && r[k] >= 0)) throw new Error(`${r.method}/${t}: ${k} = ${r[k]}`);
  if (!(v.trainable_params * 2 < l.trainable_params)) throw new Error(`${t}: vera ${v.trainable_params} vs lora ${l.trainable_params} parameters`);
  if (!(l.eval_loss < b.eval_loss)) throw new Error(`${t}: lora did not lower the held-out loss (${b.eval_loss} -> ${l.eval_loss})`);
}' "$OUT/results.jsonl" || fail "results.jsonl"
  svg="$OUT/compare.svg"
  head -c 5 "$svg" | grep -q '<svg' && tail -1 "$svg" | grep -q '</svg>' || fail "compare.svg is not an SVG document"
  for m in base lora vera; do grep -q ">$m</text>" "$svg" || fail "compare.svg does not name $m"; done
fi
[ $fails -eq 0 ] && echo "test_compare_methods: ok" || { echo "test_compare_methods: $fails failure(s)" >&2; exit 1; }
