// test_infer.cpp: the KV-cached inference path (model/llama_infer) against the training forward
// (llama_forward with logits_out) on the committed fixtures: GQA, qwen2 biases + tied embeddings,
// Llama 3 rope scaling, biases on all seven projections (attention_bias + mlp_bias); prefill in one piece, in chunks and token by token; with a LoRA applied
// unmerged and merged; and its errors (context overflow, bad token ids, oversized context).
// Also the sampler (model/sample): greedy, seeded sampling, top-k/top-p, repetition penalty.
#include <cmath>
#include <cstring>

#include "adapters/adapter_set.h"
#include "core/rng.h"
#include "io/json.h"
#include "model/llama.h"
#include "model/llama_infer.h"
#include "model/sample.h"
#include "testing.h"

using namespace peft;

namespace {

std::vector<int32_t> test_tokens(int64_t T, int64_t V) {
    std::vector<int32_t> t((size_t) T);
    for (int64_t i = 0; i < T; i++) t[(size_t) i] = (int32_t) ((i * 13 + 7) % V);
    return t;
}


// Prefills the first k tokens (in chunks of max_batch), then feeds the rest one at a time;
// every returned row must match the full forward's row at that position.
void expect_incremental_matches(const llama_model & m, const std::vector<int32_t> & tok, const std::vector<float> & want,
                                int64_t k, int64_t max_batch, const char * what) {
    const int64_t T = (int64_t) tok.size(), V = m.hp.n_vocab;
    llama_infer_state s;
    status st = llama_infer_init(s, m, T, max_batch);
    ASSERT_TRUE(st.ok()) << st.message;
    std::vector<float> got((size_t) V);
    st = llama_infer_eval(m, s, tok.data(), k, got.data());
    ASSERT_TRUE(st.ok()) << st.message;
    EXPECT_LT(peft::testing::rel_error(got.data(), want.data() + (k - 1) * V, V), 1e-5) << what << " prefill " << k;
    for (int64_t t = k; t < T; t++) {
        st = llama_infer_eval(m, s, &tok[(size_t) t], 1, got.data());
        ASSERT_TRUE(st.ok()) << st.message;
        EXPECT_LT(peft::testing::rel_error(got.data(), want.data() + t * V, V), 1e-5) << what << " position " << t;
    }
    EXPECT_EQ(s.n_past, T);
}

void load_fixture(llama_model & m, const char * name) {
    status st = llama_load(m, peft::testing::source_path(std::string("tests/fixtures/") + name), false);
    ASSERT_TRUE(st.ok()) << st.message;
}

// A LoRA on every projection with non-zero B, so the adapter changes the output.
status attach_random_lora(llama_model & m, adapter_set & set, uint64_t seed) {
    const std::string cfg = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": \"all-linear\"}";
    json_document doc;
    PEFT_TRY(doc.parse(cfg.data(), cfg.size(), "test lora"));
    PEFT_TRY(adapters_attach(m, doc.root(), seed, set));
    adapters_set_training(set, false);
    rng r(seed + 100);
    for (param_ref & p : adapter_set_params(set)) {
        if (p.name.find("lora_B") == std::string::npos) continue;
        int64_t n = 1;
        for (int64_t d : p.shape) n *= d;
        r.fill_normal(p.value, n, 0.0f, 0.1f);
    }
    return status::success();
}

} // namespace

TEST(llama_infer, incremental_logits_equal_full_forward_on_fixtures) {
    for (const char * name : {"llama_gqa", "qwen2_tied", "llama3_packed", "llama_bias"}) {
        llama_model m;
        load_fixture(m, name);
        // llama3_packed has original_max_position 16: go past it so the scaled frequencies matter
        const std::vector<int32_t> tok = test_tokens(40, m.hp.n_vocab);
        const std::vector<float> want = peft::testing::forward_logits(m, tok);
        expect_incremental_matches(m, tok, want, 1, 256, name);      // token by token from the start
        expect_incremental_matches(m, tok, want, 13, 256, name);     // one prefill, then decode
        expect_incremental_matches(m, tok, want, 29, 4, name);       // prefill in chunks of 4
    }
}

TEST(llama_infer, adapter_unmerged_and_merged_match_full_forward) {
    for (const char * name : {"llama_gqa", "qwen2_tied", "llama_bias"}) {
        llama_model m;
        load_fixture(m, name);
        const std::vector<int32_t> tok = test_tokens(24, m.hp.n_vocab);
        const std::vector<float> base = peft::testing::forward_logits(m, tok);
        adapter_set set;
        status st = attach_random_lora(m, set, 3);
        ASSERT_TRUE(st.ok()) << st.message;
        const std::vector<float> adapted = peft::testing::forward_logits(m, tok);
        ASSERT_GT(peft::testing::rel_error(adapted.data(), base.data(), (int64_t) base.size()), 1e-3) << "the adapter must matter";
        expect_incremental_matches(m, tok, adapted, 9, 256, name);   // unmerged
        st = adapters_merge(m, set);
        ASSERT_TRUE(st.ok()) << st.message;
        ASSERT_TRUE(m.adapters.empty());
        expect_incremental_matches(m, tok, adapted, 9, 256, name);   // merged
    }
}

