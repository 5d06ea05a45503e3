// gguf_read.cpp: the GGUF reader and its validation (see gguf_read.h; ggml's gguf.cpp
// gguf_init_from_file_impl is the reference for what a valid file is).
#include "io/gguf_read.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <unordered_set>

#include "core/checked.h"

namespace peft {

namespace {

// Bytes of one value of a scalar type; 0 for string / array / unknown.
size_t value_size(uint32_t t) {
    switch (t) {
        case GGUF_VALUE_UINT8: case GGUF_VALUE_INT8: case GGUF_VALUE_BOOL: return 1;
        case GGUF_VALUE_UINT16: case GGUF_VALUE_INT16: return 2;
        case GGUF_VALUE_UINT32: case GGUF_VALUE_INT32: case GGUF_VALUE_FLOAT32: return 4;
        case GGUF_VALUE_UINT64: case GGUF_VALUE_INT64: case GGUF_VALUE_FLOAT64: return 8;
        default: return 0;
    }
}

// One bounded cursor over the header: every read is checked against what remains.
struct cursor {
    const uint8_t * p;
    uint64_t        remain;
    std::string     where;

    status need(uint64_t n, const std::string & what) const {
        if (n > remain) {
            status st = make_error(PEFT_STATUS_FORMAT, where, what + ": needs " + std::to_string(n) + " bytes, only " +
                                   std::to_string(remain) + " left in the file");
            st.hint = "the file is truncated or a count / length in it is corrupt";
            return st;
        }
        return {};
    }
    template <typename T> status read(T & v, const std::string & what) {
        PEFT_TRY(need(sizeof(T), what));
        std::memcpy(&v, p, sizeof(T));   // little-endian, unaligned
        p += sizeof(T);
        remain -= sizeof(T);
        return {};
    }
    status read_str(std::string_view & s, uint64_t cap, const std::string & what) {
        uint64_t n = 0;
        PEFT_TRY(read(n, what + " length"));
        if (n > cap) {
            return make_error(PEFT_STATUS_FORMAT, where, what + ": length " + std::to_string(n) + " is over the limit of " +
                              std::to_string(cap) + " bytes");
        }
        PEFT_TRY(need(n, what));
        s = std::string_view((const char *) p, (size_t) n);
        p += n;
        remain -= n;
        return {};
    }
    status skip(uint64_t n, const std::string & what) {
        PEFT_TRY(need(n, what));
        p += n;
        remain -= n;
        return {};
    }
};

std::string key_label(const std::string & key) { return "key '" + key + "'"; }
std::string tensor_label(const std::string & name) { return "tensor '" + name + "'"; }

status read_kv(cursor & c, gguf_kv & kv) {
    std::string_view key;
    PEFT_TRY(c.read_str(key, GGUF_MAX_KEY, "metadata key"));
    if (key.empty()) return make_error(PEFT_STATUS_FORMAT, c.where, "empty metadata key");
    kv.key = std::string(key);
    const std::string what = key_label(kv.key);
    PEFT_TRY(c.read(kv.type, what + " type"));
    if (kv.type >= GGUF_VALUE_COUNT) {
        return make_error(PEFT_STATUS_FORMAT, c.where, what + ": unknown value type " + std::to_string(kv.type));
    }
    kv.elem_type = kv.type;
    if (kv.type == GGUF_VALUE_ARRAY) {
        PEFT_TRY(c.read(kv.elem_type, what + " element type"));
        if (kv.elem_type >= GGUF_VALUE_COUNT || kv.elem_type == GGUF_VALUE_ARRAY) {
            return make_error(PEFT_STATUS_FORMAT, c.where, what + ": unknown or nested array element type " + std::to_string(kv.elem_type));
        }
        PEFT_TRY(c.read(kv.count, what + " array length"));
        if (kv.count > GGUF_MAX_ARRAY) {
            return make_error(PEFT_STATUS_FORMAT, c.where, what + ": array of " + std::to_string(kv.count) + " elements is over the limit of 2^30");
        }
    }
    if (kv.elem_type == GGUF_VALUE_STRING) {
        // each string is at least its 8-byte length: refuse a count the file cannot hold before reserving
        PEFT_TRY(c.need(kv.count * 8, what + " strings"));
        kv.strs.resize((size_t) kv.count);
        for (uint64_t i = 0; i < kv.count; i++) PEFT_TRY(c.read_str(kv.strs[(size_t) i], GGUF_MAX_STRING, what + " string"));
        return {};
    }
    kv.data = c.p;
    return c.skip(kv.count * value_size(kv.elem_type), what + " value");   // count <= 2^30, size <= 8: no overflow
}

status read_tensor_info(cursor & c, gguf_tensor_view & t) {
    std::string_view name;
    PEFT_TRY(c.read_str(name, GGUF_MAX_STRING, "tensor name"));
    if (name.empty() || name.size() > GGUF_MAX_NAME) {
        return make_error(PEFT_STATUS_FORMAT, c.where, "tensor name '" + std::string(name.substr(0, 80)) + "': names are 1 to " +
                          std::to_string(GGUF_MAX_NAME) + " bytes, got " + std::to_string(name.size()));
    }
    t.name = std::string(name);
    const std::string what = tensor_label(t.name);
    uint32_t n_dims = 0;
    PEFT_TRY(c.read(n_dims, what + " n_dims"));
    if (n_dims < 1 || n_dims > (uint32_t) GGUF_MAX_DIMS) {
        return make_error(PEFT_STATUS_FORMAT, c.where, what + ": " + std::to_string(n_dims) + " dims (GGUF tensors have 1 to 4)");
    }
    t.ne.resize(n_dims);
    for (uint32_t d = 0; d < n_dims; d++) PEFT_TRY(c.read(t.ne[d], what + " shape"));
    uint32_t type = 0;
    PEFT_TRY(c.read(type, what + " type"));
    PEFT_TRY(c.read(t.offset, what + " offset"));
    if (!gguf_tensor_type_known(type)) {
        status st = make_error(PEFT_STATUS_FORMAT, c.where, what + ": unknown ggml type " + std::to_string(type));
        st.hint = "peft.cpp reads F32, F16, BF16 and the Q4_0..Q8_K block types; IQ* and newer types are not known";
        return st;
    }
    t.type = (gguf_tensor_type) type;
    status st = gguf_tensor_nbytes(t.type, t.ne, what, &t.nbytes);   // negative dims, overflow, ne[0] % block
    if (!st.ok()) {
        st.code = PEFT_STATUS_FORMAT;   // file content, not a model mismatch
        st.message = c.where + ": " + st.message;
    }
    return st;
}

// Whether data at p can be read in place as elements of type t (block types are read bytewise).
bool aligned_for(const uint8_t * p, gguf_tensor_type t) {
    const size_t a = gguf_tensor_type_block(t) == 1 ? gguf_tensor_type_block_bytes(t) : 1;
    return ((uintptr_t) p % a) == 0;
}

} // namespace

const char * gguf_value_type_name(uint32_t t) {
    static const char * names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
    return t < GGUF_VALUE_COUNT ? names[t] : "?";
}

status gguf_parse(const uint8_t * data, size_t n, const std::string & where, gguf_file & out) {
    out = gguf_file();
    out.path = where;
    cursor c{data, (uint64_t) n, where};
    char magic[4] = {};
    PEFT_TRY(c.read(magic, "GGUF header"));
    if (std::memcmp(magic, "GGUF", 4) != 0) {
        char shown[5] = {};
        for (int i = 0; i < 4; i++) shown[i] = magic[i] >= 32 && magic[i] < 127 ? magic[i] : '?';
        status st = make_error(PEFT_STATUS_FORMAT, where, std::string("bad magic \"") + shown + "\" (a GGUF file starts with \"GGUF\")");
        st.hint = "is this a GGUF file? peft reads GGUF models and LoRA adapters as written by llama.cpp's converters or peft export";
        return st;
    }
    PEFT_TRY(c.read(out.version, "GGUF version"));
    if (out.version < 2 || out.version > 3) {
        status st = make_error(PEFT_STATUS_FORMAT, where, "GGUF version " + std::to_string(out.version) + " is not supported (2 and 3 are)");
        if (out.version > 0xFFFF) st.hint = "the version looks byte-swapped: a big-endian GGUF file? only little-endian files are read";
        else if (out.version < 2) st.hint = "GGUF v1 files predate llama.cpp's current format; convert the model again";
        return st;
    }
    uint64_t n_tensors = 0, n_kv = 0;
    PEFT_TRY(c.read(n_tensors, "tensor count"));
    PEFT_TRY(c.read(n_kv, "metadata count"));
    // a key/value takes >= 13 bytes (8 length + 1 key byte + 4 type), a tensor info >= 33
    if (n_kv > c.remain / 13 || n_tensors > c.remain / 33) {
        status st = make_error(PEFT_STATUS_FORMAT, where, std::to_string(n_tensors) + " tensors and " + std::to_string(n_kv) +
                               " metadata entries cannot fit in the " + std::to_string(n) + "-byte file");
        st.hint = "the header's counts are corrupt or the file is truncated";
        return st;
    }
    out.kv.resize((size_t) n_kv);
    std::unordered_set<std::string> keys;
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv & kv = out.kv[(size_t) i];
        PEFT_TRY(read_kv(c, kv));
        if (!keys.insert(kv.key).second) return make_error(PEFT_STATUS_FORMAT, where, key_label(kv.key) + " appears twice");
    }
    if (const gguf_kv * a = out.find_kv("general.alignment")) {
        uint32_t v = 0;
        if (a->type != GGUF_VALUE_UINT32) {
            return make_mismatch(PEFT_STATUS_FORMAT, where, "key 'general.alignment' type", "u32", gguf_value_type_name(a->type));
        }
        std::memcpy(&v, a->data, 4);
        if (v == 0 || (v & (v - 1)) != 0) {
            return make_mismatch(PEFT_STATUS_FORMAT, where, "key 'general.alignment'", "a power of two", std::to_string(v));
        }
        out.alignment = v;
    }
    out.tensors.resize((size_t) n_tensors);
    std::unordered_set<std::string> names;
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor_view & t = out.tensors[(size_t) i];
        PEFT_TRY(read_tensor_info(c, t));
        if (!names.insert(t.name).second) return make_error(PEFT_STATUS_FORMAT, where, tensor_label(t.name) + " appears twice");
    }
    // data: at the header end padded to the alignment; tensors back to back, each padded
    const uint64_t A = out.alignment;
    const uint64_t header = (uint64_t) n - c.remain;
    uint64_t data_start = 0, expect = 0;
    if (!checked_add(header, A - 1, &data_start)) return make_error(PEFT_STATUS_FORMAT, where, "header size overflows");
    data_start = data_start / A * A;
    for (size_t i = 0; i < out.tensors.size(); i++) {
        gguf_tensor_view & t = out.tensors[i];
        const std::string what = tensor_label(t.name);
        if (t.offset % A != 0) {
            return make_error(PEFT_STATUS_FORMAT, where, what + ": offset " + std::to_string(t.offset) +
                              " is not a multiple of the alignment " + std::to_string(A));
        }
        if (t.offset != expect) {
            status st = make_error(PEFT_STATUS_FORMAT, where, what + ": offset " + std::to_string(t.offset) + " " +
                                   (t.offset < expect ? "overlaps the tensor before it" : "leaves a gap after the tensor before it") +
                                   " (expected " + std::to_string(expect) + ")");
            st.hint = "GGUF tensors are stored back to back in header order, each padded to the alignment";
            return st;
        }
        uint64_t end = 0, file_end = 0;
        if (!checked_add(t.offset, t.nbytes, &end) || !checked_add(data_start, end, &file_end) || end > UINT64_MAX - A) {
            return make_error(PEFT_STATUS_FORMAT, where, what + ": data offsets overflow");
        }
        if (file_end > (uint64_t) n) {
            status st = make_error(PEFT_STATUS_FORMAT, where, what + ": data [" + std::to_string(data_start + t.offset) + ", " +
                                   std::to_string(file_end) + ") is beyond the end of the file (" + std::to_string(n) + " bytes)");
            st.hint = "the file is truncated (an interrupted download or copy?)";
            return st;
        }
        t.data = data + data_start + t.offset;
        t.aligned = aligned_for(t.data, t.type);
        expect = (end + A - 1) / A * A;
    }
    // nothing after the last tensor but its padding (the last padding may be cut)
    const uint64_t used = out.tensors.empty() ? header : data_start + expect;
    if ((uint64_t) n > used) {
        status st = make_error(PEFT_STATUS_FORMAT, where, std::to_string((uint64_t) n - used) + " bytes after the last tensor's data");
        st.hint = "the tensor infos do not describe the whole file: a corrupt header, or two files concatenated";
        return st;
    }
    return {};
}

