// adalora.cpp: the AdaLoRA module (forward, backward, delta, params, the orthogonal penalty) and
// the AdaLoRA method (PEFT AdaLoraConfig keys, the RankAllocator), METHODS §11.
// Math (xd = drop(x), AE = A * E (row i of A times E[i]), xa = xd AE^T [N,R], s = scaling):
//   forward   y   = x W^T + b + s xa B^T
//   backward  dx += dy W + s ((dy B) AE) keep/(1-p)
//             dB += s dy^T xa;  dAE = s (dy B)^T xd [R,IC];  dA += dAE * E;  dE[i] += sum_j dAE[i,j] A[i,j]
// The allocator (PEFT RankAllocator, after the optimizer update of step t, 0-based):
//   t <  total_step - tfinal: importance EMAs of every element of A, E, B (adalora_ema_update)
//   budget from the cubic schedule; on a masking step E[i] = 0 where the triplet score is at or
//   below the (b0 - budget)-th smallest over all modules; t == total_step - tfinal forces the
//   final mask, keeps its pattern and resets the EMAs; later steps re-apply that pattern.
// Masked E entries stay trainable (PEFT): they may regrow between masks; the file drops them.
// Not here: target selection (target.cpp), files (io/peft_format.cpp).
#include "adapters/adalora.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "adapters/target.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/peft_format.h"
#include "kernels/kernels.h"

namespace peft {

struct adalora_scratch {
    std::vector<float> xd;    // [N,IC] dropped input
    std::vector<float> ae;    // [R,IC] A * E
    std::vector<float> g;     // [N,R]  dy B
    std::vector<float> dae;   // [R,IC] gradient of A * E
    std::vector<float> tmp;   // [N,IC] input gradient of the adapter path before the dropout mask
};

namespace {

const char * const WHERE = "adapter config";

float * grow(std::vector<float> & v, int64_t n) {
    if ((int64_t) v.size() < n) v.resize((size_t) n);
    return v.data();
}

// ae[R,IC] = A * E (row scale)
void scale_rows(float * ae, const float * A, const float * E, int64_t R, int64_t IC) {
    for (int64_t i = 0; i < R; i++) {
        for (int64_t j = 0; j < IC; j++) ae[i * IC + j] = A[i * IC + j] * E[i];
    }
}

} // namespace

// ---- pure pieces ---------------------------------------------------------------------------

int64_t adalora_budget(const adalora_schedule & s, int64_t b0, int64_t bT, int64_t t, bool & mask) {
    if (t <= s.tinit) {
        mask = false;
        return b0;
    }
    if (t > s.total_step - s.tfinal) {
        mask = true;
        return bT;
    }
    const double mul = 1.0 - (double) (t - s.tinit) / (double) (s.total_step - s.tfinal - s.tinit);
    mask = t % s.deltaT == 0;
    return (int64_t) ((double) (b0 - bT) * (mul * mul * mul) + (double) bT);
}

void adalora_ema_update(const float * p, const float * g, int64_t n, double beta1, double beta2, float * ipt, float * unc) {
    // torch: python-float scalars times f32 tensors run in f32
    const float b1 = (float) beta1, c1 = (float) (1.0 - beta1), b2 = (float) beta2, c2 = (float) (1.0 - beta2);
    for (int64_t i = 0; i < n; i++) {
        const float I = std::fabs(p[i] * g[i]);
        const float a = b1 * ipt[i];
        const float b = c1 * I;
        ipt[i] = a + b;
        const float u = b2 * unc[i];
        const float v = c2 * std::fabs(I - ipt[i]);
        unc[i] = u + v;
    }
}

float adalora_threshold(std::vector<float> scores, int64_t k) {
    if (k < 1) return -std::numeric_limits<float>::infinity();
    PEFT_ASSERT(k <= (int64_t) scores.size());
    std::nth_element(scores.begin(), scores.begin() + (k - 1), scores.end());
    return scores[(size_t) (k - 1)];
}

double adalora_orth_penalty(const float * P, int64_t rows, int64_t cols, bool gram_of_rows, float * grad, double coef) {
    // M = P P^T [rows,rows] (lora_A) or P^T P [cols,cols] (lora_B); D = M - I
    const int64_t r = gram_of_rows ? rows : cols;
    std::vector<double> D((size_t) (r * r), 0.0);
    for (int64_t a = 0; a < r; a++) {
        for (int64_t b = a; b < r; b++) {
            double acc = 0.0;
            if (gram_of_rows) {
                for (int64_t j = 0; j < cols; j++) acc += (double) P[a * cols + j] * P[b * cols + j];
            } else {
                for (int64_t o = 0; o < rows; o++) acc += (double) P[o * cols + a] * P[o * cols + b];
            }
            if (a == b) acc -= 1.0;
            D[(size_t) (a * r + b)] = D[(size_t) (b * r + a)] = acc;
        }
    }
    double f2 = 0.0;
    for (double d : D) f2 += d * d;
    const double f = std::sqrt(f2);
    if (!grad || f == 0.0) return f;
    // d||D||/dP = 2 D P / f (rows) or 2 P D / f (columns); D symmetric
    const double c = 2.0 * coef / f;
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t j = 0; j < cols; j++) {
            double acc = 0.0;
            if (gram_of_rows) {
                for (int64_t k = 0; k < r; k++) acc += D[(size_t) (i * r + k)] * P[k * cols + j];
            } else {
                for (int64_t k = 0; k < r; k++) acc += (double) P[i * cols + k] * D[(size_t) (k * r + j)];
            }
            grad[i * cols + j] += (float) (c * acc);
        }
    }
    return f;
}

