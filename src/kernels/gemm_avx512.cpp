// gemm_avx512.cpp: the micro-kernels and one-row GEMV kernels of gemm_own, per ISA: AVX-512
// (f32 FMA, and vdpbf16ps where AVX512-BF16 exists), AVX2+FMA, and plain C++. Each function
// carries its own target attribute, so this file builds for any x86-64 and the dispatcher in
// gemm.cpp picks a set by CPUID. Not here: packing, blocking, threads, alpha/beta (gemm.cpp).
// Every kernel sums k in increasing order into fixed lanes: results do not depend on threads.
// GCC 12 flags its own avx512fintrin.h helpers (_mm512_reduce_add_ps) as maybe-uninitialized
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/gemm_micro.h"

namespace peft {

// ---- AVX-512: 12 x 32 tile, 24 zmm accumulators --------------------------------------------

#define AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define AVX512_BF16_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

AVX512_ATTR static void micro_f32_avx512(int64_t kc, const float * Ap, const float * Bp, float * tile) {
    constexpr int MR = 12, NR = 32;
    __m512 c[MR][2];
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_load_ps(Bp + k * NR), b1 = _mm512_load_ps(Bp + k * NR + 16);
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            const __m512 a = _mm512_set1_ps(Ap[k * MR + i]);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
        _mm512_storeu_ps(tile + i * NR, c[i][0]);
        _mm512_storeu_ps(tile + i * NR + 16, c[i][1]);
    }
}

// Each 32-bit lane of a B vector holds a k-pair of one column; the A pair is broadcast.
AVX512_BF16_ATTR static void micro_bf16_avx512(int64_t kc2, const uint32_t * Ap, const uint32_t * Bp, float * tile) {
    constexpr int MR = 12, NR = 32;
    __m512 c[MR][2];
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t q = 0; q < kc2; q++) {
        const __m512bh b0 = (__m512bh) _mm512_load_si512(Bp + q * NR);
        const __m512bh b1 = (__m512bh) _mm512_load_si512(Bp + q * NR + 16);
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            const __m512bh a = (__m512bh) _mm512_set1_epi32((int) Ap[q * MR + i]);
            c[i][0] = _mm512_dpbf16_ps(c[i][0], a, b0);
            c[i][1] = _mm512_dpbf16_ps(c[i][1], a, b1);
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
        _mm512_storeu_ps(tile + i * NR, c[i][0]);
        _mm512_storeu_ps(tile + i * NR + 16, c[i][1]);
    }
}

// Rows of W are dot products with x; four rows share each x load. Masked tail, no scalar loop.
template <typename LoadW>
AVX512_ATTR static inline void gemv_rows_avx512(int64_t N, int64_t K, const float * x, float * y, LoadW loadw) {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 m = K - k >= 16 ? (__mmask16) 0xffff : (__mmask16) ((1u << (K - k)) - 1);
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
            a0 = _mm512_fmadd_ps(loadw(n + 0, k, m), xv, a0);
            a1 = _mm512_fmadd_ps(loadw(n + 1, k, m), xv, a1);
            a2 = _mm512_fmadd_ps(loadw(n + 2, k, m), xv, a2);
            a3 = _mm512_fmadd_ps(loadw(n + 3, k, m), xv, a3);
        }
        y[n + 0] = _mm512_reduce_add_ps(a0);
        y[n + 1] = _mm512_reduce_add_ps(a1);
        y[n + 2] = _mm512_reduce_add_ps(a2);
        y[n + 3] = _mm512_reduce_add_ps(a3);
    }
    for (; n < N; n++) {
        __m512 a0 = _mm512_setzero_ps();
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 m = K - k >= 16 ? (__mmask16) 0xffff : (__mmask16) ((1u << (K - k)) - 1);
            a0 = _mm512_fmadd_ps(loadw(n, k, m), _mm512_maskz_loadu_ps(m, x + k), a0);
        }
        y[n] = _mm512_reduce_add_ps(a0);
    }
}

AVX512_ATTR static void gemv_f32_avx512(int64_t N, int64_t K, const float * x, const float * W, int64_t ldw, float * y) {
    gemv_rows_avx512(N, K, x, y, [&](int64_t n, int64_t k, __mmask16 m) AVX512_ATTR {
        return _mm512_maskz_loadu_ps(m, W + n * ldw + k);
    });
}

// bf16 weights widen exactly to f32 (a 16-bit shift), so the product is the f32 one
AVX512_ATTR static void gemv_bf16_avx512(int64_t N, int64_t K, const float * x, const uint16_t * W, int64_t ldw, float * y) {
    gemv_rows_avx512(N, K, x, y, [&](int64_t n, int64_t k, __mmask16 m) AVX512_ATTR {
        const __m256i h = _mm256_maskz_loadu_epi16(m, W + n * ldw + k);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    });
}

