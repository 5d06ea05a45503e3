// gguf_test_util.h: what the GGUF tests share: a PEFT adapter with a visible effect, and a
// random model that carries a real SentencePiece tokenizer from the asset cache.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "adapters/adapter_set.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "testing.h"

// A LoRA (or, by cfg_extra, another method) with non-zero B (init_lora_weights false) on every
// projection of the model in model_dir, saved as PEFT writes it; returns its directory.
// cfg_extra adds keys (",\"use_rslora\":true"); peft_type overrides LORA.
inline std::string gguf_test_adapter(const std::string & model_dir, const std::string & name, const std::string & cfg_extra,
                                     const std::string & peft_type = "LORA") {
    peft::llama_model m;
    EXPECT_TRUE(peft::llama_load(m, model_dir, false).ok());
    const std::string cfg = "{\"peft_type\":\"" + peft_type + "\",\"r\":4" +
                            (peft_type == "LORA" ? ",\"lora_alpha\":8,\"init_lora_weights\":false" : "") +
                            ",\"target_modules\":[\"q_proj\",\"k_proj\",\"v_proj\",\"o_proj\",\"gate_proj\",\"up_proj\",\"down_proj\"]" +
                            cfg_extra + "}";
    peft::json_document doc;
    EXPECT_TRUE(doc.parse(cfg.data(), cfg.size(), "test adapter config").ok());
    peft::adapter_set set;
    peft::status st = peft::adapters_attach(m, doc.root(), 7, set);
    EXPECT_TRUE(st.ok()) << st.message;
    const std::string dir = peft::testing::temp_dir("gguf_adapter_" + name) + "/adapter";
    st = peft::adapter_save(dir, set, "test");
    EXPECT_TRUE(st.ok()) << st.message;
    return dir;
}

// scripts/fetch_assets.sh's cache
inline std::string gguf_test_asset_dir() {
    if (const char * d = std::getenv("PEFT_ASSET_DIR")) return d;
    const char * home = std::getenv("HOME");
    return std::string(home ? home : "/root") + "/.cache/peft-assets";
}

// The SentencePiece tokenizers of the asset cache (32000 ids each): the Llama 2 tokenizer.model
// (libsentencepiece) and Mistral's tokenizer.json (byte_fallback BPE, with its tokenizer_config.json).
struct gguf_spm_case {
    const char * tag;
    const char * asset;                 // directory under the asset cache
    std::vector<const char *> files;    // copied into the model directory
    const char * expected;              // tests/fixtures/tokenizer/expected_<this>.json
    // tokenizer.json, run as HF tokenizers: special-token text (<s>, </s>, <unk>) is found as
    // llama.cpp finds it, invalid UTF-8 is repaired the WHATWG way (one U+FFFD per bad
    // sequence). false: tokenizer.model, run as libsentencepiece: text is text, one U+FFFD per
    // bad byte (what our GGUF read-back does with invalid UTF-8 too)
    bool hf_tokenizers;
};
inline const std::vector<gguf_spm_case> & gguf_spm_cases() {
    static const std::vector<gguf_spm_case> cases = {
        {"llama2_spm", "llama2", {"tokenizer.model"}, "llama2", false},
        {"mistral_json", "mistral", {"tokenizer.json", "tokenizer_config.json"}, "mistral", true},
    };
    return cases;
}

// A random untied Llama (f32, 2 layers, GQA 4:2, q/k permuted on export) with c's vocabulary, as a HF directory; "" when
// the asset is missing (the caller skips).
inline std::string gguf_test_spm_model(const gguf_spm_case & c) {
    namespace fs = std::filesystem;
    const std::string src = gguf_test_asset_dir() + "/" + c.asset;
    for (const char * f : c.files) {
        if (!fs::exists(src + "/" + f)) return "";
    }
    const std::string dir = peft::testing::temp_dir(std::string("gguf_spm_model_") + c.tag);
    for (const char * f : c.files) fs::copy_file(src + "/" + f, dir + "/" + f);
    peft::llama_hparams hp;
    hp.n_vocab = 32000;
    hp.n_embd = 32;
    hp.n_layer = 2;
    hp.n_head = 4;
    hp.n_head_kv = 2;
    hp.head_dim = 8;
    hp.n_ff = 48;
    hp.rms_eps = 1e-5f;
    hp.max_position = 64;
    peft::llama_model m;
    peft::status st = peft::llama_init_random(m, hp, false, 3);
    EXPECT_TRUE(st.ok()) << st.message;
    // matrices N(0, 0.3), not 0.02: log-probs far from uniform, so a wrong weight layout shows
    peft::rng r(11);
    std::vector<peft::safetensors_tensor_to_write> ts;
    for (peft::llama_tensor & t : m.tensors) {
        if (t.shape.size() == 2) r.fill_normal((float *) t.data, t.numel(), 0.0f, 0.3f);
        ts.push_back({t.name, peft::PEFT_DTYPE_F32, t.shape, t.data, ""});
    }
    st = peft::safetensors_write(dir + "/model.safetensors", ts, {{"format", "pt"}});
    EXPECT_TRUE(st.ok()) << st.message;
    std::ofstream(dir + "/config.json")
        << "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 32000, \"hidden_size\": 32,"
           " \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
           " \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"max_position_embeddings\": 64, \"tie_word_embeddings\": false,"
           " \"bos_token_id\": 1, \"eos_token_id\": 2, \"torch_dtype\": \"float32\"}\n";
    return dir;
}
