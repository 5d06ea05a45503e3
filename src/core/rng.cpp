#include "core/rng.h"

#include <cmath>
#include <random>
#include <sstream>

namespace peft {

struct rng_state {
    std::mt19937 gen;
};

rng::rng(uint64_t seed) : st(std::make_unique<rng_state>()) { st->gen.seed((uint32_t) seed); }
rng::~rng() = default;
rng::rng(const rng & other) : st(std::make_unique<rng_state>(*other.st)) {}
rng & rng::operator=(const rng & other) { *st = *other.st; return *this; }

uint32_t rng::next_u32() { return st->gen(); }

float rng::uniform() { return (float) (next_u32() & ((1u << 24) - 1)) * (1.0f / 16777216.0f); }

float rng::uniform(float lo, float hi) { return uniform() * (hi - lo) + lo; }

float rng::normal(float mean, float std) {
    // two 53-bit uniforms; u1 in (0,1] so log is finite
    auto u53 = [&] {
        uint64_t a = next_u32() >> 5, b = next_u32() >> 6;
        return (double) (a * 67108864.0 + b) / 9007199254740992.0;
    };
    double u1 = 1.0 - u53(), u2 = u53();
    double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    return (float) (mean + std * z);
}

void rng::fill_uniform(float * x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = uniform(lo, hi);
}

void rng::fill_normal(float * x, int64_t n, float mean, float std) {
    for (int64_t i = 0; i < n; i++) x[i] = normal(mean, std);
}

void rng::fill_kaiming_uniform(float * x, int64_t fan_out, int64_t fan_in, float a) {
    float gain = std::sqrt(2.0f / (1.0f + a * a));
    float bound = gain * std::sqrt(3.0f / (float) fan_in);
    fill_uniform(x, fan_out * fan_in, -bound, bound);
}

void rng::fill_uniform_torch(float * x, int64_t n, double from, double to) {
    const float lo = (float) from, width = (float) to - lo;
    for (int64_t i = 0; i < n; i++) {
        const float u = (float) (next_u32() & ((1u << 24) - 1)) * (1.0f / 16777216.0f);
        x[i] = std::fma(u, width, lo);
    }
}

std::string rng::save() const {
    std::ostringstream os;
    os << st->gen;
    return os.str();
}

bool rng::load(const std::string & s) {
    std::istringstream is(s);
    std::mt19937 g;
    is >> g;
    if (is.fail()) return false;
    st->gen = g;
    return true;
}

} // namespace peft
