// Model registry: model name -> loaded versions, plus one model instance per
// device (an "instance group", as Triton calls it) with one dynamic batcher
// each.
//
// Devices. The registry is created with one Backend per device (--device:
// "cuda:0,cuda:1", "all", "cpu,cpu", ...). Every model gets one instance per
// backend: a replica of each loaded version's weights resident on that
// device and its own DynamicBatcher (so its own dispatcher and worker). With
// one backend this is exactly the single-batcher registry of before.
//
// Routing. Enqueue() sends a request to the healthy instance that will
// answer soonest by its batcher's estimate (DynamicBatcher::
// BatchesUntilAnswered, to a thousandth of a batch time: the batch
// computing, the batches queued ahead), then the fewest outstanding rows (queued + in
// flight, i.e. accepted and not yet answered); before every instance has
// run a batch, the outstanding rows alone; ties go round robin. Requests
// pinned to a version only go to instances that hold it. With affinity
// (ModelRegistryOptions::affinity, on by default) a request that carries a
// routing key (the service passes the client's connection) stays on its
// key's home instance unless that is more than a whole batch time behind
// the soonest: closed-loop clients then stay in the groups a single device
// would batch them in, instead of merging across instances into bigger,
// slower batches.
//
// Versions are int64, strictly increasing per model name and never reused
// (not even after an unload). Loading a new version runs every backend's
// Load() (in parallel, one thread per device) outside the registry lock, so
// the current version keeps answering until the new one is resident on every
// instance; then it becomes current for all instances at once (one map
// insertion under the model's lock). If the load fails on any device,
// nothing changes. Versions are held by shared_ptr: a batch snapshots the
// version when its worker starts it and computes on that version's replica
// for its instance, even if the version is swapped out or unloaded
// meanwhile; a response names the version that computed it.
//
// Device failure. A Forward() that returns INTERNAL (the ModelInstance
// contract for a device failure) takes its instance out of rotation
// (healthy = false, InstanceObserver::OnHealthChanged): new requests go to
// the other instances, and the failed batch (and anything still queued on
// that instance) is re-run, on the same version, on the least-loaded healthy
// instance, so nothing is lost. Only when no healthy instance is left do its
// requests get INTERNAL; an out-of-rotation instance is then still tried as
// a last resort, and it rejoins the rotation after a successful Forward.
// Versions loaded while an instance is out of rotation skip it (no replica
// there), so a dead device does not block loads on the others.
//
// Requests go through Enqueue(); BatchRequest::model_version is 0 for "the
// current version at dispatch" or N to pin version N (NOT_FOUND if it is not
// loaded). Every RequestResult says which version answered.
//
// Knows nothing of gRPC, protobuf, Prometheus or CUDA.
#ifndef BITNET_SERVER_REGISTRY_MODEL_REGISTRY_H_
#define BITNET_SERVER_REGISTRY_MODEL_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/batching/clock.h"
#include "server/batching/dynamic_batcher.h"
#include "server/model/model.h"
#include "server/runtime/backend.h"

namespace bitnet {

// One loaded version: the layers and one replica of the weights per
// instance slot of its model. Immutable after load except that Forward()
// serializes callers per replica (ModelInstance is thread-compatible only).
class ModelVersion {
 public:
  // `replicas[i]` is the version on instance i of the model, or null where
  // it was not loaded (the instance was out of rotation); at least one must
  // be non-null. `instance_devices[i]` is instance i's device ("cpu",
  // "cuda:N"); both vectors have one entry per instance.
  ModelVersion(std::string model_name, int64_t version,
               std::string source_path, std::vector<LayerSpec> layers,
               std::vector<std::unique_ptr<ModelInstance>> replicas,
               absl::Time loaded_at);

  const std::string& model_name() const { return model_name_; }
  int64_t version() const { return version_; }
  // Where it came from (a file path, "demo", "finetune of v3", ...): free
  // text given at load, reported by List().
  const std::string& source_path() const { return source_path_; }
  const std::vector<LayerSpec>& layers() const { return layers_; }
  int64_t input_features() const;
  int64_t output_features() const;
  // The devices holding a replica, distinct, in instance order and joined
  // by "," ("cpu", "cuda:0", "cuda:0,cuda:1"): GetModel's `backend`.
  const std::string& device() const { return device_; }
  // Device memory of all replicas together.
  int64_t device_memory_bytes() const { return device_memory_bytes_; }
  // The smallest max_rows() of the replicas (they are loaded alike).
  int64_t max_rows() const { return max_rows_; }
  absl::Time loaded_at() const { return loaded_at_; }

