// linalg.cpp: the dense linear algebra the SVD-family initialisers (PiSSA, MiLoRA, OLoRA, CorDA)
// and, later, LoRA-FA need: thin SVD, randomized SVD, the smallest singular triplets, thin QR,
// a ranged symmetric eigensolver, an SPD solve and an SPD inverse. It is the only file that
// includes LAPACKE (ARCHITECTURE §5). Not a general library: row-major dense matrices that fit
// in memory, no complex numbers, no batching. Every function returns a status (never aborts)
// because the inputs are model weights read from files and LAPACK can fail on them.
//
// Precision follows the PyTorch reference (METHODS §0): SVD and QR in fp32 on an f32 copy. The
// Gram-matrix routes (svd_smallest, eigh_range, spd_solve, spd_inverse) run in fp64 because
// forming W^T W squares the condition number (and CorDA's covariance is such a Gram matrix).
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/status.h"
#include "kernels/kernels.h"

namespace peft {

namespace {

// lapack_int is 32-bit in Debian's LAPACKE: reject sizes whose element count could wrap in its
// index arithmetic (rows * cols must fit too, as LAPACK forms column offsets as lda * j).
bool fits_lapack(int64_t rows, int64_t cols) {
    const int64_t lim = 0x7fffffff;
    return rows >= 1 && cols >= 1 && rows <= lim && cols <= lim && rows <= lim / cols;
}

status shape_error(const char * where, const std::string & what) {
    return make_error(PEFT_STATUS_SHAPE, where, what);
}

status lapack_error(const char * where, const char * routine, lapack_int info) {
    // info < 0: we passed a bad argument (a bug here); info > 0: the routine did not converge
    // or the matrix is not what it must be (singular, not positive definite).
    return make_error(PEFT_STATUS_NUMERIC, where,
                      std::string(routine) + " failed with info " + std::to_string((long long) info));
}

status check_matrix(const char * where, const float * W, int64_t OC, int64_t IC) {
    if (!fits_lapack(OC, IC))
        return shape_error(where, "bad matrix size " + std::to_string(OC) + "x" + std::to_string(IC));
    if (!all_finite(W, OC * IC)) return make_error(PEFT_STATUS_NUMERIC, where, "matrix has NaN or Inf");
    return status::success();
}

bool all_finite_f64(const double * x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!std::isfinite(x[i])) return false;
    return true;
}

// Q [m,n] = orth(X [m,n]) in place (m >= n): the Q factor of a thin Householder QR, as
// torch.linalg.qr(X).Q.
status orthonormalize(float * X, int64_t m, int64_t n, const char * where) {
    std::vector<float> tau((size_t) n);
    lapack_int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, (lapack_int) m, (lapack_int) n, X, (lapack_int) n, tau.data());
    if (info != 0) return lapack_error(where, "sgeqrf", info);
    info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, (lapack_int) m, (lapack_int) n, (lapack_int) n, X, (lapack_int) n,
                          tau.data());
    if (info != 0) return lapack_error(where, "sorgqr", info);
    return status::success();
}

} // namespace

// ---- thin SVD -----------------------------------------------------------------------------

status svd_thin(float * U, float * S, float * Vh, const float * W, int64_t OC, int64_t IC) {
    PEFT_TRY(check_matrix("svd_thin", W, OC, IC));
    const int64_t k = std::min(OC, IC);
    // A row-major W [OC,IC] is, read column-major, W^T [IC,OC]. Its SVD W^T = U' S Vt' gives
    // W = Vt'^T S U'^T, and the column-major U' [IC,k] / Vt' [k,OC] are exactly our row-major
    // Vh [k,IC] / U [OC,k] in memory. So LAPACK runs column-major with no transposed copies.
    std::vector<float> a(W, W + OC * IC);   // gesdd destroys its input
    lapack_int info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', (lapack_int) IC, (lapack_int) OC, a.data(),
                                     (lapack_int) IC, S, Vh, (lapack_int) IC, U, (lapack_int) k);
    if (info != 0) return lapack_error("svd_thin", "sgesdd", info);
    return status::success();
}

