// Tests of kernels/bit_linear.h: the training forward (fake quantization from
// latent weights) equals the packed inference forward.
#include "kernels/bit_linear.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/ternary_gemm.h"

namespace bitnet {
namespace {

using ::testing::HasSubstr;

struct Layer {
  std::unique_ptr<BitLinear> layer;
  std::vector<float> x;
};

Layer MakeLayer(std::mt19937& rng, const BitLinearOptions& o, int64_t m) {
  std::normal_distribution<float> dist;
  std::vector<float> w(o.out_features * o.in_features), b;
  for (float& f : w) f = dist(rng) * 0.02f;
  if (o.has_bias) {
    b.resize(o.out_features);
    for (float& f : b) f = dist(rng) * 0.1f;
  }
  auto layer = BitLinear::Create(o, std::move(w), std::move(b));
  EXPECT_TRUE(layer.ok()) << layer.status();
  Layer out{std::move(*layer), std::vector<float>(m * o.in_features)};
  for (float& f : out.x) f = dist(rng) * 3.0f;
  return out;
}

class KernelsBitLinearTest
    : public ::testing::TestWithParam<std::tuple<ActivationQuant, ScaleGranularity, bool, Activation>> {};

TEST_P(KernelsBitLinearTest, TrainingForwardEqualsPackedForward) {
  const auto [aq, granularity, bias, act] = GetParam();
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  BitLinearOptions o;
  o.in_features = 203;
  o.out_features = 45;
  o.has_bias = bias;
  o.granularity = granularity;
  o.act_quant = aq;
  o.activation = act;
  for (int64_t m : {1, 7, 130}) {
    Layer l = MakeLayer(rng, o, m);
    std::vector<float> train(m * o.out_features, NAN), packed(m * o.out_features, NAN),
        oracle(m * o.out_features, NAN);
    ASSERT_TRUE(l.layer->ForwardTraining(l.x.data(), m, train.data()).ok());
    ASSERT_TRUE(l.layer->PrepareInference().ok());
    ASSERT_TRUE(l.layer->ForwardPacked(l.x.data(), m, packed.data()).ok());

    // The oracle on the packed matrix: training must equal it exactly (same
    // formula) in both modes.
    TernaryGemmArgs args;
    args.m = m;
    args.x = l.x.data();
    args.weight = l.layer->packed()->view();
    args.bias = bias ? l.layer->bias().data() : nullptr;
    args.act_quant = aq;
    args.activation = act;
    args.y = oracle.data();
    ASSERT_TRUE(ReferenceTernaryGemm(args).ok());

    const std::vector<int8_t> q = UnpackTernary(l.layer->packed()->view());
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < o.out_features; ++j) {
        const int64_t e = i * o.out_features + j;
        ASSERT_EQ(std::bit_cast<uint32_t>(train[e]), std::bit_cast<uint32_t>(oracle[e]))
            << "m=" << m << " [" << i << "," << j << "] train " << train[e] << " oracle "
            << oracle[e];
        if (aq == ActivationQuant::kInt8) {
          ASSERT_EQ(std::bit_cast<uint32_t>(train[e]), std::bit_cast<uint32_t>(packed[e]))
              << "m=" << m << " [" << i << "," << j << "] train " << train[e] << " packed "
              << packed[e];
        } else {
          double magnitude = 0.0;
          for (int64_t c = 0; c < o.in_features; ++c) {
            magnitude += std::fabs(l.x[i * o.in_features + c] * q[j * o.in_features + c]);
          }
          magnitude = magnitude * l.layer->packed()->view().ScaleForRow(j) +
                      (bias ? std::fabs(l.layer->bias()[j]) : 0.0);
          ASSERT_NEAR(train[e], packed[e], 1e-6 * magnitude) << "m=" << m << " [" << i << "," << j << "]";
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, KernelsBitLinearTest,
    ::testing::Combine(::testing::Values(ActivationQuant::kInt8, ActivationQuant::kNone),
                       ::testing::Values(ScaleGranularity::kPerRow, ScaleGranularity::kPerTensor),
                       ::testing::Bool(),
                       ::testing::Values(Activation::kIdentity, Activation::kGelu)));

TEST(KernelsBitLinearLifecycleTest, PackedForwardNeedsFreshPreparation) {
  std::mt19937 rng(1);
  BitLinearOptions o;
  o.in_features = 20;
  o.out_features = 3;
  Layer l = MakeLayer(rng, o, 2);
  std::vector<float> y(6);
  EXPECT_EQ(l.layer->ForwardPacked(l.x.data(), 2, y.data()).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(l.layer->PrepareInference().ok());
  EXPECT_TRUE(l.layer->ForwardPacked(l.x.data(), 2, y.data()).ok());
  // An optimizer step through the latent weights makes the packing stale.
  std::span<float> w = l.layer->mutable_latent_weight();
  for (float& f : w) f = -f;
  EXPECT_EQ(l.layer->ForwardPacked(l.x.data(), 2, y.data()).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(l.layer->PrepareInference().ok());
  std::vector<float> train(6);
  ASSERT_TRUE(l.layer->ForwardTraining(l.x.data(), 2, train.data()).ok());
  ASSERT_TRUE(l.layer->ForwardPacked(l.x.data(), 2, y.data()).ok());
  EXPECT_EQ(train, y);

  auto packed = l.layer->Pack();
  ASSERT_TRUE(packed.ok());
  EXPECT_EQ(packed->words, l.layer->packed()->words);
  EXPECT_EQ(packed->scales, l.layer->packed()->scales);
}

TEST(KernelsBitLinearLifecycleTest, CreateRejectsBadInput) {
  BitLinearOptions o;
  o.in_features = 4;
  o.out_features = 2;
  EXPECT_THAT(std::string(BitLinear::Create(o, std::vector<float>(7)).status().message()),
              HasSubstr("7 elements"));
  EXPECT_THAT(std::string(BitLinear::Create(o, std::vector<float>(8), std::vector<float>(2))
                              .status()
                              .message()),
              HasSubstr("has_bias = false"));
  o.has_bias = true;
  EXPECT_THAT(std::string(BitLinear::Create(o, std::vector<float>(8)).status().message()),
              HasSubstr("expected 2"));
  std::vector<float> w(8, 0.1f);
  w[5] = NAN;
  EXPECT_THAT(std::string(BitLinear::Create(o, w, std::vector<float>(2)).status().message()),
              HasSubstr("weights[1, 1]"));
  o.in_features = 0;
  EXPECT_FALSE(BitLinear::Create(o, {}).ok());
}

}  // namespace
}  // namespace bitnet
