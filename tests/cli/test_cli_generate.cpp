// test_cli_generate.cpp: golden runs of `peft generate` and `peft merge` on a tiny random Llama
// written to a temp directory with a synthetic byte-level tokenizer (256 byte tokens + the
// Llama 3 markers): determinism, chat templates, adapter unmerged == merged, the merged
// checkpoint's logits, dtype conversion, the atomic output directory, and bad input (NaN
// weights in the model or the adapter included).
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sys/wait.h>

#include "adapters/adapter_set.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "testing.h"
#include "tokenizer/normalize.h"

using namespace peft;
namespace fs = std::filesystem;

namespace {

struct run_result {
    int         code = -1;
    std::string out;   // stdout
    std::string err;   // stderr
};

std::string read_text(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

run_result run_peft(const std::string & args) {
    static int counter = 0;
    const std::string err_path = peft::testing::temp_dir("gen_stderr") + "/err" + std::to_string(counter++);
    run_result r;
    const std::string cmd = std::string(PEFT_BIN) + " " + args + " 2>" + err_path;
    FILE * p = popen(cmd.c_str(), "r");
    if (!p) return r;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
    const int st = pclose(p);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    r.err = read_text(err_path);
    return r;
}

constexpr int64_t VOCAB = 256 + 5;

void write_tokenizer(const std::string & dir) {
    peft::testing::write_byte_tokenizer(dir, peft::testing::LLAMA3_MARKERS, /*bos_template=*/true);
    std::ofstream(dir + "/tokenizer_config.json")
        << "{\"bos_token\":\"<|begin_of_text|>\",\"eos_token\":\"<|end_of_text|>\",\"chat_template\":"
        << json_quote("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}{{ '<|eot_id|>' }}") << "}";
    std::ofstream(dir + "/generation_config.json") << "{\"bos_token_id\": 256, \"eos_token_id\": [257, 260]}";
}

// A random tiny Llama (f32) with the tokenizer above, as a HF directory.
std::string make_model_dir(const std::string & name, int64_t n_embd = 32, uint64_t seed = 1) {
    const std::string dir = peft::testing::temp_dir(name);
    llama_hparams hp;
    hp.n_vocab = VOCAB;
    hp.n_embd = n_embd;
    hp.n_layer = 2;
    hp.n_head = 4;
    hp.n_head_kv = 2;
    hp.head_dim = n_embd / 4;
    hp.n_ff = 48;
    hp.rms_eps = 1e-5f;
    hp.max_position = 64;
    llama_model m;
    status st = llama_init_random(m, hp, false, seed);
    EXPECT_TRUE(st.ok()) << st.message;
    // larger weights than N(0, 0.02) so greedy choices are far from ties
    rng r(seed + 9);
    std::vector<safetensors_tensor_to_write> ts;
    for (llama_tensor & t : m.tensors) {
        if (t.shape.size() == 2) r.fill_normal((float *) t.data, t.numel(), 0.0f, 0.3f);
        ts.push_back({t.name, PEFT_DTYPE_F32, t.shape, t.data, ""});
    }
    st = safetensors_write(dir + "/model.safetensors", ts, {{"format", "pt"}});
    EXPECT_TRUE(st.ok()) << st.message;
    std::ofstream(dir + "/config.json")
        << "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n  \"vocab_size\": " << VOCAB
        << ",\n  \"hidden_size\": " << n_embd << ",\n  \"intermediate_size\": 48,\n  \"num_hidden_layers\": 2,\n"
           "  \"num_attention_heads\": 4,\n  \"num_key_value_heads\": 2,\n  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 10000.0,\n"
           "  \"max_position_embeddings\": 64,\n  \"tie_word_embeddings\": false,\n  \"bos_token_id\": 256,\n"
           "  \"eos_token_id\": 257,\n  \"torch_dtype\": \"float32\"\n}\n";
    write_tokenizer(dir);
    return dir;
}

// A LoRA (r 4, all projections, non-zero B) for the model in model_dir, saved as a PEFT dir.
std::string make_adapter_dir(const std::string & name, const std::string & model_dir) {
    const std::string dir = peft::testing::temp_dir(name);
    llama_model m;
    status st = llama_load(m, model_dir, false);
    EXPECT_TRUE(st.ok()) << st.message;
    const std::string cfg = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": \"all-linear\"}";
    json_document doc;
    EXPECT_TRUE(doc.parse(cfg.data(), cfg.size(), "cfg").ok());
    adapter_set set;
    st = adapters_attach(m, doc.root(), 5, set);
    EXPECT_TRUE(st.ok()) << st.message;
    rng r(17);
    for (param_ref & p : adapter_set_params(set)) {
        if (p.name.find("lora_B") == std::string::npos) continue;
        int64_t n = 1;
        for (int64_t d : p.shape) n *= d;
        r.fill_normal(p.value, n, 0.0f, 0.2f);
    }
    st = adapter_save(dir, set, model_dir);
    EXPECT_TRUE(st.ok()) << st.message;
    return dir;
}


struct fixture_dirs {
    std::string model, adapter;
};

const fixture_dirs & dirs() {
    static fixture_dirs d = [] {
        fixture_dirs x;
        x.model = make_model_dir("gen_model");
        x.adapter = make_adapter_dir("gen_adapter", x.model);
        return x;
    }();
    return d;
}

} // namespace

TEST(cli_generate, help_has_examples_for_real_checkpoints) {
    for (const char * cmd : {"generate --help", "merge --help"}) {
        run_result r = run_peft(cmd);
        EXPECT_EQ(r.code, 0) << cmd;
        for (const char * m : {"TinyLlama", "Llama-3.2-1B", "Qwen2.5-0.5B", "SmolLM2-135M"}) {
            EXPECT_NE(r.out.find(m), std::string::npos) << cmd << " lacks " << m;
        }
    }
    run_result r = run_peft("--help");
    EXPECT_NE(r.out.find("generate"), std::string::npos);
    EXPECT_NE(r.out.find("merge"), std::string::npos);
}

TEST(cli_generate, greedy_is_deterministic_and_reports_speed) {
    const std::string args = "generate --model " + dirs().model + " --prompt \"hello world\" --max-new-tokens 12 --threads 2";
    run_result a = run_peft(args), b = run_peft(args);
    ASSERT_EQ(a.code, 0) << a.err;
    EXPECT_EQ(a.out, b.out);
    EXPECT_FALSE(a.out.empty());
    EXPECT_NE(a.err.find("tokens/s"), std::string::npos) << a.err;
    // seeded sampling is reproducible too
    const std::string s = args + " --temperature 0.9 --top-k 20 --top-p 0.9 --seed 3";
    run_result c = run_peft(s), d = run_peft(s);
    ASSERT_EQ(c.code, 0) << c.err;
    EXPECT_EQ(c.out, d.out);
}

TEST(cli_generate, chat_uses_the_template_from_tokenizer_config) {
    run_result r = run_peft("generate --model " + dirs().model + " --chat hi --system \"be brief\" --max-new-tokens 4");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("chat template llama3"), std::string::npos) << r.err;
    // the prompt ends where the assistant's reply starts (HF add_generation_prompt=True)
    r = run_peft("generate --model " + dirs().model + " --chat \" hi \" --system sys --max-new-tokens 1 --show-prompt");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|><|start_header_id|>user"
                         "<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n\n---"),
              std::string::npos) << r.err;
    r = run_peft("generate --model " + dirs().model + " --chat hi --template plain --max-new-tokens 4");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("chat template plain"), std::string::npos) << r.err;
}

