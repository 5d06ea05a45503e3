// output_guard.cpp: output paths, ownership markers and directory locks (output_guard.h).
#include "io/output_guard.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <map>
#include <sys/file.h>
#include <unistd.h>

#include "io/atomic_file.h"
#include "io/json.h"

namespace peft {

namespace fs = std::filesystem;

const char * const OUTPUT_MARKER = ".peft_output.json";
const char * const OUTPUT_LOCK = ".peft_lock";

namespace {

// Absolute, symlinks of the existing prefix resolved, no "." / ".." / trailing separator.
fs::path resolved(const std::string & p) {
    std::error_code ec;
    fs::path r = fs::weakly_canonical(fs::absolute(p, ec), ec).lexically_normal();
    if (!r.has_filename() && r.has_parent_path() && r != r.root_path()) r = r.parent_path();
    return r;
}

// inner == outer, or inner is somewhere below outer.
bool is_within(const fs::path & inner, const fs::path & outer) {
    auto i = inner.begin(), o = outer.begin();
    for (; o != outer.end(); ++i, ++o) {
        if (i == inner.end() || *i != *o) return false;
    }
    return true;
}

bool name_matches(const std::string & pattern, const std::string & name) {
    if (!pattern.empty() && pattern.back() == '*') return name.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0;
    return pattern == name;
}

// The marker (or its temporary, left by a crash while it was written) and the lock.
bool is_bookkeeping(const std::string & name) {
    return name == OUTPUT_LOCK || name == OUTPUT_MARKER || name.rfind(std::string(OUTPUT_MARKER) + ".tmp.", 0) == 0;
}

// The marker of dir: name pattern -> command (empty when there is none).
status marker_read(const std::string & dir, std::map<std::string, std::string> & out) {
    out.clear();
    const std::string path = dir + "/" + OUTPUT_MARKER;
    std::error_code ec;
    if (!fs::exists(path, ec)) return {};
    json_document d;
    status st = d.parse_file(path, 1 << 20);
    const json_value w = st.ok() ? d.root().get("written_by") : json_value{};
    if (!st.ok() || !w.is_object()) {
        status e = make_error(PEFT_STATUS_FORMAT, path, "unreadable output marker" + (st.ok() ? std::string() : ": " + st.message));
        e.hint = "this file records what peft wrote in " + dir + "; remove the directory's peft outputs by hand, or pick another output";
        return e;
    }
    for (size_t i = 0; i < w.size(); i++) out[w.key_at(i)] = w.value_at(i).as_string();
    return {};
}

// The command that wrote `name`; "<name>.tmp.<pid>" (atomic_file.h's temporary, left by a
// crash) belongs to whoever owns <name>.
const std::string * writer_of(const std::map<std::string, std::string> & marker, const std::string & name) {
    const size_t t = name.rfind(".tmp.");
    const std::string base = t != std::string::npos && t > 0 ? name.substr(0, t) : name;
    for (const auto & kv : marker) {
        if (name_matches(kv.first, name) || name_matches(kv.first, base)) return &kv.second;
    }
    return nullptr;
}

status not_ours(const std::string & dir, const std::string & name, const std::string & command, const std::string * writer) {
    status st = make_error(PEFT_STATUS_IO, dir + "/" + name,
                           "exists and was not written by peft " + command + (writer ? " (peft " + *writer + " wrote it)" : std::string()) +
                               "; refusing to overwrite or delete it");
    st.hint = "choose an output directory that is new, empty or a previous output of peft " + command + ", or move this file away";
    return st;
}

} // namespace

bool path_is_within(const std::string & inner, const std::string & outer) { return is_within(resolved(inner), resolved(outer)); }

status output_check_overlap(const std::string & out, const std::string & option, const std::vector<input_path> & inputs) {
    const fs::path o = resolved(out);
    for (const input_path & in : inputs) {
        if (in.path.empty()) continue;
        const fs::path i = resolved(in.path);
        const char * how = o == i ? "is" : is_within(i, o) ? "contains" : is_within(o, i) ? "lies inside" : nullptr;
        if (!how) continue;
        status st = make_error(PEFT_STATUS_ARGUMENT, out,
                               option + " " + how + " the " + in.role + " '" + in.path + "'" + (o == i || in.path == i.string() ? "" : " (" + i.string() + ")"));
        st.hint = "choose " + option + " outside every input: an output never replaces, contains or sits inside what it was made from";
        return st;
    }
    return {};
}

status output_check_names(const std::string & dir, const std::string & command, const std::vector<std::string> & names) {
    std::error_code ec;
    if (!fs::exists(dir, ec)) return {};
    if (!fs::is_directory(dir, ec)) return make_error(PEFT_STATUS_IO, dir, "exists and is not a directory");
    std::map<std::string, std::string> marker;
    bool marker_loaded = false;
    for (const fs::directory_entry & e : fs::directory_iterator(dir, ec)) {
        const std::string n = e.path().filename().string();
        if (is_bookkeeping(n)) continue;
        bool ours_to_write = false;
        for (const std::string & p : names) ours_to_write = ours_to_write || name_matches(p, n);
        if (!ours_to_write) continue;
        if (!marker_loaded) PEFT_TRY(marker_read(dir, marker));
        marker_loaded = true;
        const std::string * w = writer_of(marker, n);
        if (!w || *w != command) return not_ours(dir, n, command, w);
    }
    if (ec) return make_error(PEFT_STATUS_IO, dir, "cannot list directory: " + ec.message());
    return {};
}

status output_check_replace(const std::string & dir, const std::string & command) {
    std::error_code ec;
    if (!fs::exists(dir, ec)) return {};
    if (!fs::is_directory(dir, ec)) return make_error(PEFT_STATUS_IO, dir, "exists and is not a directory");
    std::map<std::string, std::string> marker;
    PEFT_TRY(marker_read(dir, marker));
    for (const fs::directory_entry & e : fs::directory_iterator(dir, ec)) {
        const std::string n = e.path().filename().string();
        if (is_bookkeeping(n)) continue;
        const std::string * w = writer_of(marker, n);
        if (!w || *w != command) return not_ours(dir, n, command, w);
    }
    if (ec) return make_error(PEFT_STATUS_IO, dir, "cannot list directory: " + ec.message());
    return {};
}

status output_mark(const std::string & dir, const std::string & command, const std::vector<std::string> & names) {
    std::map<std::string, std::string> marker;
    PEFT_TRY(marker_read(dir, marker));
    for (const std::string & n : names) marker[n] = command;
    std::string text = "{\"written_by\": {";
    bool first = true;
    for (const auto & kv : marker) {
        text += (first ? "" : ", ") + json_quote(kv.first) + ": " + json_quote(kv.second);
        first = false;
    }
    return write_file_atomic(dir + "/" + OUTPUT_MARKER, text + "}}\n");
}

output_lock::~output_lock() {
    if (fd >= 0) ::close(fd);   // closing the descriptor releases the flock
}

status output_lock::acquire(const std::string & dir, const std::string & command) {
    const std::string path = dir + "/" + OUTPUT_LOCK;
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return make_error(PEFT_STATUS_IO, path, std::string("cannot open lock file: ") + std::strerror(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        char buf[32] = {0};
        const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
        ::close(fd);
        fd = -1;
        if (err != EWOULDBLOCK) return make_error(PEFT_STATUS_IO, path, std::string("cannot lock: ") + std::strerror(err));
        std::string pid = n > 0 ? std::string(buf, (size_t) n) : "";
        while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
        status st = make_error(PEFT_STATUS_IO, dir, "is in use by another peft " + command + (pid.empty() ? "" : " (PID " + pid + ")"));
        st.hint = "wait for that run to finish, or choose another output directory (the lock ends when that process exits)";
        return st;
    }
    const std::string me = std::to_string((long) getpid()) + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) != (ssize_t) me.size()) {
        return make_error(PEFT_STATUS_IO, path, std::string("cannot write lock file: ") + std::strerror(errno));
    }
    return {};
}

} // namespace peft
