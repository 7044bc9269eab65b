// Fine-tuning behind Admin.FineTune and the host copies of weights behind
// Admin.SaveModel. Knows nothing of gRPC: the Admin service decodes the
// stream into a FineTuneSpec and examples, and turns the callbacks into
// stream messages.
//
// Life of a fine-tune:
//   1. Begin(spec): resolves the base version, claims the model (one
//      fine-tune per model at a time) and returns a FineTuneJob.
//   2. job->AddExamples(...) for every streamed batch (the data set is kept
//      in memory, fp32, up to FineTuneManagerOptions::max_data_bytes).
//   3. job->Start(callbacks): training runs on a thread of its own (never a
//      gRPC thread). The trainer is, in order of preference:
//        - a clone of the trainer kept resident from the previous successful
//          fine-tune of this model, when the base version is the version it
//          produced (latent weights and optimizer moments continue; with
//          different loss/optimizer settings only the latents continue);
//        - a new trainer on the version's model file, re-read from the
//          model repository (latents from the file when present, else from
//          the dequantized weights, see docs/training.md). The file is
//          checked to still hold the weights being served (a probe batch
//          through both must agree) so a replaced file is refused.
//      Training runs on one device: with config.device "" or "cuda" on a
//      multi-GPU server, the GPU of the model's first instance in rotation.
//      After the last step the trained model is published as a new version
//      through ServingState::LoadModel (loaded onto every instance, then an
//      atomic swap for all of them; in-flight batches finish on the old
//      version) and the trainer becomes the model's resident one.
//      On any error or cancellation nothing is published and the resident
//      trainer is unchanged (training ran on a clone). A server that starts
//      draining stops its fine-tunes at the next step (UNAVAILABLE) rather
//      than hold the drain for the whole grace period.
//
// Thread-safety: all public methods may be called from any thread. A
// FineTuneJob's AddExamples/Start must be called by one thread at a time
// (the stream's reactor), and Start at most once.
#ifndef BITNET_SERVER_SERVICE_FINETUNE_MANAGER_H_
#define BITNET_SERVER_SERVICE_FINETUNE_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/model/model.h"
#include "server/service/serving_state.h"
#include "server/training/optimizer.h"
#include "server/training/trainer.h"
#include "server/training/training_backend.h"
#include "server/training/training_math.h"

namespace bitnet {

// A validated fine-tune request (FineTuneConfig with defaults applied).
struct FineTuneSpec {
  std::string model;
  int64_t base_version = 0;  // 0 = latest (resolved by Begin)
  // Exactly one > 0.
  int64_t steps = 0;
  int64_t epochs = 0;
  int64_t batch_size = 32;
  training::LossKind loss = training::LossKind::kSoftmaxCrossEntropy;
  training::OptimizerOptions optimizer;
  int64_t report_interval = 10;
  bool shuffle = true;
  uint64_t seed = 0;
  // "", "cpu" or "cuda" ("" = "cuda" when the model is served on a GPU,
  // else "cpu"). "cuda" trains on the GPU of the model's first instance in
  // rotation (GPU 0 when the model is served on the CPU).
  std::string device;
};

// Limits; the defaults suit a server (the tests lower them).
struct FineTuneManagerOptions {
  // Largest data set one fine-tune may stream (fp32 inputs + targets/labels).
  int64_t max_data_bytes = int64_t{1} << 30;
  // Largest batch_size.
  int64_t max_batch_size = 65536;
  // Threads of the CPU training backend (<= 0: hardware concurrency).
  int cpu_threads = 0;
  // Creates the GPU training backend on the first "cuda" fine-tune (the
  // backend loads cuBLAS then, never at server start). Null: the built-in
  // training::CreateCudaTrainingBackend (UNAVAILABLE without CUDA).
  std::function<absl::StatusOr<std::shared_ptr<training::TrainingBackend>>()>
      cuda_backend_factory;
};

// One FineTuneProgress.
struct FineTuneProgressInfo {
  int64_t step = 0;
  int64_t total_steps = 0;
  int64_t epoch = 0;
  double loss = 0.0;
  double accuracy = 0.0;  // cross-entropy only
  double examples_per_second = 0.0;
  double elapsed_seconds = 0.0;
};

// The FineTuneResult of a successful run.
struct FineTuneOutcome {
  std::string model;
  int64_t version = 0;
  int64_t base_version = 0;
  int64_t steps = 0;
  int64_t examples = 0;
  double final_loss = 0.0;
  double final_accuracy = 0.0;
  double training_seconds = 0.0;
  std::string device;
  bool resumed = false;
};

struct FineTuneCallbacks {
  // Every report_interval steps and after the last step (training thread).
  std::function<void(const FineTuneProgressInfo&)> progress;
  // Polled before every step and just before publishing; true stops the run
  // with CANCELLED (nothing published).
  std::function<bool()> cancelled;
  // Exactly once, last, from the training thread: the outcome, or the error
  // (nothing was published then). The job may be destroyed from here.
  std::function<void(absl::StatusOr<FineTuneOutcome>)> done;
};

class FineTuneManager;

class FineTuneJob {
 public:
  ~FineTuneJob();  // releases the model's claim if the job never ran
  FineTuneJob(const FineTuneJob&) = delete;
  FineTuneJob& operator=(const FineTuneJob&) = delete;

