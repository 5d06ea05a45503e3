// test_vmath.cpp: the branch-free expf of kernels/vmath.h against std::exp in double, for both
// the fused (FMA, what -march=native kernels use) and unfused evaluation: a dense sweep of
// [-104, 89], every float near 0 and near the overflow/underflow edges, and the specials.
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "kernels/vmath.h"
#include "testing.h"

namespace {

struct err_stats {
    double max_rel = 0;      // over results >= FLT_MIN
    double max_abs_sub = 0;  // over subnormal (or zero) expected results, in units of 2^-149
    float worst_x = 0;
};

template <bool Fused>
void measure(err_stats & st, float x) {
    const double want = std::exp((double) x);
    const double got = peft::vmath::expf_impl<Fused>(x);
    if (want >= (double) FLT_MIN) {
        if (want > (double) FLT_MAX) {
            EXPECT_EQ(got, INFINITY) << "x=" << x;
            return;
        }
        const double rel = std::fabs(got - want) / want;
        if (rel > st.max_rel) st.max_rel = rel, st.worst_x = x;
    } else {
        const double abs_sub = std::fabs(got - want) / std::ldexp(1.0, -149);
        if (abs_sub > st.max_abs_sub) st.max_abs_sub = abs_sub;
    }
}

template <bool Fused>
err_stats sweep() {
    err_stats st;
    // dense even sweep of the whole finite-result range, ~6M points
    const int64_t n = 6'000'000;
    for (int64_t i = 0; i <= n; i++) measure<Fused>(st, (float) (-104.0 + 193.0 * (double) i / (double) n));
    // every float in windows where reduction and scaling are delicate: around 0 (r tiny, n = 0),
    // around +-ln2/2 (n flips), the overflow edge and the normal/subnormal edge
    for (float c : {0.0f, 0.3465736f, -0.3465736f, 88.72283f, -87.33655f, -103.2789f}) {
        float x = c;
        for (int i = 0; i < 20000; i++) x = std::nextafter(x, -INFINITY);
        for (int i = 0; i < 40000; i++, x = std::nextafter(x, INFINITY)) measure<Fused>(st, x);
    }
    // floats in [2^-30, 2^-20) and their negations (results within an ulp of 1)
    const uint32_t b0 = peft::vmath::float_bits(0x1p-30f), b1 = peft::vmath::float_bits(0x1p-20f);
    for (uint32_t b = b0; b < b1; b += 61) {  // every 61st float of them
        measure<Fused>(st, peft::vmath::bits_float(b));
        measure<Fused>(st, -peft::vmath::bits_float(b));
    }
    return st;
}

// 2 ulp of a float in [1, 2) is 2^-22; relative to the value this bounds the error by 2^-22
// everywhere in the normal range (ulp/value is largest just above a power of two).
constexpr double REL_BOUND = 0x1p-22;

TEST(vmath, expf_fused_accuracy) {
    const err_stats st = sweep<true>();
    EXPECT_LT(st.max_rel, REL_BOUND) << "worst x=" << st.worst_x;
    EXPECT_LE(st.max_abs_sub, 1.0);
    std::printf("fused:   max rel error %.3g (%.2f x 2^-24) at x=%.9g; subnormal max abs error %.2f x 2^-149\n",
                st.max_rel, st.max_rel / 0x1p-24, st.worst_x, st.max_abs_sub);
}

TEST(vmath, expf_unfused_accuracy) {
    const err_stats st = sweep<false>();
    EXPECT_LT(st.max_rel, REL_BOUND) << "worst x=" << st.worst_x;
    EXPECT_LE(st.max_abs_sub, 1.0);
    std::printf("unfused: max rel error %.3g (%.2f x 2^-24) at x=%.9g; subnormal max abs error %.2f x 2^-149\n",
                st.max_rel, st.max_rel / 0x1p-24, st.worst_x, st.max_abs_sub);
}

template <bool Fused>
void check_specials() {
    using peft::vmath::expf_impl;
    const float inf = std::numeric_limits<float>::infinity();
    EXPECT_EQ(expf_impl<Fused>(0.0f), 1.0f);
    EXPECT_EQ(expf_impl<Fused>(-0.0f), 1.0f);
    EXPECT_EQ(expf_impl<Fused>(-inf), 0.0f);
    EXPECT_EQ(expf_impl<Fused>(inf), inf);
    EXPECT_EQ(expf_impl<Fused>(-104.0f), 0.0f);
    EXPECT_EQ(expf_impl<Fused>(-1000.0f), 0.0f);
    EXPECT_EQ(expf_impl<Fused>(-FLT_MAX), 0.0f);
    EXPECT_EQ(expf_impl<Fused>(89.0f), inf);
    EXPECT_EQ(expf_impl<Fused>(FLT_MAX), inf);
    EXPECT_NEAR(expf_impl<Fused>(88.7f) / std::exp((double) 88.7f), 1.0, 1e-6);  // just below overflow
    EXPECT_GT(expf_impl<Fused>(-100.0f), 0.0f);                   // deep subnormal, not flushed
    EXPECT_TRUE(std::isnan(expf_impl<Fused>(std::numeric_limits<float>::quiet_NaN())));
    EXPECT_TRUE(std::isnan(expf_impl<Fused>(-std::numeric_limits<float>::quiet_NaN())));
}

TEST(vmath, expf_specials_fused) { check_specials<true>(); }
TEST(vmath, expf_specials_unfused) { check_specials<false>(); }

// The loop form (what kernels write, vectorised by the compiler in this TU too) gives the
// same bits as scalar calls, specials included.
TEST(vmath, expf_loop_matches_scalar) {
    std::vector<float> x;
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    for (float s : {-inf, inf, nan, -104.5f, 89.5f, 0.0f, -87.5f, 88.7f}) x.push_back(s);
    for (int i = 0; i < 1000; i++) x.push_back(-110.0f + 0.2f * (float) i);
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = peft::vmath::expf(x[i]);
    for (size_t i = 0; i < x.size(); i++) {
        volatile float xi = x[i];
        const float want = peft::vmath::expf(xi);
        if (std::isnan(want)) {
            EXPECT_TRUE(std::isnan(y[i])) << "i=" << i;
        } else {
            EXPECT_EQ(peft::vmath::float_bits(y[i]), peft::vmath::float_bits(want)) << "x=" << x[i];
        }
    }
}

TEST(vmath, sigmoid_limits) {
    EXPECT_EQ(peft::vmath::sigmoid(-200.0f), 0.0f);
    EXPECT_EQ(peft::vmath::sigmoid(200.0f), 1.0f);
    EXPECT_EQ(peft::vmath::sigmoid(0.0f), 0.5f);
    EXPECT_NEAR(peft::vmath::sigmoid(2.0f), 1.0 / (1.0 + std::exp(-2.0)), 1e-7);
}

} // namespace
