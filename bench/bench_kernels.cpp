// bench_kernels.cpp: Google Benchmark cases for the CPU kernels at the "small" model shape
// (N = 1024 rows, C = 768, F = 2048, V = 32000) plus BM_gemm_peak, a large square sgemm whose
// GFLOP/s is the measured GEMM peak that step-time estimates compare against.
// Kernels run on all cores, so every case reports wall-clock time (UseRealTime) and rates per
// wall-clock second. Run: bench_kernels --benchmark_min_time=0.2 (add --benchmark_format=json for one record per case).
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <benchmark/benchmark.h>

#include "core/threads.h"
#include "kernels/kernels.h"

using namespace peft;

namespace {

std::vector<float> filled(int64_t n, float scale = 1.0f) {
    std::vector<float> v((size_t) n);
    uint32_t s = 12345;
    for (auto & x : v) {
        s = s * 1664525u + 1013904223u;
        x = scale * ((float) (s >> 8) / 16777216.0f * 2.0f - 1.0f);
    }
    return v;
}

void set_flops(benchmark::State & state, double flops_per_iter) {
    state.counters["FLOPS"] = benchmark::Counter(flops_per_iter, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}

// C[M,N] = op(A) op(B) with the nn.Linear layouts the model uses:
// NT forward (x[M,K] W[N,K]^T), NN input grad (dy[M,K] W[K,N]), TN weight grad (dy^T x);
// BM_gemm_openblas runs the same products through OpenBLAS, side by side (the measured baseline).
template <bool OpenBLAS>
void gemm_case(benchmark::State & state) {
    const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
    const bool ta = state.range(3) != 0, tb = state.range(4) != 0;
    auto A = filled(M * K), B = filled(K * N);
    std::vector<float> C((size_t) (M * N));
    for (auto _ : state) {
        (OpenBLAS ? gemm_blas : gemm)(ta, tb, M, N, K, 1.0f, A.data(), ta ? M : K, B.data(), tb ? K : N, 0.0f, C.data(), N);
        benchmark::DoNotOptimize(C.data());
    }
    set_flops(state, 2.0 * M * N * K);
}
void BM_gemm(benchmark::State & state) { gemm_case<false>(state); }
void BM_gemm_openblas(benchmark::State & state) { gemm_case<true>(state); }
#define MODEL_GEMM_SHAPES(b)                                                     \
    BENCHMARK(b)                                                                 \
        ->ArgNames({"M", "N", "K", "ta", "tb"})                                  \
        ->Args({1024, 768, 768, 0, 1})  /* q/o projection forward */            \
        ->Args({1024, 2048, 768, 0, 1}) /* gate/up forward */                   \
        ->Args({1024, 768, 2048, 0, 1}) /* down forward */                      \
        ->Args({1024, 768, 2048, 0, 0}) /* gate/up input grad */                \
        ->Args({2048, 768, 1024, 1, 0}) /* gate/up weight grad */               \
        ->Args({64, 2048, 768, 0, 1})   /* gate/up prefill of a 64-token prompt */ \
        ->Unit(benchmark::kMillisecond)                                          \
        ->UseRealTime()
MODEL_GEMM_SHAPES(BM_gemm);
MODEL_GEMM_SHAPES(BM_gemm_openblas);

// the same products as `--bf16` runs them: the weight B stored bf16, every operand rounded to
// bf16, f32 accumulation (vdpbf16ps / AMX where present)
void BM_gemm_bf16(benchmark::State & state) {
    const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
    const bool ta = state.range(3) != 0, tb = state.range(4) != 0;
    auto A = filled(M * K), Bf = filled(K * N);
    std::vector<uint16_t> B(Bf.size());
    for (size_t i = 0; i < B.size(); i++) B[i] = f32_to_bf16(Bf[i]);
    std::vector<float> C((size_t) (M * N));
    for (auto _ : state) {
        gemm_own(ta, tb, M, N, K, 1.0f, A.data(), ta ? M : K, PEFT_DTYPE_BF16, B.data(), tb ? K : N, 0.0f, C.data(), N,
                 true);
        benchmark::DoNotOptimize(C.data());
    }
    set_flops(state, 2.0 * M * N * K);
}
MODEL_GEMM_SHAPES(BM_gemm_bf16)->Args({256, 32000, 768, 0, 1}) /* lm_head forward chunk */
    ->Args({256, 768, 32000, 0, 0}) /* lm_head input grad chunk */;

// the rank-16 LoRA products of a gate/up projection (IC 768, OC 2048) over N = 1024 rows
#define LORA_GEMM_SHAPES(b)                                                      \
    BENCHMARK(b)                                                                 \
        ->ArgNames({"M", "N", "K", "ta", "tb"})                                  \
        ->Args({1024, 16, 768, 0, 1})   /* xa = x A^T */                         \
        ->Args({1024, 2048, 16, 0, 1})  /* y += s xa B^T */                      \
        ->Args({1024, 16, 2048, 0, 0})  /* g = dy B */                           \
        ->Args({2048, 16, 1024, 1, 0})  /* dB += s dy^T xa */                    \
        ->Args({16, 768, 1024, 1, 0})   /* dA += s g^T x */                      \
        ->Args({1024, 768, 16, 0, 0})   /* dx += s g A */                        \
        ->Unit(benchmark::kMicrosecond)                                          \
        ->UseRealTime()
LORA_GEMM_SHAPES(BM_gemm);
LORA_GEMM_SHAPES(BM_gemm_openblas);

// lm_head forward over all N rows in chunks of 256 rows (what the fused xent path does)
void BM_gemm_lm_head_chunked(benchmark::State & state) {
    const int64_t N = 1024, V = 32000, C = 768, chunk = state.range(0);
    auto x = filled(N * C), W = filled(V * C);
    std::vector<float> logits((size_t) (chunk * V));
    for (auto _ : state) {
        for (int64_t r = 0; r < N; r += chunk) {
            gemm(false, true, chunk, V, C, 1.0f, x.data() + r * C, C, W.data(), C, 0.0f, logits.data(), V);
        }
        benchmark::DoNotOptimize(logits.data());
    }
    set_flops(state, 2.0 * N * V * C);
}
BENCHMARK(BM_gemm_lm_head_chunked)->ArgName("chunk")->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_gemm_peak(benchmark::State & state) {
    const int64_t n = state.range(0);
    auto A = filled(n * n), B = filled(n * n);
    std::vector<float> C((size_t) (n * n));
    for (auto _ : state) {
        gemm(false, false, n, n, n, 1.0f, A.data(), n, B.data(), n, 0.0f, C.data(), n);
        benchmark::DoNotOptimize(C.data());
    }
    set_flops(state, 2.0 * n * n * n);
}
BENCHMARK(BM_gemm_peak)->Arg(1536)->Unit(benchmark::kMillisecond)->UseRealTime();

// attention at B=4, T=256, NH=NKV=12, HS=64; FLOPS counts the causal half of the score matrix
constexpr int64_t AB = 4, AT = 256, ANH = 12, AHS = 64;
constexpr double ATTN_FWD_FLOPS = 2.0 * 2.0 * AB * ANH * (AT * (AT + 1) / 2.0) * AHS;  // qk^T and pv

void BM_attention_forward(benchmark::State & state) {
    const int64_t n = AB * AT * ANH * AHS;
    auto q = filled(n), k = filled(n), v = filled(n);
    std::vector<float> out((size_t) n), lse((size_t) (AB * ANH * AT));
    for (auto _ : state) {
        attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), nullptr, AB, AT, ANH, ANH, AHS);
        benchmark::DoNotOptimize(out.data());
    }
    set_flops(state, ATTN_FWD_FLOPS);
}
BENCHMARK(BM_attention_forward)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_attention_backward(benchmark::State & state) {
    const int64_t n = AB * AT * ANH * AHS;
    auto q = filled(n), k = filled(n), v = filled(n), dout = filled(n);
    std::vector<float> out((size_t) n), lse((size_t) (AB * ANH * AT)), dq((size_t) n), dk((size_t) n), dv((size_t) n);
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), nullptr, AB, AT, ANH, ANH, AHS);
    for (auto _ : state) {
        attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(), q.data(), k.data(),
                           v.data(), nullptr, AB, AT, ANH, ANH, AHS);
        benchmark::DoNotOptimize(dq.data());
    }
    set_flops(state, 2.5 * ATTN_FWD_FLOPS);  // qk^T recompute, dp, dq, dk, dv
}
BENCHMARK(BM_attention_backward)->Unit(benchmark::kMillisecond)->UseRealTime();

