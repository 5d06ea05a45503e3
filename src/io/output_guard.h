// output_guard.h: what a command may write, so that it never destroys what the user has.
// Three rules, checked before any long work:
//  1. An output path must not be, contain, or lie inside any input (model, adapter, data,
//     tokenizer, checkpoint), compared after resolving symlinks and relative paths.
//  2. A command creates or replaces a name inside a directory only when the name is absent or
//     a previous run of the same command wrote it. That is recorded in the directory's marker
//     file OUTPUT_MARKER ({"written_by": {"name": "command", ...}}; a name may end in '*', as
//     "checkpoint-*"), so `--force` or a second run replaces its own output and nothing else.
//  3. A directory that a run writes over minutes (training) is held under an exclusive flock on
//     OUTPUT_LOCK inside it; the kernel releases it when the process dies in any way. The file
//     holds the owner's PID so a second run can say who holds it.
// Not here: atomic writes themselves (atomic_file.h, checkpoint.h atomic_dir).
#pragma once
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

extern const char * const OUTPUT_MARKER;   // ".peft_output.json"
extern const char * const OUTPUT_LOCK;     // ".peft_lock"

struct input_path {
    std::string role;   // "base model", "adapter", "data file", ... (for messages)
    std::string path;
};

// Rule 1: `out` (file or directory, need not exist) against every non-empty input path.
// `option` names the output in messages ("--out", "output_dir").
status output_check_overlap(const std::string & out, const std::string & option, const std::vector<input_path> & inputs);

// True when `inner` is `outer` or lies below it (after resolving both as rule 1 does).
bool path_is_within(const std::string & inner, const std::string & outer);

// Rule 2, for a command about to write `names` into `dir` (entries may end in '*'): every
// existing entry of dir that one of `names` matches must have been written by `command`.
status output_check_names(const std::string & dir, const std::string & command, const std::vector<std::string> & names);
// True when `inner` is `outer` or lies below it (after resolving both as rule 1 does).
bool path_is_within(const std::string & inner, const std::string & outer);

// Rule 2, for a command about to replace the whole directory `dir` (`--force`): dir is absent or
// empty, or every entry in it was written by `command`.
status output_check_replace(const std::string & dir, const std::string & command);
// Records in dir's marker that `command` wrote `names` (merged with what is there, atomically).
status output_mark(const std::string & dir, const std::string & command, const std::vector<std::string> & names);

// Rule 3: an exclusive lock on dir (created when missing). Released by the destructor, or by
// the kernel when the process dies.
struct output_lock {
    output_lock() = default;
    ~output_lock();
    output_lock(const output_lock &) = delete;
    output_lock & operator=(const output_lock &) = delete;
    status acquire(const std::string & dir, const std::string & command);

private:
    int fd = -1;
};

} // namespace peft
