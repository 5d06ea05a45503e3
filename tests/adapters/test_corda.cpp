// test_corda.cpp: every invariant METHODS §8 (8) lists for CorDA (preservation, the damping
// criterion and schedule, full reconstruction, C symmetric PSD, IPM/KPM selection), the
// covariance pass's |max(X)| quirk and its errors, and parity with PyTorch
// (tests/fixtures/corda, made by tools/ref_corda.py). s = 2 so the division by s matters.
#include <cmath>
#include <vector>

#include "adapters/corda.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "fixture_util.h"
#include "testing.h"

using peft::testing::abs_values;
using peft::testing::fixture_tensor;
using peft::testing::scaled_product;

using namespace peft;

namespace {

constexpr float S_SCALE = 2.0f;

// ||a - b||_F / ||b||_F with a in double, b in float
double rel_to(const std::vector<double> & a, const float * b, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += (double) b[i] * b[i];
    }
    return std::sqrt(num / den);
}

// The covariance of `calls` random forward calls of `rows` tokens each, X ~ N(0.3, 1).
corda_covariance random_covariance(int64_t IC, int calls, int64_t rows, uint64_t seed) {
    corda_covariance acc = corda_covariance_make(IC);
    rng gen(seed);
    std::vector<float> X((size_t) (rows * IC));
    for (int c = 0; c < calls; c++) {
        gen.fill_normal(X.data(), rows * IC, 0.3f, 1.0f);
        EXPECT_TRUE(corda_covariance_add(acc, X.data(), rows, IC).ok());
    }
    EXPECT_TRUE(corda_covariance_finish(acc).ok());
    return acc;
}

// ||C' Ci - I||_F for C' = C + damp * mean(diag C) * I, recomputed here
double inversion_error(const std::vector<double> & C, int64_t n, double damp) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) m += C[i * n + i];
    m /= (double) n;
    std::vector<double> Cp = C, Ci((size_t) (n * n));
    for (int64_t i = 0; i < n; i++) Cp[i * n + i] += damp * m;
    EXPECT_TRUE(spd_inverse(Ci.data(), Cp.data(), n).ok());
    double err2 = 0.0;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++) {
            double e = a == b ? -1.0 : 0.0;
            for (int64_t p = 0; p < n; p++) e += Cp[a * n + p] * Ci[p * n + b];
            err2 += e * e;
        }
    return std::sqrt(err2);
}

// s * diag(B^T B): B = U diag(sqrt(sigma / s)) with orthonormal U, so this is the kept sigma.
std::vector<double> kept_sigma(const std::vector<float> & B, int64_t OC, int64_t r, double s) {
    std::vector<double> out((size_t) r, 0.0);
    for (int64_t j = 0; j < r; j++)
        for (int64_t o = 0; o < OC; o++) out[j] += s * (double) B[o * r + j] * B[o * r + j];
    return out;
}

// ---- Step A: covariance ------------------------------------------------------------------------

TEST(corda, covariance_is_symmetric_psd_and_counts_calls) {
    const int64_t IC = 10;
    corda_covariance acc = corda_covariance_make(IC);
    rng gen(5);
    const int64_t rows[] = {3, 7, 1};   // ragged: only each sample's non-padding tokens
    for (int64_t t : rows) {
        std::vector<float> X((size_t) (t * IC));
        gen.fill_normal(X.data(), t * IC, 0.3f, 1.0f);
        ASSERT_TRUE(corda_covariance_add(acc, X.data(), t, IC).ok());
    }
    EXPECT_EQ(acc.count, 3);   // forward calls, not the 11 tokens
    const std::vector<double> sum = acc.C;
    ASSERT_TRUE(corda_covariance_finish(acc).ok());
    for (int64_t i = 0; i < IC * IC; i++) EXPECT_DOUBLE_EQ(acc.C[i], sum[i] / 3.0);
    for (int64_t i = 0; i < IC; i++)
        for (int64_t j = 0; j < IC; j++) EXPECT_EQ(acc.C[i * IC + j], acc.C[j * IC + i]);   // exactly symmetric
    std::vector<double> lambda(1);
    ASSERT_TRUE(eigh_range(lambda.data(), nullptr, acc.C.data(), IC, 0, 1).ok());
    double trace = 0.0;
    for (int64_t i = 0; i < IC; i++) trace += acc.C[i * IC + i];
    EXPECT_GE(lambda[0], -1e-12 * trace);   // PSD up to rounding
}

