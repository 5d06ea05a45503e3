// fuzz_bodies.h: the per-input bodies of the libFuzzer targets, shared by fuzz_*.cpp (built
// with clang -fsanitize=fuzzer) and by tests/io/test_fuzz_replay.cpp, which replays the seed
// corpora plus deterministic mutations under plain gtest so CI covers them without clang.
// Beyond "does not crash", the bodies check invariants and abort() when one breaks:
// an accepted safetensors file re-serialises to a file that is accepted with the same tensors;
// a parsed JSON string survives json_quote -> parse.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "io/json.h"
#include "io/safetensors.h"

namespace peft::fuzz {

inline void fuzz_require(bool cond) {
    if (!cond) std::abort();
}

inline int safetensors_one(const uint8_t * data, size_t n) {
    safetensors_file f;
    if (!safetensors_parse(data, n, "fuzz.safetensors", f).ok()) return 0;

    std::vector<float> buf;
    std::vector<safetensors_tensor_to_write> again;
    for (const tensor_info & t : f.tensors) {
        fuzz_require(f.find(t.name) == &t);
        // every byte of every view must be inside the input (ASan checks the reads)
        const uint8_t * p = (const uint8_t *) t.data;
        fuzz_require(p >= data && t.n_bytes <= n && p + t.n_bytes <= data + n);
        unsigned acc = 0;
        for (uint64_t i = 0; i < t.n_bytes; i++) acc += p[i];
        (void) acc;
        if (t.is_float) {
            buf.resize((size_t) t.n_elements);
            fuzz_require(read_f32(t, buf.data()).ok());
        } else {
            fuzz_require(!read_f32(t, buf.data()).ok());
        }
        safetensors_tensor_to_write w;
        w.name = t.name;
        w.raw_dtype = safetensors_dtype_name(t.st_dtype);
        w.shape = t.shape;
        w.data = t.data;
        again.push_back(std::move(w));
    }

    // round trip through the writer
    std::string bytes;
    fuzz_require(safetensors_serialize(again, f.metadata, bytes).ok());
    safetensors_file g;
    fuzz_require(safetensors_parse((const uint8_t *) bytes.data(), bytes.size(), "rt", g).ok());
    fuzz_require(g.tensors.size() == f.tensors.size() && g.metadata == f.metadata);
    for (const tensor_info & t : f.tensors) {
        const tensor_info * u = g.find(t.name);
        fuzz_require(u && u->st_dtype == t.st_dtype && u->shape == t.shape && u->n_bytes == t.n_bytes);
        fuzz_require(t.n_bytes == 0 || std::memcmp(u->data, t.data, (size_t) t.n_bytes) == 0);
    }
    return 0;
}

// Visits every node (bounded by the parser's depth cap) through the json_value accessors.
inline void json_walk(const json_value & v, size_t & budget) {
    if (budget == 0) return;
    budget--;
    (void) v.is_null();
    (void) v.is_bool();
    (void) v.as_bool();
    (void) v.as_double();
    (void) v.as_int();
    if (v.is_string()) {
        std::string s = v.as_string();
        json_document d;
        std::string q = json_quote(s);
        fuzz_require(d.parse(q.data(), q.size(), "quoted").ok());
        fuzz_require(d.root().as_string() == s);
    } else if (v.is_array()) {
        for (size_t i = 0; i < v.size(); i++) json_walk(v.at(i), budget);
        fuzz_require(!v.at(v.size()).valid());
    } else if (v.is_object()) {
        for (size_t i = 0; i < v.size(); i++) {
            std::string k = v.key_at(i);
            json_value c = v.value_at(i);
            fuzz_require(v.get(k).node == c.node);  // keys are unique
            json_walk(c, budget);
        }
        fuzz_require(!v.value_at(v.size()).valid());
    }
}

inline int json_one(const uint8_t * data, size_t n) {
    json_document doc;
    if (!doc.parse((const char *) data, n, "fuzz.json").ok()) return 0;
    size_t budget = 100000;
    json_walk(doc.root(), budget);
    // compact dump re-parses (no duplicate keys can appear, numbers print round-trippably)
    std::string text = doc.root().dump();
    json_document again;
    fuzz_require(again.parse(text.data(), text.size(), "dump").ok());
    fuzz_require(again.root().dump() == text);
    return 0;
}

} // namespace peft::fuzz
