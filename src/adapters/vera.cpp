// vera.cpp: the VeRA module (forward, backward, delta, params) and the VeRA method (PEFT
// VeraConfig keys, the shared projections), METHODS §9.
// Math (xd = drop(x), A = A_sh[:, :IC], B = B_sh[:OC, :], xa = xd A^T [N,R], h = lambda_d * xa):
//   forward   y  = x W^T + b + lambda_b * (h B^T)          computed as h (lambda_b * B)^T
//   backward  dx += dy W + ((dy (lambda_b * B)) * lambda_d) A * keep/(1-p)
//             dlambda_b[o] += sum_n dy[n,o] (h B^T)[n,o] = sum_k B[o,k] (dy^T h)[o,k]
//             dlambda_d[k] += sum_n (dy (lambda_b * B))[n,k] xa[n,k]
// Only the R-wide xa is kept between forward and backward: the OC-wide h B^T that dlambda_b
// needs is never formed, dy^T h [OC,R] gives the same sums at the same cost.
// Not here: target selection (target.cpp), files (io/peft_format.cpp), the torch-compatible
// uniform draw (core/rng.cpp).
#include "adapters/vera.h"

#include <cmath>

#include "adapters/dropout_mask.h"
#include "adapters/target.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/peft_format.h"
#include "kernels/kernels.h"

namespace peft {

// Transient per-call buffers; modules of one method run one at a time (the model calls them
// serially), so they share one set, grown on demand and never shrunk.
struct vera_scratch {
    std::vector<float> xd;    // [N,IC] dropped input
    std::vector<float> h;     // [N,R]  lambda_d * xa
    std::vector<float> g;     // [N,R]  dy (lambda_b * B), then times lambda_d
    std::vector<float> bb;    // [OC,R] lambda_b * B
    std::vector<float> G;     // [OC,R] dy^T h
    std::vector<float> tmp;   // [N,IC] the input gradient of the adapter path before the dropout mask
};

namespace {

const char * const WHERE = "adapter config";

float * grow(std::vector<float> & v, int64_t n) {
    if ((int64_t) v.size() < n) v.resize((size_t) n);
    return v.data();
}

} // namespace

// ---- shared projections ------------------------------------------------------------------------

void vera_draw_projections(vera_shared & sh, int64_t key) {
    sh.A.assign((size_t) (sh.R * sh.in_max), 0.0f);
    sh.B.assign((size_t) (sh.out_max * sh.R), 0.0f);
    // torch.Generator().manual_seed(key) takes key mod 2^64 (Python's negative ints wrap)
    rng g((uint64_t) key);
    // PEFT _kaiming_init, in double as Python computes it: bound = sqrt(3) * (sqrt(2) / sqrt(fan_in))
    auto bound = [](int64_t fan_in) { return std::sqrt(3.0) * (std::sqrt(2.0) / std::sqrt((double) fan_in)); };
    const double ba = bound(sh.in_max), bb = bound(sh.R);
    g.fill_uniform_torch(sh.A.data(), (int64_t) sh.A.size(), -ba, ba);
    g.fill_uniform_torch(sh.B.data(), (int64_t) sh.B.size(), -bb, bb);
}

// ---- module --------------------------------------------------------------------------------

vera_module::vera_module(const target_info & ti, const vera_shared & sh, float p, bool init_weights, float d_initial, rng & r,
                         std::shared_ptr<vera_scratch> sc)
    : t(ti), R(sh.R), A(sh.A.data()), lda(sh.in_max), B(sh.B.data()), scratch(std::move(sc)) {
    PEFT_ASSERT(R > 0 && t.base && t.in_features == t.base->IC && t.out_features == t.base->OC);
    PEFT_ASSERT(t.in_features <= sh.in_max && t.out_features <= sh.out_max && scratch);
    const int64_t OC = t.out_features;
    // PEFT update_layer: ones / randn, then reset_vera_parameters when init_weights
    lambda_b.assign((size_t) OC, init_weights ? 0.0f : 1.0f);
    lambda_d.assign((size_t) R, d_initial);
    if (!init_weights) r.fill_normal(lambda_d.data(), R, 0.0f, 1.0f);
    dropout.p = p;
    dropout.seed = ((uint64_t) r.next_u32() << 32) | r.next_u32();
    dlambda_b.assign(lambda_b.size(), 0.0f);
    dlambda_d.assign(lambda_d.size(), 0.0f);
}

namespace {

// h[N,R] = lambda_d * xa (per column)
void scale_columns(float * h, const float * xa, const float * lambda_d, int64_t N, int64_t R) {
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < R; k++) h[n * R + k] = lambda_d[k] * xa[n * R + k];
    }
}

