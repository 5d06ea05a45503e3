// ggml_quant.h: dequantization of ggml's block-quantized tensor types, row by row, bit for bit
// as ggml's reference dequantize_row_* (ggml-quants.c; checked against libggml in tests/gguf):
//   Q8_0  blocks of 32: f16 scale d, 32 int8 q;             x = d * q
//   Q4_0  blocks of 32: f16 scale d, 16 bytes of nibbles;   x = d * (q - 8), low nibbles first
//   Q4_K  super-blocks of 256: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins for 8 sub-blocks
//         of 32, 128 bytes of nibbles;                      x = d*sc * q - dmin*m
// These are what a quantized GGUF base needs to be used (a frozen-weight storage that keeps the
// blocks and dequantizes tiles in the matmul is model/linear's business, not this file's).
// Quantizers of the same three (a re-quantized PiSSA residual over a quantized GGUF base,
// `peft export gguf --type q4_0|q4_k`): Q8_0 and Q4_0 as ggml's quantize_row_*_ref, bit for
// bit; Q4_K by min/max per sub-block (ggml's reference searches each sub-block's scale and min,
// so its bytes differ; any Q4_K bytes decode the same way everywhere).
// Not here: the other K-quants and IQ types.
#pragma once
#include <cstddef>
#include <cstdint>

namespace peft {

constexpr int64_t GGML_QK8_0 = 32, GGML_QK4_0 = 32, GGML_QK_K = 256;

// y[n] from the blocks at x (n a multiple of the block size; x unaligned is fine).
void ggml_dequantize_row_q8_0(const uint8_t * x, float * y, int64_t n);
void ggml_dequantize_row_q4_0(const uint8_t * x, float * y, int64_t n);
void ggml_dequantize_row_q4_K(const uint8_t * x, float * y, int64_t n);

// The blocks of x[n] (n a multiple of the block size) into y.
void ggml_quantize_row_q8_0(const float * x, uint8_t * y, int64_t n);
void ggml_quantize_row_q4_0(const float * x, uint8_t * y, int64_t n);
void ggml_quantize_row_q4_K(const float * x, uint8_t * y, int64_t n);

// The dequantizer of ggml type id t (gguf_tensor_type), or null when there is none here.
using ggml_dequantize_fn = void (*)(const uint8_t * x, float * y, int64_t n);
ggml_dequantize_fn ggml_dequantizer(uint32_t t);

} // namespace peft
