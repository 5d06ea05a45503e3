// config.h: the options of `peft train`, read from a YAML or JSON file and/or command-line flags.
// Key names follow Hugging Face PEFT / axolotl (base_model, datasets, r, lora_alpha, ...).
// Every source (file, flags) is first turned into a list of (key, JSON text) entries; flags
// override file entries; then one function validates the whole set into `train_options`, so
// the same checks and messages apply whatever the source. An unknown key is an error with a
// "did you mean" hint; a wrong type or range names the key.
// yaml-cpp is included only by config.cpp. Not here: running the training (train_loop.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

struct dataset_spec {
    std::string path;
    std::string type;   // optional: alpaca | chat_template | completion | pretokenized (loader autodetects)
};

struct train_options {
    // model and data
    std::string base_model;                 // HF model directory (config.json + safetensors)
    std::string tokenizer;                  // tokenizer_config: tokenizer dir/file; "" = base_model
    bool        random_init = false;        // full only: weights N(0, 0.02) from seed (pretraining)
    std::vector<dataset_spec> datasets;
    std::vector<dataset_spec> test_datasets;  // held-out files (unshuffled), besides val_set_size
    std::string output_dir = "output";
    // method
    std::string adapter = "lora";           // lora | full | any registered adapter name
    std::string adapter_json;               // JSON object passed to adapters_attach (built here)
    // optimisation
    double  learning_rate = 2e-4;
    int64_t num_epochs = 1;
    int64_t max_steps = 0;                  // > 0 overrides num_epochs
    int64_t micro_batch_size = 1;
    int64_t gradient_accumulation_steps = 1;
    int64_t sequence_len = 0;               // 0 = min(2048, max_position_embeddings)
    bool    sample_packing = true;
    bool    train_on_inputs = false;
    std::string chat_template;              // "" = auto
    std::string lr_scheduler = "cosine";    // constant | linear | cosine
    int64_t warmup_steps = 0;
    double  warmup_ratio = 0.0;             // used when warmup_steps == 0
    double  weight_decay = 0.0;
    double  adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
    double  max_grad_norm = 1.0;            // <= 0 disables clipping
    std::string optimizer = "adamw";        // adamw | galore_adamw (adapter: full only)
    int64_t galore_rank = 128;              // GaLore (train/optim.h): projection rank
    int64_t galore_update_proj_gap = 200;   // steps between projector refreshes
    double  galore_scale = 0.25;            // scale of the back-projected update
    std::string galore_proj_type = "std";   // std | reverse_std | right | left | full
    std::string galore_target_modules = "attn,mlp";   // name parts of the projected 2-D weights
    std::string galore_svd = "randomized";  // exact | randomized (the projector refresh's SVD)
    int64_t galore_svd_niter = 2;           // randomized: power iterations
    bool    galore_per_layer = false;       // update each weight as soon as its gradient is final
    uint64_t seed = 42;
    double  val_set_size = 0.0;             // held-out fraction of samples, in [0, 1)
    // cadence and outputs
    int64_t eval_steps = 0;                 // 0 = evaluate only at the end (when held-out rows exist)
    int64_t save_steps = 0;                 // 0 = no intermediate checkpoints
    int64_t save_total_limit = 0;           // 0 = keep every checkpoint
    int64_t logging_steps = 1;
    std::string save_dtype = "f32";         // full: dtype of the final model.safetensors (f32|bf16|f16)
    // runtime
    int     threads = 0;                    // 0 = all cores
    bool    gradient_checkpointing = false; // recompute activations in backward
    bool    bf16 = false;                   // bf16 operands, f32 accumulation in base GEMMs
    // QLoRA (transformers' BitsAndBytesConfig names): the frozen projections quantized at load
    bool        load_in_4bit = false;
    std::string bnb_4bit_quant_type = "nf4";
    bool        bnb_4bit_use_double_quant = false;
    std::string bnb_4bit_compute_dtype = "float32";   // float32 | bfloat16
    std::string resume_from_checkpoint;     // checkpoint dir, or "latest" (newest in output_dir)
    bool    progress = true;                // progress bar / lines on stderr
    bool    skip_bad_lines = false;         // count and skip malformed data lines

    bool full() const { return adapter == "full"; }
};

// (key, JSON text) pairs in first-seen order; set replaces an existing key.
struct config_entries {
    std::vector<std::pair<std::string, std::string>> items;
    void set(const std::string & key, const std::string & json_text);
    const std::string * get(const std::string & key) const;
};

// Reads a YAML or JSON config file (JSON when the extension is .json or the text starts with
// '{'). Relative dataset paths stay as written (relative to the working directory, as axolotl).
status config_load_file(const std::string & path, config_entries & out);
// Parses YAML (or JSON, a YAML subset) text; `where` names it in messages (fuzzable).
status config_parse_text(const std::string & text, const std::string & where, config_entries & out);
// One command-line flag: `name` as typed without leading dashes ("learning-rate" or
// "learning_rate"); the value is converted by the key's type (lists: comma-separated or JSON).
status config_set_flag(config_entries & e, const std::string & name, const std::string & value);
// Whether a flag takes no value (booleans): `--sample_packing` alone means true.
bool config_flag_is_bool(const std::string & name);

// Validates every entry and fills `out` (defaults for missing keys). Requires base_model and
// datasets unless `allow_incomplete`.
status config_build(const config_entries & e, train_options & out, bool allow_incomplete = false);

// The key reference for --help: one line per key with its type and default.
std::string config_help();
// The resolved options as a JSON object (saved next to the outputs and shown in the report).
std::string config_to_json(const train_options & o);
// The nearest known key to `key` by edit distance, or "" when none is close.
std::string config_suggest(const std::string & key);

} // namespace peft
