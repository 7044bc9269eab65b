#include "kernels/bit_linear.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"

namespace bitnet {

absl::StatusOr<std::unique_ptr<BitLinear>> BitLinear::Create(
    const BitLinearOptions& options, std::vector<float> weight,
    std::vector<float> bias) {
  if (options.in_features <= 0 || options.out_features <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "BitLinear in_features and out_features must be positive, got %d and %d",
        options.in_features, options.out_features));
  }
  const uint64_t want = static_cast<uint64_t>(options.in_features) *
                        static_cast<uint64_t>(options.out_features);
  if (weight.size() != want) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "BitLinear weight has %d elements, expected out_features * in_features "
        "= %d * %d = %d",
        weight.size(), options.out_features, options.in_features, want));
  }
  const size_t want_bias = options.has_bias ? options.out_features : 0;
  if (bias.size() != want_bias) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "BitLinear bias has %d elements, expected %d (has_bias = %s)",
        bias.size(), want_bias, options.has_bias ? "true" : "false"));
  }
  for (size_t i = 0; i < bias.size(); ++i) {
    if (!std::isfinite(bias[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("BitLinear bias[%d] is not finite", i));
    }
  }
  if (options.act_quant != ActivationQuant::kNone &&
      options.act_quant != ActivationQuant::kInt8) {
    return absl::InvalidArgumentError("BitLinear act_quant is not a known value");
  }
  if (options.granularity != ScaleGranularity::kPerRow &&
      options.granularity != ScaleGranularity::kPerTensor) {
    return absl::InvalidArgumentError("BitLinear granularity is not a known value");
  }
  // Finiteness of the weights is checked by ComputeWeightScales.
  absl::StatusOr<std::vector<float>> scales = ComputeWeightScales(
      weight, options.out_features, options.in_features, options.granularity);
  if (!scales.ok()) return scales.status();
  return std::unique_ptr<BitLinear>(
      new BitLinear(options, std::move(weight), std::move(bias)));
}

absl::Status BitLinear::ForwardTraining(const float* x, int64_t m, float* y) const {
  if (m < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("m is %d, must be >= 0", m));
  }
  if (m > 0 && (x == nullptr || y == nullptr)) {
    return absl::InvalidArgumentError("x and y must not be null when m > 0");
  }
  const int64_t n = options_.out_features;
  const int64_t k = options_.in_features;
  absl::StatusOr<std::vector<float>> scales =
      ComputeWeightScales(weight_, n, k, options_.granularity);
  if (!scales.ok()) return scales.status();
  auto scale_for = [&](int64_t row) {
    return options_.granularity == ScaleGranularity::kPerRow ? (*scales)[row]
                                                             : (*scales)[0];
  };
  // Fake-quantized weights q in {-1, 0, 1} (as floats, like the STE graph).
  std::vector<float> q(n * k);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      q[r * k + c] = QuantizeTernary(weight_[r * k + c], scale_for(r));
    }
  }
  std::vector<float> xq(k);
  for (int64_t i = 0; i < m; ++i) {
    const float* xr = x + i * k;
    float row_scale = 1.0f;
    const float* lhs = xr;
    if (options_.act_quant == ActivationQuant::kInt8) {
      float abs_max = 0.0f;
      for (int64_t c = 0; c < k; ++c) abs_max = std::max(abs_max, std::fabs(xr[c]));
      row_scale = Int8RowScale(abs_max);
      for (int64_t c = 0; c < k; ++c) xq[c] = QuantizeInt8(xr[c], row_scale);
      lhs = xq.data();
    }
    for (int64_t j = 0; j < n; ++j) {
      // Integer-valued products sum exactly in double, so in int8 mode this
      // is the int32 accumulator; in none mode it is the oracle's double sum.
      double acc = 0.0;
      for (int64_t c = 0; c < k; ++c) {
        acc += static_cast<double>(lhs[c]) * static_cast<double>(q[j * k + c]);
      }
      float v;
      if (options_.act_quant == ActivationQuant::kInt8) {
        const float bias = options_.has_bias ? bias_[j] : 0.0f;
        v = Int8Dequantize(static_cast<int32_t>(acc), scale_for(j), row_scale, bias);
      } else {
        const double bias = options_.has_bias ? bias_[j] : 0.0;
        v = static_cast<float>(acc * static_cast<double>(scale_for(j)) + bias);
      }
      y[i * n + j] = ApplyActivation(options_.activation, v);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PackedTernaryMatrix> BitLinear::Pack() const {
  return QuantizeAndPack(weight_, options_.out_features, options_.in_features,
                         options_.granularity);
}

absl::Status BitLinear::PrepareInference() {
  absl::StatusOr<PackedTernaryMatrix> packed = Pack();
  if (!packed.ok()) return packed.status();
  absl::StatusOr<CpuTernaryWeights> cpu = CpuTernaryWeights::Prepare(packed->view());
  if (!cpu.ok()) return cpu.status();
  prepared_.emplace(Prepared{*std::move(packed), *std::move(cpu)});
  return absl::OkStatus();
}

absl::Status BitLinear::ForwardPacked(const float* x, int64_t m, float* y,
                                      const CpuGemmOptions& cpu_options) const {
  if (!prepared_.has_value()) {
    return absl::FailedPreconditionError(
        "BitLinear::ForwardPacked needs PrepareInference() first (not called, "
        "or the latent weights were opened for writing since)");
  }
  TernaryGemmArgs args;
  args.m = m;
  args.x = x;
  args.weight = prepared_->packed.view();
  args.bias = options_.has_bias ? bias_.data() : nullptr;
  args.act_quant = options_.act_quant;
  args.activation = options_.activation;
  args.y = y;
  return CpuTernaryGemm(args, prepared_->cpu, cpu_options);
}

}  // namespace bitnet
