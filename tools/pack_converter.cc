#include "tools/pack_converter.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/model/model_file.h"
#include "server/model/string_view_compat.h"

namespace bitnet::pack {
namespace {

using safetensors::DType;
using safetensors::SafetensorsFile;
using safetensors::TensorInfo;

constexpr absl::string_view kWeightSuffix = ".weight";
constexpr absl::string_view kBiasSuffix = ".bias";

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(std::string(what));
}

bool IsFloat(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

std::string Quoted(absl::string_view s) { return absl::StrCat("\"", s, "\""); }

// Layer prefixes from the file: every "<prefix>.weight". Every other tensor
// must be the bias of one of them.
absl::StatusOr<std::vector<std::string>> DiscoverLayers(const SafetensorsFile& input) {
  std::set<std::string> prefixes;
  for (const TensorInfo& t : input.tensors()) {
    if (absl::EndsWith(t.name, kWeightSuffix)) {
      prefixes.insert(t.name.substr(0, t.name.size() - kWeightSuffix.size()));
    }
  }
  for (const TensorInfo& t : input.tensors()) {
    const bool is_weight = absl::EndsWith(t.name, kWeightSuffix);
    const bool is_bias = absl::EndsWith(t.name, kBiasSuffix) &&
                         prefixes.contains(t.name.substr(0, t.name.size() - kBiasSuffix.size()));
    if (!is_weight && !is_bias) {
      return Invalid(absl::StrCat("tensor ", Quoted(t.name),
                                  " is not a linear layer's <prefix>.weight or <prefix>.bias; "
                                  "name the layers with --layers to skip other tensors"));
    }
    if (is_weight && t.shape.size() != 2) {
      return Invalid(absl::StrCat("tensor ", Quoted(t.name), " has shape ",
                                  safetensors::ShapeString(t.shape),
                                  ", expected [out_features, in_features] of a linear layer; "
                                  "name the layers with --layers to skip it"));
    }
  }
  std::vector<std::string> ordered(prefixes.begin(), prefixes.end());
  std::sort(ordered.begin(), ordered.end(),
            [](const std::string& a, const std::string& b) { return NaturalLess(a, b); });
  return ordered;
}

absl::StatusOr<std::vector<float>> ReadFloats(const SafetensorsFile& input,
                                              const TensorInfo& t) {
  if (!IsFloat(t.dtype)) {
    return Invalid(absl::StrCat("tensor ", Quoted(t.name), " has dtype ",
                                ToAbsl(safetensors::DTypeName(t.dtype)), ", expected F32, F16 or BF16"));
  }
  return input.ToFloat(t);
}

int64_t Sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

}  // namespace

bool NaturalLess(std::string_view a, std::string_view b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const bool da = std::isdigit(static_cast<unsigned char>(a[i]));
    const bool db = std::isdigit(static_cast<unsigned char>(b[j]));
    if (da && db) {
      size_t ie = i, je = j;
      while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie]))) ++ie;
      while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je]))) ++je;
      std::string_view na = a.substr(i, ie - i), nb = b.substr(j, je - j);
      // Compare as numbers of any length: strip leading zeros, then the
      // longer one is larger, then digit by digit.
      while (na.size() > 1 && na.front() == '0') na.remove_prefix(1);
      while (nb.size() > 1 && nb.front() == '0') nb.remove_prefix(1);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = ie;
      j = je;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  if (a.size() - i != b.size() - j) return a.size() - i < b.size() - j;
  return a < b;  // e.g. "fc.01" vs "fc.1": any fixed tie-break
}

