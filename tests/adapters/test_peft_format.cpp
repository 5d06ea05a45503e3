// PEFT adapter directories (FORMATS §2a): the config text as Python writes it, save -> load
// round trips, a directory "as written by PEFT" (extra keys, BF16/F16 tensors), and the errors
// for adapters made for another base and for unwritable or incomplete directories.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "adapter_test_util.h"
#include "core/dtype.h"
#include "io/peft_format.h"
#include "io/safetensors.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

std::string read_text(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void write_text(const std::string & path, const std::string & text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}

} // namespace

TEST(peft_format, python_float_repr) {
    EXPECT_EQ(json_python_float(0.05), "0.05");
    EXPECT_EQ(json_python_float(8.0), "8.0");
    EXPECT_EQ(json_python_float(0.0), "0.0");
    EXPECT_EQ(json_python_float(-2.5), "-2.5");
    EXPECT_EQ(json_python_float(1e-5), "1e-05");
    EXPECT_EQ(json_python_float(1e-4), "0.0001");
    EXPECT_EQ(json_python_float(1e16), "1e+16");
    EXPECT_EQ(json_python_float(1e15), "1000000000000000.0");
    EXPECT_EQ(json_python_float(123456789012345678.0), "1.2345678901234568e+17");
    EXPECT_EQ(json_python_float(0.1 + 0.2), "0.30000000000000004");
    EXPECT_EQ(json_python_float(2e-3), "0.002");
    EXPECT_EQ(json_python_float(1.5e-7), "1.5e-07");
    EXPECT_EQ(json_python_float(1234.5), "1234.5");
}

