// llama_names.h: Hugging Face <-> GGUF tensor names of Llama-family models, as llama.cpp's
// llama-arch.cpp spells them (LLM_TENSOR_NAMES) and convert_hf_to_gguf.py maps them.
// One table (llama_names.cpp); every GGUF writer and (later) reader goes through it.
#pragma once
#include <string>

#include "model/llama.h"

namespace peft {

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; false for a name the
// table does not know (the caller reports it).
bool llama_gguf_tensor_name(const std::string & hf, std::string & gguf);
// The GGUF base name of projection p in layer l, "blk.<l>.attn_q" (no ".weight").
std::string llama_gguf_proj_name(int64_t layer, llama_proj p);

} // namespace peft
