# fuzz.cmake: in-tree libFuzzer targets (FORMATS.md "Checklist our io/ must meet"), built only
# with -DPEFT_FUZZ=ON and clang:
#   CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DPEFT_FUZZ=ON
#   ninja -C build-fuzz fuzz_safetensors fuzz_json
#   ctest --test-dir build-fuzz -L fuzz            # corpus replay + 60 s run per target
# The targets link a small instrumented library of just the sources they reach, so a fuzz
# build does not compile (or depend on) the rest of peft_core.
# Without clang, CI still replays the corpora through tests/io/test_fuzz_replay.cpp.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "PEFT_FUZZ=ON needs clang with libFuzzer: configure with CC=clang CXX=clang++")
endif()

set(PEFT_FUZZ_SANITIZERS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)

add_library(peft_fuzz_io STATIC
  src/core/status.cpp src/core/dtype.cpp
  src/io/json.cpp src/io/mmap.cpp src/io/safetensors.cpp src/io/atomic_file.cpp)
target_include_directories(peft_fuzz_io PUBLIC src tests)
target_link_libraries(peft_fuzz_io PUBLIC nlohmann_json::nlohmann_json)
target_compile_options(peft_fuzz_io PRIVATE -fsanitize=fuzzer-no-link ${PEFT_FUZZ_SANITIZERS})

set(PEFT_FUZZ_SECONDS 60 CACHE STRING "length of the ctest fuzz runs (label fuzz;slow)")

foreach(name safetensors json)
  add_executable(fuzz_${name} tests/fuzz/fuzz_${name}.cpp)
  target_compile_options(fuzz_${name} PRIVATE -fsanitize=fuzzer ${PEFT_FUZZ_SANITIZERS})
  target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer ${PEFT_FUZZ_SANITIZERS})
  target_link_libraries(fuzz_${name} PRIVATE peft_fuzz_io)

  set(seeds ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus_${name})
  set(work ${CMAKE_BINARY_DIR}/fuzz/corpus_${name})   # new inputs go here, not into the repo
  file(MAKE_DIRECTORY ${work} ${CMAKE_BINARY_DIR}/fuzz/artifacts)
  # replay: every seed once (fast; what CI runs on each push)
  add_test(NAME fuzz_${name}_replay COMMAND fuzz_${name} -runs=0 ${seeds})
  set_tests_properties(fuzz_${name}_replay PROPERTIES LABELS "fuzz")
  # time-boxed run; a crash leaves its input in build/fuzz/artifacts
  add_test(NAME fuzz_${name}_run
           COMMAND fuzz_${name} -max_total_time=${PEFT_FUZZ_SECONDS} -max_len=4096 -timeout=10 -rss_limit_mb=2048
                   -dict=${CMAKE_SOURCE_DIR}/tests/fuzz/${name}.dict
                   -artifact_prefix=${CMAKE_BINARY_DIR}/fuzz/artifacts/${name}- ${work} ${seeds})
  set_tests_properties(fuzz_${name}_run PROPERTIES LABELS "fuzz;slow" TIMEOUT 600)
endforeach()
