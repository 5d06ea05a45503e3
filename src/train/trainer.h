// trainer.h: the numerical core of training, shared by `peft train`, `peft eval` and the
// benchmarks: one optimizer step (gradient accumulation over micro-batches, optional adapter
// regularisation, NaN/Inf guard naming the first bad tensor, global-norm clipping, scheduled
// AdamW), batch assembly from data rows, and evaluation (mean cross-entropy over every
// predicted token, as Hugging Face computes it).
// The step works on any list of optim_params: the model's own weights (full fine-tuning,
// llama_optim_params) or adapter tensors (adapter_set_params). Not here: the loop, data
// loading, checkpoints, metrics files (train_loop.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/llama.h"
#include "train/optim.h"

namespace peft {

struct data_rows;
struct adapter_module;
struct dist_comm;

struct train_config {
    adamw_config opt;
    lr_schedule  schedule = PEFT_SCHEDULE_COSINE;
    int64_t      warmup_steps = 0;
    int64_t      total_steps = 1;
    float        max_grad_norm = 1.0f;   // <= 0 disables clipping
    // Each parameter updated as soon as backward finishes its gradient, which is then zeroed and
    // its memory returned to the system, so all full gradients are never held at once (GaLore's
    // per-layer update, galore_per_layer). Needs one micro-batch, no clipping (max_grad_norm 0),
    // one rank, full fine-tuning and an optimizer with update_param.
    bool         per_layer_update = false;
    // Data parallel (dist/dist.h): every rank passes its own shard of the step's micro-batches;
    // the gradients are summed over the ranks, weighted so that the step equals one process
    // training on all the shards' rows. Null or one rank: a single process.
    const dist_comm * comm = nullptr;
};

struct step_result {
    float   loss = 0.0f;       // mean over micro-batches of each one's mean token loss (+ reg_loss)
    float   reg_loss = 0.0f;   // adapter regularisation (AdaLoRA orthogonality), 0 for most methods
    float   grad_norm = 0.0f;  // before clipping
    float   lr = 0.0f;
    int64_t n_targets = 0;     // predicted tokens in the step
};

struct adapter_set;

// The trainable f32 parameters of a fully fine-tuned model, in checkpoint order.
std::vector<optim_param> llama_optim_params(llama_model & m);
// The trainable tensors of an adapter set (frozen ones, e.g. LoRA-FA's A, left out), with
// their lr multipliers (LoRA+).
std::vector<optim_param> adapter_optim_params(adapter_set & s);

// Zeroes the gradients of opt.params, runs forward+backward on each micro-batch (loss scaled by
// 1/n_micro, as gradient accumulation in transformers; across the ranks of cfg.comm, micro-batch
// i is the union of every rank's i-th one), adds each module's regularize(1) once,
// checks finiteness, clips, and applies the optimizer (AdamW, GaLore) with the scheduled lr for optimizer step `step`
// (0-based). With adapters, their method's before_update / after_update / on_step_end hooks run
// around the update (adapter.h). On NaN/Inf nothing is updated and a PEFT_STATUS_NUMERIC error names the first
// non-finite tensor (parameter or gradient).
status train_step(llama_model & m, llama_state & s, optimizer & opt, const train_config & cfg,
                  const llama_batch * micro, int64_t n_micro, int64_t step, step_result & out,
                  adapter_set * adapters = nullptr);

// Zeroes every gradient of ps and hands its whole pages back to the system (they read as zero
// when touched again). Per-layer updates call it before the optimizer allocates its state, so the
// gradients the model zeroed at load do not sit resident beside it.
void release_gradients(const std::vector<optim_param> & ps);

// The first parameter (value) or gradient of `ps` that holds NaN/Inf, as "'name' (value)" /
// "'name' (gradient)"; "" when all are finite.
std::string first_nonfinite(const std::vector<optim_param> & ps, bool values, bool grads);

// Token buffers of one batch of B rows of T; rows past the data are empty (padding, no targets).
struct batch_buffers {
    int64_t B = 0, T = 0;
    std::vector<int32_t> tokens, targets, pos, seg;   // [B*T] each
    std::vector<uint8_t> prompt;                      // [B*T] the rows' prompt_mask (0 without one)

    void init(int64_t B_, int64_t T_);
    // Copies rows `rows[0..n)` (n <= B) of `d`, shifting labels into targets per row.
    void fill(const data_rows & d, const int64_t * rows, int64_t n);
    llama_batch batch() const;
    int64_t n_tokens() const;    // non-padding tokens (segment id != 0)
};

struct eval_result {
    double  loss_sum = 0.0;   // sum of per-token cross-entropies
    int64_t n_tokens = 0;     // predicted tokens
    double loss() const { return n_tokens > 0 ? loss_sum / (double) n_tokens : 0.0; }
    double perplexity() const;
};

// Forward over every row of `d` in order, s.B rows at a time (the last batch padded). The
// loss is the mean over all predicted tokens of all rows. Adapters must be in inference mode.
// d.T must equal s.T. Fails (NUMERIC) on a non-finite loss.
status evaluate_rows(llama_model & m, llama_state & s, const data_rows & d, eval_result & out);

// Checks every token id of `d` is below the model's vocabulary; the error names the row.
status check_token_ids(const data_rows & d, int64_t n_vocab, const std::string & where);

} // namespace peft
