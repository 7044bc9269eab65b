// libFuzzer target: bitnet-pack's converter (tools/pack_converter.h,
// ConvertFloatModel) on arbitrary float models.
//
// Input: byte 0 picks the options (scale granularity, activation, act_quant,
// keep_latent, explicit --layers or discovery) and the mode:
//  - raw (odd byte 1): the rest is a safetensors file, parsed and converted
//    as bitnet-pack would (seeds: tests/fixtures/seed_packing.safetensors and
//    fuzz/corpus/pack_converter/);
//  - structured (even byte 1): FuzzedDataProvider builds 1-3 layers of
//    nn.Linear-style tensors (names from a fixed set so discovery, natural
//    order and chaining are exercised; F32/F16/BF16, occasionally I32 or a
//    wrong rank; optional, sometimes mis-shaped biases; stray tensors), with
//    raw float bits (NaN, inf, denormals, huge values). The file is written
//    with safetensors::Serialize and read back, so it always parses and the
//    fuzzer spends its time in the converter.
//
// Findings: any sanitizer report, and (FUZZ_CHECK):
//  - the converter never returns INTERNAL (its own output failing
//    ValidateModel) and errors carry a message;
//  - on success every weight and bias it used is finite (NaN/Inf must be an
//    error), the packed weights match the format's formulas
//    (fuzz/pack_check.h), biases and latent weights are copied exactly,
//    activations and act_quant are as requested (last layer identity), and
//    the model passes ValidateModel and survives SerializeModelFile/
//    ParseModelFile.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>

#include "fuzz/fuzz_util.h"
#include "fuzz/pack_check.h"
#include "server/model/model_file.h"
#include "server/model/safetensors.h"
#include "tools/pack_converter.h"

namespace {

using bitnet::safetensors::DType;
using bitnet::safetensors::SafetensorsFile;

// Names chosen to exercise natural ordering ("fc.2" < "fc.10"), prefixes
// that are prefixes of others, and dotted names.
constexpr const char* kPrefixes[] = {"fc.0", "fc.1", "fc.2", "fc.10", "fc", "a.b.c", "layer"};

std::string BuildStructuredFile(FuzzedDataProvider& in, std::vector<std::string>* prefixes) {
  // Owns every tensor's bytes until Serialize has copied them; a deque never
  // moves its elements, so the string_views below stay valid.
  std::deque<std::string> buffers;
  std::vector<bitnet::safetensors::TensorToWrite> tensors;
  const int num_layers = in.ConsumeIntegralInRange<int>(1, 3);
  int64_t in_features = in.ConsumeIntegralInRange<int64_t>(1, 40);
  auto add = [&](std::string name, DType dtype, std::vector<int64_t> shape) {
    int64_t elements = 1;
    for (int64_t d : shape) elements *= d;
    std::string bytes = in.ConsumeBytesAsString(
        static_cast<size_t>(elements * bitnet::safetensors::DTypeSize(dtype)));
    // Out of fuzz data: pad with a fixed, finite pattern (0x3c00 is 1.0 in
    // F16, 0x3c003c00 a small F32) so the shape still matches.
    bytes.resize(static_cast<size_t>(elements * bitnet::safetensors::DTypeSize(dtype)), '\x3c');
    buffers.push_back(std::move(bytes));
    tensors.push_back({std::move(name), dtype, std::move(shape), buffers.back()});
  };
  const DType float_types[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (int i = 0; i < num_layers; ++i) {
    const std::string prefix = kPrefixes[in.ConsumeIntegralInRange<size_t>(
        0, std::size(kPrefixes) - 1)];
    bool duplicate = false;
    for (const std::string& p : *prefixes) duplicate |= p == prefix;
    if (duplicate) continue;  // Serialize would reject a duplicate name.
    prefixes->push_back(prefix);
    const int64_t out_features = in.ConsumeIntegralInRange<int64_t>(1, 24);
    // Mostly chain; sometimes break the chain on purpose.
    const int64_t layer_in = in.ConsumeIntegralInRange<int>(0, 7) == 0
                                 ? in.ConsumeIntegralInRange<int64_t>(1, 40)
                                 : in_features;
    DType dtype = float_types[in.ConsumeIntegralInRange<int>(0, 2)];
    if (in.ConsumeIntegralInRange<int>(0, 15) == 0) dtype = DType::kI32;
    std::vector<int64_t> shape = {out_features, layer_in};
    switch (in.ConsumeIntegralInRange<int>(0, 15)) {
      case 0: shape = {out_features * layer_in}; break;
      case 1: shape = {1, out_features, layer_in}; break;
      case 2: shape = {0, layer_in}; break;
      default: break;
    }
    add(prefix + ".weight", dtype, shape);
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0: break;  // no bias
      case 1: add(prefix + ".bias", float_types[in.ConsumeIntegralInRange<int>(0, 2)],
                  {in.ConsumeIntegralInRange<int>(0, 7) == 0 ? out_features + 1 : out_features});
              break;
      default: add(prefix + ".bias", dtype == DType::kI32 ? DType::kF32 : dtype, {out_features});
    }
    in_features = out_features;
  }
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0) add("stray", DType::kF32, {2});
  absl::StatusOr<std::string> file = bitnet::safetensors::Serialize(tensors, {});
  FUZZ_CHECK(file.ok(), "Serialize accepts the generated tensors");
  return *std::move(file);
}