// ---- randomized SVD -------------------------------------------------------------------------

// torch.svd_lowrank runs the same iteration on W^T when IC > R (to keep its B small); that only
// swaps the roles of the two sides and draws Omega on the other one. The Gaussian comes from our
// rng, so the numbers differ from torch's randn for the same seed; the distribution does not.
status svd_lowrank(float * U, float * S, float * Vh, const float * W, int64_t OC, int64_t IC, int64_t R,
                   int niter, uint64_t seed) {
    const char * where = "svd_lowrank";
    PEFT_TRY(check_matrix(where, W, OC, IC));
    const int64_t k = std::min(OC, IC);
    if (R < 1 || R > k)
        return shape_error(where, "rank " + std::to_string(R) + " outside 1.." + std::to_string(k));
    if (niter < 0) return shape_error(where, "niter must be >= 0");

    std::vector<float> omega((size_t) (IC * R));   // [IC,R]
    rng gen(seed);
    gen.fill_normal(omega.data(), IC * R, 0.0f, 1.0f);

    std::vector<float> q((size_t) (OC * R));       // [OC,R], the range basis
    std::vector<float> p((size_t) (IC * R));       // [IC,R], the co-range basis
    gemm(false, false, OC, R, IC, 1.0f, W, IC, omega.data(), R, 0.0f, q.data(), R);      // W Omega
    PEFT_TRY(orthonormalize(q.data(), OC, R, where));
    for (int it = 0; it < niter; it++) {
        // Re-orthonormalising after every product (rather than forming (W W^T)^N W Omega) keeps
        // the small singular directions from drowning in fp32 rounding.
        gemm(true, false, IC, R, OC, 1.0f, W, IC, q.data(), R, 0.0f, p.data(), R);       // W^T Q
        PEFT_TRY(orthonormalize(p.data(), IC, R, where));
        gemm(false, false, OC, R, IC, 1.0f, W, IC, p.data(), R, 0.0f, q.data(), R);      // W P
        PEFT_TRY(orthonormalize(q.data(), OC, R, where));
    }
    // W ~= Q (Q^T W): the SVD of the small [R,IC] factor gives the top-R triplets.
    std::vector<float> small((size_t) (R * IC));   // [R,IC]
    gemm(true, false, R, IC, OC, 1.0f, q.data(), R, W, IC, 0.0f, small.data(), IC);
    std::vector<float> u_small((size_t) (R * R));  // [R,R]
    PEFT_TRY(svd_thin(u_small.data(), S, Vh, small.data(), R, IC));
    gemm(false, false, OC, R, R, 1.0f, q.data(), R, u_small.data(), R, 0.0f, U, R);     // U = Q U~
    return status::success();
}

// ---- smallest singular triplets -----------------------------------------------------------------

