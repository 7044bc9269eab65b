#include "server/service/admin_service.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/model/model_file.h"
#include "server/service/admin_auth.h"
#include "server/service/event_log.h"
#include "server/service/finetune_save.h"
#include "server/service/grpc_status.h"
#include "server/service/inference_service.h"
#include "server/service/live_call_reactor.h"
#include "server/service/tensor_codec.h"
#include "server/training/optimizer.h"
#include "server/training/training_math.h"

namespace bitnet {
namespace {

// The identities of the client's certificate, when TLS verified one (mTLS):
// its Common Name and subject alternative names.
std::vector<std::string> PeerCertificateNames(const grpc::CallbackServerContext& context) {
  std::vector<std::string> names;
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return names;
  for (const char* property :
       {GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME}) {
    for (const grpc::string_ref& value : auth->FindPropertyValues(property)) {
      names.emplace_back(value.data(), value.size());
    }
  }
  return names;
}

absl::Status Authorize(const ServingState& state,
                       const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  const bool present = it != metadata.end();
  std::string_view value;
  if (present) value = std::string_view(it->second.data(), it->second.size());
  const ServingConfig& config = state.config();
  return CheckAdminAccess(config.admin_token, config.admin_client_names,
                          config.admin_client_names.empty() ? std::vector<std::string>{}
                                                            : PeerCertificateNames(context),
                          present, value);
}

absl::Status ValidateModelName(const std::string& name) {
  if (name.empty() || name.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name: \"", name, "\" has ", name.size(),
        " characters; expected 1 to 128"));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "name: \"", name, "\" contains '", std::string(1, c),
          "'; expected only letters, digits, '_', '-' and '.'"));
    }
  }
  return absl::OkStatus();
}

// Finishes a unary admin call and records its gRPC metrics.
void FinishAdmin(ServingState& state, grpc::ServerUnaryReactor* reactor,
                 std::string_view method, absl::Time start,
                 const absl::Status& status) {
  const grpc::Status grpc_status = ToGrpcStatus(status);
  state.metrics().RecordRpc("unary", kAdminServiceName, method,
                            GrpcCodeName(grpc_status.error_code()),
                            absl::ToDoubleSeconds(absl::Now() - start));
  if (!status.ok() && (status.code() == absl::StatusCode::kUnauthenticated ||
                       status.code() == absl::StatusCode::kPermissionDenied)) {
    LogEvent(LogLevel::kWarning, "admin_denied",
             {{"method", std::string(method)}, {"error", status.ToString()}});
  }
  reactor->Finish(grpc_status);
}

// FineTuneConfig -> FineTuneSpec with the documented defaults.
absl::StatusOr<FineTuneSpec> SpecFromConfig(const v1::FineTuneConfig& config) {
  FineTuneSpec spec;
  spec.model = config.model();
  if (absl::Status s = ValidateModelName(spec.model); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("config.model: ", s.message()));
  }
  if (config.base_version() > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.base_version: ", config.base_version(),
                     "; expected 0 (latest) or a loaded version"));
  }
  spec.base_version = static_cast<int64_t>(config.base_version());
  spec.steps = config.steps();
  spec.epochs = config.epochs();
  spec.batch_size = config.batch_size() == 0 ? 32 : config.batch_size();
  if (config.loss().empty()) {
    return absl::InvalidArgumentError(
        "config.loss: empty; expected \"mse\" (float targets) or "
        "\"cross_entropy\" (int32 labels)");
  }
  absl::StatusOr<training::LossKind> loss = training::ParseLossKind(config.loss());
  if (!loss.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.loss: ", loss.status().message()));
  }
  spec.loss = *loss;
  if (!config.optimizer().empty()) {
    absl::StatusOr<training::OptimizerKind> kind =
        training::ParseOptimizerKind(config.optimizer());
    if (!kind.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.optimizer: ", kind.status().message()));
    }
    spec.optimizer.kind = *kind;
  }
  if (config.learning_rate() != 0.0f) {
    spec.optimizer.learning_rate = config.learning_rate();
  }
  if (config.has_momentum()) spec.optimizer.momentum = config.momentum();
  if (config.has_weight_decay()) {
    spec.optimizer.weight_decay = config.weight_decay();
  }
  if (config.has_beta1()) spec.optimizer.beta1 = config.beta1();
  if (config.has_beta2()) spec.optimizer.beta2 = config.beta2();
  if (config.has_epsilon()) spec.optimizer.epsilon = config.epsilon();
  spec.report_interval =
      config.report_interval() == 0 ? 10 : config.report_interval();
  spec.shuffle = config.has_shuffle() ? config.shuffle() : true;
  spec.seed = config.seed();
  spec.device = config.device();
  return spec;
}

