// svd_init.cpp: PiSSA / MiLoRA / OLoRA initial adapters and the rank-2R conversion
// (METHODS §3, §4, §6). The decompositions live in kernels/linalg.cpp; this file only picks the
// triplets and splits them between A and B the way PEFT's pissa_init / olora_init do.
#include "adapters/svd_init.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace peft {

namespace {


// PiSSA steps 3-5 on selected triplets U_r [OC,R], S_r [R], Vh_r [R,IC]:
// sigma' = sigma / s, A = diag(sqrt(sigma')) Vh_r, B = U_r diag(sqrt(sigma')), W_res = W - s B A.
// Dividing by s first makes s B A = U_r diag(sigma) Vh_r whatever alpha is.
void split_triplets(float * A, float * B, float * W_res, const float * W, const float * U, const float * S,
                    const float * Vh, int64_t OC, int64_t IC, int64_t R, float s) {
    std::vector<float> root((size_t) R);
    for (int64_t j = 0; j < R; j++) root[j] = std::sqrt(S[j] / s);
    for (int64_t j = 0; j < R; j++)
        for (int64_t i = 0; i < IC; i++) A[j * IC + i] = root[j] * Vh[j * IC + i];
    for (int64_t o = 0; o < OC; o++)
        for (int64_t j = 0; j < R; j++) B[o * R + j] = U[o * R + j] * root[j];
    svd_init_residual(W_res, W, A, B, OC, IC, R, s);
}

} // namespace

status pissa_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, int64_t R, float s) {
    PEFT_TRY(svd_init_check_args("pissa_init", OC, IC, R, s));
    const int64_t k = OC < IC ? OC : IC;
    std::vector<float> U((size_t) (OC * k)), S((size_t) k), Vh((size_t) (k * IC));   // [OC,k], [k], [k,IC]
    PEFT_TRY(svd_thin(U.data(), S.data(), Vh.data(), W, OC, IC));
    // keep the top R: the first R columns of U, the first R rows of Vh (already contiguous)
    std::vector<float> Ur((size_t) (OC * R));   // [OC,R]
    for (int64_t o = 0; o < OC; o++) std::memcpy(&Ur[o * R], &U[o * k], sizeof(float) * (size_t) R);
    split_triplets(A, B, W_res, W, Ur.data(), S.data(), Vh.data(), OC, IC, R, s);
    return status::success();
}

status pissa_niter_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, int64_t R,
                        float s, int niter, uint64_t seed) {
    PEFT_TRY(svd_init_check_args("pissa_niter_init", OC, IC, R, s));
    std::vector<float> U((size_t) (OC * R)), S((size_t) R), Vh((size_t) (R * IC));   // [OC,R], [R], [R,IC]
    PEFT_TRY(svd_lowrank(U.data(), S.data(), Vh.data(), W, OC, IC, R, niter, seed));
    split_triplets(A, B, W_res, W, U.data(), S.data(), Vh.data(), OC, IC, R, s);
    return status::success();
}

status milora_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, int64_t R, float s) {
    PEFT_TRY(svd_init_check_args("milora_init", OC, IC, R, s));
    std::vector<float> U((size_t) (OC * R)), S((size_t) R), Vh((size_t) (R * IC));   // [OC,R], [R], [R,IC]
    PEFT_TRY(svd_smallest(U.data(), S.data(), Vh.data(), W, OC, IC, R));
    split_triplets(A, B, W_res, W, U.data(), S.data(), Vh.data(), OC, IC, R, s);
    return status::success();
}

status olora_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, int64_t R, float s) {
    PEFT_TRY(svd_init_check_args("olora_init", OC, IC, R, s));
    const int64_t k = OC < IC ? OC : IC;
    std::vector<float> Q((size_t) (OC * k)), Rm((size_t) (k * IC));   // [OC,k], [k,IC]
    PEFT_TRY(qr_thin(Q.data(), Rm.data(), W, OC, IC));
    for (int64_t o = 0; o < OC; o++) std::memcpy(B + o * R, &Q[o * k], sizeof(float) * (size_t) R);
    std::memcpy(A, Rm.data(), sizeof(float) * (size_t) (R * IC));   // the first R rows
    svd_init_residual(W_res, W, A, B, OC, IC, R, s);
    return status::success();
}

void svd_init_convert(float * A2, float * B2, const float * A, const float * B, const float * A0, const float * B0,
                      int64_t OC, int64_t IC, int64_t R) {
    // s (B A - B0 A0) = s [B | -B0] [A ; A0]: the training delta measured from the original W
    std::memcpy(A2, A, sizeof(float) * (size_t) (R * IC));
    std::memcpy(A2 + R * IC, A0, sizeof(float) * (size_t) (R * IC));
    for (int64_t o = 0; o < OC; o++)
        for (int64_t j = 0; j < R; j++) {
            B2[o * 2 * R + j] = B[o * R + j];
            B2[o * 2 * R + R + j] = -B0[o * R + j];
        }
}

double svd_init_convert_alpha(double alpha, bool use_rslora) {
    // s = alpha / r at r' = 2r needs alpha' = 2 alpha; s = alpha / sqrt(r) needs sqrt(2) alpha
    // (in double, as PEFT writes lora_alpha * math.sqrt(2) into adapter_config.json)
    return use_rslora ? std::sqrt(2.0) * alpha : 2.0 * alpha;
}

// One fp32 GEMM with beta = 1, as PEFT's `weight - scaling * lora_B @ lora_A`.
void svd_init_residual(float * W_res, const float * W, const float * A, const float * B, int64_t OC, int64_t IC,
                       int64_t R, float s) {
    if (W_res != W) std::memcpy(W_res, W, sizeof(float) * (size_t) (OC * IC));
    gemm(false, false, OC, IC, R, -s, B, R, A, IC, 1.0f, W_res, IC);
}

status svd_init_check_args(const char * where, int64_t OC, int64_t IC, int64_t R, float s) {
    const int64_t k = OC < IC ? OC : IC;
    if (OC < 1 || IC < 1 || R < 1 || R > k)
        return make_error(PEFT_STATUS_SHAPE, where,
                          "rank " + std::to_string(R) + " outside 1.." + std::to_string(k) + " for a " +
                              std::to_string(OC) + "x" + std::to_string(IC) + " weight");
    if (!(s > 0.0f) || !std::isfinite(s))
        return make_error(PEFT_STATUS_CONFIG, where, "scaling must be finite and > 0, got " + std::to_string(s));
    return status::success();
}

} // namespace peft
