#!/usr/bin/env bash
# compare_llamacpp.sh: prefill and decode tok/s of llama.cpp (llama-bench) and of peft.cpp
# (`peft bench --method generate`) on the same random-weight model of a named shape, the same
# dtype (f32, bf16) and the same thread counts (1, 2), side by side.
#
#   bench/compare_llamacpp.sh SHAPE [ROUNDS]        e.g. bench/compare_llamacpp.sh small 3
#
# llama-bench is built once from the llama.cpp release source that node-llama-cpp ships
# (llama/gitRelease.bundle in the npm tarball scripts/fetch_assets.sh caches), Release, only
# that target, ccache when present; the binary stays under $CACHE/llama.cpp-bench/. The model is
# written by `peft bench --shape SHAPE --dtype f32|bf16 --save-gguf FILE`: the random weights (same
# seed) that `peft bench --method generate --shape SHAPE --dtype ...` decodes. Each round runs every (dtype, threads) case of both
# programs one after the other, so machine load hits both alike; the table shows medians.
# Env: PEFT (default build/peft), PEFT_FLAGS (e.g. --bf16), PROMPT (64), GEN (32), THREADS ("1 2"), DTYPES ("f32 bf16").
set -euo pipefail

SHAPE=${1:?usage: bench/compare_llamacpp.sh SHAPE [ROUNDS]}
ROUNDS=${2:-3}
PEFT=${PEFT:-build/peft}
PROMPT=${PROMPT:-64}
GEN=${GEN:-32}
THREADS=${THREADS:-1 2}
DTYPES=${DTYPES:-f32 bf16}
PEFT_FLAGS=${PEFT_FLAGS:-}
CACHE=${PEFT_ASSET_DIR:-$HOME/.cache/peft-assets}
LC=$CACHE/llama.cpp-bench
TGZ=$CACHE/npm/node-llama-cpp-3.22.1.tgz

[ -x "$PEFT" ] || { echo "compare_llamacpp: $PEFT not built (ninja -C build peft)" >&2; exit 1; }

# ---- llama-bench, built once ----
if [ ! -x "$LC/build/bin/llama-bench" ]; then
  [ -f "$TGZ" ] || { echo "compare_llamacpp: $TGZ missing: run scripts/fetch_assets.sh" >&2; exit 1; }
  if [ ! -d "$LC/src/.git" ]; then
    mkdir -p "$LC"
    tar xzf "$TGZ" -C "$LC" package/llama/gitRelease.bundle
    git clone -q "$LC/package/llama/gitRelease.bundle" "$LC/src" 2> /dev/null
    rm -rf "$LC/package"
  fi
  echo "compare_llamacpp: building llama-bench (once; several minutes on 2 cores)" >&2
  cmake -S "$LC/src" -B "$LC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF > "$LC/cmake.log" 2>&1 \
    || { echo "compare_llamacpp: cmake failed, see $LC/cmake.log" >&2; exit 1; }
  ninja -C "$LC/build" -j2 llama-bench > "$LC/build.log" 2>&1 \
    || { echo "compare_llamacpp: build failed, see $LC/build.log" >&2; exit 1; }
fi
LB=$LC/build/bin/llama-bench
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0

# ---- the model: random weights of SHAPE, exported per dtype ----
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for dt in $DTYPES; do
  "$PEFT" bench --shape "$SHAPE" --dtype "$dt" --save-gguf "$WORK/$dt.gguf" 2> /dev/null
done

# ---- interleaved rounds ----
RES=$WORK/results.txt   # lines: tool dtype threads prefill decode
for r in $(seq "$ROUNDS"); do
  for dt in $DTYPES; do
    for t in $THREADS; do
      out=$("$LB" -m "$WORK/$dt.gguf" -p "$PROMPT" -n "$GEN" -t "$t" -r 1 -o csv 2> /dev/null)
      pp=$(echo "$out" | awk -F, -v P="$PROMPT" 'NR==1{for(i=1;i<=NF;i++){gsub(/"/,"",$i);h[$i]=i}next}
           {gsub(/"/,""); if($h["n_prompt"]==P && $h["n_gen"]==0) print $h["avg_ts"]}')
      tg=$(echo "$out" | awk -F, -v G="$GEN" 'NR==1{for(i=1;i<=NF;i++){gsub(/"/,"",$i);h[$i]=i}next}
           {gsub(/"/,""); if($h["n_prompt"]==0 && $h["n_gen"]==G) print $h["avg_ts"]}')
      echo "llama.cpp $dt $t $pp $tg" >> "$RES"
      js=$("$PEFT" bench --shape "$SHAPE" --method generate --seq "$PROMPT" --gen-tokens "$GEN" --rounds 1 --threads "$t" \
           --dtype "$dt" $PEFT_FLAGS 2> /dev/null | tail -1)
      pp=$(echo "$js" | sed -n 's/.*"base_prefill_tokens_per_s": *\([0-9.eE+-]*\).*/\1/p')
      tg=$(echo "$js" | sed -n 's/.*"base_decode_tokens_per_s": *\([0-9.eE+-]*\).*/\1/p')
      echo "peft $dt $t $pp $tg" >> "$RES"
    done
  done
done

median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "-"; exit} if(NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
printf "shape %s, prompt %s, generated %s, %s rounds interleaved, medians (tok/s)\n" "$SHAPE" "$PROMPT" "$GEN" "$ROUNDS"
printf "| dtype | threads | llama.cpp prefill | peft prefill | ratio | llama.cpp decode | peft decode | ratio |\n"
printf "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
for dt in $DTYPES; do
  for t in $THREADS; do
    lp=$(awk -v d="$dt" -v t="$t" '$1=="llama.cpp"&&$2==d&&$3==t{print $4}' "$RES" | median)
    pp=$(awk -v d="$dt" -v t="$t" '$1=="peft"&&$2==d&&$3==t{print $4}' "$RES" | median)
    ld=$(awk -v d="$dt" -v t="$t" '$1=="llama.cpp"&&$2==d&&$3==t{print $5}' "$RES" | median)
    pd=$(awk -v d="$dt" -v t="$t" '$1=="peft"&&$2==d&&$3==t{print $5}' "$RES" | median)
    rp=$(awk -v a="$pp" -v b="$lp" 'BEGIN{if(b>0) printf "%.2f", a/b; else print "-"}')
    rd=$(awk -v a="$pd" -v b="$ld" 'BEGIN{if(b>0) printf "%.2f", a/b; else print "-"}')
    printf "| %s | %s | %.0f | %.0f | %s | %.0f | %.0f | %s |\n" "$dt" "$t" "$lp" "$pp" "$rp" "$ld" "$pd" "$rd"
  done
done