absl::StatusOr<ConvertResult> ConvertFloatModel(const SafetensorsFile& input,
                                                const ConvertOptions& options) {
  ConvertResult result;
  if (options.layers.empty()) {
    absl::StatusOr<std::vector<std::string>> discovered = DiscoverLayers(input);
    if (!discovered.ok()) return discovered.status();
    result.layer_prefixes = *std::move(discovered);
  } else {
    for (const std::string& name : options.layers) {
      std::string prefix = name;
      if (absl::EndsWith(prefix, kWeightSuffix)) {
        prefix.resize(prefix.size() - kWeightSuffix.size());
      }
      if (prefix.empty()) return Invalid(absl::StrCat("empty layer name in --layers"));
      if (std::find(result.layer_prefixes.begin(), result.layer_prefixes.end(), prefix) !=
          result.layer_prefixes.end()) {
        return Invalid(absl::StrCat("layer ", Quoted(prefix), " is listed twice in --layers"));
      }
      result.layer_prefixes.push_back(prefix);
    }
  }
  if (result.layer_prefixes.empty()) {
    return Invalid("no tensor named <prefix>.weight in the input: nothing to convert");
  }

  std::set<std::string> used;
  const size_t num_layers = result.layer_prefixes.size();
  for (size_t li = 0; li < num_layers; ++li) {
    const std::string& prefix = result.layer_prefixes[li];
    const std::string weight_name = absl::StrCat(prefix, kWeightSuffix);
    const TensorInfo* weight = input.Find(weight_name);
    if (weight == nullptr) {
      return absl::NotFoundError(absl::StrCat("no tensor ", Quoted(weight_name),
                                              " in the input (layer ", li, ")"));
    }
    if (weight->shape.size() != 2 || weight->shape[0] <= 0 || weight->shape[1] <= 0) {
      return Invalid(absl::StrCat("tensor ", Quoted(weight_name), " has shape ",
                                  safetensors::ShapeString(weight->shape),
                                  ", expected [out_features, in_features], both positive"));
    }
    const int64_t out = weight->shape[0], in = weight->shape[1];
    if (li > 0) {
      const LayerSpec& previous = result.model.layers.back().spec;
      if (previous.out_features != in) {
        return Invalid(absl::StrCat(
            "layers do not chain: tensor ", Quoted(weight_name), " has in_features ", in,
            " but the previous layer ", Quoted(absl::StrCat(result.layer_prefixes[li - 1],
                                                            kWeightSuffix)),
            " has out_features ", previous.out_features));
      }
    }
    absl::StatusOr<std::vector<float>> weights = ReadFloats(input, *weight);
    if (!weights.ok()) return weights.status();
    for (size_t e = 0; e < weights->size(); ++e) {
      if (!std::isfinite((*weights)[e])) {
        return Invalid(absl::StrCat("tensor ", Quoted(weight_name), ": non-finite value ",
                                    (*weights)[e], " at row ", static_cast<int64_t>(e) / in,
                                    " col ", static_cast<int64_t>(e) % in));
      }
    }
    used.insert(weight_name);

    Layer layer;
    layer.spec.in_features = in;
    layer.spec.out_features = out;
    layer.spec.activation = li + 1 == num_layers ? Activation::kIdentity : options.activation;
    layer.spec.act_quant = options.act_quant;

    const std::string bias_name = absl::StrCat(prefix, kBiasSuffix);
    if (const TensorInfo* bias = input.Find(bias_name); bias != nullptr) {
      if (bias->shape != std::vector<int64_t>{out}) {
        return Invalid(absl::StrCat("tensor ", Quoted(bias_name), " has shape ",
                                    safetensors::ShapeString(bias->shape), ", expected [", out,
                                    "] (out_features of ", Quoted(weight_name), ")"));
      }
      absl::StatusOr<std::vector<float>> values = ReadFloats(input, *bias);
      if (!values.ok()) return values.status();
      for (size_t e = 0; e < values->size(); ++e) {
        if (!std::isfinite((*values)[e])) {
          return Invalid(absl::StrCat("tensor ", Quoted(bias_name), ": non-finite value ",
                                      (*values)[e], " at index ", e));
        }
      }
      layer.spec.has_bias = true;
      layer.bias = *std::move(values);
      used.insert(bias_name);
    }

    absl::StatusOr<PackedTernaryMatrix> packed =
        QuantizeAndPack(*weights, out, in, options.scale);
    if (!packed.ok()) {
      return absl::Status(packed.status().code(),
                          absl::StrCat("tensor ", Quoted(weight_name), ": ",
                                       packed.status().message()));
    }
    layer.weight = *std::move(packed);
    if (options.keep_latent) layer.latent = *std::move(weights);
    result.model.layers.push_back(std::move(layer));
  }
  for (const TensorInfo& t : input.tensors()) {
    if (!used.contains(t.name)) result.ignored_tensors.push_back(t.name);
  }
  if (absl::Status s = ValidateModel(result.model); !s.ok()) {
    return absl::InternalError(absl::StrCat("converted model failed validation: ", s.message()));
  }
  return result;
}

