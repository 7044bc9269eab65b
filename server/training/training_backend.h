// The dense math of STE training behind one small interface, so the CPU
// implementation here and a CUDA (cuBLAS) one can be swapped under the
// Trainer (trainer.h) without touching the training logic.
//
// Two operations are enough for a ternary MLP:
//   Gemm           the backward pass: weight gradients dW = dZ^T . X and input
//                  gradients dX = dZ . W (fp32, any summation order).
//   TernaryForward the forward pass of one packed layer. It must return
//                  exactly what the inference path returns, because STE
//                  training promises that the training forward and the
//                  served forward are the same function (ARCHITECTURE.md,
//                  "Numerics"): the CPU implementation is bit-identical to
//                  ReferenceTernaryGemm in both activation modes.
//
// All pointers are host memory. A device backend stages data itself (the
// Trainer keeps its tensors on the host); the contract is the values.
#ifndef BITNET_SERVER_TRAINING_TRAINING_BACKEND_H_
#define BITNET_SERVER_TRAINING_TRAINING_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ternary_gemm.h"

namespace bitnet::training {

// C = alpha * op(A) . op(B) + beta * C, fp32, row-major, BLAS-style.
// op(A) is [m, k]: A is stored [m, k] (lda >= k) or, transposed, [k, m]
// (lda >= m). op(B) is [k, n]: B is stored [k, n] (ldb >= n) or, transposed,
// [n, k] (ldb >= k). C is [m, n] (ldc >= n). With beta == 0, C is written
// without being read (NaNs in it do not propagate), as in BLAS.
struct GemmArgs {
  bool transpose_a = false;
  bool transpose_b = false;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  float alpha = 1.0f;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  float beta = 0.0f;
  float* c = nullptr;
  int64_t ldc = 0;
};

// INVALID_ARGUMENT naming the field for negative sizes, leading dimensions
// too small for the stored shape, or null pointers where data is needed.
// m, n or k may be 0 (k == 0 makes C = beta * C).
absl::Status CheckGemmArgs(const GemmArgs& args);

// Thread-safety: implementations must allow concurrent calls on distinct
// outputs (the CPU one has no mutable state).
class TrainingBackend {
 public:
  virtual ~TrainingBackend() = default;

  // "cpu", "cuda", ... for logs and metrics.
  virtual std::string_view name() const = 0;

  // See GemmArgs. Errors: INVALID_ARGUMENT (CheckGemmArgs).
  virtual absl::Status Gemm(const GemmArgs& args) = 0;

  // y = act(x . W^T * scale + bias) for a packed ternary W with the exact
  // numerics of ReferenceTernaryGemm (kernels/ternary_gemm.h), including
  // args.activation (the Trainer passes kIdentity to get pre-activations).
  // Does not validate the codes (the Trainer's weights come from
  // QuantizeAndPack or a validated Model). Errors: INVALID_ARGUMENT
  // (CheckTernaryGemmArgs).
  virtual absl::Status TernaryForward(const TernaryGemmArgs& args) = 0;
};

struct CpuTrainingBackendOptions {
  // Threads per call for large products; <= 0: hardware concurrency.
  // Small products (under about a million multiply-adds) run on the calling
  // thread whatever this says.
  int num_threads = 1;
};

// Plain C++ loops (written so the compiler vectorizes the inner loops) with
// row-block threading. Never fails today; StatusOr keeps the factory shape.
absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCpuTrainingBackend(
    const CpuTrainingBackendOptions& options = {});

}  // namespace bitnet::training

#endif  // BITNET_SERVER_TRAINING_TRAINING_BACKEND_H_
