// The generic checks every adapter method (and every init of one) must pass, as one table in
// the manner of PEFT's tests/test_custom_models.py: a new method or init is a new row.
//  - identity at init where the method promises it (bitwise for B = 0, fp-exact for the
//    residual-making SVD inits);
//  - merged == unmerged, and unmerge restores;
//  - save -> load onto a fresh base gives the same model (bitwise parameters when the file form
//    is the training form);
//  - the trainable parameter count follows the method's formula;
//  - the loss gradient of the adapter parameters matches a central finite difference;
//  - a few optimizer steps lower the loss.
#include <cmath>

#include "adapter_test_util.h"
#include "testing.h"
#include "train/trainer.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

struct method_case {
    const char * name;
    const char * config;        // adapter config JSON (target_modules all-linear unless given)
    double       identity_tol;  // max relative output change at init; 0 = bitwise; < 0 = no promise
    bool         file_is_training_form;   // save -> load gives the same tensors back
    // the method's trainable-parameter formula for one target of the row's config
    int64_t (*trainable_per_target)(int64_t in_features, int64_t out_features);
    const char * no_merge = nullptr;   // why the method cannot merge (its merge test checks the refusal)
};

// r = 4 in every row
int64_t lora_count(int64_t in, int64_t out) { return 4 * (in + out); }
int64_t lora_fa_count(int64_t, int64_t out) { return 4 * out; }
int64_t vera_count(int64_t, int64_t out) { return 4 + out; }   // lambda_d [r], lambda_b [out]
// Deep LoRA, L = 3 inner k x k factors (+ the outer U_c, V_c when deep_lora_gamma > 0)
int64_t deep_lora_count(int64_t, int64_t) { return 3 * 4 * 4; }
int64_t deep_lora_gamma_count(int64_t in, int64_t out) { return 3 * 4 * 4 + 4 * (in + out); }
int64_t dora_count(int64_t in, int64_t out) { return 4 * (in + out) + out; }      // + magnitude [out]
int64_t dora_in_count(int64_t in, int64_t out) { return 4 * (in + out) + in; }    // + magnitude [1, in]
int64_t adalora_count(int64_t in, int64_t out) { return 4 * (in + out) + 4; }    // A [r,in], B [out,r], E [r,1]
// MiLoRA mixture: each expert is a LoRA and adds one row [C = 32] and one bias to its layer's router
int64_t milora_moe_count(int64_t in, int64_t out) { return 4 * (in + out) + 32 + 1; }
// LoRA-drop with every module shared: the 2 layers' modules of a type hold one LoRA, half each
int64_t lora_drop_all_shared_count(int64_t in, int64_t out) { return 2 * (in + out); }

#define LORA_DROP_LAYER(l)                                                                                                  \
    "\"model.layers." l ".self_attn.q_proj\",\"model.layers." l ".self_attn.k_proj\",\"model.layers." l ".self_attn.v_proj\","     \
    "\"model.layers." l ".self_attn.o_proj\",\"model.layers." l ".mlp.gate_proj\",\"model.layers." l ".mlp.up_proj\","               \
    "\"model.layers." l ".mlp.down_proj\""
#define LORA_DROP_ALL LORA_DROP_LAYER("0") "," LORA_DROP_LAYER("1")

