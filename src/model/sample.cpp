// sample.cpp: next-token selection (sample.h), in the order of Hugging Face's logits
// processors: RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
// TopPLogitsWarper, then multinomial sampling.
#include "model/sample.h"

#include <algorithm>
#include <cmath>

namespace peft {

status sampler_init(sampler & s, const sampler_config & cfg) {
    if (!(cfg.temperature >= 0.0f) || !std::isfinite(cfg.temperature)) {
        return make_mismatch(PEFT_STATUS_ARGUMENT, "sampling", "temperature", ">= 0 (0 = greedy)", std::to_string(cfg.temperature));
    }
    if (cfg.top_k < 0) return make_mismatch(PEFT_STATUS_ARGUMENT, "sampling", "top-k", ">= 0 (0 = off)", std::to_string(cfg.top_k));
    if (!(cfg.top_p > 0.0f && cfg.top_p <= 1.0f)) {
        return make_mismatch(PEFT_STATUS_ARGUMENT, "sampling", "top-p", "in (0, 1] (1 = off)", std::to_string(cfg.top_p));
    }
    if (!(cfg.repetition_penalty > 0.0f) || !std::isfinite(cfg.repetition_penalty)) {
        return make_mismatch(PEFT_STATUS_ARGUMENT, "sampling", "repetition penalty", "> 0 (1 = off)",
                             std::to_string(cfg.repetition_penalty));
    }
    s.cfg = cfg;
    s.r = rng(cfg.seed);
    return status::success();
}

int32_t sample_argmax(const float * logits, int64_t V) {
    int64_t best = 0;
    float bv = -INFINITY;
    for (int64_t i = 0; i < V; i++) {
        if (logits[i] > bv) {   // strict: the lowest index wins ties; NaN compares false
            bv = logits[i];
            best = i;
        }
    }
    return (int32_t) best;
}

int32_t sampler_sample(sampler & s, float * logits, int64_t V, const int32_t * history, int64_t n_history) {
    const sampler_config & c = s.cfg;
    if (c.repetition_penalty != 1.0f && history && n_history > 0) {
        // each seen token is penalised once, however often it occurred (HF gathers by id)
        s.seen.assign((size_t) V, 0);
        for (int64_t i = 0; i < n_history; i++) {
            const int32_t t = history[i];
            if (t < 0 || t >= V || s.seen[(size_t) t]) continue;
            s.seen[(size_t) t] = 1;
            float & l = logits[t];
            l = l < 0.0f ? l * c.repetition_penalty : l / c.repetition_penalty;
        }
    }
    if (c.temperature <= 0.0f) return sample_argmax(logits, V);

    const float inv_t = 1.0f / c.temperature;
    s.cand.clear();
    for (int64_t i = 0; i < V; i++) {
        const float l = logits[i] * inv_t;
        logits[i] = l;
        if (!std::isnan(l) && l != -INFINITY) s.cand.emplace_back(l, (int32_t) i);
    }
    if (s.cand.empty()) return sample_argmax(logits, V);
    // descending logit, ascending id on ties: a total order, so results do not depend on the
    // sort algorithm
    auto higher = [](const std::pair<float, int32_t> & a, const std::pair<float, int32_t> & b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
    };
    const bool need_sorted = c.top_p < 1.0f;
    if (c.top_k > 0 && (size_t) c.top_k < s.cand.size()) {
        std::nth_element(s.cand.begin(), s.cand.begin() + (c.top_k - 1), s.cand.end(), higher);
        // HF keeps every token whose logit ties the k-th one
        const float kth = s.cand[(size_t) (c.top_k - 1)].first;
        auto keep_end = std::partition(s.cand.begin() + c.top_k, s.cand.end(),
                                       [kth](const std::pair<float, int32_t> & x) { return x.first >= kth; });
        s.cand.erase(keep_end, s.cand.end());
    }
    if (need_sorted) std::sort(s.cand.begin(), s.cand.end(), higher);

    // softmax over the candidates, in double so long vocabularies sum stably
    float mx = -INFINITY;
    for (const auto & x : s.cand) mx = std::max(mx, x.first);
    double total = 0.0;
    for (auto & x : s.cand) {
        x.first = std::exp(x.first - mx);   // from here on: unnormalised probabilities
        total += x.first;
    }
    size_t n_keep = s.cand.size();
    if (need_sorted) {
        // HF TopP: a token survives if the probability mass ranked strictly above it is below
        // top_p; at least one token always survives
        double before = 0.0, kept = 0.0;
        n_keep = 0;
        for (const auto & x : s.cand) {
            if (n_keep > 0 && before >= (double) c.top_p * total) break;
            before += x.first;
            kept += x.first;
            n_keep++;
        }
        total = kept;
    }
    const double u = (double) s.r.uniform() * total;
    double acc = 0.0;
    for (size_t i = 0; i < n_keep; i++) {
        acc += s.cand[i].first;
        if (u < acc) return s.cand[i].second;
    }
    return s.cand[n_keep - 1].second;   // rounding left u at the very end
}

} // namespace peft
