// LoRA module and method (METHODS §1, §2, §16): gradients against a double reference by finite
// differences, identity at init, merge == unmerged forward, unmerge, parameter counts, scaling,
// inits, dropout determinism, LoRA+ / LoRA-FA, training lowers the loss, and whole-path parity
// with the PyTorch reference in tests/fixtures/lora_parity (tools/ref_lora.py).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "adapter_test_util.h"
#include "core/rng.h"
#include "fixture_util.h"
#include "io/safetensors.h"
#include "train/optim.h"
#include "train/trainer.h"

using namespace peft;
using namespace peft::adapter_test;
using peft::testing::expect_final_tensors;
using peft::testing::expect_losses;
using peft::testing::fixture_tensor;
using peft::testing::parity_batch;
using peft::testing::parity_batch_load;

namespace {

// A standalone linear layer with a LoRA module on it (no model).
struct module_fixture {
    std::vector<float> W, bias;
    linear_weight      w;
    lora_method        method;
    std::unique_ptr<adapter_module> mod;
    lora_module *      lm = nullptr;

    module_fixture(int64_t OC, int64_t IC, const std::string & cfg_text, uint64_t seed = 3) {
        W = peft::testing::fixed_vector(OC * IC, 11, 0.3f);
        bias = peft::testing::fixed_vector(OC, 12, 0.1f);
        w.type = PEFT_DTYPE_F32;
        w.data = W.data();
        w.OC = OC;
        w.IC = IC;
        config c(cfg_text);
        status st = method.configure(c.root());
        EXPECT_TRUE(st.ok()) << st.message;
        target_info t{"model.layers.0.self_attn.q_proj", 0, IC, OC, &w, bias.data()};
        EXPECT_TRUE(method.check(t).ok());
        rng r(seed);
        st = method.create(t, r, mod);
        EXPECT_TRUE(st.ok()) << st.message;
        lm = dynamic_cast<lora_module *>(mod.get());
    }
};

// double reference of the module: y = x W^T + b + s ((x * f) A^T) B^T, f = keep / (1-p) per element
std::vector<double> ref_forward(const std::vector<double> & x, const std::vector<double> & W, const std::vector<double> & b,
                                const std::vector<double> & A, const std::vector<double> & B, const std::vector<double> & f,
                                double s, int64_t N, int64_t IC, int64_t OC, int64_t R) {
    std::vector<double> y((size_t) (N * OC));
    for (int64_t n = 0; n < N; n++) {
        std::vector<double> xa((size_t) R, 0.0);
        for (int64_t r = 0; r < R; r++) {
            for (int64_t i = 0; i < IC; i++) xa[(size_t) r] += x[(size_t) (n * IC + i)] * f[(size_t) (n * IC + i)] * A[(size_t) (r * IC + i)];
        }
        for (int64_t o = 0; o < OC; o++) {
            double acc = b[(size_t) o];
            for (int64_t i = 0; i < IC; i++) acc += x[(size_t) (n * IC + i)] * W[(size_t) (o * IC + i)];
            double lo = 0.0;
            for (int64_t r = 0; r < R; r++) lo += xa[(size_t) r] * B[(size_t) (o * R + r)];
            y[(size_t) (n * OC + o)] = acc + s * lo;
        }
    }
    return y;
}

void grad_check(float dropout) {
    const int64_t N = 4, IC = 7, OC = 5, R = 3;
    std::string cfg = "{\"r\":3,\"lora_alpha\":5,\"lora_dropout\":" + std::to_string(dropout) + "}";
    module_fixture fx(OC, IC, cfg);
    ASSERT_NE(fx.lm, nullptr);
    lora_module & m = *fx.lm;
    peft::testing::fixed_fill(m.B.data(), OC * R, 21, 0.4f);   // B != 0 so every path shows
    std::vector<float> x = peft::testing::fixed_vector(N * IC, 31, 1.0f);
    std::vector<float> G = peft::testing::fixed_vector(N * OC, 32, 1.0f);   // dL/dy for L = sum(y * G)

    std::vector<float> y((size_t) (N * OC));
    m.forward(x.data(), N, y.data());
    const std::vector<float> f = dropout_factors(m, N, IC, dropout);
    peft::testing::guarded dx(N * IC, 0.0f);
    m.backward(x.data(), G.data(), N, dx.data());
    EXPECT_TRUE(dx.intact());

    std::vector<double> xd = peft::testing::to_double(x.data(), N * IC), Wd = peft::testing::to_double(fx.W.data(), OC * IC),
                        bd = peft::testing::to_double(fx.bias.data(), OC), Ad = peft::testing::to_double(m.A.data(), R * IC),
                        Bd = peft::testing::to_double(m.B.data(), OC * R), fd = peft::testing::to_double(f.data(), N * IC);
    const double s = m.scaling;
    EXPECT_EQ(m.scaling, (float) (5.0 / 3.0)) << "scaling alpha / r";
    auto loss = [&](const std::vector<double> & xx, const std::vector<double> & AA, const std::vector<double> & BB) {
        std::vector<double> yy = ref_forward(xx, Wd, bd, AA, BB, fd, s, N, IC, OC, R);
        double l = 0;
        for (size_t i = 0; i < yy.size(); i++) l += yy[i] * G[i];
        return l;
    };
    std::vector<double> yref = ref_forward(xd, Wd, bd, Ad, Bd, fd, s, N, IC, OC, R);
    std::vector<float> yref_f(yref.begin(), yref.end());
    EXPECT_TRUE(peft::testing::check_close(y.data(), yref_f.data(), N * OC, 1e-5, 1e-6, "forward"));

    std::vector<double> gx = peft::testing::finite_diff(xd, [&](const std::vector<double> & v) { return loss(v, Ad, Bd); });
    std::vector<double> gA = peft::testing::finite_diff(Ad, [&](const std::vector<double> & v) { return loss(xd, v, Bd); });
    std::vector<double> gB = peft::testing::finite_diff(Bd, [&](const std::vector<double> & v) { return loss(xd, Ad, v); });
    EXPECT_TRUE(peft::testing::check_grad(dx.data(), gx, 1e-4, 1e-5, "dx"));
    EXPECT_TRUE(peft::testing::check_grad(m.dA.data(), gA, 1e-4, 1e-5, "dA"));
    EXPECT_TRUE(peft::testing::check_grad(m.dB.data(), gB, 1e-4, 1e-5, "dB"));
}

} // namespace

