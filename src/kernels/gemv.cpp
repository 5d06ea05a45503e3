// gemv.cpp: y[M,OC] = x[M,IC] W^T for a few rows (M <= GEMV_MAX_ROWS): decoding one token per
// sequence, where every weight byte is read once per step and the product is memory-bound.
// W is f32 or bf16 [OC, IC] as stored. Each pass over 4 rows of W serves all M rows of x, so the
// weights stream from memory once. Modes, as gemm_own's (kernels.h):
//   exact (bf16_compute off): f32 FMAs; bf16 weights widen exactly in registers (16-bit shift).
//   bf16 compute: x rounded to bf16 once per call; vdpbf16ps on bf16 weights as stored, f32
//   weights rounded in registers (vcvtne2ps2bf16), f32 accumulation (llama.cpp's bf16 path).
// Kernel sets: AVX-512 (+BF16), AVX2 + FMA (8 lanes; bf16 compute as f32 FMAs on rounded
// operands), and a scalar loop for anything older.
// Threads split the OC rows in contiguous ranges inside one parallel region per call (or per
// group of products over one x, gemv_own_multi); every y element is one dot product summed in
// a fixed lane order, so results do not depend on the thread count.
// Not here: more rows than GEMV_MAX_ROWS, non-row-major operands (gemm_own), quantized weights.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"   // GCC 12's _mm512_reduce_add_ps
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <omp.h>
#include <type_traits>
#include <vector>

#include "core/status.h"
#include "kernels/kernels.h"

