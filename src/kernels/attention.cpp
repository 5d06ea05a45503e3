// attention.cpp: causal scaled-dot-product attention with grouped-query heads and optional
// packed-sample segments, flash style: a thread works on one tile of QB query rows of one head at
// a time (never a head's full T x T scores), the forward saves only the log-sum-exp per row, and
// the backward recomputes probabilities from q, k and lse.
// Also here: attend_head, one decoded query head against a KV cache (llama_infer.cpp).
// Not here: dropout, sliding windows.
//
// Layouts: q/out [B*T, NH, HS], k/v [B*T, NKV, HS], lse [B, NH, T]. Query head h reads kv head
// h / (NH/NKV). Work is split into (batch row, head) items in the forward and (batch row, kv
// head) items in the backward, so each dk/dv row has exactly one writer (no atomics, fixed
// summation order, bit-identical for any thread count). Items share nothing, so they are handed
// out dynamically: packed segments make their costs uneven.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/status.h"
#include "kernels/kernels.h"
#include "kernels/vmath.h"

namespace peft {

namespace {

constexpr int64_t QB = 16;  // query rows per tile

// One MR x NR register block of tile_madd: c[i:i+MR, j:j+NR] += A[i:i+MR, :] B[:, j:j+NR].
template <int64_t MR, int64_t NR>
inline void madd_block(float * c, int64_t ldc, const float * a, int64_t a_rs, int64_t a_cs, const float * b,
                       int64_t b_rs, int64_t i, int64_t j, int64_t K) {
    float acc[MR][NR];
    for (int64_t r = 0; r < MR; r++) {
        for (int64_t x = 0; x < NR; x++) acc[r][x] = c[(i + r) * ldc + j + x];
    }
    for (int64_t p = 0; p < K; p++) {
        const float * bp = b + p * b_rs + j;
        #pragma GCC unroll 8
        for (int64_t r = 0; r < MR; r++) {
            const float av = a[(i + r) * a_rs + p * a_cs];
            #pragma omp simd
            for (int64_t x = 0; x < NR; x++) acc[r][x] += av * bp[x];
        }
    }
    for (int64_t r = 0; r < MR; r++) {
        for (int64_t x = 0; x < NR; x++) c[(i + r) * ldc + j + x] = acc[r][x];
    }
}

// Rows [i0, i1), columns [j0, N) of the same product in axpy form, for the leftovers of the
// register blocks.
void madd_axpy(float * c, int64_t ldc, const float * a, int64_t a_rs, int64_t a_cs, const float * b, int64_t b_rs,
               int64_t i0, int64_t i1, int64_t j0, int64_t N, int64_t K) {
    for (int64_t i = i0; i < i1; i++) {
        for (int64_t p = 0; p < K; p++) {
            const float av = a[i * a_rs + p * a_cs];
            const float * bp = b + p * b_rs;
            #pragma omp simd
            for (int64_t x = j0; x < N; x++) c[i * ldc + x] += av * bp[x];
        }
    }
}

// c[M,N] (row stride ldc) += A[M,K] B[K,N], with A(i,p) = a[i*a_rs + p*a_cs] and row p of B
// contiguous at b + p*b_rs. Every product in this file (q k^T, p v, do v^T, ds k, ds^T q, p^T do)
// has this shape. Register blocks of MR rows x NR columns make each loaded row segment of B feed
// MR FMAs, where a plain axpy would reload and store its accumulator for every FMA. With AVX-512
// (32 vector registers) 8 x 32: 16 accumulators keep enough independent FMA chains in flight to
// cover the FMA latency, and causal key ranges (multiples of QB = 16 long) that end in 16 columns
// get an MR x 16 block rather than the axpy tail. With AVX2 (16 registers) 6 x 16: 12
// accumulators, 2 loads of B and a broadcast (5 x 16 for the rows 6-row bands leave). 4 x 32
// there needed 16 accumulators and spilled: 6 x 16 runs attention 1.3x faster, 6 + 5 + 5 rows
// per query tile 1.05x more (bench_kernels BM_attention_*, Zen 3, 2 threads). Every
// element is summed over p in order from its initial value in all forms, so which form handles it
// does not change a bit.
#ifdef __AVX512F__
constexpr int64_t MADD_NR = 32;
#else
constexpr int64_t MADD_NR = 16;
#endif
constexpr int64_t MADD_NR2 = 16;   // the block for a 16-column remainder, when narrower than MADD_NR

// Rows [i, i + R) of tile_madd: register blocks across N, then the axpy column tail.
template <int64_t R>
inline void madd_band(float * c, int64_t ldc, const float * a, int64_t a_rs, int64_t a_cs, const float * b,
                      int64_t b_rs, int64_t i, int64_t N, int64_t K) {
    int64_t j = 0;
    for (; j + MADD_NR <= N; j += MADD_NR) madd_block<R, MADD_NR>(c, ldc, a, a_rs, a_cs, b, b_rs, i, j, K);
    if constexpr (MADD_NR2 < MADD_NR) {
        for (; j + MADD_NR2 <= N; j += MADD_NR2) madd_block<R, MADD_NR2>(c, ldc, a, a_rs, a_cs, b, b_rs, i, j, K);
    }
    if (j < N) madd_axpy(c, ldc, a, a_rs, a_cs, b, b_rs, i, i + R, j, N, K);
}

void tile_madd(float * c, int64_t ldc, const float * a, int64_t a_rs, int64_t a_cs, const float * b, int64_t b_rs,
               int64_t M, int64_t N, int64_t K) {
    int64_t i = 0;
#ifdef __AVX512F__
    for (; i + 8 <= M; i += 8) madd_band<8>(c, ldc, a, a_rs, a_cs, b, b_rs, i, N, K);
#else
    // A 16-row query tile goes as 6 + 5 + 5, not 6 + 6 + 4: a 4-row band keeps only 8 FMA chains
    // in flight, and it took a fifth of attention's time.
    const int64_t bands6 = M % 6 == 4 && M >= 10 ? M / 6 - 1 : M / 6;
    for (; i < 6 * bands6; i += 6) madd_band<6>(c, ldc, a, a_rs, a_cs, b, b_rs, i, N, K);
    if (M - i == 10) {
        madd_band<5>(c, ldc, a, a_rs, a_cs, b, b_rs, i, N, K);
        madd_band<5>(c, ldc, a, a_rs, a_cs, b, b_rs, i + 5, N, K);
        i += 10;
    }
#endif
    if (i + 4 <= M) {   // row tail: a 4-row band once if it fits, then axpy rows
        madd_band<4>(c, ldc, a, a_rs, a_cs, b, b_rs, i, N, K);
        i += 4;
    }
    madd_axpy(c, ldc, a, a_rs, a_cs, b, b_rs, i, M, 0, N, K);
}

// Per-thread scratch, grown on demand and kept (OpenMP reuses its threads): attention runs
// twice per layer per step, and fresh std::vectors would allocate and zero (2 HS + 2 QB) T floats
// per thread per call. Callers overwrite everything they read.
float * thread_scratch(size_t n) {
    thread_local std::vector<float> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// kt[HS, T] = the T rows of one kv head laid out by dimension, so scores come out of tile_madd
// vectorised over keys. Done in 16 x 16 blocks: row by row, every store of a key went to a
// different cache line T floats apart, and the HS lines being filled did not stay in L1.
void transpose_head(float * kt, const float * x, int64_t stride, int64_t T, int64_t HS) {
    constexpr int64_t TB = 16;
    for (int64_t s0 = 0; s0 < T; s0 += TB) {
        const int64_t s1 = s0 + TB < T ? s0 + TB : T;
        for (int64_t d0 = 0; d0 < HS; d0 += TB) {
            const int64_t d1 = d0 + TB < HS ? d0 + TB : HS;
            for (int64_t d = d0; d < d1; d++) {
                for (int64_t s = s0; s < s1; s++) kt[d * T + s] = x[s * stride + d];
            }
        }
    }
}

// First key visible to query t: 0 without segments, else the first key of t's segment (keys in
// between with another segment id are masked separately, so ids need not be contiguous).
int64_t first_visible(const int32_t * seg_b, int64_t t) {
    if (!seg_b) return 0;
    int64_t lo = 0;
    while (seg_b[lo] != seg_b[t]) lo++;
    return lo;
}

// Scores of query rows [t0, t1) of one head: sc[QB, T] row i over keys [lo, t1) holds
// scale * q_t . k_s, or -inf where key s is not visible to t = t0 + i. Returns lo, the first key
// any row of the tile sees. q points at token 0 of this (batch row, head), token stride q_stride;
// qs[QB, HS] is scratch. Forward and backward share it, so recomputed scores are bit-identical.
int64_t tile_scores(float * sc, float * qs, const float * q, int64_t q_stride, const float * kt,
                    const int32_t * seg_b, int64_t t0, int64_t t1, int64_t T, int64_t HS, float scale) {
    const int64_t nq = t1 - t0;
    int64_t lo = t0;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t l = first_visible(seg_b, t);
        lo = l < lo ? l : lo;
    }
    for (int64_t i = 0; i < nq; i++) {
        for (int64_t d = 0; d < HS; d++) qs[i * HS + d] = q[(t0 + i) * q_stride + d] * scale;
        for (int64_t s = lo; s < t1; s++) sc[i * T + s] = 0.0f;
    }
    tile_madd(sc + lo, T, qs, HS, 1, kt + lo, T, nq, t1 - lo, HS);
    for (int64_t i = 0; i < nq; i++) {
        const int64_t t = t0 + i;
        float * row = sc + i * T;
        for (int64_t s = t + 1; s < t1; s++) row[s] = -INFINITY;
        if (seg_b) {
            for (int64_t s = lo; s <= t; s++) {
                if (seg_b[s] != seg_b[t]) row[s] = -INFINITY;
            }
        }
    }
    return lo;
}

} // namespace

void attention_forward(float * out, float * lse, const float * q, const float * k, const float * v,
                       const int32_t * seg, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS) {
    PEFT_ASSERT(NKV > 0 && NH % NKV == 0);
    const int64_t q_stride = NH * HS, kv_stride = NKV * HS;  // floats between consecutive tokens
    const int64_t group = NH / NKV;
    const float scale = 1.0f / std::sqrt((float) HS);
    #pragma omp parallel
    {
        float * const kt = thread_scratch((size_t) (HS * T + QB * T + 2 * QB * HS));
        float * const sc = kt + HS * T;
        float * const qs = sc + QB * T;
        float * const acc = qs + QB * HS;
        float sum[QB];
        int64_t cached = -1;  // (b, kv head) currently in kt: consecutive heads of a group reuse it
        #pragma omp for schedule(dynamic)
        for (int64_t item = 0; item < B * NH; item++) {
            const int64_t b = item / NH, h = item % NH, g = h / group;
            const int32_t * seg_b = seg ? seg + b * T : nullptr;
            const float * qh = q + (b * T * NH + h) * HS;
            const float * vb = v + (b * T * NKV + g) * HS;
            if (cached != b * NKV + g) {
                transpose_head(kt, k + (b * T * NKV + g) * HS, kv_stride, T, HS);
                cached = b * NKV + g;
            }
            for (int64_t t0 = 0; t0 < T; t0 += QB) {
                const int64_t t1 = t0 + QB < T ? t0 + QB : T, nq = t1 - t0;
                const int64_t lo = tile_scores(sc, qs, qh, q_stride, kt, seg_b, t0, t1, T, HS, scale);
                // softmax numerators in place; masked keys become exp(-inf) = 0
                for (int64_t i = 0; i < nq; i++) {
                    float * row = sc + i * T;
                    float m = -INFINITY;
                    #pragma omp simd reduction(max : m)
                    for (int64_t s = lo; s <= t0 + i; s++) m = row[s] > m ? row[s] : m;
                    // exp and sum as separate loops: each vectorises on its own (the fused
                    // serial float sum would not without reassociation)
                    for (int64_t s = lo; s < t1; s++) row[s] = vmath::expf(row[s] - m);
                    float total = 0.0f;
                    #pragma omp simd reduction(+ : total)
                    for (int64_t s = lo; s < t1; s++) total += row[s];
                    sum[i] = total;
                    lse[(b * NH + h) * T + t0 + i] = m + std::log(total);
                }
                // out tile = p v / sum
                for (int64_t x = 0; x < nq * HS; x++) acc[x] = 0.0f;
                tile_madd(acc, HS, sc + lo, T, 1, vb + lo * kv_stride, kv_stride, nq, HS, t1 - lo);
                for (int64_t i = 0; i < nq; i++) {
                    float * ot = out + ((b * T + t0 + i) * NH + h) * HS;
                    const float inv = 1.0f / sum[i];
                    for (int64_t d = 0; d < HS; d++) ot[d] = acc[i * HS + d] * inv;
                }
            }
        }
    }
}

// With p_s = exp(sc_s - lse), o = sum_s p_s v_s and D = do . o (= sum_s p_s (do . v_s)):
//   dv_s += p_s do,  ds_s = p_s (do . v_s - D),  dq += scale sum_s ds_s k_s,  dk_s += scale ds_s q.
void attention_backward(float * dq, float * dk, float * dv, const float * dout, const float * out, const float * lse,
                        const float * q, const float * k, const float * v, const int32_t * seg,
                        int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS) {
    PEFT_ASSERT(NKV > 0 && NH % NKV == 0);
    const int64_t q_stride = NH * HS, kv_stride = NKV * HS;
    const int64_t group = NH / NKV;
    const float scale = 1.0f / std::sqrt((float) HS);
    #pragma omp parallel
    {
        float * const kt = thread_scratch((size_t) (2 * HS * T + 2 * QB * T + QB * HS));
        float * const vt = kt + HS * T;
        float * const p = vt + HS * T;
        float * const ds = p + QB * T;
        float * const qs = ds + QB * T;
        #pragma omp for schedule(dynamic)
        for (int64_t item = 0; item < B * NKV; item++) {
            const int64_t b = item / NKV, g = item % NKV;
            const int32_t * seg_b = seg ? seg + b * T : nullptr;
            const int64_t kv_off = (b * T * NKV + g) * HS;
            transpose_head(kt, k + kv_off, kv_stride, T, HS);
            transpose_head(vt, v + kv_off, kv_stride, T, HS);
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                const int64_t q_off = (b * T * NH + h) * HS;
                for (int64_t t0 = 0; t0 < T; t0 += QB) {
                    const int64_t t1 = t0 + QB < T ? t0 + QB : T, nq = t1 - t0;
                    // recompute p from the saved log-sum-exp (forward: exp(sc - m) / sum)
                    const int64_t lo = tile_scores(p, qs, q + q_off, q_stride, kt, seg_b, t0, t1,
                                                   T, HS, scale);
                    for (int64_t i = 0; i < nq; i++) {
                        float * row = p + i * T;
                        const float l = lse[(b * NH + h) * T + t0 + i];
                        for (int64_t s = lo; s < t1; s++) row[s] = vmath::expf(row[s] - l);
                        for (int64_t s = lo; s < t1; s++) ds[i * T + s] = 0.0f;
                    }
                    // dp = do v^T, then ds = p (dp - D) scale, in place
                    tile_madd(ds + lo, T, dout + q_off + t0 * q_stride, q_stride, 1, vt + lo, T, nq,
                              t1 - lo, HS);
                    for (int64_t i = 0; i < nq; i++) {
                        const float * dot = dout + q_off + (t0 + i) * q_stride;
                        const float * ot = out + q_off + (t0 + i) * q_stride;
                        float D = 0.0f;
                        #pragma omp simd reduction(+ : D)
                        for (int64_t d = 0; d < HS; d++) D += dot[d] * ot[d];
                        float * dsr = ds + i * T;
                        const float * pr = p + i * T;
                        for (int64_t s = lo; s < t1; s++) dsr[s] = pr[s] * (dsr[s] - D) * scale;
                    }
                    const int64_t nk = t1 - lo;
                    tile_madd(dq + q_off + t0 * q_stride, q_stride, ds + lo, T, 1, k + kv_off + lo * kv_stride,
                              kv_stride, nq, HS, nk);
                    tile_madd(dk + kv_off + lo * kv_stride, kv_stride, ds + lo, 1, T, q + q_off + t0 * q_stride,
                              q_stride, nk, HS, nq);
                    tile_madd(dv + kv_off + lo * kv_stride, kv_stride, p + lo, 1, T,
                              dout + q_off + t0 * q_stride, q_stride, nk, HS, nq);
                }
            }
        }
    }
}

