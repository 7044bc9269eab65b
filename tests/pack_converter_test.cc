// bitnet-pack (tools/pack_converter.h, tools/pack_cli.h and the binary):
// float safetensors in F32/F16/BF16 -> packed model equal to QuantizeAndPack
// of the same floats; errors name the tensor; exit codes 0/1/2.
#include "tools/pack_converter.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/ternary_format.h"
#include "server/model/demo_model.h"
#include "server/host/half.h"
#include "server/model/model_file.h"
#include "server/model/safetensors.h"
#include "tools/pack_cli.h"

namespace bitnet::pack {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using safetensors::DType;
using safetensors::SafetensorsFile;

// A float tensor stored in `dtype`, plus the fp32 values a reader decodes
// from it (what the converter must quantize).
struct FloatTensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
  std::vector<float> decoded;
};

FloatTensor Encode(const std::vector<float>& values, std::vector<int64_t> shape, DType dtype) {
  FloatTensor t{dtype, std::move(shape), {}, {}};
  for (float v : values) {
    if (dtype == DType::kF32) {
      t.bytes.append(reinterpret_cast<const char*>(&v), 4);
      t.decoded.push_back(v);
    } else {
      const uint16_t bits = dtype == DType::kF16 ? FloatToHalf(v) : FloatToBFloat16(v);
      t.bytes.append(reinterpret_cast<const char*>(&bits), 2);
      t.decoded.push_back(dtype == DType::kF16 ? HalfToFloat(bits) : BFloat16ToFloat(bits));
    }
  }
  return t;
}

