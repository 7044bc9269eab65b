// Multi-device serving (one model instance per device): --device parsing,
// least-loaded routing, version publication to every instance at once, and
// device failure (out of rotation, failed batch re-run elsewhere, health).
//
// Fake backends stand in for GPUs: Forward() writes markers instead of
// computing (output column 0 = the tag of the model the replica was loaded
// with, column 1 = the device index, column 2 = the request's id taken from
// its first input value), can be held at a gate and can fail on demand;
// Load() can be held or failed. So a test can tell, for every response, which
// version's replica on which device computed it, and all waiting is on
// conditions (no sleeps, no timing thresholds).
#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/ternary_format.h"
#include "server/host/element_type.h"
#include "server/host/host_buffer.h"
#include "server/model/demo_model.h"
#include "server/registry/model_registry.h"
#include "server/runtime/backend.h"
#include "server/runtime/device_list.h"
#include "tests/request_reply.h"

namespace bitnet {
namespace {

using ::bitnet::testing::Reply;
using ::testing::Each;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kIn = 8;
constexpr int64_t kOut = 3;

// 8 -> 3; the first bias value is the model's tag.
Model MakeModel(float tag) {
  DemoRandom random(static_cast<uint64_t>(tag * 1000));
  Layer layer;
  layer.spec = {.in_features = kIn,
                .out_features = kOut,
                .activation = Activation::kIdentity,
                .act_quant = ActivationQuant::kInt8,
                .has_bias = true};
  std::vector<float> w(kIn * kOut);
  for (float& v : w) v = static_cast<float>(random.NextNormal());
  layer.weight = *QuantizeAndPack(w, kOut, kIn, ScaleGranularity::kPerRow);
  layer.bias = {tag, 0.0f, 0.0f};
  Model model;
  model.layers.push_back(std::move(layer));
  return model;
}

// What one ForwardRows call was given.
struct ForwardSeen {
  ElementType input_dtype = ElementType::kF32;
  ElementType output_dtype = ElementType::kF32;
  bool input_pinned = false;
  bool output_pinned = false;
};

// A stand-in for one GPU: "pinned" batch buffers (marked so; ordinary
// memory) and native fp16 rows, like the CUDA backend.
class FakeBackend : public Backend {
 public:
  FakeBackend(std::string device, int index)
      : device_(std::move(device)), index_(index) {}

  absl::StatusOr<std::unique_ptr<ModelInstance>> Load(
      const Model& model, int64_t max_rows) override {
    absl::MutexLock lock(&mu_);
    ++loads_started_;
    auto open = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return load_open_;
    };
    mu_.Await(absl::Condition(&open));
    if (fail_loads_) return absl::InternalError("simulated load failure");
    ++loads_done_;
    return std::unique_ptr<ModelInstance>(
        new Instance(this, model.layers[0].bias[0], max_rows));
  }
  std::string device() const override { return device_; }
  HostBuffer AllocateHostBuffer(size_t bytes) override {
    auto plain = std::make_shared<HostBuffer>(HostBuffer::Allocate(bytes));
    void* data = plain->data();
    return HostBuffer(data, bytes, /*pinned=*/true,
                      [plain](void*) mutable { plain.reset(); });
  }
  bool native_half_rows() const override { return true; }
  ForwardSeen last_forward() {
    absl::MutexLock lock(&mu_);
    return last_forward_;
  }

  void SetForwardOpen(bool open) {
    absl::MutexLock lock(&mu_);
    forward_open_ = open;
  }
  void SetLoadOpen(bool open) {
    absl::MutexLock lock(&mu_);
    load_open_ = open;
  }
  // `code` INTERNAL is a device failure; anything else is not.
  void SetFailForwards(bool fail,
                       absl::StatusCode code = absl::StatusCode::kInternal) {
    absl::MutexLock lock(&mu_);
    fail_forwards_ = fail;
    fail_code_ = code;
  }
  void SetFailLoads(bool fail) {
    absl::MutexLock lock(&mu_);
    fail_loads_ = fail;
  }
  void AwaitForwardsStarted(int n) {
    absl::MutexLock lock(&mu_);
    auto started = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return forwards_started_ >= n;
    };
    mu_.Await(absl::Condition(&started));
  }
  void AwaitLoadsStarted(int n) {
    absl::MutexLock lock(&mu_);
    auto started = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return loads_started_ >= n;
    };
    mu_.Await(absl::Condition(&started));
  }
  int forwards_done() {
    absl::MutexLock lock(&mu_);
    return forwards_done_;
  }

 private:
  class Instance : public ModelInstance {
   public:
    Instance(FakeBackend* backend, float tag, int64_t max_rows)
        : backend_(backend), tag_(tag), max_rows_(max_rows) {}
    // Records what the registry passed, then converts around Forward().
    absl::Status ForwardRows(const ForwardArgs& args) override {
      {
        absl::MutexLock lock(&backend_->mu_);
        backend_->last_forward_ = {args.input_dtype, args.output_dtype,
                                   args.input_pinned, args.output_pinned};
      }
      return ModelInstance::ForwardRows(args);
    }
    absl::Status Forward(const float* input, int64_t rows,
                         float* output) override {
      FakeBackend& b = *backend_;
      absl::MutexLock lock(&b.mu_);
      ++b.forwards_started_;
      auto open = [&b]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.mu_) {
        return b.forward_open_;
      };
      b.mu_.Await(absl::Condition(&open));
      if (b.fail_forwards_) {
        return absl::Status(
            b.fail_code_, b.fail_code_ == absl::StatusCode::kInternal
                              ? "simulated device failure "
                                "(cudaErrorLaunchFailure)"
                              : "simulated bad batch");
      }
      for (int64_t r = 0; r < rows; ++r) {
        output[r * kOut + 0] = tag_;
        output[r * kOut + 1] = static_cast<float>(b.index_);
        output[r * kOut + 2] = input[r * kIn];
      }
      ++b.forwards_done_;
      return absl::OkStatus();
    }
    int64_t max_rows() const override { return max_rows_; }
    std::string device() const override { return backend_->device_; }
    int64_t device_memory_bytes() const override { return 1000; }

   private:
    FakeBackend* const backend_;
    const float tag_;
    const int64_t max_rows_;
  };

  const std::string device_;
  const int index_;
  absl::Mutex mu_;
  bool forward_open_ ABSL_GUARDED_BY(mu_) = true;
  bool load_open_ ABSL_GUARDED_BY(mu_) = true;
  bool fail_forwards_ ABSL_GUARDED_BY(mu_) = false;
  absl::StatusCode fail_code_ ABSL_GUARDED_BY(mu_) = absl::StatusCode::kInternal;
  bool fail_loads_ ABSL_GUARDED_BY(mu_) = false;
  int forwards_started_ ABSL_GUARDED_BY(mu_) = 0;
  int forwards_done_ ABSL_GUARDED_BY(mu_) = 0;
  int loads_started_ ABSL_GUARDED_BY(mu_) = 0;
  int loads_done_ ABSL_GUARDED_BY(mu_) = 0;
  ForwardSeen last_forward_ ABSL_GUARDED_BY(mu_);
};

