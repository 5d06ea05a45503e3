// hash.cpp: XXH64 (hash.h). Four lanes consume 32-byte stripes; the tail and the lanes are
// folded into one word and avalanched.
#include "core/hash.h"

#include <cstdio>
#include <cstring>

namespace peft {

static constexpr uint64_t P1 = 0x9E3779B185EBCA87ull;
static constexpr uint64_t P2 = 0xC2B2AE3D27D4EB4Full;
static constexpr uint64_t P3 = 0x165667B19E3779F9ull;
static constexpr uint64_t P4 = 0x85EBCA77C2B2AE63ull;
static constexpr uint64_t P5 = 0x27D4EB2F165667C5ull;

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Little-endian loads through memcpy: the input may be unaligned (any offset in a file).
static inline uint64_t load64(const uint8_t * p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
static inline uint32_t load32(const uint8_t * p) { uint32_t v; std::memcpy(&v, p, 4); return v; }

static inline uint64_t lane_round(uint64_t acc, uint64_t input) { return rotl(acc + input * P2, 31) * P1; }
static inline uint64_t merge_round(uint64_t h, uint64_t acc) { return (h ^ lane_round(0, acc)) * P1 + P4; }

// Consumes whole stripes of p[0, n); returns the bytes consumed.
static size_t consume_stripes(uint64_t acc[4], const uint8_t * p, size_t n) {
    uint64_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];   // locals: kept in registers
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = lane_round(a0, load64(p + i));
        a1 = lane_round(a1, load64(p + i + 8));
        a2 = lane_round(a2, load64(p + i + 16));
        a3 = lane_round(a3, load64(p + i + 24));
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    return i;
}

xxh64_stream::xxh64_stream(uint64_t s) : acc{s + P1 + P2, s + P2, s, s - P1}, seed(s), buf{} {}

void xxh64_stream::update(const void * bytes, size_t n) {
    const uint8_t * p = (const uint8_t *) bytes;
    total += n;
    if (buf_len) {   // complete the pending stripe first
        const size_t take = n < 32 - buf_len ? n : 32 - buf_len;
        std::memcpy(buf + buf_len, p, take);
        buf_len += take;
        p += take;
        n -= take;
        if (buf_len < 32) return;
        consume_stripes(acc, buf, 32);
        buf_len = 0;
    }
    const size_t done = consume_stripes(acc, p, n);
    buf_len = n - done;
    if (buf_len) std::memcpy(buf, p + done, buf_len);
}

uint64_t xxh64_stream::digest() const {
    uint64_t h;
    if (total >= 32) {
        h = rotl(acc[0], 1) + rotl(acc[1], 7) + rotl(acc[2], 12) + rotl(acc[3], 18);
        for (uint64_t a : acc) h = merge_round(h, a);
    } else {
        h = seed + P5;   // short input: the lanes were never used
    }
    h += total;
    const uint8_t * p = buf;
    size_t n = buf_len;
    for (; n >= 8; p += 8, n -= 8) h = rotl(h ^ lane_round(0, load64(p)), 27) * P1 + P4;
    if (n >= 4) {
        h = rotl(h ^ (uint64_t) load32(p) * P1, 23) * P2 + P3;
        p += 4;
        n -= 4;
    }
    for (; n > 0; p++, n--) h = rotl(h ^ *p * P5, 11) * P1;
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

uint64_t xxh64(const void * bytes, size_t n, uint64_t seed) {
    xxh64_stream s(seed);
    s.update(bytes, n);
    return s.digest();
}

std::string xxh64_hex(uint64_t h) {
    char b[17];
    std::snprintf(b, sizeof b, "%016llx", (unsigned long long) h);
    return b;
}

} // namespace peft
