#include "server/training/training_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/activation.h"

namespace bitnet::training {
namespace {

absl::Status CheckLossShape(std::string_view what, size_t output_size,
                            size_t other_size, std::string_view other_name,
                            int64_t other_expected, int64_t rows, int64_t cols,
                            size_t grad_size) {
  if (rows <= 0 || cols <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: rows and cols must be positive, got %d x %d", what, rows, cols));
  }
  const uint64_t want =
      static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols);
  if (output_size != want) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: output has %d values, expected rows * cols = %d",
                        what, output_size, want));
  }
  if (other_size != static_cast<uint64_t>(other_expected)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %s has %d values, expected %d", what, other_name,
                        other_size, other_expected));
  }
  if (grad_size != 0 && grad_size != want) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: grad has %d values, expected 0 (no gradient) or rows * cols = %d",
        what, grad_size, want));
  }
  return absl::OkStatus();
}

}  // namespace

float ActivationGradient(Activation activation, float z) {
  const double x = z;
  switch (activation) {
    case Activation::kIdentity:
      return 1.0f;
    case Activation::kRelu:
      return z > 0.0f ? 1.0f : 0.0f;
    case Activation::kGelu: {
      constexpr double kInvSqrt2 = 0.70710678118654752440;
      constexpr double kInvSqrt2Pi = 0.39894228040143267794;
      const double cdf = 0.5 * (1.0 + std::erf(x * kInvSqrt2));
      const double pdf = kInvSqrt2Pi * std::exp(-0.5 * x * x);
      return static_cast<float>(cdf + x * pdf);
    }
    case Activation::kSilu: {
      const double sig = 1.0 / (1.0 + std::exp(-x));
      return static_cast<float>(sig * (1.0 + x * (1.0 - sig)));
    }
  }
  return 1.0f;
}

std::string_view LossKindName(LossKind kind) {
  switch (kind) {
    case LossKind::kMeanSquaredError:
      return "mse";
    case LossKind::kSoftmaxCrossEntropy:
      return "cross_entropy";
  }
  return "unknown";
}

absl::StatusOr<LossKind> ParseLossKind(std::string_view name) {
  if (name == "mse") return LossKind::kMeanSquaredError;
  if (name == "cross_entropy") return LossKind::kSoftmaxCrossEntropy;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown loss \"", std::string(name),
                   "\"; expected \"mse\" or \"cross_entropy\""));
}

absl::StatusOr<double> MeanSquaredError(std::span<const float> output,
                                        std::span<const float> targets,
                                        int64_t rows, int64_t cols,
                                        std::span<float> grad) {
  if (absl::Status s =
          CheckLossShape("mse loss", output.size(), targets.size(), "targets",
                         rows * cols, rows, cols, grad.size());
      !s.ok()) {
    return s;
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    if (!std::isfinite(targets[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "mse loss: targets[%d, %d] is not finite",
          static_cast<int64_t>(i) / cols, static_cast<int64_t>(i) % cols));
    }
  }
  const double count = static_cast<double>(rows) * static_cast<double>(cols);
  double sum = 0.0;
  for (size_t i = 0; i < output.size(); ++i) {
    const double d = static_cast<double>(output[i]) - targets[i];
    sum += d * d;
    if (!grad.empty()) grad[i] = static_cast<float>(2.0 * d / count);
  }
  return sum / count;
}

absl::StatusOr<double> SoftmaxCrossEntropy(std::span<const float> output,
                                           std::span<const int32_t> labels,
                                           int64_t rows, int64_t cols,
                                           std::span<float> grad,
                                           int64_t* correct) {
  if (absl::Status s =
          CheckLossShape("cross-entropy loss", output.size(), labels.size(),
                         "labels", rows, rows, cols, grad.size());
      !s.ok()) {
    return s;
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] < 0 || labels[r] >= cols) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "cross-entropy loss: labels[%d] is %d, expected a class in [0, %d)",
          r, labels[r], cols));
    }
  }
  double total = 0.0;
  int64_t hits = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = output.data() + r * cols;
    int64_t arg_max = 0;
    for (int64_t c = 1; c < cols; ++c) {
      if (z[c] > z[arg_max]) arg_max = c;
    }
    if (arg_max == labels[r]) ++hits;
    const double z_max = z[arg_max];
    double sum_exp = 0.0;
    for (int64_t c = 0; c < cols; ++c) sum_exp += std::exp(z[c] - z_max);
    const double log_sum_exp = z_max + std::log(sum_exp);
    total += log_sum_exp - z[labels[r]];
    if (!grad.empty()) {
      for (int64_t c = 0; c < cols; ++c) {
        const double p = std::exp(z[c] - log_sum_exp);
        grad[r * cols + c] =
            static_cast<float>((p - (c == labels[r] ? 1.0 : 0.0)) / rows);
      }
    }
  }
  if (correct != nullptr) *correct = hits;
  return total / static_cast<double>(rows);
}

}  // namespace bitnet::training
