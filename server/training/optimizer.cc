#include "server/training/optimizer.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace bitnet::training {
namespace {

absl::Status CheckRange(std::string_view field, float value, bool zero_ok) {
  if (!std::isfinite(value) || value < 0.0f || (!zero_ok && value == 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("optimizer %s is %g, must be finite and %s", field,
                        value, zero_ok ? ">= 0" : "> 0"));
  }
  return absl::OkStatus();
}

absl::Status CheckUnitInterval(std::string_view field, float value) {
  if (!(value >= 0.0f && value < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("optimizer %s is %g, must be in [0, 1)", field, value));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view OptimizerKindName(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kAdamW:
      return "adamw";
    case OptimizerKind::kSgd:
      return "sgd";
  }
  return "unknown";
}

absl::StatusOr<OptimizerKind> ParseOptimizerKind(std::string_view name) {
  if (name == "adamw") return OptimizerKind::kAdamW;
  if (name == "sgd") return OptimizerKind::kSgd;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown optimizer \"", std::string(name),
                   "\"; expected \"adamw\" or \"sgd\""));
}

absl::Status ValidateOptimizerOptions(const OptimizerOptions& options) {
  if (options.kind != OptimizerKind::kAdamW &&
      options.kind != OptimizerKind::kSgd) {
    return absl::InvalidArgumentError("optimizer kind is not a known value");
  }
  if (absl::Status s =
          CheckRange("learning_rate", options.learning_rate, false);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRange("weight_decay", options.weight_decay, true);
      !s.ok()) {
    return s;
  }
  if (options.kind == OptimizerKind::kAdamW) {
    if (absl::Status s = CheckUnitInterval("beta1", options.beta1); !s.ok())
      return s;
    if (absl::Status s = CheckUnitInterval("beta2", options.beta2); !s.ok())
      return s;
    if (absl::Status s = CheckRange("epsilon", options.epsilon, false);
        !s.ok()) {
      return s;
    }
  } else {
    if (absl::Status s = CheckUnitInterval("momentum", options.momentum);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

Optimizer::Optimizer(const OptimizerOptions& options,
                     std::vector<int64_t> sizes)
    : options_(options), sizes_(std::move(sizes)) {
  first_.resize(sizes_.size());
  if (options_.kind == OptimizerKind::kAdamW) second_.resize(sizes_.size());
  for (size_t i = 0; i < sizes_.size(); ++i) {
    first_[i].assign(sizes_[i], 0.0f);
    if (!second_.empty()) second_[i].assign(sizes_[i], 0.0f);
  }
}

absl::StatusOr<std::unique_ptr<Optimizer>> Optimizer::Create(
    const OptimizerOptions& options, std::vector<int64_t> parameter_sizes) {
  if (absl::Status s = ValidateOptimizerOptions(options); !s.ok()) return s;
  for (size_t i = 0; i < parameter_sizes.size(); ++i) {
    if (parameter_sizes[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("optimizer parameter %d has size %d, must be >= 0", i,
                          parameter_sizes[i]));
    }
  }
  return std::unique_ptr<Optimizer>(
      new Optimizer(options, std::move(parameter_sizes)));
}

absl::Status Optimizer::SetLearningRate(float learning_rate) {
  if (absl::Status s = CheckRange("learning_rate", learning_rate, false);
      !s.ok()) {
    return s;
  }
  options_.learning_rate = learning_rate;
  return absl::OkStatus();
}

absl::Status Optimizer::Step(std::span<const ParameterSlot> slots) {
  if (slots.size() != sizes_.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("optimizer step got %d parameter slots, expected %d",
                        slots.size(), sizes_.size()));
  }
  // Check everything first so a bad slot leaves all parameters untouched.
  for (size_t i = 0; i < slots.size(); ++i) {
    const uint64_t want = static_cast<uint64_t>(sizes_[i]);
    if (slots[i].value.size() != want || slots[i].grad.size() != want) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "optimizer parameter %d: value has %d and grad %d elements, expected "
          "%d",
          i, slots[i].value.size(), slots[i].grad.size(), want));
    }
    for (size_t e = 0; e < want; ++e) {
      if (!std::isfinite(slots[i].grad[e])) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "optimizer parameter %d: gradient element %d is not finite (%g)", i,
            e, slots[i].grad[e]));
      }
    }
  }
  ++steps_;
  const float lr = options_.learning_rate;
  if (options_.kind == OptimizerKind::kAdamW) {
    const float b1 = options_.beta1;
    const float b2 = options_.beta2;
    const double t = static_cast<double>(steps_);
    const float step_size =
        static_cast<float>(lr / (1.0 - std::pow(static_cast<double>(b1), t)));
    const float bias_correction2_sqrt = static_cast<float>(
        std::sqrt(1.0 - std::pow(static_cast<double>(b2), t)));
    for (size_t i = 0; i < slots.size(); ++i) {
      const float decay = slots[i].apply_weight_decay
                              ? 1.0f - lr * options_.weight_decay
                              : 1.0f;
      std::span<float> p = slots[i].value;
      std::span<const float> g = slots[i].grad;
      float* m = first_[i].data();
      float* v = second_[i].data();
      for (size_t e = 0; e < p.size(); ++e) {
        p[e] *= decay;
        m[e] = b1 * m[e] + (1.0f - b1) * g[e];
        v[e] = b2 * v[e] + (1.0f - b2) * g[e] * g[e];
        const float denom =
            std::sqrt(v[e]) / bias_correction2_sqrt + options_.epsilon;
        p[e] -= step_size * m[e] / denom;
      }
    }
    return absl::OkStatus();
  }

  const float mu = options_.momentum;
  for (size_t i = 0; i < slots.size(); ++i) {
    const float wd = slots[i].apply_weight_decay ? options_.weight_decay : 0.0f;
    std::span<float> p = slots[i].value;
    std::span<const float> g = slots[i].grad;
    float* buf = first_[i].data();
    for (size_t e = 0; e < p.size(); ++e) {
      const float d = g[e] + wd * p[e];
      // PyTorch starts the buffer at d itself; with a zero-initialised buffer
      // mu * 0 + d is the same value.
      buf[e] = mu * buf[e] + d;
      p[e] -= lr * buf[e];
    }
  }
  return absl::OkStatus();
}

}  // namespace bitnet::training
