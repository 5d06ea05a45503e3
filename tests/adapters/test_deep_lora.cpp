// test_deep_lora.cpp: Deep LoRA (METHODS §13): the (8) invariants of the uncompressed and the
// compressed init, the paper's invariant-subspace property of plain GD on a deep factorisation,
// the compression against the reference's steps 1-6 done literally on explicit factors, the
// module's gradients against finite differences of a double reference, the calibration
// gradient against finite differences of the loss, the plain-LoRA file form, and 10 AdamW steps
// against PyTorch (tests/fixtures/deep_lora, made by tools/ref_deep_lora.py).
// Expected values come from double-precision code in this file (explicit factors, eigh) or from
// the fixture, never from the functions under test.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "adapter_test_util.h"
#include "adapters/deep_lora.h"
#include "fixture_util.h"
#include "io/safetensors.h"
#include "train/optim.h"
#include "core/rng.h"
#include "io/peft_format.h"
#include "kernels/kernels.h"
#include "testing.h"
#include "train/trainer.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

using mat = std::vector<double>;   // row-major

// C [a,c] = op(A) op(B), op(X) = X or X^T; A is [a,b] (or [b,a] transposed)
mat mul(const mat & A, const mat & B, int64_t a, int64_t b, int64_t c, bool ta = false, bool tb = false) {
    mat C((size_t) (a * c));
    gemm_f64(ta, tb, a, c, b, 1.0, A.data(), ta ? a : b, B.data(), tb ? b : c, 0.0, C.data(), c);
    return C;
}

mat to_d(const float * x, int64_t n) { return mat(x, x + n); }

mat transpose(const mat & A, int64_t r, int64_t c) {
    mat T((size_t) (r * c));
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < c; j++) T[(size_t) (j * r + i)] = A[(size_t) (i * c + j)];
    return T;
}

// eigenvalues (ascending) and eigenvectors [n,n] (columns) of a symmetric X
void eigh(const mat & X, int64_t n, std::vector<double> & ev, mat & vecs) {
    ev.assign((size_t) n, 0.0);
    vecs.assign((size_t) (n * n), 0.0);
    ASSERT_TRUE(eigh_range(ev.data(), vecs.data(), X.data(), n, 0, n).ok());
}

// the largest singular value of A [r,c]
double spectral_norm(const mat & A, int64_t r, int64_t c) {
    std::vector<double> ev;
    mat v;
    eigh(mul(A, A, c, r, c, true, false), c, ev, v);
    return std::sqrt(std::max(0.0, ev.back()));
}

// max |A^T A - s I| for A [r,c] (columns orthogonal with squared norm s)
double gram_error(const mat & A, int64_t r, int64_t c, double s) {
    const mat G = mul(A, A, c, r, c, true, false);
    double e = 0.0;
    for (int64_t i = 0; i < c; i++)
        for (int64_t j = 0; j < c; j++) e = std::max(e, std::fabs(G[(size_t) (i * c + j)] - (i == j ? s : 0.0)));
    return e;
}

// the number of singular values of A [r,c] above rel * the largest (fp64 eigh of A^T A)
int64_t numerical_rank(const mat & A, int64_t r, int64_t c, double rel) {
    std::vector<double> ev;
    mat v;
    eigh(mul(A, A, c, r, c, true, false), c, ev, v);
    int64_t n = 0;
    for (double e : ev) n += e > rel * rel * ev.back();
    return ev.back() > 0.0 ? n : 0;
}

// A Haar (semi-)orthogonal [r,c] from the function under test, widened
mat frame(int64_t r, int64_t c, rng & g) {
    std::vector<float> P((size_t) (r * c));
    EXPECT_TRUE(deep_lora_random_frame(P.data(), r, c, g).ok());
    return to_d(P.data(), r * c);
}

