#include "model/linear.h"

#include <algorithm>
#include <vector>

#include "core/status.h"
#include "core/quant.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"

namespace peft {

// Rows converted per tile: large enough that each GEMM call is efficient, small enough that the
// f32 tile (TILE_ROWS * IC floats) stays a few MB.
static constexpr int64_t TILE_ROWS = 256;

void linear_weight_rows_f32(float * dst, const linear_weight & w, int64_t r0, int64_t r1) {
    if (w.q) return qtensor_rows_f32(*w.q, r0, r1, dst);
    const size_t esz = dtype_size(w.type);
    const uint8_t * src = (const uint8_t *) w.data + (size_t) r0 * w.IC * esz;
    const int64_t rows = r1 - r0;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        convert_to_f32(w.type, src + (size_t) r * w.IC * esz, dst + r * w.IC, (size_t) w.IC);
    }
}

// bf16 compute (`bf16: true`): frozen-weight GEMMs round their operands to bf16, f32 accumulation
static bool g_bf16_compute = false;

void linear_set_bf16_compute(bool on) { g_bf16_compute = on; }
bool linear_bf16_compute() { return g_bf16_compute; }

// f32 and bf16 weights go to gemm_own as stored (it packs bf16 itself); others convert by tiles
static bool direct_type(dtype t) { return t == PEFT_DTYPE_F32 || t == PEFT_DTYPE_BF16; }

static thread_local std::vector<float> g_tile;  // reused conversion buffer (serial callers only)

static float * tile_buffer(int64_t n) {
    if ((int64_t) g_tile.size() < n) g_tile.resize((size_t) n);
    return g_tile.data();
}

// Decode-sized products over a block type without a fused GEMV of its own (the ggml types;
// NF4's is in kernels/nf4.cpp): each weight row is dequantized once through the type table into
// a row buffer and dotted with the N inputs. y[N,OC] = beta * y + x[N,IC] deq(W)^T
static void qgemv_by_rows(float * y, const float * x, const qtensor & w, int64_t N, float beta) {
    const int64_t OC = w.OC, IC = w.IC;
#pragma omp parallel for schedule(static) if (OC * IC >= (1 << 16))
    for (int64_t o = 0; o < OC; o++) {
        thread_local std::vector<float> row;
        if ((int64_t) row.size() < IC) row.resize((size_t) IC);
        qtensor_dequant_range(w, o * IC, (o + 1) * IC, row.data());
        for (int64_t n = 0; n < N; n++) {
            const float * xn = x + n * IC;
            float d[8] = {};   // eight lanes so the loop vectorises without reassociation
            int64_t k = 0;
            for (; k + 8 <= IC; k += 8) {
                for (int l = 0; l < 8; l++) d[l] += row[(size_t) (k + l)] * xn[k + l];
            }
            for (; k < IC; k++) d[0] += row[(size_t) k] * xn[k];
            const float acc = ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]));
            float * yo = y + n * OC + o;
            *yo = beta == 0.0f ? acc : beta * *yo + acc;
        }
    }
}

void linear_forward(float * y, const float * x, const linear_weight & w, const float * bias, int64_t N, float beta) {
    const int64_t OC = w.OC, IC = w.IC;
    if (w.q) {
        if (w.q->type != PEFT_QTYPE_NF4 && N <= QGEMV_MAX_ROWS) qgemv_by_rows(y, x, *w.q, N, beta);
        else qlinear_forward(y, x, *w.q, N, beta, g_bf16_compute);   // tiles through the type table; NF4's GEMV
    } else if (direct_type(w.type) && N <= GEMV_MAX_ROWS) {   // decoding: memory-bound dot products
        gemv_own(y, x, N, w.type, w.data, OC, IC, beta, g_bf16_compute);
    } else if (direct_type(w.type)) {
        gemm_own(false, true, N, OC, IC, 1.0f, x, IC, w.type, w.data, IC, beta, y, OC, g_bf16_compute);
    } else {
        float * tile = tile_buffer(std::min(OC, TILE_ROWS) * IC);
        for (int64_t r0 = 0; r0 < OC; r0 += TILE_ROWS) {
            int64_t r1 = std::min(OC, r0 + TILE_ROWS);
            linear_weight_rows_f32(tile, w, r0, r1);
            // y[:, r0:r1] = x tile^T
            gemm_own(false, true, N, r1 - r0, IC, 1.0f, x, IC, PEFT_DTYPE_F32, tile, IC, beta, y + r0, OC, g_bf16_compute);
        }
    }
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            float * yr = y + n * OC;
            for (int64_t o = 0; o < OC; o++) yr[o] += bias[o];
        }
    }
}

void linear_backward_input(float * dx, const float * dy, const linear_weight & w, int64_t N, float beta) {
    if (w.q) return qlinear_backward_input(dx, dy, *w.q, N, beta, g_bf16_compute);
    const int64_t OC = w.OC, IC = w.IC;
    if (direct_type(w.type)) {
        gemm_own(false, false, N, IC, OC, 1.0f, dy, OC, w.type, w.data, IC, beta, dx, IC, g_bf16_compute);
        return;
    }
    float * tile = tile_buffer(std::min(OC, TILE_ROWS) * IC);
    for (int64_t r0 = 0; r0 < OC; r0 += TILE_ROWS) {
        int64_t r1 = std::min(OC, r0 + TILE_ROWS);
        linear_weight_rows_f32(tile, w, r0, r1);
        // dx (+)= dy[:, r0:r1] tile; only the first tile applies the caller's beta
        gemm_own(false, false, N, IC, r1 - r0, 1.0f, dy + r0, OC, PEFT_DTYPE_F32, tile, IC, r0 == 0 ? beta : 1.0f, dx, IC,
                 g_bf16_compute);
    }
}

void linear_backward_weight(float * dW, float * dbias, const float * dy, const float * x, int64_t N, int64_t OC, int64_t IC) {
    if (dW) gemm(true, false, OC, IC, N, 1.0f, dy, OC, x, IC, 1.0f, dW, IC);
    if (dbias) {
        // column sums; rows split over threads would make the order thread-dependent, so each
        // thread owns a range of columns and walks all rows in order
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < OC; o++) {
            float s = 0.0f;
            for (int64_t n = 0; n < N; n++) s += dy[n * OC + o];
            dbias[o] += s;
        }
    }
}

} // namespace peft
