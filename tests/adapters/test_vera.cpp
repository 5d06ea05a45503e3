// VeRA module and method (METHODS §9): the shared projections against torch's own draws (bit for
// bit), one pair of buffers for every module, slicing, gradients against a double reference by
// finite differences, the init invariants (base output, dL/dlambda_d = 0, only lambda_b moves on
// step 1), the trainable count, dropout determinism, configuration and file errors, the saved
// config against Python's json.dumps, and whole-path parity with the PyTorch reference in
// tests/fixtures/vera_parity (tools/ref_vera.py).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "adapter_test_util.h"
#include "adapters/vera.h"
#include "core/rng.h"
#include "fixture_util.h"
#include "io/safetensors.h"
#include "train/optim.h"
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

void write_text(const std::string & path, const std::string & text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}

vera_method & vera_of(adapter_set & s) {
    auto * m = dynamic_cast<vera_method *>(s.method.get());
    EXPECT_NE(m, nullptr);
    return *m;
}

vera_module & module_of(adapter_set & s, size_t i) {
    auto * m = dynamic_cast<vera_module *>(s.modules[i].get());
    EXPECT_NE(m, nullptr);
    return *m;
}

// Standalone linear layers with VeRA modules on them (no model): two targets of different shapes
// so that the first one reads a strict leading block of the shared projections.
struct module_fixture {
    std::vector<float> W0, W1, bias;
    linear_weight      w0, w1;
    vera_method        method;
    std::unique_ptr<adapter_module> mod;
    vera_module *      vm = nullptr;

    module_fixture(int64_t OC, int64_t IC, const std::string & cfg_text) {
        const int64_t OC1 = OC + 3, IC1 = IC + 4;   // in_max = IC + 4, out_max = OC + 3
        W0 = peft::testing::fixed_vector(OC * IC, 11, 0.3f);
        W1 = peft::testing::fixed_vector(OC1 * IC1, 13, 0.3f);
        bias = peft::testing::fixed_vector(OC, 12, 0.1f);
        w0 = {};
        w0.type = PEFT_DTYPE_F32;
        w0.data = W0.data();
        w0.OC = OC;
        w0.IC = IC;
        w1 = w0;
        w1.data = W1.data();
        w1.OC = OC1;
        w1.IC = IC1;
        config c(cfg_text);
        status st = method.configure(c.root());
        EXPECT_TRUE(st.ok()) << st.message;
        target_info ts[2] = {{"model.layers.0.self_attn.q_proj", 0, IC, OC, &w0, bias.data()},
                             {"model.layers.0.mlp.up_proj", 0, IC1, OC1, &w1, nullptr}};
        EXPECT_TRUE(method.begin(ts, 2).ok());
        rng r(3);
        st = method.create(ts[0], r, mod);
        EXPECT_TRUE(st.ok()) << st.message;
        vm = dynamic_cast<vera_module *>(mod.get());
    }
};

// double reference of one module: y = x W^T + b + lambda_b * ((lambda_d * ((x * f) A^T)) B^T) with
// A = Ash[:, :IC] (row stride in_max) and B = Bsh[:OC, :]; f = keep / (1-p) per element
std::vector<double> ref_forward(const std::vector<double> & x, const std::vector<double> & W, const std::vector<double> & b,
                                const std::vector<double> & Ash, const std::vector<double> & Bsh, const std::vector<double> & lb,
                                const std::vector<double> & ld, const std::vector<double> & f, int64_t N, int64_t IC, int64_t OC,
                                int64_t R, int64_t in_max) {
    std::vector<double> y((size_t) (N * OC));
    for (int64_t n = 0; n < N; n++) {
        std::vector<double> h((size_t) R, 0.0);
        for (int64_t k = 0; k < R; k++) {
            for (int64_t i = 0; i < IC; i++) h[(size_t) k] += x[(size_t) (n * IC + i)] * f[(size_t) (n * IC + i)] * Ash[(size_t) (k * in_max + i)];
            h[(size_t) k] *= ld[(size_t) k];
        }
        for (int64_t o = 0; o < OC; o++) {
            double acc = b[(size_t) o];
            for (int64_t i = 0; i < IC; i++) acc += x[(size_t) (n * IC + i)] * W[(size_t) (o * IC + i)];
            double u = 0.0;
            for (int64_t k = 0; k < R; k++) u += h[(size_t) k] * Bsh[(size_t) (o * R + k)];
            y[(size_t) (n * OC + o)] = acc + lb[(size_t) o] * u;
        }
    }
    return y;
}

