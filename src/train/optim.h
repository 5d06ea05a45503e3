// optim.h: AdamW as PyTorch's torch.optim.AdamW (decoupled weight decay, bias correction),
// learning-rate schedules as transformers' get_*_schedule_with_warmup, and global-norm clipping
// as torch.nn.utils.clip_grad_norm_. The optimizer sees a flat list of parameter groups.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/arena.h"
#include "adapters/adapter.h"
#include "core/status.h"

namespace peft {

struct optim_param {
    std::string name;
    float *     value = nullptr;  // [n] f32 master weights
    float *     grad = nullptr;   // [n]
    int64_t     n = 0;
    float       lr_scale = 1.0f;  // per-parameter lr multiplier (LoRA+ uses it)
    bool        decay = true;     // weight decay applies
};

struct adamw_config {
    float lr = 1e-4f;
    float beta1 = 0.9f, beta2 = 0.999f;
    float eps = 1e-8f;
    float weight_decay = 0.01f;
};

// (adapters/adapter.h optimizer_view: what adapter methods may do to the optimizer)
struct adamw : optimizer_view {
    adamw_config             cfg;
    std::vector<optim_param> params;
    int64_t                  step_count = 0;
    arena                    state;     // m and v for every parameter
    std::vector<float *>     m, v;

    status init(const std::vector<optim_param> & params, const adamw_config & cfg);
    // One update with learning rate lr (already scheduled); increments step_count.
    void step(float lr);
    bool reset_state(const float * value) override;
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
