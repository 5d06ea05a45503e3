// train_loop.h: `peft train` end to end: load the model (frozen for adapters, trainable for
// adapter: full, random weights for pretraining), tokenizer and data; attach the adapter; run
// epochs / max_steps of accumulated, clipped, scheduled steps with adapter hooks; evaluate on
// held-out rows; write metrics.jsonl, checkpoints (resumable bit for bit), the final adapter
// (or HF model directory) and report.html into output_dir. SIGINT finishes the current step,
// writes a checkpoint and returns PEFT_STATUS_INTERRUPTED.
// Not here: option parsing (config.h), the step itself (trainer.h), file formats.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "dist/dist.h"

namespace peft {

struct train_options;

struct train_summary {
    int64_t steps_done = 0;        // optimizer steps completed (including resumed ones)
    int64_t total_steps = 0;
    int64_t start_step = 0;        // > 0 when resumed
    std::vector<float> losses;     // training loss of each step run by this call
    std::vector<float> grad_norms;
    bool    has_eval = false;
    double  eval_loss = 0.0, eval_perplexity = 0.0;   // last evaluation
    int64_t eval_tokens = 0;
    double  seconds = 0.0;
    int64_t tokens = 0;            // non-padding tokens trained on by this call
    std::string last_checkpoint;   // "" if none was written
};

// comm: data parallel over its ranks (mpirun): each trains on its shard of every batch, rank 0
// alone writes output_dir (checkpoints, metrics, report, the adapter) and logs.
status train_run(const train_options & o, train_summary & out, const dist_comm & comm = dist_comm{});

// Asks a running train_run to stop after the current step, as SIGINT does (tests, embedders).
void train_request_stop();

// Writes a full model as a Hugging Face directory: model.safetensors (every tensor converted to
// `dtype_name`: f32, bf16 or f16, or "keep" for each one's current dtype), config.json from
// config_dir (with "peft_residual_init" added when residual_init is set: the residual base of
// a PiSSA-family adapter), and the tokenizer files found in tokenizer_dir.
struct llama_model;
status write_hf_model_dir(const std::string & dir, const llama_model & m, const std::string & dtype_name,
                          const std::string & config_dir, const std::string & tokenizer_dir,
                          const std::string & residual_init = "");

} // namespace peft
