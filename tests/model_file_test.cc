// The packed model file (server/model/model_file.h) and ValidateModel /
// Model::PackedBytes (server/model/model.h). Corrupted files are built
// programmatically, one test per validation rule; each checks the code and
// that the message names the tensor or field at fault.
#include "server/model/model_file.h"

#include <unistd.h>

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
#include "nlohmann/json.hpp"
#include "server/model/model.h"
#include "server/model/safetensors.h"

namespace bitnet {
namespace {

using ::testing::HasSubstr;
using safetensors::DType;

// Deterministic test data (no dependency on the demo generator).
std::vector<float> Weights(int64_t n, uint64_t seed) {
  std::vector<float> out(static_cast<size_t>(n));
  for (float& v : out) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<float>(static_cast<int64_t>(seed >> 33) % 2001 - 1000) / 1000.0f;
  }
  return out;
}

Layer MakeLayer(int64_t in, int64_t out, ScaleGranularity g, bool bias, bool latent,
                Activation act, ActivationQuant quant, uint64_t seed) {
  Layer layer;
  layer.spec = {in, out, act, quant, bias};
  std::vector<float> w = Weights(in * out, seed);
  layer.weight = *QuantizeAndPack(w, out, in, g);
  if (bias) layer.bias = Weights(out, seed + 1);
  if (latent) layer.latent = w;
  return layer;
}

// Three layers with K not a multiple of 16 (padding present).
Model TestModel(ScaleGranularity g, bool bias, bool latent) {
  Model m;
  m.layers.push_back(MakeLayer(20, 33, g, bias, latent, Activation::kRelu,
                               ActivationQuant::kInt8, 1));
  m.layers.push_back(MakeLayer(33, 17, g, bias, latent, Activation::kGelu,
                               ActivationQuant::kNone, 2));
  m.layers.push_back(MakeLayer(17, 5, g, bias, latent, Activation::kIdentity,
                               ActivationQuant::kInt8, 3));
  return m;
}

void ExpectSameModel(const Model& a, const Model& b) {
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const Layer& x = a.layers[i];
    const Layer& y = b.layers[i];
    EXPECT_EQ(x.spec.in_features, y.spec.in_features) << i;
    EXPECT_EQ(x.spec.out_features, y.spec.out_features) << i;
    EXPECT_EQ(x.spec.activation, y.spec.activation) << i;
    EXPECT_EQ(x.spec.act_quant, y.spec.act_quant) << i;
    EXPECT_EQ(x.spec.has_bias, y.spec.has_bias) << i;
    EXPECT_EQ(x.weight.rows, y.weight.rows) << i;
    EXPECT_EQ(x.weight.cols, y.weight.cols) << i;
    EXPECT_EQ(x.weight.granularity, y.weight.granularity) << i;
    EXPECT_EQ(x.weight.words, y.weight.words) << i;
    EXPECT_EQ(x.weight.scales, y.weight.scales) << i;
    EXPECT_EQ(x.bias, y.bias) << i;
    EXPECT_EQ(x.latent, y.latent) << i;
  }
}

std::string TempDir() {
  std::string dir = ::testing::TempDir() + "/model_file_XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) std::abort();
  return dir;
}

// ---- round trips ----

struct RoundTripCase {
  ScaleGranularity granularity;
  bool bias;
  bool latent;
};

class ModelFileRoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(ModelFileRoundTripTest, SerializeParse) {
  const RoundTripCase c = GetParam();
  const Model model = TestModel(c.granularity, c.bias, c.latent);
  ASSERT_TRUE(ValidateModel(model).ok()) << ValidateModel(model);
  const std::string bytes = SerializeModelFile(model);
  ASSERT_FALSE(bytes.empty());
  absl::StatusOr<Model> parsed = ParseModelFile(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameModel(model, *parsed);
  // Deterministic bytes: serializing the parsed model gives the same file.
  EXPECT_EQ(SerializeModelFile(*parsed), bytes);
}

TEST_P(ModelFileRoundTripTest, WriteRead) {
  const RoundTripCase c = GetParam();
  const Model model = TestModel(c.granularity, c.bias, c.latent);
  const std::string dir = TempDir();
  const std::string path = dir + "/model.safetensors";
  ASSERT_TRUE(WriteModelFile(model, path).ok());
  absl::StatusOr<Model> read = ReadModelFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  ExpectSameModel(model, *read);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, ModelFileRoundTripTest,
    ::testing::Values(RoundTripCase{ScaleGranularity::kPerRow, false, false},
                      RoundTripCase{ScaleGranularity::kPerRow, true, false},
                      RoundTripCase{ScaleGranularity::kPerRow, true, true},
                      RoundTripCase{ScaleGranularity::kPerTensor, false, true},
                      RoundTripCase{ScaleGranularity::kPerTensor, true, false},
                      RoundTripCase{ScaleGranularity::kPerTensor, true, true}));

TEST(ModelFileTest, FileLayoutIsTheDocumentedOne) {
  const Model model = TestModel(ScaleGranularity::kPerTensor, true, true);
  absl::StatusOr<safetensors::SafetensorsFile> file =
      safetensors::SafetensorsFile::Parse(SerializeModelFile(model));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("format"), "bitnet-serve");
  EXPECT_EQ(file->metadata().at("format_version"), "1");
  const nlohmann::json layers = nlohmann::json::parse(file->metadata().at("layers"));
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_EQ(layers[1], nlohmann::json({{"in_features", 33},
                                       {"out_features", 17},
                                       {"activation", "gelu"},
                                       {"act_quant", "none"},
                                       {"bias", true},
                                       {"scale", "per-tensor"}}));
  const safetensors::TensorInfo* packed = file->Find("layers.0.weight.packed");
  ASSERT_NE(packed, nullptr);
  EXPECT_EQ(packed->dtype, DType::kI32);
  EXPECT_EQ(packed->shape, (std::vector<int64_t>{33, 2}));
  EXPECT_EQ(file->Find("layers.0.weight.scale")->shape, (std::vector<int64_t>{1}));
  EXPECT_EQ(file->Find("layers.2.bias")->shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(file->Find("layers.1.weight.latent")->shape, (std::vector<int64_t>{17, 33}));
  EXPECT_EQ(file->tensors().size(), 12u);
}

TEST(ModelFileTest, MissingFileIsNotFound) {
  absl::StatusOr<Model> m = ReadModelFile("/nonexistent/model.safetensors");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelFileTest, WriteRefusesAnInvalidModelAndKeepsTheOldFile) {
  const std::string dir = TempDir();
  const std::string path = dir + "/model.safetensors";
  Model good = TestModel(ScaleGranularity::kPerRow, true, false);
  ASSERT_TRUE(WriteModelFile(good, path).ok());
  Model bad = good;
  bad.layers[1].bias[3] = std::numeric_limits<float>::quiet_NaN();
  absl::Status s = WriteModelFile(bad, path);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("layers.1.bias"));
  absl::StatusOr<Model> still = ReadModelFile(path);
  ASSERT_TRUE(still.ok()) << still.status();
  ExpectSameModel(good, *still);
  std::filesystem::remove_all(dir);
}

TEST(ModelFileTest, PackedBytes) {
  const Model model = TestModel(ScaleGranularity::kPerRow, true, true);
  // words: 33*2 + 17*3 + 5*2 = 127; scales 33+17+5; bias 33+17+5; latent excluded.
  EXPECT_EQ(model.PackedBytes(), 4 * (127 + 55 + 55));
  const Model per_tensor = TestModel(ScaleGranularity::kPerTensor, false, false);
  EXPECT_EQ(per_tensor.PackedBytes(), 4 * (127 + 3));
}

// ---- corrupted files: one case per rule ----

// A model file taken apart into tensors and metadata, to be mutated and put
// back together with the generic writer.
struct FileParts {
  struct Tensor {
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;

