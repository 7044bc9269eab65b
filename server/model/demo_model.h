// Deterministic demo models: the same bytes on every machine and every run,
// so the demo server, tests and benchmarks agree without shipping weights.
//
// Weights are drawn from a fixed-seed splitmix64 stream turned into an
// approximately normal distribution with additions only (Irwin-Hall, sum of
// four uniforms): unlike Box-Muller it uses no libm transcendental functions,
// whose last bit may differ between C libraries, so the quantized codes are
// identical everywhere. Then QuantizeAndPack (per-row scales).
#ifndef BITNET_SERVER_MODEL_DEMO_MODEL_H_
#define BITNET_SERVER_MODEL_DEMO_MODEL_H_

#include <cstdint>
#include <vector>

#include <string_view>

#include "server/model/model.h"

namespace bitnet {

enum class DemoModelSize {
  // 64 -> 128 -> 32, ReLU between, int8 activations, bias, latent weights
  // kept (so fine-tuning tests have master weights). For quick tests.
  kSmall,
  // 4096 -> 11008 -> 4096 (a LLaMA-7B MLP's shape), ReLU between, int8
  // activations, bias, no latent weights (they would be 360 MB). About 22 MB
  // packed; takes a few seconds to generate.
  kLarge,
  // kLarge's two layers repeated as 24 blocks (48 layers, 2.2 G weights,
  // 540 MB packed): about the linear-layer work per token of a 2B-parameter
  // BitNet b1.58 model. For GPU load tests where the device, not the host,
  // must be the bottleneck (one GPU serves ~150k rows/s of it, against
  // ~440k of kLarge, where gRPC on the host saturates first). The blocks
  // share kLarge's weights, so it takes as long to generate as kLarge.
  kDeep,
};

// The --demo_model names: "small", "large", "deep".
bool ParseDemoModelSize(std::string_view name, DemoModelSize* size);
const char* DemoModelSizeName(DemoModelSize size);

// Always valid (ValidateModel passes). Thread-safe.
Model MakeDemoModel(DemoModelSize size);

// The generator behind MakeDemoModel, exposed for tests and tools that need
// reproducible data: splitmix64 (Steele et al.), one 64-bit state.
class DemoRandom {
 public:
  explicit DemoRandom(uint64_t seed) : state_(seed) {}
  uint64_t NextU64();
  // Uniform in [0, 1) with 53 random bits.
  double NextUniform();
  // Mean 0, standard deviation 1, range (-sqrt(12), sqrt(12)): Irwin-Hall of
  // four uniforms, rescaled.
  double NextNormal();

 private:
  uint64_t state_;
};

}  // namespace bitnet

#endif  // BITNET_SERVER_MODEL_DEMO_MODEL_H_
