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
ctest --output-on-failure -j "$(nproc)" ${CTEST_ARGS:-}
