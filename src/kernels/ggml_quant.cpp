// ggml_quant.cpp: ggml block dequantization (see ggml_quant.h). Compiled with
// -ffp-contract=off (CMakeLists.txt): ggml's reference computes d*q - m as a rounded product
// then a rounded difference, and an FMA would differ in the last bit.
#include "kernels/ggml_quant.h"

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

ggml_dequantize_fn ggml_dequantizer(uint32_t t) {
    switch (t) {
        case GGUF_TENSOR_Q8_0: return ggml_dequantize_row_q8_0;
        case GGUF_TENSOR_Q4_0: return ggml_dequantize_row_q4_0;
        case GGUF_TENSOR_Q4_K: return ggml_dequantize_row_q4_K;
        default: return nullptr;
    }
}

} // namespace peft