  // Instance slots (the model's instance count).
  int instance_count() const { return static_cast<int>(replicas_.size()); }
  // Whether instance `i` holds a replica of this version.
  bool HasReplica(int i) const;
  // Instance `i`'s device and its replica's device memory ("" / 0 when
  // there is no replica there).
  const std::string& replica_device(int i) const;
  int64_t replica_memory_bytes(int i) const;

  // Thread-safe forward on instance `i`'s replica (callers of one replica
  // are serialized). Errors: FAILED_PRECONDITION when instance `i` holds no
  // replica; else as ModelInstance::Forward.
  absl::Status Forward(int i, const float* input, int64_t rows,
                       float* output) const;
  // ForwardRows on instance `i`'s replica; errors as Forward(i, ...).
  absl::Status ForwardRows(int i, const ForwardArgs& args) const;
  // Forward on the first replica (e.g. a probe batch).
  absl::Status Forward(const float* input, int64_t rows, float* output) const;

 private:
  struct Replica {
    mutable absl::Mutex forward_mu;
    std::unique_ptr<ModelInstance> instance ABSL_PT_GUARDED_BY(forward_mu);
    std::string device;
    int64_t device_memory_bytes = 0;
  };

  const std::string model_name_;
  const int64_t version_;
  const std::string source_path_;
  const std::vector<LayerSpec> layers_;
  // One per instance slot; null where not loaded.
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::string device_;
  int64_t device_memory_bytes_ = 0;
  int64_t max_rows_ = 0;
  const absl::Time loaded_at_;
};

// Per-instance events on top of the batcher's (the service turns them into
// metrics and health). Thread-safety as BatcherObserver.
// How Enqueue() chose the instance of a model with several instances.
enum class Route {
  kSoonest,     // no routing key, or affinity off: the soonest answer
  kHome,        // the key's home instance (ModelRegistryOptions::affinity)
  kHandedOver,  // the key's home was more than a batch behind or out of
                // rotation: the soonest instead
};
// "soonest", "home", "handed_over" (the metrics' `route` label).
std::string_view RouteName(Route route);

class InstanceObserver : public BatcherObserver {
 public:
  // Enqueue() routed a request to this instance (models with several
  // instances only). Called on the caller's thread for every request: must
  // be cheap.
  virtual void OnRouted(Route route) {}
  // The instance left the rotation after a device failure (`healthy` false,
  // `cause` the Forward error) or rejoined it after a successful Forward
  // (`healthy` true, `cause` OK). Called from a batcher worker thread with
  // no registry lock held; must not block for long and must not call
  // Unload() or Shutdown().
  virtual void OnHealthChanged(bool healthy, const absl::Status& cause) {}
};

// One instance of a model, as List() reports it.
struct InstanceStatus {
  std::string name;    // instance name: device, or "device#k" when repeated
  std::string device;  // "cpu" / "cuda:N"
  bool healthy = true;
  int64_t queued_rows = 0;       // in its batcher's queue now
  int64_t outstanding_rows = 0;  // accepted, not yet answered (routing load)
};

// What List() reports for one model.
struct ModelStatus {
  std::string name;
  int64_t current_version = 0;
  // All loaded versions, ascending.
  std::vector<std::shared_ptr<const ModelVersion>> versions;
  // Sums over the instances.
  int64_t queued_rows = 0;
  int64_t queued_requests = 0;
  // One per device, in --device order.
  std::vector<InstanceStatus> instances;
  // Instances in rotation (>= 1 for a model that serves normally).
  int healthy_instances = 0;
};

struct ModelRegistryOptions {
  // Template for every model's batcher (input/output_features and name are
  // filled in from the model). max_batch_rows is also the max_rows each
  // version is loaded with.
  BatcherOptions batching;
  // How many versions of one model stay loaded (>= 1). Loading beyond it
  // unloads the oldest; in-flight batches on it still finish.
  int max_loaded_versions = 2;
  // Routing affinity: a request whose BatchRequest::routing_key is nonzero
  // goes to its key's home instance (keys get homes in turn at first sight)
  // while that instance is at most one batch time behind the one that would
  // answer soonest; otherwise, and without a key, the rule above decides.
  bool affinity = true;
  // Optional: an observer per model instance (e.g. Prometheus series
  // labelled with the model and the instance name). Called for every
  // instance when a model name is first loaded (again after it was unloaded
  // completely), with the registry's lock held: it must not call back into
  // the registry. The registry owns the result. `instance` is the instance
  // name: its device, or "device#k" (k = 0, 1, ... in backend order) when
  // several backends share a device (e.g. "cpu#0", "cpu#1" for "cpu,cpu").
  std::function<std::unique_ptr<InstanceObserver>(std::string_view model_name,
                                                  std::string_view instance)>
      observer_factory;
};

// Thread-safe: every method may be called from any thread, concurrently.
class ModelRegistry {
 public:
  // Routing keys (connections) remembered per model for affinity; beyond
  // it the least recently used half is forgotten, and a forgotten key that
  // comes back gets a new home in turn.
  static constexpr size_t kMaxRoutingKeys = 4096;

