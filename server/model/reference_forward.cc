#include "server/model/reference_forward.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/ternary_gemm.h"
#include "server/model/model_file.h"

namespace bitnet {

absl::Status ReferenceForward(const Model& model, const float* x, int64_t rows, float* y) {
  if (rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("rows is ", rows, ", expected >= 0"));
  }
  if (model.layers.empty()) return absl::InvalidArgumentError("model has no layers");
  if (rows == 0) return absl::OkStatus();
  if (x == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("x and y must not be null when rows > 0");
  }
  // Sizes only: the kernel reads words/scales/bias through raw pointers, so
  // they must be large enough; values are the caller's responsibility.
  for (size_t li = 0; li < model.layers.size(); ++li) {
    const Layer& layer = model.layers[li];
    const LayerSpec& spec = layer.spec;
    const int64_t i = static_cast<int64_t>(li);
    const bool sizes_ok =
        spec.in_features > 0 && spec.out_features > 0 &&
        layer.weight.rows == spec.out_features && layer.weight.cols == spec.in_features &&
        static_cast<int64_t>(layer.weight.words.size()) ==
            spec.out_features * WordsPerRow(spec.in_features) &&
        static_cast<int64_t>(layer.weight.scales.size()) ==
            (layer.weight.granularity == ScaleGranularity::kPerRow ? spec.out_features : 1) &&
        (spec.has_bias ? static_cast<int64_t>(layer.bias.size()) == spec.out_features
                       : layer.bias.empty()) &&
        (li == 0 || model.layers[li - 1].spec.out_features == spec.in_features);
    if (!sizes_ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", i, " (", PackedTensorName(i),
          "): tensor sizes do not match the layer spec or the previous layer; "
          "ValidateModel says why"));
    }
  }
  std::vector<float> current, next;
  const float* input = x;
  for (size_t li = 0; li < model.layers.size(); ++li) {
    const Layer& layer = model.layers[li];
    const bool last = li + 1 == model.layers.size();
    float* output = y;
    if (!last) {
      next.assign(static_cast<size_t>(rows * layer.spec.out_features), 0.0f);
      output = next.data();
    }
    TernaryGemmArgs args;
    args.m = rows;
    args.x = input;
    args.weight = layer.weight.view();
    args.bias = layer.spec.has_bias ? layer.bias.data() : nullptr;
    args.act_quant = layer.spec.act_quant;
    args.activation = layer.spec.activation;
    args.y = output;
    if (absl::Status s = ReferenceTernaryGemm(args); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("layer ", li, ": ", s.message()));
    }
    if (!last) {
      std::swap(current, next);
      input = current.data();
    }
  }
  return absl::OkStatus();
}

}  // namespace bitnet