// ---- module --------------------------------------------------------------------------------

adalora_module::adalora_module(const target_info & ti, int64_t R_, int64_t init_r, float alpha, float p, rng & r,
                               std::shared_ptr<adalora_scratch> sc)
    : t(ti), R(R_), scratch(std::move(sc)) {
    PEFT_ASSERT(R >= 0 && init_r > 0 && t.base && t.in_features == t.base->IC && t.out_features == t.base->OC && scratch);
    const int64_t IC = t.in_features, OC = t.out_features;
    // PEFT SVDLinear: scaling = lora_alpha (> 0) else r; ranknum (f32) = init_r
    const float numer = alpha > 0.0f ? alpha : (float) init_r;
    scaling = numer / ((float) init_r + 1e-5f);
    // reset_lora_parameters: E = 0, A ~ N(0, 0.02), B ~ N(0, 0.02)
    A.resize((size_t) (R * IC));
    B.resize((size_t) (OC * R));
    E.assign((size_t) R, 0.0f);
    r.fill_normal(A.data(), (int64_t) A.size(), 0.0f, 0.02f);
    r.fill_normal(B.data(), (int64_t) B.size(), 0.0f, 0.02f);
    dropout.p = p;
    dropout.seed = ((uint64_t) r.next_u32() << 32) | r.next_u32();
    dA.assign(A.size(), 0.0f);
    dE.assign(E.size(), 0.0f);
    dB.assign(B.size(), 0.0f);
    ipt_A.assign(A.size(), 0.0f);
    unc_A.assign(A.size(), 0.0f);
    ipt_E.assign(E.size(), 0.0f);
    unc_E.assign(E.size(), 0.0f);
    ipt_B.assign(B.size(), 0.0f);
    unc_B.assign(B.size(), 0.0f);
    slots.assign((size_t) init_r, 1);
    keep.assign((size_t) R, 1);
}

void adalora_module::forward(const float * x, int64_t N, float * y) {
    const int64_t IC = t.in_features, OC = t.out_features;
    linear_forward(y, x, *t.base, t.bias, N);
    xa_rows = N;
    if (R == 0) return;   // every rank pruned: the base alone
    const float * xin = dropout.input(x, N * IC, dropout_active(), scratch->xd);
    float * ae = grow(scratch->ae, R * IC);
    scale_rows(ae, A.data(), E.data(), R, IC);
    float * xa_ = grow(xa, N * R);
    gemm(false, true, N, R, IC, 1.0f, xin, IC, ae, IC, 0.0f, xa_, R);
    // beta 1: with E = 0 the base output is kept bit for bit
    gemm(false, true, N, OC, R, scaling, xa_, R, B.data(), R, 1.0f, y, OC);
}

