// safetensors reader/writer (server/model/safetensors.h) and the F16/BF16
// conversions (server/host/half.h).
#include "server/model/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/ternary_format.h"
#include "server/host/half.h"

namespace bitnet::safetensors {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out;
}

// A file from a literal header and data section.
std::string MakeFile(const std::string& header, const std::string& data) {
  return LengthPrefix(header.size()) + header + data;
}

void ExpectInvalid(const std::string& bytes, const std::string& must_mention,
                   const std::string& must_also = "") {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes);
  ASSERT_FALSE(file.ok()) << "accepted a bad file; expected mention of " << must_mention;
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(must_mention));
  if (!must_also.empty()) {
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(must_also));
  }
}

std::string TempDir() {
  std::string dir = ::testing::TempDir() + "/model_safetensors_XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) std::abort();
  return dir;
}

// ---- the fixture written by the reference Python project ----

TEST(SafetensorsReadTest, ReadsTheReferenceFixture) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Read(std::string(BITNET_TEST_DATA_DIR) + "/seed_packing.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<std::string> names;
  for (const TensorInfo& t : file->tensors()) names.push_back(t.name);
  EXPECT_THAT(names, ElementsAre("a.packed", "a.scale", "a.weight", "a.x", "a.y", "b.packed",
                                 "b.scale", "b.weight", "b.x", "b.y", "c.packed", "c.scale",
                                 "c.weight", "c.x", "c.y"));
  const TensorInfo* w = file->Find("a.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kF32);
  EXPECT_THAT(w->shape, ElementsAre(24, 40));
  const TensorInfo* packed = file->Find("a.packed");
  ASSERT_NE(packed, nullptr);
  EXPECT_EQ(packed->dtype, DType::kI32);
  EXPECT_THAT(packed->shape, ElementsAre(24, 3));
  EXPECT_THAT(file->Find("c.packed")->shape, ElementsAre(64, 8));
  EXPECT_THAT(file->Find("b.scale")->shape, ElementsAre(4));
  EXPECT_EQ(file->Find("nope"), nullptr);
  EXPECT_THAT(file->metadata().at("source"), HasSubstr("pack_weights"));

  // The bytes come out where they belong: y = x @ dequantized(packed)^T.
  PackedTernaryMatrix m;
  m.rows = 24;
  m.cols = 40;
  m.words = *file->Copy<int32_t>(*packed, DType::kI32);
  m.scales = *file->Copy<float>(*file->Find("a.scale"), DType::kF32);
  ASSERT_TRUE(ValidatePacked(m.view()).ok());
  const std::vector<float> deq = Dequantize(m.view());
  const std::vector<float> x = *file->ToFloat(*file->Find("a.x"));
  const std::vector<float> y = *file->ToFloat(*file->Find("a.y"));
  ASSERT_EQ(x.size(), 5u * 40);
  for (int r = 0; r < 5; ++r) {
    for (int n = 0; n < 24; ++n) {
      double acc = 0;
      for (int k = 0; k < 40; ++k) acc += double(x[r * 40 + k]) * deq[n * 40 + k];
      EXPECT_NEAR(acc, y[r * 24 + n], 1e-4 * (1 + std::abs(acc))) << r << "," << n;
    }
  }
  // Asking for the wrong dtype is an error naming the tensor.
  absl::StatusOr<std::vector<float>> wrong = file->Copy<float>(*packed, DType::kF32);
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("a.packed"));
  EXPECT_FALSE(file->ToFloat(*packed).ok());
}

TEST(SafetensorsReadTest, MissingFileIsNotFound) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Read("/nonexistent/dir/x.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("/nonexistent/dir/x.safetensors"));
}

// ---- one test per validation rule ----

const std::string kGood =
    R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST(SafetensorsValidationTest, AcceptsTheMinimalGoodFile) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(MakeFile(kGood, std::string(8, 'x')));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors().size(), 1u);
}

TEST(SafetensorsValidationTest, ShorterThanEightBytes) {
  ExpectInvalid("abc", "shorter than the 8-byte header length");
  ExpectInvalid("", "0 bytes");
}

TEST(SafetensorsValidationTest, HeaderLongerThanFile) {
  std::string bytes = MakeFile(kGood, std::string(8, 'x'));
  ExpectInvalid(bytes.substr(0, 30), "header length", "truncated");
}

TEST(SafetensorsValidationTest, HeaderLongerThanLimit) {
  ExpectInvalid(LengthPrefix(kMaxHeaderBytes + 1) + "{}", "exceeds the limit");
}

TEST(SafetensorsValidationTest, HeaderNotJson) {
  ExpectInvalid(MakeFile(R"({"t": {"dtype": )", ""), "not valid JSON");
  ExpectInvalid(MakeFile("\xff\xfe", ""), "does not start with '{'");
}

