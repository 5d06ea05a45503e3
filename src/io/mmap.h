// mmap.h: read-only memory mapping of a whole file (RAII). Used by the safetensors reader so
// multi-GB checkpoints are paged in lazily instead of copied.
// Not a general I/O layer: no writing, no partial maps, no Windows. Zero-length files are not
// mapped (mmap rejects length 0); they yield size 0 and a non-null empty `data`.
// A file truncated by another process while mapped raises SIGBUS on access; we do not defend
// against concurrent modification of inputs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/status.h"

namespace peft {

struct mapped_file {
    const uint8_t * data = nullptr;  // size bytes, read-only; valid until close()/destruction
    size_t          size = 0;
    std::string     path;

    mapped_file() = default;
    ~mapped_file();
    mapped_file(const mapped_file &) = delete;
    mapped_file & operator=(const mapped_file &) = delete;
    mapped_file(mapped_file && o) noexcept;
    mapped_file & operator=(mapped_file && o) noexcept;

    // Maps `path` (a regular file). Errors (PEFT_STATUS_IO) name the path and the reason:
    // missing, a directory, not a regular file, permission denied, mmap failure.
    status open(const std::string & path);
    void   close();
    bool   is_open() const { return data != nullptr; }

private:
    void * map_base = nullptr;  // null for empty files
    size_t map_len = 0;
};

} // namespace peft
