// Model registry: model name -> loaded versions, plus one dynamic batcher per
// model.
//
// Versions are int64, strictly increasing per model name and never reused
// (not even after an unload). Loading a new version runs the backend's Load()
// outside the registry lock, so the current version keeps answering until
// the new one is ready; then the swap is one pointer change under the lock.
// Versions are held by shared_ptr: a batch snapshots the version when the
// worker starts it and finishes on that version even if it is swapped out or
// unloaded meanwhile; the instance is freed when the last batch using it ends.
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

// One loaded version. Immutable after load except that Forward() serializes
// callers (ModelInstance is thread-compatible only).
class ModelVersion {
 public:
  ModelVersion(std::string model_name, int64_t version,
               std::string source_path, std::vector<LayerSpec> layers,
               std::unique_ptr<ModelInstance> instance, absl::Time loaded_at);

  const std::string& model_name() const { return model_name_; }
  int64_t version() const { return version_; }
  // Where it came from (a file path, "demo", "finetune of v3", ...): free
  // text given at load, reported by List().
  const std::string& source_path() const { return source_path_; }
  const std::vector<LayerSpec>& layers() const { return layers_; }
  int64_t input_features() const;
  int64_t output_features() const;
  // The instance's device(), device_memory_bytes() and max_rows(), read once
  // at construction (the instance itself is only touched under Forward's lock).
  const std::string& device() const { return device_; }
  int64_t device_memory_bytes() const { return device_memory_bytes_; }
  int64_t max_rows() const { return max_rows_; }
  absl::Time loaded_at() const { return loaded_at_; }

  // Thread-safe forward on this version (callers are serialized).
  // Errors: as ModelInstance::Forward.
  absl::Status Forward(const float* input, int64_t rows, float* output) const;

 private:
  const std::string model_name_;
  const int64_t version_;
  const std::string source_path_;
  const std::vector<LayerSpec> layers_;
  mutable absl::Mutex forward_mu_;
  const std::unique_ptr<ModelInstance> instance_ ABSL_PT_GUARDED_BY(forward_mu_);
  const std::string device_;
  const int64_t device_memory_bytes_;
  const int64_t max_rows_;
  const absl::Time loaded_at_;
};

// What List() reports for one model.
struct ModelStatus {
  std::string name;
  int64_t current_version = 0;
  // All loaded versions, ascending.
  std::vector<std::shared_ptr<const ModelVersion>> versions;
  int64_t queued_rows = 0;
  int64_t queued_requests = 0;
};

struct ModelRegistryOptions {
  // Template for every model's batcher (input/output_features and name are
  // filled in from the model). max_batch_rows is also the max_rows each
  // version is loaded with.
  BatcherOptions batching;
  // How many versions of one model stay loaded (>= 1). Loading beyond it
  // unloads the oldest; in-flight batches on it still finish.
  int max_loaded_versions = 2;
  // Optional: an observer per model (e.g. Prometheus series labelled with
  // the model name). Called once when a model name is first loaded (again
  // after it was unloaded completely), with the registry's lock held: it
  // must not call back into the registry. The registry owns the result.
  std::function<std::unique_ptr<BatcherObserver>(std::string_view model_name)>
      observer_factory;
};

// Thread-safe: every method may be called from any thread, concurrently.
class ModelRegistry {
 public:
  // `backend` is shared (the service may use it too). `clock` is not owned,
  // must outlive the registry; nullptr = RealClock::Default().
  // Errors: INVALID_ARGUMENT (null backend, bad batching options,
  // max_loaded_versions < 1).
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

  // Queues `request` on the model's batcher (request.model_version: 0 =
  // current at dispatch, N = pinned). Errors: NOT_FOUND (model, or a pinned
  // version not loaded), else as DynamicBatcher::Enqueue (INVALID_ARGUMENT,
  // DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNAVAILABLE). A request pinned
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
  struct Entry;

  ModelRegistry(std::shared_ptr<Backend> backend, ModelRegistryOptions options,
                Clock* clock);
  // Picks a version for one batch; runs on the model's worker thread.
  static absl::StatusOr<BatchResult> RunBatch(Entry* entry, const Batch& batch);

  const std::shared_ptr<Backend> backend_;
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
