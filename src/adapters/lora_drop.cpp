// lora_drop.cpp: LoRA-drop (lora_drop.h, METHODS §10): the selection, the follower module, the
// method (stage 1 in prepare(), the shared structure in create(), the native config, the table).
// Not here: the LoRA math (lora.cpp), the probe training loop (train/calibrate.cpp).
#include "adapters/lora_drop.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/rng.h"
#include "io/json.h"
#include "io/peft_format.h"
#include "kernels/kernels.h"

namespace peft {

namespace {

const char * const WHERE = "adapter config";

// "model.layers.3.self_attn.q_proj" -> "q_proj": modules of one type share a shape
std::string module_type(const std::string & path) { return path.substr(path.rfind('.') + 1); }

std::string fmt(const char * f, double v) {
    char b[64];
    std::snprintf(b, sizeof b, f, v);
    return b;
}

} // namespace

status lora_drop_select(const std::vector<double> & g, double threshold, std::vector<double> & I, std::vector<uint8_t> & kept) {
    double sum = 0.0;
    for (size_t i = 0; i < g.size(); i++) {
        if (!std::isfinite(g[i]) || g[i] < 0.0) {
            return make_error(PEFT_STATUS_NUMERIC, "lora_drop", "importance of module " + std::to_string(i) + " is " + fmt("%g", g[i]));
        }
        sum += g[i];
    }
    if (!(sum > 0.0)) {
        status st = make_error(PEFT_STATUS_NUMERIC, "lora_drop", "every module's importance is zero: stage 1 learned nothing");
        st.hint = "raise lora_drop_stage1_steps, lora_drop_fraction or the learning rate";
        return st;
    }
    I.resize(g.size());
    for (size_t i = 0; i < g.size(); i++) I[i] = g[i] / sum;
    std::vector<size_t> order(g.size());
    std::iota(order.begin(), order.end(), (size_t) 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return I[a] > I[b]; });
    kept.assign(g.size(), 0);
    double cum = 0.0;
    for (size_t k : order) {
        kept[k] = 1;
        cum += I[k];
        if (cum >= threshold) break;
    }
    return {};
}

// ---- follower --------------------------------------------------------------------------------

lora_drop_follower::lora_drop_follower(const target_info & t, lora_module & ld, float dropout, rng & r, std::shared_ptr<lora_scratch> sc)
    : lora_module(t, ld.R, ld.scaling, dropout, false, ld.b_lr_scale, LORA_INIT_DEFAULT, r, std::move(sc)), lead(ld) {
    PEFT_ASSERT(t.in_features == ld.t.in_features && t.out_features == ld.t.out_features);
    A = lead.A;
    B = lead.B;
}

void lora_drop_follower::forward(const float * x, int64_t N, float * y) {
    A = lead.A;   // the optimizer updated the lead since the last forward
    B = lead.B;
    lora_module::forward(x, N, y);
}

void lora_drop_follower::backward(const float * x, const float * dy, int64_t N, float * dx) {
    std::fill(dA.begin(), dA.end(), 0.0f);
    std::fill(dB.begin(), dB.end(), 0.0f);
    lora_module::backward(x, dy, N, dx);   // on the A, B its forward copied
    // d loss / d shared = the sum over every module using it (METHODS §10 (8))
    for (size_t i = 0; i < dA.size(); i++) lead.dA[i] += dA[i];
    for (size_t i = 0; i < dB.size(); i++) lead.dB[i] += dB[i];
}

// ---- method ----------------------------------------------------------------------------------

