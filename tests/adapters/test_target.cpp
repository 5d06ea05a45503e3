// Target selection as PEFT does it (tuners_utils.py check_target_module_exists, utils/other.py
// get_pattern_key): lists (exact / suffix), regex strings (full match), all-linear, the Llama
// default, exclude_modules, layers_to_transform / layers_pattern, rank_pattern / alpha_pattern,
// and the errors for names that match nothing.
#include "adapter_test_util.h"
#include "adapters/target.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

std::vector<std::string> paths2() {
    std::vector<std::string> p;
    for (int l = 0; l < 2; l++) {
        for (const char * n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                               "mlp.up_proj", "mlp.down_proj"}) {
            p.push_back("model.layers." + std::to_string(l) + "." + n);
        }
    }
    return p;
}

// selected paths, or the error message prefixed with "ERROR: "
std::vector<std::string> pick(const std::string & cfg_text, std::string * hint = nullptr) {
    config c(cfg_text);
    target_rules r;
    status st = target_rules_parse(c.root(), "test", r);
    if (!st.ok()) return {"ERROR: " + st.message};
    std::vector<std::string> paths = paths2();
    std::vector<size_t> idx;
    st = target_select(r, paths, "test", idx);
    if (!st.ok()) {
        if (hint) *hint = st.hint;
        return {"ERROR: " + st.message};
    }
    std::vector<std::string> out;
    for (size_t i : idx) out.push_back(paths[i]);
    return out;
}

bool is_error(const std::vector<std::string> & v) { return v.size() == 1 && v[0].rfind("ERROR: ", 0) == 0; }

} // namespace