void grad_check(float dropout) {
    const int64_t N = 4, IC = 7, OC = 5, R = 3;
    module_fixture fx(OC, IC, "{\"r\":3,\"vera_dropout\":" + std::to_string(dropout) + "}");
    ASSERT_NE(fx.vm, nullptr);
    vera_module & m = *fx.vm;
    const vera_shared & sh = fx.method.shared;
    ASSERT_EQ(sh.in_max, IC + 4);
    ASSERT_EQ(sh.out_max, OC + 3);
    // both vectors away from their init so every path shows
    peft::testing::fixed_fill(m.lambda_b.data(), OC, 21, 0.8f);
    peft::testing::fixed_fill(m.lambda_d.data(), R, 22, 0.8f);
    std::vector<float> x = peft::testing::fixed_vector(N * IC, 31, 1.0f);
    std::vector<float> G = peft::testing::fixed_vector(N * OC, 32, 1.0f);   // dL/dy for L = sum(y * G)

    std::vector<float> y((size_t) (N * OC));
    m.forward(x.data(), N, y.data());
    const std::vector<float> f = dropout_factors(m, N, IC, dropout);
    peft::testing::guarded dx(N * IC, 0.0f);
    m.backward(x.data(), G.data(), N, dx.data());
    EXPECT_TRUE(dx.intact());

    using peft::testing::to_double;
    std::vector<double> xd = to_double(x.data(), N * IC), Wd = to_double(fx.W0.data(), OC * IC), bd = to_double(fx.bias.data(), OC),
                        Ad = to_double(sh.A.data(), R * sh.in_max), Bd = to_double(sh.B.data(), sh.out_max * R),
                        lbd = to_double(m.lambda_b.data(), OC), ldd = to_double(m.lambda_d.data(), R), fd = to_double(f.data(), N * IC);
    auto loss = [&](const std::vector<double> & xx, const std::vector<double> & lb, const std::vector<double> & ld) {
        std::vector<double> yy = ref_forward(xx, Wd, bd, Ad, Bd, lb, ld, fd, N, IC, OC, R, sh.in_max);
        double l = 0;
        for (size_t i = 0; i < yy.size(); i++) l += yy[i] * G[i];
        return l;
    };
    std::vector<double> yref = ref_forward(xd, Wd, bd, Ad, Bd, lbd, ldd, fd, N, IC, OC, R, sh.in_max);
    std::vector<float> yref_f(yref.begin(), yref.end());
    EXPECT_TRUE(peft::testing::check_close(y.data(), yref_f.data(), N * OC, 1e-5, 1e-6, "forward"));

    std::vector<double> gx = peft::testing::finite_diff(xd, [&](const std::vector<double> & v) { return loss(v, lbd, ldd); });
    std::vector<double> gb = peft::testing::finite_diff(lbd, [&](const std::vector<double> & v) { return loss(xd, v, ldd); });
    std::vector<double> gd = peft::testing::finite_diff(ldd, [&](const std::vector<double> & v) { return loss(xd, lbd, v); });
    EXPECT_TRUE(peft::testing::check_grad(dx.data(), gx, 1e-4, 1e-5, "dx"));
    EXPECT_TRUE(peft::testing::check_grad(m.dlambda_b.data(), gb, 1e-4, 1e-5, "dlambda_b"));
    EXPECT_TRUE(peft::testing::check_grad(m.dlambda_d.data(), gd, 1e-4, 1e-5, "dlambda_d"));
}

} // namespace

TEST(vera, projections_are_torch_draws_bit_for_bit) {
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(fixture("vera_parity/reference.safetensors"), ref).ok());
    struct draw { const char * prefix; int64_t key, R, in_max, out_max; };
    for (const draw & d : {draw{"projection.", 0, 4, 48, 48}, draw{"projection_m3.", -3, 8, 40, 24}}) {
        vera_shared sh;
        sh.R = d.R;
        sh.in_max = d.in_max;
        sh.out_max = d.out_max;
        vera_draw_projections(sh, d.key);
        const std::vector<float> A = peft::testing::fixture_tensor(ref, std::string(d.prefix) + "vera_A");
        const std::vector<float> B = peft::testing::fixture_tensor(ref, std::string(d.prefix) + "vera_B");
        EXPECT_EQ(sh.A, A) << d.prefix << "vera_A (projection_prng_key " << d.key << ")";
        EXPECT_EQ(sh.B, B) << d.prefix << "vera_B (projection_prng_key " << d.key << ")";
    }
}

