#!/usr/bin/env bash
# Side-by-side throughput of `peft bench` and the PyTorch baseline (../shared/bench/torch_ref.py),
# interleaved A B A B ... in one run so machine noise hits both; prints medians and ratios.
#
#   bench/compare_torch.sh [SHAPE] [ROUNDS]         e.g. bench/compare_torch.sh small 3
# Env: BATCH (4), SEQ (256), STEPS (5), THREADS (2), PEFT (build/peft), PEFT_FLAGS (e.g. --bf16),
# TORCH_REF.
# Needs: apt-get install python3-torch python3-numpy libopenblas0-openmp (dev machines only).
# peft `frozen` (forward + input gradients, no adapter) is paired with torch `lora` r16, the
# baseline's nearest mode; peft `full` with torch `full`; peft `lora` with torch `lora` (both r16,
# alpha 16, on q,k,v,o,gate,up,down, B = 0 at init); peft `dora` with torch `dora`; the other
# adapter methods (lora_fa, vera, deep_lora: r16 too) with torch `lora`. METHODS picks which
# (default: full frozen lora), e.g. METHODS="lora dora lora_fa vera deep_lora".
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${1:-tiny}
ROUNDS=${2:-3}
BATCH=${BATCH:-4}; SEQ=${SEQ:-256}; STEPS=${STEPS:-5}; THREADS=${THREADS:-2}
PEFT=${PEFT:-build/peft}
PEFT_FLAGS=${PEFT_FLAGS:-}   # e.g. --bf16 (PyTorch's side stays f32, the issue's baseline)
TORCH_REF=${TORCH_REF:-../shared/bench/torch_ref.py}
TORCH_SHAPE=$SHAPE; [ "$SHAPE" = "1b" ] && TORCH_SHAPE=1b-shape
OUT=$(mktemp -d)

METHODS=${METHODS:-full frozen lora}
for method in $METHODS; do
  case $method in full|lora|dora) tmethod=$method ;; *) tmethod=lora ;; esac
  for r in $(seq "$ROUNDS"); do
    "$PEFT" bench --shape "$SHAPE" --method "$method" --lora-r 16 --lora-alpha 16 --batch "$BATCH" --seq "$SEQ" \
      --steps "$STEPS" --threads "$THREADS" --peak $PEFT_FLAGS >> "$OUT/peft_$method.jsonl"
    /usr/bin/python3 "$TORCH_REF" --config "$TORCH_SHAPE" --method "$tmethod" --rank 16 --batch "$BATCH" \
      --seq "$SEQ" --steps "$STEPS" --threads "$THREADS" >> "$OUT/torch_$method.jsonl"
  done
done

/usr/bin/python3 - "$OUT" "$SHAPE" "$METHODS" <<'PY'
import json, statistics, sys
out, shape, methods = sys.argv[1], sys.argv[2], sys.argv[3].split()
def med(path, key):
    return statistics.median(json.loads(l)[key] for l in open(path) if l.strip())
print(f"| shape | peft method | torch method | peft tok/s | torch tok/s | speed ratio | peft step / peft lora step | peft GFLOP/s / raw peak (bf16 with --bf16) | trainable params | activations MiB | peft RSS MiB | torch RSS MiB | RSS ratio |")
print(f"|---|---|---|---|---|---|---|---|---|---|---|---|---|")
lora_tps = med(f"{out}/peft_lora.jsonl", "tokens_per_s") if "lora" in methods else None
for m in methods:
    tm = {"full": "full", "dora": "dora r16"}.get(m, "lora r16")
    p, t = f"{out}/peft_{m}.jsonl", f"{out}/torch_{m}.jsonl"
    pt, tt = med(p, "tokens_per_s"), med(t, "tokens_per_s")
    pr, tr = med(p, "peak_rss_mib"), med(t, "peak_rss_mib")
    pf = med(p, "peak_fraction")
    rel = f"{lora_tps/pt:.3f}" if lora_tps else "-"
    print(f"| {shape} | {m} | {tm} | {pt:.0f} | {tt:.0f} | {pt/tt:.2f}x | {rel} | {pf:.2f} | {med(p, 'trainable_params'):.0f} | {med(p, 'activation_mib'):.0f} | {pr:.0f} | {tr:.0f} | {pr/tr:.2f} |")
PY
