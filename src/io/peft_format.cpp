// peft_format.cpp: PEFT adapter directories (FORMATS §2a): adapter_save and adapter_load (see
// adapters/adapter_set.h) and the Python-compatible JSON writer they use.
// adapter_config.json is written as PEFT's config.save_pretrained does (json.dumps(indent=2,
// sort_keys=True), no trailing newline); adapter_model.safetensors holds every saved parameter
// in F32 with metadata {"format": "pt"}. Both files are written atomically.
// Loading accepts what PEFT writes: extra keys (newer PEFT versions) are ignored, F16/BF16
// tensors are converted to f32, and every key and shape is checked against the model.
// Not here: adapter_model.bin (pickle), checkpoints of the optimizer (train/).
#include "io/peft_format.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "adapters/adapter_set.h"
#include "adapters/target.h"
#include "io/atomic_file.h"
#include "io/gguf_read.h"
#include "io/safetensors.h"
#include "model/gguf_import.h"
#include "model/llama.h"

namespace peft {

// ---- Python-compatible JSON text -----------------------------------------------------------

std::string json_python_float(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
    std::string sign = std::signbit(v) ? "-" : "";
    v = std::fabs(v);
    if (v == 0.0) return sign + "0.0";
    // shortest round-trip digits, as Python's repr: d.ddde[+-]XX from to_chars
    char buf[64];
    auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
    std::string sci(buf, res.ptr);
    size_t e = sci.find('e');
    std::string mant = sci.substr(0, e);
    int exp10 = std::stoi(sci.substr(e + 1));
    std::string digits;
    for (char c : mant) {
        if (c != '.') digits += c;
    }
    while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
    std::string out;
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 >= 0) {
            std::string ip = digits.substr(0, std::min(digits.size(), (size_t) exp10 + 1));
            while ((int) ip.size() < exp10 + 1) ip += '0';
            std::string fp = digits.size() > (size_t) exp10 + 1 ? digits.substr((size_t) exp10 + 1) : "0";
            out = ip + "." + fp;
        } else {
            out = "0." + std::string((size_t) (-exp10 - 1), '0') + digits;
        }
    } else {
        out = digits.substr(0, 1);
        if (digits.size() > 1) out += "." + digits.substr(1);
        char eb[16];
        std::snprintf(eb, sizeof(eb), "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
        out += eb;
    }
    return sign + out;
}

std::string json_python_quote(const std::string & s) {
    std::string out = "\"";
    auto hex4 = [&](uint32_t u) {
        char b[8];
        std::snprintf(b, sizeof(b), "\\u%04x", (unsigned) u);
        out += b;
    };
    for (size_t i = 0; i < s.size();) {
        unsigned char c = (unsigned char) s[i];
        if (c == '"') { out += "\\\""; i++; continue; }
        if (c == '\\') { out += "\\\\"; i++; continue; }
        if (c == '\n') { out += "\\n"; i++; continue; }
        if (c == '\r') { out += "\\r"; i++; continue; }
        if (c == '\t') { out += "\\t"; i++; continue; }
        if (c == '\b') { out += "\\b"; i++; continue; }
        if (c == '\f') { out += "\\f"; i++; continue; }
        if (c < 0x20) { hex4(c); i++; continue; }
        if (c < 0x80) { out += (char) c; i++; continue; }
        // UTF-8 sequence -> code point -> \uXXXX (surrogate pair above the BMP); the parser
        // already rejected invalid UTF-8, but stay defensive and emit U+FFFD
        int n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        uint32_t cp = n == 4 ? (c & 0x07u) : n == 3 ? (c & 0x0fu) : (c & 0x1fu);
        bool ok = n > 1 && i + (size_t) n <= s.size();
        for (int k = 1; ok && k < n; k++) {
            unsigned char cc = (unsigned char) s[i + (size_t) k];
            ok = (cc & 0xc0u) == 0x80u;
            cp = (cp << 6) | (cc & 0x3fu);
        }
        if (!ok) {
            hex4(0xfffd);
            i++;
            continue;
        }
        if (cp >= 0x10000) {
            cp -= 0x10000;
            hex4(0xd800 + (cp >> 10));
            hex4(0xdc00 + (cp & 0x3ff));
        } else {
            hex4(cp);
        }
        i += (size_t) n;
    }
    return out + "\"";
}