TEST(vera, gradients_match_finite_differences) { grad_check(0.0f); }
TEST(vera, gradients_match_finite_differences_with_dropout) { grad_check(0.4f); }

// METHODS §9 (8): every module reads the same two buffers (no copies), its leading block
TEST(vera, all_modules_share_one_pair_of_projections) {
    auto m = tiny_model();
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"vera\",\"r\":4,\"target_modules\":\"all-linear\"}", s).ok());
    vera_method & vm = vera_of(s);
    ASSERT_EQ(s.modules.size(), 14u);
    EXPECT_EQ(vm.shared.in_max, 48);    // down_proj's n_ff
    EXPECT_EQ(vm.shared.out_max, 48);   // gate/up's n_ff
    for (size_t i = 0; i < s.modules.size(); i++) {
        const vera_module & mod = module_of(s, i);
        EXPECT_EQ(mod.A, vm.shared.A.data()) << s.targets[i].path;
        EXPECT_EQ(mod.B, vm.shared.B.data()) << s.targets[i].path;
        EXPECT_EQ(mod.lda, 48) << s.targets[i].path;
    }
    // one copy in the parameter list, frozen, with PEFT's names
    std::vector<param_ref> ps = adapter_set_params(s);
    ASSERT_GE(ps.size(), 2u);
    EXPECT_EQ(ps[0].name, "base_model.vera_A");
    EXPECT_EQ(ps[1].name, "base_model.vera_B");
    EXPECT_EQ(ps[0].shape, (std::vector<int64_t>{4, 48}));
    EXPECT_EQ(ps[1].shape, (std::vector<int64_t>{48, 4}));
    int shared_refs = 0;
    for (const param_ref & p : ps) {
        if (p.name.find("vera_A") != std::string::npos || p.name.find("vera_B") != std::string::npos) {
            shared_refs++;
            EXPECT_FALSE(p.trainable) << p.name;
            EXPECT_EQ(p.grad, nullptr) << p.name;
        }
    }
    EXPECT_EQ(shared_refs, 2);
    for (const optim_param & p : adapter_optim_params(s)) {
        EXPECT_NE(p.name.find("vera_lambda_"), std::string::npos) << p.name << ": only the lambdas have optimizer state";
    }
}

// A = A_sh[:, :IC], B = B_sh[:OC, :]: the delta of k_proj (32 -> 16) and down_proj (48 -> 32)
// against a closed form written over explicit copies of those blocks
TEST(vera, slicing_keeps_leading_rows_and_columns) {
    auto m = tiny_model();
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"vera\",\"r\":4,\"target_modules\":[\"k_proj\",\"down_proj\"]}", s).ok());
    randomize_trainable(adapter_set_params(s), 5);
    const vera_shared & sh = vera_of(s).shared;
    EXPECT_EQ(sh.in_max, 48);
    EXPECT_EQ(sh.out_max, 32);
    for (size_t i = 0; i < s.modules.size(); i++) {
        const vera_module & mod = module_of(s, i);
        const int64_t OC = mod.t.out_features, IC = mod.t.in_features, R = sh.R;
        std::vector<double> A((size_t) (R * IC)), B((size_t) (OC * R));   // the blocks, copied
        for (int64_t k = 0; k < R; k++) {
            for (int64_t j = 0; j < IC; j++) A[(size_t) (k * IC + j)] = sh.A[(size_t) (k * sh.in_max + j)];
        }
        for (int64_t o = 0; o < OC; o++) {
            for (int64_t k = 0; k < R; k++) B[(size_t) (o * R + k)] = sh.B[(size_t) (o * R + k)];
        }
        std::vector<float> dW((size_t) (OC * IC)), want((size_t) (OC * IC));
        mod.delta_weight(dW.data());
        for (int64_t o = 0; o < OC; o++) {
            for (int64_t j = 0; j < IC; j++) {
                double acc = 0;
                for (int64_t k = 0; k < R; k++) acc += B[(size_t) (o * R + k)] * mod.lambda_d[(size_t) k] * A[(size_t) (k * IC + j)];
                want[(size_t) (o * IC + j)] = (float) (mod.lambda_b[(size_t) o] * acc);
            }
        }
        EXPECT_TRUE(peft::testing::check_close(dW.data(), want.data(), OC * IC, 1e-5, 1e-7, s.targets[i].path.c_str()));
    }
}

