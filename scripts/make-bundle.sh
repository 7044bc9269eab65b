#!/usr/bin/env bash
# make-bundle.sh DIR BINARY...
#
# Copies each BINARY and every shared library it loads (as ldd resolves them
# here) into DIR, so the binaries run on a machine that lacks those libraries
# (e.g. a GPU host without Abseil, gRPC or GoogleTest):
#
#   LD_LIBRARY_PATH=DIR DIR/cuda_kernels_test
#
# Left out, because the target machine must provide its own matching copies:
# the C runtime (libc, libm, libdl, libpthread, librt, ld-linux), the C++
# runtime (libstdc++, libgcc_s), the NVIDIA driver (libcuda, libnvidia-*) and
# the CUDA toolkit's libraries (libcudart, libcublas, libcublasLt, ...), which
# must come from the target's own CUDA installation.
#
# Exit status: 0 on success; 1 if a binary is missing or a library cannot be
# resolved here (ldd "not found"), naming it; 2 on bad usage.
set -euo pipefail

usage() {
  echo "usage: $0 DIR BINARY..." >&2
  exit 2
}
(($# >= 2)) || usage
dir=$1
shift

# Basename patterns (extended regex) of libraries never bundled.
excluded='^(libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s|ld-linux[^/]*|linux-vdso|libcuda|libnvidia-[^/]*|libcudart|libcublas|libcublasLt|libcufft|libcurand|libcusparse|libcusolver|libnvrtc|libnvJitLink|libcudnn[^/]*|libnccl|libnvToolsExt|libcupti)\.so'

mkdir -p "$dir"
declare -A copied=()
status=0
for bin in "$@"; do
  if [[ ! -f $bin ]]; then
    echo "make-bundle: $bin: no such file" >&2
    status=1
    continue
  fi
  cp -f "$bin" "$dir/"
  # ldd lines: "libfoo.so.1 => /path/libfoo.so.1 (0x...)", "libbar.so => not found",
  # or "/lib64/ld-linux-x86-64.so.2 (0x...)".
  while read -r name arrow path _; do
    [[ $arrow == "=>" ]] || continue
    base=$(basename "$name")
    if [[ $base =~ $excluded ]]; then
      continue
    fi
    if [[ $path == "not" ]]; then
      echo "make-bundle: $bin needs $name, which ldd cannot find here" >&2
      status=1
      continue
    fi
    [[ -n ${copied[$base]:-} ]] && continue
    # Copy the file the link points to, under the name the loader asks for.
    cp -fL "$path" "$dir/$base"
    copied[$base]=1
  done < <(ldd "$bin")
done
if ((status == 0)); then
  echo "make-bundle: $# binaries and ${#copied[@]} libraries in $dir (run with LD_LIBRARY_PATH=$dir)"
fi
exit $status
