// lora.cpp: the LoRA module (forward, backward, delta, merge, params) and the LoRA method
// (PEFT LoraConfig keys, per-module rank/alpha, init; use_dora makes dora_module, dora.cpp), METHODS §1, §2, §15, §16.
// Math (s = scaling, xd = drop(x), xa = xd A^T [N,R]):
//   forward   y  = x W^T + b + s * xa B^T
//   backward  dx += dy W + s * ((dy B) A) * keep/(1-p)
//             dB += s * dy^T xa            dA += s * (dy B)^T xd
// Not here: target selection (target.cpp), files (io/peft_format.cpp), SVD inits (PiSSA...).
#include "adapters/lora.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "adapters/corda.h"
#include "adapters/dora.h"
#include "adapters/dropout_mask.h"
#include "adapters/svd_init.h"
#include "adapters/target.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/peft_format.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"

namespace peft {

namespace {

float * grow(std::vector<float> & v, int64_t n) {
    if ((int64_t) v.size() < n) v.resize((size_t) n);
    return v.data();
}

} // namespace

// ---- module --------------------------------------------------------------------------------

lora_module::lora_module(const target_info & ti, int64_t rank, float s, float p, bool fa, float b_lr, lora_init init,
                         rng & r, std::shared_ptr<lora_scratch> sc)
    : t(ti), R(rank), scaling(s), freeze_a(fa), b_lr_scale(b_lr), scratch(std::move(sc)) {
    PEFT_ASSERT(R > 0 && t.base && t.in_features == t.base->IC && t.out_features == t.base->OC);
    PEFT_ASSERT(scratch);
    const int64_t IC = t.in_features, OC = t.out_features;
    A.assign((size_t) (R * IC), 0.0f);
    B.assign((size_t) (OC * R), 0.0f);
    // PEFT reset_lora_parameters: kaiming_uniform_(a=sqrt(5)) gives bound 1/sqrt(fan_in)
    const float a_sqrt5 = std::sqrt(5.0f);
    switch (init) {
        case LORA_INIT_DEFAULT: r.fill_kaiming_uniform(A.data(), R, IC, a_sqrt5); break;
        case LORA_INIT_GAUSSIAN: r.fill_normal(A.data(), R * IC, 0.0f, 1.0f / (float) R); break;
        case LORA_INIT_RANDOM:
            // init_lora_weights=False keeps nn.Linear's own init for both factors
            r.fill_kaiming_uniform(A.data(), R, IC, a_sqrt5);
            r.fill_kaiming_uniform(B.data(), OC, R, a_sqrt5);
            break;
        default: PEFT_ASSERT(false);
    }
    dropout.p = p;
    dropout.seed = ((uint64_t) r.next_u32() << 32) | r.next_u32();
    if (!freeze_a) dA.assign(A.size(), 0.0f);
    dB.assign(B.size(), 0.0f);
}

void lora_module::forward(const float * x, int64_t N, float * y) {
    const int64_t IC = t.in_features;
    linear_forward(y, x, *t.base, t.bias, N);
    const float * xin = dropout.input(x, N * IC, dropout_active(), scratch->xd);
    add_delta(xin, N, y);
}

// xa[N,R] = xd A^T; y[N,OC] += s xa B^T (beta 1: with B = 0 the base output is kept bit for bit)
void lora_module::add_delta(const float * xd, int64_t N, float * y) {
    const int64_t IC = t.in_features, OC = t.out_features;
    float * xa_ = grow(xa, N * R);
    xa_rows = N;
    gemm(false, true, N, R, IC, 1.0f, xd, IC, A.data(), IC, 0.0f, xa_, R);
    gemm(false, true, N, OC, R, scaling, xa_, R, B.data(), R, 1.0f, y, OC);
}

bool lora_module::forward_delta(const float * x, int64_t N, float * y) {
    if (dropout_active()) return false;
    add_delta(x, N, y);
    return true;
}

void lora_module::backward(const float * x, const float * dy, int64_t N, float * dx) {
    PEFT_ASSERT(N == xa_rows);   // the contract: backward follows the forward of the same x
    const int64_t IC = t.in_features, OC = t.out_features;
    // base path: dx += dy W
    if (dx) linear_backward_input(dx, dy, *t.base, N, 1.0f);
    // g[N,R] = dy B
    float * g = grow(scratch->g, N * R);
    gemm(false, false, N, R, OC, 1.0f, dy, OC, B.data(), R, 0.0f, g, R);
    // y += s xa B^T  =>  dB[OC,R] += s dy^T xa
    gemm(true, false, OC, R, N, scaling, dy, OC, xa.data(), R, 1.0f, dB.data(), R);
    const bool drop = dropout_active();
    const float * xin = dropout.input(x, N * IC, drop && !freeze_a, scratch->xd);
    // xa = xd A^T  =>  dA[R,IC] += s g^T xd   (LoRA-FA: A frozen, nothing to do)
    if (!freeze_a) gemm(true, false, R, IC, N, scaling, g, R, xin, IC, 1.0f, dA.data(), IC);
    // xa = xd A^T, xd = x keep/(1-p)  =>  dx += s (g A) keep/(1-p)
    if (dx && !drop) {
        gemm(false, false, N, IC, R, scaling, g, R, A.data(), IC, 1.0f, dx, IC);
    } else if (dx) {
        float * tmp = grow(scratch->tmp, N * IC);
        gemm(false, false, N, IC, R, scaling, g, R, A.data(), IC, 0.0f, tmp, IC);
        dropout.add_masked(dx, tmp, N * IC);
    }
    if (drop) dropout.next();   // the next forward draws a fresh mask
}

void lora_module::delta_weight(float * dW) const {
    // dW[OC,IC] = s B A
    gemm(false, false, t.out_features, t.in_features, R, scaling, B.data(), R, A.data(), t.in_features, 0.0f, dW,
         t.in_features);
}

void lora_module::merge(float * W, int64_t OC, int64_t IC) const {
    PEFT_ASSERT(OC == t.out_features && IC == t.in_features);
    gemm(false, false, OC, IC, R, scaling, B.data(), R, A.data(), IC, 1.0f, W, IC);
}

void lora_module::unmerge(float * W, int64_t OC, int64_t IC) const {
    PEFT_ASSERT(OC == t.out_features && IC == t.in_features);
    gemm(false, false, OC, IC, R, -scaling, B.data(), R, A.data(), IC, 1.0f, W, IC);
}

void lora_module::params(std::vector<param_ref> & out) {
    param_ref a;
    a.name = "lora_A.weight";
    a.value = A.data();
    a.grad = freeze_a ? nullptr : dA.data();
    a.shape = {R, t.in_features};
    a.trainable = !freeze_a;
    out.push_back(a);
    param_ref b;
    b.name = "lora_B.weight";
    b.value = B.data();
    b.grad = dB.data();
    b.shape = {t.out_features, R};
    b.lr_scale = b_lr_scale;
    out.push_back(b);
}

void lora_module::state_tensors(std::vector<param_ref> & out) {
    if (A0.empty()) return;
    param_ref a;
    a.name = "lora_A0";
    a.value = A0.data();
    a.shape = {R, t.in_features};
    a.trainable = false;
    a.saved = false;
    out.push_back(a);
    param_ref b = a;
    b.name = "lora_B0";
    b.value = B0.data();
    b.shape = {t.out_features, R};
    out.push_back(b);
}

void lora_module::exported(std::vector<param_ref> & out) {
    if (!export_on_original) {
        adapter_module::exported(out);
        return;
    }
    // The change from the original W is s (B A - B0 A0) = s [B | -B0] [A ; A0]: a rank-2R LoRA
    // on the unmodified base (METHODS §3 (5)); the method doubles alpha so that s stays.
    const int64_t IC = t.in_features, OC = t.out_features;
    file_A.resize((size_t) (2 * R * IC));
    file_B.resize((size_t) (OC * 2 * R));
    svd_init_convert(file_A.data(), file_B.data(), A.data(), B.data(), A0.data(), B0.data(), OC, IC, R);
    param_ref a;
    a.name = "lora_A.weight";
    a.value = file_A.data();
    a.shape = {2 * R, IC};
    out.push_back(a);
    param_ref b;
    b.name = "lora_B.weight";
    b.value = file_B.data();
    b.shape = {OC, 2 * R};
    out.push_back(b);
}

// ---- method --------------------------------------------------------------------------------

// CorDA's calibration: one input covariance per target.
struct corda_state {
    std::vector<target_info>      targets;
    std::vector<corda_covariance> cov;    // per target, finished once create() needs them
    bool                          ready = false;   // loaded from covariance_file, or finished
};


namespace {

const char * const WHERE = "adapter config";

// Keys whose non-default values select features we do not implement: refusing them is better
// than silently training or loading something else.
status check_unsupported(const json_value & cfg) {
    const char * flags[] = {"lora_bias", "fan_in_fan_out", "modules_to_save", "layer_replication",
                            "trainable_token_indices", "target_parameters", "use_qalora", "alora_invocation_tokens",
                            "use_bdlora"};
    for (const char * k : flags) {
        json_value v = cfg.get(k);
        if (!config_key_off(v)) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, std::string(k) + " = " + v.dump() + " is not supported");
            st.hint = "peft.cpp implements plain LoRA on the q/k/v/o/gate/up/down projections";
            return st;
        }
    }
    json_value bias = cfg.get("bias");
    if (bias.valid() && !bias.is_null() && bias.as_string() != "none") {
        return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "bias", "\"none\" (training base biases is not supported)",
                             bias.dump());
    }
    return {};
}

