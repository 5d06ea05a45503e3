// nf4.cpp: products with block-quantized weights (nf4.h). The GEMV reads each weight byte once
// and keeps the decoded block in registers; the GEMM path decodes W inside gemm_own's packing,
// one KC x NC block per thread at a time. Both produce deq(W) exactly as qtensor_rows_f32 does
// (same products, same bf16 rounding), so they differ from a GEMM over the dequantized matrix
// only by summation order (and, with bf16 compute, by gemm_own's rounding of the operands).
#include "kernels/nf4.h"

// GCC 12 flags its own avx512fintrin.h helpers (_mm512_reduce_add_ps) as (maybe-)uninitialized
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"

namespace peft {

static constexpr int64_t BLOCK = 64;        // NF4 block; the only type so far

// W's rows as the GEMM's B operand, decoded block by block while the GEMM packs them
static void read_rows(const void * ctx, int64_t r, int64_t c0, int64_t n, float * dst) {
    const qtensor & w = *(const qtensor *) ctx;
    qtensor_dequant_range(w, r * w.IC + c0, r * w.IC + c0 + n, dst);
}

void qlinear_forward(float * y, const float * x, const qtensor & w, int64_t N, float beta, bool bf16_compute) {
    if (N <= QGEMV_MAX_ROWS) {
        qgemv(y, x, w, N, beta);
        return;
    }
    const gemm_b_reader B = {read_rows, &w};
    gemm_own_read(false, true, N, w.OC, w.IC, 1.0f, x, w.IC, B, beta, y, w.OC, bf16_compute);
}

void qlinear_backward_input(float * dx, const float * dy, const qtensor & w, int64_t N, float beta, bool bf16_compute) {
    const gemm_b_reader B = {read_rows, &w};
    gemm_own_read(false, false, N, w.IC, w.OC, 1.0f, dy, w.OC, B, beta, dx, w.IC, bf16_compute);
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

// ---- fused NF4 GEMV kernels, per ISA ---------------------------------------------------------
// A row of W is whole 64-element blocks when IC % 64 == 0 (every real model). Per block the 16
// code values are scaled (and bf16-rounded) once into a 16-entry table, so a lookup yields deq(W)
// exactly as qtensor_dequant_range computes it; the table lookup is one vpermps (AVX-512) or
// two vpermps + a blend (AVX2). A byte holds the even element in its high nibble, so x arrives
// split into its even (xe) and odd (xo) elements: 16 bytes meet 16 consecutive xe and xo values.
// Each kernel: acc[n] = sum over the row of deq(W) * x[n] for NR rows of x (row n at xe + n*ldx).

#define NF4_AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define NF4_AVX2_ATTR __attribute__((target("avx2,fma")))

NF4_AVX512_ATTR static inline __m512 round_bf16_avx512(__m512 v) {   // f32_to_bf16 for finite values
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32((int) 0xffff0000u)));
}

template <int NR>
NF4_AVX512_ATTR static void nf4_row_avx512(const uint8_t * q, const float * scale, int64_t nb, bool bf16, const float * xe,
                                           const float * xo, int64_t ldx, float * acc) {
    const __m512 code = _mm512_loadu_ps(NF4_CODE);
    __m512 a[NR][4];   // [even, odd] x [first, second 16 bytes]: four independent FMA chains
    for (int n = 0; n < NR; n++) a[n][0] = a[n][1] = a[n][2] = a[n][3] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512 t = _mm512_mul_ps(code, _mm512_set1_ps(scale[b]));
        if (bf16) t = round_bf16_avx512(t);
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const int64_t off = b * 32 + h * 16;
            const __m512i by = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *) (q + off)));
            const __m512 lo = _mm512_permutexvar_ps(by, t);   // vpermps reads the low 4 bits: the low nibble
            const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(by, 4), t);
#pragma GCC unroll 4
            for (int n = 0; n < NR; n++) {
                a[n][2 * h] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xe + n * ldx + off), a[n][2 * h]);
                a[n][2 * h + 1] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xo + n * ldx + off), a[n][2 * h + 1]);
            }
        }
    }
    for (int n = 0; n < NR; n++) {
        acc[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[n][0], a[n][1]), _mm512_add_ps(a[n][2], a[n][3])));
    }
}

NF4_AVX2_ATTR static inline __m256 round_bf16_avx2(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
    return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32((int) 0xffff0000u)));
}

// 16-entry lookup from two 8-entry halves: vpermps reads the low 3 bits, bit 3 (moved to the
// sign by `sel`) picks the half.
NF4_AVX2_ATTR static inline __m256 lookup16_avx2(__m256 t0, __m256 t1, __m256i idx, __m256i sel) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, idx), _mm256_permutevar8x32_ps(t1, idx), _mm256_castsi256_ps(sel));
}

