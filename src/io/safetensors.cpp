// safetensors.cpp: validation-first safetensors reader, sharded-checkpoint index, atomic writer.
// Check order follows the reference `SafeTensors::read_metadata` / `Metadata::validate`
// (FORMATS.md "Validating untrusted files"), so a file rejected there is rejected here, plus
// the stricter spec rules. Every check has a handcrafted-corruption case in
// tests/io/test_safetensors.cpp.
#include "io/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sys/stat.h>

#include "core/checked.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/mmap.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace peft {

// ---- dtypes -------------------------------------------------------------------------------

static const char * ST_DTYPE_NAMES[] = {
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
    "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
};
static const uint32_t ST_DTYPE_BITS[] = {
    8, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 64, 64, 64, 64,
};
static_assert(sizeof(ST_DTYPE_NAMES) / sizeof(ST_DTYPE_NAMES[0]) == SAFETENSORS_DTYPE_COUNT);
static_assert(sizeof(ST_DTYPE_BITS) / sizeof(ST_DTYPE_BITS[0]) == SAFETENSORS_DTYPE_COUNT);

const char * safetensors_dtype_name(safetensors_dtype t) {
    return t >= 0 && t < SAFETENSORS_DTYPE_COUNT ? ST_DTYPE_NAMES[t] : "?";
}

uint32_t safetensors_dtype_bits(safetensors_dtype t) {
    PEFT_ASSERT(t >= 0 && t < SAFETENSORS_DTYPE_COUNT);
    return ST_DTYPE_BITS[t];
}

bool safetensors_dtype_from_name(const std::string & name, safetensors_dtype * out) {
    for (int i = 0; i < SAFETENSORS_DTYPE_COUNT; i++) {
        if (name == ST_DTYPE_NAMES[i]) {
            *out = (safetensors_dtype) i;
            return true;
        }
    }
    return false;
}

safetensors_dtype safetensors_dtype_from_dtype(dtype t) {
    switch (t) {
        case PEFT_DTYPE_F32: return SAFETENSORS_DTYPE_F32;
        case PEFT_DTYPE_F16: return SAFETENSORS_DTYPE_F16;
        case PEFT_DTYPE_BF16: return SAFETENSORS_DTYPE_BF16;
        default: break;
    }
    PEFT_ASSERT(false);
    return SAFETENSORS_DTYPE_COUNT;
}

static bool st_dtype_to_dtype(safetensors_dtype t, dtype * out) {
    switch (t) {
        case SAFETENSORS_DTYPE_F32: *out = PEFT_DTYPE_F32; return true;
        case SAFETENSORS_DTYPE_F16: *out = PEFT_DTYPE_F16; return true;
        case SAFETENSORS_DTYPE_BF16: *out = PEFT_DTYPE_BF16; return true;
        default: return false;
    }
}

// ---- message helpers ----------------------------------------------------------------------

// Names come from untrusted files: escape control bytes and cut long ones so a message stays
// one readable line.
static std::string printable(const std::string & s, size_t max_len = 200) {
    std::string r;
    for (size_t i = 0; i < s.size() && i < max_len; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c < 0x20 || c == 0x7f) {
            static const char * HEX = "0123456789abcdef";
            r += "\\x";
            r += HEX[c >> 4];
            r += HEX[c & 15];
        } else {
            r += (char) c;
        }
    }
    if (s.size() > max_len) r += "...";
    return r;
}

std::string tensor_label(const std::string & name) { return "tensor '" + printable(name) + "'"; }

static std::string shape_str(const std::vector<int64_t> & shape) {
    std::string r = "[";
    for (size_t i = 0; i < shape.size(); i++) {
        if (i) r += ", ";
        r += std::to_string(shape[i]);
    }
    return r + "]";
}

static std::string offsets_str(uint64_t b, uint64_t e) {
    return "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "]";
}

std::string tensor_info::describe() const {
    return std::string(safetensors_dtype_name(st_dtype)) + " " + shape_str(shape);
}

// ---- tensor data access -------------------------------------------------------------------

