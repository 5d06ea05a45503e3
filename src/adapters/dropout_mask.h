// dropout_mask.h: the deterministic dropout masks of the adapter inputs (LoRA, VeRA).
// The keep decision for element i of a module's c-th masked call is a pure function of
// (module seed, c, i): a forward recomputed before backward (gradient checkpointing) draws the
// same mask without storing it, and a resumed run continues bit for bit once the call counter
// (module state) is restored. Not here: the modules' seeds and counters (each module's own).
#pragma once
#include <cstdint>

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

} // namespace peft
