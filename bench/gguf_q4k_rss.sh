#!/bin/sh
# gguf_q4k_rss.sh: peak RSS of LoRA training over a Q4_K GGUF base against the base's f32 size.
# Makes a random bf16 checkpoint of TinyLlama's widths with 8 layers (C 2048, F 5632, 32/8 heads,
# tiny-llama's 4096-token tokenizer: 365M parameters, 1.46 GB in f32), exports it as Q4_K
# (`peft export gguf --type q4_k`) and runs `peft bench --method lora` over the GGUF.
# usage: bench/gguf_q4k_rss.sh [BUILD_DIR] [WORK_DIR]
set -eu
build=${1:-build}
work=${2:-/tmp/peft_gguf_q4k_rss}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work/model"
cp "$root/models/tiny-llama/tokenizer.json" "$root/models/tiny-llama/tokenizer_config.json" "$work/model/"
/usr/bin/python3 - "$work/model" <<'PY'
import json, sys, numpy as np
d = sys.argv[1]
C, F, L, H, KV, V = 2048, 5632, 8, 32, 8, 4096
HS = C // H
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": C, "intermediate_size": F,
       "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": KV, "head_dim": HS, "vocab_size": V,
       "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
       "bos_token_id": 4090, "eos_token_id": 4091, "torch_dtype": "bfloat16"}
json.dump(cfg, open(d + "/config.json", "w"))
shapes = [("model.embed_tokens.weight", (V, C))]
for l in range(L):
    p = "model.layers.%d." % l
    shapes += [(p + "input_layernorm.weight", (C,)), (p + "self_attn.q_proj.weight", (C, C)), (p + "self_attn.k_proj.weight", (KV * HS, C)),
               (p + "self_attn.v_proj.weight", (KV * HS, C)), (p + "self_attn.o_proj.weight", (C, C)),
               (p + "post_attention_layernorm.weight", (C,)), (p + "mlp.gate_proj.weight", (F, C)), (p + "mlp.up_proj.weight", (F, C)),
               (p + "mlp.down_proj.weight", (C, F))]
shapes.append(("model.norm.weight", (C,)))
rng = np.random.default_rng(0)
header, off = {}, 0
for name, s in shapes:
    n = int(np.prod(s)) * 2
    header[name] = {"dtype": "BF16", "shape": list(s), "data_offsets": [off, off + n]}
    off += n
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(d + "/model.safetensors", "wb") as f:
    f.write(len(h).to_bytes(8, "little") + h)
    for name, s in shapes:
        x = np.ones(s, np.float32) if len(s) == 1 else rng.standard_normal(s, dtype=np.float32) * 0.02
        f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())   # bf16 by truncation
PY
"$build/peft" export gguf --model "$work/model" --out "$work/model-q4_k.gguf" --type q4_k --force
ls -l "$work/model-q4_k.gguf"
echo "f32 size of the base: 365 M parameters x 4 bytes"
"$build/peft" bench --model "$work/model-q4_k.gguf" --method lora --lora-r 16 --batch 1 --seq 128 --steps 3 --threads 2
