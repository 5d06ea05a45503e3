// test_optim.cpp: the optimizer interface (train/optim.h) and GaLore. AdamW's per-parameter
// step counts against a double AdamW; GaLore = AdamW at full rank when the projector is a
// signed permutation (Adam is equivariant only to those: METHODS §12 invariants), and not
// otherwise; GaLore's invariants (orthonormal projector, unchanged between refreshes, updates
// in its subspace, state shapes and bytes); six steps of full fine-tuning against
// tools/ref_galore.py; checkpoints of its projectors (round trip, another optimizer refused,
// trainer resume bit for bit); bad keys refused naming the key.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "adapters/fixture_util.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/llama.h"
#include "test_trainer_util.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/optim.h"
#include "train/train_loop.h"
#include "train/trainer.h"

using namespace peft;
using namespace peft::testing;

namespace {

// A parameter with its own value and gradient buffers.
struct owned_param {
    std::vector<float> value, grad;
    optim_param p;
    owned_param(const std::string & name, std::vector<int64_t> shape, uint64_t seed) {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        value = fixed_vector(n, seed, 0.5f);
        grad.assign((size_t) n, 0.0f);
        p.name = name;
        p.shape = shape;
        p.n = n;
        p.value = value.data();
        p.grad = grad.data();
    }
};

// torch.optim.AdamW in double for one parameter: its own moments and step count.
struct adamw_f64 {
    std::vector<double> w, m, v;
    int64_t t = 0;
    explicit adamw_f64(const std::vector<float> & w0) : w(w0.begin(), w0.end()), m(w0.size()), v(w0.size()) {}
    void step(const float * g, const adamw_config & c, double lr) {
        t++;
        const double bc1 = 1 - std::pow((double) c.beta1, (double) t), bc2 = 1 - std::pow((double) c.beta2, (double) t);
        for (size_t j = 0; j < w.size(); j++) {
            w[j] *= 1 - lr * c.weight_decay;
            m[j] = c.beta1 * m[j] + (1 - c.beta1) * g[j];
            v[j] = c.beta2 * v[j] + (1 - c.beta2) * (double) g[j] * g[j];
            w[j] -= lr / bc1 * m[j] / (std::sqrt(v[j]) / std::sqrt(bc2) + c.eps);
        }
    }
    void reset() {
        std::fill(m.begin(), m.end(), 0.0);
        std::fill(v.begin(), v.end(), 0.0);
        t = 0;
    }
};

// max |got - want| over a parameter, in units of lr
double worst_in_lr(const optim_param & p, const std::vector<double> & want, double lr) {
    double worst = 0;
    for (int64_t j = 0; j < p.n; j++) worst = std::max(worst, std::fabs(p.value[j] - want[(size_t) j]) / lr);
    return worst;
}

// A gradient [m, n] whose SVD bases are signed permutations: the rectangular diagonal of
// distinct magnitudes and mixed signs.
void diagonal_gradient(float * g, int64_t m, int64_t n) {
    std::fill(g, g + m * n, 0.0f);
    for (int64_t i = 0; i < std::min(m, n); i++) g[i * n + i] = (i % 2 ? -1.0f : 1.0f) * (float) (std::min(m, n) - i);
}

galore_config full_rank(int64_t r, galore_proj_type t) {
    galore_config g;
    g.rank = r;
    g.update_proj_gap = 1000;   // the step-0 projector throughout
    g.scale = 1.0f;
    g.proj_type = t;
    g.svd = GALORE_SVD_EXACT;   // the signed permutation is the exact SVD's
    return g;
}

} // namespace

