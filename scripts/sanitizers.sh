#!/usr/bin/env bash
# Sanitizer builds of the CPU test suite (docs/reliability.md).
#
#   scripts/sanitizers.sh asan|tsan [BUILD_DIR]
#
# asan: AddressSanitizer + LeakSanitizer + UndefinedBehaviorSanitizer
#       (-fsanitize=address,undefined -fno-sanitize-recover=all); a canary
#       (fuzz/asan_canary.cc) first proves that an overflow, a leak and a
#       signed overflow each fail the process.
# tsan: ThreadSanitizer (-fsanitize=thread), plus
#       fuzz/tsan_absl_annotations.cc so TSan understands Debian's
#       uninstrumented absl::Mutex/CondVar/Notification; a canary
#       (fuzz/tsan_absl_canary.cc) first proves that a clean program stays
#       clean and a real race is reported.
#
# Configures BUILD_DIR (default build-asan / build-tsan) with the project's
# compiler (g++, SANITIZER_CXX to override), -O1 -g, -DBITNET_CUDA=OFF, builds
# only the CPU test binaries (asan: kernels, model, pack converter, runtime,
# batching, registry, training, and with BITNET_SANITIZER_SERVER=1 the gRPC
# server's unit and integration tests; tsan: those that run threads; the list
# below, BITNET_SANITIZER_TESTS to override, space separated) and runs each. Any sanitizer report fails it (halt_on_error,
# non-zero exit). Prints each binary's result and the wall time of every
# step. Registered in CTest as sanitizer_asan / sanitizer_tsan (label
# `sanitizer`) when the build has -DBITNET_EXTENDED_TESTS=ON.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
mode="${1:-}"
case "$mode" in
  asan) flags="-fsanitize=address,undefined -fno-sanitize-recover=all" ;;
  tsan) flags="-fsanitize=thread" ;;
  *) echo "usage: scripts/sanitizers.sh asan|tsan [BUILD_DIR]" >&2; exit 2 ;;
esac
dir="$(mkdir -p "${2:-$repo/build-$mode}" && cd "${2:-$repo/build-$mode}" && pwd)"
cxx="${SANITIZER_CXX:-g++}"
jobs="${JOBS:-$(nproc)}"
flags="$flags -fno-omit-frame-pointer"

# Any report is fatal and makes the process exit non-zero.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1:strict_init_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export LSAN_OPTIONS="exitcode=23"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:exitcode=66"

# ASan/UBSan: every CPU test. TSan: the tests that run threads (CPU GEMM
# worker threads, backend, batcher, registry, trainer); the file-format
# tests are single-threaded, so TSan would only add build time there.
if [[ $mode == asan ]]; then
  default_tests="kernels_ternary_format_test kernels_ternary_gemm_test kernels_bit_linear_test
    model_safetensors_test model_file_test model_demo_test model_reference_forward_test
    pack_converter_test runtime_test batching_test registry_test multi_device_test training_test
    training_digits_test"
  # The gRPC server's unit and integration tests: clean and fast to run
  # (3 s), but building bitnet_server_lib with ASan costs about 5.5 more
  # CPU-minutes, so they are opt-in.
  if [[ ${BITNET_SANITIZER_SERVER:-0} == 1 ]]; then
    default_tests+=" server_service_test server_integration_test"
  fi
else
  # Not training_digits_test: TSan slows it past its own 60 s bound, and
  # training_test already runs the trainer's threads.
  default_tests="kernels_ternary_gemm_test kernels_bit_linear_test runtime_test batching_test
    registry_test multi_device_test training_test"
fi
read -r -a tests <<<"$(echo ${BITNET_SANITIZER_TESTS:-$default_tests})"

step_start=$SECONDS
step() {  # step NAME: prints the previous step's time
  local now=$SECONDS
  [[ -n "${step_name:-}" ]] && echo "sanitizers.sh[$mode]: $step_name took $((now - step_start)) s"
  step_name="$1"; step_start=$now
}

linker_flags=""
if [[ $mode == asan ]]; then
  step "asan canary"
  "$cxx" -std=c++20 -O1 -g $flags -Wall -Wextra "$repo/fuzz/asan_canary.cc" -o "$dir/asan_canary"
  "$dir/asan_canary" || { echo "sanitizers.sh: the ASan canary fails without a bug" >&2; exit 1; }
  for bug in overflow leak ub; do
    if "$dir/asan_canary" "$bug" >"$dir/asan_canary_$bug.log" 2>&1 ||
       ! grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$dir/asan_canary_$bug.log"; then
      cat "$dir/asan_canary_$bug.log" >&2
      echo "sanitizers.sh: a '$bug' bug was not fatal: the ASan/UBSan build is not working" >&2
      exit 1
    fi
  done
