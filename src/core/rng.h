// rng.h: the one deterministic random generator of peft.cpp.
// mt19937 (bit-exact by the C++ standard on every platform) with torch's float mapping for
// uniform draws (24 random bits / 2^24), so a seed gives the same numbers everywhere.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace peft {

struct rng_state;  // opaque; holds the mt19937 state

struct rng {
    explicit rng(uint64_t seed = 0);
    ~rng();
    rng(const rng & other);
    rng & operator=(const rng & other);

    uint32_t next_u32();
    float    uniform();                       // [0, 1)
    float    uniform(float lo, float hi);     // [lo, hi)
    float    normal(float mean, float std);   // Box-Muller in double

    void fill_uniform(float * x, int64_t n, float lo, float hi);
    void fill_normal(float * x, int64_t n, float mean, float std);
    // kaiming_uniform_(a) on a [fan_out, fan_in] matrix: bound = sqrt(6 / ((1 + a^2) fan_in))
    void fill_kaiming_uniform(float * x, int64_t fan_out, int64_t fan_in, float a);

    // Serialised state, for checkpoints: 5000 bytes is enough for mt19937's text form.
    std::string save() const;
    bool        load(const std::string & s);

private:
    std::unique_ptr<rng_state> st;
};

} // namespace peft
