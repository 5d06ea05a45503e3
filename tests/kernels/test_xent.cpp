// test_xent.cpp: fused softmax + cross-entropy. Losses vs the double _ref (ignored rows, several
// vocabulary chunks, large offsets), dlogits vs finite differences of a double loss (times
// dscale), in-place use (dlogits aliasing logits), and the no-gradient path.
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

// sum_i (logsumexp(x_i) - x_i[target_i]) over non-ignored rows, in double
double xent_double(const double * x, const int32_t * targets, int64_t n, int64_t V) {
    double L = 0;
    for (int64_t i = 0; i < n; i++) {
        if (targets[i] == -100) continue;
        double m = -INFINITY, sum = 0;
        for (int64_t j = 0; j < V; j++) m = std::max(m, x[i * V + j]);
        for (int64_t j = 0; j < V; j++) sum += std::exp(x[i * V + j] - m);
        L += m + std::log(sum) - x[i * V + targets[i]];
    }
    return L;
}

// Logits that grow along the vocabulary, so later chunks raise the running max (rescale path),
// offset by 1000 so a naive exp would overflow.
std::vector<float> rising_logits(int64_t n, int64_t V) {
    auto x = fixed_vector(n * V, 21, 4.0f);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < V; j++) x[i * V + j] += 1000.0f + 8.0f * (float) j / (float) V;
    }
    return x;
}

TEST(xent, losses_match_ref_small_and_chunked) {
    for (int64_t V : {37, 5000}) {
        const int64_t n = 5;
        const std::vector<int32_t> targets = {3, -100, 0, (int32_t) V - 1, 17};
        auto x = V == 37 ? fixed_vector(n * V, 20, 5.0f) : rising_logits(n, V);
        guarded losses(n), losses2(n);
        std::vector<float> ref(n);
        xent_forward(losses.data(), nullptr, x.data(), targets.data(), n, V, 1.0f);
        xent_forward_ref(ref.data(), x.data(), targets.data(), n, V);
        EXPECT_TRUE(losses.intact());
        EXPECT_TRUE(check_close(losses.data(), ref.data(), n, 1e-5, 1e-5, "losses")) << V;
        EXPECT_EQ(losses.data()[1], 0.0f);
        // asking for gradients does not change the losses
        std::vector<float> dl(n * V);
        xent_forward(losses2.data(), dl.data(), x.data(), targets.data(), n, V, 1.0f);
        EXPECT_EQ(0, std::memcmp(losses.data(), losses2.data(), sizeof(float) * n));
    }
}

TEST(xent, dlogits_match_finite_differences_with_dscale_and_ignored_rows) {
    const int64_t n = 4, V = 37;
    const float dscale = 0.25f;
    const std::vector<int32_t> targets = {5, -100, 36, 0};
    auto x = fixed_vector(n * V, 22, 3.0f);
    guarded dl(n * V, 7.0f);  // stale values: xent writes (not accumulates) every element
    std::vector<float> losses(n);
    xent_forward(losses.data(), dl.data(), x.data(), targets.data(), n, V, dscale);
    EXPECT_TRUE(dl.intact());
    auto xd = to_double(x.data(), n * V);
    auto fd = finite_diff(xd, [&](const std::vector<double> & e) { return dscale * xent_double(e.data(), targets.data(), n, V); });
    EXPECT_TRUE(check_grad(dl.data(), fd, 1e-3, 1e-5, "dlogits"));
    for (int64_t j = 0; j < V; j++) EXPECT_EQ(dl.data()[1 * V + j], 0.0f);  // ignored row
}

TEST(xent, chunked_gradient_in_place_matches_double_softmax) {
    const int64_t n = 3, V = 5000;  // three vocabulary chunks
    const float dscale = 0.5f;
    const std::vector<int32_t> targets = {4999, 0, 2500};
    auto x = rising_logits(n, V);
    std::vector<float> dl(n * V), losses(n), losses_inplace(n);
    xent_forward(losses.data(), dl.data(), x.data(), targets.data(), n, V, dscale);
    std::vector<double> want(n * V);
    for (int64_t i = 0; i < n; i++) {
        double m = -INFINITY, sum = 0;
        for (int64_t j = 0; j < V; j++) m = std::max(m, (double) x[i * V + j]);
        for (int64_t j = 0; j < V; j++) sum += std::exp(x[i * V + j] - m);
        for (int64_t j = 0; j < V; j++) {
            want[i * V + j] = dscale * (std::exp(x[i * V + j] - m) / sum - (j == targets[i] ? 1.0 : 0.0));
        }
    }
    EXPECT_TRUE(check_grad(dl.data(), want, 1e-4, 1e-9, "dlogits"));
    // in place: the logits buffer becomes dlogits, with identical bits
    auto y = x;
    xent_forward(losses_inplace.data(), y.data(), y.data(), targets.data(), n, V, dscale);
    EXPECT_EQ(0, std::memcmp(y.data(), dl.data(), sizeof(float) * n * V));
    EXPECT_EQ(0, std::memcmp(losses.data(), losses_inplace.data(), sizeof(float) * n));
}

} // namespace
