// safetensors.h: reader and writer for the safetensors format (FORMATS.md §2c), single files
// and sharded HF checkpoints (model.safetensors.index.json).
//
// The reader treats every file as untrusted: it performs every check of the reference parser
// (safetensors/src/tensor.rs) plus the stricter spec rules ('{' first, duplicate keys rejected,
// caps on dims and name length) and returns a status naming the file, the tensor and the field.
// It never allocates based on a length read from the file beyond what the (capped, bounds-
// checked) header itself occupies, and never reinterprets unaligned bytes: use read_f32().
//
// Not here: tensor slicing, dtype conversion beyond F32/F16/BF16 -> f32, big-endian hosts,
// and any knowledge of what the tensors mean (that is model/).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace peft {

struct mapped_file;

// Every dtype the safetensors format defines, in the reference declaration order, which is
// increasing alignment; the writer sorts tensors by this order descending (then by name).
enum safetensors_dtype {
    SAFETENSORS_DTYPE_BOOL = 0,
    SAFETENSORS_DTYPE_F4,
    SAFETENSORS_DTYPE_F6_E2M3,
    SAFETENSORS_DTYPE_F6_E3M2,
    SAFETENSORS_DTYPE_U8,
    SAFETENSORS_DTYPE_I8,
    SAFETENSORS_DTYPE_F8_E5M2,
    SAFETENSORS_DTYPE_F8_E4M3,
    SAFETENSORS_DTYPE_F8_E8M0,
    SAFETENSORS_DTYPE_F8_E4M3FNUZ,
    SAFETENSORS_DTYPE_F8_E5M2FNUZ,
    SAFETENSORS_DTYPE_I16,
    SAFETENSORS_DTYPE_U16,
    SAFETENSORS_DTYPE_F16,
    SAFETENSORS_DTYPE_BF16,
    SAFETENSORS_DTYPE_I32,
    SAFETENSORS_DTYPE_U32,
    SAFETENSORS_DTYPE_F32,
    SAFETENSORS_DTYPE_C64,
    SAFETENSORS_DTYPE_F64,
    SAFETENSORS_DTYPE_I64,
    SAFETENSORS_DTYPE_U64,
    SAFETENSORS_DTYPE_COUNT,
};
const char * safetensors_dtype_name(safetensors_dtype t);   // "BF16", "F8_E4M3", ...
uint32_t     safetensors_dtype_bits(safetensors_dtype t);   // 4, 6, 8, 16, 32 or 64
bool         safetensors_dtype_from_name(const std::string & name, safetensors_dtype * out);
safetensors_dtype safetensors_dtype_from_dtype(dtype t);     // F32/F16/BF16

// Limits (ours, beyond the reference parser's 100 MB header cap).
constexpr uint64_t SAFETENSORS_MAX_HEADER_SIZE = 100000000;  // reference MAX_HEADER_SIZE
constexpr int      SAFETENSORS_MAX_DIMS = 8;
constexpr size_t   SAFETENSORS_MAX_NAME_LENGTH = 1024;       // bytes, tensor names

// One tensor of a parsed file. `data` points into the file mapping (or the caller's buffer
// for safetensors_parse) and stays valid while the owning safetensors_file (or a copy) lives.
struct tensor_info {
    std::string          name;
    std::string          file;            // path of the file it lives in (for messages)
    safetensors_dtype    st_dtype = SAFETENSORS_DTYPE_F32;  // dtype as stored
    uint32_t             bits = 0;        // bits per element of st_dtype
    bool                 is_float = false;  // st_dtype is F32/F16/BF16, so `type` is valid
    dtype                type = PEFT_DTYPE_F32;
    std::vector<int64_t> shape;           // 0..8 dims, row-major; [] = scalar
    uint64_t             n_elements = 0;  // product of shape (1 for a scalar)
    uint64_t             n_bytes = 0;
    uint64_t             offset = 0;      // data_offsets[0], relative to the byte buffer
    const void *         data = nullptr;  // n_bytes bytes, little-endian, maybe unaligned
    bool                 aligned = false; // data % element size == 0: may be used in place

