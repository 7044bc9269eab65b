// Tests of kernels/ternary_gemm.h and kernels/activation.h: the oracle on
// hand-checkable cases, and the fast CPU path (AVX2 and scalar fallback)
// against the oracle over a grid of shapes with fresh random data.
#include "kernels/ternary_gemm.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"

namespace bitnet {
namespace {

using ::testing::HasSubstr;

// Fresh data every run; BITNET_TEST_SEED reproduces a failure.
uint32_t TestSeed() {
  static const uint32_t seed = [] {
    const char* env = std::getenv("BITNET_TEST_SEED");
    return env != nullptr ? static_cast<uint32_t>(std::strtoul(env, nullptr, 10))
                          : std::random_device{}();
  }();
  return seed;
}

struct Problem {
  int64_t m, n, k;
  ScaleGranularity granularity;
  bool bias;
  ActivationQuant act_quant;
  Activation activation;
  std::vector<float> x, b;
  PackedTernaryMatrix w;
};

Problem MakeProblem(std::mt19937& rng, int64_t m, int64_t n, int64_t k,
                    ScaleGranularity granularity, bool bias,
                    ActivationQuant act_quant, Activation activation) {
  Problem p{m, n, k, granularity, bias, act_quant, activation, {}, {}, {}};
  std::normal_distribution<float> dist;
  std::uniform_real_distribution<float> mag(-3.0f, 3.0f);
  p.x.resize(m * k);
  for (int64_t i = 0; i < m; ++i) {
    // Rows of very different magnitudes exercise the per-row scale.
    const float row_mag = std::pow(10.0f, mag(rng));
    for (int64_t c = 0; c < k; ++c) p.x[i * k + c] = dist(rng) * row_mag;
  }
  std::vector<float> w(n * k);
  for (float& f : w) f = dist(rng) * 0.05f;
  p.w = *QuantizeAndPack(w, n, k, granularity);
  if (bias) {
    p.b.resize(n);
    for (float& f : p.b) f = dist(rng);
  }
  return p;
}

TernaryGemmArgs ArgsFor(const Problem& p, float* y) {
  TernaryGemmArgs args;
  args.m = p.m;
  args.x = p.x.data();
  args.weight = p.w.view();
  args.bias = p.bias ? p.b.data() : nullptr;
  args.act_quant = p.act_quant;
  args.activation = p.activation;
  args.y = y;
  return args;
}

std::string Describe(const Problem& p, bool simd, int threads) {
  return "seed=" + std::to_string(TestSeed()) + " m=" + std::to_string(p.m) +
         " n=" + std::to_string(p.n) + " k=" + std::to_string(p.k) +
         (p.granularity == ScaleGranularity::kPerRow ? " per-row" : " per-tensor") +
         (p.bias ? " bias" : " no-bias") + " " +
         std::string(ActivationQuantName(p.act_quant)) + " " +
         std::string(ActivationName(p.activation)) + (simd ? " simd" : " scalar") +
         " threads=" + std::to_string(threads);
}

// Compares the fast path with the oracle: int8 bit for bit, none within 1e-5
// of the dot product's magnitude (sum |x_k q_k| * scale + |bias|).
void ExpectMatchesOracle(const Problem& p, bool simd, int threads) {
  SCOPED_TRACE(Describe(p, simd, threads));
  std::vector<float> ref(p.m * p.n, NAN);
  ASSERT_TRUE(ReferenceTernaryGemm(ArgsFor(p, ref.data())).ok());
  absl::StatusOr<CpuTernaryWeights> prepared = CpuTernaryWeights::Prepare(p.w.view());
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  // Poisoned output: every element must be written.
  std::vector<float> y(p.m * p.n, NAN);
  CpuGemmOptions options;
  options.num_threads = threads;
  options.allow_simd = simd;
  ASSERT_TRUE(CpuTernaryGemm(ArgsFor(p, y.data()), *prepared, options).ok());

  const std::vector<int8_t> q = UnpackTernary(p.w.view());
  int failures = 0;
  for (int64_t i = 0; i < p.m && failures < 5; ++i) {
    for (int64_t j = 0; j < p.n && failures < 5; ++j) {
      const float got = y[i * p.n + j], want = ref[i * p.n + j];
      if (p.act_quant == ActivationQuant::kInt8) {
        if (std::bit_cast<uint32_t>(got) != std::bit_cast<uint32_t>(want)) {
          ++failures;
          ADD_FAILURE() << "y[" << i << "," << j << "] = " << got << ", oracle " << want;
        }
        continue;
      }
      double magnitude = 0.0;
      for (int64_t c = 0; c < p.k; ++c) {
        magnitude += std::fabs(static_cast<double>(p.x[i * p.k + c]) * q[j * p.k + c]);
      }
      magnitude = magnitude * p.w.view().ScaleForRow(j) + (p.bias ? std::fabs(p.b[j]) : 0.0);
      const double tol = 1e-5 * std::max(magnitude, 1e-30);
      if (!(std::fabs(static_cast<double>(got) - want) <= tol)) {
        ++failures;
        ADD_FAILURE() << "y[" << i << "," << j << "] = " << got << ", oracle " << want
                      << ", tolerance " << tol;
      }
    }
  }
}

// Every M of interest against a set of awkward (N, K): odd, below and above
// the 128-column group, multiples and non-multiples of the 64-column tile.
TEST(KernelsCpuGemmTest, MatchesOracleOverShapeGrid) {
  std::mt19937 rng(TestSeed());
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {37, 301}, {64, 128}, {5, 1000}, {131, 17}, {3, 1}, {9, 2500}};
  const Activation activations[] = {Activation::kIdentity, Activation::kRelu,
                                    Activation::kGelu, Activation::kSilu};
  int index = 0;
  for (int64_t m : {1, 3, 16, 127, 128, 300}) {
    for (const auto& [n, k] : shapes) {
      for (ActivationQuant aq : {ActivationQuant::kInt8, ActivationQuant::kNone}) {
        // Rotate the epilogue options through the grid so each appears with
        // many shapes (the full cross product is below on one shape).
        const Problem p = MakeProblem(
            rng, m, n, k,
            index % 2 ? ScaleGranularity::kPerTensor : ScaleGranularity::kPerRow,
            (index / 2) % 2 == 1, aq, activations[(index / 4) % 4]);
        const int threads = 1 + index % 3;
        ExpectMatchesOracle(p, /*simd=*/true, threads);
        ExpectMatchesOracle(p, /*simd=*/false, threads);
        ++index;
      }
    }
  }
  if (!CpuHasAvx2()) GTEST_LOG_(INFO) << "no AVX2 here: the simd runs used the scalar kernels";
}

TEST(KernelsCpuGemmTest, MatchesOracleForEveryEpilogue) {
  std::mt19937 rng(TestSeed() + 1);
  for (ActivationQuant aq : {ActivationQuant::kInt8, ActivationQuant::kNone}) {
    for (ScaleGranularity g : {ScaleGranularity::kPerRow, ScaleGranularity::kPerTensor}) {
      for (bool bias : {false, true}) {
        for (Activation act : {Activation::kIdentity, Activation::kRelu,
                               Activation::kGelu, Activation::kSilu}) {
          const Problem p = MakeProblem(rng, 6, 33, 259, g, bias, aq, act);
          ExpectMatchesOracle(p, true, 2);
          ExpectMatchesOracle(p, false, 1);
        }
      }
    }
  }
}

TEST(KernelsCpuGemmTest, Int8TiesAndExtremesMatchOracle) {
  // Rows whose max is 127 have s == 1, so x = c + 0.5 are exact ties; the
  // AVX2 quantizer must round them to even like nearbyint.
  std::mt19937 rng(TestSeed() + 2);
  Problem p = MakeProblem(rng, 4, 40, 300, ScaleGranularity::kPerRow, true,
                          ActivationQuant::kInt8, Activation::kIdentity);
  for (int64_t c = 0; c < p.k; ++c) {
    p.x[0 * p.k + c] = c == 7 ? 127.0f : static_cast<float>(c % 254) - 127.0f + 0.5f;
    p.x[1 * p.k + c] = c == 0 ? -127.0f : static_cast<float>(c % 7) - 3.5f;
    p.x[2 * p.k + c] = 0.0f;                           // all zero: the floor
    p.x[3 * p.k + c] = (c % 2 ? 1.0f : -1.0f) * 4e-6f;  // below the floor
  }
  ExpectMatchesOracle(p, true, 1);
  ExpectMatchesOracle(p, false, 1);
}

TEST(KernelsCpuGemmTest, Int8ExtremeSumsOverLongRows) {
  // |xq| = 127 everywhere and rows of all +1 / all -1 weights drive every
  // int16 partial sum to its bound; K = 4099 spans several widening chunks.
  const int64_t m = 3, n = 4, k = 4099;
  std::vector<float> w(n * k);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < k; ++c) w[j * k + c] = j == 0 ? 1.0f : j == 1 ? -1.0f : (c % 2 ? 0.7f : -0.7f);
  Problem p{m, n, k, ScaleGranularity::kPerRow, false, ActivationQuant::kInt8,
            Activation::kIdentity, std::vector<float>(m * k), {},
            *QuantizeAndPack(w, n, k, ScaleGranularity::kPerRow)};
  for (int64_t c = 0; c < k; ++c) {
    p.x[c] = 1.0f;
    p.x[k + c] = -1.0f;
    p.x[2 * k + c] = c % 3 ? 1.0f : -1.0f;
  }
  ExpectMatchesOracle(p, true, 2);
  ExpectMatchesOracle(p, false, 1);
  std::vector<float> y(m * n);
  TernaryGemmArgs args = ArgsFor(p, y.data());
  ASSERT_TRUE(CpuTernaryGemm(args, 1).ok());
  EXPECT_EQ(y[0], 127.0f * k / 127.0f);  // acc = 127 * k, scale 1, s = 127
  EXPECT_EQ(y[1], -static_cast<float>(k));
}

