// bitnet-pack's library: float safetensors -> packed model conversion and the
// `inspect` report. The bitnet-pack binary (pack_cli.h) is a thin argv layer
// over these functions, which tests call directly.
//
// Input: a safetensors file of nn.Linear-style tensors, `<prefix>.weight`
// [out, in] and optional `<prefix>.bias` [out], dtype F32, F16 or BF16.
// Layers run in the order given by ConvertOptions::layers, or else in the
// "natural" order of their prefixes (numbers compared as numbers, so fc.2
// precedes fc.10). All functions are thread-safe.
#ifndef BITNET_TOOLS_PACK_CONVERTER_H_
#define BITNET_TOOLS_PACK_CONVERTER_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "server/model/model.h"
#include "server/model/safetensors.h"

namespace bitnet::pack {

struct ConvertOptions {
  ScaleGranularity scale = ScaleGranularity::kPerRow;
  // Layer prefixes in execution order ("fc.0" or "fc.0.weight"). Empty:
  // every `<prefix>.weight` of the file, in natural order; then any tensor
  // that is not a linear layer's weight or bias is an error. Given: tensors
  // of other layers are ignored (listed in ConvertResult::ignored_tensors).
  std::vector<std::string> layers;
  // Between layers; the last layer is always identity (its output is the
  // model's output).
  Activation activation = Activation::kRelu;
  // Applied to every layer's input.
  ActivationQuant act_quant = ActivationQuant::kInt8;
  // Also store the float weights as layers.{i}.weight.latent (fine-tuning).
  bool keep_latent = false;
};

struct ConvertResult {
  Model model;
  std::vector<std::string> layer_prefixes;  // in execution order
  std::vector<std::string> ignored_tensors;
};

// INVALID_ARGUMENT naming the tensor for: no layers, a weight that is not 2-D,
// a non-float dtype, a non-finite weight (row and col given) or bias (index
// given), a bias of the wrong shape, layers that do not chain, tensors that
// are not part of any layer when discovering layers. NOT_FOUND naming the
// tensor for a --layers prefix without a weight.
absl::StatusOr<ConvertResult> ConvertFloatModel(const safetensors::SafetensorsFile& input,
                                                const ConvertOptions& options);

// Reads `input_path`, converts, validates and writes `output_path`
// atomically. `result` (optional) receives the conversion result.
absl::Status ConvertFile(const std::string& input_path, const std::string& output_path,
                         const ConvertOptions& options, ConvertResult* result = nullptr);

// The `inspect` report: format version, one line per layer, packed bytes vs
// fp32/fp16 and the compression ratio.
std::string DescribeModel(const Model& model);

// Natural order: runs of digits compare as numbers ("fc.2" < "fc.10").
bool NaturalLess(std::string_view a, std::string_view b);

}  // namespace bitnet::pack

#endif  // BITNET_TOOLS_PACK_CONVERTER_H_