namespace peft {

#define GEMV_AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define GEMV_BF16_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#define GEMV_AVX2_ATTR __attribute__((target("avx2,fma")))

namespace {

// One call's operands: x [M, IC] f32 (xb: the same rounded to bf16, [M, ICp] with ICp = IC
// rounded up to even, zero-padded), W [OC, IC].
struct gemv_job {
    float *        y;      // [M, OC], row stride ldy
    int64_t        ldy;
    dtype          wt;
    const void *   W;
    int64_t        OC;
    float          beta;
};

static inline __mmask16 mask16(int64_t left) { return left >= 16 ? (__mmask16) 0xffff : (__mmask16) ((1u << left) - 1); }
static inline __mmask32 mask32(int64_t left) { return left >= 32 ? (__mmask32) 0xffffffffu : (__mmask32) ((1ull << left) - 1); }

// Rows [n0, n1) of W in groups of RW that walk RW long streams: the range is cut into RW
// contiguous parts read side by side, row[r] = n0 + r*Q + i, so each stream continues from one
// group into the next and the hardware prefetcher keeps up. Groups of RW adjacent rows started RW
// short streams per group instead: one Zen 3 core read 19 GB/s that way in f32 (bf16: 14), 26
// this way (bf16: 25), of a 27 GB/s raw read. The last (n1 - n0) % RW rows are one short group
// that re-reads its last row in the spare slots (not stored): one branch-free block body.
template <int RW, typename Block>
static inline void for_row_groups(int64_t n0, int64_t n1, Block && block) {
    const int64_t Q = (n1 - n0) / RW;
    int64_t row[RW];
    for (int64_t i = 0; i < Q; i++) {
        for (int r = 0; r < RW; r++) row[r] = n0 + r * Q + i;
        block(row, RW);
    }
    const int64_t n = n0 + RW * Q, R = n1 - n;
    if (R == 0) return;
    for (int r = 0; r < RW; r++) row[r] = n + std::min<int64_t>(r, R - 1);
    block(row, (int) R);
}

// y[m][row[r]] (r < R, m < MB) from the per-lane sums (sums[r][m]: W row row[r], x row m).
// The accumulators are reduced by the caller into plain floats: an accumulator array whose
// address escapes is kept in memory by GCC, a store per FMA.
template <int MB, int RW = 4>
static inline void store_rows(const gemv_job & j, const int64_t (&row)[RW], int R, const float (&sums)[RW][MB]) {
    for (int r = 0; r < R && r < RW; r++) {
        for (int m = 0; m < MB; m++) {
            float * yp = j.y + m * j.ldy + row[r];
            *yp = j.beta == 0.0f ? sums[r][m] : sums[r][m] + j.beta * *yp;
        }
    }
}

// Rows row[0..4) of W (the first R stored, for_row_groups) against the MB rows of f32 x [MB, IC],
// f32 FMAs; the rows of W share each x load. No software prefetch: on a Zen 4 core with the
// weights on 2 MiB pages (core/arena.cpp), prefetching each stream's next row cut the read
// rate from 29-31 to 24-27 GB/s (1 thread) and from 31-35 to 18-25 (2 threads); on 4 KiB pages
// it was even. The hardware prefetcher follows the four streams.
template <int MB, bool BF16W>
GEMV_AVX512_ATTR static void block_exact(const gemv_job & j, const float * x, int64_t IC, const int64_t (&row)[4], int R) {
    __m512 acc[4][MB];
    for (int r = 0; r < 4; r++)
        for (int m = 0; m < MB; m++) acc[r][m] = _mm512_setzero_ps();
    // 16 k; the masked loads only for the tail: GCC keeps accumulators that live across a
    // masked load in memory (a store per FMA)
    auto step = [&](int64_t k, auto masked) GEMV_AVX512_ATTR {
        const __mmask16 msk = masked ? mask16(IC - k) : (__mmask16) 0xffff;
        auto load = [&](const float * p) GEMV_AVX512_ATTR { return masked ? _mm512_maskz_loadu_ps(msk, p) : _mm512_loadu_ps(p); };
        __m512 xv[MB];
        for (int m = 0; m < MB; m++) xv[m] = load(x + m * IC + k);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512 w;
            if constexpr (BF16W) {
                const uint16_t * p = (const uint16_t *) j.W + row[r] * IC + k;
                const __m256i h = masked ? _mm256_maskz_loadu_epi16(msk, p) : _mm256_loadu_si256((const __m256i *) p);
                w = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            } else {
                w = load((const float *) j.W + row[r] * IC + k);
            }
            for (int m = 0; m < MB; m++) acc[r][m] = _mm512_fmadd_ps(w, xv[m], acc[r][m]);
        }
    };
    int64_t k = 0;
    for (; k + 16 <= IC; k += 16) step(k, std::false_type());
    if (k < IC) step(k, std::true_type());
    float sums[4][MB];
    for (int r = 0; r < 4; r++)
        for (int m = 0; m < MB; m++) sums[r][m] = _mm512_reduce_add_ps(acc[r][m]);
    store_rows<MB>(j, row, R, sums);
}

// bf16 compute: xb [MB, ICp] bf16 pairs; 32 k per step (one vdpbf16ps per row of W and of x).
template <int MB, bool BF16W>
GEMV_BF16_ATTR static void block_dot(const gemv_job & j, const uint16_t * xb, int64_t IC, int64_t ICp, const int64_t (&row)[4], int R) {
    __m512 acc[4][MB];
    for (int r = 0; r < 4; r++)
        for (int m = 0; m < MB; m++) acc[r][m] = _mm512_setzero_ps();
    auto step = [&](int64_t k, auto masked) GEMV_BF16_ATTR {
        const int64_t left = IC - k;
        __m512bh xv[MB];   // zero past IC (the padding of xb), so W's tail lanes add nothing
        for (int m = 0; m < MB; m++) {
            const uint16_t * p = xb + m * ICp + k;
            xv[m] = (__m512bh) (masked ? _mm512_maskz_loadu_epi16(mask32(ICp - k), p) : _mm512_loadu_si512(p));
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m512bh w;
            if constexpr (BF16W) {
                const uint16_t * p = (const uint16_t *) j.W + row[r] * IC + k;
                w = (__m512bh) (masked ? _mm512_maskz_loadu_epi16(mask32(left), p) : _mm512_loadu_si512(p));
            } else {
                const float * p = (const float *) j.W + row[r] * IC + k;
                const __m512 lo = masked ? _mm512_maskz_loadu_ps(mask16(left), p) : _mm512_loadu_ps(p);
                const __m512 hi = !masked ? _mm512_loadu_ps(p + 16) : left > 16 ? _mm512_maskz_loadu_ps(mask16(left - 16), p + 16)
                                                                                 : _mm512_setzero_ps();
                w = _mm512_cvtne2ps_pbh(hi, lo);
            }
            for (int m = 0; m < MB; m++) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], xv[m], w);
        }
    };
    int64_t k = 0;
    for (; k + 32 <= IC; k += 32) step(k, std::false_type());
    if (k < IC) step(k, std::true_type());
    float sums[4][MB];
    for (int r = 0; r < 4; r++)
        for (int m = 0; m < MB; m++) sums[r][m] = _mm512_reduce_add_ps(acc[r][m]);
    store_rows<MB>(j, row, R, sums);
}

