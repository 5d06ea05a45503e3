// mmap.cpp: POSIX implementation of mapped_file (see mmap.h).
#include "io/mmap.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace peft {

// Points empty files somewhere valid so callers can do pointer arithmetic with offset 0.
static const uint8_t EMPTY_FILE_BYTE = 0;

mapped_file::~mapped_file() { close(); }

mapped_file::mapped_file(mapped_file && o) noexcept
    : data(o.data), size(o.size), path(std::move(o.path)), map_base(o.map_base), map_len(o.map_len) {
    o.data = nullptr;
    o.size = 0;
    o.map_base = nullptr;
    o.map_len = 0;
}

mapped_file & mapped_file::operator=(mapped_file && o) noexcept {
    if (this != &o) {
        close();
        data = o.data;
        size = o.size;
        path = std::move(o.path);
        map_base = o.map_base;
        map_len = o.map_len;
        o.data = nullptr;
        o.size = 0;
        o.map_base = nullptr;
        o.map_len = 0;
    }
    return *this;
}

void mapped_file::close() {
    if (map_base) munmap(map_base, map_len);
    map_base = nullptr;
    map_len = 0;
    data = nullptr;
    size = 0;
}

static status io_errno(const std::string & path, const char * what, int err) {
    return make_error(PEFT_STATUS_IO, path, std::string(what) + ": " + std::strerror(err));
}

status mapped_file::open(const std::string & file_path) {
    close();
    path = file_path;
    int fd = ::open(file_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT) return make_error(PEFT_STATUS_IO, file_path, "file not found");
        return io_errno(file_path, "cannot open file for reading", err);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        return io_errno(file_path, "cannot stat file", err);
    }
    if (S_ISDIR(st.st_mode)) {
        ::close(fd);
        return make_error(PEFT_STATUS_IO, file_path, "is a directory, expected a file");
    }
    if (!S_ISREG(st.st_mode)) {
        // pipes and devices cannot be mapped (and may be endless)
        ::close(fd);
        return make_error(PEFT_STATUS_IO, file_path, "not a regular file");
    }
    if (st.st_size < 0 || (uint64_t) st.st_size > (uint64_t) SIZE_MAX) {
        ::close(fd);
        return make_error(PEFT_STATUS_IO, file_path, "file size not representable in memory");
    }
    size_t len = (size_t) st.st_size;
    if (len == 0) {
        ::close(fd);
        data = &EMPTY_FILE_BYTE;
        size = 0;
        return {};
    }
    void * p = mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    ::close(fd);  // the mapping keeps its own reference to the file
    if (p == MAP_FAILED) return io_errno(file_path, "cannot mmap file", err);
    map_base = p;
    map_len = len;
    data = (const uint8_t *) p;
    size = len;
    return {};
}

} // namespace peft
