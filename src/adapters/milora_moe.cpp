// milora_moe.cpp: the MiLoRA mixture (milora_moe.h, METHODS §5): the expert module (a LoRA whose
// output is scaled by its row's gate), the per-layer router as the model's layer hook (forward:
// units, pooling, softmax, top-K, gates; backward: gates -> softmax -> router weights and the
// pooled hidden states), the per-sequence routing cache of inference, and the configuration.
// Expert math (h = w_n s xa, xa = x A^T [N,R], w_n the gate of row n):
//   forward   y  = x W^T + b + h B^T
//   backward  dB += dy^T h;  dxa = w_n s (dy B);  dw_n = s sum_k (dy B)[n,k] xa[n,k]
//             dA += dxa^T x;  dx += dy W + dxa A
// Router backward per unit (dw from the experts, + the aux loss's dP):
//   renorm  dg_j = (dw_j - sum_S dw_e w_e) / sum_S g   (j in S);  softmax  dg_j = dw_j;  hard  none
//   dz = g * (dg - g . dg);  dW_g += dz act(p)^T;  db_g += dz;  dp = act'(p) * (W_g^T dz) -> pooled rows
// Not here: target selection (target.cpp), files (io/peft_format.cpp), the model's calls (llama.cpp).
#include "adapters/milora_moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "adapters/target.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/peft_format.h"
#include "kernels/kernels.h"

