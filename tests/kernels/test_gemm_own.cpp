// test_gemm_own.cpp: our packed GEMM (gemm_own) against its double-accumulating oracle, on every
// micro-kernel set this CPU can run (forced below the detected one), for f32 and bf16 storage of
// B, f32 and bf16 compute, all four transpose cases, and shapes that cross the MR/NR/KC/MC block
// edges, the one-row GEMV path and the skinny rank-r products; the detected dispatch (OpenBLAS
// with staged operands on AVX2) on a shape that crosses its blocks. Also: bit-identical results
// for 1 and 2 threads from our kernels and for repeated runs from any dispatch, and the oracle's
// bf16 rounding against a product written out here.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/dtype.h"
#include "kernels/gemm_micro.h"
#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

struct shape { int64_t M, N, K; };

// {M, N, K}: block edges (MR 12, NR 32, KC 384 f32, 512 AMX, 1024 vdpbf16ps; MC 516), one row,
// rank-16 products (the skinny path: <= 16 columns or rows), and 1 to 4 vectors of A's rows
// against a weight read in place (the few-row path, M <= 64 with trans_b: 7, 29, 40 and 64
// rows; odd K for the pairs)
const shape kShapes[] = {{7, 5, 11}, {29, 70, 300}, {200, 33, 520}, {1, 77, 130}, {1, 5, 3},
                         {64, 16, 96}, {16, 96, 64}, {13, 1, 40}, {530, 13, 390}, {40, 50, 33},
                         {70, 45, 1100}};

struct isa_guard {   // restores CPUID dispatch whatever the test does
    ~isa_guard() { gemm_force_isa(nullptr); }
};

std::vector<uint16_t> to_bf16(const std::vector<float> & x) {
    std::vector<uint16_t> h(x.size());
    for (size_t i = 0; i < x.size(); i++) h[i] = f32_to_bf16(x[i]);
    return h;
}

// f32 summation error grows with the length of the sums: 2e-5 up to K 512, in proportion beyond
double sum_tol(int64_t K) { return 2e-5 * std::max(1.0, (double) K / 512.0); }

void check_case(bool ta, bool tb, const shape & s, dtype bt, bool bf16c, const char * what) {
    const int64_t pad = 3;
    const int64_t lda = (ta ? s.M : s.K) + pad, ldb = (tb ? s.K : s.N) + pad, ldc = s.N + pad;
    auto A = fixed_vector((ta ? s.K : s.M) * lda, 1);
    auto Bf = fixed_vector((tb ? s.N : s.K) * ldb, 2);
    auto Bh = to_bf16(Bf);
    const void * B = bt == PEFT_DTYPE_BF16 ? (const void *) Bh.data() : (const void *) Bf.data();
    // alpha 1 with beta 0 is the AMX kernel's store straight from the tiles
    const float alphas[] = {1.5f, 1.0f, 1.5f}, betas[] = {0.0f, 0.0f, 0.5f};
    for (int ab = 0; ab < 3; ab++) {
        const float alpha = alphas[ab], beta = betas[ab];
        guarded c_fast(s.M * ldc), c_ref(s.M * ldc);
        fixed_fill(c_fast.data(), s.M * ldc, 3);
        fixed_fill(c_ref.data(), s.M * ldc, 3);
        if (beta == 0.0f) c_fast.data()[0] = c_ref.data()[0] = NAN;   // beta 0 must not read C
        gemm_own(ta, tb, s.M, s.N, s.K, alpha, A.data(), lda, bt, B, ldb, beta, c_fast.data(), ldc, bf16c);
        gemm_own_ref(ta, tb, s.M, s.N, s.K, alpha, A.data(), lda, bt, B, ldb, beta, c_ref.data(), ldc, bf16c);
        EXPECT_TRUE(c_fast.intact()) << what;
        // the operands are the same on both sides: only f32 summation order differs
        EXPECT_TRUE(check_close(c_fast.data(), c_ref.data(), s.M * ldc, sum_tol(s.K), sum_tol(s.K), what));
    }
}

