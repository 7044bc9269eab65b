#include "server/model/model_file.h"

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "server/model/safetensors.h"
#include "server/model/string_view_compat.h"

namespace bitnet {
namespace {

using Json = nlohmann::json;
using safetensors::DType;
using safetensors::SafetensorsFile;
using safetensors::ShapeString;
using safetensors::TensorInfo;

// A JSON value for an error message, cut short: a hostile header can hold
// megabytes in one value.
std::string Brief(const Json& value) {
  std::string text = value.dump();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

constexpr absl::string_view kFormatVersion = "1";
static_assert(kModelFormatVersion == 1, "update kFormatVersion with model.h");

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("model file: ", what));
}

absl::string_view ScaleName(ScaleGranularity g) {
  return g == ScaleGranularity::kPerRow ? "per-row" : "per-tensor";
}

struct FileLayer {
  LayerSpec spec;
  ScaleGranularity scale = ScaleGranularity::kPerRow;
};

absl::StatusOr<int64_t> PositiveInt(const Json& value, absl::string_view what) {
  if (!value.is_number_unsigned() || value.get<uint64_t>() == 0 ||
      value.get<uint64_t>() > (uint64_t{1} << 40)) {
    return Invalid(absl::StrCat(what, " is ", Brief(value),
                                ", expected a positive integer"));
  }
  return static_cast<int64_t>(value.get<uint64_t>());
}

absl::StatusOr<std::string> StringField(const Json& value, absl::string_view what) {
  if (!value.is_string()) {
    return Invalid(absl::StrCat(what, " is ", Brief(value), ", expected a string"));
  }
  return value.get<std::string>();
}

absl::StatusOr<std::vector<FileLayer>> ParseLayerList(const std::string& text) {
  Json json;
  try {
    json = Json::parse(text);
  } catch (const Json::exception& e) {
    return Invalid(absl::StrCat("__metadata__ \"layers\" is not valid JSON: ", e.what()));
  }
  if (!json.is_array() || json.empty()) {
    return Invalid(absl::StrCat("__metadata__ \"layers\" is ", Brief(json),
                                ", expected a non-empty JSON array of layer objects"));
  }
  static const std::set<std::string> kKeys = {"in_features", "out_features", "activation",
                                              "act_quant",   "bias",         "scale"};
  std::vector<FileLayer> layers;
  for (size_t i = 0; i < json.size(); ++i) {
    const Json& entry = json[i];
    const std::string where = absl::StrCat("__metadata__ layers[", i, "]");
    if (!entry.is_object()) {
      return Invalid(absl::StrCat(where, " is ", Brief(entry), ", expected an object"));
    }
    for (const auto& [key, unused] : entry.items()) {
      if (!kKeys.contains(key)) {
        return Invalid(absl::StrCat(where, " has unknown field \"", key, "\", expected ",
                                    absl::StrJoin(kKeys, ", ")));
      }
    }
    for (const std::string& key : kKeys) {
      if (!entry.contains(key)) {
        return Invalid(absl::StrCat(where, " lacks the field \"", key, "\""));
      }
    }
    FileLayer layer;
    absl::StatusOr<int64_t> in =
        PositiveInt(entry["in_features"], absl::StrCat(where, ".in_features"));
    if (!in.ok()) return in.status();
    absl::StatusOr<int64_t> out =
        PositiveInt(entry["out_features"], absl::StrCat(where, ".out_features"));
    if (!out.ok()) return out.status();
    layer.spec.in_features = *in;
    layer.spec.out_features = *out;

    absl::StatusOr<std::string> activation =
        StringField(entry["activation"], absl::StrCat(where, ".activation"));
    if (!activation.ok()) return activation.status();
    absl::StatusOr<Activation> parsed_activation = ParseActivation(*activation);
    if (!parsed_activation.ok()) {
      return Invalid(absl::StrCat(where, ".activation: ", parsed_activation.status().message()));
    }
    layer.spec.activation = *parsed_activation;

    absl::StatusOr<std::string> act_quant =
        StringField(entry["act_quant"], absl::StrCat(where, ".act_quant"));
    if (!act_quant.ok()) return act_quant.status();
    absl::StatusOr<ActivationQuant> parsed_quant = ParseActivationQuant(*act_quant);
    if (!parsed_quant.ok()) {
      return Invalid(absl::StrCat(where, ".act_quant: ", parsed_quant.status().message()));
    }
    layer.spec.act_quant = *parsed_quant;

    if (!entry["bias"].is_boolean()) {
      return Invalid(absl::StrCat(where, ".bias is ", Brief(entry["bias"]),
                                  ", expected true or false"));
    }
    layer.spec.has_bias = entry["bias"].get<bool>();

    absl::StatusOr<std::string> scale =
        StringField(entry["scale"], absl::StrCat(where, ".scale"));
    if (!scale.ok()) return scale.status();
    if (*scale == "per-row") {
      layer.scale = ScaleGranularity::kPerRow;
    } else if (*scale == "per-tensor") {
      layer.scale = ScaleGranularity::kPerTensor;
    } else {
      return Invalid(absl::StrCat(where, ".scale is \"", *scale,
                                  "\", expected \"per-row\" or \"per-tensor\""));
    }
    if (i > 0 && layers.back().spec.out_features != layer.spec.in_features) {
      return Invalid(absl::StrCat(where, ".in_features ", layer.spec.in_features,
                                  " does not match layers[", i - 1, "].out_features ",
                                  layers.back().spec.out_features,
                                  ": the layers do not chain"));
    }
    layers.push_back(layer);
  }
  return layers;
}

// Looks up a tensor and checks its dtype and shape.
absl::StatusOr<const TensorInfo*> Expect(const SafetensorsFile& file, const std::string& name,
                                         DType dtype, const std::vector<int64_t>& shape,
                                         absl::string_view why) {
  const TensorInfo* t = file.Find(name);
  if (t == nullptr) {
    return Invalid(absl::StrCat("missing tensor \"", name, "\" (", why, ")"));
  }
  if (t->dtype != dtype) {
    return Invalid(absl::StrCat("tensor \"", name, "\" has dtype ",
                                ToAbsl(safetensors::DTypeName(t->dtype)), ", expected ",
                                ToAbsl(safetensors::DTypeName(dtype))));
  }
  if (t->shape != shape) {
    return Invalid(absl::StrCat("tensor \"", name, "\" has shape ", ShapeString(t->shape),
                                ", expected ", ShapeString(shape), " (", why, ")"));
  }
  return t;
}

std::string LayerJson(const Model& model) {
  Json layers = Json::array();
  for (const Layer& layer : model.layers) {
    layers.push_back({{"in_features", layer.spec.in_features},
                      {"out_features", layer.spec.out_features},
                      {"activation", std::string(ActivationName(layer.spec.activation))},
                      {"act_quant", std::string(ActivationQuantName(layer.spec.act_quant))},
                      {"bias", layer.spec.has_bias},
                      {"scale", std::string(ScaleName(layer.weight.granularity))}});
  }
  return layers.dump();
}

}  // namespace