// rank_pattern / alpha_pattern: objects of key -> number; keys are regexes (checked by compiling)
status parse_pattern(const json_value & v, const char * field, bool integer, std::vector<std::string> & keys,
                     std::vector<double> & values, std::vector<std::string> & texts) {
    keys.clear();
    values.clear();
    texts.clear();
    if (!v.valid() || v.is_null()) return {};
    if (!v.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, field, "an object {module pattern: value}", v.dump());
    for (size_t i = 0; i < v.size(); i++) {
        std::string key = v.key_at(i);
        json_value val = v.value_at(i);
        if (integer ? !(val.is_integer() && val.as_int() > 0) : !val.is_number()) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, std::string(field) + "[\"" + key + "\"]",
                                 integer ? "a positive integer rank" : "a number", val.dump());
        }
        int64_t idx = 0;
        PEFT_TRY(target_pattern_find({key}, "", std::string(WHERE) + ": " + field, idx));   // compiles the key
        keys.push_back(key);
        values.push_back(val.as_double());
        texts.push_back(val.is_integer() ? std::to_string(val.as_int()) : json_python_float(val.as_double()));
    }
    return {};
}

// corda_config (PEFT CordaConfig: corda_method, covariance_file, cache_file, ...) and our
// corda_data / corda_samples (the calibration set peft train streams).
status parse_corda(const json_value & cfg, lora_method & m) {
    const json_value cc = cfg.get("corda_config");
    m.corda_config_json = cc.valid() ? cc.dump() : "null";
    if (cc.valid() && !cc.is_null()) {
        if (!cc.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "corda_config", "an object", cc.dump());
        for (size_t i = 0; i < cc.size(); i++) {
            const std::string k = cc.key_at(i);
            const json_value v = cc.value_at(i);
            if (k == "corda_method") {
                if (!v.is_string() || (v.as_string() != "ipm" && v.as_string() != "kpm")) {
                    return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "corda_config.corda_method", "\"ipm\" or \"kpm\"", v.dump());
                }
                m.corda_kpm = v.as_string() == "kpm";
            } else if (k == "covariance_file") {
                if (!v.is_null() && !v.is_string()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "corda_config.covariance_file", "a path", v.dump());
                m.corda_covariance_file = v.as_string();
            } else if (k == "cache_file" || k == "use_float16_for_covariance") {
                if (!v.is_null() && !(v.is_bool() && !v.as_bool())) {
                    status st = make_error(PEFT_STATUS_CONFIG, WHERE, "corda_config." + k + " = " + v.dump() + " is not supported");
                    st.hint = "covariance_file caches the calibration; the decomposition itself is recomputed";
                    return st;
                }
            } else if (k != "prune_temporary_fields" && k != "verbose") {
                return make_error(PEFT_STATUS_CONFIG, WHERE, "corda_config: unknown key \"" + k + "\"");
            }
        }
    }
    json_value v = cfg.get("corda_data");
    if (v.valid() && !v.is_null()) {
        if (!v.is_string() || v.as_string().empty()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "corda_data", "a data file path", v.dump());
        m.corda_data = v.as_string();
    }
    v = cfg.get("corda_samples");
    if (v.valid() && !v.is_null()) {
        if (!v.is_integer() || v.as_int() < 1) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "corda_samples", "a positive integer", v.dump());
        m.corda_samples = v.as_int();
    }
    if (m.init == LORA_INIT_CORDA && m.corda_data.empty() && m.corda_covariance_file.empty()) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "init_lora_weights \"corda\" needs calibration data");
        st.hint = "set corda_data: FILE.jsonl (samples of the task for ipm, of knowledge to keep for kpm), or corda_config.covariance_file";
        return st;
    }
    return {};
}

