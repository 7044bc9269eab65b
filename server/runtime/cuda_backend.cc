#include "server/runtime/cuda_backend.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/ternary_cuda.h"
#include "server/model/model.h"

namespace bitnet {
namespace {

struct CudaLayer {
  LayerSpec spec;
  std::unique_ptr<CudaTernaryWeights> weights;
};

class CudaModelInstance final : public ModelInstance {
 public:
  CudaModelInstance(int device, int64_t max_rows, std::vector<CudaLayer> layers,
                    CudaStream stream, CudaBuffer act_a, CudaBuffer act_b, CudaBuffer workspace,
                    CudaHostBuffer host_in, CudaHostBuffer host_out)
      : device_(device),
        max_rows_(max_rows),
        layers_(std::move(layers)),
        stream_(std::move(stream)),
        act_{std::move(act_a), std::move(act_b)},
        workspace_(std::move(workspace)),
        host_in_(std::move(host_in)),
        host_out_(std::move(host_out)) {}

  absl::Status Forward(const float* input, int64_t rows, float* output) override {
    ForwardArgs args;
    args.rows = rows;
    args.input = input;
    args.output = output;
    return ForwardRows(args);
  }

  absl::Status ForwardRows(const ForwardArgs& args) override {
    const int64_t rows = args.rows;
    if (rows < 0 || rows > max_rows_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "cuda forward: rows is %d, expected 0 <= rows <= max_rows = %d", rows, max_rows_));
    }
    if (rows == 0) return absl::OkStatus();
    if (args.input == nullptr || args.output == nullptr) {
      return absl::InvalidArgumentError("cuda forward: input and output must not be null");
    }
    const int64_t in_features = layers_.front().spec.in_features;
    const int64_t out_features = layers_.back().spec.out_features;
    const size_t in_bytes =
        static_cast<size_t>(rows * in_features) * ElementBytes(args.input_dtype);
    const size_t out_bytes =
        static_cast<size_t>(rows * out_features) * ElementBytes(args.output_dtype);
    // Transfers are DMA from and into pinned memory: the caller's when it is
    // pinned (the batcher's buffers), else our staging buffers.
    const void* in = args.input;
    if (!args.input_pinned) {
      std::memcpy(host_in_.data(), args.input, in_bytes);
      in = host_in_.data();
    }
    void* out = args.output_pinned ? args.output : host_out_.data();
    absl::Status s = Run(rows, in, args.input_dtype, out, args.output_dtype, in_bytes, out_bytes);
    if (!s.ok()) {
      // A failed launch may leave work queued: drain before reporting.
      (void)stream_.Synchronize();
      return absl::InternalError(absl::StrCat("cuda forward on ", device(), ": ", s.ToString()));
    }
    if (!args.output_pinned) std::memcpy(args.output, host_out_.data(), out_bytes);
    return absl::OkStatus();
  }

  int64_t max_rows() const override { return max_rows_; }
  std::string device() const override { return absl::StrFormat("cuda:%d", device_); }
  int64_t device_memory_bytes() const override {
    int64_t bytes = static_cast<int64_t>(act_[0].bytes() + act_[1].bytes() + workspace_.bytes());
    for (const CudaLayer& l : layers_) bytes += l.weights->device_bytes();
    return bytes;
  }

 private:
  static CudaDType ToCuda(ElementType type) {
    switch (type) {
      case ElementType::kF16: return CudaDType::kF16;
      case ElementType::kBF16: return CudaDType::kBF16;
      case ElementType::kF32: break;
    }
    return CudaDType::kF32;
  }

  // `in` and `out` are pinned host memory. Intermediate layers stay fp32;
  // only the first layer reads `in_type` and the last writes `out_type`.
  absl::Status Run(int64_t rows, const void* in, ElementType in_type, void* out,
                   ElementType out_type, size_t in_bytes, size_t out_bytes) {
    void* stream = stream_.get();
    if (absl::Status s = CudaMemcpyAsync(act_[0].data(), in, in_bytes, stream); !s.ok()) {
      return s;
    }
    // Layers ping-pong between the two device buffers.
    for (size_t i = 0; i < layers_.size(); ++i) {
      const CudaLayer& layer = layers_[i];
      CudaLinearArgs a;
      a.m = rows;
      a.x = act_[i % 2].data();
      a.x_dtype = i == 0 ? ToCuda(in_type) : CudaDType::kF32;
      a.weights = layer.weights.get();
      a.act_quant = layer.spec.act_quant;
      a.activation = layer.spec.activation;
      a.y = act_[(i + 1) % 2].data();
      a.y_dtype = i + 1 == layers_.size() ? ToCuda(out_type) : CudaDType::kF32;
      a.workspace = workspace_.data();
      a.workspace_bytes = workspace_.bytes();
      // Small batches: each layer's kernel may start while the previous
      // layer finishes and stream its weights meanwhile (Hopper PDL). The
      // weights of a loaded version are never written, which is the promise
      // this flag asks for.
      a.overlap_previous_kernel = true;
      if (absl::Status s = CudaTernaryLinear(a, stream); !s.ok()) {
        return absl::Status(s.code(), absl::StrFormat("layer %d: %s", i, s.message()));
      }
    }
    const CudaBuffer& last = act_[layers_.size() % 2];
    if (absl::Status s = CudaMemcpyAsync(out, last.data(), out_bytes, stream); !s.ok()) {
      return s;
    }
    return stream_.Synchronize();
  }

