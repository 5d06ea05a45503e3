// test_gguf_export.cpp: `peft export gguf` / `gguf-lora` on bad input, through the real binary:
// every refusal names the key, tensor or path, with a hint where there is a way that works.
// (What llama.cpp makes of good exports is test_gguf_llama.cpp.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "gguf_test_util.h"
#include "testing.h"

namespace fs = std::filesystem;
namespace pt = peft::testing;

namespace {

std::string slurp(const std::string & p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void expect_refused(const std::vector<std::string> & args, const std::vector<std::string> & needles) {
    const pt::child_result r = pt::spawn_peft(args);
    EXPECT_NE(r.code, 0) << r.out;
    for (const std::string & n : needles) EXPECT_NE(r.out.find(n), std::string::npos) << "missing \"" << n << "\" in:\n" << r.out;
}

// A copy of a model directory that the test may edit.
std::string copy_model(const std::string & rel, const std::string & name) {
    const std::string dir = pt::temp_dir("gguf_export_" + name) + "/model";
    fs::copy(pt::source_path(rel), dir, fs::copy_options::recursive);
    return dir;
}

} // namespace

TEST(GgufExport, HelpHasExamples) {
    for (const char * f : {"gguf", "gguf-lora"}) {
        const pt::child_result r = pt::spawn_peft({"export", f, "--help"});
        EXPECT_EQ(r.code, 0);
        EXPECT_NE(r.out.find("examples:"), std::string::npos) << r.out;
    }
    const pt::child_result r = pt::spawn_peft({"export", "onnx"});
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.out.find("unknown format 'onnx'"), std::string::npos) << r.out;
}

TEST(GgufExport, OutputNeverInsideOrOverAnInput) {
    const std::string model = copy_model("tests/fixtures/llama_gqa", "guard");
    expect_refused({"export", "gguf", "--model", model, "--out", model + "/m.gguf"}, {"lies inside the base model", "HINT"});
    expect_refused({"export", "gguf", "--model", model, "--out", model}, {"--out"});
    const std::string out = pt::temp_dir("gguf_export_exists") + "/m.gguf";
    std::ofstream(out) << "mine";
    expect_refused({"export", "gguf", "--model", model, "--out", out}, {"output file exists", "--force"});
    EXPECT_EQ(slurp(out), "mine");
    const pt::child_result r = pt::spawn_peft({"export", "gguf", "--model", model, "--out", out, "--force"});
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(slurp(out).substr(0, 4), "GGUF");
}

TEST(GgufExport, MissingTensorNamed) {
    const std::string model = copy_model("tests/fixtures/llama_gqa", "missing");
    pt::rewrite_safetensors(model + "/model.safetensors", [](std::vector<pt::test_tensor> & ts) {
        for (size_t i = 0; i < ts.size(); i++) {
            if (ts[i].name == "model.layers.1.mlp.up_proj.weight") ts.erase(ts.begin() + (long) i);
        }
    });
    const std::string out = pt::temp_dir("gguf_export_missing_out") + "/m.gguf";
    expect_refused({"export", "gguf", "--model", model, "--out", out}, {"model.layers.1.mlp.up_proj.weight"});
    EXPECT_FALSE(fs::exists(out));
}

TEST(GgufExport, UnsupportedTokenizerNamed) {
    // a tokenizer.json model other than BPE (byte-level or SentencePiece-style) has no GGUF form here
    const std::string model = copy_model("tests/fixtures/llama_gqa", "unigram");
    std::ofstream(model + "/tokenizer.json")
        << R"({"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,)"
           R"("model":{"type":"Unigram","unk_id":0,"vocab":[["a",0.0],["b",-1.0]]}})";
    expect_refused({"export", "gguf", "--model", model, "--out", pt::temp_dir("gguf_export_unigram_out") + "/m.gguf"},
                   {"tokenizer.json", "Unigram"});
}

TEST(GgufExport, LoraForAnotherBaseNamed) {
    const std::string adapter = gguf_test_adapter(pt::source_path("tests/fixtures/llama_gqa"), "other_base", "");
    expect_refused({"export", "gguf-lora", "--model", pt::source_path("tests/fixtures/qwen2_tied"), "--adapter", adapter, "--out",
                    pt::temp_dir("gguf_export_other_out") + "/l.gguf"},
                   {"self_attn.k_proj.lora_B.weight", "expected [8, 4], got [16, 4]", "another base model"});
}

