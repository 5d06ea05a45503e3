// test_gguf_llama.cpp: our GGUF exports checked by the real llama.cpp (release v0.5.0, the
// prebuilt libraries scripts/fetch_assets.sh fetches; a test-time oracle only, peft never links
// it). Each test exports with the `peft` binary, loads the file with libllama, runs fixed token
// ids and compares llama.cpp's next-token log-probabilities with those of our own model code
// (what `peft eval` computes) on the source checkpoint:
//   - F32 export: max |lp_llama - lp_ours| / max(1, |lp_ours|) <= 1e-5 (the issue asks 1e-4;
//     measured worst 1.2e-6, and 1e-5 is what catches an unpermuted q bias: 3.8e-5 on llama_bias);
//   - F16 / BF16 / Q8_0: tolerances stated at each test, a few times the measured error;
//   - base GGUF + our GGUF LoRA (llama.cpp applies it unmerged) vs our unmerged adapter, with
//     rsLoRA + rank_pattern + alpha_pattern so the folding into lora_b is exercised;
//   - the merged export (export gguf --adapter) vs the same adapter;
//   - llama.cpp's tokenizer on the exported file vs ours on a few strings;
//   - llama.cpp's llama-export-lora merging our GGUF LoRA into our GGUF base vs our merge;
//   - our F16/BF16/Q8_0 encodings vs ggml's bytes, and ggml's GGUF reader on our files.
// Models: models/tiny-llama (tied embeddings, GQA 8:4, byte-level BPE), tests/fixtures/llama_gqa
// (untied, GQA 4:2), qwen2_tied (qwen2: q/k/v biases, tied, GQA 4:1), llama3_packed (llama3
// rope_scaling, written as rope_freqs.weight), llama_bias (attention and MLP biases).
// Skips when the libraries are missing, unless PEFT_REQUIRE_ASSETS=1 (CI), where that fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "adapters/adapter_set.h"
#include "io/json.h"
#include "model/llama.h"
#include "gguf_test_util.h"
#include "testing.h"
#include "tokenizer/normalize.h"
#include "tokenizer/tokenizer.h"

#if PEFT_LLAMA_ORACLE
#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"
#endif
#include "core/dtype.h"
#include "io/gguf.h"
#include "model/gguf_export.h"

namespace {

using peft::status;
namespace pt = peft::testing;

[[maybe_unused]] bool require_assets() {
    const char * r = std::getenv("PEFT_REQUIRE_ASSETS");
    return r && std::string(r) == "1";
}

#if PEFT_LLAMA_ORACLE
#define ORACLE_OR_SKIP() \
    do { } while (0)
#else
#define ORACLE_OR_SKIP()                                                                                        \
    do {                                                                                                        \
        if (require_assets()) FAIL() << "llama.cpp oracle not built: run scripts/fetch_assets.sh, then cmake again"; \
        GTEST_SKIP() << "llama.cpp oracle missing at configure time (run scripts/fetch_assets.sh and cmake again; " \
                        "PEFT_REQUIRE_ASSETS=1 makes this fail)";                                              \
    } while (0)
#endif

// Fixed token ids inside every test model's vocab (V >= 64).
std::vector<int32_t> fixed_tokens(int64_t V, int n) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; i++) t.push_back((int32_t) ((i * 37 + 11) % V));
    return t;
}

// Row-wise log-softmax of logits [T, V], in double.
std::vector<double> log_softmax(const std::vector<float> & logits, int64_t V) {
    std::vector<double> out(logits.size());
    for (size_t r = 0; r < logits.size() / (size_t) V; r++) {
        const float * x = logits.data() + r * V;
        double mx = x[0];
        for (int64_t j = 1; j < V; j++) mx = std::max(mx, (double) x[j]);
        double s = 0.0;
        for (int64_t j = 0; j < V; j++) s += std::exp((double) x[j] - mx);
        const double lse = mx + std::log(s);
        for (int64_t j = 0; j < V; j++) out[r * V + j] = (double) x[j] - lse;
    }
    return out;
}

// max |a - b| / max(1, |b|): relative where log-probs are large, absolute near 0.
double max_rel(const std::vector<double> & a, const std::vector<double> & b) {
    double m = 0.0;
    for (size_t i = 0; i < a.size(); i++) m = std::max(m, std::fabs(a[i] - b[i]) / std::max(1.0, std::fabs(b[i])));
    return m;
}

