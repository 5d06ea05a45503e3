// test_nf4_gemv.cpp: the fused NF4 dequant-GEMV (kernels/nf4.cpp qgemv) on every kernel set this
// CPU runs (AVX-512, AVX2, scalar; forced through gemm_force_isa), against qgemv_ref (rows of
// deq(W) from qtensor_dequant_range, double accumulation). One-hot inputs read single weights,
// so the SIMD table lookup must give deq(W) to the bit; random inputs must agree within the
// summation-order bound. f32 and double-quantized scales, f32 and bf16 values.
#include <cmath>
#include <limits>
#include <vector>

#include "core/quant.h"
#include "core/rng.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"
#include "testing.h"

using namespace peft;

namespace {

struct isa_guard {   // restores CPUID dispatch whatever the test does
    ~isa_guard() { gemm_force_isa(nullptr); }
};

const char * const kIsas[] = {"avx512", "avx2", "scalar"};

qtensor make_weight(int64_t OC, int64_t IC, bool dq, bool bf16, uint64_t seed) {
    std::vector<float> W((size_t) (OC * IC));
    rng r(seed);
    r.fill_normal(W.data(), (int64_t) W.size(), 0.0f, 0.05f);
    quant_options o;
    o.double_quant = dq;
    o.bf16_values = bf16;
    qtensor q;
    EXPECT_TRUE(qtensor_quantize(W.data(), OC, IC, o, "w", q).ok());
    return q;
}

// x row k is the unit vector e_k: y[k, o] = deq(W)[o, k] exactly (every other product is zero).
TEST(nf4_gemv, one_hot_rows_read_each_weight_exactly) {
    isa_guard guard;
    const int64_t OC = 9, IC = 192;
    for (const char * isa : kIsas) {
        if (!gemm_force_isa(isa)) continue;
        EXPECT_STREQ(qgemv_isa(), isa);
        for (bool dq : {false, true}) {
            for (bool bf16 : {false, true}) {
                const qtensor q = make_weight(OC, IC, dq, bf16, 11);
                std::vector<float> D((size_t) (OC * IC));
                qtensor_rows_f32(q, 0, OC, D.data());
                std::vector<float> x((size_t) (IC * IC), 0.0f), y((size_t) (IC * OC));
                for (int64_t k = 0; k < IC; k++) x[(size_t) (k * IC + k)] = 1.0f;
                qgemv(y.data(), x.data(), q, IC, 0.0f);
                int bad = 0;
                for (int64_t k = 0; k < IC && bad < 5; k++) {
                    for (int64_t o = 0; o < OC && bad < 5; o++) {
                        const float got = y[(size_t) (k * OC + o)], want = D[(size_t) (o * IC + k)];
                        if (got != want) {
                            ADD_FAILURE() << isa << " dq=" << dq << " bf16=" << bf16 << " W[" << o << "," << k << "] " << got
                                          << " != " << want;
                            bad++;
                        }
                    }
                }
            }
        }
    }
}

// Random x: |y - y_ref| <= IC * 2^-24 * sum_k |w_k x_k| (float summation of IC products in any
// order, products exact in double), and beta scales the old y (beta 0 never reads it).
TEST(nf4_gemv, matches_double_reference_within_summation_bound) {
    isa_guard guard;
    const int64_t OC = 70, IC = 512;   // 8 blocks a row: the 256-block scale groups straddle rows
    for (const char * isa : kIsas) {
        if (!gemm_force_isa(isa)) continue;
        for (bool dq : {false, true}) {
            const qtensor q = make_weight(OC, IC, dq, dq, 5);
            std::vector<float> D((size_t) (OC * IC));
            qtensor_rows_f32(q, 0, OC, D.data());
            for (int64_t N : {1, 2, 3, 4, 6}) {
                std::vector<float> x((size_t) (N * IC));
                rng r((uint64_t) (100 + N));
                r.fill_normal(x.data(), (int64_t) x.size(), 0.0f, 1.0f);
                for (float beta : {0.0f, 0.5f}) {
                    std::vector<float> y((size_t) (N * OC), beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : 1.0f);
                    std::vector<float> y_ref((size_t) (N * OC), 1.0f);
                    qgemv(y.data(), x.data(), q, N, beta);
                    qgemv_ref(y_ref.data(), x.data(), q, N, beta);
                    for (int64_t n = 0; n < N; n++) {
                        for (int64_t o = 0; o < OC; o++) {
                            double mag = 0.0;
                            for (int64_t k = 0; k < IC; k++) mag += std::fabs((double) D[(size_t) (o * IC + k)] * x[(size_t) (n * IC + k)]);
                            const double bound = (double) IC * 0x1p-24 * mag + 1e-7;
                            const size_t i = (size_t) (n * OC + o);
                            ASSERT_LE(std::fabs((double) y[i] - y_ref[i]), bound)
                                << isa << " dq=" << dq << " N=" << N << " beta=" << beta << " y[" << n << "," << o << "]";
                        }
                    }
                }
            }
        }
    }
}

// The oracle itself against a dot product written out here over the dequantized matrix.
TEST(nf4_gemv, reference_equals_dequantize_then_dot) {
    const int64_t OC = 5, IC = 128;
    const qtensor q = make_weight(OC, IC, true, false, 2);
    std::vector<float> D((size_t) (OC * IC)), x((size_t) IC), y((size_t) OC);
    qtensor_rows_f32(q, 0, OC, D.data());
    for (int64_t k = 0; k < IC; k++) x[(size_t) k] = (float) (k % 7) - 3.0f;
    qgemv_ref(y.data(), x.data(), q, 1, 0.0f);
    for (int64_t o = 0; o < OC; o++) {
        double s = 0.0;
        for (int64_t k = 0; k < IC; k++) s += (double) D[(size_t) (o * IC + k)] * x[(size_t) k];
        EXPECT_EQ(y[(size_t) o], (float) s) << o;
    }
}

} // namespace
