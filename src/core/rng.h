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
    // torch's Tensor.uniform_(from, to, generator=g) on a CPU float32 tensor, bit for bit when
    // this rng was made with the seed of g's manual_seed(k) (both are mt19937 seeded with the low
    // 32 bits of k): one 32-bit draw per element, u = (draw & (2^24 - 1)) * 2^-24, and
    // x = fma(u, to - from, from) in float after from/to are rounded to float (torch's
    // uniform_kernel). The fused multiply-add is what torch's AVX2 / AVX-512 kernels compute
    // (checked against torch 1.13); torch forced to its non-vectorised kernels
    // (ATEN_CPU_CAPABILITY=default) rounds twice and differs in the last bit of ~half the values.
    void fill_uniform_torch(float * x, int64_t n, double from, double to);

    // Serialised state, for checkpoints: 5000 bytes is enough for mt19937's text form.
    std::string save() const;
    bool        load(const std::string & s);

private:
    std::unique_ptr<rng_state> st;
};

} // namespace peft
