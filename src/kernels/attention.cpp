// attention.cpp: causal scaled-dot-product attention with grouped-query heads and optional
// packed-sample segments, flash style: a thread holds one query row's scores at a time, the
// forward saves only the log-sum-exp per row, and the backward recomputes probabilities from
// q, k and lse. Not here: dropout, sliding windows, KV cache (generation has its own path).
//
// Layouts: q/out [B*T, NH, HS], k/v [B*T, NKV, HS], lse [B, NH, T]. Query head h reads kv head
// h / (NH/NKV). Work is split into (batch row, head) items in the forward and (batch row, kv
// head) items in the backward, so each dk/dv row has exactly one writer (no atomics, fixed
// summation order, bit-identical for any thread count).
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace peft {

namespace {

// kt[HS, T] = the T rows of one kv head laid out by dimension, so a query's scores over all keys
// are HS contiguous axpys (vectorised over keys) instead of T short dot products.
void transpose_head(float * kt, const float * x, int64_t stride, int64_t T, int64_t HS) {
    for (int64_t s = 0; s < T; s++) {
        for (int64_t d = 0; d < HS; d++) kt[d * T + s] = x[s * stride + d];
    }
}

// First key visible to query t: 0 without segments, else the first key of t's segment (keys in
// [lo, t] with another segment id are masked separately, so ids need not be contiguous).
int64_t first_visible(const int32_t * seg_b, int64_t t) {
    if (!seg_b) return 0;
    int64_t lo = 0;
    while (seg_b[lo] != seg_b[t]) lo++;
    return lo;
}

// sc[s] = scale * q . k_s for s in [lo, t], masked keys set to -inf. Forward and backward share
// this function so the recomputed probabilities use bit-identical scores.
void query_scores(float * sc, const float * q, const float * kt, const int32_t * seg_b, int64_t lo, int64_t t,
                  int64_t T, int64_t HS, float scale) {
    for (int64_t s = lo; s <= t; s++) sc[s] = 0.0f;
    for (int64_t d = 0; d < HS; d++) {
        const float qd = q[d] * scale;
        const float * kd = kt + d * T;
        #pragma omp simd
        for (int64_t s = lo; s <= t; s++) sc[s] += qd * kd[s];
    }
    if (seg_b) {
        for (int64_t s = lo; s <= t; s++) {
            if (seg_b[s] != seg_b[t]) sc[s] = -INFINITY;
        }
    }
}

} // namespace

void attention_forward(float * out, float * lse, const float * q, const float * k, const float * v,
                       const int32_t * seg, int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS) {
    const int64_t kv_stride = NKV * HS;  // floats between consecutive tokens of k/v
    const int64_t group = NH / NKV;
    const float scale = 1.0f / std::sqrt((float) HS);
    #pragma omp parallel
    {
        std::vector<float> kt((size_t) (HS * T)), sc((size_t) T), acc((size_t) HS);
        int64_t cached = -1;  // (b, kv head) currently in kt: consecutive heads of a group reuse it
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < B * NH; item++) {
            const int64_t b = item / NH, h = item % NH, g = h / group;
            const int32_t * seg_b = seg ? seg + b * T : nullptr;
            const float * kb = k + (b * T * NKV + g) * HS;
            const float * vb = v + (b * T * NKV + g) * HS;
            if (cached != b * NKV + g) {
                transpose_head(kt.data(), kb, kv_stride, T, HS);
                cached = b * NKV + g;
            }
            for (int64_t t = 0; t < T; t++) {
                const float * qt = q + ((b * T + t) * NH + h) * HS;
                const int64_t lo = first_visible(seg_b, t);
                query_scores(sc.data(), qt, kt.data(), seg_b, lo, t, T, HS, scale);
                float m = -INFINITY;
                for (int64_t s = lo; s <= t; s++) m = sc[s] > m ? sc[s] : m;
                float sum = 0.0f;
                for (int64_t s = lo; s <= t; s++) {
                    sc[s] = std::exp(sc[s] - m);
                    sum += sc[s];
                }
                // out_t = sum_s p_s v_s; masked keys have p_s = exp(-inf) = 0 and are skipped
                for (int64_t d = 0; d < HS; d++) acc[d] = 0.0f;
                for (int64_t s = lo; s <= t; s++) {
                    const float p = sc[s];
                    if (p == 0.0f) continue;
                    const float * vs = vb + s * kv_stride;
                    #pragma omp simd
                    for (int64_t d = 0; d < HS; d++) acc[d] += p * vs[d];
                }
                float * ot = out + ((b * T + t) * NH + h) * HS;
                const float inv = 1.0f / sum;
                for (int64_t d = 0; d < HS; d++) ot[d] = acc[d] * inv;
                lse[(b * NH + h) * T + t] = m + std::log(sum);
            }
        }
    }
}