namespace peft {

namespace {

const char * const WHERE = "adapter config";
const char * const POOL_NAMES[] = {"mean", "last", "max"};
const char * const ACT_NAMES[] = {"gelu", "tanh", "none"};
const char * const GATE_NAMES[] = {"renorm", "softmax", "hard"};
static_assert(sizeof(POOL_NAMES) / sizeof(POOL_NAMES[0]) == MILORA_POOL_COUNT);
static_assert(sizeof(ACT_NAMES) / sizeof(ACT_NAMES[0]) == MILORA_ACT_COUNT);
static_assert(sizeof(GATE_NAMES) / sizeof(GATE_NAMES[0]) == MILORA_GATE_COUNT);

float * grow(std::vector<float> & v, int64_t n) {
    if ((int64_t) v.size() < n) v.resize((size_t) n);
    return v.data();
}

// act and its derivative; GELU is torch's exact (erf) form
double act_value(milora_act a, double x) {
    switch (a) {
        case MILORA_ACT_GELU: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
        case MILORA_ACT_TANH: return std::tanh(x);
        default: return x;
    }
}
double act_grad(milora_act a, double x) {
    switch (a) {
        case MILORA_ACT_GELU: return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
        case MILORA_ACT_TANH: { const double t = std::tanh(x); return 1.0 - t * t; }
        default: return 1.0;
    }
}

} // namespace

// ---- expert ----------------------------------------------------------------------------------

milora_moe_module::milora_moe_module(const target_info & ti, int64_t R_, float s, int64_t e, milora_moe_method & o, rng & r)
    : t(ti), R(R_), scaling(s), expert(e), owner(o) {
    const int64_t IC = t.in_features, OC = t.out_features;
    A.assign((size_t) (R * IC), 0.0f);
    B.assign((size_t) (OC * R), 0.0f);   // B = 0: the base model at init, whatever the routing
    r.fill_kaiming_uniform(A.data(), R, IC, std::sqrt(5.0f));
    dA.assign(A.size(), 0.0f);
    dB.assign(B.size(), 0.0f);
}

void milora_moe_module::forward(const float * x, int64_t N, float * y) {
    linear_forward(y, x, *t.base, t.bias, N);
    add_gated_delta(x, N, y);
}

bool milora_moe_module::forward_delta(const float * x, int64_t N, float * y) {
    add_gated_delta(x, N, y);
    return true;
}

// y[N,OC] += w_n s (x A^T) B^T with each row's gate w_n from the layer's routing.
void milora_moe_module::add_gated_delta(const float * x, int64_t N, float * y) {
    const int64_t IC = t.in_features, OC = t.out_features;
    const milora_layer_route & L = owner.route[(size_t) t.layer];
    PEFT_ASSERT(L.n_rows == N && L.E > expert);   // the hook routed this forward's rows
    w.resize((size_t) N);
    active = false;
    for (int64_t n = 0; n < N; n++) {
        const int32_t u = L.row_unit[(size_t) n];
        w[(size_t) n] = u < 0 ? 0.0f : L.gates[(size_t) (u * L.E + expert)];
        active = active || w[(size_t) n] != 0.0f;
    }
    if (!active) return;   // not routed here: no LoRA products at all (decode with cached routing)
    float * xa_ = grow(xa, N * R);
    gemm(false, true, N, R, IC, 1.0f, x, IC, A.data(), IC, 0.0f, xa_, R);
    float * h = grow(hbuf, N * R);   // h = w_n s xa
    for (int64_t n = 0; n < N; n++) {
        const float g = w[(size_t) n] * scaling;
        for (int64_t k = 0; k < R; k++) h[n * R + k] = g * xa_[n * R + k];
    }
    gemm(false, true, N, OC, R, 1.0f, h, R, B.data(), R, 1.0f, y, OC);
}

void milora_moe_module::backward(const float * x, const float * dy, int64_t N, float * dx) {
    const int64_t IC = t.in_features, OC = t.out_features;
    if (dx) linear_backward_input(dx, dy, *t.base, N, 1.0f);
    if (!active) return;   // every gate 0: nothing of this expert reached the output
    PEFT_ASSERT((int64_t) w.size() == N);
    milora_layer_route & L = owner.route[(size_t) t.layer];
    std::vector<float> g((size_t) (N * R));
    // dB += dy^T h with h = w_n s xa as the forward left it in hbuf (backward follows its forward)
    gemm(true, false, OC, R, N, 1.0f, dy, OC, hbuf.data(), R, 1.0f, dB.data(), R);
    gemm(false, false, N, R, OC, 1.0f, dy, OC, B.data(), R, 0.0f, g.data(), R);    // g = dy B
    for (int64_t n = 0; n < N; n++) {
        const int32_t u = L.row_unit[(size_t) n];
        if (u >= 0) {
            double acc = 0.0;
            for (int64_t k = 0; k < R; k++) acc += (double) g[(size_t) (n * R + k)] * xa[(size_t) (n * R + k)];
            L.dgates[(size_t) (u * L.E + expert)] += (double) scaling * acc;
        }
        const float s = w[(size_t) n] * scaling;
        for (int64_t k = 0; k < R; k++) g[(size_t) (n * R + k)] *= s;   // dxa
    }
    gemm(true, false, R, IC, N, 1.0f, g.data(), R, x, IC, 1.0f, dA.data(), IC);   // dA += dxa^T x
    if (dx) gemm(false, false, N, IC, R, 1.0f, g.data(), R, A.data(), IC, 1.0f, dx, IC);  // dx += dxa A
}

void milora_moe_module::delta_weight(float * dW) const {
    const int64_t IC = t.in_features, OC = t.out_features;
    gemm(false, false, OC, IC, R, scaling, B.data(), R, A.data(), IC, 0.0f, dW, IC);
}

void milora_moe_module::params(std::vector<param_ref> & out) {
    param_ref a;
    a.name = "lora_A.weight";
    a.value = A.data();
    a.grad = dA.data();
    a.shape = {R, t.in_features};
    out.push_back(a);
    param_ref b;
    b.name = "lora_B.weight";
    b.value = B.data();
    b.grad = dB.data();
    b.shape = {t.out_features, R};
    out.push_back(b);
}

float milora_moe_module::regularize(float weight) {
    return reports_aux ? (float) (weight * owner.take_aux()) : 0.0f;
}

// ---- router (the layer hook) ------------------------------------------------------------------

namespace {

// Top-K of g[E] (ties: the lower index first) into chosen[E].
void top_k_of(const float * g, int64_t E, int64_t K, uint8_t * chosen) {
    std::vector<int64_t> idx((size_t) E);
    for (int64_t e = 0; e < E; e++) idx[(size_t) e] = e;
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return g[a] > g[b]; });
    std::memset(chosen, 0, (size_t) E);
    for (int64_t k = 0; k < K; k++) chosen[idx[(size_t) k]] = 1;
}

} // namespace