// Per-parameter step counts: after a reset of one parameter its next update is a first AdamW
// update (bias correction restarted), the other's continues; both against a double AdamW.
TEST(optimizer, reset_restarts_one_parameters_bias_correction) {
    owned_param a("a", {5, 3}, 1), b("b", {7}, 2);
    adamw opt;
    adamw_config c;
    c.lr = 1e-2f;
    ASSERT_TRUE(opt.init({a.p, b.p}, c).ok());
    adamw_f64 ra(a.value), rb(b.value);
    for (int step = 0; step < 6; step++) {
        fixed_fill(a.grad.data(), a.p.n, 10 + step);
        fixed_fill(b.grad.data(), b.p.n, 20 + step);
        if (step == 4) {
            EXPECT_TRUE(opt.reset_state(a.value.data()));
            ra.reset();
            EXPECT_EQ(opt.steps[0], 0);
            EXPECT_EQ(opt.steps[1], 4);
        }
        opt.step(c.lr);
        ra.step(a.grad.data(), c, c.lr);
        rb.step(b.grad.data(), c, c.lr);
        EXPECT_LT(worst_in_lr(opt.params[0], ra.w, c.lr), 1e-4) << "step " << step;
        EXPECT_LT(worst_in_lr(opt.params[1], rb.w, c.lr), 1e-4) << "step " << step;
    }
    EXPECT_EQ(opt.steps[0], 2);
    EXPECT_EQ(opt.steps[1], 6);
    EXPECT_EQ(opt.step_count, 6);
    float other = 0;
    EXPECT_FALSE(opt.reset_state(&other));
}

// GaLore at rank min(m, n) with scale 1, whose projector(s) from the first gradient are signed
// permutations, is AdamW (up to where the two put eps): for std's right (m >= n) and left
// (m < n) sides and the two-sided full projection (the sides that keep every direction at that rank), with a 1-D parameter beside them. With a generic first gradient the
// projector rotates the coordinates and Adam is not rotation-invariant: far from AdamW.
TEST(galore, equals_adamw_at_full_rank_when_the_projector_is_a_signed_permutation) {
    const struct { int64_t m, n; galore_proj_type t; } cases[] = {
        {6, 4, GALORE_PROJ_STD}, {4, 6, GALORE_PROJ_STD}, {5, 5, GALORE_PROJ_FULL}};
    for (const auto & cs : cases) {
        for (bool permutation : {true, false}) {
            owned_param w("layers.0.mlp.up_proj.weight", {cs.m, cs.n}, 3), nrm("layers.0.input_layernorm.weight", {cs.n}, 4);
            galore_adamw opt;
            adamw_config c;
            c.lr = 1e-2f;
            c.weight_decay = 0.0f;
            ASSERT_TRUE(opt.init({w.p, nrm.p}, c, full_rank(std::min(cs.m, cs.n), cs.t)).ok());
            ASSERT_TRUE(opt.slots[0].projected);
            ASSERT_FALSE(opt.slots[1].projected);
            adamw_f64 rw(w.value), rn(nrm.value);
            double worst = 0, worst_norm = 0;
            for (int step = 0; step < 5; step++) {
                if (step == 0 && permutation) diagonal_gradient(w.grad.data(), cs.m, cs.n);
                else fixed_fill(w.grad.data(), w.p.n, 30 + step);
                fixed_fill(nrm.grad.data(), nrm.p.n, 40 + step);
                opt.step(c.lr);
                rw.step(w.grad.data(), c, c.lr);
                rn.step(nrm.grad.data(), c, c.lr);
                worst = std::max(worst, worst_in_lr(opt.params[0], rw.w, c.lr));
                worst_norm = std::max(worst_norm, worst_in_lr(opt.params[1], rn.w, c.lr));
            }
            EXPECT_LT(worst_norm, 1e-4);
            if (permutation) EXPECT_LT(worst, 1e-4) << cs.m << "x" << cs.n << " type " << cs.t;
            else EXPECT_GT(worst, 1e-2) << cs.m << "x" << cs.n << " type " << cs.t << ": a rotated basis should differ";
        }
    }
}

