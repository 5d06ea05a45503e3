// gemm_avx512.cpp: the micro-kernels and one-row GEMV kernels of gemm_own, per ISA: AVX-512
// (f32 FMA, vdpbf16ps where AVX512-BF16 exists, AMX tiles where AMX-BF16 exists and Linux grants
// the tile state), AVX2+FMA, and plain C++. Each function
// carries its own target attribute, so this file builds for any x86-64 and the dispatcher in
// gemm.cpp picks a set by CPUID. Not here: packing, blocking, threads, alpha/beta (gemm.cpp).
// Every kernel sums k in increasing order into fixed lanes: results do not depend on threads.
// GCC 12 flags its own avx512fintrin.h helpers (_mm512_reduce_add_ps) as maybe-uninitialized
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "kernels/gemm_micro.h"

namespace peft {

// ---- AVX-512: 12 x 32 tile, 24 zmm accumulators --------------------------------------------

#define AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define AVX512_BF16_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

// C row = alpha * acc + beta * C (one fma, as store_tile in gemm.cpp); beta 0 never reads C
AVX512_ATTR static inline void store_row_avx512(float * c, __m512 acc0, __m512 acc1, float alpha, float beta) {
    const __m512 va = _mm512_set1_ps(alpha);
    if (beta == 0.0f) {
        _mm512_storeu_ps(c, _mm512_mul_ps(va, acc0));
        _mm512_storeu_ps(c + 16, _mm512_mul_ps(va, acc1));
    } else {
        const __m512 vb = _mm512_set1_ps(beta);
        _mm512_storeu_ps(c, _mm512_fmadd_ps(va, acc0, _mm512_mul_ps(vb, _mm512_loadu_ps(c))));
        _mm512_storeu_ps(c + 16, _mm512_fmadd_ps(va, acc1, _mm512_mul_ps(vb, _mm512_loadu_ps(c + 16))));
    }
}

AVX512_ATTR static void micro_f32_avx512(int64_t kc, const float * Ap, const float * Bp, float * C, int64_t ldc,
                                         float alpha, float beta) {
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
    for (int i = 0; i < MR; i++) store_row_avx512(C + i * ldc, c[i][0], c[i][1], alpha, beta);
}

// ---- AVX-512 skinny products: N <= 16 columns, A read in place ----------------------------
// T[i][0..16) = sum_k A(i, k) Bp[k][0..16) for R rows, A(i, k) at A[i * ra + k * ka]; one zmm
// accumulator per row, k summed in increasing order. A LoRA product such as x A^T has 16 columns:
// the 12 x 32 tile would compute half zeros, and packing A would copy the whole activation.
template <int R>
AVX512_ATTR static void skinny_rows_avx512(int64_t K, const float * A, int64_t ra, int64_t ka, const float * Bp,
                                           float * T) {
    __m512 c[R];
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) c[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        const __m512 b = _mm512_load_ps(Bp + k * 16);
        const float * a = A + k * ka;
#pragma GCC unroll 12
        for (int i = 0; i < R; i++) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[i * ra]), b, c[i]);
    }
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) _mm512_store_ps(T + i * 16, c[i]);
}

AVX512_ATTR static void skinny_f32_avx512(int rows, int64_t K, const float * A, int64_t ra, int64_t ka,
                                          const float * Bp, float * T) {
    switch (rows) {
    case 12: skinny_rows_avx512<12>(K, A, ra, ka, Bp, T); break;
    case 11: skinny_rows_avx512<11>(K, A, ra, ka, Bp, T); break;
    case 10: skinny_rows_avx512<10>(K, A, ra, ka, Bp, T); break;
    case 9:  skinny_rows_avx512<9>(K, A, ra, ka, Bp, T); break;
    case 8:  skinny_rows_avx512<8>(K, A, ra, ka, Bp, T); break;
    case 7:  skinny_rows_avx512<7>(K, A, ra, ka, Bp, T); break;
    case 6:  skinny_rows_avx512<6>(K, A, ra, ka, Bp, T); break;
    case 5:  skinny_rows_avx512<5>(K, A, ra, ka, Bp, T); break;
    case 4:  skinny_rows_avx512<4>(K, A, ra, ka, Bp, T); break;
    case 3:  skinny_rows_avx512<3>(K, A, ra, ka, Bp, T); break;
    case 2:  skinny_rows_avx512<2>(K, A, ra, ka, Bp, T); break;
    default: skinny_rows_avx512<1>(K, A, ra, ka, Bp, T); break;
    }
}