// The uncompressed init of METHODS §13 (2): W_l = eps O_l, d = max(m, n), W_1 [d,n], W_L [m,d].
struct deep_init {
    int64_t m, n, d, L;
    double  eps;
    std::vector<mat> W;       // W[0] = W_1 ...
    std::vector<int64_t> rows, cols;
    deep_init(int64_t m_, int64_t n_, int64_t L_, double eps_, rng & g) : m(m_), n(n_), d(std::max(m_, n_)), L(L_), eps(eps_) {
        for (int64_t l = 0; l < L; l++) {
            const int64_t r = l == L - 1 ? m : d, c = l == 0 ? n : d;
            mat O = frame(r, c, g);
            for (double & x : O) x *= eps;
            W.push_back(O);
            rows.push_back(r);
            cols.push_back(c);
        }
    }
    // W_hi ... W_lo (1-based, inclusive) [rows(hi), cols(lo)]
    mat product(int64_t lo, int64_t hi) const {
        mat acc = W[(size_t) (lo - 1)];
        for (int64_t l = lo + 1; l <= hi; l++) acc = mul(W[(size_t) (l - 1)], acc, rows[(size_t) (l - 1)], cols[(size_t) (l - 1)], cols[(size_t) (lo - 1)]);
        return acc;
    }
};

// The reference's get_left_right_factors done literally on a square factor A [d,d] = eps O, its
// gradient GA [d,d] and the end-to-end E [e,d] = (...) A: SVD GA = Ug S Vg^T, S1 = span(A^T
// Ug_perp / eps), S2 = span(Vg_perp), returns the projector [d,d] onto (S1 n S2)^perp. The
// intersection is the eigenvalue-2 eigenspace of P1 + P2 (fp64 eigh).
mat literal_projector(const mat & A, const mat & GA, int64_t d, int64_t k, double eps, int64_t & dim_out) {
    const int64_t h = k / 2;
    std::vector<double> ev;
    mat Ug, Vg;
    eigh(mul(GA, GA, d, d, d, false, true), d, ev, Ug);   // ascending: the top h are the last h columns
    eigh(mul(GA, GA, d, d, d, true, false), d, ev, Vg);
    mat P1((size_t) (d * d), 0.0), P2((size_t) (d * d), 0.0);
    const mat Ascaled = [&] { mat a = A; for (double & x : a) x /= eps; return a; }();
    const mat AtU = mul(Ascaled, Ug, d, d, d, true, false);   // columns: A^T Ug_j / eps
    for (int64_t j = 0; j < d - h; j++) {   // the complements: all but the top h
        for (int64_t a = 0; a < d; a++)
            for (int64_t b = 0; b < d; b++) {
                P1[(size_t) (a * d + b)] += AtU[(size_t) (a * d + j)] * AtU[(size_t) (b * d + j)];
                P2[(size_t) (a * d + b)] += Vg[(size_t) (a * d + j)] * Vg[(size_t) (b * d + j)];
            }
    }
    mat S((size_t) (d * d));
    for (size_t i = 0; i < S.size(); i++) S[i] = P1[i] + P2[i];
    mat Q;
    eigh(S, d, ev, Q);
    mat proj((size_t) (d * d), 0.0);
    for (int64_t i = 0; i < d; i++) proj[(size_t) (i * d + i)] = 1.0;
    dim_out = d;
    for (int64_t j = 0; j < d; j++) {
        if (ev[(size_t) j] < 2.0 - 1e-3) continue;   // the factors are orthogonal to fp32 rounding only
        dim_out--;
        for (int64_t a = 0; a < d; a++)
            for (int64_t b = 0; b < d; b++) proj[(size_t) (a * d + b)] -= Q[(size_t) (a * d + j)] * Q[(size_t) (b * d + j)];
    }
    return proj;
}

double max_abs_diff(const mat & a, const mat & b) {
    double e = 0.0;
    for (size_t i = 0; i < a.size(); i++) e = std::max(e, std::fabs(a[i] - b[i]));
    return e;
}

struct shape_case {
    int64_t m, n;
};

class deep_lora_shapes : public ::testing::TestWithParam<shape_case> {};

} // namespace

