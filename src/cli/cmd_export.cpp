// cmd_export.cpp: `peft export gguf` (a model, with an adapter merged in, as a GGUF file for
// llama.cpp) and `peft export gguf-lora` (a LoRA adapter as a GGUF file for llama.cpp's --lora).
// Not here: what goes into the files (model/gguf_export.h), the container (io/gguf.h).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "adapters/adapter_set.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "core/threads.h"
#include "io/json.h"
#include "io/output_guard.h"
#include "model/gguf_export.h"
#include "model/llama.h"

namespace fs = std::filesystem;

namespace peft {

namespace {

bool type_of(const std::string & s, gguf_tensor_type & t) {
    if (s == "f32") t = GGUF_TENSOR_F32;
    else if (s == "f16") t = GGUF_TENSOR_F16;
    else if (s == "bf16") t = GGUF_TENSOR_BF16;
    else if (s == "q8_0") t = GGUF_TENSOR_Q8_0;
    else if (s == "q4_0") t = GGUF_TENSOR_Q4_0;
    else if (s == "q4_k") t = GGUF_TENSOR_Q4_K;
    else return false;
    return true;
}

// --out must not be an input, lie inside one or contain one, and an existing file is replaced
// only with --force (it is written atomically: the old file stays until the new one is complete)
status check_out(const std::string & out, bool force, const std::vector<input_path> & inputs) {
    PEFT_TRY(output_check_overlap(out, "--out", inputs));
    std::error_code ec;
    if (fs::is_directory(out, ec)) return make_error(PEFT_STATUS_ARGUMENT, out, "--out is a directory; give a file name such as model.gguf");
    if (fs::exists(out, ec) && !force) {
        status st = make_error(PEFT_STATUS_IO, out, "output file exists");
        st.hint = "pick another --out, or pass --force to replace it";
        return st;
    }
    const fs::path parent = fs::path(out).parent_path();
    if (!parent.empty() && !fs::is_directory(parent, ec)) return make_error(PEFT_STATUS_IO, parent.string(), "output directory does not exist");
    return {};
}

// What llama.cpp's --lora cannot run, refused before loading, with the way that does work.
status check_plain_lora(const std::string & adapter_dir) {
    json_document doc;
    PEFT_TRY(doc.parse_file(adapter_dir + "/adapter_config.json"));
    const json_value cfg = doc.root();
    const std::string type = cfg.get("peft_type").as_string();
    std::string why;
    if (type != "LORA" && type != "lora") why = "peft_type \"" + type + "\" is not LoRA";
    else if (cfg.get("use_dora").as_bool(false)) why = "a DoRA adapter (use_dora: its lora_magnitude_vector rescales the merged rows)";
    else if (cfg.get("lora_bias").as_bool(false)) why = "lora_bias adds a bias to lora_B";
    if (why.empty()) return {};
    status st = make_error(PEFT_STATUS_CONFIG, adapter_dir + "/adapter_config.json",
                           why + ": llama.cpp's --lora runs only y = Wx + (alpha/r) B A x");
    st.hint = "merge it into the model instead: peft export gguf --model DIR --adapter " + adapter_dir + " --out model.gguf";
    return st;
}

double mb_per_s(const std::string & path, std::chrono::steady_clock::time_point t0) {
    std::error_code ec;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const uintmax_t n = fs::file_size(path, ec);
    return ec || s <= 0 ? 0.0 : (double) n / 1e6 / s;
}

int export_gguf(int argc, char ** argv) {
    CLI::App app{"Writes a model (with an adapter merged in, when --adapter is given) as a GGUF v3 file that llama.cpp\n"
                 "loads: llama/mistral as arch \"llama\" (Q/K rows permuted for llama.cpp's rope), qwen2 as \"qwen2\",\n"
                 "byte-level BPE tokenizer and chat template included. Any adapter method works: it is merged first.\n\n"
                 "examples:\n"
                 "  peft export gguf --model models/tiny-llama --out tiny.gguf\n"
                 "  peft export gguf --model ~/models/Llama-3.2-1B --adapter out/lora --out merged-q8.gguf --type q8_0\n"
                 "  llama-cli -m merged-q8.gguf -p 'Hello'",
                 "peft export gguf"};
    std::string model_dir, adapter_dir, out, type_s = "f16", name;
    bool force = false;
    int threads = 0;
    app.add_option("--model", model_dir, "base model directory (config.json + safetensors + tokenizer.json) or .gguf file")->required();
    app.add_option("--adapter", adapter_dir, "PEFT adapter directory (any method) or GGUF LoRA to merge first");
    app.add_option("--out", out, "output .gguf file")->required();
    app.add_option("--type", type_s, "type of the 2-D weights: f32, f16, bf16, q8_0, q4_0 or q4_k (norms stay f32; rows "
                   "that are not whole blocks F16)")->capture_default_str()
        ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k"}));
    app.add_option("--name", name, "general.name (default: the model directory's name)");
    app.add_flag("--force", force, "replace an existing output file");
    app.add_option("--threads", threads, "threads (default: all cores)")->check(CLI::Range(0, THREADS_MAX));
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    threads_set(threads);
    gguf_tensor_type type = GGUF_TENSOR_F16;
    type_of(type_s, type);
    std::vector<input_path> inputs = {{"base model", model_dir}};
    if (!adapter_dir.empty()) inputs.push_back({"adapter", adapter_dir});
    status st = check_out(out, force, inputs);
    if (!st.ok()) return cli_fail("export gguf", st);

    llama_model m;
    st = llama_load(m, model_dir, false);
    adapter_set set;
    if (st.ok() && !adapter_dir.empty()) {
        st = adapter_load(adapter_dir, m, set);
        if (st.ok()) st = adapters_merge(m, set);
    }
    if (!st.ok()) return cli_fail("export gguf", st);
    gguf_export_options o;
    o.type = type;
    o.name = name;
    o.progress = true;
    std::string note;
    const auto t0 = std::chrono::steady_clock::now();
    st = gguf_export_model(m, model_dir, o, out, note);
    if (!st.ok()) return cli_fail("export gguf", st);
    if (!note.empty()) std::fprintf(stderr, "peft export gguf: note: %s", note.c_str());
    std::fprintf(stderr, "peft export gguf: wrote %s (%s%s, %.0f MB/s)\n", out.c_str(), type_s.c_str(),
                 adapter_dir.empty() ? "" : (", merged " + adapter_dir).c_str(), mb_per_s(out, t0));
    return 0;
}

int export_gguf_lora(int argc, char ** argv) {
    CLI::App app{"Writes a LoRA adapter as a GGUF file for llama.cpp's --lora (base: the GGUF that peft export gguf\n"
                 "writes of the same --model). Per-module scales (rsLoRA, rank_pattern, alpha_pattern) are folded into\n"
                 "lora_b, so llama.cpp's single alpha reproduces PEFT's output. DoRA, VeRA and other methods are refused:\n"
                 "merge them with peft export gguf --adapter.\n\n"
                 "examples:\n"
                 "  peft export gguf-lora --model models/tiny-llama --adapter out/lora --out lora.gguf\n"
                 "  llama-cli -m tiny.gguf --lora lora.gguf -p 'Hello'",
                 "peft export gguf-lora"};
    std::string model_dir, adapter_dir, out, type_s = "f32", name;
    bool force = false;
    app.add_option("--model", model_dir, "the base model the adapter was trained on (directory or .gguf)")->required();
    app.add_option("--adapter", adapter_dir, "PEFT LoRA adapter directory")->required();
    app.add_option("--out", out, "output .gguf file")->required();
    app.add_option("--type", type_s, "type of lora_a / lora_b: f32, f16 or bf16")->capture_default_str()->check(CLI::IsMember({"f32", "f16", "bf16"}));
    app.add_option("--name", name, "general.name (default: the adapter directory's name)");
    app.add_flag("--force", force, "replace an existing output file");
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;
    gguf_tensor_type type = GGUF_TENSOR_F32;
    type_of(type_s, type);
    status st = check_out(out, force, {{"base model", model_dir}, {"adapter", adapter_dir}});
    if (st.ok()) st = check_plain_lora(adapter_dir);
    if (!st.ok()) return cli_fail("export gguf-lora", st);
    llama_model m;
    st = llama_load(m, model_dir, false);
    adapter_set set;
    if (st.ok()) st = adapter_load(adapter_dir, m, set);
    std::string note;
    if (st.ok()) st = gguf_export_lora(m, set, type, name.empty() ? fs::path(adapter_dir + "/.").parent_path().filename().string() : name, out, note);
    if (!st.ok()) return cli_fail("export gguf-lora", st);
    if (!note.empty()) std::fprintf(stderr, "peft export gguf-lora: note: %s", note.c_str());
    std::fprintf(stderr, "peft export gguf-lora: wrote %s (%zu modules, %s)\n", out.c_str(), set.modules.size(), type_s.c_str());
    return 0;
}

void print_export_usage() {
    std::printf("usage: peft export <format> [options]   (peft export <format> --help for details)\n\nformats:\n"
                "  gguf        a model (+ merged adapter) as a GGUF file for llama.cpp (f32, f16, bf16, q8_0, q4_0, q4_k)\n"
                "  gguf-lora   a LoRA adapter as a GGUF file for llama.cpp's --lora\n");
}

} // namespace

int cmd_export(int argc, char ** argv) {
    if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
        print_export_usage();
        return argc < 2 ? EXIT_USAGE : EXIT_OK;
    }
    if (!std::strcmp(argv[1], "gguf")) return export_gguf(argc - 1, argv + 1);
    if (!std::strcmp(argv[1], "gguf-lora")) return export_gguf_lora(argc - 1, argv + 1);
    std::fprintf(stderr, "peft export: unknown format '%s'\n", argv[1]);
    print_export_usage();
    return EXIT_USAGE;
}

} // namespace peft
