#include "server/model/model.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/model/model_file.h"
#include "server/model/string_view_compat.h"

namespace bitnet {
namespace {

absl::Status LayerError(int64_t index, absl::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("layer ", index, " (", tensor, "): ", what));
}

// The first non-finite value, as "index i is nan", or empty.
std::string FirstNonFinite(const std::vector<float>& values, int64_t cols) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      if (cols > 0) {
        return absl::StrCat("non-finite value ", values[i], " at row ",
                            static_cast<int64_t>(i) / cols, " col ",
                            static_cast<int64_t>(i) % cols);
      }
      return absl::StrCat("non-finite value ", values[i], " at index ", i);
    }
  }
  return {};
}

}  // namespace

int64_t Model::PackedBytes() const {
  int64_t bytes = 0;
  for (const Layer& layer : layers) {
    bytes += static_cast<int64_t>(layer.weight.words.size() * sizeof(int32_t) +
                                  layer.weight.scales.size() * sizeof(float) +
                                  layer.bias.size() * sizeof(float));
  }
  return bytes;
}

absl::Status ValidateModel(const Model& model) {
  if (model.layers.empty()) {
    return absl::InvalidArgumentError("model has no layers");
  }
  for (size_t li = 0; li < model.layers.size(); ++li) {
    const int64_t i = static_cast<int64_t>(li);
    const Layer& layer = model.layers[li];
    const LayerSpec& spec = layer.spec;
    const std::string packed_name = PackedTensorName(i);
    if (spec.in_features <= 0 || spec.out_features <= 0) {
      return LayerError(i, packed_name,
                        absl::StrCat("in_features ", spec.in_features, " and out_features ",
                                     spec.out_features, " must both be positive"));
    }
    int64_t weights = 0;
    if (__builtin_mul_overflow(spec.in_features, spec.out_features, &weights)) {
      return LayerError(i, packed_name, "in_features * out_features overflows int64");
    }
    if (li > 0 && model.layers[li - 1].spec.out_features != spec.in_features) {
      return LayerError(i, packed_name,
                        absl::StrCat("in_features ", spec.in_features,
                                     " does not match layer ", i - 1, "'s out_features ",
                                     model.layers[li - 1].spec.out_features,
                                     ": the layers do not chain"));
    }
    const PackedTernaryMatrix& w = layer.weight;
    if (w.rows != spec.out_features || w.cols != spec.in_features) {
      return LayerError(i, packed_name,
                        absl::StrCat("packed matrix is [", w.rows, " x ", w.cols,
                                     "], expected [out_features ", spec.out_features,
                                     " x in_features ", spec.in_features, "]"));
    }
    const int64_t expected_words = w.rows * WordsPerRow(w.cols);
    if (static_cast<int64_t>(w.words.size()) != expected_words) {
      return LayerError(i, packed_name,
                        absl::StrCat(w.words.size(), " int32 words, expected ",
                                     expected_words, " ([", w.rows, ", ",
                                     WordsPerRow(w.cols), "])"));
    }
    const std::string scale_name = ScaleTensorName(i);
    const int64_t expected_scales =
        w.granularity == ScaleGranularity::kPerRow ? w.rows : 1;
    if (static_cast<int64_t>(w.scales.size()) != expected_scales) {
      return LayerError(
          i, scale_name,
          absl::StrCat(w.scales.size(), " scales, expected ", expected_scales, " (",
                       w.granularity == ScaleGranularity::kPerRow ? "per-row" : "per-tensor",
                       ")"));
    }
    for (size_t r = 0; r < w.scales.size(); ++r) {
      if (!std::isfinite(w.scales[r]) || !(w.scales[r] > 0.0f)) {
        return LayerError(i, scale_name,
                          absl::StrCat("scale[", r, "] is ", w.scales[r],
                                       ", expected a finite positive value"));
      }
    }
    const std::string bias_name = BiasTensorName(i);
    if (spec.has_bias != !layer.bias.empty()) {
      return LayerError(i, bias_name,
                        absl::StrCat("has_bias is ", spec.has_bias ? "true" : "false",
                                     " but the layer holds ", layer.bias.size(),
                                     " bias values"));
    }
    if (spec.has_bias && static_cast<int64_t>(layer.bias.size()) != spec.out_features) {
      return LayerError(i, bias_name,
                        absl::StrCat(layer.bias.size(), " bias values, expected out_features ",
                                     spec.out_features));
    }
    if (std::string bad = FirstNonFinite(layer.bias, 0); !bad.empty()) {
      return LayerError(i, bias_name, bad);
    }
    const std::string latent_name = LatentTensorName(i);
    if (!layer.latent.empty() && static_cast<int64_t>(layer.latent.size()) != weights) {
      return LayerError(i, latent_name,
                        absl::StrCat(layer.latent.size(), " latent weights, expected ",
                                     weights, " ([", spec.out_features, ", ",
                                     spec.in_features, "]) or none"));
    }
    if (std::string bad = FirstNonFinite(layer.latent, spec.in_features); !bad.empty()) {
      return LayerError(i, latent_name, bad);
    }
    if (absl::Status s = ValidatePacked(w.view()); !s.ok()) {
      return LayerError(i, packed_name, s.message());
    }
  }
  return absl::OkStatus();
}

}  // namespace bitnet
