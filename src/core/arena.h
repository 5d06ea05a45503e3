// arena.h: one allocation per memory region (parameters, gradients, optimizer state,
// activations), handed out in 64-byte aligned slices. Plan sizes first, then allocate once.
#pragma once
#include <cstddef>
#include <cstdint>

namespace peft {

struct arena {
    arena() = default;
    ~arena();
    arena(const arena &) = delete;
    arena & operator=(const arena &) = delete;

    // Reserves `bytes` (rounded up); returns false if the system refuses the memory.
    bool   reserve(size_t bytes);
    // Next aligned slice of n floats; asserts the arena is large enough (sizes are planned).
    float * alloc_f32(size_t n);
    void *  alloc_bytes(size_t bytes);
    void    reset() { used = 0; }
    void    zero();              // memset of everything handed out so far

    uint8_t * base = nullptr;
    size_t    capacity = 0;
    size_t    used = 0;
};

inline size_t arena_align(size_t bytes) { return (bytes + 63) & ~(size_t) 63; }

// Hands the whole pages inside [p, p + bytes) back to the system (anonymous memory reads as zero
// when touched again) and returns the range released, [from, to); an empty range when no whole
// page lies inside or the system refused, in which case the memory stays as it was.
struct page_range {
    uint8_t * from = nullptr, * to = nullptr;
};
page_range release_whole_pages(void * p, size_t bytes);

} // namespace peft
