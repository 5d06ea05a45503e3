// fuzz_json.cpp: libFuzzer target for the JSON wrapper (duplicate keys, depth cap, accessors).
#include "fuzz/fuzz_bodies.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    return peft::fuzz::json_one(data, size);
}
