// Unit tests of server/training/: the CPU TrainingBackend against the
// oracles, activation derivatives and losses against finite differences, the
// optimizers against hand-computed updates, the Trainer's STE gradients
// against finite differences of the STE surrogate, and the promise that the
// packed model a trainer exports serves exactly the trainer's forward.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "kernels/ternary_gemm.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/model/reference_forward.h"
#include "server/training/optimizer.h"
#include "server/training/trainer.h"
#include "server/training/training_backend.h"
#include "server/training/training_math.h"

namespace bitnet::training {
namespace {

using ::testing::HasSubstr;

std::vector<float> RandomVector(int64_t size, double stddev, DemoRandom& rng) {
  std::vector<float> v(size);
  for (float& e : v) e = static_cast<float>(rng.NextNormal() * stddev);
  return v;
}

bool BitEqual(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---------------------------------------------------------------------------
// TrainingBackend (CPU)

std::unique_ptr<TrainingBackend> CpuBackend(int threads) {
  absl::StatusOr<std::unique_ptr<TrainingBackend>> backend =
      CreateCpuTrainingBackend({.num_threads = threads});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return *std::move(backend);
}

// Stored element (row, col) of a row-major matrix with leading dimension ld.
double At(const std::vector<float>& m, int64_t ld, int64_t row, int64_t col) {
  return m[row * ld + col];
}

TEST(CpuTrainingBackendTest, GemmMatchesDoubleLoopsForAllTransposes) {
  DemoRandom rng(11);
  std::unique_ptr<TrainingBackend> backend = CpuBackend(2);
  // (m, n, k) including odd sizes and one big enough to use two threads.
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes = {
      {1, 1, 1}, {3, 5, 7}, {17, 33, 9}, {64, 10, 256}, {130, 129, 131}};
  for (const auto& [m, n, k] : shapes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
        const int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
        // Leading dimensions larger than the rows, to catch ld mix-ups.
        const int64_t lda = a_cols + 3, ldb = b_cols + 1, ldc = n + 2;
        std::vector<float> a = RandomVector(a_rows * lda, 1.0, rng);
        std::vector<float> b = RandomVector(b_rows * ldb, 1.0, rng);
        std::vector<float> c = RandomVector(m * ldc, 1.0, rng);
        const std::vector<float> c0 = c;
        GemmArgs args{.transpose_a = ta,
                      .transpose_b = tb,
                      .m = m,
                      .n = n,
                      .k = k,
                      .alpha = 0.75f,
                      .a = a.data(),
                      .lda = lda,
                      .b = b.data(),
                      .ldb = ldb,
                      .beta = -0.5f,
                      .c = c.data(),
                      .ldc = ldc};
        ASSERT_TRUE(backend->Gemm(args).ok());
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double sum = 0.0, mag = 0.0;
            for (int64_t p = 0; p < k; ++p) {
              const double av = ta ? At(a, lda, p, i) : At(a, lda, i, p);
              const double bv = tb ? At(b, ldb, j, p) : At(b, ldb, p, j);
              sum += av * bv;
              mag += std::fabs(av * bv);
            }
            const double want = 0.75 * sum - 0.5 * At(c0, ldc, i, j);
            ASSERT_NEAR(c[i * ldc + j], want, 1e-5 * (mag + 1.0))
                << "m=" << m << " n=" << n << " k=" << k << " ta=" << ta
                << " tb=" << tb << " at (" << i << ", " << j << ")";
          }
          // Padding columns of C are never written.
          for (int64_t j = n; j < ldc; ++j)
            ASSERT_EQ(c[i * ldc + j], c0[i * ldc + j]);
        }
      }
    }
  }
}

