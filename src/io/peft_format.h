// peft_format.h: Hugging Face PEFT adapter directories (FORMATS §2a): adapter_config.json and
// adapter_model.safetensors. adapter_save / adapter_load themselves are declared in
// adapters/adapter_set.h (the API the trainer and commands use) and implemented in
// peft_format.cpp; this header adds the JSON helpers that make our files byte-compatible with
// what Python writes (json.dumps(indent=2, sort_keys=True)).
// Not here: legacy adapter_model.bin (pickle), GGUF adapters.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/json.h"

namespace peft {

constexpr const char * PEFT_CONFIG_NAME = "adapter_config.json";
constexpr const char * PEFT_WEIGHTS_NAME = "adapter_model.safetensors";
// adapter_method::native_config_json: the training form, beside the PEFT form
constexpr const char * ADAPTER_NATIVE_DIR = "native";

// Python's repr() of a float: "0.05", "8.0", "1e-05", "1e+16" (shortest round-trip digits).
std::string json_python_float(double v);
// json.dumps string literal with ensure_ascii=True (non-ASCII as \uXXXX, surrogate pairs).
std::string json_python_quote(const std::string & s);
// json.dumps(v, indent=indent, sort_keys=True). Top-level object members named in
// `overrides` are replaced (or added) by the given values.
std::string json_dump_python(const json_value & v, int indent = 2,
                             const std::vector<std::pair<std::string, json_value>> & overrides = {});

// What adapter_load checks in adapter_config.json before attaching (`root` parsed from the file;
// separate so that it is fuzzed from memory): an object with a string peft_type. `cfg` gets the
// config as adapters_attach reads it, with the default init_lora_weights (the saved tensors
// replace any initialisation).
status adapter_config_normalize(const json_value & root, const std::string & where, json_document & cfg);

} // namespace peft
