// MiLoRA mixture (adapters/milora_moe.h): the gradient of every parameter (experts, routers,
// through the gates and the pooled hidden states) against central finite differences in the
// routed training path, the routing invariants (top-K count, gates summing to 1, routing read
// from prompt tokens only), decoding with the cached routing against a full forward that
// recomputes it from the prompt, the load-balancing loss against its closed form, and the
// native file form. The generic checks are rows of test_methods.cpp.
#include <algorithm>
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

void PrintTo(const fd_case & c, std::ostream * os) { *os << c.name; }

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

const char * const PROMPT_CFG = "{\"adapter\":\"milora_moe\",\"r\":4,\"lora_alpha\":8,\"target_modules\":\"all-linear\",\"router_top_k\":3}";

// One forward in the training path; the routes of every layer afterwards.
std::vector<milora_layer_route> routes_after(llama_model & m, adapter_set & s, const packed_batch & d) {
    llama_state st;
    EXPECT_TRUE(llama_state_init(st, m, d.B, d.T, false).ok());
    llama_forward(m, st, d.batch(), 0.0f);
    return method_of(s).route;
}

TEST(milora_moe, routing_takes_top_k_with_gates_summing_to_one_per_sample) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, PROMPT_CFG, s).ok());
    randomize_trainable(adapter_set_params(s), 5);
    const packed_batch d;
    const std::vector<milora_layer_route> routes = routes_after(*m, s, d);
    ASSERT_EQ(routes.size(), 2u);
    for (const milora_layer_route & L : routes) {
        ASSERT_EQ(L.E, 7);
        ASSERT_EQ(L.U, 3) << "three samples: two packed in row 0, one in row 1";
        for (int64_t u = 0; u < L.U; u++) {
            int n = 0;
            double sum = 0, p = 0;
            for (int64_t e = 0; e < L.E; e++) {
                n += L.chosen[(size_t) (u * L.E + e)];
                sum += L.gates[(size_t) (u * L.E + e)];
                p += L.probs[(size_t) (u * L.E + e)];
                if (!L.chosen[(size_t) (u * L.E + e)]) {
                    EXPECT_EQ(L.gates[(size_t) (u * L.E + e)], 0.0f);
                }
            }
            EXPECT_EQ(n, 3);
            EXPECT_NEAR(sum, 1.0, 1e-6);
            EXPECT_NEAR(p, 1.0, 1e-6);
            // the chosen experts are the 3 largest probabilities
            for (int64_t e = 0; e < L.E; e++) {
                for (int64_t f = 0; f < L.E; f++) {
                    if (L.chosen[(size_t) (u * L.E + e)] && !L.chosen[(size_t) (u * L.E + f)]) {
                        EXPECT_GE(L.probs[(size_t) (u * L.E + e)], L.probs[(size_t) (u * L.E + f)]);
                    }
                }
            }
        }
        // rows follow their sample, padding gets none
        const int32_t want[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, -1};
        for (int i = 0; i < 16; i++) EXPECT_EQ(L.row_unit[(size_t) i], want[i]) << "row " << i;
        EXPECT_EQ(L.pool_off, (std::vector<int32_t>{0, 3, 5, 9})) << "mean over the prompt tokens only";
    }
}

// Layer 0's router against a double-precision reference written out here: its input is the
// embedding of the tokens, so Pool, GELU, softmax, top-K and the renormalised gates can be
// computed from the weights alone.
TEST(milora_moe, layer0_routing_matches_a_double_reference) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, PROMPT_CFG, s).ok());
    randomize_trainable(adapter_set_params(s), 5);
    const packed_batch d;
    const std::vector<milora_layer_route> routes = routes_after(*m, s, d);
    const milora_layer_route & L = routes[0];
    const milora_moe_method & mm = method_of(s);
    const float * emb = (const float *) m->w.embed.data;   // [V, C] f32
    const int64_t C = 32, E = 7;
    const std::vector<std::vector<int>> prompts = {{0, 1, 2}, {4, 5}, {8, 9, 10, 11}};
    for (size_t u = 0; u < prompts.size(); u++) {
        std::vector<double> a((size_t) C, 0.0);
        for (int i : prompts[u]) {
            for (int64_t c = 0; c < C; c++) a[(size_t) c] += emb[d.tok[(size_t) i] * C + c] / (double) prompts[u].size();
        }
        for (double & v : a) v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
        std::vector<double> g((size_t) E);
        double zmax = -1e300, sum = 0;
        for (int64_t e = 0; e < E; e++) {
            double z = mm.bg[0][(size_t) e];
            for (int64_t c = 0; c < C; c++) z += mm.Wg[0][(size_t) (e * C + c)] * a[(size_t) c];
            g[(size_t) e] = z;
            zmax = std::max(zmax, z);
        }
        for (double & v : g) sum += (v = std::exp(v - zmax));
        for (double & v : g) v /= sum;
        std::vector<int64_t> order = {0, 1, 2, 3, 4, 5, 6};
        std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return g[(size_t) x] > g[(size_t) y]; });
        const double top = g[(size_t) order[0]] + g[(size_t) order[1]] + g[(size_t) order[2]];
        for (int64_t e = 0; e < E; e++) {
            EXPECT_NEAR(L.probs[u * E + e], g[(size_t) e], 1e-6) << "unit " << u << " expert " << e;
            const bool in = e == order[0] || e == order[1] || e == order[2];
            EXPECT_EQ(L.chosen[u * E + e], in ? 1 : 0) << "unit " << u << " expert " << e;
            EXPECT_NEAR(L.gates[u * E + e], in ? g[(size_t) e] / top : 0.0, 1e-6);
        }
    }
}

