// xent.cpp: fused softmax + cross-entropy over the lm_head logits. The trainer calls it on a
// chunk of rows at a time, so neither a probability row nor a separate dlogits buffer is needed
// (dlogits may alias logits). Each row is read once from memory for the log-sum-exp: the
// vocabulary is walked in cache-sized chunks with an online max/sum, and the exponentials are
// parked in dlogits so the gradient pass only rescales them.
#include <cmath>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/vmath.h"

namespace peft {

static constexpr int32_t IGNORE_INDEX = -100;  // PyTorch CrossEntropyLoss default
static constexpr int64_t VCHUNK = 2048;        // 8 KiB of logits: stays in L1 between passes

// losses[n]; dlogits[n,V] or null (may alias logits); logits[n,V]; targets[n] in [0,V) or -100
void xent_forward(float * losses, float * dlogits, const float * logits, const int32_t * targets,
                  int64_t n, int64_t V, float dscale) {
    const int64_t n_chunks = (V + VCHUNK - 1) / VCHUNK;
    #pragma omp parallel
    {
        std::vector<float> chunk_max((size_t) n_chunks);  // running max each chunk's exps are relative to
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            const float * x = logits + i * V;
            float * dx = dlogits ? dlogits + i * V : nullptr;
            const int32_t target = targets[i];
            if (target == IGNORE_INDEX) {
                losses[i] = 0.0f;
                if (dx) {
                    for (int64_t j = 0; j < V; j++) dx[j] = 0.0f;
                }
                continue;
            }
            const float x_target = x[target];  // read before dx (possibly x itself) is overwritten
            float m = -INFINITY;
            double sum = 0.0;  // sum_j exp(x_j - m), rescaled whenever m grows
            for (int64_t c = 0; c < n_chunks; c++) {
                const int64_t j0 = c * VCHUNK, j1 = j0 + VCHUNK < V ? j0 + VCHUNK : V;
                float cm = m;
                #pragma omp simd reduction(max : cm)
                for (int64_t j = j0; j < j1; j++) cm = x[j] > cm ? x[j] : cm;
                if (cm > m) {
                    sum *= std::exp((double) (m - cm));
                    m = cm;
                }
                float csum = 0.0f;
                if (dx) {
                    #pragma omp simd reduction(+ : csum)
                    for (int64_t j = j0; j < j1; j++) {
                        const float e = vmath::expf(x[j] - m);
                        dx[j] = e;
                        csum += e;
                    }
                } else {
                    #pragma omp simd reduction(+ : csum)
                    for (int64_t j = j0; j < j1; j++) csum += vmath::expf(x[j] - m);
                }
                sum += csum;
                chunk_max[(size_t) c] = m;
            }
            const float lse = m + (float) std::log(sum);
            losses[i] = lse - x_target;
            if (!dx) continue;
            // softmax_j = exp(x_j - m_c) * exp(m_c - lse), m_c the max that chunk c was exp'd against
            for (int64_t c = 0; c < n_chunks; c++) {
                const int64_t j0 = c * VCHUNK, j1 = j0 + VCHUNK < V ? j0 + VCHUNK : V;
                const float f = std::exp(chunk_max[(size_t) c] - lse) * dscale;
                #pragma omp simd
                for (int64_t j = j0; j < j1; j++) dx[j] *= f;
            }
            dx[target] -= dscale;
        }
    }
}

void xent_forward_ref(float * losses, const float * logits, const int32_t * targets, int64_t n, int64_t V) {
    for (int64_t i = 0; i < n; i++) {
        if (targets[i] == IGNORE_INDEX) {
            losses[i] = 0.0f;
            continue;
        }
        const float * x = logits + i * V;
        double m = -INFINITY;
        for (int64_t j = 0; j < V; j++) m = x[j] > m ? x[j] : m;
        double sum = 0.0;
        for (int64_t j = 0; j < V; j++) sum += std::exp((double) x[j] - m);
        losses[i] = (float) (m + std::log(sum) - x[targets[i]]);
    }
}

} // namespace peft