absl::Status ConvertFile(const std::string& input_path, const std::string& output_path,
                         const ConvertOptions& options, ConvertResult* result) {
  absl::StatusOr<SafetensorsFile> input = SafetensorsFile::Read(input_path);
  if (!input.ok()) return input.status();
  absl::StatusOr<ConvertResult> converted = ConvertFloatModel(*input, options);
  if (!converted.ok()) {
    return absl::Status(converted.status().code(),
                        absl::StrCat(input_path, ": ", converted.status().message()));
  }
  if (absl::Status s = WriteModelFile(converted->model, output_path); !s.ok()) return s;
  if (result != nullptr) *result = *std::move(converted);
  return absl::OkStatus();
}

std::string DescribeModel(const Model& model) {
  std::string out = absl::StrFormat("format: %s, format_version %d\n", ToAbsl(kModelFormatName),
                                    kModelFormatVersion);
  absl::StrAppendFormat(&out, "layers: %d (input %d features, output %d features)\n",
                        model.layers.size(), model.input_features(), model.output_features());
  std::vector<int64_t> packed, scales, bias, latent, weights;
  for (size_t i = 0; i < model.layers.size(); ++i) {
    const Layer& l = model.layers[i];
    absl::StrAppendFormat(
        &out, "  layer %d: %d -> %d  activation %s  act_quant %s  scale %s  bias %s  latent %s\n",
        i, l.spec.in_features, l.spec.out_features, ToAbsl(ActivationName(l.spec.activation)),
        ToAbsl(ActivationQuantName(l.spec.act_quant)),
        l.weight.granularity == ScaleGranularity::kPerRow ? "per-row" : "per-tensor",
        l.spec.has_bias ? "yes" : "no", l.latent.empty() ? "no" : "yes");
    packed.push_back(static_cast<int64_t>(l.weight.words.size() * sizeof(int32_t)));
    scales.push_back(static_cast<int64_t>(l.weight.scales.size() * sizeof(float)));
    bias.push_back(static_cast<int64_t>(l.bias.size() * sizeof(float)));
    latent.push_back(static_cast<int64_t>(l.latent.size() * sizeof(float)));
    weights.push_back(l.spec.in_features * l.spec.out_features);
  }
  const int64_t packed_bytes = Sum(packed);
  const int64_t fp32_bytes = Sum(weights) * 4;
  const int64_t fp16_bytes = Sum(weights) * 2;
  const double ratio32 = packed_bytes > 0 ? static_cast<double>(fp32_bytes) / packed_bytes : 0;
  const double ratio16 = packed_bytes > 0 ? static_cast<double>(fp16_bytes) / packed_bytes : 0;
  absl::StrAppendFormat(&out, "weights: %d parameters\n", Sum(weights));
  absl::StrAppendFormat(&out, "packed weights: %d bytes (2 bits per weight, rows padded to 16)\n",
                        packed_bytes);
  absl::StrAppendFormat(&out, "fp32 equivalent: %d bytes (%.2fx the packed weights)\n",
                        fp32_bytes, ratio32);
  absl::StrAppendFormat(&out, "fp16 equivalent: %d bytes (%.2fx the packed weights)\n",
                        fp16_bytes, ratio16);
  absl::StrAppendFormat(&out, "scales: %d bytes, bias: %d bytes, latent: %d bytes\n",
                        Sum(scales), Sum(bias), Sum(latent));
  absl::StrAppendFormat(&out, "resident for inference (packed + scales + bias): %d bytes\n",
                        model.PackedBytes());
  return out;
}

}  // namespace bitnet::pack