  static FileParts Of(const Model& model) {
    absl::StatusOr<safetensors::SafetensorsFile> file =
        safetensors::SafetensorsFile::Parse(SerializeModelFile(model));
    if (!file.ok()) std::abort();
    FileParts parts;
    for (const safetensors::TensorInfo& t : file->tensors()) {
      parts.tensors[t.name] = {t.dtype, t.shape, std::string(file->Data(t))};
    }
    parts.metadata = file->metadata();
    return parts;
  }

  nlohmann::json Layers() const { return nlohmann::json::parse(metadata.at("layers")); }
  void SetLayers(const nlohmann::json& layers) { metadata["layers"] = layers.dump(); }

  template <typename T>
  void Poke(const std::string& name, size_t index, T value) {
    std::memcpy(tensors.at(name).bytes.data() + index * sizeof(T), &value, sizeof(T));
  }

  std::string Build() const {
    std::vector<safetensors::TensorToWrite> list;
    for (const auto& [name, t] : tensors) list.push_back({name, t.dtype, t.shape, t.bytes});
    absl::StatusOr<std::string> bytes = safetensors::Serialize(list, metadata);
    if (!bytes.ok()) std::abort();
    return *bytes;
  }
};

FileParts Parts() { return FileParts::Of(TestModel(ScaleGranularity::kPerRow, true, true)); }

void ExpectRejected(const FileParts& parts, const std::string& names,
                    const std::string& also = "") {
  absl::StatusOr<Model> m = ParseModelFile(parts.Build());
  ASSERT_FALSE(m.ok()) << "accepted; expected an error naming " << names;
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  EXPECT_THAT(std::string(m.status().message()), HasSubstr(names));
  if (!also.empty()) {
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(also));
  }
}

TEST(ModelFileValidationTest, TheUnmodifiedPartsAreAccepted) {
  absl::StatusOr<Model> m = ParseModelFile(Parts().Build());
  ASSERT_TRUE(m.ok()) << m.status();
}

TEST(ModelFileValidationTest, SafetensorsErrorsPassThrough) {
  std::string bytes = SerializeModelFile(TestModel(ScaleGranularity::kPerRow, true, false));
  absl::StatusOr<Model> m = ParseModelFile(bytes.substr(0, bytes.size() - 4));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("layers."));
}

TEST(ModelFileValidationTest, MissingOrForeignFormat) {
  FileParts p = Parts();
  p.metadata.erase("format");
  ExpectRejected(p, "\"format\"", "not a bitnet-serve model file");
  p.metadata["format"] = "gguf";
  ExpectRejected(p, "\"format\" is \"gguf\"");
}

TEST(ModelFileValidationTest, UnknownFormatVersion) {
  FileParts p = Parts();
  p.metadata["format_version"] = "2";
  ExpectRejected(p, "format_version", "\"2\"");
  p.metadata.erase("format_version");
  ExpectRejected(p, "no \"format_version\"");
}

TEST(ModelFileValidationTest, MalformedLayerList) {
  FileParts p = Parts();
  p.metadata.erase("layers");
  ExpectRejected(p, "no \"layers\"");
  p.metadata["layers"] = "[{";
  ExpectRejected(p, "\"layers\" is not valid JSON");
  p.metadata["layers"] = "[]";
  ExpectRejected(p, "non-empty JSON array");

  const nlohmann::json good = Parts().Layers();
  nlohmann::json l = good;
  l[1].erase("act_quant");
  p.SetLayers(l);
  ExpectRejected(p, "layers[1]", "\"act_quant\"");
  l = good;
  l[0]["activation"] = "tanh";
  p.SetLayers(l);
  ExpectRejected(p, "layers[0].activation", "tanh");
  l = good;
  l[2]["act_quant"] = "int4";
  p.SetLayers(l);
  ExpectRejected(p, "layers[2].act_quant", "int4");
  l = good;
  l[0]["scale"] = "per-column";
  p.SetLayers(l);
  ExpectRejected(p, "layers[0].scale", "per-column");
  l = good;
  l[0]["bias"] = "yes";
  p.SetLayers(l);
  ExpectRejected(p, "layers[0].bias");
  l = good;
  l[0]["in_features"] = -20;
  p.SetLayers(l);
  ExpectRejected(p, "layers[0].in_features", "positive integer");
  l = good;
  l[1]["dropout"] = 0.1;
  p.SetLayers(l);
  ExpectRejected(p, "layers[1]", "unknown field \"dropout\"");
}

