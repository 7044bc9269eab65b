#include "server/registry/model_registry.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace bitnet {

// One model name: its loaded versions and its batcher. Shared by the registry
// map and by in-progress Enqueue()/Unload() calls; the batcher's run callback
// holds a raw pointer, which is safe because the batcher is destroyed first
// (declared last) and drains before its destructor returns.
struct ModelRegistry::Entry {
  std::string name;
  int64_t input_features = 0;
  int64_t output_features = 0;

  mutable absl::Mutex mu;
  std::map<int64_t, std::shared_ptr<const ModelVersion>> versions
      ABSL_GUARDED_BY(mu);
  // Unloaded or evicted versions that queued pinned requests may still
  // need; those requests hold the shared_ptr, so an expired entry means
  // nobody does.
  std::map<int64_t, std::weak_ptr<const ModelVersion>> retired
      ABSL_GUARDED_BY(mu);

  std::unique_ptr<BatcherObserver> observer;
  std::unique_ptr<DynamicBatcher> batcher;

  // Highest loaded version, or null when none is left.
  std::shared_ptr<const ModelVersion> Current() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return versions.empty() ? nullptr : versions.rbegin()->second;
  }
  void Retire(std::shared_ptr<const ModelVersion> version)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::erase_if(retired, [](const auto& r) { return r.second.expired(); });
    retired[version->version()] = version;
  }
  std::string LoadedVersionList() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::vector<int64_t> numbers;
    for (const auto& [number, version] : versions) numbers.push_back(number);
    return numbers.empty() ? "none" : absl::StrJoin(numbers, ", ");
  }
};

ModelVersion::ModelVersion(std::string model_name, int64_t version,
                           std::string source_path,
                           std::vector<LayerSpec> layers,
                           std::unique_ptr<ModelInstance> instance,
                           absl::Time loaded_at)
    : model_name_(std::move(model_name)),
      version_(version),
      source_path_(std::move(source_path)),
      layers_(std::move(layers)),
      instance_(std::move(instance)),
      device_(instance_->device()),
      device_memory_bytes_(instance_->device_memory_bytes()),
      max_rows_(instance_->max_rows()),
      loaded_at_(loaded_at) {}

int64_t ModelVersion::input_features() const {
  return layers_.empty() ? 0 : layers_.front().in_features;
}

int64_t ModelVersion::output_features() const {
  return layers_.empty() ? 0 : layers_.back().out_features;
}

absl::Status ModelVersion::Forward(const float* input, int64_t rows,
                                   float* output) const {
  absl::MutexLock lock(&forward_mu_);
  return instance_->Forward(input, rows, output);
}

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(
    std::shared_ptr<Backend> backend, ModelRegistryOptions options,
    Clock* clock) {
  if (backend == nullptr) {
    return absl::InvalidArgumentError("model registry: backend is null");
  }
  if (options.max_loaded_versions < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model registry: max_loaded_versions must be >= 1, got %d",
        options.max_loaded_versions));
  }
  // Feature counts come from each model; check everything else now so that
  // a bad flag fails at startup, not at the first load.
  BatcherOptions probe = options.batching;
  probe.input_features = 1;
  probe.output_features = 1;
  if (absl::Status s = ValidateBatcherOptions(probe); !s.ok()) return s;
  return std::unique_ptr<ModelRegistry>(new ModelRegistry(
      std::move(backend), std::move(options),
      clock != nullptr ? clock : RealClock::Default()));
}

ModelRegistry::ModelRegistry(std::shared_ptr<Backend> backend,
                             ModelRegistryOptions options, Clock* clock)
    : backend_(std::move(backend)), options_(std::move(options)), clock_(clock) {}

ModelRegistry::~ModelRegistry() { Shutdown(); }

absl::StatusOr<BatchResult> ModelRegistry::RunBatch(Entry* entry,
                                                    const Batch& batch) {
  // Snapshot the version for this batch: a swap or unload from now on does
  // not affect it, and the shared_ptr keeps the instance alive until done.
  std::shared_ptr<const ModelVersion> version;
  {
    absl::MutexLock lock(&entry->mu);
    if (batch.model_version == 0) {
      version = entry->Current();
      if (version == nullptr) {
        return absl::UnavailableError(absl::StrFormat(
            "model '%s' has no loaded version", entry->name));
      }
    } else {
      if (auto it = entry->versions.find(batch.model_version);
          it != entry->versions.end()) {
        version = it->second;
      } else if (auto r = entry->retired.find(batch.model_version);
                 r != entry->retired.end()) {
        version = r->second.lock();
      }
      if (version == nullptr) {
        // Not expected: every queued pinned request holds its version.
        return absl::NotFoundError(absl::StrFormat(
            "model '%s' version %d is not loaded (loaded: %s)", entry->name,
            batch.model_version, entry->LoadedVersionList()));
      }
    }
  }
  BatchResult result;
  result.model_version = version->version();
  result.output.resize(batch.rows * version->output_features());
  if (absl::Status s =
          version->Forward(batch.input.data(), batch.rows, result.output.data());
      !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrFormat("model '%s' version %d: %s", entry->name,
                                        version->version(), s.message()));
  }
  return result;
}

