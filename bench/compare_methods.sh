#!/usr/bin/env bash
# compare_methods.sh: every fine-tuning method this `peft` build has, side by side on the same
# budget. For each task and method: `peft train` at each learning rate of a sweep (same steps,
# rows, tokens, seed), the run with the lowest final held-out loss kept; then for that run
# `peft eval` on the task's held-out answers (accuracy when `peft eval --accuracy` exists) and on
# held-out pretraining text (forgetting: loss change against the base). Writes OUT/compare.md,
# OUT/compare.svg (bench/compare_report.mjs) and OUT/results.jsonl (one line per method x task).
#
# Methods: the rows of METHOD_TABLE below whose adapter `peft train --list-methods` lists and
# whose config key `peft train --help` knows; the others are reported as skipped.
# Tasks: directories holding train.jsonl + held_out.jsonl (default: the demo task and
# data/compare/kinds, made by tools/compare_task.mjs).
# Forgetting text: data/compare/pretrain_held_out.jsonl (Moby Dick documents the base model's
# pretraining held out, data/compare/README.md).
#
# Environment (defaults in brackets):
#   STEPS [24] optimizer steps per run; BATCH [8] rows per step; SEQ [128] tokens per row
#   LRS   learning rates for every method, comma-separated [per-method sweeps of 3, below]
#   METHODS comma-separated row names [all]; TASKS comma-separated task dirs [data/demo,data/compare/kinds]
#   OUT [out/compare]; THREADS [2]; PEFT [build/peft]; MODEL [models/tiny-llama]; R [8] rank
# OUT is refused when it is, contains or sits inside an input, or when it exists, is not empty
# and was not made by this script; a rerun replaces only what an earlier run wrote there.
set -euo pipefail
{  # parsed whole before it runs: editing this file during a run cannot change that run
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STEPS=${STEPS:-24}
BATCH=${BATCH:-8}
SEQ=${SEQ:-128}
THREADS=${THREADS:-2}
PEFT=${PEFT:-build/peft}
MODEL=${MODEL:-models/tiny-llama}
R=${R:-8}
OUT=${OUT:-out/compare}
TASKS=${TASKS:-data/demo,data/compare/kinds}
FORGET=${FORGET:-data/compare/pretrain_held_out.jsonl}
KPM_DATA=data/compare/pretrain_calib.jsonl   # pretraining text to keep (not the forgetting set)
FORGET_SEQ=256
die() { echo "compare_methods: $*" >&2; exit 1; }

# name | adapter | extra train flags | config key it needs | lr sweep. In the flags @TRAIN@ is the
# task's train.jsonl, @LORA@ the LoRA scaling (lora_alpha = 2 r; VeRA and deep_lora refuse it), @TASK@ its name, @OUT@ the output dir, @STEPS@ / @HALF@ all / half the steps.
# CorDA's covariances are computed once per calibration set and reused (covariance_file). The
# rows the README's claims are about come first, so a cut-short run still answers those.
METHOD_TABLE="
lora|lora|@LORA@||3e-3,1e-2,3e-2
pissa|lora|@LORA@ --init_lora_weights pissa_niter_4|init_lora_weights|1e-3,3e-3,1e-2
dora|lora|@LORA@ --use_dora true|use_dora|3e-3,1e-2,3e-2
vera|vera|--r 256|projection_prng_key|3e-2,1e-1,3e-1
corda_ipm|lora|@LORA@ --init_lora_weights corda --corda_config {\"corda_method\":\"ipm\",\"covariance_file\":\"@OUT@/runs/corda_ipm_@TASK@.cov\"} --corda_data @TRAIN@ --corda_samples 32|corda_config|1e-3,3e-3,1e-2
corda_kpm|lora|@LORA@ --init_lora_weights corda --corda_config {\"corda_method\":\"kpm\",\"covariance_file\":\"@OUT@/runs/corda_kpm.cov\"} --corda_data $KPM_DATA --corda_samples 32|corda_config|1e-3,3e-3,1e-2
galore|full|--optimizer galore_adamw --galore_rank 32 --galore_update_proj_gap @HALF@ --galore_scale 0.25|galore_rank|3e-3,1e-2,3e-2
galore_all|full|--optimizer galore_adamw --galore_rank 32 --galore_update_proj_gap @HALF@ --galore_scale 0.25 --galore_target_modules attn,mlp,embed_tokens,lm_head|galore_target_modules|1e-2,3e-2,1e-1
full|full|||1e-3,3e-3,1e-2
qlora|lora|@LORA@ --load_in_4bit true|load_in_4bit|3e-3,1e-2,3e-2
rslora|lora|@LORA@ --use_rslora true|use_rslora|1e-3,3e-3,1e-2
lora_plus|lora|@LORA@ --loraplus_lr_ratio 16|loraplus_lr_ratio|1e-3,3e-3,1e-2
milora|lora|@LORA@ --init_lora_weights milora|init_lora_weights|3e-3,1e-2,3e-2
olora|lora|@LORA@ --init_lora_weights olora|init_lora_weights|1e-3,3e-3,1e-2
lora_fa|lora|@LORA@ --lora_fa true|lora_fa|3e-3,1e-2,3e-2
lora_drop|lora_drop|@LORA@||3e-3,1e-2,3e-2
adalora|adalora|@LORA@ --init_r 12 --target_r 8 --total_step @STEPS@|init_r|3e-3,1e-2,3e-2
deep_lora|deep_lora|||3e-3,1e-2,3e-2
rosa|rosa|--rosa_resample_steps @HALF@|rosa_resample_steps|3e-3,1e-2,3e-2
milora_moe|milora_moe|@LORA@||3e-3,1e-2,3e-2"

# ---- inputs and the output directory ---------------------------------------------------------
[ -x "$PEFT" ] || die "$PEFT: no peft binary (build it: ninja -C build peft, or set PEFT)"
[ -f "$MODEL/config.json" ] || die "$MODEL: not a model directory"
[ -f "$FORGET" ] || die "$FORGET: missing (held-out pretraining text)"
IFS=',' read -r -a task_dirs <<< "$TASKS"
for t in "${task_dirs[@]}"; do
  [ -f "$t/train.jsonl" ] && [ -f "$t/held_out.jsonl" ] || die "$t: a task directory holds train.jsonl and held_out.jsonl"
done
if [ -n "${METHODS:-}" ]; then
  known=$(cut -d'|' -f1 <<< "$METHOD_TABLE")
  for m in ${METHODS//,/ }; do
    grep -qx -- "$m" <<< "$known" || die "METHODS: no row named '$m' (rows: $(echo $known | tr ' ' ','))"
  done
fi
out_abs=$(realpath -m "$OUT")
for input in "$PEFT" "$MODEL" "$FORGET" "$KPM_DATA" "${task_dirs[@]}" "$ROOT/bench" "$ROOT/tools" "$ROOT/src"; do
  in_abs=$(realpath -m "$input")
  case "$out_abs/" in "$in_abs/"*) die "OUT=$OUT is or sits inside the input $input: refused";; esac
  case "$in_abs/" in "$out_abs/"*) die "OUT=$OUT contains the input $input: refused";; esac
done
[ "$out_abs" != "$ROOT" ] || die "OUT=$OUT is the repository: refused"
MARK="$OUT/.compare_methods"
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$MARK" ]; then
  die "OUT=$OUT exists, is not empty and was not written by this script: refused (choose another OUT)"
fi
mkdir -p "$OUT"
touch "$MARK"
rm -rf "$OUT/runs" "$OUT/results.jsonl" "$OUT/compare.md" "$OUT/compare.svg" "$OUT/run.json"
mkdir -p "$OUT/runs"

registered=$("$PEFT" train --list-methods) || die "$PEFT train --list-methods failed (an older build?)"
help_text=$("$PEFT" train --help)
has_accuracy=0
"$PEFT" eval --help 2>&1 | grep -q -- '--accuracy' && has_accuracy=1

# ---- helpers -----------------------------------------------------------------------------------
json_num() {  # FILE KEY: the number KEY of the one JSON object in FILE
  node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); const v = j[process.argv[2]];
           if (typeof v !== "number" || !isFinite(v)) process.exit(1); console.log(v)' "$1" "$2"
}
# metrics.jsonl -> {final eval loss, eval curve, median step seconds, setup seconds}
run_stats() {
  node -e '
const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => JSON.parse(l));
const steps = lines.filter((l) => l.loss !== undefined), evals = lines.filter((l) => l.eval_loss !== undefined);
if (!evals.length || !steps.length) process.exit(1);
const d = steps.slice(1).map((s) => s.tokens / s.tokens_per_s).sort((a, b) => a - b);   // a step alone, no evals
const step_s = d.length ? d[Math.floor(d.length / 2)] : steps[0].tokens / steps[0].tokens_per_s;
console.log(JSON.stringify({ eval_loss: evals[evals.length - 1].eval_loss, eval_curve: evals.map((e) => [e.step, e.eval_loss]),
  train_loss: steps[steps.length - 1].loss, step_s, setup_s: Math.max(0, steps[0].elapsed_s - steps[0].tokens / steps[0].tokens_per_s),
  tokens: steps.reduce((a, s) => a + s.tokens, 0) }));' "$1"
}