TEST(ModelFileValidationTest, LayersDoNotChain) {
  FileParts p = Parts();
  nlohmann::json l = p.Layers();
  l[1]["in_features"] = 32;
  p.SetLayers(l);
  ExpectRejected(p, "layers[1].in_features 32", "do not chain");
}

TEST(ModelFileValidationTest, MissingTensor) {
  for (const char* name : {"layers.0.weight.packed", "layers.1.weight.scale", "layers.2.bias"}) {
    FileParts p = Parts();
    p.tensors.erase(name);
    ExpectRejected(p, std::string("missing tensor \"") + name + "\"");
  }
}

TEST(ModelFileValidationTest, WrongDtype) {
  FileParts p = Parts();
  p.tensors.at("layers.1.weight.packed").dtype = DType::kF32;
  ExpectRejected(p, "\"layers.1.weight.packed\" has dtype F32", "expected I32");
  p = Parts();
  p.tensors.at("layers.0.bias").dtype = DType::kI32;
  ExpectRejected(p, "\"layers.0.bias\" has dtype I32", "expected F32");
}

TEST(ModelFileValidationTest, WrongShape) {
  FileParts p = Parts();
  p.tensors.at("layers.0.weight.packed").shape = {66, 1};  // same byte count
  ExpectRejected(p, "\"layers.0.weight.packed\" has shape [66, 1]", "expected [33, 2]");
  p = Parts();
  FileParts::Tensor& scale = p.tensors.at("layers.2.weight.scale");
  scale.shape = {1};  // per-row says [5]
  scale.bytes.resize(4);
  ExpectRejected(p, "\"layers.2.weight.scale\" has shape [1]", "expected [5]");
  p = Parts();
  p.tensors.at("layers.1.weight.latent").shape = {33, 17};
  ExpectRejected(p, "\"layers.1.weight.latent\" has shape [33, 17]", "expected [17, 33]");
}

TEST(ModelFileValidationTest, InvalidCode) {
  FileParts p = Parts();
  // Word 0 of row 0: set element 0's code to 3 (not a ternary code).
  p.Poke<int32_t>("layers.1.weight.packed", 0, 0x55555557);
  ExpectRejected(p, "layers.1.weight.packed");
}

TEST(ModelFileValidationTest, PaddingCodeNotZeroWeight) {
  FileParts p = Parts();
  // Layer 0 has K = 20: word 1 of a row holds cols 16..19 and 12 padding
  // codes, which must be 1. Put code 2 (+1) in the last padding slot.
  int32_t word;
  std::memcpy(&word, p.tensors.at("layers.0.weight.packed").bytes.data() + 4, 4);
  word = static_cast<int32_t>((static_cast<uint32_t>(word) & 0x3fffffffu) | 0x80000000u);
  p.Poke<int32_t>("layers.0.weight.packed", 1, word);
  ExpectRejected(p, "layers.0.weight.packed");
}

TEST(ModelFileValidationTest, NonFiniteOrNonPositiveScale) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity(), 0.0f, -0.5f}) {
    FileParts p = Parts();
    p.Poke<float>("layers.2.weight.scale", 4, bad);
    ExpectRejected(p, "layers.2.weight.scale", "scale[4]");
  }
}

TEST(ModelFileValidationTest, NonFiniteBias) {
  FileParts p = Parts();
  p.Poke<float>("layers.1.bias", 16, -std::numeric_limits<float>::infinity());
  ExpectRejected(p, "layers.1.bias", "non-finite");
}

TEST(ModelFileValidationTest, NonFiniteLatent) {
  FileParts p = Parts();
  p.Poke<float>("layers.0.weight.latent", 2 * 20 + 7, std::numeric_limits<float>::quiet_NaN());
  ExpectRejected(p, "layers.0.weight.latent", "row 2 col 7");
}