TEST(corda, covariance_divides_by_abs_of_max_element) {
    // [QUIRK] scale = |max(X)|, not max|X|.
    struct row_case {
        float x0, x1;      // X [1,2]
        float scale;       // the documented divisor
    };
    const row_case cases[] = {
        {4.0f, -2.0f, 4.0f},    // largest element is also largest in magnitude: the usual max|X|
        {-4.0f, 2.0f, 2.0f},    // largest-magnitude element is negative: divided by 2, not 4
        {-4.0f, -2.0f, 2.0f},   // all negative: max is -2, |max| = 2
    };
    for (const row_case & c : cases) {
        corda_covariance acc = corda_covariance_make(2);
        const float X[2] = {c.x0, c.x1};
        ASSERT_TRUE(corda_covariance_add(acc, X, 1, 2).ok());
        const double a = c.x0 / c.scale, b = c.x1 / c.scale;
        EXPECT_DOUBLE_EQ(acc.C[0], a * a);
        EXPECT_DOUBLE_EQ(acc.C[1], a * b);
        EXPECT_DOUBLE_EQ(acc.C[2], a * b);
        EXPECT_DOUBLE_EQ(acc.C[3], b * b);
    }
}

TEST(corda, covariance_refuses_bad_input) {
    corda_covariance acc = corda_covariance_make(2);
    const float ok[2] = {1.0f, 2.0f};
    ASSERT_TRUE(corda_covariance_add(acc, ok, 1, 2).ok());
    const std::vector<double> before = acc.C;
    const float nan_x[2] = {1.0f, NAN}, inf_x[2] = {INFINITY, 1.0f};
    const float zero_max[2] = {0.0f, -3.0f};   // max(X) == 0: the division is undefined
    const float overflow[2] = {1e-30f, -1e30f};
    EXPECT_EQ(corda_covariance_add(acc, nan_x, 1, 2).code, PEFT_STATUS_NUMERIC);
    EXPECT_EQ(corda_covariance_add(acc, inf_x, 1, 2).code, PEFT_STATUS_NUMERIC);
    EXPECT_EQ(corda_covariance_add(acc, zero_max, 1, 2).code, PEFT_STATUS_NUMERIC);
    EXPECT_EQ(corda_covariance_add(acc, overflow, 1, 2).code, PEFT_STATUS_NUMERIC);
    EXPECT_EQ(corda_covariance_add(acc, ok, 0, 2).code, PEFT_STATUS_SHAPE);
    EXPECT_EQ(corda_covariance_add(acc, ok, 1, 3).code, PEFT_STATUS_SHAPE);
    EXPECT_EQ(acc.count, 1);   // refused calls leave the accumulator as it was
    EXPECT_EQ(acc.C, before);
    corda_covariance empty = corda_covariance_make(2);
    EXPECT_EQ(corda_covariance_finish(empty).code, PEFT_STATUS_CONFIG);
}

// ---- Steps B, C: the adapter ---------------------------------------------------------------------

struct layer {
    int64_t OC, IC;
    std::vector<float> W;
    corda_covariance cov;
};

layer make_layer(int64_t OC, int64_t IC, uint64_t seed) {
    layer l{OC, IC, std::vector<float>((size_t) (OC * IC)), random_covariance(IC, 6, 5, seed + 1)};
    rng(seed).fill_normal(l.W.data(), OC * IC, 0.0f, 1.0f);
    return l;
}