// METHODS §12 (8): P P^T = I_r (right), P^T P = I_r (left); P bitwise unchanged between
// refreshes and changed at t = T; every update between refreshes in P's row (right) or column
// (left) space; moments [m, r] / [r, n]; state bytes 4 (2 r max(m,n) + r min(m,n)).
TEST(galore, projector_invariants_and_state_shapes) {
    for (const auto & shape : std::vector<std::vector<int64_t>>{{12, 8}, {8, 12}}) {
        const int64_t m = shape[0], n = shape[1], r = 3, T = 3;
        owned_param w("layers.1.self_attn.q_proj.weight", shape, 5);
        std::fill(w.value.begin(), w.value.end(), 0.0f);   // the updates then carry no rounding of a larger W
        galore_adamw opt;
        adamw_config c;
        c.lr = 1e-2f;
        c.weight_decay = 0.0f;
        galore_config g;
        g.rank = r;
        g.update_proj_gap = T;
        ASSERT_TRUE(opt.init({w.p}, c, g).ok());
        const galore_adamw::slot & s = opt.slots[0];
        const bool right = m >= n;
        EXPECT_EQ(s.side, right ? 0 : 1);
        EXPECT_EQ(s.rows, right ? m : r);
        EXPECT_EQ(s.cols, right ? r : n);
        EXPECT_EQ(opt.state_bytes(), 4 * (2 * r * std::max(m, n) + r * std::min(m, n)));
        const int64_t pn = right ? r * n : m * r;
        std::vector<float> prev;
        for (int step = 0; step < 7; step++) {
            fixed_fill(w.grad.data(), w.p.n, 50 + step);
            const std::vector<float> before = w.value;
            opt.step(c.lr);
            std::vector<float> P(s.P, s.P + pn);
            if (step % T != 0) {
                EXPECT_EQ(std::memcmp(P.data(), prev.data(), (size_t) pn * 4), 0) << "step " << step;
            } else if (step > 0) {
                EXPECT_NE(std::memcmp(P.data(), prev.data(), (size_t) pn * 4), 0) << "step " << step;
            }
            prev = P;
            // orthonormality in double
            double ortho = 0;
            for (int64_t a = 0; a < r; a++) {
                for (int64_t b = 0; b < r; b++) {
                    double d = 0;
                    for (int64_t k = 0; k < (right ? n : m); k++) d += right ? (double) P[a * n + k] * P[b * n + k] : (double) P[k * r + a] * P[k * r + b];
                    ortho = std::max(ortho, std::fabs(d - (a == b ? 1.0 : 0.0)));
                }
            }
            EXPECT_LT(ortho, 1e-5);
            // the update minus its projection onto P's subspace
            std::vector<double> D((size_t) (m * n));
            double dmax = 0;
            for (size_t e = 0; e < D.size(); e++) dmax = std::max(dmax, std::fabs(D[e] = (double) w.value[e] - before[e]));
            double off = 0;
            for (int64_t i = 0; i < m; i++) {
                for (int64_t j = 0; j < n; j++) {
                    double proj = 0;
                    if (right) {
                        for (int64_t a = 0; a < r; a++) {
                            double c1 = 0;
                            for (int64_t k = 0; k < n; k++) c1 += D[(size_t) (i * n + k)] * P[a * n + k];
                            proj += c1 * P[a * n + j];
                        }
                    } else {
                        for (int64_t a = 0; a < r; a++) {
                            double c1 = 0;
                            for (int64_t k = 0; k < m; k++) c1 += P[k * r + a] * D[(size_t) (k * n + j)];
                            proj += P[i * r + a] * c1;
                        }
                    }
                    off = std::max(off, std::fabs(D[(size_t) (i * n + j)] - proj));
                }
            }
            EXPECT_GT(dmax, 1e-4);
            EXPECT_LT(off, 1e-5 * dmax) << "step " << step;
        }
    }
}

namespace {

// G [m, n] = X diag(sigma) Y^T with random orthonormal X, Y: sigma_a = 10 - a for a < r, then
// `tail` (a gap at r when tail << 10 - r), so the top-r subspace is known.
std::vector<float> gradient_with_spectrum(int64_t m, int64_t n, int64_t r, float tail) {
    const int64_t k = std::min(m, n);
    std::vector<float> a = fixed_vector(m * k, 91, 1.0f), b = fixed_vector(n * k, 92, 1.0f);
    std::vector<float> X((size_t) (m * k)), Y((size_t) (n * k)), Rm((size_t) (k * k));
    EXPECT_TRUE(qr_thin(X.data(), Rm.data(), a.data(), m, k).ok());
    EXPECT_TRUE(qr_thin(Y.data(), Rm.data(), b.data(), n, k).ok());
    std::vector<float> G((size_t) (m * n), 0.0f);
    for (int64_t c = 0; c < k; c++) {
        const float sigma = c < r ? 10.0f - (float) c : tail;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) G[(size_t) (i * n + j)] += sigma * X[(size_t) (i * k + c)] * Y[(size_t) (j * k + c)];
    }
    return G;
}