TEST(lora, gradients_match_finite_differences) { grad_check(0.0f); }
TEST(lora, gradients_match_finite_differences_with_dropout) { grad_check(0.4f); }

TEST(lora, module_output_is_bitwise_base_at_init) {
    const int64_t N = 5, IC = 24, OC = 20;
    module_fixture fx(OC, IC, "{\"r\":4,\"lora_alpha\":16}");
    std::vector<float> x = peft::testing::fixed_vector(N * IC, 41, 1.0f), y((size_t) (N * OC)), base((size_t) (N * OC));
    fx.mod->forward(x.data(), N, y.data());
    linear_forward(base.data(), x.data(), fx.w, fx.bias.data(), N);
    EXPECT_EQ(std::memcmp(y.data(), base.data(), y.size() * 4), 0);
}

TEST(lora, scaling_and_rslora) {
    for (bool rs : {false, true}) {
        auto m = tiny_model();
        adapter_set s;
        status st = attach(*m, std::string("{\"r\":16,\"lora_alpha\":32,\"target_modules\":\"all-linear\",\"use_rslora\":") +
                                   (rs ? "true" : "false") + "}", s);
        ASSERT_TRUE(st.ok()) << st.message;
        for (auto & mod : s.modules) {
            auto * lm = dynamic_cast<lora_module *>(mod.get());
            ASSERT_NE(lm, nullptr);
            EXPECT_EQ(lm->scaling, rs ? 8.0f : 2.0f) << lm->t.path;   // METHODS §1 (8): r=16, alpha=32
        }
    }
}