void adalora_module::backward(const float * x, const float * dy, int64_t N, float * dx) {
    PEFT_ASSERT(N == xa_rows);   // the contract: backward follows the forward of the same x
    const int64_t IC = t.in_features, OC = t.out_features;
    if (dx) linear_backward_input(dx, dy, *t.base, N, 1.0f);
    if (R == 0) return;
    const bool drop = dropout_active();
    float * g = grow(scratch->g, N * R);
    float * ae = grow(scratch->ae, R * IC);
    float * dae = grow(scratch->dae, R * IC);
    scale_rows(ae, A.data(), E.data(), R, IC);
    // g[N,R] = dy B;  dB[OC,R] += s dy^T xa
    gemm(false, false, N, R, OC, 1.0f, dy, OC, B.data(), R, 0.0f, g, R);
    gemm(true, false, OC, R, N, scaling, dy, OC, xa.data(), R, 1.0f, dB.data(), R);
    // dAE[R,IC] = s g^T xd, split into dA and dE
    const float * xin = dropout.input(x, N * IC, drop, scratch->xd);
    gemm(true, false, R, IC, N, scaling, g, R, xin, IC, 0.0f, dae, IC);
    for (int64_t i = 0; i < R; i++) {
        double acc = 0.0;
        for (int64_t j = 0; j < IC; j++) {
            acc += (double) dae[i * IC + j] * A[(size_t) (i * IC + j)];
            dA[(size_t) (i * IC + j)] += dae[i * IC + j] * E[(size_t) i];
        }
        dE[(size_t) i] += (float) acc;
    }
    // dx += s (g AE) keep/(1-p)
    if (!drop) {
        if (dx) gemm(false, false, N, IC, R, scaling, g, R, ae, IC, 1.0f, dx, IC);
        return;
    }
    if (dx) {
        float * tmp = grow(scratch->tmp, N * IC);
        gemm(false, false, N, IC, R, scaling, g, R, ae, IC, 0.0f, tmp, IC);
        dropout.add_masked(dx, tmp, N * IC);
    }
    dropout.next();   // the next forward draws a fresh mask
}

void adalora_module::delta_weight(float * dW) const {
    const int64_t IC = t.in_features, OC = t.out_features;
    std::vector<float> ae((size_t) (R * IC));
    scale_rows(ae.data(), A.data(), E.data(), R, IC);
    if (R == 0) {
        std::fill(dW, dW + OC * IC, 0.0f);
        return;
    }
    gemm(false, false, OC, IC, R, scaling, B.data(), R, ae.data(), IC, 0.0f, dW, IC);
}

void adalora_module::params(std::vector<param_ref> & out) {
    param_ref a;
    a.name = "lora_A";   // ParameterDict: no ".weight"
    a.value = A.data();
    a.grad = dA.data();
    a.shape = {R, t.in_features};
    out.push_back(a);
    param_ref e;
    e.name = "lora_E";
    e.value = E.data();
    e.grad = dE.data();
    e.shape = {R, 1};
    out.push_back(e);
    param_ref b;
    b.name = "lora_B";
    b.value = B.data();
    b.grad = dB.data();
    b.shape = {t.out_features, R};
    out.push_back(b);
}

int64_t adalora_module::kept() const {
    int64_t k = 0;
    for (uint8_t b : keep) k += b;
    return k;
}

void adalora_module::exported(std::vector<param_ref> & out) {
    const int64_t k = kept();
    if (!patterned || k == R) {   // PEFT slices only when the kept count differs
        params(out);
        for (size_t i = out.size() - 3; i < out.size(); i++) out[i].grad = nullptr;
        return;
    }
    const int64_t IC = t.in_features, OC = t.out_features;
    file_A.assign((size_t) (k * IC), 0.0f);
    file_E.assign((size_t) k, 0.0f);
    file_B.assign((size_t) (OC * k), 0.0f);
    for (int64_t i = 0, j = 0; i < R; i++) {
        if (!keep[(size_t) i]) continue;
        std::copy(A.begin() + i * IC, A.begin() + (i + 1) * IC, file_A.begin() + j * IC);
        file_E[(size_t) j] = E[(size_t) i];
        for (int64_t o = 0; o < OC; o++) file_B[(size_t) (o * k + j)] = B[(size_t) (o * R + i)];
        j++;
    }
    param_ref a;
    a.name = "lora_A";
    a.value = file_A.data();
    a.shape = {k, IC};
    out.push_back(a);
    param_ref e;
    e.name = "lora_E";
    e.value = file_E.data();
    e.shape = {k, 1};
    out.push_back(e);
    param_ref b;
    b.name = "lora_B";
    b.value = file_B.data();
    b.shape = {OC, k};
    out.push_back(b);
}

float adalora_module::regularize(float weight) {
    const double coef = (double) weight * reg_coef;
    if (coef == 0.0 || R == 0) return 0.0f;
    const double fa = adalora_orth_penalty(A.data(), R, t.in_features, true, dA.data(), coef);
    const double fb = adalora_orth_penalty(B.data(), t.out_features, R, false, dB.data(), coef);
    return (float) (coef * (fa + fb));
}

