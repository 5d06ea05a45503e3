// gguf_import.cpp: GGUF models and LoRA adapters read back (see gguf_import.h).
#include "model/gguf_import.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <tuple>
#include <unordered_set>

#include "adapters/adapter_set.h"
#include "core/dtype.h"
#include "io/gguf_read.h"
#include "io/json.h"
#include "io/peft_format.h"
#include "kernels/ggml_quant.h"
#include "model/gguf_export.h"
#include "model/llama.h"
#include "model/llama_names.h"
#include "tokenizer/gguf_vocab.h"

namespace peft {

void   llama_bind_weights(llama_model & m);                                  // llama.cpp
status llama_allocate(llama_model & m, bool trainable, bool own_frozen, dtype frozen_type);

namespace {

std::string shape_str(const std::vector<int64_t> & s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

// ne (GGUF, fastest first) -> the HF/PEFT shape (slowest first)
std::vector<int64_t> hf_shape(const std::vector<int64_t> & ne) { return std::vector<int64_t>(ne.rbegin(), ne.rend()); }

bool is_float_type(gguf_tensor_type t) { return t == GGUF_TENSOR_F32 || t == GGUF_TENSOR_F16 || t == GGUF_TENSOR_BF16; }

// The core/quant.h row of a block-quantized GGUF type a frozen matrix can stay in.
bool qtype_of(gguf_tensor_type t, qtype * out) {
    switch (t) {
        case GGUF_TENSOR_Q8_0: *out = PEFT_QTYPE_Q8_0; return true;
        case GGUF_TENSOR_Q4_0: *out = PEFT_QTYPE_Q4_0; return true;
        case GGUF_TENSOR_Q4_K: *out = PEFT_QTYPE_Q4_K; return true;
        default: return false;
    }
}

// The first non-finite element of a quantized matrix (a NaN/Inf f16 scale), or -1: one pass
// decoding every row through the type table, as the float types are read once.
int64_t first_non_finite(const qtensor & q) {
    int64_t bad = -1;
    #pragma omp parallel
    {
        std::vector<float> row((size_t) q.IC);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < q.OC; r++) {
            qtensor_dequant_range(q, r * q.IC, (r + 1) * q.IC, row.data());
            for (int64_t c = 0; c < q.IC; c++) {
                if (std::isfinite(row[(size_t) c])) continue;
                #pragma omp critical
                bad = bad < 0 ? r * q.IC + c : std::min(bad, r * q.IC + c);
                break;
            }
        }
    }
    return bad;
}

// A quantized frozen matrix t (GGUF g, HF shape [OC, IC]) as a qtensor: the blocks used in place
// from the mapping, or (llama's Q/K, n_head > 0) a copy with whole rows of blocks un-permuted.
std::unique_ptr<qtensor> quantized_matrix(const gguf_tensor_view & g, qtype type, int64_t OC, int64_t IC, int64_t n_head) {
    auto q = std::make_unique<qtensor>();
    q->type = type;
    q->OC = OC;
    q->IC = IC;
    if (n_head == 0) {
        q->mapped = g.data;
        return q;
    }
    const size_t row_bytes = (size_t) (IC / qtype_info(type).block) * qtype_info(type).block_bytes;
    q->data.resize(row_bytes * (size_t) OC);
    for (int64_t r = 0; r < OC; r++) {
        std::memcpy(q->data.data() + (size_t) llama_gguf_permuted_row(r, n_head, OC) * row_bytes, g.data + (size_t) r * row_bytes, row_bytes);
    }
    return q;
}

dtype dtype_of(gguf_tensor_type t) {
    return t == GGUF_TENSOR_F16 ? PEFT_DTYPE_F16 : t == GGUF_TENSOR_BF16 ? PEFT_DTYPE_BF16 : PEFT_DTYPE_F32;
}

// Rows [r0, r1) of t (HF shape [rows, IC]) as f32; block types through their dequantizer.
void rows_to_f32(const gguf_tensor_view & t, int64_t IC, int64_t r0, int64_t r1, float * out) {
    const size_t row_bytes = (size_t) (t.nbytes / (uint64_t) (t.numel() / IC));
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t * src = t.data + (size_t) r * row_bytes;
        float * dst = out + (r - r0) * IC;
        if (is_float_type(t.type)) convert_to_f32(dtype_of(t.type), src, dst, (size_t) IC);
        else ggml_dequantizer(t.type)(src, dst, IC);
    }
}

// The Q/K rows of llama models are permuted for llama.cpp's rope (gguf_export.h); 0 = none.
int64_t permute_heads(const gguf_file & f, const llama_hparams & hp, const std::string & name) {
    std::string arch;
    if (!f.get_str("general.architecture", arch, false).ok() || arch != "llama") return 0;
    if (name.find(".self_attn.q_proj.") != std::string::npos) return hp.n_head;
    if (name.find(".self_attn.k_proj.") != std::string::npos) return hp.n_head_kv;
    return 0;
}

// Reads GGUF tensor t, whose HF shape is [rows, IC], into out (f32 or its own dtype `type`),
// un-permuting rows when n_head > 0. Returns the first non-finite element's index or -1.
int64_t read_rows(const gguf_tensor_view & t, int64_t rows, int64_t IC, int64_t n_head, dtype type, void * out) {
    int64_t bad = -1;
    const size_t es = dtype_size(type);
    #pragma omp parallel
    {
        std::vector<float> row((size_t) IC);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const int64_t dst = n_head > 0 ? llama_gguf_permuted_row(r, n_head, rows) : r;
            rows_to_f32(t, IC, r, r + 1, row.data());
            int64_t row_bad = -1;
            for (int64_t c = 0; c < IC && row_bad < 0; c++) {
                if (!std::isfinite(row[(size_t) c])) row_bad = dst * IC + c;
            }
            if (row_bad >= 0) {
                #pragma omp critical
                bad = bad < 0 ? row_bad : std::min(bad, row_bad);
            }
            uint8_t * o = (uint8_t *) out + (size_t) (dst * IC) * es;
            if (type == PEFT_DTYPE_F32) std::memcpy(o, row.data(), (size_t) IC * 4);
            else std::memcpy(o, t.data + (size_t) (r * IC) * es, (size_t) IC * es);   // same dtype: the stored bits
        }
    }
    return bad;
}