TEST(peft_format, python_json_dump) {
    EXPECT_EQ(json_python_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    EXPECT_EQ(json_python_quote("caf\xc3\xa9"), "\"caf\\u00e9\"");
    EXPECT_EQ(json_python_quote("\xf0\x9f\x98\x80"), "\"\\ud83d\\ude00\"");
    config c("{\"b\":[1,2.0,{\"z\":null,\"a\":true}],\"a\":{},\"c\":[],\"d\":\"x\"}");
    // json.dumps(v, indent=2, sort_keys=True)
    EXPECT_EQ(json_dump_python(c.root()),
              "{\n  \"a\": {},\n  \"b\": [\n    1,\n    2.0,\n    {\n      \"a\": true,\n      \"z\": null\n    }\n  ],\n"
              "  \"c\": [],\n  \"d\": \"x\"\n}");
}

TEST(peft_format, save_load_round_trip_is_bitwise) {
    auto m = tiny_model(21);
    adapter_set s;
    ASSERT_TRUE(attach(*m,
                       "{\"r\":4,\"lora_alpha\":16,\"lora_dropout\":0.05,\"target_modules\":[\"q_proj\",\"v_proj\",\"down_proj\"],"
                       "\"rank_pattern\":{\"down_proj\":2},\"alpha_pattern\":{\"v_proj\":4.5},\"use_rslora\":true}",
                       s)
                    .ok());
    std::vector<param_ref> ps = adapter_set_params(s);
    randomize(ps, 3, 0.1f, true);
    auto before = snapshot(ps);
    const std::string dir = peft::testing::temp_dir("lora_roundtrip") + "/nested/out";   // created on save
    status st = adapter_save(dir, s, "org/tiny-llama");
    ASSERT_TRUE(st.ok()) << st.message;

    // the config text as PEFT writes it
    const std::string text = read_text(dir + "/adapter_config.json");
    EXPECT_EQ(text.rfind("{\n  \"alora_invocation_tokens\": null,\n  \"alpha_pattern\": {\n    \"v_proj\": 4.5\n  },", 0), 0u) << text;
    EXPECT_NE(text.find("\n  \"base_model_name_or_path\": \"org/tiny-llama\",\n"), std::string::npos);
    EXPECT_NE(text.find("\n  \"lora_alpha\": 16,\n"), std::string::npos);
    EXPECT_NE(text.find("\n  \"lora_dropout\": 0.05,\n"), std::string::npos);
    EXPECT_NE(text.find("\n  \"peft_type\": \"LORA\",\n"), std::string::npos);
    EXPECT_NE(text.find("\n  \"r\": 4,\n  \"rank_pattern\": {\n    \"down_proj\": 2\n  },\n"), std::string::npos) << text;
    EXPECT_NE(text.find("\n  \"target_modules\": [\n    \"q_proj\",\n    \"v_proj\",\n    \"down_proj\"\n  ],\n"), std::string::npos);
    EXPECT_NE(text.find("\n  \"task_type\": \"CAUSAL_LM\",\n"), std::string::npos);
    EXPECT_NE(text.find("\n  \"use_dora\": false,\n"), std::string::npos);
    EXPECT_NE(text.find("\n  \"inference_mode\": true,\n"), std::string::npos);
    EXPECT_NE(text.find("\n  \"init_lora_weights\": true,\n"), std::string::npos);
    EXPECT_NE(text.find("\n  \"bias\": \"none\",\n"), std::string::npos);
    const std::string tail = "  \"use_rslora\": true\n}";   // last key, no trailing newline
    ASSERT_GT(text.size(), tail.size());
    EXPECT_EQ(text.substr(text.size() - tail.size()), tail);
    {
        config c(text);   // keys sorted
        for (size_t i = 1; i < c.root().size(); i++) EXPECT_LT(c.root().key_at(i - 1), c.root().key_at(i));
        EXPECT_TRUE(c.root().get("layers_to_transform").is_null());
        EXPECT_TRUE(c.root().get("modules_to_save").is_null());
        EXPECT_FALSE(c.root().get("fan_in_fan_out").as_bool());
    }
    // the tensors: F32, metadata format=pt, PEFT key names and shapes
    safetensors_file f;
    ASSERT_TRUE(safetensors_open(dir + "/adapter_model.safetensors", f).ok());
    ASSERT_NE(f.metadata_get("format"), nullptr);
    EXPECT_EQ(*f.metadata_get("format"), "pt");
    EXPECT_EQ(f.tensors.size(), ps.size());
    const tensor_info * t = f.find("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->st_dtype, SAFETENSORS_DTYPE_F32);
    EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 48}));

    // load into a fresh copy of the same base
    auto m2 = tiny_model(21);
    adapter_set s2;
    st = adapter_load(dir, *m2, s2);
    ASSERT_TRUE(st.ok()) << st.message;
    std::vector<param_ref> ps2 = adapter_set_params(s2);
    ASSERT_EQ(ps2.size(), ps.size());
    for (size_t i = 0; i < ps.size(); i++) EXPECT_EQ(ps2[i].name, ps[i].name);
    EXPECT_EQ(snapshot(ps2), before);
    for (size_t i = 0; i < s.modules.size(); i++) {
        auto * a = dynamic_cast<lora_module *>(s.modules[i].get());
        auto * b = dynamic_cast<lora_module *>(s2.modules[i].get());
        EXPECT_EQ(a->scaling, b->scaling);
        EXPECT_EQ(a->R, b->R);
        EXPECT_FALSE(b->training) << "loaded adapters start in inference mode";
    }
    // same outputs (the original in inference mode too: dropout is on in training mode)
    adapters_set_training(s, false);
    batch_data d = make_batch(m->hp.n_vocab);
    std::vector<float> l1, l2;
    forward_logits(*m, d, l1);
    forward_logits(*m2, d, l2);
    EXPECT_EQ(l1, l2);

    // saving again gives the same bytes (deterministic writer), also over an existing directory
    const std::string w1 = read_text(dir + "/adapter_model.safetensors");
    ASSERT_TRUE(adapter_save(dir, s2, "org/tiny-llama").ok());
    EXPECT_EQ(read_text(dir + "/adapter_model.safetensors"), w1);
    EXPECT_EQ(read_text(dir + "/adapter_config.json"), text);
}