TEST(gemm_own, matches_ref_on_every_isa_dtype_and_transpose) {
    isa_guard guard;
    int tried = 0;
    for (const char * isa : {"avx512-amx", "avx512-bf16", "avx512", "avx2", "scalar"}) {
        if (!gemm_force_isa(isa)) continue;
        tried++;
        for (const shape & s : kShapes) {
            for (int t = 0; t < 4; t++) {
                for (dtype bt : {PEFT_DTYPE_F32, PEFT_DTYPE_BF16}) {
                    for (bool bf16c : {false, true}) {
                        char what[160];
                        std::snprintf(what, sizeof what, "%s M%lld N%lld K%lld ta%d tb%d %s compute %s", isa,
                                      (long long) s.M, (long long) s.N, (long long) s.K, t & 1, t >> 1,
                                      dtype_name(bt), bf16c ? "bf16" : "f32");
                        check_case(t & 1, t >> 1, s, bt, bf16c, what);
                    }
                }
            }
        }
    }
    EXPECT_GE(tried, 1);   // scalar at least
}

// every set's packers (AVX-512 register transposes) give the C++ packers' bits: odd sizes, both
// layouts, panels of 12 and 32, bf16 rounding ties and a NaN
TEST(gemm_own, packers_match_the_generic_ones_bit_for_bit) {
    const int64_t rows = 45, ld = 57;
    auto X = fixed_vector(rows * ld, 12);
    X[6 * ld + 8] = NAN;                     // (6, 8) and (8, 6): inside the window either way round
    X[7 * ld + 9] = 1.0f + 1.0f / 256.0f;   // exactly halfway between two bf16 values: ties to even
    X[9 * ld + 11] = 1.0f + 3.0f / 256.0f;
    auto Xh = to_bf16(X);
    const gemm_packers & ref = gemm_packers_generic;
    int checked = 0;
    for (const gemm_micro_set * set : {&gemm_set_avx512_amx, &gemm_set_avx512_bf16, &gemm_set_avx512, &gemm_set_avx2,
                                       &gemm_set_scalar}) {
        if (!gemm_force_isa(set->name)) continue;
        gemm_force_isa(nullptr);
        const gemm_packers & pk = *set->pack;
        for (bool rm : {false, true}) {
            for (int P : {6, 12, 16, 32}) {   // the A and B panels of the AVX2 and AVX-512 sets
                for (int64_t kc : {int64_t(1), int64_t(17), int64_t(33)}) {
                    const int64_t n = 29, i0 = 3, p0 = 5;   // (i, p) within X either way round
                    const size_t sz = (size_t) ((n + P - 1) / P * P) * (size_t) (kc + 1);
                    std::vector<float> a(sz, -1.0f), b(sz, -1.0f);
                    for (bool round : {false, true}) {
                        ref.f32(a.data(), X.data(), ld, rm, i0, n, p0, kc, P, round);
                        pk.f32(b.data(), X.data(), ld, rm, i0, n, p0, kc, P, round);
                        EXPECT_EQ(std::memcmp(a.data(), b.data(), sz * 4), 0) << set->name << " f32 rm" << rm << " P" << P << " kc" << kc;
                    }
                    ref.f32_from_h(a.data(), Xh.data(), ld, rm, i0, n, p0, kc, P, false);
                    pk.f32_from_h(b.data(), Xh.data(), ld, rm, i0, n, p0, kc, P, false);
                    EXPECT_EQ(std::memcmp(a.data(), b.data(), sz * 4), 0) << set->name << " f32<-bf16 rm" << rm;
                    std::vector<uint32_t> u(sz, 7u), v(sz, 7u);
                    ref.pairs(u.data(), X.data(), ld, rm, i0, n, p0, kc, P);
                    pk.pairs(v.data(), X.data(), ld, rm, i0, n, p0, kc, P);
                    EXPECT_EQ(std::memcmp(u.data(), v.data(), sz * 4), 0) << set->name << " pairs rm" << rm << " P" << P << " kc" << kc;
                    ref.pairs_from_h(u.data(), Xh.data(), ld, rm, i0, n, p0, kc, P);
                    pk.pairs_from_h(v.data(), Xh.data(), ld, rm, i0, n, p0, kc, P);
                    EXPECT_EQ(std::memcmp(u.data(), v.data(), sz * 4), 0) << set->name << " pairs<-bf16 rm" << rm;
                    const int64_t kc2p = ((kc + 1) / 2 + 15) / 16 * 16;   // AMX A panels
                    const size_t szr = (size_t) ((n + P - 1) / P * P) * (size_t) kc2p;
                    std::vector<uint32_t> ur(szr, 7u), vr(szr, 7u);
                    ref.pair_rows(ur.data(), X.data(), ld, rm, i0, n, p0, kc, P, kc2p);
                    pk.pair_rows(vr.data(), X.data(), ld, rm, i0, n, p0, kc, P, kc2p);
                    EXPECT_EQ(std::memcmp(ur.data(), vr.data(), szr * 4), 0) << set->name << " pair rows rm" << rm << " kc" << kc;
                    checked++;
                }
            }
        }
    }
    EXPECT_GE(checked, 6);
}

