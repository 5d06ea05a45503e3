// gguf.cpp: the GGUF v3 writer and the tensor encodings (see gguf.h).
#include "io/gguf.h"
#include "kernels/ggml_quant.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/checked.h"
#include "core/dtype.h"
#include "io/atomic_file.h"

#ifdef __F16C__
#include <immintrin.h>
#endif

namespace peft {

namespace {

// gguf_type (gguf.h in ggml): the value types of metadata
enum : uint32_t {
    GGUF_VALUE_UINT32 = 4, GGUF_VALUE_INT32 = 5, GGUF_VALUE_FLOAT32 = 6, GGUF_VALUE_BOOL = 7,
    GGUF_VALUE_STRING = 8, GGUF_VALUE_ARRAY = 9,
};

// Little-endian appends (the hosts we build for are little-endian; memcpy keeps it explicit
// that these are byte images, never reinterpreted pointers).
template <typename T> void put(std::string & s, T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    s.append(b, sizeof(T));
}
void put_str(std::string & s, const std::string & v) {
    put<uint64_t>(s, v.size());
    s.append(v);
}

uint64_t pad_to(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

} // namespace

namespace {

struct type_row {
    uint32_t     id;
    const char * name;
    int64_t      block;   // elements per block
    size_t       bytes;   // bytes per block
};
// ggml.c type_traits: blck_size and type_size of the fixed-layout types (QK_K = 256)
const type_row TYPES[] = {
    {0, "F32", 1, 4},        {1, "F16", 1, 2},        {2, "Q4_0", 32, 18},     {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},     {7, "Q5_1", 32, 24},     {8, "Q8_0", 32, 34},     {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},   {11, "Q3_K", 256, 110},  {12, "Q4_K", 256, 144},  {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},  {15, "Q8_K", 256, 292},  {24, "I8", 1, 1},        {25, "I16", 1, 2},
    {26, "I32", 1, 4},       {27, "I64", 1, 8},       {28, "F64", 1, 8},       {30, "BF16", 1, 2},
};

const type_row * type_of(uint32_t t) {
    for (const type_row & r : TYPES) {
        if (r.id == t) return &r;
    }
    return nullptr;
}

} // namespace

bool gguf_tensor_type_known(uint32_t t) { return type_of(t) != nullptr; }
const char * gguf_tensor_type_name(gguf_tensor_type t) { return type_of(t) ? type_of(t)->name : "?"; }
int64_t gguf_tensor_type_block(gguf_tensor_type t) { return type_of(t) ? type_of(t)->block : 1; }
size_t gguf_tensor_type_block_bytes(gguf_tensor_type t) { return type_of(t) ? type_of(t)->bytes : 0; }

status gguf_tensor_nbytes(gguf_tensor_type t, const std::vector<int64_t> & ne, const std::string & name, uint64_t * out) {
    if (ne.empty() || ne.size() > (size_t) GGUF_MAX_DIMS) {
        return make_error(PEFT_STATUS_SHAPE, name, "GGUF tensors have 1 to 4 dims, got " + std::to_string(ne.size()));
    }
    if (!gguf_tensor_type_known(t)) {
        return make_error(PEFT_STATUS_FORMAT, name, "unknown ggml tensor type " + std::to_string((uint32_t) t));
    }
    uint64_t n = 1;
    for (int64_t d : ne) {
        if (d < 0 || !checked_mul(n, (uint64_t) d, &n) || n > (uint64_t) INT64_MAX) {
            return make_error(PEFT_STATUS_SHAPE, name, "tensor shape overflows");
        }
    }
    const int64_t blk = gguf_tensor_type_block(t);
    if (ne[0] % blk != 0) {
        return make_error(PEFT_STATUS_SHAPE, name, std::string(gguf_tensor_type_name(t)) + " needs ne[0] (" +
                          std::to_string(ne[0]) + ") to be a multiple of " + std::to_string(blk));
    }
    if (!checked_mul(n / (uint64_t) blk, gguf_tensor_type_block_bytes(t), out)) {
        return make_error(PEFT_STATUS_SHAPE, name, "tensor byte size overflows");
    }
    return {};
}

void gguf_quantize_q8_0(const float * x, uint8_t * out, int64_t n) {
    PEFT_ASSERT(n % GGUF_Q8_0_BLOCK == 0);
    for (int64_t b = 0; b < n / GGUF_Q8_0_BLOCK; b++) {
        const float * xb = x + b * GGUF_Q8_0_BLOCK;
        uint8_t * ob = out + b * (2 + GGUF_Q8_0_BLOCK);
        float amax = 0.0f;
        for (int64_t j = 0; j < GGUF_Q8_0_BLOCK; j++) amax = std::fmax(amax, std::fabs(xb[j]));
        // as quantize_row_q8_0_ref: the scale is rounded to f16 for storage, but the values
        // are divided by the f32 scale
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const uint16_t dh = f32_to_f16(d);
        std::memcpy(ob, &dh, 2);
        for (int64_t j = 0; j < GGUF_Q8_0_BLOCK; j++) ob[2 + j] = (uint8_t) (int8_t) std::roundf(xb[j] * id);
    }
}

void gguf_encode(gguf_tensor_type t, const float * x, uint8_t * out, int64_t n) {
    switch (t) {
        case GGUF_TENSOR_F32: std::memcpy(out, x, (size_t) n * 4); break;
        case GGUF_TENSOR_F16: {
            int64_t i = 0;
#ifdef __F16C__
            // the conversion ggml itself uses on x86 (round to nearest even, as f32_to_f16)
            for (; i + 8 <= n; i += 8) {
                const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
                _mm_storeu_si128((__m128i *) (out + 2 * i), h);
            }
#endif
            convert_from_f32(PEFT_DTYPE_F16, x + i, out + 2 * i, (size_t) (n - i));
            break;
        }
        case GGUF_TENSOR_BF16: convert_from_f32(PEFT_DTYPE_BF16, x, out, (size_t) n); break;
        case GGUF_TENSOR_Q8_0: gguf_quantize_q8_0(x, out, n); break;
        case GGUF_TENSOR_Q4_0: ggml_quantize_row_q4_0(x, out, n); break;
        case GGUF_TENSOR_Q4_K: ggml_quantize_row_q4_K(x, out, n); break;
        default: PEFT_ASSERT(!"gguf_encode: F32, F16, BF16, Q8_0, Q4_0 and Q4_K are written");
    }
}

// ---- writer ------------------------------------------------------------------------------

void gguf_writer::begin_kv(const std::string & key, uint32_t type) {
    for (const std::string & k : keys) {
        if (k == key && dup_key.empty()) dup_key = key;
    }
    keys.push_back(key);
    put_str(kv, key);
    put<uint32_t>(kv, type);
    n_kv++;
}

void gguf_writer::set_str(const std::string & key, const std::string & v) { begin_kv(key, GGUF_VALUE_STRING); put_str(kv, v); }
void gguf_writer::set_u32(const std::string & key, uint32_t v) { begin_kv(key, GGUF_VALUE_UINT32); put<uint32_t>(kv, v); }
void gguf_writer::set_i32(const std::string & key, int32_t v) { begin_kv(key, GGUF_VALUE_INT32); put<int32_t>(kv, v); }
void gguf_writer::set_f32(const std::string & key, float v) { begin_kv(key, GGUF_VALUE_FLOAT32); put<float>(kv, v); }
void gguf_writer::set_bool(const std::string & key, bool v) { begin_kv(key, GGUF_VALUE_BOOL); put<uint8_t>(kv, v ? 1 : 0); }

void gguf_writer::set_arr_str(const std::string & key, const std::vector<std::string> & v) {
    begin_kv(key, GGUF_VALUE_ARRAY);
    put<uint32_t>(kv, GGUF_VALUE_STRING);
    put<uint64_t>(kv, v.size());
    for (const std::string & s : v) put_str(kv, s);
}
void gguf_writer::set_arr_i32(const std::string & key, const std::vector<int32_t> & v) {
    begin_kv(key, GGUF_VALUE_ARRAY);
    put<uint32_t>(kv, GGUF_VALUE_INT32);
    put<uint64_t>(kv, v.size());
    for (int32_t x : v) put<int32_t>(kv, x);
}
void gguf_writer::set_arr_f32(const std::string & key, const std::vector<float> & v) {
    begin_kv(key, GGUF_VALUE_ARRAY);
    put<uint32_t>(kv, GGUF_VALUE_FLOAT32);
    put<uint64_t>(kv, v.size());
    for (float x : v) put<float>(kv, x);
}

status gguf_writer::add_tensor(const std::string & name, const std::vector<int64_t> & ne, gguf_tensor_type type) {
    if (name.empty() || name.size() > GGUF_MAX_NAME) {
        return make_error(PEFT_STATUS_SHAPE, name, "GGUF tensor names are 1 to " + std::to_string(GGUF_MAX_NAME) + " bytes");
    }
    for (const tensor_decl & t : tensors) {
        if (t.name == name) return make_error(PEFT_STATUS_SHAPE, name, "tensor name written twice");
    }
    uint64_t nbytes = 0, end = 0;
    PEFT_TRY(gguf_tensor_nbytes(type, ne, name, &nbytes));
    if (!checked_add(next_offset, nbytes, &end) || end > UINT64_MAX - GGUF_ALIGNMENT) {
        return make_error(PEFT_STATUS_SHAPE, name, "tensor data offsets overflow");
    }
    tensors.push_back({name, ne, type, nbytes, next_offset});
    next_offset = pad_to(end, GGUF_ALIGNMENT);
    return {};
}

status gguf_writer::write(const std::string & path, gguf_tensor_source & src, bool progress) const {
    if (!dup_key.empty()) return make_error(PEFT_STATUS_CONFIG, path, "GGUF metadata key '" + dup_key + "' set twice");
    std::string head;
    head.append("GGUF", 4);
    put<uint32_t>(head, GGUF_WRITE_VERSION);
    put<uint64_t>(head, tensors.size());
    put<uint64_t>(head, n_kv);
    head += kv;
    for (const tensor_decl & t : tensors) {
        put_str(head, t.name);
        put<uint32_t>(head, (uint32_t) t.ne.size());
        for (int64_t d : t.ne) put<uint64_t>(head, (uint64_t) d);
        put<uint32_t>(head, t.type);
        put<uint64_t>(head, t.offset);
    }
    head.resize(pad_to(head.size(), GGUF_ALIGNMENT), '\0');

    atomic_file f;
    PEFT_TRY(f.open(path));
    PEFT_TRY(f.write(head.data(), head.size()));
    const auto t0 = std::chrono::steady_clock::now();
    auto last = t0;
    const char zeros[GGUF_ALIGNMENT] = {};
    uint64_t done = 0;
    std::vector<uint8_t> buf;
    for (size_t i = 0; i < tensors.size(); i++) {
        const tensor_decl & t = tensors[i];
        buf.clear();
        PEFT_TRY(src.fill(i, buf));
        if (buf.size() != t.nbytes) {
            return make_mismatch(PEFT_STATUS_SHAPE, path, "data of tensor '" + t.name + "'", std::to_string(t.nbytes) + " bytes",
                                 std::to_string(buf.size()) + " bytes");
        }
        PEFT_TRY(f.write(buf.data(), buf.size()));
        const uint64_t pad = pad_to(t.nbytes, GGUF_ALIGNMENT) - t.nbytes;
        PEFT_TRY(f.write(zeros, (size_t) pad));
        done += t.nbytes + pad;
        const auto now = std::chrono::steady_clock::now();
        if (progress && (now - last > std::chrono::seconds(1) || i + 1 == tensors.size())) {
            const double s = std::chrono::duration<double>(now - t0).count();
            std::fprintf(stderr, "peft export: %zu/%zu tensors, %.1f/%.1f MiB (%.0f MB/s)\n", i + 1, tensors.size(),
                         (double) done / (1 << 20), (double) next_offset / (1 << 20), s > 0 ? (double) done / 1e6 / s : 0.0);
            last = now;
        }
    }
    return f.commit();
}

} // namespace peft
