// The activation plan of llama_state: a projection input (the q/k/v and gate/up norm outputs,
// the down_proj input) gets a buffer of its own per layer only when backward reads it (a weight
// gradient, or an adapter whose backward reads x). LoRA-FA reads none (METHODS §16: dB needs
// only x A^T), so it holds N (2C + F) floats per layer less than LoRA; gradients are unchanged.
#include <gtest/gtest.h>

#include "../adapters/adapter_test_util.h"
#include "core/arena.h"
#include "train/trainer.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

size_t planned_bytes(const std::string & cfg, bool recompute, int64_t B, int64_t T) {
    auto m = tiny_model(7);
    adapter_set s;
    EXPECT_TRUE(attach(*m, cfg, s).ok());
    llama_state st;
    EXPECT_TRUE(llama_state_init(st, *m, B, T, recompute).ok());
    return st.act_arena.capacity;
}

// dB of every module after one forward + backward of the fixed batch
std::vector<std::vector<float>> grads_of_b(bool recompute) {
    auto m = tiny_model(7);
    adapter_set s;
    EXPECT_TRUE(attach(*m, "{\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"lora_fa\":true}", s).ok());
    randomize(adapter_set_params(s), 5, 0.1f);   // B != 0: dx reaches every layer through the adapters too
    const batch_data d = make_batch(m->hp.n_vocab);
    llama_state st;
    EXPECT_TRUE(llama_state_init(st, *m, d.B, d.T, recompute).ok());
    std::vector<param_ref> ps = adapter_set_params(s);
    zero_grads(ps);
    llama_forward(*m, st, d.batch(), 1.0f);
    llama_backward(*m, st, d.batch());
    std::vector<std::vector<float>> out;
    for (const param_ref & p : ps) {
        if (p.grad) out.emplace_back(p.grad, p.grad + numel(p));
    }
    return out;
}

} // namespace

TEST(activation_plan, lora_fa_keeps_no_projection_inputs) {
    const int64_t B = 2, T = 8, N = B * T;
    const llama_hparams hp = tiny_hparams();
    const size_t lora = planned_bytes("{\"r\":4,\"target_modules\":\"all-linear\"}", false, B, T);
    const size_t fa = planned_bytes("{\"r\":4,\"target_modules\":\"all-linear\",\"lora_fa\":true}", false, B, T);
    // per layer: xn1 [N,C], xn2 [N,C], h [N,F], each 64-byte aligned
    const size_t per_layer = 2 * arena_align((size_t) (N * hp.n_embd) * 4) + arena_align((size_t) (N * hp.n_ff) * 4);
    EXPECT_EQ(lora - fa, per_layer * (size_t) hp.n_layer);
    // a LoRA on q and v only reads the attention-norm output: gate/up and down inputs are shared
    const size_t qv = planned_bytes("{\"r\":4,\"target_modules\":[\"q_proj\",\"v_proj\"]}", false, B, T);
    EXPECT_EQ(lora - qv, (per_layer - arena_align((size_t) (N * hp.n_embd) * 4)) * (size_t) hp.n_layer);
}

TEST(activation_plan, shared_inputs_leave_the_gradients_unchanged) {
    // recompute keeps every input of its one slot: the reference for the shared plan
    const auto shared = grads_of_b(false), kept = grads_of_b(true);
    ASSERT_EQ(shared.size(), kept.size());
    ASSERT_FALSE(shared.empty());
    for (size_t i = 0; i < shared.size(); i++) EXPECT_EQ(shared[i], kept[i]) << "tensor " << i;
}
