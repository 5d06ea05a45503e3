// test_attention.cpp: causal GQA attention with packed-sample segments. Forward vs the double
// _ref (and lse vs a double log-sum-exp), backward dq/dk/dv vs finite differences of a double
// forward, segment isolation, and bit-identical backward across runs and thread counts.
#include <cmath>
#include <cstring>

#include <omp.h>

#include "kernels/kernels.h"
#include "testing.h"

using namespace peft;
using namespace peft::testing;

namespace {

struct attn_shape {
    int64_t B, T, NH, NKV, HS;
    int64_t nq() const { return B * T * NH * HS; }
    int64_t nkv() const { return B * T * NKV * HS; }
};

// Double forward written independently of the kernels: out[B*T, NH, HS], lse[B, NH, T] (optional)
void attention_double(double * out, double * lse, const double * q, const double * k, const double * v,
                      const int32_t * seg, const attn_shape & s) {
    const int64_t group = s.NH / s.NKV;
    std::vector<double> p(s.T);
    for (int64_t b = 0; b < s.B; b++) {
        for (int64_t h = 0; h < s.NH; h++) {
            for (int64_t t = 0; t < s.T; t++) {
                const double * qt = q + ((b * s.T + t) * s.NH + h) * s.HS;
                double m = -INFINITY;
                for (int64_t u = 0; u < s.T; u++) {
                    const bool visible = u <= t && (!seg || seg[b * s.T + u] == seg[b * s.T + t]);
                    const double * ku = k + ((b * s.T + u) * s.NKV + h / group) * s.HS;
                    double dot = 0;
                    for (int64_t d = 0; d < s.HS; d++) dot += qt[d] * ku[d];
                    p[u] = visible ? dot / std::sqrt((double) s.HS) : -INFINITY;
                    m = std::max(m, p[u]);
                }
                double sum = 0;
                for (int64_t u = 0; u < s.T; u++) sum += (p[u] = std::exp(p[u] - m));
                if (lse) lse[(b * s.NH + h) * s.T + t] = m + std::log(sum);
                for (int64_t d = 0; d < s.HS; d++) {
                    double acc = 0;
                    for (int64_t u = 0; u < s.T; u++) acc += p[u] * v[((b * s.T + u) * s.NKV + h / group) * s.HS + d];
                    out[((b * s.T + t) * s.NH + h) * s.HS + d] = acc / sum;
                }
            }
        }
    }
}

// two packed rows: row 0 holds samples of length 4 and 5, row 1 has non-contiguous ids
const std::vector<int32_t> SEG9 = {0, 0, 0, 0, 1, 1, 1, 1, 1, /**/ 0, 1, 0, 1, 1, 2, 2, 0, 2};

void check_forward(const attn_shape & s, const int32_t * seg) {
    auto q = fixed_vector(s.nq(), 1, 1.5f), k = fixed_vector(s.nkv(), 2, 1.5f), v = fixed_vector(s.nkv(), 3);
    guarded out(s.nq()), lse(s.B * s.NH * s.T);
    std::vector<float> out_ref(s.nq());
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), seg, s.B, s.T, s.NH, s.NKV, s.HS);
    attention_forward_ref(out_ref.data(), q.data(), k.data(), v.data(), seg, s.B, s.T, s.NH, s.NKV, s.HS);
    EXPECT_TRUE(out.intact() && lse.intact());
    EXPECT_TRUE(check_close(out.data(), out_ref.data(), s.nq(), 1e-4, 1e-5, "out"));
    EXPECT_LT(nmse(out.data(), out_ref.data(), s.nq()), 1e-11);
    auto qd = to_double(q.data(), s.nq()), kd = to_double(k.data(), s.nkv()), vd = to_double(v.data(), s.nkv());
    std::vector<double> od(s.nq()), lse_d(s.B * s.NH * s.T);
    attention_double(od.data(), lse_d.data(), qd.data(), kd.data(), vd.data(), seg, s);
    EXPECT_TRUE(check_grad(lse.data(), lse_d, 1e-5, 1e-5, "lse"));
}

TEST(attention, forward_matches_ref_gqa_with_segments) { check_forward({2, 9, 4, 2, 8}, SEG9.data()); }
TEST(attention, forward_matches_ref_causal_only) { check_forward({2, 9, 4, 2, 8}, nullptr); }
TEST(attention, forward_matches_ref_long_rows_mqa) { check_forward({1, 37, 2, 1, 64}, nullptr); }
// Query tiles of 16, 16 and 13 rows over HS = 24: AVX2 takes 16 rows as 6 + 5 + 5 and 13 as
// 6 + 6 + 1 (AVX-512: 8 + 8, 8 + 4 + 1), and 24 columns as one 16-column block + an 8-column tail.
TEST(attention, forward_matches_ref_every_register_block_tail) { check_forward({2, 45, 2, 1, 24}, nullptr); }

