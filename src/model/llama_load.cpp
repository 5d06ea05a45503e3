// llama_load.cpp: binds a Hugging Face model directory (config.json + safetensors, single or
// sharded) to a llama_model (a GGUF file goes to model/gguf_import). Frozen matrices are used in place from the mapping when aligned
// (bf16 stays bf16); small vectors and trainable tensors are converted to f32.
// The checkpoint must hold exactly the model's parameters (a few harmless extras aside) and
// no NaN/Inf: both are checked here, once for every command, before anything is allocated.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_set>

#include "io/gguf_read.h"
#include "io/safetensors.h"
#include "model/gguf_import.h"
#include "model/llama.h"

namespace peft {

void   llama_bind_weights(llama_model & m);                                  // llama.cpp
status llama_allocate(llama_model & m, bool trainable, bool own_frozen, dtype frozen_type);
bool   llama_is_proj_weight(const std::string & name);                       // llama.cpp
status llama_quantize_tensor(llama_model & m, llama_tensor & t, const float * W, const quant_options & o);

static std::string shape_str(const std::vector<int64_t> & s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

static bool ends_with(const std::string & s, const std::string & suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "model.layers.N.self_attn.o_proj.bias" and the like: the bias of one of the seven projections.
static bool is_proj_bias(const std::string & name) {
    for (int p = 0; p < LLAMA_PROJ_COUNT; p++) {
        if (ends_with(name, std::string(".") + llama_proj_name((llama_proj) p) + ".bias")) return true;
    }
    return false;
}

// A bias that config.json asks for is missing, or one it does not ask for is present: the
// usual cause is a config whose bias flags do not match the weights.
static std::string bias_hint(const llama_hparams & hp, const std::string & name, bool missing) {
    const bool attn = name.find(".self_attn.") != std::string::npos;
    if (hp.arch == "qwen2") {
        return missing ? "Qwen2 always has q/k/v biases; is \"model_type\" right?"
                       : "Qwen2 has biases on q/k/v only (transformers ignores attention_bias / mlp_bias for it); is \"model_type\" right?";
    }
    const std::string flag = attn ? "attention_bias" : "mlp_bias";
    return missing ? "config.json sets \"" + flag + "\": true but the checkpoint has no such bias; is the config from another model?"
                   : "config.json has \"" + flag + "\" false or absent; set it to true if the model was trained with these biases";
}

// Checks a checkpoint tensor that llama_tensor_specs does not list. Refused unless harmless:
// a weight the model would not apply (an o_proj.bias under attention_bias false, a layer past
// num_hidden_layers) silently changes every result.
static status check_extra_tensor(const llama_hparams & hp, const tensor_info & t, const tensor_info & embed) {
    // Old transformers versions saved each layer's rotary inv_freq buffer. It is derived from
    // head_dim, rope_theta and rope_scaling of config.json, which is where llama_bind_weights
    // computes ours from, so skipping it changes nothing.
    if (t.name.rfind("model.layers.", 0) == 0 && ends_with(t.name, ".self_attn.rotary_emb.inv_freq")) return {};
    if (t.name == "lm_head.weight" && hp.tie_embeddings) {
        // transformers may save the tied head anyway; a copy of embed_tokens is harmless. A
        // different one means config and weights disagree about the output head: which of the
        // two a loader ends up using is an accident, so the user decides.
        if (t.st_dtype == embed.st_dtype && t.shape == embed.shape && std::memcmp(t.data, embed.data, (size_t) t.n_bytes) == 0) {
            return {};
        }
        status st = make_error(PEFT_STATUS_SHAPE, t.file, "tensor 'lm_head.weight' differs from model.embed_tokens.weight, "
                                                          "but config.json says tie_word_embeddings=true");
        st.hint = "set \"tie_word_embeddings\": false in config.json if the model has its own output head, or remove "
                  "lm_head.weight from the checkpoint if the embeddings are meant to be reused";
        return st;
    }
    status st = make_error(PEFT_STATUS_SHAPE, t.file, tensor_label(t.name) + " (" + t.describe() +
                                                          ") is not a parameter of the model config.json describes");
    const std::string layers = "model.layers.";
    if (t.name.rfind(layers, 0) == 0 && std::atoll(t.name.c_str() + layers.size()) >= hp.n_layer) {
        st.hint = "config.json says num_hidden_layers=" + std::to_string(hp.n_layer) + " but the checkpoint has more layers";
    } else if (is_proj_bias(t.name)) {
        st.hint = bias_hint(hp, t.name, false);
    } else {
        st.hint = "peft.cpp loads Llama, Mistral and Qwen2 decoders; is config.json from another model, or is this "
                  "checkpoint of an architecture with extra modules?";
    }
    return st;
}

status llama_load(llama_model & m, const std::string & dir, bool trainable, const quant_options * quant) {
    if (quant && trainable) {
        status st = make_error(PEFT_STATUS_CONFIG, dir, "load_in_4bit for a trainable model: full fine-tuning writes every "
                                                        "weight, and a 4-bit weight cannot take an update");
        st.hint = "train an adapter over the 4-bit base, or load the model without load_in_4bit";
        return st;
    }
    if (gguf_is_file(dir)) {
        if (quant) {
            status st = make_error(PEFT_STATUS_CONFIG, dir, "load_in_4bit for a GGUF model: its weights load in the types the file stores");
            st.hint = "drop load_in_4bit, or point --model at the Hugging Face directory to quantize it to NF4 at load";
            return st;
        }
        return llama_load_gguf(m, dir, trainable);
    }
    PEFT_TRY(llama_hparams_load(dir + "/config.json", m.hp));
    auto st_model = std::make_shared<safetensors_model>();
    PEFT_TRY(safetensors_open_model(dir, *st_model));

    // look everything up and validate before allocating
    std::vector<llama_tensor_spec> specs = llama_tensor_specs(m.hp);
    std::vector<const tensor_info *> found(specs.size());
    size_t copy_bytes = 0;
    for (size_t i = 0; i < specs.size(); i++) {
        const tensor_info * ti = st_model->find(specs[i].name);
        if (!ti) {
            status st = make_error(PEFT_STATUS_SHAPE, dir, "tensor '" + specs[i].name + "' is missing from the checkpoint");
            if (specs[i].name == "lm_head.weight") {
                st.hint = "config.json says tie_word_embeddings=false but there is no lm_head.weight; is the config from another model?";
            } else if (ends_with(specs[i].name, ".bias")) {
                st.hint = bias_hint(m.hp, specs[i].name, true);
            }
            return st;
        }
        PEFT_TRY(tensor_require_float(*ti));
        if (ti->shape != specs[i].shape) {
            return make_mismatch(PEFT_STATUS_SHAPE, ti->file, "tensor '" + specs[i].name + "' shape", shape_str(specs[i].shape),
                                 shape_str(ti->shape) + " (config.json and weights disagree)");
        }
        const bool quantized = quant && llama_is_proj_weight(specs[i].name);
        if (!trainable && specs[i].matrix && !ti->aligned && !quantized) copy_bytes += arena_align((size_t) ti->n_bytes);
        found[i] = ti;
    }
    std::unordered_set<std::string> wanted;
    for (const llama_tensor_spec & s : specs) wanted.insert(s.name);
    const tensor_info & embed = *st_model->find("model.embed_tokens.weight");
    for (const std::string & name : st_model->names()) {
        if (!wanted.count(name)) PEFT_TRY(check_extra_tensor(m.hp, *st_model->find(name), embed));
    }
    // One read of every used tensor: a NaN/Inf weight would otherwise surface late in eval and
    // train, and never in generate (garbage text) or merge (written out).
    std::vector<status> finite(specs.size());
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < (int64_t) specs.size(); i++) finite[(size_t) i] = tensor_require_finite(*found[(size_t) i]);
    for (const status & st : finite) PEFT_TRY(st);

    PEFT_TRY(llama_allocate(m, trainable, false, PEFT_DTYPE_F32));
    if (!m.storage_arena.reserve(copy_bytes)) return make_error(PEFT_STATUS_MEMORY, dir, "cannot allocate weight copies");
    std::vector<float> f32;   // one tensor at a time: the model never exists in full precision
    for (size_t i = 0; i < specs.size(); i++) {
        llama_tensor & t = m.tensors[i];
        const tensor_info & ti = *found[i];
        if (t.data) {  // f32 slot (trainable or small vector)
            PEFT_TRY(read_f32(ti, (float *) t.data));
        } else if (quant && llama_is_proj_weight(t.name)) {   // load_in_4bit
            t.type = ti.type;
            f32.resize((size_t) t.numel());
            PEFT_TRY(read_f32(ti, f32.data()));
            PEFT_TRY(llama_quantize_tensor(m, t, f32.data(), *quant));
        } else {       // frozen matrix: stays in its stored dtype
            t.type = ti.type;
            if (ti.aligned) {
                t.data = const_cast<void *>(ti.data);  // read-only mapping; never written
            } else {
                t.data = m.storage_arena.alloc_bytes((size_t) ti.n_bytes);
                std::memcpy(t.data, ti.data, (size_t) ti.n_bytes);
            }
        }
    }
    m.source = st_model;
    llama_bind_weights(m);
    return {};
}

} // namespace peft