// The projector after one step, as the orthogonal projection it spans ([n,n] right, [m,m] left).
std::vector<double> galore_subspace(const std::vector<float> & G, int64_t m, int64_t n, int64_t r, galore_svd_kind kind) {
    owned_param w("layers.0.mlp.up_proj.weight", {m, n}, 3);
    std::copy(G.begin(), G.end(), w.grad.begin());
    galore_adamw opt;
    galore_config g;
    g.rank = r;
    g.svd = kind;
    EXPECT_TRUE(opt.init({w.p}, adamw_config{}, g).ok());
    opt.step(1e-3f);
    const galore_adamw::slot & s = opt.slots[0];
    const bool right = s.side == 0;
    const int64_t d = right ? n : m;
    std::vector<double> Pi((size_t) (d * d), 0.0);
    for (int64_t a = 0; a < r; a++)
        for (int64_t i = 0; i < d; i++)
            for (int64_t j = 0; j < d; j++)
                Pi[(size_t) (i * d + j)] += right ? (double) s.P[a * n + i] * s.P[a * n + j] : (double) s.P[i * r + a] * s.P[j * r + a];
    return Pi;
}

double max_abs_diff(const std::vector<double> & a, const std::vector<double> & b) {
    double worst = 0;
    for (size_t i = 0; i < a.size(); i++) worst = std::max(worst, std::fabs(a[i] - b[i]));
    return worst;
}

} // namespace

// galore_svd: randomized spans the exact SVD's top-r subspace when the spectrum has a gap at r
// (both sides); without a gap (flat spectrum) any r-subspace is a top one and the two differ,
// which shows the comparison can fail.
TEST(galore, randomized_projector_spans_the_exact_svds_subspace_at_a_spectral_gap) {
    for (const auto & mn : std::vector<std::pair<int64_t, int64_t>>{{48, 32}, {32, 48}}) {
        const int64_t m = mn.first, n = mn.second, r = 4;
        const std::vector<float> gap = gradient_with_spectrum(m, n, r, 0.05f);
        const double d_gap = max_abs_diff(galore_subspace(gap, m, n, r, GALORE_SVD_EXACT), galore_subspace(gap, m, n, r, GALORE_SVD_RANDOMIZED));
        EXPECT_LT(d_gap, 1e-4) << m << "x" << n;
        const std::vector<float> flat = gradient_with_spectrum(m, n, 0, 1.0f);
        const double d_flat = max_abs_diff(galore_subspace(flat, m, n, r, GALORE_SVD_EXACT), galore_subspace(flat, m, n, r, GALORE_SVD_RANDOMIZED));
        EXPECT_GT(d_flat, 0.05) << m << "x" << n;
        std::printf("galore %lldx%lld: randomized vs exact projection, gap %.2g, flat %.2g\n", (long long) m, (long long) n, d_gap, d_flat);
    }
}

// The rank against a targeted weight; galore_target_modules decides which weights those are.
TEST(galore, rank_larger_than_a_weight_is_refused_naming_the_key_and_tensor) {
    owned_param w("model.layers.0.self_attn.k_proj.weight", {16, 32}, 6);
    galore_adamw opt;
    galore_config g;
    g.rank = 17;
    const status st = opt.init({w.p}, adamw_config{}, g);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("galore_rank"), std::string::npos) << st.message;
    EXPECT_NE(st.message.find("k_proj"), std::string::npos) << st.message;
    EXPECT_NE(st.hint.find("16"), std::string::npos) << st.hint;
    g.rank = 16;
    EXPECT_TRUE(opt.init({w.p}, adamw_config{}, g).ok());
    // a weight not among the targets is plain AdamW, whatever the rank
    g.rank = 17;
    g.targets = galore_split_targets(" embed_tokens, lm_head");
    ASSERT_EQ(g.targets.size(), 2u);
    EXPECT_TRUE(opt.init({w.p}, adamw_config{}, g).ok());
    EXPECT_FALSE(opt.slots[0].projected);
}

