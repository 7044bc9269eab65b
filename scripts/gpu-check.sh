#!/usr/bin/env bash
# scripts/gpu-check.sh BUNDLE_DIR [bench args...]
#
# One call on the GPU host: SASS summary, the CUDA tests, compute-sanitizer
# (memcheck + racecheck on a reduced grid), the kernel benchmark and its
# chart. Expects BUNDLE_DIR made by scripts/make-bundle.sh with
# cuda_kernels_test and bitnet-bench (cuda_int8_numerics_test and
# cuda_backend_test if present). Writes at most 8 files under $OUT (default
# ./gpu-out).
# Environment: STEPS (default "sass tests sanitize bench"), TEST_TIMEOUT,
# MEMCHECK_TIMEOUT and RACECHECK_TIMEOUT (seconds), SWEEP=1 adds the
# per-config sweep CSV.
set -uo pipefail
bundle=$(cd "${1:?usage: gpu-check.sh BUNDLE_DIR [bench args...]}" && pwd)
shift
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
steps=${STEPS:-"sass tests bench sanitize"}


note() { echo "$*"; }

note "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader)"
for step in $steps; do
  case $step in
    sass)
      {
        echo "# instruction mix of the kernels (cuobjdump -sass)"
        cuobjdump -sass "$bundle/cuda_kernels_test" | grep -oE '\b(HGMMA|IGMMA|HMMA|IMMA|LDSM|LDGSTS|LDS\.128|PRMT|LOP3\.LUT|HFMA2|LDL|STL)[.A-Z0-9_]*' | sort | uniq -c
        echo "# wgmma issue pattern of the fp16 128x128 kernel (WARPGROUP.DEPBAR between HGMMAs = serialized)"
        cuobjdump -sass "$bundle/cuda_kernels_test" |
          awk '/Function : /{p = ($0 ~ /ternary_wgmma_kernel/ && $0 ~ /MmaTypeE0ELi128/)} p' |
          grep -E 'HGMMA|WARPGROUP|BAR.SYNC|DEPBAR|LDS.128|ARRIVES|SYNCS' | head -80
        echo "# resource usage"
        cuobjdump -res-usage "$bundle/cuda_kernels_test" 2>&1 | grep -E "Function|REG|STACK" | sed 's/_ZN6bitnet13cuda_internal[^ ]*ternary_/ternary_/' | head -120
      } > "$out/sass.txt" 2>&1
      note "sass: $(grep -cE 'GMMA|MMA' "$out/sass.txt") mma lines, LDL/STL: $(grep -E ' (LDL|STL)' "$out/sass.txt" | awk '{s+=$1} END {print s+0}')"
      ;;
    tests)
      timeout ${TEST_TIMEOUT:-240} "$bundle/cuda_kernels_test" 2>&1 | tail -n 200 > "$out/tests.log"
      note "tests: $(grep -E '^\[  (PASSED|FAILED)  \]|tests? ran' "$out/tests.log" | tr '\n' ' ')"
      grep -E "FAILED|Failure|bad outputs|relative error" "$out/tests.log" | head -20
      if [[ -x "$bundle/cuda_int8_numerics_test" ]]; then
        timeout 120 "$bundle/cuda_int8_numerics_test" 2>&1 | tail -n 30 >> "$out/tests.log"
        note "int8 numerics tests: $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/tests.log" | tail -1)"
      fi
      if [[ -x "$bundle/cuda_backend_test" ]]; then
        timeout 120 "$bundle/cuda_backend_test" 2>&1 | tail -n 60 >> "$out/tests.log"
        note "backend tests: $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/tests.log" | tail -2 | tr '\n' ' ')"
      fi
      ;;
    sanitize)
      {
        echo "== memcheck"
        # 98 s alone on an H100 (session 19); 120 s once cut it off.
        BITNET_CUDA_TEST_QUICK=1 timeout ${MEMCHECK_TIMEOUT:-300} compute-sanitizer --tool memcheck \
          --leak-check full \
          "$bundle/cuda_kernels_test" --gtest_brief=1 2>&1 | tail -n 30
        echo "== racecheck"
        # EveryConfig covers every kernel; WarpSpecializedMulti* adds ws grids
        # whose blocks reuse pipeline stages (EveryConfig's ws grids split K
        # and never do; session 7 found hazards only there).
        BITNET_CUDA_TEST_QUICK=1 timeout ${RACECHECK_TIMEOUT:-150} compute-sanitizer --tool racecheck \
          "$bundle/cuda_kernels_test" --gtest_brief=1 \
          --gtest_filter='CudaKernelsTest.EveryConfig*:CudaKernelsTest.WarpSpecializedMulti*' 2>&1 |
          tail -n 30
      } > "$out/sanitizer.log" 2>&1
      note "sanitizer: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer.log" | tr '\n' ' ')"
      ;;
    ncu)
      # Per-kernel device time and speed-of-light numbers for a few shapes
      # (ours and cuBLAS), no clock control (METHOD.md: leave clocks alone).
      timeout 240 ncu --clock-control none --csv \
        --kernel-name regex:'ternary|prep_|gemm|cutlass|xmma|sm90' \
        --section SpeedOfLight --metrics gpu__time_duration.sum,launch__registers_per_thread,launch__grid_size,sm__warps_active.avg.pct_of_peak_sustained_active \
        "$bundle/bitnet-bench" kernels --no-ceilings --m ${NCU_M:-1,128,2048} --n 4096 --reps 1 --warmup 0 \
        > "$out/ncu.csv" 2>&1
      note "ncu: exit $?, $(wc -l < "$out/ncu.csv") lines"
      ;;
    prof)
      # Stall reasons of the small-batch and large-batch kernels.
      {
        timeout 120 ncu --clock-control none --section WarpStateStats --section SpeedOfLight \
          --section Occupancy --section LaunchStats --kernel-name regex:'ternary_(gemv|wgmma)' \
          --launch-count 1 "$bundle/bitnet-bench" kernels --no-ceilings --m 1 --n 11008 --reps 1 --warmup 0
        timeout 120 ncu --clock-control none --section WarpStateStats --section SpeedOfLight \
          --section Occupancy --kernel-name regex:'ternary_wgmma' \
          --launch-count 1 "$bundle/bitnet-bench" kernels --no-ceilings --m 2048 --n 4096 --reps 1 --warmup 0
      } > "$out/prof.txt" 2>&1
      note "prof: $(grep -c 'Stall' "$out/prof.txt") stall lines"
      ;;
    bench_flush)
      # The same table with session 1's timing (L2 read-flushed, isolated
      # start/stop events per run), for comparison with the default method.
      timeout 200 "$bundle/bitnet-bench" kernels --timing flush --no-ceilings \
        --csv "$out/kernels_flush.csv" "$@" > "$out/bench_flush.log" 2>&1
      note "bench_flush: exit $?"
      tail -n 16 "$out/bench_flush.log"
      ;;
    bench_graph)
      # The same table timed as CUDA-graph replays (per-launch cost mostly
      # gone for both sides: how a captured forward pass runs).
      timeout 200 "$bundle/bitnet-bench" kernels --timing graph --no-ceilings \
        --csv "$out/kernels_graph.csv" "$@" > "$out/bench_graph.log" 2>&1
      note "bench_graph: exit $?"
      tail -n 16 "$out/bench_graph.log"
      ;;
    bench)
      sweep=()
      if [[ ${SWEEP:-0} == 1 ]]; then sweep=(--sweep "$out/sweep.csv"); fi
      timeout ${BENCH_TIMEOUT:-240} "$bundle/bitnet-bench" kernels --csv "$out/kernels.csv" --json "$out/kernels.json" \
        "${sweep[@]}" "$@" > "$out/bench.log" 2>&1
      note "bench: exit $?"
      tail -n 16 "$out/bench.log"
      python3 benchmarks/plot_kernels.py "$out/kernels.csv" "$out/kernels_speedup.png" 2>&1 | tail -2
      ;;
  esac
done
