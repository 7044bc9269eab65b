// ModelRegistry: versions, atomic swap under traffic, pinning, unload and
// drain. Real CPU instances (wrapped so a test can hold a batch inside
// Forward) and ReferenceForward as the oracle: a response is right only if it
// equals the oracle of the model version it says answered it.
#include "server/registry/model_registry.h"

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/ternary_format.h"
#include "server/batching/clock.h"
#include "server/model/demo_model.h"
#include "server/model/reference_forward.h"
#include "server/runtime/cpu_backend.h"
#include "tests/request_reply.h"

namespace bitnet {
namespace {

using ::bitnet::testing::Reply;
using ::testing::HasSubstr;

constexpr int64_t kIn = 24;
constexpr int64_t kOut = 6;

// 24 -> 40 -> 6, int8 activations (so the CPU path equals the oracle
// exactly); `seed` gives each "version" different weights.
Model MakeModel(uint64_t seed, int64_t in = kIn, int64_t out = kOut) {
  DemoRandom random(seed);
  Model model;
  const int64_t shapes[2][2] = {{in, 40}, {40, out}};
  for (int i = 0; i < 2; ++i) {
    const int64_t k = shapes[i][0], n = shapes[i][1];
    std::vector<float> w(n * k);
    for (float& v : w) v = static_cast<float>(random.NextNormal());
    Layer layer;
    layer.spec = {.in_features = k,
                  .out_features = n,
                  .activation = i == 0 ? Activation::kRelu : Activation::kIdentity,
                  .act_quant = ActivationQuant::kInt8,
                  .has_bias = true};
    layer.weight = *QuantizeAndPack(w, n, k, ScaleGranularity::kPerRow);
    for (int64_t j = 0; j < n; ++j) {
      layer.bias.push_back(static_cast<float>(random.NextNormal() * 0.1));
    }
    model.layers.push_back(std::move(layer));
  }
  return model;
}

std::vector<float> MakeInput(int id, int64_t rows) {
  DemoRandom random(1000 + id);
  std::vector<float> x(rows * kIn);
  for (float& v : x) v = static_cast<float>(random.NextNormal());
  return x;
}

std::vector<float> Oracle(const Model& model, const std::vector<float>& x) {
  const int64_t rows = static_cast<int64_t>(x.size()) / model.input_features();
  std::vector<float> y(rows * model.output_features());
  EXPECT_TRUE(ReferenceForward(model, x.data(), rows, y.data()).ok());
  return y;
}

// Wraps the CPU backend: Forward can be held at a gate, Load can be failed.
class GatedBackend : public Backend {
 public:
  GatedBackend() : cpu_(*CpuBackend::Create({.num_threads = 1})) {}

  absl::StatusOr<std::unique_ptr<ModelInstance>> Load(
      const Model& model, int64_t max_rows) override {
    if (fail_loads_) return absl::InternalError("simulated load failure");
    absl::StatusOr<std::unique_ptr<ModelInstance>> inner =
        cpu_->Load(model, max_rows);
    if (!inner.ok()) return inner.status();
    return std::unique_ptr<ModelInstance>(
        new Instance(this, std::move(*inner)));
  }
  std::string device() const override { return "cpu"; }

  void Close() {
    absl::MutexLock lock(&mu_);
    open_ = false;
  }
  void Open() {
    absl::MutexLock lock(&mu_);
    open_ = true;
  }
  void AwaitForwardsStarted(int n) {
    auto started = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return started_ >= n;
    };
    absl::MutexLock lock(&mu_, absl::Condition(&started));
  }
  void set_fail_loads(bool fail) { fail_loads_ = fail; }

 private:
  class Instance : public ModelInstance {
   public:
    Instance(GatedBackend* backend, std::unique_ptr<ModelInstance> inner)
        : backend_(backend), inner_(std::move(inner)) {}
    absl::Status Forward(const float* input, int64_t rows,
                         float* output) override {
      {
        absl::MutexLock lock(&backend_->mu_);
        ++backend_->started_;
        auto open = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(backend_->mu_) {
          return backend_->open_;
        };
        backend_->mu_.Await(absl::Condition(&open));
      }
      return inner_->Forward(input, rows, output);
    }
    int64_t max_rows() const override { return inner_->max_rows(); }
    std::string device() const override { return inner_->device(); }
    int64_t device_memory_bytes() const override { return 0; }

