#!/usr/bin/env bash
# Installs the Debian packages peft.cpp builds against (ARCHITECTURE.md §2).
# Idempotent: when every package is already installed it only checks and exits.
set -euo pipefail

PACKAGES=(
  cmake ninja-build g++ ccache pkg-config
  libopenblas-openmp-dev liblapacke-dev
  nlohmann-json3-dev libyaml-cpp-dev
  libpcre2-dev libutf8proc-dev libsentencepiece-dev
  libcli11-dev libfmt-dev
  libcpp-httplib-dev
  libgtest-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin
)
# Only for the libFuzzer build (tests/fuzz/README.md); CI replays the corpora with g++ instead.
if [ "${PEFT_SETUP_FUZZ:-0}" = 1 ]; then
  PACKAGES+=(clang-14 libclang-rt-14-dev libomp-14-dev)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} packages present"
fi
bash "$(dirname "$0")/fetch_assets.sh"