// A directory as Hugging Face PEFT writes it: a config with every key of a recent version (and
// some it might add later), target_modules as a set in any order, tensors not all in F32.
TEST(peft_format, loads_a_directory_written_by_peft) {
    auto m = tiny_model(4);
    const std::string dir = peft::testing::temp_dir("peft_written");
    write_text(dir + "/adapter_config.json", R"({
  "alora_invocation_tokens": null,
  "alpha_pattern": {},
  "arrow_config": null,
  "auto_mapping": null,
  "base_model_name_or_path": "meta-llama/Llama-3.2-1B",
  "bias": "none",
  "corda_config": null,
  "ensure_weight_tying": false,
  "eva_config": null,
  "exclude_modules": null,
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": "gaussian",
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 16,
  "lora_bias": false,
  "lora_dropout": 0.05,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "peft_version": "0.18.1",
  "qalora_group_size": 16,
  "r": 8,
  "rank_pattern": {
    "model.layers.1.self_attn.v_proj": 2
  },
  "revision": null,
  "runtime_config": {"ephemeral_gpu_offload": false},
  "some_future_key": [1, 2, 3],
  "target_modules": [
    "v_proj",
    "q_proj"
  ],
  "target_parameters": null,
  "task_type": "CAUSAL_LM",
  "trainable_token_indices": null,
  "use_dora": false,
  "use_qalora": false,
  "use_rslora": false
})");
    // tensors: layer 0 in BF16, layer 1 q in F16, layer 1 v (rank 2 by rank_pattern) in F32
    struct spec { std::string name; int64_t rows, cols; dtype type; };
    const std::string p = "base_model.model.model.layers.";
    std::vector<spec> specs = {
        {p + "0.self_attn.q_proj.lora_A.weight", 8, 32, PEFT_DTYPE_BF16}, {p + "0.self_attn.q_proj.lora_B.weight", 32, 8, PEFT_DTYPE_BF16},
        {p + "0.self_attn.v_proj.lora_A.weight", 8, 32, PEFT_DTYPE_BF16}, {p + "0.self_attn.v_proj.lora_B.weight", 16, 8, PEFT_DTYPE_BF16},
        {p + "1.self_attn.q_proj.lora_A.weight", 8, 32, PEFT_DTYPE_F16},  {p + "1.self_attn.q_proj.lora_B.weight", 32, 8, PEFT_DTYPE_F16},
        {p + "1.self_attn.v_proj.lora_A.weight", 2, 32, PEFT_DTYPE_F32},  {p + "1.self_attn.v_proj.lora_B.weight", 16, 2, PEFT_DTYPE_F32},
    };
    std::vector<std::vector<float>> values;
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<safetensors_tensor_to_write> tw;
    for (size_t i = 0; i < specs.size(); i++) {
        const spec & sp = specs[i];
        std::vector<float> v = peft::testing::fixed_vector(sp.rows * sp.cols, 100 + i, 0.25f);
        std::vector<uint8_t> b(v.size() * dtype_size(sp.type));
        convert_from_f32(sp.type, v.data(), b.data(), v.size());
        convert_to_f32(sp.type, b.data(), v.data(), v.size());   // the values the file really holds
        values.push_back(v);
        bytes.push_back(b);
    }
    for (size_t i = 0; i < specs.size(); i++) {
        safetensors_tensor_to_write t;
        t.name = specs[i].name;
        t.type = specs[i].type;
        t.shape = {specs[i].rows, specs[i].cols};
        t.data = bytes[i].data();
        tw.push_back(t);
    }
    ASSERT_TRUE(safetensors_write(dir + "/adapter_model.safetensors", tw, {{"format", "pt"}}).ok());

    adapter_set s;
    status st = adapter_load(dir, *m, s);
    ASSERT_TRUE(st.ok()) << st.message << " " << st.hint;
    ASSERT_EQ(s.modules.size(), 4u);
    std::vector<param_ref> ps = adapter_set_params(s);
    ASSERT_EQ(ps.size(), specs.size());
    for (size_t i = 0; i < specs.size(); i++) {
        ASSERT_EQ(ps[i].name, specs[i].name);
        EXPECT_EQ(std::vector<float>(ps[i].value, ps[i].value + numel(ps[i])), values[i]) << specs[i].name;
    }
    auto * v1 = dynamic_cast<lora_module *>(s.modules[3].get());
    EXPECT_EQ(v1->R, 2);
    EXPECT_EQ(v1->scaling, 8.0f);   // 16 / 2
    EXPECT_EQ(dynamic_cast<lora_module *>(s.modules[0].get())->scaling, 2.0f);
    EXPECT_EQ(m->adapter(0, LLAMA_PROJ_Q), s.modules[0].get());

    // target_modules as a regex string also loads
    std::string cfg = read_text(dir + "/adapter_config.json");
    size_t a = cfg.find("\"target_modules\": [");
    size_t b = cfg.find("],", a);
    cfg.replace(a, b + 2 - a, "\"target_modules\": \"model\\\\.layers\\\\.\\\\d+\\\\.self_attn\\\\.(q|v)_proj\",");
    write_text(dir + "/adapter_config.json", cfg);
    adapter_set s2;
    st = adapter_load(dir, *m, s2);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(snapshot(adapter_set_params(s2)), snapshot(ps));
}

