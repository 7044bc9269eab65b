// IEEE binary16 (F16) and bfloat16 (BF16) <-> fp32 conversions on the host.
//
// Used to read F16/BF16 tensors from safetensors files (bitnet-pack) and by
// anything that receives half-precision bytes. Pure functions, thread-safe.
// Narrowing rounds to nearest, ties to even (what numpy and PyTorch do);
// NaN stays NaN (quiet), infinities and signed zeros are preserved.
#ifndef BITNET_SERVER_HOST_HALF_H_
#define BITNET_SERVER_HOST_HALF_H_

#include <cstdint>

namespace bitnet {

// Exact: every binary16 value (subnormals included) is an fp32 value.
float HalfToFloat(uint16_t bits);
// Round to nearest even; overflow gives +-inf, tiny values become subnormals
// or signed zero.
uint16_t FloatToHalf(float value);

// Exact: bfloat16 is the upper half of an fp32.
float BFloat16ToFloat(uint16_t bits);
// Round to nearest even; overflow gives +-inf.
uint16_t FloatToBFloat16(float value);

}  // namespace bitnet

#endif  // BITNET_SERVER_HOST_HALF_H_
