// DoRA (METHODS §15): the module's gradients for both norm axes and both detach modes against a
// double-precision reference forward by finite differences (with the detach trick the reference
// holds n constant), the §15 (8) invariants (f == 1 and a bitwise base output at init, dm equal
// in both modes while dA/dB differ, rownorm(W_merged) == m, unmerge restores), the norm cache
// (stale after an optimizer step, not recomputed per forward), the file forms, and whole-path
// parity with the PyTorch reference in tests/fixtures/dora_parity (tools/ref_dora.py).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "adapter_test_util.h"
#include "adapters/dora.h"
#include "core/rng.h"
#include "core/threads.h"
#include "fixture_util.h"
#include "io/safetensors.h"
#include "train/optim.h"
#include "train/trainer.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

// A standalone linear layer [OC,IC] with bias and a DoRA module on it (no model).
struct dora_fixture {
    std::vector<float> W, bias;
    std::vector<uint16_t> W16;
    linear_weight      w;
    lora_method        method;
    std::unique_ptr<adapter_module> mod;
    dora_module *      dm = nullptr;

    dora_fixture(int64_t OC, int64_t IC, const std::string & cfg_text, dtype storage = PEFT_DTYPE_F32, uint64_t seed = 3) {
        W = peft::testing::fixed_vector(OC * IC, 11, 0.3f);
        bias = peft::testing::fixed_vector(OC, 12, 0.1f);
        w.type = storage;
        w.OC = OC;
        w.IC = IC;
        if (storage == PEFT_DTYPE_F32) {
            w.data = W.data();
        } else {
            W16.resize(W.size());
            convert_from_f32(storage, W.data(), W16.data(), W.size());
            w.data = W16.data();
        }
        config c(cfg_text);
        status st = method.configure(c.root());
        EXPECT_TRUE(st.ok()) << st.message;
        target_info t{"model.layers.0.self_attn.q_proj", 0, IC, OC, &w, bias.data()};
        EXPECT_TRUE(method.check(t).ok());
        rng r(seed);
        st = method.create(t, r, mod);
        EXPECT_TRUE(st.ok()) << st.message;
        dm = dynamic_cast<dora_module *>(mod.get());
    }
    // the base weight as the module sees it (dequantized)
    std::vector<float> base_f32() const {
        std::vector<float> out(W.size());
        linear_weight_rows_f32(out.data(), w, 0, w.OC);
        return out;
    }
};

// ||V|| along the axis in double, V = W + s B A: per row [OC] (axis out) or per column [IC]
std::vector<double> ref_norms(const std::vector<double> & W, const std::vector<double> & A, const std::vector<double> & B,
                              double s, int64_t OC, int64_t IC, int64_t R, bool axis_in) {
    std::vector<double> sq((size_t) (axis_in ? IC : OC), 0.0);
    for (int64_t o = 0; o < OC; o++) {
        for (int64_t i = 0; i < IC; i++) {
            double v = W[(size_t) (o * IC + i)];
            for (int64_t r = 0; r < R; r++) v += s * B[(size_t) (o * R + r)] * A[(size_t) (r * IC + i)];
            sq[(size_t) (axis_in ? i : o)] += v * v;
        }
    }
    for (double & x : sq) x = std::sqrt(x);
    return sq;
}