// Six steps of full fine-tuning with GaLore (rank 8, T 3, scale 0.25, std) on the llama_gqa
// fixture against tools/ref_galore.py: the losses and every final weight.
TEST(galore_parity, six_full_fine_tuning_steps_match_pytorch) {
    llama_model m;
    ASSERT_TRUE(llama_load(m, source_path("tests/fixtures/llama_gqa"), true).ok());
    std::vector<optim_param> ps = llama_optim_params(m);
    std::vector<std::vector<float>> w0;
    for (const optim_param & p : ps) w0.emplace_back(p.value, p.value + p.n);
    train_config tc;
    tc.opt.lr = 1e-3f;
    tc.opt.eps = 1e-8f;
    tc.opt.weight_decay = 0.01f;
    tc.schedule = PEFT_SCHEDULE_CONSTANT;
    tc.max_grad_norm = 0.0f;
    tc.total_steps = 6;
    galore_config g;
    g.rank = 8;
    g.update_proj_gap = 3;
    g.scale = 0.25f;
    g.svd = GALORE_SVD_EXACT;   // the reference's torch.linalg.svd
    galore_adamw opt;
    ASSERT_TRUE(opt.init(ps, tc.opt, g).ok());
    int64_t n_projected = 0;
    for (const auto & s : opt.slots) n_projected += s.projected;
    EXPECT_EQ(n_projected, 14);   // 7 projections x 2 layers; embeddings, norms, lm_head plain
    const parity_batch pb = parity_batch_load();
    llama_state ls;
    ASSERT_TRUE(llama_state_init(ls, m, pb.B, pb.T, false).ok());
    const llama_batch batch = pb.batch();
    std::vector<float> losses;
    for (int64_t step = 0; step < 6; step++) {
        step_result r;
        ASSERT_TRUE(train_step(m, ls, opt, tc, &batch, 1, step, r).ok());
        losses.push_back(r.loss);
    }
    safetensors_file ref;
    ASSERT_TRUE(safetensors_open(source_path("tests/fixtures/galore/reference.safetensors"), ref).ok());
    const double worst_loss = expect_losses(ref, losses, 1e-5);
    double worst = 0;
    for (size_t i = 0; i < ps.size(); i++) {
        const std::vector<float> want = fixture_tensor(ref, "final." + ps[i].name);
        ASSERT_EQ((int64_t) want.size(), ps[i].n) << ps[i].name;
        double diff = 0, change = 0;
        for (int64_t e = 0; e < ps[i].n; e++) {
            diff = std::max(diff, (double) std::fabs(ps[i].value[e] - want[(size_t) e]));
            change = std::max(change, (double) std::fabs(want[(size_t) e] - w0[i][(size_t) e]));
        }
        worst = std::max(worst, diff / change);
        EXPECT_LT(diff / change, 2e-3) << ps[i].name;
    }
    std::printf("galore parity: worst loss rel %.3g, weights' change from W0 normwise %.3g\n", worst_loss, worst);
}