fi
if [[ $mode == tsan ]]; then
  step "tsan canary"
  shim="$dir/tsan_absl_annotations.o"
  "$cxx" -std=c++20 -O1 -g $flags -Wall -Wextra -c "$repo/fuzz/tsan_absl_annotations.cc" -o "$shim"
  "$cxx" -std=c++20 -O1 -g $flags "$repo/fuzz/tsan_absl_canary.cc" "$shim" -o "$dir/tsan_absl_canary" \
    -labsl_synchronization -labsl_time
  "$dir/tsan_absl_canary" || { echo "sanitizers.sh: TSan reports a race where absl::Mutex orders the accesses: the annotations do not work" >&2; exit 1; }
  if "$dir/tsan_absl_canary" race >"$dir/tsan_canary_race.log" 2>&1 ||
     ! grep -q "ThreadSanitizer: data race" "$dir/tsan_canary_race.log"; then
    cat "$dir/tsan_canary_race.log" >&2
    echo "sanitizers.sh: TSan missed a real data race: the TSan build is not working" >&2
    exit 1
  fi
  linker_flags="$shim"
fi

step "configure"
# Debug keeps assert() on; -O1 keeps instrumented tests fast enough.
# PRE_TEST: do not run instrumented binaries at build time just to list tests.
cmake -S "$repo" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DCMAKE_CXX_COMPILER="$cxx" -DBITNET_CUDA=OFF -DBITNET_NESTED_BUILD=ON -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="$linker_flags" \
  -DCMAKE_GTEST_DISCOVER_TESTS_DISCOVERY_MODE=PRE_TEST >"$dir/configure.log" 2>&1 ||
  { cat "$dir/configure.log" >&2; exit 1; }

# Only targets that exist in this checkout (a module may not have landed).
available="$(cmake --build "$dir" --target help | sed -n 's/^\([A-Za-z0-9_.-]*\): .*/\1/p')"
build=()
for t in "${tests[@]}"; do
  if grep -qx "$t" <<<"$available"; then build+=("$t"); else echo "sanitizers.sh[$mode]: no target $t, skipped"; fi
done
((${#build[@]})) || { echo "sanitizers.sh: no test targets to build" >&2; exit 1; }

step "build (${#build[@]} test binaries)"
cmake --build "$dir" -j "$jobs" --target "${build[@]}"

failed=()
for t in "${build[@]}"; do
  step "run $t"
  bin="$(find "$dir" -name "$t" -type f -perm -u+x | head -n 1)"
  log="$dir/logs/$t.log"
  mkdir -p "$dir/logs"
  rc=0
  # BITNET_BUILD_DIR as the normal CTest registration sets it; a hung test
  # binary (e.g. a lost wake-up) fails after 5 minutes (the slowest takes
  # about 20 s here).
  BITNET_BUILD_DIR="$dir" timeout 300 "$bin" --gtest_color=no >"$log" 2>&1 || rc=$?
  # A hung or crashed binary prints no summary line: not an error here.
  summary="$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$log" | tr '\n' ' ' || true)"
  ((rc == 124)) && summary="TIMED OUT after 300 s (last: $(grep -E '^\[ RUN' "$log" | tail -n 1 || true))"
  if ((rc != 0)); then
    failed+=("$t")
    echo "sanitizers.sh[$mode]: $t FAILED (exit $rc) $summary; log $log"
    grep -E -B 2 -A 40 '^(==[0-9]+==ERROR|WARNING: ThreadSanitizer|SUMMARY: )|runtime error:' "$log" | head -n 80 ||
      tail -n 60 "$log"
  else
    echo "sanitizers.sh[$mode]: $t ok $summary"
  fi
done
step ""

if ((${#failed[@]})); then
  echo "sanitizers.sh[$mode]: FAILED: ${failed[*]} (total ${SECONDS} s)"
  exit 1
fi
echo "sanitizers.sh[$mode]: all ${#build[@]} test binaries clean (total ${SECONDS} s)"
