// libFuzzer target: QuantizeAndPack (kernels/ternary_format.h) on arbitrary
// float bit patterns, NaN, infinities, denormals and huge values included,
// and on shapes that do not match the data.
//
// Input layout (FuzzedDataProvider): rows, cols, granularity, a size skew,
// then the weights' raw float32 bits.
//
// Findings: any sanitizer report, and (FUZZ_CHECK):
//  - a non-finite weight, a non-positive shape or a size mismatch is an
//    INVALID_ARGUMENT error, never a result;
//  - on success the packed matrix matches the format's formulas
//    (fuzz/pack_check.h): scales, codes, padding, ValidatePacked;
//  - Dequantize/UnpackTernary agree with the codes.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>

#include "fuzz/fuzz_util.h"
#include "fuzz/pack_check.h"
#include "kernels/ternary_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  // Small shapes keep an execution in microseconds; -1 and 0 probe the
  // shape checks.
  const int64_t rows = in.ConsumeIntegralInRange<int64_t>(-1, 24);
  const int64_t cols = in.ConsumeIntegralInRange<int64_t>(-1, 70);
  const auto granularity = in.ConsumeBool() ? bitnet::ScaleGranularity::kPerTensor
                                            : bitnet::ScaleGranularity::kPerRow;
  // Usually the exact element count; sometimes one more or one fewer.
  const int skew = in.ConsumeIntegralInRange<int>(-1, 1) * (in.ConsumeBool() ? 1 : 0);
  int64_t count = rows > 0 && cols > 0 ? rows * cols : 0;
  count = std::max<int64_t>(0, count + skew);

  std::vector<float> weights(static_cast<size_t>(count));
  bool all_finite = true;
  for (float& w : weights) {
    uint32_t bits = in.ConsumeIntegral<uint32_t>();
    std::memcpy(&w, &bits, sizeof(w));
    all_finite &= std::isfinite(w);
  }

  absl::StatusOr<bitnet::PackedTernaryMatrix> packed =
      bitnet::QuantizeAndPack(weights, rows, cols, granularity);
  const bool shape_ok = rows > 0 && cols > 0 && count == rows * cols;
  if (!shape_ok || !all_finite) {
    FUZZ_CHECK(!packed.ok(), "bad shape, size or non-finite weight is an error");
    FUZZ_CHECK(packed.status().code() == absl::StatusCode::kInvalidArgument,
               "INVALID_ARGUMENT");
    return 0;
  }
  if (!packed.ok()) {
    // The one other documented error: the float sum behind a scale
    // overflows (weights near FLT_MAX).
    FUZZ_CHECK(packed.status().code() == absl::StatusCode::kInvalidArgument,
               "INVALID_ARGUMENT");
    double sum = 0;
    for (float w : weights) sum += std::fabs(double{w});
    FUZZ_CHECK(sum > 1e38, "only an overflowing scale fails on finite weights");
    return 0;
  }
  bitnet::fuzz::CheckPacked(*packed, weights, rows, cols, granularity);

  const std::vector<int8_t> q = bitnet::UnpackTernary(packed->view());
  const std::vector<float> dq = bitnet::Dequantize(packed->view());
  FUZZ_CHECK(static_cast<int64_t>(q.size()) == count && q.size() == dq.size(),
             "Unpack/Dequantize give rows * cols values");
  for (int64_t i = 0; i < count; ++i) {
    const float scale = packed->scales[granularity == bitnet::ScaleGranularity::kPerRow
                                           ? i / cols
                                           : 0];
    FUZZ_CHECK(q[i] >= -1 && q[i] <= 1, "ternary values");
    FUZZ_CHECK(dq[i] == static_cast<float>(q[i]) * scale, "dequantized == q * scale");
  }
  return 0;
}
