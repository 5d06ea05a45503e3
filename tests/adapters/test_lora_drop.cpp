// LoRA-drop's own invariants (METHODS §10 (8)); the generic ones are rows of test_methods.cpp.
//  - the selection: I sums to 1 and the kept set is the minimal set reaching T, checked against
//    a hand-made table and a brute force over every subset;
//  - stage 1 through attach: the measured table satisfies the same, and the trainable count is
//    (|S_t| + 1) r (in + out) per type with a dropped module;
//  - sharing: the shared gradient equals the sum of the gradients of per-module copies tied in
//    value (an untied plain LoRA);
//  - files: the PEFT form loads as a plain LoRA with the shared factors under every module, the
//    native form loads back into the same sharing (tensors and logits bit for bit).
#include <cmath>
#include <filesystem>

#include "adapter_test_util.h"
#include "adapters/lora_drop.h"
#include "io/peft_format.h"
#include "testing.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

// The brute force: the smallest k such that some k modules reach T (independent of sorting).
size_t minimal_count(const std::vector<double> & I, double T) {
    const size_t n = I.size();
    size_t best = n;
    for (uint64_t mask = 1; mask < (1ull << n); mask++) {
        double s = 0.0;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (mask >> i & 1) {
                s += I[i];
                k++;
            }
        }
        if (s >= T && k < best) best = k;
    }
    return best;
}

void expect_minimal_kept(const std::vector<double> & I, const std::vector<uint8_t> & kept, double T) {
    double sum = 0.0, in = 0.0, min_in = 1e300, max_out = -1.0;
    size_t k = 0;
    for (size_t i = 0; i < I.size(); i++) {
        sum += I[i];
        if (kept[i]) {
            in += I[i];
            k++;
            min_in = std::min(min_in, I[i]);
        } else {
            max_out = std::max(max_out, I[i]);
        }
    }
    EXPECT_NEAR(sum, 1.0, 1e-12);
    EXPECT_TRUE(in >= T || k == I.size()) << "the kept set reaches T";
    EXPECT_LT(in - min_in, T) << "without its smallest member it would not";
    EXPECT_GE(min_in, max_out) << "the kept modules are the most important ones";
    if (k < I.size() || in >= T) EXPECT_EQ(k, minimal_count(I, T));
}

const char * LORA_DROP_STAGE1 = "{\"adapter\":\"lora_drop\",\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\","
                                "\"lora_drop_threshold\":0.6,\"lora_drop_fraction\":0.5,\"lora_drop_stage1_steps\":4}";

} // namespace

TEST(lora_drop, select_on_a_hand_made_table) {
    std::vector<double> I;
    std::vector<uint8_t> kept;
    // g = 1 4 2 3 -> I = .1 .4 .2 .3; sorted .4 .3 .2 .1
    ASSERT_TRUE(lora_drop_select({1, 4, 2, 3}, 0.65, I, kept).ok());
    EXPECT_EQ(I, (std::vector<double>{0.1, 0.4, 0.2, 0.3}));
    EXPECT_EQ(kept, (std::vector<uint8_t>{0, 1, 0, 1}));   // .4 + .3 = .7 >= .65
    ASSERT_TRUE(lora_drop_select({1, 4, 2, 3}, 0.75, I, kept).ok());
    EXPECT_EQ(kept, (std::vector<uint8_t>{0, 1, 1, 1}));   // .7 < .75 <= .9
    ASSERT_TRUE(lora_drop_select({1, 4, 2, 3}, 0.3, I, kept).ok());
    EXPECT_EQ(kept, (std::vector<uint8_t>{0, 1, 0, 0}));
    ASSERT_TRUE(lora_drop_select({5, 5, 0}, 0.5, I, kept).ok());
    EXPECT_EQ(kept, (std::vector<uint8_t>{1, 0, 0}));      // ties: target order
}

TEST(lora_drop, select_is_the_minimal_set_by_brute_force) {
    for (uint64_t seed = 1; seed <= 20; seed++) {
        std::vector<float> u = peft::testing::fixed_vector(9, seed, 1.0f);
        std::vector<double> g;
        for (float x : u) g.push_back(std::fabs((double) x) + 1e-3);
        for (double T : {0.3, 0.5, 0.9, 0.99}) {
            std::vector<double> I;
            std::vector<uint8_t> kept;
            ASSERT_TRUE(lora_drop_select(g, T, I, kept).ok());
            expect_minimal_kept(I, kept, T);
        }
    }
}

