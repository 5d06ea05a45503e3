// atomic_file.h: write a file so readers see either the old content or the complete new one.
// Bytes go to `path + ".tmp.<pid>"`, which is flushed, fsync'ed and renamed over `path`; any
// failed write (disk full, EIO, quota) removes the temp file and leaves the old file untouched.
// Not a lock: two processes writing the same path race on the final rename (last one wins).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/status.h"

namespace peft {

// Streaming form, for writers whose output is too large to build in memory (safetensors).
// Usage: open(path); write(...)...; commit(). Destroying it uncommitted removes the temp file.
struct atomic_file {
    atomic_file() = default;
    ~atomic_file();
    atomic_file(const atomic_file &) = delete;
    atomic_file & operator=(const atomic_file &) = delete;

    status open(const std::string & path);
    // After the first failure every later call returns that failure again (so callers may
    // check only commit()), but checking each write gives an earlier exit.
    status write(const void * bytes, size_t n);
    status commit();   // fsync + close + rename + fsync(dir)
    void   abort();    // close and remove the temp file

    const std::string & temp_path() const { return tmp; }

private:
    std::string dst, tmp;
    int         fd = -1;
    status      failed;  // first failure, sticky
};

// A directory that appears complete or not at all: files go into path() ("<dir>.tmp"), then
// commit() swaps it with <dir> atomically (an old <dir> is replaced). Destroying it uncommitted,
// or any failure, removes the temporary directory. begin() removes a leftover "<dir>.tmp": the
// caller makes sure it is its own (output_guard.h).
struct atomic_dir {
    atomic_dir() = default;
    ~atomic_dir();
    atomic_dir(const atomic_dir &) = delete;
    atomic_dir & operator=(const atomic_dir &) = delete;

    status begin(const std::string & dir);
    const std::string & path() const { return tmp; }
    status commit();
    void   abort();

private:
    std::string dst, tmp;
    bool        open = false;
};

// Writes `bytes` to `path` atomically (see above).
status write_file_atomic(const std::string & path, const std::string & bytes);

} // namespace peft
