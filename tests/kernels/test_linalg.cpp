// test_linalg.cpp: linalg.cpp on matrices with KNOWN spectra, W = U diag(sigma) V^T built from
// random orthogonal factors (QR of Gaussians) and a chosen sigma (geometric decay). Checks
// singular values, reconstruction and orthogonality of the SVDs, convergence of the randomized
// SVD with niter, that svd_smallest equals the tail of the full SVD, QR, the ranged eigensolver,
// the SPD solve, and that bad input comes back as a status.
#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "core/status.h"
#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;

namespace {

// Q [m,n] with orthonormal columns (m >= n): QR of a Gaussian matrix.
std::vector<float> random_orthonormal(int64_t m, int64_t n, uint64_t seed) {
    std::vector<float> g((size_t) (m * n)), q((size_t) (m * n)), r((size_t) (n * n));
    rng gen(seed);
    gen.fill_normal(g.data(), m * n, 0.0f, 1.0f);
    EXPECT_TRUE(qr_thin(q.data(), r.data(), g.data(), m, n).ok());
    return q;
}

// Geometric decay from 1 down to `last` over k values.
std::vector<double> geometric(int64_t k, double last) {
    std::vector<double> s((size_t) k);
    for (int64_t i = 0; i < k; i++) s[i] = std::pow(last, (double) i / (double) (k - 1));
    return s;
}

// W [OC,IC] = U diag(sigma) V^T, accumulated in double, rounded once to f32.
std::vector<float> known_spectrum(int64_t OC, int64_t IC, const std::vector<double> & sigma, uint64_t seed) {
    const int64_t k = (int64_t) sigma.size();
    auto u = random_orthonormal(OC, k, seed);        // [OC,k]
    auto v = random_orthonormal(IC, k, seed + 1);    // [IC,k]
    std::vector<float> w((size_t) (OC * IC));
    for (int64_t i = 0; i < OC; i++)
        for (int64_t j = 0; j < IC; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < k; p++) acc += (double) u[i * k + p] * sigma[p] * v[j * k + p];
            w[i * IC + j] = (float) acc;
        }
    return w;
}

// ||U diag(S) Vh - W||_F / ||W||_F with U [OC,k], S [k], Vh [k,IC]
double recon_error(const float * U, const float * S, const float * Vh, const float * W, int64_t OC, int64_t IC,
                   int64_t k) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < OC; i++)
        for (int64_t j = 0; j < IC; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < k; p++) acc += (double) U[i * k + p] * S[p] * Vh[p * IC + j];
            const double d = acc - W[i * IC + j];
            num += d * d;
            den += (double) W[i * IC + j] * W[i * IC + j];
        }
    return std::sqrt(num / den);
}

// max |X^T Y - I| over n vectors of length m: the columns of X, Y [m,n], or when `rows` the rows
// of X, Y [n,m] (Vh). abs_values compares |X^T Y| with I (vectors equal up to sign).
double max_gram_dev(const float * X, const float * Y, int64_t m, int64_t n, bool rows, bool abs_values) {
    double worst = 0.0;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++) {
            double acc = 0.0;
            for (int64_t i = 0; i < m; i++) {
                const double x = rows ? X[a * m + i] : X[i * n + a];
                const double y = rows ? Y[b * m + i] : Y[i * n + b];
                acc += x * y;
            }
            if (abs_values) acc = std::fabs(acc);
            worst = std::max(worst, std::fabs(acc - (a == b ? 1.0 : 0.0)));
        }
    return worst;
}

double orth_error(const float * X, int64_t m, int64_t n, bool rows) { return max_gram_dev(X, X, m, n, rows, false); }

struct svd_shape {
    int64_t OC, IC;
};
class linalg_shapes : public ::testing::TestWithParam<svd_shape> {};