// Pooling, router and gates of every unit of route[l] (row_unit and pool rows already set).
void milora_moe_method::route_units(int64_t l, const float * x) {
    milora_layer_route & L = route[(size_t) l];
    const int64_t U = L.U, E = L.E;
    L.pooled.assign((size_t) (U * C), 0.0f);
    L.act.assign((size_t) (U * C), 0.0f);
    L.pool_arg.assign(pool == MILORA_POOL_MAX ? (size_t) (U * C) : 0, 0);
    L.probs.assign((size_t) (U * E), 0.0f);
    L.chosen.assign((size_t) (U * E), 0);
    L.gates.assign((size_t) (U * E), 0.0f);
    L.dgates.assign((size_t) (U * E), 0.0);
    const float * W = Wg[(size_t) l].data(), * b = bg[(size_t) l].data();
    const int64_t K = std::min(top_k, E);
    for (int64_t u = 0; u < U; u++) {
        float * p = &L.pooled[(size_t) (u * C)];
        const int32_t r0 = L.pool_off[(size_t) u], r1 = L.pool_off[(size_t) u + 1];
        if (pool == MILORA_POOL_LAST) {
            std::memcpy(p, x + (int64_t) L.pool_rows[(size_t) r1 - 1] * C, (size_t) C * 4);
        } else if (pool == MILORA_POOL_MAX) {
            for (int64_t c = 0; c < C; c++) {
                int32_t best = L.pool_rows[(size_t) r0];
                for (int32_t i = r0 + 1; i < r1; i++) {
                    const int32_t row = L.pool_rows[(size_t) i];
                    if (x[(int64_t) row * C + c] > x[(int64_t) best * C + c]) best = row;
                }
                p[c] = x[(int64_t) best * C + c];
                L.pool_arg[(size_t) (u * C + c)] = best;
            }
        } else {
            std::vector<double> acc((size_t) C, 0.0);
            for (int32_t i = r0; i < r1; i++) {
                const float * xr = x + (int64_t) L.pool_rows[(size_t) i] * C;
                for (int64_t c = 0; c < C; c++) acc[(size_t) c] += xr[c];
            }
            for (int64_t c = 0; c < C; c++) p[c] = (float) (acc[(size_t) c] / (double) (r1 - r0));
        }
        float * a = &L.act[(size_t) (u * C)];
        for (int64_t c = 0; c < C; c++) a[c] = (float) act_value(act, p[c]);
        // z = W_g a + b_g, g = softmax(z) (in double: E is small)
        std::vector<double> z((size_t) E);
        double mx = -INFINITY;
        for (int64_t e = 0; e < E; e++) {
            double d = router_bias ? b[e] : 0.0;
            for (int64_t c = 0; c < C; c++) d += (double) W[e * C + c] * a[c];
            z[(size_t) e] = d;
            mx = std::max(mx, d);
        }
        double sum = 0.0;
        for (int64_t e = 0; e < E; e++) sum += (z[(size_t) e] = std::exp(z[(size_t) e] - mx));
        float * g = &L.probs[(size_t) (u * E)];
        for (int64_t e = 0; e < E; e++) g[e] = (float) (z[(size_t) e] / sum);
        uint8_t * ch = &L.chosen[(size_t) (u * E)];
        top_k_of(g, E, K, ch);
        double sel = 0.0;
        for (int64_t e = 0; e < E; e++) sel += ch[e] ? g[e] : 0.0f;
        float * w = &L.gates[(size_t) (u * E)];
        for (int64_t e = 0; e < E; e++) {
            if (!ch[e]) continue;
            w[e] = gate == MILORA_GATE_HARD ? 1.0f : gate == MILORA_GATE_SOFTMAX ? g[e] : (float) (g[e] / sel);
        }
    }
    // load balancing (Switch / Mixtral): E sum_e f_e P_e, f_e = share of units choosing e
    L.aux = 0.0;
    if (aux_coef > 0.0 && U > 0) {
        double s = 0.0;
        for (int64_t e = 0; e < E; e++) {
            double f = 0.0, P = 0.0;
            for (int64_t u = 0; u < U; u++) {
                f += L.chosen[(size_t) (u * E + e)];
                P += L.probs[(size_t) (u * E + e)];
            }
            s += (f / (double) U) * (P / (double) U);
        }
        L.aux = aux_coef * (double) E * s / (double) n_routed_layers;
    }
}