TEST(lora, output_is_bitwise_base_at_init_and_grad_a_is_zero) {
    for (dtype storage : {PEFT_DTYPE_F32, PEFT_DTYPE_BF16}) {
        auto m = tiny_model(7, storage);
        batch_data d = make_batch(m->hp.n_vocab);
        std::vector<float> base_logits, lora_logits;
        float base_loss = forward_logits(*m, d, base_logits);
        adapter_set s;
        status st = attach(*m, "{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\"}", s);
        ASSERT_TRUE(st.ok()) << st.message;
        ASSERT_EQ(s.modules.size(), 14u);
        float lora_loss = forward_logits(*m, d, lora_logits);
        EXPECT_EQ(lora_loss, base_loss);
        ASSERT_EQ(base_logits.size(), lora_logits.size());
        EXPECT_EQ(std::memcmp(base_logits.data(), lora_logits.data(), base_logits.size() * 4), 0) << "logits not bitwise equal";

        // METHODS §1 (8): at init dL/dA = 0 exactly and dL/dB != 0
        std::vector<param_ref> ps = adapter_set_params(s);
        zero_grads(ps);
        llama_state ls;
        ASSERT_TRUE(llama_state_init(ls, *m, d.B, d.T, false).ok());
        llama_forward(*m, ls, d.batch(), 1.0f);
        llama_backward(*m, ls, d.batch());
        for (const param_ref & p : ps) {
            double sq = 0;
            for (int64_t i = 0; i < numel(p); i++) sq += (double) p.grad[i] * p.grad[i];
            if (p.name.find("lora_A") != std::string::npos) EXPECT_EQ(sq, 0.0) << p.name;
            else EXPECT_GT(sq, 0.0) << p.name;
        }
    }
}

TEST(lora, merged_forward_equals_unmerged_and_unmerge_restores) {
    for (dtype storage : {PEFT_DTYPE_F32, PEFT_DTYPE_BF16}) {
        auto m = tiny_model(9, storage);
        batch_data d = make_batch(m->hp.n_vocab);
        adapter_set s;
        status st = attach(*m, "{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\",\"o_proj\",\"down_proj\"]}", s);
        ASSERT_TRUE(st.ok()) << st.message;
        randomize(adapter_set_params(s), 5, 0.1f);
        std::vector<float> unmerged, merged, after;
        float l0 = forward_logits(*m, d, unmerged);
        std::vector<std::vector<float>> W0;
        for (const target_info & t : s.targets) {
            std::vector<float> w((size_t) (t.out_features * t.in_features));
            linear_weight_rows_f32(w.data(), *t.base, 0, t.out_features);
            W0.push_back(w);
        }
        // the adapter must matter, or this test proves nothing
        std::vector<float> base_logits;
        {
            auto plain = tiny_model(9, storage);
            forward_logits(*plain, d, base_logits);
        }
        EXPECT_GT(peft::testing::rel_error(unmerged.data(), base_logits.data(), (int64_t) base_logits.size()), 1e-3);

        ASSERT_TRUE(adapters_merge(*m, s).ok());
        EXPECT_TRUE(m->adapters.empty());
        for (const target_info & t : s.targets) {
            EXPECT_EQ(t.base->type, PEFT_DTYPE_F32);
            llama_tensor * lt = m->find(t.path + ".weight");
            ASSERT_NE(lt, nullptr);
            EXPECT_EQ(lt->data, t.base->data);   // the tensor table follows the merged weight
        }
        float l1 = forward_logits(*m, d, merged);
        EXPECT_LE(peft::testing::rel_error(merged.data(), unmerged.data(), (int64_t) unmerged.size()), 1e-5);
        EXPECT_NEAR(l1, l0, 1e-5 * std::fabs(l0));

        ASSERT_TRUE(adapters_unmerge(*m, s).ok());
        EXPECT_FALSE(m->adapters.empty());
        for (size_t i = 0; i < s.targets.size(); i++) {
            const target_info & t = s.targets[i];
            const float * W = (const float *) t.base->data;
            EXPECT_TRUE(peft::testing::check_close(W, W0[i].data(), (int64_t) W0[i].size(), 0.0, 1e-6, t.path.c_str()));
        }
        float l2 = forward_logits(*m, d, after);
        EXPECT_LE(peft::testing::rel_error(after.data(), unmerged.data(), (int64_t) unmerged.size()), 1e-5);
        EXPECT_NEAR(l2, l0, 1e-5 * std::fabs(l0));
        EXPECT_FALSE(adapters_unmerge(*m, s).ok()) << "unmerge of an unmerged set must fail";
    }
}

TEST(lora, delta_weight_is_scaled_product) {
    module_fixture fx(6, 5, "{\"r\":2,\"lora_alpha\":3}");
    lora_module & m = *fx.lm;
    peft::testing::fixed_fill(m.B.data(), 12, 4, 0.5f);
    std::vector<float> dW(30);
    m.delta_weight(dW.data());
    for (int64_t o = 0; o < 6; o++) {
        for (int64_t i = 0; i < 5; i++) {
            double acc = 0;
            for (int64_t r = 0; r < 2; r++) acc += (double) m.B[(size_t) (o * 2 + r)] * m.A[(size_t) (r * 5 + i)];
            EXPECT_NEAR(dW[(size_t) (o * 5 + i)], 1.5 * acc, 1e-6);
        }
    }
}

