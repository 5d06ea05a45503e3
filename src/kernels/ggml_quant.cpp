// ggml_quant.cpp: ggml block dequantization (see ggml_quant.h). Compiled with
// -ffp-contract=off (CMakeLists.txt): ggml's reference computes d*q - m as a rounded product
// then a rounded difference, and an FMA would differ in the last bit.
#include "kernels/ggml_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "io/gguf.h"

namespace peft {

namespace {

float half_at(const uint8_t * p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return f16_to_f32(h);
}

// The 6-bit scale and min of sub-block j from a Q4_K block's 12 scale bytes (ggml's
// get_scale_min_k4): sub-blocks 0-3 in the low 6 bits of bytes 0-3 / 4-7, sub-blocks 4-7 in
// the nibbles of bytes 8-11 plus the top 2 bits of bytes 0-3 / 4-7.
void scale_min_k4(int j, const uint8_t * q, uint8_t & sc, uint8_t & m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (uint8_t) ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = (uint8_t) ((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

} // namespace

void ggml_dequantize_row_q8_0(const uint8_t * x, float * y, int64_t n) {
    const size_t bytes = 2 + GGML_QK8_0;
    for (int64_t b = 0; b < n / GGML_QK8_0; b++) {
        const uint8_t * blk = x + (size_t) b * bytes;
        const float d = half_at(blk);
        for (int64_t j = 0; j < GGML_QK8_0; j++) y[b * GGML_QK8_0 + j] = (float) (int8_t) blk[2 + j] * d;
    }
}

void ggml_dequantize_row_q4_0(const uint8_t * x, float * y, int64_t n) {
    const size_t bytes = 2 + GGML_QK4_0 / 2;
    for (int64_t b = 0; b < n / GGML_QK4_0; b++) {
        const uint8_t * blk = x + (size_t) b * bytes;
        const float d = half_at(blk);
        float * yb = y + b * GGML_QK4_0;
        for (int64_t j = 0; j < GGML_QK4_0 / 2; j++) {
            yb[j] = (float) ((blk[2 + j] & 0x0F) - 8) * d;
            yb[j + GGML_QK4_0 / 2] = (float) ((blk[2 + j] >> 4) - 8) * d;
        }
    }
}

void ggml_dequantize_row_q4_K(const uint8_t * x, float * y, int64_t n) {
    const size_t bytes = 4 + 12 + GGML_QK_K / 2;
    for (int64_t b = 0; b < n / GGML_QK_K; b++) {
        const uint8_t * blk = x + (size_t) b * bytes;
        const float d = half_at(blk), dmin = half_at(blk + 2);
        const uint8_t * scales = blk + 4;
        const uint8_t * q = blk + 16;   // [128] nibbles: 64 values per 32 bytes, low then high
        float * yb = y + b * GGML_QK_K;
        for (int s = 0; s < 8; s += 2) {
            uint8_t sc, m;
            scale_min_k4(s, scales, sc, m);
            const float d1 = d * sc, m1 = dmin * m;
            scale_min_k4(s + 1, scales, sc, m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *yb++ = d1 * (float) (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *yb++ = d2 * (float) (q[l] >> 4) - m2;
            q += 32;
        }
    }
}

void ggml_quantize_row_q8_0(const float * x, uint8_t * y, int64_t n) { gguf_quantize_q8_0(x, y, n); }

// as quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8, q = min(15, trunc(x/d + 8.5))
void ggml_quantize_row_q4_0(const float * x, uint8_t * y, int64_t n) {
    const size_t bytes = 2 + GGML_QK4_0 / 2;
    for (int64_t b = 0; b < n / GGML_QK4_0; b++) {
        const float * xb = x + b * GGML_QK4_0;
        uint8_t * blk = y + (size_t) b * bytes;
        float amax = 0.0f, max = 0.0f;
        for (int64_t j = 0; j < GGML_QK4_0; j++) {
            if (amax < std::fabs(xb[j])) {
                amax = std::fabs(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t dh = f32_to_f16(d);
        std::memcpy(blk, &dh, 2);
        for (int64_t j = 0; j < GGML_QK4_0 / 2; j++) {
            const int q0 = std::min(15, (int) (int8_t) (xb[j] * id + 8.5f));
            const int q1 = std::min(15, (int) (int8_t) (xb[j + GGML_QK4_0 / 2] * id + 8.5f));
            blk[2 + j] = (uint8_t) (q0 | q1 << 4);
        }
    }
}

// Each 32-value sub-block s gets x ~ scale_s * q - min_s (q 0..15) from its own min and max;
// the eight scales and mins are then coded as 6-bit multiples of d = max scale / 63 and
// dmin = max min / 63 (f16), and the values re-quantized with the coded ones.
void ggml_quantize_row_q4_K(const float * x, uint8_t * y, int64_t n) {
    const size_t bytes = 4 + 12 + GGML_QK_K / 2;
    for (int64_t b = 0; b < n / GGML_QK_K; b++) {
        const float * xb = x + b * GGML_QK_K;
        uint8_t * blk = y + (size_t) b * bytes;
        float scale[8], mins[8], max_scale = 0.0f, max_min = 0.0f;
        for (int s = 0; s < 8; s++) {
            float lo = 0.0f, hi = xb[s * 32];   // the min is clamped to <= 0, as in ggml (mins are stored as >= 0)
            for (int l = 0; l < 32; l++) {
                lo = std::min(lo, xb[s * 32 + l]);
                hi = std::max(hi, xb[s * 32 + l]);
            }
            scale[s] = (hi - lo) / 15.0f;
            mins[s] = -lo;
            max_scale = std::max(max_scale, scale[s]);
            max_min = std::max(max_min, mins[s]);
        }
        const uint16_t dh = f32_to_f16(max_scale / 63.0f), mh = f32_to_f16(max_min / 63.0f);
        std::memcpy(blk, &dh, 2);
        std::memcpy(blk + 2, &mh, 2);
        const float d = f16_to_f32(dh), dmin = f16_to_f32(mh);
        uint8_t sc[8], m[8];
        for (int s = 0; s < 8; s++) {
            sc[s] = (uint8_t) (d > 0.0f ? std::min(63.0f, std::nearbyint(scale[s] / d)) : 0.0f);
            m[s] = (uint8_t) (dmin > 0.0f ? std::min(63.0f, std::nearbyint(mins[s] / dmin)) : 0.0f);
        }
        uint8_t * scales = blk + 4;   // the layout scale_min_k4 reads
        for (int s = 0; s < 4; s++) {
            scales[s] = (uint8_t) (sc[s] | (sc[s + 4] >> 4) << 6);
            scales[s + 4] = (uint8_t) (m[s] | (m[s + 4] >> 4) << 6);
            scales[s + 8] = (uint8_t) ((sc[s + 4] & 0xF) | (m[s + 4] & 0xF) << 4);
        }
        uint8_t L[GGML_QK_K];
        for (int s = 0; s < 8; s++) {
            const float ds = d * sc[s], dm = dmin * m[s];
            for (int l = 0; l < 32; l++) {
                const float q = ds > 0.0f ? std::nearbyint((xb[s * 32 + l] + dm) / ds) : 0.0f;
                L[s * 32 + l] = (uint8_t) std::clamp(q, 0.0f, 15.0f);
            }
        }
        uint8_t * q = blk + 16;
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; l++) q[32 * k + l] = (uint8_t) (L[64 * k + l] | L[64 * k + 32 + l] << 4);
        }
    }
}

ggml_dequantize_fn ggml_dequantizer(uint32_t t) {
    switch (t) {
        case GGUF_TENSOR_Q8_0: return ggml_dequantize_row_q8_0;
        case GGUF_TENSOR_Q4_0: return ggml_dequantize_row_q4_0;
        case GGUF_TENSOR_Q4_K: return ggml_dequantize_row_q4_K;
        default: return nullptr;
    }
}

} // namespace peft
