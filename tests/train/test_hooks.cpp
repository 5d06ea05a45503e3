// The adapter method lifecycle as train_step runs it (adapter.h): before_update after clipping (it sees the clipped gradients, the parameters not yet
// moved), after_update, on_step_end with the optimizer's per-parameter state (a reset zeroes
// exactly that parameter's moments). Bench, tests and the trainer all go through train_step.
#include <cmath>

#include "adapters/adapter_test_util.h"
#include "adapters/lora.h"
#include "train/trainer.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

struct counting_method : lora_method {
    std::vector<std::string> calls;
    std::vector<float> b_at_before;   // lora_B of module 0 when before_update ran
    float grad_norm_at_before = -1.0f;
    bool reset_ok = false;
    status begin(const target_info * t, int64_t n) override {
        calls.push_back("begin " + std::to_string(n) + " " + (n ? t[0].path : ""));
        return {};
    }
    void before_update(const step_info & s, adapter_module * const * mods, int64_t) override {
        calls.push_back("before " + std::to_string(s.step));
        auto * lm = dynamic_cast<lora_module *>(mods[0]);
        b_at_before = lm->B;
        double g = 0;
        for (float x : lm->dB) g += (double) x * x;
        grad_norm_at_before = (float) std::sqrt(g);
    }
    void after_update(const step_info & s, adapter_module * const *, int64_t) override { calls.push_back("after " + std::to_string(s.step)); }
    void on_step_end(const step_info & s, adapter_module * const * mods, int64_t, optimizer_view & opt) override {
        calls.push_back("end " + std::to_string(s.step));
        reset_ok = opt.reset_state(dynamic_cast<lora_module *>(mods[0])->B.data());
    }
};

} // namespace

TEST(hooks, train_step_runs_the_method_lifecycle_in_order) {
    auto m = tiny_model();
    adapter_set set;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],\"init_lora_weights\":\"gaussian\"}", set).ok());
    auto counting = std::make_unique<counting_method>();
    // (adapters_attach calls begin with the selected targets before creating modules)
    ASSERT_TRUE(counting->begin(set.targets.data(), (int64_t) set.targets.size()).ok());
    counting_method * cm = counting.get();
    set.method = std::move(counting);   // the modules stay; train_step calls this method's hooks

    randomize(adapter_set_params(set), 3);
    adamw opt;
    ASSERT_TRUE(opt.init(adapter_optim_params(set), adamw_config{}).ok());
    llama_state s;
    ASSERT_TRUE(llama_state_init(s, *m, 2, 8, false).ok());
    const batch_data d = make_batch(m->hp.n_vocab);
    const llama_batch b = d.batch();
    train_config cfg;
    cfg.max_grad_norm = 1e-3f;   // clipping must have happened before before_update
    cfg.total_steps = 2;
    step_result r;
    const std::vector<float> b0 = dynamic_cast<lora_module *>(set.modules[0].get())->B;
    ASSERT_TRUE(train_step(*m, s, opt, cfg, &b, 1, 0, r, &set).ok());
    ASSERT_TRUE(train_step(*m, s, opt, cfg, &b, 1, 1, r, &set).ok());
    EXPECT_EQ(cm->calls, (std::vector<std::string>{"begin 4 model.layers.0.self_attn.q_proj", "before 0", "after 1", "end 1", "before 1",
                                                     "after 2", "end 2"}));
    EXPECT_LE(cm->grad_norm_at_before, 1e-3f * 1.001f) << "before_update saw unclipped gradients";
    EXPECT_GT(cm->grad_norm_at_before, 0.0f);
    EXPECT_TRUE(cm->reset_ok);
    // the reset zeroed exactly module 0's lora_B moments; another parameter keeps its state
    size_t b_index = opt.params.size();
    for (size_t i = 0; i < opt.params.size(); i++) {
        if (opt.params[i].value == dynamic_cast<lora_module *>(set.modules[0].get())->B.data()) b_index = i;
    }
    ASSERT_LT(b_index, opt.params.size());
    for (int64_t j = 0; j < opt.params[b_index].n; j++) ASSERT_EQ(opt.m[b_index][j], 0.0f);
    double other = 0;
    for (int64_t j = 0; j < opt.params[0].n; j++) other += std::fabs(opt.m[0][j]);
    EXPECT_GT(other, 0.0) << "a reset must not touch other parameters";
    float unknown = 0.0f;
    EXPECT_FALSE(opt.reset_state(&unknown));
    EXPECT_NE(cm->b_at_before, b0) << "the second step's before_update sees the first update";
}

