// The whole-model oracle (server/model/reference_forward.h), checked against
// an independent layer-by-layer computation from the dequantized weights.
#include "server/model/reference_forward.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "server/model/demo_model.h"
#include "server/model/model.h"

namespace bitnet {
namespace {

using ::testing::HasSubstr;

std::vector<float> Inputs(int64_t n, uint64_t seed) {
  DemoRandom r(seed);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = static_cast<float>(r.NextNormal());
  return x;
}

double Act(Activation a, double v) {
  switch (a) {
    case Activation::kIdentity: return v;
    case Activation::kRelu: return v > 0 ? v : 0;
    case Activation::kGelu: return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    case Activation::kSilu: return v / (1 + std::exp(-v));
  }
  return v;
}

// fp32-activation model: y = act(x W^T + b) per layer, in double.
std::vector<double> Expected(const Model& m, const std::vector<float>& x, int64_t rows) {
  std::vector<double> cur(x.begin(), x.end());
  for (const Layer& l : m.layers) {
    const int64_t k = l.spec.in_features, n = l.spec.out_features;
    const std::vector<float> w = Dequantize(l.weight.view());
    std::vector<double> next(static_cast<size_t>(rows * n));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = l.spec.has_bias ? l.bias[j] : 0.0;
        for (int64_t i = 0; i < k; ++i) acc += cur[r * k + i] * w[j * k + i];
        next[r * n + j] = Act(l.spec.activation, acc);
      }
    }
    cur = std::move(next);
  }
  return cur;
}

Model FloatModel() {
  Model m = MakeDemoModel(DemoModelSize::kSmall);
  for (Layer& l : m.layers) l.spec.act_quant = ActivationQuant::kNone;
  m.layers[0].spec.activation = Activation::kGelu;
  return m;
}

TEST(ReferenceForwardTest, MatchesLayerByLayerMathInFloatMode) {
  const Model m = FloatModel();
  const int64_t rows = 7;
  const std::vector<float> x = Inputs(rows * m.input_features(), 3);
  std::vector<float> y(rows * m.output_features(), -999.0f);
  ASSERT_TRUE(ReferenceForward(m, x.data(), rows, y.data()).ok());
  const std::vector<double> want = Expected(m, x, rows);
  for (size_t i = 0; i < y.size(); ++i) {
    EXPECT_NEAR(y[i], want[i], 1e-4 * (1 + std::abs(want[i]))) << i;
  }
}

TEST(ReferenceForwardTest, Int8ModeStaysCloseToFloatMath) {
  // int8 activation quantization loses < 1% of each row's range; through two
  // layers the output stays within a few percent of the unquantized math.
  const Model m = MakeDemoModel(DemoModelSize::kSmall);
  const int64_t rows = 5;
  const std::vector<float> x = Inputs(rows * m.input_features(), 4);
  std::vector<float> y(rows * m.output_features());
  ASSERT_TRUE(ReferenceForward(m, x.data(), rows, y.data()).ok());
  const std::vector<double> want = Expected(m, x, rows);
  double max_abs = 0, max_err = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    max_abs = std::max(max_abs, std::abs(want[i]));
    max_err = std::max(max_err, std::abs(y[i] - want[i]));
  }
  EXPECT_GT(max_abs, 0.1);
  EXPECT_LT(max_err, 0.05 * max_abs);
  // And it is not simply the float path: quantization changes some outputs.
  Model float_model = m;
  for (Layer& l : float_model.layers) l.spec.act_quant = ActivationQuant::kNone;
  std::vector<float> y_float(y.size());
  ASSERT_TRUE(ReferenceForward(float_model, x.data(), rows, y_float.data()).ok());
  EXPECT_NE(y, y_float);
}

TEST(ReferenceForwardTest, RowsAreIndependent) {
  const Model m = MakeDemoModel(DemoModelSize::kSmall);
  const int64_t rows = 6;
  const std::vector<float> x = Inputs(rows * m.input_features(), 5);
  std::vector<float> all(rows * m.output_features());
  ASSERT_TRUE(ReferenceForward(m, x.data(), rows, all.data()).ok());
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> one(m.output_features());
    ASSERT_TRUE(
        ReferenceForward(m, x.data() + r * m.input_features(), 1, one.data()).ok());
    EXPECT_TRUE(std::equal(one.begin(), one.end(), all.begin() + r * m.output_features()))
        << "row " << r;
  }
}

TEST(ReferenceForwardTest, Errors) {
  const Model m = MakeDemoModel(DemoModelSize::kSmall);
  std::vector<float> x(64), y(32);
  EXPECT_TRUE(ReferenceForward(m, nullptr, 0, nullptr).ok());
  EXPECT_EQ(ReferenceForward(m, x.data(), -1, y.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceForward(m, nullptr, 1, y.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReferenceForward(Model{}, x.data(), 1, y.data()).code(),
            absl::StatusCode::kInvalidArgument);
  Model broken = m;
  broken.layers[1].weight.words.resize(3);
  absl::Status s = ReferenceForward(broken, x.data(), 1, y.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("layers.1.weight.packed"));
}

}  // namespace
}  // namespace bitnet
