// gguf_export.cpp: models and LoRA adapters as llama.cpp GGUF files (see gguf_export.h).
#include "model/gguf_export.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <unordered_map>

#include "adapters/adapter_set.h"
#include "adapters/lora.h"
#include "core/dtype.h"
#include "core/quant.h"
#include "io/gguf_read.h"
#include "io/json.h"
#include "model/llama.h"
#include "model/llama_names.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/pretok.h"
#include "tokenizer/spm.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace peft {

namespace {

// llama_ftype (llama.h): what general.file_type says the bulk of the weights are
uint32_t file_type_of(gguf_tensor_type t) {
    switch (t) {
        case GGUF_TENSOR_F32: return 0;    // LLAMA_FTYPE_ALL_F32
        case GGUF_TENSOR_F16: return 1;    // LLAMA_FTYPE_MOSTLY_F16
        case GGUF_TENSOR_Q8_0: return 7;   // LLAMA_FTYPE_MOSTLY_Q8_0
        case GGUF_TENSOR_Q4_0: return 2;   // LLAMA_FTYPE_MOSTLY_Q4_0
        case GGUF_TENSOR_Q4_K: return 14;  // LLAMA_FTYPE_MOSTLY_Q4_K_S (every matrix Q4_K)
        case GGUF_TENSOR_BF16: return 32;  // LLAMA_FTYPE_MOSTLY_BF16
        default: return 0;                 // never written (gguf_encode)
    }
}

// The pre-tokenizer name for tokenizer.json's pre_tokenizer: its Split regex, or a bare
// ByteLevel with use_regex (GPT-2's own regex).
std::string pre_tokenizer_name(const json_value & pre, std::string & note) {
    std::string regex;
    bool bytelevel_regex = false;
    auto visit = [&](const json_value & p) {
        const std::string type = p.get("type").as_string();
        if (type == "Split") regex = p.get("pattern").get("Regex").as_string();
        if (type == "ByteLevel" && p.get("use_regex").as_bool(true)) bytelevel_regex = true;
    };
    if (pre.get("type").as_string() == "Sequence") {
        const json_value list = pre.get("pretokenizers");
        for (size_t i = 0; i < list.size(); i++) visit(list.at(i));
    } else if (pre.is_object()) {
        visit(pre);
    }
    if (regex.empty() && bytelevel_regex) regex = PRETOK_GPT2_PATTERN;
    for (const gguf_pre_tokenizer * r = GGUF_PRE_TOKENIZERS; r->name; r++) {
        if (regex == r->regex) return r->name;
    }
    note += "tokenizer.ggml.pre = \"default\": llama.cpp implements no pre-tokenizer with this tokenizer's regex, so its "
            "tokenization of text may differ from peft's (token ids given directly are unaffected)\n";
    return "default";
}

std::string merge_text(const json_value & m) {
    if (m.is_string()) return m.as_string();
    if (m.is_array() && m.size() == 2) return m.at(0).as_string() + " " + m.at(1).as_string();
    return {};
}

// A GGUF source model: its tokenizer.* metadata as it is (the vocabulary llama.cpp already runs).
status copy_tokenizer_metadata(gguf_writer & w, const std::string & path) {
    gguf_file f;
    PEFT_TRY(gguf_open(path, f));
    for (const gguf_kv & kv : f.kv) {
        if (kv.key.rfind("tokenizer.", 0) != 0) continue;
        const bool arr = kv.type == GGUF_VALUE_ARRAY;
        std::vector<std::string> strs(kv.strs.begin(), kv.strs.end());
        std::vector<int32_t> ints;
        std::vector<float> floats;
        uint32_t u = 0;
        float x = 0.0f;
        bool b = false;
        if (!arr && kv.type == GGUF_VALUE_STRING) w.set_str(kv.key, strs[0]);
        else if (!arr && kv.type == GGUF_VALUE_BOOL && f.get_bool(kv.key, b, true).ok()) w.set_bool(kv.key, b);
        else if (!arr && kv.type == GGUF_VALUE_FLOAT32 && f.get_f32(kv.key, x, true).ok()) w.set_f32(kv.key, x);
        else if (!arr && f.get_u32(kv.key, u, true).ok()) w.set_u32(kv.key, u);
        else if (arr && kv.elem_type == GGUF_VALUE_STRING) w.set_arr_str(kv.key, strs);
        else if (arr && f.get_arr_i32(kv.key, ints, true).ok()) w.set_arr_i32(kv.key, ints);
        else if (arr && f.get_arr_f32(kv.key, floats, true).ok()) w.set_arr_f32(kv.key, floats);
        else return make_error(PEFT_STATUS_FORMAT, path, "key '" + kv.key + "' has a type peft export does not copy");
    }
    return {};
}

// What llama.cpp reads besides the vocabulary: special ids, whether encoding adds BOS/EOS (as
// this tokenizer's post-processor template does), the chat template.
void special_metadata(gguf_writer & w, const tokenizer & tok, int32_t unk) {
    if (tok.bos_id() >= 0) w.set_u32("tokenizer.ggml.bos_token_id", (uint32_t) tok.bos_id());
    if (tok.eos_id() >= 0) w.set_u32("tokenizer.ggml.eos_token_id", (uint32_t) tok.eos_id());
    if (unk >= 0) w.set_u32("tokenizer.ggml.unknown_token_id", (uint32_t) unk);
    if (tok.pad_id() >= 0) w.set_u32("tokenizer.ggml.padding_token_id", (uint32_t) tok.pad_id());
    const std::vector<int32_t> probe = tok.encode("a", true);
    w.set_bool("tokenizer.ggml.add_bos_token", !probe.empty() && probe.front() == tok.bos_id() && tok.bos_id() >= 0);
    w.set_bool("tokenizer.ggml.add_eos_token", !probe.empty() && probe.back() == tok.eos_id() && tok.eos_id() >= 0);
    if (!tok.chat_template().empty()) w.set_str("tokenizer.chat_template", tok.chat_template());
}

// A SentencePiece ("llama") vocabulary, one entry per id of the model's vocab_size.
struct spm_vocab {
    std::vector<std::string> tokens;
    std::vector<float>       scores;
    std::vector<int32_t>     types;
    int32_t                  unk = -1;

