// sched.cpp: learning-rate multipliers, as transformers' schedules (LambdaLR semantics: the
// factor for optimizer step `step` counts the updates already made, so step 0 of a warmup is 0).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "train/optim.h"

namespace peft {

static const char * SCHEDULE_NAMES[] = {"constant", "linear", "cosine"};
static_assert(sizeof(SCHEDULE_NAMES) / sizeof(SCHEDULE_NAMES[0]) == PEFT_SCHEDULE_COUNT);

const char * lr_schedule_name(lr_schedule s) { return s < PEFT_SCHEDULE_COUNT ? SCHEDULE_NAMES[s] : "?"; }

bool lr_schedule_from_name(const std::string & name, lr_schedule * out) {
    for (int i = 0; i < PEFT_SCHEDULE_COUNT; i++) {
        if (name == SCHEDULE_NAMES[i]) { *out = (lr_schedule) i; return true; }
    }
    return false;
}

float lr_schedule_factor(lr_schedule s, int64_t step, int64_t warmup, int64_t total) {
    if (step < warmup) return (float) step / (float) std::max<int64_t>(1, warmup);
    switch (s) {
        case PEFT_SCHEDULE_CONSTANT: return 1.0f;
        case PEFT_SCHEDULE_LINEAR:
            return std::max(0.0f, (float) (total - step) / (float) std::max<int64_t>(1, total - warmup));
        case PEFT_SCHEDULE_COSINE: {
            double progress = (double) (step - warmup) / (double) std::max<int64_t>(1, total - warmup);
            return (float) std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
        }
        default: return 1.0f;
    }
}

} // namespace peft
