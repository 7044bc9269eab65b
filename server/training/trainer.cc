#include "server/training/trainer.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/activation.h"
#include "kernels/ternary_format.h"
#include "kernels/ternary_gemm.h"
#include "server/model/model.h"
#include "server/training/optimizer.h"
#include "server/training/training_backend.h"
#include "server/training/training_math.h"

namespace bitnet::training {
namespace {

// Latent weights for a model that has none. Plain dequantized weights
// (q * scale) would re-quantize to scale * (fraction of non-zero codes):
// mean |q * scale| is that, not scale. Stretching the non-zero entries of
// each scale group (row or tensor) by group_size / non_zero keeps the codes
// (|q| * stretch >= 1 rounds to +-1 after clamping; zeros stay 0) and makes
// mean |latent| equal the packed scale, so the first re-quantization does not
// shrink the layer's outputs.
std::vector<float> LatentFromPacked(const PackedTernaryMatrix& packed) {
  const int64_t rows = packed.rows;
  const int64_t cols = packed.cols;
  const std::vector<int8_t> q = UnpackTernary(packed.view());
  std::vector<float> latent(rows * cols);
  const bool per_row = packed.granularity == ScaleGranularity::kPerRow;
  const int64_t groups = per_row ? rows : 1;
  const int64_t group_size = per_row ? cols : rows * cols;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = g * group_size;
    int64_t non_zero = 0;
    for (int64_t e = begin; e < begin + group_size; ++e) non_zero += q[e] != 0;
    const float scale = packed.scales[g];
    const float magnitude =
        non_zero == 0 ? 0.0f
                      : static_cast<float>(static_cast<double>(scale) *
                                           static_cast<double>(group_size) /
                                           static_cast<double>(non_zero));
    for (int64_t e = begin; e < begin + group_size; ++e) {
      latent[e] = static_cast<float>(q[e]) * magnitude;
    }
  }
  return latent;
}

absl::Status FirstNonFinite(std::span<const float> values,
                            std::string_view what, int64_t cols) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s[%d, %d] is not finite (%g)", what, static_cast<int64_t>(i) / cols,
          static_cast<int64_t>(i) % cols, values[i]));
    }
  }
  return absl::OkStatus();
}

bool AllFinite(std::span<const float> values) {
  for (float v : values) {
    if (!std::isfinite(v)) return false;
  }
  return true;
}

}  // namespace

Trainer::Trainer(Model model, TrainerOptions options,
                 std::shared_ptr<TrainingBackend> backend,
                 std::unique_ptr<Optimizer> optimizer)
    : model_(std::move(model)),
      options_(std::move(options)),
      backend_(std::move(backend)),
      optimizer_(std::move(optimizer)) {
  dequantized_.resize(model_.layers.size());
  for (size_t l = 0; l < model_.layers.size(); ++l) RefreshDequantized(l);
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(
    const Model& model, TrainerOptions options) {
  if (absl::Status s = ValidateModel(model); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("trainer: invalid model: ", s.message()));
  }
  if (options.loss != LossKind::kMeanSquaredError &&
      options.loss != LossKind::kSoftmaxCrossEntropy) {
    return absl::InvalidArgumentError(
        "trainer: options.loss is not a known value");
  }
  Model copy = model;
  std::vector<int64_t> sizes;
  for (Layer& layer : copy.layers) {
    if (layer.latent.empty()) layer.latent = LatentFromPacked(layer.weight);
    sizes.push_back(static_cast<int64_t>(layer.latent.size()));
    if (layer.spec.has_bias) sizes.push_back(layer.spec.out_features);
  }
  absl::StatusOr<std::unique_ptr<Optimizer>> optimizer =
      Optimizer::Create(options.optimizer, std::move(sizes));
  if (!optimizer.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trainer: options.optimizer: ", optimizer.status().message()));
  }
  std::shared_ptr<TrainingBackend> backend = options.backend;
  if (backend == nullptr) {
    absl::StatusOr<std::unique_ptr<TrainingBackend>> cpu =
        CreateCpuTrainingBackend({.num_threads = options.num_threads});
    if (!cpu.ok()) return cpu.status();
    backend = *std::move(cpu);
  }
  return std::unique_ptr<Trainer>(
      new Trainer(std::move(copy), std::move(options), std::move(backend),
                  *std::move(optimizer)));
}

std::unique_ptr<Trainer> Trainer::Clone(
    std::shared_ptr<TrainingBackend> backend) const {
  TrainerOptions options = options_;
  if (backend == nullptr) backend = backend_;
  options.backend = backend;
  auto clone = std::unique_ptr<Trainer>(new Trainer(
      model_, std::move(options), std::move(backend), optimizer_->Clone()));
  clone->broken_ = broken_;
  return clone;
}