const method_case METHODS[] = {
    {"lora", "{\"r\":4,\"lora_alpha\":8}", 0.0, true, lora_count},
    {"lora_gaussian", "{\"r\":4,\"lora_alpha\":8,\"init_lora_weights\":\"gaussian\"}", 0.0, true, lora_count},
    {"lora_random_init", "{\"r\":4,\"lora_alpha\":8,\"init_lora_weights\":false}", -1.0, true, lora_count},
    {"rslora", "{\"r\":4,\"lora_alpha\":8,\"use_rslora\":true}", 0.0, true, lora_count},
    {"loraplus", "{\"r\":4,\"lora_alpha\":8,\"loraplus_lr_ratio\":16}", 0.0, true, lora_count},
    {"lora_fa", "{\"r\":4,\"lora_alpha\":8,\"lora_fa\":true}", 0.0, true, lora_fa_count},
    {"pissa", "{\"r\":4,\"lora_alpha\":8,\"init_lora_weights\":\"pissa\"}", 1e-5, false, lora_count},
    {"pissa_niter_2", "{\"r\":4,\"lora_alpha\":8,\"init_lora_weights\":\"pissa_niter_2\"}", 1e-5, false, lora_count},
    {"milora", "{\"r\":4,\"lora_alpha\":8,\"init_lora_weights\":\"milora\"}", 1e-5, false, lora_count},
    {"olora", "{\"r\":4,\"lora_alpha\":8,\"init_lora_weights\":\"olora\"}", 1e-5, false, lora_count},
    {"pissa_residual_form", "{\"r\":4,\"lora_alpha\":8,\"init_lora_weights\":\"pissa\",\"save_residual_model\":true}", 1e-5, true, lora_count},
    {"corda_ipm", "{\"r\":4,\"lora_alpha\":8,\"init_lora_weights\":\"corda\",\"corda_data\":\"calibration\"}", 1e-5, false, lora_count},
    {"corda_kpm", "{\"r\":4,\"lora_alpha\":8,\"init_lora_weights\":\"corda\",\"corda_data\":\"calibration\",\"corda_config\":{\"corda_method\":\"kpm\"}}",
     1e-5, false, lora_count},
    {"vera", "{\"adapter\":\"vera\",\"r\":4}", 0.0, true, vera_count},
    {"vera_regenerated_projections", "{\"adapter\":\"vera\",\"r\":4,\"save_projection\":false,\"projection_prng_key\":5}", 0.0, true,
     vera_count},
    // dW(0) = eps^3 U_c U_c^T P is not zero: the output moves by about eps^3 ||x|| ||W_out|| (tiny)
    {"deep_lora", "{\"adapter\":\"deep_lora\",\"r\":4}", 1e-6, false, deep_lora_count},
    {"deep_lora_gamma", "{\"adapter\":\"deep_lora\",\"r\":4,\"deep_lora_gamma\":0.5}", 1e-6, false, deep_lora_gamma_count},
    // DoRA: the finite difference of the detached rows holds the norm constant (the module
    // refreshes it only when told, as after an optimizer step), matching the detached gradient;
    // the exact rows (dora_in defaults to exact) follow A and B and check the full gradient
    {"dora", "{\"r\":4,\"lora_alpha\":8,\"use_dora\":true}", 0.0, true, dora_count},
    {"dora_in", "{\"r\":4,\"lora_alpha\":8,\"use_dora\":true,\"dora_norm_axis\":\"in\"}", 0.0, true, dora_in_count},
    {"dora_exact", "{\"r\":4,\"lora_alpha\":8,\"use_dora\":true,\"dora_detach_norm\":false}", 0.0, true, dora_count},
 // ROSA: the base becomes W - B A of an SVD window (fp32 rounding); the file is the accumulated
    // change as a LoRA on the original base
    {"rosa", "{\"adapter\":\"rosa\",\"r\":4}", 1e-5, false, lora_count},
    {"rosa_top", "{\"adapter\":\"rosa\",\"r\":4,\"rosa_sample_method\":\"top\",\"rosa_resample_steps\":2}", 1e-5, false, lora_count},
    {"pissa_dora", "{\"r\":4,\"lora_alpha\":8,\"use_dora\":true,\"init_lora_weights\":\"pissa\"}", 1e-5, false, dora_count},
    // E = 0 at init: bitwise identity. Before any allocation the file is the training form (no
    // rank_pattern, nothing sliced); after one it is not (test_adalora.cpp, truncated save).
    {"adalora", "{\"adapter\":\"adalora\",\"init_r\":4,\"target_r\":2,\"total_step\":5,\"tinit\":1,\"tfinal\":1}", 0.0, true,
     adalora_count},
    // B = 0 at init: the base whatever the routing; the routing depends on the prompt, so no merge.
    // The token-level row keeps all 7 experts (a dense soft mixture): a finite difference along
    // every parameter at once would cross some token's top-K boundary (test_milora_moe.cpp
    // checks top-K routing tensor by tensor, away from the boundaries)
    {"milora_moe", "{\"adapter\":\"milora_moe\",\"r\":4,\"lora_alpha\":8}", 0.0, true, milora_moe_count,
     "routing depends on each prompt"},
    {"milora_moe_token_max_softmax",
     "{\"adapter\":\"milora_moe\",\"r\":4,\"lora_alpha\":8,\"routing\":\"token\",\"router_pool\":\"max\",\"router_gate\":\"softmax\",\"router_top_k\":7}",
     0.0, true, milora_moe_count, "routing depends on each token"},
    // LoRA-drop, stage 1 on the test calibration rows: threshold 1 keeps every module its own LoRA
    {"lora_drop_stage1_keeps_all", "{\"adapter\":\"lora_drop\",\"r\":4,\"lora_alpha\":8,\"lora_drop_threshold\":1.0,\"lora_drop_fraction\":0.5}",
     0.0, true, lora_count},
    // the sharing as a native file gives it: every module on its type's shared LoRA; the PEFT file
    // repeats the shared factors under each module (not the training form)
    {"lora_drop_all_shared", "{\"adapter\":\"lora_drop\",\"r\":4,\"lora_alpha\":8,\"lora_drop_shared\":[" LORA_DROP_ALL "]}", 0.0, false,
     lora_drop_all_shared_count},
};