TEST(lora, trainable_parameter_count_formula) {
    auto m = tiny_model();
    const llama_hparams & hp = m->hp;
    const int64_t C = hp.n_embd, QD = hp.q_dim(), KVD = hp.kv_dim(), F = hp.n_ff;
    struct proj { int64_t in, out; } projs[] = {{C, QD}, {C, KVD}, {C, KVD}, {QD, C}, {C, F}, {C, F}, {F, C}};
    for (int64_t r : {1, 4, 16}) {
        adapter_set s;
        status st = attach(*m, "{\"r\":" + std::to_string(r) + ",\"target_modules\":\"all-linear\"}", s);
        ASSERT_TRUE(st.ok()) << st.message;
        int64_t count = 0;
        for (const param_ref & p : adapter_set_params(s)) {
            if (p.trainable) count += numel(p);
        }
        int64_t want = 0;
        for (const proj & p : projs) want += hp.n_layer * r * (p.in + p.out);
        EXPECT_EQ(count, want) << "r=" << r;
    }
    // per-module ranks from rank_pattern enter the same formula
    adapter_set s;
    status st = attach(*m, "{\"r\":4,\"target_modules\":[\"q_proj\",\"v_proj\"],\"rank_pattern\":{\"v_proj\":2}}", s);
    ASSERT_TRUE(st.ok()) << st.message;
    int64_t count = 0;
    for (const param_ref & p : adapter_set_params(s)) count += p.trainable ? numel(p) : 0;
    EXPECT_EQ(count, hp.n_layer * (4 * (C + QD) + 2 * (C + KVD)));
}

TEST(lora, default_init_is_kaiming_uniform_and_b_zero) {
    module_fixture fx(64, 256, "{\"r\":8}");
    lora_module & m = *fx.lm;
    const float bound = 1.0f / std::sqrt(256.0f);
    float lo = 1, hi = -1;
    for (float a : m.A) {
        lo = std::min(lo, a);
        hi = std::max(hi, a);
    }
    EXPECT_GE(lo, -bound);
    EXPECT_LE(hi, bound);
    EXPECT_LT(lo, -0.95f * bound);   // 2048 draws reach near both ends
    EXPECT_GT(hi, 0.95f * bound);
    for (float b : m.B) EXPECT_EQ(b, 0.0f);
}

TEST(lora, gaussian_init_statistics) {
    module_fixture fx(64, 1024, "{\"r\":8,\"init_lora_weights\":\"gaussian\"}");
    lora_module & m = *fx.lm;
    double sum = 0, sq = 0;
    for (float a : m.A) {
        sum += a;
        sq += (double) a * a;
    }
    const double n = (double) m.A.size(), mean = sum / n, std = std::sqrt(sq / n - mean * mean);
    EXPECT_NEAR(mean, 0.0, 4.0 * 0.125 / std::sqrt(n));
    EXPECT_NEAR(std, 0.125, 0.125 * 0.03);   // std = 1/r, not 1/sqrt(r) (METHODS §1 (2))
    for (float b : m.B) EXPECT_EQ(b, 0.0f);
}

TEST(lora, init_false_makes_b_random) {
    module_fixture fx(32, 64, "{\"r\":4,\"init_lora_weights\":false}");
    double sq = 0;
    for (float b : fx.lm->B) {
        EXPECT_LE(std::fabs(b), 0.5f);   // nn.Linear init: bound 1/sqrt(r)
        sq += (double) b * b;
    }
    EXPECT_GT(sq, 0.0);
}

TEST(lora, same_seed_same_init_and_different_seed_differs) {
    auto m = tiny_model();
    adapter_set a, b, c;
    ASSERT_TRUE(attach(*m, "{\"r\":4}", a, 42).ok());
    auto sa = snapshot(adapter_set_params(a));
    ASSERT_TRUE(attach(*m, "{\"r\":4}", b, 42).ok());
    auto sb = snapshot(adapter_set_params(b));
    ASSERT_TRUE(attach(*m, "{\"r\":4}", c, 43).ok());
    auto sc = snapshot(adapter_set_params(c));
    EXPECT_EQ(sa, sb);
    EXPECT_NE(sa, sc);
}