HALF=$(( STEPS / 2 > 0 ? STEPS / 2 : 1 ))
EVAL_EVERY=$(( STEPS / 4 > 0 ? STEPS / 4 : 1 ))
echo "compare_methods: $STEPS steps x $BATCH rows x $SEQ tokens, seed 1, $THREADS threads, r $R; tasks: ${task_dirs[*]}; out: $OUT"
forget_base="$OUT/runs/forget_base.json"
"$PEFT" eval --model "$MODEL" --data "$FORGET" --json --sequence_len $FORGET_SEQ --batch 4 --threads "$THREADS" > "$forget_base" 2> /dev/null \
  || die "peft eval of the base on $FORGET failed"
base_forget=$(json_num "$forget_base" loss)
t_start=$(date +%s)
write_run_json() {  # WALL_S ("null" while running)
  cat > "$OUT/run.json" <<EOF
{"steps": $STEPS, "batch": $BATCH, "seq": $SEQ, "threads": $THREADS, "r": $R, "model": "$MODEL", "tasks": "$TASKS",
 "forget_data": "$FORGET", "forget_seq": $FORGET_SEQ, "lrs": "${LRS:-per method}", "methods": "${METHODS:-all}",
 "wall_s": $1, "accuracy": $has_accuracy}
EOF
}
write_run_json null

