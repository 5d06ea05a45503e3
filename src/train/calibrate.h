// calibrate.h: the calibration runner: rows of a data set streamed through the model, with the
// inputs of chosen projections reported to an observer together with the batch geometry (which
// tokens are padding, where samples start), and, when the observer wants gradients, a backward
// pass per batch reporting each projection's input and output gradient. CorDA's covariances
// (forward only) and Deep LoRA's calibration gradient come from it, and the short probe
// training LoRA-drop measures its importance after.
// Not here: what an observer computes (adapters/), loading the data (train/data.h).
#pragma once
#include <cstdint>

#include "adapters/adapter.h"
#include "core/status.h"

namespace peft {

struct llama_model;
struct data_rows;

// Streams the first min(max_rows, rows.n_rows) rows through m in batches of `batch` rows and
// reports the inputs of targets[0..n) (projections of m) to obs. Adapters on m are set aside for
// the pass and put back after; each row is observed exactly once. With obs.wants_gradients() the
// base stays frozen (m.trainable is false for adapters), so backward only makes the activation
// gradients the observer reads.
// inner (optional, forward-only observers): inner[i] runs in place of targets[i]'s bare base,
// so obs sees the inputs of a model adapted by those modules.
status calibrate_rows(llama_model & m, const data_rows & rows, int64_t max_rows, int64_t batch, const target_info * targets,
                      int64_t n, calibration_observer & obs, adapter_module * const * inner = nullptr);

// calibration_source::train_probe over `rows`: cfg.opt and cfg.max_grad_norm as the run's (the
// schedule is constant), batches of `batch` rows cycling through the sample in order.
struct train_config;
status calibrate_train_rows(llama_model & m, const data_rows & rows, double fraction, int64_t batch, int64_t steps,
                            const train_config & cfg, adapter_module * const * mods, const target_info * targets, int64_t n,
                            calibration_observer & obs);

} // namespace peft
