// rosa.cpp: the ROSA module (a LoRA pair over a re-split base) and method (keys, windows, the
// periodic re-factorisation, the file form), METHODS §17. The math of the split is in rosa.h.
//
// Optimizer reset: the reference builds a new AdamW at every re-factorisation (bias correction
// restarts at step 1); here the method resets the state of A and B through optimizer_view,
// which zeroes their moments and their own step counts (train/optim.h), the same first update.
// The lr schedule is the trainer's and continues untouched (the reference fast-forwards a new one).
//
// Output: adapter_model.safetensors is a plain PEFT LoRA of the change from the original
// weight D = W_fixed + B A - W0, factored by its SVD at rank q = min(2 r P, k) after P periods
// (D has rank <= 2 r P: each period adds B_end A_end - B_start A_start). At q = k the file is
// exact but no smaller than the dense change; `peft merge` writes the merged model then.
// Not here: forward / backward (lora_module), the optimizer (train/).
#include "adapters/rosa.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "adapters/target.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/peft_format.h"
#include "kernels/kernels.h"

namespace peft {

namespace {

const char * const WHERE = "adapter config";

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

} // namespace

// ---- pure functions ------------------------------------------------------------------------

int64_t rosa_window(rosa_sample how, int64_t k, int64_t r, uint64_t seed, int64_t period) {
    PEFT_ASSERT(r >= 1 && r < k && period >= 0);
    switch (how) {
        case ROSA_SAMPLE_TOP: return 0;
        case ROSA_SAMPLE_BOTTOM: return k - r;
        case ROSA_SAMPLE_RANDOM: break;
    }
    // torch.randint(0, k - r): the exclusive bound leaves the bottom window out (the reference's quirk)
    rng g(seed ^ (0x9E3779B97F4A7C15ull * (uint64_t) (period + 1)));
    const uint64_t x = ((uint64_t) g.next_u32() << 32) | g.next_u32();
    return (int64_t) (x % (uint64_t) (k - r));
}

status rosa_split(float * A, float * B, float * W_fixed, const float * W, int64_t OC, int64_t IC, int64_t r, int64_t j) {
    const int64_t k = min64(OC, IC);
    PEFT_ASSERT(r >= 1 && j >= 0 && j + r <= k);
    std::vector<float> U((size_t) (OC * k)), S((size_t) k), Vh((size_t) (k * IC));   // [OC,k], [k], [k,IC]
    PEFT_TRY(svd_thin(U.data(), S.data(), Vh.data(), W, OC, IC));
    for (int64_t c = 0; c < r; c++)
        for (int64_t i = 0; i < IC; i++) A[c * IC + i] = S[(size_t) (j + c)] * Vh[(size_t) ((j + c) * IC + i)];
    for (int64_t o = 0; o < OC; o++) std::memcpy(B + o * r, &U[(size_t) (o * k + j)], sizeof(float) * (size_t) r);
    if (W_fixed != W) std::memcpy(W_fixed, W, sizeof(float) * (size_t) (OC * IC));
    gemm(false, false, OC, IC, r, -1.0f, B, r, A, IC, 1.0f, W_fixed, IC);
    return {};
}

status rosa_factor(float * A, float * B, const float * D, int64_t OC, int64_t IC, int64_t q) {
    const int64_t k = min64(OC, IC);
    PEFT_ASSERT(q >= 1 && q <= k);
    std::vector<float> U((size_t) (OC * k)), S((size_t) k), Vh((size_t) (k * IC));
    PEFT_TRY(svd_thin(U.data(), S.data(), Vh.data(), D, OC, IC));
    for (int64_t c = 0; c < q; c++)
        for (int64_t i = 0; i < IC; i++) A[c * IC + i] = S[(size_t) c] * Vh[(size_t) (c * IC + i)];
    for (int64_t o = 0; o < OC; o++) std::memcpy(B + o * q, &U[(size_t) (o * k)], sizeof(float) * (size_t) q);
    return {};
}

// ---- module --------------------------------------------------------------------------------

rosa_module::rosa_module(const target_info & ti, int64_t rank, uint64_t seed, rng & rg, std::shared_ptr<lora_scratch> sc)
    // A and B are overwritten by the split (or the checkpoint); no dropout, no alpha, no LoRA+
    : lora_module(ti, rank, 1.0f, 0.0f, false, 1.0f, LORA_INIT_DEFAULT, rg, std::move(sc)), window_seed(seed) {
    original = *t.base;
    base_f32.assign((size_t) (t.out_features * t.in_features), 0.0f);
    if (t.base->q) {
        original_q = std::make_unique<qtensor>(*t.base->q);
        original.q = original_q.get();
        quantized_from.assign(base_f32.size(), 0.0f);
    }
}

void rosa_module::set_base(const float * W) {
    if (original_q && W != quantized_from.data()) std::copy(W, W + quantized_from.size(), quantized_from.begin());
    t.writer->replace(t, W);   // in the base's own dtype
    linear_weight_rows_f32(base_f32.data(), *t.base, 0, t.out_features);   // what the base now holds (its dtype's rounding)
}

status rosa_module::resplit() {
    PEFT_ASSERT(t.writer);
    const int64_t OC = t.out_features, IC = t.in_features;
    std::vector<float> W(base_f32);   // W_merged = W_fixed + B A, then W_fixed of the next period
    gemm(false, false, OC, IC, R, 1.0f, B.data(), R, A.data(), IC, 1.0f, W.data(), IC);
    const int64_t j = rosa_window(how, k(), R, window_seed, periods);
    std::vector<float> An(A.size()), Bn(B.size());
    PEFT_TRY(rosa_split(An.data(), Bn.data(), W.data(), W.data(), OC, IC, R, j));
    // in place: the optimizer and the parameter list hold these buffers' addresses
    std::copy(An.begin(), An.end(), A.begin());
    std::copy(Bn.begin(), Bn.end(), B.begin());
    set_base(W.data());
    window = j;
    periods++;
    return {};
}

void rosa_module::accumulated_change(float * D) const {
    const int64_t OC = t.out_features, IC = t.in_features;
    linear_weight_rows_f32(D, original, 0, OC);
    for (size_t i = 0; i < base_f32.size(); i++) D[i] = base_f32[i] - D[i];
    gemm(false, false, OC, IC, R, 1.0f, B.data(), R, A.data(), IC, 1.0f, D, IC);
}

int64_t rosa_module::export_rank() const { return min64(2 * R * periods, k()); }

void rosa_module::exported(std::vector<param_ref> & out) {
    const int64_t OC = t.out_features, IC = t.in_features, q = export_rank();
    std::vector<float> D((size_t) (OC * IC));
    accumulated_change(D.data());
    file_A.assign((size_t) (q * IC), 0.0f);
    file_B.assign((size_t) (OC * q), 0.0f);
    // a change with non-finite values cannot come out of a finite training run (the trainer
    // stops on a non-finite gradient); should the SVD still fail the file holds zeros, which
    // adapter loading accepts and which the merged model (peft merge) does not depend on
    if (!rosa_factor(file_A.data(), file_B.data(), D.data(), OC, IC, q).ok()) {
        std::fill(file_A.begin(), file_A.end(), 0.0f);
        std::fill(file_B.begin(), file_B.end(), 0.0f);
    }
    param_ref a;
    a.name = "lora_A.weight";
    a.value = file_A.data();
    a.shape = {q, IC};
    out.push_back(a);
    param_ref b;
    b.name = "lora_B.weight";
    b.value = file_B.data();
    b.shape = {OC, q};
    out.push_back(b);
}

void rosa_module::state_tensors(std::vector<param_ref> & out) {
    param_ref w;
    w.name = "rosa_base";
    w.value = original_q ? quantized_from.data() : base_f32.data();
    w.shape = {t.out_features, t.in_features};
    w.trainable = false;
    w.saved = false;
    out.push_back(w);
}

std::string rosa_module::state() const { return "periods=" + std::to_string(periods) + " window=" + std::to_string(window); }

bool rosa_module::set_state(const std::string & s) {
    long long p = 0, w = 0;
    if (std::sscanf(s.c_str(), "periods=%lld window=%lld", &p, &w) != 2 || p < 1 || w < 0 || w + R > k()) return false;
    periods = p;
    window = w;
    return true;
}

// ---- method ----------------------------------------------------------------------------------

rosa_method::rosa_method() = default;
rosa_method::~rosa_method() = default;

namespace {

// Keys that would change what ROSA trains: refused rather than silently ignored.
status check_unsupported(const json_value & cfg) {
    for (const char * k : {"lora_alpha", "lora_dropout", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "lora_fa",
                           "loraplus_lr_ratio", "init_lora_weights", "save_residual_model", "fan_in_fan_out", "modules_to_save"}) {
        if (!config_key_off(cfg.get(k))) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, std::string(k) + " is not a ROSA key (ROSA has no alpha, dropout or other init)");
            st.hint = "ROSA's keys: r, rosa_resample_steps, rosa_sample_method (random, top, bottom) and the target selection";
            return st;
        }
    }
    return {};
}

} // namespace

