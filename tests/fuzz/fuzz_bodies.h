// fuzz_bodies.h: the per-input bodies of the libFuzzer targets, one per parser of user files,
// shared by fuzz_*.cpp (built with clang -fsanitize=fuzzer) and by tests/io/test_fuzz_replay.cpp,
// which replays the seed corpora plus deterministic mutations under plain gtest so CI covers
// them without clang. Each body feeds the input to the same from-memory entry point the file
// loader uses. Beyond "does not crash", the bodies check invariants and abort() when one breaks:
// an accepted safetensors file re-serialises to a file that is accepted with the same tensors;
// a parsed JSON string survives json_quote -> parse; token ids stay inside the vocabulary; an
// accepted adapter_config.json, saved the way adapter_save writes it, attaches the same tensors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "adapters/adapter_set.h"
#include "byte_tokenizer.h"
#include "core/rng.h"
#include "io/gguf_read.h"
#include "io/json.h"
#include "io/peft_format.h"
#include "io/safetensors.h"
#include "model/gguf_import.h"
#include "model/llama.h"
#include "model/llama_hparams.h"
#include "tokenizer/chat.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/data.h"
#include "train/optim.h"

namespace peft::fuzz {

inline void fuzz_require(bool cond) {
    if (!cond) std::abort();
}

inline int safetensors_one(const uint8_t * data, size_t n) {
    safetensors_file f;
    if (!safetensors_parse(data, n, "fuzz.safetensors", f).ok()) return 0;

    std::vector<float> buf;
    std::vector<safetensors_tensor_to_write> again;
    for (const tensor_info & t : f.tensors) {
        fuzz_require(f.find(t.name) == &t);
        // every byte of every view must be inside the input (ASan checks the reads)
        const uint8_t * p = (const uint8_t *) t.data;
        fuzz_require(p >= data && t.n_bytes <= n && p + t.n_bytes <= data + n);
        unsigned acc = 0;
        for (uint64_t i = 0; i < t.n_bytes; i++) acc += p[i];
        (void) acc;
        if (t.is_float) {
            buf.resize((size_t) t.n_elements);
            fuzz_require(read_f32(t, buf.data()).ok());
        } else {
            fuzz_require(!read_f32(t, buf.data()).ok());
        }
        safetensors_tensor_to_write w;
        w.name = t.name;
        w.raw_dtype = safetensors_dtype_name(t.st_dtype);
        w.shape = t.shape;
        w.data = t.data;
        again.push_back(std::move(w));
    }

    // round trip through the writer
    std::string bytes;
    fuzz_require(safetensors_serialize(again, f.metadata, bytes).ok());
    safetensors_file g;
    fuzz_require(safetensors_parse((const uint8_t *) bytes.data(), bytes.size(), "rt", g).ok());
    fuzz_require(g.tensors.size() == f.tensors.size() && g.metadata == f.metadata);
    for (const tensor_info & t : f.tensors) {
        const tensor_info * u = g.find(t.name);
        fuzz_require(u && u->st_dtype == t.st_dtype && u->shape == t.shape && u->n_bytes == t.n_bytes);
        fuzz_require(t.n_bytes == 0 || std::memcmp(u->data, t.data, (size_t) t.n_bytes) == 0);
    }
    return 0;
}

// Visits every node (bounded by the parser's depth cap) through the json_value accessors.
inline void json_walk(const json_value & v, size_t & budget) {
    if (budget == 0) return;
    budget--;
    (void) v.is_null();
    (void) v.is_bool();
    (void) v.as_bool();
    (void) v.as_double();
    (void) v.as_int();
    if (v.is_string()) {
        std::string s = v.as_string();
        json_document d;
        std::string q = json_quote(s);
        fuzz_require(d.parse(q.data(), q.size(), "quoted").ok());
        fuzz_require(d.root().as_string() == s);
    } else if (v.is_array()) {
        for (size_t i = 0; i < v.size(); i++) json_walk(v.at(i), budget);
        fuzz_require(!v.at(v.size()).valid());
    } else if (v.is_object()) {
        for (size_t i = 0; i < v.size(); i++) {
            std::string k = v.key_at(i);
            json_value c = v.value_at(i);
            fuzz_require(v.get(k).node == c.node);  // keys are unique
            json_walk(c, budget);
        }
        fuzz_require(!v.value_at(v.size()).valid());
    }
}

inline int json_one(const uint8_t * data, size_t n) {
    json_document doc;
    if (!doc.parse((const char *) data, n, "fuzz.json").ok()) return 0;
    size_t budget = 100000;
    json_walk(doc.root(), budget);
    // compact dump re-parses (no duplicate keys can appear, numbers print round-trippably)
    std::string text = doc.root().dump();
    json_document again;
    fuzz_require(again.parse(text.data(), text.size(), "dump").ok());
    fuzz_require(again.root().dump() == text);
    return 0;
}

// ---- tokenizer.json (tokenizer::load_json_text, what tokenizer::load runs on the file) --------

inline int tokenizer_one(const uint8_t * data, size_t n) {
    const std::string file((const char *) data, n);
    std::unique_ptr<tokenizer> tok;
    if (!tokenizer::load_json_text(file, "fuzz/tokenizer.json", tok).ok()) return 0;
    const int32_t V = tok->n_vocab();
    fuzz_require(V > 0);
    for (int32_t id : {tok->bos_id(), tok->eos_id(), tok->pad_id()}) fuzz_require(id >= -1 && id < V);
    // fixed texts (spaces, digits, emoji, invalid UTF-8, special-token names) and the file's own
    // first bytes, so the regex and merges of each file also meet text that suits them
    std::vector<std::string> texts = {"Hello world", "  two  spaces\tand\nlines ", "caf\xC3\xA9 \xF0\x9F\x98\x80 12345",
                                      "\xFF\xC3 bad \xE2\x82", "<|eot_id|><s></s>[INST]<0x41>", ""};
    texts.push_back(file.substr(0, 256));
    for (const std::string & text : texts) {
        for (bool special : {false, true}) {
            const std::vector<int32_t> ids = tok->encode(text, special, special);
            for (int32_t id : ids) fuzz_require(id >= 0 && id < V);
            (void) tok->decode(ids, !special);
        }
    }
    for (int32_t id : {-1, 0, V - 1, V}) {
        (void) tok->token_to_piece(id);
        (void) tok->is_special(id);
    }
    return 0;
}

// ---- training config (config_parse_text: YAML or JSON, then config_build) ----------------------

inline int config_one(const uint8_t * data, size_t n) {
    config_entries e;
    if (!config_parse_text(std::string((const char *) data, n), "fuzz/config.yaml", e).ok()) return 0;
    train_options o;
    if (!config_build(e, o, true).ok()) return 0;
    // what the trainer writes next to its outputs, and hands to adapters_attach, is valid JSON
    const std::string resolved = config_to_json(o);
    json_document d;
    fuzz_require(d.parse(resolved.data(), resolved.size(), "resolved").ok() && d.root().is_object());
    if (!o.full()) fuzz_require(d.parse(o.adapter_json.data(), o.adapter_json.size(), "adapter_json").ok());
    return 0;
}

// ---- one JSONL training line (data_parse_line), then packing -----------------------------------

// Byte-level tokenizer with the Llama 3 and ChatML markers and a BOS template, so every chat
// template renders; built once per process.
inline const tokenizer & fuzz_chat_tokenizer() {
    static const std::unique_ptr<tokenizer> tok = [] {
        std::unique_ptr<tokenizer> t;
        const std::string json = peft::testing::byte_tokenizer_json(
            {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>",
             "<|im_start|>", "<|im_end|>", "<s>", "</s>"}, true);
        fuzz_require(tokenizer::load_json_text(json, "fuzz chat tokenizer", t).ok());
        return t;
    }();
    return *tok;
}

inline int data_one(const uint8_t * data, size_t n) {
    const tokenizer & tok = fuzz_chat_tokenizer();
    const std::string line((const char *) data, n);
    const int32_t V = tok.n_vocab();
    for (int kind = 0; kind < PEFT_CHAT_COUNT; kind++) {
        data_options opt;
        opt.train_on_inputs = kind % 2 == 1;
        data_sample s;
        if (!data_parse_line(line, "fuzz.jsonl:1", tok, opt, kind, s).ok()) continue;
        fuzz_require(!s.input_ids.empty() && s.input_ids.size() == s.labels.size());
        for (size_t i = 0; i < s.input_ids.size(); i++) {
            fuzz_require(s.input_ids[i] >= 0 && s.input_ids[i] < V);
            fuzz_require(s.labels[i] == -100 || (s.labels[i] >= 0 && s.labels[i] < V));
        }
        // packed and padded into short rows: every row is full length, padding has no label
        for (bool pack : {true, false}) {
            opt.pack = pack;
            opt.max_len = 1 + (int64_t) (n % 7);
            data_rows rows;
            int64_t truncated = 0;
            data_build_rows({s, s}, opt, 0, rows, &truncated);
            const size_t cells = (size_t) (rows.n_rows * rows.T);
            fuzz_require(rows.T == opt.max_len && rows.n_rows >= 1);
            fuzz_require(rows.input_ids.size() == cells && rows.labels.size() == cells && rows.position_ids.size() == cells &&
                         rows.segment_ids.size() == cells);
            for (size_t i = 0; i < cells; i++) fuzz_require(rows.segment_ids[i] != 0 || rows.labels[i] == -100);
        }
    }
    return 0;
}

// ---- adapter_config.json (adapter_config_normalize + adapters_attach, as adapter_load) --------

// A frozen two-layer model with GQA, built once per process; bodies detach what they attach.
inline llama_model & fuzz_tiny_model() {
    static const std::unique_ptr<llama_model> m = [] {
        llama_hparams hp;
        hp.n_vocab = 64; hp.n_embd = 16; hp.n_layer = 2; hp.n_head = 2; hp.n_head_kv = 1; hp.head_dim = 8; hp.n_ff = 24;
        auto model = std::make_unique<llama_model>();
        fuzz_require(llama_init_random(*model, hp, false, 1).ok());
        return model;
    }();
    return *m;
}

// Names and shapes of the tensors an attached set saves.
inline std::vector<std::pair<std::string, std::vector<int64_t>>> fuzz_saved_shapes(adapter_set & s) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    for (const param_ref & p : adapter_set_params(s)) {
        if (p.saved) out.emplace_back(p.name, p.shape);
    }
    return out;
}

