// llama.h: a Llama-family decoder (llama, mistral, qwen2) in llm.c style: named weight,
// gradient and activation structs over arenas, explicit forward and backward per layer.
//
// Two training modes share one code path:
//  - full fine-tuning: every parameter has an f32 master copy and a gradient;
//  - frozen base: big matrices stay in their stored dtype (bf16 stays bf16), no gradients and
//    no memory for them; backward computes input gradients only (the path adapters use).
// The lm_head and the cross-entropy are fused and chunked over rows: logits for all B*T rows
// never exist at once, and during training d(logits) is folded through lm_head right away.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/quant.h"
#include "core/status.h"
#include "model/linear.h"
#include "model/llama_hparams.h"

namespace peft {

struct adapter_module;
struct llama_batch;
struct llama_layer_hook;

// The seven adaptable projections of a layer, in HF module-path order.
enum llama_proj {
    LLAMA_PROJ_Q = 0, LLAMA_PROJ_K, LLAMA_PROJ_V, LLAMA_PROJ_O,
    LLAMA_PROJ_GATE, LLAMA_PROJ_UP, LLAMA_PROJ_DOWN,
    LLAMA_PROJ_COUNT,
};
const char * llama_proj_name(llama_proj p);   // "self_attn.q_proj", ..., "mlp.down_proj"

// Whether projection p has a bias under hp (llama_hparams: qkv_bias, o_bias, mlp_bias).
bool llama_proj_has_bias(const llama_hparams & hp, llama_proj p);

struct llama_layer_weights {
    float *       attn_norm = nullptr;           // [C]
    linear_weight wq, wk, wv, wo;                 // [QD,C] [KVD,C] [KVD,C] [C,QD]
    float *       ffn_norm = nullptr;            // [C]
    linear_weight w_gate, w_up, w_down;           // [F,C] [F,C] [C,F]
    float *       bias[LLAMA_PROJ_COUNT] = {};   // [OC] of each projection; null when it has none
};

struct llama_weights {
    linear_weight embed;                          // [V,C]
    std::vector<llama_layer_weights> layers;
    float *       final_norm = nullptr;          // [C]
    linear_weight lm_head;                        // [V,C]; aliases embed when tied
};

// One named parameter, HF naming ("model.layers.0.self_attn.q_proj.weight").
struct llama_tensor {
    std::string          name;
    std::vector<int64_t> shape;
    dtype                type = PEFT_DTYPE_F32;  // storage dtype
    void *               data = nullptr;         // storage (f32 master when trainable); null when q is set
    const qtensor *      q = nullptr;            // the frozen matrix block-quantized (load_in_4bit); type is then the source's
    float *              grad = nullptr;         // f32 gradient, null when frozen
    int64_t numel() const { int64_t n = 1; for (int64_t d : shape) n *= d; return n; }
};

struct llama_model {
    llama_hparams             hp;
    bool                      trainable = false;  // full fine-tuning
    llama_weights             w;
    std::vector<llama_tensor> tensors;             // every parameter, in checkpoint order
    std::vector<float>        inv_freq;            // [HS/2] rope frequencies
    arena                     param_arena;         // f32 params (all when trainable; else norms/biases)
    arena                     storage_arena;       // frozen matrices of a random-init model
    arena                     grad_arena;          // f32 grads, trainable only
    std::shared_ptr<void>     source;              // keeps a mapped checkpoint alive

    llama_tensor * find(const std::string & name);
    void zero_grad();

    // Adapters on projections: [n_layer * LLAMA_PROJ_COUNT], null = plain base linear. Set by
    // the adapter code (adapters own the modules); used by forward and backward. Adapters
    // need a frozen base (trainable == false).
    std::vector<adapter_module *> adapters;
    // A model-wide adapter part that acts per layer on the residual stream (MiLoRA's prompt
    // routers, adapters/milora_moe.h), or null. Set with adapters; runs only while adapters is
    // non-empty (a detached or merged set detaches it too).
    llama_layer_hook *            layer_hook = nullptr;
    adapter_module * adapter(int64_t layer, llama_proj p) const {
        return adapters.empty() ? nullptr : adapters[(size_t) (layer * LLAMA_PROJ_COUNT + p)];
    }
    linear_weight &       proj_weight(int64_t layer, llama_proj p);
    const linear_weight & proj_weight(int64_t layer, llama_proj p) const {
        return const_cast<llama_model *>(this)->proj_weight(layer, p);
    }
    const float *   proj_bias(int64_t layer, llama_proj p) const;   // [OC], or null without a bias

