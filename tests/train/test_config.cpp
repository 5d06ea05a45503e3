// test_config.cpp: `peft train` options (train/config.h): YAML and JSON files, flags that
// override them, PEFT/axolotl key names and aliases, the adapter JSON passed to adapters_attach,
// and clear errors (unknown key with "did you mean", wrong types and ranges naming the key,
// missing base_model/datasets).
#include <fstream>

#include "io/json.h"
#include "testing.h"
#include "train/config.h"

using namespace peft;

namespace {

status from_yaml(const std::string & text, train_options & o, bool allow_incomplete = false) {
    config_entries e;
    PEFT_TRY(config_parse_text(text, "test.yaml", e));
    return config_build(e, o, allow_incomplete);
}

} // namespace

TEST(config, yaml_keys_types_and_defaults) {
    train_options o;
    status st = from_yaml("base_model: ./models/tiny\n"
                          "datasets:\n  - path: data/train.jsonl\n    type: alpaca\n  - path: more.jsonl\n"
                          "output_dir: out\n"
                          "learning_rate: 2e-4\n"       // YAML 1.2: a number (not the string PyYAML would give)
                          "micro_batch_size: 4\n"
                          "sample_packing: false\n"
                          "lr_scheduler: linear\n"
                          "warmup_ratio: 0.1\n"
                          "max_grad_norm: 0\n"
                          "resume_from_checkpoint: true\n"
                          "bf16: true\n"
                          "r: 16\nlora_alpha: 32\nlora_dropout: 0.05\ntarget_modules: [q_proj, v_proj]\nuse_rslora: true\n"
                          "# a comment\n",
                          o);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(o.base_model, "./models/tiny");
    ASSERT_EQ(o.datasets.size(), 2u);
    EXPECT_EQ(o.datasets[0].path, "data/train.jsonl");
    EXPECT_EQ(o.datasets[0].type, "alpaca");
    EXPECT_EQ(o.datasets[1].type, "");
    EXPECT_DOUBLE_EQ(o.learning_rate, 2e-4);
    EXPECT_EQ(o.micro_batch_size, 4);
    EXPECT_FALSE(o.sample_packing);
    EXPECT_EQ(o.lr_scheduler, "linear");
    EXPECT_DOUBLE_EQ(o.warmup_ratio, 0.1);
    EXPECT_DOUBLE_EQ(o.max_grad_norm, 0.0);
    EXPECT_EQ(o.resume_from_checkpoint, "latest");
    EXPECT_TRUE(o.bf16);
    // defaults
    EXPECT_EQ(o.num_epochs, 1);
    EXPECT_EQ(o.gradient_accumulation_steps, 1);
    EXPECT_EQ(o.seed, 42u);
    EXPECT_FALSE(o.train_on_inputs);
    EXPECT_EQ(o.adapter, "lora");
    // adapter keys travel as one JSON object
    json_document d;
    ASSERT_TRUE(d.parse(o.adapter_json.data(), o.adapter_json.size(), "adapter").ok()) << o.adapter_json;
    EXPECT_EQ(d.root().get("adapter").as_string(), "lora");
    EXPECT_EQ(d.root().get("r").as_int(), 16);
    EXPECT_DOUBLE_EQ(d.root().get("lora_alpha").as_double(), 32.0);
    EXPECT_TRUE(d.root().get("use_rslora").as_bool());
    ASSERT_TRUE(d.root().get("target_modules").is_array());
    EXPECT_EQ(d.root().get("target_modules").at(1).as_string(), "v_proj");
    EXPECT_FALSE(d.root().get("learning_rate").valid());
}

TEST(config, json_file_and_yaml_file_give_the_same_options) {
    const std::string dir = peft::testing::temp_dir("config_files");
    std::ofstream(dir + "/a.json") << "{\"base_model\": \"m\", \"datasets\": [{\"path\": \"d.jsonl\"}], \"r\": 8, \"learning_rate\": 0.001}";
    std::ofstream(dir + "/a.yaml") << "base_model: m\ndatasets: [{path: d.jsonl}]\nr: 8\nlearning_rate: 0.001\n";
    config_entries ej, ey;
    ASSERT_TRUE(config_load_file(dir + "/a.json", ej).ok());
    ASSERT_TRUE(config_load_file(dir + "/a.yaml", ey).ok());
    train_options a, b;
    ASSERT_TRUE(config_build(ej, a).ok());
    ASSERT_TRUE(config_build(ey, b).ok());
    EXPECT_EQ(config_to_json(a), config_to_json(b));
    // a broken JSON file reports a JSON error
    std::ofstream(dir + "/bad.json") << "{\"base_model\": }";
    config_entries e;
    status st = config_load_file(dir + "/bad.json", e);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("bad.json"), std::string::npos) << st.message;
    st = config_load_file(dir + "/missing.yaml", e);
    EXPECT_EQ(st.code, PEFT_STATUS_IO);
}