void Trainer::RefreshDequantized(size_t layer) {
  dequantized_[layer] = Dequantize(model_.layers[layer].weight.view());
}

absl::Status Trainer::SetLearningRate(float learning_rate) {
  if (absl::Status s = optimizer_->SetLearningRate(learning_rate); !s.ok())
    return s;
  options_.optimizer.learning_rate = learning_rate;
  return absl::OkStatus();
}

absl::Status Trainer::CheckBatch(std::span<const float> x, int64_t rows) const {
  if (rows < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("trainer: rows is %d, must be >= 0", rows));
  }
  const int64_t in = model_.input_features();
  if (x.size() != static_cast<uint64_t>(rows) * static_cast<uint64_t>(in)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("trainer: x has %d values, expected rows * "
                        "input_features = %d * %d = %d",
                        x.size(), rows, in, rows * in));
  }
  return FirstNonFinite(x, "trainer: x", in);
}

absl::Status Trainer::CheckTargets(const Targets& targets, int64_t rows) const {
  const int64_t out = model_.output_features();
  if (options_.loss == LossKind::kMeanSquaredError) {
    if (targets.values.data() == nullptr && !targets.labels.empty()) {
      return absl::InvalidArgumentError(
          "trainer: the loss is mse, which takes float targets, but integer "
          "labels were given");
    }
    if (targets.values.size() !=
        static_cast<uint64_t>(rows) * static_cast<uint64_t>(out)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "trainer: targets has %d values, expected rows * output_features = "
          "%d * %d = %d",
          targets.values.size(), rows, out, rows * out));
    }
    return FirstNonFinite(targets.values, "trainer: targets", out);
  }
  if (targets.labels.data() == nullptr && !targets.values.empty()) {
    return absl::InvalidArgumentError(
        "trainer: the loss is cross_entropy, which takes integer labels, but "
        "float targets were given");
  }
  if (targets.labels.size() != static_cast<uint64_t>(rows)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "trainer: labels has %d values, expected one per row (%d)",
        targets.labels.size(), rows));
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (targets.labels[r] < 0 || targets.labels[r] >= out) {
      return absl::InvalidArgumentError(
          absl::StrFormat("trainer: labels[%d] is %d, expected a class in [0, "
                          "output_features = %d)",
                          r, targets.labels[r], out));
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::Forward(std::span<const float> x, int64_t rows,
                              std::span<float> y) {
  if (absl::Status s = CheckBatch(x, rows); !s.ok()) return s;
  const int64_t out = model_.output_features();
  if (y.size() != static_cast<uint64_t>(rows) * static_cast<uint64_t>(out)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("trainer: y has %d values, expected rows * "
                        "output_features = %d * %d = %d",
                        y.size(), rows, out, rows * out));
  }
  if (rows == 0) return absl::OkStatus();
  std::vector<float> current(x.begin(), x.end());
  std::vector<float> next;
  for (const Layer& layer : model_.layers) {
    next.resize(rows * layer.spec.out_features);
    TernaryGemmArgs args;
    args.m = rows;
    args.x = current.data();
    args.weight = layer.weight.view();
    args.bias = layer.spec.has_bias ? layer.bias.data() : nullptr;
    args.act_quant = layer.spec.act_quant;
    args.activation = layer.spec.activation;
    args.y = next.data();
    if (absl::Status s = backend_->TernaryForward(args); !s.ok()) return s;
    current.swap(next);
  }
  std::copy(current.begin(), current.end(), y.begin());
  return absl::OkStatus();
}

