// Activation preparation, one block per batch row:
//  * int8 mode: absmax, s = 127 / max(absmax, 1e-5) (IEEE division), then
//    xq = clamp(rint(x * s), -128, 127) exactly as QuantizeInt8 on the CPU
//    (kernels/activation.cc), so int32 accumulators match the oracle bit for
//    bit (QuantizeInt8Bits, int8_numerics.cuh: FMUL, FADD, IMNMX, no
//    conversion instructions);
//  * none mode, fp32 input: conversion to fp16 after an exact power-of-two
//    per-row prescale (absmax lands in [2^14, 2^15): no overflow, no loss to
//    subnormals), undone in the GEMM epilogue;
//  * none mode, fp16/bf16 input whose rows are not 16-byte aligned: a padded
//    copy.
// Columns [k, ldo) are zero-filled so the GEMM can read whole 128-column tiles.
//
// With PrepParams::pdl (dependent_launch.cuh) the launch may overlap the
// previous kernel on the stream: the prep kernels let the following GEMM
// launch at once (so a gemv prefetches its weights while quantization runs)
// and wait for the previous kernel before reading x or writing anything. The
// output lives in the shared workspace that the previous layer's GEMM may
// still be reading, so no write may move above the wait either.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/int8_numerics.cuh"
#include "kernels/cuda/ternary_launch.h"