// METHODS §13 (8), uncompressed: W_l^T W_l = eps^2 I (tall or square) / W_l W_l^T (wide), and
// ||dW(0)||_2 <= eps^L.
TEST_P(deep_lora_shapes, uncompressed_init_is_scaled_orthogonal) {
    const auto [m, n] = GetParam();
    rng g(3);
    const double eps = 1e-3;
    deep_init init(m, n, 3, eps, g);
    for (int64_t l = 0; l < 3; l++) {
        const int64_t r = init.rows[(size_t) l], c = init.cols[(size_t) l];
        const double err = r >= c ? gram_error(init.W[(size_t) l], r, c, eps * eps)
                                  : gram_error(transpose(init.W[(size_t) l], r, c), c, r, eps * eps);
        EXPECT_LT(err, 1e-6 * eps * eps) << "W_" << l + 1;
    }
    EXPECT_LE(spectral_norm(init.product(1, 3), m, n), std::pow(eps, 3) * (1 + 1e-5));
}

// METHODS §13 steps 1-6 with the explicit factors (the reference's get_left_right_factors on the
// square factor: the output one W_L for m >= n, the input one W_1 for m < n), against
// deep_lora_compress given only P = O_L...O_1 and G. Bases differ; projectors must not.
TEST_P(deep_lora_shapes, compression_matches_the_literal_steps_on_explicit_factors) {
    const auto [m, n] = GetParam();
    const int64_t k = 4, L = 3;
    const double eps = 1e-3;
    rng g(5);
    deep_init init(m, n, L, eps, g);
    const mat E = init.product(1, L);                      // dW(0) [m,n]
    mat P = E;
    for (double & x : P) x /= std::pow(eps, L);
    const std::vector<float> Gf = peft::testing::fixed_vector(m * n, 77, 1.0f);   // d loss / d dW
    const mat G = to_d(Gf.data(), m * n);
    const int64_t d = std::max(m, n);
    mat proj;
    int64_t dim = 0;
    if (m >= n) {
        // grad W_L = G (W_{L-1}...W_1)^T [m,m]; the reference runs on W_L^T and its gradient's transpose
        const mat M = init.product(1, L - 1);              // [m,n]
        const mat GL = mul(G, M, m, n, m, false, true);
        proj = literal_projector(transpose(init.W[(size_t) (L - 1)], m, m), transpose(GL, m, m), d, k, eps, dim);
    } else {
        // grad W_1 = (W_L...W_2)^T G [n,n]
        const mat M = init.product(2, L);                  // [m,n]
        const mat G1 = mul(M, G, n, m, n, true, false);
        proj = literal_projector(init.W[0], G1, d, k, eps, dim);
    }
    ASSERT_EQ(dim, k) << "the two half-rank subspaces must span k dimensions";
    std::vector<float> Pf(P.begin(), P.end()), Uc((size_t) (m * k)), Vc((size_t) (n * k));
    ASSERT_TRUE(deep_lora_compress(Uc.data(), Vc.data(), Gf.data(), Pf.data(), m, n, k).ok());
    const mat U = to_d(Uc.data(), m * k), V = to_d(Vc.data(), n * k);
    // the square side carries the orthonormal basis (U_c for m >= n, V_c for m < n)
    const mat & B = m >= n ? U : V;
    EXPECT_LT(gram_error(B, d, k, 1.0), 1e-5);
    EXPECT_LT(max_abs_diff(mul(B, B, d, k, d, false, true), proj), 1e-5);
    // step 6 (and its transpose): the other side is dW(0)^T U_c / eps^L (dW(0) V_c / eps^L)
    mat other = m >= n ? mul(E, U, n, m, k, true, false) : mul(E, V, m, n, k);
    for (double & x : other) x /= std::pow(eps, L);
    EXPECT_LT(max_abs_diff(other, m >= n ? V : U), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(deep_lora, deep_lora_shapes, ::testing::Values(shape_case{12, 8}, shape_case{8, 12}, shape_case{10, 10}),
                         [](const ::testing::TestParamInfo<shape_case> & i) {
                             return std::to_string(i.param.m) + "x" + std::to_string(i.param.n);
                         });

// The paper's invariant subspace: plain GD on 1/2 ||W_3 W_2 W_1 - Phi||^2 from the eps-orthogonal
// init, Phi of rank r: every W_l(t) - W_l(0) has numerical rank <= 2r (rel tol 1e-6) at every t
// checked, while the fit goes from nothing to most of Phi.
TEST(deep_lora, gd_updates_stay_in_a_2r_dimensional_subspace) {
    const int64_t d = 10, r = 2, L = 3;
    const double eps = 1e-3, lr = 0.3;
    rng g(11);
    deep_init init(d, d, L, eps, g);
    const std::vector<mat> W0 = init.W;
    const std::vector<float> a = peft::testing::fixed_vector(d * r, 21, 1.0f), b = peft::testing::fixed_vector(d * r, 22, 1.0f);
    mat Phi = mul(to_d(a.data(), d * r), to_d(b.data(), d * r), d, r, d, false, true);   // rank 2
    const double phi_norm = spectral_norm(Phi, d, d);
    for (double & x : Phi) x /= phi_norm;   // ||Phi||_2 = 1: the GD step lr is stable at the fit
    auto loss = [&] {
        const mat E = init.product(1, L);
        double s = 0.0;
        for (size_t i = 0; i < E.size(); i++) s += 0.5 * (E[i] - Phi[i]) * (E[i] - Phi[i]);
        return s;
    };
    const double first = loss();
    const int64_t checks[] = {1, 10, 100, 1000, 5000, 10000, 20000};   // escape of the 1st, then the 2nd direction
    int64_t t = 0;
    for (int64_t until : checks) {
        for (; t < until; t++) {
            mat R = init.product(1, L);
            for (size_t i = 0; i < R.size(); i++) R[i] -= Phi[i];   // d loss / d (W_3 W_2 W_1)
            std::vector<mat> grads;
            for (int64_t l = 1; l <= L; l++) {   // grad W_l = (W_L..W_{l+1})^T R (W_{l-1}..W_1)^T
                mat left = l < L ? mul(init.product(l + 1, L), R, d, d, d, true, false) : R;
                grads.push_back(l > 1 ? mul(left, init.product(1, l - 1), d, d, d, false, true) : left);
            }
            for (int64_t l = 0; l < L; l++)
                for (size_t i = 0; i < grads[(size_t) l].size(); i++) init.W[(size_t) l][i] -= lr * grads[(size_t) l][i];
        }
        for (int64_t l = 0; l < L; l++) {
            mat D = init.W[(size_t) l];
            for (size_t i = 0; i < D.size(); i++) D[i] -= W0[(size_t) l][i];
            const int64_t rank = numerical_rank(D, d, d, 1e-6);
            EXPECT_LE(rank, 2 * r) << "W_" << l + 1 << " at t = " << t;
            EXPECT_GE(rank, 1) << "W_" << l + 1 << " at t = " << t;
        }
    }
    EXPECT_LT(loss(), 0.1 * first) << "GD must fit the target for the check to mean something";
}

// METHODS §13 (8), compressed (attached to the tiny model through the calibration gradient):
// U_c^T U_c = I_k (m >= n) or V_c^T V_c = I_k (m < n), the inner factors exactly eps I_k, and
// ||dW_c(0)||_2 <= eps^L.
TEST(deep_lora, compressed_init_invariants) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"deep_lora\",\"r\":4,\"target_modules\":\"all-linear\"}", s).ok());
    const double eps = 1e-3;
    for (size_t i = 0; i < s.modules.size(); i++) {
        auto & mod = dynamic_cast<deep_lora_module &>(*s.modules[i]);
        const int64_t OC = mod.t.out_features, IC = mod.t.in_features, k = mod.k;
        const bool tall = OC >= IC;
        EXPECT_LT(gram_error(to_d(tall ? mod.U.data() : mod.V.data(), (tall ? OC : IC) * k), tall ? OC : IC, k, 1.0), 1e-5)
            << s.targets[i].path;
        for (int64_t l = 0; l < mod.L; l++)
            for (int64_t a = 0; a < k; a++)
                for (int64_t b = 0; b < k; b++) ASSERT_EQ(mod.W[(size_t) (l * k * k + a * k + b)], a == b ? (float) eps : 0.0f);
        std::vector<float> dW((size_t) (OC * IC));
        mod.delta_weight(dW.data());
        EXPECT_LE(spectral_norm(to_d(dW.data(), OC * IC), OC, IC), std::pow(eps, 3) * (1 + 1e-4)) << s.targets[i].path;
        EXPECT_GT(spectral_norm(to_d(dW.data(), OC * IC), OC, IC), 0.5 * std::pow(eps, 3)) << "dW_c(0) = eps^3 U_c U_c^T P";
    }
}