status model_arch(const gguf_file & f, std::string & arch) {
    std::string type = "model";
    PEFT_TRY(f.get_str("general.type", type, false));
    if (type == "adapter") {
        status st = make_error(PEFT_STATUS_CONFIG, f.path, "general.type is \"adapter\": this is a LoRA adapter, not a model");
        st.hint = "pass it as --adapter, with the base model as --model";
        return st;
    }
    PEFT_TRY(f.get_str("general.architecture", arch, true));
    if (arch != "llama" && arch != "qwen2") {
        status st = make_error(PEFT_STATUS_CONFIG, f.path, "general.architecture \"" + arch + "\" is not one peft.cpp runs");
        st.hint = "peft reads llama (Llama, Mistral, TinyLlama) and qwen2 GGUF models";
        return st;
    }
    return {};
}

// Llama 3 rope scaling from rope_freqs.weight. The tensor holds the divisors only; with
// low_freq_factor 1 and high_freq_factor 4 (every Llama 3.x release) the largest divisor is the
// factor, and a divisor between 1 and the factor fixes original_max_position_embeddings
// (8192 when none is). The parameters found must reproduce the tensor, else it is refused.
status rope_freqs(const gguf_file & f, llama_hparams & hp) {
    const gguf_tensor_view * t = f.find("rope_freqs.weight");
    if (!t) return {};
    const std::string what = "tensor 'rope_freqs.weight'";
    if (t->type != GGUF_TENSOR_F32 || t->ne.size() != 1 || t->ne[0] != hp.head_dim / 2) {
        return make_mismatch(PEFT_STATUS_SHAPE, f.path, what, "F32 ne [" + std::to_string(hp.head_dim / 2) + "]",
                             std::string(gguf_tensor_type_name(t->type)) + " ne " + shape_str(t->ne));
    }
    std::vector<float> got((size_t) t->ne[0]);
    std::memcpy(got.data(), t->data, got.size() * 4);
    llama_hparams guess = hp;
    rope_config & r = guess.rope;
    r.llama3 = true;
    r.factor = 0.0f;
    for (float v : got) r.factor = std::fmax(r.factor, v);
    r.low_freq_factor = 1.0f;
    r.high_freq_factor = 4.0f;
    std::vector<int64_t> candidates = {8192};
    for (size_t i = 0; i < got.size(); i++) {
        if (!(got[i] > 1.0f && got[i] < r.factor)) continue;
        // 1/d = (1 - s)/factor + s with s = (orig / wavelen - low) / (high - low)
        const double s = (1.0 / got[i] - 1.0 / r.factor) / (1.0 - 1.0 / r.factor);
        const double wavelen = 2.0 * M_PI * std::pow((double) hp.rope.theta, 2.0 * (double) i / (double) hp.head_dim);
        candidates.push_back((int64_t) std::llround(wavelen * (s * (r.high_freq_factor - r.low_freq_factor) + r.low_freq_factor)));
    }
    for (int64_t orig : candidates) {
        r.original_max_position = orig;
        const std::vector<float> want = llama_gguf_rope_factors(guess);
        bool same = orig > 0;
        for (size_t i = 0; i < want.size() && same; i++) same = std::fabs(want[i] - got[i]) <= 1e-6f * std::fabs(want[i]);
        if (same) {
            hp.rope = r;
            return {};
        }
    }
    status st = make_error(PEFT_STATUS_CONFIG, f.path, what + " is not Llama 3 rope scaling with low_freq_factor 1 and high_freq_factor 4");
    st.hint = "peft reads the rope scaling of Llama 3.x GGUF files only";
    return st;
}

} // namespace