# base-model rows: the task loss (and accuracy: the same call) before any training
for task in "${task_dirs[@]}"; do
  tname=$(basename "$task")
  acc_flags=()
  [ $has_accuracy = 1 ] && acc_flags=(--accuracy --parallel 64)
  "$PEFT" eval --model "$MODEL" --data "$task/held_out.jsonl" "${acc_flags[@]}" --json --sequence_len "$SEQ" --batch "$BATCH" \
      --threads "$THREADS" > "$OUT/runs/base_$tname.json" 2> /dev/null || die "peft eval of the base on $task failed"
  acc="null"
  [ $has_accuracy = 1 ] && acc=$(json_num "$OUT/runs/base_$tname.json" accuracy)
  echo "{\"method\": \"base\", \"task\": \"$tname\", \"eval_loss\": $(json_num "$OUT/runs/base_$tname.json" loss), \"accuracy\": $acc, \"forget_loss\": $base_forget}" \
      >> "$OUT/results.jsonl"
done

while IFS='|' read -r name adapter extra key sweep; do
  [ -n "$name" ] || continue
  if [ -n "${METHODS:-}" ] && [[ ",$METHODS," != *",$name,"* ]]; then continue; fi
  if ! grep -qx "$adapter" <<< "$registered"; then
    echo "{\"method\": \"$name\", \"skipped\": \"adapter $adapter is not registered in this build\"}" >> "$OUT/results.jsonl"; continue
  fi
  if [ -n "$key" ] && ! grep -q "^  $key " <<< "$help_text"; then
    echo "{\"method\": \"$name\", \"skipped\": \"config key $key is unknown to this build\"}" >> "$OUT/results.jsonl"; continue
  fi
  lrs=${LRS:-$sweep}
  for task in "${task_dirs[@]}"; do
    tname=$(basename "$task")
    best_lr="" best_loss="" best_dir=""
    for lr in ${lrs//,/ }; do
      dir="$OUT/runs/$tname/$name/lr_$lr"
      mkdir -p "$(dirname "$dir")"
      flags=${extra//@TRAIN@/$task/train.jsonl}
      flags=${flags//@LORA@/--lora_alpha $((2 * R))}
      flags=${flags//@STEPS@/$STEPS}
      flags=${flags//@TASK@/$tname}
      flags=${flags//@OUT@/$OUT}
      flags=${flags//@HALF@/$HALF}
      common=(--base_model "$MODEL" --datasets "$task/train.jsonl" --test_datasets "$task/held_out.jsonl" --output_dir "$dir"
              --adapter "$adapter" --learning_rate "$lr" --lr_scheduler cosine --warmup_steps 0 --micro_batch_size "$BATCH"
              --sequence_len "$SEQ" --max_steps "$STEPS" --eval_steps "$EVAL_EVERY" --logging_steps 1 --seed 1
              --threads "$THREADS" --progress false)
      [ "$adapter" = full ] || common+=(--r "$R" --target_modules all-linear)
      # shellcheck disable=SC2086 # extra flags are words by design (no spaces inside a value)
      if ! /usr/bin/time -f '%M' -o "$dir.rss" "$PEFT" train "${common[@]}" $flags > "$dir.log" 2>&1; then
        echo "compare_methods: $name on $tname at lr $lr failed (log: $dir.log):" >&2
        tail -3 "$dir.log" >&2
        continue
      fi
      stats=$(run_stats "$dir/metrics.jsonl") || { echo "compare_methods: $dir/metrics.jsonl has no eval" >&2; continue; }
      loss=$(node -e 'console.log(JSON.parse(process.argv[1]).eval_loss)' "$stats")
      echo "$stats" > "$dir.stats.json"
      printf '  %-10s %-10s lr %-6s held-out loss %.4f\n' "$tname" "$name" "$lr" "$loss"
      if [ -z "$best_loss" ] || node -e 'process.exit(Number(process.argv[1]) < Number(process.argv[2]) ? 0 : 1)' "$loss" "$best_loss"; then
        best_lr=$lr best_loss=$loss best_dir=$dir
      fi
    done
    if [ -z "$best_dir" ]; then
      echo "{\"method\": \"$name\", \"task\": \"$tname\", \"failed\": \"every learning rate failed (logs in $OUT/runs/$tname/$name)\"}" >> "$OUT/results.jsonl"
      continue
    fi
    # the kept run: the held-out answers and the pretraining text
    if [ "$adapter" = full ]; then evm=(--model "$best_dir"); else evm=(--model "$MODEL" --adapter "$best_dir"); fi
    [[ "$extra" == *load_in_4bit* ]] && evm+=(--load-in-4bit)
    if ! "$PEFT" eval "${evm[@]}" --data "$FORGET" --json --sequence_len $FORGET_SEQ --batch 4 --threads "$THREADS" \
        > "$best_dir.forget.json" 2> "$best_dir.forget.log"; then
      echo "{\"method\": \"$name\", \"task\": \"$tname\", \"failed\": \"peft eval on $FORGET (log: $best_dir.forget.log)\"}" >> "$OUT/results.jsonl"
      continue
    fi
    acc="null" acc_n="null"
    if [ $has_accuracy = 1 ]; then
      if "$PEFT" eval "${evm[@]}" --data "$task/held_out.jsonl" --accuracy --parallel 64 --json --sequence_len "$SEQ" --batch "$BATCH" \
          --threads "$THREADS" > "$best_dir.acc.json" 2> "$best_dir.acc.log"; then
        acc=$(json_num "$best_dir.acc.json" accuracy) acc_n=$(json_num "$best_dir.acc.json" accuracy_n)
      else
        echo "compare_methods: peft eval --accuracy of $best_dir failed (log: $best_dir.acc.log)" >&2
      fi
    fi
    trainable=$(sed -n 's/.*trainable params: \([0-9]*\).*/\1/p' "$best_dir.log" | head -1)
    node -e '
const [name, adapter, task, lr, stats, forget, base_forget, trainable, rss_kib, acc, acc_n, steps, batch, seq, lrs] = process.argv.slice(1);
const s = JSON.parse(stats), f = JSON.parse(require("fs").readFileSync(forget, "utf8"));
console.log(JSON.stringify({ method: name, adapter, task, lr: Number(lr), lrs: lrs.split(",").map(Number), steps: Number(steps),
  batch: Number(batch), seq: Number(seq), ...s, forget_loss: f.loss, forget_delta: f.loss - Number(base_forget),
  trainable_params: Number(trainable), peak_rss_mib: Number(rss_kib) / 1024, accuracy: JSON.parse(acc), accuracy_n: JSON.parse(acc_n) }));' \
      "$name" "$adapter" "$tname" "$best_lr" "$(cat "$best_dir.stats.json")" "$best_dir.forget.json" "$base_forget" "${trainable:-0}" \
      "$(tail -1 "$best_dir.rss")" "$acc" "$acc_n" "$STEPS" "$BATCH" "$SEQ" "$lrs" >> "$OUT/results.jsonl"
  done
done <<< "$METHOD_TABLE"

t_end=$(date +%s)
write_run_json $((t_end - t_start))
node bench/compare_report.mjs "$OUT"
echo "compare_methods: $OUT/compare.md, $OUT/compare.svg ($((t_end - t_start)) s)"
exit 0
}
