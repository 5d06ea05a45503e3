// adapter_set.h: the adapters attached to one model, and the free functions around them that
// the trainer and the commands use (torchtune style: a list of trainable tensors + functions).
// Implemented in adapters/attach.cpp (attach, params, merge), adapters/registry.cpp (names ->
// methods) and io/peft_format.cpp (PEFT adapter directories).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/adapter.h"
#include "core/option.h"

namespace peft {

struct llama_model;
struct json_value;

struct adapter_set {
    std::unique_ptr<adapter_method>              method;
    std::vector<std::unique_ptr<adapter_module>> modules;   // one per adapted projection
    std::vector<target_info>                     targets;   // same order as modules
    // Replaces the targets' frozen bases in the attached model; every targets[i].writer points
    // here. Owned by the set (a moved set keeps it) so that a method may rewrite its bases during
    // training (ROSA's re-factorisation) as well as at create() and restore(); the set must not
    // outlive the model it was attached to.
    std::unique_ptr<base_writer>                 writer;
};

// Registry: "lora" (later "vera", "adalora", ...). Unknown name -> error listing the known ones.
status adapter_method_create(const std::string & name, std::unique_ptr<adapter_method> & out);
std::vector<std::string> adapter_method_names();
// The configuration keys of every registered method and of target selection, one row each
// (peft train's flags, --help and validation come from here).
const std::vector<option_def> & adapter_method_options();

// Creates the method named by cfg["peft_type"] or cfg["adapter"] (default "lora"), configures it
// with cfg (PEFT keys: r, lora_alpha, target_modules, exclude_modules, layers_to_transform,
// rank_pattern, alpha_pattern, ...), selects the target projections as PEFT does, creates one
// module per target (initialised from rng(seed)) and sets m.adapters. The model must be frozen.
// An unknown target module is an error listing the available module names.
status adapters_attach(llama_model & m, const json_value & cfg, uint64_t seed, adapter_set & out, bool resuming = false,
                       calibration_source * calib = nullptr);
// calib: where a method that asks for calibration (adapter_method::calibration) gets its data; a
// method that needs it without one is an error. resuming: the modules' state comes from a checkpoint, so inits that derive from the base (SVD)
// are not run; after the checkpoint's tensors are loaded, adapters_restore rebuilds the bases.
status adapters_restore(llama_model & m, adapter_set & s);
// Module state tensors (adapter_module::state_tensors) with full names, for trainer checkpoints.
std::vector<param_ref> adapter_set_state_tensors(adapter_set & s);

// Every tensor of the set (shared ones first, then per module in target order), with full
// PEFT names: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".
std::vector<param_ref> adapter_set_params(adapter_set & s);
// What adapter_save writes: each module's exported() tensors (and the saved shared ones), named
// as above.
std::vector<param_ref> adapter_set_exported(adapter_set & s);

// Merges every module into its base weight: the base of each target becomes an f32 copy owned
// by `m` (frozen bf16 weights are converted first), and m.adapters is cleared.
status adapters_merge(llama_model & m, adapter_set & s);
// Inverse of adapters_merge (each module's unmerge on the f32 copies, m.adapters set again); the bases
// stay f32. Fails unless the set is merged into m.
status adapters_unmerge(llama_model & m, adapter_set & s);

// Training mode (LoRA dropout active) or inference mode. adapters_attach leaves the set in
// training mode, adapter_load in inference mode (PEFT's is_trainable=False).
void adapters_set_training(adapter_set & s, bool on);

// PEFT adapter directory (FORMATS §2a): adapter_config.json + adapter_model.safetensors,
// both written atomically. Loading checks every key and shape against the model and fails
// clearly on an adapter made for another base.
status adapter_save(const std::string & dir, adapter_set & s, const std::string & base_model_name);
status adapter_load(const std::string & dir, llama_model & m, adapter_set & out);

} // namespace peft