TEST(SafetensorsValidationTest, HeaderNotAnObject) {
  ExpectInvalid(MakeFile("[1, 2]", ""), "not a JSON object");
}

TEST(SafetensorsValidationTest, DuplicateTensorName) {
  ExpectInvalid(MakeFile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                         std::string(8, 'x')),
                "\"t\" more than once");
}

TEST(SafetensorsValidationTest, UnknownDtype) {
  ExpectInvalid(MakeFile(R"({"w1":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}})",
                         std::string(2, 'x')),
                "\"w1\"", "unknown dtype \"F8_E9\"");
}

TEST(SafetensorsValidationTest, EntryNotAnObjectOrMissingField) {
  ExpectInvalid(MakeFile(R"({"w1":[1,2]})", ""), "\"w1\"", "expected an object");
  ExpectInvalid(MakeFile(R"({"w1":{"dtype":"F32","shape":[2]}})", std::string(8, 'x')),
                "\"w1\"", "missing field \"data_offsets\"");
  ExpectInvalid(MakeFile(R"({"w1":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})",
                         std::string(8, 'x')),
                "\"w1\"", "unknown field \"x\"");
  ExpectInvalid(MakeFile(R"({"w1":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})",
                         std::string(8, 'x')),
                "\"w1\"", "dtype is 7");
}

TEST(SafetensorsValidationTest, NegativeShape) {
  ExpectInvalid(MakeFile(R"({"w2":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,8]}})",
                         std::string(8, 'x')),
                "\"w2\"", "shape[1] is -3");
}

TEST(SafetensorsValidationTest, NonIntegerShape) {
  ExpectInvalid(MakeFile(R"({"w2":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})",
                         std::string(8, 'x')),
                "\"w2\"", "expected a non-negative integer");
  ExpectInvalid(MakeFile(R"({"w2":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})",
                         std::string(8, 'x')),
                "\"w2\"", "expected an array");
}

TEST(SafetensorsValidationTest, OverflowingShape) {
  ExpectInvalid(
      MakeFile(R"({"w3":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
               std::string(8, 'x')),
      "\"w3\"", "more elements than int64");
  ExpectInvalid(MakeFile(R"({"w3":{"dtype":"F32","shape":[18446744073709551615],)"
                         R"("data_offsets":[0,8]}})",
                         std::string(8, 'x')),
                "\"w3\"", "larger than int64");
  // Elements fit, bytes do not.
  ExpectInvalid(
      MakeFile(R"({"w3":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})",
               std::string(8, 'x')),
      "\"w3\"", "more bytes than int64");
}

TEST(SafetensorsValidationTest, OffsetsOutOfRange) {
  ExpectInvalid(MakeFile(R"({"w4":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                         std::string(8, 'x')),
                "\"w4\"", "out of range: the data section holds 8 bytes");
}

TEST(SafetensorsValidationTest, OffsetsMalformed) {
  ExpectInvalid(MakeFile(R"({"w4":{"dtype":"F32","shape":[2],"data_offsets":[0]}})",
                         std::string(8, 'x')),
                "\"w4\"", "expected [begin, end]");
  ExpectInvalid(MakeFile(R"({"w4":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})",
                         std::string(8, 'x')),
                "\"w4\"", "data_offsets[0] is -8");
}

TEST(SafetensorsValidationTest, EndBeforeBegin) {
  ExpectInvalid(MakeFile(R"({"w5":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})",
                         std::string(8, 'x')),
                "\"w5\"", "end before begin");
}

TEST(SafetensorsValidationTest, SizeDoesNotMatchShape) {
  ExpectInvalid(MakeFile(R"({"w6":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                         std::string(8, 'x')),
                "\"w6\"", "hold 8 bytes, expected 12");
}

TEST(SafetensorsValidationTest, OverlappingTensors) {
  ExpectInvalid(MakeFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         std::string(12, 'x')),
                "\"b\"", "overlaps tensor \"a\"");
}

TEST(SafetensorsValidationTest, GapBetweenTensors) {
  ExpectInvalid(MakeFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                         std::string(12, 'x')),
                "gap of 4 unused bytes before tensor \"b\"");
  ExpectInvalid(MakeFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                         std::string(8, 'x')),
                "before tensor \"a\"", "start of the data section");
}

TEST(SafetensorsValidationTest, TrailingBytes) {
  ExpectInvalid(MakeFile(kGood, std::string(9, 'x')), "1 trailing bytes", "\"t\"");
}

TEST(SafetensorsValidationTest, MetadataNotStrings) {
  ExpectInvalid(MakeFile(R"({"__metadata__":{"format":"x","version":1}})", ""),
                "__metadata__ entry \"version\"", "expected a string");
  ExpectInvalid(MakeFile(R"({"__metadata__":["x"]})", ""), "__metadata__ is a JSON array");
}