TEST(KernelsCpuGemmTest, PlainOverloadPreparesOnTheFly) {
  std::mt19937 rng(TestSeed() + 3);
  const Problem p = MakeProblem(rng, 9, 70, 150, ScaleGranularity::kPerRow, false,
                                ActivationQuant::kInt8, Activation::kRelu);
  std::vector<float> ref(p.m * p.n, NAN), y(p.m * p.n, NAN);
  ASSERT_TRUE(ReferenceTernaryGemm(ArgsFor(p, ref.data())).ok());
  ASSERT_TRUE(CpuTernaryGemm(ArgsFor(p, y.data()), 0).ok());
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(std::bit_cast<uint32_t>(y[i]), std::bit_cast<uint32_t>(ref[i])) << i;
}

TEST(KernelsCpuGemmTest, ManyThreadsAndZeroRows) {
  std::mt19937 rng(TestSeed() + 4);
  const Problem p = MakeProblem(rng, 2, 200, 64, ScaleGranularity::kPerTensor, true,
                                ActivationQuant::kInt8, Activation::kIdentity);
  ExpectMatchesOracle(p, true, 16);
  std::vector<float> y(1, 42.0f);
  TernaryGemmArgs args = ArgsFor(p, y.data());
  args.m = 0;
  EXPECT_TRUE(CpuTernaryGemm(args, 2).ok());
  EXPECT_TRUE(ReferenceTernaryGemm(args).ok());
  EXPECT_EQ(y[0], 42.0f);
}