    std::string describe() const;         // "BF16 [2, 4]"
};

// Fails (PEFT_STATUS_SHAPE) unless t is F32/F16/BF16, naming the tensor and its dtype.
status tensor_require_float(const tensor_info & t);
// Fails (PEFT_STATUS_NUMERIC) if t holds a NaN or Inf, naming the tensor and the first bad
// element; also fails unless t is F32/F16/BF16. One read of the stored bytes, no conversion.
status tensor_require_finite(const tensor_info & t);
// "tensor 'NAME'" for messages; control bytes escaped and length capped (names are untrusted).
std::string tensor_label(const std::string & name);
// Converts the whole tensor to f32 (dst holds n_elements floats); works for unaligned data.
status read_f32(const tensor_info & t, float * dst);
// Converts elements [first, first + count) to f32.
status read_f32_range(const tensor_info & t, uint64_t first, uint64_t count, float * dst);

struct safetensors_file {
    std::string path;
    uint64_t    header_size = 0;          // N, the JSON header length (incl. padding)
    std::vector<tensor_info> tensors;     // in data-offset order
    std::vector<std::pair<std::string, std::string>> metadata;  // __metadata__, document order

    const tensor_info * find(const std::string & name) const;   // null if absent
    const std::string * metadata_get(const std::string & key) const;
    std::vector<std::string> names() const;                      // sorted

    // internal: keeps the mapping alive (null when parsed from memory); name index for find
    std::shared_ptr<const mapped_file> mapping;
    std::vector<uint32_t> by_name;        // indices into tensors, sorted by name
};

// Maps and validates `path`.
status safetensors_open(const std::string & path, safetensors_file & out);
// Validates the n bytes at data (a whole file); `where` names it in messages. The tensors
// point into `data`, which must outlive `out`. This is the fuzz entry point.
status safetensors_parse(const uint8_t * data, size_t n, const std::string & where, safetensors_file & out);

// A checkpoint directory: model.safetensors.index.json + shards, or a single model.safetensors.
struct safetensors_model {
    std::string dir;
    std::string index_path;                 // empty for a single-file model
    std::vector<safetensors_file> shards;   // each shard opened once

    // With an index, only tensors listed in its weight_map are visible (as in transformers).
    const tensor_info * find(const std::string & name) const;
    const std::vector<std::string> & names() const { return tensor_names; }   // sorted

    // internal: tensor_names[i] lives in shards[locations[i].shard].tensors[locations[i].tensor]
    struct location { uint32_t shard, tensor; };
    std::vector<std::string> tensor_names;
    std::vector<location> locations;
};

status safetensors_open_model(const std::string & dir, safetensors_model & out);

// ---- writing ----------------------------------------------------------------------------

struct safetensors_tensor_to_write {
    std::string          name;
    dtype                type = PEFT_DTYPE_F32;
    std::vector<int64_t> shape;
    const void *         data = nullptr;   // n_elements * element size bytes, little-endian
    std::string          raw_dtype;        // optional: any safetensors dtype name ("I64", "U8"),
                                           // overrides `type` (for non-float state)
};

// Writes a safetensors file laid out like the reference writer: tensors sorted by dtype
// alignment descending then name, back to back; header padded with spaces to a multiple of 8.
// Atomic (temp file + fsync + rename): on any failure the old file is untouched.
status safetensors_write(const std::string & path, const std::vector<safetensors_tensor_to_write> & tensors,
                         const std::vector<std::pair<std::string, std::string>> & metadata);
// The same bytes, built in memory (tests, fuzz seeds, small files).
status safetensors_serialize(const std::vector<safetensors_tensor_to_write> & tensors,
                             const std::vector<std::pair<std::string, std::string>> & metadata,
                             std::string & out);

} // namespace peft