TEST(config, flags_override_the_file_and_accept_dashes_and_aliases) {
    config_entries e;
    ASSERT_TRUE(config_parse_text("base_model: m\ndatasets: d.jsonl\nlearning_rate: 1e-3\n", "c.yaml", e).ok());
    ASSERT_TRUE(config_set_flag(e, "learning-rate", "2e-4").ok());
    ASSERT_TRUE(config_set_flag(e, "lora_r", "4").ok());   // axolotl's name for r
    ASSERT_TRUE(config_set_flag(e, "target_modules", "q_proj,k_proj").ok());
    ASSERT_TRUE(config_set_flag(e, "layers_to_transform", "0,1").ok());
    ASSERT_TRUE(config_set_flag(e, "sample_packing", "false").ok());
    ASSERT_TRUE(config_set_flag(e, "datasets", "a.jsonl,b.jsonl").ok());
    ASSERT_TRUE(config_set_flag(e, "rank_pattern", "{\"q_proj\": 2}").ok());
    EXPECT_TRUE(config_flag_is_bool("gradient-checkpointing"));
    EXPECT_FALSE(config_flag_is_bool("learning_rate"));
    train_options o;
    status st = config_build(e, o);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_DOUBLE_EQ(o.learning_rate, 2e-4);
    EXPECT_FALSE(o.sample_packing);
    ASSERT_EQ(o.datasets.size(), 2u);
    EXPECT_EQ(o.datasets[1].path, "b.jsonl");
    json_document d;
    ASSERT_TRUE(d.parse(o.adapter_json.data(), o.adapter_json.size(), "adapter").ok());
    EXPECT_EQ(d.root().get("r").as_int(), 4);
    EXPECT_EQ(d.root().get("target_modules").size(), 2u);
    EXPECT_EQ(d.root().get("layers_to_transform").at(1).as_int(), 1);
    EXPECT_EQ(d.root().get("rank_pattern").get("q_proj").as_int(), 2);
    // all-linear stays a string (PEFT's special value)
    ASSERT_TRUE(config_set_flag(e, "target-modules", "all-linear").ok());
    ASSERT_TRUE(config_build(e, o).ok());
    ASSERT_TRUE(d.parse(o.adapter_json.data(), o.adapter_json.size(), "adapter").ok());
    EXPECT_EQ(d.root().get("target_modules").as_string(), "all-linear");
}

TEST(config, unknown_keys_get_a_did_you_mean_hint) {
    train_options o;
    status st = from_yaml("base_model: m\ndatasets: d\nlearning_rte: 1e-4\n", o);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code, PEFT_STATUS_CONFIG);
    EXPECT_NE(st.message.find("learning_rte"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find("did you mean 'learning_rate'"), std::string::npos) << st.message;
    config_entries e;
    st = config_set_flag(e, "micro-batch-sise", "2");
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("--micro_batch_size"), std::string::npos) << st.message;
    EXPECT_EQ(config_suggest("lr"), "learning_rate");
    EXPECT_EQ(config_suggest("epochs"), "num_epochs");
    EXPECT_EQ(config_suggest("gradient_accumulation"), "gradient_accumulation_steps");
    EXPECT_EQ(config_suggest("zzzzzzzzzzzz"), "");
}