// METHODS §9 (8): output bitwise the base at init; dL/dlambda_d = 0 exactly (lambda_b = 0), so
// one step (no weight decay) moves lambda_b only
TEST(vera, init_is_the_base_and_only_lambda_b_moves_on_step_one) {
    for (dtype storage : {PEFT_DTYPE_F32, PEFT_DTYPE_BF16}) {
        auto m = tiny_model(7, storage);
        batch_data d = make_batch(m->hp.n_vocab);
        std::vector<float> base_logits, vera_logits;
        const float base_loss = forward_logits(*m, d, base_logits);
        adapter_set s;
        ASSERT_TRUE(attach(*m, "{\"adapter\":\"vera\",\"r\":8,\"target_modules\":\"all-linear\",\"d_initial\":0.3}", s).ok());
        const float vera_loss = forward_logits(*m, d, vera_logits);
        EXPECT_EQ(vera_loss, base_loss);
        ASSERT_EQ(base_logits.size(), vera_logits.size());
        EXPECT_EQ(std::memcmp(base_logits.data(), vera_logits.data(), base_logits.size() * 4), 0) << "logits not bitwise equal";
        for (size_t i = 0; i < s.modules.size(); i++) {
            const vera_module & mod = module_of(s, i);
            for (float v : mod.lambda_b) ASSERT_EQ(v, 0.0f);
            for (float v : mod.lambda_d) ASSERT_EQ(v, 0.3f);
        }

        std::vector<param_ref> ps = adapter_set_params(s);
        const auto before = snapshot(ps);
        adamw opt;
        adamw_config oc;
        oc.lr = 1e-2f;
        oc.weight_decay = 0.0f;   // decoupled decay would shrink lambda_d without a gradient
        ASSERT_TRUE(opt.init(adapter_optim_params(s), oc).ok());
        llama_state ls;
        ASSERT_TRUE(llama_state_init(ls, *m, d.B, d.T, false).ok());
        train_config cfg;
        cfg.opt = oc;
        cfg.total_steps = 1;
        const llama_batch b = d.batch();
        step_result r;
        ASSERT_TRUE(train_step(*m, ls, opt, cfg, &b, 1, 0, r, &s).ok());
        const auto after = snapshot(ps);
        for (size_t i = 0; i < ps.size(); i++) {
            const bool is_d = ps[i].name.find("vera_lambda_d") != std::string::npos;
            const bool is_b = ps[i].name.find("vera_lambda_b") != std::string::npos;
            if (is_d) {
                for (int64_t j = 0; j < numel(ps[i]); j++) ASSERT_EQ(ps[i].grad[j], 0.0f) << ps[i].name;
            }
            if (is_b) EXPECT_NE(after[i], before[i]) << ps[i].name << " did not move";
            else EXPECT_EQ(after[i], before[i]) << ps[i].name << " moved";
        }
    }
}

// METHODS §9 (3): sum over targets of (r + out); 2 layers of q32 k16 v16 o32 gate48 up48 down32
TEST(vera, trainable_parameter_count_formula) {
    auto m = tiny_model();
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"vera\",\"r\":4,\"target_modules\":\"all-linear\"}", s).ok());
    int64_t n = 0;
    for (const optim_param & p : adapter_optim_params(s)) n += p.n;
    EXPECT_EQ(n, 2 * (7 * 4 + 32 + 16 + 16 + 32 + 48 + 48 + 32));
    adapter_set qv;   // the Llama default targets, PEFT's default r = 256 (above min(in, out): VeRA allows it)
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"vera\"}", qv).ok());
    n = 0;
    for (const optim_param & p : adapter_optim_params(qv)) n += p.n;
    EXPECT_EQ(n, 2 * (2 * 256 + 32 + 16));
    EXPECT_EQ(vera_of(qv).shared.A.size(), (size_t) (256 * 32));
}

