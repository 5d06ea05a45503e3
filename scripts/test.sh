#!/usr/bin/env bash
# The test command: installs what is missing, builds (Ninja + ccache), runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/setup.sh
# the real-tokenizer fixtures must run in CI (setup fetched the assets): missing assets fail
export PEFT_REQUIRE_ASSETS=1
# compile commands relative to the checkout: the MPI and sanitizer builds share cache entries
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} > /dev/null
cmake --build "$BUILD"
cd "$BUILD"
# ctest runs two test binaries at once on 2 cores: OpenMP threads that spin at barriers while
# the other binary holds a core stall for seconds, so idle threads sleep instead
export OMP_WAIT_POLICY=PASSIVE
ctest --output-on-failure -j "$(nproc)" ${CTEST_ARGS:-}
cd "$ROOT"
# data parallel under a real mpirun (its own build directory, mostly ccache hits)
bash scripts/test_mpi.sh