void PrintTo(const method_case & c, std::ostream * os) { *os << c.name; }

std::string with_targets(const char * cfg) {
    std::string s = cfg;
    return s.substr(0, s.size() - 1) + ",\"target_modules\":\"all-linear\"}";
}

float loss_of(llama_model & m, const batch_data & d) {
    std::vector<float> logits;
    return forward_logits(m, d, logits);
}

// The adapter gradients of one forward + backward (d_inputs_embeds: also the input gradient).
std::vector<std::vector<float>> grads_of(llama_model & m, llama_state & st, const batch_data & d, const std::vector<optim_param> & ps,
                                         float * d_inputs_embeds) {
    for (const optim_param & p : ps) std::fill(p.grad, p.grad + p.n, 0.0f);
    llama_forward(m, st, d.batch(), 1.0f);
    llama_backward(m, st, d.batch(), d_inputs_embeds);
    std::vector<std::vector<float>> g;
    for (const optim_param & p : ps) g.emplace_back(p.grad, p.grad + p.n);
    return g;
}

} // namespace

// Each check starts from the tiny model with the row's adapter attached; `trained` gives the
// adapter values that stand in for training (every trainable tensor moved, so B != 0) and
// switches dropout off.
class method_table : public ::testing::TestWithParam<method_case> {
protected:
    void SetUp() override {
        m = tiny_model(7);
        d = make_batch(m->hp.n_vocab);
        forward_logits(*m, d, base);
        const status st = attach(*m, with_targets(GetParam().config), s);
        ASSERT_TRUE(st.ok()) << st.message;
    }
    void trained(uint64_t seed) {
        randomize_trainable(adapter_set_params(s), seed);
        adapters_set_training(s, false);
    }
    std::unique_ptr<llama_model> m;
    batch_data d;
    std::vector<float> base;   // the model's logits before attaching
    adapter_set s;
};

TEST_P(method_table, identity_at_init) {
    const method_case & c = GetParam();
    std::vector<float> adapted;
    forward_logits(*m, d, adapted);
    if (c.identity_tol == 0.0) EXPECT_EQ(adapted, base) << c.name << ": B = 0 must keep the output bit for bit";
    else if (c.identity_tol > 0.0) EXPECT_LT(rel_diff(adapted, base), c.identity_tol) << c.name;
    else EXPECT_GT(rel_diff(adapted, base), 1e-6) << c.name << ": init_lora_weights false is not an identity";
}

TEST_P(method_table, merged_equals_unmerged_and_unmerge_restores) {
    const method_case & c = GetParam();
    trained(11);
    if (c.no_merge) {
        const status st = adapters_merge(*m, s);
        EXPECT_FALSE(st.ok()) << c.name << " must refuse to merge";
        EXPECT_NE(st.message.find("cannot be merged"), std::string::npos) << st.message;
        EXPECT_FALSE(m->adapters.empty()) << "a refused merge leaves the adapter attached";
        GTEST_SKIP() << c.name << " cannot merge: " << c.no_merge;
    }
    std::vector<float> unmerged, merged, restored;
    forward_logits(*m, d, unmerged);
    ASSERT_TRUE(adapters_merge(*m, s).ok());
    forward_logits(*m, d, merged);
    EXPECT_LT(rel_diff(merged, unmerged), 1e-5) << c.name;
    ASSERT_TRUE(adapters_unmerge(*m, s).ok());
    forward_logits(*m, d, restored);
    EXPECT_LT(rel_diff(restored, unmerged), 1e-5) << c.name;
}

