#include "server/host/half.h"

#include <bit>
#include <cstdint>

namespace bitnet {

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t out;
  if (exponent == 0x1f) {  // inf / NaN: keep the payload, force quiet NaN.
    out = sign | 0x7f800000u | (mantissa << 13) | (mantissa ? 0x00400000u : 0);
  } else if (exponent != 0) {
    out = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    out = sign;
  } else {
    // Subnormal half: normalise; value = mantissa * 2^-24.
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    out = sign | static_cast<uint32_t>((127 - 15 - e) << 23) |
          ((mantissa & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(out);
}

uint16_t FloatToHalf(float value) {
  const uint32_t f = std::bit_cast<uint32_t>(value);
  const uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  const uint32_t abs = f & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    return sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0);
  }
  if (abs >= 0x477ff000u) {  // >= 65520: rounds to inf
    return sign | 0x7c00u;
  }
  if (abs >= 0x38800000u) {  // normal half range (>= 2^-14)
    // Rebias the exponent, then round the 13 dropped mantissa bits to
    // nearest even; a carry into the exponent is the correct result.
    const uint32_t rebased = abs - ((127u - 15u) << 23);
    const uint32_t lsb = (rebased >> 13) & 1u;
    return sign | static_cast<uint16_t>((rebased + 0xfffu + lsb) >> 13);
  }
  if (abs < 0x33000000u) {  // < 2^-25: rounds to zero (ties included)
    return sign;
  }
  // Subnormal half: value / 2^-24 rounded to nearest even integer.
  const uint32_t exponent = abs >> 23;
  const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exponent;  // 14..24 for this range
  const uint32_t kept = mantissa >> shift;
  const uint32_t rest = mantissa & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  uint32_t rounded = kept;
  if (rest > half || (rest == half && (kept & 1u))) ++rounded;
  return sign | static_cast<uint16_t>(rounded);
}

float BFloat16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t FloatToBFloat16(float value) {
  const uint32_t f = std::bit_cast<uint32_t>(value);
  if ((f & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep sign, quiet.
    return static_cast<uint16_t>((f >> 16) | 0x40u);
  }
  const uint32_t lsb = (f >> 16) & 1u;
  return static_cast<uint16_t>((f + 0x7fffu + lsb) >> 16);
}

}  // namespace bitnet
