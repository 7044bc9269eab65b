// STE (straight-through estimator) training of a whole ternary MLP on the
// host: the fine-tuning engine behind the Admin API.
//
// The model trained is exactly the model served. Forward: each layer runs
// TrainingBackend::TernaryForward on its packed weights, which equals
// ReferenceTernaryGemm (kernels/ternary_gemm.h) bit for bit in both
// activation modes, then the layer's activation. Backward (BitNet b1.58
// convention): the ternary weight quantizer and the int8 activation quantizer
// are treated as the identity, so
//   d loss / d latent W = d loss / d W_hat,  W_hat = q * scale (dequantized),
//   d loss / d x        = d loss / d x_hat,  x_hat = xq / s (int8 mode),
// i.e. dW = dZ^T . X_hat, dX = dZ . W_hat, db = column sums of dZ. The
// optimizer updates the fp32 latent weights and biases; then every layer is
// re-quantized with QuantizeAndPack at its own scale granularity, so the
// packed model (ExportModel) serves exactly the function the next training
// forward computes. docs/training.md has the derivation.
//
// Thread-safety: none; one call at a time (the Admin service serializes
// fine-tuning per model). The Model given to Create is copied.
#ifndef BITNET_SERVER_TRAINING_TRAINER_H_
#define BITNET_SERVER_TRAINING_TRAINER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/model/model.h"
#include "server/training/optimizer.h"
#include "server/training/training_backend.h"
#include "server/training/training_math.h"

namespace bitnet::training {

struct TrainerOptions {
  LossKind loss = LossKind::kSoftmaxCrossEntropy;
  OptimizerOptions optimizer;
  // Decay biases too (off by default, the usual practice).
  bool decay_biases = false;
  // Used when `backend` is null: a CPU backend with this many threads
  // (<= 0: hardware concurrency).
  int num_threads = 1;
  // Optional; shared so one backend (e.g. a CUDA context) can serve several
  // trainers; the Trainer keeps its own reference. Must be thread-safe
  // when shared (TrainingBackend requires it).
  std::shared_ptr<TrainingBackend> backend;
};

struct StepResult {
  // Loss of the batch *before* this step's update (the forward the gradients
  // came from), mean over the batch as LossKind describes.
  double loss = 0.0;
  // Cross-entropy only: rows whose label was the arg-max, before the update.
  int64_t correct = 0;
  // Optimizer steps completed, this one included.
  int64_t step = 0;
};

// Gradients of the loss for one batch, without any update: what Step
// applies. Per layer, same shapes as the layer's latent weight and bias.
struct Gradients {
  double loss = 0.0;
  int64_t correct = 0;                     // as StepResult::correct
  std::vector<std::vector<float>> weight;  // [layers][out * in]
  std::vector<std::vector<float>> bias;    // [layers][out], empty without bias
  // d loss / d x, [rows, in]; filled by ComputeGradients only (Step skips it).
  std::vector<float> input;
};

class Trainer {
 public:
  // Copies `model` (ValidateModel must pass). Latent weights come from the
  // model's `latent` tensors when present; otherwise from the dequantized
  // weights rescaled so that re-quantizing them reproduces the packed codes
  // and scales (see docs/training.md: plain dequantized weights would
  // re-quantize to a ~30% smaller scale and shift every output at the first
  // step). Until the first update the forward uses the model's packed
  // weights as given, so it equals what the model serves.
  // Errors: INVALID_ARGUMENT for an invalid model (empty, inconsistent,
  // non-finite latent or bias values) or options (naming the field).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(
      const Model& model, TrainerOptions options);