// ---- AVX-512 few-row products against a row-major weight read in place (prefill) -----------
// T[r][0..16*MW) = sum_k W[r][k] A(., k) for R = 24 / MW rows of W (row stride ldw), the rows of A
// packed as columns: Ap [K][16*MW] f32, or [K2][16*MW] bf16 pairs for vdpbf16ps (DOT). Packing
// W would copy the whole weight once per prompt; here each row streams from memory once and
// its elements are broadcast (f32 as is, bf16 widened by a 16-bit shift, pairs as stored).
template <int MW, typename WT, bool DOT>
AVX512_BF16_ATTR static void wrows_avx512(int64_t K, const void * Wv, int64_t ldw, const float * Ap, float * T) {
    constexpr int R = 24 / MW, MP = 16 * MW;
    const WT * W = (const WT *) Wv;
    __m512 c[R][MW];
#pragma GCC unroll 24
    for (int r = 0; r < R; r++)
        for (int w = 0; w < MW; w++) c[r][w] = _mm512_setzero_ps();
    if constexpr (DOT) {
        const uint32_t * A = (const uint32_t *) Ap;
        const int64_t K2 = K / 2;
        for (int64_t q = 0; q <= K2; q++) {
            if (q == K2 && K % 2 == 0) break;
            __m512bh a[MW];
            for (int w = 0; w < MW; w++) a[w] = (__m512bh) _mm512_load_si512(A + q * MP + 16 * w);
#pragma GCC unroll 24
            for (int r = 0; r < R; r++) {
                const uint16_t * wr = (const uint16_t *) W + r * ldw + 2 * q;
                uint32_t pair;
                if (q < K2) std::memcpy(&pair, wr, 4);
                else        pair = wr[0];   // odd K: the last k alone, its partner zero (never the next row)
                const __m512bh b = (__m512bh) _mm512_set1_epi32((int) pair);
                for (int w = 0; w < MW; w++) c[r][w] = _mm512_dpbf16_ps(c[r][w], a[w], b);
            }
        }
    } else {
        for (int64_t k = 0; k < K; k++) {
            __m512 a[MW];
            for (int w = 0; w < MW; w++) a[w] = _mm512_load_ps(Ap + k * MP + 16 * w);
#pragma GCC unroll 24
            for (int r = 0; r < R; r++) {
                __m512 b;
                if constexpr (sizeof(WT) == 4) b = _mm512_set1_ps(((const float *) W)[r * ldw + k]);
                else b = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_set1_epi16((short) W[r * ldw + k]), 16));
                for (int w = 0; w < MW; w++) c[r][w] = _mm512_fmadd_ps(b, a[w], c[r][w]);
            }
        }
    }
#pragma GCC unroll 24
    for (int r = 0; r < R; r++)
        for (int w = 0; w < MW; w++) _mm512_store_ps(T + r * MP + 16 * w, c[r][w]);
}

template <typename WT, bool DOT>
AVX512_BF16_ATTR static void wrows_dispatch(int mw, int64_t K, const void * W, int64_t ldw, const float * Ap, float * T) {
    switch (mw) {
    case 1:  wrows_avx512<1, WT, DOT>(K, W, ldw, Ap, T); break;
    case 2:  wrows_avx512<2, WT, DOT>(K, W, ldw, Ap, T); break;
    case 3:  wrows_avx512<3, WT, DOT>(K, W, ldw, Ap, T); break;
    default: wrows_avx512<4, WT, DOT>(K, W, ldw, Ap, T); break;
    }
}