   private:
    GatedBackend* backend_;
    std::unique_ptr<ModelInstance> inner_;
  };

  std::unique_ptr<CpuBackend> cpu_;
  absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = true;
  int started_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<bool> fail_loads_{false};
};

BatchRequest MakeRequest(int id, int64_t rows, Reply* reply,
                         int64_t version = 0) {
  BatchRequest r;
  r.rows = rows;
  r.input = MakeInput(id, rows);
  r.model_version = version;
  r.on_done = reply->Callback();
  return r;
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(absl::Microseconds(100), nullptr); }

  void Start(absl::Duration delay, Clock* clock, int max_versions = 2) {
    registry_.reset();
    ModelRegistryOptions options;
    options.batching.preferred_batch_rows = 8;
    options.batching.max_batch_rows = 16;
    options.batching.max_queue_rows = 1024;
    options.batching.max_queue_delay = delay;
    options.max_loaded_versions = max_versions;
    auto registry = ModelRegistry::Create(backend_, options, clock);
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = std::move(*registry);
  }

  // Sends one request and waits for it.
  RequestResult Infer(int id, int64_t rows, int64_t version = 0) {
    Reply reply;
    absl::Status s =
        registry_->Enqueue("m", MakeRequest(id, rows, &reply, version));
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) {
      RequestResult failed;
      failed.status = s;
      return failed;
    }
    return reply.Await();
  }

  std::shared_ptr<GatedBackend> backend_ = std::make_shared<GatedBackend>();
  // Declared before registry_ so that it outlives the registry's batchers.
  FakeClock clock_;
  std::unique_ptr<ModelRegistry> registry_;
  const Model model1_ = MakeModel(1);
  const Model model2_ = MakeModel(2);
  const Model model3_ = MakeModel(3);
};

TEST(RegistryCreateTest, RejectsBadOptions) {
  ModelRegistryOptions options;
  EXPECT_EQ(ModelRegistry::Create(nullptr, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto backend = std::make_shared<GatedBackend>();
  options.max_loaded_versions = 0;
  EXPECT_THAT(ModelRegistry::Create(backend, options).status().message(),
              HasSubstr("max_loaded_versions"));
  options.max_loaded_versions = 1;
  options.batching.preferred_batch_rows = 1000;
  options.batching.max_batch_rows = 10;
  EXPECT_THAT(ModelRegistry::Create(backend, options).status().message(),
              HasSubstr("preferred_batch_rows"));
}

TEST_F(RegistryTest, LoadGetListAndVersionNumbers) {
  ASSERT_EQ(*registry_->Load("m", model1_, "/models/m/1.safetensors"), 1);
  auto v1 = registry_->Get("m");
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ((*v1)->version(), 1);
  EXPECT_EQ((*v1)->model_name(), "m");
  EXPECT_EQ((*v1)->source_path(), "/models/m/1.safetensors");
  EXPECT_EQ((*v1)->device(), "cpu");
  EXPECT_EQ((*v1)->max_rows(), 16);
  ASSERT_EQ((*v1)->layers().size(), 2u);
  EXPECT_EQ((*v1)->input_features(), kIn);
  EXPECT_EQ((*v1)->output_features(), kOut);

  ASSERT_EQ(*registry_->Load("m", model2_, "v2"), 2);
  EXPECT_EQ((*registry_->Get("m"))->version(), 2);
  EXPECT_EQ((*registry_->Get("m", 1))->version(), 1);  // still loaded

  // Explicit numbers must go up.
  absl::StatusOr<int64_t> stale = registry_->Load("m", model3_, "x", 2);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(stale.status().message(), HasSubstr("greater than 2"));
  ASSERT_EQ(*registry_->Load("m", model3_, "v10", 10), 10);

  // max_loaded_versions = 2: version 1 was unloaded by the third load.
  absl::StatusOr<std::shared_ptr<const ModelVersion>> gone =
      registry_->Get("m", 1);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(gone.status().message(), HasSubstr("model 'm'"));
  EXPECT_THAT(gone.status().message(), HasSubstr("version 1"));
  EXPECT_THAT(gone.status().message(), HasSubstr("loaded: 2, 10"));

  ASSERT_TRUE(registry_->Load("other", model1_, "o").ok());
  std::vector<ModelStatus> list = registry_->List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, "m");
  EXPECT_EQ(list[0].current_version, 10);
  ASSERT_EQ(list[0].versions.size(), 2u);
  EXPECT_EQ(list[0].versions[0]->version(), 2);
  EXPECT_EQ(list[1].name, "other");
  EXPECT_EQ(list[1].current_version, 1);

  // Numbers are never reused, not even after the model is unloaded.
  ASSERT_TRUE(registry_->Unload("m").ok());
  EXPECT_EQ(*registry_->Load("m", model1_, "again"), 11);
}

TEST_F(RegistryTest, NotFoundCasesNameModelAndVersion) {
  Reply reply;
  absl::Status s = registry_->Enqueue("nope", MakeRequest(1, 1, &reply));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("model 'nope'"));
  EXPECT_EQ(registry_->Get("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Unload("nope").code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(registry_->Load("m", model1_, "v1").ok());
  s = registry_->Enqueue("m", MakeRequest(1, 1, &reply, /*version=*/7));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("no loaded version 7"));
  EXPECT_EQ(registry_->Get("m", 7).status().code(), absl::StatusCode::kNotFound);
  absl::Status unload = registry_->Unload("m", 7);
  EXPECT_EQ(unload.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unload.message(), HasSubstr("model 'm' has no loaded version 7"));
  EXPECT_FALSE(reply.Done()) << "rejected requests get no callback";
}

TEST_F(RegistryTest, ResponsesCarryVersionAndPinningWorks) {
  ASSERT_TRUE(registry_->Load("m", model1_, "v1").ok());
  RequestResult r = Infer(1, 3);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.model_version, 1);
  EXPECT_EQ(r.output.ToFloats(), Oracle(model1_, MakeInput(1, 3)));

  ASSERT_TRUE(registry_->Load("m", model2_, "v2").ok());
  r = Infer(2, 2);
  EXPECT_EQ(r.model_version, 2);
  EXPECT_EQ(r.output.ToFloats(), Oracle(model2_, MakeInput(2, 2)));

  r = Infer(3, 4, /*version=*/1);  // pinned to the previous version
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.model_version, 1);
  EXPECT_EQ(r.output.ToFloats(), Oracle(model1_, MakeInput(3, 4)));
}