// Our log-probs: the checkpoint in model_dir (+ the PEFT adapter, unmerged), as `peft eval`.
std::vector<double> ours(const std::string & model_dir, const std::string & adapter_dir, const std::vector<int32_t> & tok) {
    peft::llama_model m;
    status st = peft::llama_load(m, model_dir, false);
    EXPECT_TRUE(st.ok()) << st.message;
    peft::adapter_set set;
    if (!adapter_dir.empty()) {
        st = peft::adapter_load(adapter_dir, m, set);
        EXPECT_TRUE(st.ok()) << st.message;
    }
    return log_softmax(pt::forward_logits(m, tok), m.hp.n_vocab);
}

void export_ok(const std::vector<std::string> & args) {
    const pt::child_result r = pt::spawn_peft(args);
    ASSERT_EQ(r.code, 0) << r.out;
}

#if PEFT_LLAMA_ORACLE

std::string lib_dir() { return PEFT_LLAMA_LIB_DIR; }

void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

struct oracle {
    oracle() {
        llama_log_set(quiet_log, nullptr);
        ggml_backend_load_all_from_path(lib_dir().c_str());   // the libggml-cpu-<arch>.so variants
        llama_backend_init();
    }
};
const oracle & the_oracle() {
    static oracle o;
    return o;
}