// B as a reader over f32 storage (the shape of a quantized weight's decode)
void read_f32_rows(const void * ctx, int64_t r, int64_t c0, int64_t n, float * dst) {
    const auto & b = *(const std::pair<const float *, int64_t> *) ctx;   // data, row stride
    std::memcpy(dst, b.first + r * b.second + c0, (size_t) n * 4);
}

// the dispatch CPUID picks, on a shape past the staged OpenBLAS path's row threshold (128) that
// crosses its K and N blocks (2048, and 1024 at that K): bf16 weights, bf16 rounding of f32
// ones, a reader, both layouts of A and B. One alpha/beta case each: the oracle is slow here.
TEST(gemm_own, detected_dispatch_matches_ref_across_staging_blocks) {
    const int64_t M = 130, N = 1030, K = 2100;
    struct config { bool ta, tb; dtype bt; bool bf16c, reader; };
    const config configs[] = {{false, true, PEFT_DTYPE_BF16, false, false}, {true, false, PEFT_DTYPE_BF16, true, false},
                              {true, true, PEFT_DTYPE_F32, true, false}, {false, false, PEFT_DTYPE_F32, false, true},
                              {false, true, PEFT_DTYPE_F32, true, true}};
    for (const config & c : configs) {
        const int64_t lda = (c.ta ? M : K) + 1, ldb = c.tb ? K : N, ldc = N + 2;
        auto A = fixed_vector((c.ta ? K : M) * lda, 1);
        auto Bf = fixed_vector((c.tb ? N : K) * ldb, 2);
        auto Bh = to_bf16(Bf);
        const void * B = c.bt == PEFT_DTYPE_BF16 ? (const void *) Bh.data() : (const void *) Bf.data();
        guarded c_fast(M * ldc), c_ref(M * ldc);
        fixed_fill(c_fast.data(), M * ldc, 3);
        fixed_fill(c_ref.data(), M * ldc, 3);
        const std::pair<const float *, int64_t> ctx = {Bf.data(), ldb};
        if (c.reader) {
            gemm_own_read(c.ta, c.tb, M, N, K, 1.5f, A.data(), lda, {read_f32_rows, &ctx}, 0.5f, c_fast.data(), ldc,
                          c.bf16c);
        } else {
            gemm_own(c.ta, c.tb, M, N, K, 1.5f, A.data(), lda, c.bt, B, ldb, 0.5f, c_fast.data(), ldc, c.bf16c);
        }
        gemm_own_ref(c.ta, c.tb, M, N, K, 1.5f, A.data(), lda, c.bt, B, ldb, 0.5f, c_ref.data(), ldc, c.bf16c);
        char what[96];
        std::snprintf(what, sizeof what, "%s ta%d tb%d %s%s compute %s", gemm_isa(), c.ta, c.tb, dtype_name(c.bt),
                      c.reader ? " reader" : "", c.bf16c ? "bf16" : "f32");
        EXPECT_TRUE(c_fast.intact()) << what;
        EXPECT_TRUE(check_close(c_fast.data(), c_ref.data(), M * ldc, sum_tol(K), sum_tol(K), what));
    }
}