TEST(vera, dropout_is_deterministic_and_recompute_safe) {
    const std::string cfg = "{\"adapter\":\"vera\",\"r\":4,\"vera_dropout\":0.25,\"target_modules\":\"all-linear\"}";
    auto run = [&](bool recompute, std::vector<float> & losses, std::vector<std::vector<float>> & grads, std::vector<std::string> & states) {
        auto m = tiny_model(5);
        batch_data d = make_batch(m->hp.n_vocab);
        adapter_set s;
        EXPECT_TRUE(attach(*m, cfg, s, 3).ok());
        std::vector<param_ref> ps = adapter_set_params(s);
        randomize_trainable(ps, 8);
        llama_state ls;
        EXPECT_TRUE(llama_state_init(ls, *m, d.B, d.T, recompute).ok());
        losses.clear();
        for (int i = 0; i < 3; i++) {
            zero_grads(ps);
            losses.push_back(llama_forward(*m, ls, d.batch(), 1.0f));
            llama_backward(*m, ls, d.batch());
        }
        grads.clear();
        for (const param_ref & p : ps) {
            if (p.grad) grads.emplace_back(p.grad, p.grad + numel(p));
        }
        states.clear();
        for (auto & mod : s.modules) states.push_back(mod->state());
    };
    std::vector<float> l1, l2, l3;
    std::vector<std::vector<float>> g1, g2, g3;
    std::vector<std::string> s1, s2, s3;
    run(false, l1, g1, s1);
    run(false, l2, g2, s2);
    run(true, l3, g3, s3);
    EXPECT_EQ(l1, l2);   // same seed: same masks
    EXPECT_EQ(g1, g2);
    EXPECT_NE(l1[0], l1[1]) << "each backward must advance to a fresh mask";
    EXPECT_EQ(s1, std::vector<std::string>(14, "3"));
    ASSERT_EQ(l1.size(), l3.size());
    for (size_t i = 0; i < l1.size(); i++) EXPECT_NEAR(l3[i], l1[i], 1e-6 * std::fabs(l1[i]));
    for (size_t i = 0; i < g1.size(); i++) {
        EXPECT_TRUE(peft::testing::check_close(g3[i].data(), g1[i].data(), (int64_t) g1[i].size(), 1e-5, 1e-7, "recompute grads"));
    }
}

TEST(vera, config_errors_name_the_key) {
    auto m = tiny_model();
    adapter_set s;
    struct bad_case { const char * cfg; const char * key; };
    const bad_case bad[] = {
        {"{\"adapter\":\"vera\",\"r\":0}", "r"},
        {"{\"adapter\":\"vera\",\"r\":-3}", "r"},
        {"{\"adapter\":\"vera\",\"r\":2.5}", "r"},
        {"{\"adapter\":\"vera\",\"d_initial\":\"x\"}", "d_initial"},
        {"{\"adapter\":\"vera\",\"vera_dropout\":1.0}", "vera_dropout"},
        {"{\"adapter\":\"vera\",\"projection_prng_key\":1.5}", "projection_prng_key"},
        {"{\"adapter\":\"vera\",\"save_projection\":1}", "save_projection"},
        {"{\"adapter\":\"vera\",\"init_weights\":\"yes\"}", "init_weights"},
        {"{\"adapter\":\"vera\",\"bias\":\"vera_only\"}", "bias"},
        {"{\"adapter\":\"vera\",\"fan_in_fan_out\":true}", "fan_in_fan_out"},
        {"{\"adapter\":\"vera\",\"modules_to_save\":[\"lm_head\"]}", "modules_to_save"},
        {"{\"adapter\":\"vera\",\"exclude_modules\":[\"q_proj\"]}", "exclude_modules"},
        {"{\"adapter\":\"vera\",\"lora_alpha\":16}", "lora_alpha"},
        {"{\"adapter\":\"vera\",\"r\":1099511627776}", "r"},
    };
    // (NaN, Infinity and 1e999 never reach configure: the JSON reader refuses them)
    for (const bad_case & c : bad) {
        adapter_set fresh;
        config cf(c.cfg);
        test_calibration calib;
        calib.model = m.get();
        const status st = adapters_attach(*m, cf.root(), 1, fresh, false, &calib);
        EXPECT_EQ(st.code, PEFT_STATUS_CONFIG) << c.cfg << " -> " << st.message;
        EXPECT_NE(st.message.find(c.key), std::string::npos) << c.cfg << " -> " << st.message;
    }
    // PEFT's peft_type spelling and the init_lora_weights that adapter_load injects are accepted
    EXPECT_TRUE(attach(*m, "{\"peft_type\":\"VERA\",\"r\":4,\"init_lora_weights\":true}", s).ok());
    EXPECT_STREQ(s.method->name(), "vera");
}