// bb[OC,R] = lambda_b * B (per row); B = B_sh[:OC, :] is contiguous
void scale_rows(float * bb, const float * B, const float * lambda_b, int64_t OC, int64_t R) {
    for (int64_t o = 0; o < OC; o++) {
        for (int64_t k = 0; k < R; k++) bb[o * R + k] = lambda_b[o] * B[o * R + k];
    }
}

} // namespace

void vera_module::forward(const float * x, int64_t N, float * y) {
    const int64_t IC = t.in_features, OC = t.out_features;
    linear_forward(y, x, *t.base, t.bias, N);
    const float * xin = dropout.input(x, N * IC, dropout_active(), scratch->xd);
    float * xa_ = grow(xa, N * R);
    xa_rows = N;
    // xa[N,R] = xd A^T with A = A_sh[:, :IC] read in place (row stride in_max)
    gemm(false, true, N, R, IC, 1.0f, xin, IC, A, lda, 0.0f, xa_, R);
    float * h = grow(scratch->h, N * R);
    float * bb = grow(scratch->bb, OC * R);
    scale_columns(h, xa_, lambda_d.data(), N, R);
    scale_rows(bb, B, lambda_b.data(), OC, R);
    // y[N,OC] += h (lambda_b * B)^T = lambda_b * (h B^T) (beta 1: with lambda_b = 0 the base
    // output is kept bit for bit)
    gemm(false, true, N, OC, R, 1.0f, h, R, bb, R, 1.0f, y, OC);
}

void vera_module::backward(const float * x, const float * dy, int64_t N, float * dx) {
    PEFT_ASSERT(N == xa_rows);   // the contract: backward follows the forward of the same x
    const int64_t IC = t.in_features, OC = t.out_features;
    // base path: dx += dy W
    if (dx) linear_backward_input(dx, dy, *t.base, N, 1.0f);
    float * h = grow(scratch->h, N * R);
    float * bb = grow(scratch->bb, OC * R);
    float * G = grow(scratch->G, OC * R);
    float * g = grow(scratch->g, N * R);
    scale_columns(h, xa.data(), lambda_d.data(), N, R);
    scale_rows(bb, B, lambda_b.data(), OC, R);
    // y += lambda_b * (h B^T)  =>  dlambda_b[o] += sum_k B[o,k] G[o,k], G[OC,R] = dy^T h
    gemm(true, false, OC, R, N, 1.0f, dy, OC, h, R, 0.0f, G, R);
    for (int64_t o = 0; o < OC; o++) {
        double acc = 0.0;
        for (int64_t k = 0; k < R; k++) acc += (double) B[o * R + k] * G[o * R + k];
        dlambda_b[(size_t) o] += (float) acc;
    }
    // y += h bb^T  =>  dh[N,R] = dy bb
    gemm(false, false, N, R, OC, 1.0f, dy, OC, bb, R, 0.0f, g, R);
    // h = lambda_d * xa  =>  dlambda_d[k] += sum_n dh[n,k] xa[n,k]; dxa = lambda_d * dh (in g)
    std::vector<double> acc((size_t) R, 0.0);
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < R; k++) {
            acc[(size_t) k] += (double) g[n * R + k] * xa[(size_t) (n * R + k)];
            g[n * R + k] *= lambda_d[(size_t) k];
        }
    }
    for (int64_t k = 0; k < R; k++) dlambda_d[(size_t) k] += (float) acc[(size_t) k];
    // xa = xd A^T, xd = x keep/(1-p)  =>  dx += (dxa A) keep/(1-p)
    const bool drop = dropout_active();
    if (!drop) {
        if (dx) gemm(false, false, N, IC, R, 1.0f, g, R, A, lda, 1.0f, dx, IC);
        return;
    }
    if (dx) {
        float * tmp = grow(scratch->tmp, N * IC);
        gemm(false, false, N, IC, R, 1.0f, g, R, A, lda, 0.0f, tmp, IC);
        dropout.add_masked(dx, tmp, N * IC);
    }
    dropout.next();   // the next forward draws a fresh mask
}

