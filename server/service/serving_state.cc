#include "server/service/serving_state.h"

#include <grpcpp/health_check_service_interface.h>

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/service/event_log.h"

namespace bitnet {
namespace {

// Debian's Abseil is built with its own absl::string_view (not
// std::string_view), so std::string_view values are converted explicitly
// before they reach absl::StrCat and friends.
inline absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }


// Feeds one model's batcher events into Prometheus and the GetStats counters.
// Requests are counted by the services (they also see the requests rejected
// before they reach the batcher), so OnRequestDone is not used here.
class MetricsObserver final : public InstanceObserver {
 public:
  MetricsObserver(ServingState* state, Metrics* metrics, std::string model,
                  std::string instance, ModelCounters* counters)
      : state_(state),
        metrics_(metrics),
        model_(std::move(model)),
        instance_(std::move(instance)),
        counters_(counters) {}

  void OnQueueRows(int64_t queued_rows) override {
    metrics_->SetQueueRows(model_, instance_, queued_rows);
  }
  void OnRequestQueued(double seconds) override {
    metrics_->RecordQueueWait(model_, seconds);
  }
  void OnBatch(int64_t rows, double compute_seconds) override {
    metrics_->RecordBatch(model_, instance_, rows, compute_seconds);
    counters_->batches.fetch_add(1, std::memory_order_relaxed);
    counters_->batch_rows.fetch_add(static_cast<uint64_t>(rows),
                                    std::memory_order_relaxed);
  }
  void OnHealthChanged(bool healthy, const absl::Status& cause) override {
    state_->OnInstanceHealth(model_, instance_, healthy, cause);
  }
  void OnRouted(Route route) override {
    metrics_->RecordRoute(model_, instance_, RouteName(route));
  }

 private:
  ServingState* const state_;
  Metrics* const metrics_;
  const std::string model_;
  const std::string instance_;
  ModelCounters* const counters_;
};

}  // namespace

ServingState::ServingState(ServingConfig config, Metrics* metrics)
    : config_(std::move(config)), metrics_(metrics), start_time_(absl::Now()) {}

void ServingState::SetHealthService(grpc::HealthCheckServiceInterface* health) {
  // The registry is asked outside mu_: its observer factory calls back into
  // this object under the registry's lock, so mu_ -> registry would invert.
  std::set<std::string> serving;
  for (const ModelStatus& model : registry_->List()) serving.insert(model.name);
  absl::MutexLock lock(&mu_);
  health_ = health;
  if (health_ == nullptr) return;
  // Not serving until the initial models are loaded (SetOverallServing).
  health_->SetServingStatus("", false);
  for (const auto& name : serving) PublishModelHealth(name, true);
  for (const auto& name : loading_) {
    if (serving.count(name) == 0) health_->SetServingStatus(name, false);
  }
}

void ServingState::SetOverallServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (health_ != nullptr && !draining_) health_->SetServingStatus("", serving);
}

absl::Status ServingState::BeginWork() {
  absl::MutexLock lock(&mu_);
  if (draining_) {
    return absl::UnavailableError(
        "server is draining (shutting down); retry on another replica");
  }
  ++in_flight_;
  return absl::OkStatus();
}

void ServingState::EndWork() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

bool ServingState::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

void ServingState::BeginDrain() {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return;
    draining_ = true;
    // Shutdown() sets every service NOT_SERVING and ignores later updates.
    if (health_ != nullptr) health_->Shutdown();
  }
  registry_->BeginDrain();
}

bool ServingState::AwaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return in_flight_ == 0;
  };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

void ServingState::CallStarted() {
  absl::MutexLock lock(&mu_);
  ++live_calls_;
}

void ServingState::CallDone() {
  absl::MutexLock lock(&mu_);
  --live_calls_;
}

bool ServingState::AwaitNoLiveCalls(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_calls_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&none), deadline);
}

std::shared_ptr<ServingState::StreamSlot> ServingState::RememberStream(
    DrainableStream* stream) {
  auto slot = std::make_shared<StreamSlot>();
  slot->stream = stream;
  absl::MutexLock lock(&mu_);
  streams_.insert(slot);
  return slot;
}

