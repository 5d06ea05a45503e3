// json.h: the small JSON interface of peft.cpp. The heavy nlohmann header lives only in
// json.cpp; everything else sees these two types. Parsing untrusted text returns a status
// (depth, size and duplicate-key limits), so this is the fuzzable boundary for JSON.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace peft {

// A read-only view into a parsed document; cheap to copy; valid while its document lives.
// Accessors on the wrong type return the fallback (use the is_* checks to validate).
struct json_value {
    const void * node = nullptr;  // nlohmann::ordered_json *, null = missing

    bool valid() const { return node != nullptr; }   // false for a missing key
    bool is_null() const;
    bool is_object() const;
    bool is_array() const;
    bool is_string() const;
    bool is_number() const;
    bool is_integer() const;
    bool is_bool() const;

    size_t      size() const;                         // array length or member count
    json_value  at(size_t i) const;                   // array element
    json_value  get(const std::string & key) const;   // object member; !valid() if absent
    std::string key_at(size_t i) const;               // i-th member name (document order)
    json_value  value_at(size_t i) const;             // i-th member value

    std::string as_string(const std::string & fallback = "") const;
    double      as_double(double fallback = 0.0) const;
    int64_t     as_int(int64_t fallback = 0) const;
    bool        as_bool(bool fallback = false) const;
    std::string dump() const;                         // compact text of this value
};

struct json_document {
    json_document();
    ~json_document();
    json_document(json_document &&) noexcept;
    json_document & operator=(json_document &&) noexcept;

    // `where` names the source in error messages (a file path). Rejects duplicate keys,
    // nesting deeper than 256 and inputs over max_bytes.
    status parse(const char * text, size_t n, const std::string & where,
                 size_t max_bytes = (size_t) 1 << 30);
    status parse_file(const std::string & path, size_t max_bytes = (size_t) 1 << 30);
    json_value root() const;

private:
    struct impl;
    std::unique_ptr<impl> p;
};

// Quotes and escapes s as a JSON string literal (for writers that build JSON by hand).
std::string json_quote(const std::string & s);

} // namespace peft