std::vector<float> Random(int64_t n, uint64_t seed, double stddev = 0.05) {
  DemoRandom r(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(r.NextNormal() * stddev);
  return v;
}

std::string Build(const std::map<std::string, FloatTensor>& tensors) {
  std::vector<safetensors::TensorToWrite> list;
  for (const auto& [name, t] : tensors) list.push_back({name, t.dtype, t.shape, t.bytes});
  absl::StatusOr<std::string> bytes = safetensors::Serialize(list, {{"source", "test"}});
  if (!bytes.ok()) std::abort();
  return *bytes;
}

SafetensorsFile Parse(const std::map<std::string, FloatTensor>& tensors) {
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(Build(tensors));
  if (!f.ok()) std::abort();
  return *std::move(f);
}

// An nn.Sequential-like float model: fc.2 (F32, bias F32) -> fc.10 (F16, bias
// BF16) -> fc.11 (BF16, no bias). Names chosen so that string order (fc.10,
// fc.11, fc.2) differs from numeric order (fc.2, fc.10, fc.11).
std::map<std::string, FloatTensor> ThreeLayerFloatModel() {
  std::map<std::string, FloatTensor> t;
  t["fc.2.weight"] = Encode(Random(24 * 20, 1), {24, 20}, DType::kF32);
  t["fc.2.bias"] = Encode(Random(24, 2), {24}, DType::kF32);
  t["fc.10.weight"] = Encode(Random(16 * 24, 3), {16, 24}, DType::kF16);
  t["fc.10.bias"] = Encode(Random(16, 4), {16}, DType::kBF16);
  t["fc.11.weight"] = Encode(Random(3 * 16, 5), {3, 16}, DType::kBF16);
  return t;
}

std::string TempDir() {
  std::string dir = ::testing::TempDir() + "/pack_test_XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) std::abort();
  return dir;
}

void ExpectLayerIs(const Layer& layer, const FloatTensor& weight, ScaleGranularity g) {
  const int64_t out = weight.shape[0], in = weight.shape[1];
  absl::StatusOr<PackedTernaryMatrix> want = QuantizeAndPack(weight.decoded, out, in, g);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(layer.spec.in_features, in);
  EXPECT_EQ(layer.spec.out_features, out);
  EXPECT_EQ(layer.weight.granularity, g);
  EXPECT_EQ(layer.weight.words, want->words);
  EXPECT_EQ(layer.weight.scales, want->scales);
}

TEST(NaturalLessTest, NumbersCompareAsNumbers) {
  std::vector<std::string> names = {"layers.10", "layers.9", "fc.b", "layers.1", "fc.a",
                                    "layers.100", "layers.2.sub.3", "layers.2.sub.20"};
  std::sort(names.begin(), names.end(),
            [](const std::string& a, const std::string& b) { return NaturalLess(a, b); });
  EXPECT_THAT(names, ElementsAre("fc.a", "fc.b", "layers.1", "layers.2.sub.3",
                                 "layers.2.sub.20", "layers.9", "layers.10", "layers.100"));
}

TEST(ConvertTest, F32F16Bf16LayersInNumericOrder) {
  const auto tensors = ThreeLayerFloatModel();
  for (ScaleGranularity g : {ScaleGranularity::kPerRow, ScaleGranularity::kPerTensor}) {
    ConvertOptions options;
    options.scale = g;
    options.keep_latent = true;
    absl::StatusOr<ConvertResult> r = ConvertFloatModel(Parse(tensors), options);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_THAT(r->layer_prefixes, ElementsAre("fc.2", "fc.10", "fc.11"));
    EXPECT_TRUE(r->ignored_tensors.empty());
    const Model& m = r->model;
    ASSERT_EQ(m.layers.size(), 3u);
    ExpectLayerIs(m.layers[0], tensors.at("fc.2.weight"), g);
    ExpectLayerIs(m.layers[1], tensors.at("fc.10.weight"), g);
    ExpectLayerIs(m.layers[2], tensors.at("fc.11.weight"), g);
    EXPECT_EQ(m.layers[0].bias, tensors.at("fc.2.bias").decoded);
    EXPECT_EQ(m.layers[1].bias, tensors.at("fc.10.bias").decoded);
    EXPECT_FALSE(m.layers[2].spec.has_bias);
    EXPECT_EQ(m.layers[1].latent, tensors.at("fc.10.weight").decoded);
    EXPECT_EQ(m.layers[0].spec.activation, Activation::kRelu);
    EXPECT_EQ(m.layers[1].spec.activation, Activation::kRelu);
    EXPECT_EQ(m.layers[2].spec.activation, Activation::kIdentity);
    for (const Layer& l : m.layers) EXPECT_EQ(l.spec.act_quant, ActivationQuant::kInt8);
  }
}

TEST(ConvertTest, OptionsAndExplicitLayerOrder) {
  auto tensors = ThreeLayerFloatModel();
  tensors["norm.weight"] = Encode(Random(3, 9), {3}, DType::kF32);  // not a linear layer
  ConvertOptions options;
  options.layers = {"fc.2.weight", "fc.10"};
  options.activation = Activation::kSilu;
  options.act_quant = ActivationQuant::kNone;
  absl::StatusOr<ConvertResult> r = ConvertFloatModel(Parse(tensors), options);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->model.layers.size(), 2u);
  EXPECT_EQ(r->model.layers[0].spec.activation, Activation::kSilu);
  EXPECT_EQ(r->model.layers[1].spec.activation, Activation::kIdentity);
  EXPECT_EQ(r->model.layers[0].spec.act_quant, ActivationQuant::kNone);
  EXPECT_TRUE(r->model.layers[0].latent.empty());
  EXPECT_THAT(r->ignored_tensors, ElementsAre("fc.11.weight", "norm.weight"));
}

void ExpectConvertError(const std::map<std::string, FloatTensor>& tensors,
                        const ConvertOptions& options, absl::StatusCode code,
                        const std::string& names, const std::string& also = "") {
  absl::StatusOr<ConvertResult> r = ConvertFloatModel(Parse(tensors), options);
  ASSERT_FALSE(r.ok()) << "converted; expected an error naming " << names;
  EXPECT_EQ(r.status().code(), code) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(names));
  if (!also.empty()) {
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(also));
  }
}

TEST(ConvertTest, NonFiniteWeightNamesRowAndCol) {
  auto tensors = ThreeLayerFloatModel();
  std::vector<float> w = tensors.at("fc.10.weight").decoded;
  w[5 * 24 + 7] = std::numeric_limits<float>::infinity();
  tensors["fc.10.weight"] = Encode(w, {16, 24}, DType::kF16);
  ExpectConvertError(tensors, {}, absl::StatusCode::kInvalidArgument, "\"fc.10.weight\"",
                     "non-finite value inf at row 5 col 7");
}

