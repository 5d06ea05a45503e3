// corda.h: CorDA (METHODS §8) as pure functions of one target layer: the input covariance
// accumulated over calibration forward calls (Step A) and the initial adapter built from the
// SVD of W·C' (Steps B, C). No model, no files: the calibration pass and the init code call
// these per target layer.
//
// Orientation as svd_init.h: W [OC,IC] f32 row-major (PyTorch), A [R,IC], B [OC,R], s the LoRA
// scaling (> 0), W_res [OC,IC] = W - s B A, the frozen residual that replaces W.
#pragma once
#include <cstdint>
#include <vector>

#include "core/status.h"

namespace peft {

// Step A state for one layer: C [n,n] = sum over calls of X^T X with X scaled per call, in fp64
// (PEFT sums in fp32; fp64 keeps thousands of 2048-token calls from losing the small
// directions). Both halves of C are kept, exactly symmetric. count = forward calls, not tokens.
struct corda_covariance {
    int64_t             n = 0;       // IC, the layer's input width
    int64_t             count = 0;   // forward calls added so far
    std::vector<double> C;           // [n,n]; the sum until corda_covariance_finish, then the mean
};

// An empty accumulator for a layer with IC inputs (C = 0, count = 0).
corda_covariance corda_covariance_make(int64_t IC);

// One forward call of one sample: X [rows,IC], the layer input of that sample's non-padding
// tokens only. X <- X / |max(X)| (the [QUIRK]: the absolute value of the largest element, not
// max |X|; the division runs in fp32 like PEFT), then C += X^T X, count += 1. Errors, leaving
// the accumulator unchanged: a shape mismatch (PEFT_STATUS_SHAPE; rows < 1 included), NaN/Inf in
// X or after the scaling, or max(X) == 0 (PEFT_STATUS_NUMERIC; PEFT divides by zero there and
// then raises on the NaN/Inf it made).
status corda_covariance_add(corda_covariance & acc, const float * X, int64_t rows, int64_t IC);

// C <- C / count, once, after the last call. No calls (count == 0) -> PEFT_STATUS_CONFIG.
status corda_covariance_finish(corda_covariance & acc);

// Steps B and C for one layer from its finished covariance C [IC,IC] (fp64, symmetric PSD):
//   damp = 0.01, 0.02, 0.04, ...: C' = C + damp * mean(diag C) * I, Ci = C'^-1, until
//   ||C' Ci - I||_F < 0.05 (at most CORDA_MAX_DOUBLINGS doublings, else PEFT_STATUS_NUMERIC);
//   thin SVD W C' = U diag(sigma) Vh (fp32, as PEFT); V_WC = (Vh Ci)^T;
//   IPM (kpm false): the R largest triplets; KPM (kpm true): the R smallest;
//   sigma' = sigma / s, A = diag(sqrt(sigma')) V_WC^T, B = U diag(sqrt(sigma')),
//   W_res = W - s B A (svd_init_residual, the same GEMM as the other inits).
// C' and its inverse are fp64 (see corda.cpp for how that differs from PEFT's fp32). W_res may
// alias W. damp_out (may be null) receives the damp the loop stopped at.
constexpr int CORDA_MAX_DOUBLINGS = 30;
status corda_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, const double * C,
                  int64_t R, float s, bool kpm, double * damp_out);

} // namespace peft
