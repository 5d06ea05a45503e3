// peak.cpp: the hardware's arithmetic peak as a register-only loop: 24 independent accumulator
// chains of 512-bit FMA (f32; 12 of 256-bit FMA without AVX-512) or vdpbf16ps (bf16), or four
// AMX tile accumulators of TDPBF16PS,
// no memory traffic, on every OpenMP thread.
// It is the honest denominator of peak_fraction (peft bench --peak): no GEMM can beat it.
// Not here: GEMM peaks (those time gemm_own / gemm_blas in cmd_bench.cpp).
// GCC 12 flags its own _mm512_reduce_add_ps as maybe-uninitialized
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstring>

#include "kernels/gemm_micro.h"
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

// Without AVX-512 the f32 peak is the 256-bit FMA's (16 registers: 12 chains, the rest free).
__attribute__((target("avx2,fma"))) static double raw_f32_loop_avx2(int64_t iters) {
    __m256 c[12];
    for (int i = 0; i < 12; i++) c[i] = _mm256_set1_ps((float) i * 1e-3f);
    const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-4f);
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) c[i] = _mm256_fmadd_ps(c[i], a, b);
    }
    __m256 s = c[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, c[i]);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, s);
    volatile float sink = lanes[0] + lanes[7];
    (void) sink;
    return (double) iters * 12 * 8 * 2;
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

// Four independent C tiles (TDPBF16PS latency ~16 cycles, one issued per 16 cycles per core
// would stall on a single chain) fed by two A and two B tiles loaded once.
__attribute__((target("amx-tile,amx-bf16"))) static double raw_amx_loop(int64_t iters) {
    struct alignas(64) { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
    _tile_loadconfig(&cfg);
    alignas(64) uint16_t a[16 * 32], b[16 * 32];
    for (int i = 0; i < 16 * 32; i++) { a[i] = 0x3f80; b[i] = 0x3800; }   // 1.0 and 2^-15
    alignas(64) float c[16 * 16];
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a, 64);
    _tile_loadd(6, b, 64);
    _tile_loadd(7, b, 64);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t it = 0; it < iters; it++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, 64);
    volatile float sink = c[0];
    (void) sink;
    return (double) iters * 4 * 16 * 16 * 32 * 2;
}

double raw_peak_gflops(raw_peak_kind kind) {
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f");
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (kind == RAW_PEAK_F32 && !avx512 && !avx2) return 0.0;
    if (kind == RAW_PEAK_BF16_DOT && !(avx512 && __builtin_cpu_supports("avx512bf16"))) return 0.0;
    if (kind == RAW_PEAK_AMX_BF16 && !amx_permitted()) return 0.0;
    const int64_t iters = kind == RAW_PEAK_AMX_BF16 ? 2000000 : 4000000;   // each ~0.1-0.2 s
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        double flops = 0.0;
        const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : flops)
        flops += kind == RAW_PEAK_F32        ? (avx512 ? raw_f32_loop(iters) : raw_f32_loop_avx2(2 * iters))
                 : kind == RAW_PEAK_BF16_DOT ? raw_bf16_loop(iters)
                                             : raw_amx_loop(iters);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (flops / dt / 1e9 > best) best = flops / dt / 1e9;
    }
    return best;
}

} // namespace peft