// o[HS] = softmax(q K^T / sqrt(HS)) V over the first n_keys rows of KV group g of a cache
// [max_ctx, KVD]; sc [n_keys] is the caller's scratch. Built with the kernels' flags (AVX-512
// dot products, vmath::expf vectorised): at -O2 generic x86-64 it was 1/10 of a decode step at a
// 64-token context.
void attend_head(float * o, const float * qh, const float * kc, const float * vc, float * sc, int64_t n_keys, int64_t g,
                 int64_t KVD, int64_t HS) {
    const float scale = 1.0f / std::sqrt((float) HS);
    float mx = -INFINITY;
    for (int64_t j = 0; j < n_keys; j++) {
        const float * kj = kc + j * KVD + g * HS;
        float d = 0.0f;
#pragma omp simd reduction(+ : d)
        for (int64_t e = 0; e < HS; e++) d += qh[e] * kj[e];
        d *= scale;
        sc[j] = d;
        mx = std::max(mx, d);
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n_keys; j++) {
        sc[j] = vmath::expf(sc[j] - mx);
        sum += sc[j];
    }
    for (int64_t e = 0; e < HS; e++) o[e] = 0.0f;
    for (int64_t j = 0; j < n_keys; j++) {
        const float pj = sc[j];
        const float * vj = vc + j * KVD + g * HS;
#pragma omp simd
        for (int64_t e = 0; e < HS; e++) o[e] += pj * vj[e];
    }
    const float inv = 1.0f / sum;
    for (int64_t e = 0; e < HS; e++) o[e] *= inv;
}

