// adalora.h: AdaLoRA as an adapter method (METHODS §11; PEFT tuners/adalora).
//   y = x W^T + b + s * (drop(x) (A * E)^T) B^T,   s = alpha / (ranknum + 1e-5)
// A = lora_A [R,IC] (Q), E = lora_E [R,1] (Lambda), B = lora_B [OC,R] (P); A * E scales row i
// of A by E[i]. ranknum is the initial rank init_r and never changes (METHODS §18.2), so s stays
// alpha/init_r while ranks are masked. The RankAllocator (PEFT layer.py) runs in the method's
// on_step_end hook, after the optimizer update with the step's gradients still intact, as PEFT's
// examples call update_and_allocate(global_step) between optimizer.step() and zero_grad(), with
// global_step the 0-based index of the step. The orthogonal regulariser is adapter_module::
// regularize. Exposed (rather than kept inside adalora.cpp) so tests reach the pure pieces: the
// budget schedule, the importance EMA, the threshold and the penalty.
// Not here: target selection (target.h), PEFT files (io/peft_format.cpp).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/adapter.h"
#include "adapters/target.h"
#include "adapters/dropout_mask.h"
#include "core/option.h"

namespace peft {

// The schedule keys of AdaLoraConfig.
struct adalora_schedule {
    int64_t init_r = 12, target_r = 8;
    int64_t tinit = 0, tfinal = 0, deltaT = 1;
    int64_t total_step = 0;   // required (PEFT 0.18 refuses None)
};

// PEFT RankAllocator.budget_schedule at the 0-based step t, for b0 = the total initial rank and
// bT = target_r * modules: b0 while t <= tinit; bT (mask = true) once t > total_step - tfinal;
// else floor(bT + (b0 - bT) (1 - (t - tinit) / (total_step - tfinal - tinit))^3), computed in
// double as Python does, with mask = t % deltaT == 0.
int64_t adalora_budget(const adalora_schedule & s, int64_t b0, int64_t bT, int64_t t, bool & mask);

// One importance update of n elements (PEFT update_ipt), in f32 as torch runs it:
//   I = |p g|,  ipt <- b1 ipt + (1 - b1) I,  unc <- b2 unc + (1 - b2) |I - ipt|  (the new ipt)
void adalora_ema_update(const float * p, const float * g, int64_t n, double beta1, double beta2, float * ipt, float * unc);

// The k-th smallest (1-based) of scores (torch.kthvalue); -inf for k < 1 (nothing masked).
float adalora_threshold(std::vector<float> scores, int64_t k);

// ||M - I||_F with M = P P^T for rows (lora_A [r,c]) or P^T P otherwise (lora_B [c,r]), in
// double; when grad is non-null adds coef * d||M - I||_F / dP to it (2 (M - I) P / ||M - I||,
// or 2 P (M - I) / ||M - I||; zero where the norm is zero, as torch's norm backward).
double adalora_orth_penalty(const float * P, int64_t rows, int64_t cols, bool gram_of_rows, float * grad, double coef);

struct adalora_scratch;   // per-call buffers shared by the modules of one method (adalora.cpp)

struct adalora_module : adapter_module {
    // R rows (init_r, or the kept count of a loaded rank_pattern); ranknum = init_r
    adalora_module(const target_info & t, int64_t R, int64_t init_r, float alpha, float dropout, rng & r,
                   std::shared_ptr<adalora_scratch> scratch);

    void forward(const float * x, int64_t N, float * y) override;
    void backward(const float * x, const float * dy, int64_t N, float * dx) override;
    void delta_weight(float * dW) const override;   // s B (A * E)
    void params(std::vector<param_ref> & out) override;
    // lora_A, lora_E, lora_B; sliced to the kept ranks once a rank pattern exists
    // (PEFT resize_state_dict_by_rank_pattern)
    void exported(std::vector<param_ref> & out) override;
    // reg_weight * (||A A^T - I||_F + ||B^T B - I||_F) / (2 * modules), its gradients added
    float regularize(float weight) override;
    void set_training(bool on) override { training = on; }
    // dropout counter, then the allocator's per-module part: whether a pattern exists and its keep bits
    std::string state() const override;
    bool set_state(const std::string & s) override;
    // the importance EMAs of A, E, B (resume continues the allocation bit for bit)
    void state_tensors(std::vector<param_ref> & out) override;

    bool dropout_active() const { return training && dropout.p > 0.0f; }
    // S[R]: the triplet scores s(E_i) + mean_j s(A_ij) + mean_o s(B_oi), s = ipt * unc
    void triplet_scores(float * S) const;
    int64_t kept() const;   // ranks the current pattern keeps

    target_info        t;
    int64_t            R = 0;
    float              scaling = 1.0f;       // alpha / (init_r + 1e-5)
    double             reg_coef = 0.0;       // orth_reg_weight / (2 * modules), set by the method
    bool               training = true;
    std::vector<float> A, E, B;              // [R,IC], [R], [OC,R]
    std::vector<float> dA, dE, dB;
    std::vector<float> ipt_A, unc_A, ipt_E, unc_E, ipt_B, unc_B;   // importance EMAs, same shapes
    // The rank pattern (PEFT config.rank_pattern): `slots` says which of the init_r ranks this
    // module's R rows are (all true unless loaded from a truncated file), `keep` [R] which rows
    // the last allocation kept; `patterned` once an allocation (or the loaded config) set one.
    std::vector<uint8_t> slots, keep;
    bool               patterned = false;
    std::vector<float> file_A, file_E, file_B;   // exported() slices
    std::vector<float> xa;                   // [N,R] drop(x) (A * E)^T of the last forward
    int64_t            xa_rows = 0;
    input_dropout      dropout;

private:
    std::shared_ptr<adalora_scratch> scratch;
};

struct adalora_method : adapter_method {
    const char * name() const override { return "adalora"; }
    status configure(const json_value & cfg) override;
    std::string config_json() const override;
    status begin(const target_info * targets, int64_t n) override;
    status create(const target_info & t, rng & r, std::unique_ptr<adapter_module> & out) override;
    // RankAllocator.update_and_allocate(t = s.step - 1); prints the final ranks after the last step
    void on_step_end(const step_info & s, adapter_module * const * mods, int64_t n_mods, optimizer_view & opt) override;
    // adalora_ranks: each module's kept rank (what the saved file holds) of init_r
    void tables(std::vector<module_table> & out) const override;
    adalora_method();
    ~adalora_method() override;

    // one allocation at budget b over mods (PEFT mask_to_budget): E zeroed where the score <= the
    // (b0 - b)-th smallest, each module's keep set
    void mask_to_budget(adalora_module * const * mods, int64_t n, int64_t budget) const;

    // configuration (PEFT AdaLoraConfig names)
    adalora_schedule sched;
    double      beta1 = 0.85, beta2 = 0.85;
    double      orth_reg_weight = 0.5;
    int64_t     r = 8;                     // LoraConfig's r: unused by AdaLoRA, written back
    double      lora_alpha = 8.0;
    bool        alpha_is_int = true;
    double      lora_dropout = 0.0;
    std::vector<std::string>          pattern_paths;   // loaded rank_pattern: module path -> init_r bits
    std::vector<std::vector<uint8_t>> pattern_bits;
    target_echo echo;                      // the module selection, saved back as given
    int64_t     n_targets = 0;
    std::vector<adalora_module *> modules;   // the created modules (owned by the adapter_set), for config_json

private:
    std::shared_ptr<adalora_scratch> scratch;
};

std::unique_ptr<adapter_method> adalora_method_make();
const std::vector<option_def> & adalora_method_options();

} // namespace peft
