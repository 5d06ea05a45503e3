#!/usr/bin/env python3
"""make_corpus.py: writes the small handcrafted seed corpora for fuzz_safetensors and fuzz_json.
Run from the repo root: python3 tests/fuzz/make_corpus.py  (deterministic; files < 4 KB).
Seeds are mostly valid files covering each feature, plus a few near-misses."""
import json, os, struct

here = os.path.dirname(os.path.abspath(__file__))
st_dir = os.path.join(here, "corpus_safetensors")
js_dir = os.path.join(here, "corpus_json")
os.makedirs(st_dir, exist_ok=True)
os.makedirs(js_dir, exist_ok=True)

def st(header_obj_text, data, pad=True):
    h = header_obj_text.encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data

def ent(dtype, shape, b, e):
    return '{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}' % (dtype, json.dumps(shape).replace(" ", ""), b, e)

def put(d, name, blob):
    assert len(blob) < 4096, name
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob)

f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
put(st_dir, "empty.safetensors", st("{}", b""))
put(st_dir, "f32.safetensors", st('{"w":%s}' % ent("F32", [2, 2], 0, 16), f32))
put(st_dir, "scalar_and_empty.safetensors",
    st('{"s":%s,"e":%s}' % (ent("F32", [], 0, 4), ent("BF16", [0, 3], 4, 4)), f32[:4]))
put(st_dir, "metadata.safetensors",
    st('{"__metadata__":{"format":"pt","note":"caf\\u00e9"},"lora_A.weight":%s}' % ent("F16", [2], 0, 4), b"\x00\x3c\x00\xc0"))
mixed = [("a_i64", "I64", [2], 16), ("b_f32", "F32", [3], 12), ("c_bf16", "BF16", [2, 1], 4), ("d_f16", "F16", [1], 2),
         ("e_u8", "U8", [3], 3), ("f_bool", "BOOL", [1], 1), ("g_f4", "F4", [2], 1), ("h_f6", "F6_E2M3", [4], 3),
         ("i_c64", "C64", [1], 8), ("j_f8", "F8_E4M3", [2], 2)]
parts, off, data = [], 0, b""
for name, dt, shape, nb in mixed:
    parts.append('"%s":%s' % (name, ent(dt, shape, off, off + nb)))
    off += nb
    data += bytes((i * 37 + 11) & 255 for i in range(nb))
put(st_dir, "mixed_dtypes.safetensors", st("{" + ",".join(parts) + "}", data))
# odd header length: unaligned tensor data
put(st_dir, "unaligned.safetensors", st('{"x":%s}' % ent("BF16", [3], 0, 6), b"\x80\x3f\x00\x40\x40\x40", pad=False))
# header order differs from offset order, 3-d shape, names with escapes
put(st_dir, "order.safetensors",
    st('{"z\\"q":%s,"a\\n":%s,"m":%s}' % (ent("U8", [1, 2, 2], 0, 4), ent("U8", [2], 6, 8), ent("U8", [2], 4, 6)), b"abcdefgh"))
# near misses: a gap, trailing bytes
put(st_dir, "bad_gap.safetensors", st('{"a":%s,"b":%s}' % (ent("U8", [2], 0, 2), ent("U8", [2], 3, 5)), b"abcde"))
put(st_dir, "bad_trailing.safetensors", st('{"a":%s}' % ent("U8", [2], 0, 2), b"abPK"))

put(js_dir, "index.json", json.dumps({"metadata": {"total_size": 36}, "weight_map": {
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "lm_head.weight": "model-00002-of-00002.safetensors"}}, indent=2).encode())
put(js_dir, "config.json", json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "tie_word_embeddings": False, "rope_theta": 500000.0, "vocab_size": 128256,
    "torch_dtype": "bfloat16"}).encode())
put(js_dir, "adapter_config.json", json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"], "bias": "none", "layers_to_transform": None, "rank_pattern": {}}).encode())
put(js_dir, "strings.json", '["", "\\u00e9\\ud83d\\ude00", "\\"\\\\\\/\\b\\f\\n\\r\\t", "caf\u00e9", "\\u0000"]'.encode())
put(js_dir, "numbers.json", b'[0, -0, 1, -1, 18446744073709551615, 18446744073709551616, -9223372036854775808, 1.5e308, '
                            b'1e400, 2.5E-3, 0.1, 9223372036854775807, 4.0]')
put(js_dir, "nested.json", b'{"a":[[[{"b":{"c":[1,{"d":[]}]}}]]],"e":{},"f":[{},[]],"g":true,"h":null}')
put(js_dir, "jsonl_row.json", b'{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]}\n')
put(js_dir, "dup_key.json", b'{"a":1,"b":{"a":2},"a":3}')
