#!/usr/bin/env bash
# The data-parallel tests (tests/dist): a second build with -DPEFT_MPI=ON in build-mpi, then
# `mpirun -np 2` on loopback through ctest. MPI reaches only src/dist/dist.cpp, so with ccache
# (base_dir = this checkout) the rest of the build is cache hits from build/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
BUILD=${BUILD_DIR:-build-mpi}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} -DPEFT_MPI=ON > /dev/null
cmake --build "$BUILD" --target peft test_dist
export OMP_WAIT_POLICY=PASSIVE
cd "$BUILD"
ctest --output-on-failure -R "^dist\."