void milora_moe_method::layer_forward(int64_t l, const float * x, const llama_rows & rows) {
    if (l >= (int64_t) route.size() || route[(size_t) l].E == 0) return;
    milora_layer_route & L = route[(size_t) l];
    const int64_t N = rows.B * rows.T;
    L.n_rows = N;
    L.row_unit.assign((size_t) N, -1);
    L.pool_rows.clear();
    L.pool_off.assign(1, 0);
    L.U = 0;
    milora_seq_routing * seq = nullptr;
    if (rows.seq && !token_routing) {
        if (!*rows.seq) {
            auto st = std::make_shared<milora_seq_routing>();
            st->gates.resize(route.size());
            st->routed.assign(route.size(), 0);
            *rows.seq = st;
        }
        seq = static_cast<milora_seq_routing *>(rows.seq->get());
        if (seq->routed[(size_t) l]) {   // decoding: the prompt's routing, cached
            L.U = 1;
            std::fill(L.row_unit.begin(), L.row_unit.end(), 0);
            L.gates = seq->gates[(size_t) l];
            L.dgates.assign((size_t) L.E, 0.0);
            return;
        }
    }
    if (token_routing) {   // every token its own unit
        for (int64_t i = 0; i < N; i++) {
            if (rows.seg && rows.seg[i] == 0) continue;
            L.row_unit[(size_t) i] = (int32_t) L.U++;
            L.pool_rows.push_back((int32_t) i);
            L.pool_off.push_back((int32_t) L.pool_rows.size());
        }
    } else {
        // one unit per sample: a row's run of equal segment ids (inference: all rows, the prompt)
        for (int64_t b = 0; b < rows.B; b++) {
            for (int64_t t0 = 0; t0 < rows.T;) {
                const int64_t i0 = b * rows.T + t0;
                const int32_t sg = rows.seg ? rows.seg[i0] : 1;
                int64_t t1 = t0 + 1;
                while (t1 < rows.T && (rows.seg ? rows.seg[b * rows.T + t1] : 1) == sg) t1++;
                if (sg != 0) {
                    bool any_prompt = false;
                    for (int64_t t = t0; t < t1 && rows.prompt; t++) any_prompt = any_prompt || rows.prompt[b * rows.T + t];
                    for (int64_t t = t0; t < t1; t++) {
                        const int64_t i = b * rows.T + t;
                        L.row_unit[(size_t) i] = (int32_t) L.U;
                        if (!any_prompt || rows.prompt[i]) L.pool_rows.push_back((int32_t) i);
                    }
                    L.pool_off.push_back((int32_t) L.pool_rows.size());
                    L.U++;
                }
                t0 = t1;
            }
        }
    }
    route_units(l, x);
    if (seq) {
        seq->gates[(size_t) l].assign(L.gates.begin(), L.gates.begin() + L.E);
        seq->routed[(size_t) l] = 1;
    }
}

