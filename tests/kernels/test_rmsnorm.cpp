// test_rmsnorm.cpp: forward vs the double _ref; backward (dinp, dweight, both accumulating, and a
// frozen weight with dweight == null) vs finite differences of a double forward.
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

constexpr float EPS = 1e-5f;

// out = w * x / sqrt(mean(x^2) + eps) in double; x[N,C], w[C]
double rmsnorm_loss(const double * x, const double * wt, const float * lw, int64_t N, int64_t C) {
    double L = 0;
    for (int64_t n = 0; n < N; n++) {
        double ss = 0;
        for (int64_t c = 0; c < C; c++) ss += x[n * C + c] * x[n * C + c];
        const double r = 1.0 / std::sqrt(ss / C + EPS);
        for (int64_t c = 0; c < C; c++) L += wt[c] * x[n * C + c] * r * lw[n * C + c];
    }
    return L;
}

TEST(rmsnorm, forward_matches_ref) {
    const int64_t N = 5, C = 67;
    auto x = fixed_vector(N * C, 1, 3.0f), w = fixed_vector(C, 2);
    guarded out(N * C), rstd(N);
    std::vector<float> out_ref(N * C), rstd_ref(N);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, EPS);
    rmsnorm_forward_ref(out_ref.data(), rstd_ref.data(), x.data(), w.data(), N, C, EPS);
    EXPECT_TRUE(out.intact() && rstd.intact());
    EXPECT_TRUE(check_close(out.data(), out_ref.data(), N * C, 1e-5, 1e-6, "out"));
    EXPECT_TRUE(check_close(rstd.data(), rstd_ref.data(), N, 1e-5, 0, "rstd"));
    EXPECT_LT(nmse(out.data(), out_ref.data(), N * C), 1e-12);
}

TEST(rmsnorm, backward_matches_finite_differences) {
    const int64_t N = 4, C = 70;  // C > 64: two column blocks for dweight
    auto x = fixed_vector(N * C, 3, 2.0f), w = fixed_vector(C, 4), lw = fixed_vector(N * C, 5);
    std::vector<float> out(N * C), rstd(N);
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, EPS);
    auto base_x = fixed_vector(N * C, 6), base_w = fixed_vector(C, 7);
    guarded dx(N * C), dw(C);
    for (int64_t i = 0; i < N * C; i++) dx.data()[i] = base_x[i];
    for (int64_t i = 0; i < C; i++) dw.data()[i] = base_w[i];
    rmsnorm_backward(dx.data(), dw.data(), lw.data(), x.data(), w.data(), rstd.data(), N, C);
    EXPECT_TRUE(dx.intact() && dw.intact());

    auto xd = to_double(x.data(), N * C), wd = to_double(w.data(), C);
    auto fd_x = finite_diff(xd, [&](const std::vector<double> & e) { return rmsnorm_loss(e.data(), wd.data(), lw.data(), N, C); });
    auto fd_w = finite_diff(wd, [&](const std::vector<double> & e) { return rmsnorm_loss(xd.data(), e.data(), lw.data(), N, C); });
    for (int64_t i = 0; i < N * C; i++) fd_x[i] += base_x[i];
    for (int64_t i = 0; i < C; i++) fd_w[i] += base_w[i];
    EXPECT_TRUE(check_grad(dx.data(), fd_x, 1e-3, 1e-4, "dinp"));
    EXPECT_TRUE(check_grad(dw.data(), fd_w, 1e-3, 1e-4, "dweight"));

    // frozen norm: same dinp without touching a weight gradient
    std::vector<float> dx2(base_x);
    rmsnorm_backward(dx2.data(), nullptr, lw.data(), x.data(), w.data(), rstd.data(), N, C);
    EXPECT_EQ(0, std::memcmp(dx2.data(), dx.data(), sizeof(float) * N * C));
}

} // namespace