constexpr int64_t RN = 1024, RC = 768;

void BM_rmsnorm_forward(benchmark::State & state) {
    auto x = filled(RN * RC), w = filled(RC);
    std::vector<float> out((size_t) (RN * RC)), rstd((size_t) RN);
    for (auto _ : state) {
        rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), RN, RC, 1e-5f);
        benchmark::DoNotOptimize(out.data());
    }
    state.SetBytesProcessed(state.iterations() * 2 * RN * RC * (int64_t) sizeof(float));
}
BENCHMARK(BM_rmsnorm_forward)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_rmsnorm_backward(benchmark::State & state) {
    auto x = filled(RN * RC), w = filled(RC), dout = filled(RN * RC);
    std::vector<float> out((size_t) (RN * RC)), rstd((size_t) RN), dx((size_t) (RN * RC)), dw((size_t) RC);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), RN, RC, 1e-5f);
    for (auto _ : state) {
        rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), RN, RC);
        benchmark::DoNotOptimize(dx.data());
    }
    state.SetBytesProcessed(state.iterations() * 3 * RN * RC * (int64_t) sizeof(float));
}
BENCHMARK(BM_rmsnorm_backward)->Unit(benchmark::kMicrosecond)->UseRealTime();

void BM_swiglu_forward_backward(benchmark::State & state) {
    const int64_t n = 1024 * 2048;
    auto g = filled(n, 4.0f), u = filled(n), dout = filled(n);
    std::vector<float> out((size_t) n), dg((size_t) n), du((size_t) n);
    for (auto _ : state) {
        swiglu_forward(out.data(), g.data(), u.data(), n);
        swiglu_backward(dg.data(), du.data(), dout.data(), g.data(), u.data(), n);
        benchmark::DoNotOptimize(dg.data());
    }
}
BENCHMARK(BM_swiglu_forward_backward)->Unit(benchmark::kMicrosecond)->UseRealTime();

