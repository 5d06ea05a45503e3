// cli_common.h: what every subcommand shares: exit codes, the error line + hint, and CLI11
// parsing that maps every usage error to exit code 2 (README "Exit codes").
#pragma once
#include <string>

#include "core/quant.h"
#include "core/status.h"

namespace CLI { class App; }

namespace peft {

enum exit_code { EXIT_OK = 0, EXIT_ERROR = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130 };

// EXIT_USAGE for a wrong command line or configuration (PEFT_STATUS_ARGUMENT, PEFT_STATUS_CONFIG),
// EXIT_INTERRUPTED for PEFT_STATUS_INTERRUPTED, else EXIT_ERROR.
int exit_code_of(const status & st);
// Prints "peft <command>: <message>" and "---> HINT: <hint>" on stderr; returns exit_code_of(st).
int cli_fail(const char * command, const status & st);

// Parses argv into app. Returns -1 to go on, else the exit code to return at once:
// 0 after --help, EXIT_USAGE for an unknown flag, a missing or bad value.
int cli_parse(CLI::App & app, int argc, char ** argv);

// --load-in-4bit and its bitsandbytes options (transformers' names), shared by eval, generate,
// merge and bench. cli_quant returns null without --load-in-4bit, else the parsed options.
struct cli_quant_flags {
    bool          load_in_4bit = false;
    bool          double_quant = false;
    std::string   quant_type = "nf4";
    std::string   compute_dtype = "float32";
    quant_options parsed;
};
void cli_add_quant_flags(CLI::App & app, cli_quant_flags & f);
status cli_quant(cli_quant_flags & f, const quant_options ** out);

// The valid range of every --threads option (0 = all cores).
constexpr int THREADS_MAX = 1024;

} // namespace peft