  // One model instance per backend, in order (backends are shared: the
  // service may use them too). `clock` is not owned, must outlive the
  // registry; nullptr = RealClock::Default().
  // Errors: INVALID_ARGUMENT (no backends, a null backend, bad batching
  // options, max_loaded_versions < 1).
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Create(
      std::vector<std::shared_ptr<Backend>> backends,
      ModelRegistryOptions options, Clock* clock = nullptr);
  // One device.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Create(
      std::shared_ptr<Backend> backend, ModelRegistryOptions options,
      Clock* clock = nullptr);

  // Shutdown().
  ~ModelRegistry();

  // Loads `model` as a new version of `name` and makes it current once it
  // is ready (if a higher version finished loading meanwhile, that one stays
  // current). `version` 0 = previous highest + 1; otherwise it must exceed
  // every version this name has had. Returns the version number.
  // Errors: INVALID_ARGUMENT (empty name, invalid model, explicit version not
  // above the previous ones, or input/output features differing from the
  // model's current version: queued requests were shaped for those);
  // UNAVAILABLE after Shutdown(); the backend's error if Load() fails (the
  // current version keeps serving).
  absl::StatusOr<int64_t> Load(std::string_view name, const Model& model,
                               std::string_view source_path,
                               int64_t version = 0);

  // Unloads one version (`version` > 0) or the whole model (`version` == 0).
  // Unloading the current version makes the highest remaining one current;
  // unloading the last version removes the model: new requests get
  // NOT_FOUND, queued ones are still answered by it, then its batcher stops
  // (this call blocks until then).
  // Errors: NOT_FOUND naming the model / version.
  absl::Status Unload(std::string_view name, int64_t version = 0);

  // `version` 0 = current. Errors: NOT_FOUND naming the model / version.
  absl::StatusOr<std::shared_ptr<const ModelVersion>> Get(
      std::string_view name, int64_t version = 0) const;

  // Every model, sorted by name.
  std::vector<ModelStatus> List() const;

  // The instance names and devices, one per backend, in order.
  const std::vector<std::string>& instance_names() const {
    return instance_names_;
  }
  const std::vector<std::string>& instance_devices() const {
    return instance_devices_;
  }

  // Queues `request` on the batcher of the model's instance that will answer
  // soonest (see "Routing" above; request.model_version: 0 = current at
  // dispatch, N = pinned). Errors: NOT_FOUND (model, or a pinned version not
  // loaded), else as DynamicBatcher::Enqueue (INVALID_ARGUMENT,
  // DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED: max_queue_rows is per instance,
  // UNAVAILABLE). A request pinned
  // to a version that is unloaded (or evicted) while it is queued is still
  // answered by that version: the request keeps it alive until it is done.
  absl::Status Enqueue(std::string_view name, BatchRequest request);

  // Stops every batcher from accepting (UNAVAILABLE) and lets queued work
  // finish; Load() and Enqueue() answer UNAVAILABLE from now on. Returns at
  // once.
  void BeginDrain();
  // BeginDrain(), waits for all queued and running work, stops the batchers.
  // Loads and Enqueues afterwards get UNAVAILABLE. Idempotent.
  void Shutdown();

 private:
  struct Instance;
  struct Entry;

  ModelRegistry(std::vector<std::shared_ptr<Backend>> backends,
                ModelRegistryOptions options, Clock* clock);
  // Picks a version for one batch and runs it on instance `index` (or, after
  // a device failure, on another); runs on that instance's worker thread.
  static absl::StatusOr<BatchResult> RunBatch(Entry* entry, int index,
                                              const Batch& batch);

  const std::vector<std::shared_ptr<Backend>> backends_;
  const std::vector<std::string> instance_devices_;
  const std::vector<std::string> instance_names_;
  const ModelRegistryOptions options_;
  Clock* const clock_;

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>, std::less<>> models_
      ABSL_GUARDED_BY(mu_);
  // Highest version ever assigned per name, kept across unloads so numbers
  // are never reused.
  std::map<std::string, int64_t, std::less<>> last_version_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;  // BeginDrain() or Shutdown()
};

}  // namespace bitnet

#endif  // BITNET_SERVER_REGISTRY_MODEL_REGISTRY_H_