TEST(cli_generate, adapter_unmerged_and_merged_generate_the_same_text) {
    const std::string base = "generate --model " + dirs().model + " --prompt \"the cat\" --max-new-tokens 10 --ignore-eos";
    run_result plain = run_peft(base);
    run_result un = run_peft(base + " --adapter " + dirs().adapter);
    run_result mg = run_peft(base + " --adapter " + dirs().adapter + " --merge");
    ASSERT_EQ(un.code, 0) << un.err;
    ASSERT_EQ(mg.code, 0) << mg.err;
    EXPECT_EQ(un.out, mg.out);
    EXPECT_NE(un.out, plain.out) << "the adapter should change the greedy text";
    EXPECT_NE(un.err.find("unmerged"), std::string::npos) << un.err;
    EXPECT_NE(mg.err.find(", merged)"), std::string::npos) << mg.err;
}

TEST(cli_generate, a_full_context_ends_generation_cleanly) {
    run_result r = run_peft("generate --model " + dirs().model + " --prompt \"the cat\" --ctx 12 --max-new-tokens 40 --ignore-eos");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("generated 5 tokens"), std::string::npos) << r.err;   // 8 prompt tokens, 4 + 1 more positions
    EXPECT_NE(r.err.find("context full"), std::string::npos) << r.err;
}