// With p_s = exp(sc_s - lse), o = sum_s p_s v_s and D = do . o (= sum_s p_s (do . v_s)):
//   dv_s += p_s do,  ds_s = p_s (do . v_s - D),  dq += scale sum_s ds_s k_s,  dk_s += scale ds_s q.
void attention_backward(float * dq, float * dk, float * dv, const float * dout, const float * out, const float * lse,
                        const float * q, const float * k, const float * v, const int32_t * seg,
                        int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HS) {
    const int64_t kv_stride = NKV * HS;  // floats between consecutive tokens of k/v
    const int64_t group = NH / NKV;
    const float scale = 1.0f / std::sqrt((float) HS);
    #pragma omp parallel
    {
        std::vector<float> kt((size_t) (HS * T)), vt((size_t) (HS * T)), p((size_t) T), dp((size_t) T),
            dqt((size_t) HS);
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < B * NKV; item++) {
            const int64_t b = item / NKV, g = item % NKV;
            const int32_t * seg_b = seg ? seg + b * T : nullptr;
            const int64_t kv_off = (b * T * NKV + g) * HS;
            transpose_head(kt.data(), k + kv_off, kv_stride, T, HS);
            transpose_head(vt.data(), v + kv_off, kv_stride, T, HS);
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                for (int64_t t = 0; t < T; t++) {
                    const int64_t row = ((b * T + t) * NH + h) * HS;
                    const float * qt = q + row;
                    const float * dot = dout + row;
                    const float * ot = out + row;
                    const int64_t lo = first_visible(seg_b, t);
                    // recompute p from the saved log-sum-exp (forward: sc, then exp(sc - m) / sum)
                    query_scores(p.data(), qt, kt.data(), seg_b, lo, t, T, HS, scale);
                    const float l = lse[(b * NH + h) * T + t];
                    for (int64_t s = lo; s <= t; s++) p[s] = std::exp(p[s] - l);
                    // dp_s = do . v_s for all keys at once through the transposed v
                    for (int64_t s = lo; s <= t; s++) dp[s] = 0.0f;
                    for (int64_t d = 0; d < HS; d++) {
                        const float dd = dot[d];
                        const float * vd = vt.data() + d * T;
                        #pragma omp simd
                        for (int64_t s = lo; s <= t; s++) dp[s] += dd * vd[s];
                    }
                    float D = 0.0f;
                    #pragma omp simd reduction(+ : D)
                    for (int64_t d = 0; d < HS; d++) D += dot[d] * ot[d];
                    for (int64_t d = 0; d < HS; d++) dqt[d] = 0.0f;
                    for (int64_t s = lo; s <= t; s++) {
                        const float ps = p[s];
                        if (ps == 0.0f) continue;  // masked key (or underflow): contributes nothing
                        const float ds = ps * (dp[s] - D) * scale;
                        const float * ks = k + kv_off + s * kv_stride;
                        float * dks = dk + kv_off + s * kv_stride;
                        float * dvs = dv + kv_off + s * kv_stride;
                        #pragma omp simd
                        for (int64_t d = 0; d < HS; d++) {
                            dqt[d] += ds * ks[d];
                            dks[d] += ds * qt[d];
                            dvs[d] += ps * dot[d];
                        }
                    }
                    float * dqrow = dq + row;
                    for (int64_t d = 0; d < HS; d++) dqrow[d] += dqt[d];
                }
            }
        }
    }
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