  const int device_;
  const int64_t max_rows_;
  const std::vector<CudaLayer> layers_;
  CudaStream stream_;
  CudaBuffer act_[2];
  CudaBuffer workspace_;
  CudaHostBuffer host_in_;
  CudaHostBuffer host_out_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {}

  absl::StatusOr<std::unique_ptr<ModelInstance>> Load(const Model& model,
                                                      int64_t max_rows) override {
    if (absl::Status s = ValidateModel(model); !s.ok()) return s;
    if (model.layers.empty()) {
      return absl::InvalidArgumentError("cuda load: the model has no layers");
    }
    if (max_rows <= 0 || max_rows > (int64_t{1} << 20)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("cuda load: max_rows is %d, expected 1..%d", max_rows, int64_t{1} << 20));
    }
    std::vector<CudaLayer> layers;
    int64_t widest = 0;
    for (size_t i = 0; i < model.layers.size(); ++i) {
      const Layer& layer = model.layers[i];
      CudaTernaryWeights::Options options;
      options.fp_layout = layer.spec.act_quant == ActivationQuant::kNone;
      options.int8_layout = layer.spec.act_quant == ActivationQuant::kInt8;
      absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> w = CudaTernaryWeights::Create(
          layer.weight.view(), layer.spec.has_bias ? layer.bias.data() : nullptr, device_, options);
      if (!w.ok()) {
        return absl::Status(w.status().code(),
                            absl::StrFormat("cuda load: layer %d: %s", i, w.status().message()));
      }
      layers.push_back({layer.spec, *std::move(w)});
      widest = std::max({widest, layer.spec.in_features, layer.spec.out_features});
    }

    // The workspace must fit the plan of every batch size up to max_rows
    // (split-K and the prepared-activation buffer depend on it).
    size_t workspace_bytes = 0;
    for (const CudaLayer& layer : layers) {
      CudaLinearArgs a;
      a.x = reinterpret_cast<const void*>(uintptr_t{256});  // alignment only
      a.weights = layer.weights.get();
      a.act_quant = layer.spec.act_quant;
      a.activation = layer.spec.activation;
      a.y = reinterpret_cast<void*>(uintptr_t{256});
      // The first layer may read fp16/bf16 batch rows as well as fp32.
      for (CudaDType x_dtype : {CudaDType::kF32, CudaDType::kF16, CudaDType::kBF16}) {
        a.x_dtype = x_dtype;
        for (int64_t m = 1; m <= max_rows; m += (m < 512 ? 1 : 16)) {
          a.m = std::min(m, max_rows);
          absl::StatusOr<size_t> bytes = CudaLinearWorkspaceBytes(a);
          if (!bytes.ok()) return bytes.status();
          workspace_bytes = std::max(workspace_bytes, *bytes);
        }
        a.m = max_rows;
        absl::StatusOr<size_t> bytes = CudaLinearWorkspaceBytes(a);
        if (!bytes.ok()) return bytes.status();
        workspace_bytes = std::max(workspace_bytes, *bytes);
      }
    }