void milora_moe_method::layer_backward(int64_t l, const float * x, const llama_rows & rows, float * dx) {
    (void) x;
    if (l >= (int64_t) route.size() || route[(size_t) l].E == 0) return;
    milora_layer_route & L = route[(size_t) l];
    aux_pending += L.aux * (double) rows.grad_scale;
    const int64_t U = L.U, E = L.E;
    if (U == 0 || L.probs.empty()) return;
    const float * W = Wg[(size_t) l].data();
    float * dW = dWg[(size_t) l].data(), * db = dbg[(size_t) l].data();
    std::vector<double> dg((size_t) E), dz((size_t) E), dp((size_t) C);
    for (int64_t u = 0; u < U; u++) {
        const float * g = &L.probs[(size_t) (u * E)], * w = &L.gates[(size_t) (u * E)];
        const uint8_t * ch = &L.chosen[(size_t) (u * E)];
        const double * dw = &L.dgates[(size_t) (u * E)];
        std::fill(dg.begin(), dg.end(), 0.0);
        if (gate == MILORA_GATE_SOFTMAX) {
            for (int64_t e = 0; e < E; e++) dg[(size_t) e] = ch[e] ? dw[e] : 0.0;
        } else if (gate == MILORA_GATE_RENORM) {
            double sel = 0.0, dot = 0.0;
            for (int64_t e = 0; e < E; e++) {
                if (!ch[e]) continue;
                sel += g[e];
                dot += dw[e] * w[e];
            }
            for (int64_t e = 0; e < E; e++) dg[(size_t) e] = ch[e] ? (dw[e] - dot) / sel : 0.0;
        }
        if (aux_coef > 0.0) {   // d aux / d g[u,e] = coef E f_e / (U n_layers), times the loss scale
            for (int64_t e = 0; e < E; e++) {
                double f = 0.0;
                for (int64_t v = 0; v < U; v++) f += L.chosen[(size_t) (v * E + e)];
                dg[(size_t) e] += (double) rows.grad_scale * aux_coef * (double) E * (f / (double) U) / ((double) U * (double) n_routed_layers);
            }
        }
        double gdg = 0.0;
        for (int64_t e = 0; e < E; e++) gdg += g[e] * dg[(size_t) e];
        for (int64_t e = 0; e < E; e++) dz[(size_t) e] = g[e] * (dg[(size_t) e] - gdg);
        const float * a = &L.act[(size_t) (u * C)], * p = &L.pooled[(size_t) (u * C)];
        std::fill(dp.begin(), dp.end(), 0.0);
        for (int64_t e = 0; e < E; e++) {
            if (router_bias) db[e] += (float) dz[(size_t) e];
            for (int64_t c = 0; c < C; c++) {
                dW[e * C + c] += (float) (dz[(size_t) e] * a[c]);
                dp[(size_t) c] += dz[(size_t) e] * W[e * C + c];
            }
        }
        for (int64_t c = 0; c < C; c++) dp[(size_t) c] *= act_grad(act, p[c]);
        // Pool backward into the rows it read
        const int32_t r0 = L.pool_off[(size_t) u], r1 = L.pool_off[(size_t) u + 1];
        if (pool == MILORA_POOL_LAST) {
            float * d = dx + (int64_t) L.pool_rows[(size_t) r1 - 1] * C;
            for (int64_t c = 0; c < C; c++) d[c] += (float) dp[(size_t) c];
        } else if (pool == MILORA_POOL_MAX) {
            for (int64_t c = 0; c < C; c++) dx[(int64_t) L.pool_arg[(size_t) (u * C + c)] * C + c] += (float) dp[(size_t) c];
        } else {
            const double inv = 1.0 / (double) (r1 - r0);
            for (int32_t i = r0; i < r1; i++) {
                float * d = dx + (int64_t) L.pool_rows[(size_t) i] * C;
                for (int64_t c = 0; c < C; c++) d[c] += (float) (dp[(size_t) c] * inv);
            }
        }
    }
}

double milora_moe_method::last_aux() const {
    double s = 0.0;
    for (const milora_layer_route & L : route) s += L.aux;
    return s;
}

double milora_moe_method::take_aux() {
    const double a = aux_pending;
    aux_pending = 0.0;
    return a;
}

const char * milora_moe_method::merge_refusal() const {
    return "its routing depends on each prompt (MiLoRA routes per prompt; only a per-request merge would be exact)";
}

// ---- method ----------------------------------------------------------------------------------

namespace {

template <typename E, size_t N>
status parse_choice(const json_value & cfg, const char * key, const char * const (&names)[N], E & out) {
    const json_value v = cfg.get(key);
    if (!v.valid() || v.is_null()) return {};
    std::string known;
    for (size_t i = 0; i < N; i++) {
        if (v.is_string() && v.as_string() == names[i]) {
            out = (E) i;
            return {};
        }
        known += (i ? ", " : "") + std::string(names[i]);
    }
    return make_mismatch(PEFT_STATUS_CONFIG, WHERE, key, "one of " + known, v.dump());
}

// Keys of LoRA variants the mixture does not implement: refused rather than trained without.
status check_unsupported(const json_value & cfg) {
    json_value bias = cfg.get("bias");
    if (bias.valid() && !bias.is_null() && bias.as_string() != "none") {
        return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "bias", "\"none\" (training base biases is not supported)", bias.dump());
    }
    json_value init = cfg.get("init_lora_weights");
    if (init.valid() && !init.is_null() && !(init.is_bool() && init.as_bool())) {
        status st = make_mismatch(PEFT_STATUS_CONFIG, WHERE, "init_lora_weights", "true (Kaiming A, zero B: the base model at init)", init.dump());
        st.hint = "milora_moe experts start as PEFT's default LoRA init";
        return st;
    }
    for (const char * k : {"lora_dropout", "use_dora", "rank_pattern", "alpha_pattern", "lora_fa", "loraplus_lr_ratio", "save_residual_model",
                           "corda_config", "corda_data", "fan_in_fan_out", "modules_to_save"}) {
        const json_value v = cfg.get(k);
        const bool off = config_key_off(v) || (v.is_number() && v.as_double() == 0.0) || (v.is_object() && v.size() == 0);
        if (!off) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, std::string(k) + " = " + v.dump() + " is not supported by milora_moe");
            st.hint = "milora_moe's keys: r, lora_alpha, use_rslora, target_modules, layers_to_transform and the router_* keys, routing";
            return st;
        }
    }
    return {};
}

} // namespace

