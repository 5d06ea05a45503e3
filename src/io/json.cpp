// json.cpp: wraps nlohmann::ordered_json behind json.h. The only file that includes it.
#include "io/json.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace peft {

using ojson = nlohmann::ordered_json;

static const ojson * J(const void * p) { return (const ojson *) p; }

bool json_value::is_null() const { return node && J(node)->is_null(); }
bool json_value::is_object() const { return node && J(node)->is_object(); }
bool json_value::is_array() const { return node && J(node)->is_array(); }
bool json_value::is_string() const { return node && J(node)->is_string(); }
bool json_value::is_number() const { return node && J(node)->is_number(); }
bool json_value::is_integer() const { return node && J(node)->is_number_integer(); }
bool json_value::is_bool() const { return node && J(node)->is_boolean(); }

size_t json_value::size() const {
    if (!node) return 0;
    const ojson & j = *J(node);
    return j.is_array() || j.is_object() ? j.size() : 0;
}

json_value json_value::at(size_t i) const {
    if (!is_array() || i >= J(node)->size()) return {};
    return {&(*J(node))[i]};
}

json_value json_value::get(const std::string & key) const {
    if (!is_object()) return {};
    auto it = J(node)->find(key);
    if (it == J(node)->end()) return {};
    return {&*it};
}

// ordered_json's object is a std::vector of pairs, so the i-th member is O(1); stepping a json
// iterator instead would make a loop over a large object (a 100 MB header) quadratic.
std::string json_value::key_at(size_t i) const {
    if (!is_object() || i >= J(node)->size()) return {};
    const ojson::object_t & obj = J(node)->get_ref<const ojson::object_t &>();
    return (obj.begin() + (std::ptrdiff_t) i)->first;
}

json_value json_value::value_at(size_t i) const {
    if (!is_object() || i >= J(node)->size()) return {};
    const ojson::object_t & obj = J(node)->get_ref<const ojson::object_t &>();
    return {&(obj.begin() + (std::ptrdiff_t) i)->second};
}

std::string json_value::as_string(const std::string & fallback) const {
    return is_string() ? J(node)->get<std::string>() : fallback;
}
double json_value::as_double(double fallback) const {
    return is_number() ? J(node)->get<double>() : fallback;
}
int64_t json_value::as_int(int64_t fallback) const {
    if (!is_number()) return fallback;
    const ojson & j = *J(node);
    // values that do not fit int64 are the wrong type, not a wrapped-around number
    if (j.is_number_unsigned()) {
        uint64_t u = j.get<uint64_t>();
        return u <= (uint64_t) INT64_MAX ? (int64_t) u : fallback;
    }
    if (j.is_number_integer()) return j.get<int64_t>();
    double d = j.get<double>();
    // range check first: casting an out-of-range double to int64 is undefined behaviour
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return fallback;
    return d == (double) (int64_t) d ? (int64_t) d : fallback;
}
bool json_value::as_bool(bool fallback) const { return is_bool() ? J(node)->get<bool>() : fallback; }
std::string json_value::dump() const { return node ? J(node)->dump() : "null"; }

struct json_document::impl {
    ojson doc;
};

json_document::json_document() : p(std::make_unique<impl>()) {}
json_document::~json_document() = default;
json_document::json_document(json_document &&) noexcept = default;
json_document & json_document::operator=(json_document &&) noexcept = default;

status json_document::parse(const char * text, size_t n, const std::string & where, size_t max_bytes) {
    if (n > max_bytes) {
        return make_mismatch(PEFT_STATUS_FORMAT, where, "JSON text size", "at most " + std::to_string(max_bytes) + " bytes",
                             std::to_string(n) + " bytes");
    }
    // Parser callback: tracks keys per open object to reject duplicates and caps depth.
    std::vector<std::set<std::string>> open_keys;
    std::string problem;
    auto cb = [&](int depth, ojson::parse_event_t ev, ojson & parsed) {
        if (!problem.empty()) return false;
        switch (ev) {
            case ojson::parse_event_t::object_start:
            case ojson::parse_event_t::array_start:
                if (depth >= 256) { problem = "nesting deeper than 256 levels"; return false; }
                if (ev == ojson::parse_event_t::object_start) open_keys.emplace_back();
                break;
            case ojson::parse_event_t::object_end:
                if (!open_keys.empty()) open_keys.pop_back();
                break;
            case ojson::parse_event_t::key:
                if (!open_keys.empty() && !open_keys.back().insert(parsed.get<std::string>()).second) {
                    problem = "duplicate key \"" + parsed.get<std::string>() + "\"";
                    return false;
                }
                break;
            default: break;
        }
        return true;
    };
    try {
        p->doc = ojson::parse(text, text + n, cb, /*allow_exceptions=*/true);
    } catch (const std::exception & e) {
        p->doc = ojson();
        return make_error(PEFT_STATUS_FORMAT, where, "invalid JSON: " + std::string(e.what()));
    }
    if (!problem.empty()) {
        p->doc = ojson();
        return make_error(PEFT_STATUS_FORMAT, where, "invalid JSON: " + problem);
    }
    return {};
}

status json_document::parse_file(const std::string & path, size_t max_bytes) {
    // stat first: an ifstream happily "opens" a directory and then reports a bogus size
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return make_error(PEFT_STATUS_IO, path, "file not found");
        return make_error(PEFT_STATUS_IO, path, std::string("cannot open file for reading: ") + std::strerror(errno));
    }
    if (S_ISDIR(st.st_mode)) return make_error(PEFT_STATUS_IO, path, "is a directory, expected a file");
    if (!S_ISREG(st.st_mode)) return make_error(PEFT_STATUS_IO, path, "not a regular file");
    if ((uint64_t) st.st_size > max_bytes) {
        return make_mismatch(PEFT_STATUS_FORMAT, path, "JSON file size", "at most " + std::to_string(max_bytes) + " bytes",
                             std::to_string((uint64_t) st.st_size) + " bytes");
    }
    std::ifstream f(path, std::ios::binary);
    if (!f) return make_error(PEFT_STATUS_IO, path, "cannot open file for reading");
    // read at most max_bytes + 1, so a file growing after the stat is still caught by parse()
    std::string text;
    char buf[65536];
    while (f && text.size() <= max_bytes) {
        f.read(buf, sizeof(buf));
        text.append(buf, (size_t) f.gcount());
    }
    if (f.bad()) return make_error(PEFT_STATUS_IO, path, "read error");
    return parse(text.data(), text.size(), path, max_bytes);
}

json_value json_document::root() const { return {&p->doc}; }

std::string json_quote(const std::string & s) {
    return ojson(s).dump(-1, ' ', false, ojson::error_handler_t::replace);
}

} // namespace peft