status gguf_open(const std::string & path, gguf_file & out) {
    auto map = std::make_shared<mapped_file>();
    PEFT_TRY(map->open(path));
    PEFT_TRY(gguf_parse(map->data, map->size, path, out));
    out.map = std::move(map);
    return {};
}

bool gguf_is_file(const std::string & path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) return false;
    FILE * f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    char magic[4] = {};
    const bool ok = std::fread(magic, 1, 4, f) == 4 && std::memcmp(magic, "GGUF", 4) == 0;
    std::fclose(f);
    return ok;
}

// ---- typed metadata ------------------------------------------------------------------------

const gguf_kv * gguf_file::find_kv(const std::string & key) const {
    for (const gguf_kv & k : kv) {
        if (k.key == key) return &k;
    }
    return nullptr;
}

const gguf_tensor_view * gguf_file::find(const std::string & name) const {
    for (const gguf_tensor_view & t : tensors) {
        if (t.name == name) return &t;
    }
    return nullptr;
}

namespace {

// The key, checked to be of one of the given (scalar or array element) types; null when absent
// and not required.
status typed(const gguf_file & f, const std::string & key, bool array, std::initializer_list<uint32_t> types, bool required,
             const gguf_kv *& out) {
    out = f.find_kv(key);
    if (!out) {
        if (!required) return {};
        status st = make_error(PEFT_STATUS_FORMAT, f.path, "missing metadata " + key_label(key));
        st.hint = "the file was written for another architecture or by an incomplete converter";
        return st;
    }
    const bool is_array = out->type == GGUF_VALUE_ARRAY;
    for (uint32_t t : types) {
        if (is_array == array && out->elem_type == t) return {};
    }
    std::string want;
    for (uint32_t t : types) want += std::string(want.empty() ? "" : " or ") + (array ? "array of " : "") + gguf_value_type_name(t);
    const std::string got = is_array ? std::string("array of ") + gguf_value_type_name(out->elem_type) : gguf_value_type_name(out->type);
    out = nullptr;
    return make_mismatch(PEFT_STATUS_FORMAT, f.path, key_label(key) + " type", want, got);
}

// An array of 4-byte numbers of element type `type` (copied: the file's bytes are unaligned).
template <typename T> status numeric_array(const gguf_file & f, const std::string & key, uint32_t type, std::vector<T> & out, bool required) {
    const gguf_kv * k = nullptr;
    PEFT_TRY(typed(f, key, true, {type}, required, k));
    if (!k) return {};
    out.resize((size_t) k->count);
    std::memcpy(out.data(), k->data, out.size() * sizeof(T));
    return {};
}

template <typename T> T load(const uint8_t * p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

} // namespace

status gguf_file::get_u32(const std::string & key, uint32_t & out, bool required) const {
    const gguf_kv * k = nullptr;
    PEFT_TRY(typed(*this, key, false, {GGUF_VALUE_UINT32, GGUF_VALUE_UINT8, GGUF_VALUE_UINT16, GGUF_VALUE_INT32, GGUF_VALUE_UINT64},
                   required, k));
    if (!k) return {};
    int64_t v = 0;
    switch (k->type) {
        case GGUF_VALUE_UINT8: v = load<uint8_t>(k->data); break;
        case GGUF_VALUE_UINT16: v = load<uint16_t>(k->data); break;
        case GGUF_VALUE_UINT32: v = load<uint32_t>(k->data); break;
        case GGUF_VALUE_INT32: v = load<int32_t>(k->data); break;
        default: {
            const uint64_t u = load<uint64_t>(k->data);
            v = u > UINT32_MAX ? -1 : (int64_t) u;
        }
    }
    if (v < 0 || v > (int64_t) UINT32_MAX) return make_mismatch(PEFT_STATUS_FORMAT, path, key_label(key), "a value in [0, 2^32)", std::to_string(v));
    out = (uint32_t) v;
    return {};
}

status gguf_file::get_f32(const std::string & key, float & out, bool required) const {
    const gguf_kv * k = nullptr;
    PEFT_TRY(typed(*this, key, false, {GGUF_VALUE_FLOAT32, GGUF_VALUE_FLOAT64}, required, k));
    if (k) out = k->type == GGUF_VALUE_FLOAT32 ? load<float>(k->data) : (float) load<double>(k->data);
    return {};
}

status gguf_file::get_bool(const std::string & key, bool & out, bool required) const {
    const gguf_kv * k = nullptr;
    PEFT_TRY(typed(*this, key, false, {GGUF_VALUE_BOOL}, required, k));
    if (k) out = k->data[0] != 0;
    return {};
}

status gguf_file::get_str(const std::string & key, std::string & out, bool required) const {
    const gguf_kv * k = nullptr;
    PEFT_TRY(typed(*this, key, false, {GGUF_VALUE_STRING}, required, k));
    if (k) out = std::string(k->strs[0]);
    return {};
}

status gguf_file::get_arr_str(const std::string & key, std::vector<std::string_view> & out, bool required) const {
    const gguf_kv * k = nullptr;
    PEFT_TRY(typed(*this, key, true, {GGUF_VALUE_STRING}, required, k));
    if (k) out = k->strs;
    return {};
}

status gguf_file::get_arr_i32(const std::string & key, std::vector<int32_t> & out, bool required) const {
    return numeric_array(*this, key, GGUF_VALUE_INT32, out, required);
}

status gguf_file::get_arr_f32(const std::string & key, std::vector<float> & out, bool required) const {
    return numeric_array(*this, key, GGUF_VALUE_FLOAT32, out, required);
}

} // namespace peft
