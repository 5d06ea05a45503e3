// dropout_mask.cpp: input_dropout (dropout_mask.h).
#include "adapters/dropout_mask.h"

#include <charconv>

namespace peft {

void input_dropout::apply(const float * x, int64_t n, float * xd) const {
    const uint64_t key = dropout_key(seed, calls);
    const float inv_keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) xd[i] = dropout_keep(key, i, p) ? x[i] * inv_keep : 0.0f;
}

const float * input_dropout::input(const float * x, int64_t n, bool active, std::vector<float> & buf) const {
    if (!active) return x;
    if ((int64_t) buf.size() < n) buf.resize((size_t) n);
    apply(x, n, buf.data());
    return buf.data();
}

void input_dropout::add_masked(float * dx, const float * g, int64_t n) const {
    const uint64_t key = dropout_key(seed, calls);
    const float inv_keep = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        if (dropout_keep(key, i, p)) dx[i] += g[i] * inv_keep;
    }
}

bool input_dropout::set_state(const std::string & s) {
    // from_chars, not stoull: the text comes from a checkpoint file, and a number above 2^64
    // must be a refusal, not an exception thrown through the loader
    uint64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return false;
    calls = v;
    return true;
}

} // namespace peft