// An adapter saved with a residual-making init (PiSSA, MiLoRA, OLoRA: its config keeps the init
// name) is only right on the residual base; on the original model it would run silently wrong.
TEST(peft_format, residual_form_adapter_needs_its_residual_base) {
    auto m = tiny_model(2);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"target_modules\":[\"q_proj\"]}", s).ok());
    const std::string dir = peft::testing::temp_dir("residual_form");
    ASSERT_TRUE(adapter_save(dir, s, "").ok());
    m->adapters.clear();
    std::string cfg = read_text(dir + "/adapter_config.json");
    const size_t at = cfg.find("\"init_lora_weights\": true");
    ASSERT_NE(at, std::string::npos);
    cfg.replace(at, 25, "\"init_lora_weights\": \"pissa_niter_4\"");
    write_text(dir + "/adapter_config.json", cfg);
    adapter_set s2;
    status st = adapter_load(dir, *m, s2);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("residual base"), std::string::npos) << st.message;
    EXPECT_NE(st.hint.find("save_residual_model: false"), std::string::npos) << st.hint;
    m->hp.residual_init = "pissa_niter_4";   // the residual model written beside such an adapter
    st = adapter_load(dir, *m, s2);
    EXPECT_TRUE(st.ok()) << st.message;
}

TEST(peft_format, adapter_for_another_base_is_refused) {
    auto m = tiny_model(2);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"target_modules\":\"all-linear\"}", s).ok());
    const std::string dir = peft::testing::temp_dir("other_base");
    ASSERT_TRUE(adapter_save(dir, s, "").ok());
    {
        config c(read_text(dir + "/adapter_config.json"));
        EXPECT_TRUE(c.root().get("base_model_name_or_path").is_null());
    }

    // wider model: shape mismatch naming the key and both shapes
    auto wide = tiny_model(2, PEFT_DTYPE_F32, 2, 48);
    adapter_set o;
    status st = adapter_load(dir, *wide, o);
    EXPECT_EQ(st.code, PEFT_STATUS_SHAPE);
    EXPECT_NE(st.message.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find("[4, 48]"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find("[4, 32]"), std::string::npos) << st.message;
    EXPECT_TRUE(wide->adapters.empty()) << "a failed load must leave the model unadapted";

    // deeper model: missing keys
    auto deep = tiny_model(2, PEFT_DTYPE_F32, 3);
    st = adapter_load(dir, *deep, o);
    EXPECT_EQ(st.code, PEFT_STATUS_SHAPE);
    EXPECT_NE(st.message.find("missing tensor \"base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight\""),
              std::string::npos)
        << st.message;
    EXPECT_TRUE(deep->adapters.empty());

    // shallower model: unexpected keys
    auto shallow = tiny_model(2, PEFT_DTYPE_F32, 1);
    st = adapter_load(dir, *shallow, o);
    EXPECT_EQ(st.code, PEFT_STATUS_SHAPE);
    EXPECT_NE(st.message.find("unexpected tensor \"base_model.model.model.layers.1."), std::string::npos) << st.message;

    // config rank disagreeing with the tensors
    std::string cfg = read_text(dir + "/adapter_config.json");
    size_t at = cfg.find("\"r\": 4");
    ASSERT_NE(at, std::string::npos);
    cfg.replace(at, 6, "\"r\": 8");
    write_text(dir + "/adapter_config.json", cfg);
    auto same = tiny_model(2);
    st = adapter_load(dir, *same, o);
    EXPECT_EQ(st.code, PEFT_STATUS_SHAPE);
    EXPECT_NE(st.message.find("expected [8, 32], got [4, 32]"), std::string::npos) << st.message;
}