status gguf_model_hparams(const gguf_file & f, llama_hparams & hp) {
    std::string arch;
    PEFT_TRY(model_arch(f, arch));
    hp = llama_hparams();
    hp.arch = arch;
    const std::string a = arch + ".";
    uint32_t v = 0;
    auto u32 = [&](const std::string & key, int64_t & out, bool required) -> status {
        v = (uint32_t) out;
        PEFT_TRY(f.get_u32(a + key, v, required));
        out = v;
        return {};
    };
    const gguf_tensor_view * embd = f.find("token_embd.weight");
    if (!embd) return make_error(PEFT_STATUS_SHAPE, f.path, "tensor 'token_embd.weight' is missing");
    hp.n_vocab = embd->ne.size() == 2 ? embd->ne[1] : 0;
    PEFT_TRY(u32("vocab_size", hp.n_vocab, false));
    PEFT_TRY(u32("context_length", hp.max_position, false));
    PEFT_TRY(u32("embedding_length", hp.n_embd, true));
    PEFT_TRY(u32("block_count", hp.n_layer, true));
    PEFT_TRY(u32("feed_forward_length", hp.n_ff, true));
    PEFT_TRY(u32("attention.head_count", hp.n_head, true));
    hp.n_head_kv = hp.n_head;
    PEFT_TRY(u32("attention.head_count_kv", hp.n_head_kv, false));
    hp.head_dim = hp.n_head > 0 ? hp.n_embd / hp.n_head : 0;
    PEFT_TRY(u32("attention.key_length", hp.head_dim, false));
    for (const char * key : {"attention.value_length", "rope.dimension_count"}) {
        int64_t d = hp.head_dim;
        PEFT_TRY(u32(key, d, false));
        if (d != hp.head_dim) {
            status st = make_mismatch(PEFT_STATUS_CONFIG, f.path, "key '" + a + key + "'", "the head size " + std::to_string(hp.head_dim), std::to_string(d));
            st.hint = "partial rotary embeddings and differing key/value head sizes are not supported";
            return st;
        }
    }
    PEFT_TRY(f.get_f32(a + "attention.layer_norm_rms_epsilon", hp.rms_eps, true));
    PEFT_TRY(f.get_f32(a + "rope.freq_base", hp.rope.theta, false));
    std::string scaling = "none";
    PEFT_TRY(f.get_str(a + "rope.scaling.type", scaling, false));
    if (scaling != "none") {
        status st = make_error(PEFT_STATUS_CONFIG, f.path, "key '" + a + "rope.scaling.type' is \"" + scaling + "\"");
        st.hint = "peft reads GGUF models without rope scaling, or with Llama 3's (rope_freqs.weight)";
        return st;
    }
    hp.tie_embeddings = f.find("output.weight") == nullptr;
    if (arch == "qwen2") {
        hp.qkv_bias = true;
    } else {
        hp.qkv_bias = hp.o_bias = f.find("blk.0.attn_q.bias") != nullptr;
        hp.mlp_bias = f.find("blk.0.ffn_gate.bias") != nullptr;
    }
    for (auto [key, slot] : {std::pair<const char *, int64_t *>{"tokenizer.ggml.bos_token_id", &hp.bos_id}, {"tokenizer.ggml.eos_token_id", &hp.eos_id}}) {
        if (!f.find_kv(key)) continue;
        PEFT_TRY(f.get_u32(key, v, true));
        *slot = v;
    }
    PEFT_TRY(llama_hparams_validate(hp, f.path));
    return rope_freqs(f, hp);
}