status tensor_require_float(const tensor_info & t) {
    if (t.is_float) return {};
    return make_mismatch(PEFT_STATUS_SHAPE, t.file, tensor_label(t.name) + ": dtype", "F32, F16 or BF16",
                         std::string(safetensors_dtype_name(t.st_dtype)) + " (unsupported as a float tensor)");
}

status tensor_require_finite(const tensor_info & t) {
    PEFT_TRY(tensor_require_float(t));
    const int64_t bad = dtype_first_nonfinite(t.type, t.data, (size_t) t.n_elements);
    if (bad < 0) return {};
    float v = 0.0f;
    PEFT_TRY(read_f32_range(t, (uint64_t) bad, 1, &v));
    std::vector<int64_t> index(t.shape.size());   // row-major coordinates of element `bad`
    int64_t rest = bad;
    for (size_t d = index.size(); d-- > 0;) {
        index[d] = rest % t.shape[d];
        rest /= t.shape[d];
    }
    status st = make_error(PEFT_STATUS_NUMERIC, t.file,
                           tensor_label(t.name) + " (" + t.describe() + ") holds " + (std::isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf") +
                               " at element " + std::to_string(bad) + " (index " + shape_str(index) + "); the first non-finite value");
    st.hint = "the file is damaged or holds the weights of a diverged training run; re-download it or use an earlier checkpoint";
    return st;
}

status read_f32_range(const tensor_info & t, uint64_t first, uint64_t count, float * dst) {
    PEFT_TRY(tensor_require_float(t));
    uint64_t last;
    if (!checked_add(first, count, &last) || last > t.n_elements) {
        return make_mismatch(PEFT_STATUS_ARGUMENT, t.file, tensor_label(t.name) + ": element range",
                             "within " + std::to_string(t.n_elements) + " elements",
                             "[" + std::to_string(first) + ", +" + std::to_string(count) + ")");
    }
    if (count == 0) return {};
    const size_t esize = dtype_size(t.type);
    const uint8_t * src = (const uint8_t *) t.data + first * esize;
    if (t.type == PEFT_DTYPE_F32) {
        std::memcpy(dst, src, count * 4);  // memcpy: fine for unaligned sources
        return {};
    }
    // 16-bit types: convert in place when aligned, else bounce through an aligned buffer.
    if ((uintptr_t) src % 2 == 0) {
        convert_to_f32(t.type, src, dst, count);
        return {};
    }
    uint16_t tmp[1024];
    for (uint64_t i = 0; i < count; i += 1024) {
        uint64_t n = std::min<uint64_t>(1024, count - i);
        std::memcpy(tmp, src + i * 2, n * 2);
        convert_to_f32(t.type, tmp, dst + i, n);
    }
    return {};
}

status read_f32(const tensor_info & t, float * dst) { return read_f32_range(t, 0, t.n_elements, dst); }

// ---- lookup ---------------------------------------------------------------------------------

const tensor_info * safetensors_file::find(const std::string & name) const {
    auto it = std::lower_bound(by_name.begin(), by_name.end(), name,
                               [&](uint32_t i, const std::string & n) { return tensors[i].name < n; });
    if (it == by_name.end() || tensors[*it].name != name) return nullptr;
    return &tensors[*it];
}

const std::string * safetensors_file::metadata_get(const std::string & key) const {
    for (const auto & kv : metadata) {
        if (kv.first == key) return &kv.second;
    }
    return nullptr;
}

std::vector<std::string> safetensors_file::names() const {
    std::vector<std::string> r;
    r.reserve(by_name.size());
    for (uint32_t i : by_name) r.push_back(tensors[i].name);
    return r;
}

const tensor_info * safetensors_model::find(const std::string & name) const {
    auto it = std::lower_bound(tensor_names.begin(), tensor_names.end(), name);
    if (it == tensor_names.end() || *it != name) return nullptr;
    const location & loc = locations[(size_t) (it - tensor_names.begin())];
    return &shards[loc.shard].tensors[loc.tensor];
}

// ---- parsing ----------------------------------------------------------------------------

// Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF), as Rust's str::from_utf8.
// Returns the offset of the first invalid byte, or n if all valid.
static size_t utf8_invalid_at(const uint8_t * s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
        else return i;
        if (n - i < len) return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff)) {
            return i;
        }
        i += len;
    }
    return n;
}

