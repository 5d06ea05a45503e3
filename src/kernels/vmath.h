// vmath.h: branch-free float math for kernel loops (internal to src/kernels/).
// glibc's expf is a scalar call unless the whole TU is built with -ffast-math, which would also
// let GCC reassociate our reductions and break bit-reproducibility. These inline versions are
// plain float arithmetic plus integer bit manipulation, so GCC vectorises a loop that calls them
// at -O3 -march=native without any fast-math flag.
#pragma once
#include <cstdint>

namespace peft::vmath {

// Bit casts through __builtin_memcpy (no <cstring> / <bit> in an internal header); GCC lowers
// them to register moves and vectorises them.
inline uint32_t float_bits(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, sizeof u);
    return u;
}
inline float bits_float(uint32_t u) {
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
}

// a*b + c, fused when Fused. Explicit so that the rounding is the same in every TU: kernels
// (-march=native, FMA in hardware) and tests built without -mfma (where __builtin_fmaf is
// libm's correctly rounded fmaf, i.e. the same result, just slower).
template <bool Fused>
inline float madd(float a, float b, float c) {
    if constexpr (Fused) {
        return __builtin_fmaf(a, b, c);
    } else {
        return a * b + c;
    }
}

#ifdef __FMA__
inline constexpr bool HAS_FMA = true;
#else
inline constexpr bool HAS_FMA = false;
#endif

// exp(x) in float, max error about 1 ulp over the normal range (test_vmath asserts the bound).
//   x = n ln2 + r, |r| <= ln2/2 (+ a little when n is rounded from an unfused product);
//   exp(r) = 1 + r + r^2 q(r), q a degree-4 Chebyshev fit of (e^r - 1 - r)/r^2 on |r| <= 0.357
//   (fit error 1.3e-8 relative, ~0.1 ulp, after rounding the coefficients to float);
//   2^n is applied as two power-of-two factors 2^(n>>1) * 2^(n - (n>>1)), each a normal float for
//   n in [-150, 129], so overflow to inf and gradual underflow to subnormals/0 come out of the
//   final IEEE multiply instead of needing branches.
// Specials: x is first clamped to [-104, 89] (exp(-104) < half the smallest subnormal, exp(89) >
// FLT_MAX), so -inf -> 0 and +inf -> inf; the clamp keeps NaN (comparisons with NaN are false)
// and NaN propagates through r to the result.
template <bool Fused>
inline float expf_impl(float x) {
    constexpr float LOG2E = 1.44269504f;
    constexpr float LN2_HI = 0.693359375f;       // 9 significant bits: n * LN2_HI is exact
    constexpr float LN2_LO = -2.12194440e-4f;    // ln2 - LN2_HI
    constexpr float SHIFT = 12582912.0f;         // 1.5 * 2^23: adding it rounds to an integer
    constexpr float C4 = 1.39283680e-3f, C3 = 8.36492795e-3f, C2 = 4.16665412e-2f, C1 = 1.66665658e-1f;
    x = x < -104.0f ? -104.0f : x;
    x = x > 89.0f ? 89.0f : x;
    // t = SHIFT + round(x log2e): the integer sits in the low mantissa bits of t
    const float t = madd<Fused>(x, LOG2E, SHIFT);
    const float n = t - SHIFT;
    // unsigned difference of the bit patterns = n (exact for |n| < 2^22; any value for NaN input,
    // whose result is NaN anyway); C++20 makes the conversion to int32 and the shifts well defined
    const int32_t ni = (int32_t) (float_bits(t) - float_bits(SHIFT));
    float r = madd<Fused>(n, -LN2_HI, x);
    r = madd<Fused>(n, -LN2_LO, r);
    float p = madd<Fused>(C4, r, C3);
    p = madd<Fused>(p, r, C2);
    p = madd<Fused>(p, r, C1);
    p = madd<Fused>(p, r, 0.5f);
    p = madd<Fused>(p, r, 1.0f);
    p = madd<Fused>(p, r, 1.0f);
    const int32_t n1 = ni >> 1, n2 = ni - n1;
    const float s1 = bits_float((uint32_t) (n1 + 127) << 23);
    const float s2 = bits_float((uint32_t) (n2 + 127) << 23);
    return p * s1 * s2;
}

inline float expf(float x) { return expf_impl<HAS_FMA>(x); }

// 1 / (1 + exp(-x)); exp(-x) = inf for x < -89 gives exactly 0, NaN stays NaN.
inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

} // namespace peft::vmath
