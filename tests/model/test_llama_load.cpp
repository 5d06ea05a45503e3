// Bad input for the model loader: every broken checkpoint gives a clear, non-ok status that
// names the file and the tensor or field; never a crash.
#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "model/llama.h"
#include "testing.h"

using namespace peft;
namespace fs = std::filesystem;

namespace {

std::string fixture_copy(const std::string & name) {
    std::string dir = peft::testing::temp_dir(name);
    for (const char * f : {"config.json", "model.safetensors"}) {
        fs::copy_file(peft::testing::source_path("tests/fixtures/llama_gqa/") + f, dir + "/" + f);
    }
    return dir;
}

void write_text(const std::string & path, const std::string & text) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::string read_text(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

// Loads dir and expects an error whose message contains every needle.
void expect_load_error(const std::string & dir, std::initializer_list<const char *> needles) {
    llama_model m;
    status st = llama_load(m, dir, false);
    ASSERT_FALSE(st.ok());
    for (const char * n : needles) EXPECT_NE(st.message.find(n), std::string::npos) << "message: " << st.message << "\nmissing: " << n;
}

void edit_config(const std::string & dir, const std::string & from, const std::string & to) {
    std::string cfg = read_text(dir + "/config.json");
    size_t at = cfg.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    cfg.replace(at, from.size(), to);
    write_text(dir + "/config.json", cfg);
}

} // namespace

TEST(llama_load, valid_fixture_loads) {
    std::string dir = fixture_copy("ok");
    llama_model m;
    status st = llama_load(m, dir, false);
    EXPECT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(m.hp.n_head_kv, 2);
}

TEST(llama_load, missing_directory_or_config) {
    expect_load_error("/nonexistent/model", {"/nonexistent/model/config.json"});
    std::string dir = fixture_copy("noconfig");
    fs::remove(dir + "/config.json");
    expect_load_error(dir, {"config.json"});
}

TEST(llama_load, malformed_config) {
    std::string dir = fixture_copy("badjson");
    write_text(dir + "/config.json", "{\"model_type\": \"llama\", ");
    expect_load_error(dir, {"config.json", "invalid JSON"});
}

TEST(llama_load, unknown_architecture) {
    std::string dir = fixture_copy("arch");
    edit_config(dir, "\"model_type\": \"llama\"", "\"model_type\": \"gpt2\"");
    expect_load_error(dir, {"config.json", "model_type", "gpt2"});
}

TEST(llama_load, missing_and_invalid_fields) {
    std::string dir = fixture_copy("fields");
    edit_config(dir, "\"hidden_size\": 32,", "");
    expect_load_error(dir, {"config.json", "hidden_size"});
    dir = fixture_copy("fields2");
    edit_config(dir, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
    expect_load_error(dir, {"num_key_value_heads", "divisor"});
    dir = fixture_copy("fields3");
    edit_config(dir, "\"vocab_size\": 64", "\"vocab_size\": -5");
    expect_load_error(dir, {"vocab_size"});
    dir = fixture_copy("fields4");
    edit_config(dir, "\"vocab_size\": 64", "\"vocab_size\": \"64\"");
    expect_load_error(dir, {"vocab_size", "integer"});
}

// Regression: a Llama 3.1 style eos_token_id list used to clear the error of any field read
// before it, so a wrongly typed rms_norm_eps was silently replaced by the default.
TEST(llama_load, eos_list_keeps_other_field_errors) {
    const std::string base = "{\"model_type\": \"llama\", \"vocab_size\": 64, \"hidden_size\": 32, \"intermediate_size\": 64, "
                             "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"eos_token_id\": [7, 9]";
    llama_hparams hp;
    ASSERT_TRUE(llama_hparams_parse(base + "}", "config.json", hp).ok());
    EXPECT_EQ(hp.eos_id, 7);
    status st = llama_hparams_parse(base + ", \"rms_norm_eps\": \"1e-5\"}", "config.json", hp);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("rms_norm_eps"), std::string::npos) << st.message;
    st = llama_hparams_parse(base + ", \"bos_token_id\": -1}", "config.json", hp);
    EXPECT_NE(st.message.find("bos_token_id"), std::string::npos) << st.message;
}

TEST(llama_load, shape_mismatch_between_config_and_weights) {
    std::string dir = fixture_copy("shape");
    edit_config(dir, "\"intermediate_size\": 48", "\"intermediate_size\": 64");
    expect_load_error(dir, {"model.safetensors", "model.layers.0.mlp.gate_proj.weight", "expected [64, 32]", "got [48, 32]"});
}

TEST(llama_load, missing_tensor) {
    std::string dir = fixture_copy("missing");
    safetensors_file f;
    ASSERT_TRUE(safetensors_open(dir + "/model.safetensors", f).ok());
    std::vector<safetensors_tensor_to_write> keep;
    for (const tensor_info & t : f.tensors) {
        if (t.name != "model.layers.1.self_attn.v_proj.weight") keep.push_back({t.name, t.type, t.shape, t.data, ""});
    }
    std::string bytes;
    ASSERT_TRUE(safetensors_serialize(keep, {}, bytes).ok());
    f = safetensors_file();  // unmap before overwriting
    write_text(dir + "/model.safetensors", bytes);
    expect_load_error(dir, {"model.layers.1.self_attn.v_proj.weight", "missing"});
}

TEST(llama_load, untied_config_without_lm_head) {
    std::string dir = fixture_copy("tied");
    // the qwen2 fixture has no lm_head.weight; claim the weights are untied
    fs::copy_file(peft::testing::source_path("tests/fixtures/qwen2_tied/model.safetensors"), dir + "/model.safetensors",
                  fs::copy_options::overwrite_existing);
    fs::copy_file(peft::testing::source_path("tests/fixtures/qwen2_tied/config.json"), dir + "/config.json",
                  fs::copy_options::overwrite_existing);
    edit_config(dir, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
    expect_load_error(dir, {"lm_head.weight", "missing"});
}

TEST(llama_load, truncated_and_corrupt_safetensors) {
    std::string dir = fixture_copy("trunc");
    std::string bytes = read_text(dir + "/model.safetensors");
    write_text(dir + "/model.safetensors", bytes.substr(0, bytes.size() - 100));
    expect_load_error(dir, {"model.safetensors"});
    write_text(dir + "/model.safetensors", bytes.substr(0, 5));
    expect_load_error(dir, {"model.safetensors"});
    std::string garbage = bytes;
    garbage[10] = '\x01';  // inside the JSON header
    write_text(dir + "/model.safetensors", garbage);
    expect_load_error(dir, {"model.safetensors"});
    fs::remove(dir + "/model.safetensors");
    expect_load_error(dir, {"model.safetensors"});
}

TEST(llama_load, non_float_tensor_dtype) {
    std::string dir = fixture_copy("dtype");
    safetensors_file f;
    ASSERT_TRUE(safetensors_open(dir + "/model.safetensors", f).ok());
    std::vector<safetensors_tensor_to_write> all;
    for (const tensor_info & t : f.tensors) {
        safetensors_tensor_to_write w{t.name, t.type, t.shape, t.data, ""};
        if (t.name == "model.norm.weight") w.raw_dtype = "I32";
        all.push_back(w);
    }
    std::string bytes;
    ASSERT_TRUE(safetensors_serialize(all, {}, bytes).ok());
    f = safetensors_file();
    write_text(dir + "/model.safetensors", bytes);
    expect_load_error(dir, {"model.norm.weight", "I32"});
}