TEST(lora, dropout_is_deterministic_and_recompute_safe) {
    const std::string cfg = "{\"r\":4,\"lora_alpha\":8,\"lora_dropout\":0.25,\"target_modules\":\"all-linear\"}";
    auto run = [&](bool recompute, int steps, std::vector<float> & losses, std::vector<std::vector<float>> & grads) {
        auto m = tiny_model(5);
        batch_data d = make_batch(m->hp.n_vocab);
        adapter_set s;
        EXPECT_TRUE(attach(*m, cfg, s, 3).ok());
        std::vector<param_ref> ps = adapter_set_params(s);
        randomize(ps, 8, 0.1f);
        llama_state ls;
        EXPECT_TRUE(llama_state_init(ls, *m, d.B, d.T, recompute).ok());
        losses.clear();
        for (int i = 0; i < steps; i++) {
            zero_grads(ps);
            losses.push_back(llama_forward(*m, ls, d.batch(), 1.0f));
            llama_backward(*m, ls, d.batch());
        }
        grads.clear();
        for (const param_ref & p : ps) grads.emplace_back(p.grad, p.grad + numel(p));
    };
    std::vector<float> l1, l2, l3;
    std::vector<std::vector<float>> g1, g2, g3;
    run(false, 3, l1, g1);
    run(false, 3, l2, g2);
    run(true, 3, l3, g3);
    EXPECT_EQ(l1, l2);   // same seed: same masks
    EXPECT_EQ(g1, g2);
    EXPECT_NE(l1[0], l1[1]) << "each backward must advance to a fresh mask";
    // recompute re-runs each layer's forward before its backward: the masks must not change
    ASSERT_EQ(l1.size(), l3.size());
    for (size_t i = 0; i < l1.size(); i++) EXPECT_NEAR(l3[i], l1[i], 1e-6 * std::fabs(l1[i]));
    for (size_t i = 0; i < g1.size(); i++) {
        EXPECT_TRUE(peft::testing::check_close(g3[i].data(), g1[i].data(), (int64_t) g1[i].size(), 1e-5, 1e-7, "recompute grads"));
    }
}

TEST(lora, dropout_off_in_inference_mode) {
    auto m = tiny_model(5);
    batch_data d = make_batch(m->hp.n_vocab);
    adapter_set with, without;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"lora_dropout\":0.5,\"target_modules\":\"all-linear\"}", with, 3).ok());
    randomize(adapter_set_params(with), 8, 0.1f);
    std::vector<float> l_train, l_eval, l_nodrop;
    forward_logits(*m, d, l_train);
    adapters_set_training(with, false);
    forward_logits(*m, d, l_eval);
    // same seed, dropout 0: identical A (same rng stream) and the same B after randomize
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"lora_dropout\":0.0,\"target_modules\":\"all-linear\"}", without, 3).ok());
    randomize(adapter_set_params(without), 8, 0.1f);
    forward_logits(*m, d, l_nodrop);
    EXPECT_EQ(l_eval, l_nodrop);
    EXPECT_NE(l_train, l_eval);
}

TEST(lora, loraplus_and_lora_fa_params) {
    auto m = tiny_model();
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"loraplus_lr_ratio\":16}", s).ok());
    for (const param_ref & p : adapter_set_params(s)) {
        EXPECT_EQ(p.lr_scale, p.name.find("lora_B") != std::string::npos ? 16.0f : 1.0f) << p.name;
        EXPECT_TRUE(p.trainable);
        EXPECT_NE(p.grad, nullptr);
    }
    adapter_set fa;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"lora_fa\":true}", fa).ok());
    for (const param_ref & p : adapter_set_params(fa)) {
        bool is_a = p.name.find("lora_A") != std::string::npos;
        EXPECT_EQ(p.trainable, !is_a) << p.name;
        EXPECT_EQ(p.grad == nullptr, is_a) << p.name;   // no dA buffer at all
        EXPECT_TRUE(p.saved);                           // A is random: it must be saved
    }
    for (auto & mod : fa.modules) EXPECT_TRUE(dynamic_cast<lora_module *>(mod.get())->dA.empty());
}

namespace {

std::vector<optim_param> optim_params(const std::vector<param_ref> & ps) {
    std::vector<optim_param> out;
    for (const param_ref & p : ps) {
        if (!p.trainable) continue;
        optim_param o;
        o.name = p.name;
        o.value = p.value;
        o.grad = p.grad;
        o.n = numel(p);
        o.lr_scale = p.lr_scale;
        out.push_back(o);
    }
    return out;
}

} // namespace

