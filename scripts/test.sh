#!/usr/bin/env bash
# The test command: installs what is missing, builds (Ninja + ccache), runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the real-tokenizer fixtures must run in CI (setup fetched the assets): missing assets fail
export PEFT_REQUIRE_ASSETS=1
BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} > /dev/null
cmake --build "$BUILD"
cd "$BUILD"
# ctest runs two test binaries at once on 2 cores: OpenMP threads that spin at barriers while
# the other binary holds a core stall for seconds, so idle threads sleep instead
export OMP_WAIT_POLICY=PASSIVE
ctest --output-on-failure -j "$(nproc)" ${CTEST_ARGS:-}