status rosa_method::configure(const json_value & cfg) {
    if (!cfg.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "configuration", "a JSON object", cfg.dump());
    PEFT_TRY(check_unsupported(cfg));
    PEFT_TRY(config_read_int(cfg, "r", 1, "a positive integer rank", r));
    json_value v = cfg.get("rosa_resample_steps");
    if (v.valid() && !v.is_null()) {
        if (!v.is_integer() || v.as_int() < 1) {
            status st = make_mismatch(PEFT_STATUS_CONFIG, WHERE, "rosa_resample_steps", "an integer >= 1", v.dump());
            st.hint = "optimizer steps between re-factorisations (more than max_steps: one fixed window)";
            return st;
        }
        resample_steps = v.as_int();
    }
    v = cfg.get("rosa_sample_method");
    if (v.valid() && !v.is_null()) {
        const std::string m = v.is_string() ? v.as_string() : "";
        if (m == "random") how = ROSA_SAMPLE_RANDOM;
        else if (m == "top") how = ROSA_SAMPLE_TOP;
        else if (m == "bottom") how = ROSA_SAMPLE_BOTTOM;
        else return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "rosa_sample_method", "\"random\", \"top\" or \"bottom\"", v.dump());
    }
    PEFT_TRY(target_echo_read(cfg, WHERE, echo));
    scratch = std::make_shared<lora_scratch>();
    return {};
}

