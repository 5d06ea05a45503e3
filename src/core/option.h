// option.h: one row per configuration key (llama.cpp common/arg.cpp style): its name, JSON type,
// default as --help shows it, and help. The same row drives parsing, --help, "did you mean" and
// saving. The trainer's keys live in train/config.cpp; each adapter method declares its own (as
// PEFT's per-method config classes do) and the registry collects them, so the trainer names no
// method's key.
#pragma once

namespace peft {

enum option_kind {
    OPT_STRING,
    OPT_INT,
    OPT_FLOAT,
    OPT_BOOL,
    OPT_TARGETS,          // PEFT target_modules: a list of names, or one string (regex / "all-linear")
    OPT_INT_LIST,         // a list of ints or one int (layers_to_transform)
    OPT_OBJECT,           // a JSON object (rank_pattern, alpha_pattern, adapter_args)
    OPT_DATASETS,         // a list of {path, type} (or of paths, or one path)
    OPT_BOOL_OR_STRING,   // init_lora_weights: true/false or an init name; resume: true or a path
    OPT_KIND_COUNT,
};

struct option_def {
    const char * name;
    option_kind  kind;
    const char * def;    // the default, as --help shows it
    const char * help;
    const char * alias = nullptr;   // another spelling users bring (axolotl's lora_r), or null
};

} // namespace peft