BatchRequest MakeRequest(int id, int64_t rows, Reply* reply,
                         int64_t version = 0) {
  BatchRequest r;
  r.rows = rows;
  r.routing_key = 0;  // no connection: routing alone decides
  r.input.assign(rows * kIn, 0.5f);
  for (int64_t i = 0; i < rows; ++i) r.input[i * kIn] = static_cast<float>(id);
  r.model_version = version;
  r.on_done = reply->Callback();
  return r;
}

// Which device computed a successful result (every row agrees).
int DeviceOf(const RequestResult& r) {
  return r.output.size() >= 2 ? static_cast<int>(r.output[1]) : -1;
}

struct HealthEvent {
  std::string instance;
  bool healthy;
};

class Recorder : public InstanceObserver {
 public:
  Recorder(std::string instance, absl::Mutex* mu,
           std::vector<HealthEvent>* events, std::vector<std::string>* routes)
      : instance_(std::move(instance)), mu_(mu), events_(events), routes_(routes) {}
  void OnHealthChanged(bool healthy, const absl::Status& cause) override {
    absl::MutexLock lock(mu_);
    events_->push_back({instance_, healthy});
    if (!healthy) {
      EXPECT_THAT(cause.message(), HasSubstr("simulated device"));
    }
  }
  // "cuda:1 home", in routing order.
  void OnRouted(Route route) override {
    absl::MutexLock lock(mu_);
    routes_->push_back(instance_ + " " + std::string(RouteName(route)));
  }

 private:
  const std::string instance_;
  absl::Mutex* mu_;
  std::vector<HealthEvent>* events_;
  std::vector<std::string>* routes_;
};

class MultiDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(2); }
  // Whatever a failed assertion left held, the registry can drain.
  void TearDown() override {
    for (auto& b : backends_) {
      b->SetForwardOpen(true);
      b->SetLoadOpen(true);
      b->SetFailForwards(false);
    }
    registry_.reset();
  }

  void Start(int devices, Clock* clock = nullptr, bool affinity = true) {
    registry_.reset();
    backends_.clear();
    std::vector<std::shared_ptr<Backend>> backends;
    for (int i = 0; i < devices; ++i) {
      backends_.push_back(
          std::make_shared<FakeBackend>(absl::StrCat("cuda:", i), i));
      backends.push_back(backends_.back());
    }
    ModelRegistryOptions options;
    options.batching.preferred_batch_rows = 1;  // every request its own batch
    options.batching.max_batch_rows = 16;
    options.batching.max_queue_rows = 1024;
    options.batching.max_queue_delay = absl::ZeroDuration();
    options.max_loaded_versions = 3;
    options.affinity = affinity;
    options.observer_factory = [this](std::string_view, std::string_view name) {
      return std::make_unique<Recorder>(std::string(name), &events_mu_,
                                        &events_, &routes_);
    };
    auto registry = ModelRegistry::Create(backends, options, clock);
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = std::move(*registry);
  }

  std::vector<int64_t> Outstanding() {
    std::vector<int64_t> rows;
    // A copy: a range-for over a member of List()'s temporary would outlive it.
    const std::vector<ModelStatus> models = registry_->List();
    for (const InstanceStatus& i : models.at(0).instances) {
      rows.push_back(i.outstanding_rows);
    }
    return rows;
  }
  std::vector<bool> Healthy() {
    std::vector<bool> healthy;
    const std::vector<ModelStatus> models = registry_->List();
    for (const InstanceStatus& i : models.at(0).instances) {
      healthy.push_back(i.healthy);
    }
    return healthy;
  }
  std::vector<HealthEvent> Events() {
    absl::MutexLock lock(&events_mu_);
    return events_;
  }
  std::vector<std::string> Routes() {
    absl::MutexLock lock(&events_mu_);
    return routes_;
  }

  // Replies that may still be pending when an assertion ends a test: they
  // live until TearDown has drained the registry.
  Reply& NewReply() {
    replies_.push_back(std::make_unique<Reply>());
    return *replies_.back();
  }

  // With Start(2, &fake_clock_) and "m" loaded: one 10 ms batch on each
  // device, so that both estimate 10 ms per batch (no estimates before:
  // ties in turn, 0 then 1); leaves both devices' forwards held.
  void WarmUpTenMillisecondBatches() {
    for (int d = 0; d < 2; ++d) {
      backends_[d]->SetForwardOpen(false);
      Reply& r = NewReply();
      ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(d, 1, &r)).ok());
      ASSERT_EQ(Outstanding()[d], 1) << "warm-up request " << d;
      backends_[d]->AwaitForwardsStarted(1);
      fake_clock_.Advance(absl::Milliseconds(10));
      backends_[d]->SetForwardOpen(true);
      ASSERT_EQ(DeviceOf(r.Await()), d);
    }
    for (auto& b : backends_) b->SetForwardOpen(false);
  }

  std::vector<std::shared_ptr<FakeBackend>> backends_;
  std::vector<std::unique_ptr<Reply>> replies_;
  absl::Mutex events_mu_;
  std::vector<HealthEvent> events_ ABSL_GUARDED_BY(events_mu_);
  std::vector<std::string> routes_ ABSL_GUARDED_BY(events_mu_);
  // For tests that drive time (Start(n, &fake_clock_)); outlives registry_.
  FakeClock fake_clock_;
  std::unique_ptr<ModelRegistry> registry_;
  const Model v1_ = MakeModel(1.0f);
  const Model v2_ = MakeModel(2.0f);
  const Model v3_ = MakeModel(3.0f);
};