TEST_P(linalg_shapes, svd_thin_recovers_known_spectrum) {
    const auto [OC, IC] = GetParam();
    const int64_t k = std::min(OC, IC);
    const auto sigma = geometric(k, 0.1);
    const auto W = known_spectrum(OC, IC, sigma, 11);
    std::vector<float> U((size_t) (OC * k)), S((size_t) k), Vh((size_t) (k * IC));
    ASSERT_TRUE(svd_thin(U.data(), S.data(), Vh.data(), W.data(), OC, IC).ok());
    for (int64_t i = 0; i < k; i++) EXPECT_NEAR(S[i], sigma[i], 1e-5 * sigma[i]) << "sigma " << i;
    for (int64_t i = 1; i < k; i++) EXPECT_GE(S[i - 1], S[i]);
    EXPECT_LT(recon_error(U.data(), S.data(), Vh.data(), W.data(), OC, IC, k), 1e-6);
    EXPECT_LT(orth_error(U.data(), OC, k, false), 1e-5);
    EXPECT_LT(orth_error(Vh.data(), IC, k, true), 1e-5);
}

TEST_P(linalg_shapes, qr_thin_reconstructs_with_orthonormal_q) {
    const auto [OC, IC] = GetParam();
    const int64_t k = std::min(OC, IC);
    auto W = peft::testing::fixed_vector(OC * IC, 5);
    std::vector<float> Q((size_t) (OC * k)), R((size_t) (k * IC));
    ASSERT_TRUE(qr_thin(Q.data(), R.data(), W.data(), OC, IC).ok());
    EXPECT_LT(orth_error(Q.data(), OC, k, false), 1e-5);
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < std::min(i, IC); j++) EXPECT_EQ(R[i * IC + j], 0.0f) << "R below the diagonal";
    std::vector<float> ones((size_t) k, 1.0f);
    EXPECT_LT(recon_error(Q.data(), ones.data(), R.data(), W.data(), OC, IC, k), 1e-6);
}