// Analytic grads (float kernels) vs finite differences of the double forward for
// L = sum(out * w); every gradient buffer starts non-zero to check accumulation.
void check_backward(const attn_shape & s, const int32_t * seg) {
    auto q = fixed_vector(s.nq(), 4, 1.5f), k = fixed_vector(s.nkv(), 5, 1.5f), v = fixed_vector(s.nkv(), 6);
    auto w = fixed_vector(s.nq(), 7);
    std::vector<float> out(s.nq()), lse(s.B * s.NH * s.T);
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), seg, s.B, s.T, s.NH, s.NKV, s.HS);
    auto base_q = fixed_vector(s.nq(), 8), base_kv = fixed_vector(s.nkv(), 9);
    guarded dq(s.nq()), dk(s.nkv()), dv(s.nkv());
    std::memcpy(dq.data(), base_q.data(), sizeof(float) * s.nq());
    std::memcpy(dk.data(), base_kv.data(), sizeof(float) * s.nkv());
    std::memcpy(dv.data(), base_kv.data(), sizeof(float) * s.nkv());
    attention_backward(dq.data(), dk.data(), dv.data(), w.data(), out.data(), lse.data(), q.data(), k.data(), v.data(),
                       seg, s.B, s.T, s.NH, s.NKV, s.HS);
    EXPECT_TRUE(dq.intact() && dk.intact() && dv.intact());

    // x = [q, k, v] in double
    std::vector<double> x;
    for (const auto * src : {&q, &k, &v}) x.insert(x.end(), src->begin(), src->end());
    std::vector<double> od(s.nq());
    auto fd = finite_diff(x, [&](const std::vector<double> & e) {
        attention_double(od.data(), nullptr, e.data(), e.data() + s.nq(), e.data() + s.nq() + s.nkv(), seg, s);
        double L = 0;
        for (int64_t i = 0; i < s.nq(); i++) L += od[i] * w[i];
        return L;
    });
    std::vector<double> fq(fd.begin(), fd.begin() + s.nq());
    std::vector<double> fk(fd.begin() + s.nq(), fd.begin() + s.nq() + s.nkv());
    std::vector<double> fv(fd.begin() + s.nq() + s.nkv(), fd.end());
    for (int64_t i = 0; i < s.nq(); i++) fq[i] += base_q[i];
    for (int64_t i = 0; i < s.nkv(); i++) fk[i] += base_kv[i], fv[i] += base_kv[i];
    EXPECT_TRUE(check_grad(dq.data(), fq, 1e-3, 1e-4, "dq"));
    EXPECT_TRUE(check_grad(dk.data(), fk, 1e-3, 1e-4, "dk"));
    EXPECT_TRUE(check_grad(dv.data(), fv, 1e-3, 1e-4, "dv"));
}

TEST(attention, backward_matches_finite_differences_gqa_with_segments) { check_backward({2, 9, 4, 2, 8}, SEG9.data()); }
TEST(attention, backward_matches_finite_differences_mqa_causal) { check_backward({1, 7, 3, 1, 8}, nullptr); }

// Shapes with several query tiles and key blocks plus their tails are too big for an
// element-wise FD sweep, so the gradients are checked along fixed random directions u:
// (L(x + h u) - L(x - h u)) / 2h must equal grad . u, for u on q, k and v separately.
TEST(attention, backward_directional_derivatives_multi_tile) {
    const attn_shape s{2, 37, 4, 2, 40};  // 3 query tiles (16, 16, 5), HS = 32 + a tail of 8
    std::vector<int32_t> seg(s.B * s.T);
    for (int64_t t = 0; t < s.T; t++) seg[t] = t < 20 ? 0 : 1, seg[s.T + t] = t % 11 == 3 ? 7 : 2;
    auto q = fixed_vector(s.nq(), 30, 1.5f), k = fixed_vector(s.nkv(), 31, 1.5f), v = fixed_vector(s.nkv(), 32);
    auto w = fixed_vector(s.nq(), 33);
    std::vector<float> out(s.nq()), lse(s.B * s.NH * s.T), dq(s.nq()), dk(s.nkv()), dv(s.nkv());
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), seg.data(), s.B, s.T, s.NH, s.NKV, s.HS);
    attention_backward(dq.data(), dk.data(), dv.data(), w.data(), out.data(), lse.data(), q.data(), k.data(), v.data(),
                       seg.data(), s.B, s.T, s.NH, s.NKV, s.HS);
    auto qd = to_double(q.data(), s.nq()), kd = to_double(k.data(), s.nkv()), vd = to_double(v.data(), s.nkv());
    std::vector<double> od(s.nq());
    auto loss = [&]() {
        attention_double(od.data(), nullptr, qd.data(), kd.data(), vd.data(), seg.data(), s);
        double L = 0;
        for (int64_t i = 0; i < s.nq(); i++) L += od[i] * w[i];
        return L;
    };
    struct target { std::vector<double> * x; const std::vector<float> * grad; const char * name; };
    for (const target & tg : {target{&qd, &dq, "dq"}, target{&kd, &dk, "dk"}, target{&vd, &dv, "dv"}}) {
        for (uint64_t seed : {40, 41, 42}) {
            auto u = fixed_vector((int64_t) tg.x->size(), seed);
            const double h = 1e-5;
            double analytic = 0, magnitude = 0;
            for (size_t i = 0; i < u.size(); i++) {
                analytic += (double) (*tg.grad)[i] * u[i];
                magnitude += std::fabs((double) (*tg.grad)[i] * u[i]);
            }
            for (size_t i = 0; i < u.size(); i++) (*tg.x)[i] += h * u[i];
            const double lp = loss();
            for (size_t i = 0; i < u.size(); i++) (*tg.x)[i] -= 2 * h * u[i];
            const double lm = loss();
            for (size_t i = 0; i < u.size(); i++) (*tg.x)[i] += h * u[i];
            EXPECT_NEAR(analytic, (lp - lm) / (2 * h), 1e-5 * magnitude + 1e-6) << tg.name << " seed " << seed;
        }
    }
}