AVX512_ATTR static void wrows_f32_avx512(int mw, int64_t K, const float * W, int64_t ldw, const float * Ap, float * T) {
    wrows_dispatch<float, false>(mw, K, W, ldw, Ap, T);
}
AVX512_ATTR static void wrows_bf16w_avx512(int mw, int64_t K, const uint16_t * W, int64_t ldw, const float * Ap,
                                           float * T) {
    wrows_dispatch<uint16_t, false>(mw, K, W, ldw, Ap, T);
}
AVX512_BF16_ATTR static void wrows_dot_avx512(int mw, int64_t K, const uint16_t * W, int64_t ldw, const uint32_t * Ap,
                                              float * T) {
    wrows_dispatch<uint16_t, true>(mw, K, W, ldw, (const float *) Ap, T);
}

// Each 32-bit lane of a B vector holds a k-pair of one column; the A pair is broadcast.
AVX512_BF16_ATTR static void micro_bf16_avx512(int64_t kc2, const uint32_t * Ap, const uint32_t * Bp, float * C,
                                               int64_t ldc, float alpha, float beta) {
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
    for (int i = 0; i < MR; i++) store_row_avx512(C + i * ldc, c[i][0], c[i][1], alpha, beta);
}

// ---- AMX: 32 x 32 tile, four 16 x 16 f32 tile accumulators ------------------------------------
// tmm0..3 hold C (2 x 2 tiles of 16 x 16 f32), tmm4..5 two A tiles (16 rows x 16 pairs), tmm6..7
// two B tiles (16 pairs x 16 columns: rows of the [kc2p][32] panel). One TDPBF16PS is 16 x 16 x 32
// MACs; products are summed in f32 in increasing k (denormals flushed, as AMX does).

#define AMX_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma,amx-tile,amx-bf16")))

bool amx_permitted() {
    static const bool ok = [] {
        unsigned a, b, c, d;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
        const bool tile = (d >> 24) & 1, bf16 = (d >> 22) & 1;
        // Linux keeps the 8 KB tile state off until the process asks (ARCH_REQ_XCOMP_PERM, XTILEDATA)
        return tile && bf16 && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    }();
    return ok;
}

struct alignas(64) amx_tilecfg {
    uint8_t  palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t  rows[16];
};

// every tile 16 rows x 64 bytes; configured once per thread (nothing else here touches tiles)
AMX_ATTR static void amx_configure() {
    static thread_local bool done = false;
    if (done) return;
    amx_tilecfg cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
    _tile_loadconfig(&cfg);
    done = true;
}

AMX_ATTR static void micro_bf16_amx(int64_t kc2p, const uint32_t * Ap, const uint32_t * Bp, float * C, int64_t ldc,
                                    float alpha, float beta) {
    constexpr int NR = 32;
    amx_configure();
    const int64_t sa = kc2p * 4, sc = ldc * 4;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t q = 0; q < kc2p; q += 16) {
        _tile_loadd(4, Ap + q, sa);
        _tile_loadd(5, Ap + 16 * kc2p + q, sa);
        _tile_loadd(6, Bp + q * NR, NR * 4);
        _tile_loadd(7, Bp + q * NR + 16, NR * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    if (alpha == 1.0f && beta == 0.0f) {   // C = T as it stands: straight from the tiles
        _tile_stored(0, C, sc);
        _tile_stored(1, C + 16, sc);
        _tile_stored(2, C + 16 * ldc, sc);
        _tile_stored(3, C + 16 * ldc + 16, sc);
        return;
    }
    alignas(64) float t[32 * NR];
    _tile_stored(0, t, NR * 4);
    _tile_stored(1, t + 16, NR * 4);
    _tile_stored(2, t + 16 * NR, NR * 4);
    _tile_stored(3, t + 16 * NR + 16, NR * 4);
    for (int i = 0; i < 32; i++) {
        store_row_avx512(C + i * ldc, _mm512_load_ps(t + i * NR), _mm512_load_ps(t + i * NR + 16), alpha, beta);
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

// ---- AVX-512 packing ------------------------------------------------------------------------
// The packers of gemm.cpp (same layouts, same values, bit for bit), 16 x 16 blocks at a time:
// a row-major operand is transposed in registers, a column-major one copied by rows. f32 -> bf16
// rounding is done in integer ops exactly as f32_to_bf16 (core/dtype.h): RNE, NaN kept quiet.

AVX512_ATTR static inline __m512i bf16_bits(__m512 v) {   // the bf16 of each lane, in its low half
    const __m512i u = _mm512_castps_si512(v), one = _mm512_set1_epi32(1);
    const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), one));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}