TEST_F(RegistryTest, RejectsShapeChangeAndInvalidModels) {
  ASSERT_TRUE(registry_->Load("m", model1_, "v1").ok());
  absl::StatusOr<int64_t> wider = registry_->Load("m", MakeModel(4, 30), "w");
  EXPECT_EQ(wider.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wider.status().message(), HasSubstr("input_features 30"));

  Model broken = model1_;
  broken.layers[0].bias.pop_back();
  absl::StatusOr<int64_t> bad = registry_->Load("m", broken, "b");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("model 'm'"));
  EXPECT_EQ(registry_->Load("", model1_, "x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*registry_->Get("m"))->version(), 1);
}

TEST_F(RegistryTest, FailedLoadKeepsCurrentVersionServing) {
  ASSERT_TRUE(registry_->Load("m", model1_, "v1").ok());
  backend_->set_fail_loads(true);
  absl::StatusOr<int64_t> failed = registry_->Load("m", model2_, "v2");
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(failed.status().message(), HasSubstr("version 2"));
  backend_->set_fail_loads(false);
  RequestResult r = Infer(1, 2);
  EXPECT_EQ(r.model_version, 1);
  EXPECT_EQ(r.output.ToFloats(), Oracle(model1_, MakeInput(1, 2)));
}

// A batch running on v1 while v2 is loaded and v1 unloaded finishes on v1;
// the next request is answered by v2.
TEST_F(RegistryTest, InFlightBatchFinishesOnItsVersionAcrossSwapAndUnload) {
  ASSERT_TRUE(registry_->Load("m", model1_, "v1").ok());
  backend_->Close();
  Reply first;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(1, 8, &first)).ok());
  backend_->AwaitForwardsStarted(1);  // held inside v1's Forward

  ASSERT_EQ(*registry_->Load("m", model2_, "v2"), 2);
  ASSERT_TRUE(registry_->Unload("m", 1).ok());
  EXPECT_EQ(registry_->Get("m", 1).status().code(), absl::StatusCode::kNotFound);
  Reply second;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(2, 8, &second)).ok());
  EXPECT_FALSE(first.Done());

  backend_->Open();
  RequestResult r1 = first.Await();
  RequestResult r2 = second.Await();
  ASSERT_TRUE(r1.status.ok()) << r1.status;
  ASSERT_TRUE(r2.status.ok()) << r2.status;
  EXPECT_EQ(r1.model_version, 1);
  EXPECT_EQ(r1.output.ToFloats(), Oracle(model1_, MakeInput(1, 8)));
  EXPECT_EQ(r2.model_version, 2);
  EXPECT_EQ(r2.output.ToFloats(), Oracle(model2_, MakeInput(2, 8)));
}