std::string PackedTensorName(int64_t index) {
  return absl::StrCat("layers.", index, ".weight.packed");
}
std::string ScaleTensorName(int64_t index) {
  return absl::StrCat("layers.", index, ".weight.scale");
}
std::string BiasTensorName(int64_t index) { return absl::StrCat("layers.", index, ".bias"); }
std::string LatentTensorName(int64_t index) {
  return absl::StrCat("layers.", index, ".weight.latent");
}

absl::StatusOr<Model> ParseModelFile(std::string bytes) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(std::move(bytes));
  if (!file.ok()) return file.status();
  const std::map<std::string, std::string>& metadata = file->metadata();

  auto format = metadata.find("format");
  if (format == metadata.end()) {
    return Invalid("__metadata__ has no \"format\" entry: not a bitnet-serve model file "
                   "(convert float weights with bitnet-pack convert)");
  }
  if (format->second != kModelFormatName) {
    return Invalid(absl::StrCat("__metadata__ \"format\" is \"", format->second,
                                "\", expected \"", ToAbsl(kModelFormatName), "\""));
  }
  auto version = metadata.find("format_version");
  if (version == metadata.end()) {
    return Invalid("__metadata__ has no \"format_version\" entry");
  }
  if (version->second != kFormatVersion) {
    return Invalid(absl::StrCat("unsupported __metadata__ \"format_version\" \"",
                                version->second, "\": this build reads format_version ",
                                kFormatVersion));
  }
  auto layer_text = metadata.find("layers");
  if (layer_text == metadata.end()) {
    return Invalid("__metadata__ has no \"layers\" entry");
  }
  absl::StatusOr<std::vector<FileLayer>> specs = ParseLayerList(layer_text->second);
  if (!specs.ok()) return specs.status();

  // Every tensor of the file must be claimed by a layer.
  std::set<std::string> expected;
  Model model;
  model.layers.resize(specs->size());
  for (size_t li = 0; li < specs->size(); ++li) {
    const int64_t i = static_cast<int64_t>(li);
    const FileLayer& fl = (*specs)[li];
    const int64_t n = fl.spec.out_features, k = fl.spec.in_features;
    Layer& layer = model.layers[li];
    layer.spec = fl.spec;

    const std::string packed_name = PackedTensorName(i);
    absl::StatusOr<const TensorInfo*> packed =
        Expect(*file, packed_name, DType::kI32, {n, WordsPerRow(k)},
               absl::StrCat("[out_features, ceil(in_features / 16)] of layer ", i));
    if (!packed.ok()) return packed.status();
    const std::string scale_name = ScaleTensorName(i);
    absl::StatusOr<const TensorInfo*> scale =
        Expect(*file, scale_name, DType::kF32,
               {fl.scale == ScaleGranularity::kPerRow ? n : 1},
               absl::StrCat(ScaleName(fl.scale), " scale of layer ", i));
    if (!scale.ok()) return scale.status();
    expected.insert(packed_name);
    expected.insert(scale_name);

    layer.weight.rows = n;
    layer.weight.cols = k;
    layer.weight.granularity = fl.scale;
    absl::StatusOr<std::vector<int32_t>> words = file->Copy<int32_t>(**packed, DType::kI32);
    if (!words.ok()) return words.status();
    layer.weight.words = *std::move(words);
    absl::StatusOr<std::vector<float>> scales = file->Copy<float>(**scale, DType::kF32);
    if (!scales.ok()) return scales.status();
    layer.weight.scales = *std::move(scales);

    const std::string bias_name = BiasTensorName(i);
    if (fl.spec.has_bias) {
      absl::StatusOr<const TensorInfo*> bias =
          Expect(*file, bias_name, DType::kF32, {n},
                 absl::StrCat("layers[", i, "].bias is true"));
      if (!bias.ok()) return bias.status();
      absl::StatusOr<std::vector<float>> values = file->Copy<float>(**bias, DType::kF32);
      if (!values.ok()) return values.status();
      layer.bias = *std::move(values);
      expected.insert(bias_name);
    } else if (file->Find(bias_name) != nullptr) {
      return Invalid(absl::StrCat("unexpected tensor \"", bias_name, "\": __metadata__ layers[",
                                  i, "].bias is false"));
    }

    const std::string latent_name = LatentTensorName(i);
    if (file->Find(latent_name) != nullptr) {
      absl::StatusOr<const TensorInfo*> latent =
          Expect(*file, latent_name, DType::kF32, {n, k},
                 absl::StrCat("[out_features, in_features] of layer ", i));
      if (!latent.ok()) return latent.status();
      absl::StatusOr<std::vector<float>> values = file->Copy<float>(**latent, DType::kF32);
      if (!values.ok()) return values.status();
      layer.latent = *std::move(values);
      expected.insert(latent_name);
    }
  }
  for (const TensorInfo& t : file->tensors()) {
    if (!expected.contains(t.name)) {
      return Invalid(absl::StrCat("unexpected tensor \"", t.name,
                                  "\": not part of the bitnet-serve format for ",
                                  specs->size(), " layers"));
    }
  }
  if (absl::Status s = ValidateModel(model); !s.ok()) {
    return Invalid(s.message());
  }
  return model;
}

