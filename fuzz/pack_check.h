// Oracle shared by the packer fuzz targets: checks a PackedTernaryMatrix
// against the float weights it was made from, using the formulas of
// ARCHITECTURE.md written out independently of kernels/ternary_format.cc.
#ifndef BITNET_FUZZ_PACK_CHECK_H_
#define BITNET_FUZZ_PACK_CHECK_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "fuzz/fuzz_util.h"
#include "kernels/ternary_format.h"

namespace bitnet::fuzz {

// `weights` [rows, cols] finite floats that `packed` was quantized from.
inline void CheckPacked(const PackedTernaryMatrix& packed, std::span<const float> weights,
                        int64_t rows, int64_t cols, ScaleGranularity granularity) {
  FUZZ_CHECK(packed.rows == rows && packed.cols == cols, "packed shape == weight shape");
  FUZZ_CHECK(packed.granularity == granularity, "requested scale granularity");
  const int64_t words_per_row = (cols + 15) / 16;
  FUZZ_CHECK(static_cast<int64_t>(packed.words.size()) == rows * words_per_row,
             "rows * ceil(cols / 16) words");
  const int64_t groups = granularity == ScaleGranularity::kPerRow ? rows : 1;
  FUZZ_CHECK(static_cast<int64_t>(packed.scales.size()) == groups, "one scale per group");
  FUZZ_CHECK(ValidatePacked(packed).ok(), "QuantizeAndPack output passes ValidatePacked");

  const int64_t group_size = rows * cols / groups;
  for (int64_t g = 0; g < groups; ++g) {
    // scale = max(mean(|w|), 1e-5); the library sums like PyTorch does
    // (float, 8-lane cascade), so compare with a double mean loosely.
    double sum = 0;
    for (int64_t i = 0; i < group_size; ++i) sum += std::fabs(double{weights[g * group_size + i]});
    const double expected = std::max(sum / static_cast<double>(group_size), 1e-5);
    const double scale = packed.scales[g];
    FUZZ_CHECK(std::isfinite(scale) && scale >= double{kWeightScaleFloor}, "scale >= 1e-5");
    FUZZ_CHECK(std::fabs(scale - expected) <= 1e-4 * expected, "scale == max(mean|w|, 1e-5)");
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = packed.scales[granularity == ScaleGranularity::kPerRow ? r : 0];
    for (int64_t c = 0; c < words_per_row * 16; ++c) {
      const uint32_t word = static_cast<uint32_t>(packed.words[r * words_per_row + c / 16]);
      const int code = static_cast<int>((word >> (2 * (c % 16))) & 3u);
      if (c >= cols) {
        FUZZ_CHECK(code == 1, "padding code is 1 (zero)");
        continue;
      }
      // q = clamp(round_half_to_even(w / scale), -1, 1), in float32.
      const float q = std::clamp(std::nearbyint(weights[r * cols + c] / scale), -1.0f, 1.0f);
      FUZZ_CHECK(code - 1 == static_cast<int>(q), "code == clamp(rne(w / scale), -1, 1) + 1");
    }
  }
}

}  // namespace bitnet::fuzz

#endif  // BITNET_FUZZ_PACK_CHECK_H_
