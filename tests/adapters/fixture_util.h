// fixture_util.h: reading PyTorch-made fixtures (tests/fixtures/*/reference.safetensors) in the
// adapter tests, the sign-invariant views used to compare singular vectors, the dense delta of a
// factor pair, and the parts of the 10-step trajectory tests shared by every method (the
// llama_gqa batch, the reference losses, the final tensors).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include <functional>

#include <gtest/gtest.h>

#include "adapters/adapter_set.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "testing.h"
#include "train/trainer.h"

namespace peft::testing {

// Every element of tensor `name` as f32 (a test failure, and {}, when it is missing).
inline std::vector<float> fixture_tensor(const safetensors_file & f, const std::string & name) {
    const tensor_info * t = f.find(name);
    EXPECT_NE(t, nullptr) << name;
    if (!t) return {};
    std::vector<float> v((size_t) t->n_elements);
    EXPECT_TRUE(read_f32(*t, v.data()).ok());
    return v;
}

// |v| elementwise: a singular vector and its negation compare equal.
inline std::vector<float> abs_values(std::vector<float> v) {
    for (float & x : v) x = std::fabs(x);
    return v;
}

// s B A [OC,IC] in double (B [OC,r], A [r,IC]): the adapter's delta, to compare with W - W_res.
inline std::vector<double> scaled_product(const float * B, const float * A, int64_t OC, int64_t IC, int64_t r, double s) {
    std::vector<double> out((size_t) (OC * IC), 0.0);
    for (int64_t i = 0; i < OC; i++) {
        for (int64_t j = 0; j < IC; j++) {
            double acc = 0.0;
            for (int64_t p = 0; p < r; p++) acc += (double) B[i * r + p] * A[p * IC + j];
            out[(size_t) (i * IC + j)] = s * acc;
        }
    }
    return out;
}

// The batch every trajectory fixture trains on: input_ids / labels of
// tests/fixtures/llama_gqa/reference.safetensors, labels shifted into targets.
struct parity_batch {
    int64_t B = 0, T = 0;
    std::vector<int32_t> tok, tgt;
    llama_batch batch() const { return llama_batch{tok.data(), tgt.data(), nullptr, nullptr, B, T}; }
};

inline parity_batch parity_batch_load() {
    parity_batch b;
    safetensors_file f;
    EXPECT_TRUE(safetensors_open(source_path("tests/fixtures/llama_gqa/reference.safetensors"), f).ok());
    const tensor_info * ids = f.find("input_ids");
    const tensor_info * labels = f.find("labels");
    EXPECT_TRUE(ids && labels);
    if (!ids || !labels) return b;
    b.B = ids->shape[0];
    b.T = ids->shape[1];
    std::vector<int32_t> lab((size_t) (b.B * b.T));
    b.tok.resize(lab.size());
    b.tgt.resize(lab.size());
    std::memcpy(b.tok.data(), ids->data, b.tok.size() * 4);
    std::memcpy(lab.data(), labels->data, lab.size() * 4);
    llama_shift_labels(b.tgt.data(), lab.data(), b.B, b.T);
    return b;
}

// `steps` optimizer steps of s on the fixture batch through train_step, so the method's hooks run
// as in peft train, with the optimizer of every trajectory generator (tools/ref_lora.py: torch
// AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, constant lr, no clipping).
// after_step(i) runs after step i, while the gradients are still step i's. Returns the losses.
inline std::vector<float> trajectory_train(llama_model & m, adapter_set & s, const parity_batch & pb, int64_t steps = 10,
                                           const std::function<void(int64_t)> & after_step = {}) {
    train_config tc;
    tc.opt.lr = 1e-3f;
    tc.opt.beta1 = 0.9f;
    tc.opt.beta2 = 0.999f;
    tc.opt.eps = 1e-8f;
    tc.opt.weight_decay = 0.01f;
    tc.schedule = PEFT_SCHEDULE_CONSTANT;
    tc.max_grad_norm = 0.0f;
    tc.total_steps = steps;
    adamw opt;
    EXPECT_TRUE(opt.init(adapter_optim_params(s), tc.opt).ok());
    llama_state ls;
    EXPECT_TRUE(llama_state_init(ls, m, pb.B, pb.T, false).ok());
    const llama_batch batch = pb.batch();
    std::vector<float> losses;
    for (int64_t step = 0; step < steps; step++) {
        step_result r;
        const status st = train_step(m, ls, opt, tc, &batch, 1, step, r, &s);
        EXPECT_TRUE(st.ok()) << st.message;
        if (!st.ok()) break;
        losses.push_back(r.loss);
        if (after_step) after_step(step);
    }
    return losses;
}

// Each step's loss against <prefix>traj.loss (relative, <= tol); returns the worst relative
// difference.
inline double expect_losses(const safetensors_file & ref, const std::vector<float> & got, double tol, const std::string & prefix = "") {
    const std::vector<float> want = fixture_tensor(ref, prefix + "traj.loss");
    EXPECT_EQ(want.size(), got.size());
    double worst = 0;
    for (size_t i = 0; i < std::min(want.size(), got.size()); i++) {
        const double rel = std::fabs((double) got[i] - want[i]) / std::fabs((double) want[i]);
        worst = std::max(worst, rel);
        EXPECT_LE(rel, tol) << "step " << i << ": got " << got[i] << " want " << want[i];
    }
    return worst;
}

// Every tensor of ps (all of them unless trainable_only) against the fixture's
// "<prefix>final.<name>", within abs <= 1e-5 or max-normwise <= 1e-4; returns the worst normwise
// difference.
inline double expect_final_tensors(const safetensors_file & ref, const std::vector<param_ref> & ps, bool trainable_only,
                                   const std::string & prefix = "") {
    double worst = 0;
    for (const param_ref & p : ps) {
        if (trainable_only && !p.trainable) continue;
        const tensor_info * t = ref.find(prefix + "final." + p.name);
        EXPECT_NE(t, nullptr) << p.name;
        if (!t) continue;
        EXPECT_EQ(t->shape, p.shape) << p.name;
        if (t->shape != p.shape) continue;
        std::vector<float> want((size_t) t->n_elements);
        EXPECT_TRUE(read_f32(*t, want.data()).ok());
        double max_diff = 0, max_ref = 0;
        for (size_t i = 0; i < want.size(); i++) {
            max_diff = std::max(max_diff, (double) std::fabs(p.value[i] - want[i]));
            max_ref = std::max(max_ref, (double) std::fabs(want[i]));
        }
        worst = std::max(worst, max_diff / max_ref);
        EXPECT_TRUE(max_diff <= 1e-5 || max_diff / max_ref <= 1e-4) << p.name << ": max abs diff " << max_diff;
    }
    return worst;
}

} // namespace peft::testing
