// A packed BitNet model in memory: a stack of ternary linear layers.
// Produced by the model file reader (model_file.h) or the demo generator
// (demo_model.h); consumed by the runtime backends and the fine-tuner.
#ifndef BITNET_SERVER_MODEL_MODEL_H_
#define BITNET_SERVER_MODEL_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"

namespace bitnet {

inline constexpr int kModelFormatVersion = 1;

struct LayerSpec {
  int64_t in_features = 0;
  int64_t out_features = 0;
  // Applied to this layer's output (the activation "between layers"); the
  // last layer normally uses kIdentity.
  Activation activation = Activation::kIdentity;
  // How this layer's *input* activations are quantized.
  ActivationQuant act_quant = ActivationQuant::kNone;
  bool has_bias = false;
};

struct Layer {
  LayerSpec spec;
  PackedTernaryMatrix weight;  // [out_features, in_features]
  std::vector<float> bias;     // out_features entries, empty when !has_bias
  // Full-precision master weights for fine-tuning, [out, in]; empty when the
  // file has none.
  std::vector<float> latent;
};

struct Model {
  std::vector<Layer> layers;

  int64_t input_features() const {
    return layers.empty() ? 0 : layers.front().spec.in_features;
  }
  int64_t output_features() const {
    return layers.empty() ? 0 : layers.back().spec.out_features;
  }
  // Bytes of packed weights, scales and biases (what inference keeps resident).
  int64_t PackedBytes() const;
};

// Checks that the layers chain (out of i == in of i+1), every tensor has the
// size its spec says, and the packed weights are valid (ValidatePacked).
// INVALID_ARGUMENT naming the layer and tensor otherwise.
absl::Status ValidateModel(const Model& model);

}  // namespace bitnet

#endif  // BITNET_SERVER_MODEL_MODEL_H_