TEST(CpuTrainingBackendTest, GemmBetaZeroDoesNotReadC) {
  std::unique_ptr<TrainingBackend> backend = CpuBackend(1);
  const std::vector<float> a = {1, 2, 3, 4};  // [2, 2]
  const std::vector<float> b = {1, 0, 0, 1};  // identity
  std::vector<float> c(4, std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(backend
                  ->Gemm({.m = 2,
                          .n = 2,
                          .k = 2,
                          .a = a.data(),
                          .lda = 2,
                          .b = b.data(),
                          .ldb = 2,
                          .c = c.data(),
                          .ldc = 2})
                  .ok());
  EXPECT_EQ(c, a);
}

TEST(CpuTrainingBackendTest, GemmRejectsBadArguments) {
  std::unique_ptr<TrainingBackend> backend = CpuBackend(1);
  std::vector<float> buf(64);
  GemmArgs good{.m = 2,
                .n = 3,
                .k = 4,
                .a = buf.data(),
                .lda = 4,
                .b = buf.data(),
                .ldb = 3,
                .c = buf.data(),
                .ldc = 3};
  EXPECT_TRUE(CheckGemmArgs(good).ok());
  GemmArgs bad = good;
  bad.lda = 3;
  EXPECT_THAT(backend->Gemm(bad).message(), HasSubstr("lda"));
  bad = good;
  bad.transpose_b = true;  // B stored [n, k] needs ldb >= k = 4
  EXPECT_THAT(backend->Gemm(bad).message(), HasSubstr("ldb"));
  bad = good;
  bad.m = -1;
  EXPECT_EQ(backend->Gemm(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.c = nullptr;
  EXPECT_THAT(backend->Gemm(bad).message(), HasSubstr("C is null"));
}

TEST(CpuTrainingBackendTest, TernaryForwardIsBitIdenticalToTheOracle) {
  DemoRandom rng(12);
  std::unique_ptr<TrainingBackend> one = CpuBackend(1);
  std::unique_ptr<TrainingBackend> two = CpuBackend(2);
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes = {
      {1, 1, 1},   {3, 5, 15},    {4, 7, 16}, {5, 33, 17},
      {2, 3, 100}, {64, 128, 256}};  // the last is large enough for two threads
  for (const auto& [m, n, k] : shapes) {
    for (ScaleGranularity g :
         {ScaleGranularity::kPerRow, ScaleGranularity::kPerTensor}) {
      absl::StatusOr<PackedTernaryMatrix> w =
          QuantizeAndPack(RandomVector(n * k, 1.0, rng), n, k, g);
      ASSERT_TRUE(w.ok());
      // Inputs spanning magnitudes so the double sums round.
      std::vector<float> x = RandomVector(m * k, 1.0, rng);
      for (size_t i = 0; i < x.size(); i += 3) x[i] *= 1e4f;
      const std::vector<float> bias = RandomVector(n, 0.5, rng);
      for (ActivationQuant q :
           {ActivationQuant::kNone, ActivationQuant::kInt8}) {
        for (Activation act : {Activation::kIdentity, Activation::kRelu,
                               Activation::kGelu, Activation::kSilu}) {
          for (bool with_bias : {false, true}) {
            std::vector<float> want(m * n), got1(m * n), got2(m * n);
            TernaryGemmArgs args{.m = m,
                                 .x = x.data(),
                                 .weight = w->view(),
                                 .bias = with_bias ? bias.data() : nullptr,
                                 .act_quant = q,
                                 .activation = act,
                                 .y = want.data()};
            ASSERT_TRUE(ReferenceTernaryGemm(args).ok());
            args.y = got1.data();
            ASSERT_TRUE(one->TernaryForward(args).ok());
            args.y = got2.data();
            ASSERT_TRUE(two->TernaryForward(args).ok());
            EXPECT_TRUE(BitEqual(got1, want))
                << "m=" << m << " n=" << n << " k=" << k << " mode "
                << ActivationQuantName(q) << " " << ActivationName(act);
            EXPECT_TRUE(BitEqual(got2, want)) << "two threads, m=" << m;
          }
        }
      }
    }
  }
}

TEST(CpuTrainingBackendTest, TernaryForwardRejectsBadArguments) {
  std::unique_ptr<TrainingBackend> backend = CpuBackend(1);
  TernaryGemmArgs args;  // empty weight
  args.m = 1;
  EXPECT_EQ(backend->TernaryForward(args).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Activation derivatives and losses

double ActivationDouble(Activation act, double z) {
  switch (act) {
    case Activation::kIdentity:
      return z;
    case Activation::kRelu:
      return z > 0 ? z : 0;
    case Activation::kGelu:
      return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
    case Activation::kSilu:
      return z / (1.0 + std::exp(-z));
  }
  return z;
}

TEST(TrainingMathTest, ActivationGradientsMatchFiniteDifferences) {
  for (Activation act : {Activation::kIdentity, Activation::kRelu,
                         Activation::kGelu, Activation::kSilu}) {
    for (double z = -6.05; z < 6.0; z += 0.1) {  // never exactly 0
      const double h = 1e-5;
      const double fd =
          (ActivationDouble(act, z + h) - ActivationDouble(act, z - h)) /
          (2 * h);
      EXPECT_NEAR(ActivationGradient(act, static_cast<float>(z)), fd, 1e-6)
          << ActivationName(act) << " at " << z;
    }
  }
  EXPECT_EQ(ActivationGradient(Activation::kRelu, 0.0f), 0.0f);
}

TEST(TrainingMathTest, MeanSquaredErrorValueAndGradient) {
  const std::vector<float> y = {1.0f, 2.0f, -1.0f, 0.5f};  // [2, 2]
  const std::vector<float> t = {0.0f, 2.0f, 1.0f, 0.0f};
  std::vector<float> grad(4);
  absl::StatusOr<double> loss = MeanSquaredError(y, t, 2, 2, grad);
  ASSERT_TRUE(loss.ok());
  // (1 + 0 + 4 + 0.25) / 4
  EXPECT_DOUBLE_EQ(*loss, 5.25 / 4);
  // 2 (y - t) / 4
  EXPECT_THAT(grad, ::testing::ElementsAre(0.5f, 0.0f, -1.0f, 0.25f));
  EXPECT_THAT(MeanSquaredError(y, t, 2, 3, {}).status().message(),
              HasSubstr("output has 4 values"));
  std::vector<float> bad_t = t;
  bad_t[3] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(MeanSquaredError(y, bad_t, 2, 2, {}).status().message(),
              HasSubstr("targets[1, 1] is not finite"));
}

TEST(TrainingMathTest, SoftmaxCrossEntropyValueGradientAndAccuracy) {
  // Row 0: logits (0, ln 3) -> p = (1/4, 3/4), label 1: loss -ln(3/4).
  // Row 1: logits (2, 2) -> p = (1/2, 1/2), label 0: loss ln 2; arg-max is
  // the first maximum (class 0), so it counts as correct.
  const std::vector<float> logits = {0.0f, static_cast<float>(std::log(3.0)),
                                     2.0f, 2.0f};
  const std::vector<int32_t> labels = {1, 0};
  std::vector<float> grad(4);
  int64_t correct = -1;
  absl::StatusOr<double> loss =
      SoftmaxCrossEntropy(logits, labels, 2, 2, grad, &correct);
  ASSERT_TRUE(loss.ok());
  EXPECT_NEAR(*loss, (-std::log(0.75) + std::log(2.0)) / 2, 1e-7);
  EXPECT_EQ(correct, 2);
  EXPECT_NEAR(grad[0], 0.25 / 2, 1e-7);
  EXPECT_NEAR(grad[1], -0.25 / 2, 1e-7);
  EXPECT_NEAR(grad[2], -0.5 / 2, 1e-7);
  EXPECT_NEAR(grad[3], 0.5 / 2, 1e-7);

  // Large logits stay finite (max subtraction).
  const std::vector<float> big = {1000.0f, 0.0f};
  absl::StatusOr<double> big_loss =
      SoftmaxCrossEntropy(big, std::vector<int32_t>{1}, 1, 2, {});
  ASSERT_TRUE(big_loss.ok());
  EXPECT_NEAR(*big_loss, 1000.0, 1e-6);

  EXPECT_THAT(SoftmaxCrossEntropy(logits, std::vector<int32_t>{1, 2}, 2, 2, {})
                  .status()
                  .message(),
              HasSubstr("labels[1] is 2"));
  EXPECT_THAT(SoftmaxCrossEntropy(logits, std::vector<int32_t>{-1, 0}, 2, 2, {})
                  .status()
                  .message(),
              HasSubstr("labels[0] is -1"));
}

TEST(TrainingMathTest, SoftmaxCrossEntropyGradientMatchesFiniteDifferences) {
  DemoRandom rng(13);
  const int64_t rows = 3, cols = 5;
  std::vector<float> logits = RandomVector(rows * cols, 2.0, rng);
  const std::vector<int32_t> labels = {4, 0, 2};
  std::vector<float> grad(rows * cols);
  ASSERT_TRUE(SoftmaxCrossEntropy(logits, labels, rows, cols, grad).ok());
  for (int64_t e = 0; e < rows * cols; ++e) {
    const float h = 1e-2f;
    std::vector<float> plus = logits, minus = logits;
    plus[e] += h;
    minus[e] -= h;
    const double fd = (*SoftmaxCrossEntropy(plus, labels, rows, cols, {}) -
                       *SoftmaxCrossEntropy(minus, labels, rows, cols, {})) /
                      (static_cast<double>(plus[e]) - minus[e]);
    EXPECT_NEAR(grad[e], fd, 1e-4) << "element " << e;
  }
}

TEST(TrainingMathTest, ParsesNames) {
  EXPECT_EQ(*ParseLossKind("mse"), LossKind::kMeanSquaredError);
  EXPECT_EQ(*ParseLossKind(LossKindName(LossKind::kSoftmaxCrossEntropy)),
            LossKind::kSoftmaxCrossEntropy);
  EXPECT_THAT(ParseLossKind("hinge").status().message(), HasSubstr("hinge"));
  EXPECT_EQ(*ParseOptimizerKind("sgd"), OptimizerKind::kSgd);
  EXPECT_EQ(*ParseOptimizerKind(OptimizerKindName(OptimizerKind::kAdamW)),
            OptimizerKind::kAdamW);
  EXPECT_THAT(ParseOptimizerKind("lion").status().message(), HasSubstr("lion"));
}

// ---------------------------------------------------------------------------
// Optimizers: expected values worked out by hand from the update rules.

TEST(OptimizerTest, AdamWMatchesHandComputedSteps) {
  OptimizerOptions options{.kind = OptimizerKind::kAdamW,
                           .learning_rate = 0.1f,
                           .beta1 = 0.9f,
                           .beta2 = 0.999f,
                           .epsilon = 1e-8f,
                           .weight_decay = 0.01f};
  absl::StatusOr<std::unique_ptr<Optimizer>> opt =
      Optimizer::Create(options, {1, 1});
  ASSERT_TRUE(opt.ok()) << opt.status();
  std::vector<float> w = {1.0f}, b = {1.0f};
  std::vector<float> gw = {0.5f}, gb = {0.5f};
  std::vector<ParameterSlot> slots = {{w, gw, true}, {b, gb, false}};
  ASSERT_TRUE((*opt)->Step(slots).ok());
  // Step 1: decay 1 * (1 - 0.1 * 0.01) = 0.999; m = 0.05, v = 0.00025;
  // m_hat = 0.5, sqrt(v_hat) = 0.5: update 0.1 * 0.5 / 0.5 = 0.1.
  EXPECT_NEAR(w[0], 0.899, 1e-6);
  EXPECT_NEAR(b[0], 0.9, 1e-6);  // no decay for this slot
  gw[0] = -0.25f;
  gb[0] = -0.25f;
  ASSERT_TRUE((*opt)->Step(slots).ok());
  // Step 2: decay 0.899 * 0.999 = 0.898101; m = 0.045 - 0.025 = 0.02;
  // v = 0.00024975 + 0.0000625 = 0.00031225; m_hat = 0.02 / 0.19 = 0.1052632;
  // sqrt(v / 0.001999) = 0.3952252; update 0.1 * 0.1052632 / 0.3952252
  // = 0.0266335.
  EXPECT_NEAR(w[0], 0.898101 - 0.0266335, 2e-6);
  EXPECT_NEAR(b[0], 0.9 - 0.0266335, 2e-6);
  EXPECT_EQ((*opt)->steps(), 2);
}

TEST(OptimizerTest, SgdMomentumMatchesHandComputedSteps) {
  OptimizerOptions options{.kind = OptimizerKind::kSgd,
                           .learning_rate = 0.1f,
                           .momentum = 0.9f,
                           .weight_decay = 0.1f};
  absl::StatusOr<std::unique_ptr<Optimizer>> opt =
      Optimizer::Create(options, {2});
  ASSERT_TRUE(opt.ok()) << opt.status();
  std::vector<float> w = {1.0f, -2.0f};
  std::vector<float> g = {0.5f, 0.0f};
  std::vector<ParameterSlot> slots = {{w, g, true}};
  ASSERT_TRUE((*opt)->Step(slots).ok());
  // d = 0.5 + 0.1 * 1 = 0.6, buf = 0.6, w = 1 - 0.06 = 0.94;
  // d = 0 + 0.1 * -2 = -0.2, buf = -0.2, w = -2 + 0.02 = -1.98.
  EXPECT_NEAR(w[0], 0.94, 1e-6);
  EXPECT_NEAR(w[1], -1.98, 1e-6);
  g = {-0.2f, 1.0f};
  ASSERT_TRUE((*opt)->Step(slots).ok());
  // d = -0.2 + 0.094 = -0.106, buf = 0.54 - 0.106 = 0.434, w = 0.94 - 0.0434;
  // d = 1 - 0.198 = 0.802, buf = -0.18 + 0.802 = 0.622, w = -1.98 - 0.0622.
  EXPECT_NEAR(w[0], 0.8966, 1e-6);
  EXPECT_NEAR(w[1], -2.0422, 1e-6);
}

TEST(OptimizerTest, RejectsBadOptionsAndSlotsWithoutTouchingParameters) {
  EXPECT_THAT(
      Optimizer::Create({.learning_rate = 0.0f}, {1}).status().message(),
      HasSubstr("learning_rate"));
  EXPECT_THAT(Optimizer::Create({.beta2 = 1.0f}, {1}).status().message(),
              HasSubstr("beta2"));
  EXPECT_THAT(
      Optimizer::Create({.kind = OptimizerKind::kSgd, .momentum = -0.1f}, {1})
          .status()
          .message(),
      HasSubstr("momentum"));
  EXPECT_THAT(Optimizer::Create({.weight_decay = NAN}, {1}).status().message(),
              HasSubstr("weight_decay"));
  EXPECT_THAT(Optimizer::Create({}, {-1}).status().message(),
              HasSubstr("size -1"));

  absl::StatusOr<std::unique_ptr<Optimizer>> opt =
      Optimizer::Create({}, {2, 1});
  ASSERT_TRUE(opt.ok());
  std::vector<float> w = {1.0f, 2.0f}, b = {3.0f};
  std::vector<float> gw = {1.0f, 1.0f}, gb = {NAN};
  std::vector<ParameterSlot> slots = {{w, gw, true}, {b, gb, false}};
  EXPECT_THAT((*opt)->Step(slots).message(),
              HasSubstr("parameter 1: gradient element 0"));
  EXPECT_EQ(w, (std::vector<float>{1.0f, 2.0f}));  // untouched
  EXPECT_EQ((*opt)->steps(), 0);
  EXPECT_THAT(
      (*opt)->Step(std::span<const ParameterSlot>(slots).first(1)).message(),
      HasSubstr("got 1 parameter slots, expected 2"));
  std::vector<float> short_grad = {1.0f};
  slots = {{w, short_grad, true}, {b, gb, false}};
  EXPECT_THAT((*opt)->Step(slots).message(), HasSubstr("parameter 0"));
  EXPECT_EQ((*opt)->SetLearningRate(-1.0f).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Trainer

struct MlpConfig {
  std::vector<int64_t> widths;          // input, hidden..., output
  std::vector<Activation> activations;  // one per layer
  ActivationQuant act_quant = ActivationQuant::kNone;
  ScaleGranularity granularity = ScaleGranularity::kPerRow;
  bool bias = true;
};

// Latent weights N(0, 0.5^2), biases N(0, 0.1^2), packed from the latents.
Model MakeMlp(const MlpConfig& config, uint64_t seed) {
  DemoRandom rng(seed);
  Model model;
  for (size_t l = 0; l + 1 < config.widths.size(); ++l) {
    Layer layer;
    layer.spec = {.in_features = config.widths[l],
                  .out_features = config.widths[l + 1],
                  .activation = config.activations[l],
                  .act_quant = config.act_quant,
                  .has_bias = config.bias};
    layer.latent =
        RandomVector(config.widths[l] * config.widths[l + 1], 0.5, rng);
    absl::StatusOr<PackedTernaryMatrix> packed =
        QuantizeAndPack(layer.latent, layer.spec.out_features,
                        layer.spec.in_features, config.granularity);
    EXPECT_TRUE(packed.ok());
    layer.weight = *std::move(packed);
    if (config.bias)
      layer.bias = RandomVector(layer.spec.out_features, 0.1, rng);
    model.layers.push_back(std::move(layer));
  }
  EXPECT_TRUE(ValidateModel(model).ok()) << ValidateModel(model);
  return model;
}

// TrainerOptions has class-type members, which designated initializers
// would leave to -Wmissing-field-initializers.
TrainerOptions Options(LossKind loss, OptimizerOptions optimizer = {}) {
  TrainerOptions options;
  options.loss = loss;
  options.optimizer = optimizer;
  return options;
}

std::unique_ptr<Trainer> MakeTrainer(const Model& model,
                                     TrainerOptions options) {
  absl::StatusOr<std::unique_ptr<Trainer>> trainer =
      Trainer::Create(model, options);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return trainer.ok() ? *std::move(trainer) : nullptr;
}

// The STE surrogate of a model, in double: each layer computes
// act((x + offset) . W_hat^T + b) with W_hat the dequantized packed weights
// and `offset` = x_hat - x frozen at the base point (zero in none mode). Its
// value at the base point is the quantized forward's; its exact gradient is,
// by definition, the straight-through gradient (the quantizers' Jacobian is
// the identity). Finite differences of it check the trainer's backward.
class Surrogate {
 public:
  Surrogate(const Model& model, const std::vector<float>& x, int64_t rows)
      : model_(model), rows_(rows) {
    // Layer inputs in float exactly as inference computes them (the oracle
    // per layer), to freeze the int8 quantization offsets.
    std::vector<float> current = x;
    for (const Layer& layer : model.layers) {
      const int64_t in = layer.spec.in_features, out = layer.spec.out_features;
      w_.emplace_back();
      for (float v : Dequantize(layer.weight.view())) w_.back().push_back(v);
      b_.emplace_back(layer.bias.begin(), layer.bias.end());
      std::vector<double> offset(rows * in, 0.0);
      if (layer.spec.act_quant == ActivationQuant::kInt8) {
        std::vector<int8_t> xq(rows * in);
        std::vector<float> s(rows);
        QuantizeRowsInt8(current.data(), rows, in, xq.data(), s.data());
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < in; ++c) {
            const double x_hat =
                static_cast<double>(static_cast<float>(xq[r * in + c]) / s[r]);
            offset[r * in + c] = x_hat - current[r * in + c];
          }
        }
      }
      offset_.push_back(std::move(offset));
      std::vector<float> next(rows * out);
      TernaryGemmArgs args{
          .m = rows,
          .x = current.data(),
          .weight = layer.weight.view(),
          .bias = layer.spec.has_bias ? layer.bias.data() : nullptr,
          .act_quant = layer.spec.act_quant,
          .activation = layer.spec.activation,
          .y = next.data()};
      EXPECT_TRUE(ReferenceTernaryGemm(args).ok());
      pre_min_abs_ = std::min(pre_min_abs_, MinAbsPre(args));
      current = std::move(next);
    }
  }

  std::vector<std::vector<double>>& weights() { return w_; }
  std::vector<std::vector<double>>& biases() { return b_; }
  // Smallest |pre-activation| at the base point (ReLU's kink check).
  double pre_min_abs() const { return pre_min_abs_; }

  std::vector<double> Output(const std::vector<double>& x) const {
    std::vector<double> current = x;
    for (size_t l = 0; l < model_.layers.size(); ++l) {
      const LayerSpec& spec = model_.layers[l].spec;
      const int64_t in = spec.in_features, out = spec.out_features;
      std::vector<double> next(rows_ * out);
      for (int64_t r = 0; r < rows_; ++r) {
        for (int64_t j = 0; j < out; ++j) {
          double z = spec.has_bias ? b_[l][j] : 0.0;
          for (int64_t c = 0; c < in; ++c) {
            z += (current[r * in + c] + offset_[l][r * in + c]) *
                 w_[l][j * in + c];
          }
          next[r * out + j] = ActivationDouble(spec.activation, z);
        }
      }
      current = std::move(next);
    }
    return current;
  }

  double Loss(const std::vector<double>& x, LossKind kind,
              const std::vector<float>& targets,
              const std::vector<int32_t>& labels) const {
    const std::vector<double> y = Output(x);
    const int64_t out = model_.output_features();
    double total = 0.0;
    for (int64_t r = 0; r < rows_; ++r) {
      if (kind == LossKind::kMeanSquaredError) {
        for (int64_t j = 0; j < out; ++j) {
          const double d = y[r * out + j] - targets[r * out + j];
          total += d * d;
        }
      } else {
        double sum = 0.0;
        for (int64_t j = 0; j < out; ++j) sum += std::exp(y[r * out + j]);
        total += std::log(sum) - y[r * out + labels[r]];
      }
    }
    return kind == LossKind::kMeanSquaredError ? total / (rows_ * out)
                                               : total / rows_;
  }

 private:
  static double MinAbsPre(const TernaryGemmArgs& args) {
    std::vector<float> z(args.m * args.weight.rows);
    TernaryGemmArgs identity = args;
    identity.activation = Activation::kIdentity;
    identity.y = z.data();
    EXPECT_TRUE(ReferenceTernaryGemm(identity).ok());
    double m = std::numeric_limits<double>::infinity();
    for (float v : z) m = std::min(m, std::fabs(static_cast<double>(v)));
    return m;
  }

  const Model& model_;
  int64_t rows_;
  std::vector<std::vector<double>> w_, b_, offset_;
  double pre_min_abs_ = std::numeric_limits<double>::infinity();
};

struct GradCase {
  ActivationQuant act_quant;
  ScaleGranularity granularity;
  LossKind loss;
  std::vector<Activation> activations;
};

class TrainerGradientTest : public ::testing::TestWithParam<GradCase> {};

// Central differences of the surrogate against the trainer's analytic
// gradients for every weight, bias and input element.
TEST_P(TrainerGradientTest, MatchesFiniteDifferencesOfTheSteSurrogate) {
  const GradCase& tc = GetParam();
  const MlpConfig config{.widths = {6, 7, 5, 4},
                         .activations = tc.activations,
                         .act_quant = tc.act_quant,
                         .granularity = tc.granularity};
  const Model model = MakeMlp(config, 21);
  const int64_t rows = 3;
  DemoRandom rng(22);
  const std::vector<float> x = RandomVector(rows * 6, 1.0, rng);
  const std::vector<float> targets = RandomVector(rows * 4, 1.0, rng);
  const std::vector<int32_t> labels = {3, 0, 2};

  const TrainerOptions options = Options(tc.loss);
  std::unique_ptr<Trainer> trainer = MakeTrainer(model, options);
  ASSERT_NE(trainer, nullptr);
  absl::StatusOr<Gradients> grads =
      tc.loss == LossKind::kMeanSquaredError
          ? trainer->ComputeGradients(x, rows, std::span<const float>(targets))
          : trainer->ComputeGradients(x, rows,
                                      std::span<const int32_t>(labels));
  ASSERT_TRUE(grads.ok()) << grads.status();

  Surrogate surrogate(model, x, rows);
  const bool has_relu = std::find(tc.activations.begin(), tc.activations.end(),
                                  Activation::kRelu) != tc.activations.end();
  // Differences must not step across ReLU's kink: a step of h moves a
  // pre-activation by at most about h * 3 (|x|, |w| and |bias| are below 3
  // here), far less than the margin asserted.
  const double h = has_relu ? 1e-5 : 1e-4;
  if (has_relu) {
    ASSERT_GT(surrogate.pre_min_abs(), 1e-3);
  }
  std::vector<double> xd(x.begin(), x.end());
  auto loss = [&] { return surrogate.Loss(xd, tc.loss, targets, labels); };
  // The trainer's loss is the quantized forward's; the surrogate equals it
  // at the base point.
  EXPECT_NEAR(grads->loss, loss(), 1e-5 * (1 + std::fabs(grads->loss)));

  auto check = [&](double& param, float analytic, const std::string& what) {
    const double saved = param;
    param = saved + h;
    const double up = loss();
    param = saved - h;
    const double down = loss();
    param = saved;
    const double fd = (up - down) / (2 * h);
    EXPECT_NEAR(analytic, fd, 2e-4 + 1e-3 * std::fabs(fd)) << what;
  };
  for (size_t l = 0; l < model.layers.size(); ++l) {
    for (size_t e = 0; e < surrogate.weights()[l].size(); ++e) {
      check(surrogate.weights()[l][e], grads->weight[l][e],
            "layer " + std::to_string(l) + " weight " + std::to_string(e));
    }
    for (size_t j = 0; j < surrogate.biases()[l].size(); ++j) {
      check(surrogate.biases()[l][j], grads->bias[l][j],
            "layer " + std::to_string(l) + " bias " + std::to_string(j));
    }
  }
  ASSERT_EQ(grads->input.size(), xd.size());
  for (size_t e = 0; e < xd.size(); ++e) {
    check(xd[e], grads->input[e], "input " + std::to_string(e));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, TrainerGradientTest,
    ::testing::Values(
        GradCase{ActivationQuant::kNone,
                 ScaleGranularity::kPerRow,
                 LossKind::kMeanSquaredError,
                 {Activation::kGelu, Activation::kSilu, Activation::kIdentity}},
        GradCase{ActivationQuant::kNone,
                 ScaleGranularity::kPerTensor,
                 LossKind::kSoftmaxCrossEntropy,
                 {Activation::kSilu, Activation::kGelu, Activation::kIdentity}},
        GradCase{ActivationQuant::kInt8,
                 ScaleGranularity::kPerRow,
                 LossKind::kSoftmaxCrossEntropy,
                 {Activation::kGelu, Activation::kSilu, Activation::kIdentity}},
        GradCase{ActivationQuant::kInt8,
                 ScaleGranularity::kPerTensor,
                 LossKind::kMeanSquaredError,
                 {Activation::kSilu, Activation::kGelu, Activation::kGelu}},
        GradCase{ActivationQuant::kNone,
                 ScaleGranularity::kPerRow,
                 LossKind::kSoftmaxCrossEntropy,
                 {Activation::kRelu, Activation::kRelu, Activation::kIdentity}},
        GradCase{
            ActivationQuant::kInt8,
            ScaleGranularity::kPerRow,
            LossKind::kMeanSquaredError,
            {Activation::kRelu, Activation::kRelu, Activation::kIdentity}}),
    [](const ::testing::TestParamInfo<GradCase>& info) {
      const GradCase& c = info.param;
      return std::string(ActivationQuantName(c.act_quant)) + "_" +
             (c.granularity == ScaleGranularity::kPerRow ? "per_row"
                                                         : "per_tensor") +
             "_" + std::string(LossKindName(c.loss)) + "_" +
             std::string(ActivationName(c.activations[0]));
    });

// The latent weights never enter the gradient: two models with the same
// packed weights but different latents get identical gradients (those of
// W_hat), and one SGD step moves each latent by exactly -lr * that gradient.
TEST(TrainerTest, LatentGradientIsTheDequantizedWeightGradient) {
  const MlpConfig config{
      .widths = {8, 6, 3},
      .activations = {Activation::kGelu, Activation::kIdentity},
      .act_quant = ActivationQuant::kInt8};
  const Model model = MakeMlp(config, 31);
  Model other_latents = model;
  for (Layer& layer : other_latents.layers) {
    for (float& w : layer.latent) w *= 3.0f;  // same codes, 3x the scale
  }
  DemoRandom rng(32);
  const int64_t rows = 4;
  const std::vector<float> x = RandomVector(rows * 8, 1.0, rng);
  const std::vector<int32_t> labels = {0, 1, 2, 1};
  const float lr = 0.05f;
  const TrainerOptions options = Options(
      LossKind::kSoftmaxCrossEntropy,
      {.kind = OptimizerKind::kSgd, .learning_rate = lr, .momentum = 0.0f});
  std::unique_ptr<Trainer> a = MakeTrainer(model, options);
  std::unique_ptr<Trainer> b = MakeTrainer(other_latents, options);
  ASSERT_TRUE(a && b);
  absl::StatusOr<Gradients> ga =
      a->ComputeGradients(x, rows, std::span<const int32_t>(labels));
  absl::StatusOr<Gradients> gb =
      b->ComputeGradients(x, rows, std::span<const int32_t>(labels));
  ASSERT_TRUE(ga.ok() && gb.ok());
  for (size_t l = 0; l < model.layers.size(); ++l) {
    EXPECT_TRUE(BitEqual(ga->weight[l], gb->weight[l])) << "layer " << l;
  }

  ASSERT_TRUE(a->Step(x, rows, std::span<const int32_t>(labels)).ok());
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const Layer& after = a->model().layers[l];
    for (size_t e = 0; e < after.latent.size(); ++e) {
      ASSERT_EQ(after.latent[e],
                model.layers[l].latent[e] - lr * ga->weight[l][e])
          << "layer " << l << " latent " << e;
    }
    // Re-quantized from the new latents with the layer's granularity.
    absl::StatusOr<PackedTernaryMatrix> want = QuantizeAndPack(
        after.latent, after.spec.out_features, after.spec.in_features,
        model.layers[l].weight.granularity);
    ASSERT_TRUE(want.ok());
    EXPECT_EQ(after.weight.words, want->words) << "layer " << l;
    EXPECT_EQ(after.weight.scales, want->scales) << "layer " << l;
    EXPECT_EQ(after.weight.granularity, model.layers[l].weight.granularity);
  }
}

struct EqualityCase {
  ActivationQuant act_quant;
  ScaleGranularity granularity;
  LossKind loss;
  OptimizerKind optimizer;
  Activation hidden;
};

class TrainerInferenceEqualityTest
    : public ::testing::TestWithParam<EqualityCase> {};

// After every step the packed model the trainer exports computes, through
// the inference oracle, exactly (bit for bit) the trainer's forward, and the
// loss a step reports is the loss of the served model before the step.
TEST_P(TrainerInferenceEqualityTest, ExportedModelServesTheTrainingForward) {
  const EqualityCase& tc = GetParam();
  const MlpConfig config{
      .widths = {12, 16, 9, 5},
      .activations = {tc.hidden, tc.hidden, Activation::kIdentity},
      .act_quant = tc.act_quant,
      .granularity = tc.granularity};
  const Model model = MakeMlp(config, 41);
  const TrainerOptions options = Options(
      tc.loss,
      {.kind = tc.optimizer, .learning_rate = 0.02f, .weight_decay = 0.01f});
  std::unique_ptr<Trainer> trainer = MakeTrainer(model, options);
  ASSERT_NE(trainer, nullptr);
  DemoRandom rng(42);
  const int64_t rows = 8;
  const std::vector<float> probe = RandomVector(5 * 12, 2.0, rng);

  int changed_steps = 0;
  for (int step = 0; step < 6; ++step) {
    const std::vector<float> x = RandomVector(rows * 12, 1.0, rng);
    const std::vector<float> targets = RandomVector(rows * 5, 1.0, rng);
    std::vector<int32_t> labels(rows);
    for (int32_t& label : labels)
      label = static_cast<int32_t>(rng.NextU64() % 5);

    const Model before = trainer->ExportModel();
    std::vector<float> served(rows * 5);
    ASSERT_TRUE(ReferenceForward(before, x.data(), rows, served.data()).ok());
    const absl::StatusOr<double> served_loss =
        tc.loss == LossKind::kMeanSquaredError
            ? MeanSquaredError(served, targets, rows, 5, {})
            : SoftmaxCrossEntropy(served, labels, rows, 5, {});
    ASSERT_TRUE(served_loss.ok());

    absl::StatusOr<StepResult> result =
        tc.loss == LossKind::kMeanSquaredError
            ? trainer->Step(x, rows, std::span<const float>(targets))
            : trainer->Step(x, rows, std::span<const int32_t>(labels));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->loss, *served_loss) << "step " << step;
    EXPECT_EQ(result->step, step + 1);

    const Model after = trainer->ExportModel();
    ASSERT_TRUE(ValidateModel(after).ok()) << ValidateModel(after);
    for (const Layer& layer : after.layers) {
      // Re-quantization keeps each layer's scale granularity.
      ASSERT_EQ(layer.weight.granularity, tc.granularity);
      ASSERT_EQ(layer.weight.scales.size(),
                tc.granularity == ScaleGranularity::kPerRow
                    ? static_cast<size_t>(layer.spec.out_features)
                    : 1u);
    }
    if (after.layers[0].weight.words != before.layers[0].weight.words)
      ++changed_steps;
    std::vector<float> want(5 * 5), got(5 * 5);
    ASSERT_TRUE(ReferenceForward(after, probe.data(), 5, want.data()).ok());
    ASSERT_TRUE(trainer->Forward(probe, 5, got).ok());
    EXPECT_TRUE(BitEqual(got, want)) << "step " << step;
  }
  // The test would be vacuous if no code ever flipped.
  EXPECT_GT(changed_steps, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, TrainerInferenceEqualityTest,
    ::testing::Values(
        EqualityCase{ActivationQuant::kNone, ScaleGranularity::kPerRow,
                     LossKind::kMeanSquaredError, OptimizerKind::kAdamW,
                     Activation::kRelu},
        EqualityCase{ActivationQuant::kInt8, ScaleGranularity::kPerRow,
                     LossKind::kSoftmaxCrossEntropy, OptimizerKind::kAdamW,
                     Activation::kGelu},
        EqualityCase{ActivationQuant::kNone, ScaleGranularity::kPerTensor,
                     LossKind::kSoftmaxCrossEntropy, OptimizerKind::kSgd,
                     Activation::kSilu},
        EqualityCase{ActivationQuant::kInt8, ScaleGranularity::kPerTensor,
                     LossKind::kMeanSquaredError, OptimizerKind::kSgd,
                     Activation::kRelu}),
    [](const ::testing::TestParamInfo<EqualityCase>& info) {
      const EqualityCase& c = info.param;
      return std::string(ActivationQuantName(c.act_quant)) + "_" +
             (c.granularity == ScaleGranularity::kPerRow ? "per_row"
                                                         : "per_tensor") +
             "_" + std::string(LossKindName(c.loss)) + "_" +
             std::string(OptimizerKindName(c.optimizer)) + "_" +
             std::string(ActivationName(c.hidden));
    });

// A model without latent weights (e.g. a packed file) starts from latents
// that re-quantize to the same codes and (to rounding) the same scales, and
// until the first update the trainer serves exactly the given model.
TEST(TrainerTest, ModelWithoutLatentsStartsFromItsPackedWeights) {
  for (ScaleGranularity g :
       {ScaleGranularity::kPerRow, ScaleGranularity::kPerTensor}) {
    Model model =
        MakeMlp({.widths = {40, 24, 6},
                 .activations = {Activation::kRelu, Activation::kIdentity},
                 .act_quant = ActivationQuant::kInt8,
                 .granularity = g},
                51);
    for (Layer& layer : model.layers) layer.latent.clear();
    std::unique_ptr<Trainer> trainer = MakeTrainer(model, {});
    ASSERT_NE(trainer, nullptr);
    DemoRandom rng(52);
    const std::vector<float> x = RandomVector(7 * 40, 1.0, rng);
    std::vector<float> want(7 * 6), got(7 * 6);
    ASSERT_TRUE(ReferenceForward(model, x.data(), 7, want.data()).ok());
    ASSERT_TRUE(trainer->Forward(x, 7, got).ok());
    EXPECT_TRUE(BitEqual(got, want));
    for (size_t l = 0; l < model.layers.size(); ++l) {
      const Layer& layer = trainer->model().layers[l];
      ASSERT_EQ(layer.latent.size(),
                40u * 24u * (l == 0) + 24u * 6u * (l == 1));
      absl::StatusOr<PackedTernaryMatrix> requantized = QuantizeAndPack(
          layer.latent, layer.spec.out_features, layer.spec.in_features, g);
      ASSERT_TRUE(requantized.ok());
      EXPECT_EQ(requantized->words, model.layers[l].weight.words)
          << "layer " << l;
      ASSERT_EQ(requantized->scales.size(),
                model.layers[l].weight.scales.size());
      for (size_t s = 0; s < requantized->scales.size(); ++s) {
        EXPECT_NEAR(requantized->scales[s], model.layers[l].weight.scales[s],
                    1e-6 * model.layers[l].weight.scales[s])
            << "layer " << l << " scale " << s;
      }
    }
  }
}

TEST(TrainerTest, DemoModelTrainsAndUpdatesARegistryCopy) {
  // MakeDemoModel(kSmall): 64 -> 128 -> 32, ReLU, int8, bias, latents.
  const Model demo = MakeDemoModel(DemoModelSize::kSmall);
  const TrainerOptions options =
      Options(LossKind::kMeanSquaredError, {.learning_rate = 0.01f});
  std::unique_ptr<Trainer> trainer = MakeTrainer(demo, options);
  ASSERT_NE(trainer, nullptr);
  DemoRandom rng(61);
  const int64_t rows = 16;
  const std::vector<float> x = RandomVector(rows * 64, 1.0, rng);
  const std::vector<float> targets = RandomVector(rows * 32, 0.5, rng);
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 40; ++step) {
    absl::StatusOr<StepResult> r =
        trainer->Step(x, rows, std::span<const float>(targets));
    ASSERT_TRUE(r.ok()) << r.status();
    if (step == 0) first = r->loss;
    last = r->loss;
  }
  EXPECT_LT(last, 0.5 * first) << "first loss " << first << ", last " << last;

  Model registry_copy = demo;
  ASSERT_TRUE(trainer->UpdateModel(&registry_copy).ok());
  const Model exported = trainer->ExportModel();
  for (size_t l = 0; l < demo.layers.size(); ++l) {
    EXPECT_EQ(registry_copy.layers[l].weight.words,
              exported.layers[l].weight.words);
    EXPECT_EQ(registry_copy.layers[l].weight.scales,
              exported.layers[l].weight.scales);
    EXPECT_EQ(registry_copy.layers[l].bias, exported.layers[l].bias);
    EXPECT_EQ(registry_copy.layers[l].latent, exported.layers[l].latent);
  }
  EXPECT_NE(registry_copy.layers[0].weight.words, demo.layers[0].weight.words);

  Model wrong = demo;
  wrong.layers[1].spec.activation = Activation::kGelu;
  const Model wrong_before = wrong;
  absl::Status s = trainer->UpdateModel(&wrong);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("layer 1 spec differs"));
  EXPECT_EQ(wrong.layers[0].weight.words, wrong_before.layers[0].weight.words);
  EXPECT_EQ(trainer->UpdateModel(nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TrainerTest, RejectsBadModelsOptionsAndBatches) {
  EXPECT_THAT(Trainer::Create(Model{}, {}).status().message(),
              HasSubstr("no layers"));
  Model model =
      MakeMlp({.widths = {4, 3, 2},
               .activations = {Activation::kRelu, Activation::kIdentity}},
              71);
  Model bad_bias = model;
  bad_bias.layers[1].bias.pop_back();
  EXPECT_THAT(Trainer::Create(bad_bias, {}).status().message(),
              HasSubstr("layer 1"));
  Model bad_latent = model;
  bad_latent.layers[0].latent[5] = NAN;
  EXPECT_THAT(Trainer::Create(bad_latent, {}).status().message(),
              HasSubstr("latent"));
  EXPECT_THAT(Trainer::Create(model, Options(LossKind::kSoftmaxCrossEntropy,
                                             {.learning_rate = -1.0f}))
                  .status()
                  .message(),
              HasSubstr("learning_rate"));

  std::unique_ptr<Trainer> ce =
      MakeTrainer(model, Options(LossKind::kSoftmaxCrossEntropy));
  ASSERT_NE(ce, nullptr);
  const std::vector<float> x(2 * 4, 0.5f);
  const std::vector<int32_t> labels = {0, 1};
  const std::vector<float> targets(2 * 2, 0.0f);
  EXPECT_THAT(ce->Step(std::span<const float>(x).first(7), 2,
                       std::span<const int32_t>(labels))
                  .status()
                  .message(),
              HasSubstr("x has 7 values"));
  EXPECT_THAT(
      ce->Step(x, 2, std::span<const float>(targets)).status().message(),
      HasSubstr("takes integer labels"));
  EXPECT_THAT(
      ce->Step(x, 2, std::span<const int32_t>(std::vector<int32_t>{0, 2}))
          .status()
          .message(),
      HasSubstr("labels[1] is 2"));
  EXPECT_THAT(ce->Step(std::span<const float>(), 0, std::span<const int32_t>())
                  .status()
                  .message(),
              HasSubstr("rows > 0"));
  std::vector<float> nan_x = x;
  nan_x[6] = NAN;
  EXPECT_THAT(
      ce->Step(nan_x, 2, std::span<const int32_t>(labels)).status().message(),
      HasSubstr("x[1, 2] is not finite"));
  std::vector<float> y(3);
  EXPECT_THAT(ce->Forward(x, 2, y).message(), HasSubstr("y has 3 values"));
  EXPECT_EQ(ce->steps(), 0);

  std::unique_ptr<Trainer> mse =
      MakeTrainer(model, Options(LossKind::kMeanSquaredError));
  ASSERT_NE(mse, nullptr);
  EXPECT_THAT(
      mse->Step(x, 2, std::span<const int32_t>(labels)).status().message(),
      HasSubstr("takes float targets"));
  EXPECT_THAT(mse->Step(x, 2, std::span<const float>(targets).first(3))
                  .status()
                  .message(),
              HasSubstr("targets has 3 values"));
}

TEST(TrainerTest, DivergenceIsReportedAndLeavesTheModelUnchanged) {
  // All codes +1 and inputs near FLT_MAX: the (none-mode) output overflows
  // to infinity, and so does the loss.
  Model model =
      MakeMlp({.widths = {4, 1}, .activations = {Activation::kIdentity}}, 81);
  model.layers[0].latent.assign(4, 1.0f);
  absl::StatusOr<PackedTernaryMatrix> ones =
      QuantizeAndPack(model.layers[0].latent, 1, 4, ScaleGranularity::kPerRow);
  ASSERT_TRUE(ones.ok());
  model.layers[0].weight = *std::move(ones);
  std::unique_ptr<Trainer> trainer =
      MakeTrainer(model, Options(LossKind::kMeanSquaredError));
  ASSERT_NE(trainer, nullptr);
  const std::vector<float> x(4, 3e38f);
  const std::vector<float> targets(1, 0.0f);
  absl::StatusOr<StepResult> r =
      trainer->Step(x, 1, std::span<const float>(targets));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("lower the learning rate"));
  EXPECT_EQ(trainer->steps(), 0);
  EXPECT_EQ(trainer->model().layers[0].latent, model.layers[0].latent);
  EXPECT_EQ(trainer->model().layers[0].weight.words,
            model.layers[0].weight.words);
}

// Clone (used by the fine-tune service to train on a copy that is kept only
// if the whole run succeeds): the clone continues exactly as the original
// would (latents and optimizer moments copied), and training the clone
// leaves the original untouched.
TEST(TrainerTest, CloneContinuesExactlyAndLeavesTheOriginalUntouched) {
  const Model model =
      MakeMlp({.widths = {12, 20, 5},
               .activations = {Activation::kSilu, Activation::kIdentity},
               .act_quant = ActivationQuant::kInt8},
              61);
  for (OptimizerKind kind : {OptimizerKind::kAdamW, OptimizerKind::kSgd}) {
    OptimizerOptions optimizer;
    optimizer.kind = kind;
    optimizer.learning_rate = 0.02f;
    optimizer.weight_decay = 0.01f;
    std::unique_ptr<Trainer> original =
        MakeTrainer(model, Options(LossKind::kMeanSquaredError, optimizer));
    ASSERT_NE(original, nullptr);
    DemoRandom rng(62);
    const std::vector<float> x = RandomVector(9 * 12, 1.0, rng);
    const std::vector<float> t = RandomVector(9 * 5, 1.0, rng);
    // Two steps so the moments are non-trivial before cloning.
    for (int s = 0; s < 2; ++s) ASSERT_TRUE(original->Step(x, 9, t).ok());
    const Model before = original->ExportModel();
    std::unique_ptr<Trainer> clone = original->Clone();
    EXPECT_EQ(clone->steps(), 2);
    for (int s = 0; s < 3; ++s) ASSERT_TRUE(clone->Step(x, 9, t).ok());
    // The original did not move.
    EXPECT_EQ(original->steps(), 2);
    for (size_t l = 0; l < before.layers.size(); ++l) {
      EXPECT_EQ(original->model().layers[l].latent, before.layers[l].latent);
      EXPECT_EQ(original->model().layers[l].weight.words,
                before.layers[l].weight.words);
    }
    // The original, stepped the same way, lands exactly where the clone is.
    for (int s = 0; s < 3; ++s) ASSERT_TRUE(original->Step(x, 9, t).ok());
    for (size_t l = 0; l < before.layers.size(); ++l) {
      EXPECT_TRUE(BitEqual(original->model().layers[l].latent,
                           clone->model().layers[l].latent))
          << OptimizerKindName(kind) << " layer " << l;
      EXPECT_TRUE(BitEqual(original->model().layers[l].bias,
                           clone->model().layers[l].bias));
    }
    // A clone on another backend object computes the same.
    std::shared_ptr<TrainingBackend> other = *CreateCpuTrainingBackend();
    std::unique_ptr<Trainer> moved = original->Clone(other);
    std::vector<float> a(9 * 5), b(9 * 5);
    ASSERT_TRUE(original->Forward(x, 9, a).ok());
    ASSERT_TRUE(moved->Forward(x, 9, b).ok());
    EXPECT_TRUE(BitEqual(a, b));
  }
}

}  // namespace
}  // namespace bitnet::training
