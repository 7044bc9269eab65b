// State shared by the gRPC services of one server: the model registry, the
// metrics, the health service, the drain flag and the in-flight call count,
// plus the model bookkeeping the services report (scale granularity, packed
// bytes, per-model counters for GetStats).
//
// Thread-safety: every method may be called from any thread.
#ifndef BITNET_SERVER_SERVICE_SERVING_STATE_H_
#define BITNET_SERVER_SERVICE_SERVING_STATE_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kernels/ternary_format.h"
#include "server/batching/dynamic_batcher.h"
#include "server/metrics/metrics.h"
#include "server/model/model.h"
#include "server/registry/model_registry.h"

namespace grpc {
class HealthCheckServiceInterface;
}  // namespace grpc

namespace bitnet {

// Counters since start, per model name (all versions), for Admin.GetStats.
struct ModelCounters {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> rows{0};
  std::atomic<uint64_t> batches{0};
  std::atomic<uint64_t> batch_rows{0};
};

// What the registry does not keep about a version but GetModel reports.
struct VersionDetails {
  std::vector<ScaleGranularity> granularity;  // per layer
  int64_t packed_bytes = 0;
};

struct ServingConfig {
  // Largest InferRequest (rows); <= the batcher's max_batch_rows.
  int64_t max_request_rows = 256;
  // Admin bearer token; empty = only client_names (if any) may call Admin.
  std::string admin_token;
  // Certificate identities (Common Name or subject alternative name of a
  // client certificate verified by mTLS) allowed to call Admin without the
  // token; empty = none. Admin RPCs are disabled when this and the token
  // are both empty.
  std::vector<std::string> admin_client_names;
  // Directory LoadModel paths are confined to; empty = LoadModel disabled.
  std::string model_repository;
  // bitnet_build_info{version} and GetStats.server_version.
  std::string server_version;
};

class ServingState {
 public:
  // `metrics` is not owned and must outlive this object.
  ServingState(ServingConfig config, Metrics* metrics);

  // The registry is created after this object (its observer factory calls
  // MakeObserver); attach it before any other call. Not owned.
  void AttachRegistry(ModelRegistry* registry) { registry_ = registry; }

  const ServingConfig& config() const { return config_; }
  ModelRegistry& registry() { return *registry_; }
  Metrics& metrics() { return *metrics_; }
  absl::Time start_time() const { return start_time_; }

  // Set once the gRPC server is built (health is owned by the server).
  // Health service names: "" (overall), "<model>" (SERVING while at least
  // one of its instances is in rotation) and "<model>@<instance>" (one per
  // model instance, e.g. "demo@cuda:1"; instance names as the registry's).
  void SetHealthService(grpc::HealthCheckServiceInterface* health);
  // Overall health ("" service): SERVING once the initial models are loaded.
  void SetOverallServing(bool serving);

  // ---- call accounting, for the drain ----
  // Registers one unit of work (a unary call or a stream item). UNAVAILABLE
  // once draining: the caller answers with it and must not call EndWork().
  absl::Status BeginWork();
  void EndWork();
  bool draining() const;
  // Health NOT_SERVING everywhere, BeginWork() refuses from now on, and the
  // batchers dispatch what is queued without waiting. Idempotent.
  void BeginDrain();
  // Blocks until no work is in flight or `deadline`; true if idle.
  bool AwaitIdle(absl::Time deadline);

  // ---- live calls, for a prompt exit ----
  // A call of our services is live from its handler until its reactor's
  // OnDone, i.e. until its answer (status included) has been handed to the
  // transport; unlike BeginWork this never refuses. A drain that finds no
  // live call can close every connection at once without losing an answer
  // (InferenceServer::Drain). See LiveCallReactor (live_call_reactor.h).
  void CallStarted();
  void CallDone();
  // Blocks until no call is live or `deadline`; true if none is.
  bool AwaitNoLiveCalls(absl::Time deadline);

