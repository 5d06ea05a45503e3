#include "core/arena.h"

#include <cstdlib>
#include <cstring>

#include "core/status.h"

namespace peft {

arena::~arena() { std::free(base); }

bool arena::reserve(size_t bytes) {
    std::free(base);
    base = nullptr;
    capacity = used = 0;
    bytes = arena_align(bytes);
    if (bytes == 0) return true;
    base = (uint8_t *) std::aligned_alloc(64, bytes);
    if (!base) return false;
    capacity = bytes;
    return true;
}

void * arena::alloc_bytes(size_t bytes) {
    bytes = arena_align(bytes);
    PEFT_ASSERT(used + bytes <= capacity);
    void * p = base + used;
    used += bytes;
    return p;
}

float * arena::alloc_f32(size_t n) { return (float *) alloc_bytes(n * sizeof(float)); }

void arena::zero() { if (used) std::memset(base, 0, used); }

} // namespace peft