TEST_P(method_table, save_then_load_gives_the_same_model) {
    const method_case & c = GetParam();
    trained(13);
    std::vector<float> before, reloaded;
    forward_logits(*m, d, before);
    const std::string dir = peft::testing::temp_dir(std::string("methods_") + c.name);
    ASSERT_TRUE(adapter_save(dir, s, "").ok());
    // onto a fresh base: the original one, or the residual the init left (residual form)
    auto fresh = tiny_model(7);
    if (s.method->residual_init()) {
        for (size_t i = 0; i < s.targets.size(); i++) {
            const linear_weight & w = *s.targets[i].base;
            std::vector<float> W((size_t) (w.OC * w.IC));
            linear_weight_rows_f32(W.data(), w, 0, w.OC);
            const llama_proj p = (llama_proj) (i % LLAMA_PROJ_COUNT);   // all-linear: 7 per layer in order
            llama_replace_weight(*fresh, s.targets[i].layer, p, W.data(), w.type);
        }
        fresh->hp.residual_init = s.method->residual_init();
    }
    adapter_set loaded;
    const status st = adapter_load(dir, *fresh, loaded);
    ASSERT_TRUE(st.ok()) << st.message;
    forward_logits(*fresh, d, reloaded);
    if (c.file_is_training_form) {
        EXPECT_EQ(snapshot(adapter_set_params(loaded)), snapshot(adapter_set_params(s))) << c.name;
        EXPECT_EQ(reloaded, before) << c.name;
    } else {
        EXPECT_LT(rel_diff(reloaded, before), 1e-5) << c.name;
    }
}

TEST_P(method_table, trainable_parameter_count) {
    const method_case & c = GetParam();
    int64_t want = 0, got = 0;
    for (const target_info & t : s.targets) want += c.trainable_per_target(t.in_features, t.out_features);
    for (const optim_param & p : adapter_optim_params(s)) got += p.n;
    EXPECT_EQ(got, want) << c.name;
}

// d loss / d theta along a random direction v: (L(theta + e v) - L(theta - e v)) / 2e == g . v
TEST_P(method_table, gradient_matches_finite_difference) {
    const method_case & c = GetParam();
    trained(17);   // no dropout: a deterministic loss
    std::vector<optim_param> ps = adapter_optim_params(s);
    for (const optim_param & p : ps) std::fill(p.grad, p.grad + p.n, 0.0f);
    llama_state st;
    ASSERT_TRUE(llama_state_init(st, *m, d.B, d.T, false).ok());
    llama_forward(*m, st, d.batch(), 1.0f);
    llama_backward(*m, st, d.batch());
    double gv = 0;
    std::vector<std::vector<float>> v, theta;
    uint64_t seed = 100;
    for (const optim_param & p : ps) {
        v.push_back(peft::testing::fixed_vector(p.n, ++seed, 1.0f));
        theta.emplace_back(p.value, p.value + p.n);
        for (int64_t j = 0; j < p.n; j++) gv += (double) p.grad[j] * v.back()[(size_t) j];
    }
    auto loss_at = [&](double e) {
        for (size_t i = 0; i < ps.size(); i++) {
            for (int64_t j = 0; j < ps[i].n; j++) ps[i].value[j] = (float) (theta[i][(size_t) j] + e * v[i][(size_t) j]);
        }
        return (double) loss_of(*m, d);
    };
    const double e = 1e-3;
    const double fd = (loss_at(e) - loss_at(-e)) / (2 * e);
    loss_at(0);
    EXPECT_NEAR(fd, gv, 2e-2 * std::fabs(gv) + 1e-4) << c.name;
}

// Without a consumer of the first layer's input gradient (frozen base, no d_inputs_embeds) the
// backward skips it; every adapter gradient must be what the full backward gives, bit for bit.
TEST_P(method_table, skipping_the_first_layers_input_gradient_keeps_every_gradient) {
    trained(23);
    std::vector<optim_param> ps = adapter_optim_params(s);
    llama_state st;
    ASSERT_TRUE(llama_state_init(st, *m, d.B, d.T, false).ok());
    std::vector<float> dembd((size_t) (d.B * d.T * m->hp.n_embd));
    const std::vector<std::vector<float>> full = grads_of(*m, st, d, ps, dembd.data()), skipped = grads_of(*m, st, d, ps, nullptr);
    ASSERT_EQ(full.size(), skipped.size());
    double norm = 0;
    for (size_t i = 0; i < full.size(); i++) {
        for (float v : full[i]) norm += (double) v * v;
        EXPECT_EQ(full[i], skipped[i]) << GetParam().name << ": " << ps[i].name;
    }
    EXPECT_GT(norm, 0.0) << GetParam().name;
}