void ServingState::ForgetStream(const std::shared_ptr<StreamSlot>& slot) {
  {
    std::lock_guard<std::recursive_mutex> lock(slot->mu);
    slot->stream = nullptr;
  }
  absl::MutexLock lock(&mu_);
  streams_.erase(slot);
}

void ServingState::EndStreamsForDrain() {
  std::vector<std::shared_ptr<StreamSlot>> slots;
  {
    absl::MutexLock lock(&mu_);
    slots.assign(streams_.begin(), streams_.end());
  }
  // Without mu_: the stream's OnDone (ForgetStream) may run inside.
  for (const auto& slot : slots) {
    std::lock_guard<std::recursive_mutex> lock(slot->mu);
    if (slot->stream != nullptr) slot->stream->EndForDrain();
  }
}

void ServingState::MarkLoading(std::string_view name, bool loading) {
  absl::MutexLock lock(&mu_);
  if (loading) {
    loading_.emplace(name);
  } else {
    auto it = loading_.find(name);
    if (it != loading_.end()) loading_.erase(it);
  }
}

absl::Status ServingState::MapLookupError(std::string_view name,
                                          absl::Status status) {
  if (status.code() != absl::StatusCode::kNotFound) return status;
  absl::MutexLock lock(&mu_);
  if (loading_.find(name) != loading_.end()) {
    return absl::UnavailableError(absl::StrCat(
        "model \"", AV(name), "\" is still loading; retry shortly"));
  }
  return status;
}

bool ServingState::IsKnownModel(std::string_view name) {
  absl::MutexLock lock(&mu_);
  return known_.find(name) != known_.end();
}

absl::StatusOr<int64_t> ServingState::LoadModel(std::string_view name,
                                                const Model& model,
                                                std::string_view source) {
  if (draining()) {
    return absl::UnavailableError("server is draining; not loading models");
  }
  VersionDetails details;
  for (const Layer& layer : model.layers) {
    details.granularity.push_back(layer.weight.granularity);
  }
  details.packed_bytes = model.PackedBytes();
  {
    // Registered before the registry's observer factory runs for a new name.
    absl::MutexLock lock(&mu_);
    known_.emplace(name);
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<int64_t> version = registry_->Load(name, model, source);
  if (!version.ok()) {
    LogEvent(LogLevel::kError, "model_load_failed",
             {{"model", std::string(name)},
              {"source", std::string(source)},
              {"error", version.status().ToString()}});
    return version.status();
  }
  std::string device;
  if (auto loaded = registry_->Get(name, *version); loaded.ok()) {
    device = (*loaded)->device();
  }
  {
    absl::MutexLock lock(&mu_);
    details_[{std::string(name), *version}] = std::move(details);
    PublishModelHealth(std::string(name), true);
  }
  metrics_->InitModel(name);
  RefreshModelGauges();
  LogEvent(LogLevel::kInfo, "model_loaded",
           {{"model", std::string(name)},
            {"version", absl::StrCat(*version)},
            {"device", device},
            {"source", std::string(source)},
            {"input_features", absl::StrCat(model.input_features())},
            {"output_features", absl::StrCat(model.output_features())},
            {"packed_bytes", absl::StrCat(model.PackedBytes())},
            {"seconds", absl::StrCat(absl::ToDoubleSeconds(absl::Now() - start))}});
  return version;
}

absl::StatusOr<std::vector<int64_t>> ServingState::UnloadModel(
    std::string_view name, int64_t version) {
  absl::Status status = registry_->Unload(name, version);
  if (!status.ok()) return status;
  std::vector<int64_t> remaining;
  if (auto current = registry_->Get(name); current.ok()) {
    for (const ModelStatus& model : registry_->List()) {
      if (model.name != name) continue;
      for (const auto& v : model.versions) remaining.push_back(v->version());
    }
  }
  if (remaining.empty()) {
    absl::MutexLock lock(&mu_);
    PublishModelHealth(std::string(name), false);
    if (auto it = instances_.find(name); it != instances_.end()) {
      for (const auto& [instance, healthy] : it->second) {
        metrics_->RemoveInstance(name, instance);
      }
      instances_.erase(it);
    }
  }
  RefreshModelGauges();
  LogEvent(LogLevel::kInfo, "model_unloaded",
           {{"model", std::string(name)},
            {"version", version == 0 ? "all" : absl::StrCat(version)},
            {"remaining_versions", absl::StrCat(remaining.size())}});
  return remaining;
}

VersionDetails ServingState::Details(std::string_view name, int64_t version) {
  absl::MutexLock lock(&mu_);
  auto it = details_.find({std::string(name), version});
  return it == details_.end() ? VersionDetails{} : it->second;
}

ModelCounters& ServingState::Counters(std::string_view name) {
  absl::MutexLock lock(&mu_);
  auto it = counters_.find(name);
  if (it == counters_.end()) {
    it = counters_.emplace(std::string(name), std::make_unique<ModelCounters>())
             .first;
  }
  return *it->second;
}

std::unique_ptr<InstanceObserver> ServingState::MakeObserver(
    std::string_view name, std::string_view instance) {
  {
    absl::MutexLock lock(&mu_);
    // A new model name (or one loaded again after a full unload): every
    // instance starts in rotation.
    instances_[std::string(name)][std::string(instance)] = true;
  }
  metrics_->InitInstance(name, instance);
  return std::make_unique<MetricsObserver>(this, metrics_, std::string(name),
                                           std::string(instance),
                                           &Counters(name));
}

void ServingState::OnInstanceHealth(std::string_view name,
                                    std::string_view instance, bool healthy,
                                    const absl::Status& cause) {
  int in_rotation = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = instances_.find(name);
    if (it == instances_.end()) return;  // unloaded meanwhile
    it->second[std::string(instance)] = healthy;
    for (const auto& [other, ok] : it->second) in_rotation += ok ? 1 : 0;
    metrics_->SetInstanceHealthy(name, instance, healthy);
    PublishModelHealth(std::string(name), true);
  }
  LogEvent(healthy ? LogLevel::kInfo : LogLevel::kError,
           healthy ? "instance_back_in_rotation" : "instance_out_of_rotation",
           {{"model", std::string(name)},
            {"instance", std::string(instance)},
            {"healthy_instances", absl::StrCat(in_rotation)},
            {"error", cause.ok() ? "" : cause.ToString()}});
}

