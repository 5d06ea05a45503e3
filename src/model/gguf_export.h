// gguf_export.h: a Llama-family model, or a LoRA adapter on it, as the GGUF files llama.cpp
// runs (`llama-cli -m model.gguf [--lora adapter.gguf]`). What llama.cpp expects, and where it
// is checked there:
//  - tensor names: llama_names.h; the Q/K rows of `llama` models permuted from HF's rotate-half
//    layout to llama.cpp's interleaved pairs (convert_hf_to_gguf.py LlamaModel.permute); qwen2
//    uses NEOX rope in llama.cpp and is written unpermuted;
//  - hyper-parameters under "<arch>.*", the tokenizer under "tokenizer.ggml.*"
//    (llama-vocab.cpp), the chat template under "tokenizer.chat_template";
//  - a LoRA file: general.type "adapter", adapter.type "lora", adapter.lora.alpha, and
//    "<base>.weight.lora_a" [ne = IC, R] / ".lora_b" [ne = R, OC] (llama-adapter.cpp), scaled at
//    run time by alpha / R per tensor pair.
// Not here: the container format (io/gguf.h), merging (adapters_merge), reading GGUF
// (model/gguf_import.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/gguf.h"

namespace peft {

struct llama_model;
struct llama_hparams;
struct adapter_set;

struct gguf_export_options {
    gguf_tensor_type type = GGUF_TENSOR_F16;   // of the 2-D weights; 1-D tensors are F32 always
    std::string      name;                     // general.name
    bool             progress = false;
};

// m as a GGUF model file. model_dir supplies tokenizer.json / tokenizer_config.json (a model
// without them is written with tokenizer.ggml.model "none": llama.cpp then runs token ids).
// note receives what the caller should tell the user (a pre-tokenizer guess, fallbacks).
status gguf_export_model(const llama_model & m, const std::string & model_dir, const gguf_export_options & o,
                         const std::string & out, std::string & note);

// A plain LoRA set loaded onto m (adapter_load) as a llama.cpp LoRA file. Per-module scales
// that one alpha cannot express (rank_pattern, alpha_pattern, rsLoRA with mixed ranks) are
// folded into lora_b. type: F32, F16 or BF16 (llama.cpp's exporter refuses quantized LoRA).
status gguf_export_lora(const llama_model & m, const adapter_set & s, gguf_tensor_type type, const std::string & name,
                        const std::string & out, std::string & note);

// dst[OC, IC] = the rows of src[OC, IC] in llama.cpp's order: per head of HS = OC / n_head rows,
// new row 2i + j = old row j * HS/2 + i (HF's rotate-half halves -> interleaved pairs).
// IC = 1 permutes a bias.
void llama_gguf_permute_rows(float * dst, const float * src, int64_t n_head, int64_t OC, int64_t IC);
// The HF row that row r of the permuted [OC, ...] matrix comes from (the reader un-permutes
// with it: hf[llama_gguf_permuted_row(r)] = gguf[r]).
int64_t llama_gguf_permuted_row(int64_t r, int64_t n_head, int64_t OC);

// Llama 3 rope scaling as llama.cpp applies it: per-frequency divisors [HS/2], written as
// "rope_freqs.weight", computed as convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors.
std::vector<float> llama_gguf_rope_factors(const llama_hparams & hp);

} // namespace peft
