// gguf_import.h: GGUF files llama.cpp runs, read back as peft.cpp models and adapters (the
// inverse of gguf_export.h):
//  - a model: "<arch>.*" metadata (llama, qwen2) -> llama_hparams, tensor names back through
//    llama_names, llama's Q/K rows un-permuted, rope_freqs.weight -> Llama 3 rope scaling.
//    F32/F16/BF16 matrices are used in place from the mapping (a frozen base; Q/K of llama
//    models are a row-permuted copy in their stored dtype), vectors become f32; Q8_0/Q4_0/Q4_K
//    matrices stay quantized (core/quant.h rows, the blocks used in place from the mapping; Q/K
//    a row-permuted copy of the blocks) and go through the same frozen-weight products as NF4;
//    a trainable load (full fine-tuning) dequantizes them into its f32 master weights, which
//    gguf_require_unquantized refuses for training;
//  - a LoRA ("general.type" adapter, llama.cpp's --lora format): pairs
//    "<base>.weight.lora_a/.lora_b" back to PEFT tensors and an adapter_config.json, checked
//    against the base model.
// Not here: tokenizer.ggml.* (tokenizer/gguf_vocab.h), the container (io/gguf_read.h).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace peft {

struct llama_model;
struct adapter_set;
struct llama_hparams;
struct gguf_file;

// hp from a model GGUF's metadata and tensor table; errors name the file and key.
status gguf_model_hparams(const gguf_file & f, llama_hparams & hp);
// Loads the GGUF model at path into m (llama_load calls this for a .gguf file).
status llama_load_gguf(llama_model & m, const std::string & path, bool trainable);
// The same from a parsed file (kept alive by m.source; the fuzz target parses from memory).
status llama_load_gguf_file(llama_model & m, const std::shared_ptr<const gguf_file> & f, bool trainable);
// An error naming the first block-quantized tensor of the GGUF model at path and its type, for
// what must write every weight (full fine-tuning over a quantized base). `what` names it.
status gguf_require_unquantized(const std::string & path, const std::string & what);

// The files beside model.safetensors of a Hugging Face checkpoint made from the GGUF model at
// path (peft merge, full fine-tuning, residual models): config.json from hp, tokenizer.json and
// tokenizer_config.json from its tokenizer.ggml.* metadata (left out, with a note, when that
// vocabulary is not one peft rebuilds). files: name -> content.
status gguf_hf_files(const std::string & path, const llama_hparams & hp, const std::string & torch_dtype,
                     std::vector<std::pair<std::string, std::string>> & files, std::string & note);

// A GGUF LoRA as PEFT would save it for base m: adapter_config.json text and tensors
// (PEFT names and orientation, f32, B's Q/K rows un-permuted). Refuses a file for another base
// (names, shapes) naming the tensor.
struct gguf_lora_tensor {
    std::string          name;    // "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    std::vector<int64_t> shape;   // PEFT [R, IC] / [OC, R]
    std::vector<float>   data;
};
status gguf_lora_read(const std::string & path, const llama_model & m, std::string & config_json, std::vector<gguf_lora_tensor> & out);
// gguf_lora_read, attached to m as a loaded adapter (adapter_load for a .gguf file).
status gguf_lora_load(const std::string & path, llama_model & m, adapter_set & out);

} // namespace peft
