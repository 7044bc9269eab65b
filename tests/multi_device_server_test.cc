// bitnet-server with several model instances (--device=cpu,cpu), in process
// on ephemeral ports, through a real gRPC channel: answers equal the CPU
// oracle, both instances compute, a published version answers everywhere,
// per-instance health ("<model>@<instance>") and metrics (device label,
// bitnet_instance_healthy) report a failed device while the model keeps
// serving.
#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/model/demo_model.h"
#include "server/model/model_file.h"
#include "server/runtime/cpu_backend.h"
#include "server/service/server.h"
#include "tests/server_test_util.h"

namespace bitnet {
namespace {

using ::bitnet::testing::MakeClient;
using ::bitnet::testing::MakeOwnConnectionClient;
using ::bitnet::testing::MetricValue;
using ::bitnet::testing::RandomRows;
using ::bitnet::testing::Reference;
using ::bitnet::testing::TestOptions;
using ::testing::HasSubstr;

constexpr int64_t kFeatures = 64;  // the small demo model

std::string Metrics(int port) {
  httplib::Client http("127.0.0.1", port);
  auto response = http.Get("/metrics");
  EXPECT_TRUE(response) << "no HTTP response";
  return response ? response->body : "";
}

// The CPU backend whose instances fail like a lost GPU while `failing` is set.
class FailingCpuBackend : public Backend {
 public:
  FailingCpuBackend() : cpu_(*CpuBackend::Create({.num_threads = 1})) {}
  absl::StatusOr<std::unique_ptr<ModelInstance>> Load(
      const Model& model, int64_t max_rows) override {
    auto inner = cpu_->Load(model, max_rows);
    if (!inner.ok()) return inner.status();
    return std::unique_ptr<ModelInstance>(new Instance(this, std::move(*inner)));
  }
  std::string device() const override { return "cpu"; }
  std::atomic<bool> failing{false};

 private:
  class Instance : public ModelInstance {
   public:
    Instance(FailingCpuBackend* b, std::unique_ptr<ModelInstance> inner)
        : backend_(b), inner_(std::move(inner)) {}
    absl::Status Forward(const float* in, int64_t rows, float* out) override {
      if (backend_->failing.load()) {
        return absl::InternalError("simulated device failure");
      }
      return inner_->Forward(in, rows, out);
    }
    int64_t max_rows() const override { return inner_->max_rows(); }
    std::string device() const override { return "cpu"; }
    int64_t device_memory_bytes() const override { return 0; }

   private:
    FailingCpuBackend* backend_;
    std::unique_ptr<ModelInstance> inner_;
  };
  std::unique_ptr<CpuBackend> cpu_;
};

TEST(MultiDeviceServerTest, CpuCpuServesOnBothInstancesAndPublishesEverywhere) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    absl::StrCat("bitnet_md_", ::getpid());
  std::filesystem::create_directories(dir);
  const Model model = MakeDemoModel(DemoModelSize::kSmall);
  ASSERT_TRUE(WriteModelFile(model, (dir / "demo.safetensors").string()).ok());

  ServerOptions o = TestOptions();
  o.device = "cpu,cpu";
  o.cpu_threads = 1;
  o.model_repository = dir.string();
  o.admin_token = "multi-device-test-token";
  auto server = InferenceServer::Create(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = MakeClient((*server)->port(), absl::Seconds(30), o.admin_token);

  EXPECT_EQ(*client->Health(""), "SERVING");
  EXPECT_EQ(*client->Health("demo"), "SERVING");
  EXPECT_EQ(*client->Health("demo@cpu#0"), "SERVING");
  EXPECT_EQ(*client->Health("demo@cpu#1"), "SERVING");
  auto described = client->GetModel("demo");
  ASSERT_TRUE(described.ok()) << described.status();
  EXPECT_EQ(described->backend(), "cpu");

  // A second client on its own connection. Connections get instances in
  // turn (connection affinity): the first client's requests run on cpu#0,
  // the second's on cpu#1; every answer is the oracle's.
  std::unique_ptr<Client> second = MakeOwnConnectionClient((*server)->port());
  for (int i = 0; i < 6; ++i) {
    const std::vector<float> x = RandomRows(1 + i % 3, kFeatures, 100 + i);
    auto out = (i % 2 == 0 ? *client : *second).Infer("demo", x, kFeatures);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->values, Reference(model, x)) << "request " << i;
    EXPECT_EQ(out->version, 1u);
  }
  std::string text = Metrics((*server)->metrics_port());
  for (const char* instance : {"cpu#0", "cpu#1"}) {
    const std::string labels =
        absl::StrCat("{device=\"", instance, "\",model=\"demo\"}");
    EXPECT_EQ(MetricValue(text, "bitnet_batch_rows_count" + labels), 3) << instance;
    EXPECT_EQ(MetricValue(text, "bitnet_queue_rows" + labels), 0) << instance;
    EXPECT_EQ(MetricValue(text, "bitnet_instance_healthy" + labels), 1) << instance;
  }
  EXPECT_EQ(MetricValue(text, "bitnet_model_info{backend=\"cpu\",model=\"demo\",version=\"1\"}"), 1);