absl::StatusOr<Gradients> Trainer::Backprop(std::span<const float> x,
                                            int64_t rows,
                                            const Targets& targets,
                                            bool input_gradient) {
  if (absl::Status s = CheckBatch(x, rows); !s.ok()) return s;
  if (rows == 0) {
    return absl::InvalidArgumentError(
        "trainer: a training batch needs rows > 0");
  }
  if (absl::Status s = CheckTargets(targets, rows); !s.ok()) return s;
  const size_t num_layers = model_.layers.size();

  // Forward, keeping per layer the (fake-quantized) input x_hat that the
  // weight gradient needs and the pre-activation z the activation's
  // derivative needs.
  std::vector<std::vector<float>> inputs(num_layers);  // x_hat, [rows, in]
  std::vector<std::vector<float>> pre(num_layers);     // z, [rows, out]
  std::vector<float> current(x.begin(), x.end());
  for (size_t l = 0; l < num_layers; ++l) {
    const Layer& layer = model_.layers[l];
    const int64_t in = layer.spec.in_features;
    const int64_t out = layer.spec.out_features;
    pre[l].resize(rows * out);
    TernaryGemmArgs args;
    args.m = rows;
    args.x = current.data();
    args.weight = layer.weight.view();
    args.bias = layer.spec.has_bias ? layer.bias.data() : nullptr;
    args.act_quant = layer.spec.act_quant;
    args.activation = Activation::kIdentity;
    args.y = pre[l].data();
    if (absl::Status s = backend_->TernaryForward(args); !s.ok()) return s;

    if (layer.spec.act_quant == ActivationQuant::kInt8) {
      // x_hat = xq / s: the value the integer product effectively used. The
      // forward itself never forms it (it scales the int32 sum instead).
      std::vector<int8_t> xq(rows * in);
      std::vector<float> row_scale(rows);
      QuantizeRowsInt8(current.data(), rows, in, xq.data(), row_scale.data());
      inputs[l].resize(rows * in);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < in; ++c) {
          inputs[l][r * in + c] =
              static_cast<float>(xq[r * in + c]) / row_scale[r];
        }
      }
    } else {
      inputs[l] = current;
    }
    current.resize(rows * out);
    for (int64_t e = 0; e < rows * out; ++e) {
      current[e] = ApplyActivation(layer.spec.activation, pre[l][e]);
    }
  }

  Gradients grads;
  const int64_t out = model_.output_features();
  std::vector<float> d_out(rows * out);
  absl::StatusOr<double> loss =
      options_.loss == LossKind::kMeanSquaredError
          ? MeanSquaredError(current, targets.values, rows, out, d_out)
          : SoftmaxCrossEntropy(current, targets.labels, rows, out, d_out,
                                &grads.correct);
  if (!loss.ok()) return loss.status();
  grads.loss = *loss;

  // Backward through the layers. d_out holds d loss / d (layer output).
  grads.weight.resize(num_layers);
  grads.bias.resize(num_layers);
  for (size_t l = num_layers; l-- > 0;) {
    const Layer& layer = model_.layers[l];
    const int64_t in = layer.spec.in_features;
    const int64_t n = layer.spec.out_features;
    // dZ = dA * act'(z), in place.
    if (layer.spec.activation != Activation::kIdentity) {
      for (int64_t e = 0; e < rows * n; ++e) {
        d_out[e] *= ActivationGradient(layer.spec.activation, pre[l][e]);
      }
    }
    if (layer.spec.has_bias) {
      grads.bias[l].resize(n);
      for (int64_t j = 0; j < n; ++j) {
        double sum = 0.0;
        for (int64_t r = 0; r < rows; ++r) sum += d_out[r * n + j];
        grads.bias[l][j] = static_cast<float>(sum);
      }
    }
    // dW [n, in] = dZ^T [n, rows] . x_hat [rows, in]; by the STE this is
    // also the latent weights' gradient.
    grads.weight[l].resize(n * in);
    GemmArgs dw;
    dw.transpose_a = true;
    dw.m = n;
    dw.n = in;
    dw.k = rows;
    dw.a = d_out.data();
    dw.lda = n;
    dw.b = inputs[l].data();
    dw.ldb = in;
    dw.c = grads.weight[l].data();
    dw.ldc = in;
    if (absl::Status s = backend_->Gemm(dw); !s.ok()) return s;
    // dX [rows, in] = dZ [rows, n] . W_hat [n, in]; through the int8
    // quantizer unchanged (STE). Layer 0's is the input gradient, which a
    // training step does not need.
    if (l == 0 && !input_gradient) break;
    std::vector<float> d_in(rows * in);
    GemmArgs dx;
    dx.m = rows;
    dx.n = in;
    dx.k = n;
    dx.a = d_out.data();
    dx.lda = n;
    dx.b = dequantized_[l].data();
    dx.ldb = in;
    dx.c = d_in.data();
    dx.ldc = in;
    if (absl::Status s = backend_->Gemm(dx); !s.ok()) return s;
    d_out.swap(d_in);
  }
  if (input_gradient) grads.input = std::move(d_out);
  return grads;
}

absl::StatusOr<Gradients> Trainer::ComputeGradients(
    std::span<const float> x, int64_t rows, std::span<const float> targets) {
  return Backprop(x, rows, Targets{.values = targets, .labels = {}},
                  /*input_gradient=*/true);
}

absl::StatusOr<Gradients> Trainer::ComputeGradients(
    std::span<const float> x, int64_t rows, std::span<const int32_t> labels) {
  return Backprop(x, rows, Targets{.values = {}, .labels = labels},
                  /*input_gradient=*/true);
}

