// fuzz_target.cpp: the libFuzzer entry point of every target. cmake/fuzz.cmake compiles it once
// per body in fuzz_bodies.h, naming the body with -DPEFT_FUZZ_BODY=<target>_one.
#include "fuzz/fuzz_bodies.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    return peft::fuzz::PEFT_FUZZ_BODY(data, size);
}
