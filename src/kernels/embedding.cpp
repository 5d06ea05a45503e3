// embedding.cpp: token embedding lookup (forward) and its scatter-add gradient (backward).
// Token ids are validated where they enter (tokenizer/data loader); the kernels trust them.
#include <cstring>

#include "kernels/kernels.h"

namespace peft {

// out[N,C] = wte[V,C] rows picked by tokens[N]
void embedding_forward(float * out, const int32_t * tokens, const float * wte, int64_t N, int64_t C) {
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        std::memcpy(out + n * C, wte + (int64_t) tokens[n] * C, (size_t) C * sizeof(float));
    }
}

// dwte[V,C] += dout[N,C] scattered by tokens[N]. Repeated tokens make rows collide, so threads
// split the columns instead of the rows: each element is summed over n in token order by one
// thread, which is race-free and gives the same bits for any thread count.
void embedding_backward(float * dwte, const float * dout, const int32_t * tokens, int64_t N, int64_t C, int64_t V) {
    constexpr int64_t COLS = 64;  // a cache line group per thread keeps writes from false sharing
    const int64_t n_blocks = (C + COLS - 1) / COLS;
    #pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < n_blocks; blk++) {
        const int64_t c0 = blk * COLS;
        const int64_t c1 = c0 + COLS < C ? c0 + COLS : C;
        for (int64_t n = 0; n < N; n++) {
            float * dst = dwte + (int64_t) tokens[n] * C;
            const float * src = dout + n * C;
            for (int64_t c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}

} // namespace peft