absl::StatusOr<StepResult> Trainer::Step(std::span<const float> x, int64_t rows,
                                         std::span<const float> targets) {
  return DoStep(x, rows, Targets{.values = targets, .labels = {}});
}

absl::StatusOr<StepResult> Trainer::Step(std::span<const float> x, int64_t rows,
                                         std::span<const int32_t> labels) {
  return DoStep(x, rows, Targets{.values = {}, .labels = labels});
}

absl::StatusOr<StepResult> Trainer::DoStep(std::span<const float> x,
                                           int64_t rows,
                                           const Targets& targets) {
  if (broken_) {
    return absl::FailedPreconditionError(
        "trainer: a previous step failed with an internal error; create a new "
        "trainer");
  }
  absl::StatusOr<Gradients> grads =
      Backprop(x, rows, targets, /*input_gradient=*/false);
  if (!grads.ok()) return grads.status();
  if (!std::isfinite(grads->loss)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "trainer: loss is not finite (%g) at step %d; weights unchanged "
        "(training diverged: lower the learning rate)",
        grads->loss, optimizer_->steps() + 1));
  }
  std::vector<ParameterSlot> slots;
  for (size_t l = 0; l < model_.layers.size(); ++l) {
    Layer& layer = model_.layers[l];
    if (!AllFinite(grads->weight[l]) || !AllFinite(grads->bias[l])) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "trainer: layer %d has a non-finite gradient at step %d; weights "
          "unchanged (training diverged: lower the learning rate)",
          l, optimizer_->steps() + 1));
    }
    slots.push_back({.value = layer.latent,
                     .grad = grads->weight[l],
                     .apply_weight_decay = true});
    if (layer.spec.has_bias) {
      slots.push_back({.value = layer.bias,
                       .grad = grads->bias[l],
                       .apply_weight_decay = options_.decay_biases});
    }
  }
  if (absl::Status s = optimizer_->Step(slots); !s.ok()) return s;
  if (absl::Status s = Requantize(); !s.ok()) {
    broken_ = true;
    return s;
  }
  return StepResult{.loss = grads->loss,
                    .correct = grads->correct,
                    .step = optimizer_->steps()};
}

absl::Status Trainer::Requantize() {
  for (size_t l = 0; l < model_.layers.size(); ++l) {
    Layer& layer = model_.layers[l];
    if (!AllFinite(layer.bias)) {
      return absl::InternalError(
          absl::StrFormat("trainer: layer %d bias became non-finite at step %d",
                          l, optimizer_->steps()));
    }
    absl::StatusOr<PackedTernaryMatrix> packed =
        QuantizeAndPack(layer.latent, layer.spec.out_features,
                        layer.spec.in_features, layer.weight.granularity);
    if (!packed.ok()) {
      return absl::InternalError(absl::StrFormat(
          "trainer: re-quantizing layer %d at step %d failed: %s", l,
          optimizer_->steps(), packed.status().message()));
    }
    layer.weight = *std::move(packed);
    RefreshDequantized(l);
  }
  return absl::OkStatus();
}

absl::Status Trainer::UpdateModel(Model* model) const {
  if (model == nullptr) {
    return absl::InvalidArgumentError("trainer: UpdateModel got a null model");
  }
  if (model->layers.size() != model_.layers.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("trainer: model has %d layers, the trainer's has %d",
                        model->layers.size(), model_.layers.size()));
  }
  for (size_t l = 0; l < model_.layers.size(); ++l) {
    const LayerSpec& a = model->layers[l].spec;
    const LayerSpec& b = model_.layers[l].spec;
    if (a.in_features != b.in_features || a.out_features != b.out_features ||
        a.activation != b.activation || a.act_quant != b.act_quant ||
        a.has_bias != b.has_bias) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "trainer: layer %d spec differs: model has in %d, out %d, activation "
          "%s, act_quant %s, bias %s; the trainer's has in %d, out %d, "
          "activation %s, act_quant %s, bias %s",
          l, a.in_features, a.out_features, ActivationName(a.activation),
          ActivationQuantName(a.act_quant), a.has_bias ? "yes" : "no",
          b.in_features, b.out_features, ActivationName(b.activation),
          ActivationQuantName(b.act_quant), b.has_bias ? "yes" : "no"));
    }
  }
  for (size_t l = 0; l < model_.layers.size(); ++l) {
    Layer& dst = model->layers[l];
    const Layer& src = model_.layers[l];
    dst.weight = src.weight;
    dst.bias = src.bias;
    dst.latent = src.latent;
  }
  return absl::OkStatus();
}

}  // namespace bitnet::training
