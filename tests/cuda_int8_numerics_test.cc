// The int8 mode's fast quantization and division (kernels/cuda/
// int8_numerics.cuh) give the same bits as the plain formulas: every float
// for the quantization, every small accumulator for the int -> float step,
// every numerator for a set of divisors and random pairs for the division.
// GPU tests (label gpu), skipped without a device.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kernels/cuda/ternary_cuda.h"
#include "tests/cuda_int8_numerics_check.h"

namespace bitnet {
namespace {

using testing::NumericsMismatches;

bool HasGpu() {
  absl::StatusOr<int> n = CudaDeviceCount();
  return n.ok() && *n > 0;
}

std::string Describe(const NumericsMismatches& m) {
  char buf[160];
  std::snprintf(buf, sizeof(buf),
                "%llu mismatches; first: a=0x%08x b=0x%08x got=0x%08x want=0x%08x", m.count, m.a,
                m.b, m.got, m.want);
  return buf;
}

TEST(CudaInt8NumericsTest, QuantizeMatchesPlainFormulaForEveryFloat) {
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
  NumericsMismatches m;
  ASSERT_EQ(testing::CheckQuantizeEveryFloat(&m), 0);
  EXPECT_EQ(m.count, 0u) << Describe(m);
}

TEST(CudaInt8NumericsTest, SmallAccumulatorsConvertExactly) {
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
  NumericsMismatches m;
  ASSERT_EQ(testing::CheckSmallAccEveryValue(&m), 0);
  EXPECT_EQ(m.count, 0u) << Describe(m);
}

TEST(CudaInt8NumericsTest, DivisionMatchesFdivForEveryNumerator) {
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
  const float inf = std::numeric_limits<float>::infinity();
  // Typical row scales, the fast path's range limits from both sides,
  // mantissas of all ones and of one bit, zero and an infinite or negative
  // divisor (both take the plain division).
  const std::vector<float> bs = {1.0f,
                                 127.0f,
                                 127.0f / 0.37f,
                                 127.0f / 1e-5f,
                                 127.0f / 3.0e38f,
                                 0x1p-30f,
                                 std::nextafter(0x1p-30f, 0.0f),
                                 std::nextafter(0x1p31f, 0.0f),
                                 0x1p31f,
                                 std::nextafter(2.0f, 0.0f),
                                 std::nextafter(1.0f, 2.0f),
                                 0.1f,
                                 3.14159265f,
                                 -2.5f,
                                 0.0f,
                                 inf};
  NumericsMismatches m;
  ASSERT_EQ(testing::CheckDivideEveryNumerator(bs.data(), static_cast<int>(bs.size()), 1, &m), 0);
  EXPECT_EQ(m.count, 0u) << Describe(m);
}

TEST(CudaInt8NumericsTest, DivisionMatchesFdivForRandomPairs) {
  if (!HasGpu()) GTEST_SKIP() << "no CUDA device";
  const unsigned long long seed =
      (static_cast<unsigned long long>(std::random_device{}()) << 32) ^ std::random_device{}();
  NumericsMismatches m;
  ASSERT_EQ(testing::CheckDivideRandomPairs(seed, 1ull << 30, &m), 0);
  EXPECT_EQ(m.count, 0u) << Describe(m) << " (seed " << seed << ")";
}

}  // namespace
}  // namespace bitnet