namespace {

void dump_python(const json_value & v, int indent, int level, std::string & out,
                 const std::vector<std::pair<std::string, json_value>> * overrides) {
    const std::string pad((size_t) (indent * (level + 1)), ' '), pad_end((size_t) (indent * level), ' ');
    if (v.is_object()) {
        std::vector<std::pair<std::string, json_value>> members;
        for (size_t i = 0; i < v.size(); i++) members.emplace_back(v.key_at(i), v.value_at(i));
        if (overrides) {
            for (const auto & o : *overrides) {
                bool found = false;
                for (auto & mbr : members) {
                    if (mbr.first == o.first) {
                        mbr.second = o.second;
                        found = true;
                    }
                }
                if (!found) members.push_back(o);
            }
        }
        if (members.empty()) {
            out += "{}";
            return;
        }
        // sort_keys=True: Python compares str by code point, which is UTF-8 byte order
        std::stable_sort(members.begin(), members.end(), [](const auto & a, const auto & b) { return a.first < b.first; });
        out += "{\n";
        for (size_t i = 0; i < members.size(); i++) {
            out += pad + json_python_quote(members[i].first) + ": ";
            dump_python(members[i].second, indent, level + 1, out, nullptr);
            out += i + 1 < members.size() ? ",\n" : "\n";
        }
        out += pad_end + "}";
    } else if (v.is_array()) {
        if (v.size() == 0) {
            out += "[]";
            return;
        }
        out += "[\n";
        for (size_t i = 0; i < v.size(); i++) {
            out += pad;
            dump_python(v.at(i), indent, level + 1, out, nullptr);
            out += i + 1 < v.size() ? ",\n" : "\n";
        }
        out += pad_end + "]";
    } else if (v.is_string()) {
        out += json_python_quote(v.as_string());
    } else if (v.is_integer()) {
        out += v.dump();
    } else if (v.is_number()) {
        out += json_python_float(v.as_double());
    } else {
        out += v.dump();   // true, false, null
    }
}

std::string shape_text(const std::vector<int64_t> & shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

} // namespace

std::string json_dump_python(const json_value & v, int indent,
                             const std::vector<std::pair<std::string, json_value>> & overrides) {
    std::string out;
    dump_python(v, indent, 0, out, overrides.empty() ? nullptr : &overrides);
    return out;
}

// ---- save ------------------------------------------------------------------------------------

namespace {

// adapter_config.json (cfg_text, sorted and indented as Python writes it) and
// adapter_model.safetensors (params) into dir.
status write_adapter_dir(const std::string & dir, const std::string & cfg_text, const std::string & what,
                         const std::vector<param_ref> & params, const std::string & base_model_name) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec || !std::filesystem::is_directory(dir, ec)) {
        status st = make_error(PEFT_STATUS_IO, dir, "cannot create the adapter directory: " + (ec ? ec.message() : "not a directory"));
        st.hint = "choose a writable output directory";
        return st;
    }

    json_document cfg;
    PEFT_TRY(cfg.parse(cfg_text.data(), cfg_text.size(), what));
    json_document extra;
    const std::string extra_text = "{\"base_model_name_or_path\":" +
                                   (base_model_name.empty() ? std::string("null") : json_quote(base_model_name)) + "}";
    PEFT_TRY(extra.parse(extra_text.data(), extra_text.size(), "base_model_name_or_path"));
    const std::string config = json_dump_python(cfg.root(), 2, {{"base_model_name_or_path", extra.root().get("base_model_name_or_path")}});

    std::vector<safetensors_tensor_to_write> tensors;
    for (const param_ref & p : params) {
        safetensors_tensor_to_write t;
        t.name = p.name;
        t.type = PEFT_DTYPE_F32;
        t.shape = p.shape;
        t.data = p.value;
        tensors.push_back(t);
    }
    const std::filesystem::path d(dir);
    // weights first: a crash between the two writes leaves the old config describing new-shaped
    // weights at worst only when the shapes changed, and load then fails loudly on shapes
    PEFT_TRY(safetensors_write((d / PEFT_WEIGHTS_NAME).string(), tensors, {{"format", "pt"}}));
    PEFT_TRY(write_file_atomic((d / PEFT_CONFIG_NAME).string(), config));
    return {};
}

} // namespace

