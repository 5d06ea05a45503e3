// LoRA-drop's own invariants (METHODS §10 (8)); the generic ones are rows of test_methods.cpp.
//  - the selection: I sums to 1 and the kept set is the minimal set reaching T, checked against
//    a hand-made table and a brute force over every subset;
//  - stage 1 through attach: the measured table satisfies the same, and the trainable count is
//    (|S_t| + 1) r (in + out) per type with a dropped module;
//  - sharing: the shared gradient equals the sum of the gradients of per-module copies tied in
//    value (an untied plain LoRA);
//  - files: the PEFT form loads as a plain LoRA with the shared factors under every module, the
//    native form loads back into the same sharing (tensors and logits bit for bit);
//  - against PyTorch (tests/fixtures/lora_drop, tools/ref_lora_drop.py): stage 1's g, I and kept
//    set on the llama_gqa model, from the lora_parity adapter, over padded and packed rows.
#include <cmath>
#include <cstring>
#include <filesystem>

#include "adapter_test_util.h"
#include "adapters/lora_drop.h"
#include "fixture_util.h"
#include "io/peft_format.h"
#include "io/safetensors.h"
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
    if (k < I.size() || in >= T) {
        EXPECT_EQ(k, minimal_count(I, T));
    }
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

// ---- PyTorch parity (tools/ref_lora_drop.py) --------------------------------------------------

namespace {

// Tensor `name` of f, stored as `dt` (I32 or F64: no conversion), element for element.
template <typename T>
std::vector<T> fixture_values(const safetensors_file & f, const std::string & name, safetensors_dtype dt) {
    const tensor_info * t = f.find(name);
    EXPECT_TRUE(t && t->st_dtype == dt && t->n_bytes == t->n_elements * sizeof(T)) << name;
    if (!t || t->st_dtype != dt) return {};
    std::vector<T> v((size_t) t->n_elements);
    std::memcpy(v.data(), t->data, (size_t) t->n_bytes);
    return v;
}

// The fixture's 5 rows (padding: segment 0) as the data loader makes them.
data_rows fixture_rows(const safetensors_file & ref) {
    data_rows d;
    const tensor_info * t = ref.find("rows.input_ids");
    EXPECT_TRUE(t && t->shape.size() == 2);
    if (!t) return d;
    d.n_rows = t->shape[0];
    d.T = t->shape[1];
    d.input_ids = fixture_values<int32_t>(ref, "rows.input_ids", SAFETENSORS_DTYPE_I32);
    d.labels = fixture_values<int32_t>(ref, "rows.labels", SAFETENSORS_DTYPE_I32);
    d.position_ids = fixture_values<int32_t>(ref, "rows.position_ids", SAFETENSORS_DTYPE_I32);
    d.segment_ids = fixture_values<int32_t>(ref, "rows.segment_ids", SAFETENSORS_DTYPE_I32);
    return d;
}

// Stage 1 on the fixture: the probes start from lora_parity/initial_adapter; then either the
// generator's probe training (calibrate_train_rows: batches of 2, AdamW lr 1e-2, weight decay
// 0.01, clipping at 1) or, with train = false, only the measuring pass over the sample (rows 0..2).
struct fixture_stage1 : calibration_source {
    llama_model &     model;
    data_rows         rows;
    safetensors_file  init;
    bool              train = true;
    fixture_stage1(llama_model & m, const safetensors_file & ref, bool tr) : model(m), rows(fixture_rows(ref)), train(tr) {
        EXPECT_TRUE(safetensors_open(peft::testing::source_path("tests/fixtures/lora_parity/initial_adapter/adapter_model.safetensors"), init).ok());
    }
    status run(const std::string &, int64_t, const target_info *, int64_t, calibration_observer &) override {
        return make_error(PEFT_STATUS_CONFIG, "test", "lora_drop asks for train_probe only");
    }
    status train_probe(double fraction, int64_t steps, adapter_module * const * mods, const target_info * targets, int64_t n,
                       calibration_observer & obs) override {
        for (int64_t i = 0; i < n; i++) {
            auto & p = dynamic_cast<lora_module &>(*mods[i]);
            const std::string key = "base_model.model." + targets[i].path;
            p.A = peft::testing::fixture_tensor(init, key + ".lora_A.weight");
            p.B = peft::testing::fixture_tensor(init, key + ".lora_B.weight");
        }
        if (!train) return calibrate_rows(model, rows, 3, 2, targets, n, obs, mods);
        train_config c;
        c.opt.lr = 1e-2f;
        c.opt.weight_decay = 0.01f;
        c.max_grad_norm = 1.0f;
        return calibrate_train_rows(model, rows, fraction, 2, steps, c, mods, targets, n, obs);
    }
};

const char * LORA_DROP_FIXTURE = "{\"adapter\":\"lora_drop\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"k_proj\","
                                 "\"v_proj\",\"o_proj\",\"gate_proj\",\"up_proj\",\"down_proj\"],\"lora_drop_fraction\":0.45,"
                                 "\"lora_drop_stage1_steps\":3,\"lora_drop_threshold\":0.9}";

// max over i of |a_i - b_i| / |b_i|
double worst_rel(const std::vector<double> & a, const std::vector<double> & b) {
    EXPECT_EQ(a.size(), b.size());
    double w = 0.0;
    for (size_t i = 0; i < a.size() && i < b.size(); i++) w = std::max(w, std::fabs(a[i] - b[i]) / std::fabs(b[i]));
    return w;
}

// Stage 1 through adapters_attach on the fixture model; the measured method.
const lora_drop_method & fixture_attach(llama_model & m, const safetensors_file & ref, bool train, adapter_set & s) {
    fixture_stage1 src(m, ref, train);
    config c(LORA_DROP_FIXTURE);
    const status st = adapters_attach(m, c.root(), 1, s, false, &src);
    EXPECT_TRUE(st.ok()) << st.message;
    return dynamic_cast<const lora_drop_method &>(*s.method);
}

} // namespace

