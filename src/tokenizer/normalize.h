// normalize.h: text-level helpers of the tokenizer: UTF-8 validation and repair, Unicode
// normalization forms (utf8proc), the tokenizer.json normalizers (NFC/NFD/NFKC/NFKD, Prepend,
// Replace, Lowercase, Strip, Sequence) and GPT-2's byte <-> printable-char table (ByteLevel).
// Not here: regex splitting (pretok.h) and the model (bpe.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace peft {

// True when s is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool utf8_is_valid(const char * s, size_t n);
// Byte offset of the first ill-formed byte, or n when s is valid.
size_t utf8_first_invalid(const char * s, size_t n);
// Replaces each maximal ill-formed subpart by U+FFFD (the WHATWG / Unicode "best practice"
// decoding that JavaScript's TextDecoder and Python's errors="replace" use).
std::string utf8_sanitize(const char * s, size_t n);
// Length in bytes of the UTF-8 sequence starting with lead byte c (1 for invalid leads).
inline size_t utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
}
void utf8_append(std::string & out, uint32_t cp);

enum normalizer_kind {
    PEFT_NORMALIZER_NFC,
    PEFT_NORMALIZER_NFD,
    PEFT_NORMALIZER_NFKC,
    PEFT_NORMALIZER_NFKD,
    PEFT_NORMALIZER_PREPEND,    // a = text to put in front (of non-empty input)
    PEFT_NORMALIZER_REPLACE,    // every literal a -> b
    PEFT_NORMALIZER_LOWERCASE,
    PEFT_NORMALIZER_STRIP,      // flags bit0 = left, bit1 = right (Unicode whitespace)
    PEFT_NORMALIZER_COUNT,
};

struct normalizer_step {
    normalizer_kind kind = PEFT_NORMALIZER_NFC;
    std::string a, b;
    int flags = 0;
};

// Applies the steps in order to valid UTF-8 text.
std::string normalize_apply(const std::vector<normalizer_step> & steps, const std::string & text);

// GPT-2 ByteLevel table: byte -> the code point it is shown as in vocab strings, and back
// (-1 for code points that are no byte's image).
uint32_t byte_level_char(uint8_t b);
int      byte_level_byte(uint32_t cp);
// Maps a vocab string written in byte-level chars back to raw bytes; false if some char is not
// in the table (such a token can never be produced by ByteLevel pre-tokenization).
bool byte_level_decode(const std::string & s, std::string & out);

} // namespace peft
