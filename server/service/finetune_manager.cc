#include "server/service/finetune_manager.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "server/model/demo_model.h"
#include "server/model/model_file.h"
#include "server/model/reference_forward.h"
#include "server/registry/model_registry.h"
#include "server/service/event_log.h"
#include "server/training/cuda_training_backend.h"

namespace bitnet {

struct FineTuneJob::ModelSlot {
  explicit ModelSlot(std::string model_name) : name(std::move(model_name)) {}
  const std::string name;
  bool running = false;  // guarded by FineTuneManager::mu_
  // Held while publishing a version and while reading or replacing the
  // resident trainer, so SaveModel never sees a version without its state.
  absl::Mutex mu;
  int64_t resident_version ABSL_GUARDED_BY(mu) = 0;
  std::unique_ptr<training::Trainer> resident ABSL_GUARDED_BY(mu);
};

namespace {

using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// splitmix64: a fixed, documented generator, so a shuffled run is
// reproducible from (seed, pass) whatever the standard library.
uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Fisher-Yates over [0, n) seeded by (seed, pass).
void ShuffleForPass(uint64_t seed, int64_t pass, std::vector<int64_t>& order) {
  std::iota(order.begin(), order.end(), int64_t{0});
  uint64_t state = seed ^ (0xd1b54a32d192ed03ULL * static_cast<uint64_t>(pass + 1));
  for (int64_t i = static_cast<int64_t>(order.size()) - 1; i > 0; --i) {
    const int64_t j =
        static_cast<int64_t>(SplitMix64(state) % static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
}

bool SameOptimizerSettings(const training::TrainerOptions& a,
                           const FineTuneSpec& b) {
  const training::OptimizerOptions& x = a.optimizer;
  const training::OptimizerOptions& y = b.optimizer;
  return a.loss == b.loss && x.kind == y.kind && x.beta1 == y.beta1 &&
         x.beta2 == y.beta2 && x.epsilon == y.epsilon &&
         x.momentum == y.momentum && x.weight_decay == y.weight_decay;
}

bool SameSpecs(const std::vector<LayerSpec>& a, const Model& b) {
  if (a.size() != b.layers.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const LayerSpec& x = a[i];
    const LayerSpec& y = b.layers[i].spec;
    if (x.in_features != y.in_features || x.out_features != y.out_features ||
        x.activation != y.activation || x.act_quant != y.act_quant ||
        x.has_bias != y.has_bias) {
      return false;
    }
  }
  return true;
}

// The CUDA ordinal a fine-tune of `model` trains on: the first of its
// instances that is on a GPU and in rotation, else the first on a GPU; -1
// when the model is not served on a GPU.
int TrainingGpu(ServingState& state, std::string_view model) {
  int first = -1;
  for (const ModelStatus& status : state.registry().List()) {
    if (status.name != model) continue;
    for (const InstanceStatus& instance : status.instances) {
      if (!instance.device.starts_with("cuda:")) continue;
      int ordinal = -1;
      if (!absl::SimpleAtoi(instance.device.substr(5), &ordinal) ||
          ordinal < 0) {
        continue;
      }
      if (instance.healthy) return ordinal;
      if (first < 0) first = ordinal;
    }
  }
  return first;
}

// What inference needs of a trained model: latents stay with the trainer
// (they would double the served copy's memory for nothing).
Model ServedCopy(const Model& trained) {
  Model served;
  served.layers.reserve(trained.layers.size());
  for (const Layer& layer : trained.layers) {
    Layer copy;
    copy.spec = layer.spec;
    copy.weight = layer.weight;
    copy.bias = layer.bias;
    served.layers.push_back(std::move(copy));
  }
  return served;
}

absl::Status ValidateSpec(const FineTuneSpec& spec, int64_t max_batch_size) {
  if (spec.model.empty()) {
    return absl::InvalidArgumentError(
        "config.model: empty; expected the name of a loaded model");
  }
  if (spec.base_version < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.base_version: ", spec.base_version,
                     "; expected 0 (latest) or a loaded version"));
  }
  if (spec.steps < 0 || spec.epochs < 0 || (spec.steps > 0) == (spec.epochs > 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "config.steps is %d and config.epochs is %d; expected exactly one of "
        "them > 0 (and neither negative)",
        spec.steps, spec.epochs));
  }
  if (spec.batch_size < 1 || spec.batch_size > max_batch_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("config.batch_size: %d; expected 1 to %d (0 = 32)",
                        spec.batch_size, max_batch_size));
  }
  if (spec.report_interval < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "config.report_interval: %d; expected >= 1 (0 = 10)",
        spec.report_interval));
  }
  if (spec.device != "" && spec.device != "cpu" && spec.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("config.device: \"", spec.device,
                     "\"; expected \"\", \"cpu\" or \"cuda\""));
  }
  if (absl::Status s = training::ValidateOptimizerOptions(spec.optimizer);
      !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: ", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------- FineTuneJob

FineTuneJob::FineTuneJob(FineTuneManager* manager, FineTuneSpec spec,
                         std::shared_ptr<ModelSlot> slot,
                         int64_t input_features, int64_t output_features)
    : manager_(manager),
      spec_(std::move(spec)),
      slot_(std::move(slot)),
      input_features_(input_features),
      output_features_(output_features) {}

FineTuneJob::~FineTuneJob() {
  if (!started_) manager_->Release(slot_);
}

absl::Status FineTuneJob::AddExamples(const std::string& what,
                                      std::span<const float> x, int64_t rows,
                                      std::span<const float> targets,
                                      std::span<const int32_t> labels) {
  if (started_) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": training already started"));
  }
  if (rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": inputs has ", rows, " rows; expected >= 1"));
  }
  if (x.size() != static_cast<size_t>(rows * input_features_)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: inputs has %d values; expected rows * input_features = %d * %d",
        what, x.size(), rows, input_features_));
  }
  const bool mse = spec_.loss == training::LossKind::kMeanSquaredError;
  int64_t bytes_per_row = input_features_ * 4;
  if (mse) {
    if (!labels.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ".labels: set, but the loss is \"mse\", which takes float "
                "targets in ", what, ".targets"));
    }
    if (targets.size() != static_cast<size_t>(rows * output_features_)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s.targets: %d values; expected rows * output_features = %d * %d "
          "(loss \"mse\")",
          what, targets.size(), rows, output_features_));
    }
    bytes_per_row += output_features_ * 4;
  } else {
    if (!targets.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ".targets: set, but the loss is \"cross_entropy\", which "
                "takes int32 class labels in ", what, ".labels"));
    }
    if (labels.size() != static_cast<size_t>(rows)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s.labels: %d labels; expected one per input row (%d)", what,
          labels.size(), rows));
    }
    for (size_t i = 0; i < labels.size(); ++i) {
      if (labels[i] < 0 || labels[i] >= output_features_) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s.labels[%d]: %d; expected a class in [0, output_features = %d)",
            what, i, labels[i], output_features_));
      }
    }
    bytes_per_row += 4;
  }
  const int64_t limit = manager_->options_.max_data_bytes;
  if ((rows_ + rows) * bytes_per_row > limit) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: the training data would reach %d bytes (%d rows); this server "
        "accepts at most %d bytes per fine-tune",
        what, (rows_ + rows) * bytes_per_row, rows_ + rows, limit));
  }
  x_.insert(x_.end(), x.begin(), x.end());
  if (mse) {
    targets_.insert(targets_.end(), targets.begin(), targets.end());
  } else {
    labels_.insert(labels_.end(), labels.begin(), labels.end());
  }
  rows_ += rows;
  return absl::OkStatus();
}

