// test_rope.cpp: inverse-frequency tables (default and Llama 3, recomputed here in double from the
// HF formula), the rotation against a double reference, and backward against finite differences.
#include <cmath>
#include <numbers>

#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

TEST(rope, default_inv_freq) {
    const int64_t HS = 64;
    rope_config cfg;
    cfg.theta = 10000.0f;
    guarded f(HS / 2);
    rope_inv_freq(f.data(), cfg, HS);
    EXPECT_TRUE(f.intact());
    for (int64_t i = 0; i < HS / 2; i++) EXPECT_NEAR(f.data()[i], std::pow(10000.0, -2.0 * i / HS), 1e-7 * 1.0) << i;
    EXPECT_EQ(f.data()[0], 1.0f);
}

TEST(rope, llama3_inv_freq) {
    const int64_t HS = 64;
    rope_config cfg;
    cfg.theta = 500000.0f;
    cfg.llama3 = true;
    cfg.factor = 32.0f;
    cfg.low_freq_factor = 1.0f;
    cfg.high_freq_factor = 4.0f;
    cfg.original_max_position = 8192;
    std::vector<float> f(HS / 2);
    rope_inv_freq(f.data(), cfg, HS);
    int kept = 0, divided = 0, blended = 0;
    for (int64_t i = 0; i < HS / 2; i++) {
        const double base = std::pow(500000.0, -2.0 * i / HS);
        const double wavelen = 2 * std::numbers::pi / base;
        double want;
        if (wavelen < 8192.0 / 4.0) {
            want = base, kept++;
        } else if (wavelen > 8192.0 / 1.0) {
            want = base / 32.0, divided++;
        } else {
            const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
            want = (1 - smooth) * base / 32.0 + smooth * base, blended++;
        }
        EXPECT_NEAR(f[i], want, 2e-7 * want) << i;
    }
    // the three bands are all exercised by this configuration
    EXPECT_GT(kept, 0);
    EXPECT_GT(divided, 0);
    EXPECT_GT(blended, 0);
}

// out = rotate(x) in double with the kernel's f32 angle; x[N, nh, HS]
void rope_ref(double * y, const double * x, const int32_t * pos, const float * inv_freq, int64_t N, int64_t nh, int64_t HS) {
    const int64_t half = HS / 2;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t h = 0; h < nh; h++) {
            for (int64_t i = 0; i < half; i++) {
                const double a = (double) ((float) pos[n] * inv_freq[i]);
                const double x1 = x[(n * nh + h) * HS + i], x2 = x[(n * nh + h) * HS + half + i];
                y[(n * nh + h) * HS + i] = x1 * std::cos(a) - x2 * std::sin(a);
                y[(n * nh + h) * HS + half + i] = x2 * std::cos(a) + x1 * std::sin(a);
            }
        }
    }
}

TEST(rope, forward_matches_double_and_position_zero_is_identity) {
    const int64_t N = 5, nh = 3, HS = 8, n_el = N * nh * HS;
    const std::vector<int32_t> pos = {0, 1, 2, 0, 7};  // restarts: a packed second sample
    rope_config cfg;
    std::vector<float> f(HS / 2);
    rope_inv_freq(f.data(), cfg, HS);
    auto x = fixed_vector(n_el, 1);
    guarded y(n_el);
    for (int64_t i = 0; i < n_el; i++) y.data()[i] = x[i];
    rope_forward(y.data(), pos.data(), f.data(), N, nh, HS);
    EXPECT_TRUE(y.intact());
    auto xd = to_double(x.data(), n_el);
    std::vector<double> want(n_el);
    rope_ref(want.data(), xd.data(), pos.data(), f.data(), N, nh, HS);
    EXPECT_TRUE(check_grad(y.data(), want, 1e-5, 1e-6, "rope"));
    for (int64_t i = 0; i < nh * HS; i++) {
        EXPECT_EQ(y.data()[i], x[i]);
        EXPECT_EQ(y.data()[3 * nh * HS + i], x[3 * nh * HS + i]);
    }
}

TEST(rope, backward_matches_finite_differences_and_inverts_forward) {
    const int64_t N = 4, nh = 2, HS = 140, n_el = N * nh * HS;  // HS/2 = 70 > 64: two frequency chunks
    const std::vector<int32_t> pos = {3, 11, 0, 250};
    rope_config cfg;
    cfg.theta = 500000.0f;
    std::vector<float> f(HS / 2);
    rope_inv_freq(f.data(), cfg, HS);
    auto x = fixed_vector(n_el, 2), w = fixed_vector(n_el, 3);
    guarded dx(n_el);
    for (int64_t i = 0; i < n_el; i++) dx.data()[i] = w[i];  // dout = w for L = sum(rope(x) * w)
    rope_backward(dx.data(), pos.data(), f.data(), N, nh, HS);
    EXPECT_TRUE(dx.intact());
    auto xd = to_double(x.data(), n_el);
    std::vector<double> y(n_el);
    auto fd = finite_diff(xd, [&](const std::vector<double> & e) {
        rope_ref(y.data(), e.data(), pos.data(), f.data(), N, nh, HS);
        double L = 0;
        for (int64_t i = 0; i < n_el; i++) L += y[i] * w[i];
        return L;
    });
    EXPECT_TRUE(check_grad(dx.data(), fd, 1e-3, 1e-4, "dx"));

    auto z = x;
    rope_forward(z.data(), pos.data(), f.data(), N, nh, HS);
    rope_backward(z.data(), pos.data(), f.data(), N, nh, HS);
    EXPECT_TRUE(check_close(z.data(), x.data(), n_el, 1e-5, 1e-6, "backward(forward(x))"));
}

} // namespace