// ------------------------------------------------------------- device list

TEST(DeviceListTest, ParsesEveryForm) {
  using V = std::vector<std::string>;
  EXPECT_EQ(*ParseDeviceList("auto", 0), V{"auto"});
  EXPECT_EQ(*ParseDeviceList("cpu", 0), V{"cpu"});
  EXPECT_EQ(*ParseDeviceList("cpu,cpu", 0), (V{"cpu", "cpu"}));
  EXPECT_EQ(*ParseDeviceList("all", 0), V{"cpu"}) << "no GPU: the CPU";
  EXPECT_EQ(*ParseDeviceList("all", 3), (V{"cuda:0", "cuda:1", "cuda:2"}));
  EXPECT_EQ(*ParseDeviceList("cuda:1", 2), V{"cuda:1"});
  EXPECT_EQ(*ParseDeviceList("cuda:1,cuda:0", 2), (V{"cuda:1", "cuda:0"}));
  EXPECT_EQ(*ParseDeviceList("cuda:0,cpu", 1), (V{"cuda:0", "cpu"}));
}

TEST(DeviceListTest, ErrorsNameTheEntry) {
  struct Case {
    const char* spec;
    int gpus;
    absl::StatusCode code;
    const char* says;
  };
  for (const Case& c : std::vector<Case>{
           {"", 2, absl::StatusCode::kInvalidArgument, "empty"},
           {"gpu", 2, absl::StatusCode::kInvalidArgument, "unknown device \"gpu\""},
           {"cuda:0,,cuda:1", 2, absl::StatusCode::kInvalidArgument, "empty entry"},
           {"cuda:0,cuda:x", 2, absl::StatusCode::kInvalidArgument,
            "unknown device \"cuda:x\""},
           {"cuda:+1", 2, absl::StatusCode::kInvalidArgument, "unknown device"},
           {" cpu", 2, absl::StatusCode::kInvalidArgument, "unknown device \" cpu\""},
           {"cuda:0,all", 2, absl::StatusCode::kInvalidArgument,
            "\"all\" must stand alone"},
           {"auto,cpu", 2, absl::StatusCode::kInvalidArgument,
            "\"auto\" must stand alone"},
           {"cuda:1,cuda:1", 2, absl::StatusCode::kInvalidArgument,
            "\"cuda:1\" is listed twice"},
           {"cuda:0,cuda:2", 2, absl::StatusCode::kUnavailable,
            "\"cuda:2\" asked for, but 2 GPUs are visible: cuda:0..cuda:1"},
           {"cuda:0", 0, absl::StatusCode::kUnavailable, "no GPU is visible"},
       }) {
    absl::StatusOr<std::vector<std::string>> parsed =
        ParseDeviceList(c.spec, c.gpus);
    EXPECT_EQ(parsed.status().code(), c.code) << c.spec;
    EXPECT_THAT(parsed.status().message(), HasSubstr(c.says)) << c.spec;
    EXPECT_THAT(parsed.status().message(),
                HasSubstr(absl::StrCat("--device=\"", c.spec, "\"")));
  }
}

