// optim.h: the optimizer interface (parameters with shapes, a step count per parameter, reset
// of one parameter's state, the state tensors checkpoints save) and its two optimizers: AdamW as
// PyTorch's torch.optim.AdamW (decoupled weight decay, bias correction; adamw.cpp) and GaLore's
// AdamW (Adam in a low-rank projection of 2-D gradients; galore.cpp). Also learning-rate
// schedules as transformers' get_*_schedule_with_warmup, and global-norm clipping as
// torch.nn.utils.clip_grad_norm_. Not here: the step around the update (trainer.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/arena.h"
#include "adapters/adapter.h"
#include "core/status.h"

namespace peft {

struct optim_param {
    std::string          name;
    float *              value = nullptr;  // [n] f32 master weights
    float *              grad = nullptr;   // [n]
    int64_t              n = 0;
    std::vector<int64_t> shape;            // product n; a linear weight is [OC, IC]
    float                lr_scale = 1.0f;  // per-parameter lr multiplier (LoRA+ uses it)
    bool                 decay = true;     // weight decay applies
};

struct adamw_config {
    float lr = 1e-4f;
    float beta1 = 0.9f, beta2 = 0.999f;
    float eps = 1e-8f;
    float weight_decay = 0.01f;
};

// One tensor of optimizer state, saved in checkpoints as "optimizer.<kind>.<parameter name>".
struct optim_state_ref {
    std::string          name;
    float *              data = nullptr;
    std::vector<int64_t> shape;
    int64_t numel() const { int64_t n = 1; for (int64_t d : shape) n *= d; return n; }
};

// What the trainer, checkpoints and adapter methods (optimizer_view) need of an optimizer.
// Step counts are per parameter, as torch keeps state["step"] per tensor: resetting one
// parameter's state restarts its bias correction (a re-initialised parameter's first update
// is the size a fresh optimizer's would be).
struct optimizer : optimizer_view {
    std::vector<optim_param> params;
    std::vector<int64_t>     steps;          // [params] updates since the parameter's state was (re)set
    int64_t                  step_count = 0; // step() calls

    virtual const char * name() const = 0;   // "adamw", "galore_adamw": checkpoints record it
    // One update with learning rate lr (already scheduled); increments step_count and steps[].
    virtual void step(float lr) = 0;
    // Every state tensor, in a fixed order (checkpoints write and read them by name).
    virtual void state_tensors(std::vector<optim_state_ref> & out) = 0;
    // Zeroes parameter i's state tensors and its step count.
    virtual void reset_param(size_t i);
    // Per-layer updates: step() as one update_param(i, lr) per parameter, each once, in any
    // order, the caller counting step_count. False: this optimizer has no such split.
    virtual bool update_param(size_t i, float lr) { (void) i; (void) lr; return false; }
    bool reset_state(const float * value) override;
    int64_t state_bytes();   // the state tensors' bytes (peft bench: optimizer_state_bytes)
};

struct adamw : optimizer {
    adamw_config         cfg;
    arena                state;     // m and v for every parameter
    std::vector<float *> m, v;