absl::StatusOr<Model> ReadModelFile(const std::string& path) {
  absl::StatusOr<std::string> bytes = safetensors::ReadFileToString(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<Model> model = ParseModelFile(*std::move(bytes));
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat(path, ": ", model.status().message()));
  }
  return model;
}

std::string SerializeModelFile(const Model& model) {
  std::vector<safetensors::TensorToWrite> tensors;
  for (size_t li = 0; li < model.layers.size(); ++li) {
    const int64_t i = static_cast<int64_t>(li);
    const Layer& layer = model.layers[li];
    const int64_t n = layer.spec.out_features, k = layer.spec.in_features;
    tensors.push_back({PackedTensorName(i), DType::kI32, {n, WordsPerRow(k)},
                       safetensors::BytesOf(layer.weight.words)});
    tensors.push_back({ScaleTensorName(i), DType::kF32,
                       {static_cast<int64_t>(layer.weight.scales.size())},
                       safetensors::BytesOf(layer.weight.scales)});
    if (!layer.bias.empty()) {
      tensors.push_back({BiasTensorName(i), DType::kF32,
                         {static_cast<int64_t>(layer.bias.size())},
                         safetensors::BytesOf(layer.bias)});
    }
    if (!layer.latent.empty()) {
      tensors.push_back({LatentTensorName(i), DType::kF32, {n, k},
                         safetensors::BytesOf(layer.latent)});
    }
  }
  const std::map<std::string, std::string> metadata = {
      {"format", std::string(kModelFormatName)},
      {"format_version", std::string(kFormatVersion)},
      {"layers", LayerJson(model)}};
  absl::StatusOr<std::string> bytes = safetensors::Serialize(std::move(tensors), metadata);
  return bytes.ok() ? *std::move(bytes) : std::string();
}

absl::Status WriteModelFile(const Model& model, const std::string& path) {
  if (absl::Status s = ValidateModel(model); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not writing ", path, ": ", s.message()));
  }
  return safetensors::WriteFileAtomically(path, SerializeModelFile(model));
}

}  // namespace bitnet