void attention_forward_ref(float * out, const float * q, const float * k, const float * v, const int32_t * seg,
                           int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS) {
    const int64_t group = NH / NKV;
    const double scale = 1.0 / std::sqrt((double) HS);
    std::vector<double> sc((size_t) T);
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < NH; h++) {
            const int64_t g = h / group;
            for (int64_t t = 0; t < T; t++) {
                const float * qt = q + ((b * T + t) * NH + h) * HS;
                double m = -INFINITY;
                for (int64_t s = 0; s <= t; s++) {
                    const bool visible = !seg || seg[b * T + s] == seg[b * T + t];
                    const float * ks = k + ((b * T + s) * NKV + g) * HS;
                    double acc = 0.0;
                    for (int64_t d = 0; d < HS; d++) acc += (double) qt[d] * ks[d];
                    sc[s] = visible ? acc * scale : -INFINITY;
                    if (sc[s] > m) m = sc[s];
                }
                double sum = 0.0;
                for (int64_t s = 0; s <= t; s++) {
                    sc[s] = std::exp(sc[s] - m);
                    sum += sc[s];
                }
                float * ot = out + ((b * T + t) * NH + h) * HS;
                for (int64_t d = 0; d < HS; d++) {
                    double acc = 0.0;
                    for (int64_t s = 0; s <= t; s++) acc += sc[s] * v[((b * T + s) * NKV + g) * HS + d];
                    ot[d] = (float) (acc / sum);
                }
            }
        }
    }
}

} // namespace peft