void adalora_module::triplet_scores(float * S) const {
    const int64_t IC = t.in_features, OC = t.out_features;
    std::vector<double> b_mean((size_t) R, 0.0);
    for (int64_t o = 0; o < OC; o++) {
        for (int64_t i = 0; i < R; i++) b_mean[(size_t) i] += (double) (ipt_B[(size_t) (o * R + i)] * unc_B[(size_t) (o * R + i)]);
    }
    for (int64_t i = 0; i < R; i++) {
        double a = 0.0;
        for (int64_t j = 0; j < IC; j++) a += (double) (ipt_A[(size_t) (i * IC + j)] * unc_A[(size_t) (i * IC + j)]);
        const float am = (float) (a / (double) IC), bm = (float) (b_mean[(size_t) i] / (double) OC);
        // PEFT _combine_ipt: E's score + (A's row mean + B's column mean)
        S[i] = ipt_E[(size_t) i] * unc_E[(size_t) i] + (am + bm);
    }
}

std::string adalora_module::state() const {
    std::string s = dropout.state() + ";" + (patterned ? "p" : "-");
    for (uint8_t b : keep) s += b ? '1' : '0';
    return s;
}

bool adalora_module::set_state(const std::string & s) {
    const size_t semi = s.find(';');
    if (semi == std::string::npos || s.size() != semi + 2 + keep.size()) return false;
    if (!dropout.set_state(s.substr(0, semi))) return false;
    const char flag = s[semi + 1];
    if (flag != 'p' && flag != '-') return false;
    std::vector<uint8_t> k(keep.size());
    for (size_t i = 0; i < k.size(); i++) {
        const char c = s[semi + 2 + i];
        if (c != '0' && c != '1') return false;
        k[i] = c == '1';
    }
    patterned = flag == 'p';
    keep = k;
    return true;
}

void adalora_module::state_tensors(std::vector<param_ref> & out) {
    const struct {
        const char * name;
        std::vector<float> & v;
        std::vector<int64_t> shape;
    } rows[] = {
        {"adalora_ipt.lora_A", ipt_A, {R, t.in_features}}, {"adalora_unc.lora_A", unc_A, {R, t.in_features}},
        {"adalora_ipt.lora_E", ipt_E, {R, 1}},             {"adalora_unc.lora_E", unc_E, {R, 1}},
        {"adalora_ipt.lora_B", ipt_B, {t.out_features, R}}, {"adalora_unc.lora_B", unc_B, {t.out_features, R}},
    };
    for (const auto & r : rows) {
        param_ref p;
        p.name = r.name;
        p.value = r.v.data();
        p.shape = r.shape;
        p.trainable = false;
        p.saved = false;
        out.push_back(p);
    }
}

// ---- method ----------------------------------------------------------------------------------

adalora_method::adalora_method() = default;
adalora_method::~adalora_method() = default;

namespace {

// Keys whose non-default values select something AdaLoRA (or our AdaLoRA) does not do.
status check_unsupported(const json_value & cfg) {
    json_value bias = cfg.get("bias");
    if (bias.valid() && !bias.is_null() && bias.as_string() != "none") {
        return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "bias", "\"none\" (training base biases is not supported)", bias.dump());
    }
    for (const char * k : {"fan_in_fan_out", "modules_to_save", "lora_bias", "layer_replication", "trainable_token_indices",
                           "target_parameters", "use_qalora", "alora_invocation_tokens", "use_bdlora"}) {
        const json_value v = cfg.get(k);
        if (!config_key_off(v)) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, std::string(k) + " = " + v.dump() + " is not supported");
            st.hint = "peft.cpp implements AdaLoRA on the q/k/v/o/gate/up/down projections ([out, in] weights)";
            return st;
        }
    }
    // PEFT's AdaLoraConfig refuses DoRA and LoftQ; the others are LoRA-only features of ours
    for (const char * k : {"use_dora", "loftq_config", "use_rslora", "alpha_pattern", "lora_fa", "loraplus_lr_ratio",
                           "save_residual_model", "corda_config", "corda_data"}) {
        if (!config_key_off(cfg.get(k))) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, std::string(k) + " is not an AdaLoRA option");
            st.hint = "AdaLoRA's keys: init_r, target_r, tinit, tfinal, deltaT, beta1, beta2, orth_reg_weight, total_step, lora_alpha, lora_dropout";
            return st;
        }
    }
    const json_value init = cfg.get("init_lora_weights");
    if (init.valid() && !init.is_null() && !(init.is_bool() && init.as_bool())) {
        status st = make_mismatch(PEFT_STATUS_CONFIG, WHERE, "init_lora_weights", "true (E = 0, A and B ~ N(0, 0.02))", init.dump());
        st.hint = "AdaLoRA has one initialisation";
        return st;
    }
    return {};
}