template <int NR>
NF4_AVX2_ATTR static void nf4_row_avx2(const uint8_t * q, const float * scale, int64_t nb, bool bf16, const float * xe,
                                       const float * xo, int64_t ldx, float * acc) {
    const __m256 c0 = _mm256_loadu_ps(NF4_CODE), c1 = _mm256_loadu_ps(NF4_CODE + 8);
    __m256 a[NR][2];   // [even, odd]
    for (int n = 0; n < NR; n++) a[n][0] = a[n][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m256 s = _mm256_set1_ps(scale[b]);
        __m256 t0 = _mm256_mul_ps(c0, s), t1 = _mm256_mul_ps(c1, s);
        if (bf16) {
            t0 = round_bf16_avx2(t0);
            t1 = round_bf16_avx2(t1);
        }
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++) {
            const int64_t off = b * 32 + h * 8;
            const __m256i by = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) (q + off)));
            const __m256 lo = lookup16_avx2(t0, t1, by, _mm256_slli_epi32(by, 28));
            const __m256 hi = lookup16_avx2(t0, t1, _mm256_srli_epi32(by, 4), _mm256_slli_epi32(by, 24));
#pragma GCC unroll 4
            for (int n = 0; n < NR; n++) {
                a[n][0] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xe + n * ldx + off), a[n][0]);
                a[n][1] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xo + n * ldx + off), a[n][1]);
            }
        }
    }
    for (int n = 0; n < NR; n++) {
        const __m256 v = _mm256_add_ps(a[n][0], a[n][1]);
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_shuffle_ps(r, r, 1));
        acc[n] = _mm_cvtss_f32(r);
    }
}

using nf4_row_fn = void (*)(const uint8_t *, const float *, int64_t, bool, const float *, const float *, int64_t, float *);

// Kernels for 1..4 rows of x, from the GEMM's ISA choice (gemm_isa: CPUID, or forced by tests);
// null on the scalar set.
static const nf4_row_fn * nf4_row_kernels() {
    static const nf4_row_fn k512[4] = {nf4_row_avx512<1>, nf4_row_avx512<2>, nf4_row_avx512<3>, nf4_row_avx512<4>};
    static const nf4_row_fn k2[4] = {nf4_row_avx2<1>, nf4_row_avx2<2>, nf4_row_avx2<3>, nf4_row_avx2<4>};
    const char * isa = gemm_isa();
    if (std::strncmp(isa, "avx512", 6) == 0) return k512;
    if (std::strcmp(isa, "avx2") == 0) return k2;
    return nullptr;
}

const char * qgemv_isa() {
    const char * isa = gemm_isa();
    return std::strncmp(isa, "avx512", 6) == 0 ? "avx512" : isa;
}

static constexpr int64_t SIMD_ROWS = 4;   // rows of x per pass over a weight row

// The SIMD path: x split into even/odd elements once, then every weight row read once per 4 x rows.
static void qgemv_simd(float * y, const float * x, const qtensor & w, int64_t N, float beta, const nf4_row_fn * kern) {
    const int64_t OC = w.OC, IC = w.IC, H = IC / 2, nb = IC / BLOCK;
    std::vector<float> xs((size_t) (2 * N * H));   // [xe rows][xo rows]
    float * xe = xs.data(), * xo = xs.data() + N * H;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < H; k++) {
            xe[n * H + k] = x[n * IC + 2 * k];
            xo[n * H + k] = x[n * IC + 2 * k + 1];
        }
    }
#pragma omp parallel for schedule(static) if (OC * IC >= (1 << 16))
    for (int64_t o = 0; o < OC; o++) {
        thread_local std::vector<float> scales;
        if ((int64_t) scales.size() < nb) scales.resize((size_t) nb);
        qtensor_block_scales(w, o * nb, nb, scales.data());
        const uint8_t * row = w.block_data(o * nb);
        for (int64_t n0 = 0; n0 < N; n0 += SIMD_ROWS) {
            const int64_t nn = std::min(N - n0, SIMD_ROWS);
            float acc[SIMD_ROWS];
            kern[nn - 1](row, scales.data(), nb, w.bf16_values, xe + n0 * H, xo + n0 * H, H, acc);
            for (int64_t n = 0; n < nn; n++) {
                float * yo = y + (n0 + n) * OC + o;
                *yo = beta == 0.0f ? acc[n] : beta * *yo + acc[n];
            }
        }
    }
}

void qgemv(float * y, const float * x, const qtensor & w, int64_t N, float beta) {
    PEFT_ASSERT(w.type == PEFT_QTYPE_NF4);
    const int64_t OC = w.OC, IC = w.IC;
    const nf4_row_fn * kern = IC % BLOCK == 0 ? nf4_row_kernels() : nullptr;
    if (kern) return qgemv_simd(y, x, w, N, beta, kern);
    // scalar, or rows that share blocks with their neighbours
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

// The oracle: each row of deq(W) as qtensor_dequant_range makes it, products summed in double.
void qgemv_ref(float * y, const float * x, const qtensor & w, int64_t N, float beta) {
    const int64_t OC = w.OC, IC = w.IC;
    std::vector<float> row((size_t) IC);
    for (int64_t o = 0; o < OC; o++) {
        qtensor_dequant_range(w, o * IC, (o + 1) * IC, row.data());
        for (int64_t n = 0; n < N; n++) {
            double s = 0.0;
            for (int64_t k = 0; k < IC; k++) s += (double) row[(size_t) k] * x[n * IC + k];
            float * yo = y + n * OC + o;
            *yo = (float) (beta == 0.0f ? s : (double) beta * *yo + s);
        }
    }
}

} // namespace peft
