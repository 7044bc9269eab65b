#include "server/registry/model_registry.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace bitnet {
namespace {

// Instance names: the device, or "device#k" when several backends share it.
std::vector<std::string> InstanceNamesFor(
    const std::vector<std::string>& devices) {
  std::map<std::string, int> total;
  for (const std::string& d : devices) ++total[d];
  std::map<std::string, int> seen;
  std::vector<std::string> names;
  for (const std::string& d : devices) {
    names.push_back(total[d] == 1 ? d : absl::StrFormat("%s#%d", d, seen[d]++));
  }
  return names;
}

std::vector<std::string> DevicesOf(
    const std::vector<std::shared_ptr<Backend>>& backends) {
  std::vector<std::string> devices;
  for (const auto& b : backends) devices.push_back(b ? b->device() : "");
  return devices;
}

}  // namespace

std::string_view RouteName(Route route) {
  switch (route) {
    case Route::kHome: return "home";
    case Route::kHandedOver: return "handed_over";
    case Route::kSoonest: break;
  }
  return "soonest";
}

namespace {

// Connection affinity: a key stays on its home instance while the home is at
// most this many thousandths of a batch time behind the soonest instance.
constexpr int64_t kAffinityMarginMilli = 1000;
// Routing keys remembered per model before the least recently used half is
// forgotten (ModelRegistry::kMaxRoutingKeys).
constexpr size_t kMaxHomes = ModelRegistry::kMaxRoutingKeys;

}  // namespace

// One model on one device: its batcher and the routing/health state.
struct ModelRegistry::Instance {
  int index = 0;
  std::string name;    // "cuda:1", "cpu#0"
  std::string device;  // "cuda:1", "cpu"
  // Rows accepted by Enqueue() and not yet answered: queued + in flight.
  std::atomic<int64_t> outstanding_rows{0};
  std::atomic<bool> healthy{true};
  std::unique_ptr<InstanceObserver> observer;
  // Last, so it is destroyed (drained) before the fields its callbacks use.
  std::unique_ptr<DynamicBatcher> batcher;
};

