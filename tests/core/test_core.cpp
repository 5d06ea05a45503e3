#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/arena.h"
#include "core/checked.h"
#include "core/dtype.h"
#include "core/hash.h"
#include "core/rng.h"
#include "core/status.h"
#include "testing.h"

using namespace peft;

TEST(dtype, bf16_round_trip_and_rounding) {
    // exactly representable values survive
    for (float f : {0.0f, 1.0f, -2.5f, 3.140625f, 65536.0f}) EXPECT_EQ(bf16_to_f32(f32_to_bf16(f)), f);
    // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1+2^-7: ties go to even (1.0)
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);
    // 1 + 3*2^-8 is halfway between 1+2^-7 and 1+2^-6: ties go to even (1+2^-6)
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
    EXPECT_TRUE(std::isinf(bf16_to_f32(f32_to_bf16(INFINITY))));
}

TEST(dtype, f16_round_trip_and_specials) {
    for (float f : {0.0f, 1.0f, -2.5f, 0.333251953125f, 65504.0f, 6.103515625e-05f /*min normal*/,
                    5.960464477539063e-08f /*min subnormal*/}) {
        EXPECT_EQ(f16_to_f32(f32_to_f16(f)), f) << f;
    }
    EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(70000.0f))));
    EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
    EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
    EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even
    EXPECT_EQ(f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);
    // every f16 bit pattern that is not NaN converts back to itself
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = f16_to_f32((uint16_t) h);
        if (std::isnan(f)) continue;
        ASSERT_EQ(f32_to_f16(f), h) << h;
    }
}

TEST(dtype, names) {
    dtype t;
    ASSERT_TRUE(dtype_from_name("BF16", &t));
    EXPECT_EQ(t, PEFT_DTYPE_BF16);
    EXPECT_FALSE(dtype_from_name("Q4_0", &t));
    EXPECT_EQ(dtype_size(PEFT_DTYPE_F16), 2u);
}

TEST(rng, deterministic_and_in_range) {
    rng a(42), b(42), c(43);
    std::vector<float> x(1000), y(1000), z(1000);
    a.fill_uniform(x.data(), 1000, -1, 1);
    b.fill_uniform(y.data(), 1000, -1, 1);
    c.fill_uniform(z.data(), 1000, -1, 1);
    EXPECT_EQ(0, std::memcmp(x.data(), y.data(), 4000));
    EXPECT_NE(0, std::memcmp(x.data(), z.data(), 4000));
    for (float v : x) { EXPECT_GE(v, -1.0f); EXPECT_LT(v, 1.0f); }
    // mt19937 reference value: the 10000th output for the default seed 5489 is 4123659995
    rng d(5489);
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++) v = d.next_u32();
    EXPECT_EQ(v, 4123659995u);
}

TEST(rng, normal_moments_and_state_round_trip) {
    rng r(7);
    std::vector<float> x(200000);
    r.fill_normal(x.data(), (int64_t) x.size(), 1.0f, 2.0f);
    double m = 0, v = 0;
    for (float f : x) m += f;
    m /= x.size();
    for (float f : x) v += (f - m) * (f - m);
    v /= x.size();
    EXPECT_NEAR(m, 1.0, 0.02);
    EXPECT_NEAR(std::sqrt(v), 2.0, 0.02);
    std::string s = r.save();
    float next = r.uniform();
    rng q(0);
    ASSERT_TRUE(q.load(s));
    EXPECT_EQ(q.uniform(), next);
}

TEST(arena, aligned_slices) {
    arena a;
    ASSERT_TRUE(a.reserve(1000));
    float * p = a.alloc_f32(3);
    float * q = a.alloc_f32(5);
    EXPECT_EQ((uintptr_t) p % 64, 0u);
    EXPECT_EQ((uintptr_t) q % 64, 0u);
    EXPECT_EQ(q - p, 16);
}

TEST(checked, overflow) {
    uint64_t out;
    EXPECT_TRUE(checked_mul(1ull << 31, 1ull << 31, &out));
    EXPECT_FALSE(checked_mul(1ull << 32, 1ull << 32, &out));
    EXPECT_FALSE(checked_add(~0ull, 1, &out));
}

TEST(status, messages) {
    status st = make_mismatch(PEFT_STATUS_SHAPE, "model.safetensors", "tensor lm_head.weight shape", "[64, 32]", "[32, 64]");
    EXPECT_FALSE(st.ok());
    EXPECT_EQ(st.message, "model.safetensors: tensor lm_head.weight shape: expected [64, 32], got [32, 64]");
    EXPECT_STREQ(status_code_name(PEFT_STATUS_IO), "io error");
}

// Digests of the reference xxHash library (libxxhash 0.8, XXH64) for bytes 0, 1, 2, ... (mod 256):
// every code path (short input, 4/8-byte tails, whole stripes, a seed).
TEST(hash, xxh64_matches_the_reference_library) {
    std::vector<uint8_t> d(1000);
    for (size_t i = 0; i < d.size(); i++) d[i] = (uint8_t) i;
    EXPECT_EQ(xxh64_hex(xxh64(d.data(), 0)), "ef46db3751d8e999");
    EXPECT_EQ(xxh64_hex(xxh64(d.data(), 3)), "e5c7bb4533bc65dd");
    EXPECT_EQ(xxh64_hex(xxh64(d.data(), 37)), "d93fa2dfee5c24c9");
    EXPECT_EQ(xxh64_hex(xxh64(d.data(), 1000)), "6ef436b00eba4078");
    EXPECT_EQ(xxh64_hex(xxh64(d.data(), 1000, 42)), "4e0da20a99a1e783");
    const char * text = "Nobody inspects the spammish repetition";
    EXPECT_EQ(xxh64(text, std::strlen(text)), 0xfbcea83c8a378bf1ull);
}

TEST(hash, xxh64_stream_equals_one_shot_for_any_split) {
    std::vector<uint8_t> d(300);
    for (size_t i = 0; i < d.size(); i++) d[i] = (uint8_t) (i * 131 + 7);
    for (size_t chunk : {1, 5, 31, 32, 33, 100}) {
        xxh64_stream s(9);
        for (size_t i = 0; i < d.size(); i += chunk) s.update(d.data() + i, std::min(chunk, d.size() - i));
        EXPECT_EQ(s.digest(), xxh64(d.data(), d.size(), 9)) << "chunk " << chunk;
    }
}
