// rmsnorm.cpp: Llama RMSNorm as HF LlamaRMSNorm computes it in f32:
// out = weight * (inp * rstd), rstd = 1/sqrt(mean(inp^2) + eps). Forward saves rstd[N] for backward.
#include <cmath>

#include "kernels/kernels.h"

namespace peft {

// out[N,C], rstd[N]; inp[N,C], weight[C]
void rmsnorm_forward(float * out, float * rstd, const float * inp, const float * weight, int64_t N, int64_t C, float eps) {
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float * x = inp + n * C;
        float * y = out + n * C;
        float ss = 0.0f;
        #pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < C; c++) ss += x[c] * x[c];
        const float r = 1.0f / std::sqrt(ss / (float) C + eps);
        for (int64_t c = 0; c < C; c++) y[c] = weight[c] * (x[c] * r);
        rstd[n] = r;
    }
}

// Differentiating y_i = w_i x_i r with r = (mean(x^2)+eps)^(-1/2), dr/dx_j = -r^3 x_j / C:
//   dx_i += dy_i w_i r - x_i r^3 / C * sum_j dy_j w_j x_j
//   dw_i += sum_n dy_i x_i r
// dinp[N,C], dweight[C] (null for a frozen norm); dout[N,C], inp[N,C], weight[C], rstd[N]
void rmsnorm_backward(float * dinp, float * dweight, const float * dout, const float * inp, const float * weight,
                      const float * rstd, int64_t N, int64_t C) {
    #pragma omp parallel
    {
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float * x = inp + n * C;
            const float * dy = dout + n * C;
            float * dx = dinp + n * C;
            const float r = rstd[n];
            float dot = 0.0f;
            #pragma omp simd reduction(+ : dot)
            for (int64_t c = 0; c < C; c++) dot += dy[c] * weight[c] * x[c];
            const float k = dot * r * r * r / (float) C;
            for (int64_t c = 0; c < C; c++) dx[c] += dy[c] * weight[c] * r - x[c] * k;
        }
        // dweight sums over rows; threads split the columns so each sum runs in row order on
        // one thread (deterministic for any thread count, no per-thread copies of dweight)
        if (dweight) {
            constexpr int64_t COLS = 64;
            const int64_t n_blocks = (C + COLS - 1) / COLS;
            #pragma omp for schedule(static)
            for (int64_t blk = 0; blk < n_blocks; blk++) {
                const int64_t c0 = blk * COLS;
                const int64_t c1 = c0 + COLS < C ? c0 + COLS : C;
                float acc[COLS] = {};
                for (int64_t n = 0; n < N; n++) {
                    const float * x = inp + n * C;
                    const float * dy = dout + n * C;
                    const float r = rstd[n];
                    for (int64_t c = c0; c < c1; c++) acc[c - c0] += dy[c] * x[c] * r;
                }
                for (int64_t c = c0; c < c1; c++) dweight[c] += acc[c - c0];
            }
        }
    }
}

void rmsnorm_forward_ref(float * out, float * rstd, const float * inp, const float * weight, int64_t N, int64_t C, float eps) {
    for (int64_t n = 0; n < N; n++) {
        const float * x = inp + n * C;
        double ss = 0.0;
        for (int64_t c = 0; c < C; c++) ss += (double) x[c] * x[c];
        const double r = 1.0 / std::sqrt(ss / (double) C + (double) eps);
        for (int64_t c = 0; c < C; c++) out[n * C + c] = (float) ((double) weight[c] * x[c] * r);
        rstd[n] = (float) r;
    }
}

} // namespace peft