// llama.cpp's log-probs for tok on model (+ lora at scale 1), all positions in one batch.
std::vector<double> llama_cpp(const std::string & model, const std::string & lora, const std::vector<int32_t> & tok,
                              int64_t * n_vocab = nullptr) {
    the_oracle();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * lm = llama_model_load_from_file(model.c_str(), mp);
    EXPECT_NE(lm, nullptr) << "llama.cpp refused " << model;
    if (!lm) return {};
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 64;
    cp.n_ubatch = 64;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    // f32 everywhere llama.cpp would round: its default K/V cache is F16
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(lm, cp);
    EXPECT_NE(ctx, nullptr);
    llama_adapter_lora * ad = nullptr;
    if (!lora.empty()) {
        ad = llama_adapter_lora_init(lm, lora.c_str());
        EXPECT_NE(ad, nullptr) << "llama.cpp refused the LoRA " << lora;
        float scale = 1.0f;
        if (ad) {
            EXPECT_EQ(llama_set_adapters_lora(ctx, &ad, 1, &scale), 0);
        }
    }
    const int32_t T = (int32_t) tok.size();
    ::llama_batch b = llama_batch_init(T, 0, 1);
    for (int32_t i = 0; i < T; i++) {
        b.token[i] = tok[(size_t) i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = T;
    EXPECT_EQ(llama_decode(ctx, b), 0);
    const int64_t V = llama_vocab_n_tokens(llama_model_get_vocab(lm));
    if (n_vocab) *n_vocab = V;
    std::vector<float> logits((size_t) (T * V));
    for (int32_t i = 0; i < T; i++) {
        const float * l = llama_get_logits_ith(ctx, i);
        std::copy(l, l + V, logits.begin() + (size_t) i * V);
    }
    llama_batch_free(b);
    if (ad) llama_adapter_lora_free(ad);
    llama_free(ctx);
    llama_model_free(lm);
    return log_softmax(logits, V);
}

// Exports model_dir as `type` (to *gguf when given), runs both, returns the measured error.
double export_and_compare(const std::string & model_dir, const std::string & type, const std::string & tag, std::string * gguf = nullptr) {
    const std::string out = pt::temp_dir("gguf_llama_" + tag) + "/model.gguf";
    if (gguf) *gguf = out;
    export_ok({"export", "gguf", "--model", model_dir, "--out", out, "--type", type});
    peft::llama_model m;
    EXPECT_TRUE(peft::llama_load(m, model_dir, false).ok());
    const std::vector<int32_t> tok = fixed_tokens(m.hp.n_vocab, 24);
    const std::vector<double> want = ours(model_dir, "", tok);
    int64_t V = 0;
    const std::vector<double> got = llama_cpp(out, "", tok, &V);
    EXPECT_EQ(V, m.hp.n_vocab);
    if (got.size() != want.size()) return 1e9;
    const double e = max_rel(got, want);
    std::printf("[ gguf ] %s %s: max rel log-prob error vs ours %.3g\n", tag.c_str(), type.c_str(), e);
    return e;
}

#endif

struct model_case {
    const char * tag;
    const char * dir;   // relative to the source tree
};
const model_case MODELS[] = {
    {"tiny_llama", "models/tiny-llama"},
    {"llama_gqa", "tests/fixtures/llama_gqa"},
    {"qwen2_tied", "tests/fixtures/qwen2_tied"},
    {"llama3_rope", "tests/fixtures/llama3_packed"},   // llama3 rope_scaling: rope_freqs.weight
    {"llama_bias", "tests/fixtures/llama_bias"},       // q/k/v/o and MLP biases (q/k permuted)
};

} // namespace

// F32: the exported weights are ours bit for bit; what differs is llama.cpp's arithmetic.
TEST(GgufLlama, F32MatchesOurLogprobs) {
    ORACLE_OR_SKIP();
#if PEFT_LLAMA_ORACLE
    for (const model_case & c : MODELS) {
        EXPECT_LE(export_and_compare(pt::source_path(c.dir), "f32", c.tag), 1e-5) << c.tag;
    }
#endif
}

// Rounded weights, compared with our f32 model: the error is the rounding's effect on the
// log-probs (llama.cpp also rounds activations to Q8 for Q8_0 dot products). Measured maxima over
// the three models (tiny-llama each time): F16 3.4e-4, BF16 2.6e-3, Q8_0 1.8e-2; the bounds are
// about 3x those.
TEST(GgufLlama, F16Bf16Q8MatchWithinTolerance) {
    ORACLE_OR_SKIP();
#if PEFT_LLAMA_ORACLE
    const struct { const char * type; double tol; } TYPES[] = {{"f16", 1e-3}, {"bf16", 1e-2}, {"q8_0", 5e-2}};
    for (const model_case & c : MODELS) {
        for (const auto & t : TYPES) {
            EXPECT_LE(export_and_compare(pt::source_path(c.dir), t.type, c.tag), t.tol) << c.tag << " " << t.type;
        }
    }
#endif
}

// Our Q4_0 / Q4_K export of tiny-llama run by llama.cpp and by peft over the same file (peft
// keeps the blocks and dequantizes them as ggml does): the difference is llama.cpp's rounding of
// the activations to 8 bits in its quantized dot products. Measured: Q4_0 9.4e-3, Q4_K 1.7e-2, against
// 0.14 / 0.17 between llama.cpp on the file and peft on the bf16 source.
TEST(GgufLlama, QuantizedFileRunsAsInLlamaCpp) {
    ORACLE_OR_SKIP();
#if PEFT_LLAMA_ORACLE
    const std::string dir = pt::source_path("models/tiny-llama");
    for (const char * type : {"q4_0", "q4_k"}) {
        const std::string out = pt::temp_dir(std::string("gguf_llama_quant_") + type) + "/model.gguf";
        export_ok({"export", "gguf", "--model", dir, "--out", out, "--type", type});
        peft::llama_model m;
        ASSERT_TRUE(peft::llama_load(m, out, false).ok());
        ASSERT_TRUE(m.find("model.layers.0.mlp.up_proj.weight")->q);
        const std::vector<int32_t> tok = fixed_tokens(m.hp.n_vocab, 24);
        const std::vector<double> want = ours(out, "", tok), got = llama_cpp(out, "", tok);
        ASSERT_EQ(got.size(), want.size());
        const double e = max_rel(got, want), e_src = max_rel(got, ours(dir, "", tok));
        std::printf("[ gguf ] tiny %s, both over the file: max rel log-prob error %.3g (%.3g vs the bf16 source)\n", type, e, e_src);
        EXPECT_LE(e, 5e-2) << type;
        EXPECT_LT(e, e_src / 3) << type;   // far below what the 4-bit rounding itself changes
    }
#endif
}

// Base GGUF + our GGUF LoRA, applied by llama.cpp at run time, vs our unmerged adapter.
TEST(GgufLlama, LoraMatchesOurAdapter) {
    ORACLE_OR_SKIP();
#if PEFT_LLAMA_ORACLE
    // tol: F32 as the model test; an F16 LoRA rounds A and B (measured worst 2.9e-4, tiny-llama)
    const struct { const char * tag, * cfg, * type; double tol; } VARIANTS[] = {
        {"plain", "", "f32", 1e-5},
        // per-module scales that one file alpha cannot say: folded into lora_b
        {"rslora_patterns", ",\"use_rslora\":true,\"rank_pattern\":{\"v_proj\":2},\"alpha_pattern\":{\"down_proj\":3}", "f32", 1e-5},
        {"plain_f16", "", "f16", 1e-3},
    };
    for (const model_case & c : MODELS) {
        const std::string model_dir = pt::source_path(c.dir);
        const std::string base = pt::temp_dir(std::string("gguf_llama_lbase_") + c.tag) + "/base.gguf";
        export_ok({"export", "gguf", "--model", model_dir, "--out", base, "--type", "f32"});
        for (const auto & v : VARIANTS) {
            const std::string tag = std::string(c.tag) + "_" + v.tag;
            const std::string adapter = gguf_test_adapter(model_dir, tag, v.cfg);
            const std::string lora = pt::temp_dir("gguf_llama_lora_" + tag) + "/lora.gguf";
            export_ok({"export", "gguf-lora", "--model", model_dir, "--adapter", adapter, "--out", lora, "--type", v.type});
            peft::llama_model m;
            ASSERT_TRUE(peft::llama_load(m, model_dir, false).ok());
            const std::vector<int32_t> tok = fixed_tokens(m.hp.n_vocab, 24);
            const std::vector<double> want = ours(model_dir, adapter, tok);
            const std::vector<double> base_lp = ours(model_dir, "", tok);
            const std::vector<double> got = llama_cpp(base, lora, tok);
            ASSERT_EQ(got.size(), want.size());
            const double e = max_rel(got, want), effect = max_rel(base_lp, want);
            std::printf("[ gguf ] %s lora: max rel error vs ours %.3g (the adapter itself moves log-probs by %.3g)\n", tag.c_str(), e, effect);
            EXPECT_GT(effect, 1e-2) << tag << ": the adapter must change the output for this test to mean anything";
            EXPECT_LE(e, v.tol) << tag;
        }
    }
#endif
}

// export gguf --adapter merges (any method) before writing.
TEST(GgufLlama, MergedExportMatchesOurAdapter) {
    ORACLE_OR_SKIP();
#if PEFT_LLAMA_ORACLE
    for (const model_case & c : MODELS) {
        const std::string model_dir = pt::source_path(c.dir);
        const std::string tag = std::string(c.tag) + "_merged";
        const std::string adapter = gguf_test_adapter(model_dir, tag, ",\"use_rslora\":true");
        const std::string out = pt::temp_dir("gguf_llama_m_" + tag) + "/merged.gguf";
        export_ok({"export", "gguf", "--model", model_dir, "--adapter", adapter, "--out", out, "--type", "f32"});
        peft::llama_model m;
        ASSERT_TRUE(peft::llama_load(m, model_dir, false).ok());
        const std::vector<int32_t> tok = fixed_tokens(m.hp.n_vocab, 24);
        const std::vector<double> want = ours(model_dir, adapter, tok);
        const std::vector<double> got = llama_cpp(out, "", tok);
        ASSERT_EQ(got.size(), want.size());
        const double e = max_rel(got, want);
        std::printf("[ gguf ] %s: max rel error vs ours %.3g\n", tag.c_str(), e);
        EXPECT_LE(e, 1e-5) << tag;
    }
#endif
}

#if PEFT_LLAMA_ORACLE
// llama.cpp's tokenizer on the GGUF file at `gguf` vs ours on model_dir, over the text suite
// (cases.json; not its invalid UTF-8 cases, which HF tokenizers and libsentencepiece repair to
// U+FFFD before tokenizing and llama.cpp does not) and a few strings of special tokens, without
// and with special tokens (BOS); special-token text is parsed as special where our tokenizer does
// (parse_special); returns how many encodings differ.
int tokenizer_mismatches(const std::string & model_dir, const std::string & gguf, const std::string & tag, bool parse_special = true) {
    std::unique_ptr<peft::tokenizer> tok;
    EXPECT_TRUE(peft::tokenizer::load(model_dir, tok).ok());
    if (!tok) return -1;
    the_oracle();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = true;
    llama_model * lm = llama_model_load_from_file(gguf.c_str(), mp);
    EXPECT_NE(lm, nullptr) << gguf;
    if (!lm) return -1;
    const llama_vocab * vocab = llama_model_get_vocab(lm);
    std::vector<std::string> texts;
    for (const std::string & t : pt::tokenizer_cases()) {
        if (peft::utf8_is_valid(t.data(), t.size())) texts.push_back(t);
    }
    for (const char * t : {"<|begin_of_text|>special<|eot_id|> tokens", "<s>[INST] hi [/INST]</s>", ""}) texts.push_back(t);
    int n_bad = 0, n = 0;
    for (const std::string & text : texts) {
        for (bool add_special : {false, true}) {
            const std::vector<int32_t> want = tok->encode(text, add_special, parse_special);
            std::vector<llama_token> got(text.size() * 2 + 8);
            const int32_t k = llama_tokenize(vocab, text.data(), (int32_t) text.size(), got.data(), (int32_t) got.size(), add_special,
                                             parse_special);
            EXPECT_GE(k, 0) << text;
            got.resize((size_t) std::max(k, 0));
            const std::vector<int32_t> got32(got.begin(), got.end());
            EXPECT_EQ(got32, want) << tag << " text: \"" << text << "\" add_special " << add_special;
            n_bad += got32 != want;
            n++;
        }
    }
    std::printf("[ gguf ] %s tokenizer: %d/%d encodings identical\n", tag.c_str(), n - n_bad, n);
    llama_model_free(lm);
    return n_bad;
}
#endif

// llama.cpp's tokenizer, reading the vocabulary (merges and pre-tokenizer name, or SentencePiece
// scores and token types) we wrote, gives our tokenizer's ids: tiny-llama's byte-level BPE, and
// the SentencePiece models (Llama 2's tokenizer.model, Mistral's byte_fallback tokenizer.json),
// whose F32 export also gives our log-probs.
TEST(GgufLlama, TokenizerMatchesOurs) {
    ORACLE_OR_SKIP();
#if PEFT_LLAMA_ORACLE
    const std::string tiny = pt::source_path("models/tiny-llama");
    const std::string out = pt::temp_dir("gguf_llama_tok") + "/model.gguf";
    export_ok({"export", "gguf", "--model", tiny, "--out", out, "--type", "f16"});
    EXPECT_EQ(tokenizer_mismatches(tiny, out, "tiny_llama"), 0);
    for (const gguf_spm_case & c : gguf_spm_cases()) {
        const std::string dir = gguf_test_spm_model(c);
        if (dir.empty()) {
            if (require_assets()) ADD_FAILURE() << c.asset << " missing from the asset cache: run scripts/fetch_assets.sh";
            continue;
        }
        std::string gguf;
        EXPECT_LE(export_and_compare(dir, "f32", c.tag, &gguf), 1e-5) << c.tag;
        EXPECT_EQ(tokenizer_mismatches(dir, gguf, c.tag, c.hf_tokenizers), 0) << c.tag;
    }
#endif
}

// Our encodings byte for byte against ggml's own (quantize_row_q8_0_ref through
// ggml_quantize_chunk, ggml_fp32_to_fp16_row, ggml_fp32_to_bf16_row_ref), on random values with
// an all-zero block, a block whose largest magnitude is negative and f16-subnormal scales.
TEST(GgufLlama, EncodingsAreGgmlsBytes) {
    ORACLE_OR_SKIP();
#if PEFT_LLAMA_ORACLE
    const int64_t rows = 4, n = 128;
    std::vector<float> x = pt::fixed_vector(rows * n, 3, 2.0f);
    for (int64_t i = 0; i < 32; i++) x[(size_t) i] = 0.0f;                 // d = 0
    x[40] = -9.0f;                                                           // negative max
    for (int64_t i = 0; i < 32; i++) x[(size_t) (n + i)] *= 1e-6f;          // tiny scale
    std::vector<uint8_t> ours_q((size_t) (rows * n / 32 * 34)), ggml_q(ours_q.size());
    peft::gguf_quantize_q8_0(x.data(), ours_q.data(), rows * n);
    ASSERT_EQ(ggml_quantize_chunk(GGML_TYPE_Q8_0, x.data(), ggml_q.data(), 0, rows, n, nullptr), ours_q.size());
    EXPECT_EQ(ours_q, ggml_q);
    std::vector<uint16_t> ours_h((size_t) (rows * n)), ggml_h(ours_h.size());
    peft::gguf_encode(peft::GGUF_TENSOR_F16, x.data(), (uint8_t *) ours_h.data(), rows * n);
    ggml_fp32_to_fp16_row(x.data(), (ggml_fp16_t *) ggml_h.data(), rows * n);
    EXPECT_EQ(ours_h, ggml_h);
    peft::gguf_encode(peft::GGUF_TENSOR_BF16, x.data(), (uint8_t *) ours_h.data(), rows * n);
    ggml_fp32_to_bf16_row_ref(x.data(), (ggml_bf16_t *) ggml_h.data(), rows * n);
    EXPECT_EQ(ours_h, ggml_h);
#endif
}

// ggml's own GGUF reader (every check of FORMATS "Validating untrusted files / GGUF") accepts the
// export; the metadata says what llama.cpp needs; the F32 tensors hold our weights exactly, Q/K
// rows permuted.
TEST(GgufLlama, GgmlReadsOurHeader) {
    ORACLE_OR_SKIP();
#if PEFT_LLAMA_ORACLE
    const std::string model_dir = pt::source_path("models/tiny-llama");
    const std::string out = pt::temp_dir("gguf_llama_hdr") + "/model.gguf";
    export_ok({"export", "gguf", "--model", model_dir, "--out", out, "--type", "f32"});
    ggml_context * data = nullptr;
    gguf_init_params ip = {false, &data};
    gguf_context * g = gguf_init_from_file(out.c_str(), ip);
    ASSERT_NE(g, nullptr);
    auto str = [&](const char * k) {
        const int64_t id = gguf_find_key(g, k);
        return id < 0 ? std::string("<missing>") : std::string(gguf_get_val_str(g, id));
    };
    EXPECT_EQ(str("general.architecture"), "llama");
    EXPECT_EQ(str("tokenizer.ggml.model"), "gpt2");
    EXPECT_EQ(str("tokenizer.ggml.pre"), "llama-bpe");
    EXPECT_NE(str("tokenizer.chat_template").find("start_header_id"), std::string::npos);
    EXPECT_EQ(gguf_get_alignment(g), 32u);
    peft::llama_model m;
    ASSERT_TRUE(peft::llama_load(m, model_dir, false).ok());
    // tied embeddings: no output.weight (llama.cpp falls back to token_embd)
    EXPECT_EQ(gguf_find_tensor(g, "output.weight"), -1);
    EXPECT_EQ(gguf_get_n_tensors(g), 2 + 9 * m.hp.n_layer);
    const int64_t arr = gguf_find_key(g, "tokenizer.ggml.tokens");
    ASSERT_GE(arr, 0);
    EXPECT_EQ((int64_t) gguf_get_arr_n(g, arr), m.hp.n_vocab);
    auto f32_of = [&](const char * hf) {
        const peft::llama_tensor * t = m.find(hf);
        std::vector<float> v((size_t) t->numel());
        peft::convert_to_f32(t->type, t->data, v.data(), v.size());
        return v;
    };
    auto gguf_of = [&](const char * name) {
        ggml_tensor * t = ggml_get_tensor(data, name);
        EXPECT_NE(t, nullptr) << name;
        EXPECT_EQ(t->type, GGML_TYPE_F32) << name;
        const float * p = (const float *) t->data;
        return std::vector<float>(p, p + ggml_nelements(t));
    };
    EXPECT_EQ(gguf_of("token_embd.weight"), f32_of("model.embed_tokens.weight"));
    EXPECT_EQ(gguf_of("blk.1.ffn_down.weight"), f32_of("model.layers.1.mlp.down_proj.weight"));
    const std::vector<float> k = f32_of("model.layers.0.self_attn.k_proj.weight");
    std::vector<float> kp(k.size());
    peft::llama_gguf_permute_rows(kp.data(), k.data(), m.hp.n_head_kv, m.hp.kv_dim(), m.hp.n_embd);
    EXPECT_EQ(gguf_of("blk.0.attn_k.weight"), kp);
    gguf_free(g);
    ggml_free(data);
#endif
}

#if PEFT_LLAMA_ORACLE
namespace {

// Every tensor of a GGUF file as f32 (F32 or F16 tensors), by name, through ggml's reader.
std::vector<std::pair<std::string, std::vector<float>>> gguf_tensors(const std::string & path) {
    ggml_context * data = nullptr;
    gguf_init_params ip = {false, &data};
    gguf_context * g = gguf_init_from_file(path.c_str(), ip);
    EXPECT_NE(g, nullptr) << path;
    std::vector<std::pair<std::string, std::vector<float>>> out;
    if (!g) return out;
    for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
        ggml_tensor * t = ggml_get_tensor(data, gguf_get_tensor_name(g, i));
        std::vector<float> v((size_t) ggml_nelements(t));
        if (t->type == GGML_TYPE_F32) std::memcpy(v.data(), t->data, v.size() * 4);
        else if (t->type == GGML_TYPE_F16) ggml_fp16_to_fp32_row((const ggml_fp16_t *) t->data, v.data(), (int64_t) v.size());
        else ADD_FAILURE() << path << ": " << t->name << " has type " << ggml_type_name(t->type);
        out.push_back({t->name, std::move(v)});
    }
    gguf_free(g);
    ggml_free(data);
    return out;
}

} // namespace
#endif