TEST(lora, five_adamw_steps_lower_the_loss) {
    for (const char * cfg : {"{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\"}",
                             "{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"lora_fa\":true,\"init_lora_weights\":\"gaussian\"}",
                             "{\"r\":4,\"lora_alpha\":8,\"lora_dropout\":0.1,\"loraplus_lr_ratio\":4}"}) {
        auto m = tiny_model(13);
        batch_data d = make_batch(m->hp.n_vocab, 2, 12);
        adapter_set s;
        ASSERT_TRUE(attach(*m, cfg, s).ok()) << cfg;
        std::vector<param_ref> ps = adapter_set_params(s);
        auto a0 = snapshot(ps);
        adamw opt;
        adamw_config oc;
        oc.lr = 1e-2f;
        ASSERT_TRUE(opt.init(optim_params(ps), oc).ok());
        llama_state ls;
        ASSERT_TRUE(llama_state_init(ls, *m, d.B, d.T, false).ok());
        std::vector<float> losses;
        for (int step = 0; step < 6; step++) {
            zero_grads(ps);
            losses.push_back(llama_forward(*m, ls, d.batch(), 1.0f));
            llama_backward(*m, ls, d.batch());
            if (step < 5) opt.step(oc.lr);
        }
        EXPECT_LT(losses[5], losses[0] - 1e-3f) << cfg;
        bool fa = std::string(cfg).find("lora_fa") != std::string::npos;
        auto a1 = snapshot(ps);
        for (size_t i = 0; i < ps.size(); i++) {
            if (ps[i].name.find("lora_A") != std::string::npos && fa) {
                EXPECT_EQ(a1[i], a0[i]) << "LoRA-FA moved A";
            }
        }
    }
}

TEST(lora, rank_errors_name_the_module) {
    auto m = tiny_model();
    adapter_set s;
    status st = attach(*m, "{\"r\":0}", s);
    EXPECT_EQ(st.code, PEFT_STATUS_CONFIG);
    EXPECT_NE(st.message.find("r"), std::string::npos) << st.message;
    st = attach(*m, "{\"r\":-3}", s);
    EXPECT_FALSE(st.ok());
    st = attach(*m, "{\"r\":2.5}", s);
    EXPECT_FALSE(st.ok());
    // k_proj is 32 -> 16: r = 17 is too large there (q_proj, 32 -> 32, would accept it)
    st = attach(*m, "{\"r\":17,\"target_modules\":[\"q_proj\",\"k_proj\"]}", s);
    EXPECT_EQ(st.code, PEFT_STATUS_CONFIG);
    EXPECT_NE(st.message.find("model.layers.0.self_attn.k_proj"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find("16"), std::string::npos) << st.message;
    st = attach(*m, "{\"r\":4,\"rank_pattern\":{\"q_proj\":33}}", s);
    EXPECT_NE(st.message.find("q_proj"), std::string::npos) << st.message;
    st = attach(*m, "{\"r\":16,\"target_modules\":[\"q_proj\",\"k_proj\"]}", s);
    EXPECT_TRUE(st.ok()) << st.message;
}

TEST(lora, config_errors) {
    auto m = tiny_model();
    adapter_set s;
    const char * bad[] = {"{\"lora_dropout\":1.5}", "{\"lora_alpha\":\"x\"}", "{\"use_dora\":1}",
                          "{\"use_dora\":true,\"dora_norm_axis\":\"col\"}", "{\"use_dora\":true,\"lora_fa\":true}", "{\"dora_norm_axis\":\"in\"}",
                          "{\"init_lora_weights\":\"eva\"}", "{\"bias\":\"all\"}", "{\"modules_to_save\":[\"lm_head\"]}",
                          "{\"use_rslora\":1}", "{\"peft_type\":\"NOPE\"}", "{\"rank_pattern\":{\"q_proj\":0}}",
                          "{\"alpha_pattern\":{\"(\":2}}", "[1,2]"};
    for (const char * c : bad) {
        status st = attach(*m, c, s);
        EXPECT_EQ(st.code, PEFT_STATUS_CONFIG) << c << " -> " << st.message;
    }
    status st = attach(*m, "{\"peft_type\":\"NOPE\"}", s);
    EXPECT_NE(st.hint.find("lora"), std::string::npos) << st.hint;
    // a training config carries many other keys: they are not the method's business
    st = attach(*m, "{\"adapter\":\"lora\",\"learning_rate\":0.001,\"datasets\":[{\"path\":\"x\"}],\"r\":4}", s);
    EXPECT_TRUE(st.ok()) << st.message;
    auto full = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_init_random(*full, tiny_hparams(), true, 1).ok());
    st = attach(*full, "{\"r\":4}", s);
    EXPECT_FALSE(st.ok()) << "a trainable base must be refused";
}

