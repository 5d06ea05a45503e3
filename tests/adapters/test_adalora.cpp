// AdaLoRA module and method (METHODS §11): the cubic budget schedule against its closed form and
// METHODS' worked value, the importance EMA against a hand computation, masks that keep exactly
// the budget (the lowest triplet scores go), the orthogonal penalty's value and gradient against
// a double reference and finite differences, configuration errors, the truncated save (PEFT
// resize_state_dict_by_rank_pattern) reloading to the same outputs, the saved config against
// Python's json.dumps, and whole-path parity (losses, tensors, masks) with the PyTorch reference
// in tests/fixtures/adalora_parity (tools/ref_adalora.py).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "adapter_test_util.h"
#include "adapters/adalora.h"
#include "fixture_util.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "train/trainer.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

std::string fixture(const std::string & rel) { return peft::testing::source_path("tests/fixtures/" + rel); }

std::string read_text(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

adalora_method & adalora_of(adapter_set & s) { return static_cast<adalora_method &>(*s.method); }

std::vector<adalora_module *> modules_of(adapter_set & s) {
    std::vector<adalora_module *> out;
    for (auto & m : s.modules) out.push_back(static_cast<adalora_module *>(m.get()));
    return out;
}

const char * const TINY_CFG =
    "{\"adapter\":\"adalora\",\"init_r\":4,\"target_r\":2,\"total_step\":10,\"tinit\":2,\"tfinal\":3,\"deltaT\":2,"
    "\"target_modules\":\"all-linear\"}";

// distinct positive importance statistics, as after some training
void fill_importance(adalora_module & m, uint64_t seed) {
    for (std::vector<float> * v : {&m.ipt_A, &m.unc_A, &m.ipt_E, &m.unc_E, &m.ipt_B, &m.unc_B}) {
        peft::testing::fixed_fill(v->data(), (int64_t) v->size(), ++seed, 1.0f);
        for (float & x : *v) x = std::fabs(x) + 1e-3f;
    }
}

// ||M - I||_F in double, M = P P^T (rows) or P^T P, written independently of adalora.cpp
double penalty_ref(const std::vector<double> & P, int64_t rows, int64_t cols, bool of_rows) {
    const int64_t r = of_rows ? rows : cols;
    double f2 = 0;
    for (int64_t a = 0; a < r; a++) {
        for (int64_t b = 0; b < r; b++) {
            double m = 0;
            const int64_t n = of_rows ? cols : rows;
            for (int64_t k = 0; k < n; k++) m += of_rows ? P[a * cols + k] * P[b * cols + k] : P[k * cols + a] * P[k * cols + b];
            const double d = m - (a == b ? 1.0 : 0.0);
            f2 += d * d;
        }
    }
    return std::sqrt(f2);
}

} // namespace

// ---- pure pieces -------------------------------------------------------------------------------

TEST(adalora, budget_schedule_matches_the_cubic_closed_form) {
    adalora_schedule s;
    s.total_step = 100;
    s.tinit = 10;
    s.tfinal = 20;
    s.deltaT = 3;
    const int64_t b0 = 120, bT = 80;
    bool mask = true;
    // METHODS §11 (8): floor(80 + 40 (1 - 40/70)^3) = floor(83.15) = 83
    EXPECT_EQ(adalora_budget(s, b0, bT, 50, mask), 83);
    int64_t prev = b0;
    for (int64_t t = 0; t <= 110; t++) {
        const int64_t b = adalora_budget(s, b0, bT, t, mask);
        EXPECT_LE(b, prev) << "t " << t;   // non-increasing
        prev = b;
        if (t <= s.tinit) {
            EXPECT_EQ(b, b0) << t;
            EXPECT_FALSE(mask) << t;
        } else if (t > s.total_step - s.tfinal) {
            EXPECT_EQ(b, bT) << t;
            EXPECT_TRUE(mask) << t;
        } else {
            const long double x = 1.0L - (long double) (t - 10) / 70.0L;
            EXPECT_EQ(b, (int64_t) std::floor(80.0L + 40.0L * x * x * x)) << t;
            EXPECT_EQ(mask, t % 3 == 0) << t;
        }
    }
    EXPECT_EQ(adalora_budget(s, b0, bT, 10, mask), b0);   // b(tinit) = b0
    EXPECT_EQ(adalora_budget(s, b0, bT, 80, mask), bT);   // b(T - tfinal) = bT
}