absl::Status FineTuneJob::Start(FineTuneCallbacks callbacks) {
  if (started_) {
    return absl::FailedPreconditionError("fine-tune already started");
  }
  if (rows_ == 0) {
    return absl::InvalidArgumentError(
        "no training examples: send at least one batch with rows after the "
        "config");
  }
  started_ = true;
  manager_->Launch([this, callbacks = std::move(callbacks)] {
    absl::StatusOr<FineTuneOutcome> outcome = Run(callbacks);
    FineTuneManager* manager = manager_;
    std::shared_ptr<ModelSlot> slot = slot_;
    manager->Release(slot);
    // Last: `done` may destroy this job.
    callbacks.done(std::move(outcome));
  });
  return absl::OkStatus();
}

absl::StatusOr<FineTuneOutcome> FineTuneJob::Run(
    const FineTuneCallbacks& callbacks) {
  const auto cancelled = [&] {
    return manager_->stopping_.load() ||
           (callbacks.cancelled && callbacks.cancelled());
  };
  ServingState& state = *manager_->state_;
  absl::StatusOr<std::shared_ptr<const ModelVersion>> base =
      state.registry().Get(spec_.model, spec_.base_version);
  if (!base.ok()) return base.status();  // unloaded while data streamed in
  // One device trains: the GPU of the first instance in rotation (the
  // publish below loads the result onto every instance).
  const int serving_gpu = TrainingGpu(state, spec_.model);
  std::string device = spec_.device;
  if (device.empty()) device = serving_gpu >= 0 ? "cuda" : "cpu";
  const int gpu = std::max(serving_gpu, 0);
  absl::StatusOr<std::shared_ptr<training::TrainingBackend>> backend =
      manager_->BackendFor(device, gpu);
  if (!backend.ok()) return backend.status();

  training::TrainerOptions options;
  options.loss = spec_.loss;
  options.optimizer = spec_.optimizer;
  options.backend = *backend;

  // The trainer: the resident one (cloned) or one on the version's file.
  std::unique_ptr<training::Trainer> trainer;
  bool resumed = false;
  {
    absl::MutexLock lock(&slot_->mu);
    if (slot_->resident != nullptr &&
        slot_->resident_version == spec_.base_version) {
      resumed = true;
      if (SameOptimizerSettings(slot_->resident->options(), spec_)) {
        trainer = slot_->resident->Clone(*backend);
        if (absl::Status s =
                trainer->SetLearningRate(spec_.optimizer.learning_rate);
            !s.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat("config.learning_rate: ", s.message()));
        }
      } else {
        // New optimizer settings: the latents continue, the moments restart.
        absl::StatusOr<std::unique_ptr<training::Trainer>> created =
            training::Trainer::Create(slot_->resident->model(), options);
        if (!created.ok()) return created.status();
        trainer = *std::move(created);
      }
    }
  }
  if (trainer == nullptr) {
    absl::StatusOr<Model> model =
        manager_->ReadVersionFile(spec_.model, spec_.base_version);
    if (!model.ok()) return model.status();
    absl::StatusOr<std::unique_ptr<training::Trainer>> created =
        training::Trainer::Create(*model, options);
    if (!created.ok()) return created.status();
    trainer = *std::move(created);
  }

  // The schedule: passes over the data set in mini-batches of batch_size
  // rows (the last one of a pass smaller), shuffled per pass when asked.
  const int64_t n = rows_;
  const int64_t batch = std::min(spec_.batch_size, n);
  const int64_t steps_per_pass = (n + batch - 1) / batch;
  const int64_t total =
      spec_.steps > 0 ? spec_.steps : spec_.epochs * steps_per_pass;
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  int64_t order_pass = -1;
  std::vector<float> bx, bt;
  std::vector<int32_t> bl;
  const bool mse = spec_.loss == training::LossKind::kMeanSquaredError;

  LogEvent(LogLevel::kInfo, "finetune_start",
           {{"model", spec_.model},
            {"base_version", absl::StrCat(spec_.base_version)},
            {"examples", absl::StrCat(n)},
            {"steps", absl::StrCat(total)},
            {"device", device},
            {"resumed", resumed ? "true" : "false"}});

  const SteadyClock::time_point start = SteadyClock::now();
  SteadyClock::time_point interval_start = start;
  double interval_loss = 0.0;
  int64_t interval_steps = 0, interval_rows = 0, interval_correct = 0;
  FineTuneProgressInfo last;
  for (int64_t s = 0; s < total; ++s) {
    if (cancelled()) {
      return absl::CancelledError(absl::StrFormat(
          "fine-tune of \"%s\" cancelled after %d of %d steps; no new version",
          spec_.model, s, total));
    }
    if (state.draining()) {
      // A fine-tune can run for hours: do not hold the drain's grace period.
      return absl::UnavailableError(absl::StrFormat(
          "the server is shutting down: fine-tune of \"%s\" stopped after %d "
          "of %d steps; no new version",
          spec_.model, s, total));
    }
    const int64_t pass = s / steps_per_pass;
    const int64_t begin = (s % steps_per_pass) * batch;
    const int64_t rows = std::min(batch, n - begin);
    std::span<const float> x, targets;
    std::span<const int32_t> labels;
    if (!spec_.shuffle) {
      x = std::span<const float>(x_).subspan(begin * input_features_,
                                             rows * input_features_);
      if (mse) {
        targets = std::span<const float>(targets_).subspan(
            begin * output_features_, rows * output_features_);
      } else {
        labels = std::span<const int32_t>(labels_).subspan(begin, rows);
      }
    } else {
      if (pass != order_pass) {
        ShuffleForPass(spec_.seed, pass, order);
        order_pass = pass;
      }
      bx.resize(rows * input_features_);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t src = order[begin + r];
        std::copy_n(x_.begin() + src * input_features_, input_features_,
                    bx.begin() + r * input_features_);
      }
      x = bx;
      if (mse) {
        bt.resize(rows * output_features_);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t src = order[begin + r];
          std::copy_n(targets_.begin() + src * output_features_,
                      output_features_, bt.begin() + r * output_features_);
        }
        targets = bt;
      } else {
        bl.resize(rows);
        for (int64_t r = 0; r < rows; ++r) bl[r] = labels_[order[begin + r]];
        labels = bl;
      }
    }
    absl::StatusOr<training::StepResult> step =
        mse ? trainer->Step(x, rows, targets) : trainer->Step(x, rows, labels);
    if (!step.ok()) {
      return absl::Status(
          step.status().code(),
          absl::StrFormat("fine-tune of \"%s\" failed at step %d of %d (no "
                          "new version): %s",
                          spec_.model, s + 1, total, step.status().message()));
    }
    state.metrics().RecordFinetuneStep(spec_.model, step->loss);
    interval_loss += step->loss;
    ++interval_steps;
    interval_rows += rows;
    interval_correct += step->correct;
    if ((s + 1) % spec_.report_interval == 0 || s + 1 == total) {
      const double interval_seconds = SecondsSince(interval_start);
      last.step = s + 1;
      last.total_steps = total;
      last.epoch = pass;
      last.loss = interval_loss / static_cast<double>(interval_steps);
      last.accuracy = mse ? 0.0
                          : static_cast<double>(interval_correct) /
                                static_cast<double>(interval_rows);
      last.examples_per_second =
          interval_seconds > 0 ? interval_rows / interval_seconds : 0.0;
      last.elapsed_seconds = SecondsSince(start);
      if (callbacks.progress) callbacks.progress(last);
      interval_start = SteadyClock::now();
      interval_loss = 0.0;
      interval_steps = interval_rows = interval_correct = 0;
    }
  }
  const double training_seconds = SecondsSince(start);

  // Publish. The slot lock makes "new version + its resident trainer" one
  // step for SaveModel and the next fine-tune.
  FineTuneOutcome outcome;
  {
    absl::MutexLock lock(&slot_->mu);
    // The last point where a cancellation still leaves everything as it was.
    if (cancelled()) {
      return absl::CancelledError(absl::StrFormat(
          "fine-tune of \"%s\" cancelled after its last step, before "
          "publishing; no new version",
          spec_.model));
    }
    absl::StatusOr<int64_t> version = state.LoadModel(
        spec_.model, ServedCopy(trainer->model()),
        absl::StrCat("finetune of v", spec_.base_version));
    if (!version.ok()) {
      return absl::Status(
          version.status().code(),
          absl::StrCat("fine-tune of \"", spec_.model,
                       "\": publishing the new version failed (the served "
                       "versions are unchanged): ",
                       version.status().message()));
    }
    slot_->resident = std::move(trainer);
    slot_->resident_version = *version;
    outcome.version = *version;
  }
  outcome.model = spec_.model;
  outcome.base_version = spec_.base_version;
  outcome.steps = total;
  outcome.examples = n;
  outcome.final_loss = last.loss;
  outcome.final_accuracy = last.accuracy;
  outcome.training_seconds = training_seconds;
  outcome.device = device;
  outcome.resumed = resumed;
  LogEvent(LogLevel::kInfo, "finetune_done",
           {{"model", spec_.model},
            {"version", absl::StrCat(outcome.version)},
            {"base_version", absl::StrCat(spec_.base_version)},
            {"steps", absl::StrCat(total)},
            {"loss", absl::StrCat(last.loss)},
            {"device", device == "cuda" ? absl::StrCat("cuda:", gpu) : device},
            {"seconds", absl::StrCat(training_seconds)}});
  return outcome;
}