TEST(KernelsCpuGemmTest, RejectsBadArguments) {
  std::mt19937 rng(TestSeed() + 5);
  const Problem p = MakeProblem(rng, 2, 8, 16, ScaleGranularity::kPerRow, false,
                                ActivationQuant::kNone, Activation::kIdentity);
  std::vector<float> y(16);
  auto expect_invalid = [](const absl::Status& s, const std::string& part) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(part));
  };
  TernaryGemmArgs args = ArgsFor(p, y.data());
  args.x = nullptr;
  expect_invalid(CheckTernaryGemmArgs(args), "x is null");
  expect_invalid(ReferenceTernaryGemm(args), "x is null");
  expect_invalid(CpuTernaryGemm(args), "x is null");
  args = ArgsFor(p, nullptr);
  expect_invalid(CpuTernaryGemm(args), "y is null");
  args = ArgsFor(p, y.data());
  args.m = -1;
  expect_invalid(CheckTernaryGemmArgs(args), "m (batch rows)");
  args = ArgsFor(p, y.data());
  args.weight.scales = nullptr;
  expect_invalid(CheckTernaryGemmArgs(args), "weight.scales");
  args = ArgsFor(p, y.data());
  args.weight.cols = (int64_t{1} << 24) + 1;
  expect_invalid(CheckTernaryGemmArgs(args), "weight.cols");
  args = ArgsFor(p, y.data());
  args.activation = static_cast<Activation>(99);
  expect_invalid(CheckTernaryGemmArgs(args), "activation");

  // Prepared weights of another shape.
  auto prepared = CpuTernaryWeights::Prepare(p.w.view());
  ASSERT_TRUE(prepared.ok());
  args = ArgsFor(p, y.data());
  args.weight.rows = 7;
  expect_invalid(CpuTernaryGemm(args, *prepared), "prepared weights are [8, 16]");
  // The plain overload validates the codes.
  PackedTernaryMatrix bad = p.w;
  bad.words[0] = -1;  // all codes 3
  args = ArgsFor(p, y.data());
  args.weight = bad.view();
  expect_invalid(CpuTernaryGemm(args), "code 3");
}