void vera_module::delta_weight(float * dW) const {
    const int64_t IC = t.in_features, OC = t.out_features;
    // dW[OC,IC] = (lambda_b * B)(lambda_d * A) = S A with S[o,k] = lambda_b[o] B[o,k] lambda_d[k]
    std::vector<float> S((size_t) (OC * R));
    for (int64_t o = 0; o < OC; o++) {
        for (int64_t k = 0; k < R; k++) S[(size_t) (o * R + k)] = lambda_b[(size_t) o] * B[o * R + k] * lambda_d[(size_t) k];
    }
    gemm(false, false, OC, IC, R, 1.0f, S.data(), R, A, lda, 0.0f, dW, IC);
}

void vera_module::params(std::vector<param_ref> & out) {
    param_ref b;
    b.name = "vera_lambda_b";
    b.value = lambda_b.data();
    b.grad = dlambda_b.data();
    b.shape = {t.out_features};
    out.push_back(b);
    param_ref d;
    d.name = "vera_lambda_d";
    d.value = lambda_d.data();
    d.grad = dlambda_d.data();
    d.shape = {R};
    out.push_back(d);
}

// ---- method ----------------------------------------------------------------------------------

vera_method::vera_method() = default;
vera_method::~vera_method() = default;

namespace {

// Keys whose non-default values select something VeRA (or our VeRA) does not do: refused rather
// than silently trained without.
status check_unsupported(const json_value & cfg) {
    json_value bias = cfg.get("bias");
    if (bias.valid() && !bias.is_null() && bias.as_string() != "none") {
        return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "bias", "\"none\" (training base biases is not supported)", bias.dump());
    }
    for (const char * k : {"fan_in_fan_out", "modules_to_save"}) {
        const json_value v = cfg.get(k);
        if (!config_key_off(v)) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, std::string(k) + " = " + v.dump() + " is not supported");
            st.hint = "peft.cpp implements VeRA on the q/k/v/o/gate/up/down projections ([out, in] weights)";
            return st;
        }
    }
    // not a VeraConfig field: PEFT drops it on load, so a file with it would select other modules
    if (!config_key_off(cfg.get("exclude_modules"))) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "exclude_modules is not a VeRA key (PEFT's VeraConfig has no such field)");
        st.hint = "select the modules with target_modules (a list, or a regex over module paths) and layers_to_transform";
        return st;
    }
    // LoRA's keys mean nothing here; a user who sets them expects an effect
    for (const char * k : {"lora_alpha", "lora_dropout", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "lora_fa",
                           "loraplus_lr_ratio", "save_residual_model", "corda_config", "corda_data"}) {
        if (!config_key_off(cfg.get(k))) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, std::string(k) + " is a LoRA key: VeRA has no alpha, scaling or per-module rank");
            st.hint = "VeRA's keys: r, vera_dropout, d_initial, projection_prng_key, save_projection, init_weights";
            return st;
        }
    }
    return {};
}

} // namespace

status vera_method::configure(const json_value & cfg) {
    if (!cfg.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "configuration", "a JSON object", cfg.dump());
    PEFT_TRY(check_unsupported(cfg));
    PEFT_TRY(config_read_int(cfg, "r", 1, "a positive integer rank", r));
    PEFT_TRY(config_read_int(cfg, "projection_prng_key", INT64_MIN, "an integer seed", projection_prng_key));
    PEFT_TRY(config_read_bool(cfg, "save_projection", save_projection));
    PEFT_TRY(config_read_number(cfg, "vera_dropout", 0.0, CONFIG_BELOW_ONE, "a probability in [0, 1)", vera_dropout));
    PEFT_TRY(config_read_number(cfg, "d_initial", -HUGE_VAL, HUGE_VAL, "a finite number (PEFT's default 0.1)", d_initial));
    PEFT_TRY(config_read_bool(cfg, "init_weights", init_weights));
    PEFT_TRY(target_echo_read(cfg, WHERE, echo));
    scratch = std::make_shared<vera_scratch>();
    return {};
}