// The double reference forward of one DoRA module (METHODS §15 (1); axis in as dora.cpp's header).
// k [N,IC]: the dropout factors keep/(1-p) (ones without dropout). n_fixed non-null: use these
// norms (the detach trick: n is a constant), else recompute them from A and B.
std::vector<double> ref_forward(const std::vector<double> & x, const std::vector<double> & W, const std::vector<double> & b,
                                const std::vector<double> & A, const std::vector<double> & B, const std::vector<double> & m,
                                const std::vector<double> & k, const std::vector<double> * n_fixed, double s, int64_t N,
                                int64_t IC, int64_t OC, int64_t R, bool axis_in) {
    const std::vector<double> n = n_fixed ? *n_fixed : ref_norms(W, A, B, s, OC, IC, R, axis_in);
    std::vector<double> f(n.size());
    for (size_t j = 0; j < n.size(); j++) f[j] = m[j] / n[j];
    std::vector<double> y((size_t) (N * OC));
    for (int64_t r = 0; r < N; r++) {
        // xd = x k; axis out: y = x W^T + b + (f-1) xd W^T + f s (xd A^T) B^T
        // axis in: u = x + xd (f-1), ud = xd f, y = u W^T + b + s (ud A^T) B^T
        std::vector<double> xd((size_t) IC), u((size_t) IC), ud((size_t) IC), xa((size_t) R, 0.0);
        for (int64_t i = 0; i < IC; i++) {
            const double xi = x[(size_t) (r * IC + i)];
            xd[(size_t) i] = xi * k[(size_t) (r * IC + i)];
            u[(size_t) i] = axis_in ? xi + xd[(size_t) i] * (f[(size_t) i] - 1.0) : xi;
            ud[(size_t) i] = axis_in ? xd[(size_t) i] * f[(size_t) i] : xd[(size_t) i];
        }
        for (int64_t q = 0; q < R; q++) {
            for (int64_t i = 0; i < IC; i++) xa[(size_t) q] += ud[(size_t) i] * A[(size_t) (q * IC + i)];
        }
        for (int64_t o = 0; o < OC; o++) {
            double base = 0.0, based = 0.0, lo = 0.0;
            for (int64_t i = 0; i < IC; i++) {
                base += u[(size_t) i] * W[(size_t) (o * IC + i)];
                based += xd[(size_t) i] * W[(size_t) (o * IC + i)];
            }
            for (int64_t q = 0; q < R; q++) lo += xa[(size_t) q] * B[(size_t) (o * R + q)];
            y[(size_t) (r * OC + o)] = axis_in ? base + b[(size_t) o] + s * lo
                                               : base + b[(size_t) o] + (f[(size_t) o] - 1.0) * based + f[(size_t) o] * s * lo;
        }
    }
    return y;
}

struct grads {
    std::vector<float> dx, dA, dB, dm;
};

// Module gradients of L = sum(y * G) on fixed data; checks each against central finite
// differences of the double reference.
grads grad_check(bool axis_in, bool detach, float dropout) {
    const int64_t N = 4, IC = 7, OC = 5, R = 3;
    std::string cfg = std::string("{\"r\":3,\"lora_alpha\":5,\"use_dora\":true,\"dora_norm_axis\":\"") + (axis_in ? "in" : "out") +
                      "\",\"dora_detach_norm\":" + (detach ? "true" : "false") + ",\"lora_dropout\":" + std::to_string(dropout) + "}";
    dora_fixture fx(OC, IC, cfg);
    grads out;
    EXPECT_NE(fx.dm, nullptr);
    if (!fx.dm) return out;
    dora_module & m = *fx.dm;
    const int64_t K = axis_in ? IC : OC;
    EXPECT_EQ(m.detach, detach);
    EXPECT_EQ((int64_t) m.magnitude.size(), K);
    // B != 0 and m != ||V|| so every path shows
    peft::testing::fixed_fill(m.B.data(), OC * R, 21, 0.4f);
    std::vector<float> u = peft::testing::fixed_vector(K, 22, 0.3f);
    for (int64_t j = 0; j < K; j++) m.magnitude[(size_t) j] *= 1.0f + u[(size_t) j];
    m.mark_stale();   // B was set from outside
    std::vector<float> x = peft::testing::fixed_vector(N * IC, 31, 1.0f);
    std::vector<float> G = peft::testing::fixed_vector(N * OC, 32, 1.0f);

    std::vector<float> y((size_t) (N * OC));
    m.forward(x.data(), N, y.data());
    const std::vector<float> kf = dropout_factors(m, N, IC, dropout);
    peft::testing::guarded dx(N * IC, 0.0f);
    m.backward(x.data(), G.data(), N, dx.data());
    EXPECT_TRUE(dx.intact());

    using peft::testing::to_double;
    std::vector<double> xd = to_double(x.data(), N * IC), Wd = to_double(fx.W.data(), OC * IC), bd = to_double(fx.bias.data(), OC),
                        Ad = to_double(m.A.data(), R * IC), Bd = to_double(m.B.data(), OC * R),
                        md = to_double(m.magnitude.data(), K), kd = to_double(kf.data(), N * IC);
    const double s = m.scaling;
    const std::vector<double> n0 = ref_norms(Wd, Ad, Bd, s, OC, IC, R, axis_in);
    std::vector<float> n0f(n0.begin(), n0.end());
    EXPECT_TRUE(peft::testing::check_close(m.norm.data(), n0f.data(), K, 1e-6, 0.0, "norms from the cached terms"));
    const std::vector<double> * fixed = detach ? &n0 : nullptr;
    auto loss = [&](const std::vector<double> & xx, const std::vector<double> & AA, const std::vector<double> & BB,
                    const std::vector<double> & mm) {
        std::vector<double> yy = ref_forward(xx, Wd, bd, AA, BB, mm, kd, fixed, s, N, IC, OC, R, axis_in);
        double l = 0;
        for (size_t i = 0; i < yy.size(); i++) l += yy[i] * G[i];
        return l;
    };
    std::vector<double> yref = ref_forward(xd, Wd, bd, Ad, Bd, md, kd, nullptr, s, N, IC, OC, R, axis_in);
    std::vector<float> yref_f(yref.begin(), yref.end());
    EXPECT_TRUE(peft::testing::check_close(y.data(), yref_f.data(), N * OC, 1e-5, 1e-6, "forward"));

    using peft::testing::finite_diff;
    std::vector<double> gx = finite_diff(xd, [&](const std::vector<double> & v) { return loss(v, Ad, Bd, md); });
    std::vector<double> gA = finite_diff(Ad, [&](const std::vector<double> & v) { return loss(xd, v, Bd, md); });
    std::vector<double> gB = finite_diff(Bd, [&](const std::vector<double> & v) { return loss(xd, Ad, v, md); });
    std::vector<double> gm = finite_diff(md, [&](const std::vector<double> & v) { return loss(xd, Ad, Bd, v); });
    EXPECT_TRUE(peft::testing::check_grad(dx.data(), gx, 1e-4, 1e-5, "dx"));
    EXPECT_TRUE(peft::testing::check_grad(m.dA.data(), gA, 1e-4, 1e-5, "dA"));
    EXPECT_TRUE(peft::testing::check_grad(m.dB.data(), gB, 1e-4, 1e-5, "dB"));
    EXPECT_TRUE(peft::testing::check_grad(m.dmagnitude.data(), gm, 1e-4, 1e-5, "dm"));
    out.dx.assign(dx.data(), dx.data() + N * IC);
    out.dA = m.dA;
    out.dB = m.dB;
    out.dm = m.dmagnitude;
    return out;
}