// One model name: its loaded versions and its instances. Shared by the
// registry map and by in-progress Enqueue()/Unload() calls; the batchers'
// run callbacks hold a raw pointer, which is safe because the destructor
// drains every batcher before any member goes away (a batch on one instance
// may fail over to another instance's replica).
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

  // Fixed once the entry is in the registry map.
  std::vector<std::unique_ptr<Instance>> instances;
  // Breaks routing ties in turn.
  std::atomic<uint64_t> round_robin{0};
  // Routing affinity (ModelRegistryOptions::affinity): each routing key's
  // home instance, given in turn at first sight so that keys spread evenly.
  bool affinity = false;
  absl::Mutex homes_mu;
  struct Home {
    int instance = 0;
    uint64_t last_used = 0;  // homes_seq at the key's latest request
  };
  std::unordered_map<uint64_t, Home> homes ABSL_GUARDED_BY(homes_mu);
  uint64_t homes_seq ABSL_GUARDED_BY(homes_mu) = 0;
  int next_home ABSL_GUARDED_BY(homes_mu) = 0;

  int HomeOf(uint64_t key) {
    absl::MutexLock lock(&homes_mu);
    auto [it, inserted] = homes.try_emplace(key);
    it->second.last_used = ++homes_seq;
    if (!inserted) return it->second.instance;
    const int home = next_home;
    it->second.instance = home;
    next_home = (next_home + 1) % static_cast<int>(instances.size());
    // The new key is the most recently used, so it stays (`it` may not).
    if (homes.size() > kMaxHomes) ForgetOldestHomes();
    return home;
  }
  // Keys are connections, which come and go: past kMaxHomes keys, the half
  // least recently used is forgotten (a forgotten key that comes back gets
  // a new home in turn).
  void ForgetOldestHomes() ABSL_EXCLUSIVE_LOCKS_REQUIRED(homes_mu) {
    std::vector<uint64_t> seqs;
    seqs.reserve(homes.size());
    for (const auto& [key, home] : homes) seqs.push_back(home.last_used);
    std::nth_element(seqs.begin(), seqs.begin() + seqs.size() / 2, seqs.end());
    const uint64_t cut = seqs[seqs.size() / 2];
    std::erase_if(homes, [cut](const auto& kv) { return kv.second.last_used < cut; });
  }
  // Orders health transitions so that observers see them in order.
  absl::Mutex health_mu;

  ~Entry() {
    for (auto& instance : instances) {
      if (instance->batcher != nullptr) instance->batcher->Shutdown();
    }
  }

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
  bool Healthy(int i) const { return instances[i]->healthy.load(); }
  int64_t Load(int i) const { return instances[i]->outstanding_rows.load(); }

  void SetHealthy(int i, bool healthy, const absl::Status& cause) {
    Instance& instance = *instances[i];
    absl::MutexLock lock(&health_mu);
    if (instance.healthy.load() == healthy) return;
    instance.healthy.store(healthy);
    if (instance.observer != nullptr) {
      instance.observer->OnHealthChanged(healthy, cause);
    }
  }

  // Routing: the healthy instance (holding `pinned` if given) that will
  // answer a request of `rows` rows soonest by its batcher's estimate
  // (DynamicBatcher::BatchesUntilAnswered, in thousandths of a batch time),
  // then the fewest outstanding rows; while any candidate has no estimate
  // yet (no batch run), the fewest outstanding rows alone. When none is
  // healthy, the same over all of them. Ties in turn.
  // With `affinity`, a request with a routing key (the service uses the
  // client connection) goes instead to its key's home instance if that is a
  // candidate at most one whole batch time behind the soonest. Closed-loop
  // clients then keep to one instance each and every instance batches like
  // a single-device server (on 2 x H100 at 16 clients per GPU: batches of
  // 260 rows as on one GPU, not 360, and the server's p99 equal to one
  // GPU's; RESULTS.md, session 6), while a home more than a batch behind
  // (an uneven spread of connections, a busy client) hands work over.
  // The estimate is used to the fraction: rounded up to whole batch times
  // (as first written) most choices tied and fell to outstanding rows, which
  // let the closed-loop clients of two instances merge into bigger batches
  // (`bitnet-bench routing`, 16 clients per instance: p99 7.1 ms on two
  // instances against 5.8 on one; 5.7 with fractions; RESULTS.md).
  int Pick(const ModelVersion* pinned, int64_t rows, uint64_t routing_key,
           Route* route) {
    const int n = static_cast<int>(instances.size());
    *route = Route::kSoonest;
    if (n == 1) return 0;
    for (bool need_healthy : {true, false}) {
      auto candidate = [&](int i) {
        return (pinned == nullptr || pinned->HasReplica(i)) &&
               (!need_healthy || Healthy(i));
      };
      // Keys (thousandths of batch times, outstanding rows), snapshotted once.
      absl::InlinedVector<std::pair<int64_t, int64_t>, 8> keys(n);
      bool estimated = true;
      int candidates = 0;
      for (int i = 0; i < n; ++i) {
        if (!candidate(i)) continue;
        ++candidates;
        int64_t batch_milli = 0;
        if (estimated) {
          std::optional<double> b = instances[i]->batcher->BatchesUntilAnswered(rows);
          estimated = b.has_value();
          if (estimated) batch_milli = std::llround(*b * 1000.0);
        }
        keys[i] = {batch_milli, Load(i)};
      }
      if (candidates == 0) continue;
      if (!estimated) {
        for (auto& key : keys) key.first = 0;  // outstanding rows alone
      }
      // The least key and how many share it, then the k-th of those.
      std::pair<int64_t, int64_t> best{0, 0};
      int ties = 0;
      for (int i = 0; i < n; ++i) {
        if (!candidate(i)) continue;
        if (ties == 0 || keys[i] < best) {
          best = keys[i];
          ties = 1;
        } else if (keys[i] == best) {
          ++ties;
        }
      }
      if (affinity && routing_key != 0) {
        const int home = HomeOf(routing_key);
        if (candidate(home) && keys[home].first - best.first <= kAffinityMarginMilli) {
          *route = Route::kHome;
          return home;
        }
        *route = Route::kHandedOver;
      }
      int k = ties == 1 ? 0 : static_cast<int>(round_robin.fetch_add(1) % ties);
      for (int i = 0; i < n; ++i) {
        if (candidate(i) && keys[i] == best && k-- == 0) return i;
      }
    }
    return 0;  // not reached: a version has a replica
  }

  // Where a batch of instance `index` on `version` may run, in order: the
  // instance itself if healthy, the other healthy ones by load, then (last
  // resort) the out-of-rotation ones, the instance itself first.
  std::vector<int> FailoverOrder(int index, const ModelVersion& version) const {
    const int n = static_cast<int>(instances.size());
    std::vector<int> healthy_others, unhealthy;
    for (int i = 0; i < n; ++i) {
      if (i == index || !version.HasReplica(i)) continue;
      (Healthy(i) ? healthy_others : unhealthy).push_back(i);
    }
    std::stable_sort(healthy_others.begin(), healthy_others.end(),
                     [this](int a, int b) { return Load(a) < Load(b); });
    std::vector<int> order;
    const bool self = version.HasReplica(index);
    if (self && Healthy(index)) order.push_back(index);
    order.insert(order.end(), healthy_others.begin(), healthy_others.end());
    if (self && !Healthy(index)) order.push_back(index);
    order.insert(order.end(), unhealthy.begin(), unhealthy.end());
    return order;
  }
};

