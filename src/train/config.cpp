// config.cpp: `peft train` options from YAML/JSON files and flags (see config.h).
// The only translation unit that includes yaml-cpp: YAML is converted to JSON text right here,
// so everything downstream validates one representation with one set of messages.
#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "adapters/adapter_set.h"
#include "core/option.h"
#include "core/quant.h"
#include "io/json.h"
#include "train/optim.h"

namespace peft {

namespace {


// A trainer key, or (adapter = true) a key of the registered adapter methods, passed through to
// adapters_attach and checked there.
struct key_def {
    option_def opt;
    bool       adapter;
};


// The trainer's own keys; the adapter methods' come from adapter_method_options().
const option_def TRAINER_KEYS[] = {
    {"base_model", OPT_STRING, "(required)", "Hugging Face model directory (config.json + *.safetensors) or F32/F16/BF16 .gguf file"},
    {"tokenizer_config", OPT_STRING, "base_model", "tokenizer directory or file"},
    {"random_init", OPT_BOOL, "false", "adapter: full only: start from random weights (pretraining from config.json)"},
    {"datasets", OPT_DATASETS, "(required)", "list of {path, type}: JSONL (text / alpaca / messages / input_ids) or .txt"},
    {"test_datasets", OPT_DATASETS, "[]", "held-out files evaluated as they are (not shuffled)"},
    {"output_dir", OPT_STRING, "output", "where the adapter (or model), checkpoints, metrics and report go"},
    {"adapter", OPT_STRING, "lora", "an adapter method (listed with its keys below), or full (every weight trained)"},
    {"adapter_args", OPT_OBJECT, "{}", "extra keys passed to the adapter method as they are"},
    {"learning_rate", OPT_FLOAT, "2e-4", "peak learning rate"},
    {"num_epochs", OPT_INT, "1", "passes over the training rows"},
    {"max_steps", OPT_INT, "0", "optimizer steps; > 0 overrides num_epochs"},
    {"micro_batch_size", OPT_INT, "1", "rows per forward/backward (per rank under mpirun)"},
    {"gradient_accumulation_steps", OPT_INT, "1", "micro-batches per optimizer step"},
    {"sequence_len", OPT_INT, "min(2048, max_position_embeddings)", "tokens per row"},
    {"sample_packing", OPT_BOOL, "true", "pack several samples per row (attention stays within a sample)"},
    {"train_on_inputs", OPT_BOOL, "false", "also train on prompt tokens"},
    {"chat_template", OPT_STRING, "auto", "llama3, chatml, llama2, alpaca or plain"},
    {"lr_scheduler", OPT_STRING, "cosine", "constant, linear or cosine (after warmup)"},
    {"warmup_steps", OPT_INT, "0", "linear warmup steps"},
    {"warmup_ratio", OPT_FLOAT, "0", "warmup as a fraction of all steps (when warmup_steps is 0)"},
    {"weight_decay", OPT_FLOAT, "0", "AdamW decoupled weight decay"},
    {"adam_beta1", OPT_FLOAT, "0.9", "AdamW beta1"},
    {"adam_beta2", OPT_FLOAT, "0.999", "AdamW beta2"},
    {"adam_epsilon", OPT_FLOAT, "1e-8", "AdamW epsilon"},
    {"max_grad_norm", OPT_FLOAT, "1.0", "global gradient-norm clip; 0 disables"},
    {"optimizer", OPT_STRING, "adamw", "adamw, or galore_adamw (adapter: full; Adam state in a low-rank gradient projection)"},
    {"galore_rank", OPT_INT, "128", "galore_adamw: rank of the projection of every attn/mlp weight's gradient"},
    {"galore_update_proj_gap", OPT_INT, "200", "galore_adamw: steps between projector refreshes (SVD of the gradient)"},
    {"galore_scale", OPT_FLOAT, "0.25", "galore_adamw: scale of the projected-back update"},
    {"galore_proj_type", OPT_STRING, "std", "galore_adamw: std, reverse_std, right, left or full (the sides projected)"},
    {"galore_svd", OPT_STRING, "randomized", "galore_adamw: exact (LAPACK SVD of the gradient, the reference's) or randomized (range finder + power iterations at the rank: far cheaper) projector refresh"},
    {"galore_svd_niter", OPT_INT, "2", "galore_adamw with galore_svd: randomized: power iterations of the range finder"},
    {"galore_per_layer", OPT_BOOL, "false", "galore_adamw: update each weight as soon as backward finishes its gradient and free that gradient (never all at once); needs max_grad_norm: 0 and gradient_accumulation_steps: 1"},
    {"galore_target_modules", OPT_STRING, "attn,mlp", "galore_adamw: comma-separated name parts of the 2-D weights projected (add embed_tokens,lm_head to project those too)"},
    {"seed", OPT_INT, "42", "seed of adapter init, shuffling and dropout"},
    {"val_set_size", OPT_FLOAT, "0", "fraction of samples held out for evaluation"},
    {"eval_steps", OPT_INT, "0", "evaluate every N steps (0: at the end only)"},
    {"save_steps", OPT_INT, "0", "checkpoint every N steps (0: none besides the final output)"},
    {"save_total_limit", OPT_INT, "0", "keep at most N checkpoints (0: all)"},
    {"logging_steps", OPT_INT, "1", "metrics line every N steps"},
    {"save_dtype", OPT_STRING, "f32", "adapter: full: dtype of the final model.safetensors (f32, bf16, f16)"},
    {"threads", OPT_INT, "physical cores", "compute threads"},
    {"gradient_checkpointing", OPT_BOOL, "false", "recompute activations in backward (less memory)"},
    {"bf16", OPT_BOOL, "false", "frozen-base GEMMs in bf16 with f32 accumulation (adapter, grads, optimizer stay f32)"},
    {"load_in_4bit", OPT_BOOL, "false", "QLoRA: quantize the frozen q/k/v/o/gate/up/down weights to 4 bits at load (adapters only)"},
    {"bnb_4bit_quant_type", OPT_STRING, "nf4", "4-bit type (nf4, bitsandbytes' NormalFloat4)"},
    {"bnb_4bit_use_double_quant", OPT_BOOL, "false", "also quantize the per-block scales (8-bit, blocks of 256): ~4.13 bits/param"},
    {"bnb_4bit_compute_dtype", OPT_STRING, "float32", "dtype of the dequantized weights: float32 or bfloat16 (activations stay f32)"},
    {"resume_from_checkpoint", OPT_BOOL_OR_STRING, "none", "a checkpoint-N directory, or true/latest for the newest in output_dir"},
    {"progress", OPT_BOOL, "true", "progress bar (a TTY) or periodic lines on stderr"},
    {"skip_bad_lines", OPT_BOOL, "false", "count and skip malformed data lines instead of stopping at the first"},
};

// Other spellings people bring from axolotl / transformers for the trainer's keys (the methods'
// keys carry their own: option_def::alias).
const std::pair<const char *, const char *> TRAINER_ALIASES[] = {
    {"num_train_epochs", "num_epochs"},
    {"per_device_train_batch_size", "micro_batch_size"},
    {"lr_scheduler_type", "lr_scheduler"},
    {"tokenizer", "tokenizer_config"},
    {"max_seq_length", "sequence_len"},
};

// Every key: the trainer's, then the adapter methods' (one list, built once).
const std::vector<key_def> & all_keys() {
    static const std::vector<key_def> keys = [] {
        std::vector<key_def> k;
        for (const option_def & d : TRAINER_KEYS) k.push_back({d, false});
        for (const option_def & d : adapter_method_options()) k.push_back({d, true});
        return k;
    }();
    return keys;
}

const key_def * find_key(const std::string & name) {
    for (const key_def & k : all_keys()) {
        if (name == k.opt.name) return &k;
    }
    return nullptr;
}

// Every alias: the trainer's, then those the methods' keys declare.
const std::vector<std::pair<std::string, std::string>> & aliases() {
    static const std::vector<std::pair<std::string, std::string>> all = [] {
        std::vector<std::pair<std::string, std::string>> a(std::begin(TRAINER_ALIASES), std::end(TRAINER_ALIASES));
        for (const key_def & k : all_keys()) {
            if (k.opt.alias) a.emplace_back(k.opt.alias, k.opt.name);
        }
        return a;
    }();
    return all;
}

std::string canonical(std::string name) {
    std::replace(name.begin(), name.end(), '-', '_');
    for (const auto & a : aliases()) {
        if (name == a.first) return a.second;
    }
    return name;
}

size_t edit_distance(const std::string & a, const std::string & b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
        }
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

status unknown_key(const std::string & where, const std::string & key) {
    status st = make_error(PEFT_STATUS_CONFIG, where, "unknown key '" + key + "'");
    const std::string s = config_suggest(key);
    st.hint = s.empty() ? "see `peft train --help` for the list of keys" : "did you mean '" + s + "'?";
    if (!s.empty()) st.message += " (did you mean '" + s + "'?)";
    return st;
}

bool parse_double(const std::string & s, double & out) {
    if (s.empty()) return false;
    errno = 0;
    char * end = nullptr;
    out = std::strtod(s.c_str(), &end);
    return errno == 0 && end == s.c_str() + s.size() && std::isfinite(out);
}

bool parse_int(const std::string & s, int64_t & out) {
    if (s.empty()) return false;
    errno = 0;
    char * end = nullptr;
    out = std::strtoll(s.c_str(), &end, 10);
    return errno == 0 && end == s.c_str() + s.size();
}

// The shortest of %.15g..%.17g that reads back as v (0.9, not 0.90000000000000002).
std::string number_text(double v) {
    char b[64];
    for (int p = 15; p <= 17; ++p) {
        std::snprintf(b, sizeof b, "%.*g", p, v);
        if (std::strtod(b, nullptr) == v) break;
    }
    return b;
}

// A plain (unquoted) YAML scalar as JSON: null, bool, integer, float, else a string. YAML 1.2
// rules, so `2e-4` is a number (PyYAML's YAML 1.1 reading it as a string is a known trap).
std::string yaml_plain_scalar_json(const std::string & s) {
    if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return "null";
    if (s == "true" || s == "True" || s == "TRUE") return "true";
    if (s == "false" || s == "False" || s == "FALSE") return "false";
    int64_t i;
    if (parse_int(s, i)) return std::to_string(i);
    double d;
    if (s.find_first_not_of("0123456789+-.eE") == std::string::npos && parse_double(s, d)) return number_text(d);
    return json_quote(s);
}

const size_t CONFIG_MAX_BYTES = (size_t) 16 << 20;
// yaml-cpp shares aliased nodes, so a few lines of nested aliases (`b: [*a, *a, ...]`) expand to
// exponentially large JSON. Real configs are a few KB; 1 MiB also keeps such a file quick to refuse.
const size_t YAML_MAX_JSON_BYTES = (size_t) 1 << 20;

status yaml_to_json(const YAML::Node & n, const std::string & where, int depth, std::string & out) {
    if (depth > 64) return make_error(PEFT_STATUS_FORMAT, where, "nesting deeper than 64");
    if (out.size() > YAML_MAX_JSON_BYTES) {
        return make_error(PEFT_STATUS_FORMAT, where, "the YAML config expands to more than 1 MiB of values (nested aliases?)");
    }
    switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: out += "null"; return {};
    case YAML::NodeType::Scalar:
        out += n.Tag() == "!" ? json_quote(n.Scalar()) : yaml_plain_scalar_json(n.Scalar());
        return {};
    case YAML::NodeType::Sequence: {
        out += "[";
        bool first = true;
        for (const YAML::Node & c : n) {
            if (!first) out += ",";
            first = false;
            PEFT_TRY(yaml_to_json(c, where, depth + 1, out));
        }
        out += "]";
        return {};
    }
    case YAML::NodeType::Map: {
        out += "{";
        bool first = true;
        for (const auto & kv : n) {
            if (!first) out += ",";
            first = false;
            if (!kv.first.IsScalar()) {
                return make_error(PEFT_STATUS_FORMAT, where + ":" + std::to_string(kv.first.Mark().line + 1), "a mapping key must be a plain string");
            }
            out += json_quote(kv.first.Scalar()) + ":";
            PEFT_TRY(yaml_to_json(kv.second, where, depth + 1, out));
        }
        out += "}";
        return {};
    }
    }
    return {};
}

std::string kind_name(option_kind k) {
    switch (k) {
    case OPT_STRING: return "a string";
    case OPT_INT: return "an integer";
    case OPT_FLOAT: return "a number";
    case OPT_BOOL: return "true or false";
    case OPT_TARGETS: return "a list of module names or one string";
    case OPT_INT_LIST: return "a list of integers";
    case OPT_OBJECT: return "an object";
    case OPT_DATASETS: return "a list of {path, type}";
    case OPT_BOOL_OR_STRING: return "true, false or a string";
    case OPT_KIND_COUNT: break;
    }
    return "?";
}

const char * DATASET_TYPES[] = {"alpaca", "chat_template", "completion", "text", "pretokenized", "input_output", "messages"};

} // namespace

