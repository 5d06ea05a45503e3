// sample.h: picking the next token from a row of logits, as Hugging Face's generate() does:
// repetition penalty, then temperature, top-k and top-p (nucleus) filtering, then a draw from
// the softmax with a seeded generator. temperature 0 means greedy (argmax, lowest id on ties),
// which is deterministic and ignores the seed.
// Not here: beam search, min-p, typical sampling, logit bias.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/status.h"

namespace peft {

struct sampler_config {
    float    temperature = 0.0f;         // 0 = greedy
    int64_t  top_k = 0;                  // 0 = off
    float    top_p = 1.0f;               // 1 = off
    float    repetition_penalty = 1.0f;  // 1 = off; HF: logit<0 ? logit*p : logit/p on seen tokens
    uint64_t seed = 0;
};

struct sampler {
    sampler_config cfg;
    rng            r;
    // scratch reused across calls (no allocation per token once it has grown to V)
    std::vector<std::pair<float, int32_t>> cand;
    std::vector<uint8_t>                   seen;
};

// Validates the configuration (temperature >= 0, top_k >= 0, 0 < top_p <= 1, penalty > 0).
status sampler_init(sampler & s, const sampler_config & cfg);

// Picks a token from logits[V]; logits are modified (penalty and temperature applied in place).
// history (may be null) holds the token ids the repetition penalty applies to.
int32_t sampler_sample(sampler & s, float * logits, int64_t V, const int32_t * history, int64_t n_history);

// The greedy choice: index of the largest logit (lowest index on ties; NaN never wins).
int32_t sample_argmax(const float * logits, int64_t V);

} // namespace peft
