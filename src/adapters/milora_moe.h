// milora_moe.h: MiLoRA in its mixture-of-experts meaning (METHODS §5; Zhang et al., arXiv
// 2410.18035): each adapted projection of a layer is one LoRA expert, and one router per layer
// decides once per prompt which of them are active.
//   p    = Pool(H_l over the sample's prompt tokens)   H_l [T,C]: the residual stream entering layer l
//   z    = W_g act(p) + b_g        W_g [E,C], b_g [E];  g = softmax(z);  S = TopK(g)
//   w_e  = gate of expert e (router_gate: g_e / sum_S g ("renorm"), g_e ("softmax") or 1 ("hard")), 0 off S
//   y_e  = x W_e^T + b_e + w_e * s * (x A_e^T) B_e^T       A_e [R,IC], B_e [OC,R], s = alpha/R (or /sqrt R)
// Training routes every sample (a segment of a packed row) from its prompt tokens (llama_batch::
// prompt; a sample without any routes from all its tokens) and applies that routing to all its
// tokens; gradients reach the router through the gates and the pooled hidden state. Inference
// routes once from the first eval after a reset (the prompt) and reuses the routing, cached per
// sequence (llama_infer_state::adapter_state), for every decoded token. routing = "token" routes
// every token from its own hidden state instead (the token-level baseline the bench compares).
// Optional Switch/Mixtral load balancing, per layer E * sum_e f_e P_e (f_e: share of samples
// whose top-K holds e; P_e: mean g_e), times router_aux_loss_coef, averaged over layers.
// Cannot be merged (the routing depends on the prompt). Saved in our own form (docs/training.md):
// peft_type "MILORA_MOE", lora_A/lora_B per expert and milora_router.weight/bias per layer.
// Not here: target selection (target.h), files (io/peft_format.cpp).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/adapter.h"
#include "adapters/target.h"
#include "core/option.h"
#include "model/llama.h"

namespace peft {

enum milora_pool { MILORA_POOL_MEAN = 0, MILORA_POOL_LAST, MILORA_POOL_MAX, MILORA_POOL_COUNT };
enum milora_act { MILORA_ACT_GELU = 0, MILORA_ACT_TANH, MILORA_ACT_NONE, MILORA_ACT_COUNT };
enum milora_gate { MILORA_GATE_RENORM = 0, MILORA_GATE_SOFTMAX, MILORA_GATE_HARD, MILORA_GATE_COUNT };

// The routing of one layer for the rows of the current forward (set by the method's layer hook
// before the layer's projections run, read by its experts).
struct milora_layer_route {
    int64_t              E = 0;          // experts of the layer (0: no router here)
    int64_t              n_rows = 0;     // rows of the forward
    int64_t              U = 0;          // routing units: samples (prompt routing) or tokens
    std::vector<int32_t> row_unit;       // [n_rows] unit of each row, -1 = padding (no adapter)
    std::vector<int32_t> pool_rows;      // rows pooled per unit, concatenated (unit u: pool_off[u]..pool_off[u+1])
    std::vector<int32_t> pool_off;       // [U+1]
    std::vector<int32_t> pool_arg;       // max pooling: [U,C] the row each maximum came from
    std::vector<float>   pooled, act;    // [U,C] Pool(H), act(Pool(H))
    std::vector<float>   probs;          // [U,E] softmax(z)
    std::vector<uint8_t> chosen;         // [U,E] 1 = in the top-K
    std::vector<float>   gates;          // [U,E] w (0 off the top-K)
    std::vector<double>  dgates;         // [U,E] d loss / d w, summed by the experts' backward
    double               aux = 0.0;      // this layer's share of the load-balancing loss
};

struct milora_moe_method;

struct milora_moe_module : adapter_module {
    milora_moe_module(const target_info & t, int64_t R, float scaling, int64_t expert, milora_moe_method & owner, rng & r);

    void forward(const float * x, int64_t N, float * y) override;
    bool forward_delta(const float * x, int64_t N, float * y) override;   // the gated expert product alone
    void backward(const float * x, const float * dy, int64_t N, float * dx) override;
    void delta_weight(float * dW) const override;   // s B A: the expert at gate 1 (merging the mixture is refused)
    void params(std::vector<param_ref> & out) override;
    float regularize(float weight) override;        // the load-balancing loss (its gradients came with backward)

    target_info        t;
    int64_t            R = 0;
    float              scaling = 1.0f;
    int64_t            expert = 0;        // index among its layer's experts (projection order)
    bool               reports_aux = false;   // the method's first module returns the aux loss
    std::vector<float> A, B;              // [R,IC], [OC,R]
    std::vector<float> dA, dB;
    std::vector<float> xa;                // [N,R] x A^T of the last forward
    std::vector<float> hbuf;              // [N,R] w_n s xa of the last forward
    std::vector<float> w;                 // [N] gate of each row in the last forward
    bool               active = false;    // some row of the last forward had a non-zero gate

private:
    void add_gated_delta(const float * x, int64_t N, float * y);
    milora_moe_method & owner;
};

// Routing of one sequence in incremental inference: the gates of every layer, decided by its
// prompt.
struct milora_seq_routing : llama_seq_state {
    std::vector<std::vector<float>> gates;   // [L][E_l]
    std::vector<uint8_t>            routed;  // [L]
};

struct milora_moe_method : adapter_method, llama_layer_hook {
    const char * name() const override { return "milora_moe"; }
    status configure(const json_value & cfg) override;
    std::string config_json() const override;
    status check(const target_info & t) const override;
    status begin(const target_info * targets, int64_t n) override;
    status create(const target_info & t, rng & r, std::unique_ptr<adapter_module> & out) override;
    void shared_params(std::vector<param_ref> & out) override;   // the routers
    llama_layer_hook * layer_hook() override { return this; }
    const char * merge_refusal() const override;

    void layer_forward(int64_t l, const float * x, const llama_rows & rows) override;
    void layer_backward(int64_t l, const float * x, const llama_rows & rows, float * dx) override;
    bool whole_prompt() const override { return !token_routing; }

    // The load-balancing loss of the last forward (unscaled, every layer), for tests.
    double last_aux() const;
    // The scaled aux losses of the backward passes since the last call (train_step's reg_loss).
    double take_aux();

    // configuration (LoRA's r, lora_alpha, use_rslora; the router keys are ours, METHODS §5
    // [UNVERIFIED] items with documented defaults)
    int64_t     r = 8;
    double      lora_alpha = 8.0;
    bool        alpha_is_int = true;
    bool        use_rslora = false;
    int64_t     top_k = 2;
    milora_pool pool = MILORA_POOL_MEAN;
    milora_act  act = MILORA_ACT_GELU;
    milora_gate gate = MILORA_GATE_RENORM;
    bool        router_bias = true;
    double      router_init_std = 0.02;
    double      aux_coef = 0.0;
    bool        token_routing = false;   // routing: "token"
    target_echo echo;                      // the module selection, saved back as given

    // state
    int64_t                          C = 0;
    std::vector<int64_t>             n_experts;   // [L] experts per layer
    std::vector<int64_t>             n_created;   // [L] experts created so far
    std::vector<std::vector<float>>  Wg, bg, dWg, dbg;   // [L] [E,C], [E]
    std::vector<milora_layer_route>  route;       // [L]
    double                           aux_pending = 0.0;
    int64_t                          n_routed_layers = 0;

private:
    void route_units(int64_t l, const float * x);
};

std::unique_ptr<adapter_method> milora_moe_method_make();
const std::vector<option_def> & milora_moe_method_options();

} // namespace peft