// The module's forward and backward (dx, every inner factor, U_c and V_c with gamma > 0) against
// a double reference of the forward and its central finite differences.
TEST(deep_lora, module_gradients_match_double_finite_differences) {
    const int64_t OC = 6, IC = 5, k = 4, L = 3, N = 3;
    const std::vector<float> Wb = peft::testing::fixed_vector(OC * IC, 1, 0.5f), bias = peft::testing::fixed_vector(OC, 2, 0.1f);
    linear_weight lw;
    lw.data = Wb.data();
    lw.OC = OC;
    lw.IC = IC;
    target_info t{"layer", 0, IC, OC, &lw, bias.data()};
    deep_lora_module mod(t, k, L, 1e-3f, 0.5f);
    peft::testing::fixed_fill(mod.U.data(), OC * k, 3, 0.5f);
    peft::testing::fixed_fill(mod.V.data(), IC * k, 4, 0.5f);
    peft::testing::fixed_fill(mod.W.data(), L * k * k, 5, 0.6f);
    const std::vector<float> x = peft::testing::fixed_vector(N * IC, 6, 1.0f), R = peft::testing::fixed_vector(N * OC, 7, 1.0f);

    // double reference: y = x Wb^T + b + x V W1^T W2^T W3^T U^T; loss = sum(y * R)
    auto ref_loss = [&](const mat & xd, const mat & U, const mat & V, const mat & Wi, mat * y_out) {
        mat t0 = mul(xd, V, N, IC, k);
        for (int64_t l = 0; l < L; l++) {
            mat wl(Wi.begin() + l * k * k, Wi.begin() + (l + 1) * k * k);
            t0 = mul(t0, wl, N, k, k, false, true);
        }
        mat y = mul(t0, U, N, k, OC, false, true);
        const mat base = mul(xd, to_d(Wb.data(), OC * IC), N, IC, OC, false, true);
        double s = 0.0;
        for (int64_t i = 0; i < N * OC; i++) {
            y[(size_t) i] += base[(size_t) i] + bias[(size_t) (i % OC)];
            s += y[(size_t) i] * R[(size_t) i];
        }
        if (y_out) *y_out = y;
        return s;
    };
    mat X = to_d(x.data(), N * IC), U = to_d(mod.U.data(), OC * k), V = to_d(mod.V.data(), IC * k), Wi = to_d(mod.W.data(), L * k * k);
    mat y_ref;
    ref_loss(X, U, V, Wi, &y_ref);

    std::vector<float> y((size_t) (N * OC)), dx((size_t) (N * IC), 0.0f);
    mod.forward(x.data(), N, y.data());
    EXPECT_LT(max_abs_diff(to_d(y.data(), N * OC), y_ref), 1e-5);
    mod.backward(x.data(), R.data(), N, dx.data());

    auto check = [&](mat & theta, const float * grad, const char * what) {
        for (size_t i = 0; i < theta.size(); i++) {
            const double keep = theta[i], e = 1e-6;
            theta[i] = keep + e;
            const double lp = ref_loss(X, U, V, Wi, nullptr);
            theta[i] = keep - e;
            const double lm = ref_loss(X, U, V, Wi, nullptr);
            theta[i] = keep;
            const double fd = (lp - lm) / (2 * e);
            EXPECT_NEAR(grad[i], fd, 1e-4 * (1 + std::fabs(fd))) << what << "[" << i << "]";
        }
    };
    check(X, dx.data(), "dx");
    check(U, mod.dU.data(), "dU_c");
    check(V, mod.dV.data(), "dV_c");
    check(Wi, mod.dW.data(), "dWt");
}

