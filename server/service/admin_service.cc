#include "server/service/admin_service.h"

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/model/model_file.h"
#include "server/service/admin_auth.h"
#include "server/service/event_log.h"
#include "server/service/grpc_status.h"
#include "server/service/inference_service.h"

namespace bitnet {
namespace {

absl::Status Authorize(const ServingState& state,
                       const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  const bool present = it != metadata.end();
  std::string_view value;
  if (present) value = std::string_view(it->second.data(), it->second.size());
  return CheckAdminToken(state.config().admin_token, present, value);
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

}  // namespace

AdminService::AdminService(ServingState* state)
    : state_(state), worker_([this] { WorkerLoop(); }) {}

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
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
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
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
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
  RunOnWorker([state, reactor, response, start, name = request->name(),
               version = static_cast<int64_t>(request->version())] {
    auto remaining = state->UnloadModel(name, version);
    if (remaining.ok()) {
      for (int64_t v : *remaining) {
        response->add_remaining_versions(static_cast<uint64_t>(v));
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
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
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

}  // namespace bitnet
