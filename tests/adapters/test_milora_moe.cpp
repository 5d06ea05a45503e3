// MiLoRA mixture (adapters/milora_moe.h): the gradient of every parameter (experts, routers,
// through the gates and the pooled hidden states) against central finite differences in the
// routed training path, the routing invariants (top-K count, gates summing to 1, routing read
// from prompt tokens only), decoding with the cached routing against a full forward that
// recomputes it from the prompt, the load-balancing loss against its closed form, and the
// native file form. The generic checks are rows of test_methods.cpp.
#include <cmath>
#include <fstream>
#include <sstream>

#include "adapter_test_util.h"
#include "adapters/milora_moe.h"
#include "model/llama_infer.h"
#include "train/trainer.h"
#include "testing.h"

using namespace peft;
using namespace peft::adapter_test;

namespace {

// Two packed samples in row 0 (prompt 3 + completion 4, prompt 2 + completion 3), one sample in
// row 1 (prompt 4 + completion 3) and padding after it.
struct packed_batch {
    int64_t B = 2, T = 8;
    std::vector<int32_t> tok, tgt, pos, seg;
    std::vector<uint8_t> prompt;
    packed_batch() {
        const int32_t s[16] = {1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0};
        const uint8_t p[16] = {1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0};
        for (int64_t i = 0; i < B * T; i++) {
            tok.push_back((int32_t) ((i * 7 + 3) % 60 + 1));
            seg.push_back(s[i]);
            prompt.push_back(p[i]);
        }
        // the first sample of row 0 is 4 tokens long; sample 2 starts at 4
        for (int64_t b = 0; b < B; b++) {
            int32_t k = 0;
            for (int64_t t = 0; t < T; t++) {
                const int64_t i = b * T + t;
                k = (t > 0 && seg[(size_t) i] == seg[(size_t) i - 1]) ? k + 1 : 0;
                pos.push_back(seg[(size_t) i] ? k : 0);
            }
        }
        tgt.assign((size_t) (B * T), -100);
        for (int64_t i = 0; i + 1 < B * T; i++) {
            if ((i + 1) % T != 0 && seg[(size_t) i] != 0 && seg[(size_t) i + 1] == seg[(size_t) i]) tgt[(size_t) i] = tok[(size_t) i + 1];
        }
    }
    llama_batch batch() const { return llama_batch{tok.data(), tgt.data(), pos.data(), seg.data(), B, T, prompt.data()}; }
};

milora_moe_method & method_of(adapter_set & s) { return *static_cast<milora_moe_method *>(s.method.get()); }

// CE + the load-balancing loss of one forward (the loss the backward differentiates).
double total_loss(llama_model & m, adapter_set & s, const packed_batch & d) {
    llama_state st;
    EXPECT_TRUE(llama_state_init(st, m, d.B, d.T, false).ok());
    llama_forward(m, st, d.batch(), 0.0f);
    return st.loss_sum / (double) st.n_valid + method_of(s).last_aux();   // summed in double: less rounding noise
}

std::vector<std::vector<uint8_t>> routing_of(adapter_set & s) {
    std::vector<std::vector<uint8_t>> out;
    for (const milora_layer_route & L : method_of(s).route) out.push_back(L.chosen);
    return out;
}

struct fd_case {
    const char * name;
    const char * config;
};

const fd_case FD_CASES[] = {
    {"mean_renorm_aux", "{\"adapter\":\"milora_moe\",\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"router_aux_loss_coef\":0.5}"},
    {"last_softmax_tanh", "{\"adapter\":\"milora_moe\",\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"router_pool\":\"last\","
                          "\"router_gate\":\"softmax\",\"router_activation\":\"tanh\",\"router_top_k\":3}"},
    {"max_renorm_none", "{\"adapter\":\"milora_moe\",\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"router_pool\":\"max\","
                        "\"router_activation\":\"none\",\"router_aux_loss_coef\":1.0}"},
    {"token_renorm", "{\"adapter\":\"milora_moe\",\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"routing\":\"token\"}"},
    {"qv_hard", "{\"adapter\":\"milora_moe\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\",\"v_proj\"],\"router_gate\":\"hard\","
                "\"router_top_k\":1}"},
};

class milora_fd : public ::testing::TestWithParam<fd_case> {};

// Per parameter tensor (so a wrong router gradient cannot hide behind the experts'):
// (L(theta + e v) - L(theta - e v)) / 2e == g . v, with v random over that tensor. The routing
// must not flip between the two points (top-K is piecewise constant); e shrinks until it does not
// (from 1e-2: float rounding of the loss limits smaller steps).
TEST_P(milora_fd, every_parameter_gradient_matches_finite_difference) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, GetParam().config, s).ok());
    randomize_trainable(adapter_set_params(s), 21);
    adapters_set_training(s, false);
    const packed_batch d;
    std::vector<optim_param> ps = adapter_optim_params(s);
    for (const optim_param & p : ps) std::fill(p.grad, p.grad + p.n, 0.0f);
    llama_state st;
    ASSERT_TRUE(llama_state_init(st, *m, d.B, d.T, false).ok());
    llama_forward(*m, st, d.batch(), 1.0f);
    llama_backward(*m, st, d.batch());
    int routers = 0, checked = 0;
    for (size_t i = 0; i < ps.size(); i++) {
        const optim_param & p = ps[i];
        const std::vector<float> v = peft::testing::fixed_vector(p.n, 300 + i, 1.0f);
        const std::vector<float> theta(p.value, p.value + p.n);
        double gv = 0;
        for (int64_t j = 0; j < p.n; j++) gv += (double) p.grad[j] * v[(size_t) j];
        auto at = [&](double e, std::vector<std::vector<uint8_t>> * r) {
            for (int64_t j = 0; j < p.n; j++) p.value[j] = (float) (theta[(size_t) j] + e * v[(size_t) j]);
            const double l = total_loss(*m, s, d);
            if (r) *r = routing_of(s);
            return l;
        };
        double e = 1e-2, fd = 0;
        bool same = false;
        for (int tries = 0; tries < 4 && !same; tries++, e /= 4) {
            std::vector<std::vector<uint8_t>> rp, rm;
            fd = (at(e, &rp) - at(-e, &rm)) / (2 * e);
            same = rp == rm;
        }
        std::copy(theta.begin(), theta.end(), p.value);
        if (!same) continue;   // a routing boundary within 1e-4: no finite difference here
        checked++;
        routers += p.name.find("milora_router") != std::string::npos;
        EXPECT_NEAR(fd, gv, 3e-2 * std::fabs(gv) + 2e-4) << GetParam().name << ": " << p.name;
    }
    EXPECT_GE(checked, (int) ps.size() - 2);
    EXPECT_GT(routers, 0);
}

INSTANTIATE_TEST_SUITE_P(milora_moe, milora_fd, ::testing::ValuesIn(FD_CASES),
                         [](const ::testing::TestParamInfo<fd_case> & i) { return std::string(i.param.name); });

} // namespace