namespace bitnet::cuda_internal {
namespace {

constexpr int kPrepThreads = 256;

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ float BlockMax(float v) {
  __shared__ float s_warp[kPrepThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) s_warp[warp] = v;
  __syncthreads();
  float r = s_warp[0];
#pragma unroll
  for (int w = 1; w < kPrepThreads / 32; ++w) r = fmaxf(r, s_warp[w]);
  return r;
}

// This block's row of x into the L2 before the PDL wait. A preparation
// block is small enough to start beside the previous kernel's blocks, so
// the row arrives while that kernel still runs (int8 mode, H200, graph
// --pdl, three rounds, session 24: N = 4096, M = 1 / 16 / 128 3.93 / 5.05 /
// 11.33 -> 3.82 / 4.87 / 11.05 us; N = 11008, M = 8 7.22 -> 6.79; two
// rounds at M = 384 / 512: N = 4096 17.06-17.12 / 17.93-18.04 -> 16.69-16.71
// / 17.74-17.78, N = 11008 45.45-45.54 / 41.56-41.58 -> 44.73-44.76 /
// 41.08-41.21). Not past 512 rows: 16 MB prefetched during the previous
// GEMM at M = 2048 cost it more than it saved (session 10); 513..2047 rows
// are not measured.
template <typename InT>
__device__ __forceinline__ void PrefetchRow(const InT* x, int k) {
  if (gridDim.x > 512) return;
  const char* bytes = reinterpret_cast<const char*>(x);
  const int64_t row_bytes = int64_t{k} * int64_t{sizeof(InT)};
  for (int64_t c = int64_t{threadIdx.x} * 128; c < row_bytes; c += kPrepThreads * 128) {
    PrefetchToL2(bytes + c);
  }
}

template <typename InT, MmaType kOut>
__global__ void __launch_bounds__(kPrepThreads) prep_kernel(const PrepParams p) {
  PdlLaunchDependents();
  const int row = blockIdx.x;
  const InT* x = static_cast<const InT*>(p.x) + static_cast<int64_t>(row) * p.ldx;
  PrefetchRow(x, p.k);
  PdlWaitForPrerequisites();
  float mul = 1.0f;
  if (kOut == MmaType::kS8 || p.prescale) {
    float amax = 0.0f;
    for (int c = threadIdx.x; c < p.k; c += kPrepThreads) {
      // fmaxf drops NaN like std::max(abs_max, fabs(x)) on the CPU does.
      amax = fmaxf(amax, fabsf(ToFloat(x[c])));
    }
    amax = BlockMax(amax);
    if constexpr (kOut == MmaType::kS8) {
      mul = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
      if (threadIdx.x == 0) p.row_scale[row] = mul;
    } else {
      int e = 0;
      if (amax > 0.0f && amax <= 3.4e38f) {
        int ex = 0;
        frexpf(amax, &ex);  // amax = f * 2^ex, f in [0.5, 1)
        e = min(max(15 - ex, -120), 120);
      }
      mul = ldexpf(1.0f, e);
      if (threadIdx.x == 0) p.row_scale[row] = ldexpf(1.0f, -e);
    }
  }
  if constexpr (kOut == MmaType::kS8) {
    int8_t* out = static_cast<int8_t*>(p.out) + static_cast<int64_t>(row) * p.ldo;
    for (int c = threadIdx.x; c < p.ldo; c += kPrepThreads) {
      // mul is this row's scale, so QuantizeInt8Bits' precondition holds.
      out[c] = c < p.k ? static_cast<int8_t>(QuantizeInt8Bits(ToFloat(x[c]), mul) & 0xFFu)
                       : int8_t{0};
    }
  } else if constexpr (kOut == MmaType::kF16) {
    __half* out = static_cast<__half*>(p.out) + static_cast<int64_t>(row) * p.ldo;
    for (int c = threadIdx.x; c < p.ldo; c += kPrepThreads) {
      out[c] = __float2half_rn(c < p.k ? ToFloat(x[c]) * mul : 0.0f);
    }
  } else {
    __nv_bfloat16* out = static_cast<__nv_bfloat16*>(p.out) + static_cast<int64_t>(row) * p.ldo;
    for (int c = threadIdx.x; c < p.ldo; c += kPrepThreads) {
      out[c] = __float2bfloat16_rn(c < p.k ? ToFloat(x[c]) * mul : 0.0f);
    }
  }
}

// Vector variant for the common case (k % 8 == 0, rows 16-byte aligned):
// 8 elements per thread per step. Rows of up to kHeldGroups x 8 x 256
// elements (K <= 8192) are read once: the groups a thread loads for the
// absmax stay in its registers for the conversion, so the row never makes a
// second trip through L1/L2 (the int8 launch at M = 2048 is a pure stream of
// x in and xq out). Longer rows reload the groups past that.
constexpr int kHeldGroups = 4;

template <typename InT, MmaType kOut>
__global__ void __launch_bounds__(kPrepThreads) prep_vec8_kernel(const PrepParams p) {
  PdlLaunchDependents();
  const int row = blockIdx.x;
  const InT* x = static_cast<const InT*>(p.x) + static_cast<int64_t>(row) * p.ldx;
  PrefetchRow(x, p.k);
  PdlWaitForPrerequisites();
  const int groups = p.k / 8;
  auto load8 = [&](int gidx, float (&v)[8]) {
    if constexpr (sizeof(InT) == 4) {
      const float4 a = reinterpret_cast<const float4*>(x)[2 * gidx];
      const float4 b = reinterpret_cast<const float4*>(x)[2 * gidx + 1];
      v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
      v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
      const uint4 a = reinterpret_cast<const uint4*>(x)[gidx];
      const InT* h = reinterpret_cast<const InT*>(&a);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = ToFloat(h[i]);
    }
  };
  // held[j] is group threadIdx.x + j * kPrepThreads (zeros past the row).
  float held[kHeldGroups][8];
#pragma unroll
  for (int j = 0; j < kHeldGroups; ++j) {
    const int gi = threadIdx.x + j * kPrepThreads;
    if (gi < groups) {
      load8(gi, held[j]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) held[j][i] = 0.0f;
    }
  }
  float mul = 1.0f;
  if (kOut == MmaType::kS8 || p.prescale) {
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < kHeldGroups; ++j)
#pragma unroll
      for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(held[j][i]));
    for (int gi = threadIdx.x + kHeldGroups * kPrepThreads; gi < groups; gi += kPrepThreads) {
      float v[8];
      load8(gi, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
    }
    amax = BlockMax(amax);
    if constexpr (kOut == MmaType::kS8) {
      mul = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
      if (threadIdx.x == 0) p.row_scale[row] = mul;
    } else {
      int e = 0;
      if (amax > 0.0f && amax <= 3.4e38f) {
        int ex = 0;
        frexpf(amax, &ex);
        e = min(max(15 - ex, -120), 120);
      }
      mul = ldexpf(1.0f, e);
      if (threadIdx.x == 0) p.row_scale[row] = ldexpf(1.0f, -e);
    }
  }
  auto store8 = [&](int gi, const float (&v)[8]) {
    if constexpr (kOut == MmaType::kS8) {
      // mul is this row's scale, so QuantizeInt8Bits' precondition holds.
      uint32_t q[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) q[i] = QuantizeInt8Bits(v[i], mul);
      const uint32_t lo = PackInt8x4(q[0], q[1], q[2], q[3]);
      const uint32_t hi = PackInt8x4(q[4], q[5], q[6], q[7]);
      reinterpret_cast<uint2*>(static_cast<int8_t*>(p.out) + static_cast<int64_t>(row) * p.ldo)[gi] =
          make_uint2(lo, hi);
    } else if constexpr (kOut == MmaType::kF16) {
      __half2 h[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i] * mul, v[2 * i + 1] * mul);
      reinterpret_cast<uint4*>(static_cast<__half*>(p.out) + static_cast<int64_t>(row) * p.ldo)[gi] =
          *reinterpret_cast<uint4*>(h);
    } else {
      __nv_bfloat162 h[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i] * mul, v[2 * i + 1] * mul);
      reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p.out) +
                               static_cast<int64_t>(row) * p.ldo)[gi] = *reinterpret_cast<uint4*>(h);
    }
  };
  // Output groups [0, ldo / 8): held groups (zeros past k, which also pads
  // columns [k, ldo)), then reloaded ones, then zero padding.
  const int out_groups = static_cast<int>(p.ldo / 8);
