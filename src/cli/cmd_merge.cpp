// cmd_merge.cpp: `peft merge`: base model + PEFT adapter -> a full Hugging Face checkpoint with
// the adapter folded into the weights (W' = W + s·BA for LoRA; the method's own merge for
// others). The output directory holds model.safetensors (every tensor of the base checkpoint;
// merged ones converted back to the base dtype or --dtype), config.json and the tokenizer and
// generation files copied. It is built in OUT.tmp and renamed into place, so OUT is either
// absent/old or complete. Not here: the merge math (adapters/), sharded output.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "adapters/adapter_set.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "core/threads.h"
#include "core/dtype.h"
#include "io/atomic_file.h"
#include "io/gguf_read.h"
#include "io/output_guard.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/gguf_import.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace peft {

namespace {


bool read_text(const std::string & path, std::string & out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    std::ostringstream ss;
    ss << f.rdbuf();
    out = ss.str();
    return (bool) f || f.eof();
}

const char * torch_dtype_name(dtype t) {
    return t == PEFT_DTYPE_BF16 ? "bfloat16" : t == PEFT_DTYPE_F16 ? "float16" : "float32";
}

// config.json with "torch_dtype" (and the newer "dtype") set to the written dtype; the text is
// edited in place so key order and formatting stay as the base had them.
std::string config_with_dtype(std::string cfg, dtype t) {
    for (const char * key : {"\"torch_dtype\"", "\"dtype\""}) {
        size_t k = cfg.find(key);
        if (k == std::string::npos) continue;
        size_t colon = cfg.find(':', k);
        if (colon == std::string::npos) continue;
        size_t q0 = cfg.find_first_not_of(" \t\r\n", colon + 1);
        if (q0 == std::string::npos || cfg[q0] != '"') continue;   // null or not a string: leave it
        size_t q1 = cfg.find('"', q0 + 1);
        if (q1 == std::string::npos) continue;
        cfg.replace(q0 + 1, q1 - q0 - 1, torch_dtype_name(t));
    }
    return cfg;
}

status copy_file_into(const std::string & src, const std::string & dst) {
    std::string text;
    if (!read_text(src, text)) return make_error(PEFT_STATUS_IO, src, "cannot read");
    return write_file_atomic(dst, text);
}

// A GGUF base (held in m, un-permuted): merged in memory (adapters_merge) and written with a
// config.json and tokenizer files made from the GGUF metadata. Merged tensors go back to their
// base dtype (the matrices of a quantized base are written dequantized, f32), or --dtype.
status merge_gguf_base(const std::string & path, llama_model & m, adapter_set & set, bool have_dtype, dtype want,
                       std::vector<safetensors_tensor_to_write> & outs, std::vector<std::vector<uint8_t>> & buffers, dtype & written,
                       std::string & cfg, std::vector<std::pair<std::string, std::string>> & made) {
    std::vector<dtype> base_types;
    for (const llama_tensor & t : m.tensors) base_types.push_back(t.type);
    PEFT_TRY(adapters_merge(m, set));
    buffers.reserve(m.tensors.size());
    std::vector<float> f32;
    for (size_t i = 0; i < m.tensors.size(); i++) {
        const llama_tensor & t = m.tensors[i];
        const dtype type = have_dtype ? want : base_types[i];
        if (t.shape.size() == 2) written = type;
        if (type == t.type && !t.q) {
            outs.push_back({t.name, t.type, t.shape, t.data, ""});
            continue;
        }
        const size_t n = (size_t) t.numel();
        f32.resize(n);
        if (t.q) qtensor_rows_f32(*t.q, 0, t.q->OC, f32.data());   // a quantized GGUF matrix no adapter touched
        else convert_to_f32(t.type, t.data, f32.data(), n);
        buffers.emplace_back(n * dtype_size(type));
        convert_from_f32(type, f32.data(), buffers.back().data(), n);
        outs.push_back({t.name, type, t.shape, buffers.back().data(), ""});
    }
    std::string note;
    PEFT_TRY(gguf_hf_files(path, m.hp, torch_dtype_name(written), made, note));
    if (!note.empty()) std::fprintf(stderr, "peft merge: note: %s", note.c_str());
    cfg = made[0].second;   // config.json, written as the directory case writes its own
    made.erase(made.begin());
    return {};
}

} // namespace

