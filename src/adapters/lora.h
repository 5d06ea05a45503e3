// lora.h: LoRA as an adapter method (METHODS §1 LoRA/rsLoRA, §2 LoRA+, §16 LoRA-FA; §15 DoRA in dora.h).
//   y = x W^T + b + s * (drop(x) A^T) B^T,   A [R,IC], B [OC,R] f32,  s = alpha/R or alpha/sqrt(R)
// computed as two skinny GEMMs; B A is never formed while training. Exposed (rather than kept
// inside lora.cpp) so tests can reach the factors and variants such as DoRA can derive from it.
// Not here: target selection (target.h), PEFT files (io/peft_format.h), SVD-based inits.
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

// PEFT init_lora_weights values we implement.
enum lora_init {
    LORA_INIT_DEFAULT = 0,   // true: A Kaiming-uniform (a = sqrt 5, bound 1/sqrt(IC)), B = 0
    LORA_INIT_GAUSSIAN,      // "gaussian": A ~ N(0, (1/R)^2), B = 0
    LORA_INIT_RANDOM,        // false: nn.Linear's init for both (B bound 1/sqrt(R)); not an identity
    // SVD family (METHODS §3, §4, §6): A, B from W's decomposition, the base becomes the residual
    LORA_INIT_PISSA,         // "pissa" (exact SVD) or "pissa_niter_N" (randomized, N iterations)
    LORA_INIT_MILORA,        // "milora": the R smallest singular triplets
    LORA_INIT_OLORA,         // "olora": thin QR
    LORA_INIT_CORDA,         // "corda": SVD of W C' with C the input covariance over calibration data
    LORA_INIT_COUNT,
};

// Transient per-call buffers; modules of one method run one at a time (the model calls them
// serially), so they share one set, grown on demand and never shrunk.
struct lora_scratch {
    std::vector<float> xd;    // [N,IC] dropped input
    std::vector<float> g;     // [N,R]  dy B
    std::vector<float> tmp;   // [N,IC] s (dy B) A before the dropout mask
    // DoRA (dora.cpp): gy [N,OC] scaled dy (axis in: [N,IC] dy V), lo [N,OC] adapter term,
    // tmp2 [N,IC] scaled input / second input gradient
    std::vector<float> gy, lo, tmp2;
};

struct lora_module : adapter_module {
    lora_module(const target_info & t, int64_t R, float scaling, float dropout, bool freeze_a, float b_lr_scale,
                lora_init init, rng & r, std::shared_ptr<lora_scratch> scratch);

    void forward(const float * x, int64_t N, float * y) override;
    void backward(const float * x, const float * dy, int64_t N, float * dx) override;
    bool forward_delta(const float * x, int64_t N, float * y) override;   // y += s (x A^T) B^T
    // dA is the only term that reads x (LoRA-FA has none: dB needs only the cached xa)
    bool backward_reads_input() const override { return !freeze_a; }
    void delta_weight(float * dW) const override;
    void merge(float * W, int64_t OC, int64_t IC) const override;     // W += s B A in one GEMM
    void unmerge(float * W, int64_t OC, int64_t IC) const override;   // W -= s B A in one GEMM
    void params(std::vector<param_ref> & out) override;
    void exported(std::vector<param_ref> & out) override;
    void state_tensors(std::vector<param_ref> & out) override;
    void set_training(bool on) override { training = on; }
    std::string state() const override { return dropout.state(); }
    bool set_state(const std::string & s) override { return dropout.set_state(s); }

    // drop(x) [N,IC] exactly as the next backward (and any forward before it) applies it:
    // x * keep / (1 - p) with keep drawn from (dropout.seed, dropout.calls). For tests.
    void dropout_input(const float * x, int64_t N, float * xd) const { dropout.apply(x, N * t.in_features, xd); }
    bool dropout_active() const { return training && dropout.p > 0.0f; }