    // Frozen projection weights this model holds itself instead of the checkpoint's bytes:
    // merged weights, PiSSA-family residuals (llama_replace_weight).
    std::vector<std::vector<uint8_t>> replaced_weights;
    // Block-quantized frozen projections (load_in_4bit), pointed to by tensors[i].q.
    std::vector<std::unique_ptr<qtensor>> qweights;
};

// Replaces the frozen weight of one projection by W (f32 [OC, IC]), stored in `type` (the base's
// own dtype keeps a bf16 model bf16: PiSSA's residual; f32 for merge). The tensor table follows,
// so checkpoint and model writers see the new weight. Frozen models only.
void llama_replace_weight(llama_model & m, int64_t layer, llama_proj p, const float * W, dtype type);
// Replaces a block-quantized frozen weight by W quantized with the same options (QPiSSA: the
// residual is re-quantized, as when a residual model is loaded in 4 bits).
void llama_requantize_weight(llama_model & m, int64_t layer, llama_proj p, const float * W);
// Quantizes the frozen projection weights (q/k/v/o/gate/up/down; not embeddings or lm_head, as
// transformers) of a frozen model in place, one tensor at a time (random-init models: bench, tests).
status llama_quantize_frozen(llama_model & m, const quant_options & o);

// bf16 compute on a frozen f32 base: its projections are rounded to bf16 once (what every GEMM
// would round them to anyway), halving their bytes. A no-op for trainable models and non-f32 weights.
void llama_frozen_to_bf16(llama_model & m);

// The HF tensor table of a model: names, shapes, and whether a tensor is a big matrix.
struct llama_tensor_spec {
    std::string          name;
    std::vector<int64_t> shape;
    bool                 matrix;  // stays in stored dtype when frozen
};
std::vector<llama_tensor_spec> llama_tensor_specs(const llama_hparams & hp);

// Random weights (N(0, 0.02) matrices, unit norms, zero biases) for benchmarks and tests.
// `storage` is the dtype frozen matrices are kept in (ignored when trainable).
status llama_init_random(llama_model & m, const llama_hparams & hp, bool trainable, uint64_t seed,
                         dtype storage = PEFT_DTYPE_F32);
// Loads a Hugging Face model directory (config.json + model.safetensors or sharded index), or a
// GGUF model file (model/gguf_import.h). With `quant` (load_in_4bit) the projection weights are
// quantized as they are read, one tensor at a time from the mapping; refused for trainable models
// and widths that are not whole blocks.
status llama_load(llama_model & m, const std::string & dir, bool trainable, const quant_options * quant = nullptr);

// One batch of B rows of T tokens. targets are already shifted (targets[t] = labels[t+1],
// -100 = ignored). pos and seg may be null (positions 0..T-1, one segment per row).
// prompt may be null (no token marked as prompt); prompt-routed adapters read it.
struct llama_batch {
    const int32_t * tokens = nullptr;   // [B*T]
    const int32_t * targets = nullptr;  // [B*T]
    const int32_t * pos = nullptr;      // [B*T]
    const int32_t * seg = nullptr;      // [B*T]
    int64_t         B = 0, T = 0;
    const uint8_t * prompt = nullptr;   // [B*T] 1 = the token belongs to its sample's prompt
};

// Per-sequence state a layer hook keeps across the calls of incremental inference (MiLoRA's
// cached routing); owned by llama_infer_state, dropped by llama_infer_reset.
struct llama_seq_state {
    virtual ~llama_seq_state() = default;
};

// The rows of one forward as a layer hook sees them.
struct llama_rows {
    int64_t         B = 0, T = 0;          // B rows of T tokens (inference: 1 row of the new tokens)
    const int32_t * seg = nullptr;         // [B*T] sample ids, 0 = padding; null = one sample per row
    const uint8_t * prompt = nullptr;      // [B*T] 1 = prompt token; null = none marked
    float           grad_scale = 0.0f;     // > 0: a backward follows, with the loss scaled by this
    // inference only: the sequence's hook state (null before its first eval after a reset)
    std::shared_ptr<llama_seq_state> * seq = nullptr;
};

// Called by llama_forward / llama_backward (and llama_infer) around every layer.
struct llama_layer_hook {
    virtual ~llama_layer_hook() = default;
    // Before layer l's projections: x [B*T, C] is the residual stream entering layer l. The
    // batched inference forward (llama_infer_eval_multi), where sequences of several adapters
    // share a layer, calls it again before each adapted projection of one sequence's rows, with
    // the same x and sequence state: the same inputs must give the same routing.
    virtual void layer_forward(int64_t l, const float * x, const llama_rows & rows) = 0;
    // After layer l's backward (with the same x and rows): dx [B*T, C] += the hook's part of
    // d loss / dx (and the hook's own parameter gradients +=).
    virtual void layer_backward(int64_t l, const float * x, const llama_rows & rows, float * dx) = 0;
    // true: incremental inference must see a whole prompt in one forward (the hook pools over it),
    // so llama_infer_init plans chunks as long as the context.
    virtual bool whole_prompt() const { return false; }
};

// Activations and scratch for a fixed (B, T); planned once, one arena.
struct llama_state {
    int64_t B = 0, T = 0;
    bool    recompute = false;   // keep only each layer's input; recompute the rest in backward
    arena   act_arena;
    // filled by forward:
    double  loss_sum = 0.0;      // sum of per-token losses over valid targets
    int64_t n_valid = 0;         // number of targets != -100
    // Called by llama_backward with each trainable tensor (full fine-tuning) as soon as that
    // backward has finished adding to its gradient: the final norm and an untied lm_head first,
    // then layer L-1 .. 0, the embedding last. Null: no calls. Per-layer optimizer updates
    // subscribe here (train/trainer.h); with several micro-batches a gradient is final only in
    // the last one's backward.
    void (*grad_ready)(void * user, llama_tensor & t) = nullptr;
    void * grad_ready_user = nullptr;
    struct impl;
    std::shared_ptr<impl> p;
};

status llama_state_init(llama_state & s, const llama_model & m, int64_t B, int64_t T, bool recompute);

// Forward pass; returns the mean loss over valid targets (0 if none). grad_scale > 0 prepares
// backward: the gradient of grad_scale * mean loss is folded through lm_head at once.
// logits_out [B*T, V] is optional (tests, eval) and costs the full logits tensor.
float llama_forward(llama_model & m, llama_state & s, const llama_batch & batch, float grad_scale,
                    float * logits_out = nullptr);
// Backward after a forward with grad_scale > 0: parameter grads += (trainable models), and
// d_inputs_embeds [B*T, C] (optional) receives d loss / d(embedding output).
void llama_backward(llama_model & m, llama_state & s, const llama_batch & batch, float * d_inputs_embeds = nullptr);

// out[N,C] = embedding rows of tokens, converted to f32 from the table's stored dtype.
void llama_embed(float * out, const linear_weight & wte, const int32_t * tokens, int64_t N);

// One projection of layer l, through its adapter when it has one: y[N,OC] = proj(x[N,IC]),
// or y = residual + proj(x) when residual is not null (scratch [N,OC] is then needed for
// adapted projections; residual may alias y).
void llama_proj_forward(const llama_model & m, int64_t l, llama_proj p, float * y, const float * x, int64_t N,
                        const float * residual = nullptr, float * scratch = nullptr);
// dx[N,IC] = beta * dx + d proj/dx (dy); an adapter also accumulates its own gradients.
void llama_proj_backward_input(const llama_model & m, int64_t l, llama_proj p, float * dx, const float * dy, const float * x,
                               int64_t N, float beta);

// Builds targets from HF-style unshifted labels: targets[b,t] = labels[b,t+1], last = -100.
void llama_shift_labels(int32_t * targets, const int32_t * labels, int64_t B, int64_t T);

// FLOPs per token of one training step (forward + backward) at sequence length T, the backward
// running from the last layer down to first_backward_layer (llama_backward_first_layer).
double llama_flops_per_token(const llama_hparams & hp, int64_t T, bool weight_grads, int64_t first_backward_layer = 0);

// The lowest layer llama_backward visits when the caller wants no input gradient: a frozen base
// with adapters on some layers only (layers_to_transform) has nothing to train below the lowest
// adapted one. 0 when trainable or without adapters (`peft bench --method frozen` times the
// whole backward).
int64_t llama_backward_first_layer(const llama_model & m);

} // namespace peft
