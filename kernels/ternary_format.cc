#include "kernels/ternary_format.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"

namespace bitnet {
namespace {

// --- PyTorch float32 CPU sum, reproduced operation for operation. ---------
// aten/src/ATen/native/cpu/SumKernel.cpp: a contiguous inner reduction loads
// 8-float vectors (AVX2 dispatch), sums them with row_sum (4 interleaved
// accumulators, each a 4-level cascade via multi_row_sum), adds the scalar tail
// and then the 8 lanes in order. Every float addition below happens in the
// same order, so the result is identical, not just close.
constexpr int64_t kTorchLanes = 8;  // Vectorized<float>::size() on AVX2
constexpr int64_t kTorchIlp = 4;    // row_sum's ilp_factor
constexpr int64_t kTorchLevels = 4;

struct Lanes {
  std::array<float, kTorchLanes> v{};
  Lanes& operator+=(const Lanes& o) {
    for (int64_t i = 0; i < kTorchLanes; ++i) v[i] += o.v[i];
    return *this;
  }
};

int64_t TorchCeilLog2(int64_t x) {
  if (x <= 2) return 1;
  int64_t bits = 0;
  for (uint64_t y = static_cast<uint64_t>(x) - 1; y != 0; y >>= 1) ++bits;
  return bits;
}

// multi_row_sum: `size` rows of kTorchIlp consecutive items; load(i) returns
// item i (an Acc).
template <typename Acc, typename Load>
std::array<Acc, kTorchIlp> MultiRowSum(const Load& load, int64_t size) {
  const int64_t level_power =
      std::max<int64_t>(4, TorchCeilLog2(size) / kTorchLevels);
  const int64_t level_step = int64_t{1} << level_power;
  const int64_t level_mask = level_step - 1;
  std::array<std::array<Acc, kTorchIlp>, kTorchLevels> acc{};
  int64_t i = 0;
  while (i + level_step <= size) {
    for (int64_t j = 0; j < level_step; ++j, ++i) {
      for (int64_t k = 0; k < kTorchIlp; ++k) acc[0][k] += load(i * kTorchIlp + k);
    }
    for (int64_t j = 1; j < kTorchLevels; ++j) {
      for (int64_t k = 0; k < kTorchIlp; ++k) {
        acc[j][k] += acc[j - 1][k];
        acc[j - 1][k] = Acc{};
      }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < size; ++i) {
    for (int64_t k = 0; k < kTorchIlp; ++k) acc[0][k] += load(i * kTorchIlp + k);
  }
  for (int64_t j = 1; j < kTorchLevels; ++j) {
    for (int64_t k = 0; k < kTorchIlp; ++k) acc[0][k] += acc[j][k];
  }
  return acc[0];
}

// row_sum: items 0..size-1.
template <typename Acc, typename Load>
Acc RowSum(const Load& load, int64_t size) {
  const int64_t size_ilp = size / kTorchIlp;
  std::array<Acc, kTorchIlp> partial = MultiRowSum<Acc>(load, size_ilp);
  for (int64_t i = size_ilp * kTorchIlp; i < size; ++i) partial[0] += load(i);
  for (int64_t k = 1; k < kTorchIlp; ++k) partial[0] += partial[k];
  return partial[0];
}

// Sum of |values| as torch.sum would return it (the output starts at 0 and
// the reduction result is added to it, which changes nothing for |x| >= 0).
float TorchAbsSum(std::span<const float> values) {
  const int64_t size = static_cast<int64_t>(values.size());
  if (size < kTorchLanes) {
    // scalar_inner_sum
    auto load = [&](int64_t i) { return std::fabs(values[i]); };
    return RowSum<float>(load, size);
  }
  // vectorized_inner_sum
  const int64_t vec_size = size / kTorchLanes;
  auto load_vec = [&](int64_t i) {
    Lanes l;
    for (int64_t k = 0; k < kTorchLanes; ++k) {
      l.v[k] = std::fabs(values[i * kTorchLanes + k]);
    }
    return l;
  };
  const Lanes vec_acc = RowSum<Lanes>(load_vec, vec_size);
  float final_acc = 0.0f;
  for (int64_t k = vec_size * kTorchLanes; k < size; ++k) {
    final_acc += std::fabs(values[k]);
  }
  for (int64_t k = 0; k < kTorchLanes; ++k) final_acc += vec_acc.v[k];
  return final_acc;
}

absl::Status CheckShape(std::span<const float> weights, int64_t rows,
                        int64_t cols) {
  if (rows <= 0 || cols <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight shape must be positive, got [%d, %d]", rows, cols));
  }
  if (static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols) !=
      weights.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weights has %d elements, expected rows * cols = %d * %d = %d",
        weights.size(), rows, cols, rows * cols));
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    if (!std::isfinite(weights[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "weights[%d, %d] is not finite (%f)", static_cast<int64_t>(i) / cols,
          static_cast<int64_t>(i) % cols, weights[i]));
    }
  }
  return absl::OkStatus();
}

}  // namespace

float TorchAbsMean(std::span<const float> values) {
  if (values.empty()) return 0.0f;
  // at::mean on CPU is sum(...).div_(count) with the count converted to float.
  return TorchAbsSum(values) / static_cast<float>(values.size());
}