    const size_t act_bytes = static_cast<size_t>(max_rows * widest) * sizeof(float);
    absl::StatusOr<CudaStream> stream = CudaStream::Create(device_);
    if (!stream.ok()) return stream.status();
    absl::StatusOr<CudaBuffer> act_a = CudaBuffer::Create(act_bytes, device_);
    if (!act_a.ok()) return act_a.status();
    absl::StatusOr<CudaBuffer> act_b = CudaBuffer::Create(act_bytes, device_);
    if (!act_b.ok()) return act_b.status();
    absl::StatusOr<CudaBuffer> workspace = CudaBuffer::Create(workspace_bytes, device_);
    if (!workspace.ok()) return workspace.status();
    // Split-K counters must start at zero; kernels leave them so.
    if (absl::Status s = workspace->Fill(0, stream->get()); !s.ok()) return s;
    absl::StatusOr<CudaHostBuffer> host_in = CudaHostBuffer::Create(
        static_cast<size_t>(max_rows * model.input_features()) * sizeof(float));
    if (!host_in.ok()) return host_in.status();
    absl::StatusOr<CudaHostBuffer> host_out = CudaHostBuffer::Create(
        static_cast<size_t>(max_rows * model.output_features()) * sizeof(float));
    if (!host_out.ok()) return host_out.status();
    auto instance = std::make_unique<CudaModelInstance>(
        device_, max_rows, std::move(layers), *std::move(stream), *std::move(act_a),
        *std::move(act_b), *std::move(workspace), *std::move(host_in), *std::move(host_out));
    // Warm-up: one forward per power-of-two batch size (and max_rows) runs
    // every kernel configuration the dispatcher can pick once, so the first
    // real batch of a new size does not pay for first-launch set-up
    // (module loading, shared-memory attributes) while requests wait.
    // fp16 batches (the batcher's half rows) get their own warm-up: other
    // conversion and epilogue instantiations.
    std::vector<float> in(static_cast<size_t>(max_rows * model.input_features()), 0.0f);
    std::vector<float> out(static_cast<size_t>(max_rows * model.output_features()));
    for (ElementType type : {ElementType::kF32, ElementType::kF16}) {
      for (int64_t m = 1;; m = std::min(2 * m, max_rows)) {
        ForwardArgs args;
        args.rows = m;
        args.input = in.data();  // zeros in either type
        args.input_dtype = type;
        args.output = out.data();
        args.output_dtype = type;
        if (absl::Status s = instance->ForwardRows(args); !s.ok()) {
          return absl::Status(s.code(), absl::StrCat("cuda load: warm-up: ", s.message()));
        }
        if (m == max_rows) break;
      }
    }
    return std::unique_ptr<ModelInstance>(std::move(instance));
  }

  std::string device() const override { return absl::StrFormat("cuda:%d", device_); }

  // Page-locked (cudaHostAlloc): with unified addressing (every 64-bit CUDA
  // platform) it is pinned for every device, so a batch may also fail over
  // to another GPU's instance. Ordinary memory if pinning fails.
  HostBuffer AllocateHostBuffer(size_t bytes) override {
    absl::StatusOr<CudaHostBuffer> pinned = CudaHostBuffer::Create(bytes);
    if (!pinned.ok()) return HostBuffer::Allocate(bytes);
    auto owner = std::make_shared<CudaHostBuffer>(*std::move(pinned));
    void* data = owner->data();
    return HostBuffer(data, bytes, /*pinned=*/true, [owner](void*) mutable { owner.reset(); });
  }

  bool native_half_rows() const override { return true; }

 private:
  const int device_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device_ordinal) {
  absl::StatusOr<int> count = CudaDeviceCount();
  if (!count.ok()) return count.status();
  if (*count == 0) {
    return absl::UnavailableError(absl::StrFormat(
        "device \"cuda:%d\" asked for, but no CUDA device is visible", device_ordinal));
  }
  if (device_ordinal < 0 || device_ordinal >= *count) {
    return absl::UnavailableError(absl::StrFormat(
        "device \"cuda:%d\" asked for, but this machine has CUDA devices 0..%d", device_ordinal,
        *count - 1));
  }
  // The kernels need compute capability 8.0+; planning a tiny layer on the
  // device tells us (FAILED_PRECONDITION otherwise) without launching.
  std::vector<int32_t> words(1, 0x55555555);  // 16 zero weights
  std::vector<float> scale(1, 1.0f);
  PackedTernaryView view{1, 16, words.data(), scale.data(), ScaleGranularity::kPerRow};
  absl::StatusOr<std::unique_ptr<CudaTernaryWeights>> probe =
      CudaTernaryWeights::Create(view, nullptr, device_ordinal);
  if (!probe.ok()) return probe.status();
  CudaLinearArgs a;
  a.m = 1;
  a.x = reinterpret_cast<const void*>(uintptr_t{256});
  a.y = reinterpret_cast<void*>(uintptr_t{256});
  a.weights = probe->get();
  absl::StatusOr<CudaLaunchPlan> plan = CudaPlanLinear(a);
  if (!plan.ok()) {
    if (plan.status().code() == absl::StatusCode::kFailedPrecondition) {
      return absl::UnavailableError(absl::StrFormat("device \"cuda:%d\" is not usable: %s",
                                                    device_ordinal, plan.status().message()));
    }
    return plan.status();
  }
  return std::unique_ptr<Backend>(new CudaBackend(device_ordinal));
}

}  // namespace bitnet
