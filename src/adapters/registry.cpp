// registry.cpp: adapter method names -> factories. Adding a method = one enum value + one row;
// the static_assert keeps the table and the enum in step (ARCHITECTURE §7).
// Not here: configuration (each method's configure) or attaching (attach.cpp).
#include <cctype>

#include "adapters/adalora.h"
#include "adapters/adapter_set.h"
#include "adapters/deep_lora.h"
#include "adapters/lora.h"
#include "adapters/lora_drop.h"
#include "adapters/milora_moe.h"
#include "adapters/rosa.h"
#include "adapters/target.h"
#include "adapters/vera.h"

namespace peft {

namespace {

enum adapter_method_kind {
    PEFT_METHOD_LORA = 0,
    PEFT_METHOD_VERA,
    PEFT_METHOD_DEEP_LORA,
    PEFT_METHOD_ROSA,
    PEFT_METHOD_ADALORA,
    PEFT_METHOD_MILORA_MOE,
    PEFT_METHOD_LORA_DROP,
    PEFT_METHOD_COUNT,
};

struct method_entry {
    adapter_method_kind kind;
    const char *        name;   // lower case; PEFT's peft_type ("LORA") matches case-insensitively
    std::unique_ptr<adapter_method> (*make)();
    const std::vector<option_def> & (*options)();   // the keys configure() reads
};

const method_entry METHODS[] = {
    {PEFT_METHOD_LORA, "lora", lora_method_make, lora_method_options},
    {PEFT_METHOD_VERA, "vera", vera_method_make, vera_method_options},
    {PEFT_METHOD_DEEP_LORA, "deep_lora", deep_lora_method_make, deep_lora_method_options},
    {PEFT_METHOD_ROSA, "rosa", rosa_method_make, rosa_method_options},
    {PEFT_METHOD_ADALORA, "adalora", adalora_method_make, adalora_method_options},
    {PEFT_METHOD_MILORA_MOE, "milora_moe", milora_moe_method_make, milora_moe_method_options},
    {PEFT_METHOD_LORA_DROP, "lora_drop", lora_drop_method_make, lora_drop_method_options},
};
static_assert(sizeof(METHODS) / sizeof(METHODS[0]) == PEFT_METHOD_COUNT, "one registry row per adapter method");

std::string lower(const std::string & s) {
    std::string out = s;
    for (char & c : out) c = (char) std::tolower((unsigned char) c);
    return out;
}

} // namespace

const std::vector<option_def> & adapter_method_options() {
    static const std::vector<option_def> keys = [] {
        std::vector<option_def> k = target_options();
        for (const method_entry & e : METHODS) {
            for (const option_def & d : e.options()) {
                bool seen = false;   // methods share keys (r, lora_alpha ...): one row each
                for (const option_def & x : k) seen = seen || std::string(x.name) == d.name;
                if (!seen) k.push_back(d);
            }
        }
        return k;
    }();
    return keys;
}

std::vector<std::string> adapter_method_names() {
    std::vector<std::string> names;
    for (const method_entry & e : METHODS) names.push_back(e.name);
    return names;
}

status adapter_method_create(const std::string & name, std::unique_ptr<adapter_method> & out) {
    const std::string key = lower(name);
    for (const method_entry & e : METHODS) {
        if (key == e.name) {
            out = e.make();
            return {};
        }
    }
    std::string known;
    for (const method_entry & e : METHODS) known += (known.empty() ? "" : ", ") + std::string(e.name);
    status st = make_error(PEFT_STATUS_CONFIG, "adapter config", "unknown adapter method \"" + name + "\"");
    st.hint = "known methods: " + known;
    return st;
}

} // namespace peft