void CheckConverted(const SafetensorsFile& input, const bitnet::pack::ConvertOptions& options,
                    const bitnet::pack::ConvertResult& result) {
  const bitnet::Model& model = result.model;
  FUZZ_CHECK(model.layers.size() == result.layer_prefixes.size(), "one layer per prefix");
  FUZZ_CHECK(bitnet::ValidateModel(model).ok(), "converted model passes ValidateModel");
  for (size_t i = 0; i < model.layers.size(); ++i) {
    const bitnet::Layer& layer = model.layers[i];
    const std::string& prefix = result.layer_prefixes[i];
    const auto* weight = input.Find(prefix + ".weight");
    FUZZ_CHECK(weight != nullptr, "converted layer has a weight tensor");
    absl::StatusOr<std::vector<float>> w = input.ToFloat(*weight);
    FUZZ_CHECK(w.ok(), "converted weight is a float tensor");
    for (float v : *w) FUZZ_CHECK(std::isfinite(v), "NaN/Inf weight must be an error");
    bitnet::fuzz::CheckPacked(layer.weight, *w, layer.spec.out_features,
                              layer.spec.in_features, options.scale);
    FUZZ_CHECK(weight->shape.size() == 2 && weight->shape[0] == layer.spec.out_features &&
                   weight->shape[1] == layer.spec.in_features,
               "layer shape == [out, in] of the weight");
    if (options.keep_latent) {
      FUZZ_CHECK(layer.latent.size() == w->size() &&
                     std::memcmp(layer.latent.data(), w->data(), w->size() * 4) == 0,
                 "latent == the float weights");
    } else {
      FUZZ_CHECK(layer.latent.empty(), "no latent unless asked");
    }
    const auto* bias = input.Find(prefix + ".bias");
    FUZZ_CHECK(layer.spec.has_bias == (bias != nullptr), "bias iff the input has one");
    if (bias != nullptr) {
      absl::StatusOr<std::vector<float>> b = input.ToFloat(*bias);
      FUZZ_CHECK(b.ok() && b->size() == layer.bias.size(), "bias size");
      for (size_t e = 0; e < b->size(); ++e) {
        FUZZ_CHECK(std::isfinite((*b)[e]), "NaN/Inf bias must be an error");
        FUZZ_CHECK(std::memcmp(&(*b)[e], &layer.bias[e], 4) == 0, "bias copied exactly");
      }
    }
    const bool last = i + 1 == model.layers.size();
    FUZZ_CHECK(layer.spec.activation ==
                   (last ? bitnet::Activation::kIdentity : options.activation),
               "requested activation between layers, identity after the last");
    FUZZ_CHECK(layer.spec.act_quant == options.act_quant, "requested act_quant");
  }
  absl::StatusOr<bitnet::Model> again =
      bitnet::ParseModelFile(bitnet::SerializeModelFile(model));
  if (!again.ok()) std::fprintf(stderr, "re-parse: %s\n", again.status().ToString().c_str());
  FUZZ_CHECK(again.ok(), "the converted model's file parses");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t flags = data[0];
  const bool raw = (data[1] & 1) != 0;
  bitnet::pack::ConvertOptions options;
  options.scale = (flags & 1) ? bitnet::ScaleGranularity::kPerTensor
                              : bitnet::ScaleGranularity::kPerRow;
  constexpr bitnet::Activation kActivations[] = {
      bitnet::Activation::kIdentity, bitnet::Activation::kRelu, bitnet::Activation::kGelu,
      bitnet::Activation::kSilu};
  options.activation = kActivations[(flags >> 1) & 3];
  options.act_quant =
      (flags & 8) ? bitnet::ActivationQuant::kNone : bitnet::ActivationQuant::kInt8;
  options.keep_latent = (flags & 16) != 0;
  const bool explicit_layers = (flags & 32) != 0;

  std::string bytes;
  std::vector<std::string> prefixes;
  if (raw) {
    bytes.assign(reinterpret_cast<const char*>(data) + 2, size - 2);
  } else {
    FuzzedDataProvider in(data + 2, size - 2);
    bytes = BuildStructuredFile(in, &prefixes);
  }
  absl::StatusOr<SafetensorsFile> input = SafetensorsFile::Parse(std::move(bytes));
  if (!input.ok()) {
    FUZZ_CHECK(raw, "a Serialize()d file parses");
    return 0;
  }
  if (explicit_layers) {
    if (raw) {
      for (const auto& t : input->tensors()) {
        if (t.name.ends_with(".weight")) options.layers.push_back(t.name);
      }
      if (options.layers.size() > 1 && (flags & 64)) {
        std::swap(options.layers.front(), options.layers.back());
      }
    } else {
      options.layers = prefixes;
    }
  }
  absl::StatusOr<bitnet::pack::ConvertResult> result =
      bitnet::pack::ConvertFloatModel(*input, options);
  if (!result.ok()) {
    if (result.status().code() == absl::StatusCode::kInternal) {
      std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
    }
    FUZZ_CHECK(result.status().code() != absl::StatusCode::kInternal,
               "the converter's own output never fails validation");
    FUZZ_CHECK(!result.status().message().empty(), "errors say what was wrong");
    return 0;
  }
  CheckConverted(*input, options, *result);
  return 0;
}