TEST(DeviceListTest, CreateBackendsMakesOnePerDevice) {
  auto backends = CreateBackends("cpu,cpu", BackendOptions{.cpu_threads = 1});
  ASSERT_TRUE(backends.ok()) << backends.status();
  ASSERT_EQ(backends->size(), 2u);
  EXPECT_EQ((*backends)[0]->device(), "cpu");
  EXPECT_NE((*backends)[0], (*backends)[1]);
  EXPECT_EQ(CreateBackends("cpu,tpu", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<int> gpus = VisibleGpuCount();
  ASSERT_TRUE(gpus.ok()) << gpus.status();
  auto beyond = CreateBackends(absl::StrCat("cuda:", *gpus), {});
  EXPECT_EQ(beyond.status().code(), absl::StatusCode::kUnavailable);
}

// ----------------------------------------------------------------- routing

// Forwards held: nothing completes, so each request's choice depends only
// on the rows already outstanding per instance.
TEST_F(MultiDeviceTest, RoutesToTheLeastLoadedInstanceNotRoundRobin) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  EXPECT_EQ(registry_->instance_names(), (std::vector<std::string>{"cuda:0", "cuda:1"}));
  for (auto& b : backends_) b->SetForwardOpen(false);
  Reply &a = NewReply(), &b = NewReply(), &c = NewReply(), &d = NewReply(),
        &e = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(1, 4, &a)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(4, 0)) << "tie: the first in turn";
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(2, 1, &b)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(4, 1));
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(3, 2, &c)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(4, 3)) << "not round robin";
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(4, 1, &d)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(4, 4));
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(5, 3, &e)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(4, 7)) << "tie: the next in turn";

  // In-flight rows count as well as queued ones: device 1 finishes, so
  // device 0 (its 4 rows held in Forward) is now the busier one.
  backends_[1]->SetForwardOpen(true);
  for (Reply* r : {&b, &c, &d, &e}) {
    RequestResult result = r->Await();
    ASSERT_TRUE(result.status.ok()) << result.status;
    EXPECT_EQ(DeviceOf(result), 1);
  }
  EXPECT_FALSE(a.Done());
  EXPECT_THAT(Outstanding(), ElementsAre(4, 0));
  Reply& f = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(6, 2, &f)).ok());
  EXPECT_EQ(DeviceOf(f.Await()), 1);
  backends_[0]->SetForwardOpen(true);
  RequestResult ra = a.Await();
  EXPECT_EQ(DeviceOf(ra), 0);
  EXPECT_EQ(ra.output[2], 1.0f) << "request 1's own rows";
  EXPECT_THAT(Outstanding(), ElementsAre(0, 0));
}

// Once every device has a batch time, routing is by estimated answer time
// first: a device whose batch has run past its usual batch time (about to
// answer) takes the next request before one that has just started a batch,
// although it holds more outstanding rows.
TEST_F(MultiDeviceTest, RoutesToTheDeviceThatWillAnswerSoonest) {
  Start(2, &fake_clock_);
  FakeClock& clock = fake_clock_;
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  WarmUpTenMillisecondBatches();
  if (HasFatalFailure()) return;
  // Both idle, both one batch away: a tie, device 0 in turn. Its batch then
  // runs 12 ms, past its 10 ms estimate.
  Reply& a = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(10, 8, &a)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(8, 0));
  backends_[0]->AwaitForwardsStarted(2);
  clock.Advance(absl::Milliseconds(12));
  // Device 0 (8 rows, about to answer) and idle device 1 are both one batch
  // away: the fewer outstanding rows decide.
  Reply& b = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(11, 4, &b)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(8, 4));
  backends_[1]->AwaitForwardsStarted(2);
  // Device 1 has just started its batch (two batch times away); device 0,
  // with twice the rows outstanding, is one away.
  Reply& c = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(12, 1, &c)).ok());
  EXPECT_THAT(Outstanding(), ElementsAre(9, 4)) << "not the fewest outstanding rows";
  for (auto& backend : backends_) backend->SetForwardOpen(true);
  EXPECT_EQ(DeviceOf(a.Await()), 0);
  EXPECT_EQ(DeviceOf(b.Await()), 1);
  EXPECT_EQ(DeviceOf(c.Await()), 0);
}

TEST_F(MultiDeviceTest, RoutesByTheFractionOfABatchLeftNotWholeBatches) {
  Start(2, &fake_clock_);
  FakeClock& clock = fake_clock_;
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  WarmUpTenMillisecondBatches();
  if (HasFatalFailure()) return;
  // Device 0 starts an 8-row batch (a tie, device 0 in turn); 8 ms later
  // device 1, idle, takes 2 rows and starts; 1 ms after that device 0 has
  // 1 ms left and device 1 9 ms.
  Reply& x = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(10, 8, &x)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(8, 0));
  backends_[0]->AwaitForwardsStarted(2);
  clock.Advance(absl::Milliseconds(8));
  Reply& y = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(11, 2, &y)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(8, 2));
  backends_[1]->AwaitForwardsStarted(2);
  clock.Advance(absl::Milliseconds(1));
  // Both are "two batches away" in whole batch times (1.1 and 1.9), where
  // the fewer outstanding rows would pick device 1; device 0 answers sooner.
  Reply& z = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(12, 1, &z)).ok());
  EXPECT_THAT(Outstanding(), ElementsAre(9, 2));
  for (auto& backend : backends_) backend->SetForwardOpen(true);
  EXPECT_EQ(DeviceOf(x.Await()), 0);
  EXPECT_EQ(DeviceOf(y.Await()), 1);
  EXPECT_EQ(DeviceOf(z.Await()), 0);
}

// A request from a connection (routing key).
BatchRequest KeyedRequest(uint64_t key, int id, int64_t rows, Reply* reply) {
  BatchRequest r = MakeRequest(id, rows, reply);
  r.routing_key = key;
  return r;
}

