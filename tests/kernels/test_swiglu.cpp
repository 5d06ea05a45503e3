// test_swiglu.cpp: silu(gate) * up against a double formula; backward (accumulating) against
// finite differences of the double forward.
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

double swiglu_ref(double g, double u) { return g / (1.0 + std::exp(-g)) * u; }

TEST(swiglu, forward_matches_double) {
    const int64_t n = 37;
    auto gate = fixed_vector(n, 1, 6.0f), up = fixed_vector(n, 2, 2.0f);
    gate[0] = -100.0f;  // exp overflow side: silu -> -0
    gate[1] = 100.0f;
    guarded out(n);
    swiglu_forward(out.data(), gate.data(), up.data(), n);
    EXPECT_TRUE(out.intact());
    std::vector<float> want(n);
    for (int64_t i = 0; i < n; i++) want[i] = (float) swiglu_ref(gate[i], up[i]);
    EXPECT_TRUE(check_close(out.data(), want.data(), n, 1e-6, 1e-7, "out"));
}

TEST(swiglu, backward_matches_finite_differences) {
    const int64_t n = 29;
    auto gate = fixed_vector(n, 3, 4.0f), up = fixed_vector(n, 4, 2.0f), w = fixed_vector(n, 5);
    auto base_g = fixed_vector(n, 6), base_u = fixed_vector(n, 7);
    guarded dgate(n), dup(n);
    for (int64_t i = 0; i < n; i++) {
        dgate.data()[i] = base_g[i];
        dup.data()[i] = base_u[i];
    }
    swiglu_backward(dgate.data(), dup.data(), w.data(), gate.data(), up.data(), n);
    EXPECT_TRUE(dgate.intact() && dup.intact());

    // x = [gate, up]; L = sum(out * w)
    std::vector<double> x(2 * n);
    for (int64_t i = 0; i < n; i++) x[i] = gate[i], x[n + i] = up[i];
    auto fd = finite_diff(x, [&](const std::vector<double> & e) {
        double L = 0;
        for (int64_t i = 0; i < n; i++) L += swiglu_ref(e[i], e[n + i]) * w[i];
        return L;
    });
    std::vector<double> fd_g(fd.begin(), fd.begin() + n), fd_u(fd.begin() + n, fd.end());
    for (int64_t i = 0; i < n; i++) fd_g[i] += base_g[i], fd_u[i] += base_u[i];
    EXPECT_TRUE(check_grad(dgate.data(), fd_g, 1e-3, 1e-4, "dgate"));
    EXPECT_TRUE(check_grad(dup.data(), fd_u, 1e-3, 1e-4, "dup"));
}

// The overwrite variant equals the accumulating one run on zeroed buffers, bit for bit, whatever
// the buffers held before (NaN here), over a length with a vector tail.
TEST(swiglu, backward_set_overwrites) {
    const int64_t n = 1000 + 13;
    auto gate = fixed_vector(n, 8, 6.0f), up = fixed_vector(n, 9, 2.0f), w = fixed_vector(n, 10);
    std::vector<float> dg0(n, 0.0f), du0(n, 0.0f);
    swiglu_backward(dg0.data(), du0.data(), w.data(), gate.data(), up.data(), n);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    guarded dg(n, nan), du(n, nan);
    swiglu_backward_set(dg.data(), du.data(), w.data(), gate.data(), up.data(), n);
    EXPECT_TRUE(dg.intact() && du.intact());
    EXPECT_EQ(0, std::memcmp(dg.data(), dg0.data(), sizeof(float) * n));
    EXPECT_EQ(0, std::memcmp(du.data(), du0.data(), sizeof(float) * n));
}

} // namespace