TEST(KernelsReferenceGemmTest, HandComputedInt8AndNone) {
  // W = [[1, 0, -1], [-1, -1, 1]] with scales [0.5, 2]; x = [[127, -64, 1]].
  const std::vector<float> w = {1, 0, -1, -1, -1, 1};
  auto packed = QuantizeAndPack(w, 2, 3, ScaleGranularity::kPerRow);
  ASSERT_TRUE(packed.ok());
  packed->scales = {0.5f, 2.0f};
  const std::vector<float> x = {127.0f, -64.0f, 1.0f};
  const std::vector<float> bias = {1.0f, -1.0f};
  std::vector<float> y(2, NAN);
  TernaryGemmArgs args;
  args.m = 1;
  args.x = x.data();
  args.weight = packed->view();
  args.bias = bias.data();
  args.y = y.data();
  ASSERT_TRUE(ReferenceTernaryGemm(args).ok());
  EXPECT_EQ(y[0], (127.0f - 1.0f) * 0.5f + 1.0f);
  EXPECT_EQ(y[1], (-127.0f + 64.0f + 1.0f) * 2.0f - 1.0f);
  args.act_quant = ActivationQuant::kInt8;  // s = 1: xq == x
  args.activation = Activation::kRelu;
  ASSERT_TRUE(ReferenceTernaryGemm(args).ok());
  EXPECT_EQ(y[0], 64.0f);
  EXPECT_EQ(y[1], 0.0f);

  const std::vector<int8_t> xq = {127, -64, 1, -128, 5, 0};
  std::vector<int32_t> acc(4, 12345);
  ReferenceInt8Accumulators(xq.data(), 2, packed->view(), acc.data());
  EXPECT_EQ(acc, (std::vector<int32_t>{126, -62, -128, 123}));
}

TEST(KernelsActivationTest, QuantizeRowsInt8EdgeCases) {
  const int64_t cols = 8;
  const std::vector<float> x = {
      127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f,  // s = 1: ties
      0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f,           // all zero
      -254.0f, 1.0f, 3.0f, -5.0f, 254.0f, 0.0f, 0.75f, 1.25f,  // s = 0.5
      4e-6f, -4e-6f, 0, 0, 0, 0, 0, 0,                         // below the floor
  };
  const int64_t rows = static_cast<int64_t>(x.size()) / cols;
  std::vector<int8_t> xq(x.size(), 99);
  std::vector<float> s(rows, NAN);
  QuantizeRowsInt8(x.data(), rows, cols, xq.data(), s.data());
  EXPECT_EQ(s[0], 1.0f);
  EXPECT_EQ(std::vector<int8_t>(xq.begin(), xq.begin() + 8),
            (std::vector<int8_t>{127, 0, 2, 2, 0, -2, -2, 126}));
  EXPECT_EQ(s[1], 127.0f / 1e-5f);
  for (int c = 8; c < 16; ++c) EXPECT_EQ(xq[c], 0);
  EXPECT_EQ(s[2], 0.5f);
  EXPECT_EQ(std::vector<int8_t>(xq.begin() + 16, xq.begin() + 24),
            (std::vector<int8_t>{-127, 0, 2, -2, 127, 0, 0, 1}));
  EXPECT_EQ(s[3], 127.0f / 1e-5f);
  EXPECT_EQ(xq[24], static_cast<int8_t>(std::nearbyint(4e-6f * (127.0f / 1e-5f))));
  EXPECT_EQ(xq[24], 51);
  EXPECT_EQ(xq[25], -51);
  // The clamp: values beyond the row's own scale saturate, they do not wrap.
  EXPECT_EQ(QuantizeInt8(1000.0f, 1.0f), 127);
  EXPECT_EQ(QuantizeInt8(-1000.0f, 1.0f), -128);
  EXPECT_EQ(QuantizeInt8(-128.4f, 1.0f), -128);
  EXPECT_EQ(QuantizeInt8(NAN, 1.0f), -128);
}

TEST(KernelsActivationTest, NamesParseAndValues) {
  for (Activation a : {Activation::kIdentity, Activation::kRelu, Activation::kGelu,
                       Activation::kSilu}) {
    auto parsed = ParseActivation(ActivationName(a));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, a);
  }
  for (ActivationQuant q : {ActivationQuant::kNone, ActivationQuant::kInt8}) {
    auto parsed = ParseActivationQuant(ActivationQuantName(q));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, q);
  }
  EXPECT_THAT(std::string(ParseActivation("tanh").status().message()), HasSubstr("\"tanh\""));
  EXPECT_THAT(std::string(ParseActivationQuant("int4").status().message()),
              HasSubstr("\"int4\""));
  EXPECT_EQ(ApplyActivation(Activation::kRelu, -2.0f), 0.0f);
  EXPECT_EQ(ApplyActivation(Activation::kRelu, 3.0f), 3.0f);
  EXPECT_NEAR(ApplyActivation(Activation::kGelu, 1.0f), 0.8413447460685429, 1e-6);
  EXPECT_NEAR(ApplyActivation(Activation::kGelu, -1.0f), -0.15865525393145707, 1e-6);
  EXPECT_NEAR(ApplyActivation(Activation::kSilu, 1.0f), 0.7310585786300049, 1e-6);
  EXPECT_NEAR(ApplyActivation(Activation::kSilu, -20.0f), -20.0 / (1.0 + std::exp(20.0)), 1e-12);
}

}  // namespace
}  // namespace bitnet