// Completion tokens never reach the routing (the prompt is a prefix and attention is causal);
// a prompt token does.
TEST(milora_moe, routing_reads_the_prompt_tokens_only) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, PROMPT_CFG, s).ok());
    randomize_trainable(adapter_set_params(s), 5);
    const packed_batch d;
    const std::vector<milora_layer_route> base = routes_after(*m, s, d);
    packed_batch c = d;
    for (int i : {3, 6, 7, 12, 13, 14}) c.tok[(size_t) i] = (c.tok[(size_t) i] + 17) % 60 + 1;   // completions
    const std::vector<milora_layer_route> after = routes_after(*m, s, c);
    packed_batch p = d;
    p.tok[9] = (p.tok[9] + 17) % 60 + 1;   // a prompt token of the row-1 sample
    const std::vector<milora_layer_route> moved = routes_after(*m, s, p);
    for (size_t l = 0; l < base.size(); l++) {
        EXPECT_EQ(after[l].probs, base[l].probs) << "layer " << l;
        EXPECT_EQ(after[l].gates, base[l].gates) << "layer " << l;
        // row 1's sample (unit 2) moves, row 0's samples do not
        for (int64_t e = 0; e < 14; e++) EXPECT_EQ(moved[l].probs[(size_t) e], base[l].probs[(size_t) e]);
        double diff = 0;
        for (int64_t e = 14; e < 21; e++) diff += std::fabs(moved[l].probs[(size_t) e] - base[l].probs[(size_t) e]);
        EXPECT_GT(diff, 1e-7) << "layer " << l;
    }
}

// Decoding reuses the prompt's routing; each step's logits equal a full forward of the sequence
// so far with the routing recomputed from the prompt segment (the training path).
TEST(milora_moe, cached_routing_in_decode_equals_recomputed_routing) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, PROMPT_CFG, s).ok());
    randomize_trainable(adapter_set_params(s), 9);
    adapters_set_training(s, false);
    const int64_t n_prompt = 5, n_gen = 6, V = m->hp.n_vocab;
    std::vector<int32_t> seq = {3, 14, 15, 9, 26};
    llama_infer_state is;
    ASSERT_TRUE(llama_infer_init(is, *m, 32, 2).ok());
    EXPECT_EQ(is.max_batch, 32) << "whole prompts in one forward: the router pools over all of it";
    std::vector<float> logits((size_t) V);
    ASSERT_TRUE(llama_infer_eval(*m, is, seq.data(), n_prompt, logits.data()).ok());
    ASSERT_TRUE(is.adapter_state);
    const auto * cache = static_cast<const milora_seq_routing *>(is.adapter_state.get());
    const std::vector<std::vector<float>> prompt_gates = cache->gates;
    for (int64_t i = 0; i < n_gen; i++) {
        const int32_t t = (int32_t) ((i * 19 + 7) % V);
        seq.push_back(t);
        ASSERT_TRUE(llama_infer_eval(*m, is, &t, 1, logits.data()).ok());
        EXPECT_EQ(cache->gates, prompt_gates) << "the cached routing never changes while decoding";
        // at most K experts run per layer and token
        for (int64_t l = 0; l < 2; l++) {
            int active = 0;
            for (size_t k = 0; k < s.modules.size(); k++) {
                if (s.targets[k].layer == l) active += static_cast<milora_moe_module *>(s.modules[k].get())->active;
            }
            EXPECT_LE(active, 3);
        }
        // the training path over the whole sequence, prompt marked
        const int64_t T = (int64_t) seq.size();
        std::vector<int32_t> tgt((size_t) T, -100), seg((size_t) T, 1);
        std::vector<uint8_t> prompt((size_t) T, 0);
        for (int64_t k = 0; k < n_prompt; k++) prompt[(size_t) k] = 1;
        llama_state st;
        ASSERT_TRUE(llama_state_init(st, *m, 1, T, false).ok());
        std::vector<float> full((size_t) (T * V));
        llama_forward(*m, st, llama_batch{seq.data(), tgt.data(), nullptr, seg.data(), 1, T, prompt.data()}, 0.0f, full.data());
        for (int64_t l = 0; l < 2; l++) {
            const milora_layer_route & L = method_of(s).route[(size_t) l];
            ASSERT_EQ(L.U, 1);
            for (int64_t e = 0; e < 7; e++) EXPECT_NEAR(L.gates[(size_t) e], prompt_gates[(size_t) l][(size_t) e], 1e-6);
        }
        const std::vector<float> last(full.end() - V, full.end());
        EXPECT_LT(rel_diff(logits, last), 1e-5) << "step " << i;
    }
    // a state planned before the adapter was attached holds no whole prompt: refused, not split
    llama_infer_state early;
    const std::vector<adapter_module *> attached = m->adapters;
    m->adapters.clear();
    ASSERT_TRUE(llama_infer_init(early, *m, 32, 2).ok());
    m->adapters = attached;
    const status es = llama_infer_eval(*m, early, seq.data(), n_prompt, logits.data());
    EXPECT_FALSE(es.ok());
    EXPECT_NE(es.message.find("whole prompt"), std::string::npos) << es.message;
    // a reset drops the routing; the next prompt is routed anew
    llama_infer_reset(is);
    EXPECT_FALSE(is.adapter_state);
    const std::vector<int32_t> other = {40, 2, 33, 51, 8, 8, 60};
    ASSERT_TRUE(llama_infer_eval(*m, is, other.data(), (int64_t) other.size(), logits.data()).ok());
    ASSERT_TRUE(is.adapter_state);
    EXPECT_NE(static_cast<const milora_seq_routing *>(is.adapter_state.get())->gates, prompt_gates);
}

