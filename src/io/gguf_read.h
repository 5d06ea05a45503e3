// gguf_read.h: a reader for GGUF v2/v3 files (GGML docs/gguf.md), the files llama.cpp runs,
// with every check of FORMATS.md "Validating untrusted files / GGUF": the whole header is read
// through one bounded cursor (a length is compared with the bytes left before anything is
// allocated), keys and tensor names are unique and of bounded length, value and tensor types
// are known, shapes do not overflow, tensors are contiguous, aligned and inside the file.
// Every error names the file and the key or tensor, with a hint where one helps.
// Tensor data is not copied: gguf_tensor_view::data points into the mapping (or the caller's
// buffer), aligned for its element type when `aligned` says so.
// Not here: what the keys and tensors mean (model/gguf_import), writing (io/gguf.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "io/gguf.h"
#include "io/mmap.h"

namespace peft {

// gguf_type (ggml gguf.h): the value types of metadata
enum gguf_value_type : uint32_t {
    GGUF_VALUE_UINT8 = 0, GGUF_VALUE_INT8, GGUF_VALUE_UINT16, GGUF_VALUE_INT16, GGUF_VALUE_UINT32, GGUF_VALUE_INT32,
    GGUF_VALUE_FLOAT32, GGUF_VALUE_BOOL, GGUF_VALUE_STRING, GGUF_VALUE_ARRAY, GGUF_VALUE_UINT64, GGUF_VALUE_INT64,
    GGUF_VALUE_FLOAT64, GGUF_VALUE_COUNT,
};
const char * gguf_value_type_name(uint32_t t);   // "u32", "string", "array", ...

// Caps: ggml's (strings 1 GiB, arrays 2^30 elements), and our lower ones for key length.
constexpr uint64_t GGUF_MAX_STRING = 1ull << 30;
constexpr uint64_t GGUF_MAX_ARRAY = 1ull << 30;
constexpr uint64_t GGUF_MAX_KEY = 256;

struct gguf_kv {
    std::string   key;
    uint32_t      type = 0;        // gguf_value_type
    uint32_t      elem_type = 0;   // of the elements of an array; = type for a scalar
    uint64_t      count = 1;       // array length; 1 for a scalar
    const uint8_t * data = nullptr;         // numeric / bool values, count of them, little-endian, unaligned
    std::vector<std::string_view> strs;     // a string value, or the elements of a string array
};

struct gguf_tensor_view {
    std::string          name;
    std::vector<int64_t> ne;              // GGUF order: ne[0] is the fastest dim
    gguf_tensor_type     type = GGUF_TENSOR_F32;
    uint64_t             offset = 0;      // from the data start
    uint64_t             nbytes = 0;
    const uint8_t *      data = nullptr;  // nbytes in the file
    bool                 aligned = false; // data is aligned for reading its elements in place
    int64_t numel() const { int64_t n = 1; for (int64_t d : ne) n *= d; return n; }
};

struct gguf_file {
    std::string                   path;
    uint32_t                      version = 0;
    uint32_t                      alignment = 32;
    std::vector<gguf_kv>          kv;
    std::vector<gguf_tensor_view> tensors;
    std::shared_ptr<mapped_file>  map;      // set by gguf_open; keeps the views valid

    const gguf_kv *          find_kv(const std::string & key) const;
    const gguf_tensor_view * find(const std::string & name) const;

    // Typed metadata. A missing key is an error only when required (out keeps its value
    // otherwise); a key of another type is always an error naming the key and both types.
    // get_u32 also takes a u8/u16/i32/u64 value that fits, as llama.cpp's loader does.
    status get_u32(const std::string & key, uint32_t & out, bool required) const;
    status get_f32(const std::string & key, float & out, bool required) const;
    status get_bool(const std::string & key, bool & out, bool required) const;
    status get_str(const std::string & key, std::string & out, bool required) const;
    status get_arr_str(const std::string & key, std::vector<std::string_view> & out, bool required) const;
    status get_arr_i32(const std::string & key, std::vector<int32_t> & out, bool required) const;
    status get_arr_f32(const std::string & key, std::vector<float> & out, bool required) const;
};

// Parses and validates a whole GGUF file held in data[n] (not copied: the views point into
// it). `where` names it in errors.
status gguf_parse(const uint8_t * data, size_t n, const std::string & where, gguf_file & out);
// Maps `path` and parses it.
status gguf_open(const std::string & path, gguf_file & out);
// Whether path is a regular file starting with the GGUF magic (how the commands tell a .gguf
// from a model or adapter directory).
bool gguf_is_file(const std::string & path);

} // namespace peft
