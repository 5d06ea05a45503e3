// lora_drop.h: LoRA-drop as an adapter method (METHODS §10; Zhou et al., arXiv 2402.07721).
// Stage 1 (prepare): plain LoRA on every target, trained briefly on a sample of the training rows
// (calibration_source::train_probe); then each module's importance g_i = sum over the sample's
// non-padding tokens of ||s B_i A_i x_i||^2, normalised I_i = g_i / sum_j g_j. Sorted by I
// (descending, ties in target order), the smallest prefix whose cumulative importance reaches
// lora_drop_threshold keeps its own LoRA; every other module shares one LoRA per module type
// (q_proj, v_proj, ...: sharing needs equal shapes).
// Stage 2 is the run itself, from a fresh LoRA init (B = 0). The first dropped module of a type
// (in target order) holds the shared factors; the others follow it: they read its A, B and add
// their gradients into its dA, dB, so the optimizer sees one tensor per type.
// Files: adapter_config.json + adapter_model.safetensors are a plain PEFT LoRA (the shared factors
// written under every module that uses them); native/ keeps the sharing (peft_type LORA_DROP,
// lora_drop_shared lists the modules on a shared LoRA) and loads back into it. The importance
// table is printed, saved as lora_drop_importance.tsv and shown in report.html.
// [UNVERIFIED] (METHODS §18.9): no stratified sampling (data rows carry no labels: the first rows
// of the shuffled set are the sample), per-type sharing, stage 2 re-initialised.
// Not here: the LoRA math (lora_module), target selection (target.h), files (io/peft_format.cpp).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.h"
#include "core/option.h"

namespace peft {

// I [n] = g / sum(g); kept [n] = the smallest prefix of the modules sorted by I descending (ties
// in index order) whose cumulative I reaches threshold. Fails on a negative or non-finite g or a
// zero sum (nothing was learned in stage 1).
status lora_drop_select(const std::vector<double> & g, double threshold, std::vector<double> & I, std::vector<uint8_t> & kept);

// A dropped module that is not the first of its type: LoRA's forward and backward on the lead's
// factors (copied in before each forward: r (IC + OC) floats against the forward's N r (IC + OC)
// multiply-adds), its gradients added into the lead's; no tensors of its own.
struct lora_drop_follower : lora_module {
    lora_drop_follower(const target_info & t, lora_module & lead, float dropout, rng & r, std::shared_ptr<lora_scratch> scratch);
    void forward(const float * x, int64_t N, float * y) override;
    void backward(const float * x, const float * dy, int64_t N, float * dx) override;
    void delta_weight(float * dW) const override { lead.delta_weight(dW); }
    void merge(float * W, int64_t OC, int64_t IC) const override { lead.merge(W, OC, IC); }
    void unmerge(float * W, int64_t OC, int64_t IC) const override { lead.unmerge(W, OC, IC); }
    void params(std::vector<param_ref> & out) override { (void) out; }
    void exported(std::vector<param_ref> & out) override { lead.exported(out); }   // the PEFT form: the shared factors under this name

    lora_module & lead;
};

struct lora_drop_method : adapter_method, calibration_observer {
    const char * name() const override { return "lora_drop"; }
    status configure(const json_value & cfg) override;
    std::string config_json() const override { return lora.config_json(); }   // the PEFT form: plain LORA
    std::string native_config_json() const override;
    status check(const target_info & t) const override { return lora.check(t); }
    status begin(const target_info * targets, int64_t n) override;
    status prepare(calibration_source * src, const target_info * targets, int64_t n, uint64_t seed) override;
    status create(const target_info & t, rng & r, std::unique_ptr<adapter_module> & out) override;
    void tables(std::vector<module_table> & out) const override;
    // stage 1's measurement: g_i += ||s B A x||^2 over the non-padding tokens
    status observe(int64_t index, const float * x, const int32_t * seg, int64_t rows, int64_t T) override;

    lora_method lora;                     // r, lora_alpha, lora_dropout, targets: LoRA's keys and config
    double      fraction = 0.1;           // lora_drop_fraction
    double      threshold = 0.9;          // lora_drop_threshold (T)
    int64_t     stage1_steps = 0;         // lora_drop_stage1_steps; 0 = one pass over the sample
    bool        structure_given = false;  // the config lists the sharing (a native file)
    std::vector<std::string> shared_paths;   // modules on their type's shared LoRA
    std::vector<target_info> targets;
    std::vector<double>      g, importance;  // [targets]; empty unless measured (importance: or loaded)
    std::vector<std::string> imported_keys;  // a native config's lora_drop_importance
    std::vector<double>      imported_values;
    std::vector<std::unique_ptr<adapter_module>> probes;   // stage 1's LoRAs (during prepare() only)
    std::vector<std::pair<std::string, lora_module *>> leads;   // module type -> its shared factors

private:
    bool is_shared(const std::string & path) const;
    std::shared_ptr<lora_scratch> scratch = std::make_shared<lora_scratch>();
    std::vector<float> xa, y;   // observe()'s [N,R], [N,OC]
};

std::unique_ptr<adapter_method> lora_drop_method_make();
const std::vector<option_def> & lora_drop_method_options();

} // namespace peft