status lora_drop_method::configure(const json_value & cfg) {
    PEFT_TRY(lora.configure(cfg));
    const bool plain_init = lora.init == LORA_INIT_DEFAULT || lora.init == LORA_INIT_GAUSSIAN;
    if (lora.use_dora || lora.lora_fa || !plain_init || !lora.rank_keys.empty() || !lora.alpha_keys.empty()) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "lora_drop: use_dora, lora_fa, SVD inits, rank_pattern and alpha_pattern are not supported");
        st.hint = "LoRA-drop shares one LoRA among modules of a type, so every module of a type needs the same plain LoRA";
        return st;
    }
    json_value v = cfg.get("lora_drop_fraction");
    if (v.valid() && !v.is_null()) {
        if (!v.is_number() || !(v.as_double() > 0.0 && v.as_double() <= 1.0)) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "lora_drop_fraction", "a fraction of the training rows in (0, 1]", v.dump());
        }
        fraction = v.as_double();
    }
    v = cfg.get("lora_drop_threshold");
    if (v.valid() && !v.is_null()) {
        if (!v.is_number() || !(v.as_double() > 0.0 && v.as_double() <= 1.0)) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "lora_drop_threshold", "a cumulative importance in (0, 1] (the paper's 0.9)", v.dump());
        }
        threshold = v.as_double();
    }
    v = cfg.get("lora_drop_stage1_steps");
    if (v.valid() && !v.is_null()) {
        if (!v.is_integer() || v.as_int() < 0) {
            return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "lora_drop_stage1_steps", "a number of steps >= 0 (0: one pass over the sample)", v.dump());
        }
        stage1_steps = v.as_int();
    }
    v = cfg.get("lora_drop_shared");
    structure_given = v.valid() && !v.is_null();
    shared_paths.clear();
    if (structure_given) {
        if (!v.is_array()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "lora_drop_shared", "a list of module paths", v.dump());
        for (size_t i = 0; i < v.size(); i++) {
            if (!v.at(i).is_string()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "lora_drop_shared", "module path strings", v.at(i).dump());
            shared_paths.push_back(v.at(i).as_string());
        }
    }
    importance.clear();
    v = cfg.get("lora_drop_importance");   // a native file's table (shown again, not used)
    if (v.valid() && !v.is_null()) {
        if (!v.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "lora_drop_importance", "an object {module path: importance}", v.dump());
        imported_keys.clear();
        imported_values.clear();
        for (size_t i = 0; i < v.size(); i++) {
            if (!v.value_at(i).is_number()) return make_mismatch(PEFT_STATUS_CONFIG, WHERE, "lora_drop_importance", "numbers", v.value_at(i).dump());
            imported_keys.push_back(v.key_at(i));
            imported_values.push_back(v.value_at(i).as_double());
        }
    }
    return {};
}

bool lora_drop_method::is_shared(const std::string & path) const {
    return std::find(shared_paths.begin(), shared_paths.end(), path) != shared_paths.end();
}

status lora_drop_method::begin(const target_info * ts, int64_t n) {
    targets.assign(ts, ts + n);
    leads.clear();
    for (const std::string & p : shared_paths) {
        bool found = false;
        for (const target_info & t : targets) found = found || t.path == p;
        if (!found) {
            status st = make_error(PEFT_STATUS_CONFIG, WHERE, "lora_drop_shared names \"" + p + "\", which is not a selected target");
            st.hint = "the adapter was made for another model or with other target_modules";
            return st;
        }
    }
    if (!imported_keys.empty()) {
        importance.assign(targets.size(), 0.0);
        for (size_t i = 0; i < targets.size(); i++) {
            for (size_t k = 0; k < imported_keys.size(); k++) {
                if (imported_keys[k] == targets[i].path) importance[i] = imported_values[k];
            }
        }
    }
    return lora.begin(ts, n);
}

status lora_drop_method::prepare(calibration_source * src, const target_info * ts, int64_t n, uint64_t seed) {
    if (structure_given) return {};
    if (!src) {
        status st = make_error(PEFT_STATUS_CONFIG, WHERE, "lora_drop: stage 1 trains LoRA on a sample of the training data, and this caller has none");
        st.hint = "train through peft train (or load the native/ form, whose config lists the sharing)";
        return st;
    }
    // stage 1: plain LoRA everywhere, from a stream of its own (create()'s stream stays the same
    // whether or not this runs)
    rng r(seed ^ 0x6c6f72615f64726full);
    probes.clear();
    std::vector<adapter_module *> ptrs;
    for (int64_t i = 0; i < n; i++) {
        target_info t = ts[i];
        t.writer = nullptr;
        std::unique_ptr<adapter_module> mod;
        PEFT_TRY(lora.create(t, r, mod));
        ptrs.push_back(mod.get());
        probes.push_back(std::move(mod));
    }
    g.assign((size_t) n, 0.0);
    PEFT_TRY(src->train_probe(fraction, stage1_steps, ptrs.data(), ts, n, *this));
    // the probes and observe()'s buffers are done with: a LoRA per target with its gradients and an
    // [N, OC] buffer would otherwise stay allocated through the whole of stage 2
    probes.clear();
    std::vector<float>().swap(xa);
    std::vector<float>().swap(y);
    std::vector<uint8_t> kept;
    PEFT_TRY(lora_drop_select(g, threshold, importance, kept));
    int64_t n_kept = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!kept[(size_t) i]) shared_paths.push_back(ts[i].path);
        n_kept += kept[(size_t) i];
    }
    std::fprintf(stderr, "lora_drop: importance (threshold %g): %lld of %lld modules keep their own LoRA, the rest share one per type\n",
                 threshold, (long long) n_kept, (long long) n);
    for (int64_t i = 0; i < n; i++) {
        std::fprintf(stderr, "lora_drop:   %-40s %.6f  %s\n", ts[i].path.c_str(), importance[(size_t) i], kept[(size_t) i] ? "own" : "shared");
    }
    return {};
}