// The platform piece: the calibration pass's sum of dy^T x per target is d loss / d W of the
// frozen base (loss = the mean over batches of each batch's mean token loss), checked along a
// random direction against central differences, for a last-layer target and for a first-layer
// one whose gradient flows back through the other probe's dx. 3 rows in batches of 2: the
// second batch is padded.
TEST(deep_lora, calibration_gradient_matches_finite_differences) {
    auto m = tiny_model(7);
    data_rows rows;
    rows.T = 8;
    rows.n_rows = 3;
    for (int64_t r = 0; r < rows.n_rows; r++)
        for (int64_t t = 0; t < rows.T; t++) {
            rows.input_ids.push_back((int32_t) ((r * 17 + t * 7) % 60 + 2));
            rows.labels.push_back(rows.input_ids.back());
            rows.position_ids.push_back((int32_t) t);
            rows.segment_ids.push_back(1);
        }
    const int64_t layers[2] = {0, 1};
    const llama_proj projs[2] = {LLAMA_PROJ_Q, LLAMA_PROJ_UP};
    struct grad_observer : calibration_observer {
        std::vector<std::vector<float>> G;   // [OC,IC] per target
        std::vector<int64_t> OC, IC;
        bool wants_gradients() const override { return true; }
        status observe_gradient(int64_t i, const float * x, const float * dy, int64_t N) override {
            gemm(true, false, OC[(size_t) i], IC[(size_t) i], N, 1.0f, dy, OC[(size_t) i], x, IC[(size_t) i], 1.0f, G[(size_t) i].data(),
                 IC[(size_t) i]);
            return {};
        }
    } obs;
    std::vector<target_info> ts;
    for (int i = 0; i < 2; i++) {
        linear_weight & w = m->proj_weight(layers[i], projs[i]);
        obs.OC.push_back(w.OC);
        obs.IC.push_back(w.IC);
        obs.G.emplace_back((size_t) (w.OC * w.IC), 0.0f);
        ts.push_back(target_info{"target", layers[i], w.IC, w.OC, &w, nullptr});
    }
    ASSERT_TRUE(calibrate_rows(*m, rows, 3, 2, ts.data(), 2, obs).ok());

    batch_buffers b1, b2;
    b1.init(2, rows.T);
    b2.init(2, rows.T);
    const int64_t first[2] = {0, 1}, second[1] = {2};
    b1.fill(rows, first, 2);
    b2.fill(rows, second, 1);
    for (int i = 0; i < 2; i++) {
        const linear_weight & w = m->proj_weight(layers[i], projs[i]);
        std::vector<float> W0((size_t) (w.OC * w.IC));
        linear_weight_rows_f32(W0.data(), w, 0, w.OC);
        const std::vector<float> D = peft::testing::fixed_vector(w.OC * w.IC, 9 + (uint64_t) i, 1.0f);
        auto loss_at = [&](double e) {
            std::vector<float> We(W0.size());
            for (size_t j = 0; j < We.size(); j++) We[j] = (float) (W0[j] + e * D[j]);
            llama_replace_weight(*m, layers[i], projs[i], We.data(), PEFT_DTYPE_F32);
            llama_state s;
            EXPECT_TRUE(llama_state_init(s, *m, 2, rows.T, false).ok());
            const double l1 = llama_forward(*m, s, b1.batch(), 0.0f);
            return 0.5 * (l1 + (double) llama_forward(*m, s, b2.batch(), 0.0f));
        };
        double gd = 0.0;
        for (size_t j = 0; j < D.size(); j++) gd += (double) obs.G[(size_t) i][j] * D[j];
        const double e = 1e-2;
        const double fd = (loss_at(e) - loss_at(-e)) / (2 * e);
        loss_at(0.0);
        EXPECT_NEAR(gd, fd, 2e-2 * std::fabs(fd) + 1e-5) << "target " << i;
        EXPECT_GT(std::fabs(gd), 1e-4) << "a zero gradient would pass trivially";
    }
}