// routing: token routes every token from its own hidden state, in inference as in training: no
// cache, and each step's logits equal the full forward's.
TEST(milora_moe, token_routing_decodes_like_the_full_forward) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"milora_moe\",\"r\":4,\"target_modules\":\"all-linear\",\"routing\":\"token\"}", s).ok());
    randomize_trainable(adapter_set_params(s), 9);
    adapters_set_training(s, false);
    const int64_t V = m->hp.n_vocab;
    std::vector<int32_t> seq = {3, 14, 15, 9};
    llama_infer_state is;
    ASSERT_TRUE(llama_infer_init(is, *m, 32, 2).ok());
    EXPECT_EQ(is.max_batch, 2) << "token routing needs no whole prompt";
    std::vector<float> logits((size_t) V);
    ASSERT_TRUE(llama_infer_eval(*m, is, seq.data(), (int64_t) seq.size(), logits.data()).ok());
    for (int64_t i = 0; i < 4; i++) {
        const int32_t t = (int32_t) ((i * 23 + 5) % V);
        seq.push_back(t);
        ASSERT_TRUE(llama_infer_eval(*m, is, &t, 1, logits.data()).ok());
    }
    EXPECT_FALSE(is.adapter_state) << "nothing cached";
    const int64_t T = (int64_t) seq.size();
    std::vector<int32_t> tgt((size_t) T, -100);
    llama_state st;
    ASSERT_TRUE(llama_state_init(st, *m, 1, T, false).ok());
    std::vector<float> full((size_t) (T * V));
    llama_forward(*m, st, llama_batch{seq.data(), tgt.data(), nullptr, nullptr, 1, T}, 0.0f, full.data());
    EXPECT_EQ(method_of(s).route[0].U, T) << "one routing unit per token";
    EXPECT_LT(rel_diff(logits, std::vector<float>(full.end() - V, full.end())), 1e-5);
}

// W_g = 0: every sample has g = softmax(b) and the same top-K, so per layer f_e = 1 on the
// top-K and P_e = softmax(b)_e: aux = coef * (1 / n_layers) sum_l E * sum_{e in topK} softmax(b_l)_e.
TEST(milora_moe, load_balance_loss_matches_its_closed_form) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"milora_moe\",\"r\":4,\"target_modules\":\"all-linear\",\"router_top_k\":2,"
                           "\"router_aux_loss_coef\":0.25}", s).ok());
    milora_moe_method & mm = method_of(s);
    double want = 0;
    for (int64_t l = 0; l < 2; l++) {
        std::fill(mm.Wg[(size_t) l].begin(), mm.Wg[(size_t) l].end(), 0.0f);
        const float b[7] = {0.3f, -1.0f, 1.2f + (float) l, 0.0f, 0.7f, -0.2f, 0.1f};
        std::copy(b, b + 7, mm.bg[(size_t) l].begin());
        double z = 0;
        for (float v : b) z += std::exp((double) v);
        double top[2] = {-1e9, -1e9};
        for (float v : b) {
            if (v > top[0]) { top[1] = top[0]; top[0] = v; }
            else if (v > top[1]) top[1] = v;
        }
        want += 0.25 * 7.0 * (std::exp(top[0]) + std::exp(top[1])) / z / 2.0;
    }
    const packed_batch d;
    routes_after(*m, s, d);
    EXPECT_NEAR(mm.last_aux(), want, 1e-6);
    // and train_step reports it as reg_loss (grad scale 1, one micro-batch)
    adamw opt;
    ASSERT_TRUE(opt.init(adapter_optim_params(s), adamw_config{}).ok());
    llama_state st;
    ASSERT_TRUE(llama_state_init(st, *m, d.B, d.T, false).ok());
    train_config cfg;
    const llama_batch b = d.batch();
    step_result r;
    ASSERT_TRUE(train_step(*m, st, opt, cfg, &b, 1, 0, r, &s).ok());
    EXPECT_NEAR(r.reg_loss, want, 1e-6);
}