// ------------------------------------------------------------ FineTuneManager

FineTuneManager::FineTuneManager(ServingState* state,
                                 FineTuneManagerOptions options)
    : state_(state), options_(std::move(options)) {}

FineTuneManager::~FineTuneManager() {
  stopping_.store(true);
  std::vector<Worker> workers;
  {
    absl::MutexLock lock(&mu_);
    workers.swap(workers_);
  }
  for (Worker& w : workers) w.thread.join();
}

absl::StatusOr<std::unique_ptr<FineTuneJob>> FineTuneManager::Begin(
    FineTuneSpec spec) {
  if (absl::Status s = ValidateSpec(spec, options_.max_batch_size); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::shared_ptr<const ModelVersion>> version =
      state_->registry().Get(spec.model, spec.base_version);
  if (!version.ok()) {
    return state_->MapLookupError(spec.model, version.status());
  }
  spec.base_version = (*version)->version();
  std::shared_ptr<ModelSlot> slot;
  {
    absl::MutexLock lock(&mu_);
    auto it = slots_.find(spec.model);
    if (it == slots_.end()) {
      it = slots_.emplace(spec.model, std::make_shared<ModelSlot>(spec.model))
               .first;
    }
    slot = it->second;
    if (slot->running) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model \"", spec.model,
          "\": another fine-tune of this model is running; wait for it to "
          "finish (one fine-tune per model at a time)"));
    }
    slot->running = true;
  }
  return std::unique_ptr<FineTuneJob>(
      new FineTuneJob(this, std::move(spec), std::move(slot),
                      (*version)->input_features(),
                      (*version)->output_features()));
}