// trainer_state round trip of GaLore's moments and projectors (bitwise, step counts too: the
// galore_per_layer: each weight updated inside backward as soon as its gradient is final (and
// the gradient released) gives the same weights, bit for bit, as the step after backward, over
// projector refreshes; clipping or several micro-batches are refused naming what is needed.
TEST(galore, per_layer_update_equals_the_step_after_backward) {
    llama_model ma, mb;
    ASSERT_TRUE(llama_load(ma, source_path("tests/fixtures/llama_gqa"), true).ok());
    ASSERT_TRUE(llama_load(mb, source_path("tests/fixtures/llama_gqa"), true).ok());
    train_config tc;
    tc.opt.lr = 1e-3f;
    tc.opt.weight_decay = 0.01f;
    tc.max_grad_norm = 0.0f;
    tc.total_steps = 5;
    galore_config g;
    g.rank = 4;
    g.update_proj_gap = 2;
    galore_adamw oa, ob;
    ASSERT_TRUE(oa.init(llama_optim_params(ma), tc.opt, g).ok());
    ASSERT_TRUE(ob.init(llama_optim_params(mb), tc.opt, g).ok());
    const parity_batch pb = parity_batch_load();
    llama_state sa, sb;
    ASSERT_TRUE(llama_state_init(sa, ma, pb.B, pb.T, false).ok());
    ASSERT_TRUE(llama_state_init(sb, mb, pb.B, pb.T, false).ok());
    const llama_batch batch = pb.batch();
    train_config tl = tc;
    tl.per_layer_update = true;
    std::vector<float> losses;
    for (int64_t step = 0; step < 5; step++) {
        step_result ra, rb;
        ASSERT_TRUE(train_step(ma, sa, oa, tc, &batch, 1, step, ra).ok());
        losses.push_back(ra.loss);
        ASSERT_TRUE(train_step(mb, sb, ob, tl, &batch, 1, step, rb).ok());
        EXPECT_EQ(ra.loss, rb.loss) << "step " << step;
        EXPECT_NEAR(ra.grad_norm, rb.grad_norm, 1e-6 * ra.grad_norm) << "step " << step;
    }
    EXPECT_LT(losses.back(), losses.front());   // the steps did train
    EXPECT_EQ(ob.step_count, 5);
    EXPECT_EQ(ob.steps[0], 5);
    for (size_t i = 0; i < ma.tensors.size(); i++) {
        const llama_tensor & a = ma.tensors[i], & b = mb.tensors[i];
        EXPECT_EQ(std::memcmp(a.data, b.data, (size_t) a.numel() * 4), 0) << a.name;
        // the released gradients read as zero
        EXPECT_EQ(*std::max_element(b.grad, b.grad + b.numel()), 0.0f) << b.name;
    }
    tl.max_grad_norm = 1.0f;
    step_result r;
    status st = train_step(mb, sb, ob, tl, &batch, 1, 5, r);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("max_grad_norm"), std::string::npos) << st.message;
    // the keys: clipping and accumulation refused at config time
    for (const auto & kv : std::vector<std::pair<std::string, std::string>>{{"max_grad_norm", "1.0"}, {"gradient_accumulation_steps", "2"}}) {
        config_entries e;
        ASSERT_TRUE(config_set_flag(e, "adapter", "full").ok());
        ASSERT_TRUE(config_set_flag(e, "optimizer", "galore_adamw").ok());
        ASSERT_TRUE(config_set_flag(e, "galore_per_layer", "true").ok());
        if (kv.first != "max_grad_norm") {
            ASSERT_TRUE(config_set_flag(e, "max_grad_norm", "0").ok());
        }
        ASSERT_TRUE(config_set_flag(e, kv.first, kv.second).ok());
        train_options o;
        st = config_build(e, o, true);
        ASSERT_FALSE(st.ok()) << kv.first;
        EXPECT_NE(st.message.find("galore_per_layer"), std::string::npos) << st.message;
        EXPECT_NE(st.message.find(kv.first), std::string::npos) << st.message;
    }
}