TEST(peft_format, bad_directories) {
    auto m = tiny_model();
    adapter_set s;
    const std::string root = peft::testing::temp_dir("bad_dirs");
    status st = adapter_load(root + "/nope", *m, s);
    EXPECT_EQ(st.code, PEFT_STATUS_IO);
    st = adapter_load(root, *m, s);   // empty directory
    EXPECT_EQ(st.code, PEFT_STATUS_IO);
    EXPECT_NE(st.message.find("adapter_config.json"), std::string::npos);

    write_text(root + "/adapter_config.json", "{\"peft_type\":\"LORA\",\"r\":4}");
    write_text(root + "/adapter_model.bin", "pickle");
    st = adapter_load(root, *m, s);
    EXPECT_EQ(st.code, PEFT_STATUS_IO);
    EXPECT_NE(st.hint.find("safetensors"), std::string::npos) << st.hint;

    write_text(root + "/adapter_model.safetensors", "garbage");
    st = adapter_load(root, *m, s);
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(m->adapters.empty());

    write_text(root + "/adapter_config.json", "{\"r\":4}");   // no peft_type
    st = adapter_load(root, *m, s);
    EXPECT_EQ(st.code, PEFT_STATUS_FORMAT);
    write_text(root + "/adapter_config.json", "{\"peft_type\":\"LORA\",\"use_dora\":\"yes\"}");
    st = adapter_load(root, *m, s);
    EXPECT_EQ(st.code, PEFT_STATUS_CONFIG);
    EXPECT_NE(st.message.find("use_dora"), std::string::npos);
    write_text(root + "/adapter_config.json", "{\"peft_type\":");
    EXPECT_FALSE(adapter_load(root, *m, s).ok());

    // unwritable output: a directory below a regular file
    adapter_set ok;
    ASSERT_TRUE(attach(*m, "{\"r\":2}", ok).ok());
    write_text(root + "/a_file", "x");
    st = adapter_save(root + "/a_file/adapter", ok, "");
    EXPECT_EQ(st.code, PEFT_STATUS_IO);
    EXPECT_NE(st.message.find(root + "/a_file/adapter"), std::string::npos) << st.message;
}

// The fixture's initial_adapter/ was written by Python (json.dumps(indent=2, sort_keys=True) and
// the reference safetensors layout): loading it and saving it again must give the same bytes.
TEST(peft_format, resave_of_a_python_written_adapter_is_byte_identical) {
    const std::string src = peft::testing::source_path("tests/fixtures/lora_parity/initial_adapter");
    auto m = std::make_unique<llama_model>();
    status st = llama_load(*m, peft::testing::source_path("tests/fixtures/llama_gqa"), false);
    ASSERT_TRUE(st.ok()) << st.message;
    adapter_set s;
    st = adapter_load(src, *m, s);
    ASSERT_TRUE(st.ok()) << st.message;
    const std::string dir = peft::testing::temp_dir("resave");
    ASSERT_TRUE(adapter_save(dir, s, "peft.cpp/tests/fixtures/llama_gqa").ok());
    EXPECT_EQ(read_text(dir + "/adapter_config.json"), read_text(src + "/adapter_config.json"));
    EXPECT_TRUE(read_text(dir + "/adapter_model.safetensors") == read_text(src + "/adapter_model.safetensors"))
        << "adapter_model.safetensors bytes differ from the Python writer's";
}

TEST(peft_format, non_finite_adapter_tensor_is_refused_naming_it) {
    auto m = tiny_model(2);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"target_modules\":\"all-linear\"}", s).ok());
    const std::string dir = peft::testing::temp_dir("nan_adapter");
    ASSERT_TRUE(adapter_save(dir, s, "").ok());
    const std::string key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";   // [16, 4]
    peft::testing::rewrite_safetensors(dir + "/" + PEFT_WEIGHTS_NAME, [&](std::vector<peft::testing::test_tensor> & ts) {
        for (auto & t : ts) {
            if (t.name == key) t.values[6] = INFINITY;
        }
    }, PEFT_DTYPE_BF16);
    auto fresh = tiny_model(2);
    adapter_set o;
    status st = adapter_load(dir, *fresh, o);
    EXPECT_EQ(st.code, PEFT_STATUS_NUMERIC);
    for (const std::string & needle : {std::string(PEFT_WEIGHTS_NAME), "'" + key + "'", std::string("+Inf at element 6"),
                                       std::string("[1, 2]")}) {
        EXPECT_NE(st.message.find(needle), std::string::npos) << st.message << "\nmissing: " << needle;
    }
    EXPECT_TRUE(fresh->adapters.empty()) << "a failed load must leave the model unadapted";
}
