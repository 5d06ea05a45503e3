// normalize.cpp: UTF-8 repair, utf8proc normalization forms and the tokenizer.json normalizers.
// utf8proc is included here only (ARCHITECTURE §2). Input to normalize_apply is valid UTF-8
// (the tokenizer sanitizes first), so utf8proc never sees ill-formed text.
#include "tokenizer/normalize.h"

#include <cstdlib>
#include <cstring>

#include <utf8proc.h>

namespace peft {

// Decodes one code point at s[i..n); returns its length, or 0 for an ill-formed sequence, in
// which case *bad gets the length of the maximal ill-formed subpart (at least 1).
static size_t utf8_decode_one(const unsigned char * s, size_t i, size_t n, uint32_t * cp, size_t * bad) {
    const unsigned char c = s[i];
    if (c < 0x80) { *cp = c; return 1; }
    size_t len;
    uint32_t v;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3; v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;   // no overlongs
        if (c == 0xED) hi = 0x9F;   // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4; v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;   // <= U+10FFFF
    } else { *bad = 1; return 0; }
    for (size_t k = 1; k < len; ++k) {
        if (i + k >= n) { *bad = k; return 0; }
        const unsigned char d = s[i + k];
        const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (d < l || d > h) { *bad = k; return 0; }
        v = (v << 6) | (d & 0x3F);
    }
    *cp = v;
    return len;
}

size_t utf8_first_invalid(const char * s, size_t n) {
    const unsigned char * u = (const unsigned char *) s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) { ++i; continue; }
        uint32_t cp; size_t bad = 0;
        const size_t len = utf8_decode_one(u, i, n, &cp, &bad);
        if (!len) return i;
        i += len;
    }
    return n;
}

bool utf8_is_valid(const char * s, size_t n) { return utf8_first_invalid(s, n) == n; }

void utf8_append(std::string & out, uint32_t cp) {
    if (cp < 0x80) out.push_back((char) cp);
    else if (cp < 0x800) { out.push_back((char) (0xC0 | (cp >> 6))); out.push_back((char) (0x80 | (cp & 0x3F))); }
    else if (cp < 0x10000) {
        out.push_back((char) (0xE0 | (cp >> 12)));
        out.push_back((char) (0x80 | ((cp >> 6) & 0x3F)));
        out.push_back((char) (0x80 | (cp & 0x3F)));
    } else {
        out.push_back((char) (0xF0 | (cp >> 18)));
        out.push_back((char) (0x80 | ((cp >> 12) & 0x3F)));
        out.push_back((char) (0x80 | ((cp >> 6) & 0x3F)));
        out.push_back((char) (0x80 | (cp & 0x3F)));
    }
}

std::string utf8_sanitize(const char * s, size_t n) {
    const size_t first = utf8_first_invalid(s, n);
    if (first == n) return std::string(s, n);
    const unsigned char * u = (const unsigned char *) s;
    std::string out(s, first);
    size_t i = first;
    while (i < n) {
        uint32_t cp; size_t bad = 0;
        const size_t len = utf8_decode_one(u, i, n, &cp, &bad);
        if (len) { out.append(s + i, len); i += len; }
        else { utf8_append(out, 0xFFFD); i += bad; }
    }
    return out;
}

static std::string utf8proc_map_str(const std::string & s, int options) {
    utf8proc_uint8_t * out = nullptr;
    const utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *) s.data(), (utf8proc_ssize_t) s.size(), &out,
                                            (utf8proc_option_t) (options | UTF8PROC_STABLE));
    if (r < 0) return s;  // cannot happen on valid UTF-8; keep the text rather than lose it
    std::string res((const char *) out, (size_t) r);
    std::free(out);
    return res;
}

static bool is_ascii(const std::string & s) {
    for (unsigned char c : s) if (c >= 0x80) return false;
    return true;
}

static std::string replace_all(const std::string & s, const std::string & a, const std::string & b) {
    if (a.empty()) return s;
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    for (;;) {
        const size_t j = s.find(a, i);
        if (j == std::string::npos) break;
        out.append(s, i, j - i);
        out += b;
        i = j + a.size();
    }
    out.append(s, i, std::string::npos);
    return out;
}

