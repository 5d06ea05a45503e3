#include "core/dtype.h"

#include <algorithm>

#include "core/status.h"

namespace peft {

static const char * DTYPE_NAMES[] = {"F32", "F16", "BF16"};
static const size_t DTYPE_SIZES[] = {4, 2, 2};
static_assert(sizeof(DTYPE_NAMES) / sizeof(DTYPE_NAMES[0]) == PEFT_DTYPE_COUNT);
static_assert(sizeof(DTYPE_SIZES) / sizeof(DTYPE_SIZES[0]) == PEFT_DTYPE_COUNT);

const char * dtype_name(dtype t) { return t < PEFT_DTYPE_COUNT ? DTYPE_NAMES[t] : "?"; }
size_t dtype_size(dtype t) { PEFT_ASSERT(t < PEFT_DTYPE_COUNT); return DTYPE_SIZES[t]; }

bool dtype_from_name(const char * name, dtype * out) {
    for (int i = 0; i < PEFT_DTYPE_COUNT; i++) {
        if (std::strcmp(name, DTYPE_NAMES[i]) == 0) { *out = (dtype) i; return true; }
    }
    return false;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t) (h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {  // subnormal: normalise
            int e = -1;
            do { e++; man <<= 1; } while ((man & 0x400) == 0);
            u = sign | ((uint32_t) (127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t) (sign | 0x7e00);        // NaN
    if (absu >= 0x477ff000u) return (uint16_t) (sign | 0x7c00);       // overflow -> inf
    if (absu < 0x38800000u) {                                         // subnormal or zero
        // value * 2^24 rounded to nearest even gives the subnormal mantissa
        float a;
        std::memcpy(&a, &absu, 4);
        float scaled = a * 16777216.0f;  // exact for this range; rounding below
        uint32_t m = (uint32_t) scaled;
        float rem = scaled - (float) m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
        return (uint16_t) (sign | m);
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u);  // round mantissa to 10 bits
    return (uint16_t) (sign | ((r - 0x38000000u) >> 13));
}

void convert_to_f32(dtype t, const void * src, float * dst, size_t n) {
    switch (t) {
        case PEFT_DTYPE_F32: std::memcpy(dst, src, n * 4); break;
        case PEFT_DTYPE_BF16: {
            const uint16_t * s = (const uint16_t *) src;
            for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
        } break;
        case PEFT_DTYPE_F16: {
            const uint16_t * s = (const uint16_t *) src;
            for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
        } break;
        default: PEFT_ASSERT(false);
    }
}

void convert_from_f32(dtype t, const float * src, void * dst, size_t n) {
    switch (t) {
        case PEFT_DTYPE_F32: std::memcpy(dst, src, n * 4); break;
        case PEFT_DTYPE_BF16: {
            uint16_t * d = (uint16_t *) dst;
            for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
        } break;
        case PEFT_DTYPE_F16: {
            uint16_t * d = (uint16_t *) dst;
            for (size_t i = 0; i < n; i++) d[i] = f32_to_f16(src[i]);
        } break;
        default: PEFT_ASSERT(false);
    }
}

// Inf and NaN are exactly the values whose exponent bits are all ones, in each format. Testing
// the stored bits needs no conversion, and the branch-free loops vectorise (memcpy loads are
// fine for unaligned data).
static bool any_nonfinite(dtype t, const uint8_t * p, size_t n) {
    int bad = 0;
    if (t == PEFT_DTYPE_F32) {
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            std::memcpy(&u, p + 4 * i, 4);
            bad |= (u & 0x7f800000u) == 0x7f800000u;
        }
    } else {
        PEFT_ASSERT(t == PEFT_DTYPE_F16 || t == PEFT_DTYPE_BF16);
        const uint16_t exp = t == PEFT_DTYPE_F16 ? 0x7c00 : 0x7f80;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            std::memcpy(&h, p + 2 * i, 2);
            bad |= (h & exp) == exp;
        }
    }
    return bad != 0;
}

int64_t dtype_first_nonfinite(dtype t, const void * src, size_t n) {
    // whole blocks at full speed; the element-by-element search runs only in a bad block
    constexpr size_t BLOCK = 4096;
    const uint8_t * p = (const uint8_t *) src;
    const size_t esize = dtype_size(t);
    for (size_t b0 = 0; b0 < n; b0 += BLOCK) {
        const size_t len = std::min(BLOCK, n - b0);
        const uint8_t * block = p + b0 * esize;
        if (!any_nonfinite(t, block, len)) continue;
        for (size_t i = 0;; i++) {
            if (any_nonfinite(t, block + i * esize, 1)) return (int64_t) (b0 + i);
        }
    }
    return -1;
}

} // namespace peft