// fused softmax + cross-entropy with gradients over 1024 rows of V = 32000 logits
void BM_xent(benchmark::State & state) {
    const int64_t n = 1024, V = 32000;
    auto logits = filled(n * V, 8.0f);
    std::vector<float> dlogits((size_t) (n * V)), losses((size_t) n);
    std::vector<int32_t> targets((size_t) n);
    for (int64_t i = 0; i < n; i++) targets[(size_t) i] = (int32_t) ((i * 7919) % V);
    for (auto _ : state) {
        xent_forward(losses.data(), dlogits.data(), logits.data(), targets.data(), n, V, 1.0f / n);
        benchmark::DoNotOptimize(dlogits.data());
    }
    state.SetItemsProcessed(state.iterations() * n * V);
}
BENCHMARK(BM_xent)->Unit(benchmark::kMillisecond)->UseRealTime();

} // namespace

int main(int argc, char ** argv) {
    threads_set(0);  // all cores, shared by OpenBLAS and our OpenMP loops
    // PEFT_GEMM_ISA=avx2 (or another set name) forces our micro-kernels: without AVX-512, gemm
    // otherwise hands f32 products to OpenBLAS (gemm.cpp), and BM_gemm would time OpenBLAS twice
    if (const char * isa = std::getenv("PEFT_GEMM_ISA"); isa && !gemm_force_isa(isa)) {
        std::fprintf(stderr, "bench_kernels: PEFT_GEMM_ISA=%s: not a GEMM set this CPU runs\n", isa);
        return 1;
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