TEST(llama_infer, context_overflow_and_bad_tokens_are_errors) {
    llama_model m;
    load_fixture(m, "llama_gqa");
    llama_infer_state s;
    ASSERT_TRUE(llama_infer_init(s, m, 8).ok());
    std::vector<int32_t> tok = test_tokens(9, m.hp.n_vocab);
    std::vector<float> logits((size_t) m.hp.n_vocab);
    status st = llama_infer_eval(m, s, tok.data(), 9, logits.data());
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("context full"), std::string::npos) << st.message;
    EXPECT_EQ(s.n_past, 0);
    ASSERT_TRUE(llama_infer_eval(m, s, tok.data(), 8, logits.data()).ok());
    st = llama_infer_eval(m, s, tok.data(), 1, logits.data());
    EXPECT_FALSE(st.ok());
    EXPECT_EQ(s.n_past, 8);
    llama_infer_reset(s);
    int32_t bad[2] = {1, (int32_t) m.hp.n_vocab};
    st = llama_infer_eval(m, s, bad, 2, logits.data());
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("token id"), std::string::npos) << st.message;
    bad[1] = -1;
    EXPECT_FALSE(llama_infer_eval(m, s, bad, 2, logits.data()).ok());
    EXPECT_EQ(s.n_past, 0);
    // past max_position_embeddings (128 in the fixture)
    llama_infer_state big;
    st = llama_infer_init(big, m, m.hp.max_position + 1);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message.find("max_position_embeddings"), std::string::npos) << st.message;
}

TEST(sample, greedy_is_argmax_with_lowest_id_on_ties) {
    std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f, NAN};
    EXPECT_EQ(sample_argmax(l.data(), (int64_t) l.size()), 1);
    sampler s;
    ASSERT_TRUE(sampler_init(s, sampler_config{}).ok());
    EXPECT_EQ(sampler_sample(s, l.data(), (int64_t) l.size(), nullptr, 0), 1);
}

TEST(sample, seeded_sampling_is_reproducible_and_follows_the_softmax) {
    const std::vector<float> base = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
    sampler_config c;
    c.temperature = 1.0f;
    c.seed = 42;
    sampler a, b;
    ASSERT_TRUE(sampler_init(a, c).ok());
    ASSERT_TRUE(sampler_init(b, c).ok());
    int counts[3] = {0, 0, 0};
    const int n = 20000;
    for (int i = 0; i < n; i++) {
        std::vector<float> la = base, lb = base;
        const int32_t ta = sampler_sample(a, la.data(), 3, nullptr, 0), tb = sampler_sample(b, lb.data(), 3, nullptr, 0);
        ASSERT_EQ(ta, tb);
        counts[ta]++;
    }
    EXPECT_NEAR(counts[0] / (double) n, 0.5, 0.02);
    EXPECT_NEAR(counts[1] / (double) n, 0.3, 0.02);
    EXPECT_NEAR(counts[2] / (double) n, 0.2, 0.02);
}

TEST(sample, top_k_and_top_p_restrict_the_candidates) {
    const std::vector<float> base = {std::log(0.1f), std::log(0.45f), std::log(0.3f), std::log(0.15f)};
    auto draw_set = [&](sampler_config c) {
        sampler s;
        EXPECT_TRUE(sampler_init(s, c).ok());
        std::vector<int> seen(4, 0);
        for (int i = 0; i < 2000; i++) {
            std::vector<float> l = base;
            seen[(size_t) sampler_sample(s, l.data(), 4, nullptr, 0)] = 1;
        }
        return seen;
    };
    sampler_config c;
    c.temperature = 1.0f;
    c.top_k = 1;
    EXPECT_EQ(draw_set(c), (std::vector<int>{0, 1, 0, 0}));
    c.top_k = 2;
    EXPECT_EQ(draw_set(c), (std::vector<int>{0, 1, 1, 0}));
    c.top_k = 0;
    c.top_p = 0.5f;   // 0.45 < 0.5, so the second token (0.3) is still needed
    EXPECT_EQ(draw_set(c), (std::vector<int>{0, 1, 1, 0}));
    c.top_p = 0.4f;
    EXPECT_EQ(draw_set(c), (std::vector<int>{0, 1, 0, 0}));
    c.top_p = 1.0f;
    EXPECT_EQ(draw_set(c), (std::vector<int>{1, 1, 1, 1}));
}

TEST(sample, repetition_penalty_and_bad_configs) {
    sampler s;
    sampler_config c;
    c.repetition_penalty = 2.0f;
    ASSERT_TRUE(sampler_init(s, c).ok());
    std::vector<float> l = {1.0f, 1.5f, -0.5f};
    const int32_t hist[] = {1, 1};
    EXPECT_EQ(sampler_sample(s, l.data(), 3, hist, 2), 0);   // 1.5 / 2 = 0.75 < 1.0
    EXPECT_FLOAT_EQ(l[1], 0.75f);                            // penalised once despite two occurrences
    const int32_t hist2[] = {2};
    l = {1.0f, 1.5f, -0.5f};
    sampler_sample(s, l.data(), 3, hist2, 1);
    EXPECT_FLOAT_EQ(l[2], -1.0f);                            // negative logits are multiplied
    sampler bad;
    EXPECT_FALSE(sampler_init(bad, sampler_config{-1.0f, 0, 1.0f, 1.0f, 0}).ok());
    EXPECT_FALSE(sampler_init(bad, sampler_config{1.0f, -2, 1.0f, 1.0f, 0}).ok());
    EXPECT_FALSE(sampler_init(bad, sampler_config{1.0f, 0, 0.0f, 1.0f, 0}).ok());
    EXPECT_FALSE(sampler_init(bad, sampler_config{1.0f, 0, 1.5f, 1.0f, 0}).ok());
    EXPECT_FALSE(sampler_init(bad, sampler_config{1.0f, 0, 1.0f, 0.0f, 0}).ok());
}
