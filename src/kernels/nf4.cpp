// nf4.cpp: products with block-quantized weights (nf4.h). The GEMV reads each weight byte once
// and keeps the decoded block in registers; the tiled path bounds the f32 scratch to TILE_ROWS
// rows of W. Both produce deq(W) exactly as qtensor_rows_f32 does (same products, same bf16
// rounding), so they differ from a GEMM over the dequantized matrix only by summation order.
#include "kernels/nf4.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"

namespace peft {

static constexpr int64_t TILE_ROWS = 256;   // rows of W dequantized per GEMM call
static constexpr int64_t BLOCK = 64;        // NF4 block; the only type so far

static thread_local std::vector<float> g_qtile;   // serial callers only

static float * qtile(int64_t n) {
    if ((int64_t) g_qtile.size() < n) g_qtile.resize((size_t) n);
    return g_qtile.data();
}

void qlinear_forward(float * y, const float * x, const qtensor & w, int64_t N, float beta) {
    if (N <= QGEMV_MAX_ROWS) {
        qgemv(y, x, w, N, beta);
        return;
    }
    const int64_t OC = w.OC, IC = w.IC;
    float * tile = qtile(std::min(OC, TILE_ROWS) * IC);
    for (int64_t r0 = 0; r0 < OC; r0 += TILE_ROWS) {
        const int64_t r1 = std::min(OC, r0 + TILE_ROWS);
        qtensor_rows_f32(w, r0, r1, tile);
        gemm(false, true, N, r1 - r0, IC, 1.0f, x, IC, tile, IC, beta, y + r0, OC);   // y[:, r0:r1]
    }
}

void qlinear_backward_input(float * dx, const float * dy, const qtensor & w, int64_t N, float beta) {
    const int64_t OC = w.OC, IC = w.IC;
    float * tile = qtile(std::min(OC, TILE_ROWS) * IC);
    for (int64_t r0 = 0; r0 < OC; r0 += TILE_ROWS) {
        const int64_t r1 = std::min(OC, r0 + TILE_ROWS);
        qtensor_rows_f32(w, r0, r1, tile);
        // dx (+)= dy[:, r0:r1] tile; the caller's beta applies to the first tile only
        gemm(false, false, N, IC, r1 - r0, 1.0f, dy + r0, OC, tile, IC, r0 == 0 ? beta : 1.0f, dx, IC);
    }
}

// NF4 code pairs of every byte: [hi nibble value, lo nibble value].
static const auto & nf4_pairs() {
    static const auto table = [] {
        std::vector<float> t(512);
        for (int b = 0; b < 256; b++) {
            t[(size_t) (2 * b)] = NF4_CODE[b >> 4];
            t[(size_t) (2 * b + 1)] = NF4_CODE[b & 15];
        }
        return t;
    }();
    return table;
}

void qgemv(float * y, const float * x, const qtensor & w, int64_t N, float beta) {
    PEFT_ASSERT(w.type == PEFT_QTYPE_NF4);
    const int64_t OC = w.OC, IC = w.IC, bpr = w.blocks_per_row();
    const float * pairs = nf4_pairs().data();
#pragma omp parallel for schedule(static) if (OC * IC >= (1 << 16))
    for (int64_t o = 0; o < OC; o++) {
        float acc[QGEMV_MAX_ROWS * 4] = {};
        float scale[16];
        float v[BLOCK];
        for (int64_t n0 = 0; n0 < N; n0 += QGEMV_MAX_ROWS * 4) {
            const int64_t nn = std::min(N - n0, QGEMV_MAX_ROWS * 4);
            std::fill(acc, acc + nn, 0.0f);
            for (int64_t j = 0; j < bpr; j++) {
                if (j % 16 == 0) qtensor_block_scales(w, o * bpr + j, std::min<int64_t>(16, bpr - j), scale);
                const uint8_t * src = w.block_data(o * bpr + j);
                for (int k = 0; k < BLOCK / 2; k++) std::memcpy(v + 2 * k, pairs + 2 * src[k], 8);
                const float s = scale[j % 16];
                for (int k = 0; k < BLOCK; k++) v[k] *= s;
                qtensor_round_values(w, v, BLOCK);
                for (int64_t n = 0; n < nn; n++) {
                    const float * xb = x + (n0 + n) * IC + j * BLOCK;
                    float d[8] = {};   // eight lanes so the loop vectorises without reassociation
                    for (int k = 0; k < BLOCK; k += 8) {
                        for (int l = 0; l < 8; l++) d[l] += v[k + l] * xb[k + l];
                    }
                    acc[n] += ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]));
                }
            }
            for (int64_t n = 0; n < nn; n++) {
                float * yo = y + (n0 + n) * OC + o;
                *yo = beta == 0.0f ? acc[n] : beta * *yo + acc[n];
            }
        }
    }
}

} // namespace peft