// Client threads send requests back to back while versions 2 and 3 are
// loaded: every answer equals the oracle of the version it names, versions
// never go backwards for a client, and nothing fails.
TEST_F(RegistryTest, SwapDuringTrafficDropsNothing) {
  ASSERT_TRUE(registry_->Load("m", model1_, "v1").ok());
  const std::map<int64_t, const Model*> models = {
      {1, &model1_}, {2, &model2_}, {3, &model3_}};
  constexpr int kThreads = 4;
  std::atomic<bool> stop{false};
  std::atomic<int> answered{0};
  std::vector<std::thread> clients;
  std::vector<std::map<int64_t, int>> seen(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([&, t] {
      int64_t last_version = 0;
      for (int i = 0; !stop.load() || i < 20; ++i) {
        const int id = t * 100000 + i;
        const int64_t rows = 1 + i % 4;
        Reply reply;
        absl::Status s =
            registry_->Enqueue("m", MakeRequest(id, rows, &reply));
        ASSERT_TRUE(s.ok()) << s;
        RequestResult r = reply.Await();
        ASSERT_TRUE(r.status.ok()) << r.status;
        ASSERT_GE(r.model_version, last_version) << "went back in time";
        last_version = r.model_version;
        ASSERT_EQ(r.output.ToFloats(), Oracle(*models.at(r.model_version), MakeInput(id, rows)))
            << "request " << id << " version " << r.model_version;
        ++seen[t][r.model_version];
        answered.fetch_add(1);
      }
    });
  }
  // Bounded so that a client that failed (and stopped) fails the test
  // instead of hanging it.
  auto await_answers = [&](int n) {
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    while (answered.load() < n && absl::Now() < give_up) {
      std::this_thread::yield();
    }
    ASSERT_GE(answered.load(), n) << "clients stopped answering";
  };
  await_answers(40);
  ASSERT_EQ(*registry_->Load("m", model2_, "v2"), 2);
  await_answers(answered.load() + 40);
  ASSERT_EQ(*registry_->Load("m", model3_, "v3"), 3);
  await_answers(answered.load() + 40);
  stop.store(true);
  for (std::thread& c : clients) c.join();
  std::map<int64_t, int> total;
  for (const auto& s : seen)
    for (const auto& [v, n] : s) total[v] += n;
  EXPECT_GT(total[1], 0);
  EXPECT_GT(total[3], 0) << "requests after the last swap use it";
}