// Connection affinity: a key stays on its home instance while that is at
// most one batch time behind the soonest, and hands over beyond that.
TEST_F(MultiDeviceTest, AConnectionStaysOnItsInstanceUntilItIsABatchBehind) {
  Start(2, &fake_clock_);
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  WarmUpTenMillisecondBatches();
  if (HasFatalFailure()) return;
  constexpr uint64_t kA = 101, kB = 202;  // first seen in this order: homes 0, 1
  Reply& a1 = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", KeyedRequest(kA, 10, 8, &a1)).ok());
  ASSERT_THAT(Outstanding(), ElementsAre(8, 0));
  backends_[0]->AwaitForwardsStarted(2);
  // Device 0 has just started (two batch times away), device 1 is idle
  // (one away): without affinity device 1 would take it; A's home is
  // exactly one batch behind, so A stays.
  Reply& a2 = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", KeyedRequest(kA, 11, 16, &a2)).ok());
  EXPECT_THAT(Outstanding(), ElementsAre(24, 0)) << "A left its home within a batch";
  // B's home is device 1.
  Reply& b1 = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", KeyedRequest(kB, 12, 1, &b1)).ok());
  EXPECT_THAT(Outstanding(), ElementsAre(24, 1));
  backends_[1]->SetForwardOpen(true);
  EXPECT_EQ(DeviceOf(b1.Await()), 1);
  // Device 0: its batch in flight plus 16 + 1 queued rows = two more
  // batches of 16 (three batch times away), device 1 idle (one): more than
  // a batch behind, so A's next request goes to device 1.
  Reply& a3 = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", KeyedRequest(kA, 13, 1, &a3)).ok());
  EXPECT_EQ(DeviceOf(a3.Await()), 1) << "A did not hand over at two batches behind";
  backends_[0]->SetForwardOpen(true);
  EXPECT_EQ(DeviceOf(a1.Await()), 0);
  EXPECT_EQ(DeviceOf(a2.Await()), 0);
  // What bitnet_routed_requests_total counts (the warm-up had no keys).
  EXPECT_THAT(Routes(), ElementsAre("cuda:0 soonest", "cuda:1 soonest", "cuda:0 home",
                                    "cuda:0 home", "cuda:1 home", "cuda:1 handed_over"));
}

TEST_F(MultiDeviceTest, WithoutAffinityEveryRequestGoesToTheSoonest) {
  Start(2, &fake_clock_, /*affinity=*/false);
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  WarmUpTenMillisecondBatches();
  if (HasFatalFailure()) return;
  Reply& a1 = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", KeyedRequest(101, 10, 8, &a1)).ok());
  backends_[0]->AwaitForwardsStarted(2);
  Reply& a2 = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", KeyedRequest(101, 11, 1, &a2)).ok());
  EXPECT_THAT(Outstanding(), ElementsAre(8, 1));
  for (auto& backend : backends_) backend->SetForwardOpen(true);
  EXPECT_EQ(DeviceOf(a1.Await()), 0);
  EXPECT_EQ(DeviceOf(a2.Await()), 1);
  EXPECT_THAT(Routes(), Each(HasSubstr("soonest")));
}

// Connections get homes in turn, keep them, and leave a failed one.
TEST_F(MultiDeviceTest, ConnectionsGetHomesInTurnAndLeaveAFailedOne) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  std::map<uint64_t, std::set<int>> devices_of_key;
  for (int round = 0; round < 3; ++round) {
    for (uint64_t key : {7, 8, 9, 10}) {
      Reply reply;
      ASSERT_TRUE(registry_->Enqueue("m", KeyedRequest(key, 1, 1, &reply)).ok());
      RequestResult r = reply.Await();
      ASSERT_TRUE(r.status.ok()) << r.status;
      devices_of_key[key].insert(DeviceOf(r));
    }
  }
  EXPECT_THAT(devices_of_key[7], ElementsAre(0));
  EXPECT_THAT(devices_of_key[8], ElementsAre(1));
  EXPECT_THAT(devices_of_key[9], ElementsAre(0));
  EXPECT_THAT(devices_of_key[10], ElementsAre(1));

  // Device 0 fails key 7's request: it is re-run on device 1 and device 0
  // leaves the rotation; key 7 is then served by device 1.
  backends_[0]->SetFailForwards(true);
  Reply failed_over;
  ASSERT_TRUE(registry_->Enqueue("m", KeyedRequest(7, 2, 1, &failed_over)).ok());
  RequestResult r = failed_over.Await();
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(DeviceOf(r), 1);
  EXPECT_THAT(Healthy(), ElementsAre(false, true));
  Reply after;
  ASSERT_TRUE(registry_->Enqueue("m", KeyedRequest(7, 3, 1, &after)).ok());
  EXPECT_EQ(DeviceOf(after.Await()), 1);
  EXPECT_EQ(Routes().back(), "cuda:1 handed_over");
}

// Connections come and go: past kMaxRoutingKeys keys the least recently
// used half is forgotten; recent keys keep their homes, a forgotten one
// that comes back gets the next home in turn.
TEST_F(MultiDeviceTest, ForgetsTheLeastRecentlyUsedConnections) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  const uint64_t keys = ModelRegistry::kMaxRoutingKeys + 1;
  auto device_of = [&](uint64_t key) {
    Reply reply;
    EXPECT_TRUE(registry_->Enqueue("m", KeyedRequest(key, 1, 1, &reply)).ok());
    return DeviceOf(reply.Await());
  };
  for (uint64_t key = 1; key <= keys; ++key) {
    ASSERT_EQ(device_of(key), static_cast<int>((key - 1) % 2)) << "key " << key;
  }
  // The last insertion forgot keys 1..~2048; 4000 and the newest stayed.
  EXPECT_EQ(device_of(4000), 1);
  EXPECT_EQ(device_of(keys), 0);
  // Key 1 comes back: a new home, the next in turn (keys homes so far: 4097).
  EXPECT_EQ(device_of(1), 1);
  EXPECT_EQ(device_of(1), 1);
}