TEST(milora_moe, native_form_round_trips_and_refuses_merge) {
    auto m = tiny_model(7);
    adapter_set s;
    ASSERT_TRUE(attach(*m, "{\"adapter\":\"milora_moe\",\"r\":4,\"target_modules\":[\"q_proj\",\"v_proj\",\"down_proj\"],"
                           "\"router_pool\":\"last\",\"router_top_k\":1,\"router_gate\":\"hard\",\"router_bias\":false}", s).ok());
    randomize_trainable(adapter_set_params(s), 3);
    const std::string dir = peft::testing::temp_dir("milora_moe_native");
    ASSERT_TRUE(adapter_save(dir, s, "").ok());
    std::ifstream f(dir + "/adapter_config.json");
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string cfg = ss.str();
    for (const char * k : {"\"peft_type\": \"MILORA_MOE\"", "\"router_pool\": \"last\"", "\"router_top_k\": 1", "\"router_gate\": \"hard\"",
                           "\"router_bias\": false", "\"routing\": \"prompt\""}) {
        EXPECT_NE(cfg.find(k), std::string::npos) << k << " in\n" << cfg;
    }
    auto fresh = tiny_model(7);
    adapter_set loaded;
    const status st = adapter_load(dir, *fresh, loaded);
    ASSERT_TRUE(st.ok()) << st.message;
    const std::vector<param_ref> a = adapter_set_params(s), b = adapter_set_params(loaded);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); i++) EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[0].name, "base_model.model.model.layers.0.milora_router.weight");
    EXPECT_EQ(a[0].shape, (std::vector<int64_t>{3, 32}));
    EXPECT_EQ(snapshot(a), snapshot(b));
    const milora_moe_method & lm = method_of(loaded);
    EXPECT_EQ(lm.pool, MILORA_POOL_LAST);
    EXPECT_EQ(lm.gate, MILORA_GATE_HARD);
    EXPECT_EQ(lm.top_k, 1);
    EXPECT_FALSE(lm.router_bias);
    const status ms = adapters_merge(*fresh, loaded);
    EXPECT_FALSE(ms.ok());
    EXPECT_NE(ms.message.find("milora_moe adapters cannot be merged"), std::string::npos) << ms.message;
}

TEST(milora_moe, bad_router_keys_name_the_key) {
    auto m = tiny_model(7);
    const std::pair<const char *, const char *> bad[] = {
        {"{\"adapter\":\"milora_moe\",\"target_modules\":[\"q_proj\",\"v_proj\"],\"router_top_k\":3}", "router_top_k"},
        {"{\"adapter\":\"milora_moe\",\"router_pool\":\"median\"}", "router_pool"},
        {"{\"adapter\":\"milora_moe\",\"router_gate\":1}", "router_gate"},
        {"{\"adapter\":\"milora_moe\",\"routing\":\"layer\"}", "routing"},
        {"{\"adapter\":\"milora_moe\",\"router_aux_loss_coef\":-1}", "router_aux_loss_coef"},
        {"{\"adapter\":\"milora_moe\",\"lora_dropout\":0.1}", "lora_dropout"},
        {"{\"adapter\":\"milora_moe\",\"use_dora\":true}", "use_dora"},
    };
    for (const auto & [cfg, key] : bad) {
        adapter_set s;
        const status st = attach(*m, cfg, s);
        EXPECT_FALSE(st.ok()) << cfg;
        EXPECT_NE(st.message.find(key), std::string::npos) << st.message;
        m->adapters.clear();
    }
}

INSTANTIATE_TEST_SUITE_P(milora_moe, milora_fd, ::testing::ValuesIn(FD_CASES),
                         [](const ::testing::TestParamInfo<fd_case> & i) { return std::string(i.param.name); });

} // namespace