TEST(GgufExport, NonLoraAdaptersPointToMerging) {
    const std::string model = pt::source_path("tests/fixtures/llama_gqa");
    const std::string out = pt::temp_dir("gguf_export_nonlora_out") + "/l.gguf";
    // DoRA: a LoRA directory whose config says use_dora (its magnitude vector rescales rows)
    const std::string dora = gguf_test_adapter(model, "dora", "");
    std::string cfg = slurp(dora + "/adapter_config.json");
    const std::string from = "\"use_dora\": false";
    const size_t k = cfg.find(from);
    ASSERT_NE(k, std::string::npos) << cfg;
    cfg.replace(k, from.size(), "\"use_dora\": true");
    std::ofstream(dora + "/adapter_config.json") << cfg;
    expect_refused({"export", "gguf-lora", "--model", model, "--adapter", dora, "--out", out},
                   {"DoRA", "peft export gguf --model DIR --adapter"});
    const std::string vera = gguf_test_adapter(model, "vera", "", "VERA");
    expect_refused({"export", "gguf-lora", "--model", model, "--adapter", vera, "--out", out},
                   {"peft_type \"VERA\"", "peft export gguf --model DIR --adapter"});
    EXPECT_FALSE(fs::exists(out));
    // ... and merging them is what works (VeRA through adapters_merge)
    const pt::child_result r = pt::spawn_peft({"export", "gguf", "--model", model, "--adapter", vera, "--out", out});
    EXPECT_EQ(r.code, 0) << r.out;
}

// A PEFT LoRA on embed_tokens / lm_head (Python PEFT trains them; llama.cpp's loader takes
// token_embd.weight.lora_a/b and output.weight.lora_a/b) is refused by name: peft.cpp's adapters
// cannot run it, so nothing could check what it would export.
TEST(GgufExport, EmbeddingAndHeadLoraRefusedByName) {
    const std::string model = pt::source_path("tests/fixtures/llama_gqa");
    const std::string out = pt::temp_dir("gguf_export_embed_out") + "/l.gguf";
    // named in target_modules
    const std::string listed = gguf_test_adapter(model, "embed_listed", "");
    std::string cfg = slurp(listed + "/adapter_config.json");
    const size_t k = cfg.find("\"q_proj\"");
    ASSERT_NE(k, std::string::npos) << cfg;
    cfg.insert(k, "\"lm_head\", ");
    std::ofstream(listed + "/adapter_config.json") << cfg;
    expect_refused({"export", "gguf-lora", "--model", model, "--adapter", listed, "--out", out},
                   {"target_modules: \"lm_head\"", "embed_tokens or lm_head", "per-layer projections"});
    // selected by a regex the projections also match: its tensors are what gives it away
    const std::string tensors = gguf_test_adapter(model, "embed_tensors", "");
    pt::rewrite_safetensors(tensors + "/adapter_model.safetensors", [](std::vector<pt::test_tensor> & ts) {
        ts.push_back({"base_model.model.model.embed_tokens.lora_embedding_A", {4, 64}, std::vector<float>(4 * 64, 0.5f)});
    });
    expect_refused({"export", "gguf-lora", "--model", model, "--adapter", tensors, "--out", out},
                   {"embed_tokens.lora_embedding_A", "embed_tokens or lm_head"});
    EXPECT_FALSE(fs::exists(out));
}

TEST(GgufExport, QuantizedLoraRefused) {
    const std::string model = pt::source_path("tests/fixtures/llama_gqa");
    const std::string adapter = gguf_test_adapter(model, "q8lora", "");
    const pt::child_result r = pt::spawn_peft({"export", "gguf-lora", "--model", model, "--adapter", adapter, "--out",
                                               pt::temp_dir("gguf_export_q8_out") + "/l.gguf", "--type", "q8_0"});
    EXPECT_EQ(r.code, 2) << r.out;   // not a --type value gguf-lora offers
}