inline int adapter_config_one(const uint8_t * data, size_t n) {
    json_document doc, cfg;
    if (!doc.parse((const char *) data, n, "fuzz/adapter_config.json").ok()) return 0;
    if (!adapter_config_normalize(doc.root(), "fuzz/adapter_config.json", cfg).ok()) return 0;
    llama_model & m = fuzz_tiny_model();
    adapter_set set;
    const status st = adapters_attach(m, cfg.root(), 0, set);
    if (!st.ok()) {
        fuzz_require(m.adapters.empty());   // a failed attach leaves the model untouched
        return 0;
    }
    const auto shapes = fuzz_saved_shapes(set);
    fuzz_require(!shapes.empty());
    // adapter_save's config text, read back as adapter_load reads it: the same tensors
    const std::string text = set.method->config_json();
    json_document saved, again;
    fuzz_require(saved.parse(text.data(), text.size(), "config_json").ok());
    const std::string file = json_dump_python(saved.root(), 2);
    json_document reread;
    fuzz_require(reread.parse(file.data(), file.size(), "saved adapter_config.json").ok());
    fuzz_require(adapter_config_normalize(reread.root(), "saved", again).ok());
    adapter_set set2;
    fuzz_require(adapters_attach(m, again.root(), 0, set2).ok());
    fuzz_require(fuzz_saved_shapes(set2) == shapes);
    m.adapters.clear();
    return 0;
}