TEST(ConvertTest, NonFiniteBias) {
  auto tensors = ThreeLayerFloatModel();
  std::vector<float> b = tensors.at("fc.2.bias").decoded;
  b[3] = std::nanf("");
  tensors["fc.2.bias"] = Encode(b, {24}, DType::kF32);
  ExpectConvertError(tensors, {}, absl::StatusCode::kInvalidArgument, "\"fc.2.bias\"",
                     "at index 3");
}

TEST(ConvertTest, LayersThatDoNotChain) {
  auto tensors = ThreeLayerFloatModel();
  tensors["fc.10.weight"] = Encode(Random(16 * 25, 3), {16, 25}, DType::kF32);
  ExpectConvertError(tensors, {}, absl::StatusCode::kInvalidArgument, "\"fc.10.weight\"",
                     "do not chain");
}

TEST(ConvertTest, OtherTensorsNeedExplicitLayers) {
  auto tensors = ThreeLayerFloatModel();
  tensors["norm.weight"] = Encode(Random(3, 9), {3}, DType::kF32);
  ExpectConvertError(tensors, {}, absl::StatusCode::kInvalidArgument, "\"norm.weight\"",
                     "--layers");
  tensors.erase("norm.weight");
  tensors["embedding.table"] = Encode(Random(3, 9), {3}, DType::kF32);
  ExpectConvertError(tensors, {}, absl::StatusCode::kInvalidArgument, "\"embedding.table\"",
                     "--layers");
}

TEST(ConvertTest, BadTensors) {
  auto tensors = ThreeLayerFloatModel();
  tensors["fc.2.bias"] = Encode(Random(23, 2), {23}, DType::kF32);
  ExpectConvertError(tensors, {}, absl::StatusCode::kInvalidArgument, "\"fc.2.bias\"",
                     "expected [24]");

  tensors = ThreeLayerFloatModel();
  FloatTensor ints = tensors.at("fc.11.weight");
  ints.dtype = DType::kI16;  // same byte size
  tensors["fc.11.weight"] = ints;
  ExpectConvertError(tensors, {}, absl::StatusCode::kInvalidArgument, "\"fc.11.weight\"",
                     "dtype I16");

  ConvertOptions options;
  options.layers = {"fc.2", "fc.3"};
  ExpectConvertError(ThreeLayerFloatModel(), options, absl::StatusCode::kNotFound,
                     "\"fc.3.weight\"");
  ExpectConvertError({}, {}, absl::StatusCode::kInvalidArgument, "nothing to convert");
}

// ---- the command line ----

struct CliResult {
  int code;
  std::string out, err;
};

CliResult Cli(std::vector<std::string> args) {
  std::ostringstream out, err;
  const int code = RunBitnetPack(args, out, err);
  return {code, out.str(), err.str()};
}

TEST(CliTest, UsageErrorsExitWith2) {
  EXPECT_EQ(Cli({}).code, kExitUsage);
  CliResult help = Cli({"--help"});
  EXPECT_EQ(help.code, kExitOk);
  EXPECT_THAT(help.out, HasSubstr("bitnet-pack convert"));
  EXPECT_EQ(Cli({"convert", "a"}).code, kExitUsage);
  EXPECT_EQ(Cli({"convert", "a", "b", "--scale", "per-col"}).code, kExitUsage);
  EXPECT_EQ(Cli({"convert", "a", "b", "--activation", "tanh"}).code, kExitUsage);
  EXPECT_EQ(Cli({"convert", "a", "b", "--act-quant"}).code, kExitUsage);
  EXPECT_EQ(Cli({"convert", "a", "b", "--bogus"}).code, kExitUsage);
  EXPECT_EQ(Cli({"inspect", "a", "--scale=per-row"}).code, kExitUsage);
  EXPECT_EQ(Cli({"--demo", "--size", "huge", "x"}).code, kExitUsage);
  CliResult unknown = Cli({"frobnicate"});
  EXPECT_EQ(unknown.code, kExitUsage);
  EXPECT_THAT(unknown.err, HasSubstr("unknown command \"frobnicate\""));
}

