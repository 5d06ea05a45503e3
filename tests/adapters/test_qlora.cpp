// Adapter methods over a 4-bit NF4 base (QLoRA, QDoRA, QVeRA, QPiSSA): the base stays
// quantized, an output-preserving init reproduces the dequantized base's loss, PiSSA's residual
// is re-quantized, training steps run, and merging lands on deq(W) + delta.
// The reference is an independent model: the f32 checkpoint with every projection replaced by
// qtensor_rows_f32 of its own quantization (a plain f32 base, no quantized products).
#include <cmath>
#include <memory>
#include <vector>

#include "adapter_test_util.h"
#include "fixture_util.h"
#include "model/llama.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

quant_options nf4_dq() {
    quant_options o;
    o.double_quant = true;
    return o;
}

std::unique_ptr<llama_model> nf4_model() {
    auto m = std::make_unique<llama_model>();
    const quant_options o = nf4_dq();
    EXPECT_TRUE(llama_load(*m, peft::testing::source_path("tests/fixtures/llama_gqa"), false, &o).ok());
    return m;
}

// The f32 model whose projections are deq(Q(W)).
std::unique_ptr<llama_model> dequantized_model() {
    auto m = std::make_unique<llama_model>();
    EXPECT_TRUE(llama_load(*m, peft::testing::source_path("tests/fixtures/llama_gqa"), false).ok());
    for (int64_t l = 0; l < m->hp.n_layer; l++) {
        for (int p = 0; p < LLAMA_PROJ_COUNT; p++) {
            const linear_weight & w = m->proj_weight(l, (llama_proj) p);
            std::vector<float> W((size_t) (w.OC * w.IC));
            linear_weight_rows_f32(W.data(), w, 0, w.OC);
            qtensor q;
            EXPECT_TRUE(qtensor_quantize(W.data(), w.OC, w.IC, nf4_dq(), "w", q).ok());
            qtensor_rows_f32(q, 0, q.OC, W.data());
            llama_replace_weight(*m, l, (llama_proj) p, W.data(), PEFT_DTYPE_F32);
        }
    }
    return m;
}

float loss_of(llama_model & m, const peft::testing::parity_batch & b) {
    llama_state s;
    EXPECT_TRUE(llama_state_init(s, m, b.B, b.T, false).ok());
    return llama_forward(m, s, b.batch(), 0.0f);
}

bool all_quantized(const llama_model & m) {
    for (int64_t l = 0; l < m.hp.n_layer; l++) {
        for (int p = 0; p < LLAMA_PROJ_COUNT; p++) {
            if (!m.proj_weight(l, (llama_proj) p).q) return false;
        }
    }
    return true;
}

struct qcase {
    const char * cfg;
    bool         preserves_output;   // the init leaves the model's output unchanged
};

class qlora_method : public ::testing::TestWithParam<qcase> {};

} // namespace

TEST_P(qlora_method, trains_over_nf4_and_merges_onto_dequantized_base) {
    const qcase c = GetParam();
    const peft::testing::parity_batch b = peft::testing::parity_batch_load();
    auto ref = dequantized_model();
    const float base_loss = loss_of(*ref, b);
    auto m = nf4_model();
    ASSERT_TRUE(all_quantized(*m));
    EXPECT_EQ(loss_of(*m, b), loss_of(*m, b));   // deterministic
    EXPECT_NEAR(loss_of(*m, b), base_loss, 1e-5 * base_loss) << "the NF4 base is its dequantized weights";
    adapter_set s;
    const status ast = attach(*m, c.cfg, s);
    ASSERT_TRUE(ast.ok()) << c.cfg << ": " << ast.message;
    EXPECT_TRUE(all_quantized(*m)) << "the base stays 4-bit (a PiSSA residual is re-quantized)";
    const float init_loss = loss_of(*m, b);
    if (c.preserves_output) {
        EXPECT_NEAR(init_loss, base_loss, 1e-5 * base_loss) << c.cfg;
    } else {
        EXPECT_NEAR(init_loss, base_loss, 0.05 * base_loss) << c.cfg << ": re-quantization moves the output a little";
    }
    // a few steps: the loss falls and stays finite
    const std::vector<float> traj = peft::testing::trajectory_train(*m, s, b, 5);
    ASSERT_EQ(traj.size(), 5u);
    for (float l : traj) EXPECT_TRUE(std::isfinite(l));
    EXPECT_LT(traj.back(), traj.front()) << c.cfg;
    // merge: onto deq(W), in f32; the merged model gives the adapted model's loss
    adapters_set_training(s, false);
    const float adapted = loss_of(*m, b);
    ASSERT_TRUE(adapters_merge(*m, s).ok());
    EXPECT_NEAR(loss_of(*m, b), adapted, 1e-4 * adapted) << c.cfg;
}

INSTANTIATE_TEST_SUITE_P(methods, qlora_method,
                         ::testing::Values(qcase{"{\"adapter\":\"lora\",\"r\":4,\"target_modules\":\"all-linear\"}", true},
                                           qcase{"{\"adapter\":\"lora\",\"use_dora\":true,\"r\":4,\"target_modules\":\"all-linear\"}", true},
                                           qcase{"{\"adapter\":\"vera\",\"r\":4,\"target_modules\":\"all-linear\"}", true},
                                           qcase{"{\"adapter\":\"lora\",\"r\":4,\"init_lora_weights\":\"pissa\",\"target_modules\":\"all-linear\"}", false}));

TEST(qlora, full_fine_tuning_of_a_4bit_model_is_refused) {
    llama_model m;
    const quant_options o = nf4_dq();
    status st = llama_load(m, peft::testing::source_path("tests/fixtures/llama_gqa"), true, &o);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message.find("full fine-tuning"), std::string::npos) << st.message;
    EXPECT_FALSE(st.hint.empty());
}
