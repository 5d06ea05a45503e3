// checked.h: overflow-checked size arithmetic for parsing untrusted files.
#pragma once
#include <cstdint>

namespace peft {

inline bool checked_add(uint64_t a, uint64_t b, uint64_t * out) { return !__builtin_add_overflow(a, b, out); }
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t * out) { return !__builtin_mul_overflow(a, b, out); }

} // namespace peft