#pragma unroll
  for (int j = 0; j < kHeldGroups; ++j) {
    const int gi = threadIdx.x + j * kPrepThreads;
    if (gi < out_groups) store8(gi, held[j]);
  }
  for (int gi = threadIdx.x + kHeldGroups * kPrepThreads; gi < out_groups; gi += kPrepThreads) {
    float v[8];
    if (gi < groups) {
      load8(gi, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = 0.0f;
    }
    store8(gi, v);
  }
}

template <typename InT, MmaType kOut>
cudaError_t LaunchPrepTyped(const PrepParams& p, cudaStream_t stream) {
  const bool vec = p.k % 8 == 0 && p.ldx % 8 == 0 && p.ldo % 8 == 0 &&
                   reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.out) % 16 == 0;
  return LaunchWithOptionalPdl(vec ? prep_vec8_kernel<InT, kOut> : prep_kernel<InT, kOut>,
                               dim3(p.m), dim3(kPrepThreads), 0, stream, p.pdl, p);
}

template <typename InT>
cudaError_t LaunchPrepIn(const PrepParams& p, cudaStream_t stream) {
  switch (static_cast<MmaType>(p.out_type)) {
    case MmaType::kF16:
      return LaunchPrepTyped<InT, MmaType::kF16>(p, stream);
    case MmaType::kBF16:
      return LaunchPrepTyped<InT, MmaType::kBF16>(p, stream);
    case MmaType::kS8:
      return LaunchPrepTyped<InT, MmaType::kS8>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t LaunchPrep(const PrepParams& p, cudaStream_t stream) {
  if (p.m <= 0) return cudaSuccess;
  switch (static_cast<OutType>(p.x_type)) {
    case OutType::kF32:
      return LaunchPrepIn<float>(p, stream);
    case OutType::kF16:
      return LaunchPrepIn<__half>(p, stream);
    case OutType::kBF16:
      return LaunchPrepIn<__nv_bfloat16>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace bitnet::cuda_internal
