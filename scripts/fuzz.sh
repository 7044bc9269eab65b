#!/usr/bin/env bash
# libFuzzer targets of fuzz/ (docs/reliability.md): build, run, seed.
#
#   scripts/fuzz.sh build [BUILD_DIR]                 configure + build every fuzz_* target
#   scripts/fuzz.sh run BUILD_DIR TARGET SECONDS      fuzz TARGET for SECONDS (fails on a finding)
#   scripts/fuzz.sh all [BUILD_DIR] [SECONDS]         build, then run every target SECONDS each
#   scripts/fuzz.sh seeds [BUILD_DIR]                 regenerate fuzz/corpus/ from the libraries
#
# BUILD_DIR defaults to build-fuzz. The build is separate from the normal one:
# clang (CLANG_CXX, default clang++-14), CPU only, -O1 -g, every library
# compiled with -fsanitize=fuzzer-no-link,address,undefined and
# -fno-sanitize-recover=all, and only the fuzz targets and what they link
# (bitnet_kernels, bitnet_model, bitnet_pack_lib, one protobuf file; no gRPC).
#
# A run fuzzes from the committed seeds (fuzz/corpus/TARGET, read-only) into
# BUILD_DIR/fuzz-corpus/TARGET, and writes any crashing input to
# BUILD_DIR/fuzz-artifacts/TARGET/. It prints libFuzzer's last status line
# (executions, cov:, ft:, corp:) and exits non-zero on a finding.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
targets=(fuzz_safetensors fuzz_model_file fuzz_quantize fuzz_pack_converter fuzz_infer_request)

die() { echo "fuzz.sh: $*" >&2; exit 1; }

find_clang() {
  local cxx="${CLANG_CXX:-}"
  if [[ -z "$cxx" ]]; then
    for c in clang++-14 clang++; do
      if command -v "$c" >/dev/null; then cxx="$c"; break; fi
    done
  fi
  [[ -n "$cxx" ]] || die "no clang++ found (apt-get install clang-14 libclang-rt-14-dev)"
  echo "$cxx"
}

configure() {
  local dir="$1" cxx
  cxx="$(find_clang)"
  mkdir -p "$dir"
  # Debug keeps assert() on; -O1 keeps the fuzzers fast enough.
  # -mavx2 -mfma: kernels/cpu_ternary_gemm.cc enables AVX2 with
  # `#pragma GCC target`, which clang ignores, so clang needs the ISA
  # globally to compile it. The fuzz binaries therefore need an AVX2 CPU
  # (x86-64 since 2013); the normal g++ build keeps its run-time dispatch.
  cmake -S "$repo" -B "$dir" -G Ninja \
    -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
    -DCMAKE_CXX_COMPILER="$cxx" -DBITNET_CUDA=OFF -DBITNET_FUZZ=ON -DBITNET_NESTED_BUILD=ON \
    -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -mavx2 -mfma" \
    >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log" >&2; die "configure failed"; }
}

build() {
  local dir="$1"; shift
  configure "$dir"
  cmake --build "$dir" -j "${JOBS:-$(nproc)}" --target "$@"
}

run_target() {
  local dir="$1" target="$2" seconds="$3"
  local bin="$dir/fuzz/$target" seeds="$repo/fuzz/corpus/${target#fuzz_}"
  [[ -x "$bin" ]] || die "$bin not built (scripts/fuzz.sh build $dir)"
  [[ -d "$seeds" ]] || die "no seed corpus $seeds"
  local work="$dir/fuzz-corpus/$target" artifacts="$dir/fuzz-artifacts/$target" log="$dir/fuzz-logs/$target.log"
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  # Any sanitizer report is a failure; leaks too (LeakSanitizer at exit).
  export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  local rc=0
  # -timeout: an input taking > 10 s is a finding (a hang); -rss_limit_mb
  # keeps a memory blow-up (e.g. trusting a size field) a finding too.
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$work" "$seeds" >"$log" 2>&1 || rc=$?
  grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  if [[ $rc -ne 0 ]]; then
    echo "fuzz.sh: $target FAILED (exit $rc); log $log; the input is in $artifacts/:" >&2
    ls -l "$artifacts" >&2 || true
    grep -E -A 30 'ERROR: |FUZZ_CHECK failed|runtime error' "$log" | head -n 60 >&2 || tail -n 60 "$log" >&2
    return "$rc"
  fi
  echo "fuzz.sh: $target OK (${seconds}s)"
}

mode="${1:-}"
case "$mode" in
  build)
    build "${2:-$repo/build-fuzz}" "${targets[@]}"
    ;;
  run)
    [[ $# -eq 4 ]] || die "usage: scripts/fuzz.sh run BUILD_DIR TARGET SECONDS"
    run_target "$2" "$3" "$4"
    ;;
  all)
    dir="${2:-$repo/build-fuzz}"
    build "$dir" "${targets[@]}"
    failed=0
    for t in "${targets[@]}"; do run_target "$dir" "$t" "${3:-30}" || failed=1; done
    exit "$failed"
    ;;
  seeds)
    dir="${2:-$repo/build-fuzz}"
    build "$dir" fuzz_make_seeds
    rm -rf "$repo/fuzz/corpus.new"
    ASAN_OPTIONS=detect_leaks=1 "$dir/fuzz/fuzz_make_seeds" "$repo/fuzz/corpus.new" "$repo/tests/fixtures"
    # Keep the minimized reproducers of past findings (regression-*: added by
    # hand, see docs/reliability.md); they are not generated.
    for d in "$repo"/fuzz/corpus/*/; do
      [[ -d "$d" ]] || continue
      for f in "$d"regression-*; do
        [[ -e "$f" ]] && cp "$f" "$repo/fuzz/corpus.new/$(basename "$d")/"
      done
    done
    rm -rf "$repo/fuzz/corpus" && mv "$repo/fuzz/corpus.new" "$repo/fuzz/corpus"
    ;;
  *)
    die "usage: scripts/fuzz.sh build|run|all|seeds ... (see the header of this script)"
    ;;
esac
