// cmd_convert.cpp: `peft convert`: a llama.cpp GGUF LoRA (llama.cpp's --lora format, as
// `peft export gguf-lora` or convert_lora_to_gguf.py write it) as a PEFT adapter directory
// (adapter_config.json + adapter_model.safetensors) that PEFT and every peft command load.
// The base model is needed: the adapter's shapes are checked against it, and llama's Q/K rows
// of lora_b are un-permuted with its head counts.
// Not here: what the conversion does (model/gguf_import.h).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>

#include "adapters/adapter_set.h"
#include "cli/cli_common.h"
#include "cli/commands.h"
#include "io/gguf_read.h"
#include "io/output_guard.h"
#include "model/llama.h"

namespace fs = std::filesystem;

namespace peft {

int cmd_convert(int argc, char ** argv) {
    CLI::App app{"Converts a llama.cpp GGUF LoRA adapter into a PEFT adapter directory, checked against its base model\n"
                 "(names, shapes; lora_b's Q/K rows un-permuted for llama models; one rank per module via rank_pattern).\n\n"
                 "examples:\n"
                 "  peft convert --model models/tiny-llama --adapter lora.gguf --out out/lora-peft\n"
                 "  peft convert --model tiny.gguf --adapter lora.gguf --out out/lora-peft",
                 "peft convert"};
    std::string model, adapter, out;
    bool force = false;
    app.add_option("--model", model, "the base model: Hugging Face directory or .gguf file")->required();
    app.add_option("--adapter", adapter, "GGUF LoRA adapter file (general.type adapter)")->required();
    app.add_option("--out", out, "output PEFT adapter directory")->required();
    app.add_flag("--force", force, "write into an existing non-empty directory (its adapter files are replaced)");
    if (const int rc = cli_parse(app, argc, argv); rc >= 0) return rc;

    status st = output_check_overlap(out, "--out", {{"base model", model}, {"adapter", adapter}});
    std::error_code ec;
    if (st.ok() && !gguf_is_file(adapter)) {
        st = make_error(PEFT_STATUS_ARGUMENT, adapter, "not a GGUF file");
        st.hint = "--adapter takes a .gguf LoRA (a PEFT directory is already in PEFT format)";
    }
    if (st.ok() && fs::exists(out, ec) && (!fs::is_directory(out, ec) || (!fs::is_empty(out, ec) && !force))) {
        st = make_error(PEFT_STATUS_IO, out, fs::is_directory(out, ec) ? "output directory exists and is not empty" : "exists and is not a directory");
        st.hint = "pick another --out, or pass --force";
    }
    if (!st.ok()) return cli_fail("convert", st);
    llama_model m;
    st = llama_load(m, model, false);
    adapter_set set;
    if (st.ok()) st = adapter_load(adapter, m, set);   // a .gguf goes to gguf_lora_load
    if (st.ok()) st = adapter_save(out, set, model);
    if (!st.ok()) return cli_fail("convert", st);
    std::fprintf(stderr, "peft convert: wrote %s (%zu LoRA modules from %s)\n", out.c_str(), set.modules.size(), adapter.c_str());
    return 0;
}

} // namespace peft
