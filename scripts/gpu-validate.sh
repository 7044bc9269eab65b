#!/usr/bin/env bash
# scripts/gpu-validate.sh BUNDLE_DIR
#
# One call on the GPU host for the serving-side issues: the gpu-labelled
# test binaries (kernels, CUDA backend, CUDA training, GPU fine-tune), the
# serving sweep of bitnet-server on cuda:0 with the large demo model
# (benchmarks/serving_sweep.sh; its 256-client point is the batching check),
# and the training-step benchmark next to PyTorch. BUNDLE_DIR is flat, made
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
      for t in cuda_kernels_test cuda_backend_test training_cuda_test finetune_gpu_test finetune_test; do
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
      tar -C "$out" -czf "$out/serving.tgz" serving && rm -rf "$out/serving"
      ;;
    train)
      timeout 240 "$bundle/bitnet-bench" train --device=cuda --steps=5 --warmup=1 2>&1 | tail -n 30 | tee "$out/train.txt"
      PYTHONUNBUFFERED=1 timeout 180 python3 benchmarks/train_bench_torch.py --steps 20 2>&1 | tail -n 20 |
        tee -a "$out/train.txt"
      ;;
  esac
done
