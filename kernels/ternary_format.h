// The ternary weight format fixed by ARCHITECTURE.md ("interchange layout").
//
// Quantize: scale = max(mean(|w|), 1e-5); q = clamp(round_half_to_even(w / scale), -1, 1).
// Pack: weight [N out, K in] row-major; code = q + 1 in {0,1,2}; 16 codes per
// little-endian int32; element k of a row lives in word k / 16 at bits 2*(k % 16).
// K is padded to a multiple of 16 with code 1 (zero). Packed shape [N, ceil(K/16)].
// Dequantized weight = (code - 1) * scale.
//
// This layout is bit-compatible with the reference Python project's files
// (tests/fixtures/seed_packing.safetensors). Backends may re-arrange it into an
// execution layout at load time; that layout never leaves the device.
#ifndef BITNET_KERNELS_TERNARY_FORMAT_H_
#define BITNET_KERNELS_TERNARY_FORMAT_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bitnet {

inline constexpr int kCodesPerWord = 16;
inline constexpr float kWeightScaleFloor = 1e-5f;

// One scale per output row (the reference project's packing) or one for the
// whole tensor (the BitNet b1.58 paper).
enum class ScaleGranularity { kPerRow, kPerTensor };

// ceil(cols / 16): int32 words per packed row.
constexpr int64_t WordsPerRow(int64_t cols) {
  return (cols + kCodesPerWord - 1) / kCodesPerWord;
}

// Non-owning view of a packed matrix. `scales` has `rows` entries when
// per-row, 1 when per-tensor.
struct PackedTernaryView {
  int64_t rows = 0;  // N, output features
  int64_t cols = 0;  // K, input features (unpadded)
  const int32_t* words = nullptr;  // [rows, WordsPerRow(cols)]
  const float* scales = nullptr;
  ScaleGranularity granularity = ScaleGranularity::kPerRow;

  float ScaleForRow(int64_t row) const {
    return granularity == ScaleGranularity::kPerRow ? scales[row] : scales[0];
  }
};

// Owning packed matrix in the interchange layout.
struct PackedTernaryMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  ScaleGranularity granularity = ScaleGranularity::kPerRow;
  std::vector<int32_t> words;  // [rows, WordsPerRow(cols)]
  std::vector<float> scales;   // rows or 1 entries

  PackedTernaryView view() const {
    return {rows, cols, words.data(), scales.data(), granularity};
  }
};

// Quantizes and packs `weights` ([rows, cols], row-major fp32).
// Errors: INVALID_ARGUMENT for non-positive shapes, a size mismatch or
// non-finite weights.
absl::StatusOr<PackedTernaryMatrix> QuantizeAndPack(
    std::span<const float> weights, int64_t rows, int64_t cols,
    ScaleGranularity granularity);

// Checks a packed matrix from outside (a file, an RPC): sizes agree, every
// code is 0, 1 or 2, padding codes are 1, scales finite and positive.
// A view cannot know its buffers' lengths; the caller checks those against
// WordsPerRow/rows first (or uses the PackedTernaryMatrix overload).
// Errors: INVALID_ARGUMENT naming the row/column/word or scale at fault.
absl::Status ValidatePacked(const PackedTernaryView& packed);
// Also checks words.size() and scales.size() against the shape.
absl::Status ValidatePacked(const PackedTernaryMatrix& packed);

// mean(|values|) computed exactly as PyTorch's float32 CPU `x.abs().mean()`
// does it (SumKernel.cpp cascade_sum with 8-lane AVX2 vectors, one thread,
// then a float division by the count), so scales match the reference project's
// files bit for bit. A plain double-accumulated mean differs by 1-2 ulp on
// about a third of the fixture rows, which flips ternary codes at ties.
// Returns 0 for an empty span. Not clamped (see kWeightScaleFloor).
float TorchAbsMean(std::span<const float> values);

// The scales QuantizeAndPack uses: max(TorchAbsMean(row or tensor), 1e-5),
// `rows` entries per-row or 1 per-tensor. The per-tensor value matches PyTorch
// run with one thread or on tensors under 32768 elements (above that PyTorch's
// multi-threaded reduction order depends on its thread count).
// Errors: as QuantizeAndPack, plus INVALID_ARGUMENT when a scale overflows.
absl::StatusOr<std::vector<float>> ComputeWeightScales(
    std::span<const float> weights, int64_t rows, int64_t cols,
    ScaleGranularity granularity);

// q = clamp(round_half_to_even(w / scale), -1, 1), computed in float32 (a
// float division, then nearbyint in the default round-to-nearest-even mode).
// `w` and `scale` must be finite, `scale` positive.
int8_t QuantizeTernary(float w, float scale);

// Code (0, 1 or 2) of element `col` of row `row`; no bounds checks.
inline int CodeAt(const PackedTernaryView& packed, int64_t row, int64_t col) {
  const uint32_t word = static_cast<uint32_t>(
      packed.words[row * WordsPerRow(packed.cols) + col / kCodesPerWord]);
  return static_cast<int>((word >> (2 * (col % kCodesPerWord))) & 3u);
}

// Ternary values q in {-1, 0, +1}, [rows, cols] row-major (padding dropped).
std::vector<int8_t> UnpackTernary(const PackedTernaryView& packed);

// (code - 1) * scale, [rows, cols] row-major fp32.
std::vector<float> Dequantize(const PackedTernaryView& packed);

}  // namespace bitnet

#endif  // BITNET_KERNELS_TERNARY_FORMAT_H_
