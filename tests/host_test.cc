#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "server/host/element_type.h"
#include "server/host/host_buffer.h"
#include "server/host/half.h"

namespace bitnet {
namespace {

// Equal bits, or both NaN (payloads may differ between F16C and scalar).
bool SameHalf(uint16_t a, uint16_t b) {
  const bool a_nan = (a & 0x7c00u) == 0x7c00u && (a & 0x3ffu) != 0;
  const bool b_nan = (b & 0x7c00u) == 0x7c00u && (b & 0x3ffu) != 0;
  return a_nan || b_nan ? a_nan == b_nan : a == b;
}

bool SameFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

// Every binary16 value, in an odd count so the vector loop has a tail.
std::vector<uint16_t> AllHalves() {
  std::vector<uint16_t> h(65536 + 3);
  for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<uint16_t>(i);
  return h;
}

// Floats that exercise rounding: random bit patterns, the values around
// every half (ties, +-1 ulp), overflow and subnormal boundaries.
std::vector<float> TrickyFloats() {
  std::vector<float> v;
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) v.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  for (uint32_t h = 0; h < 0x7c00u; h += 3) {
    const uint32_t f = std::bit_cast<uint32_t>(HalfToFloat(static_cast<uint16_t>(h)));
    for (uint32_t d : {0u, 1u, 0xfffu, 0x1000u, 0x1001u, 0x1fffu}) {
      v.push_back(std::bit_cast<float>(f + d));
      v.push_back(-std::bit_cast<float>(f + d));
    }
  }
  for (float f : {65504.0f, 65519.99f, 65520.0f, 1e6f, 5.96e-8f, 2.98e-8f, 2.99e-8f,
                  1e-30f, 0.0f, -0.0f, std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::quiet_NaN(),
                  std::numeric_limits<float>::denorm_min()}) {
    v.push_back(f);
  }
  return v;
}

TEST(ElementConvert, HalfToFloatMatchesOracleBothPaths) {
  const std::vector<uint16_t> h = AllHalves();
  std::vector<float> fast(h.size()), scalar(h.size());
  ConvertElements(h.data(), ElementType::kF16, fast.data(), ElementType::kF32, h.size());
  ConvertElementsScalar(h.data(), ElementType::kF16, scalar.data(), ElementType::kF32,
                        h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    const float want = HalfToFloat(h[i]);
    ASSERT_TRUE(SameFloat(fast[i], want)) << "half 0x" << std::hex << h[i];
    ASSERT_TRUE(SameFloat(scalar[i], want)) << "half 0x" << std::hex << h[i];
  }
}

TEST(ElementConvert, FloatToHalfMatchesOracleBothPaths) {
  const std::vector<float> f = TrickyFloats();
  std::vector<uint16_t> fast(f.size()), scalar(f.size());
  ConvertElements(f.data(), ElementType::kF32, fast.data(), ElementType::kF16, f.size());
  ConvertElementsScalar(f.data(), ElementType::kF32, scalar.data(), ElementType::kF16,
                        f.size());
  for (size_t i = 0; i < f.size(); ++i) {
    const uint16_t want = FloatToHalf(f[i]);
    ASSERT_TRUE(SameHalf(fast[i], want))
        << "float bits 0x" << std::hex << std::bit_cast<uint32_t>(f[i]) << " got 0x"
        << fast[i] << " want 0x" << want;
    ASSERT_TRUE(SameHalf(scalar[i], want))
        << "float bits 0x" << std::hex << std::bit_cast<uint32_t>(f[i]);
  }
}

TEST(ElementConvert, BFloat16BothWaysMatchesOracle) {
  const std::vector<float> f = TrickyFloats();
  std::vector<uint16_t> b(f.size());
  ConvertElements(f.data(), ElementType::kF32, b.data(), ElementType::kBF16, f.size());
  for (size_t i = 0; i < f.size(); ++i) {
    const uint16_t want = FloatToBFloat16(f[i]);
    if (std::isnan(f[i])) {
      ASSERT_TRUE((b[i] & 0x7f80u) == 0x7f80u && (b[i] & 0x7fu) != 0);
    } else {
      ASSERT_EQ(b[i], want) << i;
    }
  }
  const std::vector<uint16_t> h = AllHalves();
  std::vector<float> back(h.size());
  ConvertElements(h.data(), ElementType::kBF16, back.data(), ElementType::kF32, h.size());
  for (size_t i = 0; i < h.size(); ++i) ASSERT_TRUE(SameFloat(back[i], BFloat16ToFloat(h[i])));
}

TEST(ElementConvert, HalfToBFloat16GoesThroughFloat) {
  const std::vector<uint16_t> h = AllHalves();
  std::vector<uint16_t> b(h.size());
  ConvertElements(h.data(), ElementType::kF16, b.data(), ElementType::kBF16, h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    const float x = HalfToFloat(h[i]);
    if (std::isnan(x)) continue;
    ASSERT_EQ(b[i], FloatToBFloat16(x)) << i;
  }
}

TEST(ElementConvert, SameTypeIsACopy) {
  std::vector<uint16_t> h = {1, 2, 0x7c00, 0xffff};
  std::vector<uint16_t> out(4);
  ConvertElements(h.data(), ElementType::kF16, out.data(), ElementType::kF16, 4);
  EXPECT_EQ(out, h);
}

TEST(ElementConvert, WidenInPlaceMatchesOutOfPlace) {
  for (ElementType from : {ElementType::kF16, ElementType::kBF16}) {
    for (int64_t count : {0, 1, 7, 2047, 2048, 2049, 10000}) {
      std::mt19937 rng(static_cast<uint32_t>(count));
      std::vector<uint16_t> src(count);
      for (auto& x : src) x = static_cast<uint16_t>(rng() & 0x7bffu);  // finite
      std::vector<float> want(count);
      ConvertElements(src.data(), from, want.data(), ElementType::kF32, count);
      std::vector<float> buffer(count + 1, -1.0f);
      std::memcpy(buffer.data(), src.data(), src.size() * 2);
      WidenToF32InPlace(buffer.data(), from, count);
      for (int64_t i = 0; i < count; ++i) {
        ASSERT_TRUE(SameFloat(buffer[i], want[i])) << ElementTypeName(from) << " " << count
                                                   << " at " << i;
      }
      EXPECT_EQ(buffer[count], -1.0f) << "wrote past count";
    }
  }
}

TEST(FindNonFinite, FindsTheFirstBadElementOfEachType) {
  for (int64_t n : {1, 9, 4095, 4096, 4097, 20000}) {
    std::vector<float> f(n, 1.5f);
    EXPECT_EQ(FindNonFinite(f.data(), ElementType::kF32, n), -1);
    std::vector<uint16_t> h(n, 0x3c00u), b(n, 0x3f80u);
    EXPECT_EQ(FindNonFinite(h.data(), ElementType::kF16, n), -1);
    EXPECT_EQ(FindNonFinite(b.data(), ElementType::kBF16, n), -1);
    const int64_t at = n * 2 / 3;
    f[at] = std::numeric_limits<float>::quiet_NaN();
    f[n - 1] = std::numeric_limits<float>::infinity();
    h[at] = 0xfc00u;  // -inf
    b[at] = 0x7fc1u;  // NaN
    EXPECT_EQ(FindNonFinite(f.data(), ElementType::kF32, n), at) << n;
    EXPECT_EQ(FindNonFinite(h.data(), ElementType::kF16, n), at) << n;
    EXPECT_EQ(FindNonFinite(b.data(), ElementType::kBF16, n), at) << n;
  }
  // Largest finite values and subnormals are finite.
  const uint16_t edge[] = {0x7bffu, 0xfbffu, 0x0001u, 0x8000u};
  EXPECT_EQ(FindNonFinite(edge, ElementType::kF16, 4), -1);
  const float fedge[] = {std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                         std::numeric_limits<float>::denorm_min()};
  EXPECT_EQ(FindNonFinite(fedge, ElementType::kF32, 3), -1);
}

TEST(HostBuffer, OwnsAndReleasesOnce) {
  int released = 0;
  {
    static char storage[16];
    HostBuffer a(storage, sizeof(storage), true, [&](void* p) {
      EXPECT_EQ(p, storage);
      ++released;
    });
    HostBuffer b = std::move(a);
    EXPECT_FALSE(a);
    EXPECT_TRUE(b.pinned());
    EXPECT_EQ(b.bytes(), 16u);
    HostBuffer c;
    c = std::move(b);
    EXPECT_EQ(released, 0);
  }
  EXPECT_EQ(released, 1);
  HostBuffer plain = HostBuffer::Allocate(1000);
  EXPECT_FALSE(plain.pinned());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(plain.data()) % 64, 0u);
}

TEST(SharedRows, ReadsAnyTypeAsFloat) {
  SharedRows f = SharedRows::FromFloats({1.0f, -2.5f});
  EXPECT_EQ(f.size(), 2);
  EXPECT_EQ(f[1], -2.5f);
  auto halves = std::make_shared<std::vector<uint16_t>>(std::vector<uint16_t>{0x3c00u, 0xc100u});
  SharedRows h(halves, halves->data(), ElementType::kF16, 2);
  EXPECT_EQ(h.ToFloats(), (std::vector<float>{1.0f, -2.5f}));
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_TRUE(SharedRows().empty());
}

}  // namespace
}  // namespace bitnet
