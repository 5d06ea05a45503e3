// adapter_test_util.h: small helpers shared by the adapter tests: a tiny random Llama, JSON
// configs from text, one training/eval pass, parameter snapshots.
#pragma once
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "adapters/adapter_set.h"
#include "adapters/lora.h"
#include "io/json.h"
#include "model/llama.h"
#include "train/calibrate.h"
#include "train/data.h"
#include "train/trainer.h"
#include "testing.h"

namespace peft::adapter_test {

// 2 layers, C=32, QD=32, KVD=16, F=48, V=64 (min(in,out) is 16 for k/v)
inline llama_hparams tiny_hparams(int64_t n_layer = 2, int64_t n_embd = 32) {
    llama_hparams hp;
    hp.n_vocab = 64;
    hp.n_embd = n_embd;
    hp.n_layer = n_layer;
    hp.n_head = 4;
    hp.n_head_kv = 2;
    hp.head_dim = n_embd / 4;
    hp.n_ff = 48;
    hp.rms_eps = 1e-5f;
    hp.max_position = 128;
    return hp;
}

inline std::unique_ptr<llama_model> tiny_model(uint64_t seed = 7, dtype storage = PEFT_DTYPE_F32, int64_t n_layer = 2,
                                               int64_t n_embd = 32) {
    auto m = std::make_unique<llama_model>();
    status st = llama_init_random(*m, tiny_hparams(n_layer, n_embd), false, seed, storage);
    EXPECT_TRUE(st.ok()) << st.message;
    return m;
}

// A JSON document that outlives the values taken from it.
struct config {
    json_document doc;
    explicit config(const std::string & text) {
        status st = doc.parse(text.data(), text.size(), "test config");
        EXPECT_TRUE(st.ok()) << st.message << "\n" << text;
    }
    json_value root() const { return doc.root(); }
};

// Calibration for inits that ask for it (CorDA's forward, Deep LoRA's forward + backward):
// 6 fixed rows of 8 tokens, every token scored, whatever the path.
struct test_calibration : calibration_source {
    static data_rows rows() {
        data_rows d;
        d.T = 8;
        d.n_rows = 6;
        for (int64_t r = 0; r < d.n_rows; r++) {
            for (int64_t t = 0; t < d.T; t++) {
                d.input_ids.push_back((int32_t) ((r * 13 + t * 5) % 60 + 2));
                d.labels.push_back(d.input_ids.back());
                d.position_ids.push_back((int32_t) t);
                d.segment_ids.push_back(1);
            }
        }
        return d;
    }
    status run(const std::string &, int64_t n_samples, const target_info * targets, int64_t n, calibration_observer & obs) override {
        return calibrate_rows(*model, rows(), n_samples, 2, targets, n, obs);
    }
    // probe training (LoRA-drop's stage 1): AdamW at lr 1e-2, no weight decay
    status train_probe(double fraction, int64_t steps, adapter_module * const * mods, const target_info * targets, int64_t n,
                       calibration_observer & obs) override {
        train_config c;
        c.opt.lr = 1e-2f;
        c.opt.weight_decay = 0.0f;
        return calibrate_train_rows(*model, rows(), fraction, 2, steps, c, mods, targets, n, obs);
    }
    llama_model * model = nullptr;
};

inline status attach(llama_model & m, const std::string & cfg_text, adapter_set & s, uint64_t seed = 1) {
    config c(cfg_text);
    test_calibration calib;
    calib.model = &m;
    return adapters_attach(m, c.root(), seed, s, false, &calib);
}

// A fixed batch of B x T tokens (targets shifted from the tokens).
struct batch_data {
    int64_t B = 2, T = 8;
    std::vector<int32_t> tok, tgt;
    llama_batch batch() const { return llama_batch{tok.data(), tgt.data(), nullptr, nullptr, B, T}; }
};
inline batch_data make_batch(int64_t V, int64_t B = 2, int64_t T = 8) {
    batch_data d;
    d.B = B;
    d.T = T;
    d.tok.resize((size_t) (B * T));
    d.tgt.resize((size_t) (B * T));
    for (int64_t i = 0; i < B * T; i++) d.tok[(size_t) i] = (int32_t) ((i * 11 + 5) % V);
    llama_shift_labels(d.tgt.data(), d.tok.data(), B, T);
    return d;
}

inline void zero_grads(const std::vector<param_ref> & ps) {
    for (const param_ref & p : ps) {
        if (!p.grad) continue;
        int64_t n = 1;
        for (int64_t d : p.shape) n *= d;
        std::memset(p.grad, 0, (size_t) n * sizeof(float));
    }
}

inline int64_t numel(const param_ref & p) {
    int64_t n = 1;
    for (int64_t d : p.shape) n *= d;
    return n;
}

// Copies of every parameter value (for bitwise comparisons).
inline std::vector<std::vector<float>> snapshot(const std::vector<param_ref> & ps) {
    std::vector<std::vector<float>> out;
    for (const param_ref & p : ps) out.emplace_back(p.value, p.value + numel(p));
    return out;
}

// Fills every lora_B (and optionally lora_A) with reproducible values so the adapter matters.
inline void randomize(const std::vector<param_ref> & ps, uint64_t seed, float b_scale = 0.05f, bool also_a = false) {
    uint64_t k = seed;
    for (const param_ref & p : ps) {
        bool is_b = p.name.find("lora_B") != std::string::npos;
        if (is_b) peft::testing::fixed_fill(p.value, numel(p), ++k, b_scale);
        else if (also_a) peft::testing::fixed_fill(p.value, numel(p), ++k, 0.2f);
    }
}

// The keep / (1 - p) factors [N*IC] the module's last forward applied (and its backward will):
// drop(ones), or ones without dropout. With p > 0 some, but not all, must be dropped.
template <typename module>
std::vector<float> dropout_factors(const module & m, int64_t N, int64_t IC, float p) {
    std::vector<float> ones((size_t) (N * IC), 1.0f), f((size_t) (N * IC), 1.0f);
    if (m.dropout_active()) m.dropout_input(ones.data(), N, f.data());
    if (p > 0) {
        int64_t zeros = 0;
        for (float v : f) zeros += v == 0.0f;
        EXPECT_GT(zeros, 0) << "dropout must drop something of " << N * IC << " elements at p=" << p;
        EXPECT_LT(zeros, N * IC);
    }
    return f;
}

// Stands in for training: every trainable tensor gets reproducible values that make the adapter
// matter. lora_B-like tensors (zero at init) small, magnitudes (DoRA's row norms) scaled by
// 1 +- 10%, everything else replaced at scale 0.2. Frozen tensors (LoRA-FA's A, VeRA's shared
// projections) keep their init.
inline void randomize_trainable(const std::vector<param_ref> & ps, uint64_t seed) {
    uint64_t k = seed;
    for (const param_ref & p : ps) {
        if (!p.trainable) continue;
        const int64_t n = numel(p);
        if (p.name.find("magnitude") != std::string::npos) {
            std::vector<float> u((size_t) n);
            peft::testing::fixed_fill(u.data(), n, ++k, 0.1f);
            for (int64_t i = 0; i < n; i++) p.value[i] *= 1.0f + u[(size_t) i];
        } else {
            peft::testing::fixed_fill(p.value, n, ++k, p.name.find("lora_B") != std::string::npos ? 0.05f : 0.2f);
        }
    }
}

// Loss (and logits) of one forward; grad_scale 0 = no backward preparation.
inline float forward_logits(llama_model & m, const batch_data & d, std::vector<float> & logits, bool recompute = false) {
    llama_state s;
    status st = llama_state_init(s, m, d.B, d.T, recompute);
    EXPECT_TRUE(st.ok()) << st.message;
    logits.assign((size_t) (d.B * d.T * m.hp.n_vocab), 0.0f);
    return llama_forward(m, s, d.batch(), 0.0f, logits.data());
}

// ||a - b|| / ||b|| (METHODS §0 "fp-exact": <= 1e-5 in fp32)
inline double rel_diff(const std::vector<float> & a, const std::vector<float> & b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) {
        num += ((double) a[i] - b[i]) * ((double) a[i] - b[i]);
        den += (double) b[i] * b[i];
    }
    return std::sqrt(num / den);
}

} // namespace peft::adapter_test