TEST(lora_drop, select_refuses_bad_tables) {
    std::vector<double> I;
    std::vector<uint8_t> kept;
    EXPECT_FALSE(lora_drop_select({0, 0, 0}, 0.9, I, kept).ok());
    EXPECT_FALSE(lora_drop_select({1, NAN, 2}, 0.9, I, kept).ok());
    EXPECT_FALSE(lora_drop_select({1, -1, 2}, 0.9, I, kept).ok());
}

TEST(lora_drop, stage1_measures_a_normalised_table_and_keeps_the_minimal_prefix) {
    auto m = tiny_model(7);
    adapter_set s;
    const status st = attach(*m, LORA_DROP_STAGE1, s);
    ASSERT_TRUE(st.ok()) << st.message;
    const auto & ld = dynamic_cast<const lora_drop_method &>(*s.method);
    ASSERT_EQ(ld.importance.size(), s.targets.size());
    std::vector<uint8_t> kept;
    for (const target_info & t : s.targets) kept.push_back(std::find(ld.shared_paths.begin(), ld.shared_paths.end(), t.path) == ld.shared_paths.end());
    expect_minimal_kept(ld.importance, kept, 0.6);
    ASSERT_FALSE(ld.shared_paths.empty()) << "T = 0.6 of 14 modules should drop some";
    // (|S_t| + 1) r (in + out) per type with a dropped module, |S_t| r (in + out) otherwise
    int64_t want = 0;
    std::vector<std::string> types_with_drop;
    for (size_t i = 0; i < s.targets.size(); i++) {
        const target_info & t = s.targets[i];
        const std::string type = t.path.substr(t.path.rfind('.') + 1);
        const bool first_drop = !kept[i] && std::find(types_with_drop.begin(), types_with_drop.end(), type) == types_with_drop.end();
        if (first_drop) types_with_drop.push_back(type);
        if (kept[i] || first_drop) want += 4 * (t.in_features + t.out_features);
    }
    int64_t got = 0;
    for (const optim_param & p : adapter_optim_params(s)) got += p.n;
    EXPECT_EQ(got, want);
    std::vector<module_table> tables;
    s.method->tables(tables);
    ASSERT_EQ(tables.size(), 1u);
    EXPECT_EQ(tables[0].rows.size(), s.targets.size());
}

TEST(lora_drop, stage1_needs_data_and_checks_its_keys) {
    auto m = tiny_model(7);
    adapter_set s;
    config c(LORA_DROP_STAGE1);
    status st = adapters_attach(*m, c.root(), 1, s);   // no calibration source
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("stage 1"), std::string::npos) << st.message;
    for (const char * bad : {"{\"adapter\":\"lora_drop\",\"lora_drop_threshold\":1.5}", "{\"adapter\":\"lora_drop\",\"lora_drop_fraction\":0}",
                             "{\"adapter\":\"lora_drop\",\"lora_drop_stage1_steps\":-1}", "{\"adapter\":\"lora_drop\",\"use_dora\":true}",
                             "{\"adapter\":\"lora_drop\",\"lora_drop_shared\":[\"model.layers.9.self_attn.q_proj\"]}"}) {
        auto mm = tiny_model(7);
        adapter_set t;
        st = attach(*mm, bad, t);
        EXPECT_FALSE(st.ok()) << bad;
        EXPECT_NE(st.message.find("lora_drop"), std::string::npos) << st.message;
    }
}

