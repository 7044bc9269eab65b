// First-order optimizers for the latent weights and biases: AdamW (decoupled
// weight decay, Loshchilov & Hutter) and SGD with momentum, with PyTorch's
// update rules (torch.optim.AdamW / torch.optim.SGD, dampening 0, no
// Nesterov) so hyper-parameters carry over.
#ifndef BITNET_SERVER_TRAINING_OPTIMIZER_H_
#define BITNET_SERVER_TRAINING_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bitnet::training {

enum class OptimizerKind { kAdamW, kSgd };

std::string_view OptimizerKindName(OptimizerKind kind);  // "adamw", "sgd"
// INVALID_ARGUMENT listing the accepted names otherwise.
absl::StatusOr<OptimizerKind> ParseOptimizerKind(std::string_view name);

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::kAdamW;
  float learning_rate = 1e-3f;  // > 0
  // AdamW, per step t (from 1), for each element with gradient g:
  //   p -= lr * weight_decay * p            (decoupled decay, first)
  //   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
  //   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + epsilon)
  float beta1 = 0.9f;     // in [0, 1)
  float beta2 = 0.999f;   // in [0, 1)
  float epsilon = 1e-8f;  // > 0
  // SGD: d = g + weight_decay * p (L2, coupled, as torch.optim.SGD);
  //   buf = momentum * buf + d (buf = d at the first step); p -= lr * buf.
  float momentum = 0.9f;  // in [0, 1)
  float weight_decay =
      0.0f;  // >= 0; skipped for slots with apply_weight_decay false
};

// INVALID_ARGUMENT naming the field and its allowed range.
absl::Status ValidateOptimizerOptions(const OptimizerOptions& options);

// One parameter tensor and its gradient (same length), both host memory.
struct ParameterSlot {
  std::span<float> value;
  std::span<const float> grad;
  // Biases are conventionally not decayed.
  bool apply_weight_decay = true;
};

// Holds the per-element state (AdamW: m and v; SGD: the momentum buffer) of
// a fixed list of parameter tensors. Not thread-safe: one Step at a time.
class Optimizer {
 public:
  // `parameter_sizes[i]` is the element count of the i-th tensor Step will
  // receive. Errors: INVALID_ARGUMENT for bad options or a negative size.
  static absl::StatusOr<std::unique_ptr<Optimizer>> Create(
      const OptimizerOptions& options, std::vector<int64_t> parameter_sizes);

  // Updates every slot in place. Errors (nothing is modified then):
  // INVALID_ARGUMENT when the slot count or a slot's sizes differ from
  // Create's, or a gradient is not finite (naming the slot and element).
  absl::Status Step(std::span<const ParameterSlot> slots);

  // A deep copy (options, step count and every moment buffer): the copy
  // continues exactly as this one would.
  std::unique_ptr<Optimizer> Clone() const {
    return std::unique_ptr<Optimizer>(new Optimizer(*this));
  }

  // Completed steps (t of the last update).
  int64_t steps() const { return steps_; }
  const OptimizerOptions& options() const { return options_; }
  // For learning-rate schedules. INVALID_ARGUMENT unless finite and > 0.
  absl::Status SetLearningRate(float learning_rate);

 private:
  Optimizer(const OptimizerOptions& options, std::vector<int64_t> sizes);
  Optimizer(const Optimizer&) = default;

  OptimizerOptions options_;
  std::vector<int64_t> sizes_;
  int64_t steps_ = 0;
  std::vector<std::vector<float>> first_;   // AdamW m, SGD momentum buffer
  std::vector<std::vector<float>> second_;  // AdamW v; empty for SGD
};

}  // namespace bitnet::training

#endif  // BITNET_SERVER_TRAINING_OPTIMIZER_H_