// two steps of a synthetic gradient, beta1 0.8, beta2 0.6, worked by hand:
//   step 1: I = (1, 3)  ipt = (0.2, 0.6)    unc = 0.4 |I - ipt| = (0.32, 0.96)
//   step 2: I = (2, 1)  ipt = (0.56, 0.68)  unc = 0.6 unc + 0.4 |I - ipt| = (0.768, 0.704)
TEST(adalora, importance_ema_matches_a_hand_computation) {
    const float p[2] = {2.0f, -1.0f};
    const float g1[2] = {0.5f, 3.0f}, g2[2] = {1.0f, -1.0f};
    float ipt[2] = {0, 0}, unc[2] = {0, 0};
    adalora_ema_update(p, g1, 2, 0.8, 0.6, ipt, unc);
    EXPECT_NEAR(ipt[0], 0.2, 1e-6);
    EXPECT_NEAR(ipt[1], 0.6, 1e-6);
    EXPECT_NEAR(unc[0], 0.32, 1e-6);
    EXPECT_NEAR(unc[1], 0.96, 1e-6);
    adalora_ema_update(p, g2, 2, 0.8, 0.6, ipt, unc);
    EXPECT_NEAR(ipt[0], 0.56, 1e-6);
    EXPECT_NEAR(ipt[1], 0.68, 1e-6);
    EXPECT_NEAR(unc[0], 0.768, 1e-6);
    EXPECT_NEAR(unc[1], 0.704, 1e-6);
}

TEST(adalora, threshold_is_the_kth_smallest) {
    const std::vector<float> v = {5, 1, 4, 2, 3};
    EXPECT_EQ(adalora_threshold(v, 1), 1.0f);
    EXPECT_EQ(adalora_threshold(v, 3), 3.0f);
    EXPECT_EQ(adalora_threshold(v, 5), 5.0f);
    EXPECT_TRUE(std::isinf(adalora_threshold(v, 0)));
}

TEST(adalora, orthogonal_penalty_value_and_gradient) {
    for (bool of_rows : {true, false}) {
        const int64_t rows = of_rows ? 3 : 6, cols = of_rows ? 6 : 3;
        std::vector<float> P((size_t) (rows * cols));
        peft::testing::fixed_fill(P.data(), rows * cols, of_rows ? 5 : 6, 0.6f);
        std::vector<double> Pd(P.begin(), P.end());
        std::vector<float> grad(P.size(), 0.0f);
        const double coef = 0.7;
        const double f = adalora_orth_penalty(P.data(), rows, cols, of_rows, grad.data(), coef);
        EXPECT_NEAR(f, penalty_ref(Pd, rows, cols, of_rows), 1e-12);
        for (size_t k = 0; k < P.size(); k++) {   // central differences of the double reference
            const double e = 1e-6;
            std::vector<double> hi = Pd, lo = Pd;
            hi[k] += e;
            lo[k] -= e;
            const double fd = coef * (penalty_ref(hi, rows, cols, of_rows) - penalty_ref(lo, rows, cols, of_rows)) / (2 * e);
            EXPECT_NEAR(grad[k], fd, 1e-5 * std::max(1.0, std::fabs(fd))) << (of_rows ? "A " : "B ") << k;
        }
    }
    // R = 0 for orthonormal rows of A (and columns of B): signed unit vectors
    std::vector<float> A = {0, -1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1};   // [3,4]
    std::vector<float> g(A.size(), 0.0f);
    EXPECT_EQ(adalora_orth_penalty(A.data(), 3, 4, true, g.data(), 1.0), 0.0);
    for (float x : g) EXPECT_EQ(x, 0.0f);
    const std::vector<float> B = {0, 1, 0, -1, 0, 0, 0, 0, 0, 0, 0, 1};   // A^T [4,3]: orthonormal columns
    EXPECT_EQ(adalora_orth_penalty(B.data(), 4, 3, false, nullptr, 1.0), 0.0);
}