TEST_F(MultiDeviceTest, IdleInstancesShareSequentialTrafficInTurn) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  std::map<int, int> per_device;
  for (int i = 0; i < 10; ++i) {
    Reply reply;
    ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(i, 1, &reply)).ok());
    RequestResult r = reply.Await();
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.output[2], static_cast<float>(i));
    ++per_device[DeviceOf(r)];
  }
  EXPECT_EQ(per_device[0], 5);
  EXPECT_EQ(per_device[1], 5);
}

TEST_F(MultiDeviceTest, ListAndVersionReportEveryInstance) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  auto version = registry_->Get("m");
  ASSERT_TRUE(version.ok());
  EXPECT_EQ((*version)->device(), "cuda:0,cuda:1");
  EXPECT_EQ((*version)->instance_count(), 2);
  EXPECT_TRUE((*version)->HasReplica(0) && (*version)->HasReplica(1));
  EXPECT_EQ((*version)->replica_device(1), "cuda:1");
  EXPECT_EQ((*version)->device_memory_bytes(), 2000);
  ModelStatus status = registry_->List().at(0);
  ASSERT_EQ(status.instances.size(), 2u);
  EXPECT_EQ(status.instances[1].name, "cuda:1");
  EXPECT_EQ(status.instances[1].device, "cuda:1");
  EXPECT_EQ(status.healthy_instances, 2);
}

TEST(MultiDeviceNamesTest, RepeatedDevicesGetNumberedInstanceNames) {
  std::vector<std::shared_ptr<Backend>> backends;
  for (int i = 0; i < 3; ++i) {
    backends.push_back(std::make_shared<FakeBackend>(i == 1 ? "cuda:0" : "cpu", i));
  }
  auto registry = ModelRegistry::Create(backends, ModelRegistryOptions());
  ASSERT_TRUE(registry.ok());
  EXPECT_EQ((*registry)->instance_names(),
            (std::vector<std::string>{"cpu#0", "cuda:0", "cpu#1"}));
  ASSERT_TRUE((*registry)->Load("m", MakeModel(1.0f), "v1").ok());
  EXPECT_EQ((*(*registry)->Get("m"))->device(), "cpu,cuda:0");
  EXPECT_EQ(ModelRegistry::Create(std::vector<std::shared_ptr<Backend>>{},
                                  ModelRegistryOptions())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- versions

// v2 is resident on device 0 while device 1 is still loading it: nothing
// may answer with v2 yet, on either device. Then it is current everywhere.
TEST_F(MultiDeviceTest, NewVersionBecomesCurrentOnlyOnceOnEveryDevice) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  backends_[1]->SetLoadOpen(false);
  absl::StatusOr<int64_t> loaded;
  std::thread loader([&] { loaded = registry_->Load("m", v2_, "v2"); });
  backends_[1]->AwaitLoadsStarted(2);  // v1's load and v2's, held
  for (int i = 0; i < 6; ++i) {
    Reply& reply = NewReply();
    if (!registry_->Enqueue("m", MakeRequest(i, 1, &reply)).ok()) {
      ADD_FAILURE() << "enqueue " << i;
      break;
    }
    RequestResult r = reply.Await();
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.model_version, 1);
    EXPECT_EQ(r.output.empty() ? 0.0f : r.output[0], 1.0f)
        << "computed by v1's replica";
  }
  EXPECT_EQ((*registry_->Get("m"))->version(), 1);
  backends_[1]->SetLoadOpen(true);
  loader.join();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::map<int, int> per_device;
  for (int i = 0; i < 6; ++i) {
    Reply reply;
    ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(i, 1, &reply)).ok());
    RequestResult r = reply.Await();
    EXPECT_EQ(r.model_version, 2);
    EXPECT_EQ(r.output[0], 2.0f) << "computed by v2's replica";
    ++per_device[DeviceOf(r)];
  }
  EXPECT_EQ(per_device.size(), 2u) << "both devices answer with v2";
}

TEST_F(MultiDeviceTest, LoadFailingOnOneDeviceChangesNothing) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  backends_[1]->SetFailLoads(true);
  absl::StatusOr<int64_t> failed = registry_->Load("m", v2_, "v2");
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(failed.status().message(), HasSubstr("version 2: load on cuda:1 failed"));
  EXPECT_THAT(failed.status().message(), HasSubstr("not published on any device"));
  EXPECT_EQ((*registry_->Get("m"))->version(), 1);
  EXPECT_EQ(registry_->Get("m", 2).status().code(), absl::StatusCode::kNotFound);
  for (int i = 0; i < 4; ++i) {
    Reply reply;
    ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(i, 1, &reply)).ok());
    RequestResult r = reply.Await();
    EXPECT_EQ(r.model_version, 1);
    EXPECT_EQ(r.output[0], 1.0f);
  }
}