void config_entries::set(const std::string & key, const std::string & json_text) {
    for (auto & kv : items) {
        if (kv.first == key) {
            kv.second = json_text;
            return;
        }
    }
    items.emplace_back(key, json_text);
}

const std::string * config_entries::get(const std::string & key) const {
    for (const auto & kv : items) {
        if (kv.first == key) return &kv.second;
    }
    return nullptr;
}

std::string config_suggest(const std::string & key) {
    const std::string k = canonical(key);
    // Common short forms first: "lr" is one edit away from "r", which is not what was meant.
    if (k == "lr") return "learning_rate";
    if (k == "epochs") return "num_epochs";
    if (k == "batch_size") return "micro_batch_size";
    std::string best;
    size_t best_d = (size_t) -1;
    for (const key_def & d : all_keys()) {
        const size_t e = edit_distance(k, d.opt.name);
        if (e < best_d) {
            best_d = e;
            best = d.opt.name;
        }
    }
    for (const auto & a : aliases()) {
        const size_t e = edit_distance(k, a.first);
        if (e < best_d) {
            best_d = e;
            best = a.second;
        }
    }
    // Close enough to be a typo; or the key is a prefix/extension of a known one (lr -> ...).
    const size_t limit = std::max<size_t>(2, k.size() / 3);
    if (best_d <= limit) return best;
    for (const key_def & d : all_keys()) {
        const std::string n = d.opt.name;
        if (k.size() >= 3 && (n.find(k) != std::string::npos || k.find(n) != std::string::npos)) return n;
    }
    return "";
}

