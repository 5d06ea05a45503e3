// peak.cpp: the hardware's arithmetic peak as a register-only loop: 24 independent accumulator
// chains of 512-bit FMA (f32) or vdpbf16ps (bf16), no memory traffic, on every OpenMP thread.
// It is the honest denominator of peak_fraction (peft bench --peak): no GEMM can beat it.
// Not here: GEMM peaks (those time gemm_own / gemm_blas in cmd_bench.cpp).
// GCC 12 flags its own _mm512_reduce_add_ps as maybe-uninitialized
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <chrono>

#include "kernels/kernels.h"

namespace peft {

// The loops keep 24 chains in flight (latency 4 x 2 pipes needs >= 8) and fold them at the
// end so nothing is optimised away. Returns FLOPs done (2 per FMA lane, 4 per dot lane).
__attribute__((target("avx512f,fma"))) static double raw_f32_loop(int64_t iters) {
    __m512 c[24];
    for (int i = 0; i < 24; i++) c[i] = _mm512_set1_ps((float) i * 1e-3f);
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++) c[i] = _mm512_fmadd_ps(c[i], a, b);
    }
    __m512 s = c[0];
    for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, c[i]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void) sink;
    return (double) iters * 24 * 16 * 2;
}

__attribute__((target("avx512f,avx512bf16"))) static double raw_bf16_loop(int64_t iters) {
    __m512 c[24];
    for (int i = 0; i < 24; i++) c[i] = _mm512_set1_ps((float) i * 1e-3f);
    const __m512bh a = (__m512bh) _mm512_set1_epi16(0x3f80), b = (__m512bh) _mm512_set1_epi16(0x3800);
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++) c[i] = _mm512_dpbf16_ps(c[i], a, b);
    }
    __m512 s = c[0];
    for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, c[i]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void) sink;
    return (double) iters * 24 * 16 * 4;
}

double raw_peak_gflops(bool bf16) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || (bf16 && !__builtin_cpu_supports("avx512bf16"))) return 0.0;
    const int64_t iters = 4000000;
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        double flops = 0.0;
        const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : flops)
        flops += bf16 ? raw_bf16_loop(iters) : raw_f32_loop(iters);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (flops / dt / 1e9 > best) best = flops / dt / 1e9;
    }
    return best;
}

} // namespace peft
