// target.h: which linear layers an adapter configuration selects, with PEFT's rules
// (tuners_utils.py check_target_module_exists, utils/other.py get_pattern_key):
//  - target_modules: a list (an entry matches a module path exactly or as its ".name" suffix),
//    a regex string (full match on the module path), "all-linear" (every projection, never
//    lm_head) or null (the Llama default q_proj, v_proj);
//  - exclude_modules: same rules, checked first;
//  - layers_to_transform (int or list) with optional layers_pattern: only in the suffix-match
//    case, as PEFT does (an exact path or a regex is taken as is);
//  - rank_pattern / alpha_pattern: the first key k (document order) such that
//    "(.*\.)?(k)$" matches the whole module path.
// Regexes use std::regex (ECMAScript), which agrees with Python's `re` on the usual patterns.
// Not here: creating modules (attach.cpp) or what a rank means (lora.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/option.h"
#include "core/status.h"

namespace peft {

struct json_value;

// target_modules / exclude_modules
struct module_match {
    enum kind_t { NONE = 0, LIST, REGEX };
    kind_t                   kind = NONE;
    std::vector<std::string> names;   // LIST
    std::string              regex;   // REGEX
};

struct target_rules {
    module_match             targets;          // after parsing: LIST or REGEX, never NONE
    bool                     all_linear = false;
    bool                     targets_default = false;   // null -> Llama default
    module_match             exclude;
    std::vector<int64_t>     layers;           // layers_to_transform
    bool                     layers_set = false;
    bool                     layers_is_int = false;
    std::vector<std::string> layers_pattern;   // layers_pattern
    bool                     layers_pattern_is_string = false;
};

// The short names of the adaptable projections, in module-path order:
// q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
const std::vector<std::string> & llama_target_names();

// Whether a module path or tensor name is in the input embedding or the output head
// (embed_tokens, lm_head): PEFT adapts those (an Embedding LoRA, a Linear LoRA), peft.cpp's
// adapters do not, so an adapter that does is refused with target_outside_layers_error.
bool   target_outside_layers(const std::string & name);
status target_outside_layers_error(const std::string & where, const std::string & what);

// Reads target_modules, exclude_modules, layers_to_transform and layers_pattern from an adapter
// config; `where` names the source in errors. Regexes are compiled here, so a bad one fails early.
status target_rules_parse(const json_value & cfg, const std::string & where, target_rules & out);

// Helpers every method's configure() shares: a key left off (absent, null, false or empty: the
// PEFT default of a feature flag), and a value as JSON text for adapter_config.json ("null"
// when absent).
bool        config_key_off(const json_value & v);
std::string config_raw_or_null(const json_value & v);

// Typed reads of one adapter-config key. Absent or null leaves `out` as it was (the method's
// default); a value of another type or outside [lo, hi] is a config error naming the key, what
// it wants (`want`) and what it got. Numbers must be finite; *is_int (when given) says whether
// the JSON spelled an integer (saved back as written: lora_alpha 16, not 16.0).
status config_read_int(const json_value & cfg, const char * key, int64_t lo, const char * want, int64_t & out);
status config_read_number(const json_value & cfg, const char * key, double lo, double hi, const char * want, double & out,
                          bool * is_int = nullptr);
status config_read_bool(const json_value & cfg, const char * key, bool & out);
// lo / hi for open bounds: (0, ...) and [..., 1)
constexpr double CONFIG_POSITIVE = 4.9406564584124654e-324;   // the smallest positive double
constexpr double CONFIG_BELOW_ONE = 0.99999999999999989;       // the largest double below 1

// Indices into `paths` (module paths such as "model.layers.3.self_attn.q_proj") that `r`
// selects, in the order of `paths`. A list entry or regex that matches no module at all, or a
// selection that ends up empty, is an error listing the available module names.
status target_select(const target_rules & r, const std::vector<std::string> & paths, const std::string & where,
                     std::vector<size_t> & out);

// PEFT get_pattern_key: index of the first key that matches `path`, or -1.
status target_pattern_find(const std::vector<std::string> & keys, const std::string & path, const std::string & where,
                           int64_t & out);

// The JSON text (compact) a module_match is saved as: null, a list or the regex string.
std::string module_match_json(const module_match & m);

// The module selection as adapter_config.json saves it back: JSON texts, "null" when absent.
struct target_echo {
    std::string targets = "null";          // target_modules
    std::string exclude = "null";          // exclude_modules
    std::string layers = "null";           // layers_to_transform
    std::string layers_pattern = "null";
    std::string task_type = "\"CAUSAL_LM\"";
};
// target_rules_parse (so the selection is checked at configure time) plus the echo of its keys.
status target_echo_read(const json_value & cfg, const std::string & where, target_echo & out);

// The selection keys every adapter method takes (PEFT: on each method's config class).
const std::vector<option_def> & target_options();

} // namespace peft
