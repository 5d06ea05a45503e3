// dtype.h: element types of stored tensors and the f16/bf16 <-> f32 conversions.
// Conversions are inline: they sit in the inner loops of the weight-tile converters.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace peft {

enum dtype {
    PEFT_DTYPE_F32 = 0,
    PEFT_DTYPE_F16,
    PEFT_DTYPE_BF16,
    PEFT_DTYPE_COUNT,
};
const char * dtype_name(dtype t);          // safetensors spelling: "F32", "F16", "BF16"
size_t       dtype_size(dtype t);          // bytes per element
bool         dtype_from_name(const char * name, dtype * out);

inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t) h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even, as torch's float->bfloat16 cast; NaN stays a quiet NaN.
inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t) ((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t) (u >> 16);
}

float    f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);   // round to nearest even, overflow -> inf

// Converts n elements of type t at src into f32 at dst.
void convert_to_f32(dtype t, const void * src, float * dst, size_t n);
// Converts n f32 values into type t at dst.
void convert_from_f32(dtype t, const float * src, void * dst, size_t n);

// Index of the first Inf or NaN among the n elements of type t at src (any alignment), or -1.
// Serial and vectorised: callers parallelise over tensors.
int64_t dtype_first_nonfinite(dtype t, const void * src, size_t n);

} // namespace peft