ModelVersion::ModelVersion(std::string model_name, int64_t version,
                           std::string source_path,
                           std::vector<LayerSpec> layers,
                           std::vector<std::unique_ptr<ModelInstance>> replicas,
                           absl::Time loaded_at)
    : model_name_(std::move(model_name)),
      version_(version),
      source_path_(std::move(source_path)),
      layers_(std::move(layers)),
      loaded_at_(loaded_at) {
  std::vector<std::string> devices;
  for (std::unique_ptr<ModelInstance>& instance : replicas) {
    if (instance == nullptr) {
      replicas_.push_back(nullptr);
      continue;
    }
    auto replica = std::make_unique<Replica>();
    replica->device = instance->device();
    replica->device_memory_bytes = instance->device_memory_bytes();
    const int64_t rows = instance->max_rows();
    max_rows_ = devices.empty() ? rows : std::min(max_rows_, rows);
    device_memory_bytes_ += replica->device_memory_bytes;
    if (std::find(devices.begin(), devices.end(), replica->device) ==
        devices.end()) {
      devices.push_back(replica->device);
    }
    replica->instance = std::move(instance);
    replicas_.push_back(std::move(replica));
  }
  device_ = absl::StrJoin(devices, ",");
}

int64_t ModelVersion::input_features() const {
  return layers_.empty() ? 0 : layers_.front().in_features;
}

int64_t ModelVersion::output_features() const {
  return layers_.empty() ? 0 : layers_.back().out_features;
}

bool ModelVersion::HasReplica(int i) const {
  return i >= 0 && i < instance_count() && replicas_[i] != nullptr;
}

const std::string& ModelVersion::replica_device(int i) const {
  static const std::string* const kNone = new std::string();
  return HasReplica(i) ? replicas_[i]->device : *kNone;
}

int64_t ModelVersion::replica_memory_bytes(int i) const {
  return HasReplica(i) ? replicas_[i]->device_memory_bytes : 0;
}

absl::Status ModelVersion::Forward(int i, const float* input, int64_t rows,
                                   float* output) const {
  ForwardArgs args;  // fp32 rows in and out: the instance's Forward
  args.rows = rows;
  args.input = input;
  args.output = output;
  return ForwardRows(i, args);
}

absl::Status ModelVersion::ForwardRows(int i, const ForwardArgs& args) const {
  if (!HasReplica(i)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "model '%s' version %d has no replica on instance %d", model_name_,
        version_, i));
  }
  const Replica& replica = *replicas_[i];
  absl::MutexLock lock(&replica.forward_mu);
  return replica.instance->ForwardRows(args);
}

absl::Status ModelVersion::Forward(const float* input, int64_t rows,
                                   float* output) const {
  for (int i = 0; i < instance_count(); ++i) {
    if (HasReplica(i)) return Forward(i, input, rows, output);
  }
  return Forward(0, input, rows, output);
}

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(
    std::shared_ptr<Backend> backend, ModelRegistryOptions options,
    Clock* clock) {
  std::vector<std::shared_ptr<Backend>> backends;
  backends.push_back(std::move(backend));
  return Create(std::move(backends), std::move(options), clock);
}

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(
    std::vector<std::shared_ptr<Backend>> backends,
    ModelRegistryOptions options, Clock* clock) {
  if (backends.empty()) {
    return absl::InvalidArgumentError(
        "model registry: no backends (expected one per device)");
  }
  for (size_t i = 0; i < backends.size(); ++i) {
    if (backends[i] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("model registry: backend %d is null", i));
    }
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
      std::move(backends), std::move(options),
      clock != nullptr ? clock : RealClock::Default()));
}

ModelRegistry::ModelRegistry(std::vector<std::shared_ptr<Backend>> backends,
                             ModelRegistryOptions options, Clock* clock)
    : backends_(std::move(backends)),
      instance_devices_(DevicesOf(backends_)),
      instance_names_(InstanceNamesFor(instance_devices_)),
      options_(std::move(options)),
      clock_(clock) {}

ModelRegistry::~ModelRegistry() { Shutdown(); }