// Clients send back to back on both devices while v2 and v3 are published:
// every response was computed by the replica of the version it names, and
// a client never sees a version go backwards.
TEST_F(MultiDeviceTest, PublishUnderConcurrentLoadNeverMixesVersions) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  constexpr int kThreads = 4;
  std::atomic<bool> stop{false};
  std::atomic<int> answered{0};
  std::atomic<int> wrong{0};
  std::vector<std::map<std::pair<int64_t, int>, int>> seen(kThreads);
  // Answers of the last version per device, read while the clients run.
  std::atomic<int> v3_on[2] = {0, 0};
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([&, t] {
      int64_t last_version = 0;
      for (int i = 0; !stop.load() || i < 20; ++i) {
        const int id = t * 100000 + i;
        const int64_t rows = 1 + i % 3;
        Reply reply;
        if (!registry_->Enqueue("m", MakeRequest(id, rows, &reply)).ok()) {
          wrong.fetch_add(1);
          return;
        }
        RequestResult r = reply.Await();
        const bool ok = r.status.ok() && r.model_version >= last_version &&
                        r.output.size() == rows * kOut &&
                        r.output[0] == static_cast<float>(r.model_version) &&
                        r.output[2] == static_cast<float>(id);
        if (!ok) {
          wrong.fetch_add(1);
          ADD_FAILURE() << "request " << id << ": " << r.status << " version "
                        << r.model_version << " tag "
                        << (r.output.empty() ? -1 : r.output[0]);
          return;
        }
        last_version = r.model_version;
        ++seen[t][{r.model_version, DeviceOf(r)}];
        if (r.model_version == 3 && DeviceOf(r) >= 0 && DeviceOf(r) < 2) {
          v3_on[DeviceOf(r)].fetch_add(1);
        }
        answered.fetch_add(1);
      }
    });
  }
  auto await_answers = [&](int n) {
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    while (answered.load() < n && wrong.load() == 0 && absl::Now() < give_up) {
      std::this_thread::yield();
    }
    ASSERT_GE(answered.load(), n) << "clients stopped answering";
  };
  await_answers(40);
  ASSERT_EQ(*registry_->Load("m", v2_, "v2"), 2);
  await_answers(answered.load() + 40);
  ASSERT_EQ(*registry_->Load("m", v3_, "v3"), 3);
  await_answers(answered.load() + 40);
  // Routing is by load, not round robin: on a busy machine one device can
  // take a whole stretch of requests. Keep the load on until both have
  // answered with the last version (bounded; the checks below then fail).
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while ((v3_on[0].load() == 0 || v3_on[1].load() == 0) && wrong.load() == 0 &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  stop.store(true);
  for (std::thread& c : clients) c.join();
  EXPECT_EQ(wrong.load(), 0);
  std::map<std::pair<int64_t, int>, int> total;
  for (const auto& s : seen)
    for (const auto& [key, n] : s) total[key] += n;
  auto count = [&](int64_t version, int device) {
    return total[std::make_pair(version, device)];
  };
  EXPECT_GT(count(1, 0) + count(1, 1), 0);
  EXPECT_GT(count(3, 0), 0) << "device 0 serves the last version";
  EXPECT_GT(count(3, 1), 0) << "device 1 serves the last version";
}

// A pinned request only goes to an instance that holds its version.
TEST_F(MultiDeviceTest, PinnedVersionsAreAnsweredByTheirReplica) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  ASSERT_TRUE(registry_->Load("m", v2_, "v2").ok());
  for (int i = 0; i < 4; ++i) {
    Reply reply;
    ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(i, 1, &reply, 1)).ok());
    RequestResult r = reply.Await();
    EXPECT_EQ(r.model_version, 1);
    EXPECT_EQ(r.output[0], 1.0f);
  }
}

// ----------------------------------------------------------------- failure

TEST_F(MultiDeviceTest, DeviceFailureTakesOnlyItsInstanceOutAndLosesNothing) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  backends_[1]->SetFailForwards(true);
  // Device 0 is busy with request 1, so request 2 goes to device 1, fails
  // there, and is re-run on device 0 once it is free.
  backends_[0]->SetForwardOpen(false);
  Reply &first = NewReply(), &second = NewReply();
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(1, 2, &first)).ok());
  backends_[0]->AwaitForwardsStarted(1);
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(2, 1, &second)).ok());
  backends_[1]->AwaitForwardsStarted(1);
  backends_[0]->SetForwardOpen(true);
  RequestResult r1 = first.Await();
  RequestResult r2 = second.Await();
  ASSERT_TRUE(r1.status.ok()) << r1.status;
  ASSERT_TRUE(r2.status.ok()) << "re-run on the healthy device: " << r2.status;
  EXPECT_EQ(DeviceOf(r2), 0);
  EXPECT_EQ(r2.model_version, 1);
  EXPECT_EQ(r2.output[2], 2.0f);
  EXPECT_THAT(Healthy(), ElementsAre(true, false));
  EXPECT_EQ(registry_->List().at(0).healthy_instances, 1);
  {
    std::vector<HealthEvent> events = Events();
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].instance, "cuda:1");
    EXPECT_FALSE(events[0].healthy);
  }

  // Out of rotation: everything goes to device 0, however busy it is.
  backends_[0]->SetForwardOpen(false);
  std::vector<Reply*> replies;
  for (int i = 0; i < 4; ++i) {
    replies.push_back(&NewReply());
    ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(10 + i, 2, replies.back())).ok());
    ASSERT_EQ(Outstanding()[1], 0);
  }
  backends_[0]->SetForwardOpen(true);
  for (Reply* reply : replies) {
    RequestResult r = reply->Await();
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(DeviceOf(r), 0);
  }

  // A new version skips the failed device (its load would fail) and
  // becomes current on the healthy one.
  backends_[1]->SetFailLoads(true);
  ASSERT_EQ(*registry_->Load("m", v2_, "v2"), 2);
  auto v2 = registry_->Get("m");
  EXPECT_TRUE((*v2)->HasReplica(0));
  EXPECT_FALSE((*v2)->HasReplica(1));
  EXPECT_EQ((*v2)->device(), "cuda:0");
  Reply after;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(20, 1, &after)).ok());
  EXPECT_EQ(after.Await().model_version, 2);
}