TEST_P(linalg_shapes, svd_smallest_equals_tail_of_full_svd) {
    const auto [OC, IC] = GetParam();
    const int64_t k = std::min(OC, IC), R = 5;
    const auto W = known_spectrum(OC, IC, geometric(k, 0.1), 21);
    std::vector<float> U((size_t) (OC * k)), S((size_t) k), Vh((size_t) (k * IC));
    ASSERT_TRUE(svd_thin(U.data(), S.data(), Vh.data(), W.data(), OC, IC).ok());
    std::vector<float> Us((size_t) (OC * R)), Ss((size_t) R), Vhs((size_t) (R * IC));
    ASSERT_TRUE(svd_smallest(Us.data(), Ss.data(), Vhs.data(), W.data(), OC, IC, R).ok());
    // the reference tail: U[:, k-R:], Vh[k-R:, :]
    std::vector<float> Ut((size_t) (OC * R));
    for (int64_t i = 0; i < OC; i++)
        for (int64_t j = 0; j < R; j++) Ut[i * R + j] = U[i * k + (k - R) + j];
    const float * Vht = Vh.data() + (k - R) * IC;
    for (int64_t j = 0; j < R; j++) EXPECT_NEAR(Ss[j], S[k - R + j], 1e-5 * S[k - R + j]) << "sigma " << j;
    EXPECT_LT(orth_error(Us.data(), OC, R, false), 1e-5);
    EXPECT_LT(orth_error(Vhs.data(), IC, R, true), 1e-5);
    // same subspaces, vector by vector up to sign: |U_s^T U_tail| ~ I (the sigma are distinct)
    EXPECT_LT(max_gram_dev(Us.data(), Ut.data(), OC, R, false, true), 1e-4);
    EXPECT_LT(max_gram_dev(Vhs.data(), Vht, IC, R, true, true), 1e-4);
    // each triplet is a consistent pair: U_s diag(S_s) Vh_s equals the tail U_t diag(S_t) Vh_t
    std::vector<float> tail((size_t) (OC * IC));
    for (int64_t i = 0; i < OC; i++)
        for (int64_t j = 0; j < IC; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < R; p++) acc += (double) Ut[i * R + p] * S[k - R + p] * Vht[p * IC + j];
            tail[i * IC + j] = (float) acc;
        }
    EXPECT_LT(recon_error(Us.data(), Ss.data(), Vhs.data(), tail.data(), OC, IC, R), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(linalg, linalg_shapes,
                         ::testing::Values(svd_shape{48, 32}, svd_shape{32, 48}, svd_shape{40, 40}));

TEST(linalg, svd_lowrank_converges_with_niter) {
    const int64_t OC = 96, IC = 64, k = 64, R = 6;
    const auto sigma = geometric(k, 0.02);    // slow decay: one pass (niter=0) is visibly off
    const auto W = known_spectrum(OC, IC, sigma, 31);
    auto top_error = [&](int niter, std::vector<float> & U, std::vector<float> & Vh, std::vector<float> & S) {
        U.assign((size_t) (OC * R), 0.0f);
        Vh.assign((size_t) (R * IC), 0.0f);
        S.assign((size_t) R, 0.0f);
        EXPECT_TRUE(svd_lowrank(U.data(), S.data(), Vh.data(), W.data(), OC, IC, R, niter, 7).ok());
        double num = 0.0, den = 0.0;
        for (int64_t i = 0; i < R; i++) {
            num += (S[i] - sigma[i]) * (S[i] - sigma[i]);
            den += sigma[i] * sigma[i];
        }
        return std::sqrt(num / den);
    };
    std::vector<float> U, Vh, S;
    const double e0 = top_error(0, U, Vh, S);
    const double e16 = top_error(16, U, Vh, S);
    EXPECT_LT(e16, e0);
    EXPECT_LT(e16, 1e-3);
    EXPECT_GT(e0, 1e-3);   // the comparison above is not vacuous
    for (int64_t i = 1; i < R; i++) EXPECT_GE(S[i - 1], S[i]);
    EXPECT_LT(orth_error(U.data(), OC, R, false), 1e-5);
    EXPECT_LT(orth_error(Vh.data(), IC, R, true), 1e-5);
    // same seed, same numbers
    std::vector<float> U2, Vh2, S2;
    top_error(16, U2, Vh2, S2);
    EXPECT_EQ(U, U2);
    EXPECT_EQ(S, S2);
}

TEST(linalg, eigh_range_spd_solve_and_inverse_residuals) {
    const int64_t n = 12, lo = 3, count = 4, nrhs = 2;
    // X = Q diag(lambda) Q^T with known lambda = 1..n
    auto q = random_orthonormal(n, n, 41);
    std::vector<double> X((size_t) (n * n));
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < n; p++) acc += (double) q[i * n + p] * (double) (p + 1) * q[j * n + p];
            X[i * n + j] = acc;
        }
    std::vector<double> ev((size_t) count), Z((size_t) (n * count));
    ASSERT_TRUE(eigh_range(ev.data(), Z.data(), X.data(), n, lo, count).ok());
    for (int64_t j = 0; j < count; j++) {
        // q is orthonormal to fp32 rounding only, so X's spectrum is 1..n to ~1e-6
        EXPECT_NEAR(ev[j], (double) (lo + j + 1), 1e-5);
        for (int64_t i = 0; i < n; i++) {   // X z = lambda z
            double acc = 0.0;
            for (int64_t p = 0; p < n; p++) acc += X[i * n + p] * Z[p * count + j];
            EXPECT_NEAR(acc, ev[j] * Z[i * count + j], 1e-10);
        }
    }
    std::vector<double> ev_only((size_t) count);
    ASSERT_TRUE(eigh_range(ev_only.data(), nullptr, X.data(), n, lo, count).ok());
    for (int64_t j = 0; j < count; j++) EXPECT_NEAR(ev_only[j], ev[j], 1e-12);

    std::vector<double> Bm((size_t) (n * nrhs)), Y((size_t) (n * nrhs));
    for (int64_t i = 0; i < n * nrhs; i++) Bm[i] = std::sin(0.7 * (double) i);
    ASSERT_TRUE(spd_solve(Y.data(), X.data(), Bm.data(), n, nrhs).ok());
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < nrhs; c++) {
            double acc = 0.0;
            for (int64_t p = 0; p < n; p++) acc += X[i * n + p] * Y[p * nrhs + c];
            EXPECT_NEAR(acc, Bm[i * nrhs + c], 1e-10);
        }
    // the inverse: X Xi = I, and Xi exactly symmetric (dpotri's triangle mirrored)
    std::vector<double> Xi((size_t) (n * n));
    ASSERT_TRUE(spd_inverse(Xi.data(), X.data(), n).ok());
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < n; p++) acc += X[i * n + p] * Xi[p * n + j];
            EXPECT_NEAR(acc, i == j ? 1.0 : 0.0, 1e-12);
            EXPECT_EQ(Xi[i * n + j], Xi[j * n + i]);
        }
    // not positive definite: shift the spectrum so one eigenvalue is negative
    for (int64_t i = 0; i < n; i++) X[i * n + i] -= 1.5;
    status st = spd_solve(Y.data(), X.data(), Bm.data(), n, nrhs);
    EXPECT_EQ(st.code, PEFT_STATUS_NUMERIC) << st.message;
    st = spd_inverse(Xi.data(), X.data(), n);
    EXPECT_EQ(st.code, PEFT_STATUS_NUMERIC) << st.message;
}

