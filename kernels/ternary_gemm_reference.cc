// The oracle: plain loops over the interchange layout. Deliberately naive;
// every other kernel is tested against these functions.
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "kernels/ternary_gemm.h"

namespace bitnet {
namespace {

// int32 accumulators hold at most 128 * K in magnitude.
constexpr int64_t kMaxCols = int64_t{1} << 24;

}  // namespace

absl::Status CheckTernaryGemmArgs(const TernaryGemmArgs& args) {
  if (args.m < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("m (batch rows) is %d, must be >= 0", args.m));
  }
  if (args.weight.rows <= 0 || args.weight.cols <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight shape must be positive, got [%d, %d]", args.weight.rows,
        args.weight.cols));
  }
  if (args.weight.cols > kMaxCols) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight.cols (K) is %d; at most %d is supported (int32 accumulation)",
        args.weight.cols, kMaxCols));
  }
  if (args.weight.words == nullptr) {
    return absl::InvalidArgumentError("weight.words is null");
  }
  if (args.weight.scales == nullptr) {
    return absl::InvalidArgumentError("weight.scales is null");
  }
  if (args.weight.granularity != ScaleGranularity::kPerRow &&
      args.weight.granularity != ScaleGranularity::kPerTensor) {
    return absl::InvalidArgumentError("weight.granularity is not a known value");
  }
  if (args.act_quant != ActivationQuant::kNone &&
      args.act_quant != ActivationQuant::kInt8) {
    return absl::InvalidArgumentError("act_quant is not a known value");
  }
  switch (args.activation) {
    case Activation::kIdentity:
    case Activation::kRelu:
    case Activation::kGelu:
    case Activation::kSilu:
      break;
    default:
      return absl::InvalidArgumentError("activation is not a known value");
  }
  if (args.m > 0 && args.x == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("x is null but m = %d", args.m));
  }
  if (args.m > 0 && args.y == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("y is null but m = %d", args.m));
  }
  return absl::OkStatus();
}

void ReferenceInt8Accumulators(const int8_t* xq, int64_t m,
                               const PackedTernaryView& weight, int32_t* acc) {
  const int64_t n = weight.rows;
  const int64_t k = weight.cols;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      int32_t sum = 0;
      for (int64_t c = 0; c < k; ++c) {
        sum += static_cast<int32_t>(xq[i * k + c]) * (CodeAt(weight, j, c) - 1);
      }
      acc[i * n + j] = sum;
    }
  }
}

absl::Status ReferenceTernaryGemm(const TernaryGemmArgs& args) {
  if (absl::Status s = CheckTernaryGemmArgs(args); !s.ok()) return s;
  const int64_t m = args.m;
  const int64_t n = args.weight.rows;
  const int64_t k = args.weight.cols;
  if (m == 0) return absl::OkStatus();

  if (args.act_quant == ActivationQuant::kInt8) {
    std::vector<int8_t> xq(m * k);
    std::vector<float> row_scale(m);
    QuantizeRowsInt8(args.x, m, k, xq.data(), row_scale.data());
    std::vector<int32_t> acc(m * n);
    ReferenceInt8Accumulators(xq.data(), m, args.weight, acc.data());
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const float bias = args.bias != nullptr ? args.bias[j] : 0.0f;
        args.y[i * n + j] = ApplyActivation(
            args.activation,
            Int8Dequantize(acc[i * n + j], args.weight.ScaleForRow(j),
                           row_scale[i], bias));
      }
    }
    return absl::OkStatus();
  }

  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t c = 0; c < k; ++c) {
        acc += static_cast<double>(args.x[i * k + c]) *
               static_cast<double>(CodeAt(args.weight, j, c) - 1);
      }
      const double bias = args.bias != nullptr ? args.bias[j] : 0.0;
      const double v = acc * static_cast<double>(args.weight.ScaleForRow(j)) + bias;
      args.y[i * n + j] = ApplyActivation(args.activation, static_cast<float>(v));
    }
  }
  return absl::OkStatus();
}

}  // namespace bitnet