// use_dora (PEFT) and our dora_norm_axis / dora_detach_norm (METHODS §15, §18 (1)).
status parse_dora(const json_value & cfg, lora_method & m) {
    PEFT_TRY(config_read_bool(cfg, "use_dora", m.use_dora));
    json_value v = cfg.get("dora_norm_axis");
    if (v.valid() && !v.is_null()) {
        if (!v.is_string() || (v.as_string() != "out" && v.as_string() != "in")) {
            status st = make_mismatch(PEFT_STATUS_CONFIG, WHERE, "dora_norm_axis", "\"out\" or \"in\"", v.dump());
            st.hint = "out: one magnitude per output row (PEFT, the official code); in: per input column (the seed blog)";
            return st;
        }
        m.dora_axis_in = v.as_string() == "in";
    }
    m.dora_detach = !m.dora_axis_in;   // PEFT detaches the row norm; the blog's column variant does not
    PEFT_TRY(config_read_bool(cfg, "dora_detach_norm", m.dora_detach));
    for (const char * k : {"dora_norm_axis", "dora_detach_norm"}) {
        const json_value x = cfg.get(k);
        if (!m.use_dora && x.valid() && !x.is_null()) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, std::string(k) + " is a DoRA key, but use_dora is not true");
            st.hint = "set use_dora: true, or drop " + std::string(k);
            return st;
        }
    }
    if (m.use_dora && m.lora_fa) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "use_dora with lora_fa is not supported");
        st.hint = "LoRA-FA's (A A^T)^-1 preconditioner is derived for a plain LoRA update; drop one of the two keys";
        return st;
    }
    return {};
}