status rosa_method::check(const target_info & t) const {
    const int64_t k = min64(t.in_features, t.out_features);
    if (r >= k) {
        // the reference trains the whole layer then; here that is full fine-tuning's job
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, t.path + ": r = " + std::to_string(r) + " leaves no fixed part of a " +
                                                              std::to_string(t.out_features) + "x" + std::to_string(t.in_features) + " weight");
        st.hint = "ROSA needs r < min(in, out) = " + std::to_string(k) + " for every target";
        return st;
    }
    return {};
}

status rosa_method::create(const target_info & t, rng & rg, std::unique_ptr<adapter_module> & out) {
    PEFT_ASSERT(scratch);   // configure() first
    PEFT_TRY(check(t));
    // the windows' seed comes from the run's seed through the attach stream (layer, projection order)
    const uint64_t seed = ((uint64_t) rg.next_u32() << 32) | rg.next_u32();
    auto mod = std::make_unique<rosa_module>(t, r, seed, rg, scratch);
    mod->how = how;
    mods.push_back(mod.get());
    if (!t.writer) {   // resume: A, B, the base and the period come from the checkpoint, restore() follows
        out = std::move(mod);
        return {};
    }
    const int64_t OC = t.out_features, IC = t.in_features;
    std::vector<float> W((size_t) (OC * IC));
    linear_weight_rows_f32(W.data(), *t.base, 0, OC);
    mod->window = rosa_window(how, mod->k(), r, seed, 0);
    status st = rosa_split(mod->A.data(), mod->B.data(), W.data(), W.data(), OC, IC, r, mod->window);
    if (!st.ok()) {
        st.message = t.path + ": " + st.message;
        return st;
    }
    mod->set_base(W.data());
    out = std::move(mod);
    return {};
}

status rosa_method::restore(const target_info & t, adapter_module & mod) {
    auto & m = dynamic_cast<rosa_module &>(mod);
    m.t.writer = t.writer;   // create() had none on resume; the hooks need it
    m.set_base(m.original_q ? m.quantized_from.data() : m.base_f32.data());   // exact: the values the base was made from
    return {};
}

void rosa_method::on_step_end(const step_info & s, adapter_module * const * ms, int64_t n, optimizer_view & opt) {
    // not after the last step: that split would change nothing but the file's rank (and add SVD round-off)
    if (s.step % resample_steps != 0 || s.step >= s.total_steps) return;
    for (int64_t i = 0; i < n; i++) {
        auto * m = dynamic_cast<rosa_module *>(ms[i]);
        PEFT_ASSERT(m);
        // an SVD that does not converge (LAPACK's rare failure on a finite matrix) leaves the
        // module's split as it was: training goes on correctly, this module is re-sampled less
        if (!m->resplit().ok()) continue;
        // the reference's new optimizer: A and B start again from empty moments
        opt.reset_state(m->A.data());
        opt.reset_state(m->B.data());
    }
}

std::string rosa_method::config_json() const {
    // the file form is a LoRA: lora_method writes PEFT's LoraConfig fields
    lora_method f;
    f.r = mods.empty() ? 2 * r : 2 * r * mods[0]->periods;
    f.lora_alpha = (double) f.r;   // scaling 1
    for (const rosa_module * m : mods) {
        if (m->export_rank() == f.r) continue;
        // a layer whose k caps the rank: its full path, anchored, as a rank_pattern key
        f.rank_keys.push_back(m->t.path);
        f.rank_values.push_back(m->export_rank());
        f.alpha_keys.push_back(m->t.path);
        f.alpha_values.push_back((double) m->export_rank());
        f.alpha_texts.push_back(std::to_string(m->export_rank()));
    }
    f.echo = echo;
    return f.config_json();
}

std::unique_ptr<adapter_method> rosa_method_make() { return std::make_unique<rosa_method>(); }

// r is LoRA's row (the registry keeps one row per name; its help names ROSA's meaning).
const std::vector<option_def> & rosa_method_options() {
    static const std::vector<option_def> keys = {
        {"r", OPT_INT, "8", "ROSA: the rank of the trained window"},
        {"rosa_resample_steps", OPT_INT, "100", "rosa: optimizer steps between re-factorisations (merge, SVD, new window, optimizer moments reset)"},
        {"rosa_sample_method", OPT_STRING, "random", "rosa: window of singular components: random (contiguous, start uniform in [0, k-r)), top, bottom"},
    };
    return keys;
}

} // namespace peft
