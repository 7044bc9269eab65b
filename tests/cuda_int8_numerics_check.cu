// Device-side checks of kernels/cuda/int8_numerics.cuh (see the header).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/int8_numerics.cuh"
#include "tests/cuda_int8_numerics_check.h"

namespace bitnet::testing {
namespace {

using cuda_internal::DivideByRowScaleInRange;
using cuda_internal::InDivisionRange;
using cuda_internal::PackInt8x4;
using cuda_internal::QuantizeInt8Bits;
using cuda_internal::RowScaleReciprocal;
using cuda_internal::SmallAccToFloat;

constexpr uint64_t kEveryFloat = uint64_t{1} << 32;

// bitnet::QuantizeInt8 (kernels/activation.cc) as plain float code.
__device__ uint32_t PlainQuantizeInt8(float v, float s) {
  const float r = rintf(__fmul_rn(v, s));
  if (!(r >= -128.0f)) return 0x80u;
  if (r > 127.0f) return 0x7Fu;
  return static_cast<uint32_t>(static_cast<int>(r)) & 0xFFu;
}

__device__ void Record(NumericsMismatches* out, uint32_t a, uint32_t b, uint32_t got,
                       uint32_t want) {
  if (atomicAdd(&out->count, 1ull) == 0) {
    out->a = a;
    out->b = b;
    out->got = got;
    out->want = want;
  }
}

__global__ void QuantizeEveryFloatKernel(NumericsMismatches* out) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < kEveryFloat; i += stride) {
    const uint32_t bits = static_cast<uint32_t>(i);
    const float v = __uint_as_float(bits);
    if (!(isnan(v) || fabsf(v) < 127.5f)) continue;  // outside the precondition
    const uint32_t got = QuantizeInt8Bits(v, 1.0f) & 0xFFu;
    const uint32_t want = PlainQuantizeInt8(v, 1.0f);
    if (got != want) Record(out, bits, 0, got, want);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    // Byte order: -1, 2, -128, 127 -> bytes FF 02 80 7F, the first lowest.
    const uint32_t got = PackInt8x4(QuantizeInt8Bits(-1.0f, 1.0f), QuantizeInt8Bits(2.0f, 1.0f),
                                    QuantizeInt8Bits(__int_as_float(0x7FFFFFFF), 1.0f),
                                    QuantizeInt8Bits(127.0f, 1.0f));
    if (got != 0x7F8002FFu) Record(out, 0, 0, got, 0x7F8002FFu);
  }
}

__global__ void SmallAccEveryValueKernel(NumericsMismatches* out) {
  constexpr int kLimit = 1 << 22;
  const int stride = gridDim.x * blockDim.x;
  for (int acc = -kLimit + static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); acc <= kLimit;
       acc += stride) {
    const uint32_t got = __float_as_uint(SmallAccToFloat(acc));
    const uint32_t want = __float_as_uint(static_cast<float>(acc));
    if (got != want) Record(out, static_cast<uint32_t>(acc), 0, got, want);
  }
}

__device__ bool SameFloat(float x, float y) {
  return (isnan(x) && isnan(y)) || __float_as_uint(x) == __float_as_uint(y);
}

// Where the kernels divide by DivideByRowScaleInRange (the divisor's
// reciprocal nonzero, the numerator zero or in range), it must give
// __fdiv_rn's bits; elsewhere they call __fdiv_rn itself.
__device__ void CheckDivision(NumericsMismatches* out, float a, float b) {
  const float rcp = RowScaleReciprocal(b);
  if (rcp == 0.0f || !(a == 0.0f || InDivisionRange(a))) return;
  const float got = DivideByRowScaleInRange(a, b, rcp);
  const float want = __fdiv_rn(a, b);
  if (!SameFloat(got, want)) {
    Record(out, __float_as_uint(a), __float_as_uint(b), __float_as_uint(got),
           __float_as_uint(want));
  }
}