  // One optimizer step on a batch. `x` is [rows, input_features] row-major
  // fp32, rows > 0. MSE takes `targets` [rows, output_features]; cross-entropy
  // takes `labels` (rows entries in [0, output_features)). Errors:
  // INVALID_ARGUMENT for sizes, non-finite inputs or targets, labels out of
  // range, or the overload that does not match options.loss (state
  // unchanged); FAILED_PRECONDITION when a gradient is not finite (training
  // diverged: lower the learning rate; state unchanged) or after an
  // INTERNAL error; INTERNAL if an update made a latent weight non-finite
  // (the trainer then refuses further steps).
  absl::StatusOr<StepResult> Step(std::span<const float> x, int64_t rows,
                                  std::span<const float> targets);
  absl::StatusOr<StepResult> Step(std::span<const float> x, int64_t rows,
                                  std::span<const int32_t> labels);

  // Loss and gradients at the current weights; nothing is updated. Same
  // arguments and errors as Step (no FAILED_PRECONDITION for non-finite
  // gradients: they are returned as they are).
  absl::StatusOr<Gradients> ComputeGradients(std::span<const float> x,
                                             int64_t rows,
                                             std::span<const float> targets);
  absl::StatusOr<Gradients> ComputeGradients(std::span<const float> x,
                                             int64_t rows,
                                             std::span<const int32_t> labels);

  // The training forward (no caching): y [rows, output_features] =
  // ReferenceForward(ExportModel(), x) bit for bit. rows may be 0.
  // Errors: INVALID_ARGUMENT for sizes or non-finite x.
  absl::Status Forward(std::span<const float> x, int64_t rows,
                       std::span<float> y);

  // The current model: packed weights and scales re-quantized from the
  // latents, biases, and the latents themselves (so a written file can be
  // fine-tuned further). Always passes ValidateModel.
  const Model& model() const { return model_; }
  Model ExportModel() const { return model_; }

  // Writes the current packed weights, scales, biases and latents into
  // `model`, which must have the same layer specs (e.g. the registry's copy
  // of the model this trainer was created from). INVALID_ARGUMENT naming the
  // first layer that differs; `model` is untouched then.
  absl::Status UpdateModel(Model* model) const;

  // A deep copy: latents, packed weights, optimizer moments and step count
  // are copied, so the clone continues exactly as this trainer would while
  // this one stays untouched. The fine-tune service trains a clone and keeps
  // it only if the whole run succeeds. The clone uses `backend` (must be
  // thread-safe if shared), or this trainer's backend when null. Costs about
  // (2 + optimizer buffers) x the latent weights in memory.
  std::unique_ptr<Trainer> Clone(
      std::shared_ptr<TrainingBackend> backend = nullptr) const;

  int64_t steps() const { return optimizer_->steps(); }
  const TrainerOptions& options() const { return options_; }
  // For schedules; INVALID_ARGUMENT unless finite and > 0.
  absl::Status SetLearningRate(float learning_rate);

 private:
  Trainer(Model model, TrainerOptions options,
          std::shared_ptr<TrainingBackend> backend,
          std::unique_ptr<Optimizer> optimizer);

  struct Targets {
    std::span<const float> values;
    std::span<const int32_t> labels;
  };
  absl::Status CheckBatch(std::span<const float> x, int64_t rows) const;
  absl::Status CheckTargets(const Targets& targets, int64_t rows) const;
  // `input_gradient`: also compute Gradients::input (one more GEMM).
  absl::StatusOr<Gradients> Backprop(std::span<const float> x, int64_t rows,
                                     const Targets& targets,
                                     bool input_gradient);
  absl::StatusOr<StepResult> DoStep(std::span<const float> x, int64_t rows,
                                    const Targets& targets);
  // Re-quantizes every layer from latent_ into model_ and dequantized_.
  absl::Status Requantize();
  void RefreshDequantized(size_t layer);

  Model model_;  // packed weights, biases and latents: the training state
  TrainerOptions options_;
  std::shared_ptr<TrainingBackend> backend_;
  std::unique_ptr<Optimizer> optimizer_;
  // W_hat = q * scale per layer, [out, in]: the backward pass's weights.
  std::vector<std::vector<float>> dequantized_;
  bool broken_ = false;
};

}  // namespace bitnet::training

#endif  // BITNET_SERVER_TRAINING_TRAINER_H_
