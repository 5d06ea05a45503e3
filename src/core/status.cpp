#include "core/status.h"

#include <cstdio>
#include <cstdlib>

namespace peft {

static const char * STATUS_CODE_NAMES[] = {
    "ok", "io error", "format error", "shape error", "config error",
    "argument error", "numeric error", "out of memory", "interrupted",
};
static_assert(sizeof(STATUS_CODE_NAMES) / sizeof(STATUS_CODE_NAMES[0]) == PEFT_STATUS_COUNT);

const char * status_code_name(status_code code) {
    return code >= 0 && code < PEFT_STATUS_COUNT ? STATUS_CODE_NAMES[code] : "unknown";
}

status make_error(status_code code, const std::string & where, const std::string & what) {
    status st;
    st.code = code;
    st.message = where.empty() ? what : where + ": " + what;
    return st;
}

status make_mismatch(status_code code, const std::string & where, const std::string & what,
                     const std::string & expected, const std::string & got) {
    return make_error(code, where, what + ": expected " + expected + ", got " + got);
}

void assert_fail(const char * file, int line, const char * cond) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s:%d: PEFT_ASSERT(%s) failed\n", file, line, cond);
    std::abort();
}

} // namespace peft