TEST(attention, segments_do_not_see_each_other) {
    const attn_shape s{2, 9, 4, 2, 8};
    auto q = fixed_vector(s.nq(), 10), k = fixed_vector(s.nkv(), 11), v = fixed_vector(s.nkv(), 12);
    std::vector<float> out1(s.nq()), out2(s.nq()), lse(s.B * s.NH * s.T);
    attention_forward(out1.data(), lse.data(), q.data(), k.data(), v.data(), SEG9.data(), s.B, s.T, s.NH, s.NKV, s.HS);
    // change token t=1 of batch row 0 (segment 0) in q, k and v
    for (int64_t d = 0; d < s.NH * s.HS; d++) q[(0 * s.T + 1) * s.NH * s.HS + d] += 0.5f;
    for (int64_t d = 0; d < s.NKV * s.HS; d++) {
        k[(0 * s.T + 1) * s.NKV * s.HS + d] += 0.5f;
        v[(0 * s.T + 1) * s.NKV * s.HS + d] -= 0.5f;
    }
    attention_forward(out2.data(), lse.data(), q.data(), k.data(), v.data(), SEG9.data(), s.B, s.T, s.NH, s.NKV, s.HS);
    const int64_t row = s.NH * s.HS;
    // segment 1 of row 0 (t = 4..8) and all of row 1 are unchanged, bit for bit
    EXPECT_EQ(0, std::memcmp(out1.data() + 4 * row, out2.data() + 4 * row, sizeof(float) * (s.nq() - 4 * row)));
    // while segment 0 did change from t = 1 on (the test can fail)
    EXPECT_NE(0, std::memcmp(out1.data() + 1 * row, out2.data() + 1 * row, sizeof(float) * 3 * row));

    // and segment 1 equals the same tokens run alone as their own sequence
    const attn_shape one{1, 5, 4, 2, 8};
    std::vector<float> alone(one.nq()), lse1(one.NH * one.T);
    attention_forward(alone.data(), lse1.data(), q.data() + 4 * row, k.data() + 4 * s.NKV * s.HS,
                      v.data() + 4 * s.NKV * s.HS, nullptr, one.B, one.T, one.NH, one.NKV, one.HS);
    EXPECT_TRUE(check_close(alone.data(), out1.data() + 4 * row, one.nq(), 1e-6, 1e-7, "segment alone"));
}

TEST(attention, backward_is_deterministic_across_runs_and_thread_counts) {
    const attn_shape s{3, 9, 4, 2, 8};
    const std::vector<int32_t> seg = {0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 5, 6, 6, 6, 6, 6, 6, 6};
    auto q = fixed_vector(s.nq(), 13), k = fixed_vector(s.nkv(), 14), v = fixed_vector(s.nkv(), 15);
    auto dout = fixed_vector(s.nq(), 16);
    std::vector<float> out(s.nq()), lse(s.B * s.NH * s.T);
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), seg.data(), s.B, s.T, s.NH, s.NKV, s.HS);
    auto run = [&](std::vector<float> & g) {
        g.assign(s.nq() + 2 * s.nkv(), 0.0f);
        attention_backward(g.data(), g.data() + s.nq(), g.data() + s.nq() + s.nkv(), dout.data(), out.data(), lse.data(),
                           q.data(), k.data(), v.data(), seg.data(), s.B, s.T, s.NH, s.NKV, s.HS);
    };
    std::vector<float> a, b, c;
    run(a);
    run(b);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    run(c);
    omp_set_num_threads(saved);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), sizeof(float) * a.size()));
    EXPECT_EQ(0, std::memcmp(a.data(), c.data(), sizeof(float) * a.size()));
}

} // namespace
