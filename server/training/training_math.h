// Element-wise pieces of STE training on the host: activation derivatives
// and the two losses with their gradients. Pure functions, thread-safe.
#ifndef BITNET_SERVER_TRAINING_TRAINING_MATH_H_
#define BITNET_SERVER_TRAINING_TRAINING_MATH_H_

#include <cstdint>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/activation.h"

namespace bitnet::training {

// d act(z) / dz for the activations of kernels/activation.h, evaluated in
// double and rounded once:
//   identity 1;  relu  1 for z > 0, else 0 (PyTorch's choice at 0);
//   gelu (exact erf form)  Phi(z) + z * phi(z);
//   silu  sigmoid(z) * (1 + z * (1 - sigmoid(z))).
float ActivationGradient(Activation activation, float z);

enum class LossKind {
  // mean over all rows * cols elements of (y - target)^2 (torch.nn.MSELoss).
  kMeanSquaredError,
  // mean over rows of -log softmax(y)[label] (torch.nn.CrossEntropyLoss).
  kSoftmaxCrossEntropy,
};

std::string_view LossKindName(LossKind kind);  // "mse", "cross_entropy"
// INVALID_ARGUMENT listing the accepted names otherwise.
absl::StatusOr<LossKind> ParseLossKind(std::string_view name);

// Loss of `output` ([rows, cols] row-major) against `targets` (same shape) and
// its gradient d loss / d output written to `grad` (same shape; may be empty
// to skip it). Sums run in double. Errors: INVALID_ARGUMENT for rows or cols
// <= 0, span sizes that are not rows * cols, or non-finite targets.
absl::StatusOr<double> MeanSquaredError(std::span<const float> output,
                                        std::span<const float> targets,
                                        int64_t rows, int64_t cols,
                                        std::span<float> grad);

// Softmax cross-entropy of logits `output` ([rows, cols]) against integer
// class `labels` (rows entries in [0, cols)), with the usual max-subtracted
// log-sum-exp; `grad` = (softmax - one_hot) / rows. `correct` (optional)
// receives how many rows have their label as the first arg-max.
// Errors: INVALID_ARGUMENT for sizes as above or a label out of range
// (naming the row).
absl::StatusOr<double> SoftmaxCrossEntropy(std::span<const float> output,
                                           std::span<const int32_t> labels,
                                           int64_t rows, int64_t cols,
                                           std::span<float> grad,
                                           int64_t* correct = nullptr);

}  // namespace bitnet::training

#endif  // BITNET_SERVER_TRAINING_TRAINING_MATH_H_