double rel(const std::vector<float> & a, const std::vector<float> & b) {
    return peft::testing::rel_error(a.data(), b.data(), (int64_t) b.size());
}

} // namespace

TEST(dora, gradients_axis_out_detached) { grad_check(false, true, 0.0f); }
TEST(dora, gradients_axis_out_exact) { grad_check(false, false, 0.0f); }
TEST(dora, gradients_axis_in_detached) { grad_check(true, true, 0.0f); }
TEST(dora, gradients_axis_in_exact) { grad_check(true, false, 0.0f); }
TEST(dora, gradients_axis_out_detached_with_dropout) { grad_check(false, true, 0.4f); }
TEST(dora, gradients_axis_out_exact_with_dropout) { grad_check(false, false, 0.4f); }
TEST(dora, gradients_axis_in_detached_with_dropout) { grad_check(true, true, 0.4f); }
TEST(dora, gradients_axis_in_exact_with_dropout) { grad_check(true, false, 0.4f); }

// METHODS §15 (8): the detach trick leaves dm unchanged (n is the same number in both) and
// changes dA, dB (the path through n is dropped).
TEST(dora, detach_changes_da_db_but_not_dm) {
    for (bool axis_in : {false, true}) {
        grads det = grad_check(axis_in, true, 0.0f), ex = grad_check(axis_in, false, 0.0f);
        EXPECT_EQ(det.dm, ex.dm) << "axis " << (axis_in ? "in" : "out");
        EXPECT_GT(rel(det.dA, ex.dA), 1e-3);
        EXPECT_GT(rel(det.dB, ex.dB), 1e-3);
    }
}

// At init m = ||V|| by the forward's own code path, so f == 1 and the output is the base's bit
// for bit (f32, bf16 and f16 bases, both axes; the magnitude is the norm of the dequantized weight).
TEST(dora, output_is_bitwise_base_at_init) {
    const int64_t N = 5, IC = 24, OC = 20;
    for (dtype storage : {PEFT_DTYPE_F32, PEFT_DTYPE_BF16, PEFT_DTYPE_F16}) {
        for (const char * axis : {"out", "in"}) {
            dora_fixture fx(OC, IC, std::string("{\"r\":4,\"lora_alpha\":16,\"use_dora\":true,\"dora_norm_axis\":\"") + axis + "\"}", storage);
            ASSERT_NE(fx.dm, nullptr);
            std::vector<float> x = peft::testing::fixed_vector(N * IC, 41, 1.0f), y((size_t) (N * OC)), base((size_t) (N * OC));
            fx.mod->forward(x.data(), N, y.data());
            for (float f : fx.dm->scale) EXPECT_EQ(f, 1.0f);
            linear_forward(base.data(), x.data(), fx.w, fx.bias.data(), N);
            EXPECT_EQ(y, base) << axis;
            const bool in = std::string(axis) == "in";
            const std::vector<float> Wf = fx.base_f32();
            std::vector<double> want = ref_norms(peft::testing::to_double(Wf.data(), OC * IC), std::vector<double>(4 * IC, 0.0),
                                                 std::vector<double>(OC * 4, 0.0), 0.0, OC, IC, 4, in);
            std::vector<float> wf(want.begin(), want.end());
            EXPECT_TRUE(peft::testing::check_close(fx.dm->magnitude.data(), wf.data(), (int64_t) wf.size(), 1e-6, 0.0, axis));
        }
    }
}

