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