// Rows [n0, n1) of W against the M rows of x, 4 rows of W at a time.
template <int M, bool BF16W>
GEMV_AVX512_ATTR static void rows_exact(const gemv_job & j, const float * x, int64_t IC, int64_t n0, int64_t n1) {
    for_row_groups<4>(n0, n1, [&](const int64_t (&row)[4], int R) GEMV_AVX512_ATTR { block_exact<M, BF16W>(j, x, IC, row, R); });
}

template <int M, bool BF16W>
GEMV_BF16_ATTR static void rows_dot(const gemv_job & j, const uint16_t * xb, int64_t IC, int64_t ICp, int64_t n0, int64_t n1) {
    for_row_groups<4>(n0, n1, [&](const int64_t (&row)[4], int R) GEMV_BF16_ATTR { block_dot<M, BF16W>(j, xb, IC, ICp, row, R); });
}

// AVX2 + FMA (no AVX-512): 8 lanes and 16 registers, so RW rows of W by MB rows of x with at
// most 8 accumulators. ROUND (bf16 compute without vdpbf16ps): x comes rounded to bf16 (as f32)
// and each f32 weight is rounded in registers exactly as f32_to_bf16 (nearest even, quiet NaN).
template <bool ROUND>
GEMV_AVX2_ATTR static inline __m256 widen_or_round(__m256 w) {
    if constexpr (!ROUND) return w;
    const __m256i u = _mm256_castps_si256(w);
    const __m256i hi = _mm256_set1_epi32((int) 0xffff0000u);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rne = _mm256_and_si256(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), hi);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    const __m256i quiet = _mm256_or_si256(_mm256_and_si256(u, hi), _mm256_set1_epi32(0x00400000));
    return _mm256_castsi256_ps(_mm256_blendv_epi8(rne, quiet, nan));
}

// Rows row[0..RW) of W (the first R distinct, the rest repeats, not stored).
template <int MB, int RW, bool BF16W, bool ROUND>
GEMV_AVX2_ATTR static void block_avx2(const gemv_job & j, const float * x, int64_t IC, const int64_t (&row)[RW], int R) {
    constexpr int64_t ES = BF16W ? 2 : 4;
    __m256 acc[RW][MB];
    for (int r = 0; r < RW; r++)
        for (int m = 0; m < MB; m++) acc[r][m] = _mm256_setzero_ps();
    auto step = [&](const float * xs, int64_t ldx, const void * const (&ws)[RW]) GEMV_AVX2_ATTR {
        __m256 xv[MB];
        for (int m = 0; m < MB; m++) xv[m] = _mm256_loadu_ps(xs + m * ldx);
#pragma GCC unroll 4
        for (int r = 0; r < RW; r++) {
            __m256 w;
            if constexpr (BF16W) {
                const __m128i h = _mm_loadu_si128((const __m128i *) ws[r]);
                w = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
            } else {
                w = widen_or_round<ROUND>(_mm256_loadu_ps((const float *) ws[r]));
            }
            for (int m = 0; m < MB; m++) acc[r][m] = _mm256_fmadd_ps(w, xv[m], acc[r][m]);
        }
    };
    int64_t k = 0;
    for (; k + 8 <= IC; k += 8) {
        const void * ws[RW];
        for (int r = 0; r < RW; r++) ws[r] = (const char *) j.W + (row[r] * IC + k) * ES;
        step(x + k, IC, ws);
    }
    if (k < IC) {   // the tail through zero-padded copies (AVX2 has no 16-bit masked load)
        const int64_t left = IC - k;
        alignas(32) float xt[MB][8] = {};
        alignas(32) uint8_t wt[RW][32] = {};
        const void * ws[RW];
        for (int m = 0; m < MB; m++) std::memcpy(xt[m], x + m * IC + k, (size_t) left * 4);
        for (int r = 0; r < RW; r++) {
            std::memcpy(wt[r], (const char *) j.W + (row[r] * IC + k) * ES, (size_t) (left * ES));
            ws[r] = wt[r];
        }
        step(&xt[0][0], 8, ws);
    }
    float sums[RW][MB];
    for (int r = 0; r < RW; r++) {
        for (int m = 0; m < MB; m++) {
            const __m128 q = _mm_add_ps(_mm256_castps256_ps128(acc[r][m]), _mm256_extractf128_ps(acc[r][m], 1));
            const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
            sums[r][m] = _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
        }
    }
    store_rows<MB, RW>(j, row, R, sums);
}