// Merge: rownorm(W_merged) == m (the defining property), merged forward == unmerged, unmerge
// restores W; the same along columns for axis in.
TEST(dora, merge_gives_magnitude_norms_and_unmerge_restores) {
    const int64_t N = 6, IC = 12, OC = 10, R = 4;
    for (const char * axis : {"out", "in"}) {
        const bool in = std::string(axis) == "in";
        dora_fixture fx(OC, IC, std::string("{\"r\":4,\"lora_alpha\":8,\"use_dora\":true,\"dora_norm_axis\":\"") + axis + "\"}");
        ASSERT_NE(fx.dm, nullptr);
        dora_module & m = *fx.dm;
        peft::testing::fixed_fill(m.B.data(), OC * R, 51, 0.3f);
        std::vector<float> u = peft::testing::fixed_vector((int64_t) m.magnitude.size(), 52, 0.2f);
        for (size_t j = 0; j < u.size(); j++) m.magnitude[j] *= 1.0f + u[j];
        m.set_training(false);
        std::vector<float> x = peft::testing::fixed_vector(N * IC, 53, 1.0f), y((size_t) (N * OC)), ym((size_t) (N * OC));
        m.forward(x.data(), N, y.data());

        std::vector<float> Wm = fx.W;
        m.merge(Wm.data(), OC, IC);
        std::vector<double> got = ref_norms(peft::testing::to_double(Wm.data(), OC * IC), std::vector<double>(R * IC, 0.0),
                                            std::vector<double>(OC * R, 0.0), 0.0, OC, IC, R, in);
        std::vector<float> gotf(got.begin(), got.end());
        EXPECT_TRUE(peft::testing::check_close(gotf.data(), m.magnitude.data(), (int64_t) gotf.size(), 1e-5, 0.0, "norm(W_merged) == m"));
        linear_weight merged{PEFT_DTYPE_F32, Wm.data(), OC, IC};
        linear_forward(ym.data(), x.data(), merged, fx.bias.data(), N);
        EXPECT_LE(rel(ym, y), 1e-5) << axis;
        // delta_weight is W_merged - W
        std::vector<float> dW((size_t) (OC * IC));
        m.delta_weight(dW.data());
        for (size_t i = 0; i < dW.size(); i++) dW[i] += fx.W[i];
        EXPECT_LE(rel(dW, Wm), 1e-6) << axis;

        m.unmerge(Wm.data(), OC, IC);
        EXPECT_TRUE(peft::testing::check_close(Wm.data(), fx.W.data(), OC * IC, 1e-5, 1e-6, "unmerge restores W"));
    }
}

// The norms are computed once per optimizer step: a forward does not recompute them (changing
// B without telling the module leaves them), the method's after_update hook does; in the exact
// mode they follow A and B by themselves.
TEST(dora, norms_refresh_after_update_not_per_forward) {
    const int64_t N = 3, IC = 9, OC = 8, R = 2;
    for (bool detach : {true, false}) {
        dora_fixture fx(OC, IC, std::string("{\"r\":2,\"lora_alpha\":4,\"use_dora\":true,\"dora_detach_norm\":") + (detach ? "true" : "false") + "}");
        ASSERT_NE(fx.dm, nullptr);
        dora_module & m = *fx.dm;
        std::vector<float> x = peft::testing::fixed_vector(N * IC, 61, 1.0f), y((size_t) (N * OC));
        m.forward(x.data(), N, y.data());
        const std::vector<float> n_init = m.norm;
        peft::testing::fixed_fill(m.B.data(), OC * R, 62, 0.5f);   // an "optimizer step" on B
        m.forward(x.data(), N, y.data());
        auto fresh = [&] {
            std::vector<double> n = ref_norms(peft::testing::to_double(fx.W.data(), OC * IC), peft::testing::to_double(m.A.data(), R * IC),
                                              peft::testing::to_double(m.B.data(), OC * R), m.scaling, OC, IC, R, false);
            return std::vector<float>(n.begin(), n.end());
        };
        if (detach) {
            EXPECT_EQ(m.norm, n_init) << "a forward must not recompute the norms";
            adapter_module * mods[] = {fx.mod.get()};
            fx.method.after_update(step_info{}, mods, 1);
            m.forward(x.data(), N, y.data());
        }
        const std::vector<float> want = fresh();
        EXPECT_TRUE(peft::testing::check_close(m.norm.data(), want.data(), OC, 1e-6, 0.0, detach ? "after after_update" : "exact mode"));
        EXPECT_GT(rel(m.norm, n_init), 1e-3);
    }
}