__global__ void DivideEveryNumeratorKernel(const float* bs, int nb, uint32_t a_stride,
                                           NumericsMismatches* out) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  const uint64_t count = (kEveryFloat + a_stride - 1) / a_stride;
  for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
    const float a = __uint_as_float(static_cast<uint32_t>(i * a_stride));
    for (int j = 0; j < nb; ++j) CheckDivision(out, a, bs[j]);
  }
}

__device__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void DivideRandomPairsKernel(uint64_t seed, uint64_t count, NumericsMismatches* out) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint64_t r1 = SplitMix64(seed ^ (2 * i));
    const uint64_t r2 = SplitMix64(seed ^ (2 * i + 1));
    // amax with exponents -40..40: row scales on both sides of the fast
    // path's range limits, computed as the preparation launch does.
    const float amax = ldexpf(1.0f + static_cast<float>(r1 & 0xFFFFFF) * 0x1p-24f,
                              static_cast<int>((r1 >> 24) % 81) - 40);
    const float b = __fdiv_rn(127.0f, fmaxf(amax, 1e-5f));
    // a: every other pair any 32-bit pattern (zeros, subnormals, infinities,
    // NaNs), the others a random sign and mantissa with exponents -37..38,
    // around the fast path's limits (2^-30, 2^31).
    uint32_t a_bits = static_cast<uint32_t>(r2);
    if (i & 1) {
      a_bits = (a_bits & 0x807FFFFFu) | (static_cast<uint32_t>(90 + (r2 >> 32) % 76) << 23);
    }
    CheckDivision(out, __uint_as_float(a_bits), b);
  }
}

constexpr int kBlocks = 4096;
constexpr int kThreads = 256;

// Zeroed mismatch counters on the device, launch(dev) (which returns the
// launch's error), then the counters back into *out. A CUDA error code.
template <typename Launch>
int RunCheck(NumericsMismatches* out, Launch launch) {
  NumericsMismatches* dev = nullptr;
  cudaError_t e = cudaMalloc(&dev, sizeof(NumericsMismatches));
  if (e != cudaSuccess) return static_cast<int>(e);
  e = cudaMemset(dev, 0, sizeof(NumericsMismatches));
  if (e == cudaSuccess) e = launch(dev);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaMemcpy(out, dev, sizeof(*out), cudaMemcpyDeviceToHost);
  cudaFree(dev);
  return static_cast<int>(e);
}

}  // namespace

int CheckQuantizeEveryFloat(NumericsMismatches* out) {
  return RunCheck(out, [](NumericsMismatches* dev) {
    QuantizeEveryFloatKernel<<<kBlocks, kThreads>>>(dev);
    return cudaGetLastError();
  });
}

int CheckSmallAccEveryValue(NumericsMismatches* out) {
  return RunCheck(out, [](NumericsMismatches* dev) {
    SmallAccEveryValueKernel<<<kBlocks, kThreads>>>(dev);
    return cudaGetLastError();
  });
}

int CheckDivideEveryNumerator(const float* bs, int nb, uint32_t a_stride, NumericsMismatches* out) {
  float* dev_bs = nullptr;
  cudaError_t e = cudaMalloc(&dev_bs, sizeof(float) * nb);
  if (e != cudaSuccess) return static_cast<int>(e);
  const int r = RunCheck(out, [&](NumericsMismatches* dev) {
    cudaError_t copied = cudaMemcpy(dev_bs, bs, sizeof(float) * nb, cudaMemcpyHostToDevice);
    if (copied != cudaSuccess) return copied;
    DivideEveryNumeratorKernel<<<kBlocks, kThreads>>>(dev_bs, nb, a_stride, dev);
    return cudaGetLastError();
  });
  cudaFree(dev_bs);
  return r;
}

int CheckDivideRandomPairs(unsigned long long seed, unsigned long long count,
                           NumericsMismatches* out) {
  return RunCheck(out, [&](NumericsMismatches* dev) {
    DivideRandomPairsKernel<<<kBlocks, kThreads>>>(seed, count, dev);
    return cudaGetLastError();
  });
}

}  // namespace bitnet::testing