TEST(cli_generate, bench_generate_reports_the_three_speeds) {
    const std::string fixture = peft::testing::source_path("tests/fixtures/llama_gqa");
    run_result r = run_peft("bench --model " + fixture + " --method generate --seq 8 --gen-tokens 6 --rounds 1 --lora-r 4 --threads 1");
    ASSERT_EQ(r.code, 0) << r.err;
    json_document doc;
    ASSERT_TRUE(doc.parse(r.out.data(), r.out.size(), "bench output").ok()) << r.out;
    for (const char * k : {"base_decode_tokens_per_s", "unmerged_decode_tokens_per_s", "merged_decode_tokens_per_s", "unmerged_over_merged"}) {
        EXPECT_GT(doc.root().get(k).as_double(), 0.0) << k;
    }
    EXPECT_LT(doc.root().get("unmerged_vs_merged_logits_rel_diff").as_double(), 1e-5);
}

TEST(cli_generate, bad_input_fails_with_a_clear_message) {
    const std::string m = "generate --model " + dirs().model;
    run_result r = run_peft(m + " --prompt hi --adapter /nonexistent/adapter");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("/nonexistent/adapter"), std::string::npos) << r.err;

    const std::string other = make_model_dir("gen_other_model", 48, 2);
    const std::string other_adapter = make_adapter_dir("gen_other_adapter", other);
    r = run_peft(m + " --prompt hi --adapter " + other_adapter);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("another base"), std::string::npos) << r.err;

    r = run_peft(m + " --chat hi --template nosuch");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("unknown template"), std::string::npos) << r.err;
    r = run_peft(m + " --chat hi --template chatml");   // the tokenizer has no <|im_start|>
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("<|im_start|>"), std::string::npos) << r.err;

    r = run_peft(m + " --prompt " + std::string(100, 'a'));   // 101 tokens, context 64
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("context"), std::string::npos) << r.err;

    r = run_peft(m);                                           // neither --prompt nor --chat
    EXPECT_NE(r.code, 0);
    r = run_peft(m + " --prompt hi --merge");                  // --merge without --adapter
    EXPECT_NE(r.code, 0);
    r = run_peft(m + " --prompt hi --top-p 0");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("top-p"), std::string::npos) << r.err;
    r = run_peft("generate --model /nonexistent/model --prompt hi");
    EXPECT_NE(r.code, 0);
}

