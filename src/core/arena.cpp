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
    // Large arenas (weights, activations, KV caches) on 2 MiB pages where the kernel allows
    // them (transparent_hugepage "madvise" mode): a core streams a weight matrix ~20% faster
    // without a TLB miss every 4 KiB (one Zen 4 core: 25 -> 31 GB/s). Advice only: without it
    // the memory is the same, on small pages.
    constexpr size_t HUGE_PAGE = size_t(2) << 20;
    const bool huge = bytes >= 2 * HUGE_PAGE;
    if (huge) bytes = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    base = (uint8_t *) std::aligned_alloc(huge ? HUGE_PAGE : 64, bytes);
    if (!base) return false;
    if (huge) madvise(base, bytes, MADV_HUGEPAGE);
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