void FineTuneManager::Release(const std::shared_ptr<ModelSlot>& slot) {
  absl::MutexLock lock(&mu_);
  slot->running = false;
}

void FineTuneManager::Launch(std::function<void()> body) {
  absl::MutexLock lock(&mu_);
  // Join the threads that are done (their bodies have returned).
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->finished->load()) {
      it->thread.join();
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
  auto finished = std::make_shared<std::atomic<bool>>(false);
  workers_.push_back(Worker{
      .thread = std::thread([body = std::move(body), finished] {
        body();
        finished->store(true);
      }),
      .finished = finished});
}

absl::StatusOr<std::shared_ptr<training::TrainingBackend>>
FineTuneManager::BackendFor(std::string_view device, int gpu) {
  absl::MutexLock lock(&mu_);
  if (device == "cpu") {
    if (cpu_backend_ == nullptr) {
      absl::StatusOr<std::unique_ptr<training::TrainingBackend>> cpu =
          training::CreateCpuTrainingBackend(
              {.num_threads = options_.cpu_threads});
      if (!cpu.ok()) return cpu.status();
      cpu_backend_ = *std::move(cpu);
    }
    return cpu_backend_;
  }
  std::shared_ptr<training::TrainingBackend>& cuda_backend = cuda_backends_[gpu];
  if (cuda_backend == nullptr) {
    // First GPU fine-tune: this is where cuBLAS gets loaded (dlopen), never
    // at server start.
    absl::StatusOr<std::shared_ptr<training::TrainingBackend>> cuda =
        options_.cuda_backend_factory
            ? options_.cuda_backend_factory()
            : absl::StatusOr<std::shared_ptr<training::TrainingBackend>>(
                  training::CreateCudaTrainingBackend({.device = gpu}));
    if (!cuda.ok()) {
      return absl::UnavailableError(
          absl::StrCat("config.device \"cuda\": no GPU training backend: ",
                       cuda.status().message()));
    }
    cuda_backend = *std::move(cuda);
  }
  return cuda_backend;
}

