// Acceptance test of the CPU trainer on real data: the 8x8 handwritten digits
// (tests/fixtures/digits.safetensors, made by scripts/export_digits.py from
// Debian's python3-sklearn copy of the UCI data set). A 64 -> 256 -> 10
// ternary MLP from random initialisation must reach >= 90% held-out accuracy,
// measured through the packed inference oracle (ReferenceForward) on the
// exported model, not through the trainer.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"
#include "server/model/reference_forward.h"
#include "server/model/safetensors.h"
#include "server/training/trainer.h"

namespace bitnet::training {
namespace {

constexpr int64_t kPixels = 64;
constexpr int64_t kHidden = 256;
constexpr int64_t kClasses = 10;

struct Split {
  std::vector<float> x;
  std::vector<int32_t> labels;
  int64_t rows = 0;
};

Split LoadSplit(const safetensors::SafetensorsFile& file,
                const std::string& name) {
  Split split;
  const safetensors::TensorInfo* x = file.Find(name + ".x");
  const safetensors::TensorInfo* labels = file.Find(name + ".labels");
  EXPECT_NE(x, nullptr) << name << ".x missing";
  EXPECT_NE(labels, nullptr) << name << ".labels missing";
  if (x == nullptr || labels == nullptr) return split;
  EXPECT_EQ(x->shape.size(), 2u);
  EXPECT_EQ(x->shape[1], kPixels);
  split.rows = x->shape[0];
  absl::StatusOr<std::vector<float>> xv =
      file.Copy<float>(*x, safetensors::DType::kF32);
  absl::StatusOr<std::vector<int32_t>> lv =
      file.Copy<int32_t>(*labels, safetensors::DType::kI32);
  EXPECT_TRUE(xv.ok()) << xv.status();
  EXPECT_TRUE(lv.ok()) << lv.status();
  if (!xv.ok() || !lv.ok()) return split;
  split.x = *std::move(xv);
  split.labels = *std::move(lv);
  return split;
}

// A layer with latent weights drawn from N(0, 1 / in) (fixed seed) and
// packed from them, zero bias.
Layer RandomLayer(int64_t in, int64_t out, Activation activation,
                  ActivationQuant act_quant, DemoRandom& rng) {
  Layer layer;
  layer.spec = {.in_features = in,
                .out_features = out,
                .activation = activation,
                .act_quant = act_quant,
                .has_bias = true};
  layer.latent.resize(in * out);
  const double stddev = 1.0 / std::sqrt(static_cast<double>(in));
  for (float& w : layer.latent)
    w = static_cast<float>(rng.NextNormal() * stddev);
  absl::StatusOr<PackedTernaryMatrix> packed =
      QuantizeAndPack(layer.latent, out, in, ScaleGranularity::kPerRow);
  EXPECT_TRUE(packed.ok()) << packed.status();
  layer.weight = *std::move(packed);
  layer.bias.assign(out, 0.0f);
  return layer;
}

// Accuracy of the packed model through the inference oracle.
double HeldOutAccuracy(const Model& model, const Split& split) {
  std::vector<float> logits(split.rows * kClasses);
  absl::Status s =
      ReferenceForward(model, split.x.data(), split.rows, logits.data());
  EXPECT_TRUE(s.ok()) << s;
  int64_t correct = 0;
  for (int64_t r = 0; r < split.rows; ++r) {
    const float* z = logits.data() + r * kClasses;
    const int64_t predicted = std::max_element(z, z + kClasses) - z;
    correct += predicted == split.labels[r];
  }
  return static_cast<double>(correct) / static_cast<double>(split.rows);
}

// Both activation modes train well; int8 (BitNet b1.58) is the one the
// docs recommend, so it is the configuration the Admin API example uses.
class TrainingDigitsTest : public ::testing::TestWithParam<ActivationQuant> {};

TEST_P(TrainingDigitsTest, TernaryMlpLearnsHandwrittenDigits) {
  const ActivationQuant act_quant = GetParam();
  absl::StatusOr<safetensors::SafetensorsFile> file =
      safetensors::SafetensorsFile::Read(std::string(BITNET_TEST_DATA_DIR) +
                                         "/digits.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const Split train = LoadSplit(*file, "train");
  const Split test = LoadSplit(*file, "test");
  ASSERT_EQ(train.rows, 1437);
  ASSERT_EQ(test.rows, 360);

  DemoRandom rng(0x5eed'd191);
  Model model;
  model.layers.push_back(
      RandomLayer(kPixels, kHidden, Activation::kRelu, act_quant, rng));
  model.layers.push_back(
      RandomLayer(kHidden, kClasses, Activation::kIdentity, act_quant, rng));
  const double initial_accuracy = HeldOutAccuracy(model, test);

  TrainerOptions options;
  options.loss = LossKind::kSoftmaxCrossEntropy;
  options.optimizer.kind = OptimizerKind::kAdamW;
  options.optimizer.learning_rate = 3e-3f;
  options.optimizer.weight_decay = 0.0f;
  options.num_threads = 1;
  absl::StatusOr<std::unique_ptr<Trainer>> trainer =
      Trainer::Create(model, options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();

  constexpr int64_t kBatch = 32;
  constexpr int kEpochs = 15;
  std::vector<int64_t> order(train.rows);
  for (int64_t i = 0; i < train.rows; ++i) order[i] = i;
  std::vector<float> bx;
  std::vector<int32_t> by;
  const auto start = std::chrono::steady_clock::now();
  double epoch_loss = 0.0;
  for (int epoch = 0; epoch < kEpochs; ++epoch) {
    for (int64_t i = train.rows - 1; i > 0; --i) {  // Fisher-Yates
      std::swap(order[i], order[rng.NextU64() % static_cast<uint64_t>(i + 1)]);
    }
    epoch_loss = 0.0;
    int64_t batches = 0;
    for (int64_t begin = 0; begin < train.rows; begin += kBatch) {
      const int64_t rows = std::min(kBatch, train.rows - begin);
      bx.resize(rows * kPixels);
      by.resize(rows);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = order[begin + r];
        std::copy_n(train.x.begin() + src * kPixels, kPixels,
                    bx.begin() + r * kPixels);
        by[r] = train.labels[src];
      }
      absl::StatusOr<StepResult> step =
          (*trainer)->Step(bx, rows, std::span<const int32_t>(by));
      ASSERT_TRUE(step.ok()) << step.status();
      epoch_loss += step->loss;
      ++batches;
    }
    epoch_loss /= static_cast<double>(batches);
    std::printf("epoch %2d: mean train loss %.4f, held-out accuracy %.4f\n",
                epoch + 1, epoch_loss,
                HeldOutAccuracy((*trainer)->model(), test));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  const double final_accuracy =
      HeldOutAccuracy((*trainer)->ExportModel(), test);
  std::printf(
      "act_quant %s: held-out accuracy %.4f -> %.4f after %d epochs "
      "(%lld steps) in %.2f s\n",
      std::string(ActivationQuantName(act_quant)).c_str(), initial_accuracy,
      final_accuracy, kEpochs, static_cast<long long>((*trainer)->steps()),
      seconds);
  EXPECT_LT(initial_accuracy, 0.3);
  EXPECT_GE(final_accuracy, 0.90);
  EXPECT_LT(seconds, 60.0);
}

INSTANTIATE_TEST_SUITE_P(
    ActivationModes, TrainingDigitsTest,
    ::testing::Values(ActivationQuant::kInt8, ActivationQuant::kNone),
    [](const ::testing::TestParamInfo<ActivationQuant>& info) {
      return std::string(ActivationQuantName(info.param));
    });

}  // namespace
}  // namespace bitnet::training