// A JSON integer in [0, 2^64): nlohmann keeps the full unsigned range; json_value exposes
// int64 only, so values above INT64_MAX are read back from the number's text.
static bool json_u64(const json_value & v, uint64_t * out) {
    if (!v.is_integer()) return false;
    int64_t x = v.as_int(-1);
    if (x >= 0) {
        *out = (uint64_t) x;
        return true;
    }
    std::string text = v.dump();
    if (text.empty() || text[0] == '-') return false;
    char * end = nullptr;
    unsigned long long u = std::strtoull(text.c_str(), &end, 10);
    if (end != text.c_str() + text.size()) return false;
    *out = (uint64_t) u;
    return true;
}

static std::string json_brief(const json_value & v) {
    std::string d = v.dump();
    return d.size() > 60 ? d.substr(0, 60) + "..." : d;
}

// Parses one header entry (name already checked) into t; offsets go to *begin/*end.
static status parse_tensor_entry(const std::string & where, const std::string & name, const json_value & v,
                                 tensor_info & t, uint64_t * begin, uint64_t * end) {
    const std::string label = tensor_label(name);
    if (!v.is_object()) {
        return make_mismatch(PEFT_STATUS_FORMAT, where, label, "an object with dtype, shape, data_offsets",
                             json_brief(v));
    }
    // Unknown extra fields are ignored, as serde does in the reference reader.
    json_value jd = v.get("dtype"), js = v.get("shape"), jo = v.get("data_offsets");
    if (!jd.valid()) return make_error(PEFT_STATUS_FORMAT, where, label + ": missing field 'dtype'");
    if (!js.valid()) return make_error(PEFT_STATUS_FORMAT, where, label + ": missing field 'shape'");
    if (!jo.valid()) return make_error(PEFT_STATUS_FORMAT, where, label + ": missing field 'data_offsets'");

    if (!jd.is_string()) return make_mismatch(PEFT_STATUS_FORMAT, where, label + ": dtype", "a string", json_brief(jd));
    std::string dname = jd.as_string();
    if (!safetensors_dtype_from_name(dname, &t.st_dtype)) {
        return make_error(PEFT_STATUS_FORMAT, where, label + ": unknown dtype '" + printable(dname, 40) + "'");
    }
    t.bits = safetensors_dtype_bits(t.st_dtype);
    t.is_float = st_dtype_to_dtype(t.st_dtype, &t.type);

    if (!js.is_array()) return make_mismatch(PEFT_STATUS_FORMAT, where, label + ": shape", "an array", json_brief(js));
    if (js.size() > (size_t) SAFETENSORS_MAX_DIMS) {
        return make_mismatch(PEFT_STATUS_FORMAT, where, label + ": shape", "at most " + std::to_string(SAFETENSORS_MAX_DIMS) + " dims",
                             std::to_string(js.size()) + " dims");
    }
    t.shape.clear();
    for (size_t d = 0; d < js.size(); d++) {
        json_value e = js.at(d);
        uint64_t dim;
        if (!json_u64(e, &dim) || dim > (uint64_t) INT64_MAX) {
            return make_mismatch(PEFT_STATUS_FORMAT, where, label + ": shape[" + std::to_string(d) + "]",
                                 "a non-negative integer", json_brief(e));
        }
        t.shape.push_back((int64_t) dim);
    }

    if (!jo.is_array() || jo.size() != 2) {
        return make_mismatch(PEFT_STATUS_FORMAT, where, label + ": data_offsets", "an array [begin, end]", json_brief(jo));
    }
    for (size_t k = 0; k < 2; k++) {
        if (!json_u64(jo.at(k), k == 0 ? begin : end)) {
            return make_mismatch(PEFT_STATUS_FORMAT, where, label + ": data_offsets[" + std::to_string(k) + "]",
                                 "a non-negative integer", json_brief(jo.at(k)));
        }
    }
    return {};
}

