// Activation quantization and activation functions, fixed by ARCHITECTURE.md:
//
// ActivationQuant::kNone: activations stay floating point, fp32 accumulation.
// ActivationQuant::kInt8 (BitNet b1.58): per row s = 127 / max(|x|, 1e-5),
//   xq = clamp(round_half_to_even(x * s), -128, 127), int32 accumulation,
//   output = acc * weight_scale / s.
// Both CPU and CUDA code use exactly these float operations in this order so
// that quantized activations (and hence int32 accumulators) are bit-identical.
#ifndef BITNET_KERNELS_ACTIVATION_H_
#define BITNET_KERNELS_ACTIVATION_H_

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace bitnet {

inline constexpr float kActivationAbsMaxFloor = 1e-5f;

enum class ActivationQuant { kNone, kInt8 };

// Applied to a layer's output after scale and bias.
enum class Activation { kIdentity, kRelu, kGelu, kSilu };

std::string_view ActivationQuantName(ActivationQuant mode);  // "none", "int8"
std::string_view ActivationName(Activation activation);  // "identity", "relu", "gelu", "silu"
absl::StatusOr<ActivationQuant> ParseActivationQuant(std::string_view name);
absl::StatusOr<Activation> ParseActivation(std::string_view name);

// Scalar activation on the host. GELU is the exact erf form (torch.nn.GELU()'s
// default); SiLU is x * sigmoid(x).
float ApplyActivation(Activation activation, float v);

// Quantizes each of `rows` rows of `x` ([rows, cols]) to int8.
// `xq` receives [rows, cols]; `row_scale[r]` receives s (= 127 / max(|x_r|, 1e-5)).
// `x` must be finite (the server rejects non-finite inputs at the edge); a NaN
// gives an unspecified but defined result (currently -128), never UB.
void QuantizeRowsInt8(const float* x, int64_t rows, int64_t cols, int8_t* xq,
                      float* row_scale);

// The two steps of QuantizeRowsInt8, exposed so every backend (and BitLinear's
// training forward) uses the same float operations:
// s = 127.0f / max(abs_max, 1e-5f), as float ops.
float Int8RowScale(float abs_max);
// clamp(nearbyint(v * row_scale), -128, 127), v * row_scale a float multiply,
// nearbyint in the default round-to-nearest-even mode.
int8_t QuantizeInt8(float v, float row_scale);

// The int8 epilogue before the activation, in this exact float order:
// static_cast<float>(acc) * weight_scale / row_scale + bias.
// Inline so the CPU paths and BitLinear evaluate the same expression.
inline float Int8Dequantize(int32_t acc, float weight_scale, float row_scale,
                            float bias) {
  const float v = static_cast<float>(acc) * weight_scale;
  return v / row_scale + bias;
}

}  // namespace bitnet

#endif  // BITNET_KERNELS_ACTIVATION_H_