// One Admin.FineTune stream. Reads the config and the examples (on gRPC
// threads: decoding only), then hands the job to the FineTuneManager, whose
// training thread reports progress and the result through Post().
//
// Finish() is called exactly once, by whoever holds the last outstanding
// operation: the read (errors while streaming), the training thread (via
// Post, when no write is in flight) or OnWriteDone. OnCancel only raises a
// flag: the read fails and the training loop polls the flag, so one of those
// finishes the call.
class FineTuneReactor final
    : public grpc::ServerBidiReactor<v1::FineTuneRequest, v1::FineTuneResponse> {
 public:
  FineTuneReactor(ServingState* state, FineTuneManager* manager,
                  grpc::CallbackServerContext* context)
      : state_(state),
        manager_(manager),
        context_(context),
        start_(absl::Now()) {
    state_->CallStarted();
  }

  void Begin() {
    absl::Status status = Authorize(*state_, *context_);
    if (status.ok()) {
      status = state_->BeginWork();
      work_begun_ = status.ok();
    }
    if (!status.ok()) {
      FinishNow(status);
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // Half-close (or cancellation).
      if (cancelled_.load() || context_->IsCancelled()) {
        FinishNow(absl::CancelledError(
            "the client cancelled the fine-tune while sending data; no new "
            "version"));
        return;
      }
      if (job_ == nullptr) {
        FinishNow(absl::InvalidArgumentError(
            "no FineTuneRequest received: the first message must carry "
            "config"));
        return;
      }
      FineTuneCallbacks callbacks;
      callbacks.progress = [this](const FineTuneProgressInfo& p) {
        v1::FineTuneResponse message;
        v1::FineTuneProgress* out = message.mutable_progress();
        out->set_step(p.step);
        out->set_total_steps(p.total_steps);
        out->set_epoch(p.epoch);
        out->set_loss(p.loss);
        out->set_accuracy(p.accuracy);
        out->set_examples_per_second(p.examples_per_second);
        out->set_elapsed_seconds(p.elapsed_seconds);
        Post(std::move(message), std::nullopt);
      };
      callbacks.cancelled = [this] {
        return cancelled_.load() || context_->IsCancelled();
      };
      callbacks.done = [this](absl::StatusOr<FineTuneOutcome> outcome) {
        if (!outcome.ok()) {
          Post(std::nullopt, outcome.status());
          return;
        }
        v1::FineTuneResponse message;
        v1::FineTuneResult* out = message.mutable_result();
        out->set_model(outcome->model);
        out->set_version(static_cast<uint64_t>(outcome->version));
        out->set_base_version(static_cast<uint64_t>(outcome->base_version));
        out->set_steps(outcome->steps);
        out->set_examples(outcome->examples);
        out->set_final_loss(outcome->final_loss);
        out->set_final_accuracy(outcome->final_accuracy);
        out->set_training_seconds(outcome->training_seconds);
        out->set_device(outcome->device);
        out->set_resumed(outcome->resumed);
        Post(std::move(message), absl::OkStatus());
      };
      if (absl::Status s = job_->Start(std::move(callbacks)); !s.ok()) {
        FinishNow(s);
      }
      return;
    }
    ++messages_;
    absl::Status status = HandleMessage();
    request_.Clear();
    if (!status.ok()) {
      FinishNow(status);
      return;
    }
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    v1::FineTuneResponse* next = nullptr;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writes_.pop_front();
      if (!ok) writes_.clear();  // the client is gone
      if (!writes_.empty()) {
        next = &writes_.front();
      } else {
        writing_ = false;
        finish = final_status_.has_value();
      }
    }
    if (next != nullptr) {
      StartWrite(next);
    } else if (finish) {
      FinishNow(*final_status_);
    }
  }

  void OnCancel() override { cancelled_.store(true); }

  void OnDone() override {
    state_->metrics().RecordRpc("bidi_stream", kAdminServiceName, "FineTune",
                                GrpcCodeName(code_),
                                absl::ToDoubleSeconds(absl::Now() - start_));
    if (work_begun_) state_->EndWork();
    state_->CallDone();
    delete this;
  }

 private:
  absl::Status HandleMessage() {
    if (messages_ == 1) {
      if (!request_.has_config()) {
        return absl::InvalidArgumentError(
            "config: missing; the first FineTuneRequest must carry config");
      }
      absl::StatusOr<FineTuneSpec> spec = SpecFromConfig(request_.config());
      if (!spec.ok()) return spec.status();
      absl::StatusOr<std::unique_ptr<FineTuneJob>> job =
          manager_->Begin(*std::move(spec));
      if (!job.ok()) return job.status();
      job_ = *std::move(job);
    } else if (request_.has_config()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "message ", messages_,
          ": config is set; only the first FineTuneRequest may carry it"));
    }
    if (!request_.has_batch()) return absl::OkStatus();
    ++batches_;
    const std::string what = absl::StrCat("batch ", batches_);
    const v1::TrainingBatch& batch = request_.batch();
    const std::string inputs_field = absl::StrCat(what, ".inputs");
    const std::string model_description =
        absl::StrCat("model \"", job_->spec().model, "\" version ",
                     job_->spec().base_version);
    absl::StatusOr<std::vector<float>> x = DecodeInput(
        batch.inputs(), {.features = job_->input_features(),
                         .max_rows = std::numeric_limits<int64_t>::max(),
                         .field = inputs_field,
                         .model_description = model_description});
    if (!x.ok()) return x.status();
    const int64_t rows =
        static_cast<int64_t>(x->size()) / job_->input_features();
    std::vector<float> targets;
    if (batch.has_targets()) {
      const std::string targets_field = absl::StrCat(what, ".targets");
      absl::StatusOr<std::vector<float>> t = DecodeInput(
          batch.targets(), {.features = job_->output_features(),
                            .max_rows = std::numeric_limits<int64_t>::max(),
                            .field = targets_field,
                            .model_description = model_description});
      if (!t.ok()) return t.status();
      targets = *std::move(t);
    }
    return job_->AddExamples(
        what, *x, rows, targets,
        std::span<const int32_t>(batch.labels().data(), batch.labels().size()));
  }

  // From the training thread: queues `message` (if any) and, with `status`,
  // finishes the call once every queued message is written.
  void Post(std::optional<v1::FineTuneResponse> message,
            std::optional<absl::Status> status) {
    v1::FineTuneResponse* start_write = nullptr;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (status.has_value()) final_status_ = *status;
      if (message.has_value()) {
        // A client that reads slowly gets the newest progress, not an
        // unbounded queue: drop the oldest unsent progress messages.
        while (writes_.size() > 64 && writes_.size() > 1) {
          writes_.erase(writes_.begin() + 1);
        }
        writes_.push_back(*std::move(message));
        if (!writing_) {
          writing_ = true;
          start_write = &writes_.front();
        }
      } else if (!writing_ && final_status_.has_value()) {
        finish = true;
      }
    }
    // Last action: either may lead to OnDone (deleting this) on another
    // thread.
    if (start_write != nullptr) {
      StartWrite(start_write);
    } else if (finish) {
      FinishNow(*final_status_);
    }
  }

  void FinishNow(const absl::Status& status) {
    const grpc::Status grpc_status = ToGrpcStatus(status);
    code_ = grpc_status.error_code();
    if (!status.ok()) {
      LogEvent(status.code() == absl::StatusCode::kUnauthenticated ||
                       status.code() == absl::StatusCode::kPermissionDenied
                   ? LogLevel::kWarning
                   : LogLevel::kInfo,
               "finetune_failed", {{"error", status.ToString()}});
    }
    // Release the model's claim before the client can see the status, so
    // that a retry right after an error is not refused as "another
    // fine-tune is running". (A started job has released it already; it is
    // done by now.)
    job_.reset();
    Finish(grpc_status);
  }

  ServingState* const state_;
  FineTuneManager* const manager_;
  grpc::CallbackServerContext* const context_;
  const absl::Time start_;
  bool work_begun_ = false;
  std::atomic<bool> cancelled_{false};
  grpc::StatusCode code_ = grpc::StatusCode::OK;

  // Reading side (gRPC threads, one callback at a time).
  v1::FineTuneRequest request_;
  int64_t messages_ = 0;
  int64_t batches_ = 0;
  std::unique_ptr<FineTuneJob> job_;

  // Writing side.
  std::mutex mu_;
  std::deque<v1::FineTuneResponse> writes_;  // front() is being written
  bool writing_ = false;
  std::optional<absl::Status> final_status_;
};

}  // namespace

