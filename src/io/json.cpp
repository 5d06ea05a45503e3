// json.cpp: wraps nlohmann::ordered_json behind json.h. The only file that includes it.
#include "io/json.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_set>
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

namespace {

// Builds the document through nlohmann's SAX interface instead of ojson::parse:
// - ordered_json's object is a vector whose emplace searches for the key first, so a plain
//   parse is quadratic in the member count (a 128k-entry tokenizer vocab or a 100 MB
//   safetensors header took minutes). Duplicates are found with a hash set per open object
//   and members are appended straight to the vector.
// - returning false stops the parse at once (depth limit, duplicate key), where a parse
//   callback only discards values and keeps scanning.
struct dom_builder {
    using object_items = std::vector<std::pair<const std::string, ojson>>;  // ordered_map's base

    ojson & root;
    std::vector<ojson *> stack;                              // open containers
    std::vector<std::unordered_set<std::string>> keys;       // one per open object
    std::string pending_key;
    std::string problem;

    explicit dom_builder(ojson & r) : root(r) {}

    // Places v in the innermost container (or as the root); returns where it went.
    ojson * put(ojson && v) {
        if (stack.empty()) {
            root = std::move(v);
            return &root;
        }
        ojson & parent = *stack.back();
        if (parent.is_array()) {
            auto & arr = parent.get_ref<ojson::array_t &>();
            arr.push_back(std::move(v));
            return &arr.back();
        }
        object_items & items = parent.get_ref<ojson::object_t &>();
        items.emplace_back(std::move(pending_key), std::move(v));
        return &items.back().second;
    }
    bool open(ojson::value_t t) {
        if (stack.size() >= 256) {
            problem = "nesting deeper than 256 levels";
            return false;
        }
        stack.push_back(put(ojson(t)));
        if (t == ojson::value_t::object) keys.emplace_back();
        return true;
    }

    bool null() { put(ojson(nullptr)); return true; }
    bool boolean(bool v) { put(ojson(v)); return true; }
    bool number_integer(ojson::number_integer_t v) { put(ojson(v)); return true; }
    bool number_unsigned(ojson::number_unsigned_t v) { put(ojson(v)); return true; }
    bool number_float(ojson::number_float_t v, const std::string &) { put(ojson(v)); return true; }
    bool string(std::string & v) { put(ojson(std::move(v))); return true; }
    bool binary(ojson::binary_t &) { problem = "binary values are not JSON"; return false; }
    bool start_object(std::size_t) { return open(ojson::value_t::object); }
    bool start_array(std::size_t) { return open(ojson::value_t::array); }
    bool key(std::string & k) {
        if (!keys.back().insert(k).second) {
            problem = "duplicate key \"" + k + "\"";
            return false;
        }
        pending_key = std::move(k);
        return true;
    }
    bool end_object() {
        stack.pop_back();
        keys.pop_back();
        return true;
    }
    bool end_array() {
        stack.pop_back();
        return true;
    }
    bool parse_error(std::size_t, const std::string &, const nlohmann::detail::exception & ex) {
        problem = ex.what();
        return false;
    }
};

} // namespace

status json_document::parse(const char * text, size_t n, const std::string & where, size_t max_bytes) {
    p->doc = ojson();
    if (n > max_bytes) {
        return make_mismatch(PEFT_STATUS_FORMAT, where, "JSON text size", "at most " + std::to_string(max_bytes) + " bytes",
                             std::to_string(n) + " bytes");
    }
    // nlohmann's lexer takes a NUL byte for the end of input and would ignore what follows;
    // a NUL is never valid JSON (inside strings it must be escaped), so reject it here.
    if (const void * nul = n ? std::memchr(text, 0, n) : nullptr) {
        return make_error(PEFT_STATUS_FORMAT, where,
                          "invalid JSON: NUL byte at offset " + std::to_string((const char *) nul - text));
    }
    dom_builder b(p->doc);
    bool ok;
    try {
        ok = ojson::sax_parse(text, text + n, &b);
    } catch (const std::exception & e) {  // bad_alloc, or anything the library throws
        ok = false;
        b.problem = e.what();
    }
    if (!ok || !b.stack.empty()) {
        p->doc = ojson();
        if (b.problem.empty()) b.problem = "incomplete document";
        return make_error(PEFT_STATUS_FORMAT, where, "invalid JSON: " + b.problem);
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