TEST(lora, registry) {
    std::vector<std::string> names = adapter_method_names();
    ASSERT_FALSE(names.empty());
    EXPECT_EQ(names[0], "lora");
    std::unique_ptr<adapter_method> m;
    ASSERT_TRUE(adapter_method_create("LORA", m).ok());
    EXPECT_STREQ(m->name(), "lora");
    status st = adapter_method_create("dora2", m);
    EXPECT_EQ(st.code, PEFT_STATUS_CONFIG);
    EXPECT_NE(st.hint.find("lora"), std::string::npos);
}

// ---- whole-path parity with tools/ref_lora.py ------------------------------------------------

TEST(lora_parity, ten_adamw_steps_match_pytorch) {
    const std::string fx = peft::testing::source_path("tests/fixtures/lora_parity");
    auto m = std::make_unique<llama_model>();
    status st = llama_load(*m, peft::testing::source_path("tests/fixtures/llama_gqa"), false);
    ASSERT_TRUE(st.ok()) << st.message;
    adapter_set s;
    st = adapter_load(fx + "/initial_adapter", *m, s);
    ASSERT_TRUE(st.ok()) << st.message << " " << st.hint;
    ASSERT_EQ(s.modules.size(), 14u);
    adapters_set_training(s, true);
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(fx + "/reference.safetensors", ref).ok());
    const std::vector<float> losses = trajectory_train(*m, s, parity_batch_load());
    const double worst_loss = expect_losses(ref, losses, 1e-4);
    const double worst_norm = expect_final_tensors(ref, adapter_set_params(s), false);
    std::printf("lora parity: worst loss rel %.3g, final A/B worst normwise %.3g\n", worst_loss, worst_norm);
}

// tools/ref_lora_fa.py: the same start, trained as LoRA-FA (A frozen, B's gradient
// preconditioned by the method's before_update hook, then AdamW on B).
TEST(lora_parity, lora_fa_ten_steps_match_pytorch) {
    const std::string fx = peft::testing::source_path("tests/fixtures/lora_parity");
    auto m = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*m, peft::testing::source_path("tests/fixtures/llama_gqa"), false).ok());
    adapter_set s;
    const std::string cfg = "{\"r\":4,\"lora_alpha\":8,\"lora_fa\":true,\"target_modules\":"
                            "[\"q_proj\",\"k_proj\",\"v_proj\",\"o_proj\",\"gate_proj\",\"up_proj\",\"down_proj\"]}";
    ASSERT_TRUE(attach(*m, cfg, s).ok());
    safetensors_file init, ref;
    ASSERT_TRUE(safetensors_open(fx + "/initial_adapter/adapter_model.safetensors", init).ok());
    ASSERT_TRUE(safetensors_open(peft::testing::source_path("tests/fixtures/lora_fa_parity/reference.safetensors"), ref).ok());
    std::vector<param_ref> ps = adapter_set_params(s);
    for (const param_ref & p : ps) {
        const std::vector<float> v = fixture_tensor(init, p.name);
        ASSERT_EQ((int64_t) v.size(), numel(p)) << p.name;
        std::copy(v.begin(), v.end(), p.value);
    }
    const auto a_before = snapshot(ps);
    const std::vector<float> losses = trajectory_train(*m, s, parity_batch_load());
    const double worst_loss = expect_losses(ref, losses, 1e-4);
    const double worst_norm = expect_final_tensors(ref, ps, true);
    const auto after = snapshot(ps);
    for (size_t i = 0; i < ps.size(); i++) {
        if (!ps[i].trainable) {
            EXPECT_EQ(after[i], a_before[i]) << ps[i].name << " moved";
        }
    }
    std::printf("lora-fa parity: worst loss rel %.3g, final B worst normwise %.3g\n", worst_loss, worst_norm);
}