// Accuracy: the eigenvalues of G = W^T W are sigma^2, so the Gram route squares the condition
// number. In fp64 an eigenvector v_i of G is off by about eps64 * sigma_1^2 / gap_i(sigma^2);
// for fp32 weights (sigma_1 / sigma_k well under 1e4 in practice) that is far below fp32
// resolution. sigma_i is then taken as ||W v_i|| rather than sqrt(lambda_i), which keeps its
// error at eps * sigma_1 (like an SVD) instead of eps * sigma_1^2 / sigma_i. The recovered side
// u_i = W v_i / sigma_i loses accuracy like sigma_1 / sigma_i; an exactly zero sigma among the
// R smallest (a rank-deficient W) has no recoverable u_i and is reported as an error.
status svd_smallest(float * U, float * S, float * Vh, const float * W, int64_t OC, int64_t IC, int64_t R) {
    const char * where = "svd_smallest";
    PEFT_TRY(check_matrix(where, W, OC, IC));
    const int64_t k = std::min(OC, IC);
    if (R < 1 || R > k)
        return shape_error(where, "rank " + std::to_string(R) + " outside 1.." + std::to_string(k));

    // Work on the k-sized Gram: G = W^T W [IC,IC] when OC >= IC (eigenvectors are V), else
    // G = W W^T [OC,OC] (eigenvectors are U). `tall` picks which side the eigen solver gives.
    const bool tall = OC >= IC;
    const int64_t other = tall ? OC : IC;
    std::vector<double> wd(W, W + OC * IC);        // [OC,IC] in fp64
    std::vector<double> gram((size_t) (k * k));    // [k,k]
    if (tall) gemm_f64(true, false, k, k, OC, 1.0, wd.data(), IC, wd.data(), IC, 0.0, gram.data(), k);
    else      gemm_f64(false, true, k, k, IC, 1.0, wd.data(), IC, wd.data(), IC, 0.0, gram.data(), k);

    std::vector<double> lambda((size_t) R), z((size_t) (k * R));   // z [k,R]: eigenvectors, ascending
    PEFT_TRY(eigh_range(lambda.data(), z.data(), gram.data(), k, 0, R));

    // The other side: y = W v [OC,R] (tall) or y = W^T u [IC,R].
    std::vector<double> y((size_t) (other * R));
    if (tall) gemm_f64(false, false, OC, R, IC, 1.0, wd.data(), IC, z.data(), R, 0.0, y.data(), R);
    else      gemm_f64(true, false, IC, R, OC, 1.0, wd.data(), IC, z.data(), R, 0.0, y.data(), R);

    for (int64_t j = 0; j < R; j++) {
        double norm2 = 0.0;
        for (int64_t i = 0; i < other; i++) norm2 += y[i * R + j] * y[i * R + j];
        const double sigma = std::sqrt(norm2);
        if (!(sigma > 0.0))
            return make_error(PEFT_STATUS_NUMERIC, where,
                              "W is rank-deficient (a zero singular value among the smallest " + std::to_string(R) +
                              "); its singular vector is not recoverable from the Gram matrix, use svd_thin");
        // eigenvalues come ascending; output column o holds them descending like svd_thin's tail
        const int64_t o = R - 1 - j;
        S[o] = (float) sigma;
        float * eig_side = tall ? Vh : U;     // eigenvector side
        float * rec_side = tall ? U : Vh;     // recovered side
        for (int64_t i = 0; i < k; i++) {
            if (tall) eig_side[o * IC + i] = (float) z[i * R + j];   // Vh row o = v_j^T
            else      eig_side[i * R + o] = (float) z[i * R + j];    // U column o = u_j
        }
        for (int64_t i = 0; i < other; i++) {
            const double v = y[i * R + j] / sigma;
            if (tall) rec_side[i * R + o] = (float) v;               // U column o
            else      rec_side[o * IC + i] = (float) v;              // Vh row o
        }
    }
    return status::success();
}

// ---- thin QR ------------------------------------------------------------------------------------

status qr_thin(float * Q, float * Rm, const float * W, int64_t OC, int64_t IC) {
    const char * where = "qr_thin";
    PEFT_TRY(check_matrix(where, W, OC, IC));
    const int64_t k = std::min(OC, IC);
    std::vector<float> a(W, W + OC * IC);        // [OC,IC], overwritten by the reflectors
    std::vector<float> tau((size_t) k);
    lapack_int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, (lapack_int) OC, (lapack_int) IC, a.data(), (lapack_int) IC,
                                     tau.data());
    if (info != 0) return lapack_error(where, "sgeqrf", info);
    // R [k,IC]: the upper trapezoid of the factored matrix
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < IC; j++) Rm[i * IC + j] = j >= i ? a[i * IC + j] : 0.0f;
    // Q: the first k columns of the product of the k reflectors (orgqr needs n = k <= m)
    info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, (lapack_int) OC, (lapack_int) k, (lapack_int) k, a.data(), (lapack_int) IC,
                          tau.data());
    if (info != 0) return lapack_error(where, "sorgqr", info);
    for (int64_t i = 0; i < OC; i++) std::memcpy(Q + i * k, a.data() + i * IC, sizeof(float) * (size_t) k);
    return status::success();
}

