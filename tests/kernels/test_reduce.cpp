// test_reduce.cpp: sum of squares against a serial double sum; all_finite on NaN/Inf anywhere.
#include <cmath>

#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

TEST(reduce, sum_squares_matches_serial_double) {
    for (int64_t n : {0, 1, 7, 100003}) {
        auto x = fixed_vector(n, 9, 3.0f);
        double want = 0;
        for (float v : x) want += (double) v * v;
        const double got = sum_squares(x.data(), n);
        EXPECT_NEAR(got, want, 1e-12 * (1 + want)) << n;
        EXPECT_EQ(got, sum_squares(x.data(), n));  // same thread count: same bits
    }
}

TEST(reduce, all_finite_finds_nan_and_inf_anywhere) {
    const int64_t n = 1001;
    auto x = fixed_vector(n, 10);
    EXPECT_TRUE(all_finite(x.data(), n));
    EXPECT_TRUE(all_finite(x.data(), 0));
    for (int64_t at : {int64_t(0), int64_t(500), n - 1}) {
        for (float bad : {NAN, INFINITY, -INFINITY}) {
            auto y = x;
            y[at] = bad;
            EXPECT_FALSE(all_finite(y.data(), n)) << at << " " << bad;
        }
    }
}

} // namespace
