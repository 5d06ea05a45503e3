// llama_infer.h: incremental (KV-cached) inference of a Llama-family model for generation.
// A prompt of n tokens is prefilled in one call (processed in chunks of at most max_batch rows),
// then tokens are appended one at a time; every call returns the logits of its last position.
// Each projection goes through llama_proj_forward, so adapters attached to the model apply
// unmerged (and qwen2 q/k/v biases come with the base linear).
//
// Memory is planned once by llama_infer_init: a K and a V cache of [max_ctx, KVD] f32 per
// layer plus scratch for max_batch rows, so decoding allocates nothing per token.
// llama_infer_eval_multi runs several sequences (each with its own cache and its own adapter
// table) through one forward: the base products run once over all rows, each row adds its own
// adapter unmerged (peft serve).
// Not here: sampling (sample.h), tokenization, scheduling of requests (serve/engine.h).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "model/llama.h"

namespace peft {

struct adapter_module;

struct llama_infer_state {
    int64_t max_ctx = 0;     // positions the cache holds
    int64_t max_batch = 0;   // rows processed per forward chunk
    int64_t n_past = 0;      // positions already in the cache (the next token's position)
    // The sequence's state of the model's layer hook (llama_layer_hook; MiLoRA's routing, decided
    // by the first eval after a reset and reused by every later one); null until then.
    std::shared_ptr<llama_seq_state> adapter_state;
    struct impl;
    std::shared_ptr<impl> p;
};

// Plans the cache for max_ctx positions (at most the model's max_position_embeddings) and
// scratch for chunks of max_batch rows (max_ctx rows when the model's layer hook needs whole
// prompts, llama_layer_hook::whole_prompt). Errors (bad sizes, memory refused) are statuses.
status llama_infer_init(llama_infer_state & s, const llama_model & m, int64_t max_ctx, int64_t max_batch = 256);

// Forgets the cached positions and the adapter state (the next eval starts at position 0 and
// is a new prompt).
void llama_infer_reset(llama_infer_state & s);

// Appends tokens[0..n) at positions n_past..n_past+n-1 and writes the logits of the last one
// into logits[V] (may be null). Context overflow (n_past + n > max_ctx) or a token id outside
// the vocabulary is an error status and leaves the cache unchanged.
status llama_infer_eval(const llama_model & m, llama_infer_state & s, const int32_t * tokens, int64_t n, float * logits);

// One sequence's share of a multi-sequence forward.
struct llama_infer_seq {
    llama_infer_state *      state = nullptr;      // its own cache (max_ctx <= the batch's)
    const int32_t *          tokens = nullptr;     // [n] appended at state->n_past..
    int64_t                  n = 0;
    adapter_module * const * adapters = nullptr;   // [n_layer * LLAMA_PROJ_COUNT] as llama_model::adapters; null = base
    float *                  logits = nullptr;     // [V] of its last token, or null
    llama_layer_hook *       hook = nullptr;       // the adapters' layer hook (llama_model::layer_hook), or null
};

// Row scratch of a multi-sequence forward: chunks of max_rows rows over caches of up to max_ctx.
struct llama_infer_batch {
    int64_t max_rows = 0, max_ctx = 0;
    struct impl;
    std::shared_ptr<impl> p;
};
status llama_infer_batch_init(llama_infer_batch & b, const llama_model & m, int64_t max_rows, int64_t max_ctx);

// Appends seqs[i].tokens to each sequence's cache in one forward (rows grouped by adapter
// table, chunks of max_rows rows). m.adapters and m.layer_hook are not used: a sequence with a
// hook runs it on its own rows before each of its adapted projections, with its own
// state->adapter_state (a hook whose adapter routes whole prompts gets the prompt in one chunk,
// so it must fit max_rows). Every sequence is checked (context,
// token ids) before anything runs: on error no cache changes. Each row's math is the single-
// sequence eval's; the base products over several rows may round differently from one row's.
status llama_infer_eval_multi(const llama_model & m, llama_infer_batch & b, llama_infer_seq * seqs, int64_t n_seq);

// Bytes llama_infer_init would plan (for messages and memory estimates).
size_t llama_infer_bytes(const llama_model & m, int64_t max_ctx, int64_t max_batch);

} // namespace peft
