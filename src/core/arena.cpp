#include "core/arena.h"

#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

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

page_range release_whole_pages(void * p, size_t bytes) {
    const uintptr_t page = (uintptr_t) sysconf(_SC_PAGESIZE), begin = (uintptr_t) p, end = begin + bytes;
    const uintptr_t from = (begin + page - 1) & ~(page - 1), to = end & ~(page - 1);
    if (from >= to || madvise((void *) from, to - from, MADV_DONTNEED) != 0) return {};
    return {(uint8_t *) from, (uint8_t *) to};
}

} // namespace peft