TEST(target, list_matches_suffix_and_exact_path) {
    auto v = pick("{\"target_modules\":[\"q_proj\",\"v_proj\"]}");
    EXPECT_EQ(v, (std::vector<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                           "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}));
    v = pick("{\"target_modules\":[\"model.layers.1.mlp.down_proj\"]}");
    EXPECT_EQ(v, (std::vector<std::string>{"model.layers.1.mlp.down_proj"}));
    v = pick("{\"target_modules\":[\"self_attn.o_proj\"]}");   // dotted suffix
    EXPECT_EQ(v.size(), 2u);
    // suffix means a whole segment: "proj" is not a suffix module name of "q_proj"
    EXPECT_TRUE(is_error(pick("{\"target_modules\":[\"proj\"]}")));
    // duplicates are a set in PEFT
    EXPECT_EQ(pick("{\"target_modules\":[\"q_proj\",\"q_proj\"]}").size(), 2u);
}

TEST(target, regex_is_a_full_match) {
    auto v = pick("{\"target_modules\":\".*\\\\.(q|v)_proj\"}");
    EXPECT_EQ(v.size(), 4u);
    v = pick("{\"target_modules\":\"model\\\\.layers\\\\.0\\\\..*\"}");
    EXPECT_EQ(v.size(), 7u);
    // "q_proj" as a string is a regex that must match the whole path: it matches nothing
    v = pick("{\"target_modules\":\"q_proj\"}");
    EXPECT_TRUE(is_error(v));
    EXPECT_TRUE(is_error(pick("{\"target_modules\":\"(\"}")));   // bad regex
}

TEST(target, all_linear_and_default) {
    EXPECT_EQ(pick("{\"target_modules\":\"all-linear\"}").size(), 14u);
    EXPECT_EQ(pick("{\"target_modules\":\"ALL-LINEAR\"}").size(), 14u);   // PEFT lower-cases
    auto v = pick("{}");
    EXPECT_EQ(v, pick("{\"target_modules\":[\"q_proj\",\"v_proj\"]}"));
    EXPECT_EQ(pick("{\"target_modules\":null}"), v);
}

TEST(target, exclude_modules_first) {
    EXPECT_EQ(pick("{\"target_modules\":\"all-linear\",\"exclude_modules\":[\"k_proj\"]}").size(), 12u);
    auto v = pick("{\"target_modules\":\"all-linear\",\"exclude_modules\":\".*layers\\\\.1\\\\..*\"}");
    EXPECT_EQ(v.size(), 7u);
    for (const std::string & p : v) EXPECT_EQ(p.rfind("model.layers.0.", 0), 0u) << p;
    v = pick("{\"target_modules\":[\"q_proj\"],\"exclude_modules\":[\"model.layers.0.self_attn.q_proj\"]}");
    EXPECT_EQ(v, (std::vector<std::string>{"model.layers.1.self_attn.q_proj"}));
    // excluding everything leaves nothing: an error, not an empty adapter
    EXPECT_TRUE(is_error(pick("{\"target_modules\":[\"q_proj\"],\"exclude_modules\":[\"q_proj\"]}")));
}

TEST(target, layers_to_transform) {
    auto v = pick("{\"target_modules\":[\"q_proj\",\"v_proj\"],\"layers_to_transform\":1}");
    EXPECT_EQ(v, (std::vector<std::string>{"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}));
    v = pick("{\"target_modules\":[\"q_proj\"],\"layers_to_transform\":[0],\"layers_pattern\":\"layers\"}");
    EXPECT_EQ(v, (std::vector<std::string>{"model.layers.0.self_attn.q_proj"}));
    v = pick("{\"target_modules\":[\"q_proj\"],\"layers_to_transform\":[0,1],\"layers_pattern\":[\"h\",\"layers\"]}");
    EXPECT_EQ(v.size(), 2u);
    // a pattern that is not in the path selects nothing
    EXPECT_TRUE(is_error(pick("{\"target_modules\":[\"q_proj\"],\"layers_to_transform\":[0],\"layers_pattern\":\"h\"}")));
    // an empty list means every layer (PEFT)
    EXPECT_EQ(pick("{\"target_modules\":[\"q_proj\"],\"layers_to_transform\":[]}").size(), 2u);
    // PEFT applies layers_to_transform only to suffix matches: regexes and exact paths pass
    EXPECT_EQ(pick("{\"target_modules\":\".*q_proj\",\"layers_to_transform\":[0]}").size(), 2u);
    EXPECT_EQ(pick("{\"target_modules\":[\"model.layers.1.self_attn.q_proj\"],\"layers_to_transform\":[0]}").size(), 1u);
    EXPECT_TRUE(is_error(pick("{\"layers_to_transform\":\"0\"}")));
}

TEST(target, unknown_module_lists_the_available_names) {
    std::string hint;
    auto v = pick("{\"target_modules\":[\"q_proj\",\"qproj\"]}", &hint);
    ASSERT_TRUE(is_error(v));
    EXPECT_NE(v[0].find("qproj"), std::string::npos) << v[0];
    EXPECT_NE(hint.find("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"), std::string::npos) << hint;
    v = pick("{\"target_modules\":[\"lm_head\"]}", &hint);   // never adapted: said so, by name
    ASSERT_TRUE(is_error(v));
    EXPECT_NE(v[0].find("\"lm_head\" adapts embed_tokens or lm_head"), std::string::npos) << v[0];
    EXPECT_NE(hint.find("train without embed_tokens / lm_head"), std::string::npos) << hint;
    EXPECT_TRUE(is_error(pick("{\"target_modules\":[]}")));
    EXPECT_TRUE(is_error(pick("{\"target_modules\":[1]}")));
    EXPECT_TRUE(is_error(pick("{\"target_modules\":7}")));

    // through adapters_attach, with the message and hint the user sees
    auto m = tiny_model();
    adapter_set s;
    status st = attach(*m, "{\"target_modules\":[\"attn\"]}", s);
    EXPECT_EQ(st.code, PEFT_STATUS_CONFIG);
    EXPECT_NE(st.hint.find("gate_proj"), std::string::npos) << st.hint;
}

TEST(target, pattern_key_semantics) {
    const std::string q0 = "model.layers.0.self_attn.q_proj";
    int64_t i = -2;
    ASSERT_TRUE(target_pattern_find({"q_proj"}, q0, "t", i).ok());
    EXPECT_EQ(i, 0);
    ASSERT_TRUE(target_pattern_find({"proj"}, q0, "t", i).ok());
    EXPECT_EQ(i, -1);   // (.*\.)?(proj)$ needs a dot right before the key
    ASSERT_TRUE(target_pattern_find({"k_proj", "layers.0.self_attn.q_proj", "q_proj"}, q0, "t", i).ok());
    EXPECT_EQ(i, 1);    // first key in document order wins
    ASSERT_TRUE(target_pattern_find({q0}, q0, "t", i).ok());
    EXPECT_EQ(i, 0);
    ASSERT_TRUE(target_pattern_find({"layers\\.\\d+\\.mlp\\..*"}, "model.layers.1.mlp.up_proj", "t", i).ok());
    EXPECT_EQ(i, 0);
    EXPECT_FALSE(target_pattern_find({"[a-"}, q0, "t", i).ok());
}

TEST(target, rank_and_alpha_patterns_reach_the_modules) {
    auto m = tiny_model();
    adapter_set s;
    status st = attach(*m,
                       "{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\",\"down_proj\"],"
                       "\"rank_pattern\":{\"layers.0.self_attn.q_proj\":2,\"q_proj\":6,\"model.layers.1.mlp.down_proj\":3},"
                       "\"alpha_pattern\":{\"v_proj\":16.5}}",
                       s);
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_EQ(s.modules.size(), 6u);
    for (auto & mod : s.modules) {
        auto * lm = dynamic_cast<lora_module *>(mod.get());
        const std::string & p = lm->t.path;
        int64_t want_r = p == "model.layers.0.self_attn.q_proj" ? 2
                         : p == "model.layers.1.self_attn.q_proj" ? 6
                         : p == "model.layers.1.mlp.down_proj"    ? 3
                                                                  : 4;
        double want_alpha = p.find("v_proj") != std::string::npos ? 16.5 : 8.0;
        EXPECT_EQ(lm->R, want_r) << p;
        EXPECT_FLOAT_EQ(lm->scaling, (float) (want_alpha / (double) want_r)) << p;
    }
    // targets come in layer order, then projection order
    EXPECT_EQ(s.targets[0].path, "model.layers.0.self_attn.q_proj");
    EXPECT_EQ(s.targets[1].path, "model.layers.0.self_attn.v_proj");
    EXPECT_EQ(s.targets[2].path, "model.layers.0.mlp.down_proj");
    EXPECT_EQ(s.targets[3].path, "model.layers.1.self_attn.q_proj");
    // the model hook points at the modules in the right slots
    EXPECT_EQ(m->adapter(1, LLAMA_PROJ_DOWN), s.modules[5].get());
    EXPECT_EQ(m->adapter(1, LLAMA_PROJ_K), nullptr);
}

TEST(target, params_have_full_peft_names) {
    auto m = tiny_model();
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"target_modules\":[\"k_proj\"]}", s).ok());
    std::vector<param_ref> ps = adapter_set_params(s);
    ASSERT_EQ(ps.size(), 4u);
    EXPECT_EQ(ps[0].name, "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight");
    EXPECT_EQ(ps[0].shape, (std::vector<int64_t>{4, 32}));
    EXPECT_EQ(ps[1].name, "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight");
    EXPECT_EQ(ps[1].shape, (std::vector<int64_t>{16, 4}));
    EXPECT_EQ(ps[3].name, "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight");
}

TEST(target, exclusions_and_layers_that_match_nothing_are_errors) {
    // a layer the model does not have would silently adapt fewer layers than asked
    auto v = pick("{\"target_modules\":[\"q_proj\"],\"layers_to_transform\":[0, 99]}");
    ASSERT_TRUE(is_error(v));
    EXPECT_NE(v[0].find("layer 99"), std::string::npos) << v[0];
    EXPECT_NE(v[0].find("0..1"), std::string::npos) << v[0];
    EXPECT_TRUE(is_error(pick("{\"target_modules\":[\"q_proj\"],\"layers_to_transform\":-1}")));
    EXPECT_EQ(pick("{\"target_modules\":[\"q_proj\"],\"layers_to_transform\":[1]}").size(), 1u);
    // "all-linear" is a target_modules value; as an exclusion it is a regex matching nothing
    std::string hint;
    v = pick("{\"target_modules\":\"all-linear\",\"exclude_modules\":\"all-linear\"}", &hint);
    ASSERT_TRUE(is_error(v));
    EXPECT_NE(v[0].find("exclude_modules"), std::string::npos) << v[0];
    EXPECT_NE(hint.find("target_modules value only"), std::string::npos) << hint;
    EXPECT_TRUE(is_error(pick("{\"target_modules\":\"all-linear\",\"exclude_modules\":[\"qproj\"]}")));
    EXPECT_EQ(pick("{\"target_modules\":\"all-linear\",\"exclude_modules\":[\"q_proj\"]}").size(), 12u);
}