status read_int(const json_value & cfg, const char * key, int64_t lo, const char * want, int64_t & out) {
    const json_value v = cfg.get(key);
    if (!v.valid() || v.is_null()) return {};
    if (!v.is_integer() || v.as_int() < lo) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, key, want, v.dump());
    out = v.as_int();
    return {};
}

// rank_pattern as PEFT saves it: {"model.layers.N.M.lora_E": [true, false, ...] (init_r bits)}
status parse_rank_pattern(const json_value & v, int64_t init_r, std::vector<std::string> & paths,
                          std::vector<std::vector<uint8_t>> & bits) {
    paths.clear();
    bits.clear();
    if (!v.valid() || v.is_null()) return {};
    if (!v.is_object()) {
        return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "rank_pattern", "an object {\"<module>.lora_E\": [true, false, ...]}", v.dump());
    }
    for (size_t i = 0; i < v.size(); i++) {
        std::string key = v.key_at(i);
        const std::string field = "rank_pattern[\"" + key + "\"]";
        for (const char * suffix : {".lora_E.default", ".lora_E"}) {   // with or without the adapter name
            const std::string s = suffix;
            if (key.size() > s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0) {
                key = key.substr(0, key.size() - s.size());
                break;
            }
        }
        if (key == v.key_at(i)) {
            status st = make_mismatch(PEFT_STATUS_CONFIG, WHERE, "rank_pattern key \"" + key + "\"", "a name ending in .lora_E", "no such suffix");
            st.hint = "AdaLoRA's rank_pattern is written by training (PEFT: the kept ranks of each lora_E); LoRA's {regex: r} form does not apply";
            return st;
        }
        const json_value list = v.value_at(i);
        if (!list.is_array() || (int64_t) list.size() != init_r) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, field, "a list of init_r = " + std::to_string(init_r) + " booleans", list.dump());
        }
        std::vector<uint8_t> b;
        for (size_t j = 0; j < list.size(); j++) {
            if (!list.at(j).is_bool()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, field, "booleans", list.at(j).dump());
            b.push_back(list.at(j).as_bool() ? 1 : 0);
        }
        paths.push_back(key);
        bits.push_back(b);
    }
    return {};
}

} // namespace

status adalora_method::configure(const json_value & cfg) {
    if (!cfg.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "configuration", "a JSON object", cfg.dump());
    PEFT_TRY(check_unsupported(cfg));
    PEFT_TRY(read_int(cfg, "init_r", 1, "a positive integer rank (PEFT's default 12)", sched.init_r));
    PEFT_TRY(read_int(cfg, "target_r", 0, "a non-negative integer rank (PEFT's default 8)", sched.target_r));
    PEFT_TRY(read_int(cfg, "tinit", 0, "a non-negative number of warm-up steps", sched.tinit));
    PEFT_TRY(read_int(cfg, "tfinal", 0, "a non-negative number of final steps", sched.tfinal));
    PEFT_TRY(read_int(cfg, "deltaT", 1, "a positive step interval between allocations", sched.deltaT));
    PEFT_TRY(read_int(cfg, "r", 0, "an integer (unused by AdaLoRA: init_r sets the rank)", r));
    if (sched.target_r > sched.init_r) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "target_r = " + std::to_string(sched.target_r) + " is larger than init_r = " +
                                                              std::to_string(sched.init_r));
        st.hint = "AdaLoRA prunes from init_r down to an average of target_r ranks per module: choose target_r <= init_r";
        return st;
    }
    json_value v = cfg.get("total_step");
    if (!v.valid() || v.is_null()) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "total_step is required (the budget schedule ends at total_step - tfinal)");
        st.hint = "set total_step to the run's number of optimizer steps (max_steps, or epochs x steps per epoch), as PEFT 0.18 requires";
        return st;
    }
    if (!v.is_integer() || v.as_int() <= 0) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "total_step", "a positive number of steps", v.dump());
    sched.total_step = v.as_int();
    if (sched.tinit >= sched.total_step - sched.tfinal) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "tinit = " + std::to_string(sched.tinit) + ", tfinal = " + std::to_string(sched.tfinal) +
                                                              " and total_step = " + std::to_string(sched.total_step) +
                                                              " leave no budgeting phase (tinit must be < total_step - tfinal)");
        st.hint = "decrease tinit / tfinal or increase total_step";
        return st;
    }
    for (const char * k : {"beta1", "beta2"}) {
        v = cfg.get(k);
        if (!v.valid() || v.is_null()) continue;
        if (!v.is_number() || !(v.as_double() > 0.0 && v.as_double() < 1.0)) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, k, "an EMA coefficient in (0, 1) (PEFT's default 0.85)", v.dump());
        }
        (std::string(k) == "beta1" ? beta1 : beta2) = v.as_double();
    }
    v = cfg.get("orth_reg_weight");
    if (v.valid() && !v.is_null()) {
        // PEFT raises on <= 0 in the training forward
        if (!v.is_number() || !(v.as_double() > 0.0) || !std::isfinite(v.as_double())) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "orth_reg_weight", "a positive number (PEFT's default 0.5)", v.dump());
        }
        orth_reg_weight = v.as_double();
    }
    v = cfg.get("lora_alpha");
    if (v.valid() && !v.is_null()) {
        if (!v.is_number() || !std::isfinite(v.as_double())) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "lora_alpha", "a number", v.dump());
        lora_alpha = v.as_double();
        alpha_is_int = v.is_integer();
    }
    v = cfg.get("lora_dropout");
    if (v.valid() && !v.is_null()) {
        if (!v.is_number() || !(v.as_double() >= 0.0 && v.as_double() < 1.0)) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "lora_dropout", "a probability in [0, 1)", v.dump());
        }
        lora_dropout = v.as_double();
    }
    PEFT_TRY(parse_rank_pattern(cfg.get("rank_pattern"), sched.init_r, pattern_paths, pattern_bits));
    PEFT_TRY(target_echo_read(cfg, WHERE, echo));
    scratch = std::make_shared<adalora_scratch>();
    return {};
}

