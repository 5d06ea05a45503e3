// target.cpp: PEFT's target selection rules (see target.h) over module paths.
// Not here: what the model's module paths are (attach.cpp builds them from llama_proj).
#include "adapters/target.h"

#include <cctype>
#include <cmath>
#include <cstring>
#include <regex>

#include "io/json.h"

namespace peft {

const std::vector<std::string> & llama_target_names() {
    static const std::vector<std::string> names = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
    return names;
}

namespace {

std::string available_list() {
    std::string s;
    for (const std::string & n : llama_target_names()) s += (s.empty() ? "" : ", ") + n;
    return s;
}

// Compiles a user regex; std::regex reports bad patterns by throwing, which must not cross
// module boundaries (ARCHITECTURE §9). __polynomial (libstdc++) matches breadth-first in
// polynomial time: the default backtracking matcher takes exponential time on patterns like
// "a.+++++b" (found by fuzz_adapter_config), a hang from one line of adapter_config.json.
// The price is that back-references are refused, which module patterns do not need.
status compile_regex(const std::string & pattern, const std::string & where, const std::string & field, std::regex & out) {
    try {
        out = std::regex(pattern, std::regex::ECMAScript | std::regex_constants::__polynomial);
    } catch (const std::regex_error & e) {
        return make_error(PEFT_STATUS_CONFIG, where, field + ": invalid regular expression \"" + pattern + "\": " + e.what());
    }
    return {};
}

bool regex_full(const std::regex & re, const std::string & s) {
    try {
        return std::regex_match(s, re);
    } catch (const std::regex_error &) {   // complexity limits on pathological patterns
        return false;
    }
}

bool ends_with_dot(const std::string & path, const std::string & name) {
    return path.size() > name.size() && path.compare(path.size() - name.size(), name.size(), name) == 0 &&
           path[path.size() - name.size() - 1] == '.';
}

status parse_match(const json_value & v, const std::string & where, const std::string & field, module_match & out) {
    out = {};
    if (!v.valid() || v.is_null()) return {};
    if (v.is_string()) {
        out.kind = module_match::REGEX;
        out.regex = v.as_string();
        std::regex re;
        return compile_regex(out.regex, where, field, re);
    }
    if (v.is_array()) {
        out.kind = module_match::LIST;
        for (size_t i = 0; i < v.size(); i++) {
            json_value e = v.at(i);
            if (!e.is_string() || e.as_string().empty()) {
                return make_mismatch(PEFT_STATUS_CONFIG, where, field + "[" + std::to_string(i) + "]", "a module name",
                                     e.dump());
            }
            bool dup = false;
            for (const std::string & n : out.names) dup = dup || n == e.as_string();
            if (!dup) out.names.push_back(e.as_string());   // PEFT keeps a set
        }
        return {};
    }
    return make_mismatch(PEFT_STATUS_CONFIG, where, field, "a list of module names, a regex string or null", v.dump());
}

// PEFT: exact path, or path ending with "." + name (list); re.fullmatch (string).
bool match_module(const module_match & m, const std::regex * re, const std::string & path, bool * exact) {
    if (exact) *exact = false;
    if (m.kind == module_match::REGEX) return regex_full(*re, path);
    if (m.kind != module_match::LIST) return false;
    for (const std::string & n : m.names) {
        if (path == n) {
            if (exact) *exact = true;
            return true;
        }
    }
    for (const std::string & n : m.names) {
        if (ends_with_dot(path, n)) return true;
    }
    return false;
}

// The layer index of a module path under PEFT's layer regexes, or -1.
int64_t layer_of(const std::string & path, const std::vector<std::regex> & layer_res) {
    for (const std::regex & re : layer_res) {
        std::smatch mt;
        bool ok = false;
        try {
            ok = std::regex_match(path, mt, re);
        } catch (const std::regex_error &) {
            ok = false;
        }
        // the (\d+) is the last group: a layers_pattern may hold groups of its own
        if (ok && mt[mt.size() - 1].length() <= 18) return std::stoll(mt[mt.size() - 1].str());
    }
    return -1;
}

} // namespace

bool target_outside_layers(const std::string & name) {
    for (const char * m : {"embed_tokens", "lm_head"}) {
        const size_t k = name.find(m);
        const size_t e = k + std::strlen(m);
        if (k != std::string::npos && (k == 0 || name[k - 1] == '.') && (e == name.size() || name[e] == '.')) return true;
    }
    return false;
}

status target_outside_layers_error(const std::string & where, const std::string & what) {
    status st = make_error(PEFT_STATUS_CONFIG, where, what + " adapts embed_tokens or lm_head: peft.cpp's adapters adapt the "
                           "per-layer projections only, so it cannot load, run, merge or export this adapter");
    st.hint = "train without embed_tokens / lm_head in target_modules (or merge it with PEFT in Python: merge_and_unload)";
    return st;
}

status target_rules_parse(const json_value & cfg, const std::string & where, target_rules & out) {
    out = {};
    json_value tm = cfg.get("target_modules");
    std::string tm_lower = tm.as_string();
    for (char & c : tm_lower) c = (char) std::tolower((unsigned char) c);
    if (tm.is_string() && tm_lower == "all-linear") {
        // PEFT lower-cases before comparing; all-linear means every linear layer but the output head
        out.all_linear = true;
        out.targets.kind = module_match::LIST;
        out.targets.names = llama_target_names();
    } else if (!tm.valid() || tm.is_null()) {
        // transformers' Llama default (utils/constants.py)
        out.targets_default = true;
        out.targets.kind = module_match::LIST;
        out.targets.names = {"q_proj", "v_proj"};
    } else {
        PEFT_TRY(parse_match(tm, where, "target_modules", out.targets));
        if (out.targets.kind == module_match::LIST && out.targets.names.empty()) {
            status st = make_error(PEFT_STATUS_CONFIG, where, "target_modules is an empty list");
            st.hint = "available modules: " + available_list() + " (or \"all-linear\")";
            return st;
        }
    }
    PEFT_TRY(parse_match(cfg.get("exclude_modules"), where, "exclude_modules", out.exclude));

    json_value lt = cfg.get("layers_to_transform");
    if (lt.valid() && !lt.is_null()) {
        if (lt.is_integer()) {
            out.layers_set = true;
            out.layers_is_int = true;
            out.layers.push_back(lt.as_int());
        } else if (lt.is_array()) {
            for (size_t i = 0; i < lt.size(); i++) {
                if (!lt.at(i).is_integer()) {
                    return make_mismatch(PEFT_STATUS_CONFIG, where, "layers_to_transform[" + std::to_string(i) + "]",
                                         "an integer layer index", lt.at(i).dump());
                }
                out.layers.push_back(lt.at(i).as_int());
            }
            out.layers_set = !out.layers.empty();   // PEFT: an empty list means "all layers"
        } else {
            return make_mismatch(PEFT_STATUS_CONFIG, where, "layers_to_transform", "an integer, a list of integers or null",
                                 lt.dump());
        }
    }
    json_value lp = cfg.get("layers_pattern");
    if (lp.valid() && !lp.is_null()) {
        if (lp.is_string()) {
            out.layers_pattern_is_string = true;
            if (!lp.as_string().empty()) out.layers_pattern.push_back(lp.as_string());
        } else if (lp.is_array()) {
            for (size_t i = 0; i < lp.size(); i++) {
                if (!lp.at(i).is_string()) {
                    return make_mismatch(PEFT_STATUS_CONFIG, where, "layers_pattern[" + std::to_string(i) + "]", "a string",
                                         lp.at(i).dump());
                }
                out.layers_pattern.push_back(lp.at(i).as_string());
            }
        } else {
            return make_mismatch(PEFT_STATUS_CONFIG, where, "layers_pattern", "a string, a list of strings or null", lp.dump());
        }
        for (const std::string & p : out.layers_pattern) {
            std::regex re;
            PEFT_TRY(compile_regex(".*\\." + p + "\\.(\\d+)\\..*", where, "layers_pattern", re));
        }
    }
    return {};
}

status target_select(const target_rules & r, const std::vector<std::string> & paths, const std::string & where,
                     std::vector<size_t> & out) {
    out.clear();
    std::regex target_re, exclude_re;
    if (r.targets.kind == module_match::REGEX) PEFT_TRY(compile_regex(r.targets.regex, where, "target_modules", target_re));
    if (r.exclude.kind == module_match::REGEX) PEFT_TRY(compile_regex(r.exclude.regex, where, "exclude_modules", exclude_re));
    // layer index: PEFT re.match(r".*\.[^.]*\.(\d+)\.", key) or with each layers_pattern; re.match
    // anchors only at the start, hence the trailing ".*" for a full match
    std::vector<std::regex> layer_res;
    if (r.layers_pattern.empty()) {
        layer_res.emplace_back(".*\\.[^.]*\\.(\\d+)\\..*");
    } else {
        for (const std::string & p : r.layers_pattern) {
            std::regex re;
            PEFT_TRY(compile_regex(".*\\." + p + "\\.(\\d+)\\..*", where, "layers_pattern", re));
            layer_res.push_back(std::move(re));
        }
    }

    // every list entry / the regex must name something that exists (before exclusions and
    // layer filters, which legitimately remove matches)
    if (r.targets.kind == module_match::LIST) {
        for (const std::string & n : r.targets.names) {
            bool found = false;
            for (const std::string & p : paths) found = found || p == n || ends_with_dot(p, n);
            if (!found && target_outside_layers(n)) return target_outside_layers_error(where, "target_modules: \"" + n + "\"");
            if (!found) {
                status st = make_error(PEFT_STATUS_CONFIG, where,
                                       "target_modules: \"" + n + "\" matches no module of the model");
                st.hint = "available modules: " + available_list() + " (or \"all-linear\", or a regex string)";
                return st;
            }
        }
    } else {
        bool found = false;
        for (const std::string & p : paths) found = found || regex_full(target_re, p);
        if (!found) {
            status st = make_error(PEFT_STATUS_CONFIG, where,
                                   "target_modules: regex \"" + r.targets.regex + "\" matches no module of the model");
            st.hint = "module paths look like model.layers.0.self_attn.q_proj; available modules: " + available_list();
            return st;
        }
    }

    // exclusions and layer indices that match nothing are typos; PEFT raises on the former
    if (r.exclude.kind != module_match::NONE) {
        bool any = false;
        for (const std::string & p : paths) any = any || match_module(r.exclude, &exclude_re, p, nullptr);
        if (!any) {
            status st = make_error(PEFT_STATUS_CONFIG, where, "exclude_modules: " + module_match_json(r.exclude) + " matches no module of the model");
            st.hint = "list module names (" + available_list() + ") or give a regex over paths such as model.layers.0.self_attn.q_proj" +
                      (r.exclude.regex == "all-linear" ? "; \"all-linear\" is a target_modules value only" : "");
            return st;
        }
    }
    if (r.layers_set) {
        std::vector<bool> seen;
        for (const std::string & p : paths) {
            const int64_t l = layer_of(p, layer_res);
            if (l >= 0 && (size_t) l >= seen.size()) seen.resize((size_t) l + 1, false);
            if (l >= 0) seen[(size_t) l] = true;
        }
        for (int64_t l : r.layers) {
            if (l < 0 || (size_t) l >= seen.size() || !seen[(size_t) l]) {
                return make_mismatch(PEFT_STATUS_CONFIG, where, "layers_to_transform: layer " + std::to_string(l),
                                     "a layer of the model (0.." + std::to_string((int64_t) seen.size() - 1) + ")", "no such layer");
            }
        }
    }

    for (size_t i = 0; i < paths.size(); i++) {
        const std::string & path = paths[i];
        if (match_module(r.exclude, &exclude_re, path, nullptr)) continue;
        bool exact = false;
        bool found = match_module(r.targets, &target_re, path, &exact);
        if (found && r.targets.kind == module_match::LIST && !exact && r.layers_set) {
            const int64_t layer = layer_of(path, layer_res);
            found = false;
            for (int64_t l : r.layers) found = found || (layer >= 0 && l == layer);
        }
        if (found) out.push_back(i);
    }
    if (out.empty()) {
        status st = make_error(PEFT_STATUS_CONFIG, where,
                               "target_modules, exclude_modules and layers_to_transform together select no module");
        st.hint = "available modules: " + available_list();
        return st;
    }
    return {};
}

status target_pattern_find(const std::vector<std::string> & keys, const std::string & path, const std::string & where,
                           int64_t & out) {
    out = -1;
    for (size_t i = 0; i < keys.size(); i++) {
        std::regex re;
        PEFT_TRY(compile_regex("(.*\\.)?(" + keys[i] + ")", where, "pattern key", re));
        if (regex_full(re, path)) {
            out = (int64_t) i;
            return {};
        }
    }
    return {};
}

std::string module_match_json(const module_match & m) {
    if (m.kind == module_match::REGEX) return json_quote(m.regex);
    if (m.kind == module_match::NONE) return "null";
    std::string s = "[";
    for (size_t i = 0; i < m.names.size(); i++) {
        if (i) s += ",";
        s += json_quote(m.names[i]);
    }
    return s + "]";
}

const std::vector<option_def> & target_options() {
    static const std::vector<option_def> keys = {
        {"target_modules", OPT_TARGETS, "q_proj,v_proj", "list of module names (exact or suffix), a regex string, or all-linear",
         "lora_target_modules"},
        {"exclude_modules", OPT_TARGETS, "none", "modules never adapted (same forms as target_modules)"},
        {"layers_to_transform", OPT_INT_LIST, "all", "layer indices to adapt"},
    };
    return keys;
}

bool config_key_off(const json_value & v) {
    return !v.valid() || v.is_null() || (v.is_bool() && !v.as_bool()) || ((v.is_array() || v.is_object()) && v.size() == 0);
}

std::string config_raw_or_null(const json_value & v) { return v.valid() ? v.dump() : "null"; }

status target_echo_read(const json_value & cfg, const std::string & where, target_echo & out) {
    target_rules rules;
    PEFT_TRY(target_rules_parse(cfg, where, rules));
    out.targets = module_match_json(rules.targets);
    out.exclude = config_raw_or_null(cfg.get("exclude_modules"));
    out.layers = config_raw_or_null(cfg.get("layers_to_transform"));
    out.layers_pattern = config_raw_or_null(cfg.get("layers_pattern"));
    const json_value tt = cfg.get("task_type");
    if (tt.valid() && (tt.is_string() || tt.is_null())) out.task_type = tt.dump();
    return {};
}

status config_read_int(const json_value & cfg, const char * key, int64_t lo, const char * want, int64_t & out) {
    const json_value v = cfg.get(key);
    if (!v.valid() || v.is_null()) return {};
    if (!v.is_integer() || v.as_int() < lo) return make_mismatch(PEFT_STATUS_CONFIG, "adapter config", key, want, v.dump());
    out = v.as_int();
    return {};
}

status config_read_number(const json_value & cfg, const char * key, double lo, double hi, const char * want, double & out,
                          bool * is_int) {
    const json_value v = cfg.get(key);
    if (!v.valid() || v.is_null()) return {};
    const double x = v.is_number() ? v.as_double() : NAN;
    if (!std::isfinite(x) || x < lo || x > hi) return make_mismatch(PEFT_STATUS_CONFIG, "adapter config", key, want, v.dump());
    out = x;
    if (is_int) *is_int = v.is_integer();
    return {};
}

status config_read_bool(const json_value & cfg, const char * key, bool & out) {
    const json_value v = cfg.get(key);
    if (!v.valid() || v.is_null()) return {};
    if (!v.is_bool()) return make_mismatch(PEFT_STATUS_CONFIG, "adapter config", key, "true or false", v.dump());
    out = v.as_bool();
    return {};
}

} // namespace peft
