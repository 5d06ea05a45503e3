// corda.cpp: CorDA's covariance pass and initial adapter (METHODS §8), the math of PEFT's
// calib_cov_distribution, collect_eigens_for_layer, crop_corda_eigens and corda_init. The
// decompositions live in kernels/linalg.cpp.
//
// Precision, and where it departs from PEFT (which does everything in fp32):
// * C is summed in fp64. It is a sum of many Gram matrices; fp32 would lose the small
//   eigen-directions that KPM keeps in the adapter.
// * C' and Ci = C'^-1 are fp64 (Cholesky). The damping loop exists because PEFT's fp32 inverse
//   misses the 0.05 criterion on ill-conditioned C' (cond(C') <= 1 + IC/damp, since the largest
//   eigenvalue of a PSD C is at most its trace = IC * mean(diag C)); in fp64 it almost always
//   stops at damp = 0.01. So on a large, badly conditioned layer our damp can be smaller than
//   PEFT's (C' closer to the paper's W·C), and then A, B and W_res differ from PEFT's by more
//   than rounding. W_res + s B A == W holds either way (the same Ci is in both terms).
// * The SVD of W·C' is fp32 (sgesdd, as torch.linalg.svd): the product is formed in fp64 and
//   rounded once, so the SVD sees the matrix PEFT's fp32 matmul would make, up to rounding.
#include "adapters/corda.h"

#include <cmath>
#include <cstring>
#include <string>

#include "adapters/svd_init.h"
#include "kernels/kernels.h"

namespace peft {

namespace {

bool all_finite_f64(const double * x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!std::isfinite(x[i])) return false;
    return true;
}

} // namespace

corda_covariance corda_covariance_make(int64_t IC) {
    corda_covariance acc;
    acc.n = IC;
    acc.C.assign((size_t) (IC > 0 ? IC * IC : 0), 0.0);
    return acc;
}

status corda_covariance_add(corda_covariance & acc, const float * X, int64_t rows, int64_t IC) {
    const char * where = "corda_covariance_add";
    if (IC < 1 || IC != acc.n || (int64_t) acc.C.size() != IC * IC)
        return make_error(PEFT_STATUS_SHAPE, where,
                          "input width " + std::to_string(IC) + " does not match the accumulator's " +
                              std::to_string(acc.n));
    if (rows < 1) return make_error(PEFT_STATUS_SHAPE, where, "a forward call needs at least one token");
    const int64_t n = rows * IC;
    if (!all_finite(X, n)) return make_error(PEFT_STATUS_NUMERIC, where, "layer input has NaN or Inf");

    // [QUIRK] PEFT divides by |max(X)|, the magnitude of the largest element, not max |X|: an
    // input whose biggest-magnitude entry is negative is scaled by a smaller number than its
    // range. Kept for parity; the damping is invariant to a global scale but not to this
    // per-call weighting.
    float mx = X[0];
    for (int64_t i = 1; i < n; i++) mx = X[i] > mx ? X[i] : mx;
    if (mx == 0.0f)
        return make_error(PEFT_STATUS_NUMERIC, where,
                          "the largest element of the layer input is 0, so X / |max(X)| is undefined");
    const float scale = std::fabs(mx);
    std::vector<double> xs((size_t) n);   // [rows,IC], scaled in fp32 like PEFT, then widened
    for (int64_t i = 0; i < n; i++) {
        const float v = X[i] / scale;
        if (!std::isfinite(v))
            return make_error(PEFT_STATUS_NUMERIC, where, "layer input overflows after X / |max(X)|");
        xs[i] = (double) v;
    }

    std::vector<double> g((size_t) (IC * IC));   // [IC,IC] = X^T X of this call
    gemm_f64(true, false, IC, IC, rows, 1.0, xs.data(), IC, xs.data(), IC, 0.0, g.data(), IC);
    // Add the upper triangle and mirror it: C stays exactly symmetric whatever order BLAS summed in.
    for (int64_t i = 0; i < IC; i++)
        for (int64_t j = i; j < IC; j++) {
            acc.C[i * IC + j] += g[i * IC + j];
            acc.C[j * IC + i] = acc.C[i * IC + j];
        }
    acc.count += 1;
    return status::success();
}

status corda_covariance_finish(corda_covariance & acc) {
    if (acc.count < 1)
        return make_error(PEFT_STATUS_CONFIG, "corda_covariance_finish", "no calibration forward call was recorded");
    const double inv = 1.0 / (double) acc.count;
    for (double & c : acc.C) c *= inv;
    return status::success();
}