std::string normalize_apply(const std::vector<normalizer_step> & steps, const std::string & text) {
    std::string s = text;
    for (const normalizer_step & st : steps) {
        switch (st.kind) {
            // ASCII is invariant under every normalization form: skip the utf8proc round trip.
            case PEFT_NORMALIZER_NFC:  if (!is_ascii(s)) s = utf8proc_map_str(s, UTF8PROC_COMPOSE); break;
            case PEFT_NORMALIZER_NFD:  if (!is_ascii(s)) s = utf8proc_map_str(s, UTF8PROC_DECOMPOSE); break;
            case PEFT_NORMALIZER_NFKC: if (!is_ascii(s)) s = utf8proc_map_str(s, UTF8PROC_COMPOSE | UTF8PROC_COMPAT); break;
            case PEFT_NORMALIZER_NFKD: if (!is_ascii(s)) s = utf8proc_map_str(s, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT); break;
            case PEFT_NORMALIZER_PREPEND: if (!s.empty()) s = st.a + s; break;
            case PEFT_NORMALIZER_REPLACE: s = replace_all(s, st.a, st.b); break;
            case PEFT_NORMALIZER_LOWERCASE: {
                std::string out;
                out.reserve(s.size());
                const unsigned char * u = (const unsigned char *) s.data();
                size_t i = 0;
                while (i < s.size()) {
                    utf8proc_int32_t cp;
                    const utf8proc_ssize_t len = utf8proc_iterate(u + i, (utf8proc_ssize_t) (s.size() - i), &cp);
                    if (len <= 0) { out.push_back(s[i]); ++i; continue; }
                    utf8_append(out, (uint32_t) utf8proc_tolower(cp));
                    i += (size_t) len;
                }
                s = std::move(out);
                break;
            }
            case PEFT_NORMALIZER_STRIP: {
                auto is_ws = [](utf8proc_int32_t cp) {
                    const utf8proc_category_t c = utf8proc_category(cp);
                    return cp == '\t' || cp == '\n' || cp == '\v' || cp == '\f' || cp == '\r' || cp == 0x85 ||
                           c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
                };
                const unsigned char * u = (const unsigned char *) s.data();
                size_t b = 0, e = s.size();
                if (st.flags & 1) {
                    while (b < e) {
                        utf8proc_int32_t cp;
                        const utf8proc_ssize_t len = utf8proc_iterate(u + b, (utf8proc_ssize_t) (e - b), &cp);
                        if (len <= 0 || !is_ws(cp)) break;
                        b += (size_t) len;
                    }
                }
                if (st.flags & 2) {
                    while (e > b) {
                        size_t k = e - 1;
                        while (k > b && (u[k] & 0xC0) == 0x80) --k;
                        utf8proc_int32_t cp;
                        const utf8proc_ssize_t len = utf8proc_iterate(u + k, (utf8proc_ssize_t) (e - k), &cp);
                        if (len <= 0 || !is_ws(cp)) break;
                        e = k;
                    }
                }
                s = s.substr(b, e - b);
                break;
            }
            case PEFT_NORMALIZER_COUNT: break;
        }
    }
    return s;
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
// take U+0100.. in byte order, so every byte has a visible, non-space character.
static bool byte_is_printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

struct byte_level_table {
    uint32_t to_char[256];
    byte_level_table() {
        int n = 0;
        for (int b = 0; b < 256; ++b) to_char[b] = byte_is_printable(b) ? (uint32_t) b : (uint32_t) (256 + n++);
    }
};
static const byte_level_table BYTE_LEVEL;

uint32_t byte_level_char(uint8_t b) { return BYTE_LEVEL.to_char[b]; }

int byte_level_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable((int) cp) ? (int) cp : -1;
    if (cp >= 256 && cp < 256 + 68) {
        // The n-th non-printable byte.
        int n = (int) cp - 256;
        for (int b = 0; b < 256; ++b) {
            if (!byte_is_printable(b) && n-- == 0) return b;
        }
    }
    return -1;
}

bool byte_level_decode(const std::string & s, std::string & out) {
    out.clear();
    const unsigned char * u = (const unsigned char *) s.data();
    size_t i = 0;
    while (i < s.size()) {
        utf8proc_int32_t cp;
        const utf8proc_ssize_t len = utf8proc_iterate(u + i, (utf8proc_ssize_t) (s.size() - i), &cp);
        if (len <= 0) return false;
        const int b = byte_level_byte((uint32_t) cp);
        if (b < 0) return false;
        out.push_back((char) b);
        i += (size_t) len;
    }
    return true;
}

} // namespace peft