TEST(CliTest, ConvertInspectRoundTrip) {
  const std::string dir = TempDir();
  const auto tensors = ThreeLayerFloatModel();
  ASSERT_TRUE(safetensors::WriteFileAtomically(dir + "/float.safetensors", Build(tensors)).ok());

  CliResult r = Cli({"convert", dir + "/float.safetensors", dir + "/packed.safetensors",
                     "--scale=per-tensor", "--act-quant", "none", "--keep-latent"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("layers: fc.2 fc.10 fc.11"));
  absl::StatusOr<Model> m = ReadModelFile(dir + "/packed.safetensors");
  ASSERT_TRUE(m.ok()) << m.status();
  ExpectLayerIs(m->layers[1], tensors.at("fc.10.weight"), ScaleGranularity::kPerTensor);
  EXPECT_EQ(m->layers[2].latent, tensors.at("fc.11.weight").decoded);

  CliResult inspect = Cli({"inspect", dir + "/packed.safetensors"});
  ASSERT_EQ(inspect.code, kExitOk) << inspect.err;
  EXPECT_THAT(inspect.out, HasSubstr("format_version 1"));
  EXPECT_THAT(inspect.out, HasSubstr("layer 1: 24 -> 16  activation relu  act_quant none  "
                                     "scale per-tensor  bias yes  latent yes"));
  EXPECT_THAT(inspect.out, HasSubstr("layer 2: 16 -> 3  activation identity"));

  CliResult missing = Cli({"convert", dir + "/nope.safetensors", dir + "/x.safetensors"});
  EXPECT_EQ(missing.code, kExitRuntimeError);
  EXPECT_THAT(missing.err, HasSubstr("nope.safetensors"));
  CliResult not_a_model = Cli({"inspect", dir + "/float.safetensors"});
  EXPECT_EQ(not_a_model.code, kExitRuntimeError);
  EXPECT_THAT(not_a_model.err, HasSubstr("\"format\""));
  std::filesystem::remove_all(dir);
}

TEST(CliTest, DemoAndCompressionRatio) {
  const std::string dir = TempDir();
  CliResult r = Cli({"--demo", "--size", "small", dir + "/demo.safetensors"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  absl::StatusOr<Model> m = ReadModelFile(dir + "/demo.safetensors");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(SerializeModelFile(*m), SerializeModelFile(MakeDemoModel(DemoModelSize::kSmall)));
  CliResult inspect = Cli({"inspect", dir + "/demo.safetensors"});
  ASSERT_EQ(inspect.code, kExitOk);
  // 64*128 + 128*32 = 12288 weights: 3072 packed bytes, 49152 fp32, 24576 fp16.
  EXPECT_THAT(inspect.out, HasSubstr("packed weights: 3072 bytes"));
  EXPECT_THAT(inspect.out, HasSubstr("fp32 equivalent: 49152 bytes (16.00x"));
  EXPECT_THAT(inspect.out, HasSubstr("fp16 equivalent: 24576 bytes (8.00x"));
  std::filesystem::remove_all(dir);
}

// ---- the real binary ----

int RunBinary(const std::string& args) {
  const std::string command = std::string(BITNET_PACK_BINARY) + " " + args + " >/dev/null 2>&1";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(BinaryTest, EndToEndExitCodes) {
  const std::string dir = TempDir();
  const auto tensors = ThreeLayerFloatModel();
  ASSERT_TRUE(safetensors::WriteFileAtomically(dir + "/float.safetensors", Build(tensors)).ok());
  EXPECT_EQ(RunBinary("--help"), 0);
  EXPECT_EQ(RunBinary(""), 2);
  EXPECT_EQ(RunBinary("convert " + dir + "/float.safetensors"), 2);
  EXPECT_EQ(RunBinary("convert " + dir + "/missing.safetensors " + dir + "/out.safetensors"), 1);
  ASSERT_EQ(RunBinary("convert " + dir + "/float.safetensors " + dir + "/out.safetensors"), 0);
  EXPECT_EQ(RunBinary("inspect " + dir + "/out.safetensors"), 0);

  // The binary's output equals QuantizeAndPack of the decoded floats.
  absl::StatusOr<Model> m = ReadModelFile(dir + "/out.safetensors");
  ASSERT_TRUE(m.ok()) << m.status();
  ExpectLayerIs(m->layers[0], tensors.at("fc.2.weight"), ScaleGranularity::kPerRow);
  ExpectLayerIs(m->layers[1], tensors.at("fc.10.weight"), ScaleGranularity::kPerRow);
  ExpectLayerIs(m->layers[2], tensors.at("fc.11.weight"), ScaleGranularity::kPerRow);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace bitnet::pack