// continued runs stay equal), and a GaLore checkpoint refused by AdamW naming the key.
TEST(galore, checkpoint_round_trip_of_projectors_and_another_optimizer_refused) {
    owned_param w("model.layers.0.mlp.down_proj.weight", {6, 9}, 7), nrm("model.norm.weight", {6}, 8);
    galore_config g;
    g.rank = 2;
    g.update_proj_gap = 2;
    galore_adamw a;
    adamw_config c;
    c.lr = 1e-2f;
    ASSERT_TRUE(a.init({w.p, nrm.p}, c, g).ok());
    for (int step = 0; step < 3; step++) {
        fixed_fill(w.grad.data(), w.p.n, 60 + step);
        fixed_fill(nrm.grad.data(), nrm.p.n, 70 + step);
        a.step(c.lr);
    }
    a.steps[1] = 1;   // as after a reset: the counts are per parameter
    const std::string dir = temp_dir("galore_state");
    trainer_state st;
    st.epoch_order = {0};
    ASSERT_TRUE(trainer_state_save(dir + "/trainer_state.safetensors", st, a, {}).ok());
    owned_param w2("model.layers.0.mlp.down_proj.weight", {6, 9}, 7), n2("model.norm.weight", {6}, 8);
    w2.value = w.value;
    n2.value = nrm.value;
    w2.p.value = w2.value.data();
    n2.p.value = n2.value.data();
    galore_adamw b;
    ASSERT_TRUE(b.init({w2.p, n2.p}, c, g).ok());
    trainer_state loaded;
    status s = trainer_state_load(dir + "/trainer_state.safetensors", loaded, b, {});
    ASSERT_TRUE(s.ok()) << s.message;
    EXPECT_EQ(b.steps, a.steps);
    EXPECT_EQ(b.step_count, 3);
    std::vector<optim_state_ref> ta, tb;
    a.state_tensors(ta);
    b.state_tensors(tb);
    ASSERT_EQ(ta.size(), 5u);   // m, v, proj of the weight; m, v of the norm
    for (size_t i = 0; i < ta.size(); i++) {
        EXPECT_EQ(ta[i].name, tb[i].name);
        EXPECT_EQ(std::memcmp(ta[i].data, tb[i].data, (size_t) ta[i].numel() * 4), 0) << ta[i].name;
    }
    EXPECT_EQ(ta[2].name, "optimizer.proj.model.layers.0.mlp.down_proj.weight");
    for (int step = 3; step < 5; step++) {   // step 4 refreshes the projector (t = 4)
        fixed_fill(w.grad.data(), w.p.n, 60 + step);
        fixed_fill(nrm.grad.data(), nrm.p.n, 70 + step);
        std::copy(w.grad.begin(), w.grad.end(), w2.grad.begin());
        std::copy(nrm.grad.begin(), nrm.grad.end(), n2.grad.begin());
        a.step(c.lr);
        b.step(c.lr);
    }
    EXPECT_EQ(w.value, w2.value);
    EXPECT_EQ(nrm.value, n2.value);
    adamw other;
    ASSERT_TRUE(other.init({w2.p, n2.p}, c).ok());
    s = trainer_state_load(dir + "/trainer_state.safetensors", loaded, other, {});
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message.find("optimizer"), std::string::npos) << s.message;
    EXPECT_NE(s.message.find("galore_adamw"), std::string::npos) << s.message;
}

