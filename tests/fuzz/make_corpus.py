#!/usr/bin/env python3
"""make_corpus.py: writes the small handcrafted seed corpora of the fuzz targets (fuzz_bodies.h):
corpus_<target>/ for safetensors, json, tokenizer, config, data, adapter_config, hparams,
trainer_state and gguf. Run from the repo root: python3 tests/fuzz/make_corpus.py  (deterministic; files
< 4 KB). Seeds are mostly valid files covering each feature, plus a few near-misses; files named
regress_* hold inputs that once crashed or hung a parser (see README.md) and must stay."""
import json, os, struct

here = os.path.dirname(os.path.abspath(__file__))

def corpus(name):
    d = os.path.join(here, "corpus_" + name)
    os.makedirs(d, exist_ok=True)
    return d

st_dir = corpus("safetensors")
js_dir = corpus("json")

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


# ---- tokenizer.json ------------------------------------------------------------------------
def byte_char(b):
    # GPT-2 bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest take U+0100..
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))

def compact(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

byte_vocab = {byte_char(b): b for b in range(256)}
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
tk_dir = corpus("tokenizer")
merges = [["\u0120", "t"], ["h", "e"], ["\u0120t", "he"]]
vocab = dict(byte_vocab, **{"\u0120t": 256, "he": 257, "\u0120the": 258})
put(tk_dir, "llama3_style.json", compact({
    "added_tokens": [{"id": 259, "content": "<|begin_of_text|>", "special": True},
                     {"id": 260, "content": "<|eot_id|>", "special": True, "lstrip": True, "rstrip": True}],
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                       "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [259], "tokens": ["<|begin_of_text|>"]}}},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
              "fuse_unk": False, "byte_fallback": False, "ignore_merges": True, "vocab": vocab, "merges": merges}}))
