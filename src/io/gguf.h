// gguf.h: a writer for GGUF v3 files (GGML docs/gguf.md; FORMATS.md §2b), the format llama.cpp
// loads: header, typed key/value metadata, tensor infos, then tensor data, each tensor at an
// offset that is a multiple of the alignment (32) from the data start.
// Every size is computed with checked arithmetic before anything is written; the file is
// written through atomic_file, so a failed or interrupted export leaves no partial file.
// Tensor data is produced one tensor at a time by a gguf_tensor_source (a whole model is never
// held twice in memory). Also here: the element encodings GGUF tensors use that we write (F32,
// F16, BF16, Q8_0 blocks exactly as ggml's quantize_row_q8_0_ref).
// Not here: reading GGUF (io/gguf_read.h), what the tensors and keys mean (model/gguf_export,
// model/gguf_import), dequantizing block types (kernels/ggml_quant.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

// ggml_type values (ggml.h) of the tensor types we write (F32, F16, BF16, Q8_0) or dequantize
// when reading (also Q4_0, Q4_K). The reader knows the sizes of more (gguf_tensor_type_known).
enum gguf_tensor_type : uint32_t {
    GGUF_TENSOR_F32 = 0,
    GGUF_TENSOR_F16 = 1,
    GGUF_TENSOR_Q4_0 = 2,
    GGUF_TENSOR_Q8_0 = 8,
    GGUF_TENSOR_Q4_K = 12,
    GGUF_TENSOR_BF16 = 30,
};
// Name, elements and bytes per block of a ggml_type (ggml.c type_traits), for every type whose
// layout is fixed by ggml: F32, F16, BF16, F64, I8..I64, Q4_0..Q8_1, Q2_K..Q8_K. An id outside
// that list is not known (the reader refuses it; IQ* and later types are among them).
bool         gguf_tensor_type_known(uint32_t t);
const char * gguf_tensor_type_name(gguf_tensor_type t);          // "F32", "Q4_K", ...; "?" when unknown
int64_t      gguf_tensor_type_block(gguf_tensor_type t);         // elements per block: 1, 32 or 256
size_t       gguf_tensor_type_block_bytes(gguf_tensor_type t);   // bytes per block: 4, 2, 34, 144, ...

constexpr uint32_t GGUF_WRITE_VERSION = 3;
constexpr uint32_t GGUF_ALIGNMENT = 32;          // general.alignment (the default; we write it)
constexpr size_t   GGUF_MAX_NAME = 63;           // GGML_MAX_NAME - 1 bytes
constexpr int      GGUF_MAX_DIMS = 4;
constexpr int64_t  GGUF_Q8_0_BLOCK = 32;         // QK8_0

// Bytes of a tensor of type t and shape ne (GGUF order: ne[0] is the fastest dim), checked:
// ne[0] must be a multiple of the type's block, no product may overflow.
status gguf_tensor_nbytes(gguf_tensor_type t, const std::vector<int64_t> & ne, const std::string & name, uint64_t * out);

// x[n] f32 -> `t` elements at out (gguf_tensor_nbytes bytes for n values; n % block == 0).
void gguf_encode(gguf_tensor_type t, const float * x, uint8_t * out, int64_t n);
// One Q8_0 block as ggml writes it: d = max|x| / 127 stored as f16, q = round(x / d).
void gguf_quantize_q8_0(const float * x /*[n]*/, uint8_t * out /*[n/32 * 34]*/, int64_t n);

// Produces the data of tensor i (in add_tensor order) into out; the writer checks its size.
struct gguf_tensor_source {
    virtual ~gguf_tensor_source() = default;
    virtual status fill(size_t i, std::vector<uint8_t> & out) = 0;
};

struct gguf_writer {
    // Metadata, in the order written. A repeated key is an error reported by write().
    void set_str(const std::string & key, const std::string & v);
    void set_u32(const std::string & key, uint32_t v);
    void set_i32(const std::string & key, int32_t v);
    void set_f32(const std::string & key, float v);
    void set_bool(const std::string & key, bool v);
    void set_arr_str(const std::string & key, const std::vector<std::string> & v);
    void set_arr_i32(const std::string & key, const std::vector<int32_t> & v);
    void set_arr_f32(const std::string & key, const std::vector<float> & v);

    // Declares a tensor (ne in GGUF order, 1..4 dims). Checks the name length, duplicates, the
    // dims and the byte size; the data comes from the source at write().
    status add_tensor(const std::string & name, const std::vector<int64_t> & ne, gguf_tensor_type type);

    // Writes the whole file atomically. progress: a line on stderr about every second.
    status write(const std::string & path, gguf_tensor_source & src, bool progress) const;

private:
    struct tensor_decl {
        std::string          name;
        std::vector<int64_t> ne;
        gguf_tensor_type     type;
        uint64_t             nbytes;
        uint64_t             offset;   // from the data start, aligned
    };
    void begin_kv(const std::string & key, uint32_t type);
    std::string               kv;        // serialized key/value pairs
    uint64_t                  n_kv = 0;
    std::vector<std::string>  keys;
    std::string               dup_key;   // the first repeated key, reported by write()
    std::vector<tensor_decl>  tensors;
    uint64_t                  next_offset = 0;
};

} // namespace peft