status adalora_method::begin(const target_info * targets, int64_t n) {
    PEFT_ASSERT(scratch);   // configure() first
    n_targets = n;
    modules.clear();
    for (const std::string & p : pattern_paths) {   // a pattern entry for an unselected module
        bool found = false;
        for (int64_t i = 0; i < n && !found; i++) found = targets[i].path == p;
        if (!found) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, "rank_pattern names \"" + p + ".lora_E\", which is not a selected target");
            st.hint = "the adapter was made for another model or with other target_modules";
            return st;
        }
    }
    return {};
}

status adalora_method::create(const target_info & t, rng & rg, std::unique_ptr<adapter_module> & out) {
    PEFT_ASSERT(scratch && n_targets > 0);   // begin() first
    target_info own = t;
    own.writer = nullptr;   // AdaLoRA never rewrites the base
    const std::vector<uint8_t> * bits = nullptr;
    for (size_t i = 0; i < pattern_paths.size(); i++) {
        if (pattern_paths[i] == t.path) bits = &pattern_bits[i];
    }
    int64_t R = sched.init_r;
    if (bits) {   // a truncated file: PEFT resize_modules_by_rank_pattern
        R = 0;
        for (uint8_t b : *bits) R += b;
    }
    auto mod = std::make_unique<adalora_module>(own, R, sched.init_r, (float) lora_alpha, (float) lora_dropout, rg, scratch);
    if (bits) {
        mod->slots = *bits;
        mod->patterned = true;
    }
    mod->reg_coef = orth_reg_weight / (double) (2 * n_targets);
    modules.push_back(mod.get());
    out = std::move(mod);
    return {};
}

void adalora_method::mask_to_budget(adalora_module * const * mods, int64_t n, int64_t budget) const {
    int64_t b0 = 0;
    for (int64_t i = 0; i < n; i++) b0 += mods[i]->R;
    std::vector<float> all;
    std::vector<std::vector<float>> per((size_t) n);
    for (int64_t i = 0; i < n; i++) {
        per[(size_t) i].resize((size_t) mods[i]->R);
        mods[i]->triplet_scores(per[(size_t) i].data());
        all.insert(all.end(), per[(size_t) i].begin(), per[(size_t) i].end());
    }
    // PEFT's torch.kthvalue fails for k = 0 (a budget still at b0); nothing is masked then
    const float tau = adalora_threshold(all, b0 - budget);
    for (int64_t i = 0; i < n; i++) {
        adalora_module & m = *mods[i];
        for (int64_t j = 0; j < m.R; j++) {
            const bool masked = per[(size_t) i][(size_t) j] <= tau;
            if (masked) m.E[(size_t) j] = 0.0f;
            m.keep[(size_t) j] = !masked;
        }
        m.patterned = true;
    }
}