bool is_svd_init(lora_init i) { return i == LORA_INIT_PISSA || i == LORA_INIT_MILORA || i == LORA_INIT_OLORA || i == LORA_INIT_CORDA; }

// init_lora_weights: true, false, "gaussian", "pissa", "pissa_niter_N", "milora", "olora"
status parse_init(const json_value & v, lora_init & init, int64_t & niter) {
    niter = -1;
    const std::string s = v.as_string();
    const std::string prefix = "pissa_niter_";
    if (v.is_bool()) init = v.as_bool() ? LORA_INIT_DEFAULT : LORA_INIT_RANDOM;
    else if (s == "gaussian") init = LORA_INIT_GAUSSIAN;
    else if (s == "pissa") init = LORA_INIT_PISSA;
    else if (s == "milora") init = LORA_INIT_MILORA;
    else if (s == "olora") init = LORA_INIT_OLORA;
    else if (s == "corda") init = LORA_INIT_CORDA;
    else if (v.is_string() && s.rfind(prefix, 0) == 0) {
        int64_t n = -1;
        const auto [end, ec] = std::from_chars(s.data() + prefix.size(), s.data() + s.size(), n);
        if (ec != std::errc() || end != s.data() + s.size() || n < 0 || n > 1000) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "init_lora_weights", "pissa_niter_N with N in [0, 1000]", v.dump());
        }
        init = LORA_INIT_PISSA;
        niter = n;
    } else {
        status st = make_mismatch(PEFT_STATUS_CONFIG, WHERE, "init_lora_weights",
                                  "true, false, \"gaussian\", \"pissa\", \"pissa_niter_N\", \"milora\", \"olora\" or \"corda\"", v.dump());
        st.hint = "other PEFT initialisations (eva, loftq, ...) are not implemented yet";
        return st;
    }
    return {};
}

} // namespace

status lora_method::configure(const json_value & cfg) {
    if (!cfg.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "configuration", "a JSON object", cfg.dump());
    PEFT_TRY(check_unsupported(cfg));

    PEFT_TRY(config_read_int(cfg, "r", 1, "a positive integer rank", r));
    PEFT_TRY(config_read_number(cfg, "lora_alpha", -HUGE_VAL, HUGE_VAL, "a finite number", lora_alpha, &alpha_is_int));
    PEFT_TRY(config_read_number(cfg, "lora_dropout", 0.0, CONFIG_BELOW_ONE, "a probability in [0, 1)", lora_dropout));
    PEFT_TRY(config_read_bool(cfg, "use_rslora", use_rslora));
    PEFT_TRY(config_read_bool(cfg, "lora_fa", lora_fa));
    PEFT_TRY(parse_dora(cfg, *this));
    PEFT_TRY(config_read_number(cfg, "loraplus_lr_ratio", CONFIG_POSITIVE, HUGE_VAL, "a positive number", loraplus_lr_ratio));
    json_value v = cfg.get("init_lora_weights");
    if (v.valid() && !v.is_null()) {
        PEFT_TRY(parse_init(v, init, pissa_niter));
        init_text = v.dump();
        init_name = v.is_string() ? v.as_string() : init_text;
    }
    PEFT_TRY(parse_corda(cfg, *this));
    PEFT_TRY(config_read_bool(cfg, "save_residual_model", save_residual_model));
    std::vector<std::string> texts;
    std::vector<double> rv;
    PEFT_TRY(parse_pattern(cfg.get("rank_pattern"), "rank_pattern", true, rank_keys, rv, texts));
    rank_values.clear();
    for (double x : rv) rank_values.push_back((int64_t) x);
    PEFT_TRY(parse_pattern(cfg.get("alpha_pattern"), "alpha_pattern", false, alpha_keys, alpha_values, alpha_texts));

    if (is_svd_init(init) && !save_residual_model && use_rslora && (!rank_keys.empty() || !alpha_keys.empty())) {
        // PEFT refuses this too: the rank-2r file cannot keep every module's scale
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "init_lora_weights " + init_text +
                                                              " with use_rslora and rank_pattern/alpha_pattern cannot be saved as a plain LoRA");
        st.hint = "set save_residual_model: true (writes the residual model and the rank-r adapter), or drop the patterns";
        return st;
    }
    if (!is_svd_init(init)) save_residual_model = false;   // there is no residual to save
    PEFT_TRY(target_echo_read(cfg, WHERE, echo));
    scratch = std::make_shared<lora_scratch>();
    return {};
}

int64_t lora_method::rank_for(const std::string & path) const {
    int64_t i = -1;
    status st = target_pattern_find(rank_keys, path, WHERE, i);   // keys compiled in configure
    PEFT_ASSERT(st.ok());
    return i >= 0 ? rank_values[(size_t) i] : r;
}