int cmd_merge(int argc, char ** argv) {
    CLI::App app{"Merges a PEFT adapter into its base model and writes a full Hugging Face checkpoint\n"
                 "(model.safetensors + config.json + tokenizer files), loadable by transformers and by peft.cpp.\n\n"
                 "examples:\n"
                 "  peft merge --model ~/models/TinyLlama-1.1B-Chat-v1.0 --adapter out/lora --out out/merged\n"
                 "  peft merge --model ~/models/Llama-3.2-1B --adapter out/lora --out out/merged --dtype f32\n"
                 "  peft merge --model ~/models/Qwen2.5-0.5B --adapter out/lora --out out/merged --force\n"
                 "  peft merge --model ~/models/SmolLM2-135M --adapter out/lora --out out/merged-f16 --dtype f16\n"
                 "  peft merge --model tiny.gguf --adapter lora.gguf --out out/merged   (config and tokenizer from the GGUF)\n"
                 "  peft merge --model ~/models/SmolLM2-135M --adapter out/qlora --out out/merged --load-in-4bit  (QLoRA: onto deq(W), bf16)",
                 "peft merge"};
    std::string model_dir, adapter_dir, out_dir, dtype_opt;
    bool force = false;
    int threads = 0;
    app.add_option("--model", model_dir, "base model: directory (config.json + safetensors) or .gguf file")->required();
    app.add_option("--adapter", adapter_dir, "PEFT adapter directory (adapter_config.json + adapter_model.safetensors) or GGUF LoRA")->required();
    app.add_option("--out", out_dir, "output directory (must not exist or be empty, unless --force)")->required();
    app.add_option("--dtype", dtype_opt, "dtype of the written weights: bf16, f16 or f32 (default: each tensor's base dtype)")
        ->check(CLI::IsMember({"bf16", "f16", "f32"}));
    app.add_flag("--force", force, "replace a non-empty output directory");
    app.add_option("--threads", threads, "threads (default: all cores)")->check(CLI::Range(0, THREADS_MAX));
    cli_quant_flags qf;   // an adapter trained over a 4-bit base merges onto that base, dequantized
    cli_add_quant_flags(app, qf);
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    threads_set(threads);
    const quant_options * quant = nullptr;
    if (status qs = cli_quant(qf, &quant); !qs.ok()) return cli_fail("merge", qs);
    // QLoRA's merge rule: W' = deq(Q(W)) + delta for every projection, written in bf16 (unless
    // --dtype says otherwise); the 4-bit base itself is never overwritten
    if (quant && dtype_opt.empty()) dtype_opt = "bf16";
    while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
    const bool have_dtype = !dtype_opt.empty();
    const dtype want = dtype_opt == "bf16" ? PEFT_DTYPE_BF16 : dtype_opt == "f16" ? PEFT_DTYPE_F16 : PEFT_DTYPE_F32;

    // refuse early, before minutes of loading and merging; --force replaces only an earlier
    // output of peft merge (output_guard.h), never a directory holding anything else
    std::error_code ec;
    const fs::path out(out_dir), tmp(out_dir + ".tmp");
    const std::vector<input_path> inputs = {{"base model", model_dir}, {"adapter", adapter_dir}};
    status st = output_check_overlap(out_dir, "--out", inputs);
    if (st.ok()) st = output_check_overlap(tmp.string(), "--out's work directory", inputs);
    if (!st.ok()) return cli_fail("merge", st);
    if (fs::exists(out, ec)) {
        if (!fs::is_directory(out, ec)) return cli_fail("merge", make_error(PEFT_STATUS_IO, out_dir, "exists and is not a directory"));
        if (!fs::is_empty(out, ec) && !force) {
            st = make_error(PEFT_STATUS_IO, out_dir, "output directory exists and is not empty");
            st.hint = "pick another --out, or pass --force to replace an earlier output of peft merge";
            return cli_fail("merge", st);
        }
        st = output_check_replace(out_dir, "merge");
        if (!st.ok()) return cli_fail("merge", st);
    }
    if (!fs::is_directory(adapter_dir, ec) && !gguf_is_file(adapter_dir)) {
        st = make_error(PEFT_STATUS_IO, adapter_dir, "adapter directory not found");
        st.hint = "--adapter takes a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) or a GGUF LoRA";
        return cli_fail("merge", st);
    }

    llama_model m;
    st = llama_load(m, model_dir, false, quant);
    if (!st.ok()) return cli_fail("merge", st);
    adapter_set set;
    st = adapter_load(adapter_dir, m, set);
    if (!st.ok()) return cli_fail("merge", st);
    if (const char * why = set.method->merge_refusal()) {
        st = make_error(PEFT_STATUS_CONFIG, adapter_dir, std::string(set.method->name()) + " adapters cannot be merged: " + why);
        st.hint = "apply it unmerged instead: peft generate --model DIR --adapter " + adapter_dir;
        return cli_fail("merge", st);
    }
    safetensors_model src;   // the base file again, for dtypes, raw bytes and extra tensors
    std::vector<safetensors_tensor_to_write> outs;
    std::vector<std::vector<uint8_t>> buffers;   // converted tensors, alive until written
    dtype written = PEFT_DTYPE_F32;
    std::string cfg;
    std::vector<std::pair<std::string, std::string>> made;   // a GGUF base: files made from its metadata
    if (gguf_is_file(model_dir)) {
        st = merge_gguf_base(model_dir, m, set, have_dtype, want, outs, buffers, written, cfg, made);
        if (!st.ok()) return cli_fail("merge", st);
    } else {
        st = safetensors_open_model(model_dir, src);
        if (!st.ok()) return cli_fail("merge", st);
        if (!read_text(model_dir + "/config.json", cfg)) return cli_fail("merge", make_error(PEFT_STATUS_IO, model_dir + "/config.json", "cannot read"));
        if (have_dtype) cfg = config_with_dtype(cfg, want);

        // Merged one tensor at a time with the module's own merge (what adapters_merge does for the
        // whole model at once): only one f32 copy exists at a time, so merging a bf16 model needs
        // about its own size in memory for the output instead of twice that in f32.
        std::map<std::string, size_t> merged;   // tensor name -> module index
        for (size_t i = 0; i < set.targets.size(); i++) merged[set.targets[i].path + ".weight"] = i;

        buffers.reserve(src.names().size());
        std::vector<float> f32;
        for (const std::string & name : src.names()) {
            const tensor_info & ti = *src.find(name);
            safetensors_tensor_to_write w;
            w.name = name;
            w.shape = ti.shape;
            if (!ti.is_float) {   // not ours to convert (e.g. an integer buffer): copied verbatim
                w.raw_dtype = safetensors_dtype_name(ti.st_dtype);
                w.data = ti.data;
                outs.push_back(std::move(w));
                continue;
            }
            w.type = have_dtype ? want : ti.type;
            if (ti.shape.size() == 2) written = w.type;
            auto it = merged.find(name);
            const size_t n = (size_t) ti.n_elements;
            const llama_tensor * quantized = quant ? m.find(name) : nullptr;
            if (quantized && !quantized->q) quantized = nullptr;
            if (it != merged.end() || quantized) {   // an adapted weight, or a 4-bit one (deq(W) as trained)
                f32.resize(n);
                if (it != merged.end()) {
                    const linear_weight & lw = *set.targets[it->second].base;
                    PEFT_ASSERT((size_t) (lw.OC * lw.IC) == n);
                    linear_weight_rows_f32(f32.data(), lw, 0, lw.OC);
                    set.modules[it->second]->merge(f32.data(), lw.OC, lw.IC);
                } else {
                    qtensor_rows_f32(*quantized->q, 0, quantized->q->OC, f32.data());
                }
                buffers.emplace_back(n * dtype_size(w.type));
                convert_from_f32(w.type, f32.data(), buffers.back().data(), n);
                w.data = buffers.back().data();
            } else if (w.type == ti.type) {
                w.data = ti.data;   // untouched tensor: the base's bytes exactly
            } else {
                f32.resize(n);
                st = read_f32(ti, f32.data());
                if (!st.ok()) return cli_fail("merge", st);
                buffers.emplace_back(n * dtype_size(w.type));
                convert_from_f32(w.type, f32.data(), buffers.back().data(), n);
                w.data = buffers.back().data();
            }
            outs.push_back(std::move(w));
        }
        if (merged.size() != set.targets.size() || set.targets.empty()) {
            return cli_fail("merge", make_error(PEFT_STATUS_SHAPE, adapter_dir, "the adapter has no mergeable target modules"));
        }
        for (const auto & kv : merged) {
            if (!src.find(kv.first)) return cli_fail("merge", make_error(PEFT_STATUS_SHAPE, model_dir, "merged tensor '" + kv.first + "' is not in the base checkpoint"));
        }
    }

    // build OUT.tmp, then swap it into place (atomic_dir): OUT is at every moment absent, the
    // old output or the new one
    if (fs::exists(tmp, ec)) {   // a leftover of an interrupted merge, or somebody's directory
        st = output_check_replace(tmp.string(), "merge");
        if (!st.ok()) {
            st.hint = "peft merge builds the output in " + tmp.string() + " before renaming it to --out; move that directory away";
            return cli_fail("merge", st);
        }
    }
    atomic_dir ad;
    std::vector<std::string> out_names = {"model.safetensors", "config.json"};
    for (const std::string & f : hf_companion_files()) out_names.push_back(f);
    st = ad.begin(out_dir);
    if (st.ok()) st = output_mark(ad.path(), "merge", out_names);   // first, so an interrupted tmp is recognised
    if (st.ok()) st = safetensors_write(ad.path() + "/model.safetensors", outs, {{"format", "pt"}});
    if (st.ok()) st = write_file_atomic(ad.path() + "/config.json", cfg);
    int copied = 0;
    for (const std::string & f : hf_companion_files()) {
        const std::string p = model_dir + "/" + f;
        if (!st.ok() || !fs::is_regular_file(p, ec)) continue;
        st = copy_file_into(p, ad.path() + "/" + f);
        copied++;
    }
    for (const auto & [name, text] : made) {
        if (st.ok()) st = write_file_atomic(ad.path() + "/" + name, text);
        copied++;
    }
    if (st.ok()) st = ad.commit();
    if (!st.ok()) return cli_fail("merge", st);

    uintmax_t bytes = fs::file_size(out / "model.safetensors", ec);
    std::fprintf(stderr, "peft merge: merged %zu modules of %s into %s (%zu tensors, %s, %.1f MiB; config.json + %d files copied)\n",
                 set.targets.size(), adapter_dir.c_str(), out_dir.c_str(), outs.size(), dtype_name(written),
                 ec ? 0.0 : (double) bytes / (1 << 20), copied);
    return 0;
}

} // namespace peft