// ---- config.json hyper-parameters (llama_hparams_parse) ------------------------------------

inline int hparams_one(const uint8_t * data, size_t n) {
    llama_hparams hp;
    if (!llama_hparams_parse(std::string((const char *) data, n), "fuzz/config.json", hp).ok()) return 0;
    fuzz_require(llama_hparams_validate(hp, "accepted").ok());
    fuzz_require(hp.q_dim() > 0 && hp.kv_dim() > 0 && hp.q_dim() % hp.kv_dim() == 0);
    fuzz_require(hp.bos_id >= -1 && hp.eos_id >= -1);
    return 0;
}

// ---- trainer_state.safetensors (trainer_state_read, then what resuming does with it) ----------

inline int trainer_state_one(const uint8_t * data, size_t n) {
    safetensors_file f;
    if (!safetensors_parse(data, n, "fuzz/trainer_state.safetensors", f).ok()) return 0;
    // the state of a tiny run: one AdamW parameter "w" of 4 and the adapter tensor "w" [2, 2]
    float w[4] = {}, g[4] = {}, saved[4] = {};
    adamw opt;
    optim_param p;
    p.name = "w";
    p.value = w;
    p.grad = g;
    p.n = 4;
    fuzz_require(opt.init({p}, adamw_config{}).ok());
    const std::vector<named_f32> params = {{"w", saved, {2, 2}}};
    trainer_state st;
    if (!trainer_state_read(f, st, opt, params).ok()) return 0;
    fuzz_require(st.step >= 0 && st.epoch >= 0 && st.micro_in_epoch >= 0 && opt.step_count >= 0);
    rng gen;
    (void) gen.load(st.rng_state);
    // module states go to the adapter modules of the resumed run (LoRA: its dropout counter)
    static adapter_set lora = [] {
        json_document cfg;
        const char * text = "{\"r\":2,\"target_modules\":[\"q_proj\"]}";
        fuzz_require(cfg.parse(text, std::strlen(text), "fuzz lora").ok());
        adapter_set s;
        fuzz_require(adapters_attach(fuzz_tiny_model(), cfg.root(), 0, s).ok());
        fuzz_tiny_model().adapters.clear();
        return s;
    }();
    for (const std::string & ms : st.module_states) (void) lora.modules[0]->set_state(ms);
    return 0;
}