status config_parse_text(const std::string & text, const std::string & where, config_entries & out) {
    std::string json;
    size_t first = text.find_first_not_of(" \t\r\n");
    const bool is_json = first != std::string::npos && text[first] == '{';
    if (!is_json) {
        YAML::Node root;
        try {
            root = YAML::Load(text);
        } catch (const YAML::Exception & e) {
            return make_error(PEFT_STATUS_FORMAT, where + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1),
                              "YAML: " + e.msg);
        }
        if (!root.IsMap()) {
            status st = make_error(PEFT_STATUS_FORMAT, where, "the config must be a mapping of keys to values");
            st.hint = "write one `key: value` per line, e.g. `base_model: ./TinyLlama-1.1B`";
            return st;
        }
        try {
            PEFT_TRY(yaml_to_json(root, where, 0, json));
        } catch (const YAML::Exception & e) {
            return make_error(PEFT_STATUS_FORMAT, where, std::string("YAML: ") + e.what());
        }
    } else {
        json = text;
    }
    json_document doc;
    PEFT_TRY(doc.parse(json.data(), json.size(), where, CONFIG_MAX_BYTES));
    const json_value r = doc.root();
    if (!r.is_object()) return make_error(PEFT_STATUS_FORMAT, where, "the config must be a JSON object");
    for (size_t i = 0; i < r.size(); ++i) {
        const std::string key = canonical(r.key_at(i));
        if (!find_key(key)) return unknown_key(where, r.key_at(i));
        out.set(key, r.value_at(i).dump());
    }
    return {};
}

