// y = act(x @ W^T * scale + bias) for a packed ternary W: the CPU oracle and
// the fast CPU path. The CUDA kernels (kernels/cuda/) compute the same function
// and are tested against ReferenceTernaryGemm.
#ifndef BITNET_KERNELS_TERNARY_GEMM_H_
#define BITNET_KERNELS_TERNARY_GEMM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"

namespace bitnet {

// Arguments of one ternary linear layer applied to a batch. Built on the host,
// passed by value. All pointers are host memory for the CPU functions.
struct TernaryGemmArgs {
  int64_t m = 0;                 // batch rows
  const float* x = nullptr;      // [m, weight.cols] row-major
  PackedTernaryView weight;      // [n = weight.rows, k = weight.cols]
  const float* bias = nullptr;   // [n] or nullptr
  ActivationQuant act_quant = ActivationQuant::kNone;
  Activation activation = Activation::kIdentity;
  float* y = nullptr;            // [m, n] row-major, fully overwritten
};

// Checks shapes and pointers; INVALID_ARGUMENT naming the field otherwise.
absl::Status CheckTernaryGemmArgs(const TernaryGemmArgs& args);

// The oracle: plain loops, obviously right. fp32 mode accumulates in double
// and rounds once; int8 mode accumulates in int32.
absl::Status ReferenceTernaryGemm(const TernaryGemmArgs& args);

// The fast CPU path: SIMD chosen at run time (AVX2 at least, scalar fallback)
// and `num_threads` threads (<= 0: all hardware threads). Same numerics as the
// oracle: int8 mode identical, none mode within 1e-5 relative.
absl::Status CpuTernaryGemm(const TernaryGemmArgs& args, int num_threads = 0);

// int8 mode's integer accumulators, [m, n]: acc[i][j] = sum_k xq[i][k] * q[j][k].
// Used by tests that require bit-identical accumulation across backends.
void ReferenceInt8Accumulators(const int8_t* xq, int64_t m,
                               const PackedTernaryView& weight, int32_t* acc);

}  // namespace bitnet

#endif  // BITNET_KERNELS_TERNARY_GEMM_H_
