// trainer.h: one optimizer step of fine-tuning: gradient accumulation over micro-batches,
// NaN/Inf guard naming the first bad tensor, global-norm clipping, scheduled AdamW update.
// Not here (yet): data loading, checkpoints, metrics files — the LoRA issue adds them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/llama.h"
#include "train/optim.h"

namespace peft {

struct train_config {
    adamw_config opt;
    lr_schedule  schedule = PEFT_SCHEDULE_COSINE;
    int64_t      warmup_steps = 0;
    int64_t      total_steps = 1;
    float        max_grad_norm = 1.0f;   // <= 0 disables clipping
};

struct step_result {
    float loss = 0.0f;       // mean over micro-batches of each one's mean token loss
    float grad_norm = 0.0f;  // before clipping
    float lr = 0.0f;
};

// The trainable f32 parameters of a fully fine-tuned model, in checkpoint order.
std::vector<optim_param> llama_optim_params(llama_model & m);

// Zeroes grads, runs forward+backward on each micro-batch (loss scaled by 1/n_micro, as
// gradient accumulation in transformers), checks finiteness, clips, and applies AdamW with
// the scheduled lr for optimizer step `step` (0-based). On NaN/Inf nothing is updated and a
// PEFT_STATUS_NUMERIC error names the first non-finite gradient.
status train_step(llama_model & m, llama_state & s, adamw & opt, const train_config & cfg,
                  const llama_batch * micro, int64_t n_micro, int64_t step, step_result & out);

} // namespace peft
