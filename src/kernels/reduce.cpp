// reduce.cpp: whole-buffer reductions (grad-norm, NaN guard). Cross-thread sums use one partial
// per thread over a fixed static split, combined in thread order: bit-identical for a fixed
// thread count.
#include <cmath>
#include <vector>

#include <omp.h>

#include "kernels/kernels.h"

namespace peft {

// sum_i x[i]^2 over x[n], accumulated in double
double sum_squares(const float * x, int64_t n) {
    std::vector<double> partial((size_t) omp_get_max_threads(), 0.0);
    #pragma omp parallel
    {
        const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t lo = n * tid / nt, hi = n * (tid + 1) / nt;
        double acc = 0.0;
        #pragma omp simd reduction(+ : acc)
        for (int64_t i = lo; i < hi; i++) acc += (double) x[i] * x[i];
        partial[(size_t) tid] = acc;
    }
    double total = 0.0;
    for (double p : partial) total += p;
    return total;
}

// true if x[n] holds no NaN or Inf
bool all_finite(const float * x, int64_t n) {
    int bad = 0;
    #pragma omp parallel for simd schedule(static) reduction(| : bad)
    for (int64_t i = 0; i < n; i++) bad |= !std::isfinite(x[i]);
    return bad == 0;
}

} // namespace peft
