// Tests of kernels/ternary_format.h: bit-for-bit agreement with the reference
// Python project's packing (tests/fixtures/seed_packing.safetensors), round
// trips and validation of packed data from outside.
#include "kernels/ternary_format.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/ternary_gemm.h"
#include "nlohmann/json.hpp"

namespace bitnet {
namespace {

using ::testing::HasSubstr;

// A tiny safetensors reader for the fixture only (8-byte LE header length,
// JSON header, raw LE data). The product's reader lives in server/model/.
struct Tensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  template <typename T>
  std::vector<T> As() const {
    std::vector<T> out(bytes.size() / sizeof(T));
    std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
    return out;
  }
};

std::map<std::string, Tensor> ReadSafetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string file = ss.str();
  std::map<std::string, Tensor> out;
  if (file.size() < 8) return out;
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(file[i]);
  const nlohmann::json header = nlohmann::json::parse(file.substr(8, header_len));
  const size_t base = 8 + header_len;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    Tensor t;
    t.dtype = info.at("dtype").get<std::string>();
    t.shape = info.at("shape").get<std::vector<int64_t>>();
    const auto offsets = info.at("data_offsets").get<std::vector<size_t>>();
    t.bytes.assign(file.begin() + base + offsets[0], file.begin() + base + offsets[1]);
    out[name] = std::move(t);
  }
  return out;
}

class KernelsFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    tensors_ = new std::map<std::string, Tensor>(
        ReadSafetensors(std::string(BITNET_TEST_DATA_DIR) + "/seed_packing.safetensors"));
  }
  static void TearDownTestSuite() { delete tensors_; }
  const Tensor& Get(const std::string& suffix) {
    const std::string name = GetParam() + "." + suffix;
    auto it = tensors_->find(name);
    EXPECT_NE(it, tensors_->end()) << "fixture lacks " << name;
    return it->second;
  }
  static std::map<std::string, Tensor>* tensors_;
};
std::map<std::string, Tensor>* KernelsFixtureTest::tensors_ = nullptr;