status adapter_save(const std::string & dir, adapter_set & s, const std::string & base_model_name) {
    if (!s.method) return make_error(PEFT_STATUS_CONFIG, dir, "no adapter to save");
    PEFT_TRY(write_adapter_dir(dir, s.method->config_json(), std::string("adapter config of ") + s.method->name(), adapter_set_exported(s),
                               base_model_name));
    const std::string native = s.method->native_config_json();
    if (!native.empty()) {
        std::vector<param_ref> own;   // the training form: every saved parameter, shared ones once
        for (const param_ref & p : adapter_set_params(s)) {
            if (p.saved && p.value) own.push_back(p);
        }
        PEFT_TRY(write_adapter_dir((std::filesystem::path(dir) / ADAPTER_NATIVE_DIR).string(), native,
                                   std::string("native config of ") + s.method->name(), own, base_model_name));
    }
    std::vector<module_table> tables;
    s.method->tables(tables);
    for (const module_table & t : tables) {
        std::string tsv;
        for (size_t i = 0; i < t.columns.size(); i++) tsv += (i ? "\t" : "") + t.columns[i];
        tsv += "\n";
        for (const auto & row : t.rows) {
            for (size_t i = 0; i < row.size(); i++) tsv += (i ? "\t" : "") + row[i];
            tsv += "\n";
        }
        PEFT_TRY(write_file_atomic((std::filesystem::path(dir) / (t.file + ".tsv")).string(), tsv));
    }
    return {};
}

// ---- load ------------------------------------------------------------------------------------

status adapter_config_normalize(const json_value & root, const std::string & where, json_document & cfg) {
    if (!root.is_object()) return make_mismatch(PEFT_STATUS_FORMAT, where, "top level", "a JSON object", root.dump());
    json_value pt = root.get("peft_type");
    if (!pt.is_string()) {
        // PEFT's only required key (MIN_EXPECTED_CONFIG_KEYS)
        return make_mismatch(PEFT_STATUS_FORMAT, where, "peft_type", "a string such as \"LORA\"",
                             pt.valid() ? pt.dump() : "missing");
    }
    // The initialisation is irrelevant once the tensors are loaded (an "eva" or "olora" adapter
    // saved as LoRA is plain LoRA on disk), so configure the method with the default init.
    json_document init_doc;
    const char * init_text = "{\"init_lora_weights\":true}";
    PEFT_TRY(init_doc.parse(init_text, std::strlen(init_text), "init override"));
    const std::string normalized = json_dump_python(root, 0, {{"init_lora_weights", init_doc.root().get("init_lora_weights")}});
    return cfg.parse(normalized.data(), normalized.size(), where);
}

// An adapter whose init turned the base into a residual (PiSSA, MiLoRA, OLoRA ... saved with
// save_residual_model) is only right on that residual base: loading it onto the original model
// would run silently wrong, so the base must say it is that residual (config.json
// "peft_residual_init"). Adapters saved as plain LoRA say init_lora_weights: true.
static status check_residual_base(const json_value & root, const std::string & where, const llama_model & m) {
    const json_value init = root.get("init_lora_weights");
    const std::string name = init.is_string() ? init.as_string() : "";
    const bool residual = name == "pissa" || name.rfind("pissa_niter_", 0) == 0 || name == "milora" || name == "olora" || name == "corda";
    if (!residual || m.hp.residual_init == name) return {};
    status st = make_error(PEFT_STATUS_CONFIG, where, "init_lora_weights \"" + name + "\": this adapter applies to the residual base its init made, and the model " +
                                                          (m.hp.residual_init.empty() ? std::string("is not one") : "is the residual of \"" + m.hp.residual_init + "\""));
    st.hint = "load it with the residual model saved beside it (residual_model/ in the training output_dir), or train with save_residual_model: false for a plain LoRA on the original model";
    return st;
}

