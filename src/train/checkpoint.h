// checkpoint.h: what `peft train` needs to continue a run bit for bit, and the directory
// discipline around it. A checkpoint directory output_dir/checkpoint-N/ holds the trained
// weights (a PEFT adapter directory, or model.safetensors in f32 for full fine-tuning) and
// trainer_state.safetensors: the optimizer's state tensors ("optimizer.<kind>.<name>": AdamW's m
// and v, GaLore's projected moments and projector "optimizer.proj.<name>"), its name ("optimizer")
// and per-parameter step counts ("optimizer_param_steps"),
// the trained tensors again in f32 ("param.<name>", adapters only: exact and independent of the
// adapter file format), the current epoch's row order ("data.epoch_order", I32), and in the
// metadata: step, epoch, position in the epoch, total steps, AdamW step count, the trainer's
// RNG state and a fingerprint of the training rows (resuming on other data is an error).
// Integrity: trainer_state is written last and its metadata records the size and XXH64 of every
// other file of the directory ("file.<name>") and a checksum of its own metadata and tensors
// ("checksum"), so a truncated, bit-flipped or missing file is refused before resuming.
// Directories are written with atomic_dir (io/atomic_file.h), so a crash or a full disk leaves
// the previous checkpoint intact. Not here: the loop (train_loop.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/atomic_file.h"

namespace peft {

struct optimizer;
struct safetensors_file;

struct trainer_state {
    int64_t step = 0;            // optimizer steps done
    int64_t epoch = 0;           // epoch of the next micro-batch
    int64_t micro_in_epoch = 0;  // index of the next micro-batch within the epoch
    int64_t total_steps = 0;
    std::vector<int32_t> epoch_order;   // row indices of the current epoch, in visiting order
    std::string rng_state;       // rng::save() of the trainer's generator
    std::string data_fingerprint;
    std::vector<std::string> module_states;  // adapter_module::state() per module, in order
};

// An f32 tensor saved or restored by name.
struct named_f32 {
    std::string          name;
    float *              data = nullptr;
    std::vector<int64_t> shape;
    int64_t numel() const { int64_t n = 1; for (int64_t d : shape) n *= d; return n; }
};

// Writes trainer_state.safetensors at path (atomically), with the checksums of every other
// regular file already in its directory: write the checkpoint's other files first.
status trainer_state_save(const std::string & path, const trainer_state & st, optimizer & opt,
                          const std::vector<named_f32> & params);
// Reads it back into st, opt (state tensors, step counts; opt must be initialised with the same
// parameters) and params (each must be present with the same size). Errors name the tensor.
// Checksums are not checked here (hashing GBs twice is wasteful): call checkpoint_verify first.
status trainer_state_load(const std::string & path, trainer_state & st, optimizer & opt,
                          const std::vector<named_f32> & params);
// The same from a parsed file (the fuzzable part: metadata and tensor checks).
status trainer_state_read(const safetensors_file & f, trainer_state & st, optimizer & opt,
                          const std::vector<named_f32> & params);
// f32 tensors by name from any safetensors file into `params` (full fine-tuning resume).
status load_named_f32(const std::string & path, const std::vector<named_f32> & params);


// "checkpoint-N" directories of output_dir, sorted by N ascending.
std::vector<std::pair<int64_t, std::string>> checkpoint_list(const std::string & output_dir);
// Removes the oldest checkpoints so that at most `keep` remain (keep <= 0: none removed).
void checkpoint_prune(const std::string & output_dir, int64_t keep);

// Checks checkpoint directory `dir` against its trainer_state.safetensors: the state's own
// checksum, then every file it lists (present, same size, same XXH64). An error names the
// file ("checksum mismatch: expected xxh64:..., got xxh64:...") and hints at what to do.
status checkpoint_verify(const std::string & dir);
// The newest checkpoint-N of output_dir that verifies (resume_from_checkpoint: latest), in
// `dir`. Each newer one that does not (empty, no trainer_state, a checksum mismatch) is skipped
// with a line in `warnings` for the caller to print. Fails, listing every checkpoint found and
// why it is unusable, when none verifies.
status checkpoint_find_latest(const std::string & output_dir, std::string & dir, std::vector<std::string> & warnings);
// Removes the "checkpoint-N.tmp" directories of output_dir that a crash during a save left
// behind, and returns their paths. Conservative: a directory is removed only when it holds
// nothing but regular files with the names a checkpoint writes (or their atomic_file
// temporaries); anything else in output_dir is never touched.
std::vector<std::string> checkpoint_remove_stale(const std::string & output_dir);

// Copies `src` to `dst` atomically (config.json, tokenizer files).
status copy_file_atomic(const std::string & src, const std::string & dst);

} // namespace peft