TEST(cli_merge, merged_checkpoint_matches_unmerged_and_copies_files) {
    const std::string out = peft::testing::temp_dir("gen_merged") + "/out";
    run_result r = run_peft("merge --model " + dirs().model + " --adapter " + dirs().adapter + " --out " + out);
    ASSERT_EQ(r.code, 0) << r.err;
    for (const char * f : {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
        EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
    }
    EXPECT_FALSE(fs::exists(out + ".tmp"));
    EXPECT_EQ(read_text(out + "/config.json"), read_text(dirs().model + "/config.json"));

    std::vector<int32_t> tok;
    for (int i = 0; i < 20; i++) tok.push_back((int32_t) ((i * 37 + 11) % VOCAB));
    llama_model merged, unmerged;
    status st = llama_load(merged, out, false);
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_TRUE(llama_load(unmerged, dirs().model, false).ok());
    adapter_set set;
    st = adapter_load(dirs().adapter, unmerged, set);
    ASSERT_TRUE(st.ok()) << st.message;
    const std::vector<float> a = peft::testing::forward_logits(merged, tok), b = peft::testing::forward_logits(unmerged, tok);
    EXPECT_LT(peft::testing::rel_error(a.data(), b.data(), (int64_t) a.size()), 1e-5);
    unmerged.adapters.clear();
    const std::vector<float> base = peft::testing::forward_logits(unmerged, tok);
    EXPECT_GT(peft::testing::rel_error(base.data(), b.data(), (int64_t) a.size()), 1e-3);

    // an existing non-empty directory is refused without --force, replaced with it
    r = run_peft("merge --model " + dirs().model + " --adapter " + dirs().adapter + " --out " + out);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
    r = run_peft("merge --model " + dirs().model + " --adapter " + dirs().adapter + " --out " + out + " --force --dtype bf16");
    ASSERT_EQ(r.code, 0) << r.err;
    safetensors_file f;
    ASSERT_TRUE(safetensors_open(out + "/model.safetensors", f).ok());
    for (const tensor_info & t : f.tensors) EXPECT_EQ(t.type, PEFT_DTYPE_BF16) << t.name;
    EXPECT_NE(read_text(out + "/config.json").find("\"torch_dtype\": \"bfloat16\""), std::string::npos);
    llama_model m16;
    st = llama_load(m16, out, false);
    ASSERT_TRUE(st.ok()) << st.message;
    const std::vector<float> c = peft::testing::forward_logits(m16, tok);
    EXPECT_LT(peft::testing::rel_error(c.data(), b.data(), (int64_t) c.size()), 2e-2);   // bf16 rounding of the weights
}

TEST(cli_merge, bad_input_fails_with_a_clear_message) {
    const std::string out = peft::testing::temp_dir("gen_merge_bad") + "/out";
    run_result r = run_peft("merge --model " + dirs().model + " --adapter /nonexistent/adapter --out " + out);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("/nonexistent/adapter"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
    const std::string other = make_model_dir("gen_merge_other", 48, 2);
    r = run_peft("merge --model " + other + " --adapter " + dirs().adapter + " --out " + out);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("another base"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
    r = run_peft("merge --model " + dirs().model + " --adapter " + dirs().adapter + " --out " + out + " --dtype f8");
    EXPECT_NE(r.code, 0);
    r = run_peft("merge --model " + dirs().model + " --adapter " + dirs().adapter);   // no --out
    EXPECT_NE(r.code, 0);
}

namespace {

// A copy of directory `src` whose safetensors file `file` has NaN at element 10 of tensor `name`.
std::string copy_with_nan(const std::string & src, const std::string & file, const std::string & name, const std::string & tag) {
    const std::string dir = peft::testing::temp_dir(tag);
    for (const fs::directory_entry & e : fs::directory_iterator(src)) fs::copy_file(e.path(), dir + "/" + e.path().filename().string());
    peft::testing::rewrite_safetensors(dir + "/" + file, [&](std::vector<peft::testing::test_tensor> & ts) {
        for (peft::testing::test_tensor & t : ts) {
            if (t.name == name) t.values[10] = NAN;
        }
    });
    return dir;
}

} // namespace

TEST(cli_merge, non_finite_weights_stop_merge_and_generate) {
    const std::string out = peft::testing::temp_dir("gen_merge_nan") + "/out";
    const std::string weight = "model.layers.1.mlp.up_proj.weight";
    const std::string model = copy_with_nan(dirs().model, "model.safetensors", weight, "gen_nan_model");
    run_result r = run_peft("merge --model " + model + " --adapter " + dirs().adapter + " --out " + out);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("'" + weight + "' (F32 [48, 32]) holds NaN at element 10"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
    r = run_peft("generate --model " + model + " --prompt hi --max-new-tokens 4");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("'" + weight + "'"), std::string::npos) << r.err;

    const std::string key = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight";
    const std::string adapter = copy_with_nan(dirs().adapter, "adapter_model.safetensors", key, "gen_nan_adapter");
    r = run_peft("merge --model " + dirs().model + " --adapter " + adapter + " --out " + out);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("adapter_model.safetensors: tensor '" + key + "'"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
    r = run_peft("generate --model " + dirs().model + " --adapter " + adapter + " --prompt hi --max-new-tokens 4");
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("'" + key + "'"), std::string::npos) << r.err;
}
