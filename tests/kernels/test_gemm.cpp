// test_gemm.cpp: the OpenBLAS wrapper against the naive double-accumulating gemm_ref, in all four
// transpose cases, with padded leading dimensions, alpha/beta, and sentinels around C.
#include <cmath>

#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

struct gemm_case {
    bool ta, tb;
};

class gemm_transposes : public ::testing::TestWithParam<gemm_case> {};

TEST_P(gemm_transposes, matches_ref_with_padding_alpha_beta) {
    const auto [ta, tb] = GetParam();
    for (int64_t M : {7, 1}) {   // M = 1 takes the sgemv path (decoding one token)
    const int64_t N = 5, K = 11, pad = 3;
    // stored shapes: A [M,K] or [K,M]; B [K,N] or [N,K]; each row padded by `pad` floats
    const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, lda = a_cols + pad;
    const int64_t b_rows = tb ? N : K, b_cols = tb ? K : N, ldb = b_cols + pad;
    const int64_t ldc = N + pad;
    auto A = fixed_vector(a_rows * lda, 1);
    auto B = fixed_vector(b_rows * ldb, 2);
    for (float beta : {0.0f, 0.5f}) {
        guarded c_fast(M * ldc), c_ref(M * ldc);
        fixed_fill(c_fast.data(), M * ldc, 3);
        fixed_fill(c_ref.data(), M * ldc, 3);
        if (beta == 0.0f) c_fast.data()[0] = c_ref.data()[0] = NAN;  // beta == 0 must not read C
        gemm(ta, tb, M, N, K, 1.5f, A.data(), lda, B.data(), ldb, beta, c_fast.data(), ldc);
        gemm_ref(ta, tb, M, N, K, 1.5f, A.data(), lda, B.data(), ldb, beta, c_ref.data(), ldc);
        EXPECT_TRUE(c_fast.intact());
        EXPECT_TRUE(check_close(c_fast.data(), c_ref.data(), M * ldc, 1e-5, 1e-5, "C"));
        // the padding columns of C are untouched (they still hold the fill)
        auto fill = fixed_vector(M * ldc, 3);
        for (int64_t i = 0; i < M; i++) {
            for (int64_t j = N; j < ldc; j++) EXPECT_EQ(c_fast.data()[i * ldc + j], fill[i * ldc + j]);
        }
    }
    }
}

// gemm_ref itself against an independent double product, so the oracle is not trusted blindly
TEST_P(gemm_transposes, ref_matches_double_product) {
    const auto [ta, tb] = GetParam();
    const int64_t M = 4, N = 3, K = 6;
    auto A = fixed_vector(M * K, 4);
    auto B = fixed_vector(K * N, 5);
    std::vector<float> C(M * N, 0.0f);
    gemm_ref(ta, tb, M, N, K, 1.0f, A.data(), ta ? M : K, B.data(), tb ? K : N, 0.0f, C.data(), N);
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t p = 0; p < K; p++) {
                acc += (double) (ta ? A[p * M + i] : A[i * K + p]) * (tb ? B[j * K + p] : B[p * N + j]);
            }
            EXPECT_NEAR(C[i * N + j], acc, 1e-6);
        }
    }
}

INSTANTIATE_TEST_SUITE_P(kernels, gemm_transposes,
                         ::testing::Values(gemm_case{false, false}, gemm_case{false, true}, gemm_case{true, false},
                                           gemm_case{true, true}),
                         [](const auto & info) {
                             return std::string(info.param.ta ? "T" : "N") + (info.param.tb ? "T" : "N");
                         });

TEST(gemm, larger_shape_uses_blas_blocking) {
    // big enough for OpenBLAS to block and thread; NMSE against the double reference
    const int64_t M = 67, N = 129, K = 300;
    auto A = fixed_vector(M * K, 6), B = fixed_vector(N * K, 7);
    std::vector<float> c_fast(M * N), c_ref(M * N);
    gemm(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, c_fast.data(), N);
    gemm_ref(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, c_ref.data(), N);
    EXPECT_LT(nmse(c_fast.data(), c_ref.data(), M * N), 1e-12);
}

} // namespace
