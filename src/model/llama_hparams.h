// llama_hparams.h: the hyper-parameters of a Llama-family decoder (llama, mistral, qwen2),
// read from a Hugging Face config.json and validated before any memory is planned.
#pragma once
#include <cstdint>
#include <string>

#include "core/status.h"
#include "kernels/kernels.h"

namespace peft {

struct llama_hparams {
    std::string arch = "llama";   // config.json "model_type"
    int64_t n_vocab = 0;          // vocab_size
    int64_t n_embd = 0;           // hidden_size (C)
    int64_t n_layer = 0;          // num_hidden_layers
    int64_t n_head = 0;           // num_attention_heads (NH)
    int64_t n_head_kv = 0;        // num_key_value_heads (NKV), defaults to n_head
    int64_t head_dim = 0;         // head_dim, defaults to n_embd / n_head (HS)
    int64_t n_ff = 0;             // intermediate_size (F)
    int64_t max_position = 2048;  // max_position_embeddings
    float   rms_eps = 1e-6f;      // rms_norm_eps
    rope_config rope;             // rope_theta, rope_scaling (llama3)
    bool    tie_embeddings = false;  // tie_word_embeddings
    // Which projections carry a bias, as transformers builds them: Qwen2 always has q/k/v
    // biases and nothing else; Llama/Mistral follow attention_bias (q/k/v/o) and mlp_bias
    // (gate/up/down).
    bool    qkv_bias = false;
    bool    o_bias = false;
    bool    mlp_bias = false;
    int64_t bos_id = -1, eos_id = -1;
    // "peft_residual_init" in config.json: this model is the residual base that a PiSSA-family
    // init ("pissa", "olora", ...) left, written beside an adapter saved with save_residual_model
    std::string residual_init;

    int64_t q_dim() const { return n_head * head_dim; }
    int64_t kv_dim() const { return n_head_kv * head_dim; }
};

// Parses and validates config.json at `path`; errors name the file and the field.
status llama_hparams_load(const std::string & path, llama_hparams & out);
// The same from JSON text already in memory (for tests and fuzzing).
status llama_hparams_parse(const std::string & text, const std::string & where, llama_hparams & out);
// hp as a Hugging Face config.json (what transformers reads back to the same model; what
// llama_hparams_parse reads back to hp); torch_dtype "bfloat16", "float16" or "float32".
std::string llama_hparams_config_json(const llama_hparams & hp, const std::string & torch_dtype);
// Checks the invariants (positive sizes, heads divide evenly, ...); `where` names the source.
status llama_hparams_validate(const llama_hparams & hp, const std::string & where);

// Named random-weight shapes for `peft bench`: "tiny", "small", "1b" (TinyLlama-1.1B).
bool llama_hparams_named_shape(const std::string & name, llama_hparams & out);

} // namespace peft