status config_load_file(const std::string & path, config_entries & out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return make_error(PEFT_STATUS_IO, path, "cannot open config file");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) return make_error(PEFT_STATUS_IO, path, "read error");
    std::string text = ss.str();
    if (text.size() > CONFIG_MAX_BYTES) return make_error(PEFT_STATUS_FORMAT, path, "config file larger than 16 MiB");
    const bool json_ext = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
    if (json_ext) {
        // Parse as JSON even if it does not start with '{' so that the error is a JSON one.
        json_document doc;
        PEFT_TRY(doc.parse(text.data(), text.size(), path, CONFIG_MAX_BYTES));
        if (!doc.root().is_object()) return make_error(PEFT_STATUS_FORMAT, path, "the config must be a JSON object");
    }
    return config_parse_text(text, path, out);
}

bool config_flag_is_bool(const std::string & name) {
    const key_def * k = find_key(canonical(name));
    return k && k->opt.kind == OPT_BOOL;
}

status config_set_flag(config_entries & e, const std::string & name, const std::string & value) {
    const std::string key = canonical(name);
    const key_def * k = find_key(key);
    const std::string where = "--" + name;
    if (!k) {
        status st = make_error(PEFT_STATUS_ARGUMENT, where, "unknown option");
        const std::string s = config_suggest(name);
        if (!s.empty()) {
            st.message += " (did you mean '--" + s + "'?)";
            st.hint = "did you mean '--" + s + "'?";
        } else {
            st.hint = "see `peft train --help`";
        }
        return st;
    }
    auto split = [](const std::string & v) {
        std::vector<std::string> parts;
        size_t p = 0;
        while (p <= v.size()) {
            size_t c = v.find(',', p);
            if (c == std::string::npos) c = v.size();
            std::string s = v.substr(p, c - p);
            s.erase(0, s.find_first_not_of(" \t"));
            s.erase(s.find_last_not_of(" \t") + 1);
            if (!s.empty()) parts.push_back(s);
            p = c + 1;
        }
        return parts;
    };
    const bool json_like = !value.empty() && (value[0] == '[' || value[0] == '{');
    std::string json;
    switch (k->opt.kind) {
    case OPT_STRING: json = json_quote(value); break;
    case OPT_INT: {
        int64_t i;
        if (!parse_int(value, i)) return make_mismatch(PEFT_STATUS_ARGUMENT, where, "value", "an integer", "'" + value + "'");
        json = std::to_string(i);
        break;
    }
    case OPT_FLOAT: {
        double d;
        if (!parse_double(value, d)) return make_mismatch(PEFT_STATUS_ARGUMENT, where, "value", "a number", "'" + value + "'");
        json = number_text(d);
        break;
    }
    case OPT_BOOL:
        if (value == "true" || value == "1" || value == "yes" || value == "on") json = "true";
        else if (value == "false" || value == "0" || value == "no" || value == "off") json = "false";
        else return make_mismatch(PEFT_STATUS_ARGUMENT, where, "value", "true or false", "'" + value + "'");
        break;
    case OPT_BOOL_OR_STRING:
        if (value == "true" || value == "false") json = value;
        else json = json_quote(value);
        break;
    case OPT_TARGETS:
        if (json_like) json = value;
        else if (value == "all-linear") json = json_quote(value);
        else {
            json = "[";
            for (const std::string & s : split(value)) json += (json.size() > 1 ? "," : "") + json_quote(s);
            json += "]";
        }
        break;
    case OPT_INT_LIST:
        if (json_like) json = value;
        else {
            json = "[";
            for (const std::string & s : split(value)) {
                int64_t i;
                if (!parse_int(s, i)) return make_mismatch(PEFT_STATUS_ARGUMENT, where, "value", "comma-separated integers", "'" + value + "'");
                json += (json.size() > 1 ? "," : "") + std::to_string(i);
            }
            json += "]";
        }
        break;
    case OPT_OBJECT:
        if (value.empty() || value[0] != '{') return make_mismatch(PEFT_STATUS_ARGUMENT, where, "value", "a JSON object", "'" + value + "'");
        json = value;
        break;
    case OPT_DATASETS:
        if (json_like) json = value;
        else {
            json = "[";
            for (const std::string & s : split(value)) json += (json.size() > 1 ? "," : "") + std::string("{\"path\":") + json_quote(s) + "}";
            json += "]";
        }
        break;
    case OPT_KIND_COUNT: break;
    }
    // Reject malformed JSON text now, where the flag can still be named.
    json_document doc;
    status st = doc.parse(json.data(), json.size(), where);
    if (!st.ok()) {
        st.code = PEFT_STATUS_ARGUMENT;
        return st;
    }
    e.set(key, json);
    return {};
}

namespace {

// Typed readers of one entry; `v` is the parsed value and `key` names it in messages.
struct reader {
    std::string where;  // "config"