// peft train with optimizer: galore_adamw: 3 steps + resume 3 == 6 straight bit for bit, with
// projector refreshes at steps 0, 2, 4 (one before the checkpoint, one after the resume).
TEST(galore, trainer_resume_is_bit_exact_across_projector_refreshes) {
    const std::string model = make_model_dir("galore_resume_model");
    const std::string data = make_data_file(model, "train.jsonl", 40, 1);
    const std::string a = temp_dir("galore_resume_a"), b = temp_dir("galore_resume_b"), c = temp_dir("galore_resume_c");
    auto opts = [&](const std::string & out, std::vector<std::pair<std::string, std::string>> extra) {
        std::vector<std::pair<std::string, std::string>> flags = {
            {"base_model", model}, {"datasets", data}, {"output_dir", out}, {"adapter", "full"}, {"optimizer", "galore_adamw"},
            {"galore_rank", "4"}, {"galore_update_proj_gap", "2"}, {"galore_scale", "0.5"}, {"learning_rate", "3e-3"},
            {"micro_batch_size", "2"}, {"sequence_len", "32"}, {"max_steps", "6"}, {"weight_decay", "0.1"}, {"seed", "3"},
            {"progress", "false"}, {"threads", "1"}};
        flags.insert(flags.end(), extra.begin(), extra.end());
        config_entries e;
        for (const auto & kv : flags) EXPECT_TRUE(config_set_flag(e, kv.first, kv.second).ok()) << kv.first;
        train_options o;
        const status st = config_build(e, o);
        EXPECT_TRUE(st.ok()) << st.message;
        return o;
    };
    train_summary straight, first, second;
    status st = train_run(opts(a, {}), straight);
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_TRUE(train_run(opts(b, {{"save_steps", "3"}}), first).ok());
    st = train_run(opts(c, {{"resume_from_checkpoint", b + "/checkpoint-3"}}), second);
    ASSERT_TRUE(st.ok()) << st.message;
    ASSERT_EQ(second.losses.size(), 3u);
    for (size_t i = 0; i < 3; i++) EXPECT_EQ(second.losses[i], straight.losses[i + 3]) << "step " << i + 4;
    EXPECT_LT(straight.losses.back(), straight.losses.front());
    safetensors_file fa, fc, ts;
    ASSERT_TRUE(safetensors_open(a + "/model.safetensors", fa).ok());
    ASSERT_TRUE(safetensors_open(c + "/model.safetensors", fc).ok());
    ASSERT_EQ(fa.names(), fc.names());
    for (const std::string & n : fa.names()) {
        EXPECT_EQ(std::memcmp(fa.find(n)->data, fc.find(n)->data, (size_t) fa.find(n)->n_bytes), 0) << n << " differs after resume";
    }
    ASSERT_TRUE(safetensors_open(b + "/checkpoint-3/trainer_state.safetensors", ts).ok());
    EXPECT_TRUE(ts.find("optimizer.proj.model.layers.0.self_attn.q_proj.weight")) << "the checkpoint carries the projectors";
    // resuming the GaLore checkpoint with AdamW: refused, naming the key
    train_summary wrong;
    train_options o = opts(temp_dir("galore_resume_d"), {{"resume_from_checkpoint", b + "/checkpoint-3"}});
    o.optimizer = "adamw";
    st = train_run(o, wrong);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("'optimizer'"), std::string::npos) << st.message;
}

TEST(galore, bad_keys_are_refused_naming_the_key) {
    const struct { std::vector<std::pair<std::string, std::string>> flags; const char * key; } cases[] = {
        {{{"adapter", "lora"}, {"optimizer", "galore_adamw"}}, "optimizer"},
        {{{"adapter", "full"}, {"optimizer", "sgd"}}, "optimizer"},
        {{{"adapter", "full"}, {"galore_rank", "8"}}, "galore_rank"},
        {{{"adapter", "full"}, {"optimizer", "galore_adamw"}, {"galore_proj_type", "diagonal"}}, "galore_proj_type"},
        {{{"adapter", "full"}, {"optimizer", "galore_adamw"}, {"galore_rank", "0"}}, "galore_rank"},
        {{{"adapter", "full"}, {"optimizer", "galore_adamw"}, {"galore_update_proj_gap", "0"}}, "galore_update_proj_gap"},
        {{{"adapter", "full"}, {"optimizer", "galore_adamw"}, {"galore_scale", "0"}}, "galore_scale"},
        {{{"adapter", "full"}, {"optimizer", "galore_adamw"}, {"galore_target_modules", " , "}}, "galore_target_modules"},
        {{{"adapter", "full"}, {"optimizer", "galore_adamw"}, {"galore_svd", "lanczos"}}, "galore_svd"},
        {{{"adapter", "full"}, {"optimizer", "galore_adamw"}, {"galore_svd_niter", "-1"}}, "galore_svd_niter"},
        {{{"adapter", "full"}, {"galore_svd", "exact"}}, "galore_svd"},
    };
    for (const auto & cs : cases) {
        config_entries e;
        status st;
        for (const auto & kv : cs.flags) {
            st = config_set_flag(e, kv.first, kv.second);
            if (!st.ok()) break;
        }
        if (st.ok()) {
            train_options o;
            st = config_build(e, o, true);
        }
        ASSERT_FALSE(st.ok()) << cs.key;
        EXPECT_NE(st.message.find(cs.key), std::string::npos) << st.message;
    }
}
