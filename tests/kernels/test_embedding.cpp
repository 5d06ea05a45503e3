// test_embedding.cpp: lookup rows exactly; the scatter-add gradient with repeated tokens against
// finite differences, accumulation into a non-zero dwte, and sentinels around both outputs.
#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

TEST(embedding, forward_copies_rows) {
    const int64_t V = 6, C = 13, N = 5;
    const std::vector<int32_t> tokens = {3, 0, 3, 5, 1};
    auto wte = fixed_vector(V * C, 1);
    guarded out(N * C);
    embedding_forward(out.data(), tokens.data(), wte.data(), N, C);
    EXPECT_TRUE(out.intact());
    for (int64_t n = 0; n < N; n++) {
        for (int64_t c = 0; c < C; c++) ASSERT_EQ(out.data()[n * C + c], wte[tokens[n] * C + c]);
    }
}

TEST(embedding, backward_matches_finite_differences_with_repeats) {
    const int64_t V = 6, C = 70, N = 7;  // C > 64 exercises two column blocks
    const std::vector<int32_t> tokens = {3, 0, 3, 5, 1, 3, 0};
    auto wte = fixed_vector(V * C, 2);
    auto w = fixed_vector(N * C, 3);  // L = sum(out * w), so dout = w
    guarded dwte(V * C);
    auto base = fixed_vector(V * C, 4);
    for (int64_t i = 0; i < V * C; i++) dwte.data()[i] = base[i];
    embedding_backward(dwte.data(), w.data(), tokens.data(), N, C, V);
    EXPECT_TRUE(dwte.intact());

    auto x = to_double(wte.data(), V * C);
    auto fd = finite_diff(x, [&](const std::vector<double> & e) {
        double L = 0;
        for (int64_t n = 0; n < N; n++) {
            for (int64_t c = 0; c < C; c++) L += e[tokens[n] * C + c] * w[n * C + c];
        }
        return L;
    });
    for (int64_t i = 0; i < V * C; i++) fd[i] += base[i];  // backward accumulates
    EXPECT_TRUE(check_grad(dwte.data(), fd, 1e-4, 1e-5, "dwte"));
    // row 2 and 4 are never used: their gradient is exactly the pre-existing value
    for (int64_t c = 0; c < C; c++) EXPECT_EQ(dwte.data()[2 * C + c], base[2 * C + c]);
}

} // namespace