absl::StatusOr<Model> FineTuneManager::ReadVersionFile(std::string_view name,
                                                       int64_t version) {
  absl::StatusOr<std::shared_ptr<const ModelVersion>> v =
      state_->registry().Get(name, version);
  if (!v.ok()) return v.status();
  const ModelVersion& served = **v;
  namespace fs = std::filesystem;
  const std::string& source = served.source_path();
  const std::string& repository = state_->config().model_repository;
  std::error_code ec;
  fs::path path(source);
  if (path.is_relative() && !repository.empty() &&
      fs::is_regular_file(fs::path(repository) / path, ec)) {
    path = fs::path(repository) / path;
  }
  if (source.empty() || !fs::is_regular_file(path, ec)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "model \"%s\" version %d came from \"%s\", which is not a model file "
        "the server can read again (only the device copy of its weights "
        "exists); fine-tune or save a version loaded from a file, or the "
        "latest fine-tuned version",
        name, served.version(), source));
  }
  absl::StatusOr<Model> model = ReadModelFile(path.string());
  if (!model.ok()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "model \"%s\" version %d: re-reading its file \"%s\" failed: %s", name,
        served.version(), path.string(), model.status().message()));
  }
  if (!SameSpecs(served.layers(), *model)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "model \"%s\" version %d: its file \"%s\" now describes different "
        "layers (it was replaced after loading); load it again",
        name, served.version(), path.string()));
  }
  // The file must still hold the weights being served: compare a probe batch
  // through the served version and through the file's reference forward.
  // (Tolerance: a GPU version's float epilogue may differ in the last bits.)
  const int64_t rows = std::min<int64_t>(4, std::max<int64_t>(1, served.max_rows()));
  const int64_t in = served.input_features();
  const int64_t out = served.output_features();
  std::vector<float> x(rows * in), y_served(rows * out), y_file(rows * out);
  DemoRandom rng(0x5eed);
  for (float& value : x) value = static_cast<float>(rng.NextNormal());
  if (absl::Status s = served.Forward(x.data(), rows, y_served.data()); !s.ok()) {
    return s;
  }
  if (absl::Status s = ReferenceForward(*model, x.data(), rows, y_file.data());
      !s.ok()) {
    return s;
  }
  for (int64_t i = 0; i < rows * out; ++i) {
    const double a = y_served[i], b = y_file[i];
    if (!(std::abs(a - b) <= 1e-3 * (1.0 + std::abs(b)))) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "model \"%s\" version %d: its file \"%s\" no longer holds the "
          "weights being served (probe output [%d, %d]: file %g, served %g); "
          "it was replaced after loading: load it again",
          name, served.version(), path.string(), i / out, i % out, b, a));
    }
  }
  return model;
}

