// llama_names.cpp: the HF <-> GGUF tensor-name table (see llama_names.h). GGUF names from
// llama.cpp src/llama-arch.cpp (LLM_TENSOR_NAMES): token_embd, output_norm, output,
// blk.%d.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}.
#include "model/llama_names.h"

#include <cstdlib>
#include <cstring>

namespace peft {

namespace {

struct name_row {
    const char * hf;     // suffix after "model.layers.N." (layer rows) or the full name
    const char * gguf;
};

// per-layer tensors, HF suffix -> GGUF suffix; projections in llama_proj order first
const name_row LAYER_NAMES[] = {
    {"self_attn.q_proj", "attn_q"},
    {"self_attn.k_proj", "attn_k"},
    {"self_attn.v_proj", "attn_v"},
    {"self_attn.o_proj", "attn_output"},
    {"mlp.gate_proj", "ffn_gate"},
    {"mlp.up_proj", "ffn_up"},
    {"mlp.down_proj", "ffn_down"},
    {"input_layernorm", "attn_norm"},
    {"post_attention_layernorm", "ffn_norm"},
};
static_assert(LLAMA_PROJ_COUNT == 7, "LAYER_NAMES lists the projections in llama_proj order");

const name_row GLOBAL_NAMES[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

} // namespace

std::string llama_gguf_proj_name(int64_t layer, llama_proj p) {
    return "blk." + std::to_string(layer) + "." + LAYER_NAMES[p].gguf;
}

bool llama_gguf_tensor_name(const std::string & hf, std::string & gguf) {
    for (const name_row & r : GLOBAL_NAMES) {
        if (hf == r.hf) {
            gguf = r.gguf;
            return true;
        }
    }
    const std::string prefix = "model.layers.";
    if (hf.compare(0, prefix.size(), prefix) != 0) return false;
    const char * p = hf.c_str() + prefix.size();
    char * end = nullptr;
    const long layer = std::strtol(p, &end, 10);
    if (end == p || *end != '.' || layer < 0) return false;
    const std::string rest = end + 1;   // "self_attn.q_proj.weight"
    for (const name_row & r : LAYER_NAMES) {
        const size_t n = std::strlen(r.hf);
        if (rest.compare(0, n, r.hf) != 0) continue;
        const std::string kind = rest.substr(n);   // ".weight" / ".bias"
        if (kind != ".weight" && kind != ".bias") return false;
        gguf = "blk." + std::to_string(layer) + "." + r.gguf + kind;
        return true;
    }
    return false;
}

} // namespace peft
