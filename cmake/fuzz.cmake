# fuzz.cmake: in-tree libFuzzer targets, one per parser of user files (FORMATS.md "Checklist our
# io/ must meet"), built only with -DPEFT_FUZZ=ON and clang (scripts/setup.sh installs it with
# PEFT_SETUP_FUZZ=1):
#   CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DPEFT_FUZZ=ON
#   ninja -C build-fuzz fuzz_all
#   ctest --test-dir build-fuzz -L fuzz            # corpus replay + a time-boxed run per target
# Without clang, CI still replays the corpora through tests/io/test_fuzz_replay.cpp.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "PEFT_FUZZ=ON needs clang with libFuzzer: configure with CC=clang CXX=clang++")
endif()

set(PEFT_FUZZ_SANITIZERS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)

# The bodies reach most of the engine (tokenizer, config, data, adapters on a tiny model), so
# the targets link an instrumented copy of the whole library.
add_library(peft_fuzz_core STATIC ${PEFT_CORE_SOURCES})
target_include_directories(peft_fuzz_core PUBLIC src include tests)
target_link_libraries(peft_fuzz_core PUBLIC peft_deps)
target_compile_options(peft_fuzz_core PRIVATE -fsanitize=fuzzer-no-link ${PEFT_FUZZ_SANITIZERS})

set(PEFT_FUZZ_SECONDS 60 CACHE STRING "length of the ctest fuzz runs (label fuzz;slow)")

# target name -> seed corpus tests/fuzz/corpus_<name>, dictionary tests/fuzz/<name>.dict
set(PEFT_FUZZ_TARGETS safetensors json tokenizer config data adapter_config hparams trainer_state gguf)
add_custom_target(fuzz_all)
foreach(name ${PEFT_FUZZ_TARGETS})
  add_executable(fuzz_${name} tests/fuzz/fuzz_target.cpp)
  target_compile_definitions(fuzz_${name} PRIVATE PEFT_FUZZ_BODY=${name}_one)
  target_compile_options(fuzz_${name} PRIVATE -fsanitize=fuzzer ${PEFT_FUZZ_SANITIZERS})
  target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer ${PEFT_FUZZ_SANITIZERS})
  target_link_libraries(fuzz_${name} PRIVATE peft_fuzz_core)
  add_dependencies(fuzz_all fuzz_${name})

  set(seeds ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus_${name})
  set(work ${CMAKE_BINARY_DIR}/fuzz/corpus_${name})   # new inputs go here, not into the repo
  file(MAKE_DIRECTORY ${work} ${CMAKE_BINARY_DIR}/fuzz/artifacts)
  # replay: every seed once (fast)
  add_test(NAME fuzz_${name}_replay COMMAND fuzz_${name} -runs=0 ${seeds})
  set_tests_properties(fuzz_${name}_replay PROPERTIES LABELS "fuzz" ENVIRONMENT "OMP_NUM_THREADS=1")
  # time-boxed run; a crash leaves its input in build/fuzz/artifacts
  add_test(NAME fuzz_${name}_run
           COMMAND fuzz_${name} -max_total_time=${PEFT_FUZZ_SECONDS} -max_len=4096 -timeout=10 -rss_limit_mb=2048
                   -dict=${CMAKE_SOURCE_DIR}/tests/fuzz/${name}.dict
                   -artifact_prefix=${CMAKE_BINARY_DIR}/fuzz/artifacts/${name}- ${work} ${seeds})
  set_tests_properties(fuzz_${name}_run PROPERTIES LABELS "fuzz;slow" TIMEOUT 600 ENVIRONMENT "OMP_NUM_THREADS=1")
endforeach()