status adapter_load(const std::string & dir, llama_model & m, adapter_set & out) {
    if (gguf_is_file(dir)) return gguf_lora_load(dir, m, out);   // a llama.cpp LoRA
    const std::filesystem::path d(dir);
    const std::string cfg_path = (d / PEFT_CONFIG_NAME).string();
    const std::string st_path = (d / PEFT_WEIGHTS_NAME).string();
    std::error_code ec;
    if (!std::filesystem::is_directory(d, ec)) {
        return make_error(PEFT_STATUS_IO, dir, "not a directory (expected a PEFT adapter directory)");
    }
    if (!std::filesystem::exists(cfg_path, ec)) {
        status st = make_error(PEFT_STATUS_IO, dir, "missing " + std::string(PEFT_CONFIG_NAME) + ": not a PEFT adapter directory");
        st.hint = "pass the directory written by save_pretrained / peft train (it holds adapter_config.json)";
        return st;
    }
    if (!std::filesystem::exists(st_path, ec)) {
        status st = make_error(PEFT_STATUS_IO, dir, "missing " + std::string(PEFT_WEIGHTS_NAME));
        if (std::filesystem::exists(d / "adapter_model.bin", ec)) {
            st.hint = "only safetensors adapters are read; re-save with save_pretrained(safe_serialization=True)";
        }
        return st;
    }
    json_document doc, cfg;
    PEFT_TRY(doc.parse_file(cfg_path, (size_t) 64 << 20));
    PEFT_TRY(check_residual_base(doc.root(), cfg_path, m));
    PEFT_TRY(adapter_config_normalize(doc.root(), cfg_path, cfg));

    adapter_set set;
    status st = adapters_attach(m, cfg.root(), 0, set);
    if (!st.ok()) {
        st.message = cfg_path + ": " + st.message;
        return st;
    }
    // from here on m.adapters points into `set`: detach on any failure
    auto fail = [&](status e) {
        m.adapters.clear();
        m.layer_hook = nullptr;
        return e;
    };
    safetensors_file file;
    st = safetensors_open(st_path, file);
    if (!st.ok()) return fail(st);

    std::vector<param_ref> params = adapter_set_params(set);
    std::vector<bool> used(file.tensors.size(), false);
    for (const param_ref & p : params) {
        if (!p.saved) continue;
        const tensor_info * t = file.find(p.name);
        if (!t) {
            status e = make_error(PEFT_STATUS_SHAPE, st_path,
                                  "missing tensor \"" + p.name + "\" (expected shape " + shape_text(p.shape) + ")");
            e.hint = "the adapter was made for another base model or with other target_modules / r";
            return fail(e);
        }
        used[(size_t) (t - file.tensors.data())] = true;
        if (t->shape != p.shape) {
            status e = make_mismatch(PEFT_STATUS_SHAPE, st_path, "tensor \"" + p.name + "\" shape", shape_text(p.shape),
                                     shape_text(t->shape));
            e.hint = "the adapter was made for another base model (or its config's r / rank_pattern do not match the tensors)";
            return fail(e);
        }
        // NaN/Inf would reach generate's text and merge's output unnoticed
        st = tensor_require_finite(*t);
        if (!st.ok()) return fail(st);
        st = read_f32(*t, p.value);
        if (!st.ok()) return fail(st);
    }
    for (size_t i = 0; i < file.tensors.size(); i++) {
        if (!used[i] && target_outside_layers(file.tensors[i].name)) {
            return fail(target_outside_layers_error(st_path, "tensor \"" + file.tensors[i].name + "\""));
        }
        if (!used[i]) {
            status e = make_error(PEFT_STATUS_SHAPE, st_path,
                                  "unexpected tensor \"" + file.tensors[i].name + "\" (" + file.tensors[i].describe() +
                                      "): no module of this model and config owns it");
            e.hint = "the adapter was made for another base model (more layers?) or uses features peft.cpp does not load";
            return fail(e);
        }
    }
    adapters_set_training(set, false);   // PEFT from_pretrained: inference mode unless asked
    out = std::move(set);                // modules keep their addresses: m.adapters stays valid
    return {};
}

} // namespace peft