namespace {

void mask_with_pattern(adalora_module & m) {
    for (int64_t j = 0; j < m.R; j++) {
        if (!m.keep[(size_t) j]) m.E[(size_t) j] = 0.0f;
    }
}

void reset_importance(adalora_module & m) {
    for (std::vector<float> * v : {&m.ipt_A, &m.unc_A, &m.ipt_E, &m.unc_E, &m.ipt_B, &m.unc_B}) std::fill(v->begin(), v->end(), 0.0f);
}

} // namespace

void adalora_method::on_step_end(const step_info & s, adapter_module * const * mods_in, int64_t n, optimizer_view & opt) {
    (void) opt;   // PEFT keeps the optimizer state of masked ranks
    std::vector<adalora_module *> mods((size_t) n);
    for (int64_t i = 0; i < n; i++) mods[(size_t) i] = static_cast<adalora_module *>(mods_in[i]);
    const int64_t t = s.step - 1;   // PEFT's global_step: steps done before this one
    const int64_t final_step = sched.total_step - sched.tfinal;
    if (t < final_step) {
        for (adalora_module * m : mods) {
            adalora_ema_update(m->A.data(), m->dA.data(), (int64_t) m->A.size(), beta1, beta2, m->ipt_A.data(), m->unc_A.data());
            adalora_ema_update(m->E.data(), m->dE.data(), (int64_t) m->E.size(), beta1, beta2, m->ipt_E.data(), m->unc_E.data());
            adalora_ema_update(m->B.data(), m->dB.data(), (int64_t) m->B.size(), beta1, beta2, m->ipt_B.data(), m->unc_B.data());
        }
    }
    int64_t b0 = 0;
    for (adalora_module * m : mods) b0 += m->R;
    const int64_t bT = sched.target_r * n;
    if (t <= final_step) {
        bool mask = false;
        const int64_t budget = adalora_budget(sched, b0, bT, t, mask);
        if (mask || t == final_step) mask_to_budget(mods.data(), n, budget);
        if (t == final_step) {
            for (adalora_module * m : mods) reset_importance(*m);
        }
    } else {
        for (adalora_module * m : mods) {
            if (m->patterned) mask_with_pattern(*m);
        }
    }
    if (s.step != s.total_steps) return;
    // the run's last step: the ranks each module keeps (what the saved file holds)
    std::string line;
    int64_t lo = sched.init_r, hi = 0, total = 0;
    for (adalora_module * m : mods) {
        const int64_t k = m->patterned ? m->kept() : m->R;
        lo = std::min(lo, k);
        hi = std::max(hi, k);
        total += k;
        line += ' ';
        line += std::to_string(k);
    }
    std::fprintf(stderr, "adalora: final ranks (of init_r %lld; min %lld, max %lld, total %lld, budget %lld) per module in target order:%s\n",
                 (long long) sched.init_r, (long long) lo, (long long) hi, (long long) total, (long long) bT, line.c_str());
    if (sched.total_step != s.total_steps) {
        std::fprintf(stderr, "adalora: note: total_step = %lld but the run had %lld steps (the schedule assumes total_step)\n",
                     (long long) sched.total_step, (long long) s.total_steps);
    }
}

void adalora_method::tables(std::vector<module_table> & out) const {
    module_table tb;
    tb.file = "adalora_ranks";
    tb.title = "AdaLoRA ranks";
    tb.note = "ranks each module keeps (the saved rank_pattern) of init_r " + std::to_string(sched.init_r) + "; budget target_r " +
              std::to_string(sched.target_r) + " per module on average";
    tb.columns = {"module", "rank", "init_r"};
    for (const adalora_module * m : modules) {
        tb.rows.push_back({m->t.path, std::to_string(m->patterned ? m->kept() : m->R), std::to_string(sched.init_r)});
    }
    out.push_back(tb);
}

