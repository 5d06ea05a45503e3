// quant.h: frozen block-quantized weight matrices: NF4 with bitsandbytes' double quantization
// (load_in_4bit) and ggml's Q8_0 / Q4_0 / Q4_K (a quantized GGUF base, kept as the file stores it).
//
// A qtensor is an [OC, IC] matrix cut into blocks of `block` consecutive elements of the
// row-major flattened matrix, as bitsandbytes does (a block may straddle two rows when IC is not
// a multiple of the block; OC * IC must be whole blocks). Rows are read by the blocks they
// overlap. Each type says how many bytes of `data` one block takes and how one block is decoded
// given its f32 scale. NF4's per-block scales are side data (`scales`), themselves f32 or
// double-quantized; the ggml types carry theirs inside the block (no side data; the scale
// argument is then 1). Memory is counted per block, never per element.
// Not here: the GEMM/GEMV kernels over these (kernels/nf4.cpp), choosing what to quantize
// (model/llama_load.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

enum qtype {
    PEFT_QTYPE_NF4 = 0,   // bitsandbytes NF4: 4-bit normal-float code, 64-element blocks, absmax scale
    PEFT_QTYPE_Q8_0,      // ggml Q8_0: 32 int8 and an f16 scale per 34-byte block (kernels/ggml_quant.h)
    PEFT_QTYPE_Q4_0,      // ggml Q4_0: 32 nibbles and an f16 scale per 18-byte block
    PEFT_QTYPE_Q4_K,      // ggml Q4_K: 256 nibbles, f16 d/dmin and 6-bit sub-block scales per 144-byte block
    PEFT_QTYPE_COUNT,
};

struct qtensor;

// Per-type facts. dequant_block writes `block` f32 values from one block's bytes and its scale;
// quantize_block writes one block's bytes from `block` f32 values (and its side scale, when the
// type has one).
struct qtype_traits {
    const char * name;          // "nf4"
    int64_t      block;         // elements per block
    size_t       block_bytes;   // bytes of qtensor::data per block
    bool         side_scales;   // per-block f32 scales in qtensor::scales (NF4); else inside the block
    void (*dequant_block)(const uint8_t * src, float scale, float * dst);
    void (*quantize_block)(const float * w, uint8_t * dst, float * scale);
};
const qtype_traits & qtype_info(qtype t);
bool qtype_from_name(const std::string & name, qtype * out);

// Per-block scales: plain f32, or bitsandbytes' double quantization (8-bit dynamic codes in
// blocks of 256 with an f32 absmax each, all offset by the mean of the f32 scales).
struct qscales {
    bool                 nested = false;
    std::vector<float>   f32;      // [n_blocks] when !nested
    std::vector<uint8_t> code;     // [n_blocks] dynamic-map index when nested
    std::vector<float>   absmax2;  // [ceil(n_blocks / 256)] when nested
    float                offset = 0.0f;  // mean subtracted before the second quantization
};

struct qtensor {
    qtype                type = PEFT_QTYPE_NF4;
    int64_t              OC = 0, IC = 0;
    bool                 bf16_values = false;   // compute dtype bf16: each dequantized value is rounded to bf16
    std::vector<uint8_t> data;                  // [OC * IC / block * block_bytes], unless `mapped`
    const uint8_t *      mapped = nullptr;      // the blocks in a read-only file mapping (GGUF); data is then empty
    qscales              scales;

    int64_t n_blocks() const { return OC * IC / qtype_info(type).block; }
    const uint8_t * block_data(int64_t b) const { return (mapped ? mapped : data.data()) + (size_t) b * qtype_info(type).block_bytes; }
    size_t bytes() const;   // data + side data, what the weight costs in memory
};

// Block size of bitsandbytes' double quantization of the scales.
constexpr int64_t QUANT_NESTED_BLOCK = 256;

// NF4's 16 values (bitsandbytes get_4bit_type("nf4")), index = 4-bit code.
extern const float NF4_CODE[16];
// bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), as torch
// computes it in f32; ascending.
const float * quant_dynamic_map();

struct quant_options {
    qtype type = PEFT_QTYPE_NF4;
    bool  double_quant = false;   // bnb_4bit_use_double_quant
    bool  bf16_values = false;    // bnb_4bit_compute_dtype bfloat16
};

// The options from transformers' BitsAndBytesConfig names: quant_type "nf4", compute_dtype
// "float32" or "bfloat16" (also f32 / bf16). `where` labels errors.
status quant_options_parse(const std::string & quant_type, const std::string & compute_dtype, bool double_quant,
                           const std::string & where, quant_options & out);

// Quantizes W[OC, IC] (f32): NF4 as bitsandbytes' quantize_4bit (+ quantize_blockwise of the
// scales when double_quant); the ggml types by kernels/ggml_quant.h (Q8_0 and Q4_0 as ggml's
// reference, Q4_K by a simpler search than llama-quantize's). `name` labels errors (an element
// count that is not whole blocks).
status qtensor_quantize(const float * W, int64_t OC, int64_t IC, const quant_options & o, const std::string & name, qtensor & out);

// Double-quantizes n f32 block scales with the given mean offset (bnb quantize_blockwise of
// absmax - offset, dynamic map, blocks of 256). qtensor_quantize passes the mean.
void qscales_nest(const float * absmax, int64_t n, float offset, qscales & s);

// Scales of blocks [b0, b0 + n) as f32 (decoding the double quantization when nested).
void qtensor_block_scales(const qtensor & q, int64_t b0, int64_t n, float * dst);
// Rounds n dequantized values to bf16 when the tensor's compute dtype is bf16 (else nothing).
void qtensor_round_values(const qtensor & q, float * v, int64_t n);
// Elements [e0, e1) of the flattened matrix dequantized into dst[e1 - e0] (serial).
void qtensor_dequant_range(const qtensor & q, int64_t e0, int64_t e1, float * dst);
// Rows [r0, r1) dequantized into dst[(r1 - r0), IC].
void qtensor_rows_f32(const qtensor & q, int64_t r0, int64_t r1, float * dst);

} // namespace peft