    status type_error(const std::string & key, option_kind kind, const json_value & v) const {
        return make_mismatch(PEFT_STATUS_CONFIG, where, "key '" + key + "'", kind_name(kind), v.dump());
    }
    status range_error(const std::string & key, const std::string & expected, const json_value & v) const {
        return make_mismatch(PEFT_STATUS_CONFIG, where, "key '" + key + "'", expected, v.dump());
    }
    status get_int(const std::string & key, const json_value & v, int64_t lo, int64_t hi, int64_t & out) const {
        if (!v.is_number() || v.as_double() != std::floor(v.as_double())) return type_error(key, OPT_INT, v);
        // as_int, not a cast of the double: 2^63 compares equal to (double) INT64_MAX, and
        // converting it to int64 is undefined; as_int gives the fallback for what int64 cannot hold
        const int64_t x = v.as_int(INT64_MIN);
        if (x == INT64_MIN || x < lo || x > hi) {
            return range_error(key, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", v);
        }
        out = x;
        return {};
    }
    status get_float(const std::string & key, const json_value & v, double lo, double hi, bool lo_open, bool hi_open, double & out) const {
        if (!v.is_number()) return type_error(key, OPT_FLOAT, v);
        const double d = v.as_double();
        const bool ok = std::isfinite(d) && (lo_open ? d > lo : d >= lo) && (hi_open ? d < hi : d <= hi);
        if (!ok) {
            return range_error(key, std::string("a number in ") + (lo_open ? "(" : "[") + number_text(lo) + ", " + number_text(hi) +
                                        (hi_open ? ")" : "]"), v);
        }
        out = d;
        return {};
    }
    status get_bool(const std::string & key, const json_value & v, bool & out) const {
        if (!v.is_bool()) return type_error(key, OPT_BOOL, v);
        out = v.as_bool();
        return {};
    }
    status get_string(const std::string & key, const json_value & v, std::string & out) const {
        if (v.is_string()) out = v.as_string();
        else if (v.is_number()) out = v.dump();   // output_dir: 123 in YAML
        else return type_error(key, OPT_STRING, v);
        return {};
    }
    status get_datasets(const std::string & key, const json_value & v, std::vector<dataset_spec> & out) const {
        out.clear();
        auto one = [&](const json_value & d, size_t i) -> status {
            const std::string w = key + "[" + std::to_string(i) + "]";
            dataset_spec s;
            if (d.is_string()) {
                s.path = d.as_string();
            } else if (d.is_object()) {
                for (size_t j = 0; j < d.size(); ++j) {
                    const std::string k = d.key_at(j);
                    const json_value x = d.value_at(j);
                    if (k == "path") {
                        if (!x.is_string()) return make_mismatch(PEFT_STATUS_CONFIG, where, w + ".path", "a string", x.dump());
                        s.path = x.as_string();
                    } else if (k == "type") {
                        if (x.is_null()) continue;
                        if (!x.is_string()) return make_mismatch(PEFT_STATUS_CONFIG, where, w + ".type", "a string", x.dump());
                        s.type = x.as_string();
                        bool known = false;
                        for (const char * t : DATASET_TYPES) known = known || s.type == t;
                        if (!known) {
                            std::string list;
                            for (const char * t : DATASET_TYPES) list += std::string(list.empty() ? "" : ", ") + t;
                            status st = make_mismatch(PEFT_STATUS_CONFIG, where, w + ".type", "one of " + list, x.dump());
                            st.hint = "the type is optional: the loader recognises text, alpaca, messages and input_ids lines by their fields";
                            return st;
                        }
                    } else {
                        status st = make_error(PEFT_STATUS_CONFIG, where, w + ": unknown key '" + k + "'");
                        st.hint = "a dataset entry has `path` and an optional `type`";
                        return st;
                    }
                }
            } else {
                return make_mismatch(PEFT_STATUS_CONFIG, where, w, "{path, type} or a path string", d.dump());
            }
            if (s.path.empty()) return make_error(PEFT_STATUS_CONFIG, where, w + ": `path` is required");
            out.push_back(s);
            return {};
        };
        if (v.is_string() || v.is_object()) return one(v, 0);
        if (!v.is_array()) return type_error(key, OPT_DATASETS, v);
        for (size_t i = 0; i < v.size(); ++i) PEFT_TRY(one(v.at(i), i));
        return {};
    }
};

} // namespace

status config_build(const config_entries & e, train_options & o, bool allow_incomplete) {
    o = train_options{};
    reader rd{"config"};
    std::string adapter_members;   // "\"r\":8,..."
    std::string adapter_args;      // members of adapter_args
    std::vector<std::string> galore_keys;   // galore_* keys given (they need optimizer: galore_adamw)
    bool have_base = false, have_data = false;
    for (const auto & kv : e.items) {
        const std::string & key = kv.first;
        const key_def * k = find_key(key);
        if (!k) return unknown_key("config", key);
        json_document doc;
        PEFT_TRY(doc.parse(kv.second.data(), kv.second.size(), "config key '" + key + "'"));
        const json_value v = doc.root();
        if (v.is_null()) continue;   // `key:` with no value = default
        if (k->adapter) {
            // Type checks here; meaning and ranges are the adapter method's (configure()).
            bool ok = true;
            switch (k->opt.kind) {
            case OPT_INT: {
                int64_t tmp;
                PEFT_TRY(rd.get_int(key, v, 1, (int64_t) 1 << 20, tmp));
                break;
            }
            case OPT_STRING: ok = v.is_string(); break;
            case OPT_FLOAT: ok = v.is_number(); break;
            case OPT_BOOL: ok = v.is_bool(); break;
            case OPT_BOOL_OR_STRING: ok = v.is_bool() || v.is_string(); break;
            case OPT_TARGETS: {
                ok = v.is_string() || v.is_array();
                for (size_t i = 0; ok && v.is_array() && i < v.size(); ++i) ok = v.at(i).is_string();
                break;
            }
            case OPT_INT_LIST: {
                ok = v.is_integer() || v.is_array();
                for (size_t i = 0; ok && v.is_array() && i < v.size(); ++i) ok = v.at(i).is_integer();
                break;
            }
            case OPT_OBJECT: ok = v.is_object(); break;
            default: break;
            }
            if (!ok) return rd.type_error(key, k->opt.kind, v);
            adapter_members += (adapter_members.empty() ? "" : ",") + json_quote(key) + ":" + v.dump();
            continue;
        }
        double d = 0;
        int64_t i = 0;
        const int64_t BIG = (int64_t) 1 << 40;
        if (key == "base_model") { PEFT_TRY(rd.get_string(key, v, o.base_model)); have_base = !o.base_model.empty(); }
        else if (key == "tokenizer_config") PEFT_TRY(rd.get_string(key, v, o.tokenizer));
        else if (key == "random_init") PEFT_TRY(rd.get_bool(key, v, o.random_init));
        else if (key == "datasets") { PEFT_TRY(rd.get_datasets(key, v, o.datasets)); have_data = !o.datasets.empty(); }
        else if (key == "test_datasets") PEFT_TRY(rd.get_datasets(key, v, o.test_datasets));
        else if (key == "output_dir") PEFT_TRY(rd.get_string(key, v, o.output_dir));
        else if (key == "adapter") PEFT_TRY(rd.get_string(key, v, o.adapter));
        else if (key == "adapter_args") {
            if (!v.is_object()) return rd.type_error(key, OPT_OBJECT, v);
            for (size_t j = 0; j < v.size(); ++j) {
                adapter_args += (adapter_args.empty() ? "" : ",") + json_quote(v.key_at(j)) + ":" + v.value_at(j).dump();
            }
        }
        else if (key == "learning_rate") { PEFT_TRY(rd.get_float(key, v, 0.0, 10.0, true, false, d)); o.learning_rate = d; }
        else if (key == "num_epochs") PEFT_TRY(rd.get_int(key, v, 1, 1000000, o.num_epochs));
        else if (key == "max_steps") PEFT_TRY(rd.get_int(key, v, 0, BIG, o.max_steps));
        else if (key == "micro_batch_size") PEFT_TRY(rd.get_int(key, v, 1, 4096, o.micro_batch_size));
        else if (key == "gradient_accumulation_steps") PEFT_TRY(rd.get_int(key, v, 1, 65536, o.gradient_accumulation_steps));
        else if (key == "sequence_len") {
            PEFT_TRY(rd.get_int(key, v, 2, (int64_t) 1 << 20, o.sequence_len));
        }
        else if (key == "sample_packing") PEFT_TRY(rd.get_bool(key, v, o.sample_packing));
        else if (key == "train_on_inputs") PEFT_TRY(rd.get_bool(key, v, o.train_on_inputs));
        else if (key == "chat_template") PEFT_TRY(rd.get_string(key, v, o.chat_template));
        else if (key == "lr_scheduler") {
            PEFT_TRY(rd.get_string(key, v, o.lr_scheduler));
            lr_schedule s;
            if (!lr_schedule_from_name(o.lr_scheduler, &s)) return rd.range_error(key, "constant, linear or cosine", v);
        }
        else if (key == "warmup_steps") PEFT_TRY(rd.get_int(key, v, 0, BIG, o.warmup_steps));
        else if (key == "warmup_ratio") { PEFT_TRY(rd.get_float(key, v, 0.0, 1.0, false, true, d)); o.warmup_ratio = d; }
        else if (key == "weight_decay") { PEFT_TRY(rd.get_float(key, v, 0.0, 1e3, false, false, d)); o.weight_decay = d; }
        else if (key == "adam_beta1") { PEFT_TRY(rd.get_float(key, v, 0.0, 1.0, false, true, d)); o.adam_beta1 = d; }
        else if (key == "adam_beta2") { PEFT_TRY(rd.get_float(key, v, 0.0, 1.0, false, true, d)); o.adam_beta2 = d; }
        else if (key == "adam_epsilon") { PEFT_TRY(rd.get_float(key, v, 0.0, 1.0, true, false, d)); o.adam_epsilon = d; }
        else if (key == "max_grad_norm") { PEFT_TRY(rd.get_float(key, v, 0.0, 1e30, false, false, d)); o.max_grad_norm = d; }
        else if (key == "optimizer") {
            PEFT_TRY(rd.get_string(key, v, o.optimizer));
            if (o.optimizer != "adamw" && o.optimizer != "galore_adamw") return rd.range_error(key, "adamw or galore_adamw", v);
        }
        else if (key == "galore_rank") { PEFT_TRY(rd.get_int(key, v, 1, (int64_t) 1 << 20, o.galore_rank)); galore_keys.push_back(key); }
        else if (key == "galore_update_proj_gap") { PEFT_TRY(rd.get_int(key, v, 1, BIG, o.galore_update_proj_gap)); galore_keys.push_back(key); }
        else if (key == "galore_scale") { PEFT_TRY(rd.get_float(key, v, 0.0, 1e6, true, false, d)); o.galore_scale = d; galore_keys.push_back(key); }
        else if (key == "galore_proj_type") {
            PEFT_TRY(rd.get_string(key, v, o.galore_proj_type));
            galore_proj_type t;
            if (!galore_proj_from_name(o.galore_proj_type, &t)) return rd.range_error(key, "std, reverse_std, right, left or full", v);
            galore_keys.push_back(key);
        }
        else if (key == "galore_svd") {
            PEFT_TRY(rd.get_string(key, v, o.galore_svd));
            galore_svd_kind k;
            if (!galore_svd_from_name(o.galore_svd, &k)) return rd.range_error(key, "exact or randomized", v);
            galore_keys.push_back(key);
        }
        else if (key == "galore_svd_niter") { PEFT_TRY(rd.get_int(key, v, 0, 64, o.galore_svd_niter)); galore_keys.push_back(key); }
        else if (key == "galore_per_layer") { PEFT_TRY(rd.get_bool(key, v, o.galore_per_layer)); galore_keys.push_back(key); }
        else if (key == "galore_target_modules") {
            PEFT_TRY(rd.get_string(key, v, o.galore_target_modules));
            if (galore_split_targets(o.galore_target_modules).empty()) return rd.range_error(key, "comma-separated name parts such as attn,mlp", v);
            galore_keys.push_back(key);
        }
        else if (key == "seed") { PEFT_TRY(rd.get_int(key, v, 0, INT64_MAX, i)); o.seed = (uint64_t) i; }
        else if (key == "val_set_size") { PEFT_TRY(rd.get_float(key, v, 0.0, 1.0, false, true, d)); o.val_set_size = d; }
        else if (key == "eval_steps") PEFT_TRY(rd.get_int(key, v, 0, BIG, o.eval_steps));
        else if (key == "save_steps") PEFT_TRY(rd.get_int(key, v, 0, BIG, o.save_steps));
        else if (key == "save_total_limit") PEFT_TRY(rd.get_int(key, v, 0, BIG, o.save_total_limit));
        else if (key == "logging_steps") PEFT_TRY(rd.get_int(key, v, 1, BIG, o.logging_steps));
        else if (key == "save_dtype") {
            PEFT_TRY(rd.get_string(key, v, o.save_dtype));
            if (o.save_dtype != "f32" && o.save_dtype != "bf16" && o.save_dtype != "f16") return rd.range_error(key, "f32, bf16 or f16", v);
        }
        else if (key == "threads") { PEFT_TRY(rd.get_int(key, v, 0, 1024, i)); o.threads = (int) i; }
        else if (key == "gradient_checkpointing") PEFT_TRY(rd.get_bool(key, v, o.gradient_checkpointing));
        else if (key == "bf16") PEFT_TRY(rd.get_bool(key, v, o.bf16));
        else if (key == "load_in_4bit") PEFT_TRY(rd.get_bool(key, v, o.load_in_4bit));
        else if (key == "bnb_4bit_quant_type") PEFT_TRY(rd.get_string(key, v, o.bnb_4bit_quant_type));
        else if (key == "bnb_4bit_use_double_quant") PEFT_TRY(rd.get_bool(key, v, o.bnb_4bit_use_double_quant));
        else if (key == "bnb_4bit_compute_dtype") PEFT_TRY(rd.get_string(key, v, o.bnb_4bit_compute_dtype));
        else if (key == "resume_from_checkpoint") {
            if (v.is_bool()) o.resume_from_checkpoint = v.as_bool() ? "latest" : "";
            else PEFT_TRY(rd.get_string(key, v, o.resume_from_checkpoint));
        }
        else if (key == "progress") PEFT_TRY(rd.get_bool(key, v, o.progress));
        else if (key == "skip_bad_lines") PEFT_TRY(rd.get_bool(key, v, o.skip_bad_lines));
        else return unknown_key("config", key);   // a table entry without a reader: keep them in sync
    }
    if (o.adapter.empty()) return make_error(PEFT_STATUS_CONFIG, "config", "key 'adapter' is empty (lora or full)");
    if (o.optimizer == "galore_adamw" && !o.full()) {
        status st = make_error(PEFT_STATUS_CONFIG, "config", "key 'optimizer' = galore_adamw needs adapter: full");
        st.hint = "GaLore trains every weight (it compresses the optimizer, not the model): set adapter: full";
        return st;
    }
    if (o.galore_per_layer && (o.max_grad_norm > 0.0 || o.gradient_accumulation_steps != 1)) {
        const bool clip = o.max_grad_norm > 0.0;
        status st = make_error(PEFT_STATUS_CONFIG, "config", std::string("key 'galore_per_layer' = true is incompatible with ") +
                                                                 (clip ? "key 'max_grad_norm' > 0 (clipping by the global norm needs every gradient first)"
                                                                       : "key 'gradient_accumulation_steps' > 1 (a gradient is final only after the last micro-batch)"));
        st.hint = clip ? "set max_grad_norm: 0" : "set gradient_accumulation_steps: 1";
        return st;
    }
    if (o.optimizer != "galore_adamw" && !galore_keys.empty()) {
        status st = make_error(PEFT_STATUS_CONFIG, "config", "key '" + galore_keys[0] + "' given without optimizer: galore_adamw");
        st.hint = "set optimizer: galore_adamw, or remove the galore_* keys";
        return st;
    }
    if (o.full()) {
        if (!adapter_members.empty() || !adapter_args.empty()) {
            status st = make_error(PEFT_STATUS_CONFIG, "config", "adapter keys (r, lora_alpha, target_modules, ...) given with adapter: full");
            st.hint = "remove them, or set adapter: lora";
            return st;
        }
        if (o.load_in_4bit) {
            status st = make_error(PEFT_STATUS_CONFIG, "config", "load_in_4bit with adapter: full: full fine-tuning writes every weight, "
                                                                 "and a 4-bit weight cannot take an update");
            st.hint = "train an adapter over the 4-bit base (adapter: lora), or drop load_in_4bit";
            return st;
        }
    } else if (o.random_init) {
        status st = make_error(PEFT_STATUS_CONFIG, "config", "random_init needs adapter: full");
        st.hint = "an adapter on a random base learns nothing useful; pretrain with adapter: full first";
        return st;
    }
    if (!o.full()) {
        std::string all = json_quote("adapter") + ":" + json_quote(o.adapter);
        if (!adapter_members.empty()) all += "," + adapter_members;
        if (!adapter_args.empty()) all += "," + adapter_args;
        o.adapter_json = "{" + all + "}";
    }
    if (!allow_incomplete) {
        if (!have_base) {
            status st = make_error(PEFT_STATUS_CONFIG, "config", "base_model is required");
            st.hint = "base_model: a Hugging Face model directory, e.g. --base_model ./SmolLM2-135M";
            return st;
        }
        if (!have_data) {
            status st = make_error(PEFT_STATUS_CONFIG, "config", "datasets is required");
            st.hint = "datasets: [{path: train.jsonl}], or --datasets train.jsonl";
            return st;
        }
    }
    if (o.output_dir.empty()) return make_error(PEFT_STATUS_CONFIG, "config", "output_dir is empty");
    quant_options qo;
    PEFT_TRY(quant_options_parse(o.bnb_4bit_quant_type, o.bnb_4bit_compute_dtype, o.bnb_4bit_use_double_quant, "config", qo));
    return {};
}

std::string config_help() {
    std::string s;
    bool adapter_heading = false;
    for (const key_def & k : all_keys()) {
        if (k.adapter && !adapter_heading) {
            s += "adapter keys (of the methods: ";
            for (const std::string & n : adapter_method_names()) s += n + (n == adapter_method_names().back() ? "" : ", ");
            s += "):\n";
            adapter_heading = true;
        }
        char line[512];
        std::snprintf(line, sizeof line, "  %-28s %s (default %s)\n", k.opt.name, k.opt.help, k.opt.def);
        s += line;
    }
    s += "  aliases:";
    for (const auto & a : aliases()) s += " " + a.first + "=" + a.second;
    s += "\n";
    return s;
}

std::string config_to_json(const train_options & o) {
    std::string s = "{";
    auto add = [&](const char * k, const std::string & v) { s += (s.size() > 1 ? ", " : "") + json_quote(k) + ": " + v; };
    auto str = [](const std::string & v) { return json_quote(v); };
    auto num = [](double v) { return number_text(v); };
    auto datasets = [&](const std::vector<dataset_spec> & ds) {
        std::string a = "[";
        for (const dataset_spec & d : ds) {
            a += (a.size() > 1 ? ", " : "") + std::string("{\"path\": ") + json_quote(d.path);
            if (!d.type.empty()) a += ", \"type\": " + json_quote(d.type);
            a += "}";
        }
        return a + "]";
    };
    add("base_model", str(o.base_model));
    if (!o.tokenizer.empty()) add("tokenizer_config", str(o.tokenizer));
    if (o.random_init) add("random_init", "true");
    add("datasets", datasets(o.datasets));
    if (!o.test_datasets.empty()) add("test_datasets", datasets(o.test_datasets));
    add("output_dir", str(o.output_dir));
    add("adapter", str(o.adapter));
    if (!o.full()) add("adapter_config", o.adapter_json);
    add("learning_rate", num(o.learning_rate));
    add("num_epochs", std::to_string(o.num_epochs));
    add("max_steps", std::to_string(o.max_steps));
    add("micro_batch_size", std::to_string(o.micro_batch_size));
    add("gradient_accumulation_steps", std::to_string(o.gradient_accumulation_steps));
    add("sequence_len", std::to_string(o.sequence_len));
    add("sample_packing", o.sample_packing ? "true" : "false");
    add("train_on_inputs", o.train_on_inputs ? "true" : "false");
    if (o.skip_bad_lines) add("skip_bad_lines", "true");
    if (!o.chat_template.empty()) add("chat_template", str(o.chat_template));
    add("lr_scheduler", str(o.lr_scheduler));
    add("warmup_steps", std::to_string(o.warmup_steps));
    add("warmup_ratio", num(o.warmup_ratio));
    add("weight_decay", num(o.weight_decay));
    add("adam_beta1", num(o.adam_beta1));
    add("adam_beta2", num(o.adam_beta2));
    add("adam_epsilon", num(o.adam_epsilon));
    add("max_grad_norm", num(o.max_grad_norm));
    add("optimizer", str(o.optimizer));
    if (o.optimizer == "galore_adamw") {
        add("galore_rank", std::to_string(o.galore_rank));
        add("galore_update_proj_gap", std::to_string(o.galore_update_proj_gap));
        add("galore_scale", num(o.galore_scale));
        add("galore_proj_type", str(o.galore_proj_type));
        add("galore_target_modules", str(o.galore_target_modules));
        add("galore_svd", str(o.galore_svd));
        add("galore_svd_niter", std::to_string(o.galore_svd_niter));
        add("galore_per_layer", o.galore_per_layer ? "true" : "false");
    }
    add("seed", std::to_string(o.seed));
    add("val_set_size", num(o.val_set_size));
    add("eval_steps", std::to_string(o.eval_steps));
    add("save_steps", std::to_string(o.save_steps));
    add("save_total_limit", std::to_string(o.save_total_limit));
    add("logging_steps", std::to_string(o.logging_steps));
    if (o.full()) add("save_dtype", str(o.save_dtype));
    add("threads", std::to_string(o.threads));
    add("gradient_checkpointing", o.gradient_checkpointing ? "true" : "false");
    add("bf16", o.bf16 ? "true" : "false");
    if (o.load_in_4bit) {
        add("load_in_4bit", "true");
        add("bnb_4bit_quant_type", str(o.bnb_4bit_quant_type));
        add("bnb_4bit_use_double_quant", o.bnb_4bit_use_double_quant ? "true" : "false");
        add("bnb_4bit_compute_dtype", str(o.bnb_4bit_compute_dtype));
    }
    if (!o.resume_from_checkpoint.empty()) add("resume_from_checkpoint", str(o.resume_from_checkpoint));
    return s + "}";
}

} // namespace peft
