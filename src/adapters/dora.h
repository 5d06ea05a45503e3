// dora.h: DoRA, weight-decomposed low-rank adaptation (METHODS §15), as a LoRA variant: PEFT's
// LoraConfig use_dora. The adapted weight is a magnitude times a direction,
//   axis out (PEFT, default):  W' = diag(m / n) V,  n = rownorm(V)  [OC],  V = W + s B A
//   axis in  (seed blog):      W' = V diag(m / n),  n = colnorm(V)  [IC]
// m [OC] (or [1,IC]) trainable beside A and B. The norm is detached in backward by default for
// axis out (paper §4.3, PEFT) and exact for axis in (the blog); dora_detach_norm overrides.
// Not here: the LoRA factors' own math (lora.cpp), the config keys (lora_method in lora.cpp).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "adapters/lora.h"

namespace peft {

struct dora_module : lora_module {
    // axis_in: per-input-column magnitude; detach: the norm is a constant in backward
    dora_module(const target_info & t, int64_t R, float scaling, float dropout, float b_lr_scale, lora_init init, rng & r,
                std::shared_ptr<lora_scratch> scratch, bool axis_in, bool detach);

    void forward(const float * x, int64_t N, float * y) override;
    bool forward_delta(const float *, int64_t, float *) override { return false; }   // the base is rescaled
    void backward(const float * x, const float * dy, int64_t N, float * dx) override;
    void delta_weight(float * dW) const override;                      // W_merged - W
    void merge(float * W, int64_t OC, int64_t IC) const override;     // W <- diag(m/n0) (W + s B A), n0 kept
    void unmerge(float * W, int64_t OC, int64_t IC) const override;   // W <- W / (m/n0) - s B A
    void params(std::vector<param_ref> & out) override;
    void exported(std::vector<param_ref> & out) override;
    void set_training(bool on) override;

    // m <- the norms of the current V (at creation, and again after an init replaced the base)
    void init_magnitude();
    // A, B or m changed outside the module (an optimizer step, a load): the next forward
    // recomputes the norms from its cached terms
    void mark_stale() { norms_valid = false; }
    // the base W changed (a residual rebuilt on resume, an unmerge): ||W||^2 is recomputed too
    void mark_base_stale() { base_valid = false; norms_valid = false; }
    // The norms the next forward uses [K] (K = OC, or IC for axis in), refreshed if stale. For tests.
    const std::vector<float> & current_norms();

    bool               axis_in = false;
    bool               detach = true;
    std::vector<float> magnitude, dmagnitude;   // [K]
    std::vector<float> norm;                    // [K] ||V|| along the axis, as of the last refresh
    std::vector<float> scale;                   // [K] f = m / n of the last forward
    // Cached terms (METHODS §15 speed note): n^2 = ||W||^2 + 2s <B, W A^T> + s^2 B (A A^T) B^T
    // per row (axis out), the transposed identity per column (axis in); ||W||^2 once per base.
    std::vector<double> w_sq;                   // [K]
    std::vector<float>  cross;                  // axis out: A W^T [R,OC]; axis in: B^T W [R,IC]
    std::vector<float>  gram;                   // axis out: A A^T [R,R];  axis in: B^T B [R,R]
    std::vector<float>  norm_A, norm_B;         // exact mode: the factors the norms were computed from
    // [N,OC] axis out: xd V^T of the last forward, for backward's dm (the memory PEFT's autograd
    // keeps too, for its (f - 1) * base_result; recomputing it would be a second base GEMM)
    std::vector<float>  pv;
    mutable std::vector<float> merge_norm;      // [K] n0 of the last merge (unmerge divides by m/n0)
    // mutable: merge and unmerge (const) rewrite the base under the module
    mutable bool        norms_valid = false, base_valid = false;

private:
    param_ref magnitude_ref();
    void refresh_norms();
    bool factors_moved() const;   // exact mode: A or B differ from norm_A, norm_B
    // V <- diag(m/n0) V (or V diag(m/n0)) for V = W + s B A formed in place; n0 [K] out
    void scale_merged(float * V, float * n0) const;
    void backward_out(const float * x, const float * dy, int64_t N, float * dx);
    void backward_in(const float * x, const float * dy, int64_t N, float * dx);
    // exact mode: the gradient through the norm, from dn [K] = dL/dn
    void norm_backward(const float * dn);
};

} // namespace peft