put(tk_dir, "gpt2_style.json", compact({
    "added_tokens": [{"id": 256, "content": "<|endoftext|>", "special": True, "single_word": True}],
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True},
    "post_processor": {"type": "ByteLevel"},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": dict(byte_vocab, **{"<|endoftext|>": 256, "he": 257}), "merges": ["h e"]}}))
# SentencePiece-style BPE (Llama 2, TinyLlama): byte fallback, "▁" for spaces, a decoder chain
spm_vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0xC3>": 4, "<0xA9>": 5, "<0xF0>": 6, "<0x9F>": 7,
             "\u2581": 8, "t": 9, "h": 10, "e": 11, "\u2581t": 12, "he": 13, "\u2581the": 14, "a": 15}
put(tk_dir, "spm_style.json", compact({
    "added_tokens": [{"id": 0, "content": "<unk>", "special": True}, {"id": 1, "content": "<s>", "special": True},
                     {"id": 2, "content": "</s>", "special": True}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
    "pre_tokenizer": None,
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                       "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                                  {"type": "ByteFallback"}, {"type": "Fuse"},
                                                  {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True, "vocab": spm_vocab,
              "merges": [["\u2581", "t"], ["h", "e"], ["\u2581t", "he"]]}}))
put(tk_dir, "metaspace.json", compact({
    "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True},
    "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True},
    "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "vocab": spm_vocab, "merges": ["\u2581 t", "h e"]}}))
put(tk_dir, "normalizers_splits.json", compact({
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"},
                                                        {"type": "Strip", "strip_left": True, "strip_right": True}, {"type": "NFD"}]},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "Whitespace"}, {"type": "WhitespaceSplit"},
        {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithPrevious"},
        {"type": "Split", "pattern": {"Regex": "[,.]"}, "behavior": "MergedWithNext", "invert": True},
        {"type": "Split", "pattern": {"Regex": "x+"}, "behavior": "Contiguous"},
        {"type": "Split", "pattern": {"Regex": "\\s"}, "behavior": "Removed"}]},
    "decoder": {"type": "Fuse"},
    "model": {"type": "BPE", "unk_token": "a", "vocab": {"a": 0, "b": 1, "ab": 2, "1": 3}, "merges": [["a", "b"]]}}))
put(tk_dir, "bad_duplicate_id.json", b'{"model":{"type":"BPE","vocab":{"a":0,"b":0},"merges":[]}}')
put(tk_dir, "bad_merge.json", b'{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":["a b"]}}')
put(tk_dir, "bad_regex.json", b'{"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(?<"},"behavior":"Isolated"},'
                              b'"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}')

# ---- training config (YAML or JSON) ---------------------------------------------------------
cf_dir = corpus("config")
put(cf_dir, "lora.yaml", b"""# axolotl-style LoRA run
base_model: ./models/tiny
tokenizer_config: ./models/tiny
datasets:
  - path: data/train.jsonl
    type: chat_template
  - data/more.jsonl
test_datasets: [{path: data/test.jsonl}]
output_dir: out/lora
adapter: lora
lora_r: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target_modules: [q_proj, k_proj, v_proj, o_proj]
layers_to_transform: [0, 1]
rank_pattern: {q_proj: 4}
alpha_pattern: {"v_proj": 8.5}
use_rslora: true
init_lora_weights: gaussian
learning_rate: 2e-4
num_epochs: 2
micro_batch_size: 2
gradient_accumulation_steps: 4
sequence_len: 512
sample_packing: false
lr_scheduler: cosine
warmup_ratio: 0.1
weight_decay: 0.0
seed: 1234
val_set_size: 0.05
save_steps: 10
save_total_limit: 2
resume_from_checkpoint: true
progress: false
""")
put(cf_dir, "full.json", json.dumps({"base_model": "m", "datasets": "d.txt", "adapter": "full", "random_init": True,
                                     "save_dtype": "bf16", "max_steps": 100, "adam_beta2": 0.95, "threads": 2,
                                     "gradient_checkpointing": True, "chat_template": "llama3"}).encode())
put(cf_dir, "anchors_flow.yaml", b"""---
base_model: &m "./models/tiny"
tokenizer: *m
datasets: {path: a.jsonl, type: alpaca}
target_modules: all-linear
exclude_modules: ["down_proj"]
adapter_args: {lora_fa: true, loraplus_lr_ratio: 16}
max_grad_norm: ~
eval_steps: !!int "5"
output_dir: !!str 123
""")
put(cf_dir, "bad_unknown_key.yaml", b"base_model: m\nlearning_rat: 1e-4\n")
put(cf_dir, "bad_types.yaml", b"base_model: [1, 2]\nseed: -1\nlearning_rate: .inf\n")

# ---- JSONL training lines -------------------------------------------------------------------
dl_dir = corpus("data")
put(dl_dir, "text.jsonl", b'{"text": "Hello world, caf\\u00e9 \\ud83d\\ude00 <|eot_id|>"}')
put(dl_dir, "alpaca.jsonl", b'{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}')
put(dl_dir, "alpaca_no_input.jsonl", b'{"instruction": "Say hi.", "output": "hi", "input": null}')
put(dl_dir, "messages.jsonl", compact({"messages": [{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "Hi <|im_start|>"},
                                                    {"role": "assistant", "content": "Hello!"},
                                                    {"role": "user", "content": "Bye"},
                                                    {"role": "assistant", "content": ""}]}))
put(dl_dir, "input_ids.jsonl", b'{"input_ids": [1, 2, 3, 264], "labels": [-100, 2, 3, 264]}')
put(dl_dir, "input_ids_no_labels.jsonl", b'{"input_ids": [0, 255]}')
put(dl_dir, "bad_role.jsonl", b'{"messages": [{"role": "robot", "content": "x"}]}')
put(dl_dir, "bad_utf8.jsonl", b'{"text": "\xff"}')

# ---- adapter_config.json --------------------------------------------------------------------
ac_dir = corpus("adapter_config")
peft_lora = {"alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
             "base_model_name_or_path": "tiny", "bias": "none", "corda_config": None, "ensure_weight_tying": False,
             "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
             "init_lora_weights": True, "layer_replication": None, "layers_pattern": None, "layers_to_transform": None,
             "loftq_config": {}, "lora_alpha": 16, "lora_bias": False, "lora_dropout": 0.05, "megatron_config": None,
             "megatron_core": "megatron.core", "modules_to_save": None, "peft_type": "LORA", "qalora_group_size": 16,
             "r": 4, "rank_pattern": {}, "revision": None, "target_modules": ["v_proj", "q_proj"],
             "target_parameters": None, "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_dora": False,
             "use_qalora": False, "use_rslora": False}
put(ac_dir, "peft_written.json", json.dumps(peft_lora, indent=2, sort_keys=True).encode())
put(ac_dir, "minimal.json", b'{"peft_type": "LORA"}')
put(ac_dir, "regex_patterns.json", compact({"peft_type": "LORA", "r": 2, "lora_alpha": 3.5, "use_rslora": True,
                                            "target_modules": ".*\\.(q_proj|down_proj)$", "layers_to_transform": 1,
                                            "rank_pattern": {"down_proj": 1, "^model.layers.1.self_attn.q_proj$": 3},
                                            "alpha_pattern": {"q_proj": 0.5}, "init_lora_weights": "gaussian"}))
put(ac_dir, "all_linear.json", compact({"peft_type": "LORA", "target_modules": "all-linear", "exclude_modules": ["o_proj"],
                                        "layers_to_transform": [0], "layers_pattern": "layers", "lora_fa": True,
                                        "loraplus_lr_ratio": 16.0, "lora_dropout": 0.0}))
put(ac_dir, "bad_rank.json", b'{"peft_type": "LORA", "r": 99, "target_modules": ["k_proj"]}')
put(ac_dir, "bad_dora.json", b'{"peft_type": "LORA", "use_dora": true}')

# ---- config.json hyper-parameters -----------------------------------------------------------
hp_dir = corpus("hparams")
put(hp_dir, "llama3.json", json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "tie_word_embeddings": True,
    "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"}).encode())