status lora_drop_method::observe(int64_t index, const float * x, const int32_t * seg, int64_t rows, int64_t T) {
    const auto & p = static_cast<const lora_module &>(*probes[(size_t) index]);
    const int64_t N = rows * T, R = p.R, IC = p.t.in_features, OC = p.t.out_features;
    xa.resize((size_t) (N * R));
    y.resize((size_t) (N * OC));
    // y [N,OC] = s (x A^T) B^T: the probe LoRA's output, Delta W x
    gemm(false, true, N, R, IC, 1.0f, x, IC, p.A.data(), IC, 0.0f, xa.data(), R);
    gemm(false, true, N, OC, R, p.scaling, xa.data(), R, p.B.data(), R, 0.0f, y.data(), OC);
    double acc = 0.0;
    for (int64_t i = 0; i < N; i++) {
        if (seg[i] == 0) continue;   // padding
        for (int64_t o = 0; o < OC; o++) acc += (double) y[(size_t) (i * OC + o)] * y[(size_t) (i * OC + o)];
    }
    g[(size_t) index] += acc;
    return {};
}

status lora_drop_method::create(const target_info & t, rng & r, std::unique_ptr<adapter_module> & out) {
    PEFT_ASSERT(structure_given || !g.empty());   // prepare() first
    if (!is_shared(t.path)) return lora.create(t, r, out);
    const std::string type = module_type(t.path);
    for (auto & [ty, lead] : leads) {
        if (ty != type) continue;
        target_info own = t;
        own.writer = nullptr;
        out = std::make_unique<lora_drop_follower>(own, *lead, (float) lora.lora_dropout, r, scratch);
        return {};
    }
    PEFT_TRY(lora.create(t, r, out));   // the first of its type holds the shared factors
    leads.emplace_back(type, static_cast<lora_module *>(out.get()));
    return {};
}

std::string lora_drop_method::native_config_json() const {
    json_document base;
    const std::string text = lora.config_json();
    if (!base.parse(text.data(), text.size(), "lora_drop config").ok()) return {};
    std::string ext = "{\"peft_type\":\"LORA_DROP\",\"lora_drop_shared\":[";
    for (size_t i = 0; i < shared_paths.size(); i++) ext += (i ? "," : "") + json_quote(shared_paths[i]);
    ext += "],\"lora_drop_importance\":";
    if (importance.empty()) {
        ext += "null";
    } else {
        ext += "{";
        for (size_t i = 0; i < targets.size(); i++) ext += (i ? "," : "") + json_quote(targets[i].path) + ":" + json_python_float(importance[i]);
        ext += "}";
    }
    ext += ",\"lora_drop_threshold\":" + json_python_float(threshold) + ",\"lora_drop_fraction\":" + json_python_float(fraction) +
           ",\"lora_drop_stage1_steps\":" + std::to_string(stage1_steps) + "}";
    json_document e;
    if (!e.parse(ext.data(), ext.size(), "lora_drop config").ok()) return {};
    std::vector<std::pair<std::string, json_value>> over;
    for (size_t i = 0; i < e.root().size(); i++) over.emplace_back(e.root().key_at(i), e.root().value_at(i));
    return json_dump_python(base.root(), 0, over);
}

void lora_drop_method::tables(std::vector<module_table> & out) const {
    if (importance.empty()) return;
    module_table tb;
    tb.file = "lora_drop_importance";
    tb.title = "LoRA-drop importance";
    tb.note = "I = g / sum g with g = sum over the stage-1 sample's tokens of ||Delta W x||^2; modules past threshold " + fmt("%g", threshold) +
              " of the cumulative importance share one LoRA per type";
    tb.columns = {"module", "g", "importance", "lora"};
    for (size_t i = 0; i < targets.size(); i++) {
        const std::string & p = targets[i].path;
        tb.rows.push_back({p, g.empty() ? "" : fmt("%.6g", g[i]), fmt("%.6f", importance[i]), is_shared(p) ? "shared " + module_type(p) : "own"});
    }
    out.push_back(tb);
}

std::unique_ptr<adapter_method> lora_drop_method_make() { return std::make_unique<lora_drop_method>(); }

// LoRA's rows (r, lora_alpha, lora_dropout, target_modules, ...) apply as they are.
const std::vector<option_def> & lora_drop_method_options() {
    static const std::vector<option_def> keys = {
        {"lora_drop_fraction", OPT_FLOAT, "0.1", "lora_drop: stage 1's sample, a fraction of the training rows"},
        {"lora_drop_threshold", OPT_FLOAT, "0.9", "lora_drop: cumulative importance the modules keeping their own LoRA reach"},
        {"lora_drop_stage1_steps", OPT_INT, "0", "lora_drop: stage 1's optimizer steps (0: one pass over the sample)"},
    };
    return keys;
}

} // namespace peft