    // ids the tokenizer lacks, padded as the converter pads ("[PAD<id>]", unused)
    explicit spm_vocab(int64_t n) : scores((size_t) n, -10000.0f), types((size_t) n, GGUF_TOKEN_UNUSED) {
        for (int64_t i = 0; i < n; i++) tokens.push_back("[PAD" + std::to_string(i) + "]");
    }
    status place(const std::string & path, int64_t id, const std::string & text, float score, int32_t type) {
        if (id < 0 || id >= (int64_t) tokens.size()) {
            return make_error(PEFT_STATUS_SHAPE, path, "token \"" + text + "\" has id " + std::to_string(id) +
                              ", outside the model's vocab_size " + std::to_string(tokens.size()));
        }
        tokens[(size_t) id] = text;
        scores[(size_t) id] = score;
        types[(size_t) id] = type;
        return {};
    }
};

// tokenizer.model, as convert_hf_to_gguf.py's _create_vocab_sentencepiece reads it: each piece
// with its score and type, then tokenizer_config.json's added_tokens_decoder (control when
// special, else user-defined with "▁" read as a space; score -1000).
status spm_vocab_from_model(const std::string & model_dir, spm_vocab & v) {
    const std::string path = model_dir + "/tokenizer.model";
    std::shared_ptr<spm_model> sp;
    PEFT_TRY(spm_load(path, sp));
    const int32_t n = spm_vocab_size(*sp);
    if (n > (int32_t) v.tokens.size()) {
        return make_mismatch(PEFT_STATUS_SHAPE, path, "pieces", "at most the model's vocab_size " + std::to_string(v.tokens.size()),
                             std::to_string(n));
    }
    for (int32_t id = 0; id < n; id++) {
        const int32_t type = spm_piece_type(*sp, id);
        PEFT_TRY(v.place(path, id, spm_id_to_piece(*sp, id), spm_score(*sp, id), type));
        if (type == GGUF_TOKEN_UNKNOWN && v.unk < 0) v.unk = id;
    }
    const std::string config = model_dir + "/tokenizer_config.json";
    std::error_code ec;
    if (!fs::is_regular_file(config, ec)) return {};
    json_document doc;
    PEFT_TRY(doc.parse_file(config));
    const json_value added = doc.root().get("added_tokens_decoder");
    for (size_t i = 0; i < added.size(); i++) {
        const json_value a = added.value_at(i);
        std::string text = a.get("content").as_string();
        const bool special = a.get("special").as_bool(false);
        for (size_t p; !special && (p = text.find("\xe2\x96\x81")) != std::string::npos;) text.replace(p, 3, " ");
        const int64_t id = std::strtoll(added.key_at(i).c_str(), nullptr, 10);
        PEFT_TRY(v.place(config, id, text, -1000.0f, special ? GGUF_TOKEN_CONTROL : GGUF_TOKEN_USER_DEFINED));
    }
    return {};
}

// tokenizer.json of a SentencePiece-style BPE (byte_fallback: Llama 2, Mistral, TinyLlama).
// convert_hf_to_gguf.py (LlamaHfVocab) writes every score as -1000, which leaves llama.cpp's
// merge order to position alone; here a token's score is minus the rank of the first merge that
// makes it, so llama.cpp's highest-score merge is the BPE's lowest-rank merge (tokens no merge
// makes score below all of them). Types as the converter: <0xXX> byte, special added tokens
// control, other added tokens user-defined.
status spm_vocab_from_json(const std::string & path, const json_value & root, spm_vocab & v) {
    const json_value model = root.get("model");
    const json_value vocab = model.get("vocab"), merges = model.get("merges");
    std::unordered_map<std::string, int64_t> id_of;
    for (size_t i = 0; i < vocab.size(); i++) id_of[vocab.key_at(i)] = vocab.value_at(i).as_int(-1);
    std::unordered_map<int64_t, float> merge_score;
    for (size_t r = merges.size(); r-- > 0;) {
        std::string m = merge_text(merges.at(r));
        const size_t sp = m.find(' ');
        if (sp == std::string::npos) return make_error(PEFT_STATUS_FORMAT, path, "model.merges[" + std::to_string(r) + "] is not a merge");
        m.erase(sp, 1);
        const auto it = id_of.find(m);
        if (it != id_of.end()) merge_score[it->second] = -(float) r;   // walking down: the first rank wins
    }
    const float unmerged = -(float) merges.size() - 1.0f;
    for (size_t i = 0; i < vocab.size(); i++) {
        const std::string & text = vocab.key_at(i);
        const int64_t id = vocab.value_at(i).as_int(-1);
        const auto it = merge_score.find(id);
        const bool byte = text.size() == 6 && text.compare(0, 3, "<0x") == 0 && text[5] == '>';
        PEFT_TRY(v.place(path, id, text, it != merge_score.end() ? it->second : unmerged, byte ? GGUF_TOKEN_BYTE : GGUF_TOKEN_NORMAL));
    }
    const std::string unk_text = model.get("unk_token").as_string();
    if (id_of.count(unk_text)) v.unk = (int32_t) id_of[unk_text];
    const json_value added = root.get("added_tokens");
    for (size_t i = 0; i < added.size(); i++) {
        const json_value a = added.at(i);
        const int64_t id = a.get("id").as_int(-1);
        const bool special = a.get("special").as_bool(false);
        const float score = id >= 0 && id < (int64_t) v.scores.size() && v.types[(size_t) id] != GGUF_TOKEN_UNUSED ? v.scores[(size_t) id] : -1000.0f;
        PEFT_TRY(v.place(path, id, a.get("content").as_string(), score, special ? GGUF_TOKEN_CONTROL : GGUF_TOKEN_USER_DEFINED));
    }
    return {};
}

status spm_metadata(gguf_writer & w, const spm_vocab & v, const tokenizer & tok) {
    w.set_str("tokenizer.ggml.model", "llama");
    w.set_str("tokenizer.ggml.pre", "default");
    w.set_arr_str("tokenizer.ggml.tokens", v.tokens);
    w.set_arr_f32("tokenizer.ggml.scores", v.scores);
    w.set_arr_i32("tokenizer.ggml.token_type", v.types);
    special_metadata(w, tok, v.unk);
    return {};
}

status tokenizer_metadata(gguf_writer & w, const std::string & model_dir, int64_t n_vocab, std::string & note) {
    if (gguf_is_file(model_dir)) return copy_tokenizer_metadata(w, model_dir);
    const std::string path = model_dir + "/tokenizer.json", spm_path = model_dir + "/tokenizer.model";
    std::error_code ec;
    const bool have_json = fs::is_regular_file(path, ec), have_spm = fs::is_regular_file(spm_path, ec);
    if (!have_json && !have_spm) {
        w.set_str("tokenizer.ggml.model", "none");
        note += "no tokenizer.json in " + model_dir + ": written with tokenizer.ggml.model \"none\" (llama.cpp runs token ids only)\n";
        return {};
    }
    std::unique_ptr<tokenizer> tok;
    PEFT_TRY(tokenizer::load(model_dir, tok));
    json_document doc;
    if (have_json) PEFT_TRY(doc.parse_file(path));
    const json_value root = have_json ? doc.root() : json_value();
    const json_value model = root.get("model");
    const bool bpe = model.get("type").as_string() == "BPE", byte_fallback = model.get("byte_fallback").as_bool(false);
    if (!have_json || (bpe && byte_fallback)) {
        // SentencePiece: tokenizer.model when there is one (as the converter), else tokenizer.json
        spm_vocab v(n_vocab);
        if (have_spm) PEFT_TRY(spm_vocab_from_model(model_dir, v));
        else PEFT_TRY(spm_vocab_from_json(path, root, v));
        return spm_metadata(w, v, *tok);
    }
    if (!bpe) {
        status st = make_error(PEFT_STATUS_CONFIG, path, "model: only BPE tokenizers (byte-level or SentencePiece-style) are exported to GGUF");
        st.hint = "peft export gguf writes the tokenizers of Llama 2/3, Mistral, TinyLlama, Qwen2 and GPT-2";
        return st;
    }
    // id -> token, padded as the converter pads (ids the tokenizer lacks become "[PAD<id>]")
    std::vector<std::string> tokens((size_t) n_vocab);
    std::vector<int32_t> types((size_t) n_vocab, GGUF_TOKEN_UNUSED);
    std::vector<bool> have((size_t) n_vocab, false);
    auto place = [&](int64_t id, const std::string & text, int32_t type) -> status {
        if (id < 0 || id >= n_vocab) {
            return make_error(PEFT_STATUS_SHAPE, path, "token \"" + text + "\" has id " + std::to_string(id) +
                              ", outside the model's vocab_size " + std::to_string(n_vocab));
        }
        tokens[(size_t) id] = text;
        types[(size_t) id] = type;
        have[(size_t) id] = true;
        return {};
    };
    const json_value vocab = model.get("vocab");
    for (size_t i = 0; i < vocab.size(); i++) PEFT_TRY(place(vocab.value_at(i).as_int(-1), vocab.key_at(i), GGUF_TOKEN_NORMAL));
    const json_value added = root.get("added_tokens");
    for (size_t i = 0; i < added.size(); i++) {
        const json_value a = added.at(i);
        PEFT_TRY(place(a.get("id").as_int(-1), a.get("content").as_string(),
                       a.get("special").as_bool(false) ? GGUF_TOKEN_CONTROL : GGUF_TOKEN_USER_DEFINED));
    }
    for (int64_t i = 0; i < n_vocab; i++) {
        if (!have[(size_t) i]) tokens[(size_t) i] = "[PAD" + std::to_string(i) + "]";
    }
    std::vector<std::string> merges;
    const json_value jm = model.get("merges");
    merges.reserve(jm.size());
    for (size_t i = 0; i < jm.size(); i++) {
        std::string m = merge_text(jm.at(i));
        if (m.empty()) return make_error(PEFT_STATUS_FORMAT, path, "model.merges[" + std::to_string(i) + "] is not a merge");
        merges.push_back(std::move(m));
    }
    w.set_str("tokenizer.ggml.model", "gpt2");
    w.set_str("tokenizer.ggml.pre", pre_tokenizer_name(root.get("pre_tokenizer"), note));
    w.set_arr_str("tokenizer.ggml.tokens", tokens);
    w.set_arr_i32("tokenizer.ggml.token_type", types);
    w.set_arr_str("tokenizer.ggml.merges", merges);
    special_metadata(w, *tok, -1);
    return {};
}

// The llama.cpp architecture of hp, or an error naming the unsupported model_type.
status gguf_arch(const llama_hparams & hp, std::string & arch, bool & permute) {
    if (hp.arch == "llama" || hp.arch == "mistral") {
        arch = "llama";
        permute = true;
        return {};
    }
    if (hp.arch == "qwen2") {
        arch = "qwen2";
        permute = false;
        return {};
    }
    status st = make_error(PEFT_STATUS_CONFIG, "config.json", "model_type \"" + hp.arch + "\" has no GGUF export");
    st.hint = "peft export gguf writes llama, mistral and qwen2 models";
    return st;
}

void hparams_metadata(gguf_writer & w, const std::string & arch, const llama_hparams & hp) {
    const std::string a = arch + ".";
    w.set_u32(a + "vocab_size", (uint32_t) hp.n_vocab);
    w.set_u32(a + "context_length", (uint32_t) hp.max_position);
    w.set_u32(a + "embedding_length", (uint32_t) hp.n_embd);
    w.set_u32(a + "block_count", (uint32_t) hp.n_layer);
    w.set_u32(a + "feed_forward_length", (uint32_t) hp.n_ff);
    w.set_u32(a + "rope.dimension_count", (uint32_t) hp.head_dim);
    w.set_u32(a + "attention.head_count", (uint32_t) hp.n_head);
    w.set_u32(a + "attention.head_count_kv", (uint32_t) hp.n_head_kv);
    w.set_u32(a + "attention.key_length", (uint32_t) hp.head_dim);
    w.set_u32(a + "attention.value_length", (uint32_t) hp.head_dim);
    w.set_f32(a + "attention.layer_norm_rms_epsilon", hp.rms_eps);
    w.set_f32(a + "rope.freq_base", hp.rope.theta);
}

enum permute_kind { PERMUTE_NONE, PERMUTE_Q, PERMUTE_K };

// One tensor to write: f32 values from a stored tensor (or a buffer), permuted, encoded.
struct export_item {
    std::string          name;      // GGUF
    std::vector<int64_t> shape;     // HF order
    dtype                src_type = PEFT_DTYPE_F32;
    const void *         src = nullptr;
    const qtensor *      q = nullptr;   // a quantized source (a quantized GGUF base); src is then null
    permute_kind         permute = PERMUTE_NONE;
    float                scale = 1.0f;   // LoRA B folding
    gguf_tensor_type     type = GGUF_TENSOR_F32;
};

struct item_source : gguf_tensor_source {
    const std::vector<export_item> & items;
    int64_t n_head = 0, n_head_kv = 0;
    std::vector<float> f32;
    item_source(const std::vector<export_item> & it, int64_t nh, int64_t nkv) : items(it), n_head(nh), n_head_kv(nkv) {}

