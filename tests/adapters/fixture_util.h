// fixture_util.h: reading PyTorch-made fixtures (tests/fixtures/*/reference.safetensors) in the
// adapter tests, and the sign-invariant views used to compare singular vectors.
#pragma once
#include <cmath>
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

} // namespace peft::testing
