// The int8 mode's two per-element float operations (kernels/activation.h),
// bit for bit as on the CPU, built from full-rate instructions.
//
//  * Quantization, clamp(rint(v * s), -128, 127) with NaN -> -128. Written
//    plainly (rintf, compares, float -> int) it is an FRND and an F2I per
//    element, both on sm_90's conversion pipe (16 per SM per clock, against
//    128 for FADD / FMUL): at M = 512, K = 4096 the preparation launch spent
//    ~1 us of conversion-pipe time per SM after its rows arrived.
//  * Dequantization's float(acc), an I2F on the same pipe, for accumulators
//    that fit 23 bits (K <= 32768).
//  * Dequantization's IEEE division by the row scale. __fdiv_rn is a
//    MUFU.RCP (16 per SM per clock), three refinement FFMAs, an FCHK range
//    check and a branch per element; the row scale is the same for a whole
//    row of outputs, so its reciprocal is computed once per row and the
//    division becomes five FFMAs.
//
// All are checked against the plain formulas by tests/cuda_int8_numerics_test
// (every float for the quantization, every small accumulator, every numerator
// for 16 divisors and random pairs for the division).
#ifndef BITNET_KERNELS_CUDA_INT8_NUMERICS_CUH_
#define BITNET_KERNELS_CUDA_INT8_NUMERICS_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace bitnet::cuda_internal {

// The int8 value of v * s, clamped and rounded as QuantizeInt8 does, in the
// low byte of the result (the other bytes are junk: pack with PackInt8x4).
//
// Precondition: |v * s| < 127.5 or v * s is NaN. It holds whenever s is
// Int8RowScale of the absmax of v's row: |v| <= absmax, so |v * s| <= 127
// (1 + 2^-24)^2. (An infinite v makes the absmax infinite and s zero, so the
// product is NaN.)
//
// Adding 1.5 * 2^23 to a float of magnitude below 2^22 lands in [2^23, 2^24),
// where the ulp is 1: the round-to-nearest-even addition rounds v * s to an
// integer, ties to even as rint does (1.5 * 2^23 is even), and leaves it in
// the low bits: bits = 0x4B400000 + rint(v * s), within +-127 of 0x4B400000.
// A NaN (either sign) has larger unsigned bits and is clamped to 0x4B400080,
// whose low byte is 0x80 = -128, as the CPU's NaN rule gives.
__device__ __forceinline__ uint32_t QuantizeInt8Bits(float v, float s) {
  const float t = __fadd_rn(__fmul_rn(v, s), 12582912.0f);
  return min(__float_as_uint(t), 0x4B400080u);
}

// Four QuantizeInt8Bits results -> four int8 in one word, a in the low byte.
__device__ __forceinline__ uint32_t PackInt8x4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

// The largest k_tiles (K / 128, padded) for which SmallAccToFloat is exact:
// |acc| <= 128 * K <= 2^22.
constexpr int kSmallAccMaxKTiles = 256;

// static_cast<float>(acc) for |acc| <= 2^22. acc + 0x4B400000 is the bit
// pattern of the float 1.5 * 2^23 + acc (the binade [2^23, 2^24) has ulp 1,
// and +2^22 reaches exactly 2^24), and subtracting 1.5 * 2^23 is exact.
__device__ __forceinline__ float SmallAccToFloat(int acc) {
  return __fsub_rn(__int_as_float(acc + 0x4B400000), 12582912.0f);
}

// Whether |v| lies in [2^-30, 2^31), the range DivideByRowScaleInRange
// assumes for numerator and divisor.
__device__ __forceinline__ bool InDivisionRange(float v) {
  return ((__float_as_uint(v) >> 23) & 0xFFu) - (127u - 30u) <= 60u;  // biased exponent
}

// What DivideByRowScaleInRange needs besides the divisor: RN(1 / b) when b
// is InDivisionRange, zero otherwise (the caller then divides with
// __fdiv_rn). Computed once per batch row.
__device__ __forceinline__ float RowScaleReciprocal(float b) {
  return InDivisionRange(b) ? __frcp_rn(b) : 0.0f;
}

// __fdiv_rn(a, b), given rcp = RowScaleReciprocal(b) != 0 and a zero or
// InDivisionRange(a). Straight-line code (no branch), so the divisions of a
// thread's columns interleave.
//
// With |a| and |b| in [2^-30, 2^31): q0 = RN(a * rcp) is within 1.5 ulp of
// a / b; one correction q1 = RN(q0 + RN(a - b q0) rcp) is then within half an
// ulp plus ~2^-23 ulp, so faithful. By Markstein's theorem (rcp = RN(1 / b),
// relative error below 2^-24, q1 faithful, no overflow or underflow), the
// residual a - b q1 is exact as an FMA and RN(q1 + (a - b q1) rcp) is
// RN(a / b). The ranges keep a / b within (2^-61, 2^61) and make every
// residual a multiple of 2^-137, so it stays exact even where it is
// subnormal. A zero a gives q0 = a * rcp, the correctly signed zero (the
// corrections could turn -0 into +0).
__device__ __forceinline__ float DivideByRowScaleInRange(float a, float b, float rcp) {
  const float q0 = __fmul_rn(a, rcp);
  const float q1 = __fmaf_rn(__fmaf_rn(-b, q0, a), rcp, q0);
  const float q2 = __fmaf_rn(__fmaf_rn(-b, q1, a), rcp, q1);
  return a == 0.0f ? q0 : q2;
}

}  // namespace bitnet::cuda_internal

#endif  // BITNET_KERNELS_CUDA_INT8_NUMERICS_CUH_