TEST_P(KernelsFixtureTest, PackedWordsAndScalesMatchBitForBit) {
  const Tensor& weight = Get("weight");
  ASSERT_EQ(weight.dtype, "F32");
  const int64_t n = weight.shape[0], k = weight.shape[1];
  const std::vector<float> w = weight.As<float>();
  absl::StatusOr<PackedTernaryMatrix> packed =
      QuantizeAndPack(w, n, k, ScaleGranularity::kPerRow);
  ASSERT_TRUE(packed.ok()) << packed.status();

  const std::vector<float> want_scale = Get("scale").As<float>();
  ASSERT_EQ(packed->scales.size(), want_scale.size());
  for (size_t r = 0; r < want_scale.size(); ++r) {
    EXPECT_EQ(std::bit_cast<uint32_t>(packed->scales[r]),
              std::bit_cast<uint32_t>(want_scale[r]))
        << "row " << r << ": ours " << packed->scales[r] << " reference " << want_scale[r];
  }
  const Tensor& packed_t = Get("packed");
  ASSERT_EQ(packed_t.dtype, "I32");
  ASSERT_EQ(packed_t.shape, (std::vector<int64_t>{n, WordsPerRow(k)}));
  const std::vector<int32_t> want_words = packed_t.As<int32_t>();
  ASSERT_EQ(packed->words.size(), want_words.size());
  int mismatches = 0;
  for (size_t i = 0; i < want_words.size(); ++i) {
    if (packed->words[i] != want_words[i] && ++mismatches <= 5) {
      ADD_FAILURE() << "word " << i << " (row " << i / WordsPerRow(k) << "): ours 0x"
                    << std::hex << packed->words[i] << " reference 0x" << want_words[i];
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_TRUE(ValidatePacked(*packed).ok());
}

TEST_P(KernelsFixtureTest, GemmOnReferencePackingMatchesStoredOutput) {
  const Tensor& x_t = Get("x");
  const Tensor& y_t = Get("y");
  const Tensor& packed_t = Get("packed");
  const std::vector<float> x = x_t.As<float>();
  const std::vector<float> want = y_t.As<float>();
  const std::vector<int32_t> words = packed_t.As<int32_t>();
  const std::vector<float> scales = Get("scale").As<float>();
  const int64_t m = x_t.shape[0], n = y_t.shape[1], k = x_t.shape[1];
  PackedTernaryView view{n, k, words.data(), scales.data(), ScaleGranularity::kPerRow};
  ASSERT_TRUE(ValidatePacked(view).ok());

  TernaryGemmArgs args;
  args.m = m;
  args.x = x.data();
  args.weight = view;
  std::vector<float> ref(m * n, NAN), fast(m * n, NAN);
  args.y = ref.data();
  ASSERT_TRUE(ReferenceTernaryGemm(args).ok());
  args.y = fast.data();
  ASSERT_TRUE(CpuTernaryGemm(args, 2).ok());
  for (int64_t i = 0; i < m * n; ++i) {
    EXPECT_NEAR(ref[i], want[i], 1e-5 * std::fabs(want[i]) + 1e-30) << "oracle, element " << i;
    EXPECT_NEAR(fast[i], want[i], 1e-5 * std::fabs(want[i]) + 1e-30) << "fast, element " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, KernelsFixtureTest, ::testing::Values("a", "b", "c"));

TEST(KernelsTernaryFormatTest, TiesRoundHalfToEven) {
  // scale 1: w/scale = w exactly, so 0.5 -> 0, 1.5 -> 2 (clamped to 1), -0.5 -> 0.
  EXPECT_EQ(QuantizeTernary(0.5f, 1.0f), 0);
  EXPECT_EQ(QuantizeTernary(-0.5f, 1.0f), 0);
  EXPECT_EQ(QuantizeTernary(0.5000001f, 1.0f), 1);
  EXPECT_EQ(QuantizeTernary(1.5f, 1.0f), 1);
  EXPECT_EQ(QuantizeTernary(-2.5f, 1.0f), -1);
  EXPECT_EQ(QuantizeTernary(-0.0f, 1.0f), 0);
}

TEST(KernelsTernaryFormatTest, ScaleFloorForZeroWeights) {
  std::vector<float> w(3 * 20, 0.0f);
  w[40] = 1.0f;  // row 2 is non-zero
  auto packed = QuantizeAndPack(w, 3, 20, ScaleGranularity::kPerRow);
  ASSERT_TRUE(packed.ok());
  EXPECT_EQ(packed->scales[0], kWeightScaleFloor);
  EXPECT_EQ(packed->scales[1], kWeightScaleFloor);
  EXPECT_EQ(packed->scales[2], 1.0f / 20.0f);
  const std::vector<int8_t> q = UnpackTernary(packed->view());
  for (int64_t i = 0; i < 60; ++i) EXPECT_EQ(q[i], i == 40 ? 1 : 0) << i;
}

TEST(KernelsTernaryFormatTest, TorchAbsMeanMatchesExactMeanClosely) {
  // The cascade is a float sum, so it is close to (not equal to) the exact
  // mean; this guards against gross mistakes in the emulation.
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  for (int64_t len : {1, 3, 7, 8, 9, 31, 32, 33, 40, 128, 1000, 4096, 70001}) {
    std::vector<float> v(len);
    double exact = 0.0;
    for (float& f : v) {
      f = dist(rng);
      exact += std::fabs(f);
    }
    exact /= len;
    EXPECT_NEAR(TorchAbsMean(v), exact, 1e-5 * exact) << "len " << len;
  }
  EXPECT_EQ(TorchAbsMean({}), 0.0f);
}

class KernelsRoundTripTest : public ::testing::TestWithParam<std::tuple<int64_t, ScaleGranularity>> {};

TEST_P(KernelsRoundTripTest, PackUnpackDequantize) {
  const auto [k, granularity] = GetParam();
  const int64_t n = 7;
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist(0.0f, 0.3f);
  std::vector<float> w(n * k);
  for (float& f : w) f = dist(rng);
  auto packed = QuantizeAndPack(w, n, k, granularity);
  ASSERT_TRUE(packed.ok()) << packed.status();
  EXPECT_EQ(packed->words.size(), static_cast<size_t>(n * WordsPerRow(k)));
  EXPECT_EQ(packed->scales.size(), granularity == ScaleGranularity::kPerRow ? n : 1u);
  ASSERT_TRUE(ValidatePacked(*packed).ok());

  const std::vector<int8_t> q = UnpackTernary(packed->view());
  const std::vector<float> dq = Dequantize(packed->view());
  ASSERT_EQ(q.size(), w.size());
  int nonzero = 0;
  for (int64_t r = 0; r < n; ++r) {
    const float scale = packed->view().ScaleForRow(r);
    for (int64_t c = 0; c < k; ++c) {
      const int8_t want = QuantizeTernary(w[r * k + c], scale);
      ASSERT_EQ(q[r * k + c], want) << r << "," << c;
      ASSERT_EQ(dq[r * k + c], static_cast<float>(want) * scale);
      nonzero += want != 0;
    }
    // Padding codes are 1 (ternary zero).
    for (int64_t c = k; c < WordsPerRow(k) * kCodesPerWord; ++c) {
      const uint32_t word = static_cast<uint32_t>(packed->words[r * WordsPerRow(k) + c / 16]);
      ASSERT_EQ((word >> (2 * (c % 16))) & 3u, 1u) << "padding " << r << "," << c;
    }
  }
  EXPECT_GT(nonzero, 0);

  // Ternary inputs survive quantization unchanged.
  std::vector<float> t(n * k);
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(static_cast<int>(rng() % 3) - 1);
  auto packed_t = QuantizeAndPack(t, n, k, granularity);
  ASSERT_TRUE(packed_t.ok());
  const std::vector<int8_t> qt = UnpackTernary(packed_t->view());
  for (size_t i = 0; i < t.size(); ++i) ASSERT_EQ(qt[i], static_cast<int8_t>(t[i])) << i;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, KernelsRoundTripTest,
    ::testing::Combine(::testing::Values(1, 5, 16, 17, 31, 40, 129),
                       ::testing::Values(ScaleGranularity::kPerRow,
                                         ScaleGranularity::kPerTensor)));

TEST(KernelsTernaryFormatTest, QuantizeAndPackRejectsBadInput) {
  std::vector<float> w(6, 1.0f);
  EXPECT_THAT(QuantizeAndPack(w, 0, 6, ScaleGranularity::kPerRow).status().message(),
              HasSubstr("positive"));
  EXPECT_THAT(QuantizeAndPack(w, 2, 4, ScaleGranularity::kPerRow).status().message(),
              HasSubstr("6 elements"));
  w[4] = NAN;
  const absl::Status s = QuantizeAndPack(w, 2, 3, ScaleGranularity::kPerRow).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("weights[1, 1]"));
  w[4] = INFINITY;
  EXPECT_FALSE(QuantizeAndPack(w, 2, 3, ScaleGranularity::kPerTensor).ok());
  std::vector<float> huge(4, 3e38f);
  EXPECT_THAT(QuantizeAndPack(huge, 1, 4, ScaleGranularity::kPerRow).status().message(),
              HasSubstr("overflow"));
}

TEST(KernelsTernaryFormatTest, ValidatePackedRejectsBadData) {
  std::vector<float> w(2 * 20);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 3) - 1.0f;
  auto good = QuantizeAndPack(w, 2, 20, ScaleGranularity::kPerRow);
  ASSERT_TRUE(good.ok());
  ASSERT_TRUE(ValidatePacked(*good).ok());

  auto expect_invalid = [](const absl::Status& s, const std::string& part) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(part));
  };
  {  // code 3 inside the row
    PackedTernaryMatrix bad = *good;
    bad.words[1] |= 3 << 4;  // row 0, column 16+2
    expect_invalid(ValidatePacked(bad), "column 18");
    EXPECT_FALSE(CpuTernaryWeights::Prepare(bad.view()).ok());
  }
  {  // padding code 0 and 2 (columns 20.. of word 1)
    for (uint32_t code : {0u, 2u}) {
      PackedTernaryMatrix bad = *good;
      uint32_t word = static_cast<uint32_t>(bad.words[3]);  // row 1, word 1
      word = (word & ~(3u << 10)) | (code << 10);           // column 21
      bad.words[3] = static_cast<int32_t>(word);
      expect_invalid(ValidatePacked(bad), "padding code at column 21");
    }
  }
  for (float scale : {0.0f, -1.0f, NAN, INFINITY}) {
    PackedTernaryMatrix bad = *good;
    bad.scales[1] = scale;
    expect_invalid(ValidatePacked(bad), "scale 1");
  }
  {
    PackedTernaryMatrix bad = *good;
    bad.words.pop_back();
    expect_invalid(ValidatePacked(bad), "3 words, expected");
  }
  {
    PackedTernaryMatrix bad = *good;
    bad.granularity = ScaleGranularity::kPerTensor;  // 2 scales, expected 1
    expect_invalid(ValidatePacked(bad), "expected 1");
  }
  {
    PackedTernaryView v = good->view();
    v.rows = 0;
    expect_invalid(ValidatePacked(v), "positive");
    v = good->view();
    v.words = nullptr;
    expect_invalid(ValidatePacked(v), "words");
    v = good->view();
    v.scales = nullptr;
    expect_invalid(ValidatePacked(v), "scales");
  }
}

}  // namespace
}  // namespace bitnet