absl::StatusOr<HostModel> FineTuneManager::GetHostModel(std::string_view name,
                                                        int64_t version) {
  absl::StatusOr<std::shared_ptr<const ModelVersion>> v =
      state_->registry().Get(name, version);
  if (!v.ok()) return state_->MapLookupError(name, v.status());
  const int64_t resolved = (*v)->version();
  std::shared_ptr<ModelSlot> slot;
  {
    absl::MutexLock lock(&mu_);
    auto it = slots_.find(name);
    if (it != slots_.end()) slot = it->second;
  }
  if (slot != nullptr) {
    absl::MutexLock lock(&slot->mu);
    if (slot->resident != nullptr && slot->resident_version == resolved) {
      return HostModel{.version = resolved,
                       .model = slot->resident->ExportModel(),
                       .has_latents = true,
                       .source = "resident fine-tune state"};
    }
  }
  absl::StatusOr<Model> model = ReadVersionFile(name, resolved);
  if (!model.ok()) return model.status();
  HostModel host{.version = resolved,
                 .model = *std::move(model),
                 .has_latents = true,
                 .source = (*v)->source_path()};
  for (const Layer& layer : host.model.layers) {
    if (layer.latent.empty()) host.has_latents = false;
  }
  return host;
}

void FineTuneManager::Forget(std::string_view name) {
  std::shared_ptr<ModelSlot> slot;
  {
    absl::MutexLock lock(&mu_);
    auto it = slots_.find(name);
    if (it == slots_.end()) return;
    slot = it->second;
  }
  absl::MutexLock lock(&slot->mu);
  slot->resident.reset();
  slot->resident_version = 0;
}

int64_t FineTuneManager::ResidentVersion(std::string_view name) {
  std::shared_ptr<ModelSlot> slot;
  {
    absl::MutexLock lock(&mu_);
    auto it = slots_.find(name);
    if (it == slots_.end()) return 0;
    slot = it->second;
  }
  absl::MutexLock lock(&slot->mu);
  return slot->resident == nullptr ? 0 : slot->resident_version;
}

}  // namespace bitnet
