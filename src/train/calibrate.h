// calibrate.h: the calibration runner: rows of a data set streamed through the model, with the
// inputs of chosen projections reported to an observer together with the batch geometry (which
// tokens are padding, where samples start), and, when the observer wants gradients, a backward
// pass per batch reporting each projection's input and output gradient. CorDA's covariances
// (forward only) and Deep LoRA's calibration gradient come from it.
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
status calibrate_rows(llama_model & m, const data_rows & rows, int64_t max_rows, int64_t batch, const target_info * targets,
                      int64_t n, calibration_observer & obs);

} // namespace peft