TEST(config, wrong_types_and_ranges_name_the_key) {
    struct bad_case {
        const char * yaml, * key;
    } cases[] = {
        {"learning_rate: fast\n", "learning_rate"},
        {"learning_rate: -1\n", "learning_rate"},
        {"micro_batch_size: 0\n", "micro_batch_size"},
        {"micro_batch_size: 1.5\n", "micro_batch_size"},
        {"num_epochs: [1]\n", "num_epochs"},
        {"sample_packing: maybe\n", "sample_packing"},
        {"bf16: yes please\n", "bf16"},
        {"lr_scheduler: exponential\n", "lr_scheduler"},
        {"val_set_size: 1.5\n", "val_set_size"},
        {"adam_beta2: 1\n", "adam_beta2"},
        {"save_dtype: f8\n", "save_dtype"},
        {"r: 0\n", "r"},
        {"r: sixteen\n", "r"},
        {"target_modules: 3\n", "target_modules"},
        {"rank_pattern: [1]\n", "rank_pattern"},
        {"threads: -2\n", "threads"},
    };
    for (const bad_case & c : cases) {
        train_options o;
        status st = from_yaml(std::string("base_model: m\ndatasets: d\n") + c.yaml, o);
        ASSERT_FALSE(st.ok()) << c.yaml;
        EXPECT_NE(st.message.find(std::string("'") + c.key + "'"), std::string::npos) << c.yaml << " -> " << st.message;
    }
    config_entries e;
    EXPECT_FALSE(config_set_flag(e, "learning_rate", "abc").ok());
    EXPECT_FALSE(config_set_flag(e, "max_steps", "1e3").ok());
    EXPECT_FALSE(config_set_flag(e, "sample_packing", "perhaps").ok());
    EXPECT_FALSE(config_set_flag(e, "rank_pattern", "q_proj=2").ok());
}

TEST(config, datasets_forms_and_bad_entries) {
    train_options o;
    ASSERT_TRUE(from_yaml("base_model: m\ndatasets: one.jsonl\n", o).ok());
    ASSERT_EQ(o.datasets.size(), 1u);
    EXPECT_EQ(o.datasets[0].path, "one.jsonl");
    ASSERT_TRUE(from_yaml("base_model: m\ndatasets: [a.jsonl, {path: b.txt, type: completion}]\n", o).ok());
    ASSERT_EQ(o.datasets.size(), 2u);
    EXPECT_EQ(o.datasets[1].type, "completion");
    status st = from_yaml("base_model: m\ndatasets: [{path: a.jsonl, type: sharegptx}]\n", o);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("datasets[0].type"), std::string::npos) << st.message;
    st = from_yaml("base_model: m\ndatasets: [{type: alpaca}]\n", o);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("path"), std::string::npos) << st.message;
    st = from_yaml("base_model: m\ndatasets: [{path: a, split: train}]\n", o);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("split"), std::string::npos) << st.message;
}

TEST(config, missing_required_keys_and_inconsistent_methods) {
    train_options o;
    status st = from_yaml("datasets: d.jsonl\n", o);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("base_model is required"), std::string::npos) << st.message;
    st = from_yaml("base_model: m\n", o);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("datasets is required"), std::string::npos) << st.message;
    st = from_yaml("base_model: m\ndatasets: d\nadapter: full\nr: 8\n", o);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("adapter: full"), std::string::npos) << st.message;
    st = from_yaml("base_model: m\ndatasets: d\nrandom_init: true\n", o);
    ASSERT_FALSE(st.ok());
    ASSERT_TRUE(from_yaml("base_model: m\ndatasets: d\nadapter: full\nrandom_init: true\nsave_dtype: bf16\n", o).ok());
    EXPECT_TRUE(o.full());
    EXPECT_TRUE(o.adapter_json.empty());
}

TEST(config, malformed_yaml_is_an_error_with_a_line) {
    train_options o;
    status st = from_yaml("base_model: m\ndatasets: [a\n  b: c\n", o);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("test.yaml:"), std::string::npos) << st.message;
    st = from_yaml("- a\n- b\n", o);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("mapping"), std::string::npos) << st.message;
    st = from_yaml("base_model: m\nbase_model: n\n", o);   // duplicate keys
    EXPECT_FALSE(st.ok());
    // a quoted number stays a string (output_dir: "123"), a plain one is accepted too
    ASSERT_TRUE(from_yaml("base_model: m\ndatasets: d\noutput_dir: \"0123\"\n", o).ok());
    EXPECT_EQ(o.output_dir, "0123");
}

TEST(config, help_lists_every_key) {
    const std::string h = config_help();
    for (const char * k : {"base_model", "datasets", "lora_alpha", "gradient_accumulation_steps", "resume_from_checkpoint", "rank_pattern"}) {
        EXPECT_NE(h.find(k), std::string::npos) << k;
    }
}