TEST_F(MultiDeviceTest, WithNoHealthyDeviceLeftRequestsGetInternalThenRecover) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  for (auto& b : backends_) b->SetFailForwards(true);
  Reply failed;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(1, 1, &failed)).ok());
  RequestResult r = failed.Await();
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(r.status.message(), HasSubstr("simulated device failure"));
  EXPECT_THAT(r.status.message(), HasSubstr("model 'm' version 1 on cuda:"));
  EXPECT_THAT(Healthy(), ElementsAre(false, false));
  EXPECT_EQ(registry_->List().at(0).healthy_instances, 0);

  // The devices come back: the last-resort attempt succeeds and puts the
  // instance back into rotation.
  for (auto& b : backends_) b->SetFailForwards(false);
  Reply recovered;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(2, 1, &recovered)).ok());
  RequestResult ok = recovered.Await();
  ASSERT_TRUE(ok.status.ok()) << ok.status;
  EXPECT_EQ(registry_->List().at(0).healthy_instances, 1);
  std::vector<HealthEvent> events = Events();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_TRUE(events[2].healthy);
  EXPECT_EQ(events[2].instance, absl::StrCat("cuda:", DeviceOf(ok)));
}

// Errors that are not device failures go back to the request as they are
// and leave the instance in rotation.
TEST_F(MultiDeviceTest, NonDeviceErrorsDoNotTakeAnInstanceOut) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  for (auto& b : backends_) {
    b->SetFailForwards(true, absl::StatusCode::kInvalidArgument);
  }
  Reply failed;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(1, 1, &failed)).ok());
  RequestResult r = failed.Await();
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("simulated bad batch"));
  EXPECT_THAT(Healthy(), ElementsAre(true, true));
  EXPECT_TRUE(Events().empty());
}

// One device: a failure takes it out (health reports it), but it is still
// tried (nothing else could answer) and rejoins after a good batch.
TEST_F(MultiDeviceTest, OneDeviceFailsAndRecovers) {
  Start(1);
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  EXPECT_EQ(registry_->instance_names(), std::vector<std::string>{"cuda:0"});
  backends_[0]->SetFailForwards(true);
  Reply failed;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(1, 1, &failed)).ok());
  RequestResult r = failed.Await();
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInternal);
  // One device: the message has no instance name, as before multi-device.
  EXPECT_THAT(r.status.message(), HasSubstr("model 'm' version 1: simulated"));
  EXPECT_THAT(Healthy(), ElementsAre(false));
  backends_[0]->SetFailForwards(false);
  Reply again;
  ASSERT_TRUE(registry_->Enqueue("m", MakeRequest(2, 1, &again)).ok());
  EXPECT_TRUE(again.Await().status.ok()) << "one device: tried again, recovers";
  EXPECT_THAT(Healthy(), ElementsAre(true));
}

// The registry gives each instance's batcher the backend's allocator and
// half-row support: an fp16 request that wants fp16 reaches the device as a
// pinned fp16 batch and comes back as fp16 rows, on whichever device.
TEST_F(MultiDeviceTest, HalfRequestsReachTheDeviceAsPinnedHalfBatches) {
  ASSERT_TRUE(registry_->Load("m", v1_, "v1").ok());
  for (int id = 1; id <= 4; ++id) {
    std::vector<float> values(2 * kIn, 0.5f);
    values[0] = values[kIn] = static_cast<float>(id);
    std::vector<uint16_t> half(values.size());
    ConvertElements(values.data(), ElementType::kF32, half.data(),
                    ElementType::kF16, static_cast<int64_t>(values.size()));
    Reply& reply = NewReply();
    BatchRequest r;
    r.rows = 2;
    r.input_data = half.data();  // alive until answered (Await below)
    r.input_dtype = ElementType::kF16;
    r.output_dtype = ElementType::kF16;
    r.on_done = reply.Callback();
    ASSERT_TRUE(registry_->Enqueue("m", std::move(r)).ok());
    RequestResult result = reply.Await();
    ASSERT_TRUE(result.status.ok()) << result.status;
    EXPECT_EQ(result.output.dtype(), ElementType::kF16);
    ASSERT_EQ(result.output.size(), 2 * kOut);
    EXPECT_EQ(result.output[0], 1.0f) << "v1's tag";
    EXPECT_EQ(result.output[2], static_cast<float>(id)) << "its own rows";
    EXPECT_EQ(result.output[kOut + 2], static_cast<float>(id));
    const int device = DeviceOf(result);
    ASSERT_TRUE(device == 0 || device == 1) << device;
    const ForwardSeen seen = backends_[device]->last_forward();
    EXPECT_EQ(seen.input_dtype, ElementType::kF16);
    EXPECT_EQ(seen.output_dtype, ElementType::kF16);
    EXPECT_TRUE(seen.input_pinned);
    EXPECT_TRUE(seen.output_pinned);
  }
}

}  // namespace
}  // namespace bitnet