// ---- files -------------------------------------------------------------------------------------

// The config we write is what Python's json.dumps wrote for the same VeraConfig (the fixture)
TEST(vera, saved_config_is_peft_0_18_form) {
    auto m = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*m, fixture("llama_gqa"), false).ok());
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"vera\",\"r\":4,\"target_modules\":[\"q_proj\",\"k_proj\",\"v_proj\",\"o_proj\",\"gate_proj\","
                           "\"up_proj\",\"down_proj\"]}", s).ok());
    const std::string dir = peft::testing::temp_dir("vera_config_form");
    ASSERT_TRUE(adapter_save(dir, s, "peft.cpp/tests/fixtures/llama_gqa").ok());
    EXPECT_EQ(read_text(dir + "/adapter_config.json"), read_text(fixture("vera_parity/initial_adapter/adapter_config.json")));
    safetensors_file f;
    ASSERT_TRUE(safetensors_open(dir + "/adapter_model.safetensors", f).ok());
    EXPECT_EQ(f.tensors.size(), 2u + 2u * 14u);
    ASSERT_NE(f.find("base_model.vera_A"), nullptr);
    ASSERT_NE(f.find("base_model.model.model.layers.1.mlp.down_proj.vera_lambda_d"), nullptr);
    // save_projection false: the lambdas only
    adapter_set lean;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"vera\",\"r\":4,\"save_projection\":false}", lean).ok());
    const std::string dir2 = peft::testing::temp_dir("vera_config_lean");
    ASSERT_TRUE(adapter_save(dir2, lean, "").ok());
    safetensors_file f2;
    ASSERT_TRUE(safetensors_open(dir2 + "/adapter_model.safetensors", f2).ok());
    EXPECT_EQ(f2.tensors.size(), 2u * 4u);
    EXPECT_EQ(f2.find("base_model.vera_A"), nullptr);
}

