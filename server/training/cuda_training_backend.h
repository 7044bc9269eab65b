// The GPU TrainingBackend: the dense products of STE training through
// cuBLAS (fp32 SGEMM), with the CUDA runtime for memory and streams.
//
// cuBLAS is loaded with dlopen("libcublas.so.13") (then ".so.12", ".so") the
// first time a backend is created, never at process start: libcublasLt
// brings ~94 KB of static TLS, which breaks threads with small stacks created
// before it (see docs/training.md). A server that never fine-tunes on the
// GPU never loads it. The library stays loaded once loaded.
//
// Numerics:
//   Gemm           fp32 SGEMM (CUBLAS_DEFAULT_MATH: no TF32), so results
//                  equal the CPU backend's up to summation order.
//   TernaryForward int8 mode: bit-identical to ReferenceTernaryGemm. The row
//                  quantization runs on the host with the oracle's code; the
//                  int8 codes and ternary codes go to the GPU as fp32, where
//                  SGEMM sums exact integers (|sum| <= 128 * K < 2^24 for
//                  K <= 131072, checked), and the epilogue runs on the host
//                  with the oracle's float operations.
//                  none mode: fp32 SGEMM of x with the codes, then the
//                  oracle's epilogue; the reference sums in double, so
//                  results differ by float rounding (relative ~1e-6).
//   All pointers in the interface are host memory (TrainingBackend's
//   contract): each call stages its operands to the device and back. That
//   makes a GPU step PCIe-bound for large layers; benchmarks/RESULTS.md
//   (training section) has the measurements.
//
// Thread-safety: calls are serialized by an internal mutex (one stream, one
// cuBLAS handle), so one backend may be shared by several trainers.
#ifndef BITNET_SERVER_TRAINING_CUDA_TRAINING_BACKEND_H_
#define BITNET_SERVER_TRAINING_CUDA_TRAINING_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "server/training/training_backend.h"

namespace bitnet::training {

struct CudaTrainingBackendOptions {
  // CUDA device ordinal.
  int device = 0;
};

// Whether this build has the CUDA training backend.
bool CudaTrainingBackendBuilt();

// Errors: UNAVAILABLE when the build has no CUDA, no GPU is visible, or
// libcublas cannot be loaded (the message says which and how to fix it);
// INTERNAL for other CUDA/cuBLAS failures.
absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCudaTrainingBackend(
    const CudaTrainingBackendOptions& options = {});

}  // namespace bitnet::training

#endif  // BITNET_SERVER_TRAINING_CUDA_TRAINING_BACKEND_H_
