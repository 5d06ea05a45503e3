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

} // namespace peft