absl::StatusOr<int64_t> ModelRegistry::Load(std::string_view name,
                                            const Model& model,
                                            std::string_view source_path,
                                            int64_t version) {
  if (name.empty()) {
    return absl::InvalidArgumentError("model name must not be empty");
  }
  if (version < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model '%s': version must be >= 0 (0 = next), got %d", name, version));
  }
  if (absl::Status s = ValidateModel(model); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrFormat("model '%s': %s", name, s.message()));
  }

  // Reserve the number first so concurrent loads of one name get distinct,
  // increasing versions; a failed load leaves a gap, never a reuse.
  {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      return absl::UnavailableError(
          "model registry is draining or shut down; not accepting new work");
    }
    int64_t& last = last_version_[std::string(name)];
    if (version == 0) {
      version = last + 1;
    } else if (version <= last) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "model '%s': version %d must be greater than %d, the highest "
          "version this model has had",
          name, version, last));
    }
    last = version;
    // Shape check early (again below, after the slow load) so an obvious
    // mismatch does not pay for a device upload.
    if (auto it = models_.find(name); it != models_.end()) {
      const Entry& e = *it->second;
      if (e.input_features != model.input_features() ||
          e.output_features != model.output_features()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "model '%s': version %d has input_features %d / output_features "
            "%d, but the loaded versions have %d / %d; unload the model to "
            "change its shape",
            name, version, model.input_features(), model.output_features(),
            e.input_features, e.output_features));
      }
    }
  }

  // The slow part, without any lock: the current version keeps serving.
  absl::StatusOr<std::unique_ptr<ModelInstance>> instance =
      backend_->Load(model, options_.batching.max_batch_rows);
  if (!instance.ok()) {
    return absl::Status(
        instance.status().code(),
        absl::StrFormat("model '%s' version %d: load on %s failed: %s", name,
                        version, backend_->device(),
                        instance.status().message()));
  }
  std::vector<LayerSpec> layers;
  for (const Layer& layer : model.layers) layers.push_back(layer.spec);
  auto loaded = std::make_shared<const ModelVersion>(
      std::string(name), version, std::string(source_path), std::move(layers),
      std::move(*instance), clock_->Now());

  std::shared_ptr<const ModelVersion> evicted;  // freed outside the locks
  absl::MutexLock lock(&mu_);
  if (draining_) {
    return absl::UnavailableError(
        "model registry is draining or shut down; not accepting new work");
  }
  auto it = models_.find(name);
  if (it == models_.end()) {
    auto entry = std::make_shared<Entry>();
    entry->name = std::string(name);
    entry->input_features = model.input_features();
    entry->output_features = model.output_features();
    if (options_.observer_factory) {
      entry->observer = options_.observer_factory(name);
    }
    BatcherOptions batching = options_.batching;
    batching.input_features = entry->input_features;
    batching.output_features = entry->output_features;
    batching.name = entry->name;
    {
      absl::MutexLock entry_lock(&entry->mu);
      entry->versions[version] = loaded;
    }
    absl::StatusOr<std::unique_ptr<DynamicBatcher>> batcher =
        DynamicBatcher::Create(
            batching,
            [e = entry.get()](const Batch& batch) { return RunBatch(e, batch); },
            clock_, entry->observer.get());
    if (!batcher.ok()) return batcher.status();
    entry->batcher = std::move(*batcher);
    models_.emplace(entry->name, std::move(entry));
    return version;
  }

  Entry& entry = *it->second;
  if (entry.input_features != model.input_features() ||
      entry.output_features != model.output_features()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model '%s': version %d has input_features %d / output_features %d, "
        "but the loaded versions have %d / %d; unload the model to change its "
        "shape",
        name, version, model.input_features(), model.output_features(),
        entry.input_features, entry.output_features));
  }
  absl::MutexLock entry_lock(&entry.mu);
  // The swap: from here on, batches that start pick this version (if it is
  // the highest); batches already running keep the one they snapshotted.
  entry.versions[version] = std::move(loaded);
  while (static_cast<int>(entry.versions.size()) > options_.max_loaded_versions) {
    evicted = std::move(entry.versions.begin()->second);
    entry.versions.erase(entry.versions.begin());
    entry.Retire(evicted);
  }
  return version;
}