// d loss / d shared = sum over the sharing modules of d loss / d (their own copy)
TEST(lora_drop, shared_gradient_is_the_sum_over_the_sharing_modules) {
    auto m = tiny_model(7);
    adapter_set s;
    // every q_proj and v_proj shared (2 layers each), k_proj kept
    const char * cfg = "{\"adapter\":\"lora_drop\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"k_proj\",\"v_proj\"],"
                       "\"lora_drop_shared\":[\"model.layers.0.self_attn.q_proj\",\"model.layers.1.self_attn.q_proj\","
                       "\"model.layers.0.self_attn.v_proj\",\"model.layers.1.self_attn.v_proj\"]}";
    ASSERT_TRUE(attach(*m, cfg, s).ok());
    std::vector<param_ref> ps = adapter_set_params(s);
    ASSERT_EQ(ps.size(), 8u);   // layer 0 q, k, v (q, v the shared leads), layer 1 k
    randomize(ps, 21, 0.05f, true);
    // the untied copy: a plain LoRA with every module's factors equal to what it uses
    auto u = tiny_model(7);
    adapter_set plain;
    ASSERT_TRUE(attach(*u, "{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"k_proj\",\"v_proj\"]}", plain).ok());
    for (size_t i = 0; i < plain.modules.size(); i++) {
        auto & dst = dynamic_cast<lora_module &>(*plain.modules[i]);
        std::vector<param_ref> mine;
        s.modules[i]->exported(mine);   // the factors module i computes with
        ASSERT_EQ(mine.size(), 2u);
        dst.A.assign(mine[0].value, mine[0].value + dst.A.size());
        dst.B.assign(mine[1].value, mine[1].value + dst.B.size());
    }
    const batch_data d = make_batch(m->hp.n_vocab);
    for (auto * mm : {m.get(), u.get()}) {
        adapter_set & set = mm == m.get() ? s : plain;
        adapters_set_training(set, false);
        zero_grads(adapter_set_params(set));
        llama_state st;
        ASSERT_TRUE(llama_state_init(st, *mm, d.B, d.T, false).ok());
        llama_forward(*mm, st, d.batch(), 1.0f);
        llama_backward(*mm, st, d.batch());
    }
    // module order: layer 0 q k v, layer 1 q k v
    auto grads = [&](size_t i) { return &dynamic_cast<lora_module &>(*plain.modules[i]); };
    for (size_t lead : {0u, 2u}) {
        auto & L = dynamic_cast<lora_module &>(*s.modules[lead]);
        const lora_module & a = *grads(lead), & b = *grads(lead + 3);
        std::vector<float> wantA(a.dA.size()), wantB(a.dB.size());
        for (size_t j = 0; j < wantA.size(); j++) wantA[j] = a.dA[j] + b.dA[j];
        for (size_t j = 0; j < wantB.size(); j++) wantB[j] = a.dB[j] + b.dB[j];
        EXPECT_LT(rel_diff(L.dA, wantA), 1e-5) << lead;
        EXPECT_LT(rel_diff(L.dB, wantB), 1e-5) << lead;
        EXPECT_GT(rel_diff(a.dB, wantB), 1e-2) << "both layers contribute";
    }
    // the kept k_proj is its own
    EXPECT_LT(rel_diff(dynamic_cast<lora_module &>(*s.modules[1]).dB, grads(1)->dB), 1e-5);
}

TEST(lora_drop, peft_form_is_plain_lora_and_native_form_keeps_the_sharing) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, LORA_DROP_STAGE1, s).ok());
    randomize_trainable(adapter_set_params(s), 31);
    adapters_set_training(s, false);
    const batch_data d = make_batch(m->hp.n_vocab);
    std::vector<float> before;
    forward_logits(*m, d, before);
    const std::string dir = peft::testing::temp_dir("lora_drop_files");
    ASSERT_TRUE(adapter_save(dir, s, "").ok());
    EXPECT_TRUE(std::filesystem::exists(dir + "/lora_drop_importance.tsv"));

    // PEFT form: peft_type LORA, one lora_A / lora_B per module, the shared ones equal
    auto fresh = tiny_model(7);
    adapter_set plain;
    status st = adapter_load(dir, *fresh, plain);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_STREQ(plain.method->name(), "lora");
    EXPECT_EQ(plain.modules.size(), s.modules.size());
    const auto & ld = dynamic_cast<const lora_drop_method &>(*s.method);
    for (size_t i = 0; i < s.targets.size(); i++) {
        std::vector<param_ref> used;
        s.modules[i]->exported(used);
        const auto & p = dynamic_cast<const lora_module &>(*plain.modules[i]);
        EXPECT_EQ(p.A, std::vector<float>(used[0].value, used[0].value + p.A.size())) << s.targets[i].path;
        EXPECT_EQ(p.B, std::vector<float>(used[1].value, used[1].value + p.B.size())) << s.targets[i].path;
    }
    std::vector<float> peft_logits;
    forward_logits(*fresh, d, peft_logits);
    EXPECT_EQ(peft_logits, before);

    // native form: the same sharing, tensors and logits bit for bit
    auto fresh2 = tiny_model(7);
    adapter_set native;
    st = adapter_load(dir + "/" + ADAPTER_NATIVE_DIR, *fresh2, native);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_STREQ(native.method->name(), "lora_drop");
    const auto & nd = dynamic_cast<const lora_drop_method &>(*native.method);
    EXPECT_EQ(nd.shared_paths, ld.shared_paths);
    EXPECT_EQ(nd.importance.size(), ld.importance.size());
    std::vector<param_ref> a = adapter_set_params(native), b = adapter_set_params(s);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); i++) EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(snapshot(a), snapshot(b));
    std::vector<float> native_logits;
    forward_logits(*fresh2, d, native_logits);
    EXPECT_EQ(native_logits, before);
}