status gguf_require_unquantized(const std::string & path, const std::string & what) {
    gguf_file f;
    PEFT_TRY(gguf_open(path, f));
    for (const gguf_tensor_view & t : f.tensors) {
        if (is_float_type(t.type)) continue;
        status st = make_error(PEFT_STATUS_CONFIG, path, "tensor '" + t.name + "' is " + gguf_tensor_type_name(t.type) +
                               ": " + what + " writes every weight, and a quantized weight cannot take an update");
        st.hint = "train an adapter over the quantized base (adapter: lora), or use an F32, F16 or BF16 GGUF "
                  "(peft export gguf --type bf16) or the Hugging Face model directory";
        return st;
    }
    return {};
}

status llama_load_gguf(llama_model & m, const std::string & path, bool trainable) {
    auto f = std::make_shared<gguf_file>();
    PEFT_TRY(gguf_open(path, *f));
    return llama_load_gguf_file(m, f, trainable);
}

status llama_load_gguf_file(llama_model & m, const std::shared_ptr<const gguf_file> & f, bool trainable) {
    const std::string & path = f->path;
    PEFT_TRY(gguf_model_hparams(*f, m.hp));

    // look everything up and validate before allocating
    const std::vector<llama_tensor_spec> specs = llama_tensor_specs(m.hp);
    std::vector<const gguf_tensor_view *> found(specs.size());
    std::unordered_set<std::string> used = {"rope_freqs.weight"};
    size_t copy_bytes = 0;
    for (size_t i = 0; i < specs.size(); i++) {
        std::string name;
        PEFT_ASSERT(llama_gguf_tensor_name(specs[i].name, name));
        const gguf_tensor_view * t = f->find(name);
        if (!t) {
            status st = make_error(PEFT_STATUS_SHAPE, path, "tensor '" + name + "' (" + specs[i].name + ") is missing");
            st.hint = "the metadata (" + m.hp.arch + ".*) and the tensors disagree, or the model has modules peft.cpp does not run";
            return st;
        }
        if (hf_shape(t->ne) != specs[i].shape) {
            return make_mismatch(PEFT_STATUS_SHAPE, path, "tensor '" + name + "' shape (HF order)", shape_str(specs[i].shape),
                                 shape_str(hf_shape(t->ne)) + " (the metadata and the tensors disagree)");
        }
        qtype qt;
        if (!is_float_type(t->type) && (!qtype_of(t->type, &qt) || !specs[i].matrix)) {
            status st = make_error(PEFT_STATUS_CONFIG, path, "tensor '" + name + "' is " + gguf_tensor_type_name(t->type) +
                                   ", a type peft.cpp does not dequantize yet");
            st.hint = "peft reads F32, F16, BF16 tensors, and Q8_0, Q4_0 and Q4_K matrices";
            return st;
        }
        const bool in_place = is_float_type(t->type) && t->aligned && permute_heads(*f, m.hp, specs[i].name) == 0;
        if (!trainable && specs[i].matrix && !in_place && is_float_type(t->type)) {   // quantized ones are qtensors
            copy_bytes += arena_align((size_t) t->numel() * dtype_size(dtype_of(t->type)));
        }
        used.insert(name);
        found[i] = t;
    }
    for (const gguf_tensor_view & t : f->tensors) {
        if (!used.count(t.name)) {
            status st = make_error(PEFT_STATUS_SHAPE, path, "tensor '" + t.name + "' is not a parameter of the model the metadata describes");
            st.hint = "peft.cpp runs llama and qwen2 decoders; is " + m.hp.arch + ".block_count right?";
            return st;
        }
    }

    PEFT_TRY(llama_allocate(m, trainable, false, PEFT_DTYPE_F32));
    if (!m.storage_arena.reserve(copy_bytes)) return make_error(PEFT_STATUS_MEMORY, path, "cannot allocate weight copies");
    std::vector<int64_t> bad(specs.size(), -1);
    for (size_t i = 0; i < specs.size(); i++) {
        llama_tensor & t = m.tensors[i];
        const gguf_tensor_view & g = *found[i];
        const int64_t nh = permute_heads(*f, m.hp, t.name);
        // [rows, IC]: a vector is one row, unless it is a permuted bias (rows of one element)
        const int64_t rows = t.shape.size() == 1 && nh == 0 ? 1 : t.shape[0], IC = t.numel() / rows;
        if (t.data) {   // f32 slot (trainable or a vector)
            bad[i] = read_rows(g, rows, IC, nh, PEFT_DTYPE_F32, t.data);
            continue;
        }
        qtype qt;
        if (qtype_of(g.type, &qt)) {   // stays quantized; its type is F32, what a merge or export writes it as
            m.qweights.push_back(quantized_matrix(g, qt, rows, IC, nh));
            t.type = PEFT_DTYPE_F32;
            t.q = m.qweights.back().get();
            bad[i] = first_non_finite(*t.q);
            continue;
        }
        t.type = dtype_of(g.type);
        if (g.aligned && nh == 0) {
            t.data = const_cast<uint8_t *>(g.data);   // read-only mapping; never written
            bad[i] = -2;                             // checked below
        } else {
            t.data = m.storage_arena.alloc_bytes((size_t) t.numel() * dtype_size(t.type));
            bad[i] = read_rows(g, rows, IC, nh, t.type, t.data);
        }
    }
    // in-place tensors: one read of each, as llama_load does for safetensors
    #pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < (int64_t) specs.size(); i++) {
        if (bad[(size_t) i] != -2) continue;
        const gguf_tensor_view & g = *found[(size_t) i];
        std::vector<float> row(4096);
        int64_t first = -1;
        for (int64_t k = 0; k < g.numel() && first < 0; k += (int64_t) row.size()) {
            const int64_t n = std::min<int64_t>((int64_t) row.size(), g.numel() - k);
            convert_to_f32(dtype_of(g.type), g.data + (size_t) k * dtype_size(dtype_of(g.type)), row.data(), (size_t) n);
            for (int64_t c = 0; c < n && first < 0; c++) if (!std::isfinite(row[(size_t) c])) first = k + c;
        }
        bad[(size_t) i] = first;
    }
    for (size_t i = 0; i < specs.size(); i++) {
        if (bad[i] >= 0) {
            return make_error(PEFT_STATUS_NUMERIC, path, "tensor '" + found[i]->name + "' has a NaN or Inf at element " + std::to_string(bad[i]));
        }
    }
    m.source = std::const_pointer_cast<gguf_file>(f);
    llama_bind_weights(m);
    return {};
}