  // ---- open streams, for the drain ----
  // A stream call the drain can end once its items are answered.
  class DrainableStream {
   public:
    virtual ~DrainableStream() = default;
    // Finishes the call (UNAVAILABLE "draining") once nothing of it is in
    // flight; may delete the stream (its OnDone) before returning.
    virtual void EndForDrain() = 0;
  };
  // How the drain reaches a stream that may end meanwhile: `stream` is
  // cleared (under `mu`) before the stream is deleted. `mu` is recursive
  // because a Finish() made by EndForDrain may run OnDone, which clears it,
  // on the same thread.
  struct StreamSlot {
    std::recursive_mutex mu;
    DrainableStream* stream = nullptr;
  };
  // From the stream's constructor, once EndForDrain may be called.
  std::shared_ptr<StreamSlot> RememberStream(DrainableStream* stream);
  // From the stream's OnDone, before it is deleted.
  void ForgetStream(const std::shared_ptr<StreamSlot>& slot);
  // Calls EndForDrain on every open stream (InferenceServer::Drain, once
  // the drain is idle).
  void EndStreamsForDrain();

  // ---- models ----
  // Loads `model` as a new version of `name` (health per model SERVING,
  // gauges, bookkeeping, a log line). `source` is free text (a path).
  // Errors: as ModelRegistry::Load; UNAVAILABLE while draining.
  absl::StatusOr<int64_t> LoadModel(std::string_view name, const Model& model,
                                    std::string_view source);
  // Unloads a version (or all with 0); returns the remaining versions.
  // Errors: as ModelRegistry::Unload.
  absl::StatusOr<std::vector<int64_t>> UnloadModel(std::string_view name,
                                                   int64_t version);
  // Marks `name` as being loaded (UNAVAILABLE instead of NOT_FOUND for it).
  void MarkLoading(std::string_view name, bool loading);
  // Turns the registry's NOT_FOUND for a model that is still loading into
  // UNAVAILABLE; returns other statuses unchanged.
  absl::Status MapLookupError(std::string_view name, absl::Status status);
  // Whether `name` is (or was) a loaded model: metric labels use "unknown"
  // for other names so that a client cannot create unbounded series.
  bool IsKnownModel(std::string_view name);

  VersionDetails Details(std::string_view name, int64_t version);
  ModelCounters& Counters(std::string_view name);
  // Observer for the batcher of one instance of model `name` (metrics with
  // device=`instance`, counters, instance health). The registry calls it
  // with its lock held.
  std::unique_ptr<InstanceObserver> MakeObserver(std::string_view name,
                                                 std::string_view instance);
  // An instance left (healthy false) or rejoined the rotation: metric,
  // health "<model>@<instance>", the model's health, a log line.
  void OnInstanceHealth(std::string_view name, std::string_view instance,
                        bool healthy, const absl::Status& cause);

 private:
  // Health of `name` and its instances from instances_; mu_ held.
  void PublishModelHealth(const std::string& name, bool loaded)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Recomputes bitnet_model_info and bitnet_device_memory_used_bytes from
  // the registry (versions may also disappear through max_loaded_versions).
  void RefreshModelGauges();

  const ServingConfig config_;
  ModelRegistry* registry_ = nullptr;
  Metrics* const metrics_;
  const absl::Time start_time_;

  absl::Mutex refresh_mu_;
  mutable absl::Mutex mu_;
  grpc::HealthCheckServiceInterface* health_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t live_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<std::shared_ptr<StreamSlot>> streams_ ABSL_GUARDED_BY(mu_);
  std::set<std::string, std::less<>> loading_ ABSL_GUARDED_BY(mu_);
  std::set<std::string, std::less<>> known_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, int64_t>, VersionDetails> details_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<ModelCounters>, std::less<>> counters_
      ABSL_GUARDED_BY(mu_);
  // bitnet_model_info series currently set: (model, version, backend).
  std::set<std::tuple<std::string, int64_t, std::string>> info_series_
      ABSL_GUARDED_BY(mu_);
  std::set<std::string> memory_devices_ ABSL_GUARDED_BY(mu_);
  // Model -> instance name -> in rotation.
  std::map<std::string, std::map<std::string, bool>, std::less<>> instances_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace bitnet

#endif  // BITNET_SERVER_SERVICE_SERVING_STATE_H_
