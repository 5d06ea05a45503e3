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

// One output row: y[n] = sum over the row's elements of deq(W) * x[n], block by block; a block
// shared with the neighbouring row contributes only its part.
static void qgemv_row(const qtensor & w, const float * pairs, int64_t o, const float * x, int64_t N, float * acc) {
    const int64_t IC = w.IC, e0 = o * IC, e1 = e0 + IC;
    const int64_t b_first = e0 / BLOCK, nb = (e1 - 1) / BLOCK - b_first + 1;
    thread_local std::vector<float> scales;   // the row's block scales, decoded once
    if ((int64_t) scales.size() < nb) scales.resize((size_t) nb);
    qtensor_block_scales(w, b_first, nb, scales.data());
    float v[BLOCK];
    for (int64_t e = e0; e < e1;) {
        const int64_t b = e / BLOCK, k0 = e % BLOCK, k1 = std::min(BLOCK, k0 + (e1 - e));
        const float s = scales[(size_t) (b - b_first)];
        const uint8_t * src = w.block_data(b);
        for (int k = 0; k < BLOCK / 2; k++) std::memcpy(v + 2 * k, pairs + 2 * src[k], 8);
        for (int k = 0; k < BLOCK; k++) v[k] *= s;
        qtensor_round_values(w, v, BLOCK);
        const int64_t len = k1 - k0, xo = e - e0;
        for (int64_t n = 0; n < N; n++) {
            const float * xb = x + n * IC + xo;
            const float * vb = v + k0;
            float d[8] = {};   // eight lanes so the loop vectorises without reassociation
            int64_t k = 0;
            for (; k + 8 <= len; k += 8) {
                for (int l = 0; l < 8; l++) d[l] += vb[k + l] * xb[k + l];
            }
            for (; k < len; k++) d[0] += vb[k] * xb[k];
            acc[n] += ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]));
        }
        e += len;
    }
}

void qgemv(float * y, const float * x, const qtensor & w, int64_t N, float beta) {
    PEFT_ASSERT(w.type == PEFT_QTYPE_NF4);
    const int64_t OC = w.OC, IC = w.IC;
    const float * pairs = nf4_pairs().data();
    constexpr int64_t NB = 16;   // rows of x per pass over a weight row
#pragma omp parallel for schedule(static) if (OC * IC >= (1 << 16))
    for (int64_t o = 0; o < OC; o++) {
        for (int64_t n0 = 0; n0 < N; n0 += NB) {
            const int64_t nn = std::min(N - n0, NB);
            float acc[NB] = {};
            qgemv_row(w, pairs, o, x + n0 * IC, nn, acc);
            for (int64_t n = 0; n < nn; n++) {
                float * yo = y + (n0 + n) * OC + o;
                *yo = beta == 0.0f ? acc[n] : beta * *yo + acc[n];
            }
        }
    }
}

} // namespace peft