double lora_method::alpha_for(const std::string & path) const {
    int64_t i = -1;
    status st = target_pattern_find(alpha_keys, path, WHERE, i);
    PEFT_ASSERT(st.ok());
    return i >= 0 ? alpha_values[(size_t) i] : lora_alpha;
}

double lora_method::scaling_for(const std::string & path) const {
    const double R = (double) rank_for(path), alpha = alpha_for(path);
    return use_rslora ? alpha / std::sqrt(R) : alpha / R;   // PEFT update_layer
}

status lora_method::check(const target_info & t) const {
    const int64_t R = rank_for(t.path);
    const int64_t k = std::min(t.in_features, t.out_features);
    if (R <= 0 || R > k) {
        status st = make_error(PEFT_STATUS_CONFIG, t.path,
                               "LoRA rank " + std::to_string(R) + " must be in [1, min(in_features " +
                                   std::to_string(t.in_features) + ", out_features " + std::to_string(t.out_features) +
                                   ") = " + std::to_string(k) + "]");
        st.hint = "lower r (or this module's rank_pattern entry)";
        return st;
    }
    return {};
}

status lora_method::create(const target_info & t, rng & rg, std::unique_ptr<adapter_module> & out) {
    PEFT_ASSERT(scratch);   // configure() first
    PEFT_TRY(check(t));
    const int64_t R = rank_for(t.path);
    const float s = (float) scaling_for(t.path);
    target_info own = t;
    own.writer = nullptr;   // the module keeps no writer: only create() / restore() replace its base
    const lora_init first = is_svd_init(init) ? LORA_INIT_DEFAULT : init;
    std::unique_ptr<lora_module> mod;
    if (use_dora) {
        mod = std::make_unique<dora_module>(own, R, s, (float) lora_dropout, (float) loraplus_lr_ratio, first, rg, scratch,
                                            dora_axis_in, dora_detach);
    } else {
        mod = std::make_unique<lora_module>(own, R, s, (float) lora_dropout, lora_fa, (float) loraplus_lr_ratio, first, rg, scratch);
    }
    if (is_svd_init(init)) {
        const uint64_t seed = ((uint64_t) rg.next_u32() << 32) | rg.next_u32();   // randomized SVD's sketch
        mod->export_on_original = !save_residual_model;
        if (!t.writer) {   // resume: A, B, A0, B0 come from the checkpoint, restore() rebuilds the base
            mod->A0.assign(mod->A.size(), 0.0f);
            mod->B0.assign(mod->B.size(), 0.0f);
            out = std::move(mod);
            return {};
        }
        const int64_t OC = t.out_features, IC = t.in_features;
        std::vector<float> W((size_t) (OC * IC));   // W, then W_res = W - s B A in place
        linear_weight_rows_f32(W.data(), *t.base, 0, OC);
        float * A = mod->A.data(), * B = mod->B.data(), * Wr = W.data();
        if (init == LORA_INIT_CORDA) PEFT_TRY(corda_finish());
        const corda_covariance * cov = nullptr;
        for (size_t i = 0; corda && i < corda->targets.size(); i++) {
            if (corda->targets[i].path == t.path) cov = &corda->cov[i];
        }
        status st = init == LORA_INIT_CORDA  ? corda_init(A, B, Wr, Wr, OC, IC, cov->C.data(), R, s, corda_kpm, nullptr)
                  : init == LORA_INIT_MILORA ? milora_init(A, B, Wr, Wr, OC, IC, R, s)
                  : init == LORA_INIT_OLORA  ? olora_init(A, B, Wr, Wr, OC, IC, R, s)
                  : pissa_niter < 0          ? pissa_init(A, B, Wr, Wr, OC, IC, R, s)
                                             : pissa_niter_init(A, B, Wr, Wr, OC, IC, R, s, (int) pissa_niter, seed);
        if (!st.ok()) {
            st.message = t.path + ": " + st.message;
            return st;
        }
        // in the base's own dtype: a bf16 model stays bf16, as PEFT casts the residual back
        t.writer->replace(t, W.data());
        mod->A0 = mod->A;
        mod->B0 = mod->B;
        if (auto * d = dynamic_cast<dora_module *>(mod.get())) {
            // m = ||W_res + s B A|| = ||W||: the residual base and the initial factors give the original rows
            d->mark_base_stale();
            d->init_magnitude();
        }
    }
    out = std::move(mod);
    return {};
}

// ---- LoRA-FA ---------------------------------------------------------------------------------

