// test_gemv.cpp: the few-row GEMV (gemv_own, gemv_own_multi) against its double-accumulating
// oracle on every ISA this CPU runs (forced below the detected one), f32 and bf16 weights,
// exact and bf16 compute, 1..4 rows, odd sizes (tails of the 4-row blocks, of the 16/32-wide k
// steps, of the 16-row thread slices), beta 0 (must not read y) and 0.5; bit-identical results
// for 1 and 2 threads; the fused products equal to one call each.
#include <omp.h>

#include <cmath>

#include "core/dtype.h"
#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

struct isa_guard {
    ~isa_guard() { gemv_force_isa(nullptr); }
};

struct weights {
    std::vector<float> f;
    std::vector<uint16_t> h;
    weights(int64_t n, uint64_t seed) : f(fixed_vector(n, seed)), h(f.size()) {
        for (size_t i = 0; i < f.size(); i++) h[i] = f32_to_bf16(f[i]);
    }
    const void * data(dtype t) const { return t == PEFT_DTYPE_BF16 ? (const void *) h.data() : (const void *) f.data(); }
};

// {OC, IC}. 602 and 603 x 130 go to 2 threads (over 65536 weights) whose row ranges are 304 and
// 298 / 299 rows: each thread's groups walk 4 (or 2) streams and the ranges leave every
// remainder mod 4 and mod 2 for the short last group.
const int64_t kSizes[][2] = {{1, 1}, {5, 3}, {77, 130}, {33, 17}, {129, 31}, {600, 513}, {19, 64}, {602, 130}, {603, 130}};

TEST(gemv, matches_ref_on_every_isa_dtype_and_mode) {
    isa_guard guard;
    int tried = 0;
    for (const char * isa : {"avx512-bf16", "avx512", "avx2", "scalar"}) {
        if (!gemv_force_isa(isa)) continue;
        tried++;
        for (const auto & sz : kSizes) {
            const int64_t OC = sz[0], IC = sz[1];
            for (int64_t M = 1; M <= GEMV_MAX_ROWS; M++) {
                const auto x = fixed_vector(M * IC, 1);
                const weights W(OC * IC, 2);
                for (dtype wt : {PEFT_DTYPE_F32, PEFT_DTYPE_BF16}) {
                    for (bool bf16c : {false, true}) {
                        for (float beta : {0.0f, 0.5f}) {
                            guarded y(M * OC), y_ref(M * OC);
                            fixed_fill(y.data(), M * OC, 3);
                            fixed_fill(y_ref.data(), M * OC, 3);
                            if (beta == 0.0f) y.data()[0] = NAN;
                            gemv_own(y.data(), x.data(), M, wt, W.data(wt), OC, IC, beta, bf16c);
                            gemv_own_ref(y_ref.data(), x.data(), M, wt, W.data(wt), OC, IC, beta, bf16c);
                            const std::string what = std::string(isa) + " OC " + std::to_string(OC) + " IC " +
                                                     std::to_string(IC) + " M " + std::to_string(M) + (wt == PEFT_DTYPE_BF16 ? " bf16W" : " f32W") +
                                                     (bf16c ? " bf16c" : "") + " beta " + std::to_string(beta);
                            EXPECT_TRUE(y.intact()) << what;
                            EXPECT_TRUE(check_close(y.data(), y_ref.data(), M * OC, 2e-5, 2e-5, what.c_str()));
                        }
                    }
                }
            }
        }
    }
    EXPECT_GE(tried, 1);
}

// A wrong rounding of x or W under bf16 compute would still be close to the exact product; the
// oracle must see the difference (so the comparison above can fail on it).
TEST(gemv, bf16_compute_rounds_the_operands) {
    const int64_t OC = 8, IC = 40;
    const auto x = fixed_vector(IC, 4);
    const weights W(OC * IC, 5);
    std::vector<float> exact(OC), rounded(OC), fast(OC);
    gemv_own_ref(exact.data(), x.data(), 1, PEFT_DTYPE_F32, W.f.data(), OC, IC, 0.0f, false);
    gemv_own_ref(rounded.data(), x.data(), 1, PEFT_DTYPE_F32, W.f.data(), OC, IC, 0.0f, true);
    gemv_own(fast.data(), x.data(), 1, PEFT_DTYPE_F32, W.f.data(), OC, IC, 0.0f, true);
    double diff = 0;
    for (int64_t o = 0; o < OC; o++) diff = std::max(diff, (double) std::fabs(exact[(size_t) o] - rounded[(size_t) o]));
    EXPECT_GT(diff, 1e-4);
    EXPECT_TRUE(check_close(fast.data(), rounded.data(), OC, 2e-5, 2e-5, "bf16 compute"));
}

TEST(gemv, identical_for_1_and_2_threads_and_fused) {
    const int64_t IC = 300, OCs[3] = {257, 64, 1000};
    const int64_t M = 3;
    const auto x = fixed_vector(M * IC, 6);
    std::vector<weights> Ws;
    for (int i = 0; i < 3; i++) Ws.emplace_back(OCs[i] * IC, 7 + (uint64_t) i);
    for (dtype wt : {PEFT_DTYPE_F32, PEFT_DTYPE_BF16}) {
        for (bool bf16c : {false, true}) {
            std::vector<float> one[3], two[3], fused[3];
            const int saved = omp_get_max_threads();
            for (int i = 0; i < 3; i++) {
                one[i].resize((size_t) (M * OCs[i]));
                two[i].resize(one[i].size());
                fused[i].resize(one[i].size());
                omp_set_num_threads(1);
                gemv_own(one[i].data(), x.data(), M, wt, Ws[(size_t) i].data(wt), OCs[i], IC, 0.0f, bf16c);
                omp_set_num_threads(2);
                gemv_own(two[i].data(), x.data(), M, wt, Ws[(size_t) i].data(wt), OCs[i], IC, 0.0f, bf16c);
            }
            gemv_out outs[3];
            for (int i = 0; i < 3; i++) outs[i] = {fused[i].data(), wt, Ws[(size_t) i].data(wt), OCs[i], 0.0f};
            gemv_own_multi(outs, 3, x.data(), M, IC, bf16c);
            omp_set_num_threads(saved);
            for (int i = 0; i < 3; i++) {
                EXPECT_EQ(one[i], two[i]) << "output " << i;
                EXPECT_EQ(one[i], fused[i]) << "output " << i;
            }
        }
    }
}

} // namespace