// PiSSA + DoRA: m is the norm of the residual base plus the initial s B A, i.e. of the original W.
TEST(dora, pissa_magnitude_is_the_original_norm) {
    auto m = tiny_model(5);
    std::vector<std::vector<float>> W0;
    for (int64_t l = 0; l < m->hp.n_layer; l++) {
        for (int p = 0; p < LLAMA_PROJ_COUNT; p++) {
            const linear_weight & w = m->proj_weight(l, (llama_proj) p);
            std::vector<float> W((size_t) (w.OC * w.IC));
            linear_weight_rows_f32(W.data(), w, 0, w.OC);
            W0.push_back(W);
        }
    }
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"lora_alpha\":8,\"use_dora\":true,\"init_lora_weights\":\"pissa\",\"target_modules\":\"all-linear\"}", s).ok());
    for (size_t i = 0; i < s.modules.size(); i++) {
        auto * d = dynamic_cast<dora_module *>(s.modules[i].get());
        ASSERT_NE(d, nullptr);
        const target_info & t = s.targets[i];
        std::vector<double> want = ref_norms(peft::testing::to_double(W0[i].data(), t.out_features * t.in_features),
                                             std::vector<double>(4 * t.in_features, 0.0), std::vector<double>(t.out_features * 4, 0.0),
                                             0.0, t.out_features, t.in_features, 4, false);
        std::vector<float> wf(want.begin(), want.end());
        EXPECT_TRUE(peft::testing::check_close(d->magnitude.data(), wf.data(), t.out_features, 1e-5, 0.0, t.path.c_str()));
    }
}

// Files: axis out is PEFT's form (use_dora true, magnitude [out]); axis in stores [1, in] and
// says dora_norm_axis "in", and loads back as axis in.
TEST(dora, file_forms) {
    for (const char * axis : {"out", "in"}) {
        auto m = tiny_model(7);
        adapter_set s;
        ASSERT_TRUE(attach(*m, std::string("{\"r\":4,\"lora_alpha\":8,\"use_dora\":true,\"target_modules\":[\"q_proj\"],\"dora_norm_axis\":\"") + axis + "\"}", s).ok());
        randomize_trainable(adapter_set_params(s), 3);
        const std::string dir = peft::testing::temp_dir(std::string("dora_files_") + axis);
        ASSERT_TRUE(adapter_save(dir, s, "").ok());
        json_document cfg;
        ASSERT_TRUE(cfg.parse_file(dir + "/adapter_config.json", 1 << 20).ok());
        EXPECT_TRUE(cfg.root().get("use_dora").as_bool());
        const bool in = std::string(axis) == "in";
        EXPECT_EQ(cfg.root().get("dora_norm_axis").valid(), in);
        safetensors_file f;
        ASSERT_TRUE(safetensors_open(dir + "/adapter_model.safetensors", f).ok());
        const tensor_info * t = f.find("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector");
        ASSERT_NE(t, nullptr);
        EXPECT_EQ(t->shape, in ? std::vector<int64_t>({1, 32}) : std::vector<int64_t>({32}));
        auto fresh = tiny_model(7);
        adapter_set loaded;
        const status st = adapter_load(dir, *fresh, loaded);
        ASSERT_TRUE(st.ok()) << st.message;
        auto * d = dynamic_cast<dora_module *>(loaded.modules[0].get());
        ASSERT_NE(d, nullptr);
        EXPECT_EQ(d->axis_in, in);
    }
}

// ---- whole-path parity with tools/ref_dora.py ------------------------------------------------