// The file is a plain LoRA PEFT loads: LoraConfig with r = lora_alpha = k (s = 1), lora_A =
// Wt_3 Wt_2 Wt_1 V_c^T (recomputed here in double), lora_B = U_c, and adapter_load of it gives
// the adapted model's outputs (fp-exact).
TEST(deep_lora, saved_as_a_plain_lora) {
    auto m = tiny_model(7);
    const batch_data d = make_batch(m->hp.n_vocab);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"deep_lora\",\"r\":4,\"target_modules\":[\"q_proj\",\"down_proj\"]}", s).ok());
    randomize_trainable(adapter_set_params(s), 31);
    adapters_set_training(s, false);
    std::vector<float> before, after;
    forward_logits(*m, d, before);
    const std::string dir = peft::testing::temp_dir("deep_lora_plain");
    ASSERT_TRUE(adapter_save(dir, s, "").ok());

    std::ifstream f(dir + "/adapter_config.json");
    std::stringstream ss;
    ss << f.rdbuf();
    config cfg(ss.str());
    EXPECT_EQ(cfg.root().get("peft_type").as_string(), "LORA");
    EXPECT_EQ(cfg.root().get("r").as_int(), 4);
    EXPECT_EQ(cfg.root().get("lora_alpha").as_double(), 4.0);
    EXPECT_FALSE(cfg.root().get("use_rslora").as_bool());

    std::vector<param_ref> file = adapter_set_exported(s);
    ASSERT_EQ(file.size(), 2 * s.modules.size());
    for (size_t i = 0; i < s.modules.size(); i++) {
        auto & mod = dynamic_cast<deep_lora_module &>(*s.modules[i]);
        const int64_t k = mod.k, IC = mod.t.in_features, OC = mod.t.out_features;
        mat M = to_d(mod.W.data(), k * k);   // Wt_1
        for (int64_t l = 1; l < mod.L; l++) M = mul(to_d(mod.W.data() + l * k * k, k * k), M, k, k, k);
        const mat A = mul(M, to_d(mod.V.data(), IC * k), k, k, IC, false, true);
        const param_ref & fa = file[2 * i], & fb = file[2 * i + 1];
        ASSERT_EQ(fa.name, "base_model.model." + s.targets[i].path + ".lora_A.weight");
        ASSERT_EQ(fa.shape, (std::vector<int64_t>{k, IC}));
        ASSERT_EQ(fb.shape, (std::vector<int64_t>{OC, k}));
        EXPECT_LT(max_abs_diff(to_d(fa.value, k * IC), A), 1e-6);
        EXPECT_EQ(std::vector<float>(fb.value, fb.value + OC * k), mod.U);
    }

    auto fresh = tiny_model(7);
    adapter_set loaded;
    const status st = adapter_load(dir, *fresh, loaded);
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_STREQ(loaded.method->name(), "lora");
    forward_logits(*fresh, d, after);
    EXPECT_LT(rel_diff(after, before), 1e-5);
}

