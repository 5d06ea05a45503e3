#include <cstdio>

#include "cli/commands.h"

namespace peft {
int cmd_bench(int argc, char ** argv) {
    std::fprintf(stderr, "peft bench: not built yet\n");
    return 1;
}
} // namespace peft