// The other direction: llama.cpp's own llama-export-lora merges our GGUF LoRA into our GGUF base;
// the result equals our merge (export gguf --adapter) tensor by tensor.
TEST(GgufLlama, LlamaExportLoraEqualsOurMerge) {
    ORACLE_OR_SKIP();
#if PEFT_LLAMA_ORACLE && defined(PEFT_LLAMA_EXPORT_LORA)
    for (const model_case & c : MODELS) {
        const std::string model_dir = pt::source_path(c.dir);
        const std::string tag = std::string(c.tag) + "_elora";
        const std::string adapter = gguf_test_adapter(model_dir, tag,
            ",\"use_rslora\":true,\"rank_pattern\":{\"v_proj\":2},\"alpha_pattern\":{\"down_proj\":3}");
        const std::string dir = pt::temp_dir("gguf_llama_" + tag);
        export_ok({"export", "gguf", "--model", model_dir, "--out", dir + "/base.gguf", "--type", "f32"});
        export_ok({"export", "gguf-lora", "--model", model_dir, "--adapter", adapter, "--out", dir + "/lora.gguf"});
        export_ok({"export", "gguf", "--model", model_dir, "--adapter", adapter, "--out", dir + "/ours.gguf", "--type", "f32"});
        const pt::shell_result r = pt::run_shell(std::string(PEFT_LLAMA_EXPORT_LORA) + " -m " + dir + "/base.gguf --lora " +
                                                 dir + "/lora.gguf -o " + dir + "/theirs.gguf -t 2");
        ASSERT_EQ(r.code, 0) << r.out;
        const auto ours_t = gguf_tensors(dir + "/ours.gguf"), theirs_t = gguf_tensors(dir + "/theirs.gguf");
        const auto base_t = gguf_tensors(dir + "/base.gguf");
        ASSERT_EQ(ours_t.size(), theirs_t.size());
        double worst = 0.0;
        int changed = 0;
        for (size_t i = 0; i < ours_t.size(); i++) {
            const auto & o = ours_t[i];
            const auto * th = &theirs_t[0];
            for (const auto & t : theirs_t) if (t.first == o.first) th = &t;
            ASSERT_EQ(th->first, o.first);
            ASSERT_EQ(th->second.size(), o.second.size()) << o.first;
            double d = 0.0, mx = 0.0, moved = 0.0;
            for (size_t j = 0; j < o.second.size(); j++) {
                d = std::max(d, (double) std::fabs(th->second[j] - o.second[j]));
                mx = std::max(mx, (double) std::fabs(o.second[j]));
                moved = std::max(moved, (double) std::fabs(o.second[j] - base_t[i].second[j]));
            }
            changed += moved > 0.0;
            worst = std::max(worst, d / std::max(mx, 1e-30));
            EXPECT_LE(d, 1e-5 * mx) << c.tag << " " << o.first;
        }
        std::printf("[ gguf ] %s: llama-export-lora vs our merge: max rel tensor error %.3g (%d tensors changed by the adapter)\n",
                    c.tag, worst, changed);
        peft::llama_hparams hp;
        ASSERT_TRUE(peft::llama_hparams_load(model_dir + "/config.json", hp).ok());
        EXPECT_EQ(changed, 7 * hp.n_layer) << c.tag << ": every adapted projection, nothing else";
    }
#elif PEFT_LLAMA_ORACLE
    GTEST_SKIP() << "llama-export-lora source missing from the assets: run scripts/fetch_assets.sh";
#endif
}