TEST(corda, init_preserves_weight_and_meets_damping_criterion) {
    for (const auto & shape : {std::pair<int64_t, int64_t>{20, 12}, {12, 20}}) {
        const layer l = make_layer(shape.first, shape.second, 11);
        const int64_t R = 4;
        for (bool kpm : {false, true}) {
            SCOPED_TRACE(std::to_string(l.OC) + "x" + std::to_string(l.IC) + (kpm ? " kpm" : " ipm"));
            std::vector<float> A((size_t) (R * l.IC)), B((size_t) (l.OC * R)), W_res((size_t) (l.OC * l.IC));
            double damp = 0.0;
            ASSERT_TRUE(corda_init(A.data(), B.data(), W_res.data(), l.W.data(), l.OC, l.IC, l.cov.C.data(), R,
                                   S_SCALE, kpm, &damp).ok());
            EXPECT_EQ(damp, 0.01);   // well conditioned: no doubling
            EXPECT_LT(inversion_error(l.cov.C, l.IC, damp), 0.05);
            // W_res + s B A == W (fp-exact)
            auto sum = scaled_product(B.data(), A.data(), l.OC, l.IC, R, S_SCALE);
            for (int64_t i = 0; i < l.OC * l.IC; i++) sum[i] += W_res[i];
            EXPECT_LT(rel_to(sum, l.W.data(), l.OC * l.IC), 1e-5);
            // in place (W_res aliasing W) gives the same bits
            std::vector<float> W2 = l.W, A2(A.size()), B2(B.size());
            ASSERT_TRUE(corda_init(A2.data(), B2.data(), W2.data(), W2.data(), l.OC, l.IC, l.cov.C.data(), R,
                                   S_SCALE, kpm, nullptr).ok());
            EXPECT_EQ(W2, W_res);
            EXPECT_EQ(A2, A);
            EXPECT_EQ(B2, B);
        }
    }
}

TEST(corda, full_rank_reconstructs_weight) {
    // R = k: s B A = U diag(sigma) Vh Ci = W C' Ci ~= W, to the inversion and fp32 SVD accuracy
    for (const auto & shape : {std::pair<int64_t, int64_t>{20, 12}, {12, 20}}) {
        const layer l = make_layer(shape.first, shape.second, 21);
        const int64_t k = std::min(l.OC, l.IC);
        std::vector<float> A((size_t) (k * l.IC)), B((size_t) (l.OC * k)), W_res((size_t) (l.OC * l.IC));
        ASSERT_TRUE(corda_init(A.data(), B.data(), W_res.data(), l.W.data(), l.OC, l.IC, l.cov.C.data(), k, S_SCALE,
                               false, nullptr).ok());
        EXPECT_LT(rel_to(scaled_product(B.data(), A.data(), l.OC, l.IC, k, S_SCALE), l.W.data(), l.OC * l.IC), 1e-4);
    }
}

TEST(corda, ipm_keeps_largest_and_kpm_smallest_sigma) {
    const layer l = make_layer(20, 12, 31);
    const int64_t k = 12, R = 3;
    // the singular values of W C' (damp 0.01), computed here
    double m = 0.0;
    for (int64_t i = 0; i < k; i++) m += l.cov.C[i * k + i];
    m /= (double) k;
    std::vector<float> wc((size_t) (l.OC * l.IC));
    for (int64_t o = 0; o < l.OC; o++)
        for (int64_t j = 0; j < l.IC; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < l.IC; p++)
                acc += (double) l.W[o * l.IC + p] * (l.cov.C[p * l.IC + j] + (p == j ? 0.01 * m : 0.0));
            wc[o * l.IC + j] = (float) acc;
        }
    std::vector<float> U((size_t) (l.OC * k)), S((size_t) k), Vh((size_t) (k * l.IC));
    ASSERT_TRUE(svd_thin(U.data(), S.data(), Vh.data(), wc.data(), l.OC, l.IC).ok());
    for (bool kpm : {false, true}) {
        std::vector<float> A((size_t) (R * l.IC)), B((size_t) (l.OC * R)), W_res((size_t) (l.OC * l.IC));
        ASSERT_TRUE(corda_init(A.data(), B.data(), W_res.data(), l.W.data(), l.OC, l.IC, l.cov.C.data(), R, S_SCALE,
                               kpm, nullptr).ok());
        const auto sigma = kept_sigma(B, l.OC, R, S_SCALE);
        for (int64_t j = 0; j < R; j++) {
            const double want = S[kpm ? k - R + j : j];
            EXPECT_NEAR(sigma[j], want, 1e-5 * S[0]) << (kpm ? "kpm " : "ipm ") << j;
        }
    }
}