    // Row by row, in parallel: gather (the permutation), convert to f32, scale, check, encode.
    status fill(size_t i, std::vector<uint8_t> & out) override {
        const export_item & it = items[i];
        // a permuted bias [OC] is OC rows of one element; other vectors are one row
        const bool matrix = it.shape.size() > 1;
        const int64_t rows = matrix ? it.shape[0] : it.permute != PERMUTE_NONE ? it.shape[0] : 1;
        const int64_t IC = matrix ? it.shape[1] : it.shape[0] / rows;
        uint64_t nbytes = 0;
        std::vector<int64_t> ne(it.shape.rbegin(), it.shape.rend());
        PEFT_TRY(gguf_tensor_nbytes(it.type, ne, it.name, &nbytes));
        out.resize((size_t) nbytes);
        f32.resize((size_t) (rows * IC));
        const size_t in_row = dtype_size(it.src_type) * (size_t) IC, out_row = (size_t) nbytes / (size_t) rows;
        const int64_t nh = it.permute == PERMUTE_Q ? n_head : n_head_kv;
        const bool f16 = it.type == GGUF_TENSOR_F16;
        int64_t bad = -1;   // first element that is not finite or not representable
        const uint8_t * src = (const uint8_t *) it.src;
        #pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const int64_t sr = it.permute == PERMUTE_NONE ? r : llama_gguf_permuted_row(r, nh, rows);
            float * x = f32.data() + r * IC;
            if (it.q) qtensor_dequant_range(*it.q, sr * IC, (sr + 1) * IC, x);
            else convert_to_f32(it.src_type, src + (size_t) sr * in_row, x, (size_t) IC);
            int64_t row_bad = -1;
            for (int64_t c = 0; c < IC; c++) {
                x[c] *= it.scale;
                // f16 overflows to inf where f32 does not: check what is actually written
                if (row_bad < 0 && !(std::fabs(x[c]) <= (f16 ? 65504.0f : FLT_MAX))) row_bad = r * IC + c;
            }
            if (row_bad >= 0) {
                #pragma omp critical
                bad = bad < 0 ? row_bad : std::min(bad, row_bad);
            }
            gguf_encode(it.type, x, out.data() + (size_t) r * out_row, IC);
        }
        if (bad >= 0) {
            const float v = f32[(size_t) bad];
            status st = make_error(PEFT_STATUS_NUMERIC, it.name, "value " + std::to_string(v) + " at element " +
                                   std::to_string(bad) + (std::isfinite(v) ? " overflows F16" : " is not finite"));
            if (std::isfinite(v)) st.hint = "export with --type bf16 or f32";
            return st;
        }
        return {};
    }
};

