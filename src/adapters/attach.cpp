// attach.cpp: putting an adapter method on a model (target selection -> one module per selected
// projection -> llama_model::adapters), its parameter list with PEFT names, merge and unmerge.
// Not here: the methods themselves (lora.cpp, ...), the selection rules (target.cpp), files
// (io/peft_format.cpp).
#include <cstring>

#include "adapters/adapter_set.h"
#include "adapters/target.h"
#include "core/rng.h"
#include "io/json.h"
#include "model/llama.h"

namespace peft {

namespace {

std::string module_path(int64_t layer, llama_proj p) {
    return "model.layers." + std::to_string(layer) + "." + llama_proj_name(p);
}

llama_proj proj_of(const llama_model & m, const target_info & t) {
    for (int q = 0; q < LLAMA_PROJ_COUNT; q++) {
        if (&m.proj_weight(t.layer, (llama_proj) q) == t.base) return (llama_proj) q;
    }
    PEFT_ASSERT(false);
    return LLAMA_PROJ_COUNT;
}

void set_hook(llama_model & m, adapter_set & s) {
    m.adapters.assign((size_t) (m.hp.n_layer * LLAMA_PROJ_COUNT), nullptr);
    for (size_t i = 0; i < s.modules.size(); i++) {
        const target_info & t = s.targets[i];
        m.adapters[(size_t) (t.layer * LLAMA_PROJ_COUNT + proj_of(m, t))] = s.modules[i].get();
    }
    m.layer_hook = s.method ? s.method->layer_hook() : nullptr;
}


} // namespace

namespace {

struct model_writer : base_writer {
    llama_model & m;
    explicit model_writer(llama_model & mm) : m(mm) {}
    // a 4-bit base stays 4-bit: QPiSSA's residual is re-quantized (METHODS §3, §14)
    void replace(const target_info & t, const float * W) override {
        if (t.base->q) llama_requantize_weight(m, t.layer, proj_of(m, t), W);
        else llama_replace_weight(m, t.layer, proj_of(m, t), W, t.base->type);
    }
};

} // namespace

status adapters_attach(llama_model & m, const json_value & cfg, uint64_t seed, adapter_set & out, bool resuming,
                       calibration_source * calib) {
    const std::string where = "adapter config";
    if (m.trainable) {
        return make_error(PEFT_STATUS_CONFIG, where, "adapters need a frozen base model (loaded with trainable = false)");
    }
    if (!cfg.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, where, "configuration", "a JSON object", cfg.dump());
    std::string name = "lora";
    json_value pt = cfg.get("peft_type");
    if (!pt.valid() || pt.is_null()) pt = cfg.get("adapter");
    if (pt.valid() && !pt.is_null()) {
        if (!pt.is_string()) return make_mismatch(PEFT_STATUS_CONFIG, where, "peft_type", "a method name", pt.dump());
        name = pt.as_string();
    }
    adapter_set set;
    PEFT_TRY(adapter_method_create(name, set.method));
    PEFT_TRY(set.method->configure(cfg));

    target_rules rules;
    PEFT_TRY(target_rules_parse(cfg, where, rules));
    std::vector<std::string> paths;
    for (int64_t l = 0; l < m.hp.n_layer; l++) {
        for (int p = 0; p < LLAMA_PROJ_COUNT; p++) paths.push_back(module_path(l, (llama_proj) p));
    }
    std::vector<size_t> chosen;
    PEFT_TRY(target_select(rules, paths, where, chosen));

    // validate every target before creating any module
    for (size_t idx : chosen) {
        const int64_t l = (int64_t) idx / LLAMA_PROJ_COUNT;
        const llama_proj p = (llama_proj) (idx % LLAMA_PROJ_COUNT);
        linear_weight & w = m.proj_weight(l, p);
        target_info t{paths[idx], l, w.IC, w.OC, &w, m.proj_bias(l, p), nullptr, m.hp.n_embd};
        PEFT_TRY(set.method->check(t));
        set.targets.push_back(t);
    }
    PEFT_TRY(set.method->begin(set.targets.data(), (int64_t) set.targets.size()));
    std::string calib_data;
    int64_t calib_samples = 0;
    calibration_observer * obs = set.method->calibration(calib_data, calib_samples);
    if (obs && !resuming) {   // a resumed run restores what calibration produced
        if (!calib) {
            status st = make_error(PEFT_STATUS_CONFIG, where, std::string(set.method->name()) + ": this initialisation needs a calibration data set");
            st.hint = "run it through peft train, which streams the calibration data";
            return st;
        }
        PEFT_TRY(calib->run(calib_data, calib_samples, set.targets.data(), (int64_t) set.targets.size(), *obs));
    }
    PEFT_TRY(set.method->prepare(calib, set.targets.data(), (int64_t) set.targets.size(), seed));
    // layer order, then projection order: the rng stream (and so every init) depends only on
    // the seed and the selection
    rng r(seed);
    set.writer = std::make_unique<model_writer>(m);
    for (target_info & t : set.targets) {
        t.writer = set.writer.get();
        target_info here = t;
        if (resuming) here.writer = nullptr;   // the checkpoint brings the state, restore() the base
        std::unique_ptr<adapter_module> mod;
        const status st = set.method->create(here, r, mod);
        if (!st.ok()) return st;   // a replaced base stays replaced: callers drop the model on failure
        set.modules.push_back(std::move(mod));
    }
    for (auto & mod : set.modules) mod->set_training(true);

    out = std::move(set);
    set_hook(m, out);
    return {};
}

namespace {

// Shared tensors first (PEFT: base_model.vera_A), then each module's with its full PEFT name.
std::vector<param_ref> set_tensors(adapter_set & s, bool file_form) {
    std::vector<param_ref> out;
    if (s.method) {
        std::vector<param_ref> shared;
        s.method->shared_params(shared);
        for (param_ref & p : shared) {
            if (file_form && !p.saved) continue;
            p.name = "base_model." + p.name;
            out.push_back(p);
        }
    }
    for (size_t i = 0; i < s.modules.size(); i++) {
        std::vector<param_ref> mine;
        if (file_form) s.modules[i]->exported(mine);
        else s.modules[i]->params(mine);
        for (param_ref & p : mine) {
            p.name = "base_model.model." + s.targets[i].path + "." + p.name;
            out.push_back(p);
        }
    }
    return out;
}

} // namespace

std::vector<param_ref> adapter_set_params(adapter_set & s) { return set_tensors(s, false); }

std::vector<param_ref> adapter_set_state_tensors(adapter_set & s) {
    std::vector<param_ref> out;
    for (size_t i = 0; i < s.modules.size(); i++) {
        std::vector<param_ref> mine;
        s.modules[i]->state_tensors(mine);
        for (param_ref & p : mine) {
            p.name = "base_model.model." + s.targets[i].path + "." + p.name;
            out.push_back(p);
        }
    }
    return out;
}

status adapters_restore(llama_model & m, adapter_set & s) {
    (void) m;   // the set's writer is over the model it was attached to
    for (size_t i = 0; i < s.modules.size(); i++) {
        PEFT_ASSERT(s.targets[i].writer == s.writer.get() && s.writer);
        PEFT_TRY(s.method->restore(s.targets[i], *s.modules[i]));
    }
    return {};
}
std::vector<param_ref> adapter_set_exported(adapter_set & s) { return set_tensors(s, true); }

status adapters_merge(llama_model & m, adapter_set & s) {
    if (m.adapters.empty()) return make_error(PEFT_STATUS_CONFIG, "merge", "the adapter set is not attached to this model");
    if (const char * why = s.method ? s.method->merge_refusal() : nullptr) {
        status st = make_error(PEFT_STATUS_CONFIG, "merge", std::string(s.method->name()) + " adapters cannot be merged: " + why);
        st.hint = "apply it unmerged (peft generate without --merge)";
        return st;
    }
    std::vector<float> buf;
    for (size_t i = 0; i < s.modules.size(); i++) {
        const target_info & t = s.targets[i];
        // an f32 result whatever the base's dtype: unmerge subtracts from it exactly
        buf.resize((size_t) (t.base->OC * t.base->IC));
        linear_weight_rows_f32(buf.data(), *t.base, 0, t.base->OC);
        s.modules[i]->merge(buf.data(), t.base->OC, t.base->IC);
        llama_replace_weight(m, t.layer, proj_of(m, t), buf.data(), PEFT_DTYPE_F32);
    }
    m.adapters.clear();
    m.layer_hook = nullptr;
    return {};
}

status adapters_unmerge(llama_model & m, adapter_set & s) {
    if (!m.adapters.empty()) return make_error(PEFT_STATUS_CONFIG, "unmerge", "the adapter set is not merged");
    for (size_t i = 0; i < s.modules.size(); i++) {
        const linear_weight & w = *s.targets[i].base;
        if (w.type != PEFT_DTYPE_F32) {
            return make_error(PEFT_STATUS_CONFIG, "unmerge", s.targets[i].path + " is not a merged (f32) weight");
        }
    }
    for (size_t i = 0; i < s.modules.size(); i++) {
        const linear_weight & w = *s.targets[i].base;
        // the data is one of our merged_weights buffers (checked type above); const only in linear_weight
        s.modules[i]->unmerge((float *) const_cast<void *>(w.data), w.OC, w.IC);
    }
    set_hook(m, s);
    return {};
}

void adapters_set_training(adapter_set & s, bool on) {
    for (auto & mod : s.modules) mod->set_training(on);
}

} // namespace peft
