// atomic_file.cpp: temp file + fsync + rename (see atomic_file.h).
#include "io/atomic_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <sys/stat.h>
#include <unistd.h>

namespace peft {

namespace fs = std::filesystem;

static status errno_status(const std::string & path, const std::string & what, int err) {
    return make_error(PEFT_STATUS_IO, path, what + ": " + std::strerror(err));
}

atomic_file::~atomic_file() { abort(); }

status atomic_file::open(const std::string & path) {
    abort();
    failed = {};
    dst = path;
    tmp = path + ".tmp." + std::to_string((long) getpid());
    // O_TRUNC: a stale temp of a crashed process with the same pid is simply overwritten.
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        failed = errno_status(path, "cannot create temporary file '" + tmp + "'", errno);
        tmp.clear();
        return failed;
    }
    return {};
}

status atomic_file::write(const void * bytes, size_t n) {
    if (!failed.ok()) return failed;
    if (fd < 0) return failed = make_error(PEFT_STATUS_IO, dst, "write to a file that is not open");
    const char * p = (const char *) bytes;
    while (n > 0) {
        // Linux writes at most ~2 GiB per call; loop on short writes and EINTR.
        size_t chunk = n < ((size_t) 1 << 30) ? n : ((size_t) 1 << 30);
        ssize_t w = ::write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            int err = errno;
            failed = errno_status(dst, "write failed", err);
            abort();
            return failed;
        }
        if (w == 0) {  // should not happen for regular files; avoid spinning forever
            failed = make_error(PEFT_STATUS_IO, dst, "write failed: no progress");
            abort();
            return failed;
        }
        p += w;
        n -= (size_t) w;
    }
    return {};
}

status atomic_file::commit() {
    if (!failed.ok()) return failed;
    if (fd < 0) return failed = make_error(PEFT_STATUS_IO, dst, "commit of a file that is not open");
    // fsync before rename: otherwise a crash can leave a renamed but empty file.
    if (fsync(fd) != 0) {
        failed = errno_status(dst, "fsync failed", errno);
        abort();
        return failed;
    }
    int rc = ::close(fd);
    fd = -1;
    if (rc != 0) {  // NFS and some filesystems report deferred write errors here
        failed = errno_status(dst, "close failed", errno);
        abort();
        return failed;
    }
    if (std::rename(tmp.c_str(), dst.c_str()) != 0) {
        failed = errno_status(dst, "cannot rename '" + tmp + "' over it", errno);
        abort();
        return failed;
    }
    tmp.clear();
    // Make the rename itself durable. Failure here is not reported: the data is complete
    // and visible; only durability across a power loss is in question.
    std::string dir = ".";
    size_t slash = dst.rfind('/');
    if (slash != std::string::npos) dir = slash == 0 ? "/" : dst.substr(0, slash);
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void) fsync(dfd);
        ::close(dfd);
    }
    return {};
}

void atomic_file::abort() {
    if (fd >= 0) {
        ::close(fd);
        fd = -1;
    }
    if (!tmp.empty()) {
        ::unlink(tmp.c_str());
        tmp.clear();
    }
}

status write_file_atomic(const std::string & path, const std::string & bytes) {
    atomic_file f;
    PEFT_TRY(f.open(path));
    PEFT_TRY(f.write(bytes.data(), bytes.size()));
    return f.commit();
}

static void fsync_dir(const std::string & dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void) ::fsync(fd);
        ::close(fd);
    }
}

atomic_dir::~atomic_dir() { abort(); }

status atomic_dir::begin(const std::string & dir) {
    abort();
    dst = dir;
    while (!dst.empty() && dst.back() == '/') dst.pop_back();
    tmp = dst + ".tmp";
    std::error_code ec;
    fs::remove_all(tmp, ec);   // a leftover of a crashed save
    if (!fs::create_directories(tmp, ec) || ec) {
        return make_error(PEFT_STATUS_IO, tmp, "cannot create directory: " + (ec ? ec.message() : std::string("already exists")));
    }
    open = true;
    return {};
}

status atomic_dir::commit() {
    if (!open) return make_error(PEFT_STATUS_IO, dst, "commit without begin");
    std::error_code ec;
    fsync_dir(tmp);
    // An existing directory cannot be renamed over: swap the two atomically instead, so a crash
    // at any point leaves a complete <dir> (old or new); the old one is then in <dir>.tmp, which
    // is dropped below or by the stale-directory cleanup of the next run.
    const bool had_old = fs::exists(dst, ec);
    int rc = had_old ? ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dst.c_str(), RENAME_EXCHANGE) : ::rename(tmp.c_str(), dst.c_str());
    if (rc != 0 && had_old && (errno == EINVAL || errno == ENOSYS)) {
        // a file system without RENAME_EXCHANGE: move the old directory aside (a crash between
        // the two renames leaves it as <dir>.old), then rename
        const std::string old = dst + ".old." + std::to_string((long) getpid());   // never somebody's <dir>.old
        rc = ::rename(dst.c_str(), old.c_str());
        if (rc == 0 && (rc = ::rename(tmp.c_str(), dst.c_str())) == 0) ::rename(old.c_str(), tmp.c_str());
        else if (rc != 0) ::rename(old.c_str(), dst.c_str());
    }
    if (rc != 0) {
        status st = make_error(PEFT_STATUS_IO, dst, "cannot rename " + tmp + " into place: " + std::strerror(errno));
        abort();
        return st;
    }
    open = false;
    fsync_dir(fs::path(dst).parent_path().empty() ? "." : fs::path(dst).parent_path().string());
    if (had_old) fs::remove_all(tmp, ec);
    return {};
}

void atomic_dir::abort() {
    if (!open) return;
    std::error_code ec;
    fs::remove_all(tmp, ec);
    open = false;
}

} // namespace peft