status add_items(gguf_writer & w, const std::vector<export_item> & items) {
    for (const export_item & it : items) {
        std::vector<int64_t> ne(it.shape.rbegin(), it.shape.rend());
        PEFT_TRY(w.add_tensor(it.name, ne, it.type));
    }
    return {};
}

} // namespace

int64_t llama_gguf_permuted_row(int64_t r, int64_t n_head, int64_t OC) {
    const int64_t HS = OC / n_head, half = HS / 2;
    const int64_t h = r / HS, i = (r % HS) / 2, j = r % 2;
    return h * HS + j * half + i;
}

std::vector<float> llama_gguf_rope_factors(const llama_hparams & hp) {
    const rope_config & r = hp.rope;
    const int64_t dim = hp.head_dim;
    const double low_wavelen = (double) r.original_max_position / r.low_freq_factor;
    const double high_wavelen = (double) r.original_max_position / r.high_freq_factor;
    std::vector<float> out;
    for (int64_t i = 0; i < dim; i += 2) {
        const float freq = 1.0f / std::pow(r.theta, (float) i / (float) dim);   // torch float32
        const double wavelen = 2.0 * M_PI / (double) freq;
        if (wavelen < high_wavelen) out.push_back(1.0f);
        else if (wavelen > low_wavelen) out.push_back(r.factor);
        else {
            const double smooth = ((double) r.original_max_position / wavelen - r.low_freq_factor) /
                                  (r.high_freq_factor - r.low_freq_factor);
            out.push_back((float) (1.0 / ((1.0 - smooth) / r.factor + smooth)));
        }
    }
    return out;
}

