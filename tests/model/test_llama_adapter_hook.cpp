// The adapter hook of the model: every projection routed through an adapter_module that
// reproduces the base linear must leave loss and input gradients unchanged, and a module that
// changes its output must change the loss; backward reaches every module.
#include <cmath>
#include <cstring>

#include "adapters/adapter.h"
#include "model/llama.h"
#include "testing.h"

using namespace peft;

namespace {

// y = scale * (x W^T + b); dx += scale * dy W
struct scaled_base : adapter_module {
    target_info t;
    float scale = 1.0f;
    int backward_calls = 0;
    void forward(const float * x, int64_t N, float * y) override {
        linear_forward(y, x, *t.base, t.bias, N);
        if (scale != 1.0f) for (int64_t i = 0; i < N * t.out_features; i++) y[i] *= scale;
    }
    void backward(const float * x, const float * dy, int64_t N, float * dx) override {
        std::vector<float> tmp((size_t) (N * t.in_features), 0.0f);
        linear_backward_input(tmp.data(), dy, *t.base, N);
        for (size_t i = 0; i < tmp.size(); i++) dx[i] += scale * tmp[i];
        backward_calls++;
        (void) x;
    }
    void delta_weight(float * dW) const override { std::memset(dW, 0, (size_t) (t.out_features * t.in_features) * 4); }
    void params(std::vector<param_ref> &) override {}
};

struct run_out {
    float loss;
    std::vector<float> dembd;
};

run_out run(llama_model & m, bool recompute) {
    const int64_t B = 2, T = 6;
    std::vector<int32_t> tok(B * T), tgt(B * T);
    for (int64_t i = 0; i < B * T; i++) tok[(size_t) i] = (int32_t) ((i * 7 + 3) % m.hp.n_vocab);
    llama_shift_labels(tgt.data(), tok.data(), B, T);
    llama_state s;
    EXPECT_TRUE(llama_state_init(s, m, B, T, recompute).ok());
    llama_batch b{tok.data(), tgt.data(), nullptr, nullptr, B, T};
    run_out r;
    r.loss = llama_forward(m, s, b, 1.0f);
    r.dembd.resize((size_t) (B * T * m.hp.n_embd));
    llama_backward(m, s, b, r.dembd.data());
    return r;
}

} // namespace

TEST(llama_adapter_hook, identity_adapters_change_nothing_and_all_are_reached) {
    llama_model m;
    // biases on all seven projections: the hook must hand each module its bias
    status st = llama_load(m, peft::testing::source_path("tests/fixtures/llama_bias"), false);
    ASSERT_TRUE(st.ok()) << st.message;
    run_out plain = run(m, false);

    std::vector<std::unique_ptr<scaled_base>> mods;
    m.adapters.assign((size_t) (m.hp.n_layer * LLAMA_PROJ_COUNT), nullptr);
    for (int64_t l = 0; l < m.hp.n_layer; l++) {
        for (int p = 0; p < LLAMA_PROJ_COUNT; p++) {
            auto mod = std::make_unique<scaled_base>();
            linear_weight & w = m.proj_weight(l, (llama_proj) p);
            mod->t = {"model.layers." + std::to_string(l) + "." + llama_proj_name((llama_proj) p), l, w.IC, w.OC, &w,
                      m.proj_bias(l, (llama_proj) p)};
            m.adapters[(size_t) (l * LLAMA_PROJ_COUNT + p)] = mod.get();
            mods.push_back(std::move(mod));
        }
    }
    for (bool rc : {false, true}) {
        run_out hooked = run(m, rc);
        EXPECT_FLOAT_EQ(hooked.loss, plain.loss);
        EXPECT_TRUE(peft::testing::check_close(hooked.dembd.data(), plain.dembd.data(), (int64_t) plain.dembd.size(), 1e-5, 1e-7,
                                               "d inputs_embeds"));
    }
    for (auto & mod : mods) EXPECT_EQ(mod->backward_calls, 2) << mod->t.path;

    mods[3]->scale = 1.5f;  // layer 0 o_proj (a residual projection)
    EXPECT_GT(std::fabs(run(m, false).loss - plain.loss), 1e-5);
}