    status init(const std::vector<optim_param> & params, const adamw_config & cfg);
    const char * name() const override { return "adamw"; }
    void step(float lr) override;
    void state_tensors(std::vector<optim_state_ref> & out) override;
};

// GaLore (METHODS §12; jiaweizzhao/GaLore galore_projector.py, adamw.py): full-parameter
// training, Adam state in a rank-r projection of each targeted 2-D weight's gradient. The
// projector comes from the SVD of the gradient at the parameter's steps 0, T, 2T, ... (t before
// the increment, as the reference; the moments carry over a refresh, its [QUIRK]). Sides, for a
// gradient G [m, n]: right R = G P^T [m,r] with P = Vh[:r] [r,n], back N P; left R = P^T G [r,n]
// with P = U[:,:r] [m,r], back P N; full R = U_r^T G Vh_r^T [r,r], back U_r N Vh_r. "std" projects
// the smaller dimension away (right when m >= n), "reverse_std" the larger. Every parameter, the
// projected and the others, gets the reference's AdamW (transformers' form, per-parameter t):
//   m = b1 m + (1-b1) R;  v = b2 v + (1-b2) R^2;  N = m / (sqrt(v) + eps)
//   W -= lr sqrt(1-b2^t) / (1-b1^t) * (projected ? scale * back(N) : N);  W -= lr wd W
// (the decay after the update, as the reference; torch's AdamW decays first and puts eps
// inside the bias correction, so the two differ by eps and wd terms only).
enum galore_proj_type { GALORE_PROJ_STD = 0, GALORE_PROJ_REVERSE_STD, GALORE_PROJ_RIGHT, GALORE_PROJ_LEFT, GALORE_PROJ_FULL, GALORE_PROJ_COUNT };
bool galore_proj_from_name(const std::string & name, galore_proj_type * out);
// How a refresh factors the gradient: LAPACK's exact thin SVD (the reference's torch.linalg.svd),
// or the randomized range finder with power iterations (svd_lowrank, Halko et al. 2009 Alg. 4.4)
// at the projection rank: O(m n r) instead of O(m n min(m, n)), the same subspace when the
// gradient's spectrum has a gap at r (tests/train/test_optim.cpp measures it).
enum galore_svd_kind { GALORE_SVD_EXACT = 0, GALORE_SVD_RANDOMIZED, GALORE_SVD_COUNT };
bool galore_svd_from_name(const std::string & name, galore_svd_kind * out);

struct galore_config {
    int64_t          rank = 128;
    int64_t          update_proj_gap = 200;
    float            scale = 0.25f;
    galore_proj_type proj_type = GALORE_PROJ_STD;
    galore_svd_kind  svd = GALORE_SVD_RANDOMIZED;
    int              svd_niter = 2;   // randomized: power iterations (torch.svd_lowrank's default)
    // name parts of the 2-D weights projected: the reference's target_modules_list; embeddings,
    // norms and lm_head get plain AdamW unless named ("embed_tokens", "lm_head")
    std::vector<std::string> targets = {"attn", "mlp"};
};

// Whether GaLore projects p: a 2-D weight whose name contains one of `targets`.
bool galore_targets(const optim_param & p, const std::vector<std::string> & targets);
// "attn, mlp" -> {"attn", "mlp"} (empty parts dropped)
std::vector<std::string> galore_split_targets(const std::string & text);

struct galore_adamw : optimizer {
    // One parameter's layout: R is [rows, cols]; the projector P (and Q for full) as the sides say.
    struct slot {
        bool    projected = false;
        int     side = 0;                 // 0 right, 1 left, 2 full
        int64_t m = 0, n = 0, r = 0;      // the weight [m, n], the rank
        int64_t rows = 0, cols = 0;       // the moments' shape (the projected gradient's)
        float * mom = nullptr, * var = nullptr;   // [rows*cols]
        float * P = nullptr, * Q = nullptr;       // right [r,n]; left [m,r]; full P=U_r [m,r], Q=Vh_r [r,n]
    };
    adamw_config         cfg;
    galore_config        gcfg;
    arena                state;
    std::vector<slot>    slots;
    // scratch for one parameter at a time: the projected gradient, U_r^T G (full), the
    // back-projection, an SVD
    std::vector<float>   low, mid, back, U, S, Vh;

    // Fails (CONFIG, naming galore_rank and the tensor) when the rank exceeds a targeted weight's
    // smaller dimension.
    status init(const std::vector<optim_param> & params, const adamw_config & cfg, const galore_config & gcfg);
    const char * name() const override { return "galore_adamw"; }
    void step(float lr) override;
    bool update_param(size_t i, float lr) override;
    void state_tensors(std::vector<optim_state_ref> & out) override;

  private:
    void refresh(size_t i, const float * G);
    void project(const slot & s, const float * G, float * R);
    void project_back(const slot & s, const float * N, float * D);
    void update(size_t i, float lr);
};

// Schedules: multiplier of the peak lr at optimizer step `step` (0-based, before the update).
enum lr_schedule {
    PEFT_SCHEDULE_CONSTANT = 0,   // warmup then constant
    PEFT_SCHEDULE_LINEAR,         // warmup then linear decay to 0 at total
    PEFT_SCHEDULE_COSINE,         // warmup then half-cosine decay to 0 at total
    PEFT_SCHEDULE_COUNT,
};
const char * lr_schedule_name(lr_schedule s);
bool         lr_schedule_from_name(const std::string & name, lr_schedule * out);
float        lr_schedule_factor(lr_schedule s, int64_t step, int64_t warmup, int64_t total);

// Global L2 norm of all gradients (double accumulation, fixed order); if max_norm > 0 and the
// norm exceeds it, scales every gradient by max_norm / (norm + 1e-6). Returns the pre-clip norm.
float clip_grad_norm(const std::vector<optim_param> & params, float max_norm);

} // namespace peft