void ServingState::PublishModelHealth(const std::string& name, bool loaded) {
  if (health_ == nullptr || draining_) return;
  bool any = false;
  if (auto it = instances_.find(name); it != instances_.end()) {
    for (const auto& [instance, healthy] : it->second) {
      health_->SetServingStatus(absl::StrCat(name, "@", instance),
                                loaded && healthy);
      any = any || healthy;
    }
  } else {
    any = true;  // no instance bookkeeping (a registry without observers)
  }
  health_->SetServingStatus(name, loaded && any);
}

void ServingState::RefreshModelGauges() {
  // refresh_mu_ serializes whole refreshes (list + apply); it is taken before
  // the registry's lock and never inside it.
  absl::MutexLock refresh_lock(&refresh_mu_);
  std::set<std::tuple<std::string, int64_t, std::string>> now;
  std::map<std::string, int64_t> memory;
  for (const ModelStatus& model : registry_->List()) {
    for (const auto& v : model.versions) {
      now.emplace(model.name, v->version(), v->device());
      for (int i = 0; i < v->instance_count(); ++i) {
        if (v->HasReplica(i)) {
          memory[v->replica_device(i)] += v->replica_memory_bytes(i);
        }
      }
    }
  }
  absl::MutexLock lock(&mu_);
  for (const auto& [model, version, backend] : info_series_) {
    if (now.count({model, version, backend}) == 0) {
      metrics_->SetModelLoaded(model, static_cast<uint64_t>(version), backend,
                               false);
    }
  }
  for (const auto& [model, version, backend] : now) {
    metrics_->SetModelLoaded(model, static_cast<uint64_t>(version), backend,
                             true);
  }
  info_series_ = std::move(now);
  // Devices that no longer hold a model report 0 rather than vanishing.
  for (const auto& device : memory_devices_) {
    if (memory.count(device) == 0) metrics_->SetDeviceMemory(device, 0);
  }
  for (const auto& [device, bytes] : memory) {
    metrics_->SetDeviceMemory(device, bytes);
    memory_devices_.insert(device);
  }
}

}  // namespace bitnet