// Every key PEFT 0.18 writes for an AdaLoraConfig (LoraConfig's and its own), at its default
// unless we set it; rank_pattern once an allocation (or the loaded file) made one.
std::string adalora_method::config_json() const {
    std::string pattern = "null";
    bool any = false;
    for (const adalora_module * m : modules) any = any || m->patterned;
    if (any) {
        pattern = "{";
        bool first = true;
        for (const adalora_module * m : modules) {
            if (!m->patterned) continue;
            pattern += (first ? "" : ",") + json_quote(m->t.path + ".lora_E") + ":[";
            first = false;
            // the init_r slots, each of this module's rows taking its keep bit
            for (size_t i = 0, j = 0; i < m->slots.size(); i++) {
                const bool on = m->slots[i] ? m->keep[j++] != 0 : false;
                pattern += std::string(i ? "," : "") + (on ? "true" : "false");
            }
            pattern += "]";
        }
        pattern += "}";
    }
    std::string s = "{";
    s += "\"alora_invocation_tokens\":null";
    s += ",\"alpha_pattern\":{}";
    s += ",\"arrow_config\":null";
    s += ",\"auto_mapping\":null";
    s += ",\"base_model_name_or_path\":null";
    s += ",\"beta1\":" + json_python_float(beta1);
    s += ",\"beta2\":" + json_python_float(beta2);
    s += ",\"bias\":\"none\"";
    s += ",\"corda_config\":null";
    s += ",\"deltaT\":" + std::to_string(sched.deltaT);
    s += ",\"ensure_weight_tying\":false";
    s += ",\"eva_config\":null";
    s += ",\"exclude_modules\":" + echo.exclude;
    s += ",\"fan_in_fan_out\":false";
    s += ",\"inference_mode\":true";
    s += ",\"init_lora_weights\":true";
    s += ",\"init_r\":" + std::to_string(sched.init_r);
    s += ",\"layer_replication\":null";
    s += ",\"layers_pattern\":" + echo.layers_pattern;
    s += ",\"layers_to_transform\":" + echo.layers;
    s += ",\"loftq_config\":{}";
    s += ",\"lora_alpha\":" + (alpha_is_int ? std::to_string((int64_t) lora_alpha) : json_python_float(lora_alpha));
    s += ",\"lora_bias\":false";
    s += ",\"lora_dropout\":" + json_python_float(lora_dropout);
    s += ",\"megatron_config\":null";
    s += ",\"megatron_core\":\"megatron.core\"";
    s += ",\"modules_to_save\":null";
    s += ",\"orth_reg_weight\":" + json_python_float(orth_reg_weight);
    s += ",\"peft_type\":\"ADALORA\"";
    s += ",\"peft_version\":\"0.18.1\"";
    s += ",\"qalora_group_size\":16";
    s += ",\"r\":" + std::to_string(r);
    s += ",\"rank_pattern\":" + pattern;
    s += ",\"revision\":null";
    s += ",\"target_modules\":" + echo.targets;
    s += ",\"target_parameters\":null";
    s += ",\"target_r\":" + std::to_string(sched.target_r);
    s += ",\"task_type\":" + echo.task_type;
    s += ",\"tfinal\":" + std::to_string(sched.tfinal);
    s += ",\"tinit\":" + std::to_string(sched.tinit);
    s += ",\"total_step\":" + std::to_string(sched.total_step);
    s += ",\"trainable_token_indices\":null";
    s += ",\"use_dora\":false";
    s += ",\"use_qalora\":false";
    s += ",\"use_rslora\":false";
    s += "}";
    return s;
}

std::unique_ptr<adapter_method> adalora_method_make() { return std::make_unique<adalora_method>(); }

// PEFT AdaLoraConfig keys that `peft train` takes; lora_alpha, lora_dropout, rank_pattern are
// LoRA's rows (the registry keeps one row per name).
const std::vector<option_def> & adalora_method_options() {
    static const std::vector<option_def> keys = {
        {"init_r", OPT_INT, "12", "adalora: initial rank of every module (the ranks allocated)"},
        {"target_r", OPT_INT, "8", "adalora: average rank per module after pruning (<= init_r)"},
        {"tinit", OPT_INT, "0", "adalora: warm-up steps before pruning starts"},
        {"tfinal", OPT_INT, "0", "adalora: final steps trained with the ranks fixed"},
        {"deltaT", OPT_INT, "1", "adalora: steps between two budget allocations"},
        {"beta1", OPT_FLOAT, "0.85", "adalora: EMA coefficient of the sensitivity |w dL/dw|"},
        {"beta2", OPT_FLOAT, "0.85", "adalora: EMA coefficient of its uncertainty"},
        {"orth_reg_weight", OPT_FLOAT, "0.5", "adalora: weight of the orthogonality penalty on lora_A and lora_B"},
        {"total_step", OPT_INT, "required", "adalora: the run's total optimizer steps (the budget schedule's end)"},
    };
    return keys;
}

} // namespace peft