  const FineTuneSpec& spec() const { return spec_; }  // base_version resolved
  int64_t input_features() const { return input_features_; }
  int64_t output_features() const { return output_features_; }
  int64_t examples() const { return rows_; }

  // Appends `rows` examples: `x` [rows, input_features]; MSE: `targets`
  // [rows, output_features]; cross-entropy: `labels` (rows classes). Values
  // must already be finite (the tensor decoder checks). `what` prefixes
  // error messages (e.g. "batch 3"). Errors: INVALID_ARGUMENT (sizes, the
  // wrong kind of target for the loss, a label out of range),
  // RESOURCE_EXHAUSTED beyond max_data_bytes. Nothing is added on error.
  absl::Status AddExamples(const std::string& what, std::span<const float> x,
                           int64_t rows, std::span<const float> targets,
                           std::span<const int32_t> labels);

  // Starts training on a new thread (owned by the manager). INVALID_ARGUMENT
  // (returned, callbacks not called) when no example was added.
  absl::Status Start(FineTuneCallbacks callbacks);

 private:
  friend class FineTuneManager;
  struct ModelSlot;
  FineTuneJob(FineTuneManager* manager, FineTuneSpec spec,
              std::shared_ptr<ModelSlot> slot, int64_t input_features,
              int64_t output_features);
  // The whole run, on the training thread.
  absl::StatusOr<FineTuneOutcome> Run(const FineTuneCallbacks& callbacks);

  FineTuneManager* const manager_;
  FineTuneSpec spec_;
  std::shared_ptr<ModelSlot> slot_;
  const int64_t input_features_;
  const int64_t output_features_;
  int64_t rows_ = 0;
  std::vector<float> x_;
  std::vector<float> targets_;
  std::vector<int32_t> labels_;
  bool started_ = false;
};

// A version's weights on the host, for SaveModel.
struct HostModel {
  int64_t version = 0;  // resolved (never 0)
  Model model;
  bool has_latents = false;
  // Where they came from: "resident fine-tune state" or the file path.
  std::string source;
};

class FineTuneManager {
 public:
  // `state` is not owned and must outlive the manager.
  FineTuneManager(ServingState* state, FineTuneManagerOptions options = {});
  // Cancels running jobs (their `done` gets CANCELLED) and joins their
  // threads.
  ~FineTuneManager();

  // Checks the spec (INVALID_ARGUMENT naming the config field), resolves
  // the base version (NOT_FOUND for the model or version), and claims the
  // model: FAILED_PRECONDITION when another fine-tune of it is running (the
  // claim is released when the job finishes or is destroyed unstarted).
  absl::StatusOr<std::unique_ptr<FineTuneJob>> Begin(FineTuneSpec spec);

  // The host weights of `name` version `version` (0 = latest): the resident
  // trainer's model (with latents) when it produced that version, else the
  // version's model file re-read and checked against the served weights.
  // Errors: NOT_FOUND (model, version), FAILED_PRECONDITION when the weights
  // are not available on the host (e.g. the "demo" model, or an older
  // fine-tuned version), the file's error otherwise.
  absl::StatusOr<HostModel> GetHostModel(std::string_view name,
                                         int64_t version);

  // Drops the resident trainer of `name` (after the model was unloaded).
  void Forget(std::string_view name);

  // The version whose trainer is resident for `name` (0 if none). Tests.
  int64_t ResidentVersion(std::string_view name);

 private:
  friend class FineTuneJob;
  using ModelSlot = FineTuneJob::ModelSlot;

  void Release(const std::shared_ptr<ModelSlot>& slot);
  void Launch(std::function<void()> body);
  // `device` "cpu" or "cuda"; `gpu` the CUDA ordinal for "cuda".
  absl::StatusOr<std::shared_ptr<training::TrainingBackend>> BackendFor(
      std::string_view device, int gpu);
  // The model file behind a version, checked against the served weights.
  absl::StatusOr<Model> ReadVersionFile(std::string_view name,
                                        int64_t version);

  ServingState* const state_;
  const FineTuneManagerOptions options_;
  std::atomic<bool> stopping_{false};

  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<ModelSlot>, std::less<>> slots_
      ABSL_GUARDED_BY(mu_);
  // Training threads; finished ones are joined at the next Launch.
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  std::vector<Worker> workers_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<training::TrainingBackend> cpu_backend_ ABSL_GUARDED_BY(mu_);
  // Per CUDA ordinal.
  std::map<int, std::shared_ptr<training::TrainingBackend>> cuda_backends_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_FINETUNE_MANAGER_H_