TEST(corda, damping_doubles_until_criterion) {
    // An indefinite C makes C' indefinite (Cholesky fails) until damp * mean(diag) > 1:
    // C = diag(2, 2, -1), mean 1, so damp = 0.01 * 2^7 = 1.28 is the first that works.
    const int64_t n = 3, OC = 4, R = 2;
    const std::vector<double> C = {2, 0, 0, 0, 2, 0, 0, 0, -1};
    std::vector<float> W((size_t) (OC * n)), A((size_t) (R * n)), B((size_t) (OC * R)), W_res(W.size());
    rng(41).fill_normal(W.data(), OC * n, 0.0f, 1.0f);
    double damp = 0.0;
    ASSERT_TRUE(corda_init(A.data(), B.data(), W_res.data(), W.data(), OC, n, C.data(), R, S_SCALE, false, &damp).ok());
    EXPECT_EQ(damp, 0.01 * 128.0);
    EXPECT_LT(inversion_error(C, n, damp), 0.05);
    // diag(1, -1 + 2e-9): damp must exceed 1e9, past 0.01 * 2^30 -> error, not an endless loop
    const std::vector<double> hopeless = {1, 0, 0, -1 + 2e-9};
    EXPECT_EQ(corda_init(A.data(), B.data(), W_res.data(), W.data(), 2, 2, hopeless.data(), 1, S_SCALE, false, &damp).code,
              PEFT_STATUS_NUMERIC);
}

TEST(corda, init_refuses_bad_arguments) {
    layer l = make_layer(6, 4, 51);
    std::vector<float> A(4 * 4), B(6 * 4), W_res(6 * 4);
    auto run = [&](const float * W, const double * C, int64_t R, float s) {
        return corda_init(A.data(), B.data(), W_res.data(), W, 6, 4, C, R, s, false, nullptr).code;
    };
    EXPECT_EQ(run(l.W.data(), l.cov.C.data(), 0, S_SCALE), PEFT_STATUS_SHAPE);
    EXPECT_EQ(run(l.W.data(), l.cov.C.data(), 5, S_SCALE), PEFT_STATUS_SHAPE);
    EXPECT_EQ(run(l.W.data(), l.cov.C.data(), 2, 0.0f), PEFT_STATUS_CONFIG);
    const std::vector<double> zero(16, 0.0);
    EXPECT_EQ(run(l.W.data(), zero.data(), 2, S_SCALE), PEFT_STATUS_NUMERIC);
    auto bad_c = l.cov.C;
    bad_c[5] = NAN;
    EXPECT_EQ(run(l.W.data(), bad_c.data(), 2, S_SCALE), PEFT_STATUS_NUMERIC);
    auto bad_w = l.W;
    bad_w[3] = INFINITY;
    EXPECT_EQ(run(bad_w.data(), l.cov.C.data(), 2, S_SCALE), PEFT_STATUS_NUMERIC);
}

// ---- against PyTorch (tests/fixtures/corda, made by tools/ref_corda.py) --------------------------