TEST(SafetensorsValidationTest, ZeroSizedTensorsAreFine) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(
      MakeFile(R"({"e":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]},)"
               R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
               std::string(8, 'x')));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->Find("e")->num_elements(), 0);
}

// ---- writer ----

TEST(SafetensorsWriteTest, RoundTripAlignedAndPadded) {
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f};
  const std::vector<int32_t> i32 = {7, -8};
  const std::vector<uint16_t> f16 = {FloatToHalf(0.5f)};  // 2 bytes: would misalign others
  const std::vector<double> f64 = {1e300};
  absl::StatusOr<std::string> bytes =
      Serialize({{"z.f16", DType::kF16, {1}, BytesOf(f16)},
                 {"b.f32", DType::kF32, {3}, BytesOf(f32)},
                 {"a.i32", DType::kI32, {1, 2}, BytesOf(i32)},
                 {"c.f64", DType::kF64, {1}, BytesOf(f64)}},
                {{"k", "v"}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  uint64_t header = 0;
  std::memcpy(&header, bytes->data(), 8);
  EXPECT_EQ(header % 8, 0u);

  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("k"), "v");
  for (const TensorInfo& t : file->tensors()) {
    EXPECT_EQ(t.begin % DTypeSize(t.dtype), 0) << t.name << " misaligned";
  }
  EXPECT_EQ(*file->Copy<float>(*file->Find("b.f32"), DType::kF32), f32);
  EXPECT_EQ(*file->Copy<int32_t>(*file->Find("a.i32"), DType::kI32), i32);
  EXPECT_THAT(file->Find("a.i32")->shape, ElementsAre(1, 2));
  EXPECT_EQ(*file->Copy<double>(*file->Find("c.f64"), DType::kF64), f64);
  EXPECT_THAT(*file->ToFloat(*file->Find("z.f16")), ElementsAre(0.5f));
}

TEST(SafetensorsWriteTest, RejectsInconsistentTensors) {
  const std::vector<float> three = {1, 2, 3};
  absl::StatusOr<std::string> bad = Serialize({{"w", DType::kF32, {4}, BytesOf(three)}}, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("\"w\""));
  bad = Serialize({{"w", DType::kF32, {3}, BytesOf(three)}, {"w", DType::kF32, {3}, BytesOf(three)}},
                  {});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("given twice"));
  bad = Serialize({{"__metadata__", DType::kF32, {3}, BytesOf(three)}}, {});
  EXPECT_FALSE(bad.ok());
  bad = Serialize({{"w", DType::kF32, {-3}, BytesOf(three)}}, {});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("negative dimension"));
}

TEST(SafetensorsWriteTest, WriteFileAtomicallyReplacesAndLeavesNoTemp) {
  const std::string dir = TempDir();
  const std::string path = dir + "/m.safetensors";
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "second").ok());
  EXPECT_EQ(*ReadFileToString(path), "second");
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    ++entries;
    EXPECT_EQ(e.path().filename(), "m.safetensors");
  }
  EXPECT_EQ(entries, 1);
  absl::Status missing_dir = WriteFileAtomically(dir + "/no/such/dir/x", "x");
  EXPECT_EQ(missing_dir.code(), absl::StatusCode::kNotFound) << missing_dir;
  std::filesystem::remove_all(dir);
}

// ---- half conversions ----

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // ties to even -> overflow
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (0)
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp -> 2 (even)
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::nanf("")))));
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(BFloat16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(FloatToBFloat16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie -> even
  EXPECT_EQ(FloatToBFloat16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
}

TEST(HalfTest, EveryHalfRoundTrips) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const float f = HalfToFloat(h);
    if (std::isnan(f)) {
      EXPECT_EQ(h & 0x7c00, 0x7c00);
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), h) << std::hex << bits;
    ASSERT_EQ(BFloat16ToFloat(FloatToBFloat16(f)) == f, (std::bit_cast<uint32_t>(f) & 0xffff) == 0);
  }
}

TEST(HalfTest, RoundsToNearestHalf) {
  // Against a brute-force nearest-value search over all finite halves.
  std::vector<float> halves;
  for (uint32_t b = 0; b < 0x7c00; ++b) halves.push_back(HalfToFloat(static_cast<uint16_t>(b)));
  uint64_t state = 12345;
  for (int i = 0; i < 20000; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const float v = std::ldexp(static_cast<float>(state >> 40) / (1 << 24), -26 + int(state % 42));
    const uint16_t h = FloatToHalf(v);
    const float got = HalfToFloat(h);
    auto it = std::lower_bound(halves.begin(), halves.end(), v);
    if (it == halves.end()) continue;  // overflow range
    const float above = *it;
    const float below = it == halves.begin() ? above : *(it - 1);
    const float nearest = (v - below) < (above - v) ? below : above;
    if ((v - below) == (above - v)) continue;  // ties checked above
    ASSERT_EQ(got, nearest) << v;
  }
}

}  // namespace
}  // namespace bitnet::safetensors