absl::StatusOr<std::vector<float>> ComputeWeightScales(
    std::span<const float> weights, int64_t rows, int64_t cols,
    ScaleGranularity granularity) {
  if (absl::Status s = CheckShape(weights, rows, cols); !s.ok()) return s;
  std::vector<float> scales;
  if (granularity == ScaleGranularity::kPerTensor) {
    scales.push_back(std::max(TorchAbsMean(weights), kWeightScaleFloor));
  } else {
    scales.resize(rows);
    for (int64_t r = 0; r < rows; ++r) {
      scales[r] = std::max(TorchAbsMean(weights.subspan(r * cols, cols)),
                           kWeightScaleFloor);
    }
  }
  for (size_t i = 0; i < scales.size(); ++i) {
    if (!std::isfinite(scales[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "weight scale %d overflows float32 (weights too large)", i));
    }
  }
  return scales;
}

int8_t QuantizeTernary(float w, float scale) {
  const float r = std::nearbyint(w / scale);
  if (r >= 1.0f) return 1;
  if (r <= -1.0f) return -1;
  return 0;
}

absl::StatusOr<PackedTernaryMatrix> QuantizeAndPack(
    std::span<const float> weights, int64_t rows, int64_t cols,
    ScaleGranularity granularity) {
  absl::StatusOr<std::vector<float>> scales =
      ComputeWeightScales(weights, rows, cols, granularity);
  if (!scales.ok()) return scales.status();
  PackedTernaryMatrix out;
  out.rows = rows;
  out.cols = cols;
  out.granularity = granularity;
  out.scales = *std::move(scales);
  const int64_t wpr = WordsPerRow(cols);
  out.words.assign(rows * wpr, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = out.view().ScaleForRow(r);
    for (int64_t w = 0; w < wpr; ++w) {
      uint32_t word = 0;
      for (int64_t j = 0; j < kCodesPerWord; ++j) {
        const int64_t c = w * kCodesPerWord + j;
        // Padding code 1 is ternary zero.
        const uint32_t code =
            c < cols ? static_cast<uint32_t>(
                           QuantizeTernary(weights[r * cols + c], scale) + 1)
                     : 1u;
        word |= code << (2 * j);
      }
      out.words[r * wpr + w] = static_cast<int32_t>(word);
    }
  }
  return out;
}

absl::Status ValidatePacked(const PackedTernaryView& packed) {
  if (packed.rows <= 0 || packed.cols <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "packed weight shape must be positive, got [%d, %d]", packed.rows,
        packed.cols));
  }
  if (packed.words == nullptr) {
    return absl::InvalidArgumentError("packed weight words pointer is null");
  }
  if (packed.scales == nullptr) {
    return absl::InvalidArgumentError("packed weight scales pointer is null");
  }
  if (packed.granularity != ScaleGranularity::kPerRow &&
      packed.granularity != ScaleGranularity::kPerTensor) {
    return absl::InvalidArgumentError("unknown scale granularity");
  }
  const int64_t wpr = WordsPerRow(packed.cols);
  for (int64_t r = 0; r < packed.rows; ++r) {
    for (int64_t w = 0; w < wpr; ++w) {
      const uint32_t word = static_cast<uint32_t>(packed.words[r * wpr + w]);
      for (int64_t j = 0; j < kCodesPerWord; ++j) {
        const uint32_t code = (word >> (2 * j)) & 3u;
        const int64_t c = w * kCodesPerWord + j;
        if (c >= packed.cols && code != 1) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "packed weight row %d word %d: padding code at column %d is %d, "
              "expected 1 (zero) beyond cols = %d",
              r, w, c, code, packed.cols));
        }
        if (code == 3) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "packed weight row %d column %d (word %d bits %d-%d) has code 3; "
              "valid codes are 0, 1, 2",
              r, c, w, 2 * j, 2 * j + 1));
        }
      }
    }
  }
  const int64_t num_scales =
      packed.granularity == ScaleGranularity::kPerRow ? packed.rows : 1;
  for (int64_t i = 0; i < num_scales; ++i) {
    const float s = packed.scales[i];
    if (!std::isfinite(s) || s <= 0.0f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "packed weight scale %d is %f; scales must be finite and positive",
          i, s));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePacked(const PackedTernaryMatrix& packed) {
  if (packed.rows > 0 && packed.cols > 0) {
    const uint64_t want_words =
        static_cast<uint64_t>(packed.rows) * WordsPerRow(packed.cols);
    if (packed.words.size() != want_words) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "packed weight has %d words, expected rows * ceil(cols / 16) = "
          "%d * %d = %d",
          packed.words.size(), packed.rows, WordsPerRow(packed.cols),
          want_words));
    }
    const uint64_t want_scales =
        packed.granularity == ScaleGranularity::kPerRow ? packed.rows : 1;
    if (packed.scales.size() != want_scales) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "packed weight has %d scales, expected %d (%s)", packed.scales.size(),
          want_scales,
          packed.granularity == ScaleGranularity::kPerRow ? "one per row"
                                                          : "per tensor"));
    }
  }
  return ValidatePacked(packed.view());
}

std::vector<int8_t> UnpackTernary(const PackedTernaryView& packed) {
  std::vector<int8_t> q(packed.rows * packed.cols);
  for (int64_t r = 0; r < packed.rows; ++r) {
    for (int64_t c = 0; c < packed.cols; ++c) {
      q[r * packed.cols + c] = static_cast<int8_t>(CodeAt(packed, r, c) - 1);
    }
  }
  return q;
}

std::vector<float> Dequantize(const PackedTernaryView& packed) {
  std::vector<float> w(packed.rows * packed.cols);
  for (int64_t r = 0; r < packed.rows; ++r) {
    const float scale = packed.ScaleForRow(r);
    for (int64_t c = 0; c < packed.cols; ++c) {
      w[r * packed.cols + c] =
          static_cast<float>(CodeAt(packed, r, c) - 1) * scale;
    }
  }
  return w;
}

}  // namespace bitnet