absl::StatusOr<BatchResult> ModelRegistry::RunBatch(Entry* entry, int index,
                                                    const Batch& batch) {
  // Snapshot the version for this batch: a swap or unload from now on does
  // not affect it, and the shared_ptr keeps its replicas alive until done.
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
  result.output_dtype = batch.output_dtype;
  ForwardArgs args;
  args.rows = batch.rows;
  args.input_features = version->input_features();
  args.output_features = version->output_features();
  args.input = batch.input.data();
  args.input_dtype = batch.input_dtype;
  args.input_pinned = batch.input.pinned();
  args.output = batch.output.data();
  args.output_dtype = batch.output_dtype;
  args.output_pinned = batch.output.pinned();
  const bool several = entry->instances.size() > 1;
  absl::Status last_failure;
  for (int i : entry->FailoverOrder(index, *version)) {
    absl::Status s = version->ForwardRows(i, args);
    if (s.ok()) {
      if (!entry->Healthy(i)) entry->SetHealthy(i, true, absl::OkStatus());
      return result;
    }
    const std::string where =
        several ? absl::StrFormat(" on %s", entry->instances[i]->name) : "";
    s = absl::Status(s.code(),
                     absl::StrFormat("model '%s' version %d%s: %s", entry->name,
                                     version->version(), where, s.message()));
    // Only INTERNAL means "the device failed"; anything else is about the
    // batch and would fail the same way elsewhere.
    if (s.code() != absl::StatusCode::kInternal) return s;
    entry->SetHealthy(i, false, s);
    last_failure = s;
  }
  if (last_failure.ok()) {
    return absl::InternalError(absl::StrFormat(
        "model '%s' version %d: no instance holds a replica", entry->name,
        version->version()));
  }
  return last_failure;
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

  const int n = static_cast<int>(backends_.size());
  // The instances to load onto: all of them for a new model, else those in
  // rotation (all when none is: a load is then the last resort).
  std::vector<int> targets;
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
    if (auto it = models_.find(name); it != models_.end()) {
      const Entry& e = *it->second;
      // Shape check early (again below, after the slow load) so an obvious
      // mismatch does not pay for a device upload.
      if (e.input_features != model.input_features() ||
          e.output_features != model.output_features()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "model '%s': version %d has input_features %d / output_features "
            "%d, but the loaded versions have %d / %d; unload the model to "
            "change its shape",
            name, version, model.input_features(), model.output_features(),
            e.input_features, e.output_features));
      }
      for (int i = 0; i < n; ++i) {
        if (e.Healthy(i)) targets.push_back(i);
      }
    }
    if (targets.empty()) {
      for (int i = 0; i < n; ++i) targets.push_back(i);
    }
  }

  // The slow part, without any lock: the current version keeps serving.
  // One thread per extra device, so N GPUs load in the time of one.
  std::vector<std::unique_ptr<ModelInstance>> replicas(n);
  std::vector<absl::Status> errors(n);
  auto load_one = [&](int i) {
    absl::StatusOr<std::unique_ptr<ModelInstance>> instance =
        backends_[i]->Load(model, options_.batching.max_batch_rows);
    if (instance.ok()) {
      replicas[i] = std::move(*instance);
    } else {
      errors[i] = instance.status();
    }
  };
  {
    std::vector<std::thread> loaders;
    for (size_t t = 1; t < targets.size(); ++t) {
      loaders.emplace_back(load_one, targets[t]);
    }
    load_one(targets[0]);
    for (std::thread& loader : loaders) loader.join();
  }
  for (int i : targets) {
    if (errors[i].ok()) continue;
    // All or nothing: the replicas that did load are freed on return.
    return absl::Status(
        errors[i].code(),
        absl::StrFormat("model '%s' version %d: load on %s failed: %s%s", name,
                        version, instance_names_[i], errors[i].message(),
                        n > 1 ? " (not published on any device; the current "
                                "version keeps serving)"
                              : ""));
  }
  std::vector<LayerSpec> layers;
  for (const Layer& layer : model.layers) layers.push_back(layer.spec);
  auto loaded = std::make_shared<const ModelVersion>(
      std::string(name), version, std::string(source_path), std::move(layers),
      std::move(replicas), clock_->Now());

  std::shared_ptr<const ModelVersion> evicted;  // freed outside the locks
  absl::MutexLock lock(&mu_);
  if (draining_) {
    return absl::UnavailableError(
        "model registry is draining or shut down; not accepting new work");
  }
  auto it = models_.find(name);
  if (it == models_.end()) {
    auto entry = std::make_shared<Entry>();
    entry->affinity = options_.affinity;
    entry->name = std::string(name);
    entry->input_features = model.input_features();
    entry->output_features = model.output_features();
    {
      absl::MutexLock entry_lock(&entry->mu);
      entry->versions[version] = loaded;
    }
    for (int i = 0; i < n; ++i) {
      auto instance = std::make_unique<Instance>();
      instance->index = i;
      instance->name = instance_names_[i];
      instance->device = instance_devices_[i];
      if (options_.observer_factory) {
        instance->observer = options_.observer_factory(name, instance->name);
      }
      entry->instances.push_back(std::move(instance));
    }
    for (int i = 0; i < n; ++i) {
      Instance& instance = *entry->instances[i];
      BatcherOptions batching = options_.batching;
      batching.input_features = entry->input_features;
      batching.output_features = entry->output_features;
      batching.name = n == 1 ? entry->name
                             : absl::StrFormat("%s' instance '%s", entry->name,
                                               instance.name);
      // Batch buffers in the memory this instance's device reads fastest
      // (pinned for a GPU), rows in the types it takes natively.
      std::shared_ptr<Backend> backend = backends_[i];
      batching.allocate = [backend](size_t bytes) {
        return backend->AllocateHostBuffer(bytes);
      };
      batching.half_rows = backend->native_half_rows();
      absl::StatusOr<std::unique_ptr<DynamicBatcher>> batcher =
          DynamicBatcher::Create(
              batching,
              [e = entry.get(), i](const Batch& batch) {
                return RunBatch(e, i, batch);
              },
              clock_, instance.observer.get());
      if (!batcher.ok()) return batcher.status();
      instance.batcher = std::move(*batcher);
    }
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
  // The swap, for every instance at once: from here on, batches that start
  // pick this version (if it is the highest); batches already running keep
  // the one they snapshotted.
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
  // Stop accepting everywhere first, so that nothing queues behind a drain.
  for (auto& instance : removed->instances) instance->batcher->BeginDrain();
  for (auto& instance : removed->instances) instance->batcher->Shutdown();
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
    for (const auto& instance : entry->instances) {
      InstanceStatus s;
      s.name = instance->name;
      s.device = instance->device;
      s.healthy = instance->healthy.load();
      s.queued_rows = instance->batcher->queued_rows();
      s.outstanding_rows = instance->outstanding_rows.load();
      status.queued_rows += s.queued_rows;
      status.queued_requests += instance->batcher->queued_requests();
      if (s.healthy) ++status.healthy_instances;
      status.instances.push_back(std::move(s));
    }
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
  std::shared_ptr<const ModelVersion> pinned;
  if (request.model_version != 0) {
    absl::MutexLock entry_lock(&entry->mu);
    auto it = entry->versions.find(request.model_version);
    if (it == entry->versions.end()) {
      return absl::NotFoundError(absl::StrFormat(
          "model '%s' has no loaded version %d (loaded: %s)", name,
          request.model_version, entry->LoadedVersionList()));
    }
    pinned = it->second;
  }
  Route route = Route::kSoonest;
  Instance& instance =
      *entry->instances[entry->Pick(pinned.get(), request.rows, request.routing_key, &route)];
  if (entry->instances.size() > 1 && instance.observer != nullptr) {
    instance.observer->OnRouted(route);
  }
  // Counted before the batcher can answer, uncounted just before the
  // caller hears back (so its next request sees the true load). A pinned
  // request keeps its version alive until answered, so unloading the
  // version while the request is queued does not strand it.
  const int64_t rows = std::max<int64_t>(request.rows, 0);
  instance.outstanding_rows.fetch_add(rows);
  request.on_done = [instance = &instance, rows, pinned = std::move(pinned),
                     on_done = std::move(request.on_done)](
                        RequestResult result) {
    instance->outstanding_rows.fetch_sub(rows);
    on_done(std::move(result));
  };
  // Outside the registry lock: a full or draining batcher answers by itself.
  absl::Status status = instance.batcher->Enqueue(std::move(request));
  if (!status.ok()) instance.outstanding_rows.fetch_sub(rows);
  return status;
}

void ModelRegistry::BeginDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  for (const auto& [name, entry] : models_) {
    for (auto& instance : entry->instances) instance->batcher->BeginDrain();
  }
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
  for (auto& [name, entry] : models) {
    for (auto& instance : entry->instances) instance->batcher->BeginDrain();
  }
  for (auto& [name, entry] : models) {
    for (auto& instance : entry->instances) instance->batcher->Shutdown();
  }
}

}  // namespace bitnet
