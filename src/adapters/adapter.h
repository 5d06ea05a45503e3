// adapter.h: the one contract every fine-tuning method implements (ARCHITECTURE §7).
// Two levels: an adapter_method per model (configuration, shared state such as VeRA's
// projections, periodic hooks such as AdaLoRA's budget) and one adapter_module per adapted
// linear layer (forward, backward, parameters, dense delta, merge). The model calls modules
// through llama_model::adapters; the trainer sees only param_ref lists and the hooks, so adding
// a method never touches the trainer or the model.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/linear.h"

namespace peft {

struct json_value;
struct rng;
struct llama_layer_hook;

// One tensor a method owns.
struct param_ref {
    std::string          name;       // PEFT suffix, e.g. "lora_A.weight"
    float *              value = nullptr;
    float *              grad = nullptr;   // null if frozen
    std::vector<int64_t> shape;
    bool                 trainable = true; // the optimizer sees it
    bool                 saved = true;     // written to adapter_model.safetensors
    float                lr_scale = 1.0f;  // LoRA+: B gets loraplus_lr_ratio
};

struct target_info;

// Model-owned replacement of a target's frozen weight, in the base's own dtype, for inits that
// turn the base into a residual (PiSSA, MiLoRA, OLoRA) and methods that re-split it while
// training (ROSA). Implemented over the model by attach.cpp, owned by the adapter_set.
struct base_writer {
    virtual ~base_writer() = default;
    virtual void replace(const target_info & t, const float * W /*[OC,IC]*/) = 0;
};

// The base linear a module adapts. Init strategies may replace `base` through `writer`, which
// lives as long as the adapter set is attached (adapter_set::writer): a module may keep it for
// its hooks.
struct target_info {
    std::string     path;            // HF module path, "model.layers.3.self_attn.q_proj"
    int64_t         layer = 0;
    int64_t         in_features = 0, out_features = 0;
    linear_weight * base = nullptr;  // frozen W [OC, IC]
    const float *   bias = nullptr;  // [OC] or null (qwen2 q/k/v)
    base_writer *   writer = nullptr;
    int64_t         n_embd = 0;      // the model's hidden size C (the residual stream's width)
};

struct step_info {
    int64_t step = 0, total_steps = 0;   // step: optimizer steps done, this one included after the update
    float   lr = 0.0f;
};

// The optimizer as a method sees it at the end of a step: per-parameter state it may reset when
// it re-initialises a parameter (ROSA's resampled subspace, AdaLoRA's pruned ranks).
struct optimizer_view {
    virtual ~optimizer_view() = default;
    // Resets the state of the parameter whose values are at `value` as a fresh optimizer's:
    // moments zeroed and its own step count back to 0 (its bias correction restarts); false if
    // it is not one.
    virtual bool reset_state(const float * value) = 0;
};

// The inputs of the selected targets over a calibration set, for inits that need activation
// statistics (CorDA's covariances) or the loss gradient at the frozen base (Deep LoRA's
// compression). The trainer streams the data (train/calibrate.h).
struct calibration_observer {
    virtual ~calibration_observer() = default;
    // x [rows*T, IC]: the input of target `index` for one batch of `rows` rows of T tokens;
    // seg [rows*T]: segment ids (0 = padding; a new id starts a new sample within a packed row).
    // Called once per forward of each batch (the calibration forward never recomputes).
    virtual status observe(int64_t index, const float * x, const int32_t * seg, int64_t rows, int64_t T) {
        (void) index; (void) x; (void) seg; (void) rows; (void) T;
        return {};
    }
    // true: every batch also runs backward (base frozen, loss = the mean over batches of the
    // batch's mean token loss) and observe_gradient receives, per target, the input x [N,IC]
    // and the loss gradient dy [N,OC] of its output; sum_batches dy^T x is d loss / d W.
    virtual bool wants_gradients() const { return false; }
    virtual status observe_gradient(int64_t index, const float * x, const float * dy, int64_t N) {
        (void) index; (void) x; (void) dy; (void) N;
        return {};
    }
};

struct adapter_module;

struct calibration_source {
    virtual ~calibration_source() = default;
    // Streams up to n_samples samples of data_path (empty: the training rows, Deep LoRA's
    // default) through the model, reporting the inputs (and, if obs wants them, the output
    // gradients) of targets[0..n) to obs.
    virtual status run(const std::string & data_path, int64_t n_samples, const target_info * targets, int64_t n,
                       calibration_observer & obs) = 0;
    // Trains probe modules before the real adapter exists (LoRA-drop's stage 1): mods[i], one per
    // targets[i], takes that target's place for the call; `steps` optimizer steps (0: one pass)
    // over the first max(1, ceil(fraction * rows)) training rows (shuffled by the loader: a random
    // sample) with the run's AdamW settings at a constant learning rate; then those rows stream
    // once more through the trained model (dropout off), reporting each target's input to obs.
    // The trained values stay in mods.
    virtual status train_probe(double fraction, int64_t steps, adapter_module * const * mods, const target_info * targets, int64_t n,
                               calibration_observer & obs) {
        (void) fraction; (void) steps; (void) mods; (void) targets; (void) n; (void) obs;
        return make_error(PEFT_STATUS_CONFIG, "calibration", "this command cannot train probe adapters");
    }
};

// A per-module table a method shows in the training report and writes beside its adapter as
// TSV (AdaLoRA's final ranks, LoRA-drop's importance).
struct module_table {
    std::string                           file;    // "lora_drop_importance": <file>.tsv beside the adapter
    std::string                           title, note;
    std::vector<std::string>              columns;
    std::vector<std::vector<std::string>> rows;
};

// Per adapted linear layer.
struct adapter_module {
    virtual ~adapter_module() = default;
    // y[N,OC] = adapted(x[N,IC]) (overwrites y); calls linear_forward on the base itself so
    // variants like DoRA can rescale the base result; caches what backward needs.
    virtual void forward(const float * x, int64_t N, float * y) = 0;
    // dx[N,IC] += d loss/dx (including the base W^T dy part); own grads +=. Called after the
    // forward of the same x (the model re-runs forward first when recomputing activations).
    // dx is null when no input gradient is wanted (the lowest layer a frozen base's backward
    // visits: below it nothing trains): the module then skips the base product and its own dx
    // terms, as autograd does for an input that needs no gradient; own grads are unchanged.
    virtual void backward(const float * x, const float * dy, int64_t N, float * dx) = 0;
    // Inference only (peft serve batches rows of several adapters over one base): y[N,OC] +=
    // adapted(x) - base(x), where y already holds the base product (bias included), which then
    // runs once for every row of the batch. false when the output does not split so (DoRA rescales
    // the base): the caller runs forward() on the module's rows instead.
    virtual bool forward_delta(const float * x, int64_t N, float * y) { (void) x; (void) N; (void) y; return false; }
    // Whether backward reads x. The model keeps a projection's input for backward only when some
    // consumer reads it (a weight gradient, or an adapter that says so): LoRA-FA's backward needs
    // only its r-wide x A^T, so the model shares one scratch buffer for inputs nobody reads later.
    virtual bool backward_reads_input() const { return true; }
    // dense delta [OC, IC] for merge / export
    virtual void delta_weight(float * dW) const = 0;
    // W [OC, IC] f32 += delta (default); DoRA overrides (it rescales rows)
    virtual void merge(float * W, int64_t OC, int64_t IC) const;
    // Inverse of merge on the merged W (default W -= delta); DoRA overrides (it divides the rows
    // by the scale its merge used before subtracting).
    virtual void unmerge(float * W, int64_t OC, int64_t IC) const;
    virtual void params(std::vector<param_ref> & out) = 0;
    // The tensors written to adapter_model.safetensors (suffix names, f32). Default: the params
    // marked saved. A module whose file form differs from its training form (a PiSSA-family
    // residual, converted to a LoRA on the original base) points them at buffers of its own.
    virtual void exported(std::vector<param_ref> & out);
    // optional extra loss (AdaLoRA orthogonality): adds its own grads, returns its loss
    virtual float regularize(float weight) { (void) weight; return 0.0f; }
    // Training mode switches stochastic parts (LoRA dropout) on; off = inference (eval,
    // generate), as torch's module.train()/eval().
    virtual void set_training(bool on) { (void) on; }
    // State beyond the parameters that a resumed run needs to continue bit for bit (LoRA's
    // dropout draw counter); opaque text saved in trainer checkpoints. set_state returns false
    // on text it cannot read.
    virtual std::string state() const { return {}; }
    virtual bool set_state(const std::string & s) { return s.empty(); }
    // Tensors beyond the parameters that a resumed run needs (a PiSSA-family module's initial
    // factors, from which its residual base is rebuilt without a new SVD); saved in trainer
    // checkpoints and restored by name before adapter_method::restore().
    virtual void state_tensors(std::vector<param_ref> & out) { (void) out; }
};

// One per model.
struct adapter_method {
    virtual ~adapter_method() = default;
    virtual const char * name() const = 0;                    // "lora", registry key
    // Reads and validates PEFT-named keys (r, lora_alpha, target_modules, ...).
    virtual status configure(const json_value & cfg) = 0;
    // adapter_config.json content (a JSON object, PEFT field names).
    virtual std::string config_json() const = 0;
    // Validates one selected target before create() (e.g. LoRA's rank against the layer
    // shape), so bad configurations fail with a message instead of an assert.
    virtual status check(const target_info & t) const { (void) t; return {}; }
    // One module for a checked target. May fail on numerical work (an SVD init). t.writer null
    // means the module's state will come from a checkpoint (resume): derive nothing from the base
    // now, restore() follows with the writer. Otherwise the writer outlives this call (it is the
    // set's, adapter_set::writer), so a module may keep it to rewrite its base in the hooks.
    virtual status create(const target_info & t, rng & r, std::unique_ptr<adapter_module> & out) = 0;
    // Non-null when the saved adapter applies to the residual base its init made (PiSSA with
    // save_residual_model): the init's name, which the trainer records in the residual model it
    // writes beside the adapter, and which loading requires of the base.
    virtual const char * residual_init() const { return nullptr; }
    virtual void shared_params(std::vector<param_ref> & out) { (void) out; }   // VeRA A/B
    // Non-null when the method acts per layer on the residual stream (MiLoRA's routers):
    // adapters_attach sets it as llama_model::layer_hook beside the modules.
    virtual llama_layer_hook * layer_hook() { return nullptr; }
    // Non-null when the adapter cannot be folded into the weights (a prompt-routed mixture):
    // why, for the error of adapters_merge and peft merge.
    virtual const char * merge_refusal() const { return nullptr; }

