// hash.h: XXH64, the 64-bit variant of xxHash (Yann Collet), written here from the published
// algorithm description: a fast non-cryptographic checksum to detect corrupted files
// (checkpoints of several GB are hashed at memory speed). Digests equal the reference
// library's, so `xxhsum -H1` can check a file by hand.
// Not for security: it detects accidents (bit rot, truncation), not deliberate tampering.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace peft {

// Streaming form: update() any number of times, then digest(); the result equals xxh64() of
// the concatenated bytes.
struct xxh64_stream {
    explicit xxh64_stream(uint64_t seed = 0);
    void     update(const void * bytes, size_t n);
    uint64_t digest() const;

private:
    uint64_t acc[4];
    uint64_t seed;
    uint64_t total = 0;   // bytes seen
    uint8_t  buf[32];     // an incomplete 32-byte stripe
    size_t   buf_len = 0;
};

uint64_t xxh64(const void * bytes, size_t n, uint64_t seed = 0);

// 16 lowercase hex digits, as xxhsum prints them.
std::string xxh64_hex(uint64_t h);

} // namespace peft