TEST(linalg, bad_input_returns_status) {
    const int64_t OC = 8, IC = 6, k = 6;
    auto W = peft::testing::fixed_vector(OC * IC, 3);
    std::vector<float> U((size_t) (OC * OC)), S((size_t) OC), Vh((size_t) (OC * IC));
    EXPECT_EQ(svd_lowrank(U.data(), S.data(), Vh.data(), W.data(), OC, IC, k + 1, 2, 0).code, PEFT_STATUS_SHAPE);
    EXPECT_EQ(svd_lowrank(U.data(), S.data(), Vh.data(), W.data(), OC, IC, 0, 2, 0).code, PEFT_STATUS_SHAPE);
    EXPECT_EQ(svd_smallest(U.data(), S.data(), Vh.data(), W.data(), OC, IC, k + 1).code, PEFT_STATUS_SHAPE);
    EXPECT_EQ(svd_thin(U.data(), S.data(), Vh.data(), W.data(), 0, IC).code, PEFT_STATUS_SHAPE);
    EXPECT_EQ(eigh_range(nullptr, nullptr, nullptr, 4, 2, 3).code, PEFT_STATUS_SHAPE);
    W[7] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_EQ(svd_thin(U.data(), S.data(), Vh.data(), W.data(), OC, IC).code, PEFT_STATUS_NUMERIC);
    EXPECT_EQ(qr_thin(U.data(), Vh.data(), W.data(), OC, IC).code, PEFT_STATUS_NUMERIC);
    EXPECT_EQ(svd_smallest(U.data(), S.data(), Vh.data(), W.data(), OC, IC, 2).code, PEFT_STATUS_NUMERIC);
    W[7] = std::numeric_limits<float>::infinity();
    EXPECT_EQ(svd_lowrank(U.data(), S.data(), Vh.data(), W.data(), OC, IC, 2, 1, 0).code, PEFT_STATUS_NUMERIC);
    // an exactly rank-deficient W: its zero singular value has no recoverable left vector
    std::vector<float> Z((size_t) (OC * IC), 0.0f);
    for (int64_t i = 0; i < OC; i++) Z[i * IC + 0] = 1.0f;   // rank 1
    EXPECT_EQ(svd_smallest(U.data(), S.data(), Vh.data(), Z.data(), OC, IC, 2).code, PEFT_STATUS_NUMERIC);
}

} // namespace