// PEFT's LoraFAOptimizer (METHODS §16 [QUIRK]): B's gradient, after clipping, becomes
// g_B (A A^T + 1e-8 I)^-1 / s^2, the full fine-tuning gradient projected onto B's factor; A is
// frozen, so the r x r inverse is computed once per module.
void lora_method::before_update(const step_info & s, adapter_module * const * mods, int64_t n_mods) {
    (void) s;
    if (!lora_fa) return;
    for (int64_t i = 0; i < n_mods; i++) {
        auto * m = dynamic_cast<lora_module *>(mods[i]);
        if (!m) continue;
        const int64_t R = m->R, IC = m->t.in_features, OC = m->t.out_features;
        if (m->fa_inverse.empty()) {
            std::vector<double> A((size_t) (R * IC)), G((size_t) (R * R));
            for (size_t j = 0; j < A.size(); j++) A[j] = m->A[j];
            gemm_f64(false, true, R, R, IC, 1.0, A.data(), IC, A.data(), IC, 0.0, G.data(), R);
            for (int64_t k = 0; k < R; k++) G[(size_t) (k * R + k)] += 1e-8;
            m->fa_inverse.resize((size_t) (R * R));
            // A A^T is SPD for the full-rank random A LoRA-FA draws; PEFT's pinv equals the inverse then
            PEFT_ASSERT(spd_inverse(m->fa_inverse.data(), G.data(), R).ok());
            const double inv_s2 = 1.0 / ((double) m->scaling * m->scaling);
            for (double & v : m->fa_inverse) v *= inv_s2;
        }
        std::vector<double> row((size_t) R);
        for (int64_t o = 0; o < OC; o++) {   // dB[o,:] <- dB[o,:] Minv, row by row in double
            float * g = m->dB.data() + o * R;
            for (int64_t k = 0; k < R; k++) {
                double acc = 0;
                for (int64_t j = 0; j < R; j++) acc += (double) g[j] * m->fa_inverse[(size_t) (j * R + k)];
                row[(size_t) k] = acc;
            }
            for (int64_t k = 0; k < R; k++) g[k] = (float) row[(size_t) k];
        }
    }
}

// DoRA: A, B and m moved, so the norms its forward divides by are stale (recomputed once, at the
// next forward, for the whole optimizer step).
void lora_method::after_update(const step_info & s, adapter_module * const * mods, int64_t n_mods) {
    (void) s;
    if (!use_dora) return;
    for (int64_t i = 0; i < n_mods; i++) {
        if (auto * d = dynamic_cast<dora_module *>(mods[i])) d->mark_stale();
    }
}

// ---- CorDA calibration -----------------------------------------------------------------------

lora_method::lora_method() = default;
lora_method::~lora_method() = default;

namespace {

const char * const CORDA_FORMAT = "peft.cpp corda covariance v1";

// What a covariance file was made for: the targets and their input widths (another model or
// layer set must not reuse it).
std::string corda_fingerprint(const std::vector<target_info> & ts) {
    std::string f;
    for (const target_info & t : ts) f += t.path + ":" + std::to_string(t.in_features) + ";";
    return f;
}

status corda_load(const std::string & path, corda_state & c) {
    safetensors_file f;
    PEFT_TRY(safetensors_open(path, f));
    const std::string * fmt = f.metadata_get("format");
    const std::string * fp = f.metadata_get("targets");
    if (!fmt || *fmt != CORDA_FORMAT) return make_mismatch(PEFT_STATUS_FORMAT, path, "metadata 'format'", CORDA_FORMAT, fmt ? *fmt : "(none)");
    if (!fp || *fp != corda_fingerprint(c.targets)) {
        status st = make_error(PEFT_STATUS_CONFIG, path, "the covariances were computed for another model or set of target modules");
        st.hint = "delete the file or point corda_config.covariance_file elsewhere to recompute it";
        return st;
    }
    for (size_t i = 0; i < c.targets.size(); i++) {
        const target_info & t = c.targets[i];
        const tensor_info * ti = f.find(t.path);
        const int64_t n = t.in_features;
        if (!ti || ti->st_dtype != SAFETENSORS_DTYPE_F64 || ti->shape != std::vector<int64_t>{n, n}) {
            return make_error(PEFT_STATUS_FORMAT, path, "tensor '" + t.path + "' is missing or not F64 [" + std::to_string(n) + ", " + std::to_string(n) + "]");
        }
        c.cov[i].C.resize((size_t) (n * n));
        std::memcpy(c.cov[i].C.data(), ti->data, (size_t) ti->n_bytes);
        for (double x : c.cov[i].C) {
            if (!std::isfinite(x)) return make_error(PEFT_STATUS_NUMERIC, path, "tensor '" + t.path + "' holds NaN/Inf");
        }
        c.cov[i].count = 1;
    }
    c.ready = true;
    return {};
}

status corda_save(const std::string & path, const corda_state & c) {
    std::vector<safetensors_tensor_to_write> ts;
    for (size_t i = 0; i < c.targets.size(); i++) {
        const int64_t n = c.targets[i].in_features;
        ts.push_back({c.targets[i].path, PEFT_DTYPE_F32, {n, n}, c.cov[i].C.data(), "F64"});
    }
    return safetensors_write(path, ts, {{"format", CORDA_FORMAT}, {"targets", corda_fingerprint(c.targets)}});
}

} // namespace