TEST(ModelFileValidationTest, BiasPresentButNotDeclared) {
  FileParts p = Parts();
  nlohmann::json l = p.Layers();
  l[2]["bias"] = false;
  p.SetLayers(l);
  ExpectRejected(p, "unexpected tensor \"layers.2.bias\"", "bias is false");
}

TEST(ModelFileValidationTest, ExtraUnknownTensor) {
  FileParts p = Parts();
  p.tensors["layers.3.weight.packed"] = {DType::kI32, {1, 1}, std::string(4, '\x55')};
  ExpectRejected(p, "unexpected tensor \"layers.3.weight.packed\"");
  p = Parts();
  p.tensors["optimizer.state"] = {DType::kF32, {2}, std::string(8, '\0')};
  ExpectRejected(p, "unexpected tensor \"optimizer.state\"");
}

TEST(ModelFileValidationTest, SerializeOfANaNScaleIsRejectedByTheReader) {
  Model m = TestModel(ScaleGranularity::kPerRow, false, false);
  m.layers[0].weight.scales[0] = std::numeric_limits<float>::quiet_NaN();
  const std::string bytes = SerializeModelFile(m);
  ASSERT_FALSE(bytes.empty());
  absl::StatusOr<Model> parsed = ParseModelFile(bytes);
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("layers.0.weight.scale"));
}

TEST(ModelFileValidationTest, RandomCorruptionNeverCrashes) {
  // Flipped bytes anywhere (header length, JSON, data) and truncations must
  // give an error or a model that is still valid, never a crash or UB (run
  // under -fsanitize=address,undefined to check the latter).
  const std::string good = SerializeModelFile(TestModel(ScaleGranularity::kPerRow, true, true));
  uint64_t state = 7;
  auto next = [&state]() {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return state >> 33;
  };
  int rejected = 0;
  for (int iteration = 0; iteration < 3000; ++iteration) {
    std::string bytes = good;
    if (iteration % 10 == 0) {
      bytes.resize(next() % bytes.size());
    } else {
      const int flips = 1 + static_cast<int>(next() % 4);
      for (int f = 0; f < flips; ++f) {
        // Half of the flips land in the first 600 bytes (length + header).
        const size_t pos = next() % 2 ? next() % 600 : next() % bytes.size();
        bytes[pos] = static_cast<char>(next() & 0xff);
      }
    }
    absl::StatusOr<Model> m = ParseModelFile(bytes);
    if (m.ok()) {
      EXPECT_TRUE(ValidateModel(*m).ok());
    } else {
      ++rejected;
      EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
    }
  }
  EXPECT_GT(rejected, 1000);
}

// ---- ValidateModel on in-memory models ----

void ExpectInvalidModel(const Model& m, const std::string& names) {
  absl::Status s = ValidateModel(m);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(names));
}

TEST(ValidateModelTest, CatchesEveryInconsistency) {
  const Model good = TestModel(ScaleGranularity::kPerRow, true, true);
  ASSERT_TRUE(ValidateModel(good).ok());
  ExpectInvalidModel(Model{}, "no layers");

  Model m = good;
  m.layers[1].spec.in_features = 34;
  ExpectInvalidModel(m, "layers.1.weight.packed");
  m = good;
  m.layers[2].weight.words.pop_back();
  ExpectInvalidModel(m, "layers.2.weight.packed");
  m = good;
  m.layers[0].weight.scales.resize(1);
  ExpectInvalidModel(m, "layers.0.weight.scale");
  m = good;
  m.layers[0].spec.has_bias = false;
  ExpectInvalidModel(m, "layers.0.bias");
  m = good;
  m.layers[1].bias.pop_back();
  ExpectInvalidModel(m, "layers.1.bias");
  m = good;
  m.layers[2].latent.pop_back();
  ExpectInvalidModel(m, "layers.2.weight.latent");
  m = good;
  m.layers[0].spec.out_features = 0;
  ExpectInvalidModel(m, "must both be positive");
  m = good;
  m.layers[0].weight.words[0] = -1;  // all codes 3
  ExpectInvalidModel(m, "layers.0.weight.packed");
}

}  // namespace
}  // namespace bitnet
