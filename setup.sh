#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine:
#   ./setup.sh serve   install what is missing, build, start the server with the demo model
#   ./setup.sh test    install what is missing, build, run the whole test suite
#   ./setup.sh build   install what is missing and build (used by the Dockerfile)
# Environment: BUILD_DIR (default build), BITNET_CUDA (AUTO|ON|OFF, default AUTO),
# JOBS (default: number of cores), BITNET_EXTENDED_TESTS (test only; default ON:
# the bounded fuzzing and ASan+UBSan/TSan tests run too, about 10 more minutes on
# 2 cores; OFF skips them, e.g. `BITNET_EXTENDED_TESTS=OFF ./setup.sh test`).
set -euo pipefail

cd "$(dirname "$0")"
mode="${1:-}"
shift || true
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${JOBS:-$(nproc)}"

# Everything the build, the tests and the tools need, from Debian's archive.
packages=(
  build-essential cmake ninja-build pkg-config git python3 curl openssl
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libcpp-httplib-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev zlib1g-dev
  python3-grpcio python3-protobuf python3-yaml prometheus yamllint docker-compose clang-14 libclang-rt-14-dev
)

install_missing_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    return
  fi
  echo "setup: installing ${missing[*]}"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# build [extra cmake -D arguments]
build() {
  # nvcc lives outside PATH in the CUDA toolkit's default location.
  if [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBITNET_CUDA="${BITNET_CUDA:-AUTO}" "$@"
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

case "$mode" in
  build)
    install_missing_packages
    build
    ;;
  test)
    install_missing_packages
    # CI runs this: fuzzing and sanitizer builds included (docs/reliability.md).
    build -DBITNET_EXTENDED_TESTS="${BITNET_EXTENDED_TESTS:-ON}"
    cd "$BUILD_DIR"
    ctest --output-on-failure -j "$JOBS" "$@"
    ;;
  serve)
    install_missing_packages
    build
    # With no flags: the embedded demo model, on the GPU if one is visible.
    exec "$BUILD_DIR/server/bitnet-server" "$@"
    ;;
  *)
    echo "usage: ./setup.sh serve|test|build [args...]" >&2
    exit 2
    ;;
esac
