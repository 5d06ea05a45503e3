// gemm.cpp: the matrix multiply every linear layer goes through. The fast path hands the call to
// OpenBLAS (the OpenMP build, so BLAS threads and our loops share one runtime); gemm_ref is the
// naive double-accumulating oracle the tests compare against. Only this file includes cblas.h.
#include <cblas.h>
#include <climits>

#include "core/status.h"
#include "kernels/kernels.h"

namespace peft {

// C[M,N] = alpha * op(A) * op(B) + beta * C. Row-major storage: A is [M,K] (lda >= K) or, when
// trans_a, [K,M] (lda >= M); B is [K,N] (ldb >= N) or, when trans_b, [N,K] (ldb >= K).
// Must be called from serial code: OpenBLAS runs single-threaded inside an OpenMP region.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const float * A, int64_t lda, const float * B, int64_t ldb, float beta, float * C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    // blasint is 32-bit in Debian's OpenBLAS: larger sizes would silently wrap
    PEFT_ASSERT(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX);
    if (M == 1 && K > 0) {
        // one row (decoding a token): sgemv is several times faster than a 1-row sgemm.
        // C[1,N] = op(A)[1,K] op(B)  <=>  c = op(B)^T a, a read with stride lda when A is [K,1]
        const blasint inc_a = trans_a ? (blasint) lda : 1;
        if (trans_b) {   // B stored [N,K]: c = B a
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint) N, (blasint) K, alpha, B, (blasint) ldb, A, inc_a, beta, C, 1);
        } else {         // B stored [K,N]: c = B^T a
            cblas_sgemv(CblasRowMajor, CblasTrans, (blasint) K, (blasint) N, alpha, B, (blasint) ldb, A, inc_a, beta, C, 1);
        }
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                (blasint) M, (blasint) N, (blasint) K, alpha, A, (blasint) lda, B, (blasint) ldb, beta, C,
                (blasint) ldc);
}

// The same contract in double, for the fp64 linear algebra of linalg.cpp (Gram matrices,
// eigenvector back-substitution). No sgemv shortcut: these are never single-row hot paths.
void gemm_f64(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
              const double * A, int64_t lda, const double * B, int64_t ldb, double beta, double * C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    PEFT_ASSERT(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX);
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                (blasint) M, (blasint) N, (blasint) K, alpha, A, (blasint) lda, B, (blasint) ldb, beta, C,
                (blasint) ldc);
}

void gemm_ref(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float * A, int64_t lda, const float * B, int64_t ldb, float beta, float * C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < K; p++) {
                double a = trans_a ? A[p * lda + i] : A[i * lda + p];
                double b = trans_b ? B[j * ldb + p] : B[p * ldb + j];
                acc += a * b;
            }
            // BLAS semantics: with beta == 0, C is not read (it may hold garbage or NaN)
            double c = beta == 0.0f ? 0.0 : (double) beta * C[i * ldc + j];
            C[i * ldc + j] = (float) (alpha * acc + c);
        }
    }
}

} // namespace peft