AdminService::AdminService(ServingState* state, FineTuneManagerOptions finetune)
    : state_(state),
      finetune_(std::make_unique<FineTuneManager>(state, std::move(finetune))),
      worker_([this] { WorkerLoop(); }) {}

AdminService::~AdminService() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  worker_.join();
}

void AdminService::RunOnWorker(std::function<void()> work) {
  absl::MutexLock lock(&mu_);
  work_.push_back(std::move(work));
}

void AdminService::WorkerLoop() {
  while (true) {
    std::function<void()> work;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](AdminService* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stopping_ || !self->work_.empty();
          },
          this));
      if (work_.empty()) return;  // stopping and nothing left
      work = std::move(work_.front());
      work_.pop_front();
    }
    work();
  }
}

grpc::ServerUnaryReactor* AdminService::LoadModel(
    grpc::CallbackServerContext* context, const v1::LoadModelRequest* request,
    v1::LoadModelResponse* response) {
  const absl::Time start = absl::Now();
  grpc::ServerUnaryReactor* reactor = new LiveCallReactor(state_);
  absl::Status status = Authorize(*state_, *context);
  if (status.ok()) status = ValidateModelName(request->name());
  absl::StatusOr<std::string> path;
  if (status.ok()) {
    path = ResolveModelPath(state_->config().model_repository, request->path());
    status = path.status();
  }
  if (status.ok()) status = state_->BeginWork();
  if (!status.ok()) {
    FinishAdmin(*state_, reactor, "LoadModel", start, status);
    return reactor;
  }
  ServingState* state = state_;
  state->MarkLoading(request->name(), true);
  RunOnWorker([state, reactor, response, start, name = request->name(),
               relative = request->path(), path = *path] {
    absl::Status status;
    absl::StatusOr<Model> model = ReadModelFile(path);
    if (!model.ok()) {
      status = model.status();
    } else {
      absl::StatusOr<int64_t> version = state->LoadModel(name, *model, relative);
      if (version.ok()) {
        response->set_name(name);
        response->set_version(static_cast<uint64_t>(*version));
        auto loaded = state->registry().Get(name, *version);
        if (loaded.ok()) {
          DescribeModelVersion(*state, **loaded, response->mutable_model());
        }
      } else {
        status = version.status();
      }
    }
    state->MarkLoading(name, false);
    FinishAdmin(*state, reactor, "LoadModel", start, status);
    state->EndWork();
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::UnloadModel(
    grpc::CallbackServerContext* context, const v1::UnloadModelRequest* request,
    v1::UnloadModelResponse* response) {
  const absl::Time start = absl::Now();
  grpc::ServerUnaryReactor* reactor = new LiveCallReactor(state_);
  absl::Status status = Authorize(*state_, *context);
  if (status.ok() && request->name().empty()) {
    status = absl::InvalidArgumentError(
        "name: empty; expected the name of a loaded model");
  }
  if (status.ok() && request->version() > static_cast<uint64_t>(INT64_MAX)) {
    status = absl::InvalidArgumentError(
        absl::StrCat("version: ", request->version(),
                     "; expected 0 (all versions) or a loaded version"));
  }
  if (status.ok()) status = state_->BeginWork();
  if (!status.ok()) {
    FinishAdmin(*state_, reactor, "UnloadModel", start, status);
    return reactor;
  }
  ServingState* state = state_;
  FineTuneManager* finetune = finetune_.get();
  RunOnWorker([state, finetune, reactor, response, start,
               name = request->name(),
               version = static_cast<int64_t>(request->version())] {
    auto remaining = state->UnloadModel(name, version);
    if (remaining.ok()) {
      for (int64_t v : *remaining) {
        response->add_remaining_versions(static_cast<uint64_t>(v));
      }
      // The resident fine-tune state of a version no longer served is
      // memory for nothing.
      const int64_t resident = finetune->ResidentVersion(name);
      if (resident != 0 && std::find(remaining->begin(), remaining->end(),
                                     resident) == remaining->end()) {
        finetune->Forget(name);
      }
    }
    FinishAdmin(*state, reactor, "UnloadModel", start, remaining.status());
    state->EndWork();
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetStats(
    grpc::CallbackServerContext* context, const v1::GetStatsRequest*,
    v1::GetStatsResponse* response) {
  const absl::Time start = absl::Now();
  grpc::ServerUnaryReactor* reactor = new LiveCallReactor(state_);
  absl::Status status = Authorize(*state_, *context);
  if (status.ok()) {
    for (const ModelStatus& model : state_->registry().List()) {
      const ModelCounters& counters = state_->Counters(model.name);
      v1::ModelStats* stats = response->add_models();
      stats->set_name(model.name);
      stats->set_latest_version(static_cast<uint64_t>(model.current_version));
      stats->set_requests(counters.requests.load());
      stats->set_rows(counters.rows.load());
      const uint64_t batches = counters.batches.load();
      stats->set_batches(batches);
      stats->set_mean_batch_rows(
          batches == 0 ? 0.0
                       : static_cast<double>(counters.batch_rows.load()) /
                             static_cast<double>(batches));
      stats->set_queue_rows(model.queued_rows);
      for (const auto& v : model.versions) {
        if (v->version() == model.current_version) {
          stats->set_backend(v->device());
        }
      }
    }
    response->set_uptime_seconds(
        absl::ToDoubleSeconds(absl::Now() - state_->start_time()));
    response->set_draining(state_->draining());
    response->set_server_version(state_->config().server_version);
  }
  FinishAdmin(*state_, reactor, "GetStats", start, status);
  return reactor;
}

grpc::ServerBidiReactor<v1::FineTuneRequest, v1::FineTuneResponse>*
AdminService::FineTune(grpc::CallbackServerContext* context) {
  auto* reactor = new FineTuneReactor(state_, finetune_.get(), context);
  reactor->Begin();
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::SaveModel(
    grpc::CallbackServerContext* context, const v1::SaveModelRequest* request,
    v1::SaveModelResponse* response) {
  const absl::Time start = absl::Now();
  grpc::ServerUnaryReactor* reactor = new LiveCallReactor(state_);
  absl::Status status = Authorize(*state_, *context);
  if (status.ok() && request->name().empty()) {
    status = absl::InvalidArgumentError(
        "name: empty; expected the name of a loaded model");
  }
  if (status.ok() && request->version() > static_cast<uint64_t>(INT64_MAX)) {
    status = absl::InvalidArgumentError(
        absl::StrCat("version: ", request->version(),
                     "; expected 0 (latest) or a loaded version"));
  }
  if (status.ok()) status = state_->BeginWork();
  if (!status.ok()) {
    FinishAdmin(*state_, reactor, "SaveModel", start, status);
    return reactor;
  }
  ServingState* state = state_;
  FineTuneManager* finetune = finetune_.get();
  RunOnWorker([state, finetune, reactor, response, start,
               name = request->name(),
               version = static_cast<int64_t>(request->version()),
               relative = request->path(), overwrite = request->overwrite(),
               include_latents = !request->has_include_latents() ||
                                 request->include_latents()] {
    absl::Status status;
    absl::StatusOr<std::string> path =
        ResolveModelOutputPath(state->config().model_repository, relative);
    absl::StatusOr<HostModel> host;
    if (!path.ok()) {
      status = path.status();
    } else {
      host = finetune->GetHostModel(name, version);
      status = host.status();
    }
    if (status.ok()) {
      if (!include_latents) {
        for (Layer& layer : host->model.layers) layer.latent.clear();
      }
      bool has_latents = true;
      for (const Layer& layer : host->model.layers) {
        if (layer.latent.empty()) has_latents = false;
      }
      absl::StatusOr<SaveModelFileResult> saved =
          SaveModelFile(host->model, *path, overwrite);
      status = saved.status();
      if (saved.ok()) {
        response->set_name(name);
        response->set_version(static_cast<uint64_t>(host->version));
        response->set_path(relative);
        response->set_bytes(saved->bytes);
        response->set_has_latents(has_latents);
        LogEvent(LogLevel::kInfo, "model_saved",
                 {{"model", name},
                  {"version", absl::StrCat(host->version)},
                  {"path", relative},
                  {"bytes", absl::StrCat(saved->bytes)},
                  {"latents", has_latents ? "true" : "false"}});
      }
    }
    FinishAdmin(*state, reactor, "SaveModel", start, status);
    state->EndWork();
  });
  return reactor;
}

}  // namespace bitnet
