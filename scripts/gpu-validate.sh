#!/usr/bin/env bash
# scripts/gpu-validate.sh BUNDLE_DIR
#
# One call on the GPU host for the serving-side issues: the gpu-labelled
# test binaries (kernels, CUDA backend, CUDA training, GPU fine-tune), the
# serving sweep of bitnet-server on cuda:0 with the large demo model
# (benchmarks/serving_sweep.sh; its 256-client point is the batching check),
# and the training-step benchmark next to PyTorch. Steps (STEPS, space-
# separated): tests serving breakdown halfload forward multigpu train; the
# environment of the scripts they run passes through (e.g. OUTPUT_DTYPE=fp16
# for multigpu). BUNDLE_DIR is flat, made
# by scripts/make-bundle.sh from a CUDA build. Writes a few files under $OUT.
set -uo pipefail
bundle=$(cd "${1:?usage: gpu-validate.sh BUNDLE_DIR}" && pwd)
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
steps=${STEPS:-"tests serving train"}
echo "== $(date -u) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"

for step in $steps; do
  case $step in
    tests)
      for t in cuda_kernels_test cuda_backend_test training_cuda_test finetune_gpu_test finetune_test \
          multi_device_gpu_test multi_device_server_test; do
        [[ -x "$bundle/$t" ]] || { echo "tests: $t missing"; continue; }
        timeout 240 "$bundle/$t" --gtest_brief=1 > "$out/$t.log" 2>&1
        echo "tests: $t rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED)  \]' "$out/$t.log" | tr '\n' ' ')"
        grep -E "Failure|FAILED" "$out/$t.log" | head -5
      done
      cat "$out"/*_test.log > "$out/tests.log" && rm -f "$out"/*_test.log
      ;;
    serving)
      # serving_sweep.sh expects a build tree's layout.
      tree=$(mktemp -d)
      mkdir -p "$tree/server" "$tree/client" "$tree/benchmarks"
      ln -s "$bundle/bitnet-server" "$tree/server/bitnet-server"
      ln -s "$bundle/bitnet-load" "$tree/client/bitnet-load"
      ln -s "$bundle/bitnet-bench" "$tree/benchmarks/bitnet-bench"
      BUILD_DIR=$tree OUT_DIR="$out/serving" DURATION=${DURATION:-4s} \
        CONCURRENCY=${CONCURRENCY:-1:1024:*4} timeout 400 benchmarks/serving_sweep.sh 2>&1 |
        tail -n 30
      python3 -c "import json,sys; print(round(max(p['rows_per_second'] for p in json.load(open(sys.argv[1]))['points'])))" \
        "$out/serving/load.json" > "$out/saturation.txt" || true
      tar -C "$out" -czf "$out/serving.tgz" serving && rm -rf "$out/serving"
      ;;
    breakdown)
      # Where the time goes at saturation and at the 256-client point.
      tree=$(mktemp -d)
      mkdir -p "$tree/server" "$tree/client"
      ln -s "$bundle/bitnet-server" "$tree/server/bitnet-server"
      ln -s "$bundle/bitnet-load" "$tree/client/bitnet-load"
      for c in ${BREAKDOWN_CONCURRENCY:-256 1024}; do
        BUILD_DIR=$tree OUT_DIR="$out/breakdown-$c" timeout 120 benchmarks/serving_breakdown.sh "$c" 2>&1 |
          tail -n 8 | tee "$out/breakdown-$c.txt"
        rm -rf "$out/breakdown-$c"
      done
      ;;
    halfload)
      # Issue 6's latency goal: open loop at half the saturating rows/s of the
      # serving step (single-row requests, so rows/s = requests/s).
      sat=$(cat "$out/saturation.txt" 2> /dev/null || echo 60000)
      tree=$(mktemp -d)
      mkdir -p "$tree/server" "$tree/client"
      ln -s "$bundle/bitnet-server" "$tree/server/bitnet-server"
      ln -s "$bundle/bitnet-load" "$tree/client/bitnet-load"
      echo "halfload: saturation $sat rows/s -> rate $((sat / 2))/s"
      BUILD_DIR=$tree RATE=$((sat / 2)) OUT_DIR="$out/halfload" timeout 120 benchmarks/serving_breakdown.sh 2>&1 |
        tail -n 8 | tee "$out/halfload.txt"
      rm -rf "$out/halfload"
      ;;
    forward)
      # One 512-row batch of the large model alone, the three ways the rows
      # can reach ForwardRows (issue 9: host copies around the GPU work), and
      # the host's per-element request work before/after.
      for io in plain-f32 batch-f32 batch-f16; do
        timeout 120 "$bundle/bitnet-bench" serving --device=cuda:0 --demo_model=large \
          --batches=32,128,512 --io=$io 2>&1 | tail -n 4
      done | tee "$out/forward.txt"
      timeout 60 "$bundle/bitnet-bench" hostpath 2>&1 | tee -a "$out/forward.txt"
      ;;
    multigpu)
      timeout 420 benchmarks/multi_gpu_sweep.sh "$bundle" "$out/multigpu" 2>&1 | tail -n 40
      cp "$out/multigpu/results.md" "$out/multigpu.md" 2> /dev/null
      tar -C "$out" -czf "$out/multigpu.tgz" multigpu && rm -rf "$out/multigpu"
      ;;
    train)
      timeout 240 "$bundle/bitnet-bench" train --device=cuda --steps=5 --warmup=1 2>&1 | tail -n 30 | tee "$out/train.txt"
      PYTHONUNBUFFERED=1 timeout 180 python3 benchmarks/train_bench_torch.py --steps 20 2>&1 | tail -n 20 |
        tee -a "$out/train.txt"
      ;;
  esac
done