absl::Status ModelRegistry::Unload(std::string_view name, int64_t version) {
  std::shared_ptr<Entry> removed;
  std::shared_ptr<const ModelVersion> unloaded;  // freed outside the locks
  {
    absl::MutexLock lock(&mu_);
    auto it = models_.find(name);
    if (it == models_.end()) {
      return absl::NotFoundError(
          absl::StrFormat("model '%s' is not loaded", name));
    }
    Entry& entry = *it->second;
    if (version != 0) {
      absl::MutexLock entry_lock(&entry.mu);
      auto v = entry.versions.find(version);
      if (v == entry.versions.end()) {
        return absl::NotFoundError(absl::StrFormat(
            "model '%s' has no loaded version %d (loaded: %s)", name, version,
            entry.LoadedVersionList()));
      }
      if (entry.versions.size() > 1) {
        unloaded = std::move(v->second);
        entry.versions.erase(v);
        entry.Retire(unloaded);
        return absl::OkStatus();
      }
    }
    // The whole model goes: new requests get NOT_FOUND from now on. Its
    // versions stay in the entry so the drain below can still answer
    // what was queued.
    removed = std::move(it->second);
    models_.erase(it);
  }
  removed->batcher->Shutdown();
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const ModelVersion>> ModelRegistry::Get(
    std::string_view name, int64_t version) const {
  absl::MutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrFormat("model '%s' is not loaded", name));
  }
  const Entry& entry = *it->second;
  absl::MutexLock entry_lock(&entry.mu);
  if (version == 0) return entry.Current();
  auto v = entry.versions.find(version);
  if (v == entry.versions.end()) {
    return absl::NotFoundError(absl::StrFormat(
        "model '%s' has no loaded version %d (loaded: %s)", name, version,
        entry.LoadedVersionList()));
  }
  return v->second;
}

std::vector<ModelStatus> ModelRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<ModelStatus> list;
  for (const auto& [name, entry] : models_) {
    ModelStatus status;
    status.name = name;
    {
      absl::MutexLock entry_lock(&entry->mu);
      for (const auto& [number, version] : entry->versions) {
        status.versions.push_back(version);
      }
      status.current_version =
          entry->versions.empty() ? 0 : entry->versions.rbegin()->first;
    }
    status.queued_rows = entry->batcher->queued_rows();
    status.queued_requests = entry->batcher->queued_requests();
    list.push_back(std::move(status));
  }
  return list;
}

absl::Status ModelRegistry::Enqueue(std::string_view name,
                                    BatchRequest request) {
  std::shared_ptr<Entry> entry;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      return absl::UnavailableError(
          "model registry is draining or shut down; not accepting new work");
    }
    auto it = models_.find(name);
    if (it == models_.end()) {
      return absl::NotFoundError(
          absl::StrFormat("model '%s' is not loaded", name));
    }
    entry = it->second;
  }
  if (request.model_version < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model '%s': version must be >= 0 (0 = current), got %d", name,
        request.model_version));
  }
  if (request.model_version != 0) {
    std::shared_ptr<const ModelVersion> pinned;
    {
      absl::MutexLock entry_lock(&entry->mu);
      auto it = entry->versions.find(request.model_version);
      if (it == entry->versions.end()) {
        return absl::NotFoundError(absl::StrFormat(
            "model '%s' has no loaded version %d (loaded: %s)", name,
            request.model_version, entry->LoadedVersionList()));
      }
      pinned = it->second;
    }
    // The request keeps its version alive until answered, so unloading the
    // version while the request is queued does not strand it.
    request.on_done = [pinned = std::move(pinned),
                       on_done = std::move(request.on_done)](
                          RequestResult result) { on_done(std::move(result)); };
  }
  // Outside the registry lock: a full or draining batcher answers by itself.
  return entry->batcher->Enqueue(std::move(request));
}

void ModelRegistry::BeginDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  for (const auto& [name, entry] : models_) entry->batcher->BeginDrain();
}

void ModelRegistry::Shutdown() {
  std::map<std::string, std::shared_ptr<Entry>, std::less<>> models;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    models = std::move(models_);
    models_.clear();
  }
  // Drain outside the lock: on_done callbacks may call back into the
  // registry (and get UNAVAILABLE).
  for (auto& [name, entry] : models) entry->batcher->Shutdown();
}

}  // namespace bitnet