static status parse_into(const uint8_t * data, size_t n, const std::string & where, safetensors_file & out) {
    out.path = where;

    // 1. header length
    if (n < 8) {
        return make_mismatch(PEFT_STATUS_FORMAT, where, "file size", "at least 8 bytes (the header length)",
                             std::to_string(n) + " bytes");
    }
    uint64_t hlen;
    std::memcpy(&hlen, data, 8);  // little-endian host (static_assert above)
    if (hlen > SAFETENSORS_MAX_HEADER_SIZE) {
        return make_mismatch(PEFT_STATUS_FORMAT, where, "header length", "at most 100000000 bytes",
                             std::to_string(hlen) + " bytes");
    }
    // 2. header inside the file
    uint64_t data_start;
    if (!checked_add(8, hlen, &data_start) || data_start > n) {
        status st = make_mismatch(PEFT_STATUS_FORMAT, where, "header length " + std::to_string(hlen),
                                  "the header to fit in the file (" + std::to_string(n) + " bytes)",
                                  "it would end at byte " + std::to_string(data_start) + " (truncated file?)");
        st.hint = "the file is incomplete or not a safetensors file";
        return st;
    }
    const uint8_t * header = data + 8;
    out.header_size = hlen;

    // 3. header text: '{' first (spec rule the reference does not enforce yet), UTF-8, JSON
    if (hlen == 0 || header[0] != '{') {
        std::string got = hlen == 0 ? "an empty header" : "first byte 0x";
        if (hlen != 0) {
            static const char * HEX = "0123456789abcdef";
            got += HEX[header[0] >> 4];
            got += HEX[header[0] & 15];
        }
        return make_mismatch(PEFT_STATUS_FORMAT, where, "header", "a JSON object starting with '{'", got);
    }
    size_t bad = utf8_invalid_at(header, (size_t) hlen);
    if (bad != hlen) {
        return make_error(PEFT_STATUS_FORMAT, where, "header: invalid UTF-8 at header byte " + std::to_string(bad));
    }
    json_document doc;
    PEFT_TRY(doc.parse((const char *) header, (size_t) hlen, where + ": header"));
    json_value root = doc.root();
    if (!root.is_object()) {  // cannot happen after the '{' check, kept for clarity
        return make_mismatch(PEFT_STATUS_FORMAT, where, "header", "a JSON object", json_brief(root));
    }

    // schema: {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}
    std::vector<uint64_t> begins, ends;
    const size_t n_members = root.size();
    for (size_t i = 0; i < n_members; i++) {
        std::string key = root.key_at(i);
        json_value v = root.value_at(i);
        if (key == "__metadata__") {
            if (v.is_null()) continue;  // serde reads null as "no metadata" (Option::None)
            if (!v.is_object()) {
                return make_mismatch(PEFT_STATUS_FORMAT, where, "__metadata__", "an object of strings", json_brief(v));
            }
            for (size_t m = 0; m < v.size(); m++) {
                json_value mv = v.value_at(m);
                std::string mk = v.key_at(m);
                if (!mv.is_string()) {
                    return make_mismatch(PEFT_STATUS_FORMAT, where, "__metadata__ '" + printable(mk) + "'", "a string value",
                                         json_brief(mv));
                }
                out.metadata.emplace_back(std::move(mk), mv.as_string());
            }
            continue;
        }
        if (key.size() > SAFETENSORS_MAX_NAME_LENGTH) {
            return make_mismatch(PEFT_STATUS_FORMAT, where, tensor_label(key) + ": name length",
                                 "at most " + std::to_string(SAFETENSORS_MAX_NAME_LENGTH) + " bytes",
                                 std::to_string(key.size()) + " bytes");
        }
        if (key.find('\0') != std::string::npos) {
            return make_error(PEFT_STATUS_FORMAT, where, tensor_label(key) + ": name contains a NUL byte");
        }
        tensor_info t;
        uint64_t b = 0, e = 0;
        PEFT_TRY(parse_tensor_entry(where, key, v, t, &b, &e));
        t.name = std::move(key);
        t.file = where;
        t.offset = b;
        out.tensors.push_back(std::move(t));
        begins.push_back(b);
        ends.push_back(e);
    }
    if (out.tensors.size() > UINT32_MAX) return make_error(PEFT_STATUS_FORMAT, where, "too many tensors");

    // 4./5. sort by offsets; contiguous from 0, sizes match shape x dtype
    std::vector<uint32_t> order(out.tensors.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = (uint32_t) i;
    std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
        if (begins[a] != begins[b]) return begins[a] < begins[b];
        if (ends[a] != ends[b]) return ends[a] < ends[b];
        return out.tensors[a].name < out.tensors[b].name;
    });
    uint64_t prev_end = 0;
    const std::string * prev_name = nullptr;
    for (uint32_t idx : order) {
        tensor_info & t = out.tensors[idx];
        const uint64_t b = begins[idx], e = ends[idx];
        const std::string label = tensor_label(t.name) + ": " + offsets_str(b, e);
        if (e < b) return make_mismatch(PEFT_STATUS_FORMAT, where, label, "end >= begin", "end < begin");
        if (b != prev_end) {
            std::string expected = "begin " + std::to_string(prev_end) +
                                   (prev_name ? " (the end of " + tensor_label(*prev_name) + ")" : " (the first tensor)");
            std::string got = std::to_string(b) + (b > prev_end ? " (a gap)" : " (overlaps the previous tensor)");
            return make_mismatch(PEFT_STATUS_FORMAT, where, label, expected, got);
        }
        uint64_t nel = 1;
        for (int64_t d : t.shape) {
            if (!checked_mul(nel, (uint64_t) d, &nel)) {
                return make_error(PEFT_STATUS_FORMAT, where,
                                  tensor_label(t.name) + ": shape " + shape_str(t.shape) + ": element count overflows 64 bits");
            }
        }
        uint64_t nbits;
        if (!checked_mul(nel, t.bits, &nbits)) {
            return make_error(PEFT_STATUS_FORMAT, where,
                              tensor_label(t.name) + ": " + t.describe() + ": size in bits overflows 64 bits");
        }
        if (nbits % 8 != 0) {
            return make_mismatch(PEFT_STATUS_FORMAT, where, tensor_label(t.name) + ": " + t.describe(),
                                 "a whole number of bytes", std::to_string(nbits) + " bits (misaligned sub-byte tensor)");
        }
        const uint64_t nbytes = nbits / 8;
        if (e - b != nbytes) {
            return make_mismatch(PEFT_STATUS_FORMAT, where, label, std::to_string(nbytes) + " bytes for " + t.describe(),
                                 std::to_string(e - b));
        }
        t.n_elements = nel;
        t.n_bytes = nbytes;
        prev_end = e;
        prev_name = &t.name;
    }

    // 6. the tensors must cover the byte buffer exactly: no truncation, no trailing bytes
    uint64_t covered;
    if (!checked_add(prev_end, data_start, &covered) || covered != n) {
        const uint64_t avail = n - data_start;
        std::string got = std::to_string(avail) + " bytes in the file";
        if (prev_end > avail) {
            got += " (truncated: " + std::to_string(prev_end - avail) + " bytes missing)";
        } else {
            got += " (" + std::to_string(avail - prev_end) + " trailing bytes)";
        }
        status st = make_mismatch(PEFT_STATUS_FORMAT, where, "data buffer",
                                  std::to_string(prev_end) + " bytes (the end of the last tensor)", got);
        st.hint = prev_end > avail ? "the file is incomplete: re-download or re-copy it"
                                   : "extra bytes after the tensors are not allowed (polyglot files)";
        return st;
    }

    // all offsets now lie inside [data_start, n): set the views
    const uint8_t * buffer = data + data_start;
    for (size_t i = 0; i < out.tensors.size(); i++) {
        tensor_info & t = out.tensors[i];
        t.data = buffer + t.offset;
        uint32_t esize = t.bits / 8;  // 0 for the 4/6-bit types
        t.aligned = esize != 0 && (uintptr_t) t.data % esize == 0;
    }
    // file order = offset order
    {
        std::vector<tensor_info> sorted;
        sorted.reserve(out.tensors.size());
        for (uint32_t idx : order) sorted.push_back(std::move(out.tensors[idx]));
        out.tensors = std::move(sorted);
    }
    // name index; duplicates are already rejected as duplicate JSON keys, checked again here
    // because find() relies on uniqueness
    out.by_name.resize(out.tensors.size());
    for (size_t i = 0; i < out.by_name.size(); i++) out.by_name[i] = (uint32_t) i;
    std::sort(out.by_name.begin(), out.by_name.end(),
              [&](uint32_t a, uint32_t b) { return out.tensors[a].name < out.tensors[b].name; });
    for (size_t i = 1; i < out.by_name.size(); i++) {
        if (out.tensors[out.by_name[i]].name == out.tensors[out.by_name[i - 1]].name) {
            return make_error(PEFT_STATUS_FORMAT, where, "duplicate " + tensor_label(out.tensors[out.by_name[i]].name));
        }
    }
    return {};
}