// PEFT _find_dim: the projections cover the largest in and out features of the selected layers.
status vera_method::begin(const target_info * targets, int64_t n) {
    PEFT_ASSERT(scratch && n > 0);   // configure() first; target_select refuses an empty selection
    shared = {};
    shared.R = r;
    for (int64_t i = 0; i < n; i++) {
        shared.in_max = std::max(shared.in_max, targets[i].in_features);
        shared.out_max = std::max(shared.out_max, targets[i].out_features);
    }
    // 32-bit BLAS indices, and an r that would not fit in memory anyway
    const int64_t LIMIT = (int64_t) 1 << 31;
    if (r > LIMIT / shared.in_max || r > LIMIT / shared.out_max) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "r = " + std::to_string(r) + " makes vera_A [r, " + std::to_string(shared.in_max) +
                                                              "] / vera_B [" + std::to_string(shared.out_max) + ", r] too large");
        st.hint = "VeRA ranks are typically 256 to 1024";
        return st;
    }
    vera_draw_projections(shared, projection_prng_key);
    return {};
}

status vera_method::create(const target_info & t, rng & rg, std::unique_ptr<adapter_module> & out) {
    PEFT_ASSERT(!shared.A.empty());   // begin() first
    target_info own = t;
    own.writer = nullptr;   // VeRA never rewrites the base
    out = std::make_unique<vera_module>(own, shared, (float) vera_dropout, init_weights, (float) d_initial, rg, scratch);
    return {};
}

void vera_method::shared_params(std::vector<param_ref> & out) {
    param_ref a;
    a.name = "vera_A";
    a.value = shared.A.data();
    a.shape = {shared.R, shared.in_max};
    a.trainable = false;
    a.saved = save_projection;
    out.push_back(a);
    param_ref b = a;
    b.name = "vera_B";
    b.value = shared.B.data();
    b.shape = {shared.out_max, shared.R};
    out.push_back(b);
}

// Every key PEFT 0.18 writes for a VeraConfig, at its default unless we set it; compact here,
// io/peft_format.cpp sorts and indents it as json.dumps does and fills base_model_name_or_path.
std::string vera_method::config_json() const {
    std::string s = "{";
    s += "\"auto_mapping\":null";
    s += ",\"base_model_name_or_path\":null";
    s += ",\"bias\":\"none\"";
    s += ",\"d_initial\":" + json_python_float(d_initial);
    s += ",\"fan_in_fan_out\":false";
    s += ",\"inference_mode\":true";
    s += std::string(",\"init_weights\":") + (init_weights ? "true" : "false");
    s += ",\"layers_pattern\":" + echo.layers_pattern;
    s += ",\"layers_to_transform\":" + echo.layers;
    s += ",\"modules_to_save\":null";
    s += ",\"peft_type\":\"VERA\"";
    // a real PEFT release string: PEFT parses this field as a version when loading
    s += ",\"peft_version\":\"0.18.1\"";
    s += ",\"projection_prng_key\":" + std::to_string(projection_prng_key);
    s += ",\"r\":" + std::to_string(r);
    s += ",\"revision\":null";
    s += std::string(",\"save_projection\":") + (save_projection ? "true" : "false");
    s += ",\"target_modules\":" + echo.targets;
    s += ",\"task_type\":" + echo.task_type;
    s += ",\"vera_dropout\":" + json_python_float(vera_dropout);
    s += "}";
    return s;
}

std::unique_ptr<adapter_method> vera_method_make() { return std::make_unique<vera_method>(); }

// PEFT VeraConfig keys that `peft train` takes (configure() reads and checks them); r is
// LoRA's row (the registry keeps one row per name).
const std::vector<option_def> & vera_method_options() {
    static const std::vector<option_def> keys = {
        {"r", OPT_INT, "256", "VeRA rank (of the shared projections)"},
        {"projection_prng_key", OPT_INT, "0", "vera: seed of the shared random projections (torch.Generator, as PEFT draws them)"},
        {"save_projection", OPT_BOOL, "true", "vera: write vera_A / vera_B into the adapter file (false: regenerated from the key)"},
        {"vera_dropout", OPT_FLOAT, "0", "vera: dropout on the adapter input"},
        {"d_initial", OPT_FLOAT, "0.1", "vera: initial value of every lambda_d"},
        {"init_weights", OPT_BOOL, "true", "vera: lambda_b = 0, lambda_d = d_initial (false: ones and N(0,1))"},
    };
    return keys;
}

} // namespace peft