AVX512_ATTR static inline __m512 widen_bf16(__m512i lo) { return _mm512_castsi512_ps(_mm512_slli_epi32(lo, 16)); }

// 16 values of one row as f32 (masked lanes zero)
AVX512_ATTR static inline __m512 load16(const float * x, __mmask16 m, bool round) {
    const __m512 v = _mm512_maskz_loadu_ps(m, x);
    return round ? widen_bf16(bf16_bits(v)) : v;
}
AVX512_ATTR static inline __m512 load16(const uint16_t * x, __mmask16 m, bool) {
    return widen_bf16(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x)));
}
// 16 bf16 pairs (32 consecutive values of one row, masked past `valid`) as uint32 lanes
AVX512_ATTR static inline __m512i load_pairs(const float * x, int64_t valid) {
    const __mmask16 m0 = (__mmask16) (valid >= 16 ? 0xffff : (1u << valid) - 1);
    const __mmask16 m1 = (__mmask16) (valid >= 32 ? 0xffff : valid <= 16 ? 0 : (1u << (valid - 16)) - 1);
    const __m256i lo = _mm512_cvtepi32_epi16(bf16_bits(_mm512_maskz_loadu_ps(m0, x)));
    const __m256i hi = _mm512_cvtepi32_epi16(bf16_bits(_mm512_maskz_loadu_ps(m1, x + 16)));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
AVX512_ATTR static inline __m512i load_pairs(const uint16_t * x, int64_t valid) {
    return _mm512_maskz_loadu_epi16((__mmask32) (valid >= 32 ? 0xffffffffu : (1u << valid) - 1), x);
}
// 16 lanes of two rows interleaved as bf16 pairs (row0 low half, row1 high half)
AVX512_ATTR static inline __m512i bf16_lo(const float * x, __mmask16 m) { return bf16_bits(_mm512_maskz_loadu_ps(m, x)); }
AVX512_ATTR static inline __m512i bf16_lo(const uint16_t * x, __mmask16 m) {
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x));
}

// r[c] <- column c of the 16 x 16 block r[0..15] (three shuffle stages: 32-, 64-, 128-bit)
AVX512_ATTR static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; k++) {   // u[4k + j], 128-bit lane L: rows 4k..4k+3 of column 4L + j
        const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * k + 2]), d = _mm512_castps_pd(t[4 * k + 3]);
        u[4 * k + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int j = 0; j < 4; j++) {   // a 4 x 4 transpose of 128-bit lanes
        const __m512 s0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44), s1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xee);
        const __m512 s2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44), s3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xee);
        r[0 + j] = _mm512_shuffle_f32x4(s0, s2, 0x88);
        r[4 + j] = _mm512_shuffle_f32x4(s0, s2, 0xdd);
        r[8 + j] = _mm512_shuffle_f32x4(s1, s3, 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(s1, s3, 0xdd);
    }
}

static inline __mmask16 lanes(int64_t n) { return (__mmask16) (n >= 16 ? 0xffff : n <= 0 ? 0 : (1u << n) - 1); }

