// Device-side checks of kernels/cuda/int8_numerics.cuh against the plain
// formulas it replaces (run by cuda_int8_numerics_test). A plain C++
// interface, so the test itself needs no CUDA compiler.
#ifndef BITNET_TESTS_CUDA_INT8_NUMERICS_CHECK_H_
#define BITNET_TESTS_CUDA_INT8_NUMERICS_CHECK_H_

#include <cstdint>

namespace bitnet::testing {

// How many inputs disagreed, and the first one found (bit patterns).
struct NumericsMismatches {
  unsigned long long count = 0;
  uint32_t a = 0;     // the input (quantization: v; division: numerator)
  uint32_t b = 0;     // division: divisor
  uint32_t got = 0;   // fast version
  uint32_t want = 0;  // plain formula
};

// Every float v (all 2^32 bit patterns) for which QuantizeInt8Bits' precondition holds
// (|v| < 127.5 or NaN), with s = 1: the low byte of QuantizeInt8Bits against
// clamp(rint(v * s), -128, 127), NaN -> -128. Since the fast version's first
// operation is the same float multiply, this covers every product v * s. Also
// checks PackInt8x4's byte order. Returns a CUDA error code (0 = success).
int CheckQuantizeEveryFloat(NumericsMismatches* out);

// SmallAccToFloat(acc) against static_cast<float>(acc) for every acc with
// |acc| <= 2^22, bit for bit.
int CheckSmallAccEveryValue(NumericsMismatches* out);

// DivideByRowScaleInRange(a, b, RowScaleReciprocal(b)) against
// __fdiv_rn(a, b), bit for bit (any NaN equals any NaN), wherever the kernels
// use it (the reciprocal nonzero, a zero or InDivisionRange), for every
// a = i * a_stride (i = 0, 1, ... over the 2^32 bit patterns) and each of the
// nb divisors bs.
int CheckDivideEveryNumerator(const float* bs, int nb, uint32_t a_stride, NumericsMismatches* out);

// The same comparison for `count` random pairs: b = 127 / amax for amax
// between 2^-40 and 2^41 (row scales inside and outside the fast path's
// range), a any bit pattern or a random value near that range.
int CheckDivideRandomPairs(unsigned long long seed, unsigned long long count,
                           NumericsMismatches* out);

}  // namespace bitnet::testing

#endif  // BITNET_TESTS_CUDA_INT8_NUMERICS_CHECK_H_
