// fixture_util.h: reading PyTorch-made fixtures (tests/fixtures/*/reference.safetensors) in the
// adapter tests, the sign-invariant views used to compare singular vectors, and the dense
// delta of a factor pair.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "io/safetensors.h"

namespace peft::testing {

// Every element of tensor `name` as f32 (a test failure, and {}, when it is missing).
inline std::vector<float> fixture_tensor(const safetensors_file & f, const std::string & name) {
    const tensor_info * t = f.find(name);
    EXPECT_NE(t, nullptr) << name;
    if (!t) return {};
    std::vector<float> v((size_t) t->n_elements);
    EXPECT_TRUE(read_f32(*t, v.data()).ok());
    return v;
}

// |v| elementwise: a singular vector and its negation compare equal.
inline std::vector<float> abs_values(std::vector<float> v) {
    for (float & x : v) x = std::fabs(x);
    return v;
}

// s B A [OC,IC] in double (B [OC,r], A [r,IC]): the adapter's delta, to compare with W - W_res.
inline std::vector<double> scaled_product(const float * B, const float * A, int64_t OC, int64_t IC, int64_t r, double s) {
    std::vector<double> out((size_t) (OC * IC), 0.0);
    for (int64_t i = 0; i < OC; i++) {
        for (int64_t j = 0; j < IC; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < r; p++) acc += (double) B[i * r + p] * A[p * IC + j];
            out[(size_t) (i * IC + j)] = s * acc;
        }
    }
    return out;
}

} // namespace peft::testing
