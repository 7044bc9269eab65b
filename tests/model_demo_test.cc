// Demo models (server/model/demo_model.h): deterministic, valid, the
// documented shapes.
#include "server/model/demo_model.h"

#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/model/model.h"
#include "server/model/model_file.h"

namespace bitnet {
namespace {

// FNV-1a over the packed words and scales' bytes of every layer.
uint64_t Fingerprint(const Model& m, bool include_scales) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 0x100000001b3ull;
    }
  };
  for (const Layer& l : m.layers) {
    mix(l.weight.words.data(), l.weight.words.size() * sizeof(int32_t));
    if (include_scales) mix(l.weight.scales.data(), l.weight.scales.size() * sizeof(float));
  }
  return h;
}

TEST(DemoRandomTest, MatchesTheSplitmix64ReferenceStream) {
  // First outputs of splitmix64 seeded with 0 (Vigna's reference splitmix64.c).
  DemoRandom r(0);
  EXPECT_EQ(r.NextU64(), 0xe220a8397b1dcdafull);
  EXPECT_EQ(r.NextU64(), 0x6e789e6aa1b965f4ull);
  EXPECT_EQ(r.NextU64(), 0x06c45d188009454full);
}

TEST(DemoRandomTest, NormalHasUnitMoments) {
  DemoRandom r(42);
  double sum = 0, sum_sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double v = r.NextNormal();
    sum += v;
    sum_sq += v * v;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.01);
}

TEST(DemoModelTest, SmallIsDeterministicValidAndShapedAsDocumented) {
  const Model a = MakeDemoModel(DemoModelSize::kSmall);
  const Model b = MakeDemoModel(DemoModelSize::kSmall);
  ASSERT_TRUE(ValidateModel(a).ok()) << ValidateModel(a);
  EXPECT_EQ(Fingerprint(a, true), Fingerprint(b, true));
  EXPECT_EQ(SerializeModelFile(a), SerializeModelFile(b));

  ASSERT_EQ(a.layers.size(), 2u);
  EXPECT_EQ(a.input_features(), 64);
  EXPECT_EQ(a.output_features(), 32);
  EXPECT_EQ(a.layers[0].spec.out_features, 128);
  EXPECT_EQ(a.layers[0].spec.activation, Activation::kRelu);
  EXPECT_EQ(a.layers[1].spec.activation, Activation::kIdentity);
  for (const Layer& l : a.layers) {
    EXPECT_EQ(l.spec.act_quant, ActivationQuant::kInt8);
    EXPECT_TRUE(l.spec.has_bias);
    EXPECT_EQ(l.weight.granularity, ScaleGranularity::kPerRow);
    EXPECT_EQ(l.latent.size(), static_cast<size_t>(l.spec.in_features * l.spec.out_features));
  }
  // The latent weights are the ones that were quantized.
  for (const Layer& l : a.layers) {
    absl::StatusOr<PackedTernaryMatrix> again = QuantizeAndPack(
        l.latent, l.spec.out_features, l.spec.in_features, ScaleGranularity::kPerRow);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->words, l.weight.words);
    EXPECT_EQ(again->scales, l.weight.scales);
  }
  // Not degenerate: all three codes occur in roughly normal proportions.
  const std::vector<int8_t> q = UnpackTernary(a.layers[0].weight.view());
  int64_t counts[3] = {0, 0, 0};
  for (int8_t v : q) ++counts[v + 1];
  for (int64_t c : counts) EXPECT_GT(c, static_cast<int64_t>(q.size()) / 5);
}

TEST(DemoModelTest, SmallCodesArePinned) {
  // The codes depend only on integer/IEEE-basic arithmetic (splitmix64,
  // Irwin-Hall sums, QuantizeAndPack), so they are the same on every machine.
  // A change here means every deployed demo model changes: update on purpose.
  EXPECT_EQ(Fingerprint(MakeDemoModel(DemoModelSize::kSmall), false), 0xb0bad512cef19fefull)
      << std::hex << Fingerprint(MakeDemoModel(DemoModelSize::kSmall), false);
}

TEST(DemoModelTest, LargeIsValidAndShapedAsDocumented) {
  const Model m = MakeDemoModel(DemoModelSize::kLarge);
  ASSERT_TRUE(ValidateModel(m).ok()) << ValidateModel(m);
  ASSERT_EQ(m.layers.size(), 2u);
  EXPECT_EQ(m.layers[0].spec.in_features, 4096);
  EXPECT_EQ(m.layers[0].spec.out_features, 11008);
  EXPECT_EQ(m.layers[1].spec.out_features, 4096);
  EXPECT_EQ(m.layers[0].spec.activation, Activation::kRelu);
  EXPECT_EQ(m.layers[1].spec.activation, Activation::kIdentity);
  for (const Layer& l : m.layers) {
    EXPECT_EQ(l.spec.act_quant, ActivationQuant::kInt8);
    EXPECT_TRUE(l.spec.has_bias);
    EXPECT_TRUE(l.latent.empty());
  }
  // 2 bits per weight plus per-row scales and biases.
  const int64_t words = 11008 * (4096 / 16) + 4096 * (11008 / 16);
  EXPECT_EQ(m.PackedBytes(), 4 * (words + 2 * (11008 + 4096)));
}

TEST(DemoModelTest, DeepIsLargeStackedWithReluBetweenBlocks) {
  const Model large = MakeDemoModel(DemoModelSize::kLarge);
  const Model m = MakeDemoModel(DemoModelSize::kDeep);
  ASSERT_TRUE(ValidateModel(m).ok()) << ValidateModel(m);
  ASSERT_EQ(m.layers.size(), 48u);
  for (size_t i = 0; i < m.layers.size(); ++i) {
    SCOPED_TRACE("layer " + std::to_string(i));
    const Layer& want = large.layers[i % 2];
    EXPECT_EQ(m.layers[i].spec.in_features, want.spec.in_features);
    EXPECT_EQ(m.layers[i].spec.out_features, want.spec.out_features);
    EXPECT_EQ(m.layers[i].weight.words, want.weight.words);
    EXPECT_EQ(m.layers[i].weight.scales, want.weight.scales);
    EXPECT_EQ(m.layers[i].bias, want.bias);
    EXPECT_EQ(m.layers[i].spec.activation,
              i + 1 == m.layers.size() ? Activation::kIdentity : Activation::kRelu);
  }
  EXPECT_EQ(m.PackedBytes(), 24 * large.PackedBytes());
}

TEST(DemoModelTest, SizeNamesRoundTrip) {
  for (DemoModelSize size : {DemoModelSize::kSmall, DemoModelSize::kLarge, DemoModelSize::kDeep}) {
    DemoModelSize parsed = DemoModelSize::kSmall;
    ASSERT_TRUE(ParseDemoModelSize(DemoModelSizeName(size), &parsed)) << DemoModelSizeName(size);
    EXPECT_EQ(parsed, size);
  }
  DemoModelSize unchanged = DemoModelSize::kLarge;
  EXPECT_FALSE(ParseDemoModelSize("huge", &unchanged));
  EXPECT_FALSE(ParseDemoModelSize("", &unchanged));
  EXPECT_EQ(unchanged, DemoModelSize::kLarge);
}

}  // namespace
}  // namespace bitnet