// On failure `out` is left empty, never half-filled.
status safetensors_parse(const uint8_t * data, size_t n, const std::string & where, safetensors_file & out) {
    safetensors_file f;
    status s = parse_into(data, n, where, f);
    out = s.ok() ? std::move(f) : safetensors_file();
    return s;
}

status safetensors_open(const std::string & path, safetensors_file & out) {
    out = safetensors_file();
    auto map = std::make_shared<mapped_file>();
    PEFT_TRY(map->open(path));
    PEFT_TRY(safetensors_parse(map->data, map->size, path, out));
    out.mapping = std::move(map);
    return {};
}

// ---- sharded checkpoints ------------------------------------------------------------------

static bool path_exists(const std::string & p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0;
}

// Shard names come from an untrusted index: a plain file name inside the model directory.
static bool plain_file_name(const std::string & s) {
    return !s.empty() && s != "." && s != ".." && s.size() <= 1024 && s.find('/') == std::string::npos &&
           s.find('\0') == std::string::npos;
}

static status open_model_into(const std::string & dir, safetensors_model & out) {
    out.dir = dir;
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0) return make_error(PEFT_STATUS_IO, dir, "model directory not found");
    if (!S_ISDIR(st.st_mode)) return make_error(PEFT_STATUS_IO, dir, "not a directory");

    const std::string index_path = dir + "/model.safetensors.index.json";
    const std::string single_path = dir + "/model.safetensors";
    if (!path_exists(index_path)) {
        if (!path_exists(single_path)) {
            status s = make_error(PEFT_STATUS_IO, dir,
                                  "no safetensors model: looked for model.safetensors.index.json and model.safetensors");
            s.hint = "pass the directory that holds the HF checkpoint (config.json, *.safetensors)";
            return s;
        }
        out.shards.emplace_back();
        PEFT_TRY(safetensors_open(single_path, out.shards[0]));
        const safetensors_file & f = out.shards[0];
        for (uint32_t i : f.by_name) {
            out.tensor_names.push_back(f.tensors[i].name);
            out.locations.push_back({0, i});
        }
        return {};
    }

    out.index_path = index_path;
    json_document doc;
    PEFT_TRY(doc.parse_file(index_path, SAFETENSORS_MAX_HEADER_SIZE));
    json_value root = doc.root();
    if (!root.is_object()) return make_mismatch(PEFT_STATUS_FORMAT, index_path, "top level", "an object", json_brief(root));
    json_value wm = root.get("weight_map");
    if (!wm.valid()) return make_error(PEFT_STATUS_FORMAT, index_path, "missing field 'weight_map'");
    if (!wm.is_object()) {
        return make_mismatch(PEFT_STATUS_FORMAT, index_path, "weight_map", "an object {tensor: shard file}", json_brief(wm));
    }

    // (name, shard index) pairs; shards opened once each, in order of first mention
    std::vector<std::string> shard_names;
    std::vector<std::pair<std::string, uint32_t>> entries;
    const size_t n_entries = wm.size();
    entries.reserve(n_entries);
    for (size_t i = 0; i < n_entries; i++) {
        std::string name = wm.key_at(i);
        json_value v = wm.value_at(i);
        if (!v.is_string()) {
            return make_mismatch(PEFT_STATUS_FORMAT, index_path, "weight_map " + tensor_label(name), "a shard file name",
                                 json_brief(v));
        }
        std::string shard = v.as_string();
        if (!plain_file_name(shard)) {
            return make_mismatch(PEFT_STATUS_FORMAT, index_path, "weight_map " + tensor_label(name),
                                 "a plain file name in the model directory", "'" + printable(shard) + "'");
        }
        uint32_t si = 0;
        while (si < shard_names.size() && shard_names[si] != shard) si++;
        if (si == shard_names.size()) shard_names.push_back(shard);
        entries.emplace_back(std::move(name), si);
    }
    out.shards.resize(shard_names.size());
    for (size_t si = 0; si < shard_names.size(); si++) {
        status s = safetensors_open(dir + "/" + shard_names[si], out.shards[si]);
        if (!s.ok()) {
            s.message += " (shard listed in " + index_path + ")";
            return s;
        }
    }
    std::sort(entries.begin(), entries.end());
    for (const auto & [name, si] : entries) {
        const safetensors_file & f = out.shards[si];
        const tensor_info * t = f.find(name);
        if (!t) {
            return make_error(PEFT_STATUS_FORMAT, index_path,
                              "weight_map " + tensor_label(name) + " is mapped to shard '" + printable(shard_names[si]) +
                                  "', which does not contain it");
        }
        out.tensor_names.push_back(name);
        out.locations.push_back({si, (uint32_t) (t - f.tensors.data())});
    }
    return {};
}