TEST_P(method_table, a_few_steps_lower_the_loss) {
    const method_case & c = GetParam();
    adamw opt;
    adamw_config oc;
    oc.lr = 1e-2f;
    oc.weight_decay = 0.0f;
    ASSERT_TRUE(opt.init(adapter_optim_params(s), oc).ok());
    llama_state st;
    ASSERT_TRUE(llama_state_init(st, *m, d.B, d.T, false).ok());
    train_config cfg;
    cfg.opt = oc;
    cfg.total_steps = 5;
    const llama_batch b = d.batch();
    float first = 0, last = 0;
    for (int64_t i = 0; i < 5; i++) {
        step_result r;
        ASSERT_TRUE(train_step(*m, st, opt, cfg, &b, 1, i, r, &s).ok());
        if (i == 0) first = r.loss;
        last = r.loss;
    }
    EXPECT_LT(last, first) << c.name;
}

INSTANTIATE_TEST_SUITE_P(methods, method_table, ::testing::ValuesIn(METHODS),
                         [](const ::testing::TestParamInfo<method_case> & i) { return std::string(i.param.name); });

// An adapter on the upper layers only (layers_to_transform): the backward stops at the lowest
// adapted layer and the layers below keep no activations, and the gradients are the full
// backward's (recomputing, so that every layer can be visited), bit for bit.
TEST(methods, backward_stops_at_the_lowest_adapted_layer_with_the_same_gradients) {
    std::unique_ptr<llama_model> m = tiny_model(7, PEFT_DTYPE_F32, 4);
    batch_data d = make_batch(m->hp.n_vocab);
    adapter_set s;
    const status at = attach(*m, "{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"layers_to_transform\":[2,3]}", s);
    ASSERT_TRUE(at.ok()) << at.message;
    randomize_trainable(adapter_set_params(s), 29);
    adapters_set_training(s, false);
    std::vector<optim_param> ps = adapter_optim_params(s);
    ASSERT_EQ(ps.size(), 2u * 7u * 2u);
    llama_state st, st_full;
    ASSERT_TRUE(llama_state_init(st, *m, d.B, d.T, false).ok());
    ASSERT_TRUE(llama_state_init(st_full, *m, d.B, d.T, true).ok());
    // adapting layer 1 too keeps its projection inputs (x_n1, x_n2, h) and a slot of its own
    auto plan_bytes = [&](const char * layers) {
        std::unique_ptr<llama_model> m2 = tiny_model(7, PEFT_DTYPE_F32, 4);
        adapter_set s2;
        const std::string cfg = std::string("{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"layers_to_transform\":") + layers + "}";
        EXPECT_TRUE(attach(*m2, cfg, s2).ok());
        llama_state s3;
        EXPECT_TRUE(llama_state_init(s3, *m2, d.B, d.T, false).ok());
        return s3.act_arena.capacity;
    };
    const int64_t N = d.B * d.T;
    const size_t inputs = 2 * arena_align((size_t) (N * m->hp.n_embd) * 4) + arena_align((size_t) (N * m->hp.n_ff) * 4);
    EXPECT_EQ(plan_bytes("[2,3]"), st.act_arena.capacity);
    EXPECT_GT(plan_bytes("[1,2,3]") - plan_bytes("[2,3]"), inputs);
    std::vector<float> dembd((size_t) (d.B * d.T * m->hp.n_embd));
    const std::vector<std::vector<float>> full = grads_of(*m, st_full, d, ps, dembd.data()), stopped = grads_of(*m, st, d, ps, nullptr);
    for (size_t i = 0; i < full.size(); i++) {
        EXPECT_EQ(full[i], stopped[i]) << ps[i].name;
        double norm = 0;
        for (float v : full[i]) norm += (double) v * v;
        EXPECT_GT(norm, 0.0) << ps[i].name;
    }
}