// LoRA-FA (METHODS §16 [QUIRK]): the update of B uses g_B (A A^T + 1e-8 I)^-1 / s^2, applied by
// the method's before_update after clipping; A never changes.
TEST(hooks, lora_fa_preconditions_the_gradient_of_b_and_keeps_a) {
    auto m = tiny_model();
    adapter_set set;
    ASSERT_TRUE(attach(*m, "{\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"],\"lora_fa\":true}", set).ok());
    randomize(adapter_set_params(set), 3);   // B != 0 so that the gradient reaches every factor
    auto * lm = dynamic_cast<lora_module *>(set.modules[0].get());
    const std::vector<float> a0 = lm->A;
    const batch_data d = make_batch(m->hp.n_vocab);
    const llama_batch b = d.batch();
    llama_state s;
    ASSERT_TRUE(llama_state_init(s, *m, 2, 8, false).ok());
    // the raw gradient, as train_step computes it before the hooks
    std::fill(lm->dB.begin(), lm->dB.end(), 0.0f);
    llama_forward(*m, s, b, 1.0f);
    llama_backward(*m, s, b);
    const std::vector<float> raw = lm->dB;
    // expected: raw (A A^T + 1e-8 I)^-1 / s^2, solved in double here by Gauss-Jordan
    const int64_t R = 4, IC = lm->t.in_features, OC = lm->t.out_features;
    std::vector<double> G((size_t) (R * 2 * R), 0.0);
    for (int64_t i = 0; i < R; i++) {
        for (int64_t j = 0; j < R; j++) {
            double acc = i == j ? 1e-8 : 0.0;
            for (int64_t k = 0; k < IC; k++) acc += (double) lm->A[(size_t) (i * IC + k)] * lm->A[(size_t) (j * IC + k)];
            G[(size_t) (i * 2 * R + j)] = acc;
        }
        G[(size_t) (i * 2 * R + R + i)] = 1.0;
    }
    for (int64_t c = 0; c < R; c++) {
        const double p = G[(size_t) (c * 2 * R + c)];
        for (int64_t j = 0; j < 2 * R; j++) G[(size_t) (c * 2 * R + j)] /= p;
        for (int64_t r = 0; r < R; r++) {
            if (r == c) continue;
            const double f = G[(size_t) (r * 2 * R + c)];
            for (int64_t j = 0; j < 2 * R; j++) G[(size_t) (r * 2 * R + j)] -= f * G[(size_t) (c * 2 * R + j)];
        }
    }
    const double s2 = (double) lm->scaling * lm->scaling;
    adamw opt;
    adamw_config oc;
    oc.lr = 1e-3f;
    ASSERT_TRUE(opt.init(adapter_optim_params(set), oc).ok());
    train_config cfg;
    cfg.opt = oc;
    cfg.max_grad_norm = 0.0f;   // no clipping: the raw gradient above is what the hook sees
    cfg.total_steps = 1;
    step_result r;
    ASSERT_TRUE(train_step(*m, s, opt, cfg, &b, 1, 0, r, &set).ok());
    double err = 0, norm = 0;
    for (int64_t o = 0; o < OC; o++) {
        for (int64_t k = 0; k < R; k++) {
            double want = 0;
            for (int64_t j = 0; j < R; j++) want += (double) raw[(size_t) (o * R + j)] * G[(size_t) (j * 2 * R + R + k)];
            want /= s2;
            err += (want - lm->dB[(size_t) (o * R + k)]) * (want - lm->dB[(size_t) (o * R + k)]);
            norm += want * want;
        }
    }
    EXPECT_LT(std::sqrt(err / norm), 1e-5);
    EXPECT_GT(norm, 0.0);
    EXPECT_EQ(lm->A, a0) << "A moved";
    EXPECT_TRUE(lm->dA.empty()) << "a dA buffer exists";
}