status gguf_hf_files(const std::string & path, const llama_hparams & hp, const std::string & torch_dtype,
                     std::vector<std::pair<std::string, std::string>> & files, std::string & note) {
    files = {{"config.json", llama_hparams_config_json(hp, torch_dtype)}};
    gguf_file f;
    PEFT_TRY(gguf_open(path, f));
    std::string tok_json;
    gguf_vocab_extra extra;
    const status st = gguf_tokenizer_json(f, tok_json, extra);
    if (!st.ok()) {
        note += "no tokenizer files written: " + st.message + "\n";
        return {};
    }
    std::vector<std::string_view> tokens;
    PEFT_TRY(f.get_arr_str("tokenizer.ggml.tokens", tokens, true));
    std::string tc = "{\n";
    for (auto [key, id] : {std::pair<const char *, int32_t>{"bos_token", extra.bos}, {"eos_token", extra.eos}, {"pad_token", extra.pad}}) {
        if (id >= 0) tc += std::string("  \"") + key + "\": " + json_quote(std::string(tokens[(size_t) id])) + ",\n";
    }
    if (!extra.chat_template.empty()) tc += "  \"chat_template\": " + json_quote(extra.chat_template) + ",\n";
    tc += "  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}\n";
    files.push_back({"tokenizer.json", tok_json});
    files.push_back({"tokenizer_config.json", tc});
    return {};
}