// ---- GGUF (gguf_parse, then what --model FILE.gguf does with it) -----------------------------

inline int gguf_one(const uint8_t * data, size_t n) {
    auto f = std::make_shared<gguf_file>();
    if (!gguf_parse(data, n, "fuzz.gguf", *f).ok()) return 0;
    // tensors back to back in header order, aligned, inside the input; bytes readable (ASan)
    uint64_t next = 0;
    for (const gguf_tensor_view & t : f->tensors) {
        fuzz_require(f->find(t.name) == &t && t.offset == next && t.offset % f->alignment == 0);
        fuzz_require(t.data >= data && t.nbytes <= n && t.data + t.nbytes <= data + n);
        unsigned acc = 0;
        for (uint64_t i = 0; i < t.nbytes; i++) acc += t.data[i];
        (void) acc;
        next = (t.offset + t.nbytes + f->alignment - 1) / f->alignment * f->alignment;
    }
    for (const gguf_kv & kv : f->kv) {
        fuzz_require(f->find_kv(kv.key) == &kv && !kv.key.empty());
        std::string s;
        uint32_t u = 0;
        float x = 0;
        std::vector<int32_t> ids;
        (void) f->get_str(kv.key, s, true);
        (void) f->get_u32(kv.key, u, true);
        (void) f->get_f32(kv.key, x, true);
        (void) f->get_arr_i32(kv.key, ids, true);
    }
    // as a model: hparams, weights (frozen and trainable), the tokenizer it carries
    llama_model m;
    if (llama_load_gguf_file(m, f, false).ok()) {
        fuzz_require(llama_hparams_validate(m.hp, "accepted").ok());
        llama_model full;
        (void) llama_load_gguf_file(full, f, true);
    }
    std::string json;
    gguf_vocab_extra extra;
    std::unique_ptr<tokenizer> tok;
    if (gguf_tokenizer_json(*f, json, extra).ok() && tokenizer::load_json_text(json, "fuzz.gguf", tok).ok()) {
        for (int32_t id : tok->encode("Hello world <|eot_id|> 123", true)) fuzz_require(id >= 0 && id < tok->n_vocab());
    }
    return 0;
}

} // namespace peft::fuzz
