#include "model/llama_hparams.h"

#include <cmath>

#include "io/json.h"
#include "io/peft_format.h"

namespace peft {

namespace {

// Reads a non-negative integer field (value v of `key`); records an error in `st` if present but
// invalid, or if missing and required.
bool read_int_value(json_value v, const char * key, int64_t & out, const std::string & where, status & st, bool required) {
    if (!v.valid() || v.is_null()) {
        if (required && st.ok()) st = make_error(PEFT_STATUS_CONFIG, where, std::string("missing field \"") + key + "\"");
        return false;
    }
    if (!v.is_number() || v.as_int(-1) < 0 || (double) v.as_int(-1) != v.as_double()) {
        if (st.ok()) st = make_mismatch(PEFT_STATUS_CONFIG, where, std::string("field \"") + key + "\"", "a non-negative integer", v.dump());
        return false;
    }
    out = v.as_int();
    return true;
}

bool read_int(json_value obj, const char * key, int64_t & out, const std::string & where, status & st, bool required) {
    return read_int_value(obj.get(key), key, out, where, st, required);
}

bool read_float(json_value obj, const char * key, float & out, const std::string & where, status & st) {
    json_value v = obj.get(key);
    if (!v.valid() || v.is_null()) return false;
    if (!v.is_number()) {
        if (st.ok()) st = make_mismatch(PEFT_STATUS_CONFIG, where, std::string("field \"") + key + "\"", "a number", v.dump());
        return false;
    }
    out = (float) v.as_double();
    return true;
}

bool read_bool(json_value obj, const char * key, bool & out, const std::string & where, status & st) {
    json_value v = obj.get(key);
    if (!v.valid() || v.is_null()) return false;
    if (!v.is_bool()) {
        if (st.ok()) st = make_mismatch(PEFT_STATUS_CONFIG, where, std::string("field \"") + key + "\"", "true or false", v.dump());
        return false;
    }
    out = v.as_bool();
    return true;
}

} // namespace

static status hparams_from_json(json_value root, const std::string & where, llama_hparams & hp) {
    if (!root.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, where, "config", "a JSON object", root.dump().substr(0, 40));

    hp = llama_hparams();
    json_value mt = root.get("model_type");
    if (!mt.is_string()) {
        return make_error(PEFT_STATUS_CONFIG, where, "missing field \"model_type\" (expected \"llama\", \"mistral\" or \"qwen2\")");
    }
    hp.arch = mt.as_string();
    if (hp.arch != "llama" && hp.arch != "mistral" && hp.arch != "qwen2") {
        status st = make_mismatch(PEFT_STATUS_CONFIG, where, "unsupported architecture \"model_type\"",
                                  "one of llama, mistral, qwen2", "\"" + hp.arch + "\"");
        st.hint = "peft.cpp trains Llama-family decoders (Llama 2/3, TinyLlama, SmolLM, Mistral, Qwen2/2.5)";
        return st;
    }

    status st;
    read_int(root, "vocab_size", hp.n_vocab, where, st, true);
    read_int(root, "hidden_size", hp.n_embd, where, st, true);
    read_int(root, "num_hidden_layers", hp.n_layer, where, st, true);
    read_int(root, "num_attention_heads", hp.n_head, where, st, true);
    read_int(root, "intermediate_size", hp.n_ff, where, st, true);
    if (!read_int(root, "num_key_value_heads", hp.n_head_kv, where, st, false)) hp.n_head_kv = hp.n_head;
    if (!read_int(root, "head_dim", hp.head_dim, where, st, false)) hp.head_dim = hp.n_head > 0 ? hp.n_embd / hp.n_head : 0;
    read_int(root, "max_position_embeddings", hp.max_position, where, st, false);
    read_float(root, "rms_norm_eps", hp.rms_eps, where, st);
    read_float(root, "rope_theta", hp.rope.theta, where, st);
    read_bool(root, "tie_word_embeddings", hp.tie_embeddings, where, st);
    if (hp.arch == "qwen2") {
        hp.qkv_bias = true;   // Qwen2Attention hard-codes these and reads no bias flag
    } else {
        read_bool(root, "attention_bias", hp.o_bias, where, st);
        hp.qkv_bias = hp.o_bias;
        read_bool(root, "mlp_bias", hp.mlp_bias, where, st);
    }
    const json_value res = root.get("peft_residual_init");
    if (res.valid() && !res.is_null()) {
        if (!res.is_string()) return make_mismatch(PEFT_STATUS_CONFIG, where, "field \"peft_residual_init\"", "an init name", res.dump());
        hp.residual_init = res.as_string();
    }
    read_int(root, "bos_token_id", hp.bos_id, where, st, false);
    // Llama 3.1 lists several end tokens: the first one ends generation
    const json_value eos = root.get("eos_token_id");
    read_int_value(eos.is_array() ? eos.at(0) : eos, "eos_token_id", hp.eos_id, where, st, false);
    PEFT_TRY(st);

    json_value act = root.get("hidden_act");
    if (act.valid() && !act.is_null() && act.as_string() != "silu") {
        return make_mismatch(PEFT_STATUS_CONFIG, where, "field \"hidden_act\"", "\"silu\"", act.dump());
    }

    json_value rs = root.get("rope_scaling");
    if (rs.valid() && !rs.is_null()) {
        if (!rs.is_object()) return make_mismatch(PEFT_STATUS_CONFIG, where, "field \"rope_scaling\"", "an object or null", rs.dump());
        std::string type = rs.get("rope_type").as_string(rs.get("type").as_string());
        if (type == "llama3") {
            hp.rope.llama3 = true;
            read_float(rs, "factor", hp.rope.factor, where, st);
            read_float(rs, "low_freq_factor", hp.rope.low_freq_factor, where, st);
            read_float(rs, "high_freq_factor", hp.rope.high_freq_factor, where, st);
            read_int(rs, "original_max_position_embeddings", hp.rope.original_max_position, where, st, true);
            PEFT_TRY(st);
        } else if (type != "default") {
            return make_mismatch(PEFT_STATUS_CONFIG, where, "field \"rope_scaling.rope_type\"", "\"llama3\" or \"default\"",
                                 "\"" + type + "\"");
        }
    }
    return llama_hparams_validate(hp, where);
}

status llama_hparams_validate(const llama_hparams & hp, const std::string & where) {
    auto bad = [&](const char * what, const std::string & expected, int64_t got) {
        return make_mismatch(PEFT_STATUS_CONFIG, where, what, expected, std::to_string(got));
    };
    const int64_t LIMIT = 1 << 24;  // refuse absurd sizes before planning memory
    if (hp.n_vocab <= 0 || hp.n_vocab > LIMIT) return bad("vocab_size", "1.." + std::to_string(LIMIT), hp.n_vocab);
    if (hp.n_embd <= 0 || hp.n_embd > 65536) return bad("hidden_size", "1..65536", hp.n_embd);
    if (hp.n_layer <= 0 || hp.n_layer > 1024) return bad("num_hidden_layers", "1..1024", hp.n_layer);
    if (hp.n_head <= 0 || hp.n_head > 1024) return bad("num_attention_heads", "1..1024", hp.n_head);
    if (hp.n_ff <= 0 || hp.n_ff > LIMIT) return bad("intermediate_size", "1.." + std::to_string(LIMIT), hp.n_ff);
    if (hp.n_head_kv <= 0 || hp.n_head % hp.n_head_kv != 0) {
        return bad("num_key_value_heads", "a divisor of num_attention_heads (" + std::to_string(hp.n_head) + ")", hp.n_head_kv);
    }
    if (hp.head_dim <= 0 || hp.head_dim % 2 != 0 || hp.head_dim > 1024) return bad("head_dim", "an even number in 2..1024", hp.head_dim);
    // finite too: a double beyond the float range (1e300) reads as inf
    if (!(hp.rms_eps > 0.0f && std::isfinite(hp.rms_eps))) return make_error(PEFT_STATUS_CONFIG, where, "rms_norm_eps must be positive and finite");
    if (!(hp.rope.theta > 0.0f && std::isfinite(hp.rope.theta))) return make_error(PEFT_STATUS_CONFIG, where, "rope_theta must be positive and finite");
    if (hp.rope.llama3 && !(hp.rope.factor > 0.0f && hp.rope.high_freq_factor > hp.rope.low_freq_factor &&
                            hp.rope.original_max_position > 0)) {
        return make_error(PEFT_STATUS_CONFIG, where, "rope_scaling (llama3): need factor > 0, high_freq_factor > low_freq_factor, "
                                                     "original_max_position_embeddings > 0");
    }
    return {};
}

std::string llama_hparams_config_json(const llama_hparams & hp, const std::string & torch_dtype) {
    const bool qwen = hp.arch == "qwen2";
    auto num = [](double v) { return json_python_float(v); };
    auto b = [](bool v) { return v ? "true" : "false"; };
    std::string rope = "null";
    if (hp.rope.llama3) {
        rope = "{\"rope_type\": \"llama3\", \"factor\": " + num(hp.rope.factor) + ", \"low_freq_factor\": " + num(hp.rope.low_freq_factor) +
               ", \"high_freq_factor\": " + num(hp.rope.high_freq_factor) + ", \"original_max_position_embeddings\": " +
               std::to_string(hp.rope.original_max_position) + "}";
    }
    std::string s = "{\n";
    auto add = [&](const std::string & k, const std::string & v) { s += "  \"" + k + "\": " + v + ",\n"; };
    add("architectures", qwen ? "[\"Qwen2ForCausalLM\"]" : hp.arch == "mistral" ? "[\"MistralForCausalLM\"]" : "[\"LlamaForCausalLM\"]");
    add("model_type", json_quote(hp.arch));
    add("vocab_size", std::to_string(hp.n_vocab));
    add("hidden_size", std::to_string(hp.n_embd));
    add("intermediate_size", std::to_string(hp.n_ff));
    add("num_hidden_layers", std::to_string(hp.n_layer));
    add("num_attention_heads", std::to_string(hp.n_head));
    add("num_key_value_heads", std::to_string(hp.n_head_kv));
    add("head_dim", std::to_string(hp.head_dim));
    add("max_position_embeddings", std::to_string(hp.max_position));
    add("rms_norm_eps", num(hp.rms_eps));
    add("rope_theta", num(hp.rope.theta));
    add("rope_scaling", rope);
    add("tie_word_embeddings", b(hp.tie_embeddings));
    if (!qwen) {
        add("attention_bias", b(hp.o_bias));
        add("mlp_bias", b(hp.mlp_bias));
    }
    if (hp.bos_id >= 0) add("bos_token_id", std::to_string(hp.bos_id));
    if (hp.eos_id >= 0) add("eos_token_id", std::to_string(hp.eos_id));
    add("hidden_act", "\"silu\"");
    s += "  \"torch_dtype\": " + json_quote(torch_dtype) + "\n}\n";
    return s;
}

status llama_hparams_parse(const std::string & text, const std::string & where, llama_hparams & out) {
    json_document doc;
    PEFT_TRY(doc.parse(text.data(), text.size(), where, 16u << 20));
    return hparams_from_json(doc.root(), where, out);
}

status llama_hparams_load(const std::string & path, llama_hparams & out) {
    json_document doc;
    status st = doc.parse_file(path, 16u << 20);
    if (!st.ok()) {
        if (st.code == PEFT_STATUS_IO) st.hint = "a Hugging Face model directory holds config.json next to model.safetensors";
        return st;
    }
    return hparams_from_json(doc.root(), path, out);
}

bool llama_hparams_named_shape(const std::string & name, llama_hparams & hp) {
    hp = llama_hparams();
    hp.rms_eps = 1e-5f;
    if (name == "tiny") {
        hp.n_vocab = 4096; hp.n_embd = 256; hp.n_layer = 4; hp.n_head = 8; hp.n_head_kv = 8; hp.n_ff = 688;
    } else if (name == "small") {
        hp.n_vocab = 32000; hp.n_embd = 768; hp.n_layer = 12; hp.n_head = 12; hp.n_head_kv = 12; hp.n_ff = 2048;
    } else if (name == "1b") {
        hp.n_vocab = 32000; hp.n_embd = 2048; hp.n_layer = 22; hp.n_head = 32; hp.n_head_kv = 4; hp.n_ff = 5632;
    } else {
        return false;
    }
    hp.head_dim = hp.n_embd / hp.n_head;
    return true;
}

} // namespace peft