    target_info        t;
    int64_t            R = 0;
    float              scaling = 1.0f;
    bool               freeze_a = false;     // LoRA-FA: A frozen, no dA buffer
    std::vector<double> fa_inverse;          // LoRA-FA: (A A^T + 1e-8 I)^-1 / s^2 [R,R], once (A never changes)
    float              b_lr_scale = 1.0f;    // LoRA+: loraplus_lr_ratio
    bool               training = true;
    std::vector<float> A, B;                 // [R,IC], [OC,R]
    // SVD-family inits: the initial factors (the residual base is W - s B0 A0; resume rebuilds it
    // from them), and, when exported on the original base, the rank-2R file form [A; A0],
    // [B | -B0] built by exported()
    std::vector<float> A0, B0;               // [R,IC], [OC,R]; empty for other inits
    bool               export_on_original = false;
    std::vector<float> file_A, file_B;       // [2R,IC], [OC,2R]
    std::vector<float> dA, dB;               // same shapes; dA empty with freeze_a
    std::vector<float> xa;                   // [N,R] drop(x) A^T of the last forward (backward needs it)
    int64_t            xa_rows = 0;          // N of that forward
    // Dropout masks are a pure function of (seed, calls, element): a recomputing forward before
    // backward sees the same mask without storing it; backward advances `calls`.
    input_dropout      dropout;

protected:
    std::shared_ptr<lora_scratch> scratch;
    void add_delta(const float * xd, int64_t N, float * y);   // y[N,OC] += s (xd A^T) B^T; keeps xa
};

struct corda_state;   // CorDA's calibration: covariances per target (lora.cpp)

struct lora_method : adapter_method, calibration_observer {
    const char * name() const override { return "lora"; }
    status configure(const json_value & cfg) override;
    std::string config_json() const override;
    status check(const target_info & t) const override;
    status create(const target_info & t, rng & r, std::unique_ptr<adapter_module> & out) override;
    const char * residual_init() const override;
    status restore(const target_info & t, adapter_module & mod) override;
    status begin(const target_info * targets, int64_t n) override;
    void before_update(const step_info & s, adapter_module * const * mods, int64_t n_mods) override;
    void after_update(const step_info & s, adapter_module * const * mods, int64_t n_mods) override;
    calibration_observer * calibration(std::string & data_path, int64_t & n_samples) override;
    status observe(int64_t index, const float * x, const int32_t * seg, int64_t rows, int64_t T) override;
    lora_method();
    ~lora_method() override;
    status corda_finish();

    // rank and alpha for a module path after rank_pattern / alpha_pattern
    int64_t rank_for(const std::string & path) const;
    double  alpha_for(const std::string & path) const;
    double  scaling_for(const std::string & path) const;

    // configuration (PEFT LoraConfig names)
    int64_t     r = 8;
    double      lora_alpha = 8.0;
    bool        alpha_is_int = true;       // written back as 8, not 8.0
    double      lora_dropout = 0.0;
    bool        use_rslora = false;
    lora_init   init = LORA_INIT_DEFAULT;
    int64_t     pissa_niter = -1;          // "pissa_niter_N": N; -1 = exact SVD
    std::string init_text = "true";        // init_lora_weights as JSON text
    std::string init_name = "true";        // the same without quotes ("pissa_niter_4")
    bool        save_residual_model = false;   // true: the file is the R-rank adapter of the residual base
    // CorDA (PEFT corda_config + ours): kpm takes the smallest components, ipm the largest
    bool        corda_kpm = false;
    std::string corda_covariance_file;     // covariances cached here (reused when it exists)
    std::string corda_data;                // calibration JSONL / .txt
    int64_t     corda_samples = 256;
    std::string corda_config_json = "null";
    // DoRA (METHODS §15, adapters/dora.h): use_dora is PEFT's key; the axis and detach are ours
    bool        use_dora = false;
    bool        dora_axis_in = false;      // "dora_norm_axis": "in": per-input-column magnitude [1, IC]
    bool        dora_detach = true;        // "dora_detach_norm" (default: true for axis out, false for in)
    bool        lora_fa = false;           // ours: "lora_fa": true freezes A and preconditions dB (METHODS §16)
    double      loraplus_lr_ratio = 1.0;   // optimizer-side in PEFT; accepted here for LoRA+
    std::vector<std::string> rank_keys;    // rank_pattern, document order
    std::vector<int64_t>     rank_values;
    std::vector<std::string> alpha_keys;   // alpha_pattern
    std::vector<double>      alpha_values;
    std::vector<std::string> alpha_texts;  // values as written (int vs float)
    target_echo echo;                      // the module selection, saved back as given

private:
    std::shared_ptr<lora_scratch> scratch;
    std::unique_ptr<corda_state>  corda;
};

std::unique_ptr<adapter_method> lora_method_make();
const std::vector<option_def> & lora_method_options();

} // namespace peft
