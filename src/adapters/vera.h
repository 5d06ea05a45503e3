// vera.h: VeRA as an adapter method (METHODS §9; PEFT tuners/vera).
//   y = x W^T + b + lambda_b * ((lambda_d * (drop(x) A^T)) B^T)
// A_sh [R,in_max] and B_sh [out_max,R] are frozen random projections drawn once per model and
// shared by every adapted layer; a layer of shape [OC,IC] uses their leading block,
// A = A_sh[:, :IC] (read in place with row stride in_max) and B = B_sh[:OC, :]. Each layer
// trains only lambda_b [OC] and lambda_d [R]; there is no alpha and no scaling.
// Exposed (rather than kept inside vera.cpp) so tests can reach the shared buffers and the
// vectors. Not here: target selection (target.h), PEFT files (io/peft_format.cpp).
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

// The projections every module reads (owned by vera_method, never copied).
struct vera_shared {
    int64_t            R = 0, in_max = 0, out_max = 0;
    std::vector<float> A;   // [R, in_max]   vera_A
    std::vector<float> B;   // [out_max, R]  vera_B
};

struct vera_scratch;   // per-call buffers shared by the modules of one method (vera.cpp)

struct vera_module : adapter_module {
    vera_module(const target_info & t, const vera_shared & sh, float dropout, bool init_weights, float d_initial, rng & r,
                std::shared_ptr<vera_scratch> scratch);

    void forward(const float * x, int64_t N, float * y) override;
    void backward(const float * x, const float * dy, int64_t N, float * dx) override;
    // dlambda_b, dlambda_d and dx need only the cached xa and the masks, never x itself
    bool backward_reads_input() const override { return false; }
    void delta_weight(float * dW) const override;   // diag(lambda_b) B diag(lambda_d) A
    void params(std::vector<param_ref> & out) override;
    void set_training(bool on) override { training = on; }
    std::string state() const override { return dropout.state(); }
    bool set_state(const std::string & s) override { return dropout.set_state(s); }

    // drop(x) [N,IC] exactly as the next backward (and any forward before it) applies it.
    void dropout_input(const float * x, int64_t N, float * xd) const { dropout.apply(x, N * t.in_features, xd); }
    bool dropout_active() const { return training && dropout.p > 0.0f; }

    target_info        t;
    int64_t            R = 0;
    const float *      A = nullptr;     // A_sh [R, in_max]: this layer reads its first IC columns
    int64_t            lda = 0;         // in_max
    const float *      B = nullptr;     // B_sh [out_max, R]: this layer reads its first OC rows
    bool               training = true;
    std::vector<float> lambda_b, lambda_d;     // [OC], [R]
    std::vector<float> dlambda_b, dlambda_d;   // same shapes
    std::vector<float> xa;                     // [N,R] drop(x) A^T of the last forward (backward needs it)
    int64_t            xa_rows = 0;
    // dropout masks as LoRA's (adapters/dropout_mask.h): a function of (seed, calls, element)
    input_dropout      dropout;

private:
    std::shared_ptr<vera_scratch> scratch;
};

struct vera_method : adapter_method {
    const char * name() const override { return "vera"; }
    status configure(const json_value & cfg) override;
    std::string config_json() const override;
    // sizes and draws the shared projections over the selected targets
    status begin(const target_info * targets, int64_t n) override;
    status create(const target_info & t, rng & r, std::unique_ptr<adapter_module> & out) override;
    void shared_params(std::vector<param_ref> & out) override;   // vera_A, vera_B (frozen)
    vera_method();
    ~vera_method() override;

    // configuration (PEFT VeraConfig names)
    int64_t     r = 256;
    int64_t     projection_prng_key = 0;
    bool        save_projection = true;
    double      vera_dropout = 0.0;
    double      d_initial = 0.1;
    bool        init_weights = true;
    target_echo echo;                      // the module selection, saved back as given

    vera_shared shared;

private:
    std::shared_ptr<vera_scratch> scratch;
};

// A_sh [R,in_max] then B_sh [out_max,R] as PEFT's _init_vera_A_vera_B draws them from
// torch.Generator().manual_seed(key): kaiming-uniform with gain sqrt(2) over fan_in (the second
// dimension), bound sqrt(3) * sqrt(2) / sqrt(fan_in), in that order from one generator.
void vera_draw_projections(vera_shared & sh, int64_t key);

std::unique_ptr<adapter_method> vera_method_make();
const std::vector<option_def> & vera_method_options();

} // namespace peft
