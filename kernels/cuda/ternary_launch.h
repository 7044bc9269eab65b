// Internal to bitnet_kernels_cuda: the kernel parameter block and the host
// launchers of each compiled kernel (ternary_mma.cu, ternary_wgmma.cu,
// ternary_prep.cu). Callers go through ternary_cuda.h's dispatcher, which
// checks every argument before a launcher runs.
#ifndef BITNET_KERNELS_CUDA_TERNARY_LAUNCH_H_
#define BITNET_KERNELS_CUDA_TERNARY_LAUNCH_H_

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace bitnet::cuda_internal {

// Tensor-core input type of a GEMM kernel.
enum class MmaType : int { kF16 = 0, kBF16 = 1, kS8 = 2 };
// Output element type (mirrors CudaDType).
enum class OutType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kS32 = 3 };
// Mirrors bitnet::Activation.
enum class Act : int { kIdentity = 0, kRelu = 1, kGelu = 2, kSilu = 3 };

// Plain parameter block, passed by value (CUTLASS-style Params).
struct GemmParams {
  int m = 0;         // batch rows
  int n = 0;         // weight rows (outputs)
  int k_tiles = 0;   // padded K / 128
  int kt_per_split = 0;
  int splits = 1;
  // Activations: [m, ldx] elements of the kernel's MmaType. 16-byte chunks
  // at or beyond column x_k_limit are read as zeros (the weights there are
  // zero too, but garbage could be NaN).
  const void* x = nullptr;
  int64_t ldx = 0;
  int64_t x_k_limit = 0;
  const uint4* w = nullptr;  // execution layout for this MmaType
  // Weight rows the allocation holds (CudaTernaryWeights::padded_rows): a
  // tile may reach past n up to here (weights, scales and bias are zero).
  int64_t w_rows = 0;
  const float* w_scale = nullptr;  // [padded n]
  const float* bias = nullptr;     // [padded n] or null
  // Per batch row: kS8: s (y = acc * w_scale / s); kF16/kBF16: a multiplier
  // (exact power of two) or null for 1.
  const float* row_scale = nullptr;
  Act act = Act::kIdentity;
  void* y = nullptr;
  int64_t ldy = 0;
  OutType y_type = OutType::kF32;
  // Split-K scratch (splits > 1): 32-bit partial sums and per-tile counters.
  uint32_t* partials = nullptr;
  int* counters = nullptr;
  // Launch with programmatic dependent launch (dependent_launch.cuh): the
  // kernel may start while the previous kernel on the stream still runs and
  // load weights before waiting for it. Honored by the gemv and
  // warp-specialized configurations (their kernels wait before reading x);
  // every other launcher ignores it and launches plainly. Set by the
  // dispatcher on sm_90+ only, for configurations with
  // GemmKernelInfo::overlaps_previous.
  bool pdl = false;
};

// Activation preparation: per row, optional absmax, then either int8
// quantization (out: int8 [m, ldo], row_scale = s) or conversion to fp16/bf16
// (out: [m, ldo]; row_scale = exact power-of-two multiplier or untouched when
// null). Columns [k, ldo) are zero-filled.
struct PrepParams {
  int m = 0;
  int k = 0;
  const void* x = nullptr;
  int64_t ldx = 0;
  int x_type = 0;    // OutType-coded: kF32, kF16, kBF16
  int out_type = 0;  // MmaType-coded
  void* out = nullptr;
  int64_t ldo = 0;
  float* row_scale = nullptr;
  bool prescale = false;  // fp32 -> fp16: scale each row by 2^e (exact)
  // Launch with programmatic dependent launch (see GemmParams::pdl): the
  // kernel waits before its first read of x or write of out/row_scale.
  bool pdl = false;
};

cudaError_t LaunchPrep(const PrepParams& p, cudaStream_t stream);

// Raises a kernel's dynamic shared memory limit once per device: the call
// costs microseconds of host time, which would otherwise be paid per launch.
template <auto kKernel>
cudaError_t EnsureDynamicSmem(int bytes) {
  static std::atomic<uint64_t> done{0};  // bit d: done on device d (d < 64)
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  e = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess) done.fetch_or(bit, std::memory_order_acq_rel);
  return e;
}

// One entry per compiled GEMM kernel configuration.
struct GemmKernelInfo {
  const char* name;
  int weight_rows;   // block tile along n
  int batch_rows;    // block tile along m
  int threads;
  bool wgmma;
  bool gemv;  // no split-K: K is split across the block's warps instead
  // Per MmaType launcher; nullptr when not compiled for that type.
  cudaError_t (*launch[3])(const GemmParams&, dim3 grid, cudaStream_t);
  // Blocks that fit on one SM (shared memory, registers): the automatic
  // split-K aims at this many blocks per SM when the output tiles are few.
  int blocks_per_sm = 2;
  // The kernel waits for the previous grid (PdlWaitForPrerequisites) before
  // it reads activations, row scales or split-K scratch and before it writes
  // y, so it may be launched with GemmParams::pdl.
  bool overlaps_previous = false;
  // Split-K runs as one thread-block cluster {1, 1, splits} per output tile
  // and is reduced through distributed shared memory (ternary_wgmma_ws.cu),
  // so at most 8 splits (the portable cluster size).
  bool cluster_split = false;
};

// The explicit list (ternary_mma.cu + ternary_wgmma.cu), in config-id order.
int GemmKernelCount();
const GemmKernelInfo& GemmKernel(int id);

// 1 when the running device executes this build's sm_90a code.
cudaError_t ProbeWgmma(int* has_wgmma, cudaStream_t stream);

}  // namespace bitnet::cuda_internal

#endif  // BITNET_KERNELS_CUDA_TERNARY_LAUNCH_H_