status corda_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, const double * C,
                  int64_t R, float s, bool kpm, double * damp_out) {
    const char * where = "corda_init";
    PEFT_TRY(svd_init_check_args(where, OC, IC, R, s));
    const int64_t k = OC < IC ? OC : IC;
    if (!all_finite(W, OC * IC)) return make_error(PEFT_STATUS_NUMERIC, where, "weight has NaN or Inf");
    if (!all_finite_f64(C, IC * IC)) return make_error(PEFT_STATUS_NUMERIC, where, "covariance has NaN or Inf");

    double mean_diag = 0.0;
    for (int64_t i = 0; i < IC; i++) mean_diag += C[i * IC + i];
    mean_diag /= (double) IC;
    // A PSD C with zero trace is 0: no damping makes C' invertible (PEFT's inverse fails there too).
    if (!(mean_diag > 0.0))
        return make_error(PEFT_STATUS_NUMERIC, where, "covariance has no positive diagonal (zero or not PSD)");

    // Step B: damping. For PSD C, cond(C') <= 1 + IC / damp falls towards 1 as damp grows, so the
    // loop ends; 30 doublings (damp ~1e7) is far past any fp64 need and only stops a C that is
    // not PSD from looping for ever.
    std::vector<double> Cp((size_t) (IC * IC)), Ci((size_t) (IC * IC)), E((size_t) (IC * IC));   // [IC,IC]
    double damp = 0.01;
    bool converged = false;
    for (int j = 0; j <= CORDA_MAX_DOUBLINGS; j++, damp *= 2.0) {
        std::memcpy(Cp.data(), C, sizeof(double) * (size_t) (IC * IC));
        for (int64_t i = 0; i < IC; i++) Cp[i * IC + i] += damp * mean_diag;
        // a Cholesky failure (C' numerically indefinite) counts as an inaccurate inverse: damp more
        if (!spd_inverse(Ci.data(), Cp.data(), IC).ok()) continue;
        gemm_f64(false, false, IC, IC, IC, 1.0, Cp.data(), IC, Ci.data(), IC, 0.0, E.data(), IC);   // C' Ci
        double err2 = 0.0;
        for (int64_t a = 0; a < IC; a++)
            for (int64_t b = 0; b < IC; b++) {
                const double d = E[a * IC + b] - (a == b ? 1.0 : 0.0);
                err2 += d * d;
            }
        if (std::sqrt(err2) < 0.05) {
            converged = true;
            break;
        }
    }
    if (!converged)
        return make_error(PEFT_STATUS_NUMERIC, where,
                          "no damp up to 0.01 * 2^" + std::to_string(CORDA_MAX_DOUBLINGS) +
                              " inverts the covariance to ||C' Ci - I|| < 0.05");
    if (damp_out) *damp_out = damp;

    // Thin SVD of W C' [OC,IC]
    std::vector<double> wd(W, W + OC * IC), wcd((size_t) (OC * IC));   // [OC,IC]
    gemm_f64(false, false, OC, IC, IC, 1.0, wd.data(), IC, Cp.data(), IC, 0.0, wcd.data(), IC);
    std::vector<float> wc(wcd.begin(), wcd.end());
    std::vector<float> U((size_t) (OC * k)), S((size_t) k), Vh((size_t) (k * IC));   // [OC,k], [k], [k,IC]
    PEFT_TRY(svd_thin(U.data(), S.data(), Vh.data(), wc.data(), OC, IC));

    // Crop: IPM the first R triplets, KPM the last R (kept in descending order, as PEFT's [-r:]).
    const int64_t off = kpm ? k - R : 0;
    std::vector<double> vh_sel(Vh.begin() + off * IC, Vh.begin() + (off + R) * IC);   // [R,IC]
    std::vector<double> vci((size_t) (R * IC));   // [R,IC] = Vh_sel Ci = V_WC^T
    gemm_f64(false, false, R, IC, IC, 1.0, vh_sel.data(), IC, Ci.data(), IC, 0.0, vci.data(), IC);

    // Step C, as split_triplets in svd_init.cpp: sigma' = sigma / s so that s B A = U sigma V_WC^T.
    std::vector<float> root((size_t) R);
    for (int64_t j = 0; j < R; j++) root[j] = std::sqrt(S[off + j] / s);
    for (int64_t j = 0; j < R; j++)
        for (int64_t i = 0; i < IC; i++) A[j * IC + i] = (float) ((double) root[j] * vci[j * IC + i]);
    for (int64_t o = 0; o < OC; o++)
        for (int64_t j = 0; j < R; j++) B[o * R + j] = U[o * k + off + j] * root[j];
    svd_init_residual(W_res, W, A, B, OC, IC, R, s);
    return status::success();
}

} // namespace peft
