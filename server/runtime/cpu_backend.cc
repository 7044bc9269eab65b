#include "server/runtime/cpu_backend.h"

#include <algorithm>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/ternary_gemm.h"

namespace bitnet {
namespace {

// One layer in the fast CPU path's execution form.
struct CpuLayer {
  LayerSpec spec;
  CpuTernaryWeights weights;
  std::vector<float> bias;  // empty when !spec.has_bias
};

class CpuModelInstance final : public ModelInstance {
 public:
  CpuModelInstance(std::vector<CpuLayer> layers, int64_t max_rows,
                   int num_threads, std::vector<float> buffer_a,
                   std::vector<float> buffer_b)
      : layers_(std::move(layers)),
        max_rows_(max_rows),
        gemm_options_{.num_threads = num_threads, .allow_simd = true},
        buffers_{std::move(buffer_a), std::move(buffer_b)} {}

  absl::Status Forward(const float* input, int64_t rows,
                       float* output) override {
    if (rows < 0 || rows > max_rows_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "cpu forward: rows is %d, expected 0 <= rows <= max_rows = %d", rows,
          max_rows_));
    }
    if (rows == 0) return absl::OkStatus();
    if (input == nullptr || output == nullptr) {
      return absl::InvalidArgumentError(
          "cpu forward: input and output must not be null");
    }
    // Layers ping-pong between the two preallocated buffers; the first reads
    // the caller's input and the last writes straight into the caller's
    // output, so nothing is copied.
    const float* x = input;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const CpuLayer& layer = layers_[i];
      float* y = i + 1 == layers_.size() ? output : buffers_[i % 2].data();
      TernaryGemmArgs args;
      args.m = rows;
      args.x = x;
      // Shape only: codes and scales come from the prepared weights.
      args.weight.rows = layer.spec.out_features;
      args.weight.cols = layer.spec.in_features;
      args.weight.granularity = layer.weights.granularity();
      args.bias = layer.spec.has_bias ? layer.bias.data() : nullptr;
      args.act_quant = layer.spec.act_quant;
      args.activation = layer.spec.activation;
      args.y = y;
      if (absl::Status s = CpuTernaryGemm(args, layer.weights, gemm_options_);
          !s.ok()) {
        // Shapes were fixed at load, so a rejection here is our bug.
        return absl::InternalError(absl::StrFormat(
            "cpu forward: layer %d: %s", i, s.message()));
      }
      x = y;
    }
    return absl::OkStatus();
  }

  int64_t max_rows() const override { return max_rows_; }
  std::string device() const override { return "cpu"; }
  int64_t device_memory_bytes() const override { return 0; }

 private:
  const std::vector<CpuLayer> layers_;
  const int64_t max_rows_;
  const CpuGemmOptions gemm_options_;
  std::vector<float> buffers_[2];
};

}  // namespace

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(
    CpuBackendOptions options) {
  return std::unique_ptr<CpuBackend>(new CpuBackend(options));
}

absl::StatusOr<std::unique_ptr<ModelInstance>> CpuBackend::Load(
    const Model& model, int64_t max_rows) {
  if (max_rows <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cpu backend: max_rows must be positive, got %d", max_rows));
  }
  if (absl::Status s = ValidateModel(model); !s.ok()) return s;

  std::vector<CpuLayer> layers;
  layers.reserve(model.layers.size());
  // Widest intermediate activation: the buffers hold every layer's output
  // except the last (written to the caller's output).
  int64_t widest_hidden = 0;
  for (size_t i = 0; i < model.layers.size(); ++i) {
    const Layer& layer = model.layers[i];
    absl::StatusOr<CpuTernaryWeights> prepared =
        CpuTernaryWeights::Prepare(layer.weight.view());
    if (!prepared.ok()) {
      return absl::Status(prepared.status().code(),
                          absl::StrFormat("cpu backend: layer %d weight: %s", i,
                                          prepared.status().message()));
    }
    layers.push_back(CpuLayer{layer.spec, std::move(*prepared), layer.bias});
    if (i + 1 < model.layers.size()) {
      widest_hidden = std::max(widest_hidden, layer.spec.out_features);
    }
  }

  std::vector<float> buffer_a, buffer_b;
  try {
    // Buffer b is needed only when two hidden layers follow each other.
    buffer_a.resize(max_rows * widest_hidden);
    if (model.layers.size() > 2) buffer_b.resize(max_rows * widest_hidden);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cpu backend: cannot allocate activation buffers of %d rows x %d "
        "features",
        max_rows, widest_hidden));
  }
  return std::unique_ptr<ModelInstance>(new CpuModelInstance(
      std::move(layers), max_rows, options_.num_threads, std::move(buffer_a),
      std::move(buffer_b)));
}

}  // namespace bitnet