status safetensors_open_model(const std::string & dir, safetensors_model & out) {
    safetensors_model m;
    status s = open_model_into(dir, m);
    out = s.ok() ? std::move(m) : safetensors_model();
    return s;
}

// ---- writing ----------------------------------------------------------------------------

namespace {
struct prepared_write {
    std::string header;               // 8-byte length + padded JSON
    std::vector<uint32_t> order;      // write order into the tensors vector
    std::vector<uint64_t> sizes;      // bytes per tensor (indexed like tensors)
};
} // namespace

static status prepare_write(const std::vector<safetensors_tensor_to_write> & tensors,
                            const std::vector<std::pair<std::string, std::string>> & metadata, const std::string & where,
                            prepared_write & p) {
    const size_t nt = tensors.size();
    std::vector<safetensors_dtype> types(nt);
    p.sizes.assign(nt, 0);
    for (size_t i = 0; i < nt; i++) {
        const auto & t = tensors[i];
        const std::string label = tensor_label(t.name);
        // the same rules as the reader (which, like the reference, allows an empty name)
        if (t.name.size() > SAFETENSORS_MAX_NAME_LENGTH || t.name.find('\0') != std::string::npos ||
            t.name == "__metadata__") {
            return make_error(PEFT_STATUS_ARGUMENT, where, label + ": invalid tensor name");
        }
        if (!t.raw_dtype.empty()) {
            if (!safetensors_dtype_from_name(t.raw_dtype, &types[i])) {
                return make_error(PEFT_STATUS_ARGUMENT, where, label + ": unknown dtype '" + printable(t.raw_dtype) + "'");
            }
        } else {
            if (t.type < 0 || t.type >= PEFT_DTYPE_COUNT) return make_error(PEFT_STATUS_ARGUMENT, where, label + ": bad dtype");
            types[i] = safetensors_dtype_from_dtype(t.type);
        }
        if (t.shape.size() > (size_t) SAFETENSORS_MAX_DIMS) {
            return make_error(PEFT_STATUS_ARGUMENT, where, label + ": more than 8 dims");
        }
        uint64_t nel = 1;
        for (int64_t d : t.shape) {
            if (d < 0 || !checked_mul(nel, (uint64_t) d, &nel)) {
                return make_error(PEFT_STATUS_ARGUMENT, where, label + ": bad shape " + shape_str(t.shape));
            }
        }
        uint64_t nbits;
        if (!checked_mul(nel, safetensors_dtype_bits(types[i]), &nbits) || nbits % 8 != 0) {
            return make_error(PEFT_STATUS_ARGUMENT, where, label + ": size of " + shape_str(t.shape) + " is not a whole number of bytes");
        }
        p.sizes[i] = nbits / 8;
        if (p.sizes[i] > 0 && !t.data) return make_error(PEFT_STATUS_ARGUMENT, where, label + ": no data");
    }
    p.order.resize(nt);
    for (size_t i = 0; i < nt; i++) p.order[i] = (uint32_t) i;
    std::sort(p.order.begin(), p.order.end(), [&](uint32_t a, uint32_t b) {
        if (types[a] != types[b]) return types[a] > types[b];
        return tensors[a].name < tensors[b].name;
    });
    {   // equal names of different dtypes are not adjacent in write order: check by name
        std::vector<uint32_t> by_name(p.order);
        std::sort(by_name.begin(), by_name.end(), [&](uint32_t a, uint32_t b) { return tensors[a].name < tensors[b].name; });
        for (size_t i = 1; i < nt; i++) {
            if (tensors[by_name[i]].name == tensors[by_name[i - 1]].name) {
                return make_error(PEFT_STATUS_ARGUMENT, where, "duplicate " + tensor_label(tensors[by_name[i]].name));
            }
        }
    }
    for (size_t i = 0; i < metadata.size(); i++) {
        for (size_t j = 0; j < i; j++) {
            if (metadata[i].first == metadata[j].first) {
                return make_error(PEFT_STATUS_ARGUMENT, where, "duplicate __metadata__ key '" + printable(metadata[i].first) + "'");
            }
        }
    }

    // JSON like serde_json's compact output: __metadata__ first, then tensors in write order
    std::string js = "{";
    bool first = true;
    if (!metadata.empty()) {
        js += "\"__metadata__\":{";
        for (size_t i = 0; i < metadata.size(); i++) {
            if (i) js += ',';
            js += json_quote(metadata[i].first);
            js += ':';
            js += json_quote(metadata[i].second);
        }
        js += '}';
        first = false;
    }
    uint64_t offset = 0;
    for (uint32_t i : p.order) {
        const auto & t = tensors[i];
        if (!first) js += ',';
        first = false;
        js += json_quote(t.name);
        js += ":{\"dtype\":\"";
        js += safetensors_dtype_name(types[i]);
        js += "\",\"shape\":[";
        for (size_t d = 0; d < t.shape.size(); d++) {
            if (d) js += ',';
            js += std::to_string(t.shape[d]);
        }
        js += "],\"data_offsets\":[";
        js += std::to_string(offset);
        js += ',';
        if (!checked_add(offset, p.sizes[i], &offset)) return make_error(PEFT_STATUS_ARGUMENT, where, "total size overflows");
        js += std::to_string(offset);
        js += "]}";
    }
    js += '}';
    js.append((8 - js.size() % 8) % 8, ' ');  // data starts 8-aligned
    if (js.size() > SAFETENSORS_MAX_HEADER_SIZE) {
        return make_error(PEFT_STATUS_ARGUMENT, where, "header would exceed 100000000 bytes (too many tensors or metadata)");
    }
    uint64_t hlen = js.size();
    p.header.resize(8);
    std::memcpy(p.header.data(), &hlen, 8);
    p.header += js;
    return {};
}

status safetensors_serialize(const std::vector<safetensors_tensor_to_write> & tensors,
                             const std::vector<std::pair<std::string, std::string>> & metadata, std::string & out) {
    prepared_write p;
    PEFT_TRY(prepare_write(tensors, metadata, "safetensors_serialize", p));
    out = std::move(p.header);
    for (uint32_t i : p.order) {
        if (p.sizes[i]) out.append((const char *) tensors[i].data, (size_t) p.sizes[i]);
    }
    return {};
}

status safetensors_write(const std::string & path, const std::vector<safetensors_tensor_to_write> & tensors,
                         const std::vector<std::pair<std::string, std::string>> & metadata) {
    prepared_write p;
    PEFT_TRY(prepare_write(tensors, metadata, path, p));
    atomic_file f;
    PEFT_TRY(f.open(path));
    PEFT_TRY(f.write(p.header.data(), p.header.size()));
    for (uint32_t i : p.order) {
        if (p.sizes[i]) PEFT_TRY(f.write(tensors[i].data, (size_t) p.sizes[i]));
    }
    return f.commit();
}

} // namespace peft
