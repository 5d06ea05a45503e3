// test_gemm_own.cpp: our packed GEMM (gemm_own) against its double-accumulating oracle, on every
// micro-kernel set this CPU can run (forced below the detected one), for f32 and bf16 storage of
// B, f32 and bf16 compute, all four transpose cases, and shapes that cross the MR/NR/KC/MC block
// edges, the one-row GEMV path and the skinny rank-r products. Also: bit-identical results for
// 1 and 2 threads, and the oracle's bf16 rounding against a product written out here.
#include <omp.h>

#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "kernels/gemm_micro.h"
#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

struct shape { int64_t M, N, K; };

// {M, N, K}: block edges (MR 12, NR 32, KC 384/512, MC 516), one row, rank-16 products
const shape kShapes[] = {{7, 5, 11}, {29, 70, 300}, {200, 33, 520}, {1, 77, 130}, {1, 5, 3},
                         {64, 16, 96}, {16, 96, 64}, {13, 1, 40}, {530, 13, 390}};

struct isa_guard {   // restores CPUID dispatch whatever the test does
    ~isa_guard() { gemm_force_isa(nullptr); }
};

std::vector<uint16_t> to_bf16(const std::vector<float> & x) {
    std::vector<uint16_t> h(x.size());
    for (size_t i = 0; i < x.size(); i++) h[i] = f32_to_bf16(x[i]);
    return h;
}

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
        EXPECT_TRUE(check_close(c_fast.data(), c_ref.data(), s.M * ldc, 2e-5, 2e-5, what));
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

TEST(gemm_own, same_bits_for_one_and_two_threads) {
    const int64_t M = 300, N = 200, K = 530;
    auto A = fixed_vector(M * K, 10), B = fixed_vector(N * K, 11);
    auto Bh = to_bf16(B);
    const int saved = omp_get_max_threads();
    for (bool bf16c : {false, true}) {
        std::vector<float> c1(M * N), c2(M * N);
        omp_set_num_threads(1);
        gemm_own(false, true, M, N, K, 1.0f, A.data(), K, PEFT_DTYPE_BF16, Bh.data(), K, 0.0f, c1.data(), N, bf16c);
        omp_set_num_threads(2);
        gemm_own(false, true, M, N, K, 1.0f, A.data(), K, PEFT_DTYPE_BF16, Bh.data(), K, 0.0f, c2.data(), N, bf16c);
        EXPECT_EQ(std::memcmp(c1.data(), c2.data(), c1.size() * 4), 0) << (bf16c ? "bf16" : "f32");
    }
    omp_set_num_threads(saved);
}

} // namespace
