#include "kernels/activation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace bitnet {

std::string_view ActivationQuantName(ActivationQuant mode) {
  switch (mode) {
    case ActivationQuant::kNone:
      return "none";
    case ActivationQuant::kInt8:
      return "int8";
  }
  return "unknown";
}

std::string_view ActivationName(Activation activation) {
  switch (activation) {
    case Activation::kIdentity:
      return "identity";
    case Activation::kRelu:
      return "relu";
    case Activation::kGelu:
      return "gelu";
    case Activation::kSilu:
      return "silu";
  }
  return "unknown";
}

absl::StatusOr<ActivationQuant> ParseActivationQuant(std::string_view name) {
  if (name == "none") return ActivationQuant::kNone;
  if (name == "int8") return ActivationQuant::kInt8;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown activation quantization mode \"", std::string(name),
                   "\"; expected \"none\" or \"int8\""));
}

absl::StatusOr<Activation> ParseActivation(std::string_view name) {
  if (name == "identity") return Activation::kIdentity;
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "silu") return Activation::kSilu;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown activation \"", std::string(name),
                   "\"; expected \"identity\", \"relu\", \"gelu\" or \"silu\""));
}

float ApplyActivation(Activation activation, float v) {
  switch (activation) {
    case Activation::kIdentity:
      return v;
    case Activation::kRelu:
      // NaN stays NaN, like torch.relu.
      return v < 0.0f ? 0.0f : v;
    case Activation::kGelu:
      // torch: x * 0.5 * (1 + erf(x * M_SQRT1_2)).
      return v * 0.5f * (1.0f + std::erf(v * 0.70710678118654752440f));
    case Activation::kSilu:
      // torch: x / (1 + exp(-x)).
      return v / (1.0f + std::exp(-v));
  }
  return v;
}

float Int8RowScale(float abs_max) {
  return 127.0f / std::max(abs_max, kActivationAbsMaxFloor);
}

int8_t QuantizeInt8(float v, float row_scale) {
  const float r = std::nearbyint(v * row_scale);
  // Written so that NaN lands on -128 (defined, and what the AVX2 path's
  // saturating packs produce), never an undefined float->int conversion.
  if (!(r >= -128.0f)) return -128;
  if (r > 127.0f) return 127;
  return static_cast<int8_t>(r);
}

void QuantizeRowsInt8(const float* x, int64_t rows, int64_t cols, int8_t* xq,
                      float* row_scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float abs_max = 0.0f;
    for (int64_t c = 0; c < cols; ++c) abs_max = std::max(abs_max, std::fabs(xr[c]));
    const float s = Int8RowScale(abs_max);
    row_scale[r] = s;
    for (int64_t c = 0; c < cols; ++c) xq[r * cols + c] = QuantizeInt8(xr[c], s);
  }
}

}  // namespace bitnet