void llama_gguf_permute_rows(float * dst, const float * src, int64_t n_head, int64_t OC, int64_t IC) {
    const int64_t HS = OC / n_head, half = HS / 2;
    PEFT_ASSERT(HS * n_head == OC && half * 2 == HS);
    for (int64_t h = 0; h < n_head; h++) {
        for (int64_t i = 0; i < half; i++) {
            for (int64_t j = 0; j < 2; j++) {
                const float * s = src + (h * HS + j * half + i) * IC;
                std::memcpy(dst + (h * HS + 2 * i + j) * IC, s, (size_t) IC * sizeof(float));
            }
        }
    }
}

status gguf_export_model(const llama_model & m, const std::string & model_dir, const gguf_export_options & o,
                         const std::string & out, std::string & note) {
    const llama_hparams & hp = m.hp;
    std::string arch;
    bool permute = false;
    PEFT_TRY(gguf_arch(hp, arch, permute));
    if (!m.adapters.empty()) {
        return make_error(PEFT_STATUS_CONFIG, "export", "the model has unmerged adapters (merge them first: adapters_merge)");
    }

    std::vector<export_item> items;
    bool fell_back = false;
    const std::string q_suffix = "self_attn.q_proj.", k_suffix = "self_attn.k_proj.";
    for (const llama_tensor & t : m.tensors) {
        if (hp.tie_embeddings && t.name == "lm_head.weight") continue;   // llama.cpp reuses token_embd
        export_item it;
        if (!llama_gguf_tensor_name(t.name, it.name)) {
            status st = make_error(PEFT_STATUS_SHAPE, model_dir, "tensor '" + t.name + "' has no GGUF name");
            st.hint = "peft export gguf knows the tensors of llama, mistral and qwen2 checkpoints";
            return st;
        }
        it.shape = t.shape;
        it.src_type = t.type;
        it.src = t.data;
        it.q = t.q;
        if (permute && t.name.find(q_suffix) != std::string::npos) it.permute = PERMUTE_Q;
        if (permute && t.name.find(k_suffix) != std::string::npos) it.permute = PERMUTE_K;
        it.type = t.shape.size() < 2 ? GGUF_TENSOR_F32 : o.type;
        if (t.shape.back() % gguf_tensor_type_block(it.type) != 0) {
            it.type = GGUF_TENSOR_F16;   // as convert_hf_to_gguf.py: rows not a whole number of blocks
            fell_back = true;
        }
        items.push_back(std::move(it));
    }
    if (fell_back) {
        note += "tensors whose rows are not a multiple of " + std::to_string(gguf_tensor_type_block(o.type)) + " are written as F16 (" +
                gguf_tensor_type_name(o.type) + " blocks are " + std::to_string(gguf_tensor_type_block(o.type)) + " values)\n";
    }
    std::vector<float> rope_factors;
    if (hp.rope.llama3) {
        if (arch != "llama") return make_error(PEFT_STATUS_CONFIG, "config.json", "llama3 rope_scaling on a " + arch + " model");
        rope_factors = llama_gguf_rope_factors(hp);
        export_item it;
        it.name = "rope_freqs.weight";
        it.shape = {(int64_t) rope_factors.size()};
        it.src = rope_factors.data();
        items.push_back(std::move(it));
    }

    gguf_writer w;
    w.set_str("general.architecture", arch);
    w.set_str("general.type", "model");
    // "dir/" names the directory too: the name of its last non-empty component
    w.set_str("general.name", o.name.empty() ? fs::path(model_dir + "/.").parent_path().filename().string() : o.name);
    w.set_u32("general.file_type", file_type_of(o.type));
    w.set_u32("general.quantization_version", 2);   // GGML_QNT_VERSION
    w.set_u32("general.alignment", GGUF_ALIGNMENT);
    hparams_metadata(w, arch, hp);
    PEFT_TRY(tokenizer_metadata(w, model_dir, hp.n_vocab, note));
    PEFT_TRY(add_items(w, items));
    item_source src(items, hp.n_head, hp.n_head_kv);
    return w.write(out, src, o.progress);
}