// Resume: create() with no writer derives nothing (no calibration needed); the checkpoint then
// supplies U_c, V_c and the inner factors, all of which are in the parameter list.
TEST(deep_lora, resume_takes_every_tensor_from_the_checkpoint) {
    auto m = tiny_model(7);
    config c("{\"adapter\":\"deep_lora\",\"r\":4,\"deep_lora_gamma\":0}");
    adapter_set s;
    ASSERT_TRUE(adapters_attach(*m, c.root(), 1, s, true, nullptr).ok());
    size_t frozen = 0;
    for (const param_ref & p : adapter_set_params(s)) {
        ASSERT_NE(p.value, nullptr) << p.name << " must be in trainer_state";
        frozen += !p.trainable;
    }
    EXPECT_EQ(frozen, 2 * s.modules.size());   // U_c, V_c per module
}

TEST(deep_lora, bad_config_is_refused_with_the_key) {
    auto m = tiny_model(7);
    const char * bad[] = {"{\"adapter\":\"deep_lora\",\"r\":3}", "{\"adapter\":\"deep_lora\",\"deep_lora_depth\":2}",
                          "{\"adapter\":\"deep_lora\",\"deep_lora_init_scale\":0}", "{\"adapter\":\"deep_lora\",\"deep_lora_gamma\":-1}",
                          "{\"adapter\":\"deep_lora\",\"r\":64}", "{\"adapter\":\"deep_lora\",\"lora_alpha\":16}"};
    const char * key[] = {"r", "deep_lora_depth", "deep_lora_init_scale", "deep_lora_gamma", "rank 64", "lora_alpha"};
    for (int i = 0; i < 6; i++) {
        adapter_set s;
        const status st = attach(*m, bad[i], s);
        ASSERT_FALSE(st.ok()) << bad[i];
        EXPECT_NE(st.message.find(key[i]), std::string::npos) << st.message;
    }
}

