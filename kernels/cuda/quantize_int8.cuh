// Per-row int8 activation quantization on the device, shared by the separate
// preparation launch (ternary_prep.cu) and the warp-specialized GEMM, which
// quantizes its own activations (ternary_wgmma_ws.cu). Both must produce the
// bytes and row scales of bitnet::QuantizeInt8 on the CPU
// (kernels/activation.cc), so that int32 accumulators match the oracle bit
// for bit: s = 127 / max(absmax, 1e-5) (IEEE division), q = clamp(rint(x * s),
// -128, 127), NaN -> -128.
#ifndef BITNET_KERNELS_CUDA_QUANTIZE_INT8_CUH_
#define BITNET_KERNELS_CUDA_QUANTIZE_INT8_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace bitnet::cuda_internal {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

// The row's multiplier from its absmax. fmaxf upstream drops NaN like
// std::max(abs_max, fabs(x)) on the CPU does.
__device__ __forceinline__ float Int8RowScale(float absmax) {
  return __fdiv_rn(127.0f, fmaxf(absmax, 1e-5f));
}

__device__ __forceinline__ int8_t QuantizeInt8(float v, float s) {
  // Same operations as bitnet::QuantizeInt8: a float multiply, round half to
  // even, NaN -> -128.
  const float r = rintf(__fmul_rn(v, s));
  if (!(r >= -128.0f)) return -128;
  if (r > 127.0f) return 127;
  return static_cast<int8_t>(static_cast<int>(r));
}

// Elements [8g, 8g + 8) of a row whose start is 16-byte aligned.
template <typename InT>
__device__ __forceinline__ void LoadGroup8(const InT* row, int g, float (&v)[8]) {
  if constexpr (sizeof(InT) == 4) {
    const float4 a = reinterpret_cast<const float4*>(row)[2 * g];
    const float4 b = reinterpret_cast<const float4*>(row)[2 * g + 1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
    const uint4 a = reinterpret_cast<const uint4*>(row)[g];
    const InT* h = reinterpret_cast<const InT*>(&a);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = ToFloat(h[i]);
  }
}

// Eight quantized values, byte i = element i (little endian).
__device__ __forceinline__ uint2 QuantizeGroup8(const float (&v)[8], float s) {
  uint32_t lo = 0, hi = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    lo |= static_cast<uint32_t>(static_cast<uint8_t>(QuantizeInt8(v[i], s))) << (8 * i);
    hi |= static_cast<uint32_t>(static_cast<uint8_t>(QuantizeInt8(v[i + 4], s))) << (8 * i);
  }
  return make_uint2(lo, hi);
}

}  // namespace bitnet::cuda_internal

#endif  // BITNET_KERNELS_CUDA_QUANTIZE_INT8_CUH_