// ---- LoRA adapters ---------------------------------------------------------------------

namespace {

struct lora_pair {
    const gguf_tensor_view * a = nullptr;   // ne [IC, R]
    const gguf_tensor_view * b = nullptr;   // ne [R, OC]
    int64_t   layer = 0;
    llama_proj proj = LLAMA_PROJ_Q;
};

bool strip_suffix(const std::string & s, const std::string & suffix, std::string & base) {
    if (s.size() <= suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
    base = s.substr(0, s.size() - suffix.size());
    return true;
}

status lora_header(const gguf_file & f, const llama_model & m, float & alpha) {
    std::string type, atype, arch;
    PEFT_TRY(f.get_str("general.type", type, true));
    PEFT_TRY(f.get_str("adapter.type", atype, type == "adapter"));
    if (type != "adapter" || atype != "lora") {
        status st = make_error(PEFT_STATUS_CONFIG, f.path, "general.type \"" + type + "\" / adapter.type \"" + atype + "\": not a LoRA adapter");
        st.hint = type == "model" ? "this is a model: pass it as --model" : "peft reads llama.cpp LoRA adapters (general.type adapter, adapter.type lora)";
        return st;
    }
    PEFT_TRY(f.get_str("general.architecture", arch, true));
    const std::string base_arch = m.hp.arch == "qwen2" ? "qwen2" : "llama";
    if (arch != base_arch) {
        return make_mismatch(PEFT_STATUS_CONFIG, f.path, "general.architecture (the adapter's base)", base_arch + " (the model's)", arch);
    }
    alpha = 0.0f;
    return f.get_f32("adapter.lora.alpha", alpha, false);
}

// The LoRA pairs of f, each checked against its projection in m.
status lora_pairs(const gguf_file & f, const llama_model & m, std::vector<lora_pair> & out) {
    std::map<std::string, lora_pair> by_base;   // GGUF base name -> pair, in layer/projection order
    std::map<std::string, std::pair<int64_t, llama_proj>> projs;
    for (int64_t l = 0; l < m.hp.n_layer; l++) {
        for (int p = 0; p < LLAMA_PROJ_COUNT; p++) projs[llama_gguf_proj_name(l, (llama_proj) p) + ".weight"] = {l, (llama_proj) p};
    }
    for (const gguf_tensor_view & t : f.tensors) {
        std::string base;
        const bool is_a = strip_suffix(t.name, ".lora_a", base);
        if (!is_a && !strip_suffix(t.name, ".lora_b", base)) {
            if (strip_suffix(t.name, "_norm.weight", base)) continue;   // llama.cpp ignores these too
            return make_error(PEFT_STATUS_SHAPE, f.path, "tensor '" + t.name + "' is not a LoRA tensor (<base>.lora_a / .lora_b)");
        }
        auto it = projs.find(base);
        if (it == projs.end()) {
            status st = make_error(PEFT_STATUS_SHAPE, f.path, "tensor '" + t.name + "': '" + base + "' is not a projection of this model (" +
                                   std::to_string(m.hp.n_layer) + " layers)");
            st.hint = "the adapter was made for another base model, or adapts token_embd / output, which peft does not load from GGUF";
            return st;
        }
        lora_pair & pr = by_base[base];
        pr.layer = it->second.first;
        pr.proj = it->second.second;
        (is_a ? pr.a : pr.b) = &t;
    }
    for (auto & [base, pr] : by_base) {
        if (!pr.a || !pr.b) return make_error(PEFT_STATUS_SHAPE, f.path, "tensor '" + base + (pr.a ? ".lora_b" : ".lora_a") + "' is missing");
        const linear_weight & w = m.proj_weight(pr.layer, pr.proj);
        const std::vector<int64_t> want_a = {w.IC, pr.a->ne.size() == 2 ? pr.a->ne[1] : 0};
        const std::vector<int64_t> want_b = {want_a[1], w.OC};
        for (auto [t, want] : {std::pair<const gguf_tensor_view *, std::vector<int64_t>>{pr.a, want_a}, {pr.b, want_b}}) {
            if (t->ne != want || want_a[1] <= 0) {
                status st = make_mismatch(PEFT_STATUS_SHAPE, f.path, "tensor '" + t->name + "' ne", shape_str(want) + " (the base '" + base +
                                          "' is [OC " + std::to_string(w.OC) + ", IC " + std::to_string(w.IC) + "])", shape_str(t->ne));
                st.hint = "the adapter was made for another base model";
                return st;
            }
            if (!is_float_type(t->type) && !ggml_dequantizer(t->type)) {
                return make_error(PEFT_STATUS_CONFIG, f.path, "tensor '" + t->name + "' is " + gguf_tensor_type_name(t->type) + ", which peft does not read");
            }
        }
        out.push_back(pr);
    }
    if (out.empty()) return make_error(PEFT_STATUS_SHAPE, f.path, "no LoRA tensors");
    std::sort(out.begin(), out.end(), [](const lora_pair & x, const lora_pair & y) {
        return x.layer != y.layer ? x.layer < y.layer : x.proj < y.proj;
    });
    return {};
}

} // namespace

status gguf_lora_read(const std::string & path, const llama_model & m, std::string & config_json, std::vector<gguf_lora_tensor> & out) {
    gguf_file f;
    PEFT_TRY(gguf_open(path, f));
    float alpha = 0.0f;
    PEFT_TRY(lora_header(f, m, alpha));
    std::vector<lora_pair> pairs;
    PEFT_TRY(lora_pairs(f, m, pairs));
    // llama.cpp scales pair i by alpha / R_i (1 when alpha is 0); PEFT by lora_alpha / r with
    // rank_pattern / alpha_pattern per module: one r and alpha, patterns for the others
    const int64_t r0 = pairs[0].a->ne[1];
    const double a0 = alpha != 0.0f ? alpha : (double) r0;
    std::string targets, ranks, alphas;
    out.clear();
    for (const lora_pair & pr : pairs) {
        const std::string module = "model.layers." + std::to_string(pr.layer) + "." + llama_proj_name(pr.proj);
        const int64_t R = pr.a->ne[1];
        const linear_weight & w = m.proj_weight(pr.layer, pr.proj);
        targets += std::string(targets.empty() ? "" : ",") + json_quote(module);
        if (R != r0) ranks += std::string(ranks.empty() ? "" : ",") + json_quote(module) + ":" + std::to_string(R);
        if (alpha == 0.0f && R != r0) alphas += std::string(alphas.empty() ? "" : ",") + json_quote(module) + ":" + std::to_string(R);
        const int64_t nh = m.hp.arch != "qwen2" && pr.proj == LLAMA_PROJ_Q ? m.hp.n_head
                         : m.hp.arch != "qwen2" && pr.proj == LLAMA_PROJ_K ? m.hp.n_head_kv : 0;
        gguf_lora_tensor A{"base_model.model." + module + ".lora_A.weight", {R, w.IC}, std::vector<float>((size_t) (R * w.IC))};
        gguf_lora_tensor B{"base_model.model." + module + ".lora_B.weight", {w.OC, R}, std::vector<float>((size_t) (w.OC * R))};
        // A keeps PEFT's element order; B's Q/K rows are permuted like the base's (gguf_export.h)
        for (auto [t, dst, heads] : {std::tuple<const gguf_tensor_view *, gguf_lora_tensor *, int64_t>{pr.a, &A, 0}, {pr.b, &B, nh}}) {
            const int64_t bad = read_rows(*t, dst->shape[0], dst->shape[1], heads, PEFT_DTYPE_F32, dst->data.data());
            if (bad >= 0) return make_error(PEFT_STATUS_NUMERIC, path, "tensor '" + t->name + "' has a NaN or Inf at element " + std::to_string(bad));
        }
        out.push_back(std::move(A));
        out.push_back(std::move(B));
    }
    std::string name = "gguf";
    PEFT_TRY(f.get_str("general.name", name, false));
    config_json = "{\"peft_type\":\"LORA\",\"task_type\":\"CAUSAL_LM\",\"r\":" + std::to_string(r0) + ",\"lora_alpha\":" +
                  json_python_float(a0) + ",\"lora_dropout\":0.0,\"bias\":\"none\",\"use_rslora\":false,\"init_lora_weights\":true," +
                  "\"base_model_name_or_path\":" + json_quote(name) + ",\"target_modules\":[" + targets + "],\"rank_pattern\":{" + ranks +
                  "},\"alpha_pattern\":{" + alphas + "}}";
    return {};
}

status gguf_lora_load(const std::string & path, llama_model & m, adapter_set & out) {
    std::string cfg;
    std::vector<gguf_lora_tensor> tensors;
    PEFT_TRY(gguf_lora_read(path, m, cfg, tensors));
    json_document doc;
    PEFT_TRY(doc.parse(cfg.data(), cfg.size(), path));
    adapter_set set;
    PEFT_TRY(adapters_attach(m, doc.root(), 0, set));
    std::map<std::string, const gguf_lora_tensor *> by_name;
    for (const gguf_lora_tensor & t : tensors) by_name[t.name] = &t;
    for (const param_ref & p : adapter_set_params(set)) {
        auto it = by_name.find(p.name);
        if (!p.saved) continue;
        if (it == by_name.end() || it->second->shape != p.shape) {   // the config above is built from these tensors
            m.adapters.clear();
            return make_error(PEFT_STATUS_SHAPE, path, "LoRA tensor '" + p.name + "' " + shape_str(p.shape) + " not found");
        }
        std::memcpy(p.value, it->second->data.data(), it->second->data.size() * sizeof(float));
    }
    adapters_set_training(set, false);
    out = std::move(set);
    return {};
}

} // namespace peft