put(hp_dir, "qwen2.json", json.dumps({"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": True, "rope_scaling": None,
    "bos_token_id": 151643, "eos_token_id": 151645}).encode())
put(hp_dir, "mistral.json", json.dumps({"model_type": "mistral", "vocab_size": 32000, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "attention_bias": False,
    "rope_scaling": {"type": "default"}, "sliding_window": 4096}).encode())
put(hp_dir, "bad_heads.json", b'{"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, '
                              b'"num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 2}')

# ---- trainer_state.safetensors (names as the fuzz body's tiny run expects) ------------------
ts_dir = corpus("trainer_state")
def trainer_state(meta, order=(2, 0, 1)):
    parts, off, data = [], 0, b""
    for name, dt, shape, blob in [("data.epoch_order", "I32", [len(order)], struct.pack("<%di" % len(order), *order)),
                                  ("optimizer.m.w", "F32", [4], struct.pack("<4f", 0.1, 0.2, 0.3, 0.4)),
                                  ("optimizer.v.w", "F32", [4], struct.pack("<4f", 1, 2, 3, 4)),
                                  ("param.w", "F32", [2, 2], struct.pack("<4f", -1, 1, -2, 2))]:
        parts.append('"%s":%s' % (name, ent(dt, shape, off, off + len(blob))))
        off += len(blob)
        data += blob
    return st("{" + json.dumps({"__metadata__": meta}, separators=(",", ":"))[1:-1] + "," + ",".join(parts) + "}", data)
state_meta = {"format": "peft.cpp trainer_state v1", "step": "3", "epoch": "0", "micro_in_epoch": "6", "total_steps": "10",
              "optimizer_step_count": "3", "rng": "5489 1 2 3", "data_fingerprint": "00ff", "module_count": "1",
              "module_state.0": "12"}
put(ts_dir, "valid.safetensors", trainer_state(state_meta))
put(ts_dir, "no_modules.safetensors", trainer_state(dict(state_meta, module_count="0"), order=()))
put(ts_dir, "bad_count.safetensors", trainer_state(dict(state_meta, module_count="9223372036854775807")))
put(ts_dir, "bad_format.safetensors", trainer_state(dict(state_meta, format="v0")))

# ---- GGUF (docs/gguf.md): a tiny llama with a byte-level BPE vocabulary, block types, near misses
gg_dir = corpus("gguf")