template <int M, bool BF16W, bool ROUND>
GEMV_AVX2_ATTR static void rows_avx2(const gemv_job & j, const float * x, int64_t IC, int64_t n0, int64_t n1) {
    constexpr int RW = M <= 2 ? 4 : 2;
    for_row_groups<RW>(n0, n1, [&](const int64_t (&row)[RW], int R) GEMV_AVX2_ATTR { block_avx2<M, RW, BF16W, ROUND>(j, x, IC, row, R); });
}

// Portable fallback (no AVX2): one dot per (row of x, row of W), f32 accumulation in k order.
static void rows_scalar(const gemv_job & j, const float * x, const uint16_t * xb, int64_t M, int64_t IC, int64_t ICp, int64_t n0,
                        int64_t n1, bool bf16) {
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t m = 0; m < M; m++) {
            float s = 0.0f;
            for (int64_t k = 0; k < IC; k++) {
                float w = j.wt == PEFT_DTYPE_BF16 ? bf16_to_f32(((const uint16_t *) j.W)[n * IC + k]) : ((const float *) j.W)[n * IC + k];
                if (bf16) w = bf16_to_f32(f32_to_bf16(w));
                s += w * (bf16 ? bf16_to_f32(xb[m * ICp + k]) : x[m * IC + k]);
            }
            float * yp = j.y + m * j.ldy + n;
            *yp = j.beta == 0.0f ? s : s + j.beta * *yp;
        }
    }
}

enum gemv_isa { GEMV_ISA_SCALAR, GEMV_ISA_AVX2, GEMV_ISA_AVX512, GEMV_ISA_AVX512_BF16, GEMV_ISA_COUNT };
constexpr const char * GEMV_ISA_NAMES[] = {"scalar", "avx2", "avx512", "avx512-bf16"};
static_assert(sizeof(GEMV_ISA_NAMES) / sizeof(GEMV_ISA_NAMES[0]) == GEMV_ISA_COUNT);

gemv_isa detect_isa() {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl")) {
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? GEMV_ISA_AVX2 : GEMV_ISA_SCALAR;
    }
    return __builtin_cpu_supports("avx512bf16") ? GEMV_ISA_AVX512_BF16 : GEMV_ISA_AVX512;
}

gemv_isa g_detected = detect_isa();
gemv_isa g_isa = g_detected;

// xr: x rounded to bf16 (as f32) under bf16 compute, for the kernels without vdpbf16ps
template <int M>
void rows_dispatch(const gemv_job & j, const float * x, const float * xr, const uint16_t * xb, int64_t IC, int64_t ICp,
                   int64_t n0, int64_t n1, bool bf16) {
    const bool bw = j.wt == PEFT_DTYPE_BF16;
    if (g_isa == GEMV_ISA_SCALAR) {
        rows_scalar(j, x, xb, M, IC, ICp, n0, n1, bf16);
    } else if (bf16 && g_isa == GEMV_ISA_AVX512_BF16) {
        bw ? rows_dot<M, true>(j, xb, IC, ICp, n0, n1) : rows_dot<M, false>(j, xb, IC, ICp, n0, n1);
    } else if (bf16) {   // AVX-512 without BF16, or AVX2: rounded operands, f32 FMAs
        bw ? rows_avx2<M, true, false>(j, xr, IC, n0, n1) : rows_avx2<M, false, true>(j, xr, IC, n0, n1);
    } else if (g_isa == GEMV_ISA_AVX2) {
        bw ? rows_avx2<M, true, false>(j, x, IC, n0, n1) : rows_avx2<M, false, false>(j, x, IC, n0, n1);
    } else {
        bw ? rows_exact<M, true>(j, x, IC, n0, n1) : rows_exact<M, false>(j, x, IC, n0, n1);
    }
}

void rows_any(const gemv_job & j, const float * x, const float * xr, const uint16_t * xb, int64_t M, int64_t IC, int64_t ICp,
              int64_t n0, int64_t n1, bool bf16) {
    switch (M) {
        case 1: return rows_dispatch<1>(j, x, xr, xb, IC, ICp, n0, n1, bf16);
        case 2: return rows_dispatch<2>(j, x, xr, xb, IC, ICp, n0, n1, bf16);
        case 3: return rows_dispatch<3>(j, x, xr, xb, IC, ICp, n0, n1, bf16);
        default: return rows_dispatch<4>(j, x, xr, xb, IC, ICp, n0, n1, bf16);
    }
}

} // namespace