// g of the starting adapter, measured alone: the module inputs of the adapted model, the sum over
// non-padding tokens only (the padding rows and the tails of rows 1 and 2 left out), prompts in.
TEST(lora_drop_parity, importance_of_a_given_lora_matches_pytorch) {
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(peft::testing::source_path("tests/fixtures/lora_drop/reference.safetensors"), ref).ok());
    llama_model m;
    ASSERT_TRUE(llama_load(m, peft::testing::source_path("tests/fixtures/llama_gqa"), false).ok());
    adapter_set s;
    const lora_drop_method & ld = fixture_attach(m, ref, false, s);
    const std::vector<double> want = fixture_values<double>(ref, "g0", SAFETENSORS_DTYPE_F64);
    ASSERT_EQ(ld.g.size(), want.size());
    const double w = worst_rel(ld.g, want);
    EXPECT_LT(w, 1e-5);
    EXPECT_GT(worst_rel(ld.g, fixture_values<double>(ref, "g_with_padding", SAFETENSORS_DTYPE_F64)), 1e-2) << "padding matters here";
    std::printf("lora_drop parity: g of the given LoRA worst rel %.3g\n", w);
}

// The whole of stage 1: the sample (ceil(0.45 * 5) = 3 rows), 3 probe-training steps, the table,
// its normalisation and the kept set at T = 0.9 (through prepare) and at T = 0.5.
TEST(lora_drop_parity, stage1_table_and_kept_set_match_pytorch) {
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(peft::testing::source_path("tests/fixtures/lora_drop/reference.safetensors"), ref).ok());
    llama_model m;
    ASSERT_TRUE(llama_load(m, peft::testing::source_path("tests/fixtures/llama_gqa"), false).ok());
    adapter_set s;
    const lora_drop_method & ld = fixture_attach(m, ref, true, s);
    const std::vector<double> g = fixture_values<double>(ref, "g", SAFETENSORS_DTYPE_F64);
    const std::vector<double> I = fixture_values<double>(ref, "importance", SAFETENSORS_DTYPE_F64);
    ASSERT_EQ(ld.g.size(), g.size());
    const double wg = worst_rel(ld.g, g), wi = worst_rel(ld.importance, I);
    EXPECT_LT(wg, 1e-5);
    EXPECT_LT(wi, 1e-5);
    EXPECT_GT(worst_rel(fixture_values<double>(ref, "g0", SAFETENSORS_DTYPE_F64), g), 1e-2) << "the probe training matters here";
    double sum = 0.0;
    for (double v : ld.importance) sum += v;
    EXPECT_NEAR(sum, 1.0, 1e-12);
    EXPECT_TRUE(ld.probes.empty()) << "stage 1's LoRAs are released after the selection";
    const std::vector<int32_t> kept90 = fixture_values<int32_t>(ref, "kept.0.9", SAFETENSORS_DTYPE_I32);
    ASSERT_EQ(kept90.size(), s.targets.size());
    for (size_t i = 0; i < s.targets.size(); i++) {
        const bool shared = std::find(ld.shared_paths.begin(), ld.shared_paths.end(), s.targets[i].path) != ld.shared_paths.end();
        EXPECT_EQ(!shared, kept90[i] == 1) << s.targets[i].path;
    }
    std::vector<double> I5;
    std::vector<uint8_t> kept5;
    ASSERT_TRUE(lora_drop_select(ld.g, 0.5, I5, kept5).ok());
    const std::vector<int32_t> want5 = fixture_values<int32_t>(ref, "kept.0.5", SAFETENSORS_DTYPE_I32);
    ASSERT_EQ(want5.size(), kept5.size());
    for (size_t i = 0; i < kept5.size(); i++) EXPECT_EQ(kept5[i], (uint8_t) want5[i]) << s.targets[i].path;
    std::printf("lora_drop parity: stage-1 g worst rel %.3g, I worst rel %.3g, %zu of %zu modules shared at T 0.9\n", wg, wi,
                ld.shared_paths.size(), s.targets.size());
}