status gguf_export_lora(const llama_model & m, const adapter_set & s, gguf_tensor_type type, const std::string & name,
                        const std::string & out, std::string & note) {
    const llama_hparams & hp = m.hp;
    std::string arch;
    bool permute = false;
    PEFT_TRY(gguf_arch(hp, arch, permute));
    if (type != GGUF_TENSOR_F32 && type != GGUF_TENSOR_F16 && type != GGUF_TENSOR_BF16) {
        return make_error(PEFT_STATUS_ARGUMENT, "--type", "a GGUF LoRA is written as f32, f16 or bf16 (llama.cpp's tools refuse quantized LoRA)");
    }
    if (!s.method || std::strcmp(s.method->name(), "lora") != 0 || s.modules.empty()) {
        status st = make_error(PEFT_STATUS_CONFIG, "adapter", std::string("a ") + (s.method ? s.method->name() : "?") +
                               " adapter is not a plain LoRA, which is all llama.cpp's --lora runs");
        st.hint = "merge it into the model instead: peft export gguf --model DIR --adapter DIR --out model.gguf";
        return st;
    }
    // One alpha for the file: llama.cpp scales pair i by alpha / R_i. A module whose PEFT scale
    // s_i differs from alpha / R_i gets B_i * (s_i R_i / alpha) instead (exact up to one f32
    // rounding of B); alpha is the first module's s R, so a uniform adapter is written unchanged.
    const auto * first = dynamic_cast<const lora_module *>(s.modules[0].get());
    if (!first) return make_error(PEFT_STATUS_CONFIG, "adapter", "module 0 is not a LoRA module");
    double alpha = (double) first->scaling * (double) first->R;
    if (!(alpha != 0.0) || !std::isfinite(alpha)) alpha = (double) first->R;   // alpha 0 means "scale 1" to llama.cpp
    std::vector<export_item> items;
    int folded = 0;
    for (size_t i = 0; i < s.modules.size(); i++) {
        const auto * mod = dynamic_cast<const lora_module *>(s.modules[i].get());
        const target_info & t = s.targets[i];
        if (!mod) return make_error(PEFT_STATUS_CONFIG, t.path, "not a LoRA module");
        int p = 0;
        while (p < LLAMA_PROJ_COUNT && !(t.path.size() > std::strlen(llama_proj_name((llama_proj) p)) &&
                                         t.path.compare(t.path.size() - std::strlen(llama_proj_name((llama_proj) p)),
                                                        std::string::npos, llama_proj_name((llama_proj) p)) == 0)) p++;
        if (p == LLAMA_PROJ_COUNT) return make_error(PEFT_STATUS_CONFIG, t.path, "module has no GGUF tensor");
        const std::string base = llama_gguf_proj_name(t.layer, (llama_proj) p) + ".weight";
        const double factor = (double) mod->scaling * (double) mod->R / alpha;
        if (!std::isfinite(factor)) return make_error(PEFT_STATUS_NUMERIC, t.path, "LoRA scale is not finite");
        if (factor != 1.0) folded++;
        export_item a, b;
        a.name = base + ".lora_a";
        a.shape = {mod->R, t.in_features};      // A [R, IC] -> ne [IC, R]
        a.src = mod->A.data();
        a.type = type;
        b.name = base + ".lora_b";
        b.shape = {t.out_features, mod->R};     // B [OC, R] -> ne [R, OC]
        b.src = mod->B.data();
        b.type = type;
        b.scale = (float) factor;
        // the base's Q/K rows are permuted in the GGUF model, so B's rows are too (A is unchanged)
        if (permute && p == LLAMA_PROJ_Q) b.permute = PERMUTE_Q;
        if (permute && p == LLAMA_PROJ_K) b.permute = PERMUTE_K;
        items.push_back(std::move(a));
        items.push_back(std::move(b));
    }
    if (folded) {
        note += std::to_string(folded) + " of " + std::to_string(s.modules.size()) +
                " modules scale differently from alpha/r (rank_pattern, alpha_pattern or rsLoRA): their scale is folded into lora_b\n";
    }
    gguf_writer w;
    w.set_str("general.architecture", arch);
    w.set_str("general.type", "adapter");
    w.set_str("general.name", name);
    w.set_str("adapter.type", "lora");
    w.set_f32("adapter.lora.alpha", (float) alpha);
    w.set_u32("general.alignment", GGUF_ALIGNMENT);
    PEFT_TRY(add_items(w, items));
    item_source src(items, hp.n_head, hp.n_head_kv);
    return w.write(out, src, false);
}

} // namespace peft
