// linear.h: a base linear layer y[N,OC] = x[N,IC] W^T (+ b) whose weight W[OC,IC] stays in its
// stored dtype (f32, bf16, f16) or block-quantized (NF4, core/quant.h: then `q` is set). f32 and
// bf16 weights are packed by the GEMM itself (gemm_own reads bf16 directly); other types are
// converted to f32 one tile of rows at a time, so a bf16 checkpoint is never materialised in fp32.
// Not here: weight gradients of non-f32 weights (a frozen base never needs them).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace peft {

struct qtensor;

struct linear_weight {
    dtype        type = PEFT_DTYPE_F32;
    const void * data = nullptr;  // [OC, IC] in `type`; may point into a read-only mmap
    int64_t      OC = 0, IC = 0;
    const qtensor * q = nullptr;  // quantized weight (data is then null; products go through kernels/nf4.h)
};

// y[N,OC] = x[N,IC] W^T + bias[OC] (bias may be null). beta = 1 accumulates into y.
void linear_forward(float * y, const float * x, const linear_weight & w, const float * bias, int64_t N, float beta = 0.0f);
// dx[N,IC] = beta * dx + dy[N,OC] W   (beta 1 accumulates, 0 overwrites)
void linear_backward_input(float * dx, const float * dy, const linear_weight & w, int64_t N, float beta = 1.0f);
// dW[OC,IC] += dy^T x ; dbias[OC] += column sums of dy (either may be null)
void linear_backward_weight(float * dW, float * dbias, const float * dy, const float * x, int64_t N, int64_t OC, int64_t IC);

// bf16 compute (train config `bf16: true`): forward and input-gradient GEMMs of frozen weights
// round x, dy and W to bf16 and accumulate in f32 (vdpbf16ps where the CPU has it). Weight
// gradients (full fine-tuning) stay f32. Process-wide; off by default.
void linear_set_bf16_compute(bool on);
bool linear_bf16_compute();

// Rows [r0, r1) of W as f32 into dst[(r1-r0), IC].
void linear_weight_rows_f32(float * dst, const linear_weight & w, int64_t r0, int64_t r1);

} // namespace peft
