// fuzz_safetensors.cpp: libFuzzer target for the safetensors reader (and writer round trip).
// Build: cmake -DPEFT_FUZZ=ON with clang (cmake/fuzz.cmake); run e.g.
//   ./fuzz_safetensors -max_total_time=60 -dict=tests/fuzz/safetensors.dict tests/fuzz/corpus_safetensors
#include "fuzz/fuzz_bodies.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    return peft::fuzz::safetensors_one(data, size);
}