// ---- training parity with tools/ref_deep_lora.py -------------------------------------------

// 10 AdamW steps on the llama_gqa fixture from the script's U_c, V_c and perturbed inner
// factors: g0 trains the inner factors only, g1 also U_c, V_c at gamma * lr (gamma 0.5).
// Losses and every trained tensor against PyTorch (tolerances as lora_parity).
class deep_lora_parity : public ::testing::TestWithParam<const char *> {};

TEST_P(deep_lora_parity, ten_adamw_steps_match_pytorch) {
    const std::string c = GetParam();
    const std::string fx = peft::testing::source_path("tests/fixtures/deep_lora");
    auto m = std::make_unique<llama_model>();
    ASSERT_TRUE(llama_load(*m, peft::testing::source_path("tests/fixtures/llama_gqa"), false).ok());
    // resuming = true: no compression; the tensors come from the fixture as from a checkpoint
    config cfg(std::string("{\"adapter\":\"deep_lora\",\"r\":4,\"target_modules\":\"all-linear\",\"deep_lora_gamma\":") +
               (c == "g1" ? "0.5" : "0") + "}");
    adapter_set s;
    ASSERT_TRUE(adapters_attach(*m, cfg.root(), 1, s, true, nullptr).ok());
    ASSERT_EQ(s.modules.size(), 14u);
    safetensors_file init, ref;
    ASSERT_TRUE(safetensors_open(fx + "/initial.safetensors", init).ok());
    ASSERT_TRUE(safetensors_open(fx + "/reference.safetensors", ref).ok());
    std::vector<param_ref> ps = adapter_set_params(s);
    for (const param_ref & p : ps) {
        const std::vector<float> v = peft::testing::fixture_tensor(init, p.name);
        ASSERT_EQ((int64_t) v.size(), numel(p)) << p.name;
        std::memcpy(p.value, v.data(), v.size() * sizeof(float));
    }
    // the optimizer takes lr_scale gamma on U_c, V_c from the parameters
    const std::vector<float> losses = peft::testing::trajectory_train(*m, s, peft::testing::parity_batch_load());
    const double worst_loss = peft::testing::expect_losses(ref, losses, 1e-4, c + ".");
    const double worst_norm = peft::testing::expect_final_tensors(ref, ps, true, c + ".");
    size_t frozen = 0;
    for (const param_ref & p : ps) {
        if (p.trainable) continue;
        frozen++;
        EXPECT_EQ(ref.find(c + ".final." + p.name), nullptr) << p.name << " is frozen here, trained in the fixture";
    }
    EXPECT_EQ(frozen, 14u * (c == "g1" ? 0 : 2));
    std::printf("deep_lora parity %s: worst loss rel %.3g, final worst normwise %.3g\n", c.c_str(), worst_loss, worst_norm);
}

INSTANTIATE_TEST_SUITE_P(deep_lora, deep_lora_parity, ::testing::Values("g0", "g1"),
                         [](const ::testing::TestParamInfo<const char *> & i) { return std::string(i.param); });
