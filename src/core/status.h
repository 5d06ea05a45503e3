// status.h: how peft.cpp reports errors (ARCHITECTURE §9).
// Untrusted input (files, JSON, CLI args) returns a `status` naming what is wrong; programmer
// errors hit PEFT_ASSERT, which prints file:line and aborts (kept in release builds).
#pragma once
#include <string>

namespace peft {

enum status_code {
    PEFT_STATUS_OK = 0,
    PEFT_STATUS_IO,        // cannot open/read/write a file or directory
    PEFT_STATUS_FORMAT,    // malformed file content (header, JSON, offsets)
    PEFT_STATUS_SHAPE,     // a tensor's shape or dtype is not what the model needs
    PEFT_STATUS_CONFIG,    // bad configuration value or key
    PEFT_STATUS_ARGUMENT,  // bad command-line argument
    PEFT_STATUS_NUMERIC,   // NaN/Inf in loss or gradients
    PEFT_STATUS_MEMORY,    // allocation refused
    PEFT_STATUS_INTERRUPTED,
    PEFT_STATUS_COUNT,
};
const char * status_code_name(status_code code);

struct [[nodiscard]] status {
    status_code code = PEFT_STATUS_OK;
    std::string message;  // "file: what: expected X, got Y"
    std::string hint;     // optional: how to fix it

    bool ok() const { return code == PEFT_STATUS_OK; }
    static status success() { return {}; }
};

// Builds an error; `where` is usually a file path, `what` names the tensor/key/field.
status make_error(status_code code, const std::string & where, const std::string & what);
// "where: what: expected E, got G"
status make_mismatch(status_code code, const std::string & where, const std::string & what,
                     const std::string & expected, const std::string & got);

[[noreturn]] void assert_fail(const char * file, int line, const char * cond);

} // namespace peft

#define PEFT_ASSERT(cond) \
    do { if (!(cond)) ::peft::assert_fail(__FILE__, __LINE__, #cond); } while (0)

// Propagates a non-ok status to the caller.
#define PEFT_TRY(expr) \
    do { ::peft::status peft_try_st_ = (expr); if (!peft_try_st_.ok()) return peft_try_st_; } while (0)