def gstr(v):
    v = v.encode() if isinstance(v, str) else v
    return struct.pack("<Q", len(v)) + v

def gkv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", vtype) + payload

def kv_u32(k, v): return gkv(k, 4, struct.pack("<I", v))
def kv_f32(k, v): return gkv(k, 6, struct.pack("<f", v))
def kv_bool(k, v): return gkv(k, 7, struct.pack("<B", v))
def kv_str(k, v): return gkv(k, 8, gstr(v))
def kv_arr_str(k, vs): return gkv(k, 9, struct.pack("<IQ", 8, len(vs)) + b"".join(gstr(v) for v in vs))
def kv_arr_i32(k, vs): return gkv(k, 9, struct.pack("<IQ", 5, len(vs)) + b"".join(struct.pack("<i", v) for v in vs))

def gguf(kvs, tensors, align=32):
    """tensors: (name, ne, ggml_type, data bytes), laid out back to back, each padded to align"""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    data, off = b"", 0
    for name, ne, t, blob in tensors:
        head += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<q", d) for d in ne) + struct.pack("<IQ", t, len(data))
        data += blob + b"\0" * ((align - len(blob) % align) % align)
    head += b"\0" * ((align - len(head) % align) % align)
    return head + data

def f16s(n, seed):
    return b"".join(struct.pack("<e", ((i * 7 + seed) % 13 - 6) / 16.0) for i in range(n))

def f32s(n, v=1.0):
    return struct.pack("<%df" % n, *([v] * n))

# llama: C=8, 2 heads of 4 (1 KV head), F=8, 1 layer, V=8, tied embeddings, F16 matrices
C, F, V, KV = 8, 8, 8, 4
model_kvs = [kv_str("general.architecture", "llama"), kv_u32("general.alignment", 32), kv_u32("llama.block_count", 1),
             kv_u32("llama.context_length", 64), kv_u32("llama.embedding_length", C), kv_u32("llama.feed_forward_length", F),
             kv_u32("llama.attention.head_count", 2), kv_u32("llama.attention.head_count_kv", 1),
             kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5), kv_f32("llama.rope.freq_base", 10000.0),
             kv_str("tokenizer.ggml.model", "gpt2"), kv_str("tokenizer.ggml.pre", "llama-bpe"),
             kv_arr_str("tokenizer.ggml.tokens", ["a", "b", "ab", "\u0120", "\u0120a", "1", "<s>", "[PAD7]"]),
             kv_arr_i32("tokenizer.ggml.token_type", [1, 1, 1, 1, 1, 1, 3, 5]),
             kv_arr_str("tokenizer.ggml.merges", ["a b", "\u0120 a"]), kv_u32("tokenizer.ggml.bos_token_id", 6),
             kv_bool("tokenizer.ggml.add_bos_token", 1), kv_str("tokenizer.chat_template", "{{ messages }}")]
model_tensors = [("token_embd.weight", [C, V], 1, f16s(C * V, 1)), ("blk.0.attn_norm.weight", [C], 0, f32s(C)),
                 ("blk.0.attn_q.weight", [C, C], 1, f16s(C * C, 2)), ("blk.0.attn_k.weight", [C, KV], 1, f16s(C * KV, 3)),
                 ("blk.0.attn_v.weight", [C, KV], 1, f16s(C * KV, 4)), ("blk.0.attn_output.weight", [C, C], 1, f16s(C * C, 5)),
                 ("blk.0.ffn_norm.weight", [C], 0, f32s(C)), ("blk.0.ffn_gate.weight", [C, F], 1, f16s(C * F, 6)),
                 ("blk.0.ffn_up.weight", [C, F], 1, f16s(C * F, 7)), ("blk.0.ffn_down.weight", [F, C], 1, f16s(F * C, 8)),
                 ("output_norm.weight", [C], 0, f32s(C))]