status milora_moe_method::configure(const json_value & cfg) {
    if (!cfg.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "configuration", "a JSON object", cfg.dump());
    PEFT_TRY(check_unsupported(cfg));
    PEFT_TRY(config_read_int(cfg, "r", 1, "a positive integer rank", r));
    PEFT_TRY(config_read_number(cfg, "lora_alpha", -HUGE_VAL, HUGE_VAL, "a finite number", lora_alpha, &alpha_is_int));
    PEFT_TRY(config_read_bool(cfg, "use_rslora", use_rslora));
    PEFT_TRY(config_read_int(cfg, "router_top_k", 1, "a positive integer (experts active per layer)", top_k));
    PEFT_TRY(parse_choice(cfg, "router_pool", POOL_NAMES, pool));
    PEFT_TRY(parse_choice(cfg, "router_activation", ACT_NAMES, act));
    PEFT_TRY(parse_choice(cfg, "router_gate", GATE_NAMES, gate));
    PEFT_TRY(config_read_bool(cfg, "router_bias", router_bias));
    PEFT_TRY(config_read_number(cfg, "router_init_std", 0.0, 1e3, "a standard deviation >= 0", router_init_std));
    PEFT_TRY(config_read_number(cfg, "router_aux_loss_coef", 0.0, 1e6, "a weight >= 0 (0 = no load-balancing loss)", aux_coef));
    const json_value v = cfg.get("routing");
    if (v.valid() && !v.is_null()) {
        if (!v.is_string() || (v.as_string() != "prompt" && v.as_string() != "token")) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "routing", "\"prompt\" (once per prompt) or \"token\" (every token)", v.dump());
        }
        token_routing = v.as_string() == "token";
    }
    PEFT_TRY(target_echo_read(cfg, WHERE, echo));
    return {};
}

status milora_moe_method::check(const target_info & t) const {
    if (r > std::min(t.in_features, t.out_features)) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "r = " + std::to_string(r) + " exceeds min(in, out) = " +
                                                              std::to_string(std::min(t.in_features, t.out_features)) + " of " + t.path);
        st.hint = "lower r";
        return st;
    }
    return {};
}

status milora_moe_method::begin(const target_info * targets, int64_t n) {
    PEFT_ASSERT(n > 0);
    C = targets[0].n_embd;
    PEFT_ASSERT(C > 0);
    int64_t L = 0;
    for (int64_t i = 0; i < n; i++) L = std::max(L, targets[i].layer + 1);
    n_experts.assign((size_t) L, 0);
    n_created.assign((size_t) L, 0);
    for (int64_t i = 0; i < n; i++) n_experts[(size_t) targets[i].layer]++;
    n_routed_layers = 0;
    route.assign((size_t) L, {});
    Wg.assign((size_t) L, {});
    bg = dWg = dbg = Wg;
    for (int64_t l = 0; l < L; l++) {
        const int64_t E = n_experts[(size_t) l];
        if (E == 0) continue;
        if (top_k > E) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, "router_top_k = " + std::to_string(top_k) + " exceeds the " + std::to_string(E) +
                                                                  " adapted projections (experts) of layer " + std::to_string(l));
            st.hint = "lower router_top_k, or adapt more projections per layer (target_modules: all-linear gives 7)";
            return st;
        }
        n_routed_layers++;
        route[(size_t) l].E = E;
        Wg[(size_t) l].assign((size_t) (E * C), 0.0f);
        dWg[(size_t) l].assign((size_t) (E * C), 0.0f);
        bg[(size_t) l].assign((size_t) E, 0.0f);
        dbg[(size_t) l].assign((size_t) E, 0.0f);
    }
    return {};
}