status lora_method::begin(const target_info * targets, int64_t n) {
    if (init != LORA_INIT_CORDA) return {};
    corda = std::make_unique<corda_state>();
    corda->targets.assign(targets, targets + n);
    for (int64_t i = 0; i < n; i++) corda->cov.push_back(corda_covariance_make(targets[i].in_features));
    std::error_code ec;
    if (!corda_covariance_file.empty() && std::filesystem::exists(corda_covariance_file, ec)) return corda_load(corda_covariance_file, *corda);
    return {};
}

calibration_observer * lora_method::calibration(std::string & data_path, int64_t & n_samples) {
    if (init != LORA_INIT_CORDA || !corda || corda->ready) return nullptr;
    data_path = corda_data;
    n_samples = corda_samples;
    return this;
}

// One call per sample, its non-padding tokens only (METHODS §8 Step A: X is a batch-1 forward).
status lora_method::observe(int64_t index, const float * x, const int32_t * seg, int64_t rows, int64_t T) {
    corda_covariance & acc = corda->cov[(size_t) index];
    const int64_t IC = corda->targets[(size_t) index].in_features;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t t = 0; t < T;) {
            const int32_t id = seg[r * T + t];
            int64_t e = t + 1;
            while (e < T && seg[r * T + e] == id) e++;
            if (id != 0) {
                status st = corda_covariance_add(acc, x + (r * T + t) * IC, e - t, IC);
                if (!st.ok()) {
                    st.message = corda->targets[(size_t) index].path + ": " + st.message;
                    return st;
                }
            }
            t = e;
        }
    }
    return {};
}

status lora_method::restore(const target_info & t, adapter_module & mod) {
    // DoRA: the checkpoint set A, B, m (and the residual below changes W): every norm term is stale
    if (auto * d = dynamic_cast<dora_module *>(&mod)) d->mark_base_stale();
    if (!is_svd_init(init)) return {};
    auto & lm = dynamic_cast<lora_module &>(mod);
    const int64_t OC = t.out_features, IC = t.in_features;
    std::vector<float> W((size_t) (OC * IC));
    linear_weight_rows_f32(W.data(), *t.base, 0, OC);
    svd_init_residual(W.data(), W.data(), lm.A0.data(), lm.B0.data(), OC, IC, lm.R, lm.scaling);
    t.writer->replace(t, W.data());
    return {};
}

// Once, before the first CorDA module: every covariance is complete (mean over calls) and, when
// asked, cached for later runs.
status lora_method::corda_finish() {
    if (corda->ready) return {};
    for (size_t i = 0; i < corda->cov.size(); i++) {
        status st = corda_covariance_finish(corda->cov[i]);
        if (!st.ok()) {
            st.message = corda->targets[i].path + ": " + st.message;
            return st;
        }
    }
    corda->ready = true;
    if (!corda_covariance_file.empty()) PEFT_TRY(corda_save(corda_covariance_file, *corda));
    return {};
}

const char * lora_method::residual_init() const { return save_residual_model ? init_name.c_str() : nullptr; }

