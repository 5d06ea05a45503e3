// nf4.h: matrix products with a block-quantized frozen weight W[OC, IC] (core/quant.h), the
// dequantization done inside the product so no f32 copy of W ever exists:
//  - a fused dequant-GEMV for a few rows (decoding), each 64-value block decoded in registers;
//  - for more rows, gemm_own with W decoded inside the GEMM, one KC x NC packing block at a time.
// Not here: quantizing (core/quant.cpp), bias and adapters (model/linear.cpp, adapters/).
#pragma once
#include <cstdint>

#include "core/quant.h"

namespace peft {

// y[N,OC] = beta * y + x[N,IC] deq(W)^T; bf16_compute rounds the GEMM's operands to bf16 as
// gemm_own does (the GEMV path never rounds x)
void qlinear_forward(float * y, const float * x, const qtensor & w, int64_t N, float beta, bool bf16_compute);
// dx[N,IC] = beta * dx + dy[N,OC] deq(W)
void qlinear_backward_input(float * dx, const float * dy, const qtensor & w, int64_t N, float beta, bool bf16_compute);
// The GEMV path of qlinear_forward (any N; qlinear_forward takes it for N <= QGEMV_MAX_ROWS).
void qgemv(float * y, const float * x, const qtensor & w, int64_t N, float beta);
constexpr int64_t QGEMV_MAX_ROWS = 4;
// The oracle of qgemv: rows of deq(W) from qtensor_dequant_range, products summed in double.
void qgemv_ref(float * y, const float * x, const qtensor & w, int64_t N, float beta);
// The kernel set qgemv uses: "avx512", "avx2" or "scalar", following gemm_isa() (CPUID, or
// gemm_force_isa in tests). Rows that share blocks (IC % 64 != 0) always take the scalar loop.
const char * qgemv_isa();

} // namespace peft