template <typename T>
AVX512_ATTR static void pack_f32_avx512(float * dst, const T * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n,
                                        int64_t p0, int64_t kc, int P, bool round) {
    for (int64_t s = 0; s < n; s += P) {
        float * d = dst + (s / P) * kc * P;
        const int64_t w = n - s < P ? n - s : P;
        for (int g = 0; g < P; g += 16) {
            const __mmask16 keep = lanes(P - g);   // lanes of this panel (12 of 16 for an A panel)
            if (rowmajor) {
                for (int64_t p = 0; p < kc; p += 16) {
                    const __mmask16 m = lanes(kc - p);
                    __m512 r[16];
                    for (int i = 0; i < 16; i++) {
                        r[i] = g + i < w ? load16(X + (i0 + s + g + i) * ld + p0 + p, m, round) : _mm512_setzero_ps();
                    }
                    transpose16(r);
                    const int64_t cols = kc - p < 16 ? kc - p : 16;
                    for (int64_t c = 0; c < cols; c++) _mm512_mask_storeu_ps(d + (p + c) * P + g, keep, r[c]);
                }
            } else {
                const __mmask16 m = lanes(w - g);
                for (int64_t p = 0; p < kc; p++) {
                    _mm512_mask_storeu_ps(d + p * P + g, keep, load16(X + (p0 + p) * ld + i0 + s + g, m, round));
                }
            }
        }
    }
}

template <typename T>
AVX512_ATTR static void pack_bf16_avx512(uint32_t * dst, const T * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n,
                                         int64_t p0, int64_t kc, int P) {
    const int64_t kc2 = (kc + 1) / 2;
    for (int64_t s = 0; s < n; s += P) {
        uint32_t * d = dst + (s / P) * kc2 * P;
        const int64_t w = n - s < P ? n - s : P;
        for (int g = 0; g < P; g += 16) {
            const __mmask16 keep = lanes(P - g);
            if (rowmajor) {
                for (int64_t q = 0; q < kc2; q += 16) {
                    __m512 r[16];
                    for (int i = 0; i < 16; i++) {
                        r[i] = g + i < w ? _mm512_castsi512_ps(load_pairs(X + (i0 + s + g + i) * ld + p0 + 2 * q, kc - 2 * q))
                                         : _mm512_setzero_ps();
                    }
                    transpose16(r);
                    const int64_t cols = kc2 - q < 16 ? kc2 - q : 16;
                    for (int64_t c = 0; c < cols; c++) {
                        _mm512_mask_storeu_epi32(d + (q + c) * P + g, keep, _mm512_castps_si512(r[c]));
                    }
                }
            } else {
                const __mmask16 m = lanes(w - g);
                for (int64_t q = 0; q < kc2; q++) {
                    const T * x = X + (p0 + 2 * q) * ld + i0 + s + g;
                    const __m512i lo = bf16_lo(x, m), hi = 2 * q + 1 < kc ? bf16_lo(x + ld, m) : _mm512_setzero_si512();
                    _mm512_mask_storeu_epi32(d + q * P + g, keep, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
                }
            }
        }
    }
}

// AMX A panels from a row-major operand: each row's values converted 32 at a time in place
// (no transpose); column-major operands (rare with bf16 compute) go through the C++ packer.
AVX512_ATTR static void pack_pair_rows_avx512(uint32_t * dst, const float * X, int64_t ld, bool rowmajor, int64_t i0,
                                              int64_t n, int64_t p0, int64_t kc, int P, int64_t kc2p) {
    if (!rowmajor) return gemm_packers_generic.pair_rows(dst, X, ld, rowmajor, i0, n, p0, kc, P, kc2p);
    const int64_t rows = (n + P - 1) / P * P;
    for (int64_t i = 0; i < rows; i++) {
        const float * x = X + (i0 + i) * ld + p0;
        for (int64_t q = 0; q < kc2p; q += 16) {
            const int64_t valid = i < n ? kc - 2 * q : 0;
            _mm512_storeu_si512(dst + i * kc2p + q, valid > 0 ? load_pairs(x + 2 * q, valid) : _mm512_setzero_si512());
        }
    }
}

const gemm_packers gemm_packers_avx512 = {pack_f32_avx512<float>, pack_f32_avx512<uint16_t>, pack_bf16_avx512<float>,
                                          pack_bf16_avx512<uint16_t>, pack_pair_rows_avx512};

// ---- AVX2 + FMA: 6 x 16 tile, 12 ymm accumulators --------------------------------------------

#define AVX2_ATTR __attribute__((target("avx2,fma")))

AVX2_ATTR static void micro_f32_avx2(int64_t kc, const float * Ap, const float * Bp, float * C, int64_t ldc, float alpha,
                                     float beta) {
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
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
        for (int h = 0; h < 2; h++) {
            float * c_ = C + i * ldc + 8 * h;
            _mm256_storeu_ps(c_, beta == 0.0f ? _mm256_mul_ps(va, c[i][h])
                                              : _mm256_fmadd_ps(va, c[i][h], _mm256_mul_ps(vb, _mm256_loadu_ps(c_))));
        }
    }
}