static_assert(GEMV_MAX_ROWS == 4, "rows_any instantiates M = 1..4");

const char * gemv_isa_name() { return GEMV_ISA_NAMES[g_isa]; }

bool gemv_force_isa(const char * name) {
    if (!name) { g_isa = g_detected; return true; }
    for (int i = 0; i <= (int) g_detected; i++) {
        if (std::strcmp(GEMV_ISA_NAMES[i], name) == 0) { g_isa = (gemv_isa) i; return true; }
    }
    return false;
}

void gemv_own_multi(const gemv_out * outs, int n_out, const float * x, int64_t M, int64_t IC, bool bf16_compute) {
    PEFT_ASSERT(M >= 1 && M <= GEMV_MAX_ROWS && n_out >= 1 && n_out <= GEMV_MAX_OUTS);
    static thread_local std::vector<uint16_t> xbuf;
    static thread_local std::vector<float> xrbuf;
    const int64_t ICp = (IC + 1) / 2 * 2;
    const uint16_t * xb = nullptr;
    const float * xr = nullptr;
    if (bf16_compute) {
        xbuf.assign((size_t) (M * ICp), 0);
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < IC; k++) xbuf[(size_t) (m * ICp + k)] = f32_to_bf16(x[m * IC + k]);
        xb = xbuf.data();
        if (g_isa != GEMV_ISA_AVX512_BF16) {
            xrbuf.resize((size_t) (M * IC));
            for (int64_t m = 0; m < M; m++)
                for (int64_t k = 0; k < IC; k++) xrbuf[(size_t) (m * IC + k)] = bf16_to_f32(xbuf[(size_t) (m * ICp + k)]);
            xr = xrbuf.data();
        }
    }
    gemv_job jobs[GEMV_MAX_OUTS];
    int64_t start[GEMV_MAX_OUTS + 1];   // the outputs' rows laid end to end
    start[0] = 0;
    for (int i = 0; i < n_out; i++) {
        PEFT_ASSERT(outs[i].wt == PEFT_DTYPE_F32 || outs[i].wt == PEFT_DTYPE_BF16);
        jobs[i] = {outs[i].y, outs[i].OC, outs[i].wt, outs[i].W, outs[i].OC, outs[i].beta};
        start[i + 1] = start[i] + outs[i].OC;
    }
    const int64_t total = start[n_out];
    // threads take chunks of CHUNK concatenated rows as they finish the last (whole cache lines
    // of y); tiny products stay on one thread. Each row's sum is the same whichever thread takes
    // it. Fixed halves left one thread waiting whenever the other's core was slowed (a shared
    // host): small f32 decode, 3 rounds each, 2 threads 76 / 86 / 74 -> 87 / 95 / 74 tok/s,
    // 1 thread 54 / 49 / 60 -> 58 / 63 / 63.
    constexpr int64_t CHUNK = 256;
    const int nt = total * IC < (1 << 16) ? 1 : std::max(1, omp_get_max_threads());
    const int64_t chunks = (total + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t r0 = c * CHUNK, r1 = std::min(total, r0 + CHUNK);
        for (int i = 0; i < n_out; i++) {
            const int64_t a = std::max(r0, start[i]), b = std::min(r1, start[i + 1]);
            if (a < b) rows_any(jobs[i], x, xr, xb, M, IC, ICp, a - start[i], b - start[i], bf16_compute);
        }
    }
}

void gemv_own(float * y, const float * x, int64_t M, dtype wt, const void * W, int64_t OC, int64_t IC, float beta, bool bf16_compute) {
    const gemv_out o = {y, wt, W, OC, beta};
    gemv_own_multi(&o, 1, x, M, IC, bf16_compute);
}

void gemv_own_ref(float * y, const float * x, int64_t M, dtype wt, const void * W, int64_t OC, int64_t IC, float beta,
                  bool bf16_compute) {
    gemm_own_ref(false, true, M, OC, IC, 1.0f, x, IC, wt, W, IC, beta, y, OC, bf16_compute);
}

} // namespace peft