TEST(dora_parity, ten_adamw_steps_match_pytorch) {
    const std::string fx = peft::testing::source_path("tests/fixtures/dora_parity");
    auto m = std::make_unique<llama_model>();
    status st = llama_load(*m, peft::testing::source_path("tests/fixtures/llama_gqa"), false);
    ASSERT_TRUE(st.ok()) << st.message;
    adapter_set s;
    st = adapter_load(fx + "/initial_adapter", *m, s);
    ASSERT_TRUE(st.ok()) << st.message << " " << st.hint;
    ASSERT_EQ(s.modules.size(), 14u);
    ASSERT_NE(dynamic_cast<dora_module *>(s.modules[0].get()), nullptr);
    adapters_set_training(s, true);
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(fx + "/reference.safetensors", ref).ok());
    // through train_step: the method's after_update marks the norms stale, as in peft train
    const std::vector<float> losses = peft::testing::trajectory_train(*m, s, peft::testing::parity_batch_load());
    const double worst_loss = peft::testing::expect_losses(ref, losses, 1e-4);
    const double worst_norm = peft::testing::expect_final_tensors(ref, adapter_set_params(s), false);
    std::printf("dora parity: worst loss rel %.3g, final A/B/m worst normwise %.3g\n", worst_loss, worst_norm);
}

// On a model with a bf16 base (the norm is of the dequantized weight): the output at init is the
// base's bit for bit, merged == unmerged and unmerge restores, for both axes.
TEST(dora, bf16_model_identity_merge_unmerge) {
    for (const char * axis : {"out", "in"}) {
        auto m = tiny_model(9, PEFT_DTYPE_BF16);
        batch_data d = make_batch(m->hp.n_vocab);
        std::vector<float> base, adapted, merged, restored;
        forward_logits(*m, d, base);
        adapter_set s;
        ASSERT_TRUE(attach(*m, std::string("{\"r\":4,\"lora_alpha\":8,\"use_dora\":true,\"target_modules\":\"all-linear\",\"dora_norm_axis\":\"") + axis + "\"}", s).ok());
        forward_logits(*m, d, adapted);
        EXPECT_EQ(adapted, base) << axis;
        randomize_trainable(adapter_set_params(s), 19);
        adapters_set_training(s, false);
        forward_logits(*m, d, adapted);
        EXPECT_GT(rel(adapted, base), 1e-3) << axis << ": the trained adapter must matter";
        ASSERT_TRUE(adapters_merge(*m, s).ok());
        forward_logits(*m, d, merged);
        EXPECT_LE(rel(merged, adapted), 1e-5) << axis;
        ASSERT_TRUE(adapters_unmerge(*m, s).ok());
        forward_logits(*m, d, restored);
        EXPECT_LE(rel(restored, adapted), 1e-5) << axis;
    }
}

// Same input, same bits on every run with 2 threads (the column sums of dm are blocked by column,
// each block walking the rows in order: no reduction order depends on scheduling), both axes,
// with dropout. (Across thread counts OpenBLAS's own sums differ, for LoRA alike.)
TEST(dora, two_threads_give_the_same_bits_every_run) {
    const int64_t N = 33, IC = 70, OC = 130;   // more than one 64-column block
    threads_set(2);
    for (const char * axis : {"out", "in"}) {
        std::vector<std::vector<float>> runs;
        for (int rep = 0; rep < 2; rep++) {
            dora_fixture fx(OC, IC, std::string("{\"r\":4,\"lora_alpha\":8,\"use_dora\":true,\"lora_dropout\":0.1,\"dora_norm_axis\":\"") + axis + "\"}");
            ASSERT_NE(fx.dm, nullptr);
            dora_module & m = *fx.dm;
            peft::testing::fixed_fill(m.B.data(), OC * 4, 71, 0.3f);
            m.mark_stale();
            std::vector<float> x = peft::testing::fixed_vector(N * IC, 72, 1.0f), G = peft::testing::fixed_vector(N * OC, 73, 1.0f);
            std::vector<float> y((size_t) (N * OC)), dx((size_t) (N * IC), 0.0f);
            m.forward(x.data(), N, y.data());
            m.backward(x.data(), G.data(), N, dx.data());
            std::vector<float> all = y;
            for (const std::vector<float> * v : {&dx, &m.dA, &m.dB, &m.dmagnitude}) all.insert(all.end(), v->begin(), v->end());
            runs.push_back(all);
        }
        EXPECT_EQ(runs[0], runs[1]) << axis;
    }
    threads_set(0);
}