  // A new version is loaded onto both instances, then answers on both.
  auto loaded = client->LoadModel("demo", "demo.safetensors");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->version(), 2u);
  for (int i = 0; i < 4; ++i) {
    const std::vector<float> x = RandomRows(2, kFeatures, 200 + i);
    auto out = (i % 2 == 0 ? *client : *second).Infer("demo", x, kFeatures);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->version, 2u);
    EXPECT_EQ(out->values, Reference(model, x));
  }
  text = Metrics((*server)->metrics_port());
  EXPECT_EQ(MetricValue(text, "bitnet_batch_rows_count{device=\"cpu#0\",model=\"demo\"}"), 5);
  EXPECT_EQ(MetricValue(text, "bitnet_batch_rows_count{device=\"cpu#1\",model=\"demo\"}"), 5);
  // The first client alone: its connection keeps to cpu#0.
  for (int i = 0; i < 3; ++i) {
    const std::vector<float> x = RandomRows(1, kFeatures, 300 + i);
    auto out = client->Infer("demo", x, kFeatures);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->values, Reference(model, x));
  }
  text = Metrics((*server)->metrics_port());
  EXPECT_EQ(MetricValue(text, "bitnet_batch_rows_count{device=\"cpu#0\",model=\"demo\"}"), 8);
  EXPECT_EQ(MetricValue(text, "bitnet_batch_rows_count{device=\"cpu#1\",model=\"demo\"}"), 5);
  EXPECT_EQ(MetricValue(text, "bitnet_routed_requests_total{device=\"cpu#0\",model=\"demo\",route=\"home\"}"), 8);
  EXPECT_EQ(MetricValue(text, "bitnet_routed_requests_total{device=\"cpu#1\",model=\"demo\",route=\"home\"}"), 5);
  EXPECT_TRUE((*server)->Drain(absl::Seconds(5)));
  std::filesystem::remove_all(dir);
}

TEST(MultiDeviceServerTest, FailedDeviceLeavesRotationAndHealthSaysSo) {
  auto failing = std::make_shared<FailingCpuBackend>();
  auto good = std::make_shared<FailingCpuBackend>();
  ServerOptions o = TestOptions();
  o.backends = {good, failing};
  auto server = InferenceServer::Create(o);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = MakeClient((*server)->port());
  const Model model = MakeDemoModel(DemoModelSize::kSmall);

  failing->failing.store(true);
  // Two connections, one per instance: whichever instance a request lands
  // on, it is answered right.
  std::unique_ptr<Client> second = MakeOwnConnectionClient((*server)->port());
  for (int i = 0; i < 4; ++i) {
    const std::vector<float> x = RandomRows(2, kFeatures, i);
    auto out = (i % 2 == 0 ? *client : *second).Infer("demo", x, kFeatures);
    ASSERT_TRUE(out.ok()) << "request " << i << ": " << out.status();
    EXPECT_EQ(out->values, Reference(model, x));
  }
  EXPECT_EQ(*client->Health("demo"), "SERVING");
  EXPECT_EQ(*client->Health("demo@cpu#0"), "SERVING");
  EXPECT_EQ(*client->Health("demo@cpu#1"), "NOT_SERVING");
  std::string text = Metrics((*server)->metrics_port());
  EXPECT_EQ(MetricValue(text, "bitnet_instance_healthy{device=\"cpu#0\",model=\"demo\"}"), 1);
  EXPECT_EQ(MetricValue(text, "bitnet_instance_healthy{device=\"cpu#1\",model=\"demo\"}"), 0);
  EXPECT_EQ(MetricValue(text, "bitnet_requests_total{code=\"OK\",model=\"demo\"}"), 4);

  // The last device fails too: INTERNAL, and the model is not serving.
  good->failing.store(true);
  auto out = client->Infer("demo", RandomRows(1, kFeatures, 9), kFeatures);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(out.status().message(), HasSubstr("simulated device failure"));
  EXPECT_EQ(*client->Health("demo"), "NOT_SERVING");
  EXPECT_EQ(*client->Health("demo@cpu#0"), "NOT_SERVING");

  // It recovers: the next batch runs, the instance rejoins.
  good->failing.store(false);
  failing->failing.store(false);
  const std::vector<float> x = RandomRows(1, kFeatures, 10);
  auto back = client->Infer("demo", x, kFeatures);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->values, Reference(model, x));
  EXPECT_EQ(*client->Health("demo"), "SERVING");
  EXPECT_TRUE((*server)->Drain(absl::Seconds(5)));
}

TEST(MultiDeviceServerTest, BadDeviceListsAreRejectedByName) {
  ServerOptions o = TestOptions();
  o.device = "cpu,gpu";
  auto server = InferenceServer::Create(o);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(server.status().message(), HasSubstr("unknown device \"gpu\""));
  o.device = "all";  // no GPU here (or every GPU in a CUDA build with one)
  server = InferenceServer::Create(o);
  EXPECT_TRUE(server.ok()) << server.status();
}

}  // namespace
}  // namespace bitnet