// Fake clock with a long delay: requests stay queued until the test acts.
TEST_F(RegistryTest, UnloadingTheModelDrainsItsQueue) {
  Start(absl::Hours(1), &clock_);
  ASSERT_TRUE(registry_->Load("m", model1_, "v1").ok());
  Reply a, b;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(1, 2, &a)).ok());
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(2, 3, &b)).ok());
  EXPECT_EQ(registry_->List().at(0).queued_rows, 5);

  ASSERT_TRUE(registry_->Unload("m").ok());  // returns after the drain
  ASSERT_TRUE(a.Done() && b.Done());
  RequestResult ra = a.Await(), rb = b.Await();
  ASSERT_TRUE(ra.status.ok()) << ra.status;
  EXPECT_EQ(ra.output.ToFloats(), Oracle(model1_, MakeInput(1, 2)));
  EXPECT_EQ(rb.output.ToFloats(), Oracle(model1_, MakeInput(2, 3)));
  EXPECT_EQ(rb.model_version, 1);

  Reply c;
  EXPECT_EQ(registry_->Enqueue("m", MakeRequest(3, 1, &c)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(registry_->List().empty());
}

// Requests pinned to a version that is unloaded (or evicted) while they are
// queued are still answered by it; new requests for it get NOT_FOUND.
TEST_F(RegistryTest, PinnedRequestsQueuedBeforeUnloadStillComplete) {
  Start(absl::Milliseconds(10), &clock_, /*max_versions=*/2);
  ASSERT_TRUE(registry_->Load("m", model1_, "v1").ok());
  ASSERT_TRUE(registry_->Load("m", model2_, "v2").ok());
  Reply pinned1, pinned2, current, late;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(1, 1, &pinned1, 1)).ok());
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(2, 2, &pinned2, 2)).ok());
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(3, 1, &current)).ok());
  ASSERT_TRUE(registry_->Unload("m", 1).ok());
  ASSERT_TRUE(registry_->Load("m", model3_, "v3").ok());
  const Model model4 = MakeModel(4);
  ASSERT_TRUE(registry_->Load("m", model4, "v4").ok());  // evicts v2
  EXPECT_EQ(registry_->Enqueue("m", MakeRequest(4, 1, &late, 1)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Enqueue("m", MakeRequest(4, 1, &late, 2)).code(),
            absl::StatusCode::kNotFound);

  // Three partial batches (one per version key), each sent max_queue_delay
  // after the worker became idle.
  clock_.Advance(absl::Milliseconds(10));
  RequestResult r1 = pinned1.Await();
  ASSERT_TRUE(r1.status.ok()) << r1.status;
  EXPECT_EQ(r1.model_version, 1);
  EXPECT_EQ(r1.output.ToFloats(), Oracle(model1_, MakeInput(1, 1)));
  clock_.Advance(absl::Milliseconds(10));
  RequestResult r2 = pinned2.Await();
  ASSERT_TRUE(r2.status.ok()) << r2.status;
  EXPECT_EQ(r2.model_version, 2);
  EXPECT_EQ(r2.output.ToFloats(), Oracle(model2_, MakeInput(2, 2)));
  clock_.Advance(absl::Milliseconds(10));
  RequestResult rc = current.Await();
  ASSERT_TRUE(rc.status.ok()) << rc.status;
  EXPECT_EQ(rc.model_version, 4) << "unpinned: the current version at dispatch";
  EXPECT_EQ(rc.output.ToFloats(), Oracle(model4, MakeInput(3, 1)));
  EXPECT_FALSE(late.Done());
}

TEST_F(RegistryTest, DrainAndShutdownRejectNewWorkButFinishQueued) {
  Start(absl::Hours(1), &clock_);
  ASSERT_TRUE(registry_->Load("m", model1_, "v1").ok());
  Reply queued;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(1, 2, &queued)).ok());
  registry_->BeginDrain();
  Reply late;
  absl::Status s = registry_->Enqueue("m", MakeRequest(2, 1, &late));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(registry_->Load("m", model2_, "v2").status().code(),
            absl::StatusCode::kUnavailable);
  RequestResult r = queued.Await();  // no clock advance needed
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.output.ToFloats(), Oracle(model1_, MakeInput(1, 2)));
  registry_->Shutdown();
  registry_->Shutdown();
  EXPECT_EQ(registry_->Enqueue("m", MakeRequest(3, 1, &late)).code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(RegistryTest, ObserverFactoryGivesEachModelItsObserver) {
  struct Counting : InstanceObserver {
    explicit Counting(std::atomic<int>* n) : batches(n) {}
    void OnBatch(int64_t rows, double seconds) override { batches->fetch_add(1); }
    std::atomic<int>* batches;
  };
  std::atomic<int> batches{0};
  std::vector<std::string> names;
  ModelRegistryOptions options;
  options.batching.preferred_batch_rows = 1;
  options.batching.max_batch_rows = 16;
  options.observer_factory = [&](std::string_view name,
                                 std::string_view instance) {
    EXPECT_EQ(instance, "cpu");
    names.emplace_back(name);
    return std::make_unique<Counting>(&batches);
  };
  auto registry = ModelRegistry::Create(backend_, options);
  ASSERT_TRUE(registry.ok());
  ASSERT_TRUE((*registry)->Load("a", model1_, "a").ok());
  ASSERT_TRUE((*registry)->Load("a", model2_, "a2").ok());
  ASSERT_TRUE((*registry)->Load("b", model1_, "b").ok());
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b"}));
  Reply reply;
  ASSERT_TRUE((*registry)->Enqueue("b", MakeRequest(1, 1, &reply)).ok());
  ASSERT_TRUE(reply.Await().status.ok());
  EXPECT_EQ(batches.load(), 1);
}

}  // namespace
}  // namespace bitnet