// The f32 packers of gemm.cpp for AVX2 (same values, bit for bit), 8 x 8 blocks at a time: a
// row-major operand transposed in registers, a column-major one copied by rows; bf16 rounding
// as bf16_bits above, in 256-bit integer ops. The packing was 30% of an AVX2 GEMM's time with
// the scalar C++ packers (perf, 1024 x 768 x 2048, 1 thread).
AVX2_ATTR static inline __m256 round_bf16_avx2(__m256 v) {   // bf16_to_f32(f32_to_bf16(v)) per lane
    const __m256i u = _mm256_castps_si256(v), hi = _mm256_set1_epi32((int) 0xffff0000u);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rne = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), hi);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    const __m256i quiet = _mm256_or_si256(_mm256_and_si256(u, hi), _mm256_set1_epi32(0x00400000));
    return _mm256_castsi256_ps(_mm256_blendv_epi8(rne, quiet, nan));
}
// n (<= 8) consecutive values of one row as f32, zero past n
AVX2_ATTR static inline __m256 load8(const float * x, int64_t n, bool round) {
    __m256 v;
    if (n >= 8) {
        v = _mm256_loadu_ps(x);
    } else {
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        v = _mm256_maskload_ps(x, _mm256_cmpgt_epi32(_mm256_set1_epi32((int) n), idx));
    }
    return round ? round_bf16_avx2(v) : v;
}
AVX2_ATTR static inline __m256 load8(const uint16_t * x, int64_t n, bool) {
    __m128i h;
    if (n >= 8) {
        h = _mm_loadu_si128((const __m128i *) x);
    } else {
        alignas(16) uint16_t t[8] = {};
        for (int64_t i = 0; i < n; i++) t[i] = x[i];
        h = _mm_load_si128((const __m128i *) t);
    }
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
// the first n (<= 8) lanes of v to d (no masked store: slow on some AVX2 cores)
AVX2_ATTR static inline void store8(float * d, __m256 v, int n) {
    if (n == 8) { _mm256_storeu_ps(d, v); return; }
    __m128 lo = _mm256_castps256_ps128(v);
    if (n >= 4) { _mm_storeu_ps(d, lo); lo = _mm256_extractf128_ps(v, 1); d += 4; n -= 4; }
    if (n >= 2) { _mm_storel_pi((__m64 *) d, lo); lo = _mm_movehl_ps(lo, lo); d += 2; n -= 2; }
    if (n == 1) _mm_store_ss(d, lo);
}
// r[c] <- column c of the 8 x 8 block r[0..7]
AVX2_ATTR static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int k = 0; k < 4; k++) {
        t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 2; k++) {
        u[4 * k + 0] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
        u[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0xee);
        u[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
        u[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xee);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}

template <typename T>
AVX2_ATTR static void pack_f32_avx2(float * dst, const T * X, int64_t ld, bool rowmajor, int64_t i0, int64_t n,
                                    int64_t p0, int64_t kc, int P, bool round) {
    for (int64_t s = 0; s < n; s += P) {
        float * d = dst + (s / P) * kc * P;
        const int64_t w = n - s < P ? n - s : P;
        for (int g = 0; g < P; g += 8) {
            const int keep = P - g < 8 ? P - g : 8;   // lanes of this panel (6 of 8 for an A panel)
            if (rowmajor) {
                for (int64_t p = 0; p < kc; p += 8) {
                    __m256 r[8];
                    for (int i = 0; i < 8; i++) {
                        r[i] = g + i < w ? load8(X + (i0 + s + g + i) * ld + p0 + p, kc - p, round) : _mm256_setzero_ps();
                    }
                    transpose8(r);
                    const int64_t cols = kc - p < 8 ? kc - p : 8;
                    for (int64_t c = 0; c < cols; c++) store8(d + (p + c) * P + g, r[c], keep);
                }
            } else {
                const int64_t valid = w - g;
                for (int64_t p = 0; p < kc; p++) {
                    const __m256 v = valid > 0 ? load8(X + (p0 + p) * ld + i0 + s + g, valid, round) : _mm256_setzero_ps();
                    store8(d + p * P + g, v, keep);
                }
            }
        }
    }
}

const gemm_packers gemm_packers_avx2 = {pack_f32_avx2<float>, pack_f32_avx2<uint16_t>, gemm_packers_generic.pairs,
                                        gemm_packers_generic.pairs_from_h, gemm_packers_generic.pair_rows};

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

static void micro_f32_scalar(int64_t kc, const float * Ap, const float * Bp, float * C, int64_t ldc, float alpha,
                             float beta) {
    constexpr int MR = 4, NR = 8;
    float c[MR][NR] = {};
    for (int64_t k = 0; k < kc; k++) {
        for (int i = 0; i < MR; i++) {
            for (int j = 0; j < NR; j++) c[i][j] += Ap[k * MR + i] * Bp[k * NR + j];
        }
    }
    for (int i = 0; i < MR; i++) {
        for (int j = 0; j < NR; j++) {
            float & o = C[i * ldc + j];
            o = beta == 0.0f ? alpha * c[i][j] : std::fma(alpha, c[i][j], beta * o);
        }
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

static const gemm_wrows gemm_wrows_avx512_bf16 = {wrows_f32_avx512, wrows_bf16w_avx512, wrows_dot_avx512};
static const gemm_wrows gemm_wrows_avx512 = {wrows_f32_avx512, wrows_bf16w_avx512, nullptr};

const gemm_micro_set gemm_set_avx512_amx = {"avx512-amx", 12, 32, 32, 32, true, micro_f32_avx512, micro_bf16_amx,
                                            gemv_f32_avx512, gemv_bf16_avx512, skinny_f32_avx512,
                                            &gemm_wrows_avx512_bf16, &gemm_packers_avx512};
const gemm_micro_set gemm_set_avx512_bf16 = {"avx512-bf16", 12, 32, 12, 32, false, micro_f32_avx512, micro_bf16_avx512,
                                             gemv_f32_avx512, gemv_bf16_avx512, skinny_f32_avx512,
                                             &gemm_wrows_avx512_bf16, &gemm_packers_avx512};
const gemm_micro_set gemm_set_avx512 = {"avx512", 12, 32, 12, 32, false, micro_f32_avx512, nullptr, gemv_f32_avx512,
                                        gemv_bf16_avx512, skinny_f32_avx512, &gemm_wrows_avx512, &gemm_packers_avx512};
const gemm_micro_set gemm_set_avx2 = {"avx2", 6, 16, 6, 16, false, micro_f32_avx2, nullptr, gemv_f32_avx2, gemv_bf16_avx2,
                                      nullptr, nullptr, &gemm_packers_avx2};
const gemm_micro_set gemm_set_scalar = {"scalar", 4, 8, 4, 8, false, micro_f32_scalar, nullptr, gemv_f32_scalar,
                                        gemv_bf16_scalar, nullptr, nullptr, &gemm_packers_generic};

} // namespace peft