// The modules' regularize() sum is orth_reg_weight times the mean over all A and B of the penalty.
TEST(adalora, regulariser_is_the_mean_over_matrices) {
    auto m = tiny_model();
    adapter_set s;
    ASSERT_TRUE(attach(*m, TINY_CFG, s).ok());
    randomize_trainable(adapter_set_params(s), 3);
    zero_grads(adapter_set_params(s));
    double want = 0, got = 0;
    int64_t n = 0;
    for (adalora_module * mod : modules_of(s)) {
        std::vector<double> A(mod->A.begin(), mod->A.end()), B(mod->B.begin(), mod->B.end());
        want += penalty_ref(A, mod->R, mod->t.in_features, true) + penalty_ref(B, mod->t.out_features, mod->R, false);
        n += 2;
        got += mod->regularize(1.0f);
    }
    want = 0.5 * want / (double) n;   // orth_reg_weight 0.5 (PEFT's default)
    EXPECT_NEAR(got, want, 1e-5 * want);
    bool moved = false;
    for (const param_ref & p : adapter_set_params(s)) {
        if (p.name.find("lora_E") != std::string::npos) {
            for (int64_t i = 0; i < numel(p); i++) EXPECT_EQ(p.grad[i], 0.0f);   // E is not penalised
        } else {
            for (int64_t i = 0; i < numel(p); i++) moved = moved || p.grad[i] != 0.0f;
        }
    }
    EXPECT_TRUE(moved);
}

// ---- allocation ----------------------------------------------------------------------------------

TEST(adalora, triplet_score_and_masks_keep_exactly_the_budget) {
    auto m = tiny_model();
    adapter_set s;
    ASSERT_TRUE(attach(*m, TINY_CFG, s).ok());
    std::vector<adalora_module *> mods = modules_of(s);
    ASSERT_EQ(mods.size(), 14u);
    uint64_t seed = 50;
    for (adalora_module * mod : mods) fill_importance(*mod, seed += 10);
    // one module's score by hand (double): s(E_i) + mean_j s(A_ij) + mean_o s(B_oi)
    {
        const adalora_module & q = *mods[3];
        std::vector<float> S((size_t) q.R);
        q.triplet_scores(S.data());
        for (int64_t i = 0; i < q.R; i++) {
            double a = 0, b = 0;
            for (int64_t j = 0; j < q.t.in_features; j++) a += (double) q.ipt_A[(size_t) (i * q.t.in_features + j)] * q.unc_A[(size_t) (i * q.t.in_features + j)];
            for (int64_t o = 0; o < q.t.out_features; o++) b += (double) q.ipt_B[(size_t) (o * q.R + i)] * q.unc_B[(size_t) (o * q.R + i)];
            const double want = (double) q.ipt_E[(size_t) i] * q.unc_E[(size_t) i] + a / (double) q.t.in_features + b / (double) q.t.out_features;
            EXPECT_NEAR(S[(size_t) i], want, 1e-6 * want) << i;
        }
    }
    for (int64_t budget : {55, 40, 28, 9}) {
        for (adalora_module * mod : mods) std::fill(mod->E.begin(), mod->E.end(), 1.0f);
        adalora_of(s).mask_to_budget(mods.data(), (int64_t) mods.size(), budget);
        int64_t kept = 0, nonzero = 0;
        float max_masked = -1, min_kept = 1e30f;
        for (adalora_module * mod : mods) {
            std::vector<float> S((size_t) mod->R);
            mod->triplet_scores(S.data());
            for (int64_t i = 0; i < mod->R; i++) {
                EXPECT_EQ(mod->keep[(size_t) i] != 0, mod->E[(size_t) i] != 0.0f);
                kept += mod->keep[(size_t) i];
                nonzero += mod->E[(size_t) i] != 0.0f;
                if (mod->keep[(size_t) i]) min_kept = std::min(min_kept, S[(size_t) i]);
                else max_masked = std::max(max_masked, S[(size_t) i]);
            }
            EXPECT_TRUE(mod->patterned);
        }
        EXPECT_EQ(kept, budget);
        EXPECT_EQ(nonzero, budget);
        EXPECT_LT(max_masked, min_kept) << "the lowest scores are the ones masked";
    }
}