// ---- AVX2 + FMA: 6 x 16 tile, 12 ymm accumulators --------------------------------------------

#define AVX2_ATTR __attribute__((target("avx2,fma")))

AVX2_ATTR static void micro_f32_avx2(int64_t kc, const float * Ap, const float * Bp, float * tile) {
    constexpr int MR = 6, NR = 16;
    __m256 c[MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_load_ps(Bp + k * NR), b1 = _mm256_load_ps(Bp + k * NR + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m256 a = _mm256_broadcast_ss(Ap + k * MR + i);
            c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        _mm256_storeu_ps(tile + i * NR, c[i][0]);
        _mm256_storeu_ps(tile + i * NR + 8, c[i][1]);
    }
}

AVX2_ATTR static float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

// 8 lanes, then a scalar tail folded in last (a fixed order per row)
AVX2_ATTR static void gemv_f32_avx2(int64_t N, int64_t K, const float * x, const float * W, int64_t ldw, float * y) {
    const int64_t K8 = K & ~(int64_t) 7;
    for (int64_t n = 0; n < N; n++) {
        const float * w = W + n * ldw;
        __m256 a = _mm256_setzero_ps();
        for (int64_t k = 0; k < K8; k += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a);
        float s = hsum_avx2(a);
        for (int64_t k = K8; k < K; k++) s += w[k] * x[k];
        y[n] = s;
    }
}

AVX2_ATTR static void gemv_bf16_avx2(int64_t N, int64_t K, const float * x, const uint16_t * W, int64_t ldw, float * y) {
    const int64_t K8 = K & ~(int64_t) 7;
    for (int64_t n = 0; n < N; n++) {
        const uint16_t * w = W + n * ldw;
        __m256 a = _mm256_setzero_ps();
        for (int64_t k = 0; k < K8; k += 8) {
            const __m128i h = _mm_loadu_si128((const __m128i *) (w + k));
            const __m256 wf = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
            a = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + k), a);
        }
        float s = hsum_avx2(a);
        for (int64_t k = K8; k < K; k++) {
            const uint32_t u = (uint32_t) w[k] << 16;
            float f;
            __builtin_memcpy(&f, &u, 4);
            s += f * x[k];
        }
        y[n] = s;
    }
}

// ---- plain C++: 4 x 8 tile -----------------------------------------------------------------

static void micro_f32_scalar(int64_t kc, const float * Ap, const float * Bp, float * tile) {
    constexpr int MR = 4, NR = 8;
    float c[MR][NR] = {};
    for (int64_t k = 0; k < kc; k++) {
        for (int i = 0; i < MR; i++) {
            for (int j = 0; j < NR; j++) c[i][j] += Ap[k * MR + i] * Bp[k * NR + j];
        }
    }
    for (int i = 0; i < MR; i++) {
        for (int j = 0; j < NR; j++) tile[i * NR + j] = c[i][j];
    }
}

static void gemv_f32_scalar(int64_t N, int64_t K, const float * x, const float * W, int64_t ldw, float * y) {
    for (int64_t n = 0; n < N; n++) {
        float s = 0.0f;
        for (int64_t k = 0; k < K; k++) s += W[n * ldw + k] * x[k];
        y[n] = s;
    }
}

static void gemv_bf16_scalar(int64_t N, int64_t K, const float * x, const uint16_t * W, int64_t ldw, float * y) {
    for (int64_t n = 0; n < N; n++) {
        float s = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            const uint32_t u = (uint32_t) W[n * ldw + k] << 16;
            float f;
            __builtin_memcpy(&f, &u, 4);
            s += f * x[k];
        }
        y[n] = s;
    }
}

const gemm_micro_set gemm_set_avx512_bf16 = {"avx512-bf16", 12, 32, micro_f32_avx512, micro_bf16_avx512,
                                             gemv_f32_avx512, gemv_bf16_avx512};
const gemm_micro_set gemm_set_avx512 = {"avx512", 12, 32, micro_f32_avx512, nullptr, gemv_f32_avx512, gemv_bf16_avx512};
const gemm_micro_set gemm_set_avx2 = {"avx2", 6, 16, micro_f32_avx2, nullptr, gemv_f32_avx2, gemv_bf16_avx2};
const gemm_micro_set gemm_set_scalar = {"scalar", 4, 8, micro_f32_scalar, nullptr, gemv_f32_scalar, gemv_bf16_scalar};

} // namespace peft