    // After a checkpoint restored a module's parameters and state tensors: rebuild what create()
    // derived from the base (the residual of an SVD init) through t.writer.
    virtual status restore(const target_info & t, adapter_module & mod) { (void) t; (void) mod; return {}; }
    // Non-null when create() needs the targets' inputs over a calibration set (CorDA): the data
    // and sample count, and who receives the inputs. adapters_attach runs it after begin().
    virtual calibration_observer * calibration(std::string & data_path, int64_t & n_samples) {
        (void) data_path; (void) n_samples;
        return nullptr;
    }
    // After begin() and calibration, before the first create(), also when resuming: a method
    // whose very structure comes from data (LoRA-drop's kept set, from training probe LoRAs)
    // drives `src` itself (null: the caller has no data; fail unless the config fixes it). A
    // resumed run repeats it: the checkpoint's tensors must find the same structure. seed: the
    // attach seed (create()'s rng is drawn from it too; a method draws its own stream).
    virtual status prepare(calibration_source * src, const target_info * targets, int64_t n, uint64_t seed) {
        (void) src; (void) targets; (void) n; (void) seed;
        return {};
    }
    // Non-empty when the adapter_config.json a method writes describes another structure than it
    // trains (LoRA-drop's shared LoRAs, written for PEFT as one LoRA per module): its own config.
    // adapter_save then also writes the training form (this config and the saved params()) into
    // the subdirectory ADAPTER_NATIVE_DIR, which adapter_load reads back into the same structure.
    virtual std::string native_config_json() const { return {}; }
    // Tables for the training report and the adapter directory (module_table).
    virtual void tables(std::vector<module_table> & out) const { (void) out; }
    // Lifecycle, called by adapters_attach (begin) and by train_step itself (the rest), so the
    // trainer, bench and tests all run them:
    // every selected target, before the first create() (VeRA sizes its shared projections)
    virtual status begin(const target_info * targets, int64_t n) { (void) targets; (void) n; return {}; }
    // after gradient clipping, before the optimizer update (LoRA-FA preconditions dB)
    virtual void before_update(const step_info & s, adapter_module * const * mods, int64_t n_mods) {
        (void) s; (void) mods; (void) n_mods;
    }
    // after the optimizer update
    virtual void after_update(const step_info & s, adapter_module * const * mods, int64_t n_mods) {
        (void) s; (void) mods; (void) n_mods;
    }
    // at the end of every step, with the optimizer's per-parameter state (AdaLoRA's budget, ROSA)
    virtual void on_step_end(const step_info & s, adapter_module * const * mods, int64_t n_mods, optimizer_view & opt) {
        (void) s; (void) mods; (void) n_mods; (void) opt;
    }
};

} // namespace peft
