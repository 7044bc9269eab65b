#include "server/model/demo_model.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <span>
#include <utility>
#include <vector>

namespace bitnet {
namespace {

struct DemoLayer {
  int64_t in, out;
  Activation activation;
};

// Weight std 1/sqrt(in) keeps activations O(1) through the stack (what
// nn.Linear's default init roughly gives); bias std 0.1.
Layer MakeLayer(const DemoLayer& d, uint64_t seed, bool keep_latent) {
  DemoRandom random(seed);
  // sqrt of an exactly representable integer is correctly rounded (IEEE), so
  // this stays machine-independent.
  const double weight_std = 1.0 / std::sqrt(static_cast<double>(d.in));
  std::vector<float> weights(static_cast<size_t>(d.in * d.out));
  for (float& w : weights) w = static_cast<float>(random.NextNormal() * weight_std);
  absl::StatusOr<PackedTernaryMatrix> packed =
      QuantizeAndPack(weights, d.out, d.in, ScaleGranularity::kPerRow);
  if (!packed.ok()) {
    // Only reachable through a bug in QuantizeAndPack: the inputs are finite
    // and the shapes positive.
    std::fprintf(stderr, "MakeDemoModel: %s\n", packed.status().ToString().c_str());
    std::abort();
  }
  Layer layer;
  layer.spec.in_features = d.in;
  layer.spec.out_features = d.out;
  layer.spec.activation = d.activation;
  layer.spec.act_quant = ActivationQuant::kInt8;
  layer.spec.has_bias = true;
  layer.weight = *std::move(packed);
  layer.bias.resize(static_cast<size_t>(d.out));
  for (float& b : layer.bias) b = static_cast<float>(random.NextNormal() * 0.1);
  if (keep_latent) layer.latent = std::move(weights);
  return layer;
}

}  // namespace

uint64_t DemoRandom::NextU64() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double DemoRandom::NextUniform() {
  return static_cast<double>(NextU64() >> 11) * 0x1.0p-53;
}

double DemoRandom::NextNormal() {
  // Sum of 4 U(0,1): mean 2, variance 1/3. Each uniform is a multiple of
  // 2^-53 below 1, so the sum is exact in double.
  const double sum = NextUniform() + NextUniform() + NextUniform() + NextUniform();
  constexpr double kSqrt3 = 1.7320508075688772;
  return (sum - 2.0) * kSqrt3;
}

bool ParseDemoModelSize(std::string_view name, DemoModelSize* size) {
  if (name == "small") {
    *size = DemoModelSize::kSmall;
  } else if (name == "large") {
    *size = DemoModelSize::kLarge;
  } else if (name == "deep") {
    *size = DemoModelSize::kDeep;
  } else {
    return false;
  }
  return true;
}

const char* DemoModelSizeName(DemoModelSize size) {
  switch (size) {
    case DemoModelSize::kSmall:
      return "small";
    case DemoModelSize::kLarge:
      return "large";
    case DemoModelSize::kDeep:
      return "deep";
  }
  return "unknown";
}

Model MakeDemoModel(DemoModelSize size) {
  if (size == DemoModelSize::kDeep) {
    constexpr int kBlocks = 24;
    const Model block = MakeDemoModel(DemoModelSize::kLarge);
    Model model;
    model.layers.reserve(kBlocks * block.layers.size());
    for (int b = 0; b < kBlocks; ++b) {
      for (const Layer& layer : block.layers) model.layers.push_back(layer);
    }
    // The second layer of a block has no activation; between blocks it needs
    // the ReLU the first layer of a block has, so that the stack stays a
    // chain of (linear, ReLU) pairs ending in a plain linear layer.
    for (size_t i = 1; i + 1 < model.layers.size(); i += 2) {
      model.layers[i].spec.activation = Activation::kRelu;
    }
    return model;
  }
  const bool small = size == DemoModelSize::kSmall;
  const int64_t in = small ? 64 : 4096;
  const int64_t hidden = small ? 128 : 11008;
  const int64_t out = small ? 32 : 4096;
  Model model;
  model.layers.push_back(MakeLayer({in, hidden, Activation::kRelu}, 0xb17e7001, small));
  model.layers.push_back(MakeLayer({hidden, out, Activation::kIdentity}, 0xb17e7002, small));
  return model;
}

}  // namespace bitnet