put(gg_dir, "tiny_llama.gguf", gguf(model_kvs, model_tensors))
put(gg_dir, "tiny_llama_f32_untied.gguf", gguf(model_kvs, [(n, ne, 0, f32s(len(b) // 2 if t == 1 else len(b) // 4, 0.25))
                                                           for n, ne, t, b in model_tensors] + [("output.weight", [C, V], 0, f32s(C * V))]))
put(gg_dir, "minimal.gguf", gguf([kv_str("general.architecture", "llama")], [("w", [4], 0, f32s(4))]))
q8 = struct.pack("<e", 0.5) + bytes(range(32))
q4k = struct.pack("<ee", 0.25, 0.125) + bytes(range(12)) + bytes(range(128))
put(gg_dir, "block_types.gguf", gguf([kv_u32("general.alignment", 64)], [("q8", [32, 1], 8, q8), ("q4k", [256], 12, q4k),
                                                                         ("q40", [32], 2, struct.pack("<e", 1.0) + bytes(range(16)))], align=64))
put(gg_dir, "lora_adapter.gguf", gguf([kv_str("general.architecture", "llama"), kv_str("general.type", "adapter"), kv_str("adapter.type", "lora"),
                                        kv_f32("adapter.lora.alpha", 8.0)],
                                       [("blk.0.attn_q.weight.lora_a", [C, 2], 0, f32s(2 * C)), ("blk.0.attn_q.weight.lora_b", [2, C], 0, f32s(2 * C))]))
good = gguf([kv_str("general.architecture", "llama")], [("a", [4], 0, f32s(4)), ("b", [4], 0, f32s(4))])
put(gg_dir, "bad_magic.gguf", b"GGML" + good[4:])
put(gg_dir, "bad_truncated.gguf", good[:-40])

# ---- regressions: inputs that crashed or hung a parser before its fix (README.md) -------------
tiny = {"type": "BPE", "vocab": {"a": 0, "\u2581": 1, "\u2581a": 2}, "merges": [["\u2581", "a"]]}
# an empty Metaspace replacement split every piece forever (endless loop, then out of memory)
put(tk_dir, "regress_metaspace_empty.json", compact({"pre_tokenizer": {"type": "Metaspace", "replacement": ""}, "model": tiny}))
# a Strip decoder with empty content looped `start` times per token (2e9: a hang)
put(tk_dir, "regress_strip_empty.json", compact({"decoder": {"type": "Strip", "content": "", "start": 2000000000, "stop": 0},
                                                 "model": tiny}))
# template ids were not checked against the vocabulary: encode returned id 99999 (out of range)
put(tk_dir, "regress_template_id.json", compact({"post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [99999], "tokens": ["<s>"]}}}, "model": tiny}))
# a LoRA module state of 20 digits above 2^64 made std::stoull throw through the loader
put(ts_dir, "regress_module_state_overflow.safetensors", trainer_state(dict(state_meta, **{"module_state.0": "99999999999999999999"})))
# 2^63 as a float passed the range check of an int key and was cast to int64 (undefined)
put(cf_dir, "regress_int_2p63.yaml", b"seed: 9223372036854775808.0\n")
# YAML aliases nest without copying; expanded to JSON they grow exponentially (10^9 nulls)
bomb = b"a: &a [~, ~, ~, ~, ~, ~, ~, ~, ~, ~]\n"
for i, (prev, cur) in enumerate(zip("abcdefgh", "bcdefghi")):
    bomb += b"%s: &%s [%s]\n" % (cur.encode(), cur.encode(), b", ".join([b"*" + prev.encode()] * 10))
put(cf_dir, "regress_alias_bomb.yaml", b"adapter_args:\n  x:\n" + b"".join(b"    " + l + b"\n" for l in bomb.splitlines()))
# std::regex backtracked exponentially on stacked quantifiers in a rank_pattern key (a hang)
put(ac_dir, "regress_regex_backtracking.json", compact({"peft_type": "LORA", "rank_pattern": {
    "^model.layers.1." + "+" * 60 + "setn.q_proj$": 6}}))
# a layers_pattern with its own group shifted the layer-number group: std::stoll("layers") threw
put(ac_dir, "regress_layers_pattern_group.json", compact({"peft_type": "LORA", "target_modules": ["q_proj"],
                                                          "layers_to_transform": [0], "layers_pattern": "(layers)"}))