// The hooks through train_step: no mask during warm-up, the budget during the cubic phase, the
// frozen pattern (and reset EMAs) after total_step - tfinal.
TEST(adalora, the_allocator_follows_the_schedule_through_train_step) {
    auto m = tiny_model();
    adapter_set s;
    ASSERT_TRUE(attach(*m, TINY_CFG, s).ok());
    std::vector<adalora_module *> mods = modules_of(s);
    for (adalora_module * mod : mods) peft::testing::fixed_fill(mod->E.data(), mod->R, 7, 0.3f);
    const batch_data d = make_batch(m->hp.n_vocab);
    peft::testing::parity_batch pb;
    pb.B = d.B;
    pb.T = d.T;
    pb.tok = d.tok;
    pb.tgt = d.tgt;
    std::vector<int64_t> kept;
    std::vector<std::vector<uint8_t>> pattern_at_7;
    peft::testing::trajectory_train(*m, s, pb, 10, [&](int64_t step) {
        int64_t k = 0;
        for (adalora_module * mod : mods) {
            for (float e : mod->E) k += e != 0.0f;
        }
        kept.push_back(k);
        if (step == 7) {
            for (adalora_module * mod : mods) {
                pattern_at_7.push_back(mod->keep);
                for (float v : mod->ipt_A) EXPECT_EQ(v, 0.0f);   // EMAs reset at the final allocation
            }
        }
    });
    ASSERT_EQ(kept.size(), 10u);
    // b0 = 56, bT = 28: t = 4 -> floor(28 + 28 (1 - 2/5)^3) = 34, t = 6 -> 28, t >= 7 -> 28
    EXPECT_EQ(kept[0], 56);
    EXPECT_EQ(kept[4], 34);
    EXPECT_EQ(kept[6], 28);
    for (int64_t t = 7; t < 10; t++) EXPECT_EQ(kept[(size_t) t], 28) << t;
    for (size_t i = 0; i < mods.size(); i++) EXPECT_EQ(mods[i]->keep, pattern_at_7[i]) << "the pattern is frozen after t = 7";
}

// ---- configuration -----------------------------------------------------------------------------

TEST(adalora, config_errors_name_the_key) {
    auto m = tiny_model();
    struct bad_case { const char * cfg; const char * key; };
    const bad_case bad[] = {
        {"{\"adapter\":\"adalora\",\"init_r\":4,\"target_r\":5,\"total_step\":10}", "target_r"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"tinit\":6,\"tfinal\":4}", "tinit"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"tinit\":0,\"tfinal\":10}", "tfinal"},
        {"{\"adapter\":\"adalora\"}", "total_step"},
        {"{\"adapter\":\"adalora\",\"total_step\":0}", "total_step"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"deltaT\":0}", "deltaT"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"beta1\":1.0}", "beta1"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"beta2\":0}", "beta2"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"orth_reg_weight\":0}", "orth_reg_weight"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"init_r\":0}", "init_r"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"tinit\":-1}", "tinit"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"lora_dropout\":1.5}", "lora_dropout"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"use_dora\":true}", "use_dora"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"init_lora_weights\":\"pissa\"}", "init_lora_weights"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"rank_pattern\":{\"q_proj\":4}}", "rank_pattern"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"init_r\":2,\"target_r\":1,\"rank_pattern\":{\"model.layers.0.self_attn.q_proj.lora_E\":[true]}}",
         "rank_pattern"},
        {"{\"adapter\":\"adalora\",\"total_step\":10,\"init_r\":2,\"target_r\":1,\"rank_pattern\":{\"model.layers.9.self_attn.q_proj.lora_E\":[true,false]}}",
         "rank_pattern"},
    };
    for (const bad_case & c : bad) {
        adapter_set fresh;
        const status st = attach(*m, c.cfg, fresh);
        EXPECT_EQ(st.code, PEFT_STATUS_CONFIG) << c.cfg << " -> " << st.message;
        EXPECT_NE(st.message.find(c.key), std::string::npos) << c.cfg << " -> " << st.message;
        // the schedule errors say what to change (the others say what value is expected)
        if (&c < bad + 4) {
            EXPECT_FALSE(st.hint.empty()) << c.cfg;
        }
    }
    adapter_set s;
    EXPECT_TRUE(attach(*m, "{\"peft_type\":\"ADALORA\",\"total_step\":10,\"init_lora_weights\":true}", s).ok());
    EXPECT_STREQ(s.method->name(), "adalora");
}

// ---- files -------------------------------------------------------------------------------------

// The config we write is what Python's json.dumps wrote for the same AdaLoraConfig (the fixture)
TEST(adalora, saved_config_is_peft_0_18_form) {
    auto m = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*m, fixture("llama_gqa"), false).ok());
    adapter_set s;
    const status st = adapter_load(fixture("adalora_parity/initial_adapter"), *m, s);
    ASSERT_TRUE(st.ok()) << st.message << " " << st.hint;
    const std::string dir = peft::testing::temp_dir("adalora_config");
    ASSERT_TRUE(adapter_save(dir, s, "peft.cpp/tests/fixtures/llama_gqa").ok());
    EXPECT_EQ(read_text(dir + "/adapter_config.json"), read_text(fixture("adalora_parity/initial_adapter/adapter_config.json")));
}