TEST(corda, matches_pytorch_fixture) {
    safetensors_file f;
    ASSERT_TRUE(safetensors_open(peft::testing::source_path("tests/fixtures/corda/reference.safetensors"), f).ok());
    for (const char * c : {"tall", "wide"}) {
        const std::string p = std::string(c) + ".";
        const tensor_info * wt = f.find(p + "W");
        ASSERT_NE(wt, nullptr);
        const int64_t oc = wt->shape[0], ic = wt->shape[1];
        const auto W = fixture_tensor(f, p + "W"), X = fixture_tensor(f, p + "X");
        const auto lengths = fixture_tensor(f, p + "lengths");
        const int64_t r = (int64_t) fixture_tensor(f, p + "r")[0];
        const float s = fixture_tensor(f, p + "s")[0];

        // Step A over the samples, one forward call each; torch summed in fp32 (rel ~4e-8 off fp64)
        corda_covariance acc = corda_covariance_make(ic);
        int64_t row = 0;
        for (float len : lengths) {
            ASSERT_TRUE(corda_covariance_add(acc, X.data() + row * ic, (int64_t) len, ic).ok());
            row += (int64_t) len;
        }
        ASSERT_TRUE(corda_covariance_finish(acc).ok());
        EXPECT_EQ(acc.count, (int64_t) lengths.size());
        const auto C_ref = fixture_tensor(f, p + "C");
        EXPECT_LT(rel_to(acc.C, C_ref.data(), ic * ic), 1e-6);

        // Steps B, C from torch's own C, then from ours
        const std::vector<double> C_ref_d(C_ref.begin(), C_ref.end());
        for (const char * mode : {"ipm", "kpm"}) {
            const bool kpm = std::string(mode) == "kpm";
            for (const std::vector<double> * C : {&C_ref_d, (const std::vector<double> *) &acc.C}) {
                SCOPED_TRACE(p + mode + (C == &acc.C ? " (our C)" : " (torch C)"));
                std::vector<float> A((size_t) (r * ic)), B((size_t) (oc * r)), W_res((size_t) (oc * ic));
                double damp = 0.0;
                ASSERT_TRUE(corda_init(A.data(), B.data(), W_res.data(), W.data(), oc, ic, C->data(), r, s, kpm,
                                       &damp).ok());
                EXPECT_EQ((float) damp, fixture_tensor(f, p + "damp")[0]);
                const auto A_ref = fixture_tensor(f, p + mode + ".A"), B_ref = fixture_tensor(f, p + mode + ".B");
                const auto W_res_ref = fixture_tensor(f, p + mode + ".W_res"), S_ref = fixture_tensor(f, p + mode + ".S");
                // torch's own f32-vs-f64 discrepancy is <= 1.6e-6 relative (ref_corda.py --check)
                EXPECT_LT(peft::testing::rel_error(W_res.data(), W_res_ref.data(), oc * ic), 1e-5);
                const auto ba = scaled_product(B.data(), A.data(), oc, ic, r, 1.0);
                const auto ba_ref = scaled_product(B_ref.data(), A_ref.data(), oc, ic, r, 1.0);
                const std::vector<float> ba_ref_f(ba_ref.begin(), ba_ref.end());
                EXPECT_LT(rel_to(ba, ba_ref_f.data(), oc * ic), 1e-5);
                EXPECT_TRUE(peft::testing::check_close(abs_values(A).data(), abs_values(A_ref).data(), r * ic, 1e-4, 1e-5, "|A|"));
                EXPECT_TRUE(peft::testing::check_close(abs_values(B).data(), abs_values(B_ref).data(), oc * r, 1e-4, 1e-5, "|B|"));
                const auto sigma = kept_sigma(B, oc, r, s);
                for (int64_t j = 0; j < r; j++) EXPECT_NEAR(sigma[j], S_ref[j], 1e-5 * S_ref[0]) << j;
            }
        }
    }
}

} // namespace