status milora_moe_method::create(const target_info & t, rng & rg, std::unique_ptr<adapter_module> & out) {
    PEFT_ASSERT(t.layer < (int64_t) n_created.size());
    const int64_t e = n_created[(size_t) t.layer]++;
    // the router of a layer is drawn with its first expert: one rng stream, fixed order
    if (e == 0) rg.fill_normal(Wg[(size_t) t.layer].data(), (int64_t) Wg[(size_t) t.layer].size(), 0.0f, (float) router_init_std);
    target_info own = t;
    own.writer = nullptr;   // never rewrites the base
    const double s = use_rslora ? lora_alpha / std::sqrt((double) r) : lora_alpha / (double) r;
    auto mod = std::make_unique<milora_moe_module>(own, r, (float) s, e, *this, rg);
    int64_t made = 0;
    for (int64_t c : n_created) made += c;
    mod->reports_aux = made == 1;
    out = std::move(mod);
    return {};
}

void milora_moe_method::shared_params(std::vector<param_ref> & out) {
    for (size_t l = 0; l < route.size(); l++) {
        if (route[l].E == 0) continue;
        const std::string p = "model.model.layers." + std::to_string(l) + ".milora_router.";
        param_ref w;
        w.name = p + "weight";
        w.value = Wg[l].data();
        w.grad = dWg[l].data();
        w.shape = {route[l].E, C};
        out.push_back(w);
        if (!router_bias) continue;
        param_ref b;
        b.name = p + "bias";
        b.value = bg[l].data();
        b.grad = dbg[l].data();
        b.shape = {route[l].E};
        out.push_back(b);
    }
}

// Our own form (PEFT has no MiLoRA): LoRA's keys plus the router keys, sorted as json.dumps does.
std::string milora_moe_method::config_json() const {
    std::string s = "{";
    s += "\"base_model_name_or_path\":null";
    s += ",\"bias\":\"none\"";
    s += ",\"inference_mode\":true";
    s += ",\"layers_pattern\":" + echo.layers_pattern;
    s += ",\"layers_to_transform\":" + echo.layers;
    s += ",\"lora_alpha\":" + (alpha_is_int ? std::to_string((int64_t) lora_alpha) : json_python_float(lora_alpha));
    s += ",\"peft_type\":\"MILORA_MOE\"";
    s += ",\"r\":" + std::to_string(r);
    s += std::string(",\"router_activation\":\"") + ACT_NAMES[act] + "\"";
    s += ",\"router_aux_loss_coef\":" + json_python_float(aux_coef);
    s += std::string(",\"router_bias\":") + (router_bias ? "true" : "false");
    s += std::string(",\"router_gate\":\"") + GATE_NAMES[gate] + "\"";
    s += ",\"router_init_std\":" + json_python_float(router_init_std);
    s += std::string(",\"router_pool\":\"") + POOL_NAMES[pool] + "\"";
    s += ",\"router_top_k\":" + std::to_string(top_k);
    s += std::string(",\"routing\":\"") + (token_routing ? "token" : "prompt") + "\"";
    s += ",\"target_modules\":" + echo.targets;
    s += ",\"task_type\":" + echo.task_type;
    s += std::string(",\"use_rslora\":") + (use_rslora ? "true" : "false");
    s += "}";
    return s;
}

std::unique_ptr<adapter_method> milora_moe_method_make() { return std::make_unique<milora_moe_method>(); }

// The router keys (METHODS §5 marks pooler, activation, K, gate weighting and the aux loss
// [UNVERIFIED]: configurable, with these defaults); r, lora_alpha, use_rslora are LoRA's rows.
const std::vector<option_def> & milora_moe_method_options() {
    static const std::vector<option_def> keys = {
        {"router_top_k", OPT_INT, "2", "milora_moe: experts (adapted projections) active per layer, chosen by the router"},
        {"router_pool", OPT_STRING, "mean", "milora_moe: pooling of the prompt's hidden states: mean, last, max"},
        {"router_activation", OPT_STRING, "gelu", "milora_moe: activation before the router's linear map: gelu, tanh, none"},
        {"router_gate", OPT_STRING, "renorm", "milora_moe: expert weight: renorm (softmax over the top-K, sums to 1), softmax, hard (1)"},
        {"router_bias", OPT_BOOL, "true", "milora_moe: the router's linear map has a bias"},
        {"router_init_std", OPT_FLOAT, "0.02", "milora_moe: router weights start as N(0, std^2) (bias 0)"},
        {"router_aux_loss_coef", OPT_FLOAT, "0", "milora_moe: weight of the Switch/Mixtral load-balancing loss (0 = off)"},
        {"routing", OPT_STRING, "prompt", "milora_moe: prompt (route once per prompt, cached while decoding) or token (every token)"},
    };
    return keys;
}

} // namespace peft