TEST(vera, bad_files_are_refused_naming_the_tensor) {
    auto m = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*m, fixture("llama_gqa"), false).ok());
    const std::string src = fixture("vera_parity/initial_adapter");
    const std::string cfg = read_text(src + "/adapter_config.json");
    auto make_dir = [&](const std::string & name, const std::string & config, const std::string & weights) {
        const std::string dir = peft::testing::temp_dir(name);
        write_text(dir + "/adapter_config.json", config);
        std::filesystem::copy_file(weights, dir + "/adapter_model.safetensors");
        return dir;
    };
    auto replace = [](std::string s, const std::string & from, const std::string & to) {
        const size_t at = s.find(from);
        EXPECT_NE(at, std::string::npos) << from;
        return s.replace(at, from.size(), to);
    };
    adapter_set s;
    // made for other target modules: on q/k/v/o the model's in_max/out_max are 32, the file's 48
    const size_t list_at = cfg.find("\"target_modules\": [");
    ASSERT_NE(list_at, std::string::npos);
    std::string attn_only = cfg;
    attn_only.replace(list_at, cfg.find(']', list_at) + 1 - list_at, "\"target_modules\": [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\"]");
    const std::string narrow = make_dir("vera_bad_shape", attn_only, src + "/adapter_model.safetensors");
    status st = adapter_load(narrow, *m, s);
    EXPECT_EQ(st.code, PEFT_STATUS_SHAPE) << st.message;
    EXPECT_NE(st.message.find("base_model.vera_A"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find("[4, 32]"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find("[4, 48]"), std::string::npos) << st.message;
    EXPECT_TRUE(m->adapters.empty());
    // save_projection true, but the file has no projections
    const std::string missing = make_dir("vera_missing_a", cfg, fixture("vera_parity/initial_adapter_no_projection/adapter_model.safetensors"));
    st = adapter_load(missing, *m, s);
    EXPECT_EQ(st.code, PEFT_STATUS_SHAPE) << st.message;
    EXPECT_NE(st.message.find("missing tensor \"base_model.vera_A\""), std::string::npos) << st.message;
    // save_projection false with projections in the file: PEFT ignores them (with a warning);
    // we refuse rather than silently pick one of two possibly different pairs
    const std::string both = make_dir("vera_both", replace(cfg, "\"save_projection\": true", "\"save_projection\": false"),
                                      src + "/adapter_model.safetensors");
    st = adapter_load(both, *m, s);
    EXPECT_EQ(st.code, PEFT_STATUS_SHAPE) << st.message;
    EXPECT_NE(st.message.find("base_model.vera_A"), std::string::npos) << st.message;
    // r <= 0 in a file
    const std::string r0 = make_dir("vera_r0", replace(cfg, "\"r\": 4", "\"r\": 0"), src + "/adapter_model.safetensors");
    st = adapter_load(r0, *m, s);
    EXPECT_EQ(st.code, PEFT_STATUS_CONFIG) << st.message;
    EXPECT_NE(st.message.find("r"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find(r0), std::string::npos) << st.message;
}

// ---- whole-path parity with tools/ref_vera.py ---------------------------------------------------

namespace {

// max |got - want| <= atol or normwise <= rtol
::testing::AssertionResult close_to(const float * got, const std::vector<float> & want, double atol, double rtol, double & normwise) {
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < want.size(); i++) {
        max_diff = std::max(max_diff, (double) std::fabs(got[i] - want[i]));
        max_ref = std::max(max_ref, (double) std::fabs(want[i]));
    }
    normwise = max_ref > 0 ? max_diff / max_ref : max_diff;
    if (max_diff <= atol || normwise <= rtol) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "max abs diff " << max_diff << ", normwise " << normwise;
}

} // namespace

TEST(vera_parity, ten_adamw_steps_match_pytorch) {
    auto m = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*m, fixture("llama_gqa"), false).ok());
    adapter_set s;
    status st = adapter_load(fixture("vera_parity/initial_adapter"), *m, s);
    ASSERT_TRUE(st.ok()) << st.message << " " << st.hint;
    ASSERT_EQ(s.modules.size(), 14u);
    adapters_set_training(s, true);
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(fixture("vera_parity/reference.safetensors"), ref).ok());
    std::vector<param_ref> ps = adapter_set_params(s);
    double worst_grad = 0;
    const std::vector<float> losses = peft::testing::trajectory_train(*m, s, peft::testing::parity_batch_load(), 10, [&](int64_t step) {
        if (step != 0) return;
        for (const param_ref & p : ps) {   // the gradients themselves (Adam's update is nearly blind to their size)
            if (!p.grad) continue;
            double nw = 0;
            EXPECT_TRUE(close_to(p.grad, peft::testing::fixture_tensor(ref, "grad0." + p.name), 1e-7, 1e-4, nw)) << p.name;
            worst_grad = std::max(worst_grad, nw);
        }
    });
    const double worst_loss = peft::testing::expect_losses(ref, losses, 1e-5);
    const double worst_final = peft::testing::expect_final_tensors(ref, ps, true);
    std::printf("vera parity: worst loss rel %.3g, step-0 grad normwise %.3g, final lambdas normwise %.3g\n", worst_loss,
                worst_grad, worst_final);
}

// save_projection false: the loader regenerates PEFT's projections from projection_prng_key
TEST(vera_parity, regenerated_projections_equal_the_saved_ones) {
    auto m = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*m, fixture("llama_gqa"), false).ok());
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(fixture("vera_parity/reference.safetensors"), ref).ok());
    const peft::testing::parity_batch pb = peft::testing::parity_batch_load();
    std::vector<float> logits_saved, logits_regen;
    batch_data d;
    d.B = pb.B;
    d.T = pb.T;
    d.tok = pb.tok;
    d.tgt = pb.tgt;
    {
        adapter_set s;
        ASSERT_TRUE(adapter_load(fixture("vera_parity/initial_adapter"), *m, s).ok());
        forward_logits(*m, d, logits_saved);
    }
    adapter_set s;
    status st = adapter_load(fixture("vera_parity/initial_adapter_no_projection"), *m, s);
    ASSERT_TRUE(st.ok()) << st.message;
    const vera_method & vm = vera_of(s);
    EXPECT_FALSE(vm.save_projection);
    EXPECT_EQ(vm.shared.A, peft::testing::fixture_tensor(ref, "projection.vera_A"));
    EXPECT_EQ(vm.shared.B, peft::testing::fixture_tensor(ref, "projection.vera_B"));
    forward_logits(*m, d, logits_regen);
    EXPECT_EQ(logits_regen, logits_saved);
}