// ---- symmetric eigen and SPD solve (fp64) ---------------------------------------------------------

status eigh_range(double * evals, double * evecs, const double * X, int64_t n, int64_t lo, int64_t count) {
    const char * where = "eigh_range";
    if (!fits_lapack(n, n)) return shape_error(where, "bad matrix size " + std::to_string(n));
    if (lo < 0 || count < 1 || lo + count > n)
        return shape_error(where, "eigen index range [" + std::to_string(lo) + ", " + std::to_string(lo + count) +
                                      ") outside [0, " + std::to_string(n) + ")");
    if (!all_finite_f64(X, n * n)) return make_error(PEFT_STATUS_NUMERIC, where, "matrix has NaN or Inf");
    std::vector<double> a(X, X + n * n);         // dsyevr destroys its input
    std::vector<double> w((size_t) n);           // dsyevr writes up to n values
    std::vector<lapack_int> isuppz((size_t) (2 * count));
    lapack_int found = 0;
    // The row-major upper triangle is the column-major lower one; LAPACKE takes care of that.
    lapack_int info = LAPACKE_dsyevr(LAPACK_ROW_MAJOR, evecs ? 'V' : 'N', 'I', 'U', (lapack_int) n, a.data(),
                                     (lapack_int) n, 0.0, 0.0, (lapack_int) (lo + 1), (lapack_int) (lo + count),
                                     0.0 /* abstol: LAPACK's default */, &found, w.data(), evecs,
                                     (lapack_int) count, isuppz.data());
    if (info != 0) return lapack_error(where, "dsyevr", info);
    if (found != count) return make_error(PEFT_STATUS_NUMERIC, where, "dsyevr returned too few eigenvalues");
    std::memcpy(evals, w.data(), sizeof(double) * (size_t) count);
    return status::success();
}

status spd_solve(double * Y, const double * X, const double * Bm, int64_t n, int64_t nrhs) {
    const char * where = "spd_solve";
    if (!fits_lapack(n, n) || !fits_lapack(n, nrhs))
        return shape_error(where, "bad sizes n " + std::to_string(n) + ", nrhs " + std::to_string(nrhs));
    if (!all_finite_f64(X, n * n) || !all_finite_f64(Bm, n * nrhs))
        return make_error(PEFT_STATUS_NUMERIC, where, "input has NaN or Inf");
    std::vector<double> a(X, X + n * n);         // overwritten by the Cholesky factor
    std::memcpy(Y, Bm, sizeof(double) * (size_t) (n * nrhs));
    lapack_int info = LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', (lapack_int) n, (lapack_int) nrhs, a.data(),
                                    (lapack_int) n, Y, (lapack_int) nrhs);
    if (info > 0) return make_error(PEFT_STATUS_NUMERIC, where, "matrix is not positive definite");
    if (info != 0) return lapack_error(where, "dposv", info);
    return status::success();
}

status spd_inverse(double * Xi, const double * X, int64_t n) {
    const char * where = "spd_inverse";
    if (!fits_lapack(n, n)) return shape_error(where, "bad matrix size " + std::to_string(n));
    if (!all_finite_f64(X, n * n)) return make_error(PEFT_STATUS_NUMERIC, where, "matrix has NaN or Inf");
    std::memcpy(Xi, X, sizeof(double) * (size_t) (n * n));   // factored, then inverted, in place
    lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', (lapack_int) n, Xi, (lapack_int) n);
    if (info > 0) return make_error(PEFT_STATUS_NUMERIC, where, "matrix is not positive definite");
    if (info != 0) return lapack_error(where, "dpotrf", info);
    info = LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'U', (lapack_int) n, Xi, (lapack_int) n);
    if (info != 0) return lapack_error(where, "dpotri", info);
    // dpotri fills only the upper triangle: mirror it so callers get the whole, symmetric inverse
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < i; j++) Xi[i * n + j] = Xi[j * n + i];
    return status::success();
}

} // namespace peft