// After an allocation the file holds only the kept ranks and rank_pattern; loading it back
// (modules shaped by the pattern, scale still alpha/init_r) gives the same model, and saving the
// loaded one writes the same files again. One module loses every rank (PEFT allows r = 0).
TEST(adalora, truncated_save_then_load_gives_the_same_outputs) {
    auto m = tiny_model(7);
    const batch_data d = make_batch(m->hp.n_vocab);
    adapter_set s;
    ASSERT_TRUE(attach(*m, TINY_CFG, s).ok());
    randomize_trainable(adapter_set_params(s), 21);
    adapters_set_training(s, false);
    std::vector<adalora_module *> mods = modules_of(s);
    uint64_t seed = 300;
    for (adalora_module * mod : mods) fill_importance(*mod, seed += 10);
    for (std::vector<float> * v : {&mods[5]->ipt_A, &mods[5]->ipt_E, &mods[5]->ipt_B}) std::fill(v->begin(), v->end(), 0.0f);
    adalora_of(s).mask_to_budget(mods.data(), (int64_t) mods.size(), 28);
    EXPECT_EQ(mods[5]->kept(), 0);
    std::vector<float> before, after;
    forward_logits(*m, d, before);
    const std::string dir = peft::testing::temp_dir("adalora_truncated");
    ASSERT_TRUE(adapter_save(dir, s, "").ok());

    safetensors_file f;
    ASSERT_TRUE(safetensors_open(dir + "/adapter_model.safetensors", f).ok());
    for (adalora_module * mod : mods) {
        const std::string pre = "base_model.model." + mod->t.path + ".";
        const tensor_info * a = f.find(pre + "lora_A");
        const tensor_info * e = f.find(pre + "lora_E");
        const tensor_info * b = f.find(pre + "lora_B");
        ASSERT_TRUE(a && e && b) << pre;
        EXPECT_EQ(a->shape, (std::vector<int64_t>{mod->kept(), mod->t.in_features}));
        EXPECT_EQ(e->shape, (std::vector<int64_t>{mod->kept(), 1}));
        EXPECT_EQ(b->shape, (std::vector<int64_t>{mod->t.out_features, mod->kept()}));
    }
    json_document cfg;
    ASSERT_TRUE(cfg.parse_file(dir + "/adapter_config.json", 1 << 20).ok());
    const json_value rp = cfg.root().get("rank_pattern");
    ASSERT_TRUE(rp.is_object());
    EXPECT_EQ(rp.size(), mods.size());
    const json_value one = rp.get(mods[0]->t.path + ".lora_E");
    ASSERT_TRUE(one.is_array());
    ASSERT_EQ(one.size(), 4u);
    for (size_t i = 0; i < 4; i++) EXPECT_EQ(one.at(i).as_bool(), mods[0]->keep[i] != 0);

    auto fresh = tiny_model(7);
    adapter_set loaded;
    const status st = adapter_load(dir, *fresh, loaded);
    ASSERT_TRUE(st.ok()) << st.message << " " << st.hint;
    std::vector<adalora_module *> lm = modules_of(loaded);
    for (size_t i = 0; i < mods.size(); i++) {
        EXPECT_EQ(lm[i]->R, mods[i]->kept());
        EXPECT_EQ(lm[i]->scaling, mods[i]->scaling);
    }
    forward_logits(*fresh, d, after);
    EXPECT_LT(rel_diff(after, before), 1e-6);
    const std::string again = peft::testing::temp_dir("adalora_truncated_again");
    ASSERT_TRUE(adapter_save(again, loaded, "").ok());
    EXPECT_EQ(read_text(again + "/adapter_config.json"), read_text(dir + "/adapter_config.json"));
    EXPECT_EQ(read_text(again + "/adapter_model.safetensors"), read_text(dir + "/adapter_model.safetensors"));
}

// ---- PyTorch parity ----------------------------------------------------------------------------

