// svd_init.h: the initial adapters of the SVD family (METHODS §3 PiSSA, §4 MiLoRA meaning 1,
// §6 OLoRA) as pure functions of one weight, and the conversion of a trained adapter back to a
// plain LoRA on the original weight (METHODS §3 (5)). No model, no files: lora.cpp / init code
// call these per target layer.
//
// Every init takes W [OC,IC] (f32, row-major, PyTorch orientation), the rank R and the LoRA
// scaling s (> 0), and writes A [R,IC], B [OC,R] and W_res [OC,IC] = W - s B A, the frozen
// residual that replaces W. W_res may alias W (in place). All the math runs in fp32 like PEFT.
#pragma once
#include <cstdint>

#include "core/status.h"

namespace peft {

// PiSSA, exact SVD: sigma' = sigma_r / s, A = diag(sqrt(sigma')) Vh_r, B = U_r diag(sqrt(sigma')).
status pissa_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, int64_t R, float s);
// "pissa_niter_N": the same with the randomized SVD (torch.svd_lowrank(W, q=R, niter)) seeded by `seed`.
status pissa_niter_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, int64_t R,
                        float s, int niter, uint64_t seed);
// MiLoRA: the same formula on the R smallest singular triplets.
status milora_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, int64_t R, float s);
// OLoRA: thin QR W = Q Rm, B = Q[:, :R], A = Rm[:R, :]; nothing is divided by s (PEFT's quirk:
// W_res absorbs the scaling instead).
status olora_init(float * A, float * B, float * W_res, const float * W, int64_t OC, int64_t IC, int64_t R, float s);

// The argument checks every init of the family shares: 1 <= R <= min(OC, IC), s finite and > 0
// (errors name `where`).
status svd_init_check_args(const char * where, int64_t OC, int64_t IC, int64_t R, float s);

// W_res = W - s B A, by the same single GEMM the inits use (so a residual rebuilt from saved
// initial factors on resume is bit for bit the one the init made). W_res may alias W.
void svd_init_residual(float * W_res, const float * W, const float * A, const float * B, int64_t OC, int64_t IC, int64_t R, float s);

// Conversion to a plain rank-2R LoRA on the ORIGINAL W: A2 [2R,IC] = [A ; A0] (rows), B2 [OC,2R] =
// [B | -B0] (columns), so that W + s' B2 A2 == W_res + s B A with s' == s (see svd_init_convert_alpha).
// A0 [R,IC], B0 [OC,R] is the initial adapter, A, B the trained one.
void svd_init_convert(float * A2, float * B2, const float * A, const float * B, const float * A0, const float * B0,
                      int64_t OC, int64_t IC, int64_t R);
// lora_alpha of the converted adapter, so its scaling equals the original one at rank 2R:
// 2 alpha under alpha / r, sqrt(2) alpha under rsLoRA (alpha / sqrt(r)).
double svd_init_convert_alpha(double alpha, bool use_rslora);

} // namespace peft