// Every key PEFT 0.18 writes for a LoraConfig, at its default unless we set it; compact here,
// io/peft_format.cpp sorts and indents it as json.dumps does and fills base_model_name_or_path.
std::string lora_method::config_json() const {
    auto pattern = [](const std::vector<std::string> & keys, const std::vector<std::string> & vals) {
        std::string s = "{";
        for (size_t i = 0; i < keys.size(); i++) {
            if (i) s += ",";
            s += json_quote(keys[i]);
            s += ":";
            s += vals[i];
        }
        return s + "}";
    };
    // An SVD-family adapter saved as a plain LoRA on the original base (lora_module::exported):
    // rank 2r, and alpha (and the patterns) doubled so that every scale stays, as PEFT converts
    const bool converted = is_svd_init(init) && !save_residual_model;
    const int64_t rank_mult = converted ? 2 : 1;
    const double alpha_mult = converted ? svd_init_convert_alpha(1.0, use_rslora) : 1.0;
    std::vector<std::string> rank_texts, alpha_out = alpha_texts;
    for (int64_t x : rank_values) rank_texts.push_back(std::to_string(x * rank_mult));
    if (converted) {
        for (size_t i = 0; i < alpha_values.size(); i++) alpha_out[i] = json_python_float(alpha_values[i] * alpha_mult);
    }
    const double alpha = lora_alpha * alpha_mult;
    const bool alpha_int = alpha_is_int && alpha_mult == std::floor(alpha_mult);
    const std::string init_out = converted ? "true" : init_text;
    std::string s = "{";
    s += "\"alora_invocation_tokens\":null";
    s += ",\"alpha_pattern\":" + pattern(alpha_keys, alpha_out);
    s += ",\"arrow_config\":null";
    s += ",\"auto_mapping\":null";
    s += ",\"base_model_name_or_path\":null";
    s += ",\"bias\":\"none\"";
    s += ",\"corda_config\":" + corda_config_json;
    s += ",\"ensure_weight_tying\":false";
    s += ",\"eva_config\":null";
    s += ",\"exclude_modules\":" + echo.exclude;
    s += ",\"fan_in_fan_out\":false";
    s += ",\"inference_mode\":true";
    s += ",\"init_lora_weights\":" + init_out;
    s += ",\"layer_replication\":null";
    s += ",\"layers_pattern\":" + echo.layers_pattern;
    s += ",\"layers_to_transform\":" + echo.layers;
    s += ",\"loftq_config\":{}";
    s += ",\"lora_alpha\":" + (alpha_int ? std::to_string((int64_t) alpha) : json_python_float(alpha));
    s += ",\"lora_bias\":false";
    s += ",\"lora_dropout\":" + json_python_float(lora_dropout);
    s += ",\"megatron_config\":null";
    s += ",\"megatron_core\":\"megatron.core\"";
    s += ",\"modules_to_save\":null";
    s += ",\"peft_type\":\"LORA\"";
    // a real PEFT release string: PEFT parses this field as a version when loading
    s += ",\"peft_version\":\"0.18.1\"";
    s += ",\"qalora_group_size\":16";
    s += ",\"r\":" + std::to_string(r * rank_mult);
    s += ",\"rank_pattern\":" + pattern(rank_keys, rank_texts);
    s += ",\"revision\":null";
    s += ",\"target_modules\":" + echo.targets;
    s += ",\"target_parameters\":null";
    s += ",\"task_type\":" + echo.task_type;
    s += ",\"trainable_token_indices\":null";
    s += std::string(",\"use_dora\":") + (use_dora ? "true" : "false");
    // ours, only when not PEFT's axis: PEFT drops the key and then refuses the [1, in] magnitude
    if (use_dora && dora_axis_in) s += ",\"dora_norm_axis\":\"in\"";
    s += ",\"use_qalora\":false";
    s += std::string(",\"use_rslora\":") + (use_rslora ? "true" : "false");
    s += "}";
    return s;
}

std::unique_ptr<adapter_method> lora_method_make() { return std::make_unique<lora_method>(); }

// PEFT LoraConfig keys that `peft train` takes (configure() reads and checks them).
const std::vector<option_def> & lora_method_options() {
    static const std::vector<option_def> keys = {
        {"r", OPT_INT, "8; vera 256", "rank: LoRA's r; vera: of the shared projections; deep_lora: the compressed rank k (even); rosa: of the trained SVD window", "lora_r"},
        {"lora_alpha", OPT_FLOAT, "8", "LoRA scaling numerator (scale = alpha/r, or alpha/sqrt(r) with use_rslora)"},
        {"lora_dropout", OPT_FLOAT, "0", "dropout on the adapter input"},
        {"use_rslora", OPT_BOOL, "false", "scale alpha/sqrt(r)"},
        {"init_lora_weights", OPT_BOOL_OR_STRING, "true", "true (Kaiming A, zero B), gaussian, false, pissa, pissa_niter_N, milora, olora, corda"},
        {"save_residual_model", OPT_BOOL, "false", "pissa/milora/olora/corda: write the residual model + rank-r adapter, not a rank-2r LoRA"},
        {"corda_config", OPT_OBJECT, "{}", "corda: {corda_method: ipm|kpm, covariance_file: PATH (cached, reused)}"},
        {"corda_data", OPT_STRING, "none", "corda: calibration data (JSONL/.txt): task samples for ipm, knowledge to keep for kpm"},
        {"corda_samples", OPT_INT, "256", "corda: calibration samples (one forward each)"},
        {"lora_fa", OPT_BOOL, "false", "LoRA-FA: lora_A frozen at its init, lora_B's gradient preconditioned by (A A^T)^-1 / s^2 (PEFT's LoraFAOptimizer)"},
        {"use_dora", OPT_BOOL, "false", "DoRA: a trainable magnitude per output row times the normalised LoRA-adapted weight (PEFT use_dora)"},
        {"dora_norm_axis", OPT_STRING, "out", "DoRA: out (per output row, PEFT) or in (per input column, the seed blog; saved with dora_norm_axis)"},
        {"dora_detach_norm", OPT_BOOL, "auto", "DoRA: treat the weight norm as a constant in backward (paper 4.3; default true for axis out, false for in)"},
        {"loraplus_lr_ratio", OPT_FLOAT, "none", "LoRA+: lora_B learns this many times faster"},
        {"rank_pattern", OPT_OBJECT, "{}", "per-module rank overrides {regex: r}"},
        {"alpha_pattern", OPT_OBJECT, "{}", "per-module alpha overrides {regex: alpha}"},
    };
    return keys;
}

} // namespace peft