TEST(adalora_parity, ten_adamw_steps_match_pytorch) {
    auto m = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*m, fixture("llama_gqa"), false).ok());
    adapter_set s;
    const status st = adapter_load(fixture("adalora_parity/initial_adapter"), *m, s);
    ASSERT_TRUE(st.ok()) << st.message << " " << st.hint;
    ASSERT_EQ(s.modules.size(), 14u);
    adapters_set_training(s, true);
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(fixture("adalora_parity/reference.safetensors"), ref).ok());
    std::vector<param_ref> ps = adapter_set_params(s);
    std::vector<adalora_module *> mods = modules_of(s);
    std::vector<float> kept;
    double worst_grad = 0;
    const std::vector<float> losses = peft::testing::trajectory_train(*m, s, peft::testing::parity_batch_load(), 10, [&](int64_t step) {
        float k = 0;
        for (adalora_module * mod : mods) {
            for (float e : mod->E) k += e != 0.0f;
        }
        kept.push_back(k);
        if (step != 0) return;
        for (const param_ref & p : ps) {   // step 0's gradients, the penalty's included
            const std::vector<float> want = peft::testing::fixture_tensor(ref, "grad0." + p.name);
            double md = 0, mr = 0;
            for (size_t i = 0; i < want.size(); i++) {
                md = std::max(md, (double) std::fabs(p.grad[i] - want[i]));
                mr = std::max(mr, (double) std::fabs(want[i]));
            }
            EXPECT_LE(md, 1e-4 * mr + 1e-8) << p.name;
            worst_grad = std::max(worst_grad, md / mr);
        }
    });
    const double worst_loss = peft::testing::expect_losses(ref, losses, 1e-5);
    EXPECT_EQ(kept, peft::testing::fixture_tensor(ref, "traj.kept"));
    const double worst_final = peft::testing::expect_final_tensors(ref, ps, true);
    std::string ranks;
    for (adalora_module * mod : mods) {
        const std::vector<float> want = peft::testing::fixture_tensor(ref, "keep." + mod->t.path);
        std::vector<float> got;
        for (uint8_t b : mod->keep) got.push_back(b ? 1.0f : 0.0f);
        EXPECT_EQ(got, want) << mod->t.path;
        ranks += ' ';
        ranks += std::to_string(mod->kept());
    }
    std::printf("adalora parity: worst loss rel %.3g, step-0 grad normwise %.3g, final tensors normwise %.3g; ranks%s\n",
                worst_loss, worst_grad, worst_final, ranks.c_str());

    // the saved adapter is PEFT's save_pretrained output for the same run: the same config text
    // (rank_pattern included) and the sliced tensors; PEFT's file loads to the same model
    const std::string dir = peft::testing::temp_dir("adalora_parity_final");
    ASSERT_TRUE(adapter_save(dir, s, "peft.cpp/tests/fixtures/llama_gqa").ok());
    EXPECT_EQ(read_text(dir + "/adapter_config.json"), read_text(fixture("adalora_parity/final_adapter/adapter_config.json")));
    safetensors_file ours, theirs;
    ASSERT_TRUE(safetensors_open(dir + "/adapter_model.safetensors", ours).ok());
    ASSERT_TRUE(safetensors_open(fixture("adalora_parity/final_adapter/adapter_model.safetensors"), theirs).ok());
    ASSERT_EQ(ours.tensors.size(), theirs.tensors.size());
    for (const tensor_info & t : theirs.tensors) {
        const tensor_info * o = ours.find(t.name);
        ASSERT_NE(o, nullptr) << t.name;
        EXPECT_EQ(o->shape, t.shape) << t.name;
        const std::vector<float> a = peft::testing::fixture_tensor(ours, t.name), b = peft::testing::fixture_tensor(theirs, t.name);
        double md = 0, mr = 0;
        for (size_t i = 0; i < std::min(a.size(), b.size()); i++) {
            md = std::max(md, (double) std::fabs(a[i] - b[i]));
            mr = std::max(mr, (double) std::fabs(b[i]));
        }
        EXPECT_TRUE(md <= 1e-5 || md <= 1e-4 * mr) << t.name << ": max abs diff " << md;
    }
    adapters_set_training(s, false);
    const peft::testing::parity_batch pb = peft::testing::parity_batch_load();
    batch_data d;
    d.B = pb.B;
    d.T = pb.T;
    d.tok = pb.tok;
    d.tgt = pb.tgt;
    std::vector<float> trained, loaded;
    forward_logits(*m, d, trained);
    auto fresh = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*fresh, fixture("llama_gqa"), false).ok());
    adapter_set from_peft;
    const status ls = adapter_load(fixture("adalora_parity/final_adapter"), *fresh, from_peft);
    ASSERT_TRUE(ls.ok()) << ls.message << " " << ls.hint;
    forward_logits(*fresh, d, loaded);
    EXPECT_LT(rel_diff(loaded, trained), 1e-5);
}