TEST(gemm_own, force_isa_refuses_unknown_names) {
    isa_guard guard;
    EXPECT_FALSE(gemm_force_isa("avx1024"));
    EXPECT_TRUE(gemm_force_isa("scalar"));
    EXPECT_STREQ(gemm_isa(), "scalar");
}

// the oracle's bf16 compute: operands rounded to bf16 (RNE), products exact, written out here
TEST(gemm_own, ref_bf16_compute_rounds_operands) {
    const int64_t M = 3, N = 4, K = 5;
    auto A = fixed_vector(M * K, 8), B = fixed_vector(N * K, 9);
    std::vector<float> C(M * N), C32(M * N);
    gemm_own_ref(false, true, M, N, K, 1.0f, A.data(), K, PEFT_DTYPE_F32, B.data(), K, 0.0f, C.data(), N, true);
    gemm_own_ref(false, true, M, N, K, 1.0f, A.data(), K, PEFT_DTYPE_F32, B.data(), K, 0.0f, C32.data(), N, false);
    auto rnd = [](float v) {   // truncate-then-round-half-even by hand, independent of dtype.h
        uint32_t u;
        std::memcpy(&u, &v, 4);
        const uint32_t low = u & 0xffffu, keep = u & 0xffff0000u;
        uint32_t r = keep + ((low > 0x8000u || (low == 0x8000u && (keep & 0x10000u))) ? 0x10000u : 0u);
        float f;
        std::memcpy(&f, &r, 4);
        return (double) f;
    };
    double max_diff32 = 0;
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t p = 0; p < K; p++) acc += rnd(A[i * K + p]) * rnd(B[j * K + p]);
            EXPECT_NEAR(C[i * N + j], acc, 1e-6);
            max_diff32 = std::max(max_diff32, std::fabs(C32[i * N + j] - acc));
        }
    }
    EXPECT_GT(max_diff32, 1e-5);   // and the rounding is visible: f32 compute gives other values
}

// our kernels' sums do not depend on the thread count (forced: the set CPUID picks may hand
// products to OpenBLAS, whose sums do); whatever the dispatch, a fixed thread count repeats its
// bits, on a shape the staged OpenBLAS path takes (K past its 2048 block)
TEST(gemm_own, same_bits_for_one_and_two_threads) {
    isa_guard guard;
    const int64_t M = 300, N = 200, K = 2100;
    auto A = fixed_vector(M * K, 10), B = fixed_vector(N * K, 11);
    auto Bh = to_bf16(B);
    const int saved = omp_get_max_threads();
    auto run = [&](int threads, bool bf16c) {
        std::vector<float> c(M * N);
        omp_set_num_threads(threads);
        gemm_own(false, true, M, N, K, 1.0f, A.data(), K, PEFT_DTYPE_BF16, Bh.data(), K, 0.0f, c.data(), N, bf16c);
        return c;
    };
    for (bool bf16c : {false, true}) {
        const char * what = bf16c ? "bf16" : "f32";
        EXPECT_TRUE(run(2, bf16c) == run(2, bf16c)) << "detected " << gemm_isa() << " " << what;
        ASSERT_TRUE(gemm_force_isa(gemm_isa()));
        EXPECT_TRUE(run(1, bf16c) == run(2, bf16c)) << "forced " << gemm_isa() << " " << what;
        gemm_force_isa(nullptr);
    }
    omp_set_num_threads(saved);
}

} // namespace
