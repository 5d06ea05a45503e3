// rope.cpp: rotary position embedding in the HF "rotate_half" layout (dims i and i + HS/2 form a
// pair), plus the inverse-frequency table with optional Llama-3 scaling.
// Angles follow HF: freqs = pos * inv_freq in f32, then cos/sin in f32.
#include <cmath>
#include <numbers>

#include "kernels/kernels.h"

namespace peft {

// inv_freq[HS/2]. Default: theta^(-2i/HS). Llama 3 (HF _compute_llama3_parameters): with
// wavelen = 2 pi / inv_freq, long wavelengths (> orig/low_freq_factor) are divided by factor,
// short ones (< orig/high_freq_factor) kept, and the band between blends the two linearly in
// orig/wavelen. Computed in double and rounded once (HF works in f32; they agree to ~1 ulp).
void rope_inv_freq(float * inv_freq, const rope_config & cfg, int64_t HS) {
    const double orig = (double) cfg.original_max_position;
    const double low_freq_wavelen = orig / cfg.low_freq_factor;
    const double high_freq_wavelen = orig / cfg.high_freq_factor;
    for (int64_t i = 0; i < HS / 2; i++) {
        double f = std::pow((double) cfg.theta, -(double) (2 * i) / (double) HS);
        if (cfg.llama3) {
            const double wavelen = 2.0 * std::numbers::pi / f;
            if (wavelen > low_freq_wavelen) {
                f = f / cfg.factor;
            } else if (wavelen >= high_freq_wavelen) {
                const double smooth = (orig / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor);
                f = (1.0 - smooth) * f / cfg.factor + smooth * f;
            }
        }
        inv_freq[i] = (float) f;
    }
}

// Rotates every head of x[N, nh, HS] by the angles of pos[N]; sign = +1 forward, -1 inverse.
// cos/sin are computed once per (row, chunk of frequencies) and shared by all heads.
static void rope_apply(float * x, const int32_t * pos, const float * inv_freq, int64_t N, int64_t nh, int64_t HS,
                       float sign) {
    const int64_t half = HS / 2;
    constexpr int64_t CHUNK = 64;
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float p = (float) pos[n];
        float cs[CHUNK], sn[CHUNK];
        for (int64_t i0 = 0; i0 < half; i0 += CHUNK) {
            const int64_t len = half - i0 < CHUNK ? half - i0 : CHUNK;
            for (int64_t i = 0; i < len; i++) {
                const float angle = p * inv_freq[i0 + i];
                cs[i] = std::cos(angle);
                sn[i] = sign * std::sin(angle);
            }
            for (int64_t h = 0; h < nh; h++) {
                float * x1 = x + (n * nh + h) * HS + i0;
                float * x2 = x1 + half;
                // HF: out = x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1)
                for (int64_t i = 0; i < len; i++) {
                    const float a = x1[i], b = x2[i];
                    x1[i] = a * cs[i] - b * sn[i];
                    x2[i] = b * cs[i] + a * sn[i];
                }
            }
        }
    }
}

void rope_forward(float * x, const int32_t * pos, const float * inv_freq, int64_t N, int64_t nh, int64_t HS) {
    rope_apply(x, pos, inv_freq, N, nh, HS, 1.0f);
}

// The forward is a rotation R per pair, so the gradient is R^T dy: the same rotation by -angle.
void rope_backward(float * dx, const int32_t * pos, const float * inv_freq, int64_t N, int64_t nh, int64_t HS) {
    rope_apply(dx, pos, inv_freq, N, nh, HS, -1.0f);
}

} // namespace peft
