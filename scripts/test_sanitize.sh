#!/usr/bin/env bash
# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# PEFT_SANITIZE): a separate build in build-asan (ccache keeps rebuilds cheap), then ctest.
# Any ASan report or UB aborts the test that triggers it (-fno-sanitize-recover), so CI fails.
# CTEST_ARGS narrows the run (e.g. CTEST_ARGS="-L io"); the default is the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PEFT_REQUIRE_ASSETS=1
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
BUILD=${BUILD_DIR:-build-asan}
# -O1 -g1: line tables for the reports at half the -O2 -g compile time (src/model/llama.cpp:
# 2.9 s against 6.4 s of CPU); the suite runs in under a minute in Release, so slower code
# costs less than the compile time it saves
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
    -DPEFT_SANITIZE=ON > /dev/null
cmake --build "$BUILD"
# idle OpenMP threads sleep instead of spinning (two test binaries share 2 cores, see test.sh);
# UBSan prints the stack of a finding
export OMP_WAIT_POLICY=PASSIVE
export UBSAN_OPTIONS=print_stacktrace=1
cd "$BUILD"
ctest --output-on-failure -j "$(nproc)" ${CTEST_ARGS:-}
