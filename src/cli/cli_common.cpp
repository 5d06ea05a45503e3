// cli_common.cpp: shared exit codes and parsing of the subcommands (cli_common.h).
#include "cli/cli_common.h"

#include <CLI/CLI.hpp>
#include <cstdio>

namespace peft {

int exit_code_of(const status & st) {
    if (st.code == PEFT_STATUS_ARGUMENT || st.code == PEFT_STATUS_CONFIG) return EXIT_USAGE;
    return st.code == PEFT_STATUS_INTERRUPTED ? EXIT_INTERRUPTED : EXIT_ERROR;
}

int cli_fail(const char * command, const status & st) {
    std::fprintf(stderr, "peft %s: %s\n", command, st.message.c_str());
    if (!st.hint.empty()) std::fprintf(stderr, "---> HINT: %s\n", st.hint.c_str());
    return exit_code_of(st);
}

int cli_parse(CLI::App & app, int argc, char ** argv) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError & e) {
        // CLI11's own codes (106, 109, 114 ...) differ per error kind; users and scripts get
        // one: 2, as getopt-style tools do
        const int rc = app.exit(e);
        return rc == 0 ? EXIT_OK : EXIT_USAGE;
    }
    return -1;
}

void cli_add_quant_flags(CLI::App & app, cli_quant_flags & f) {
    app.add_flag("--load-in-4bit,--load_in_4bit", f.load_in_4bit,
                 "quantize the frozen q/k/v/o/gate/up/down weights to 4 bits at load (QLoRA's base)");
    app.add_option("--bnb-4bit-quant-type,--bnb_4bit_quant_type", f.quant_type, "4-bit type: nf4");
    app.add_flag("--bnb-4bit-use-double-quant,--bnb_4bit_use_double_quant", f.double_quant,
                 "also quantize the per-block scales (about 4.13 bits/param instead of 4.5)");
    app.add_option("--bnb-4bit-compute-dtype,--bnb_4bit_compute_dtype", f.compute_dtype,
                   "dequantized weight dtype: float32 or bfloat16 (as the adapter was trained with)");
}

status cli_quant(cli_quant_flags & f, const quant_options ** out) {
    *out = nullptr;
    if (!f.load_in_4bit) return {};
    PEFT_TRY(quant_options_parse(f.quant_type, f.compute_dtype, f.double_quant, "--load-in-4bit", f.parsed));
    *out = &f.parsed;
    return {};
}

} // namespace peft
