// llama_load.cpp: binds a Hugging Face model directory (config.json + safetensors, single or
// sharded) to a llama_model. Frozen matrices are used in place from the mapping when aligned
// (bf16 stays bf16); small vectors and trainable tensors are converted to f32.
#include <cstring>
#include <memory>

#include "io/safetensors.h"
#include "model/llama.h"

namespace peft {

void   llama_bind_weights(llama_model & m);                                  // llama.cpp
status llama_allocate(llama_model & m, bool trainable, bool own_frozen, dtype frozen_type);

static std::string shape_str(const std::vector<int64_t> & s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

status llama_load(llama_model & m, const std::string & dir, bool trainable) {
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
            }
            return st;
        }
        PEFT_TRY(tensor_require_float(*ti));
        if (ti->shape != specs[i].shape) {
            return make_mismatch(PEFT_STATUS_SHAPE, ti->file, "tensor '" + specs[i].name + "' shape", shape_str(specs[i].shape),
                                 shape_str(ti->shape) + " (config.json and weights disagree)");
        }
        if (!trainable && specs[i].matrix && !ti->aligned) copy_bytes += arena_align((size_t) ti->n_bytes);
        found[i] = ti;
    }

    PEFT_TRY(llama_allocate(m, trainable, false, PEFT_DTYPE_F32));
    if (!m.storage_arena.reserve(copy_bytes)) return make_error(PEFT_STATUS_MEMORY, dir, "cannot allocate weight copies");
    for (size_t i = 0; i < specs.size(); i++) {
        llama_tensor & t = m.tensors[i];
        const tensor_info & ti = *found[i];
        if (t.data) {  // f32 slot (trainable or small vector)
            PEFT_TRY(read_f32(ti, (float *) t.data));
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
