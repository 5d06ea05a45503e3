// dropout_mask.h: the deterministic dropout masks of the adapter inputs (LoRA, VeRA).
// The keep decision for element i of a module's c-th masked call is a pure function of
// (module seed, c, i): a forward recomputed before backward (gradient checkpointing) draws the
// same mask without storing it, and a resumed run continues bit for bit once the call counter
// (module state) is restored. input_dropout bundles one module's probability, seed and counter.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace peft {

inline uint64_t dropout_splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// The key of a module's mask for its `calls`-th masked call.
inline uint64_t dropout_key(uint64_t seed, uint64_t calls) { return dropout_splitmix64(seed ^ dropout_splitmix64(calls)); }

// Keep decision for element i of the call's mask: a 24-bit uniform (as rng::uniform) >= p.
inline bool dropout_keep(uint64_t key, int64_t i, float p) {
    float u = (float) (dropout_splitmix64(key + (uint64_t) i) >> 40) * (1.0f / 16777216.0f);
    return u >= p;
}

// One module's dropout of its adapter input (LoRA's lora_dropout, VeRA's vera_dropout).
struct input_dropout {
    float    p = 0.0f;
    uint64_t seed = 0;    // drawn from the init rng
    uint64_t calls = 0;   // masked calls so far; the next() after a backward starts a fresh mask

    // xd[n] = x * keep / (1 - p) with the current call's mask (xd may be x)
    void apply(const float * x, int64_t n, float * xd) const;
    // x itself when not active, else drop(x) written to buf (grown to n): the adapter's input
    const float * input(const float * x, int64_t n, bool active, std::vector<float> & buf) const;
    // dx[n] += g * keep / (1 - p): the gradient through the same mask
    void add_masked(float * dx, const float * g, int64_t n) const;
    void next() { calls++; }
    // the counter as module state text (trainer checkpoints); set_state refuses bad text
    std::string state() const { return std::to_string(calls); }
    bool set_state(const std::string & s);
};

} // namespace peft
